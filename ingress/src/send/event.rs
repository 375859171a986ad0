//! Realistic Clerk events made on the spot, shaped like Clerk's own payloads (and the fixtures in
//! `tests/fixtures/clerk/`), with fresh ids, so `onboard send EVENT_TYPE` needs no file.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// Every event type of DESIGN.md §5 that `onboard send` can make.
pub const EVENT_TYPES: [&str; 13] = [
    "organization.created",
    "organization.updated",
    "organization.deleted",
    "user.created",
    "user.updated",
    "user.deleted",
    "organizationMembership.created",
    "organizationMembership.updated",
    "organizationMembership.deleted",
    "organizationInvitation.created",
    "organizationInvitation.accepted",
    "organizationInvitation.revoked",
    "session.created",
];

/// What a tester may choose about an event; every field left `None` gets a fresh value.
#[derive(Debug, Clone, Default)]
pub struct EventSpec {
    /// The organization's Clerk id (`org_…`).
    pub org_id: Option<String>,
    /// The organization's slug (its name is derived from it).
    pub slug: Option<String>,
    /// The user's Clerk id (`user_…`): the creator, member, invitee or session owner.
    pub user_id: Option<String>,
    /// The user's primary email address (or the invitation's address).
    pub email: Option<String>,
}

/// An [`EventSpec`] with every value chosen: what one `onboard send` run sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The organization's Clerk id.
    pub org_id: String,
    /// The organization's slug.
    pub slug: String,
    /// The user's Clerk id.
    pub user_id: String,
    /// The user's primary email address.
    pub email: String,
}

/// An unknown event type was asked for.
#[derive(Debug, thiserror::Error)]
#[error("unknown event type {0:?}; known: {known}", known = EVENT_TYPES.join(", "))]
pub struct UnknownEventType(pub String);

impl EventSpec {
    /// Fills every missing value with a fresh one (ids like Clerk's, `acme-<id>` slugs,
    /// `<user>@example.com` addresses).
    pub fn resolve(&self) -> Resolved {
        let suffix = fresh();
        let user_id = self
            .user_id
            .clone()
            .unwrap_or_else(|| format!("user_{}", fresh()));
        Resolved {
            org_id: self
                .org_id
                .clone()
                .unwrap_or_else(|| format!("org_{suffix}")),
            slug: self
                .slug
                .clone()
                .unwrap_or_else(|| format!("acme-{}", &suffix[..8].to_lowercase())),
            email: self.email.clone().unwrap_or_else(|| {
                format!(
                    "{}@example.com",
                    user_id
                        .strip_prefix("user_")
                        .unwrap_or(&user_id)
                        .to_lowercase()
                )
            }),
            user_id,
        }
    }
}

/// A fresh id body: 27 characters of `[0-9A-Za-z]`, like Clerk's.
fn fresh() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    // 62^14 < 2^128: two random u128s fill 27 characters evenly.
    let digits = |mut n: u128, count: usize| {
        (0..count)
            .map(move |_| {
                let c = ALPHABET[(n % 62) as usize];
                n /= 62;
                char::from(c)
            })
            .collect::<String>()
    };
    digits(uuid::Uuid::new_v4().as_u128(), 14) + &digits(uuid::Uuid::new_v4().as_u128(), 13)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Whether `event_type` is one [`build`] can make.
pub fn is_event_type(event_type: &str) -> bool {
    EVENT_TYPES.contains(&event_type)
}

