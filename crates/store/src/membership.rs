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
            .prepare_cached(include_str!("sql/take_lease.sql"))
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

/// `rebuild`'s hold on a group (migration V8): while it lasts no member
/// takes a lease, and the epochs it bumped refuse every commit already
/// under way. It is a lease of its own, renewed by [`Store::renew_fence`],
/// so a rebuild that dies leaves the group paused for at most `ttl`.
impl Store {
    /// Fences `group` on `topic` for `by`: first the group (no take starts
    /// from now on), then each partition's lease is cleared and its epoch
    /// bumped, one partition per statement, so the fence never holds one
    /// offset row while waiting for another (a member leaving updates the
    /// same rows in its own order). Returns the offsets as they stand once
    /// no member can commit any more. [`Error::Fenced`] if another rebuild
    /// holds the fence.
    pub async fn fence_group(
        &self,
        group: &str,
        topic: &str,
        by: &str,
        ttl: Duration,
    ) -> Result<std::collections::BTreeMap<i32, i64>> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO consumer_groups (group_id) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&group],
            )
            .await?;
        let secs = ttl.as_secs_f64();
        let fenced = client
            .execute(
                "UPDATE consumer_groups \
                 SET fenced_by = $2, fenced_until = clock_timestamp() + make_interval(secs => $3) \
                 WHERE group_id = $1 \
                   AND (fenced_until IS NULL OR fenced_until <= clock_timestamp() OR fenced_by = $2)",
                &[&group, &by, &secs],
            )
            .await?;
        if fenced != 1 {
            return Err(Error::Fenced {
                group: group.to_owned(),
                by: self.fenced_by(group).await?.unwrap_or_default(),
            });
        }
        let partitions: Vec<i32> = client
            .query(
                "SELECT partition FROM consumer_offsets WHERE group_id = $1 AND topic = $2 \
                 ORDER BY partition",
                &[&group, &topic],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut offsets = std::collections::BTreeMap::new();
        for partition in partitions {
            // Waits for a commit holding the row to finish; every later
            // commit fails its epoch check.
            let row = client
                .query_one(
                    "UPDATE consumer_offsets SET owner = NULL, epoch = epoch + 1, updated_at = now() \
                     WHERE group_id = $1 AND topic = $2 AND partition = $3 RETURNING next_offset",
                    &[&group, &topic, &partition],
                )
                .await?;
            offsets.insert(partition, row.get(0));
        }
        Ok(offsets)
    }

    /// Extends the fence `by` holds by `ttl` from now; false if it is no
    /// longer `by`'s (it lapsed and another rebuild took it).
    pub async fn renew_fence(&self, group: &str, by: &str, ttl: Duration) -> Result<bool> {
        let secs = ttl.as_secs_f64();
        let renewed = self
            .client()
            .await?
            .execute(
                "UPDATE consumer_groups \
                 SET fenced_until = clock_timestamp() + make_interval(secs => $3) \
                 WHERE group_id = $1 AND fenced_by = $2",
                &[&group, &by, &secs],
            )
            .await?;
        Ok(renewed == 1)
    }

    /// Lifts the fence `by` holds, if it still does; members take again at
    /// their next heartbeat.
    pub async fn lift_fence(&self, group: &str, by: &str) -> Result<()> {
        self.client()
            .await?
            .execute(
                "UPDATE consumer_groups SET fenced_by = NULL, fenced_until = NULL \
                 WHERE group_id = $1 AND fenced_by = $2",
                &[&group, &by],
            )
            .await?;
        Ok(())
    }

    /// Who fences `group` now, if anyone (health names it as the reason a
    /// partition waits).
    pub async fn fenced_by(&self, group: &str) -> Result<Option<String>> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT fenced_by FROM consumer_groups \
                 WHERE group_id = $1 AND fenced_until > clock_timestamp()",
                &[&group],
            )
            .await?;
        Ok(row.and_then(|r| r.get(0)))
    }
}

/// The members of group $1 that heartbeat within the last $2 seconds, by
/// PostgreSQL's clock at this moment.
const LIVE_MEMBERS: &str = "SELECT member_id FROM group_members WHERE group_id = $1 \
     AND heartbeat_at >= clock_timestamp() - make_interval(secs => $2) ORDER BY 1";

