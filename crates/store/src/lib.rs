//! foodpipe's PostgreSQL side.
//!
//! - [`Store::connect`]: a deadpool pool from a `DATABASE_URL`, checked once
//!   so a wrong URL fails at start with a clear message. Connecting writes
//!   nothing, so read-only commands work with a role that may only SELECT.
//! - [`Store::migrate`]: the schema if one is named, and the SQL files of
//!   `migrations/`, embedded and applied by refinery under an advisory lock
//!   (several consumers may start at once). [`Store::check_migrated`] is
//!   what read-only commands do instead: check, change nothing.
//! - [`fold`]: the pure part of a batch: which records are new, which are
//!   duplicates, what each touched order becomes, which are dead letters.
//! - [`Store::apply_batch`]: one transaction per fetched batch: history, view,
//!   dead letters and the partition's next offset commit together or not at
//!   all (invariant 3).
//!
//! This crate never depends on rskafka: it sees records as offsets and bytes.

mod apply;
mod asof;
mod connect;
mod error;
pub mod fold;
pub mod headers;
mod membership;
mod migrate;
mod offsets;
pub mod projection;
mod projection_fill;
pub use projection_fill::FILL_PARTITIONS_AT_ONCE;
mod projection_store;
mod report;
mod schema_name;

pub use apply::{Applied, Batch};
pub use asof::{OrderAsOf, OrdersAsOf};
pub use connect::{Store, StoreConfig, describe_target};
/// A transaction on a pooled connection (`rebuild`'s swap runs in one).
pub use deadpool_postgres::Transaction;
pub use error::{Error, Result};
pub use fold::SourceRecord;
pub use membership::{
    BrokerReach, GroupRow, GroupView, Lease, LeaseRow, Member, MemberRow, PartitionOwner,
    RebuildClaim,
};
pub use migrate::Migrated;
pub use offsets::{Gap, StoredOffset};
pub use projection::{Definition, Kind as ProjectionKind, ProjectionRow, TableRows};
pub use projection_store::{Ensured, primary_key, quote as quote_identifier};
pub use report::{DeadLetterList, DeadLetterRow, GapRow, Gaps, StatusReport};
pub use schema_name::{MAX_SCHEMA_NAME_BYTES, check_schema_name, derived_schema_name};

/// The `DATABASE_URL` when none is given: the local stack `make up` starts
/// (role `kafka_user`, database `food_orders`). The one definition of it.
pub const DEFAULT_DATABASE_URL: &str =
    "postgres://kafka_user:kafka_password@localhost:5432/food_orders";

/// The suffix of a rebuild's shadow schema (`public_rebuild`); its name
/// also keys the rebuild's claim, which a projection's fill holds too.
pub const REBUILD_SHADOW_SUFFIX: &str = "_rebuild";
