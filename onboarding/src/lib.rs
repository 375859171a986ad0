//! The onboarding domain on top of the `jobs` queue: the Clerk directory (organizations, users,
//! memberships), the webhook inbox, Clerk event handling, the onboarding saga's state machine,
//! default permissions and the onboarding API's keys.

pub mod advisory_lock;
pub mod api_key;
pub mod clerk_event;
pub mod directory;
pub mod id;
pub mod inbox;
pub mod permissions;
pub mod request;
pub mod retention;
pub mod saga;
pub mod start;

pub use id::{ClerkOrgId, ClerkUserId, EmailAddress, IdempotencyKey, Invalid, SvixId};
pub use request::{Creator, OnboardingRequest, Source};
pub use start::{StartError, Started, start, start_from_inbox};
