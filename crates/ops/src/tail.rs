//! `foodpipe tail`: print records, like `kafka-console-consumer`.

use std::future::Future;
use std::io::Write;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kafka::{KafkaConfig, OffsetAt, PartitionReader};

/// Where `tail` starts in each partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    /// The log end: only records produced from now on (Kafka's default).
    Latest,
    Beginning,
    Offset(i64),
    /// The first record at or after this time.
    Time(DateTime<Utc>),
}

/// How records are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `partition<TAB>offset<TAB>timestamp<TAB>key<TAB>value`, key and
    /// value escaped for the terminal (`events::escape_for_terminal`).
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Clone)]
pub struct TailConfig {
    pub kafka: KafkaConfig,
    pub topic: String,
    pub from: From,
    /// Only this partition; `None` for all.
    pub partition: Option<i32>,
    /// Keep waiting for new records instead of stopping at the end.
    pub follow: bool,
    pub format: Format,
}

/// Prints records to `out` until the end (or, with `follow`, until
/// `shutdown`). Returns how many were printed.
pub async fn run(
    config: TailConfig,
    out: &mut (dyn Write + Send),
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<u64> {
    let client = kafka::connect(&config.kafka).await?;
    let count = kafka::existing_topic_partitions(&client, &config.topic).await?;
    let partitions: Vec<i32> = match config.partition {
        Some(p) if p < 0 || p as u32 >= count => anyhow::bail!(
            "--partition {p} does not exist: {} has partitions 0..{}",
            config.topic,
            count.saturating_sub(1)
        ),
        Some(p) => vec![p],
        None => (0..count as i32).collect(),
    };
    // Per partition: reader, next offset, end (when not following).
    let mut cursors = Vec::with_capacity(partitions.len());
    for p in partitions {
        let reader = PartitionReader::new(&client, &config.topic, p).await?;
        let earliest = reader.offset(OffsetAt::Earliest).await?;
        let latest = reader.offset(OffsetAt::Latest).await?;
        let start = match config.from {
            From::Latest => latest,
            From::Beginning => earliest,
            From::Offset(o) => o.clamp(earliest, latest),
            From::Time(t) => {
                let at = reader.offset(OffsetAt::Timestamp(t)).await?;
                if at >= 0 { at } else { latest }
            }
        };
        cursors.push((reader, start, latest));
    }
    let mut shutdown = std::pin::pin!(shutdown);
    let mut printed = 0u64;
    // Each record's line is built here, one buffer for all of them.
    let mut line = String::new();
    loop {
        let mut progressed = false;
        for (reader, next, end) in &mut cursors {
            if !config.follow && *next >= *end {
                continue;
            }
            let wait = if config.follow {
                Duration::from_millis(200)
            } else {
                Duration::ZERO
            };
            let fetched = tokio::select! {
                () = &mut shutdown => return Ok(printed),
                f = reader.fetch(*next, 1024 * 1024, wait) => f?,
            };
            if let Some(c) = &fetched.corrupt
                && fetched.next_offset == *next
            {
                // Nothing before it to print and no way past it: say so
                // instead of asking for the same offset forever.
                return Err(c.to_error(&config.topic, reader.partition()).into());
            }
            for r in fetched.records {
                if !config.follow && r.offset >= *end {
                    break;
                }
                print_record(out, &mut line, config.format, reader.partition(), &r)?;
                printed += 1;
            }
            // Past the whole batches fetched, markers and aborted records
            // included: a fetch landing on a transaction marker returns no
            // record but still moves on.
            if fetched.next_offset > *next {
                *next = if config.follow {
                    fetched.next_offset
                } else {
                    fetched.next_offset.min(*end)
                };
                progressed = true;
            }
        }
        out.flush()?;
        let done = cursors.iter().all(|(_, next, end)| next >= end);
        if !config.follow && done {
            return Ok(printed);
        }
        if !progressed && !config.follow && !done {
            // Nothing fetched although records remain: the broker is behind
            // its own watermark for a moment; try again shortly.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// One record on one line, built in `line`. Text escapes the key and
/// value for the terminal (an escape sequence in a record must not drive
/// it; a tab or newline must not break the line); JSON is escaped by serde
/// and `events::json_for_terminal`, with bytes that are not UTF-8 replaced
/// by U+FFFD.
fn print_record(
    out: &mut (dyn Write + Send),
    line: &mut String,
    format: Format,
    partition: i32,
    r: &kafka::RecordAndOffset,
) -> std::io::Result<()> {
    match format {
        Format::Text => {
            use std::fmt::Write as _;
            line.clear();
            let _ = write!(
                line,
                "{partition}\t{}\t{}\t",
                r.offset,
                r.record.timestamp.to_rfc3339()
            );
            if let Some(key) = &r.record.key {
                events::escape_for_terminal_onto(key, line);
            }
            line.push('\t');
            if let Some(value) = &r.record.value {
                events::escape_for_terminal_onto(value, line);
            }
            line.push('\n');
            out.write_all(line.as_bytes())
        }
        Format::Json => {
            let text = |b: &Option<Vec<u8>>| {
                b.as_deref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
            };
            let key = text(&r.record.key);
            let value = text(&r.record.value);
            let line = serde_json::json!({
                "partition": partition,
                "offset": r.offset,
                "timestamp": r.record.timestamp.to_rfc3339(),
                "key": key,
                "value": value,
            });
            writeln!(out, "{}", events::json_for_terminal(&line.to_string()))
        }
    }
}
