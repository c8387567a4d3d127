//! The consumer runtime of foodpipe: a group member that folds every
//! partition of the topic into PostgreSQL, one transaction per fetched
//! batch, from the stored offsets.
//!
//! - [`consume`]: `run(config, shutdown)`, the member as actors: the
//!   coordinator (membership, leases, assignment), the fetcher, one worker
//!   per partition, the offsets, the partition states and the broker
//!   health.
//! - `observe`: `/metrics` and `/healthz` (axum and
//!   metrics-exporter-prometheus); it knows nothing of `consume`, which
//!   gives it the metrics to record and a health check to answer.
//! - [`projections`]: the projections a member checks and attaches at
//!   start.
//! - [`retry`]: the capped, jittered backoff (also `ops::rebuild`'s).

pub mod consume;
mod observe;
pub mod projections;
pub mod retry;
