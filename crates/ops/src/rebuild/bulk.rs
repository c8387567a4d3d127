//! Step 1 at bulk speed: the shadow filled up to the live offsets by
//! [`bulk_fill`](super::bulk_fill) (binary COPY into tables without indexes, the
//! fold in memory, indexes built once at the end) instead of one consumer
//! transaction per fetched batch.
//!
//! A task per partition fetches from the earliest offset up to the
//! partition's target and decodes (on the runtime's threads, so decoding
//! runs beside the fold); one loop folds what they bring, batch by batch
//! in each partition's offset order, through [`BulkFill`].
//! Whatever the fill cannot fold as the consumer would without deciding
//! something (a batch that cannot be decoded, a fetch error retrying does
//! not fix, a log shorter than the target, records not readable yet) ends
//! that partition's fill where it is: the offset row says where, and the
//! normal consumer path goes on from there, deciding as it always does.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kafka::{OffsetAt, PartitionReader};
use store::{SourceRecord, Store, StoreConfig};

use super::bulk_fill::BulkFill;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use pipeline::consume::{ConsumeConfig, OffsetReset};
use pipeline::retry::Backoff;

/// Fetched batches waiting for the fold, over all partitions: what bounds
/// the fill's memory besides the fold's own state.
const QUEUED_BATCHES: usize = 4;

/// The least a fetch asks for: fewer, larger fetches.
const MIN_FETCH_BYTES: i32 = 2 * 1024 * 1024;

/// Fetches in a row that bring nothing while the target is not reached
/// (an open transaction holds the last stable offset back) before the
/// partition is left to the consumer path, which waits as it always does.
const EMPTY_FETCHES: u32 = 20;

/// Transient fetch failures in a row before the consumer path takes the
/// partition over (with its strikes, `/healthz` and `group describe`).
const FAILED_FETCHES: u32 = 10;

/// Why the bulk fill cannot be used; `None`: it can.
pub(super) fn unusable(config: &ConsumeConfig, shadow: &str) -> Option<String> {
    if config.offset_reset != OffsetReset::Earliest {
        return Some(format!(
            "--offset-reset {}: where a partition starts is the consumer's decision",
            config.offset_reset.as_str()
        ));
    }
    // The SQL projections are filled in the shadow as `projection add`
    // fills one, which claims the shadow's own shadow name.
    if let Err(e) = store::derived_schema_name(shadow, store::REBUILD_SHADOW_SUFFIX) {
        return Some(e.to_string());
    }
    None
}

/// A fetched, decoded batch of one partition.
struct Fetched {
    partition: i32,
    records: Vec<SourceRecord>,
    next_offset: i64,
}

