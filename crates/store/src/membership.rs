//! The SQL half of consumer groups: membership with heartbeats, and
//! partition leases with epochs. The `group` crate decides what to do.

use std::time::Duration;

use crate::{Result, Store, StoredOffset};

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
}

/// This member's lease on a partition, and the offset it starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub epoch: i64,
    pub stored: StoredOffset,
}

/// Who holds a partition, for tools and for the sticky assignor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionOwner {
    pub partition: i32,
    pub owner: Option<String>,
    pub epoch: i64,
    pub next_offset: i64,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl Store {
    /// Records a heartbeat of `member`, joining the group if needed, and
    /// expires members silent for longer than `session_timeout`. Any join
    /// or expiry bumps the generation.
    pub async fn heartbeat(
        &self,
        group: &str,
        member: &str,
        host: &str,
        pid: i32,
        session_timeout: Duration,
    ) -> Result<GroupView> {
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
                &[&group, &member, &timeout_secs],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let joined: bool = tx
            .query_one(
                "INSERT INTO group_members (group_id, member_id, host, pid) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (group_id, member_id) DO UPDATE \
                 SET heartbeat_at = clock_timestamp(), host = EXCLUDED.host, pid = EXCLUDED.pid \
                 RETURNING (xmax = 0)",
                &[&group, &member, &host, &pid],
            )
            .await?
            .get(0);
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
        let members = tx
            .query(
                "SELECT member_id FROM group_members WHERE group_id = $1 ORDER BY member_id",
                &[&group],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        tx.commit().await?;
        Ok(GroupView {
            generation,
            members,
            expired,
            joined,
        })
    }

    /// Leaves the group at once (no waiting for the session timeout): the
    /// member row goes, its leases are released, the generation goes up.
    pub async fn leave(&self, group: &str, member: &str) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let gone = tx
            .execute(
                "DELETE FROM group_members WHERE group_id = $1 AND member_id = $2",
                &[&group, &member],
            )
            .await?;
        tx.execute(
            "UPDATE consumer_offsets SET owner = NULL WHERE group_id = $1 AND owner = $2",
            &[&group, &member],
        )
        .await?;
        if gone > 0 {
            tx.execute(
                "UPDATE consumer_groups SET generation = generation + 1, updated_at = now() \
                 WHERE group_id = $1",
                &[&group],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Takes the lease on a partition by bumping its epoch, if nobody else
    /// holds it: its owner is empty, is `member`, or is not among `live`.
    /// `initial` creates the offset row for a partition the group has never
    /// read (`None` if the policy forbids). Returns `None` if another live
    /// member still holds it.
    pub async fn take_lease(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
        member: &str,
        live: &[String],
        initial: Option<i64>,
    ) -> Result<Option<Lease>> {
        let client = self.client().await?;
        if let Some(initial) = initial {
            client
                .execute(
                    "INSERT INTO consumer_offsets (group_id, topic, partition, next_offset) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                    &[&group, &topic, &partition, &initial],
                )
                .await?;
        }
        let row = client
            .query_opt(
                "UPDATE consumer_offsets SET owner = $4, epoch = epoch + 1, updated_at = now() \
                 WHERE group_id = $1 AND topic = $2 AND partition = $3 \
                   AND (owner IS NULL OR owner = $4 OR NOT (owner = ANY($5))) \
                 RETURNING epoch, next_offset, incarnation, last_fingerprint",
                &[&group, &topic, &partition, &member, &live],
            )
            .await?;
        Ok(row.map(|r| Lease {
            epoch: r.get(0),
            stored: StoredOffset {
                next_offset: r.get(1),
                incarnation: r.get(2),
                last_fingerprint: r.get(3),
            },
        }))
    }

    /// Gives a lease up, if it is still this member's at this epoch.
    pub async fn release_lease(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
        member: &str,
        epoch: i64,
    ) -> Result<()> {
        self.client()
            .await?
            .execute(
                "UPDATE consumer_offsets SET owner = NULL, updated_at = now() \
                 WHERE group_id = $1 AND topic = $2 AND partition = $3 \
                   AND owner = $4 AND epoch = $5",
                &[&group, &topic, &partition, &member, &epoch],
            )
            .await?;
        Ok(())
    }

    /// The owner, epoch and offset of every partition of `topic` the group has read.
    pub async fn owners(&self, group: &str, topic: &str) -> Result<Vec<PartitionOwner>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT partition, owner, epoch, next_offset, updated_at FROM consumer_offsets \
                 WHERE group_id = $1 AND topic = $2 ORDER BY partition",
                &[&group, &topic],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| PartitionOwner {
                partition: r.get(0),
                owner: r.get(1),
                epoch: r.get(2),
                next_offset: r.get(3),
                updated_at: r.get(4),
            })
            .collect())
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
}

/// A group as `group list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRow {
    pub group_id: String,
    pub generation: i64,
    pub members: i64,
    pub topics: Vec<String>,
}

impl Store {
    /// The members of `group`, with how long each has been silent.
    pub async fn members(&self, group: &str) -> Result<Vec<MemberRow>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT member_id, host, pid, started_at, \
                        extract(epoch FROM clock_timestamp() - heartbeat_at)::float8 \
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
            .query(
                "SELECT member_id FROM group_members WHERE group_id = $1 \
                 AND heartbeat_at >= clock_timestamp() - make_interval(secs => $2) ORDER BY 1",
                &[&group, &secs],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Sets the stored offsets of `group` on `topic` (`group reset
    /// --execute`): each partition's next offset, its lease released and
    /// its fingerprint cleared, in one transaction.
    pub async fn set_offsets(
        &self,
        group: &str,
        topic: &str,
        offsets: &[(i32, i64)],
    ) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        for (partition, offset) in offsets {
            tx.execute(
                "INSERT INTO consumer_offsets (group_id, topic, partition, next_offset) \
                 VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (group_id, topic, partition) DO UPDATE \
                 SET next_offset = EXCLUDED.next_offset, owner = NULL, \
                     last_fingerprint = NULL, updated_at = now()",
                &[&group, &topic, partition, offset],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
