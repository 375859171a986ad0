//! Job handlers, one module per family of job kinds.

pub mod clerk;
