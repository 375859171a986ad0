//! An onboarding request: who asked, for which organization, and its creator.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::id::{ClerkOrgId, ClerkUserId, EmailAddress};

/// Who asked for the onboarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Clerk's `organization.created` webhook.
    Webhook,
    /// `POST /v1/onboarding`.
    Api,
}

impl Source {
    /// The name stored in `onboarding.source`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Webhook => "webhook",
            Source::Api => "api",
        }
    }
}

/// The organization's creator, as far as the request knows them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Creator {
    /// Their Clerk user id.
    pub user_id: Option<ClerkUserId>,
    /// Their primary email (the welcome email's recipient when given).
    pub email: Option<EmailAddress>,
    /// Their first name, for the welcome email.
    pub first_name: Option<String>,
}

/// A request to onboard one organization: the input of the saga's first step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OnboardingRequest {
    /// The organization.
    pub org_id: ClerkOrgId,
    /// Its display name.
    pub name: Option<String>,
    /// Its slug.
    pub slug: Option<String>,
    /// Who created it.
    pub creator: Creator,
    /// Webhook or API.
    pub source: Source,
}

impl OnboardingRequest {
    /// SHA-256 of the request's canonical JSON: equal requests, equal fingerprints.
    pub fn fingerprint(&self) -> [u8; 32] {
        let json = serde_json::to_vec(self).unwrap_or_default();
        Sha256::digest(json).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ClerkOrgId;

    #[test]
    fn equal_requests_have_equal_fingerprints() {
        let request = OnboardingRequest {
            org_id: ClerkOrgId::parse("org_1").unwrap(),
            name: Some("Acme".into()),
            slug: Some("acme".into()),
            creator: Creator::default(),
            source: Source::Api,
        };
        let mut other = request.clone();
        assert_eq!(request.fingerprint(), other.fingerprint());
        other.slug = Some("acme-2".into());
        assert_ne!(request.fingerprint(), other.fingerprint());
    }
}
