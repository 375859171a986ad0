//! inbox (being written)
