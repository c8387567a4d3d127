//! What `watch` shows, as plain data: a [`Reading`] is what one refresh
//! read from the broker and PostgreSQL; the [`Tracker`] keeps what only a
//! sequence of readings can tell (events per second, how long a partition
//! has not moved, rebalances) and turns each reading into a [`Snapshot`],
//! which the renderer draws. Nothing here does I/O or reads a clock: the
//! caller passes the time of each reading, so tests drive it step by step.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kafka::PartitionOffsets;
use store::{DeadLetterRow, Gaps, MemberRow, PartitionOwner};

/// How many past rates each partition keeps for its sparkline.
pub const HISTORY: usize = 30;

/// How many rebalance lines the members panel keeps.
const EVENT_LOG: usize = 20;

/// What PostgreSQL said in one refresh.
#[derive(Debug, Clone, Default)]
pub struct DbReading {
    /// The group's stored offsets, owners and epochs (`consumer_offsets`).
    pub owners: Vec<PartitionOwner>,
    /// The group's members (`group_members`), with heartbeat ages by
    /// PostgreSQL's clock.
    pub members: Vec<MemberRow>,
    /// The group's generation: bumped on every join, leave or expiry.
    pub generation: i64,
    pub dead_letter_total: i64,
    /// The newest dead letters, newest first.
    pub dead_letters: Vec<DeadLetterRow>,
    pub gaps: Gaps,
    /// Each projection's name and state (`attached` or `filling`).
    pub projections: Vec<(String, String)>,
}

/// What one refresh read. Either side may have failed; the other is still
/// shown, and the failed side keeps its last good values under a banner.
#[derive(Debug, Clone)]
pub struct Reading {
    /// Log start and log end of every partition, by partition.
    pub broker: Result<Vec<PartitionOffsets>, String>,
    pub db: Result<DbReading, String>,
    /// Wall-clock time of the reading, for the header and the event log.
    pub at: DateTime<Utc>,
}

/// How a partition is doing, worst last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PartitionState {
    /// No lag: the stored offset is at the log end.
    Ok,
    /// Lag, and the stored offset moved within the stall window.
    Lagging,
    /// Lag, and no live owner, or no movement for the stall window.
    Stalled,
    /// Its owner stopped it on an error retrying cannot fix.
    Stopped,
}

impl PartitionState {
    pub fn label(self) -> &'static str {
        match self {
            PartitionState::Ok => "ok",
            PartitionState::Lagging => "lagging",
            PartitionState::Stalled => "stalled",
            PartitionState::Stopped => "stopped",
        }
    }
}

impl fmt::Display for PartitionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// One row of the partitions table.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionView {
    pub partition: i32,
    /// The earliest offset still on the broker; `None` until the broker answered.
    pub log_start: Option<i64>,
    pub log_end: Option<i64>,
    /// The group's stored next offset in PostgreSQL, if it has one.
    pub stored: Option<i64>,
    /// Records between the stored offset (or the log start, when nothing
    /// is stored: where a new group would begin) and the log end.
    pub lag: Option<i64>,
    pub owner: Option<String>,
    /// False when the owner's heartbeat is older than the session timeout.
    pub owner_live: bool,
    pub epoch: i64,
    /// Records applied per second over the last refresh interval.
    pub rate: f64,
    /// Past rates, oldest first, at most [`HISTORY`].
    pub history: Vec<f64>,
    pub state: PartitionState,
    /// Why the owner stopped it.
    pub stopped: Option<String>,
}

/// One row of the members panel.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberView {
    pub id: String,
    pub host: String,
    pub pid: i32,
    /// Seconds since its last heartbeat, by PostgreSQL's clock.
    pub heartbeat_age: f64,
    /// Heartbeat within the session timeout.
    pub live: bool,
    /// Partitions of the topic whose lease it holds.
    pub owned: usize,
    /// Its own state line from its last heartbeat.
    pub state: String,
}

/// Everything one frame shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub topic: String,
    pub group: String,
    pub at: DateTime<Utc>,
    pub generation: i64,
    pub partitions: Vec<PartitionView>,
    pub members: Vec<MemberView>,
    pub total_lag: i64,
    /// Records applied per second, all partitions.
    pub consumed_rate: f64,
    /// Records appended to the log per second, all partitions.
    pub produced_rate: f64,
    pub dead_letter_total: i64,
    /// Newest first: (partition, offset, kind).
    pub dead_letters: Vec<(i32, i64, String)>,
    pub gaps: Gaps,
    /// Each projection's name and state (`attached` or `filling`).
    pub projections: Vec<(String, String)>,
    /// Rebalances and membership changes seen while watching, newest first.
    pub events: Vec<String>,
    /// What could not be read this time, one line each.
    pub banners: Vec<String>,
}

impl Snapshot {
    /// The row of `partition`, if the topic has it.
    pub fn partition(&self, partition: u32) -> Option<&PartitionView> {
        self.partitions
            .iter()
            .find(|p| i64::from(p.partition) == i64::from(partition))
    }
}

