//! foodpipe's commands as library functions.
//!
//! Each command is `run(config, shutdown)`: the binary parses flags into a
//! config and passes `ctrl_c()`; tests call the same functions directly.
//!
//! - [`produce`]: generate order events and produce them, keyed by
//!   customer, to the partition Kafka's default partitioner would pick.
//! - [`send`]: produce `key<TAB>value` lines from stdin, like
//!   `kafka-console-producer`.
//! - [`consume`]: fold every partition of the topic into PostgreSQL, one
//!   transaction per fetched batch, from the stored offsets.
//! - [`watch`]: the live picture of partitions, offsets, owners and lag
//!   in the terminal (ratatui), read-only.

pub mod consume;
pub mod doctor;
pub mod groups;
mod observe;
mod outbound;
pub mod produce;
pub mod projections;
pub mod rebuild;
mod retry;
pub mod send;
pub mod tail;
pub mod watch;
