//! One fetched batch, one PostgreSQL transaction.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use events::{LineItem, OrderState, Status};
use uuid::Uuid;

use crate::fold::{self, Current, SourceRecord};
use crate::{Error, Result, Store};

/// A fetched batch of one partition, ready to apply.
#[derive(Debug)]
pub struct Batch<'a> {
    pub group: &'a str,
    pub topic: &'a str,
    pub partition: i32,
    /// The stored offset the batch was fetched from. The commit only
    /// succeeds if the stored offset is still this (compare-and-set).
    pub from_offset: i64,
    /// The offset to store: one past the last record of the batch.
    pub next_offset: i64,
    /// The records, in offset order.
    pub records: &'a [SourceRecord],
    /// The incarnation of the partition's log the stored offset refers to.
    pub incarnation: i32,
    /// The member committing and its lease epoch; the commit only succeeds
    /// while that lease is current. `None` commits without a lease (tools
    /// and benchmarks on a private database).
    pub lease: Option<(&'a str, i64)>,
}

/// What a committed batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Events written to history.
    pub events: usize,
    /// Orders whose view row was written.
    pub orders: usize,
    /// The records that went to `dead_letters`, in offset order.
    pub dead_letters: Vec<fold::DeadLetter>,
    pub duplicates: usize,
    pub stale: usize,
    /// The incarnation the partition's stored offset is in after the
    /// commit: the batch's own, or a new one when the batch met records
    /// that are not the ones history holds at their offsets (a position
    /// clash: another log of the partition). Later batches use it.
    pub incarnation: i32,
    /// How long each projection's apply took in this batch, by name.
    pub projection_times: Vec<(String, std::time::Duration)>,
}

