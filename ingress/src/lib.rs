//! The public front door of onboard: Clerk webhooks verified with Svix and stored once per
//! `svix-id` (with their job, in one statement), the onboarding API, the internal health and
//! metrics endpoints, and `onboard send`'s signer. It calls into `jobs` for all SQL.

pub mod api;
pub mod error;
pub mod inbox_writer;
pub mod metrics;
pub mod rejection;
pub mod send;
pub mod settings;
pub mod signature;
pub mod startup;
pub mod state;
pub mod webhook;

pub use error::ApiError;
pub use settings::Args;
pub use settings::{DEV_WEBHOOK_SECRET, Settings, SettingsError, WebhookSecrets};
pub use signature::Clock;
pub use startup::{Application, Running, internal_role, internal_router, router, spawn};
pub use state::AppState;
