//! Filling every SQL projection of a rebuild's shadow from its history in
//! one pass: each chunk of history becomes `applied_events` once and every
//! projection's `apply.sql` runs over it. Partitions are filled side by
//! side, each on a connection of its own, as the live fold's members
//! apply them: a projection's SQL already has to allow that.

use futures::{StreamExt, TryStreamExt};

use crate::projection::{Definition, split_statements};
use crate::projection_store::{fill_chunk, run_statements};
use crate::{Result, Store};

/// Partitions whose projections are filled at once; the pool of the
/// [`Store`] filling them should hold one connection more.
pub const FILL_PARTITIONS_AT_ONCE: usize = 3;

/// Times a chunk is tried when PostgreSQL ends it for a deadlock or a
/// serialization failure (two partitions' chunks upserting the same rows
/// in different orders), before the fill fails.
const CHUNK_ATTEMPTS: u32 = 5;

/// The projections being filled: each name with its `apply.sql`'s statements.
type Applying = std::sync::Arc<Vec<(String, Vec<String>)>>;

impl Store {
    /// Makes and fills `definitions` in a schema that nothing else writes
    /// (a rebuild's shadow, whose claim the caller holds, after its history
    /// is complete): history is read, and each order's `OrderCreated`
    /// looked up, once for all of them, where
    /// [`Store::ensure_projection`] one after the other would do it once
    /// each. A projection registered already (the consumer path attached
    /// it) is left to `ensure_projection`, which finds it attached or
    /// checks it. Returns how many events of history were applied.
    pub async fn fill_projections_from_history(
        &self,
        definitions: &[Definition],
        group: &str,
    ) -> Result<i64> {
        let registered: Vec<String> = self
            .client()
            .await?
            .query("SELECT name FROM projections", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut new = Vec::new();
        for def in definitions {
            if registered.contains(&def.name) {
                let ensured = self.ensure_projection(def, group).await?;
                tracing::debug!(projection = %def.name, ?ensured, "projection was registered");
            } else {
                self.install_projection(def).await?;
                new.push((def.name.clone(), split_statements(&def.apply_sql)));
            }
        }
        if new.is_empty() {
            return Ok(0);
        }
        let partitions: Vec<(String, i32)> = self
            .client()
            .await?
            .query(include_str!("sql/history_partitions.sql"), &[])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let applying: Applying = std::sync::Arc::new(new);
        let events: i64 =
            futures::stream::iter(partitions.into_iter().map(|(topic, partition)| {
                // Owned, so the futures are Send for any caller's runtime.
                let (store, applying) = (self.clone(), std::sync::Arc::clone(&applying));
                async move { store.fill_partition(topic, partition, applying).await }
            }))
            .buffer_unordered(FILL_PARTITIONS_AT_ONCE)
            .try_fold(0, |sum, n| async move { Ok(sum + n) })
            .await?;
        for (name, _) in applying.iter() {
            tracing::info!(projection = %name, events, "projection filled and attached");
        }
        Ok(events)
    }

    /// Applies one partition's history to `applying`, a chunk per
    /// transaction, in offset order. Returns the events applied.
    async fn fill_partition(
        &self,
        topic: String,
        partition: i32,
        applying: Applying,
    ) -> Result<i64> {
        let mut client = self.client().await?;
        let mut after = (i32::MIN, i64::MIN);
        let mut events = 0;
        loop {
            let mut attempt = 1;
            let chunk = loop {
                match fill_one_chunk(&mut client, &topic, partition, after, &applying).await {
                    Err(e) if e.is_conflict() && attempt < CHUNK_ATTEMPTS => {
                        tracing::debug!(partition, attempt, error = %e, "projection fill chunk retried");
                        attempt += 1;
                    }
                    chunk => break chunk?,
                }
            };
            let (n, last) = chunk;
            if n == 0 {
                return Ok(events);
            }
            after = last;
            events += n;
        }
    }
}

/// One chunk of a partition's history after `after`, applied to every
/// projection of `applying` in one transaction. An empty chunk (the
/// partition is done) runs nothing and is rolled back.
async fn fill_one_chunk(
    client: &mut deadpool_postgres::Object,
    topic: &str,
    partition: i32,
    after: (i32, i64),
    applying: &Applying,
) -> Result<(i64, (i32, i64))> {
    let tx = client.transaction().await?;
    let chunk = fill_chunk(&tx, topic, partition, after, None).await?;
    if chunk.0 == 0 {
        return Ok(chunk);
    }
    for (name, statements) in applying.iter() {
        run_statements(&tx, name, statements, None).await?;
    }
    tx.commit().await?;
    Ok(chunk)
}