impl Store {
    /// Applies `batch` in one transaction: history rows, the orders view,
    /// dead letters and the partition's next offset. On any error nothing is
    /// written, and the same batch can be applied again.
    #[tracing::instrument(
        skip(self, batch),
        fields(partition = batch.partition, from = batch.from_offset, to = batch.next_offset, records = batch.records.len())
    )]
    pub async fn apply_batch(&self, batch: &Batch<'_>) -> Result<Applied> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;

        let event_ids: Vec<Uuid> = batch
            .records
            .iter()
            .filter_map(|r| r.event.as_ref().ok().map(|e| e.event_id))
            .collect();
        let mut order_ids: Vec<Uuid> = batch
            .records
            .iter()
            .filter_map(|r| r.event.as_ref().ok().map(|e| e.order_id))
            .collect();
        order_ids.sort_unstable();
        order_ids.dedup();

        // Invariant 13: the orders this batch touches are locked before
        // anything about them is read, so a batch of another partition
        // touching one of them waits for this one to commit, and what
        // this batch decides is decided against their committed state.
        // Each read below is a statement of its own, so it sees what the
        // batches it waited for committed (READ COMMITTED).
        if !order_ids.is_empty() {
            let schema = self.schema_name();
            let (class, keys) = order_lock_keys(schema, &order_ids);
            let (attach_class, attach_key) = attach_lock_key(schema);
            let stmt = tx
                .prepare_cached(include_str!("sql/lock_orders.sql"))
                .await?;
            tx.execute(&stmt, &[&class, &keys, &attach_class, &attach_key])
                .await?;
        }

        // Which events were seen before, and what history and dead letters
        // already hold at the batch's positions.
        let offsets: Vec<i64> = batch.records.iter().map(|r| r.offset).collect();
        let stmt = tx
            .prepare_cached(include_str!("sql/select_seen.sql"))
            .await?;
        let mut known: HashSet<Uuid> = HashSet::new();
        let mut at_position: Vec<Held> = Vec::new();
        let mut signature: Vec<String> = Vec::new();
        for row in tx
            .query(
                &stmt,
                &[
                    &event_ids,
                    &batch.topic,
                    &batch.partition,
                    &batch.incarnation,
                    &offsets,
                    &batch.group,
                    &offsets.first().copied().unwrap_or(0),
                    &offsets.last().copied().unwrap_or(-1),
                ],
            )
            .await?
        {
            let what: &str = row.get(0);
            match what {
                "known" => {
                    known.insert(row.get(1));
                }
                "projection" => signature.push(row.get(5)),
                _ => at_position.push(Held {
                    dead_letter: what == "dead_letter",
                    event_id: row.get(1),
                    offset: row.get(2),
                    key: row.get(3),
                    value: row.get(4),
                }),
            }
        }
        let (recorded, clash) = compare_positions(batch.records, &at_position);
        let incarnation = match clash {
            None => batch.incarnation,
            Some(offset) => {
                let stmt = tx
                    .prepare_cached(include_str!("sql/next_incarnation.sql"))
                    .await?;
                let next: i32 = tx
                    .query_one(&stmt, &[&batch.topic, &batch.partition, &batch.incarnation])
                    .await?
                    .get(0);
                tracing::warn!(
                    topic = batch.topic,
                    partition = batch.partition,
                    offset,
                    old_incarnation = batch.incarnation,
                    new_incarnation = next,
                    "the record at offset {offset} is not the one history holds there: this is \
                     another log of the partition (the topic was deleted and recreated); going on \
                     in incarnation {next}, recorded in offset_gaps as position_clash"
                );
                next
            }
        };

        let stmt = tx
            .prepare_cached(include_str!("sql/select_orders_for_update.sql"))
            .await?;
        let mut current = HashMap::with_capacity(order_ids.len());
        for row in tx.query(&stmt, &[&order_ids]).await? {
            let c = current_from_row(&row)?;
            current.insert(c.state.order_id, c);
        }

        let source = fold::Source {
            topic: batch.topic,
            partition: batch.partition,
            incarnation,
        };
        let mut plan = fold::plan(source, batch.records, &known, current);
        // A record whose dead letter is already at its position (in this
        // incarnation) is the same record read again after the group was
        // reset to an earlier offset: it is not dead-lettered twice.
        let before = plan.dead_letters.len();
        plan.dead_letters
            .retain(|d| !recorded.contains(&batch.records[d.index].offset));
        plan.duplicates += before - plan.dead_letters.len();
        let stored_incarnation = batch.incarnation;
        let batch = &Batch {
            incarnation,
            ..*batch
        };

        // The SQL projections attached in the registry as this transaction
        // sees it (after the attach lock).
        signature.sort_unstable();
        let cached = self.attached.lock().map(|a| a.clone()).unwrap_or_default();
        let attached = if cached.signature == signature {
            cached
        } else {
            let fresh = self.load_attached(&tx).await?;
            if let Ok(mut a) = self.attached.lock() {
                *a = fresh.clone();
            }
            fresh
        };
        let with_sql = !attached.sql.is_empty();

        let mut projection_times = Vec::new();
        if !plan.history.is_empty() {
            // With SQL projections attached, the same statement fills
            // `applied_events` from the history rows it inserted.
            let started = std::time::Instant::now();
            insert_history(&tx, batch, &plan, with_sql).await?;
            projection_times.push(("history".to_owned(), started.elapsed()));
        }
        if !plan.view.is_empty() {
            let started = std::time::Instant::now();
            upsert_orders(&tx, batch, &plan.view).await?;
            projection_times.push(("orders".to_owned(), started.elapsed()));
        }
        if !plan.dead_letters.is_empty() {
            insert_dead_letters(&tx, batch, &plan.dead_letters).await?;
        }
        if !plan.history.is_empty() && with_sql {
            let offsets = batch
                .records
                .first()
                .zip(batch.records.last())
                .map(|(a, b)| (a.offset, b.offset));
            for (name, statements) in &attached.sql {
                let started = std::time::Instant::now();
                crate::projection_store::run_statements(&tx, name, statements, offsets).await?;
                projection_times.push((name.clone(), started.elapsed()));
            }
        }

        // The fingerprint of the batch's last record, with that record's
        // offset: the batch's next offset may lie past markers and aborted
        // records, which are not records a take can compare. A batch of
        // markers only keeps the fingerprint it had (advance_offset.sql).
        let fingerprint = batch.records.last().map(|r| {
            (
                r.offset,
                fold::fingerprint(r.timestamp, r.key.as_deref(), r.value.as_deref()),
            )
        });
        let stmt = tx
            .prepare_cached(include_str!("sql/advance_offset.sql"))
            .await?;
        let moved = tx
            .execute(
                &stmt,
                &[
                    &batch.group,
                    &batch.topic,
                    &batch.partition,
                    &batch.next_offset,
                    &batch.from_offset,
                    &stored_incarnation,
                    &fingerprint.map(|f| f.1),
                    &batch.lease.map(|(owner, _)| owner),
                    &batch.lease.map_or(0, |(_, epoch)| epoch),
                    &fingerprint.map(|f| f.0),
                    &incarnation,
                ],
            )
            .await?;
        if moved != 1 {
            // Dropping `tx` rolls everything back.
            return Err(Error::LeaseLost {
                group: batch.group.to_owned(),
                topic: batch.topic.to_owned(),
                partition: batch.partition,
                expected: batch.from_offset,
            });
        }
        if incarnation != stored_incarnation {
            // Where the clash was found: the batch's first offset.
            let at = batch.from_offset;
            let gap = crate::Gap {
                group: batch.group,
                topic: batch.topic,
                partition: batch.partition,
                reason: "position_clash",
                stored: crate::StoredOffset {
                    next_offset: at,
                    incarnation: stored_incarnation,
                    last_fingerprint: None,
                    fingerprint_offset: None,
                },
                earliest: at,
                latest: at,
                reset_to: at,
                new_incarnation: incarnation,
                policy: "none",
            };
            crate::insert_gap(&tx, &gap).await?;
        }
        tx.commit().await?;

        Ok(Applied {
            events: plan.history.len(),
            orders: plan.view.len(),
            dead_letters: plan.dead_letters,
            duplicates: plan.duplicates,
            stale: plan.stale,
            incarnation,
            projection_times,
        })
    }
}