/// How the tracker judges partitions and members.
#[derive(Debug, Clone, Copy)]
pub struct Judgement {
    /// A partition with lag whose stored offset has not moved for this
    /// long is stalled.
    pub stall_after: Duration,
    /// A member silent for longer is no longer live (as `consume
    /// --session-timeout` decides).
    pub session_timeout: Duration,
}

impl Default for Judgement {
    fn default() -> Self {
        Self {
            stall_after: Duration::from_secs(30),
            session_timeout: Duration::from_secs(10),
        }
    }
}

/// One partition's memory across readings.
#[derive(Debug, Clone, Default)]
struct Track {
    stored: Option<i64>,
    log_end: Option<i64>,
    /// When (in the caller's time) the stored offset last moved, or was
    /// first seen.
    moved_at: Duration,
    history: VecDeque<f64>,
}

/// The group as one database reading saw it: generation, members, owner
/// per partition.
#[derive(Debug)]
struct Seen {
    generation: i64,
    members: BTreeSet<String>,
    owners: BTreeMap<i32, Option<String>>,
}

/// Turns readings into snapshots, remembering what the last ones said.
#[derive(Debug)]
pub struct Tracker {
    topic: String,
    group: String,
    judgement: Judgement,
    /// The time of the previous reading.
    last: Option<Duration>,
    tracks: BTreeMap<i32, Track>,
    /// The last good answers, shown again while a side is failing.
    broker: Vec<PartitionOffsets>,
    broker_at: Option<DateTime<Utc>>,
    db: DbReading,
    db_at: Option<DateTime<Utc>>,
    /// What the previous good database reading said about the group, to
    /// tell rebalances.
    seen: Option<Seen>,
    events: VecDeque<String>,
}

impl Tracker {
    pub fn new(topic: &str, group: &str, judgement: Judgement) -> Self {
        Self {
            topic: topic.to_owned(),
            group: group.to_owned(),
            judgement,
            last: None,
            tracks: BTreeMap::new(),
            broker: Vec::new(),
            broker_at: None,
            db: DbReading::default(),
            db_at: None,
            seen: None,
            events: VecDeque::new(),
        }
    }

    /// Takes in `reading`, made at `now` (any monotonic time, e.g. since
    /// the watch started), and returns what to show.
    pub fn update(&mut self, reading: Reading, now: Duration) -> Snapshot {
        let mut banners = Vec::new();
        let clock = |t: Option<DateTime<Utc>>| {
            t.map_or("never".to_owned(), |t| t.format("%H:%M:%S").to_string())
        };
        match reading.broker {
            Ok(offsets) => {
                self.broker = offsets;
                self.broker_at = Some(reading.at);
            }
            Err(e) => banners.push(format!(
                "broker: {e} (log offsets as of {})",
                clock(self.broker_at)
            )),
        }
        match reading.db {
            Ok(db) => {
                self.note_rebalances(&db, reading.at);
                self.db = db;
                self.db_at = Some(reading.at);
            }
            Err(e) => banners.push(format!(
                "PostgreSQL: {e} (stored offsets as of {})",
                clock(self.db_at)
            )),
        }
        let elapsed = self
            .last
            .map(|last| now.saturating_sub(last).as_secs_f64())
            .filter(|s| *s > 0.0);
        self.last = Some(now);

        let live: BTreeMap<&str, bool> = self
            .db
            .members
            .iter()
            .map(|m| {
                (
                    m.member_id.as_str(),
                    m.silent_secs <= self.judgement.session_timeout.as_secs_f64(),
                )
            })
            .collect();
        // Every partition either side knows of.
        let mut numbers: BTreeSet<i32> = self.broker.iter().map(|o| o.partition).collect();
        numbers.extend(self.db.owners.iter().map(|o| o.partition));

        let mut partitions = Vec::with_capacity(numbers.len());
        let (mut consumed_rate, mut produced_rate) = (0.0, 0.0);
        for partition in numbers {
            let offsets = self.broker.iter().find(|o| o.partition == partition);
            let row = self.db.owners.iter().find(|o| o.partition == partition);
            let stored = row.map(|o| o.next_offset);
            let log_end = offsets.map(|o| o.latest);
            let track = self.tracks.entry(partition).or_insert_with(|| Track {
                moved_at: now,
                ..Track::default()
            });
            let rate = match (elapsed, track.stored, stored) {
                (Some(secs), Some(before), Some(after)) if after >= before => {
                    (after - before) as f64 / secs
                }
                _ => 0.0,
            };
            if let (Some(secs), Some(before), Some(after)) = (elapsed, track.log_end, log_end)
                && after >= before
            {
                produced_rate += (after - before) as f64 / secs;
            }
            if track.stored != stored {
                track.moved_at = now;
            }
            track.stored = stored;
            track.log_end = log_end;
            if elapsed.is_some() {
                if track.history.len() == HISTORY {
                    track.history.pop_front();
                }
                track.history.push_back(rate);
            }
            consumed_rate += rate;

            let owner = row.and_then(|o| o.owner.clone());
            let owner_live = owner
                .as_deref()
                .is_some_and(|o| live.get(o).copied().unwrap_or(false));
            let lag = offsets.map(|o| (o.latest - stored.unwrap_or(o.earliest)).max(0));
            let stopped = row.and_then(|o| o.stopped_error.clone());
            let still = now.saturating_sub(track.moved_at) >= self.judgement.stall_after;
            let state = if stopped.is_some() {
                PartitionState::Stopped
            } else if lag.unwrap_or(0) == 0 {
                PartitionState::Ok
            } else if !owner_live || still {
                PartitionState::Stalled
            } else {
                PartitionState::Lagging
            };
            partitions.push(PartitionView {
                partition,
                log_start: offsets.map(|o| o.earliest),
                log_end,
                stored,
                lag,
                owner,
                owner_live,
                epoch: row.map_or(0, |o| o.epoch),
                rate,
                history: track.history.iter().copied().collect(),
                state,
                stopped,
            });
        }

        let members = self
            .db
            .members
            .iter()
            .map(|m| MemberView {
                id: m.member_id.clone(),
                host: m.host.clone(),
                pid: m.pid,
                heartbeat_age: m.silent_secs,
                live: live.get(m.member_id.as_str()).copied().unwrap_or(false),
                owned: partitions
                    .iter()
                    .filter(|p| p.owner.as_deref() == Some(m.member_id.as_str()))
                    .count(),
                state: m.state.clone(),
            })
            .collect();

        Snapshot {
            topic: self.topic.clone(),
            group: self.group.clone(),
            at: reading.at,
            generation: self.db.generation,
            total_lag: partitions.iter().filter_map(|p| p.lag).sum(),
            consumed_rate,
            produced_rate,
            partitions,
            members,
            dead_letter_total: self.db.dead_letter_total,
            projections: self.db.projections.clone(),
            dead_letters: self
                .db
                .dead_letters
                .iter()
                .map(|d| (d.partition, d.offset, d.kind.clone()))
                .collect(),
            gaps: self.db.gaps.clone(),
            events: self.events.iter().cloned().collect(),
            banners,
        }
    }

