//! `rebuild`'s hold on a group: the fence ([`Store::fence_group`]) and
//! the claim on its shadow schema ([`RebuildClaim`]).

use std::time::Duration;

use crate::{Error, Result, Store};

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