/// Fills the freshly migrated shadow (`shadow_store`) with the fold of
/// every partition from its earliest offset up to `targets` (a partition
/// not listed: nothing). Returns where each partition's fill ended: its
/// target, or short of it.
pub(super) async fn fill(
    config: &ConsumeConfig,
    shadow_store: &StoreConfig,
    targets: &BTreeMap<i32, i64>,
    stop: &CancellationToken,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let started = Instant::now();
    // Long COPY statements and index builds: no statement timeout here.
    // Connections: two per COPY stream (history, dead letters, then the
    // view), then one per index build, then one per table.
    let store = Store::connect(&StoreConfig {
        pool_size: 8,
        statement_timeout: None,
        idle_in_transaction_timeout: None,
        ..shadow_store.clone()
    })
    .await?;
    let client = kafka::connect(&config.kafka).await?;
    let partitions = kafka::existing_topic_partitions(&client, &config.topic).await?;
    let mut fill = BulkFill::start(&store, &config.group, &config.topic).await?;
    let (sender, mut batches) = mpsc::channel::<Fetched>(QUEUED_BATCHES);
    let mut fetchers = JoinSet::new();
    for partition in 0..partitions as i32 {
        let reader = PartitionReader::new(&client, &config.topic, partition).await?;
        let earliest = reader.offset(OffsetAt::Earliest).await?;
        fill.start_partition(partition, earliest);
        let target = targets.get(&partition).copied().unwrap_or(0);
        if earliest < target {
            fetchers.spawn(fetch_partition(
                reader,
                earliest,
                target,
                sender.clone(),
                config.clone(),
            ));
        }
    }
    drop(sender);
    tracing::info!(
        schema = ?shadow_store.schema,
        partitions,
        "bulk fill of the shadow: {} from the earliest offsets up to the live ones",
        config.topic
    );
    let mut last_log = Instant::now();
    // Where the fold's time goes: waiting for fetches, or folding and
    // writing (COPY waits for PostgreSQL when it falls behind).
    let (mut waiting, mut folding) = (Duration::ZERO, Duration::ZERO);
    loop {
        let asked = Instant::now();
        let batch = tokio::select! {
            biased;
            () = stop.cancelled() => anyhow::bail!("interrupted while filling the shadow schema"),
            batch = batches.recv() => batch,
        };
        let Some(batch) = batch else { break };
        let got = Instant::now();
        waiting += got - asked;
        fill.apply(batch.partition, &batch.records, batch.next_offset)
            .await?;
        folding += got.elapsed();
        if last_log.elapsed() >= Duration::from_secs(5) {
            last_log = Instant::now();
            let so_far = fill.report();
            tracing::info!(
                events = so_far.events,
                dead_letters = so_far.dead_letters,
                orders = so_far.orders,
                events_per_second = (so_far.events as f64 / started.elapsed().as_secs_f64()) as u64,
                "bulk fill"
            );
        }
    }
    while let Some(ended) = fetchers.join_next().await {
        if let Ok(Some((partition, offset, why))) = ended {
            tracing::warn!(
                partition,
                offset,
                "the bulk fill stops at offset {offset} of partition {partition} ({why}); the \
                 consumer path folds the rest"
            );
        }
    }
    let offsets = fill.offsets();
    let folded = Instant::now();
    let report = fill.finish().await?;
    tracing::info!(
        events = report.events,
        dead_letters = report.dead_letters,
        duplicates = report.duplicates,
        orders = report.orders,
        fold_seconds = (folded - started).as_secs_f64(),
        waiting_for_fetches_seconds = waiting.as_secs_f64(),
        folding_and_writing_seconds = folding.as_secs_f64(),
        index_seconds = folded.elapsed().as_secs_f64(),
        "bulk fill done"
    );
    Ok(offsets)
}

/// Fetches one partition from `offset` up to `target` (exclusive), handing
/// decoded batches to the fold. Returns where and why it stopped short, if
/// it did.
async fn fetch_partition(
    reader: PartitionReader,
    mut offset: i64,
    target: i64,
    batches: mpsc::Sender<Fetched>,
    config: ConsumeConfig,
) -> Option<(i32, i64, String)> {
    let partition = reader.partition();
    let max_bytes = config.fetch_max_bytes.max(MIN_FETCH_BYTES);
    let mut backoff = Backoff::new(config.max_backoff);
    let mut empty = 0;
    let mut failures = 0;
    while offset < target {
        let fetched = match reader.fetch(offset, max_bytes, Duration::ZERO).await {
            Ok(f) => f,
            Err(e) if e.kind() == kafka::ErrorKind::Transient => {
                // Not for ever: the consumer path, which `/healthz` and
                // `group describe` show, takes over a partition that keeps
                // failing.
                failures += 1;
                if failures >= FAILED_FETCHES {
                    let why = format!("{failures} fetches in a row failed: {e}");
                    return Some((partition, offset, why));
                }
                let delay = backoff.next_delay();
                tracing::warn!(partition, offset, error = %e, "fetch failed; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                continue;
            }
            Err(e) => return Some((partition, offset, e.to_string())),
        };
        backoff = Backoff::new(config.max_backoff);
        failures = 0;
        // Past whole batches (markers and aborted records included), never
        // past the target, as the consumer's fetcher does.
        let next_offset = fetched.next_offset.min(target);
        if next_offset <= offset {
            if let Some(corrupt) = fetched.corrupt {
                let why = format!("a record batch there cannot be decoded: {}", corrupt.error);
                return Some((partition, offset, why));
            }
            if offset > fetched.high_watermark {
                let why = format!("the log ends at {}", fetched.high_watermark);
                return Some((partition, offset, why));
            }
            empty += 1;
            if empty >= EMPTY_FETCHES {
                return Some((
                    partition,
                    offset,
                    "no records readable there yet".to_owned(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        empty = 0;
        let records: Vec<SourceRecord> = fetched
            .records
            .into_iter()
            .filter(|r| r.offset < target)
            .map(|r| pipeline::consume::decode(r, config.max_record_bytes))
            .collect();
        let batch = Fetched {
            partition,
            records,
            next_offset,
        };
        if batches.send(batch).await.is_err() {
            return None; // The fold stopped.
        }
        offset = next_offset;
    }
    None
}
