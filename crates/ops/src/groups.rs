//! `foodpipe group list | describe | reset`: the consumer-group tools, like
//! `kafka-consumer-groups --list / --describe / --reset-offsets`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use kafka::{KafkaConfig, OffsetAt, PartitionReader};
use store::{MemberRow, Store};

/// One partition in `group describe`.
#[derive(Debug, Clone)]
pub struct PartitionRow {
    pub topic: String,
    pub partition: i32,
    /// The stored next offset in PostgreSQL (Kafka's committed offset), if any.
    pub offset: Option<i64>,
    /// What the broker's group coordinator has for the partition: the
    /// offset mirror's copy (what the Kafka tools see), if any.
    pub broker_offset: Option<i64>,
    pub log_end: i64,
    pub lag: Option<i64>,
    pub owner: Option<String>,
    pub epoch: i64,
    /// Why its owner stopped it, if it did.
    pub stopped: Option<String>,
}

impl PartitionRow {
    /// The broker's copy minus PostgreSQL's offset, when they differ: a
    /// negative number is a mirror behind by that many records (up to one
    /// `--mirror-interval` of progress is normal while consuming).
    pub fn drift(&self) -> Option<i64> {
        match (self.broker_offset, self.offset) {
            (Some(b), Some(o)) if b != o => Some(b - o),
            _ => None,
        }
    }
}

/// What `group describe` shows.
#[derive(Debug, Clone)]
pub struct Description {
    pub group: String,
    pub generation: i64,
    /// Every partition of every topic described, by topic and partition.
    pub partitions: Vec<PartitionRow>,
    pub members: Vec<MemberRow>,
    /// Why the broker's committed offsets, or a topic, could not be read.
    pub notes: Vec<String>,
}

/// Reads the group's offsets, owners and members, the broker's committed
/// offsets for the group, and the log-end offsets of `topic`, or, like
/// `kafka-consumer-groups --describe`, of every topic the group has offsets
/// for (in PostgreSQL or on the broker) when `topic` is `None`.
pub async fn describe(
    store: &Store,
    kafka: &KafkaConfig,
    group: &str,
    topic: Option<&str>,
) -> anyhow::Result<Description> {
    let client = std::sync::Arc::new(kafka::connect(kafka).await?);
    let mut notes = Vec::new();
    let groups = store.groups().await?;
    let known = groups.iter().find(|g| g.group_id == group);
    let named = topic.is_some();
    let topics: Vec<String> = match topic {
        Some(t) => vec![t.to_owned()],
        None => known.map(|g| g.topics.clone()).unwrap_or_default(),
    };
    // Each topic's partition count (a topic deleted since is noted).
    let mut counts = Vec::new();
    for topic in &topics {
        match kafka::existing_topic_partitions(&client, topic).await {
            Ok(n) => counts.push((topic.clone(), n)),
            // Asked for by name: say so. Found in the group's offsets: the
            // topic was deleted since; note it and go on.
            Err(e) if named => return Err(e.into()),
            Err(e) => notes.push(format!("{topic}: {e}")),
        }
    }
    let wanted: Vec<(String, Vec<i32>)> = counts
        .iter()
        .map(|(t, n)| (t.clone(), (0..*n as i32).collect()))
        .collect();
    let broker = match kafka::BrokerGroups::new(std::sync::Arc::clone(&client))
        .committed(group, &wanted)
        .await
    {
        Ok(offsets) => offsets,
        Err(e) => {
            notes.push(format!("broker offsets unavailable: {e}"));
            Default::default()
        }
    };
    let mut partitions = Vec::new();
    for (topic, count) in &counts {
        let owners = store.owners(group, topic).await?;
        for p in 0..*count as i32 {
            let reader = PartitionReader::new(&client, topic, p).await?;
            let log_end = reader.offset(OffsetAt::Latest).await?;
            let row = owners.iter().find(|o| o.partition == p);
            let offset = row.map(|o| o.next_offset);
            partitions.push(PartitionRow {
                topic: topic.clone(),
                partition: p,
                offset,
                broker_offset: broker.get(&(topic.clone(), p)).copied(),
                log_end,
                lag: offset.map(|o| (log_end - o).max(0)),
                owner: row.and_then(|o| o.owner.clone()),
                epoch: row.map_or(0, |o| o.epoch),
                stopped: row.and_then(|o| o.stopped_error.clone()),
            });
        }
    }
    if topics.is_empty() {
        notes.push(format!(
            "group {group} has no offsets on any topic yet (`foodpipe group list` shows the groups)"
        ));
    }
    Ok(Description {
        group: group.to_owned(),
        generation: known.map_or(0, |g| g.generation),
        partitions,
        members: store.members(group).await?,
        notes,
    })
}

