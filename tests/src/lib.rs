//! integration tests support
