//! The producing side of foodpipe: events into the topic, keyed so Kafka's
//! default partitioner and foodpipe's agree.
//!
//! Each command is `run(config, shutdown)`: the binary parses flags into a
//! config and passes `ctrl_c()`; tests call the same functions directly.
//!
//! - [`produce`]: generate order events and produce them, keyed by
//!   customer, to the partition Kafka's default partitioner would pick.
//! - [`send`]: produce `key<TAB>value` lines from stdin, like
//!   `kafka-console-producer`.
//! - `outbound`: what both share: a source thread, a bounded channel and
//!   the batching `kafka::Producer`.

mod outbound;
pub mod produce;
pub mod send;
