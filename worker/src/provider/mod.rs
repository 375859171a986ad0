//! HTTP clients of the external providers onboarding talks to — Twilio's Accounts API, Resend's
//! emails API and Clerk's Backend API — with one error classification for all three
//! ([`ProviderError`]). Base URLs and credentials come from config structs (secrets as
//! [`secrecy::SecretString`], redacted from `Debug`), so the same clients run against the real
//! providers and the `sandbox` crate.
//!
//! Retries: a single call retries connection errors (nothing sent) at most twice with short
//! delays (`backon`); every other failure is returned to the caller, and the durable job queue
//! does the real retries.

mod clerk;
mod error;
mod http;
pub mod metrics;
mod resend;
mod twilio;

use std::time::Duration;

pub use clerk::{ClerkClient, ClerkConfig, ClerkUser};
pub use error::{ProviderError, SetupError};
pub use resend::{Email, ResendClient, ResendConfig};
pub use twilio::{AccountStatus, SubAccount, TwilioClient, TwilioConfig};

/// Default whole-call timeout of every client: shorter than the sandbox's 10 s `-slow-twilio`
/// delay, so that magic value shows up as an ambiguous failure.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