impl std::fmt::Display for Description {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let width = self
            .partitions
            .iter()
            .map(|p| p.topic.len())
            .max()
            .unwrap_or(5)
            .max(5);
        writeln!(
            f,
            "{:<20} {:<width$} {:>9} {:>14} {:>14} {:>14} {:>8}  {:<28} {:>5}",
            "GROUP",
            "TOPIC",
            "PARTITION",
            "CURRENT-OFFSET",
            "BROKER-OFFSET",
            "LOG-END-OFFSET",
            "LAG",
            "OWNER",
            "EPOCH"
        )?;
        for p in &self.partitions {
            let broker = match (p.broker_offset, p.drift()) {
                (None, _) => "-".to_owned(),
                (Some(b), None) => b.to_string(),
                (Some(b), Some(d)) => format!("{b} ({d:+})"),
            };
            writeln!(
                f,
                "{:<20} {:<width$} {:>9} {:>14} {:>14} {:>14} {:>8}  {:<28} {:>5}",
                self.group,
                p.topic,
                p.partition,
                p.offset.map_or("-".to_owned(), |o| o.to_string()),
                broker,
                p.log_end,
                p.lag.map_or("-".to_owned(), |l| l.to_string()),
                p.owner.as_deref().unwrap_or("-"),
                p.epoch
            )?;
        }
        let drifting = self
            .partitions
            .iter()
            .filter(|p| p.drift().is_some())
            .count();
        if drifting > 0 {
            writeln!(
                f,
                "{drifting} partition(s): the broker's copy (for the Kafka tools) differs from PostgreSQL's offset, shown as (broker - PostgreSQL); while consuming it trails by up to one --mirror-interval"
            )?;
        }
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
        }
        writeln!(f)?;
        writeln!(f, "members (generation {}):", self.generation)?;
        if self.members.is_empty() {
            writeln!(f, "  none")?;
        }
        for m in &self.members {
            writeln!(
                f,
                "  {:<28} host {} pid {}, last heartbeat {:.1} s ago, metrics {}: {}",
                m.member_id,
                m.host,
                m.pid,
                m.silent_secs,
                m.metrics_addr
                    .as_deref()
                    .map_or("off".to_owned(), |a| format!("http://{a}")),
                m.state
            )?;
        }
        let stopped: Vec<&PartitionRow> = self
            .partitions
            .iter()
            .filter(|p| p.stopped.is_some())
            .collect();
        if !stopped.is_empty() {
            writeln!(f)?;
            writeln!(f, "stopped partitions:")?;
            for p in stopped {
                writeln!(
                    f,
                    "  {}/{} (owner {}): {}",
                    p.topic,
                    p.partition,
                    p.owner.as_deref().unwrap_or("-"),
                    p.stopped.as_deref().unwrap_or_default()
                )?;
            }
        }
        Ok(())
    }
}

/// What `group list` shows: foodpipe's groups (PostgreSQL) and the groups
/// the broker knows.
#[derive(Debug, Clone)]
pub struct GroupList {
    pub foodpipe: Vec<store::GroupRow>,
    /// The broker's groups, or why they could not be listed.
    pub broker: Result<Vec<kafka::ListedGroup>, String>,
}

