//! The offset mirror: this member's stored offsets, copied to the broker's
//! group coordinator for the Kafka tools (`kafka-consumer-groups`, Kafka
//! UI, lag exporters, librdkafka's `committed()`).
//!
//! PostgreSQL stays the only source of truth (invariant 10): the mirror
//! reads what workers committed, never the other way round, and nothing
//! reads the broker's copy back into the fold. It runs in a task of its
//! own and is told things by message, so a broker that does not answer
//! slows nothing; a failure is counted (`foodpipe_offset_mirror_errors_total`;
//! `foodpipe_offset_mirror_drift` says how far the copy trails)
//! and logged, at most once a minute.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kafka::BrokerGroups;
use tokio::sync::mpsc;

use super::status::Status;

/// Every this many intervals, all owned partitions are committed again,
/// changed or not: a broker expires a group's offsets some time after their
/// last commit (Kafka: `offsets.retention.minutes`, 7 days by default), and
/// an idle partition must not vanish from the tools.
const REFRESH_EVERY: u32 = 12;

/// How long a clean shutdown waits for the last commit.
const FINAL_COMMIT_WAIT: Duration = Duration::from_secs(3);

/// Failures are logged at most this often (all are counted).
const LOG_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug)]
enum Message {
    /// A partition this member let go of: its last stored offset, now.
    Released(i32, i64),
    /// Shutdown: these final offsets, then stop.
    Final(Vec<(i32, i64)>),
}

/// The handle the coordinator holds.
#[derive(Debug)]
pub(crate) struct Mirror {
    tx: mpsc::UnboundedSender<Message>,
    task: tokio::task::JoinHandle<()>,
}

impl Mirror {
    /// Starts mirroring `group`'s offsets on `topic` every `interval`.
    pub(crate) fn start(
        groups: BrokerGroups,
        group: String,
        topic: String,
        status: Status,
        interval: Duration,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(
            Task {
                groups,
                group,
                topic,
                status,
                interval,
                mirrored: BTreeMap::new(),
                last_logged: None,
                failures_unlogged: 0,
            }
            .run(rx),
        );
        Self { tx, task }
    }

    /// A released partition's last stored offset, committed at once.
    pub(crate) fn released(&self, partition: i32, offset: i64) {
        let _ = self.tx.send(Message::Released(partition, offset));
    }

    /// Commits the final offsets and stops, waiting a few seconds at most.
    pub(crate) async fn finish(self, last: Vec<(i32, i64)>) {
        let _ = self.tx.send(Message::Final(last));
        if tokio::time::timeout(FINAL_COMMIT_WAIT, self.task)
            .await
            .is_err()
        {
            tracing::warn!(
                "the offset mirror did not finish its last commit within {FINAL_COMMIT_WAIT:?}; PostgreSQL has the offsets"
            );
        }
    }
}

struct Task {
    groups: BrokerGroups,
    group: String,
    topic: String,
    status: Status,
    interval: Duration,
    /// What the broker was last told, by partition.
    mirrored: BTreeMap<i32, i64>,
    last_logged: Option<Instant>,
    failures_unlogged: u64,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Message>) {
        let mut timer = tokio::time::interval(self.interval);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks = 0u32;
        loop {
            tokio::select! {
                _ = timer.tick() => {
                    ticks = ticks.wrapping_add(1);
                    let refresh = ticks.is_multiple_of(REFRESH_EVERY);
                    let owned = self.status.committed_offsets();
                    let due: Vec<(i32, i64)> = owned
                        .iter()
                        .copied()
                        .filter(|(p, o)| refresh || self.mirrored.get(p) != Some(o))
                        .collect();
                    self.commit(due).await;
                    self.export_drift(&owned);
                }
                message = rx.recv() => match message {
                    Some(Message::Released(p, offset)) => self.commit(vec![(p, offset)]).await,
                    Some(Message::Final(last)) => {
                        let due: Vec<(i32, i64)> = last
                            .into_iter()
                            .filter(|(p, o)| self.mirrored.get(p) != Some(o))
                            .collect();
                        self.commit(due).await;
                        return;
                    }
                    None => return,
                },
            }
        }
    }

    /// Sets `foodpipe_offset_mirror_drift` for each owned partition: its
    /// stored offset minus the offset this member last mirrored (0 after a
    /// round that committed it). A partition this member has not mirrored
    /// yet has no drift to show; a mirror failing from the start is seen
    /// in `foodpipe_offset_mirror_errors_total`. Set every round, so the
    /// gauge of a partition that left this member expires with its others.
    fn export_drift(&self, owned: &[(i32, i64)]) {
        for (partition, stored) in owned {
            if let Some(mirrored) = self.mirrored.get(partition) {
                metrics::gauge!(
                    "foodpipe_offset_mirror_drift",
                    "group" => self.group.clone(),
                    "topic" => self.topic.clone(),
                    "partition" => partition.to_string()
                )
                .set((stored - mirrored) as f64);
            }
        }
    }

    async fn commit(&mut self, offsets: Vec<(i32, i64)>) {
        if offsets.is_empty() {
            return;
        }
        match self.groups.commit(&self.group, &self.topic, &offsets).await {
            Ok(()) => {
                for (p, o) in offsets {
                    self.mirrored.insert(p, o);
                }
                if self.failures_unlogged > 0 || self.last_logged.is_some() {
                    tracing::info!("the offset mirror commits again");
                    self.last_logged = None;
                    self.failures_unlogged = 0;
                }
            }
            Err(error) => {
                metrics::counter!(
                    "foodpipe_offset_mirror_errors_total",
                    "group" => self.group.clone(),
                    "topic" => self.topic.clone()
                )
                .increment(1);
                self.failures_unlogged += 1;
                if self.last_logged.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                    tracing::warn!(
                        %error,
                        failures = self.failures_unlogged,
                        "cannot mirror offsets to the broker (for the Kafka tools only: PostgreSQL has them, the pipeline goes on)"
                    );
                    self.last_logged = Some(Instant::now());
                    self.failures_unlogged = 0;
                }
            }
        }
    }
}
