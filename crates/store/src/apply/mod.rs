//! One fetched batch, one PostgreSQL transaction.

use std::collections::{HashMap, HashSet};

use events::{LineItem, OrderState, Status};
use uuid::Uuid;

use crate::fold::{self, Current, SourceRecord};
use locks::order_lock_keys;
use pipeline::Open;
use positions::{Held, another_log, compare_positions};
use rows::{DeadLetterRows, HistoryRows, ViewRows};

mod locks;
mod pipeline;
mod positions;
mod rows;
use crate::{Error, Result, Store};

pub(crate) use locks::{attach_lock_key, fnv32};

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
    ///
    /// Two round trips to PostgreSQL (apply/pipeline.rs), whatever the
    /// batch holds:
    /// 1. `BEGIN`; lock the batch's orders; move the stored offset
    ///    (compare-and-set under the lease, which also locks the offset row
    ///    to the commit); read the event ids seen before, the rows held at
    ///    the batch's positions and the attached projections; read the
    ///    orders' current state `FOR UPDATE`.
    /// 2. History, view, dead letters, each attached SQL projection, and
    ///    `COMMIT`.
    ///
    /// The fold decides between the two, from what the first read. More
    /// only where something changed: a connection's first use of a
    /// statement (prepared once per connection), a projection attached or
    /// dropped since the last batch (the registry read again), another log
    /// of the partition met (a position clash: a new incarnation and a gap
    /// row), or the offset refused (a rollback, and the lease is lost).
    #[tracing::instrument(
        skip(self, batch),
        fields(partition = batch.partition, from = batch.from_offset, to = batch.next_offset, records = batch.records.len())
    )]
    pub async fn apply_batch(&self, batch: &Batch<'_>) -> Result<Applied> {
        let open = Open::new(self.client().await?);
        let client = open.client();

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
        let offsets: Vec<i64> = batch.records.iter().map(|r| r.offset).collect();
        let (first, last) = (
            offsets.first().copied().unwrap_or(0),
            offsets.last().copied().unwrap_or(-1),
        );
        let schema = self.schema_name();
        let (class, keys) = order_lock_keys(schema, &order_ids);
        let (attach_class, attach_key) = attach_lock_key(schema);
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
        let (fingerprint_offset, fingerprint) =
            (fingerprint.map(|f| f.0), fingerprint.map(|f| f.1));
        let owner = batch.lease.map(|(owner, _)| owner);
        let epoch = batch.lease.map_or(0, |(_, epoch)| epoch);

        // Prepared once per connection; no round trip after that.
        let lock = client
            .prepare_cached(include_str!("../sql/lock_orders.sql"))
            .await?;
        let advance = client
            .prepare_cached(include_str!("../sql/advance_offset.sql"))
            .await?;
        let seen = client
            .prepare_cached(include_str!("../sql/select_seen.sql"))
            .await?;
        let for_update = client
            .prepare_cached(include_str!("../sql/select_orders_for_update.sql"))
            .await?;

        // Round trip 1. Invariant 13: the orders this batch touches are
        // locked before anything about them is read, so a batch of another
        // partition touching one of them waits for this one to commit, and
        // what this batch decides is decided against their committed
        // state. Each statement after the lock sees what the batches it
        // waited for committed (READ COMMITTED: a snapshot per statement).
        // The offset moves first (invariant 5's fence): a member that lost
        // the lease learns it before any work, and the offset row stays
        // locked to the commit, so a take waits for this batch to end and
        // then reads the offset it wrote.
        let lock_params: [Param; 4] = [&class, &keys, &attach_class, &attach_key];
        let advance_params: [Param; 11] = [
            &batch.group,
            &batch.topic,
            &batch.partition,
            &batch.next_offset,
            &batch.from_offset,
            &batch.incarnation,
            &fingerprint,
            &owner,
            &epoch,
            &fingerprint_offset,
            &batch.incarnation,
        ];
        let seen_params: [Param; 8] = [
            &event_ids,
            &batch.topic,
            &batch.partition,
            &batch.incarnation,
            &offsets,
            &batch.group,
            &first,
            &last,
        ];
        let orders_params: [Param; 1] = [&order_ids];
        let touches_orders = !order_ids.is_empty();
        let mut steps = vec![pipeline::control(client, "BEGIN")];
        if touches_orders {
            steps.push(pipeline::done(client.execute(&lock, &lock_params)));
        }
        steps.push(pipeline::rows(client.query(&advance, &advance_params)));
        steps.push(pipeline::rows(client.query(&seen, &seen_params)));
        if touches_orders {
            steps.push(pipeline::rows(client.query(&for_update, &orders_params)));
        }
        let mut answers = Vec::with_capacity(steps.len());
        for answer in pipeline::pipelined(steps).await {
            // The first error is the cause; the ones after it only say
            // the transaction was aborted. Dropping `open` closes the
            // connection, and the server rolls back.
            answers.push(answer.result?);
        }
        let mut answers = answers.into_iter().skip(1 + usize::from(touches_orders));
        let moved = answers.next().map_or(0, |rows| rows.len());
        let seen_rows = answers.next().unwrap_or_default();
        let order_rows = answers.next().unwrap_or_default();
        if moved != 1 {
            client.batch_execute("ROLLBACK").await?;
            open.settle();
            return Err(Error::LeaseLost {
                group: batch.group.to_owned(),
                topic: batch.topic.to_owned(),
                partition: batch.partition,
                expected: batch.from_offset,
            });
        }

        // Which events were seen before, and what history and dead letters
        // already hold at the batch's positions.
        let mut known: HashSet<Uuid> = HashSet::new();
        let mut at_position: Vec<Held> = Vec::new();
        let mut signature: Vec<String> = Vec::new();
        for row in seen_rows {
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
            Some(offset) => another_log(client, batch, offset).await?,
        };

        let mut current = HashMap::with_capacity(order_ids.len());
        for row in &order_rows {
            let c = current_from_row(row)?;
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
            let fresh = self.load_attached(client).await?;
            if let Ok(mut a) = self.attached.lock() {
                *a = fresh.clone();
            }
            fresh
        };
        let with_sql = !attached.sql.is_empty() && !plan.history.is_empty();

        // Round trip 2: every write, then COMMIT.
        let history = (!plan.history.is_empty()).then(|| HistoryRows::new(batch, &plan, with_sql));
        let view = (!plan.view.is_empty()).then(|| ViewRows::new(&plan.view));
        let dead =
            (!plan.dead_letters.is_empty()).then(|| DeadLetterRows::new(batch, &plan.dead_letters));
        let history_stmt = match &history {
            Some(h) => Some(client.prepare_cached(&h.sql()).await?),
            None => None,
        };
        let upsert = client
            .prepare_cached(include_str!("../sql/upsert_orders.sql"))
            .await?;
        let insert_dead = client
            .prepare_cached(include_str!("../sql/insert_dead_letters.sql"))
            .await?;
        let batch_offsets = offsets.first().zip(offsets.last()).map(|(a, b)| (*a, *b));
        let mut projection_statements = Vec::new();
        if with_sql {
            for (name, statements) in &attached.sql {
                for statement in statements {
                    // Prepared once per connection, its plan kept.
                    let stmt = client.prepare_cached(statement).await.map_err(|source| {
                        projection_failed(name, statement, batch_offsets, source)
                    })?;
                    projection_statements.push((name, statement, stmt));
                }
            }
        }
        let history_params = history.as_ref().map(|h| h.params(batch));
        let view_params = view.as_ref().map(|v| v.params(batch));
        let dead_params = dead.as_ref().map(|d| d.params(batch));
        let mut steps = Vec::new();
        let mut writes: Vec<Write> = Vec::new();
        if let (Some(stmt), Some(params)) = (&history_stmt, &history_params) {
            steps.push(pipeline::done(client.execute(stmt, params)));
            writes.push(Write::Projection("history"));
        }
        if let Some(params) = &view_params {
            steps.push(pipeline::done(client.execute(&upsert, params)));
            writes.push(Write::Projection("orders"));
        }
        if let Some(params) = &dead_params {
            steps.push(pipeline::done(client.execute(&insert_dead, params)));
            writes.push(Write::DeadLetters);
        }
        for (name, statement, stmt) in &projection_statements {
            steps.push(pipeline::done(client.execute(stmt, &[])));
            writes.push(Write::Sql(name.as_str(), statement.as_str()));
        }
        steps.push(pipeline::control(client, "COMMIT"));
        let sent = std::time::Instant::now();
        let mut answers = pipeline::pipelined(steps).await;
        let committed = answers.pop().expect("COMMIT is a step");
        let mut projection_times: Vec<(String, std::time::Duration)> = Vec::new();
        let mut previous = sent;
        let mut failed = None;
        for (answer, write) in answers.into_iter().zip(&writes) {
            // The server runs the statements one after another and answers
            // in order: each one's share is the time since the answer
            // before it.
            let took = answer.at.saturating_duration_since(previous);
            previous = answer.at;
            match (answer.result, write) {
                (Err(_), _) if failed.is_some() => {}
                (Err(e), Write::Sql(name, statement)) => {
                    failed = Some(projection_failed(name, statement, batch_offsets, e));
                }
                (Err(e), _) => failed = Some(Error::from(e)),
                (Ok(_), Write::Projection(name)) => {
                    projection_times.push(((*name).to_owned(), took));
                }
                (Ok(_), Write::Sql(name, _)) => match projection_times.last_mut() {
                    Some((last, total)) if last == name => *total += took,
                    _ => projection_times.push(((*name).to_owned(), took)),
                },
                (Ok(_), Write::DeadLetters) => {}
            }
        }
        if let Some(error) = failed {
            // The COMMIT after a failed statement rolled the transaction
            // back; if it answered, the connection is clean.
            if committed.result.is_ok() {
                open.settle();
            }
            return Err(error);
        }
        committed.result?;
        open.settle();
        // The rows borrow the plan, whose dead letters the caller gets.
        drop((history_params, view_params, dead_params));
        drop((history, view, dead));

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

/// What each write of round trip 2 is, to name it in an error or a timing.
enum Write<'a> {
    /// A built-in view: `history` or `orders`.
    Projection(&'static str),
    DeadLetters,
    /// One statement of an attached SQL projection.
    Sql(&'a str, &'a str),
}

type Param<'a> = &'a (dyn tokio_postgres::types::ToSql + Sync);

fn projection_failed(
    name: &str,
    statement: &str,
    offsets: Option<(i64, i64)>,
    source: tokio_postgres::Error,
) -> Error {
    Error::ProjectionFailed {
        name: name.to_owned(),
        statement: crate::projection::statement_head(statement),
        offsets,
        source,
    }
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