/// A row already in history or dead letters at one of the batch's
/// positions (same topic, partition and incarnation; dead letters of the
/// same group).
#[derive(Debug)]
struct Held {
    dead_letter: bool,
    event_id: Option<Uuid>,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
}

/// Compares what history and dead letters hold at the batch's positions
/// with the batch's records. Offsets in a Kafka log never change meaning,
/// so a row at a record's offset is either that record, read again (a
/// group reset to an earlier offset), or proof that this is another log of
/// the partition (a topic deleted and recreated, then reset). Returns the
/// offsets whose dead letter is already recorded (the same record), and
/// the first offset that holds a different record, if any.
fn compare_positions(records: &[SourceRecord], held: &[Held]) -> (HashSet<i64>, Option<i64>) {
    let by_offset: HashMap<i64, &SourceRecord> = records.iter().map(|r| (r.offset, r)).collect();
    let mut recorded = HashSet::new();
    let mut clash: Option<i64> = None;
    for h in held {
        let Some(record) = by_offset.get(&h.offset) else {
            continue;
        };
        let event_id = record.event.as_ref().ok().map(|e| e.event_id);
        let same = if h.dead_letter {
            // A dead letter keeps the record's key and value as they were.
            h.key.as_deref() == record.key.as_deref()
                && h.value.as_deref() == record.value.as_deref()
        } else {
            h.event_id.is_some() && h.event_id == event_id
        };
        if !same {
            clash = Some(clash.map_or(h.offset, |c| c.min(h.offset)));
        } else if h.dead_letter {
            recorded.insert(h.offset);
        }
    }
    (recorded, clash)
}

/// The advisory lock keys of `orders` (sorted, without repeats, so that two
/// transactions always take shared keys in the same order and cannot
/// deadlock on them): PostgreSQL's two-key form, a class per schema (a
/// rebuild's shadow does not wait for the live tables) and 32 bits of each
/// order id. Two orders sharing 32 bits only wait for each other.
fn order_lock_keys(schema: &str, orders: &[Uuid]) -> (i32, Vec<i32>) {
    let mut keys: Vec<i32> = orders.iter().map(|o| fnv32(o.as_bytes())).collect();
    keys.sort_unstable();
    keys.dedup();
    (fnv32(schema.as_bytes()), keys)
}

