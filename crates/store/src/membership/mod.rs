//! The SQL half of consumer groups: membership with heartbeats, and
//! partition leases with epochs. The `group` crate decides what to do.

use std::time::Duration;

use crate::{Error, Result, Store, StoredOffset};

/// A group as one heartbeat saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    pub generation: i64,
    /// Live members, sorted.
    pub members: Vec<String>,
    /// Members this heartbeat expired.
    pub expired: Vec<String>,
    /// True if this heartbeat added the member (a join, or a re-join after
    /// being expired).
    pub joined: bool,
    /// Live members that cannot reach the brokers, sorted.
    pub cut_off: Vec<String>,
    /// Live members the brokers have answered steadily, sorted.
    pub answering: Vec<String>,
}

/// What a member says of its reach to the Kafka brokers in each heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrokerReach {
    /// Why it counts itself cut off from the brokers, if it does.
    pub cut_off: Option<String>,
    /// The brokers have answered it steadily for a while.
    pub answering: bool,
}

impl BrokerReach {
    /// Reach as a member that has just connected sees it.
    pub fn answering() -> Self {
        Self {
            cut_off: None,
            answering: true,
        }
    }
}

/// One `consume` process as a member of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub group: String,
    pub id: String,
    pub host: String,
    pub pid: i32,
    /// Random per process: tells this process from an earlier or later one
    /// started with the same member id.
    pub session: uuid::Uuid,
    /// Where it serves `/metrics` and `/healthz`, if anywhere.
    pub metrics_addr: Option<String>,
}

/// This member's lease on a partition, and the offset it starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub epoch: i64,
    pub stored: StoredOffset,
}

/// A partition's lease as the rebalance decision sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    pub partition: i32,
    pub owner: Option<String>,
    /// The owner heartbeated within the session timeout, by PostgreSQL's clock.
    pub owner_live: bool,
    pub epoch: i64,
    pub next_offset: i64,
    /// Why the owner stopped the partition, if it did.
    pub stopped_error: Option<String>,
}

/// Who holds a partition, for tools and for the sticky assignor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionOwner {
    pub partition: i32,
    pub owner: Option<String>,
    pub epoch: i64,
    pub next_offset: i64,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    /// Why its owner stopped it, if it did.
    pub stopped_error: Option<String>,
}

impl Store {
    /// Records a heartbeat of `member` with its one-line `state`, joining
    /// the group if needed, and expires members silent for longer than
    /// `session_timeout`. Any join or expiry bumps the generation.
    ///
    /// `claim` (the first heartbeat of a process) takes the member id over
    /// from another process using it; without it, a heartbeat that finds
    /// its id held by another session fails with [`Error::MemberIdTaken`]:
    /// this process was replaced and must stop.
    pub async fn heartbeat(
        &self,
        member: &Member,
        state: &str,
        claim: bool,
        session_timeout: Duration,
    ) -> Result<GroupView> {
        self.heartbeat_with(
            member,
            state,
            claim,
            session_timeout,
            &BrokerReach::answering(),
        )
        .await
    }

    /// [`Store::heartbeat`], saying how this member reaches the brokers.
    pub async fn heartbeat_with(
        &self,
        member: &Member,
        state: &str,
        claim: bool,
        session_timeout: Duration,
        reach: &BrokerReach,
    ) -> Result<GroupView> {
        let group = member.group.as_str();
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO consumer_groups (group_id) VALUES ($1) ON CONFLICT DO NOTHING",
            &[&group],
        )
        .await?;
        // Serializes membership changes of the group.
        let mut generation: i64 = tx
            .query_one(
                "SELECT generation FROM consumer_groups WHERE group_id = $1 FOR UPDATE",
                &[&group],
            )
            .await?
            .get(0);
        let timeout_secs = session_timeout.as_secs_f64();
        let expired: Vec<String> = tx
            .query(
                "DELETE FROM group_members WHERE group_id = $1 AND member_id <> $2 \
                 AND heartbeat_at < clock_timestamp() - make_interval(secs => $3) \
                 RETURNING member_id",
                &[&group, &member.id, &timeout_secs],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let joined: Option<bool> = tx
            .query_opt(
                "INSERT INTO group_members (group_id, member_id, host, pid, session, metrics_addr, state, \
                     cut_off, brokers_answering) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $9, $10) \
                 ON CONFLICT (group_id, member_id) DO UPDATE \
                 SET heartbeat_at = clock_timestamp(), host = EXCLUDED.host, pid = EXCLUDED.pid, \
                     session = EXCLUDED.session, metrics_addr = EXCLUDED.metrics_addr, \
                     state = EXCLUDED.state, cut_off = EXCLUDED.cut_off, \
                     brokers_answering = EXCLUDED.brokers_answering \
                 WHERE group_members.session IS NOT DISTINCT FROM EXCLUDED.session OR $8 \
                 RETURNING (xmax = 0)",
                &[
                    &group,
                    &member.id,
                    &member.host,
                    &member.pid,
                    &member.session,
                    &member.metrics_addr,
                    &state,
                    &claim,
                    &reach.cut_off,
                    &reach.answering,
                ],
            )
            .await?
            .map(|r| r.get(0));
        let Some(joined) = joined else {
            let row = tx
                .query_one(
                    "SELECT host, pid FROM group_members WHERE group_id = $1 AND member_id = $2",
                    &[&group, &member.id],
                )
                .await?;
            return Err(Error::MemberIdTaken {
                group: group.to_owned(),
                member: member.id.clone(),
                host: row.get(0),
                pid: row.get(1),
            });
        };
        if joined || !expired.is_empty() {
            generation = tx
                .query_one(
                    "UPDATE consumer_groups SET generation = generation + 1, updated_at = now() \
                     WHERE group_id = $1 RETURNING generation",
                    &[&group],
                )
                .await?
                .get(0);
        }
        let rows = tx
            .query(
                "SELECT member_id, cut_off IS NOT NULL, brokers_answering FROM group_members \
                 WHERE group_id = $1 ORDER BY member_id",
                &[&group],
            )
            .await?;
        tx.commit().await?;
        let with = |column: usize| -> Vec<String> {
            rows.iter()
                .filter(|r| r.get::<_, bool>(column))
                .map(|r| r.get(0))
                .collect()
        };
        Ok(GroupView {
            generation,
            members: rows.iter().map(|r| r.get(0)).collect(),
            expired,
            joined,
            cut_off: with(1),
            answering: with(2),
        })
    }

