//! The operator commands of foodpipe: rebuilding the database from the
//! topic, inspecting and resetting consumer groups, checking a cluster and
//! reading a topic on the console.
//!
//! - [`rebuild`]: replay the topic into a shadow schema through the
//!   consumer runtime (`pipeline::consume`), fence the group and swap.
//! - [`groups`]: `group list`, `group describe` (read-only) and
//!   `group reset`.
//! - [`doctor`]: `doctor` and `cluster`, the broker checks.
//! - [`tail`]: the console consumer.

pub mod doctor;
pub mod groups;
pub mod rebuild;
pub mod tail;
