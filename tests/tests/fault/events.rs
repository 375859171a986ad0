//! Clerk webhook events in the shape Clerk sends them (see `organization.created`,
//! `user.created` and `organizationMembership.created` in Clerk's docs), built with fresh ids.

use serde_json::{Value, json};

/// The `event_attributes` Clerk adds to events caused by a signed-in user's request.
fn attributes() -> Value {
    json!({
        "http_request": {
            "client_ip": "192.0.2.10",
            "user_agent": "Mozilla/5.0 (X11; Linux x86_64) fault-suite"
        }
    })
}

fn envelope(event_type: &str, data: Value, at_ms: i64) -> Value {
    json!({
        "event_attributes": attributes(),
        "object": "event",
        "type": event_type,
        "instance_id": "ins_faultsuite",
        "timestamp": at_ms / 1000,
        "data": data,
    })
}

/// The organization object as Clerk nests it in events.
fn organization(org_id: &str, slug: &str, creator: &str, members: u32, at_ms: i64) -> Value {
    json!({
        "object": "organization",
        "id": org_id,
        "name": format!("Org {slug}"),
        "slug": slug,
        "image_url": "https://img.clerk.com/fault",
        "has_image": false,
        "members_count": members,
        "missing_member_with_elevated_permissions": false,
        "pending_invitations_count": 0,
        "max_allowed_memberships": 5,
        "admin_delete_enabled": true,
        "public_metadata": {},
        "private_metadata": {},
        "created_by": creator,
        "created_at": at_ms,
        "updated_at": at_ms,
    })
}

/// `organization.created` for `org_id`, created by `creator`.
pub fn organization_created(org_id: &str, slug: &str, creator: &str, at_ms: i64) -> Value {
    envelope(
        "organization.created",
        organization(org_id, slug, creator, 1, at_ms),
        at_ms,
    )
}

/// `organization.deleted` for `org_id` (Clerk sends only the id, slug and `deleted`).
pub fn organization_deleted(org_id: &str, slug: &str, at_ms: i64) -> Value {
    envelope(
        "organization.deleted",
        json!({"object": "organization", "id": org_id, "slug": slug, "deleted": true}),
        at_ms,
    )
}

/// `user.created` for `person`, whose primary (and only) email is `person.email`.
pub fn user_created(person: &Person, at_ms: i64) -> Value {
    let user_id = &person.user_id;
    let email_id = format!("idn_{}", user_id.trim_start_matches("user_"));
    envelope(
        "user.created",
        json!({
            "object": "user",
            "id": user_id,
            "external_id": null,
            "primary_email_address_id": email_id,
            "primary_phone_number_id": null,
            "primary_web3_wallet_id": null,
            "username": null,
            "first_name": person.first_name,
            "last_name": "Fault",
            "profile_image_url": "https://img.clerk.com/fault",
            "image_url": "https://img.clerk.com/fault",
            "has_image": false,
            "public_metadata": {},
            "private_metadata": null,
            "unsafe_metadata": {},
            "email_addresses": [{
                "id": email_id,
                "object": "email_address",
                "email_address": person.email,
                "reserved": false,
                "verification": {"status": "verified", "strategy": "email_code"},
                "linked_to": [],
                "created_at": at_ms,
                "updated_at": at_ms,
            }],
            "phone_numbers": [],
            "web3_wallets": [],
            "passkeys": [],
            "password_enabled": true,
            "two_factor_enabled": false,
            "totp_enabled": false,
            "backup_code_enabled": false,
            "external_accounts": [],
            "saml_accounts": [],
            "enterprise_accounts": [],
            "last_sign_in_at": null,
            "banned": false,
            "locked": false,
            "created_at": at_ms,
            "updated_at": at_ms,
            "last_active_at": at_ms,
        }),
        at_ms,
    )
}

/// A Clerk user as events name them.
#[derive(Debug, Clone)]
pub struct Person {
    /// `user_…`.
    pub user_id: String,
    /// Their first name.
    pub first_name: String,
    /// Their primary email address.
    pub email: String,
}

/// `organizationMembership.created`: `member` joined `org_id` (created by `creator`) with
/// Clerk role `role`.
pub fn membership_created(
    membership_id: &str,
    (org_id, slug, creator): (&str, &str, &str),
    member: &Person,
    role: &str,
    at_ms: i64,
) -> Value {
    envelope(
        "organizationMembership.created",
        json!({
            "object": "organization_membership",
            "id": membership_id,
            "role": role,
            "role_name": if role == "org:admin" { "Admin" } else { "Member" },
            "permissions": [],
            "public_metadata": {},
            "private_metadata": {},
            "organization": organization(org_id, slug, creator, 2, at_ms),
            "public_user_data": {
                "user_id": member.user_id,
                "first_name": member.first_name,
                "last_name": "Fault",
                "profile_image_url": "https://img.clerk.com/fault",
                "image_url": "https://img.clerk.com/fault",
                "has_image": false,
                "identifier": member.email,
            },
            "created_at": at_ms,
            "updated_at": at_ms,
        }),
        at_ms,
    )
}
