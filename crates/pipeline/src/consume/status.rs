//! What each partition of this member is doing, shared by the workers, the
//! coordinator, `/healthz`, the metrics and the heartbeat's state line.
//!
//! "Nothing stalls silently" lives here: every partition this member is
//! assigned is in exactly one [`State`], and [`Status::verdict`] turns
//! those states into the health answer: 503 naming each partition that is
//! stopped, or that has had lag and no progress for longer than the stall
//! timeout (with the reason it is waiting).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::observe::PartitionMetrics;

/// What one partition is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Assigned here; the lease, offsets and leader are being read.
    Taking,
    /// Assigned here, but another live member still holds its lease (it
    /// releases once it sees the same assignment).
    Waiting(String),
    /// Owned: fetching and committing.
    Running,
    /// Owned, and an operation keeps failing with a transient error
    /// (broker or PostgreSQL unavailable): `what` is being retried.
    Retrying { what: &'static str, error: String },
    /// Owned, and stopped on an error retrying cannot fix.
    Stopped(String),
    /// `--until-caught-up`: reached its target.
    Done,
}

impl State {
    /// The label of `foodpipe_partition_state`.
    fn label(&self) -> &'static str {
        match self {
            State::Taking => "taking",
            State::Waiting(_) => "waiting",
            State::Running => "running",
            State::Retrying { .. } => "retrying",
            State::Stopped(_) => "stopped",
            State::Done => "done",
        }
    }

    const LABELS: [&'static str; 6] = [
        "taking", "waiting", "running", "retrying", "stopped", "done",
    ];
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            State::Taking => f.write_str("taking"),
            State::Waiting(holder) => write!(f, "waiting for {holder} to release it"),
            State::Running => f.write_str("running"),
            State::Retrying { what, error } => write!(f, "retrying {what}: {error}"),
            State::Stopped(error) => write!(f, "stopped: {error}"),
            State::Done => f.write_str("caught up"),
        }
    }
}

/// One partition's entry.
#[derive(Debug)]
struct Entry {
    state: State,
    /// The stored next offset, once known.
    committed: Option<i64>,
    /// The log-end offset last seen (fetch or ListOffsets).
    high_watermark: Option<i64>,
    /// When the stored offset last moved, or the partition entered its
    /// current tenure here: "no progress since".
    progress_at: Instant,
    metrics: PartitionMetrics,
}

impl Entry {
    fn lag(&self) -> Option<i64> {
        Some((self.high_watermark? - self.committed?).max(0))
    }
}

/// The member-wide view, cheap to clone (an `Arc`).
#[derive(Debug, Clone)]
pub struct Status {
    inner: Arc<Mutex<BTreeMap<i32, Entry>>>,
    group: Arc<str>,
    topic: Arc<str>,
    stall_timeout: Duration,
}

/// A partition that is stopped, for the summary and the exit status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoppedPartition {
    pub partition: i32,
    pub error: String,
}