/// The full Clerk envelope of `event_type` about `about`, stamped now.
///
/// # Errors
/// [`UnknownEventType`] unless `event_type` is one of [`EVENT_TYPES`].
pub fn build(event_type: &str, about: &Resolved) -> Result<Value, UnknownEventType> {
    let at = now_ms();
    let data = match event_type {
        "organization.created" => organization(about, at, at),
        "organization.updated" => {
            let mut org = organization(about, at - 60_000, at);
            org["public_metadata"] = json!({"plan": "pro"});
            org
        }
        "organization.deleted" => {
            json!({"object": "organization", "id": about.org_id, "slug": about.slug, "deleted": true})
        }
        "user.created" => user(about, at, at),
        "user.updated" => {
            let mut user = user(about, at - 60_000, at);
            user["username"] = json!(local_part(&about.email));
            user
        }
        "user.deleted" => json!({"object": "user", "id": about.user_id, "deleted": true}),
        "organizationMembership.created" => membership(about, "org:admin", at, at),
        "organizationMembership.updated" => membership(about, "org:member", at - 60_000, at),
        "organizationMembership.deleted" => membership(about, "org:member", at - 60_000, at),
        "organizationInvitation.created" => invitation(about, "pending", at, at),
        "organizationInvitation.accepted" => invitation(about, "accepted", at - 60_000, at),
        "organizationInvitation.revoked" => invitation(about, "revoked", at - 60_000, at),
        "session.created" => session(about, at),
        other => return Err(UnknownEventType(other.to_owned())),
    };
    Ok(json!({
        "data": data,
        "event_attributes": {"http_request": {
            "client_ip": "192.0.2.10",
            "user_agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/128.0.0.0 Safari/537.36",
        }},
        "instance_id": "ins_onboardsandbox0000000000",
        "object": "event",
        "timestamp": at,
        "type": event_type,
    }))
}

fn local_part(email: &str) -> &str {
    email.split('@').next().unwrap_or(email)
}

/// A display name from a slug: `acme-corp` → `Acme Corp`.
fn name_of(slug: &str) -> String {
    slug.split(['-', '_'])
        .filter(|word| !word.is_empty())
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_uppercase().chain(chars).collect()
            })
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn organization(about: &Resolved, created_at: i64, updated_at: i64) -> Value {
    json!({
        "object": "organization",
        "id": about.org_id,
        "name": name_of(&about.slug),
        "slug": about.slug,
        "image_url": "https://img.clerk.com/onboard-sandbox",
        "has_image": false,
        "members_count": 1,
        "missing_member_with_elevated_permissions": false,
        "pending_invitations_count": 0,
        "max_allowed_memberships": 5,
        "admin_delete_enabled": true,
        "public_metadata": {},
        "private_metadata": {},
        "created_by": about.user_id,
        "created_at": created_at,
        "updated_at": updated_at,
    })
}

fn user(about: &Resolved, created_at: i64, updated_at: i64) -> Value {
    let email_id = format!("idn_{}", fresh());
    json!({
        "object": "user",
        "id": about.user_id,
        "external_id": null,
        "primary_email_address_id": email_id,
        "primary_phone_number_id": null,
        "primary_web3_wallet_id": null,
        "username": null,
        "first_name": name_of(local_part(&about.email)),
        "last_name": "Tester",
        "profile_image_url": "https://img.clerk.com/onboard-sandbox",
        "image_url": "https://img.clerk.com/onboard-sandbox",
        "has_image": false,
        "public_metadata": {},
        "private_metadata": null,
        "unsafe_metadata": {},
        "email_addresses": [{
            "id": email_id,
            "object": "email_address",
            "email_address": about.email,
            "reserved": false,
            "verification": {"status": "verified", "strategy": "email_code", "attempts": 1, "expire_at": null},
            "linked_to": [],
            "created_at": created_at,
            "updated_at": created_at,
        }],
        "phone_numbers": [],
        "web3_wallets": [],
        "passkeys": [],
        "password_enabled": true,
        "two_factor_enabled": false,
        "totp_enabled": false,
        "backup_code_enabled": false,
        "mfa_enabled_at": null,
        "mfa_disabled_at": null,
        "external_accounts": [],
        "saml_accounts": [],
        "enterprise_accounts": [],
        "last_sign_in_at": null,
        "banned": false,
        "locked": false,
        "lockout_expires_in_seconds": null,
        "verification_attempts_remaining": null,
        "delete_self_enabled": true,
        "create_organization_enabled": true,
        "create_organizations_limit": null,
        "last_active_at": updated_at,
        "legal_accepted_at": created_at,
        "created_at": created_at,
        "updated_at": updated_at,
    })
}

