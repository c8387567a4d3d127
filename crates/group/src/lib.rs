//! Consumer groups without a Kafka group coordinator: the assignors.
//!
//! rskafka has no group protocol, so foodpipe emulates it with PostgreSQL
//! as the coordinator, visible in three places:
//!
//! - `group_members` (SQL in `store::membership`): one row per live
//!   `consume` process with its last heartbeat; `consumer_groups.generation`
//!   goes up on every join, leave or expiry.
//! - `consumer_offsets.owner` / `.epoch`: the lease on each partition. A
//!   member takes a partition by bumping its epoch, and every batch commit
//!   checks `owner = me AND epoch = my epoch` in the same transaction, so a
//!   member that lost a partition (paused, partitioned, slow) can never
//!   commit to it again (invariant 5).
//! - The coordinator in `pipeline::consume`: heartbeats on its own timer,
//!   computes the assignment with an [`Assignor`] and carries out the
//!   [`rebalance::decide`] actions: release what is no longer this
//!   member's, take what is once its previous owner let go or expired.
//!
//! Every member computes the same assignment from the same inputs — the
//! sorted live members and the partition count — so no leader is needed.
//! This crate holds the pure parts: the assignors and the rebalance
//! decision.

pub mod assign;
pub mod reach;
pub mod rebalance;

pub use assign::Assignor;
