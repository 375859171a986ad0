//! The `onboard` command's library: the settings every role shares (database, internal
//! listener, logs) and the process that runs one or more roles behind one internal listener.

pub mod process;
pub mod settings;
