//! Consumer groups without a Kafka group coordinator.
//!
//! rskafka has no group protocol, so foodpipe emulates it with PostgreSQL
//! as the coordinator, visible in two tables:
//!
//! - `group_members`: one row per live `consume` process, with its last
//!   heartbeat; `consumer_groups.generation` goes up on every join, leave
//!   or expiry.
//! - `consumer_offsets.owner` / `.epoch`: the lease on each partition. A
//!   member takes a partition by bumping its epoch, and every batch commit
//!   checks `owner = me AND epoch = my epoch` in the same transaction, so a
//!   member that lost a partition (paused, partitioned, slow) can never
//!   commit to it again (invariant 5).
//!
//! Every member computes the same assignment from the same inputs
//! ([`Assignor`]): the sorted live members and the partition count. It then
//! releases what is no longer its own and takes what is, once the previous
//! owner has released it or has expired.

pub mod assign;

pub use assign::Assignor;