/// Lists foodpipe's groups and the broker's (ListGroups).
pub async fn list(store: &Store, kafka: &KafkaConfig) -> anyhow::Result<GroupList> {
    let foodpipe = store.groups().await?;
    let broker = match kafka::connect(kafka).await {
        Ok(client) => kafka::BrokerGroups::new(std::sync::Arc::new(client))
            .list_groups()
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    Ok(GroupList { foodpipe, broker })
}

impl std::fmt::Display for GroupList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "foodpipe groups (offsets in PostgreSQL):")?;
        if self.foodpipe.is_empty() {
            writeln!(f, "  none yet")?;
        }
        for g in &self.foodpipe {
            writeln!(
                f,
                "  {}\tgeneration {}\t{} member(s)\ttopics: {}",
                g.group_id,
                g.generation,
                g.members,
                g.topics.join(", ")
            )?;
        }
        writeln!(f, "groups on the broker (ListGroups):")?;
        match &self.broker {
            Err(e) => writeln!(f, "  cannot list them: {e}")?,
            Ok(groups) if groups.is_empty() => writeln!(f, "  none")?,
            Ok(groups) => {
                for g in groups {
                    let ours = self.foodpipe.iter().any(|o| o.group_id == g.group_id);
                    let kind = if g.protocol_type.is_empty() {
                        "standalone"
                    } else {
                        g.protocol_type.as_str()
                    };
                    writeln!(
                        f,
                        "  {}\t{kind}{}",
                        g.group_id,
                        if ours {
                            "\tfoodpipe (mirror of PostgreSQL)"
                        } else {
                            ""
                        }
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// Where `group reset` moves offsets.
#[derive(Debug, Clone, PartialEq)]
pub enum ResetTo {
    Earliest,
    Latest,
    Offset(i64),
    Datetime(DateTime<Utc>),
    ShiftBy(i64),
}

/// One partition of a reset plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanRow {
    pub partition: i32,
    pub old: Option<i64>,
    pub new: i64,
}

/// The new offset of one partition (pure): the target, clamped to what the
/// broker has, as `kafka-consumer-groups` does. `at_time` is the broker's
/// offset for the datetime, if that is the target.
pub fn new_offset(
    to: &ResetTo,
    current: Option<i64>,
    earliest: i64,
    latest: i64,
    at_time: Option<i64>,
) -> i64 {
    let wanted = match to {
        ResetTo::Earliest => earliest,
        ResetTo::Latest => latest,
        ResetTo::Offset(o) => *o,
        // No record at or after the time: the log end.
        ResetTo::Datetime(_) => at_time.filter(|o| *o >= 0).unwrap_or(latest),
        ResetTo::ShiftBy(n) => current.unwrap_or(earliest).saturating_add(*n),
    };
    wanted.clamp(earliest, latest.max(earliest))
}

/// A reset plan for a group on a topic, as `group reset` prints it: old
/// and new offset per partition, and whether it was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetPlan {
    pub group: String,
    pub topic: String,
    pub rows: Vec<PlanRow>,
    /// True if the offsets were set; false for a dry run.
    pub executed: bool,
}

impl std::fmt::Display for ResetPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:<20} {:<20} {:>9} {:>12} {:>12}",
            "GROUP", "TOPIC", "PARTITION", "OLD-OFFSET", "NEW-OFFSET"
        )?;
        for r in &self.rows {
            writeln!(
                f,
                "{:<20} {:<20} {:>9} {:>12} {:>12}",
                self.group,
                self.topic,
                r.partition,
                r.old.map_or("-".to_owned(), |o| o.to_string()),
                r.new
            )?;
        }
        if self.executed {
            writeln!(f, "offsets reset")
        } else {
            writeln!(f, "dry run: nothing changed; add --execute to apply")
        }
    }
}

/// What `group reset` is asked to do.
#[derive(Debug, Clone)]
pub struct ResetRequest<'a> {
    pub group: &'a str,
    pub topic: &'a str,
    pub to: ResetTo,
    /// Only this partition; `None` for all.
    pub partition: Option<i32>,
    /// Apply the plan; otherwise only compute it.
    pub execute: bool,
    /// Members silent for longer than this count as gone.
    pub session_timeout: Duration,
}

