//! ingress tests (being written)
