//! What every role of one process shares on its internal listener: the process-wide metrics
//! recorder (Prometheus text through `metrics-exporter-prometheus`) and the listener's router,
//! which merges the routers of the roles the process runs under one `/healthz`, `/readyz` and
//! `/metrics`.

pub mod internal;
pub mod recorder;

pub use internal::{Readiness, Role, router, serve};
pub use recorder::{handle, render};
