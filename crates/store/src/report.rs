//! Read-only summaries of what the pipeline has stored.

use crate::{Result, Store};

/// What `foodpipe status` prints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusReport {
    /// Stored next offset per partition, for the group.
    pub offsets: Vec<(i32, i64)>,
    /// Events in history per partition of the topic.
    pub events_per_partition: Vec<(i32, i64)>,
    /// Orders in the view per status.
    pub orders_per_status: Vec<(String, i64)>,
    /// Dead letters of the group on the topic.
    pub dead_letters: i64,
}

impl Store {
    /// Summarises the stored offsets, history, view and dead letters.
    pub async fn status(&self, group: &str, topic: &str) -> Result<StatusReport> {
        let offsets = self.offsets(group, topic).await?;
        let client = self.client().await?;
        let events_per_partition = client
            .query(
                "SELECT kafka_partition, count(*) FROM order_events \
                 WHERE kafka_topic = $1 GROUP BY 1 ORDER BY 1",
                &[&topic],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let orders_per_status = client
            .query(
                "SELECT status, count(*) FROM orders WHERE source_topic = $1 \
                 GROUP BY 1 ORDER BY array_position(\
                 ARRAY['pending','paid','shipped','delivered','cancelled'], status)",
                &[&topic],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let dead_letters = client
            .query_one(
                "SELECT count(*) FROM dead_letters WHERE group_id = $1 AND topic = $2",
                &[&group, &topic],
            )
            .await?
            .get(0);
        Ok(StatusReport {
            offsets,
            events_per_partition,
            orders_per_status,
            dead_letters,
        })
    }
}