impl Status {
    pub fn new(group: &str, topic: &str, stall_timeout: Duration) -> Self {
        Self {
            inner: Arc::default(),
            group: group.into(),
            topic: topic.into(),
            stall_timeout,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<i32, Entry>) -> R) -> R {
        // A poisoned lock means a panic elsewhere already; the map is still
        // a consistent snapshot of states, so keep using it.
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut map)
    }

    /// Sets a partition's state, creating its entry (and its metrics) on
    /// first use. Entering a new state from a different one restarts the
    /// "no progress since" clock only when the partition starts a tenure
    /// (taking), so a partition that flaps between retrying and running
    /// without committing still counts as stalled.
    pub fn set(&self, partition: i32, state: State) {
        self.with(|map| {
            let entry = map.entry(partition).or_insert_with(|| Entry {
                state: State::Taking,
                committed: None,
                high_watermark: None,
                progress_at: Instant::now(),
                metrics: PartitionMetrics::new(&self.group, &self.topic, partition),
            });
            if state == State::Taking && entry.state != State::Taking {
                entry.progress_at = Instant::now();
            }
            entry.metrics.state(state.label(), &State::LABELS);
            entry.state = state;
        });
    }

    /// Back to running after `what` succeeded again, if that was what was
    /// being retried (another retry, of something else, stays shown).
    pub fn recover(&self, partition: i32, what: &'static str) {
        let retrying = matches!(
            self.state(partition),
            Some(State::Retrying { what: w, .. }) if w == what
        );
        if retrying {
            self.set(partition, State::Running);
        }
    }

    /// The partition is no longer this member's concern (released or
    /// assigned elsewhere): its entry and its gauges go.
    pub fn remove(&self, partition: i32) {
        self.with(|map| {
            if let Some(entry) = map.remove(&partition) {
                entry.metrics.forget(&State::LABELS);
            }
        });
    }

    /// The stored offset and the log end, as just learned. A moved stored
    /// offset is progress.
    pub fn positions(&self, partition: i32, committed: Option<i64>, high_watermark: Option<i64>) {
        self.with(|map| {
            let Some(entry) = map.get_mut(&partition) else {
                return;
            };
            if let Some(c) = committed {
                if entry.committed != Some(c) {
                    entry.progress_at = Instant::now();
                }
                entry.committed = Some(c);
            }
            if let Some(h) = high_watermark {
                entry.high_watermark = Some(h);
            }
            if let (Some(c), Some(h)) = (entry.committed, entry.high_watermark) {
                entry.metrics.positions(c, h);
            }
        });
    }

    pub fn state(&self, partition: i32) -> Option<State> {
        self.with(|map| map.get(&partition).map(|e| e.state.clone()))
    }

    /// The stored offset of every partition this member holds (for the
    /// offset mirror).
    pub fn committed_offsets(&self) -> Vec<(i32, i64)> {
        self.with(|map| {
            map.iter()
                .filter(|(_, e)| {
                    matches!(
                        e.state,
                        State::Running | State::Retrying { .. } | State::Stopped(_) | State::Done
                    )
                })
                .filter_map(|(p, e)| e.committed.map(|c| (*p, c)))
                .collect()
        })
    }

    pub fn stopped(&self) -> Vec<StoppedPartition> {
        self.with(|map| {
            map.iter()
                .filter_map(|(p, e)| match &e.state {
                    State::Stopped(error) => Some(StoppedPartition {
                        partition: *p,
                        error: error.clone(),
                    }),
                    _ => None,
                })
                .collect()
        })
    }

    /// `Ok` if every partition makes progress or has nothing to do; else
    /// one line per partition that is stopped or stalled, saying why.
    pub fn verdict(&self) -> Result<(), String> {
        let problems: Vec<String> = self.with(|map| {
            map.iter()
                .filter_map(|(p, e)| match &e.state {
                    State::Stopped(error) => Some(format!("partition {p} stopped: {error}")),
                    State::Done => None,
                    state => {
                        let silent = e.progress_at.elapsed();
                        // Waiting for a lease or taking counts as stalled
                        // whatever the lag: nobody works the partition.
                        let lagging = e.lag().is_none_or(|l| l > 0)
                            || matches!(state, State::Waiting(_) | State::Taking);
                        (lagging && silent > self.stall_timeout).then(|| {
                            format!(
                                "partition {p} made no progress for {} s with lag {} ({state})",
                                silent.as_secs(),
                                e.lag().map_or("unknown".to_owned(), |l| l.to_string()),
                            )
                        })
                    }
                })
                .collect()
        });
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }

    /// The member's one-line state for `group describe`.
    pub fn summary_line(&self) -> String {
        let verdict = self.verdict();
        self.with(|map| {
            let count = |want: &str| map.values().filter(|e| e.state.label() == want).count();
            let (running, waiting, taking, stopped, retrying, done) = (
                count("running"),
                count("waiting"),
                count("taking"),
                count("stopped"),
                count("retrying"),
                count("done"),
            );
            let mut line = if stopped + retrying > 0 || verdict.is_err() {
                "degraded".to_owned()
            } else if waiting + taking > 0 {
                "rebalancing".to_owned()
            } else if !map.is_empty() && done == map.len() {
                "caught up".to_owned()
            } else {
                "stable".to_owned()
            };
            let mut parts = vec![format!("{running} running")];
            for (n, what) in [
                (taking, "taking"),
                (waiting, "waiting"),
                (retrying, "retrying"),
                (stopped, "stopped"),
                (done, "done"),
            ] {
                if n > 0 {
                    parts.push(format!("{n} {what}"));
                }
            }
            line.push_str(&format!(" ({})", parts.join(", ")));
            line
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A partition stopped on a permanent error makes the verdict fail, naming it and the error.
    #[test]
    fn stopped_partition_fails_health() {
        let s = Status::new("g", "t", Duration::from_secs(60));
        s.set(0, State::Running);
        s.set(1, State::Stopped("cannot decode batch at 40".into()));
        let verdict = s.verdict().expect_err("unhealthy");
        assert!(
            verdict.contains("partition 1 stopped: cannot decode batch at 40"),
            "{verdict}"
        );
        assert!(!verdict.contains("partition 0"), "{verdict}");
        assert_eq!(s.summary_line(), "degraded (1 running, 1 stopped)");
    }

    /// Lag without progress past the stall timeout is unhealthy; lag 0 or recent progress is fine.
    #[test]
    fn stall_needs_lag_and_silence() {
        let s = Status::new("g", "t", Duration::ZERO);
        s.set(0, State::Running);
        s.positions(0, Some(10), Some(10));
        s.set(
            1,
            State::Retrying {
                what: "fetch",
                error: "connection refused".into(),
            },
        );
        s.positions(1, Some(10), Some(25));
        std::thread::sleep(Duration::from_millis(5));
        let verdict = s.verdict().expect_err("partition 1 stalls");
        assert!(
            verdict.contains("partition 1 made no progress"),
            "{verdict}"
        );
        assert!(verdict.contains("lag 15"), "{verdict}");
        assert!(
            verdict.contains("retrying fetch: connection refused"),
            "{verdict}"
        );
        assert!(!verdict.contains("partition 0"), "{verdict}");
        let patient = Status::new("g", "t", Duration::from_secs(3600));
        patient.set(1, State::Running);
        patient.positions(1, Some(10), Some(25));
        assert_eq!(patient.verdict(), Ok(()));
    }
}
