//! `--dead-letter-topic`: copies of dead letters on a Kafka topic.

use store::SourceRecord;

/// Copies of dead letters on a Kafka topic, for tools that watch topics
/// rather than tables. The `dead_letters` table stays the record: a copy is
/// published after its batch commits (so a rolled-back batch publishes
/// nothing) and a copy that cannot be published is logged, not retried
/// forever.
pub(crate) struct DeadLetterTopic {
    topic: String,
    partitions: Vec<kafka::PartitionWriter>,
}

impl DeadLetterTopic {
    pub(crate) async fn open(
        client: &kafka::Client,
        topic: &str,
        source_partitions: u32,
    ) -> kafka::Result<Self> {
        // ensure_topic refuses a topic listed without partitions, so
        // `publish` always has a writer to pick.
        let info = kafka::ensure_topic(client, topic, source_partitions).await?;
        let mut partitions = Vec::with_capacity(info.partitions as usize);
        for p in 0..info.partitions as i32 {
            partitions.push(kafka::PartitionWriter::new(client, topic, p).await?);
        }
        Ok(Self {
            topic: topic.to_owned(),
            partitions,
        })
    }

    /// Publishes the dead letters of one committed batch: same key and
    /// value, the error and the source position as headers.
    pub(crate) async fn publish(
        &self,
        source_topic: &str,
        partition: i32,
        records: &[SourceRecord],
        dead: &[store::fold::DeadLetter],
    ) {
        let Some(writer) = pick(&self.partitions, partition) else {
            tracing::error!(
                topic = %self.topic,
                partition,
                "the dead-letter topic has no partition to copy to; the dead letters are in the dead_letters table"
            );
            return;
        };
        let out: Vec<kafka::Record> = dead
            .iter()
            .filter_map(|d| records.get(d.index).map(|r| (d, r)))
            .map(|(d, r)| kafka::Record {
                key: r.key.clone(),
                value: r.value.clone(),
                // The original headers, then foodpipe's (which win on a
                // clash: the copy must say why it is there).
                headers: r
                    .headers
                    .iter()
                    .cloned()
                    .chain([
                        ("foodpipe.error.kind".to_owned(), d.kind.as_bytes().to_vec()),
                        (
                            "foodpipe.error.message".to_owned(),
                            d.message.clone().into_bytes(),
                        ),
                        (
                            "foodpipe.source".to_owned(),
                            format!("{source_topic}/{partition}/{}", r.offset).into_bytes(),
                        ),
                    ])
                    .collect(),
                timestamp: r.timestamp,
            })
            .collect();
        let n = out.len();
        if let Err(e) = writer.write(out).await {
            tracing::error!(
                topic = %self.topic,
                partition,
                records = n,
                error = %e,
                "could not copy dead letters to the dead-letter topic; they are in the dead_letters table"
            );
        }
    }
}

/// The dead-letter partition for a source partition: the same number, or
/// wrapped when the dead-letter topic has fewer; `None` when it has none
/// (never a division by zero) or the source number is negative.
fn pick<T>(partitions: &[T], source: i32) -> Option<&T> {
    let source = usize::try_from(source).ok()?;
    partitions.get(source.checked_rem(partitions.len())?)
}

#[cfg(test)]
mod tests {
    use super::pick;

    /// Source partitions map to the same dead-letter partition, wrapped; zero dead-letter partitions or a negative source give none instead of a panic.
    #[test]
    fn pick_wraps_and_never_divides_by_zero() {
        let three = ["a", "b", "c"];
        assert_eq!(pick(&three, 1), Some(&"b"));
        assert_eq!(pick(&three, 4), Some(&"b"));
        assert_eq!(pick(&three, -1), None);
        let none: [&str; 0] = [];
        assert_eq!(pick(&none, 0), None);
    }
}
