//! Partition leases: listing, taking, releasing and stopping them,
//! who owns what, and `group reset`'s [`Store::set_offsets`].

use std::time::Duration;

use super::{LIVE_MEMBERS, Lease, LeaseRow, Member, PartitionOwner};
use crate::{Error, Result, Store, StoredOffset};

impl Store {
    /// Every partition lease of the group on `topic`, with whether its
    /// owner is live (heartbeat within `session_timeout`, PostgreSQL's clock).
    pub async fn leases(
        &self,
        group: &str,
        topic: &str,
        session_timeout: Duration,
    ) -> Result<Vec<LeaseRow>> {
        let secs = session_timeout.as_secs_f64();
        let rows = self
            .client()
            .await?
            .query(
                "SELECT o.partition, o.owner, \
                        m.member_id IS NOT NULL \
                          AND m.heartbeat_at >= clock_timestamp() - make_interval(secs => $3), \
                        o.epoch, o.next_offset, o.stopped_error \
                 FROM consumer_offsets o \
                 LEFT JOIN group_members m ON m.group_id = o.group_id AND m.member_id = o.owner \
                 WHERE o.group_id = $1 AND o.topic = $2 ORDER BY o.partition",
                &[&group, &topic, &secs],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| LeaseRow {
                partition: r.get(0),
                owner: r.get(1),
                owner_live: r.get(2),
                epoch: r.get(3),
                next_offset: r.get(4),
                stopped_error: r.get(5),
            })
            .collect())
    }

    /// Takes the lease on a partition by bumping its epoch, if nobody else
    /// holds it: its owner is empty, is this member, or is not live. Who is
    /// live is read in this same statement (a heartbeat within
    /// `session_timeout` by PostgreSQL's clock), never from an older member
    /// list, and only a member whose session still holds its member id can
    /// take. Taking clears a stopped mark: the new owner tries again.
    /// `initial` creates the offset row for a partition the group has
    /// never read (`None` if the policy forbids). Returns `None` if the
    /// partition is held by a live member (or this process was replaced).
    pub async fn take_lease(
        &self,
        member: &Member,
        topic: &str,
        partition: i32,
        session_timeout: Duration,
        initial: Option<i64>,
    ) -> Result<Option<Lease>> {
        let client = self.client().await?;
        if let Some(initial) = initial {
            crate::offsets::insert_initial_offset(
                &client,
                &member.group,
                topic,
                partition,
                initial,
            )
            .await?;
        }
        let stmt = client
            .prepare_cached(include_str!("../sql/take_lease.sql"))
            .await?;
        let secs = session_timeout.as_secs_f64();
        let row = client
            .query_opt(
                &stmt,
                &[
                    &member.group,
                    &topic,
                    &partition,
                    &member.id,
                    &member.session,
                    &secs,
                ],
            )
            .await?;
        Ok(row.map(|r| Lease {
            epoch: r.get(0),
            stored: StoredOffset {
                next_offset: r.get(1),
                incarnation: r.get(2),
                last_fingerprint: r.get(3),
                fingerprint_offset: r.get(4),
            },
        }))
    }

    /// Gives a lease up if it is still this member's (at `epoch`, when
    /// given: a lease left by an earlier process of this member is
    /// released at whatever epoch it has). Returns whether it was.
    pub async fn release_lease(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
        member: &str,
        epoch: Option<i64>,
    ) -> Result<bool> {
        let released = self
            .client()
            .await?
            .execute(
                "UPDATE consumer_offsets SET owner = NULL, updated_at = now() \
                 WHERE group_id = $1 AND topic = $2 AND partition = $3 \
                   AND owner = $4 AND ($5::bigint IS NULL OR epoch = $5)",
                &[&group, &topic, &partition, &member, &epoch],
            )
            .await?;
        Ok(released == 1)
    }

    /// Marks a partition stopped by its owner with the error that stopped
    /// it (for `group describe` and every other member), if the lease is
    /// still this member's at `epoch`.
    pub async fn mark_stopped(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
        lease: (&str, i64),
        error: &str,
    ) -> Result<()> {
        self.client()
            .await?
            .execute(
                "UPDATE consumer_offsets SET stopped_error = $6, stopped_at = now() \
                 WHERE group_id = $1 AND topic = $2 AND partition = $3 \
                   AND owner = $4 AND epoch = $5",
                &[&group, &topic, &partition, &lease.0, &lease.1, &error],
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
                "SELECT partition, owner, epoch, next_offset, updated_at, stopped_error FROM consumer_offsets \
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
                stopped_error: r.get(5),
            })
            .collect())
    }

    /// Sets the stored offsets of `group` on `topic` (`group reset
    /// --execute`): each partition's next offset, its lease released and
    /// its fingerprint cleared, in one transaction that first locks the
    /// topic's offset rows (a take waits, and a take under way finishes
    /// first) and only then checks that no member of the group is live.
    /// Checking before and writing after, with broker round trips between,
    /// let a member that joined in between have its leases cleared under
    /// it. A row a live member came to own meanwhile (a partition the group
    /// never read) is not overwritten: the whole reset is refused.
    pub async fn set_offsets(
        &self,
        group: &str,
        topic: &str,
        offsets: &[(i32, i64)],
        session_timeout: Duration,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "SELECT 1 FROM consumer_offsets WHERE group_id = $1 AND topic = $2 FOR UPDATE",
            &[&group, &topic],
        )
        .await?;
        let secs = session_timeout.as_secs_f64();
        let live: Vec<String> = tx
            .query(LIVE_MEMBERS, &[&group, &secs])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !live.is_empty() {
            return Err(Error::GroupLive {
                group: group.to_owned(),
                members: live,
            });
        }
        for (partition, offset) in offsets {
            let written = tx
                .execute(
                    "INSERT INTO consumer_offsets (group_id, topic, partition, next_offset) \
                     VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (group_id, topic, partition) DO UPDATE \
                     SET next_offset = EXCLUDED.next_offset, owner = NULL, \
                         last_fingerprint = NULL, fingerprint_offset = NULL, updated_at = now() \
                     WHERE NOT EXISTS (SELECT 1 FROM group_members m \
                         WHERE m.group_id = $1 AND m.member_id = consumer_offsets.owner \
                           AND m.heartbeat_at >= clock_timestamp() - make_interval(secs => $5))",
                    &[&group, &topic, partition, offset, &secs],
                )
                .await?;
            if written != 1 {
                return Err(Error::GroupLive {
                    group: group.to_owned(),
                    members: vec![format!("the owner of partition {partition}")],
                });
            }
        }
        tx.commit().await?;
        Ok(())
    }
}