fn membership(about: &Resolved, role: &str, created_at: i64, updated_at: i64) -> Value {
    let role_name = if role == "org:admin" {
        "Admin"
    } else {
        "Member"
    };
    json!({
        "object": "organization_membership",
        "id": format!("orgmem_{}", fresh()),
        "role": role,
        "role_name": role_name,
        "permissions": ["org:sys_memberships:read"],
        "public_metadata": {},
        "private_metadata": {},
        "organization": organization(about, created_at, created_at),
        "public_user_data": {
            "user_id": about.user_id,
            "first_name": name_of(local_part(&about.email)),
            "last_name": "Tester",
            "profile_image_url": "https://img.clerk.com/onboard-sandbox",
            "image_url": "https://img.clerk.com/onboard-sandbox",
            "has_image": false,
            "identifier": about.email,
        },
        "created_at": created_at,
        "updated_at": updated_at,
    })
}

fn invitation(about: &Resolved, status: &str, created_at: i64, updated_at: i64) -> Value {
    let mut invitation = json!({
        "object": "organization_invitation",
        "id": format!("orginv_{}", fresh()),
        "email_address": about.email,
        "role": "org:member",
        "role_name": "Member",
        "organization_id": about.org_id,
        "status": status,
        "public_metadata": {},
        "private_metadata": {},
        "url": format!("https://accounts.example.com/accept-invitation?token={}", fresh()),
        "expires_at": created_at + 7 * 24 * 3_600_000,
        "created_at": created_at,
        "updated_at": updated_at,
    });
    if status == "accepted" {
        invitation["user_id"] = json!(about.user_id);
    }
    invitation
}

fn session(about: &Resolved, at: i64) -> Value {
    json!({
        "object": "session",
        "id": format!("sess_{}", fresh()),
        "user_id": about.user_id,
        "user": user(about, at, at),
        "client_id": format!("client_{}", fresh()),
        "actor": null,
        "status": "active",
        "last_active_organization_id": about.org_id,
        "last_active_at": at,
        "latest_activity": {
            "object": "session_activity",
            "id": format!("sess_activity_{}", fresh()),
            "device_type": "desktop",
            "is_mobile": false,
            "browser_name": "Chrome",
            "browser_version": "128.0.0.0",
            "ip_address": "192.0.2.10",
            "city": "Example City",
            "country": "US",
        },
        "expire_at": at + 7 * 24 * 3_600_000,
        "abandon_at": at + 30 * 24 * 3_600_000,
        "created_at": at,
        "updated_at": at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Resolved {
        EventSpec {
            slug: Some("acme-fail-twilio".into()),
            email: Some("flaky@example.com".into()),
            ..EventSpec::default()
        }
        .resolve()
    }

    #[test]
    fn every_type_builds_an_envelope_of_that_type() {
        let about = spec();
        for event_type in EVENT_TYPES {
            let event = build(event_type, &about).unwrap();
            assert_eq!(event["type"], event_type);
            assert_eq!(event["object"], "event");
            assert!(
                event["data"]["id"].is_string(),
                "{event_type} has a data.id"
            );
        }
        assert!(build("session.ended", &about).is_err());
    }

    #[test]
    fn chosen_values_are_used_and_missing_ones_are_fresh_each_time() {
        let about = spec();
        let org = build("organization.created", &about).unwrap();
        assert_eq!(org["data"]["slug"], "acme-fail-twilio");
        assert_eq!(org["data"]["name"], "Acme Fail Twilio");
        assert_eq!(org["data"]["created_by"], json!(about.user_id));
        let user = build("user.created", &about).unwrap();
        let primary = &user["data"]["primary_email_address_id"];
        assert_eq!(user["data"]["email_addresses"][0]["id"], *primary);
        assert_eq!(
            user["data"]["email_addresses"][0]["email_address"],
            "flaky@example.com"
        );
        let again = spec();
        assert_ne!(about.org_id, again.org_id);
        assert_ne!(about.user_id, again.user_id);
        assert!(about.org_id.starts_with("org_") && about.org_id.len() == 31);
    }
}