    /// Adds a line to the event log for each change of generation,
    /// membership or partition owner since the last good reading.
    fn note_rebalances(&mut self, db: &DbReading, at: DateTime<Utc>) {
        let members: BTreeSet<String> = db.members.iter().map(|m| m.member_id.clone()).collect();
        let owners: BTreeMap<i32, Option<String>> = db
            .owners
            .iter()
            .map(|o| (o.partition, o.owner.clone()))
            .collect();
        if let Some(Seen {
            generation,
            members: before,
            owners: owned,
        }) = &self.seen
        {
            let time = at.format("%H:%M:%S");
            let mut lines = Vec::new();
            if *generation != db.generation {
                lines.push(format!(
                    "{time} generation {generation} -> {}",
                    db.generation
                ));
            }
            for joined in members.difference(before) {
                lines.push(format!("{time} {joined} joined"));
            }
            for left in before.difference(&members) {
                lines.push(format!("{time} {left} left"));
            }
            // Partitions that changed hands, grouped by (from, to).
            let mut moves: BTreeMap<(String, String), Vec<i32>> = BTreeMap::new();
            for (partition, owner) in &owners {
                let old = owned.get(partition).cloned().flatten();
                if old != *owner {
                    let name = |o: Option<String>| o.unwrap_or_else(|| "nobody".to_owned());
                    moves
                        .entry((name(old), name(owner.clone())))
                        .or_default()
                        .push(*partition);
                }
            }
            for ((from, to), partitions) in moves {
                let list: Vec<String> = partitions.iter().map(i32::to_string).collect();
                lines.push(format!(
                    "{time} partition {} {from} -> {to}",
                    list.join(",")
                ));
            }
            // Newest reading first; one reading's lines in their order.
            for line in lines.into_iter().rev() {
                self.events.push_front(line);
            }
            self.events.truncate(EVENT_LOG);
        }
        self.seen = Some(Seen {
            generation: db.generation,
            members,
            owners,
        });
    }
}

/// What the key explorer shows for a key: each step of Kafka's default
/// partitioner, and who owns the partition it lands on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPlacement {
    /// `murmur2(key)` as Java's signed int.
    pub murmur2: i32,
    /// `toPositive(murmur2)`: the sign bit cleared.
    pub positive: i32,
    pub partitions: u32,
    /// `positive % partitions`.
    pub partition: u32,
}

impl KeyPlacement {
    /// Places `key` among `partitions` partitions; `None` while the
    /// partition count is unknown (0).
    pub fn of(key: &[u8], partitions: u32) -> Option<Self> {
        let count = std::num::NonZeroU32::new(partitions)?;
        let murmur2 = partition::murmur2(key);
        Some(Self {
            murmur2,
            positive: partition::to_positive(murmur2),
            partitions,
            partition: partition::partition_for_key(key, count),
        })
    }
}

#[cfg(test)]
mod tests;