/// 32-bit FNV-1a: advisory lock keys from names and ids.
pub(crate) fn fnv32(bytes: &[u8]) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in bytes {
        hash ^= u32::from(*b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash as i32
}

/// The attach lock of a schema's projections: every batch that applies
/// events takes it shared; attaching or dropping a projection takes it
/// exclusively (projection_store.rs). A class of its own, so it never
/// meets an order's key.
pub(crate) fn attach_lock_key(schema: &str) -> (i32, i32) {
    (fnv32(format!("{schema}:projections").as_bytes()), 0)
}

/// An order's view row, read back to fold the batch onto it. A row this
/// build cannot read (a status it does not know, items that are not its
/// line items) is an error naming the order: guessing `pending` or no
/// items would write the guess back as the order's state.
fn current_from_row(row: &tokio_postgres::Row) -> Result<Current> {
    let order_id: Uuid = row.get(0);
    let status: &str = row.get(3);
    let status = Status::parse(status).ok_or_else(|| Error::UnreadableOrder {
        order_id,
        problem: format!("unknown status {status:?}"),
    })?;
    let items: &str = row.get(4);
    let items: Vec<LineItem> = serde_json::from_str(items).map_err(|e| Error::UnreadableOrder {
        order_id,
        problem: format!("items are not a list of line items: {e}"),
    })?;
    Ok(Current {
        state: OrderState {
            order_id,
            customer_id: row.get(1),
            restaurant_id: row.get(2),
            status,
            items,
            total_cents: row.get(5),
            created_at: row.get(6),
            updated_at: row.get(7),
            last_event_id: row.get(8),
        },
        source_topic: row.get(9),
        source_partition: row.get(10),
        source_incarnation: row.get(11),
        source_offset: row.get(12),
    })
}

/// History rows for the plan's applied events, in one statement. With
/// `applied_events` (SQL projections attached), the statement also fills
/// it from the rows it inserted (insert_history_applied.sql), each with
/// its order's state right after it: the status its type leads to (every
/// applied event is a step the machine allowed), and the order's
/// restaurant, items, total and creation time, which never change after
/// creation. Each payload is parsed once, by the history insert.
async fn insert_history(
    tx: &deadpool_postgres::Transaction<'_>,
    batch: &Batch<'_>,
    plan: &fold::Plan,
    applied_events: bool,
) -> Result<()> {
    let n = plan.history.len();
    let mut event_id = Vec::with_capacity(n);
    let mut order_id = Vec::with_capacity(n);
    let mut customer_id = Vec::with_capacity(n);
    let mut event_type = Vec::with_capacity(n);
    let mut schema_version = Vec::with_capacity(n);
    let mut payload: Vec<&str> = Vec::with_capacity(n);
    let mut occurred_at = Vec::with_capacity(n);
    let mut offset = Vec::with_capacity(n);
    let mut timestamp: Vec<DateTime<Utc>> = Vec::with_capacity(n);
    let mut status = Vec::with_capacity(n);
    for &i in &plan.history {
        let record = &batch.records[i];
        let Ok(event) = &record.event else { continue };
        event_id.push(event.event_id);
        order_id.push(event.order_id);
        customer_id.push(event.customer_id.as_str());
        event_type.push(event.body.event_type());
        schema_version.push(event.schema_version as i32);
        // A decoded event's value is valid UTF-8 JSON by construction.
        payload.push(
            record
                .value
                .as_deref()
                .and_then(|v| std::str::from_utf8(v).ok())
                .unwrap_or("{}"),
        );
        occurred_at.push(event.occurred_at);
        offset.push(record.offset);
        timestamp.push(record.timestamp);
        status.push(Status::after(&event.body).as_str());
    }
    let history: [&(dyn tokio_postgres::types::ToSql + Sync); 12] = [
        &batch.topic,
        &batch.partition,
        &event_id,
        &order_id,
        &customer_id,
        &event_type,
        &schema_version,
        &payload,
        &occurred_at,
        &offset,
        &timestamp,
        &batch.incarnation,
    ];
    if !applied_events {
        let stmt = tx
            .prepare_cached(include_str!("sql/insert_history.sql"))
            .await?;
        tx.execute(&stmt, &history).await?;
        return Ok(());
    }
    // The orders' attributes, one row per order the batch changed.
    let orders = &plan.view;
    let ids: Vec<Uuid> = orders.iter().map(|c| c.state.order_id).collect();
    let restaurant: Vec<&str> = orders
        .iter()
        .map(|c| c.state.restaurant_id.as_str())
        .collect();
    let total: Vec<i64> = orders.iter().map(|c| c.state.total_cents).collect();
    let items: Vec<String> = orders
        .iter()
        .map(|c| serde_json::to_string(&c.state.items).unwrap_or_else(|_| "[]".to_owned()))
        .collect();
    let created: Vec<DateTime<Utc>> = orders.iter().map(|c| c.state.created_at).collect();
    let stmt = tx
        .prepare_cached(&format!(
            "WITH h AS ({} RETURNING *) {}",
            include_str!("sql/insert_history.sql").trim_end(),
            include_str!("sql/insert_applied_events.sql")
        ))
        .await?;
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = history.to_vec();
    params.extend([
        &status as &(dyn tokio_postgres::types::ToSql + Sync),
        &ids,
        &restaurant,
        &total,
        &items,
        &created,
    ]);
    tx.execute(&stmt, &params).await?;
    Ok(())
}

async fn upsert_orders(
    tx: &deadpool_postgres::Transaction<'_>,
    batch: &Batch<'_>,
    rows: &[Current],
) -> Result<()> {
    let n = rows.len();
    let mut order_id = Vec::with_capacity(n);
    let mut customer_id = Vec::with_capacity(n);
    let mut restaurant_id = Vec::with_capacity(n);
    let mut status = Vec::with_capacity(n);
    let mut items = Vec::with_capacity(n);
    let mut total = Vec::with_capacity(n);
    let mut created = Vec::with_capacity(n);
    let mut updated = Vec::with_capacity(n);
    let mut last_event = Vec::with_capacity(n);
    let mut source_offset = Vec::with_capacity(n);
    for c in rows {
        let s = &c.state;
        order_id.push(s.order_id);
        customer_id.push(s.customer_id.as_str());
        restaurant_id.push(s.restaurant_id.as_str());
        status.push(s.status.as_str());
        items.push(serde_json::to_string(&s.items).unwrap_or_else(|_| "[]".to_owned()));
        total.push(s.total_cents);
        created.push(s.created_at);
        updated.push(s.updated_at);
        last_event.push(s.last_event_id);
        source_offset.push(c.source_offset);
    }
    let stmt = tx
        .prepare_cached(include_str!("sql/upsert_orders.sql"))
        .await?;
    tx.execute(
        &stmt,
        &[
            &batch.topic,
            &batch.partition,
            &order_id,
            &customer_id,
            &restaurant_id,
            &status,
            &items,
            &total,
            &created,
            &updated,
            &last_event,
            &source_offset,
            &batch.incarnation,
        ],
    )
    .await?;
    Ok(())
}

async fn insert_dead_letters(
    tx: &deadpool_postgres::Transaction<'_>,
    batch: &Batch<'_>,
    dead: &[fold::DeadLetter],
) -> Result<()> {
    let n = dead.len();
    let mut offset = Vec::with_capacity(n);
    let mut timestamp = Vec::with_capacity(n);
    let mut key: Vec<Option<&[u8]>> = Vec::with_capacity(n);
    let mut value: Vec<Option<&[u8]>> = Vec::with_capacity(n);
    let mut kind = Vec::with_capacity(n);
    let mut message = Vec::with_capacity(n);
    let mut headers = Vec::with_capacity(n);
    let mut event_id: Vec<Option<Uuid>> = Vec::with_capacity(n);
    for d in dead {
        let record = &batch.records[d.index];
        event_id.push(record.event.as_ref().ok().map(|e| e.event_id));
        tracing::warn!(
            partition = batch.partition,
            offset = record.offset,
            kind = d.kind,
            error = %d.message,
            "dead letter"
        );
        offset.push(record.offset);
        timestamp.push(record.timestamp);
        key.push(record.key.as_deref());
        value.push(record.value.as_deref());
        kind.push(d.kind);
        message.push(d.message.as_str());
        headers.push(crate::headers::to_json(&record.headers));
    }
    let stmt = tx
        .prepare_cached(include_str!("sql/insert_dead_letters.sql"))
        .await?;
    tx.execute(
        &stmt,
        &[
            &batch.group,
            &batch.topic,
            &batch.partition,
            &offset,
            &timestamp,
            &key,
            &value,
            &kind,
            &message,
            &batch.incarnation,
            &headers,
            &event_id,
        ],
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::generator::{Generator, GeneratorConfig};

    fn records(n: usize) -> Vec<SourceRecord> {
        Generator::new(GeneratorConfig {
            seed: 5,
            ..GeneratorConfig::default()
        })
        .take(n)
        .enumerate()
        .map(|(i, e)| SourceRecord {
            offset: 10 + i as i64,
            timestamp: e.occurred_at,
            key: Some(e.customer_id.clone().into_bytes()),
            value: Some(e.to_json()),
            headers: Vec::new(),
            event: Ok(e),
        })
        .collect()
    }

    fn history_at(r: &SourceRecord, event_id: Uuid) -> Held {
        Held {
            dead_letter: false,
            event_id: Some(event_id),
            offset: r.offset,
            key: None,
            value: None,
        }
    }

    /// History holding the batch's own events at their offsets is a re-read, not a clash; another event id there is a clash at the first such offset.
    #[test]
    fn a_different_record_at_a_held_position_is_a_clash() {
        let recs = records(4);
        let id = |i: usize| recs[i].event.as_ref().expect("event").event_id;
        let same: Vec<Held> = (0..4).map(|i| history_at(&recs[i], id(i))).collect();
        assert_eq!(compare_positions(&recs, &same), (HashSet::new(), None));

        let other = vec![
            history_at(&recs[3], Uuid::from_u128(9)),
            history_at(&recs[1], Uuid::from_u128(8)),
        ];
        assert_eq!(compare_positions(&recs, &other).1, Some(11));
    }

    /// A dead letter with the record's own key and value is the same record (left out, not a clash); other bytes there are a clash.
    #[test]
    fn dead_letters_are_compared_by_their_bytes() {
        let mut recs = records(2);
        recs[1].event = Err(events::DecodeError::new(
            events::ErrorKind::MalformedJson,
            "bad",
        ));
        recs[1].value = Some(b"{not json".to_vec());
        let held = |value: &[u8]| Held {
            dead_letter: true,
            event_id: None,
            offset: 11,
            key: recs[1].key.clone(),
            value: Some(value.to_vec()),
        };
        assert_eq!(
            compare_positions(&recs, &[held(b"{not json")]),
            (HashSet::from([11]), None)
        );
        assert_eq!(compare_positions(&recs, &[held(b"{other")]).1, Some(11));
    }

    /// Lock keys are sorted and without repeats (so two batches never wait on each other in a cycle), and each schema has its own class.
    #[test]
    fn lock_keys_are_sorted_per_schema() {
        let orders: Vec<Uuid> = (0..200u128).map(|i| Uuid::from_u128(i * 7919)).collect();
        let mut twice = orders.clone();
        twice.extend(orders.iter().rev());
        let (class, keys) = order_lock_keys("public", &twice);
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(keys.len(), 200);
        assert_ne!(class, order_lock_keys("public_rebuild", &orders).0);
        assert_eq!((class, keys), order_lock_keys("public", &orders));
    }
}
