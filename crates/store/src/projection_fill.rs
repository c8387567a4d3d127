//! Filling every SQL projection of a rebuild's shadow from its history in
//! one pass: each chunk of history becomes `applied_events` once and every
//! projection's `apply.sql` runs over it.

use crate::projection::{Definition, split_statements};
use crate::projection_store::{fill_chunk, run_statements};
use crate::{Result, Store};

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
                new.push((def.name.as_str(), split_statements(&def.apply_sql)));
            }
        }
        if new.is_empty() {
            return Ok(0);
        }
        let mut client = self.client().await?;
        let partitions: Vec<(String, i32)> = client
            .query(include_str!("sql/history_partitions.sql"), &[])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let mut events: i64 = 0;
        for (topic, partition) in partitions {
            let mut after = (i32::MIN, i64::MIN);
            loop {
                let tx = client.transaction().await?;
                let (n, last) = fill_chunk(&tx, &topic, partition, after, None).await?;
                if n == 0 {
                    break;
                }
                after = last;
                for (name, statements) in &new {
                    run_statements(&tx, name, statements, None).await?;
                }
                tx.commit().await?;
                events += n;
            }
        }
        for (name, _) in &new {
            tracing::info!(projection = %name, events, "projection filled and attached");
        }
        Ok(events)
    }
}
