//! Read-only summaries of what the pipeline has stored, and how the
//! commands print them.

use std::fmt;

use events::escape_for_terminal;

use crate::{Result, Store};

/// What `foodpipe status` prints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusReport {
    pub group: String,
    pub topic: String,
    /// Stored next offset per partition, for the group.
    pub offsets: Vec<(i32, i64)>,
    /// Events in history per partition of the topic.
    pub events_per_partition: Vec<(i32, i64)>,
    /// Orders in the view per status.
    pub orders_per_status: Vec<(String, i64)>,
    /// Dead letters of the group on the topic.
    pub dead_letters: i64,
    /// Every projection; the attached ones are all at `offsets`.
    pub projections: Vec<crate::ProjectionRow>,
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
        let dead_letters = self.dead_letter_count(group, topic).await?;
        let projections = self.projections().await?;
        Ok(StatusReport {
            projections,
            group: group.to_owned(),
            topic: topic.to_owned(),
            offsets,
            events_per_partition,
            orders_per_status,
            dead_letters,
        })
    }
}

impl fmt::Display for StatusReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "topic {} / group {}", self.topic, self.group)?;
        writeln!(f, "stored offsets (next record to apply):")?;
        for (partition, offset) in &self.offsets {
            writeln!(f, "  partition {partition:>3}: {offset}")?;
        }
        writeln!(f, "events in history:")?;
        for (partition, count) in &self.events_per_partition {
            writeln!(f, "  partition {partition:>3}: {count}")?;
        }
        writeln!(f, "orders by status:")?;
        for (status, count) in &self.orders_per_status {
            writeln!(f, "  {status:<10} {count}")?;
        }
        writeln!(f, "dead letters: {}", self.dead_letters)?;
        writeln!(
            f,
            "projections (each attached one committed with the stored offsets above):"
        )?;
        for p in &self.projections {
            writeln!(
                f,
                "  {:<20} {:<8} {:<9} {:>9} rows",
                p.name, p.kind, p.state, p.rows
            )?;
        }
        Ok(())
    }
}

/// A stored dead letter. Its `Display` is `dead-letters show`: every field,
/// record bytes escaped for the terminal.
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
    /// The record's headers, `(key, value)`.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Record bytes for a terminal; `(none)` for a null key or value.
fn show_bytes(bytes: Option<&[u8]>) -> String {
    bytes.map_or_else(|| "(none)".to_owned(), escape_for_terminal)
}

impl fmt::Display for DeadLetterRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "id:          {}", self.id)?;
        writeln!(f, "group:       {}", self.group)?;
        writeln!(
            f,
            "position:    {}/{} offset {} (incarnation {})",
            self.topic, self.partition, self.offset, self.incarnation
        )?;
        writeln!(f, "timestamp:   {}", self.kafka_timestamp.to_rfc3339())?;
        writeln!(f, "recorded at: {}", self.recorded_at.to_rfc3339())?;
        writeln!(f, "kind:        {}", self.kind)?;
        // The error may quote the record (a decoder's message does).
        writeln!(
            f,
            "error:       {}",
            escape_for_terminal(self.error.as_bytes())
        )?;
        writeln!(f, "key:         {}", show_bytes(self.key.as_deref()))?;
        writeln!(f, "value:       {}", show_bytes(self.value.as_deref()))?;
        if self.headers.is_empty() {
            return writeln!(f, "headers:     (none)");
        }
        writeln!(f, "headers:")?;
        for (key, value) in &self.headers {
            writeln!(
                f,
                "  {}: {}",
                escape_for_terminal(key.as_bytes()),
                show_bytes(Some(value))
            )?;
        }
        Ok(())
    }
}

/// The dead letters of a group on a topic, as `dead-letters list` prints
/// them: one line each, the error shortened to fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterList {
    pub group: String,
    pub topic: String,
    pub rows: Vec<DeadLetterRow>,
}

/// The longest error `dead-letters list` prints; `show` prints it whole.
const LIST_ERROR_CHARS: usize = 80;

impl fmt::Display for DeadLetterList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.rows.is_empty() {
            return writeln!(
                f,
                "no dead letters for group {} on {}",
                self.group, self.topic
            );
        }
        writeln!(
            f,
            "{:>8}  {:>9}  {:>10}  {:<22}  error",
            "id", "partition", "offset", "kind"
        )?;
        for r in &self.rows {
            let mut error = escape_for_terminal(r.error.replace('\n', " ").as_bytes());
            if error.chars().count() > LIST_ERROR_CHARS {
                error = error.chars().take(LIST_ERROR_CHARS - 3).collect::<String>() + "...";
            }
            writeln!(
                f,
                "{:>8}  {:>9}  {:>10}  {:<22}  {error}",
                r.id, r.partition, r.offset, r.kind
            )?;
        }
        Ok(())
    }
}

