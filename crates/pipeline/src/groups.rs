//! `foodpipe group list | describe | reset`: the consumer-group tools, like
//! `kafka-consumer-groups --list / --describe / --reset-offsets`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use kafka::{KafkaConfig, OffsetAt, PartitionReader};
use store::{MemberRow, Store};

/// One partition in `group describe`.
#[derive(Debug, Clone)]
pub struct PartitionRow {
    pub partition: i32,
    /// The stored next offset (Kafka's committed offset), if any.
    pub offset: Option<i64>,
    pub log_end: i64,
    pub lag: Option<i64>,
    pub owner: Option<String>,
    pub epoch: i64,
}

/// What `group describe` shows.
#[derive(Debug, Clone)]
pub struct Description {
    pub group: String,
    pub topic: String,
    pub generation: i64,
    pub partitions: Vec<PartitionRow>,
    pub members: Vec<MemberRow>,
}

/// Reads the group's offsets, owners and members, and the topic's log-end
/// offsets.
pub async fn describe(
    store: &Store,
    kafka: &KafkaConfig,
    group: &str,
    topic: &str,
) -> anyhow::Result<Description> {
    let client = kafka::connect(kafka).await?;
    let count = kafka::existing_topic_partitions(&client, topic).await?;
    let owners = store.owners(group, topic).await?;
    let mut partitions = Vec::with_capacity(count as usize);
    for p in 0..count as i32 {
        let reader = PartitionReader::new(&client, topic, p).await?;
        let log_end = reader.offset(OffsetAt::Latest).await?;
        let row = owners.iter().find(|o| o.partition == p);
        let offset = row.map(|o| o.next_offset);
        partitions.push(PartitionRow {
            partition: p,
            offset,
            log_end,
            lag: offset.map(|o| (log_end - o).max(0)),
            owner: row.and_then(|o| o.owner.clone()),
            epoch: row.map_or(0, |o| o.epoch),
        });
    }
    let generation = store
        .groups()
        .await?
        .into_iter()
        .find(|g| g.group_id == group)
        .map_or(0, |g| g.generation);
    Ok(Description {
        group: group.to_owned(),
        topic: topic.to_owned(),
        generation,
        partitions,
        members: store.members(group).await?,
    })
}

impl std::fmt::Display for Description {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:<20} {:<20} {:>9} {:>14} {:>14} {:>8}  {:<28} {:>5}",
            "GROUP",
            "TOPIC",
            "PARTITION",
            "CURRENT-OFFSET",
            "LOG-END-OFFSET",
            "LAG",
            "OWNER",
            "EPOCH"
        )?;
        for p in &self.partitions {
            writeln!(
                f,
                "{:<20} {:<20} {:>9} {:>14} {:>14} {:>8}  {:<28} {:>5}",
                self.group,
                self.topic,
                p.partition,
                p.offset.map_or("-".to_owned(), |o| o.to_string()),
                p.log_end,
                p.lag.map_or("-".to_owned(), |l| l.to_string()),
                p.owner.as_deref().unwrap_or("-"),
                p.epoch
            )?;
        }
        writeln!(f)?;
        writeln!(f, "members (generation {}):", self.generation)?;
        if self.members.is_empty() {
            writeln!(f, "  none")?;
        }
        for m in &self.members {
            writeln!(
                f,
                "  {:<28} host {} pid {}, last heartbeat {:.1} s ago",
                m.member_id, m.host, m.pid, m.silent_secs
            )?;
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
) -> anyhow::Result<Vec<PlanRow>> {
    let ResetRequest {
        group,
        topic,
        ref to,
        partition,
        execute,
        session_timeout,
    } = *request;
    let live = store.live_members(group, session_timeout).await?;
    anyhow::ensure!(
        live.is_empty(),
        "group {group} has {} live member(s) ({}); stop its consumers before resetting offsets",
        live.len(),
        live.join(", ")
    );
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
        store.set_offsets(group, topic, &offsets).await?;
    }
    Ok(plan)
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
