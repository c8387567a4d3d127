//! A partition worker: applies the batches the fetcher brings for one
//! owned partition, each in one PostgreSQL transaction with the partition's
//! next offset (invariant 3), checked against its lease epoch (invariant 5).
//!
//! It has one way out, [`Exit`], which always tells the coordinator why the
//! tenure ended, so the coordinator can release, re-take or keep the
//! partition stopped.

use std::sync::Arc;

use store::{Batch, Store, StoredOffset};
use tokio::sync::{Notify, mpsc, watch};

use super::dlt::DeadLetterTopic;
use super::error::{Action, Error};
use super::fetcher::Delivery;
use super::keys;
use super::status::{State, Status};
use super::{ConsumeConfig, PartitionSummary};
use crate::observe::PartitionMetrics;
use crate::retry::Backoff;
use events::escape_for_terminal;

/// Why a worker ended.
#[derive(Debug)]
pub(crate) enum Exit {
    /// Asked to stop (the partition moved, or shutdown): the batch in hand
    /// was finished first. The coordinator releases the lease.
    Released,
    /// It reached its `--until-caught-up` target.
    CaughtUp,
    /// A commit found the lease gone: another member owns the partition.
    LeaseLost,
    /// The partition must be taken again: its offset is no longer in the
    /// log (the take applies `--offset-reset`), or the topic went away.
    Retake(Error),
    /// Stopped on an error retrying cannot fix; the lease is kept and the
    /// partition marked stopped.
    Stopped(Error),
}

/// Everything a worker needs for one tenure on one partition.
pub(crate) struct Worker {
    pub config: Arc<ConsumeConfig>,
    pub store: Store,
    pub status: Status,
    pub partition: i32,
    /// This member and the lease epoch of this tenure.
    pub lease: (String, i64),
    pub start: StoredOffset,
    pub target: Option<i64>,
    pub deliveries: mpsc::Receiver<Delivery>,
    /// Tells the fetcher a batch was taken (room for the next).
    pub room: Arc<Notify>,
    pub stop: watch::Receiver<bool>,
    pub dead_letter_topic: Option<Arc<DeadLetterTopic>>,
    pub bar: indicatif::ProgressBar,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("partition", &self.partition)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Applies batches until the tenure ends, and says why.
    pub(crate) async fn run(mut self) -> (i32, Exit, PartitionSummary) {
        let mut summary = PartitionSummary {
            partition: self.partition,
            start_offset: self.start.next_offset,
            next_offset: self.start.next_offset,
            high_watermark: self.start.next_offset,
            ..PartitionSummary::default()
        };
        let exit = self.work(&mut summary).await;
        if let Exit::Stopped(error) = &exit {
            let lease = (self.lease.0.as_str(), self.lease.1);
            super::offsets::record_stop(
                &self.store,
                &self.status,
                &self.config,
                self.partition,
                Some(lease),
                &error.to_string(),
            )
            .await;
        }
        self.bar.finish_and_clear();
        (self.partition, exit, summary)
    }