const DEAD_LETTER_COLUMNS: &str = "id, group_id, topic, partition, kafka_incarnation, kafka_offset, \
     kafka_timestamp, key, value, error_kind, error, recorded_at, headers";

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
        headers: crate::headers::from_json(&r.get::<_, serde_json::Value>(12)),
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

    /// How many dead letters `group` recorded on `topic`.
    pub async fn dead_letter_count(&self, group: &str, topic: &str) -> Result<i64> {
        Ok(self
            .client()
            .await?
            .query_one(
                "SELECT count(*) FROM dead_letters WHERE group_id = $1 AND topic = $2",
                &[&group, &topic],
            )
            .await?
            .get(0))
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

/// A recorded offset gap (`offset_gaps`): a stored offset the broker no
/// longer backed, and where the consumer went on from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GapRow {
    pub partition: i32,
    /// `retention`, `log_end` or `recreated`.
    pub reason: String,
    pub stored_offset: i64,
    pub reset_to: i64,
    /// The `--offset-reset` policy that chose `reset_to`.
    pub policy: String,
    pub detected_at: chrono::DateTime<chrono::Utc>,
}

/// The gaps of a group on a topic: how many in all, and the newest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gaps {
    pub total: i64,
    /// Newest first.
    pub latest: Vec<GapRow>,
}

impl Store {
    /// The offset gaps `group` recorded on `topic`: the count and the
    /// newest `limit`.
    pub async fn offset_gaps(&self, group: &str, topic: &str, limit: i64) -> Result<Gaps> {
        let client = self.client().await?;
        let total = client
            .query_one(
                "SELECT count(*) FROM offset_gaps WHERE group_id = $1 AND topic = $2",
                &[&group, &topic],
            )
            .await?
            .get(0);
        let latest = client
            .query(
                "SELECT partition, reason, stored_offset, reset_to, policy, detected_at \
                 FROM offset_gaps WHERE group_id = $1 AND topic = $2 ORDER BY id DESC LIMIT $3",
                &[&group, &topic, &limit],
            )
            .await?
            .iter()
            .map(|r| GapRow {
                partition: r.get(0),
                reason: r.get(1),
                stored_offset: r.get(2),
                reset_to: r.get(3),
                policy: r.get(4),
                detected_at: r.get(5),
            })
            .collect();
        Ok(Gaps { total, latest })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(error: &str, value: Option<&[u8]>) -> DeadLetterRow {
        let t = chrono::DateTime::parse_from_rfc3339("2026-11-24T12:00:00Z")
            .expect("time")
            .with_timezone(&chrono::Utc);
        DeadLetterRow {
            id: 7,
            group: "g".to_owned(),
            topic: "food-orders".to_owned(),
            partition: 1,
            incarnation: 0,
            offset: 42,
            kafka_timestamp: t,
            key: Some(b"CUST-\x1b[31m".to_vec()),
            value: value.map(<[u8]>::to_vec),
            kind: "malformed_json".to_owned(),
            error: error.to_owned(),
            recorded_at: t,
            headers: vec![("trace\x1b".to_owned(), b"t\x00".to_vec())],
        }
    }

    /// `dead-letters show` escapes key, value, error and headers; a null value says so.
    #[test]
    fn shown_dead_letter_is_escaped() {
        let shown = row("bad \x1b[2J", Some(b"{\x1b[2J\xff")).to_string();
        assert!(!shown.contains('\x1b'), "{shown}");
        assert!(shown.contains("key:         CUST-\\x1b[31m\n"), "{shown}");
        assert!(shown.contains("value:       {\\x1b[2J\\xff\n"), "{shown}");
        assert!(shown.contains("error:       bad \\x1b[2J\n"), "{shown}");
        assert!(shown.contains("  trace\\x1b: t\\x00\n"), "{shown}");
        assert!(row("e", None).to_string().contains("value:       (none)\n"));
    }

    /// `dead-letters list` gives one line per row, the error escaped and cut to 80 characters.
    #[test]
    fn listed_dead_letters_are_one_line_each() {
        let long = format!("line one\nline two \x07{}", "x".repeat(200));
        let list = DeadLetterList {
            group: "g".to_owned(),
            topic: "t".to_owned(),
            rows: vec![row(&long, Some(b"v"))],
        }
        .to_string();
        let lines: Vec<&str> = list.lines().collect();
        assert_eq!(lines.len(), 2, "{list}");
        let error = lines[1]
            .split("malformed_json")
            .nth(1)
            .expect("error")
            .trim();
        assert!(error.starts_with("line one line two \\x07x"), "{error}");
        assert_eq!(error.chars().count(), 80);
        assert!(error.ends_with("..."));
        let empty = DeadLetterList {
            group: "g".to_owned(),
            topic: "t".to_owned(),
            rows: vec![],
        };
        assert_eq!(empty.to_string(), "no dead letters for group g on t\n");
    }
}
