//! The directory: organizations, users and memberships as Clerk's events describe them
//! (DESIGN.md §5), and the typed, idempotent upserts both the event handlers and the onboarding
//! saga use. Every upsert is last-writer-wins on the payload's `updated_at` (Unix ms), with a
//! deterministic tie-break on content; deletes leave tombstones older events cannot resurrect.

mod membership;
mod organization;
mod purge;
mod role;
mod user;

pub use membership::{
    InvitationEvent, InvitationStatus, MembershipEvent, MembershipState, apply_invitation,
    apply_membership, end_memberships,
};
pub use organization::{
    LockedOrganization, OrgUpsert, delete_organization, lock_organization, organization_id,
    organization_slug, upsert_organization,
};
pub use purge::{Purged, erase_invitation_email, is_erased_email, purge_user_data};
pub use role::{DEFAULT_ROLE_ENV, ROLE_MAP_ENV, Role, RoleMapping};
pub use user::{
    Addressee, PublicUserData, UserUpsert, UserWrite, addressee, delete_user, is_deleted_user,
    upsert_public_user_data, upsert_user,
};