/// A rebuild's claim on its shadow schema, held from before the rebuild
/// touches anything until it ends: a session-level advisory lock on a
/// connection of its own, whose `application_name` names the rebuild. A
/// second rebuild of the same schema (dry run or not) is refused by it
/// before dropping or creating anything, and told who holds it. The fence
/// cannot do this: it stands only from the catch-up on, not during the
/// first replay. The claim ends with the rebuild's session, so a rebuild
/// that dies holds nothing.
pub struct RebuildClaim {
    client: tokio_postgres::Client,
    connection: tokio::task::JoinHandle<std::result::Result<(), tokio_postgres::Error>>,
    key: (i32, i32),
}

impl std::fmt::Debug for RebuildClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RebuildClaim")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// The advisory lock key of the rebuilds whose shadow is `shadow`: two
/// `int4` halves of a 64-bit FNV-1a of the name. Two-key advisory locks
/// never meet the one-`bigint` migration lock (`objsubid` 2, not 1).
fn claim_key(shadow: &str) -> (i32, i32) {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in "foodpipe rebuild shadow ".bytes().chain(shadow.bytes()) {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    ((hash >> 32) as u32 as i32, hash as u32 as i32)
}

/// `by` as an `application_name`: printable ASCII, at most 63 bytes (what
/// PostgreSQL keeps), the end kept when it is longer (it holds the pid).
fn application_name(by: &str) -> String {
    let clean: String = by
        .chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect();
    if clean.len() <= 63 {
        clean
    } else {
        format!("...{}", &clean[clean.len() - 60..])
    }
}

impl Store {
    /// Claims the rebuild of `schema` (whose shadow is `shadow`) for `by`,
    /// or [`Error::RebuildRunning`] naming the rebuild that holds it.
    pub async fn claim_rebuild(
        &self,
        schema: &str,
        shadow: &str,
        by: &str,
    ) -> Result<RebuildClaim> {
        let key = claim_key(shadow);
        let mut pg_config = self.pg_config.clone();
        pg_config.application_name(application_name(by));
        let (client, connection) = self.dedicated(&pg_config).await?;
        // The holder may end between the try and the look-up: try again.
        for _ in 0..3 {
            let claimed: bool = client
                .query_one("SELECT pg_try_advisory_lock($1, $2)", &[&key.0, &key.1])
                .await?
                .get(0);
            if claimed {
                return Ok(RebuildClaim {
                    client,
                    connection,
                    key,
                });
            }
            let holder = client
                .query_opt(
                    "SELECT a.application_name, l.pid FROM pg_locks l \
                     LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
                     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 \
                       AND l.database = (SELECT oid FROM pg_database \
                                         WHERE datname = current_database()) \
                       AND l.classid = $1::int4::oid AND l.objid = $2::int4::oid \
                     LIMIT 1",
                    &[&key.0, &key.1],
                )
                .await?;
            if let Some(row) = holder {
                let name: Option<String> = row.get(0);
                let backend: i32 = row.get(1);
                return Err(Error::RebuildRunning {
                    schema: schema.to_owned(),
                    by: name.filter(|n| !n.is_empty()).unwrap_or_else(|| {
                        format!("a session with PostgreSQL backend pid {backend}")
                    }),
                });
            }
        }
        Err(Error::RebuildRunning {
            schema: schema.to_owned(),
            by: "another rebuild started and ended while this one started".to_owned(),
        })
    }
}

impl RebuildClaim {
    /// True while the claim's session still holds its lock: checked right
    /// before a swap commits, so a rebuild whose session was cut (and whose
    /// shadow another rebuild may have dropped since) never swaps.
    pub async fn held(&self) -> Result<bool> {
        Ok(self
            .client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' \
                 AND granted AND pid = pg_backend_pid() AND objsubid = 2 \
                 AND classid = $1::int4::oid AND objid = $2::int4::oid)",
                &[&self.key.0, &self.key.1],
            )
            .await?
            .get(0))
    }

    /// Ends the claim (closing its session releases the lock).
    pub async fn release(self) {
        let _ = self
            .client
            .execute(
                "SELECT pg_advisory_unlock($1, $2)",
                &[&self.key.0, &self.key.1],
            )
            .await;
        drop(self.client);
        let _ = self.connection.await;
    }
}
