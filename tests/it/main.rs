//! Integration tests: real `foodpipe` processes against a real
//! Kafka-protocol broker and a real PostgreSQL, no mocks.
//!
//! `make up` starts both. Every test makes its own database (from the
//! migrations) and its own random topic, so tests run in parallel. A test
//! whose broker or database is missing FAILS with a message saying what is
//! missing: a skipped integration test proves nothing.

mod bad_input;
mod cli;
mod cluster;
mod codecs;
mod consumer;
mod end_to_end;
mod exactly_once;
mod groups;
mod harness;
mod mirror;
mod monitoring;
mod partitioner;
mod producer;
mod projections;
mod rebuild;
mod retention;
mod round_trips;
mod runtime;
mod safety;
#[cfg(all(feature = "tls", feature = "sasl"))]
mod security;
mod static_binary;
mod timetravel;
mod tools;
mod watch;
