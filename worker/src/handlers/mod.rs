//! Job handlers, one module per family of job kinds.

pub mod clerk;
pub mod retention;
