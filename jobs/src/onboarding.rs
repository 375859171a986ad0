//! onboarding (being written)
