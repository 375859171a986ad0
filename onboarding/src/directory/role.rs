//! The CRM's roles and how Clerk's organization roles map onto them (DESIGN.md §5).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// A CRM role (`reference/permissions.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Everything.
    Admin,
    /// Contacts, deals, communication, phone, AI for productivity.
    Agent,
    /// Read-only.
    Viewer,
}

impl Role {
    /// The name stored in `membership.role`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "ADMIN",
            Role::Agent => "AGENT",
            Role::Viewer => "VIEWER",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_uppercase().as_str() {
            "ADMIN" => Ok(Role::Admin),
            "AGENT" => Ok(Role::Agent),
            "VIEWER" => Ok(Role::Viewer),
            _ => Err(format!("unknown role `{s}` (ADMIN, AGENT or VIEWER)")),
        }
    }
}

/// Clerk role → CRM role. `org:admin`→ADMIN, `org:member`→AGENT, `org:agent`→AGENT and
/// `org:viewer`→VIEWER are fixed; any other Clerk role maps through `custom`, else `fallback`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleMapping {
    /// Custom Clerk roles (`org:billing`, …) and their CRM role.
    pub custom: BTreeMap<String, Role>,
    /// The role of any other Clerk role; VIEWER by default.
    pub fallback: Role,
}

impl Default for RoleMapping {
    fn default() -> Self {
        RoleMapping {
            custom: BTreeMap::new(),
            fallback: Role::Viewer,
        }
    }
}

/// The env var holding custom mappings: `org:billing=VIEWER,org:manager=ADMIN`.
pub const ROLE_MAP_ENV: &str = "ONBOARD_CLERK_ROLE_MAP";
/// The env var holding the fallback role (`VIEWER` when unset).
pub const DEFAULT_ROLE_ENV: &str = "ONBOARD_CLERK_DEFAULT_ROLE";

impl RoleMapping {
    /// The CRM role of a Clerk role.
    pub fn map(&self, clerk_role: &str) -> Role {
        match clerk_role {
            "org:admin" => Role::Admin,
            "org:member" | "org:agent" => Role::Agent,
            "org:viewer" => Role::Viewer,
            other => self.custom.get(other).copied().unwrap_or(self.fallback),
        }
    }

    /// Parses `custom` (`org:a=ROLE,org:b=ROLE`, may be empty) and `fallback` (a role name).
    pub fn parse(custom: &str, fallback: Option<&str>) -> Result<Self, String> {
        let mut mapping = RoleMapping::default();
        if let Some(fallback) = fallback.filter(|f| !f.trim().is_empty()) {
            mapping.fallback = fallback.parse()?;
        }
        for entry in custom.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (clerk_role, role) = entry
                .split_once('=')
                .ok_or_else(|| format!("`{entry}` is not `clerk_role=ROLE`"))?;
            let clerk_role = clerk_role.trim();
            if clerk_role.is_empty() {
                return Err(format!("`{entry}` has no Clerk role"));
            }
            mapping.custom.insert(clerk_role.to_owned(), role.parse()?);
        }
        Ok(mapping)
    }

    /// Reads [`ROLE_MAP_ENV`] and [`DEFAULT_ROLE_ENV`]; both optional.
    pub fn from_env() -> Result<Self, String> {
        let custom = std::env::var(ROLE_MAP_ENV).unwrap_or_default();
        let fallback = std::env::var(DEFAULT_ROLE_ENV).ok();
        RoleMapping::parse(&custom, fallback.as_deref())
            .map_err(|e| format!("{ROLE_MAP_ENV} / {DEFAULT_ROLE_ENV}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_roles_map_as_designed_and_others_fall_back_to_viewer() {
        let roles = RoleMapping::default();
        assert_eq!(roles.map("org:admin"), Role::Admin);
        assert_eq!(roles.map("org:member"), Role::Agent);
        assert_eq!(roles.map("org:agent"), Role::Agent);
        assert_eq!(roles.map("org:viewer"), Role::Viewer);
        assert_eq!(roles.map("org:billing"), Role::Viewer);
        assert_eq!(roles.map("admin"), Role::Viewer);
    }

    #[test]
    fn custom_roles_and_the_fallback_are_configurable() {
        let roles =
            RoleMapping::parse("org:manager=admin, org:billing=VIEWER", Some("AGENT")).unwrap();
        assert_eq!(roles.map("org:manager"), Role::Admin);
        assert_eq!(roles.map("org:billing"), Role::Viewer);
        assert_eq!(roles.map("org:other"), Role::Agent);
        // The fixed four are not overridable.
        assert_eq!(
            RoleMapping::parse("org:admin=VIEWER", None)
                .unwrap()
                .map("org:admin"),
            Role::Admin
        );
        assert!(RoleMapping::parse("org:x", None).is_err());
        assert!(RoleMapping::parse("", Some("OWNER")).is_err());
    }
}