/// Plans a reset of a group's offsets on a topic (all partitions, or one),
/// and executes it if asked. Refuses while the group has live members.
pub async fn reset(
    store: &Store,
    kafka: &KafkaConfig,
    request: &ResetRequest<'_>,
) -> anyhow::Result<ResetPlan> {
    let ResetRequest {
        group,
        topic,
        ref to,
        partition,
        execute,
        session_timeout,
    } = *request;
    // Checked here to refuse early, before any broker round trip, and
    // again under the offset rows' lock when the offsets are written.
    let live = store.live_members(group, session_timeout).await?;
    if !live.is_empty() {
        return Err(store::Error::GroupLive {
            group: group.to_owned(),
            members: live,
        }
        .into());
    }
    let client = kafka::connect(kafka).await?;
    let count = kafka::existing_topic_partitions(&client, topic).await?;
    if let Some(p) = partition {
        anyhow::ensure!(
            p >= 0 && (p as u32) < count,
            "--partition {p} does not exist: {topic} has partitions 0..{}",
            count.saturating_sub(1)
        );
    }
    let owners = store.owners(group, topic).await?;
    let mut plan = Vec::new();
    for p in 0..count as i32 {
        if partition.is_some_and(|only| only != p) {
            continue;
        }
        let reader = PartitionReader::new(&client, topic, p).await?;
        let earliest = reader.offset(OffsetAt::Earliest).await?;
        let latest = reader.offset(OffsetAt::Latest).await?;
        let at_time = match to {
            ResetTo::Datetime(t) => Some(reader.offset(OffsetAt::Timestamp(*t)).await?),
            _ => None,
        };
        let old = owners
            .iter()
            .find(|o| o.partition == p)
            .map(|o| o.next_offset);
        plan.push(PlanRow {
            partition: p,
            old,
            new: new_offset(to, old, earliest, latest, at_time),
        });
    }
    if execute {
        let offsets: Vec<(i32, i64)> = plan.iter().map(|r| (r.partition, r.new)).collect();
        store
            .set_offsets(group, topic, &offsets, session_timeout)
            .await?;
        // The Kafka tools see the new offsets too. PostgreSQL has them
        // already, so a mirror failure is a warning, not a failed reset.
        if let Err(e) = kafka::BrokerGroups::new(std::sync::Arc::new(client))
            .commit(group, topic, &offsets)
            .await
        {
            tracing::warn!(error = %e, "offsets reset in PostgreSQL, but not mirrored to the broker; the next consume mirrors them");
        }
    }
    Ok(ResetPlan {
        group: group.to_owned(),
        topic: topic.to_owned(),
        rows: plan,
        executed: execute,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each target lands where kafka-consumer-groups would put it, clamped to the log.
    #[test]
    fn reset_targets() {
        let (e, l) = (10, 100);
        assert_eq!(new_offset(&ResetTo::Earliest, Some(50), e, l, None), 10);
        assert_eq!(new_offset(&ResetTo::Latest, Some(50), e, l, None), 100);
        assert_eq!(new_offset(&ResetTo::Offset(42), Some(50), e, l, None), 42);
        assert_eq!(
            new_offset(&ResetTo::Offset(5), Some(50), e, l, None),
            10,
            "clamped up"
        );
        assert_eq!(
            new_offset(&ResetTo::Offset(500), Some(50), e, l, None),
            100,
            "clamped down"
        );
        assert_eq!(new_offset(&ResetTo::ShiftBy(-20), Some(50), e, l, None), 30);
        assert_eq!(new_offset(&ResetTo::ShiftBy(80), Some(50), e, l, None), 100);
        assert_eq!(
            new_offset(&ResetTo::ShiftBy(5), None, e, l, None),
            15,
            "from earliest without an offset"
        );
        let t = Utc::now();
        assert_eq!(
            new_offset(&ResetTo::Datetime(t), Some(50), e, l, Some(60)),
            60
        );
        assert_eq!(
            new_offset(&ResetTo::Datetime(t), Some(50), e, l, Some(-1)),
            100,
            "after the last record"
        );
    }
}
