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

/// A stored dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterRow {
    pub id: i64,
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub incarnation: i32,
    pub offset: i64,
    pub kafka_timestamp: chrono::DateTime<chrono::Utc>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub kind: String,
    pub error: String,
    pub recorded_at: chrono::DateTime<chrono::Utc>,
}

const DEAD_LETTER_COLUMNS: &str = "id, group_id, topic, partition, kafka_incarnation, kafka_offset, \
     kafka_timestamp, key, value, error_kind, error, recorded_at";

fn dead_letter_from_row(r: &tokio_postgres::Row) -> DeadLetterRow {
    DeadLetterRow {
        id: r.get(0),
        group: r.get(1),
        topic: r.get(2),
        partition: r.get(3),
        incarnation: r.get(4),
        offset: r.get(5),
        kafka_timestamp: r.get(6),
        key: r.get(7),
        value: r.get(8),
        kind: r.get(9),
        error: r.get(10),
        recorded_at: r.get(11),
    }
}

impl Store {
    /// The newest dead letters of `group` on `topic`, optionally of one kind.
    pub async fn dead_letters(
        &self,
        group: &str,
        topic: &str,
        kind: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DeadLetterRow>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters \
                     WHERE group_id = $1 AND topic = $2 AND ($3::text IS NULL OR error_kind = $3) \
                     ORDER BY id DESC LIMIT $4"
                ),
                &[&group, &topic, &kind, &limit],
            )
            .await?;
        Ok(rows.iter().map(dead_letter_from_row).collect())
    }

    /// One dead letter by id.
    pub async fn dead_letter(&self, id: i64) -> Result<Option<DeadLetterRow>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!("SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE id = $1"),
                &[&id],
            )
            .await?;
        Ok(row.as_ref().map(dead_letter_from_row))
    }
}