    /// Leaves the group at once (no waiting for the session timeout): the
    /// member row goes, its leases are released, the generation goes up.
    /// Only this process's session leaves: a process that was replaced by
    /// another with the same member id must not remove its successor.
    pub async fn leave(&self, member: &Member) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let gone = tx
            .execute(
                "DELETE FROM group_members WHERE group_id = $1 AND member_id = $2 AND session = $3",
                &[&member.group, &member.id, &member.session],
            )
            .await?;
        if gone > 0 {
            // A stop means "held stopped by a live member": it ends with
            // the member, and whoever takes the partition next tries again.
            tx.execute(
                "UPDATE consumer_offsets SET owner = NULL, stopped_error = NULL, \
                     stopped_at = NULL, updated_at = now() \
                 WHERE group_id = $1 AND owner = $2",
                &[&member.group, &member.id],
            )
            .await?;
            tx.execute(
                "UPDATE consumer_groups SET generation = generation + 1, updated_at = now() \
                 WHERE group_id = $1",
                &[&member.group],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// A member as `group describe` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberRow {
    pub member_id: String,
    pub host: String,
    pub pid: i32,
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// Seconds since the last heartbeat, by PostgreSQL's clock.
    pub silent_secs: f64,
    /// Where it serves `/metrics` and `/healthz`, if anywhere.
    pub metrics_addr: Option<String>,
    /// Its one-line state from its last heartbeat.
    pub state: String,
}

/// A group as `group list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRow {
    pub group_id: String,
    pub generation: i64,
    pub members: i64,
    pub topics: Vec<String>,
}

impl std::fmt::Display for GroupRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\tgeneration {}\t{} member(s)\ttopics: {}",
            self.group_id,
            self.generation,
            self.members,
            self.topics.join(", ")
        )
    }
}

impl Store {
    /// The members of `group`, with how long each has been silent.
    pub async fn members(&self, group: &str) -> Result<Vec<MemberRow>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT member_id, host, pid, started_at, \
                        extract(epoch FROM clock_timestamp() - heartbeat_at)::float8, \
                        metrics_addr, state \
                 FROM group_members WHERE group_id = $1 ORDER BY member_id",
                &[&group],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| MemberRow {
                member_id: r.get(0),
                host: r.get(1),
                pid: r.get(2),
                started_at: r.get(3),
                silent_secs: r.get(4),
                metrics_addr: r.get(5),
                state: r.get(6),
            })
            .collect())
    }

    /// Every group that has stored offsets or members.
    pub async fn groups(&self) -> Result<Vec<GroupRow>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT g.group_id, coalesce(cg.generation, 0), \
                        (SELECT count(*) FROM group_members m WHERE m.group_id = g.group_id), \
                        coalesce((SELECT array_agg(DISTINCT topic ORDER BY topic) FROM consumer_offsets o \
                                  WHERE o.group_id = g.group_id), '{}') \
                 FROM (SELECT group_id FROM consumer_offsets UNION SELECT group_id FROM group_members \
                       UNION SELECT group_id FROM consumer_groups) g \
                 LEFT JOIN consumer_groups cg USING (group_id) ORDER BY 1",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| GroupRow {
                group_id: r.get(0),
                generation: r.get(1),
                members: r.get(2),
                topics: r.get(3),
            })
            .collect())
    }
}

impl Store {
    /// Members of `group` that heartbeated within `session_timeout`.
    pub async fn live_members(
        &self,
        group: &str,
        session_timeout: Duration,
    ) -> Result<Vec<String>> {
        let secs = session_timeout.as_secs_f64();
        let rows = self
            .client()
            .await?
            .query(LIVE_MEMBERS, &[&group, &secs])
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

/// The members of group $1 that heartbeat within the last $2 seconds, by
/// PostgreSQL's clock at this moment.
const LIVE_MEMBERS: &str = "SELECT member_id FROM group_members WHERE group_id = $1 \
     AND heartbeat_at >= clock_timestamp() - make_interval(secs => $2) ORDER BY 1";

mod fence;
mod leases;

pub use fence::RebuildClaim;