    async fn work(&mut self, summary: &mut PartitionSummary) -> Exit {
        let partition = self.partition;
        let metrics = PartitionMetrics::new(&self.config.group, &self.config.topic, partition);
        metrics.start_counters();
        let mut committed = self.start.next_offset;
        // One warning per tenure about keys; every one is counted.
        let mut warned_about_keys = false;
        loop {
            if self.target.is_some_and(|t| committed >= t) {
                return Exit::CaughtUp;
            }
            if *self.stop.borrow() {
                return Exit::Released;
            }
            let delivery = tokio::select! {
                _ = self.stop.changed() => return Exit::Released,
                delivery = self.deliveries.recv() => match delivery {
                    Some(d) => d,
                    // The fetcher dropped this partition (shutdown).
                    None => return Exit::Released,
                },
            };
            self.room.notify_one();
            let fetched = match delivery {
                Delivery::Batch(mut f) => {
                    f.decode(self.config.max_record_bytes);
                    f
                }
                Delivery::Failed(e) => {
                    let error = Error::Kafka(e);
                    return match error.action() {
                        Action::Stop => Exit::Stopped(error),
                        Action::Retake | Action::Retry => Exit::Retake(error),
                    };
                }
                Delivery::Corrupt(corrupt) => {
                    return Exit::Stopped(Error::CorruptBatch {
                        topic: self.config.topic.clone(),
                        partition,
                        first: corrupt.first_offset,
                        last: corrupt
                            .last_offset
                            .map_or("(unreadable)".to_owned(), |l| l.to_string()),
                        cause: corrupt.error,
                    });
                }
                Delivery::Broken {
                    offset,
                    attempts,
                    error,
                } => {
                    return Exit::Stopped(Error::FetchKeepsFailing {
                        topic: self.config.topic.clone(),
                        partition,
                        offset,
                        attempts,
                        source: error,
                    });
                }
                Delivery::PastLogEnd {
                    offset,
                    high_watermark,
                } => {
                    tracing::warn!(
                        partition,
                        offset,
                        high_watermark,
                        "the stored offset is past the log end: the topic was recreated; taking the partition again to apply --offset-reset"
                    );
                    return Exit::Retake(Error::PastLogEnd {
                        topic: self.config.topic.clone(),
                        partition,
                        offset,
                        high_watermark,
                    });
                }
            };
            if fetched.from_offset != committed {
                // The fetcher and the stored offset disagree; never apply
                // out of order. A fresh take re-reads the stored offset.
                return Exit::Retake(Error::Internal(format!(
                    "partition {partition}: batch from offset {} but the stored offset is {committed}",
                    fetched.from_offset
                )));
            }
            let batch = Batch {
                group: &self.config.group,
                topic: &self.config.topic,
                partition,
                from_offset: fetched.from_offset,
                next_offset: fetched.next_offset,
                records: &fetched.records,
                incarnation: self.start.incarnation,
                lease: Some((self.lease.0.as_str(), self.lease.1)),
            };
            let mut backoff = Backoff::new(self.config.max_backoff);
            let applied = loop {
                match self.store.apply_batch(&batch).await {
                    Ok(applied) => break applied,
                    Err(e) => {
                        let error = Error::Store(e);
                        match error.action() {
                            Action::Retry => {
                                metrics.retry("commit");
                                let delay = backoff.next_delay();
                                tracing::warn!(partition, offset = fetched.from_offset, %error, "commit failed, nothing stored; retrying in {delay:?}");
                                self.status.set(
                                    partition,
                                    State::Retrying {
                                        what: "commit",
                                        error: error.to_string(),
                                    },
                                );
                                // A stop while PostgreSQL is away gives the
                                // batch up: nothing of it was stored, the
                                // next owner fetches it again.
                                tokio::select! {
                                    _ = self.stop.changed() => return Exit::Released,
                                    () = tokio::time::sleep(delay) => {}
                                }
                            }
                            Action::Retake => return Exit::LeaseLost,
                            Action::Stop => return Exit::Stopped(error),
                        }
                    }
                }
            };
            self.status.recover(partition, "commit");
            committed = fetched.next_offset;
            // A batch that met another log of the partition moved the
            // stored offset to a new incarnation (store::Applied).
            self.start.incarnation = applied.incarnation;
            let mismatched = keys::mismatches(&fetched.records);
            for reason in [keys::Mismatch::Missing, keys::Mismatch::Differs] {
                let n = mismatched.iter().filter(|m| m.mismatch == reason).count();
                metrics.key_mismatches(reason.as_str(), n as u64);
            }
            if let Some(first) = mismatched.first()
                && !warned_about_keys
            {
                warned_about_keys = true;
                let what = match first.mismatch {
                    keys::Mismatch::Missing => "a record has no key",
                    keys::Mismatch::Differs => "a record's key is not its event's customer_id",
                };
                tracing::warn!(
                    partition,
                    offset = first.offset,
                    key = %first.key.as_deref().map_or("(none)".into(), |k| escape_for_terminal(k.as_bytes())),
                    customer_id = %escape_for_terminal(first.customer_id.as_bytes()),
                    "{what}: applied, but this order's events may be split across partitions and applied out of order; key records by customer_id (every one is counted in foodpipe_key_mismatch_total; this warning comes once per partition)"
                );
            }
            let seconds = fetched.started.elapsed().as_secs_f64();
            metrics.batch(&applied, seconds);
            self.status
                .positions(partition, Some(committed), Some(fetched.high_watermark));
            tracing::debug!(
                partition,
                first_offset = fetched.from_offset,
                last_offset = fetched.next_offset - 1,
                rows = fetched.records.len(),
                events = applied.events,
                dead_letters = applied.dead_letters.len(),
                duration_ms = (seconds * 1000.0) as u64,
                "batch committed"
            );
            summary.batches += 1;
            summary.events += applied.events as u64;
            summary.dead_letters += applied.dead_letters.len() as u64;
            summary.duplicates += applied.duplicates as u64;
            summary.next_offset = committed;
            summary.high_watermark = summary.high_watermark.max(fetched.high_watermark);
            if let Some(dlt) = &self.dead_letter_topic
                && !applied.dead_letters.is_empty()
            {
                dlt.publish(
                    &self.config.topic,
                    partition,
                    &fetched.records,
                    &applied.dead_letters,
                )
                .await;
            }
            self.bar.set_position(committed.max(0) as u64);
            // Dropping `fetched` here frees its bytes from the budget.
        }
    }
}
