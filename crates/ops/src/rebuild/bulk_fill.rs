//! Bulk writing for `rebuild` (issue 22): a fresh shadow schema's history,
//! dead letters, orders view and offsets written with binary COPY, the
//! fold done in memory by [`fold::plan`] (the very function every live
//! batch runs), the indexes and constraints built once at the end.
//!
//! 1. [`BulkFill::start`] takes the indexes and constraints (primary
//!    keys, unique keys, plain indexes) off `order_events`, `orders` and
//!    `dead_letters`, remembering their definitions. The tables stay
//!    logged: UNLOGGED while filling and `SET LOGGED` after cost more than
//!    writing the WAL as they fill (for a million events' history, 3.3 s
//!    of COPY and 3.7 s of `SET LOGGED`, which rewrites the table, against
//!    4.3 s of logged COPY), and a logged shadow is durable from the first
//!    row.
//! 2. [`BulkFill::apply`] folds one fetched batch of a partition, as
//!    `Store::apply_batch` would, against state kept in memory instead of
//!    read back from the tables: the orders' current states (one entry per
//!    order) and the event ids seen (history, and dead letters that
//!    decoded). History and dead-letter rows go out at once on COPY
//!    streams of their own connections, a COPY statement (a commit) per
//!    [`COPY_CHUNK`] rows.
//! 3. [`BulkFill::finish`] ends the streams, COPYs the orders' final
//!    states and writes each partition's offset row (next offset, the
//!    fingerprint of its last record), then builds the indexes again from
//!    their definitions, side by side over all tables ([`INDEX_BUILDS`] at
//!    once), makes the keys from their indexes, and runs ANALYZE.
//!
//! Exactness: the live fold reads, for each batch, the states of the
//! orders it touches and which of its event ids history or dead letters
//! hold; here both come from memory, which holds exactly what those tables
//! would (nothing else writes to a fresh shadow). A fresh shadow has no row
//! at any position, so no re-read dead letter and no position clash; every
//! partition is in incarnation 0, as a first take makes it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::pin::Pin;

use bytes::{BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt, TryStreamExt, stream};
use tokio_postgres::CopyInSink;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use uuid::Uuid;

use store::fold::{self, Current, SourceRecord};
use store::{Result, Store};

/// The tables a bulk fill writes row by row; they lose their indexes and
/// constraints while it runs.
const TABLES: [&str; 3] = ["order_events", "orders", "dead_letters"];

/// Rows per COPY statement of history or dead letters: each commits, so a
/// shadow's progress is visible (and a statement's memory on the server
/// stays small).
pub const COPY_CHUNK: u64 = 10_000;

// The columns each COPY writes, in the order its rows give them. Their
// types come from the catalog (`CopyStream::open`), so the COPY follows
// the migrations.
const HISTORY: (&str, &str) = (
    "order_events",
    "event_id, order_id, customer_id, event_type, schema_version, payload, occurred_at, \
     kafka_topic, kafka_partition, kafka_incarnation, kafka_offset, kafka_timestamp",
);
const DEAD_LETTERS: (&str, &str) = (
    "dead_letters",
    "group_id, topic, partition, kafka_incarnation, kafka_offset, kafka_timestamp, key, \
     value, error_kind, error, headers, event_id",
);
const ORDERS: (&str, &str) = (
    "orders",
    "order_id, customer_id, restaurant_id, status, items, total_cents, created_at, \
     updated_at, last_event_id, source_topic, source_partition, source_incarnation, \
     source_offset",
);

/// The incarnation of every partition of a fresh fold (a first take's).
const INCARNATION: i32 = 0;

/// JSON text sent as `jsonb` in binary COPY: version 1, then the text, as
/// it was on the topic (the live insert casts the same text).
#[derive(Debug)]
struct RawJsonb<'a>(&'a [u8]);

impl ToSql for RawJsonb<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&[1]);
        out.extend_from_slice(self.0);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    to_sql_checked!();
}

/// One table's binary COPY, a statement per [`COPY_CHUNK`] rows, on two
/// connections of its own used in turn: while one chunk's COPY ends on
/// one (PostgreSQL writes its last rows and commits), the next chunk
/// streams on the other, so the fold does not wait for a commit.
///
/// Rows are encoded here (the binary COPY format: a header, per row a field
/// count and each field's length and bytes, a trailer) and handed to the
/// connection [`SEND_BYTES`] at a time. tokio-postgres's
/// `BinaryCopyInWriter` hands them over every 4 KB, and each hand-over
/// wakes the connection's task: 47,000 context switches a second during a
/// fill.
struct CopyStream {
    clients: [deadpool_postgres::Object; 2],
    /// The connection the next chunk goes to.
    turn: usize,
    /// A chunk still ending on each connection.
    ending: [Option<tokio::task::JoinHandle<Result<()>>>; 2],
    statement: String,
    types: Vec<Type>,
    /// The chunk under way.
    sink: Option<Pin<Box<CopyInSink<Bytes>>>>,
    /// Encoded rows not yet handed to the connection.
    buf: BytesMut,
    rows: u64,
}

/// Bytes of encoded rows handed to the connection at once.
const SEND_BYTES: usize = 256 * 1024;

/// The binary COPY format's header: signature, flags, no extension.
const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

impl CopyStream {
    /// A COPY of `columns` (comma-separated) into `table` of the store's
    /// schema, sent as the catalog says those columns are typed.
    async fn open(store: &Store, (table, columns): (&str, &str)) -> Result<Self> {
        let clients = [store.client().await?, store.client().await?];
        let rows = clients[0]
            .query(
                "SELECT a.atttypid, c.name FROM unnest(string_to_array($2, ',')) \
                     WITH ORDINALITY AS c(name, pos) \
                 LEFT JOIN pg_attribute a ON a.attrelid = $1::text::regclass \
                     AND a.attname = trim(c.name) AND NOT a.attisdropped \
                 ORDER BY c.pos",
                &[&table, &columns],
            )
            .await?;
        let mut types = Vec::with_capacity(rows.len());
        for row in rows {
            let oid: Option<u32> = row.get(0);
            let name: String = row.get(1);
            let ty = oid.and_then(Type::from_oid).ok_or_else(|| {
                store::Error::BulkFill(format!(
                    "column {}.{} is missing or of a type it cannot copy",
                    table,
                    name.trim()
                ))
            })?;
            types.push(ty);
        }
        Ok(Self {
            clients,
            turn: 0,
            ending: [None, None],
            statement: format!("COPY {table} ({columns}) FROM STDIN (FORMAT binary)"),
            types,
            sink: None,
            buf: BytesMut::with_capacity(SEND_BYTES * 2),
            rows: 0,
        })
    }

    async fn write(&mut self, row: &[&(dyn ToSql + Sync)]) -> Result<()> {
        let sink = match &mut self.sink {
            Some(sink) => sink,
            None => {
                // The connection's previous chunk has ended first.
                if let Some(ending) = self.ending[self.turn].take() {
                    joined(ending.await)?;
                }
                let sink = self.clients[self.turn].copy_in(&self.statement).await?;
                self.buf.extend_from_slice(COPY_HEADER);
                self.sink.insert(Box::pin(sink))
            }
        };
        encode_row(&mut self.buf, &self.types, row)?;
        self.rows += 1;
        if self.rows.is_multiple_of(COPY_CHUNK) {
            self.end_chunk().await?;
        } else if self.buf.len() >= SEND_BYTES {
            sink.send(self.buf.split().freeze()).await?;
        }
        Ok(())
    }

    /// Sends the chunk under way, if any, with the trailer, and lets it end
    /// (commit) in a task of its own while the next chunk goes to the other
    /// connection.
    async fn end_chunk(&mut self) -> Result<()> {
        let Some(mut sink) = self.sink.take() else {
            return Ok(());
        };
        self.buf.put_i16(-1);
        sink.send(self.buf.split().freeze()).await?;
        self.ending[self.turn] = Some(tokio::spawn(async move {
            sink.as_mut().finish().await?;
            Ok(())
        }));
        self.turn = 1 - self.turn;
        Ok(())
    }

    /// Ends the chunk under way, if any, and waits for every chunk to end:
    /// all rows written so far are committed.
    async fn flush(&mut self) -> Result<()> {
        self.end_chunk().await?;
        for ending in &mut self.ending {
            if let Some(ending) = ending.take() {
                joined(ending.await)?;
            }
        }
        Ok(())
    }
}

/// Appends one row in the binary COPY format: the field count, then each
/// field's length (-1: NULL) and bytes, as `types` says it is typed.
fn encode_row(buf: &mut BytesMut, types: &[Type], row: &[&(dyn ToSql + Sync)]) -> Result<()> {
    let bad = store::Error::BulkFill;
    if row.len() != types.len() {
        return Err(bad(format!(
            "{} values for {} columns",
            row.len(),
            types.len()
        )));
    }
    buf.put_i16(row.len() as i16);
    for (value, ty) in row.iter().zip(types) {
        let at = buf.len();
        buf.put_i32(0);
        let length = match value
            .to_sql_checked(ty, buf)
            .map_err(|e| bad(e.to_string()))?
        {
            IsNull::Yes => -1,
            IsNull::No => i32::try_from(buf.len() - at - 4)
                .map_err(|_| bad("a value over 2 GiB".to_owned()))?,
        };
        buf[at..at + 4].copy_from_slice(&length.to_be_bytes());
    }
    Ok(())
}

/// A chunk's end, from its task.
fn joined(ended: std::result::Result<Result<()>, tokio::task::JoinError>) -> Result<()> {
    ended.map_err(|e| store::Error::BulkFill(format!("a COPY stopped: {e}")))?
}

/// A partition's position in a bulk fill.
#[derive(Debug, Clone, Copy)]
struct Position {
    next_offset: i64,
    /// (offset, fingerprint) of the last record folded, as a commit stores it.
    fingerprint: Option<(i64, i64)>,
}

/// What a bulk fill wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BulkReport {
    /// History rows.
    pub events: u64,
    pub dead_letters: u64,
    pub duplicates: u64,
    /// View rows: one per order.
    pub orders: u64,
}

/// What a table gets back once it is filled: its indexes, built side by
/// side with every other table's, then its primary and unique keys made
/// from their indexes.
struct Deferred {
    table: &'static str,
    /// `CREATE [UNIQUE] INDEX` statements, those behind the keys included.
    indexes: Vec<String>,
    /// `ALTER TABLE .. ADD CONSTRAINT .. USING INDEX`, once the indexes stand.
    constraints: Vec<String>,
}

/// Index builds at once, over all tables, each on a connection of its own:
/// each is a sort PostgreSQL runs on one core (with `maintenance_work_mem`
/// each), so they finish side by side instead of one after another.
const INDEX_BUILDS: usize = 3;

/// Memory for each index build's sort.
const INDEX_BUILD_MEMORY: &str = "256MB";

/// A bulk fill under way; see the module's documentation.
pub struct BulkFill {
    store: Store,
    group: String,
    topic: String,
    /// Every order's state after the records folded so far.
    orders: HashMap<Uuid, Current>,
    /// Event ids in history or (decoded) in dead letters.
    known: HashSet<Uuid>,
    history: CopyStream,
    dead_letters: CopyStream,
    positions: BTreeMap<i32, Position>,
    /// Per table, the statements that give it back its indexes and keys.
    deferred: Vec<Deferred>,
    report: BulkReport,
}

impl std::fmt::Debug for BulkFill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BulkFill")
            .field("group", &self.group)
            .field("topic", &self.topic)
            .field("orders", &self.orders.len())
            .field("report", &self.report)
            .finish_non_exhaustive()
    }
}

impl BulkFill {
    /// Starts a bulk fill of this store's schema for `group` on `topic`.
    /// The schema must be freshly migrated, with nothing else writing to
    /// it until [`BulkFill::finish`]: `rebuild`'s shadow. Its three
    /// written tables lose their indexes and constraints here; `finish`
    /// gives them back.
    pub async fn start(store: &Store, group: &str, topic: &str) -> Result<BulkFill> {
        let schema = store.schema_name().to_owned();
        let client = store.client().await?;
        let mut deferred = Vec::new();
        for table in TABLES {
            let mut again = Deferred {
                table,
                indexes: Vec::new(),
                constraints: Vec::new(),
            };
            let mut drop = Vec::new();
            // Plain indexes first; then primary and unique keys, each
            // built again as its index (`pg_get_indexdef` of the index
            // behind it), which can be built beside the others, and made
            // the key again from that index (`ADD CONSTRAINT .. USING
            // INDEX`), which only changes the catalog.
            for row in client
                .query(
                    "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) \
                     FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid \
                     JOIN pg_namespace n ON n.oid = t.relnamespace \
                     WHERE n.nspname = $1 AND t.relname = $2 AND NOT EXISTS ( \
                         SELECT 1 FROM pg_constraint c \
                         WHERE c.conindid = i.indexrelid AND c.conrelid = i.indrelid) \
                     ORDER BY 1",
                    &[&schema, &table],
                )
                .await?
            {
                let (name, definition): (String, String) = (row.get(0), row.get(1));
                drop.push(format!("DROP INDEX {name}"));
                again.indexes.push(definition);
            }
            for row in client
                .query(
                    "SELECT c.conname::text, \
                            CASE c.contype WHEN 'p' THEN 'PRIMARY KEY' ELSE 'UNIQUE' END, \
                            pg_get_indexdef(c.conindid), c.conindid::regclass::text \
                     FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid \
                     JOIN pg_namespace n ON n.oid = t.relnamespace \
                     WHERE n.nspname = $1 AND t.relname = $2 AND c.contype IN ('p', 'u') \
                     ORDER BY c.contype, c.conname",
                    &[&schema, &table],
                )
                .await?
            {
                let (name, kind, index, index_name): (String, String, String, String) =
                    (row.get(0), row.get(1), row.get(2), row.get(3));
                let name = store::quote_identifier(&name);
                drop.push(format!(
                    "ALTER TABLE {schema}.{table} DROP CONSTRAINT {name}"
                ));
                again.indexes.push(index);
                // The index's own name, schema-qualified as regclass
                // printed it: USING INDEX takes it unqualified.
                let index_name = index_name
                    .rsplit('.')
                    .next()
                    .unwrap_or(&index_name)
                    .to_owned();
                again.constraints.push(format!(
                    "ALTER TABLE {schema}.{table} ADD CONSTRAINT {name} {kind} USING INDEX {index_name}"
                ));
            }
            client.batch_execute(&drop.join(";\n")).await?;
            deferred.push(again);
        }
        let history = CopyStream::open(store, HISTORY).await?;
        let dead_letters = CopyStream::open(store, DEAD_LETTERS).await?;
        Ok(BulkFill {
            store: store.clone(),
            group: group.to_owned(),
            topic: topic.to_owned(),
            orders: HashMap::new(),
            known: HashSet::new(),
            history,
            dead_letters,
            positions: BTreeMap::new(),
            deferred,
            report: BulkReport::default(),
        })
    }
}

impl BulkFill {
    /// Where `partition` starts (the earliest offset, as a first take
    /// stores it). A partition given no batch keeps this as its offset.
    pub fn start_partition(&mut self, partition: i32, offset: i64) {
        self.positions.entry(partition).or_insert(Position {
            next_offset: offset,
            fingerprint: None,
        });
    }

    /// The next offset of each partition so far.
    pub fn offsets(&self) -> BTreeMap<i32, i64> {
        self.positions
            .iter()
            .map(|(p, pos)| (*p, pos.next_offset))
            .collect()
    }

    /// What was written so far (orders: those known so far).
    pub fn report(&self) -> BulkReport {
        BulkReport {
            orders: self.orders.len() as u64,
            ..self.report.clone()
        }
    }

    /// Folds one fetched batch of `partition` (records in offset order,
    /// from its current position) and moves the partition to
    /// `next_offset`, as one committed live batch would.
    pub async fn apply(
        &mut self,
        partition: i32,
        records: &[SourceRecord],
        next_offset: i64,
    ) -> Result<()> {
        let source = fold::Source {
            topic: &self.topic,
            partition,
            incarnation: INCARNATION,
        };
        let mut current: HashMap<Uuid, Current> = HashMap::new();
        for record in records {
            if let Ok(e) = &record.event
                && !current.contains_key(&e.order_id)
                && let Some(c) = self.orders.get(&e.order_id)
            {
                current.insert(e.order_id, c.clone());
            }
        }
        let plan = fold::plan(source, records, &self.known, current);
        for &i in &plan.history {
            let record = &records[i];
            let Ok(event) = &record.event else { continue };
            self.known.insert(event.event_id);
            let payload = record.value.as_deref().unwrap_or(b"{}");
            self.history
                .write(&[
                    &event.event_id,
                    &event.order_id,
                    &event.customer_id.as_str(),
                    &event.body.event_type(),
                    &(event.schema_version as i32),
                    &RawJsonb(payload),
                    &event.occurred_at,
                    &self.topic.as_str(),
                    &partition,
                    &INCARNATION,
                    &record.offset,
                    &record.timestamp,
                ])
                .await?;
        }
        for d in &plan.dead_letters {
            let record = &records[d.index];
            let event_id = record.event.as_ref().ok().map(|e| e.event_id);
            if let Some(id) = event_id {
                self.known.insert(id);
            }
            tracing::debug!(partition, offset = record.offset, kind = d.kind, error = %d.message, "dead letter");
            self.dead_letters
                .write(&[
                    &self.group.as_str(),
                    &self.topic.as_str(),
                    &partition,
                    &INCARNATION,
                    &record.offset,
                    &record.timestamp,
                    &record.key.as_deref(),
                    &record.value.as_deref(),
                    &d.kind,
                    &d.message.as_str(),
                    &store::headers::to_json(&record.headers),
                    &event_id,
                ])
                .await?;
        }
        self.report.events += plan.history.len() as u64;
        self.report.dead_letters += plan.dead_letters.len() as u64;
        self.report.duplicates += plan.duplicates as u64;
        for c in plan.view {
            self.orders.insert(c.state.order_id, c);
        }
        let position = self.positions.entry(partition).or_insert(Position {
            next_offset,
            fingerprint: None,
        });
        position.next_offset = next_offset;
        if let Some(last) = records.last() {
            position.fingerprint = Some((
                last.offset,
                fold::fingerprint(last.timestamp, last.key.as_deref(), last.value.as_deref()),
            ));
        }
        Ok(())
    }

    /// Ends the fill: the streams' last rows, the orders view, the offset
    /// rows, then each table's indexes and keys again.
    pub async fn finish(mut self) -> Result<BulkReport> {
        self.history.flush().await?;
        self.dead_letters.flush().await?;
        let mut orders = CopyStream::open(&self.store, ORDERS).await?;
        let count = self.orders.len() as u64;
        for c in std::mem::take(&mut self.orders).into_values() {
            let s = &c.state;
            let items = serde_json::to_string(&s.items).unwrap_or_else(|_| "[]".to_owned());
            orders
                .write(&[
                    &s.order_id,
                    &s.customer_id.as_str(),
                    &s.restaurant_id.as_str(),
                    &s.status.as_str(),
                    &RawJsonb(items.as_bytes()),
                    &s.total_cents,
                    &s.created_at,
                    &s.updated_at,
                    &s.last_event_id,
                    &c.source_topic.as_str(),
                    &c.source_partition,
                    &c.source_incarnation,
                    &c.source_offset,
                ])
                .await?;
        }
        orders.flush().await?;
        self.report.orders = count;
        drop(orders);
        // The known ids are not needed any more; free them before the
        // index builds.
        self.known = HashSet::new();

        let partitions: Vec<i32> = self.positions.keys().copied().collect();
        let next: Vec<i64> = self.positions.values().map(|p| p.next_offset).collect();
        let fingerprint: Vec<Option<i64>> = self
            .positions
            .values()
            .map(|p| p.fingerprint.map(|f| f.1))
            .collect();
        let fingerprint_offset: Vec<Option<i64>> = self
            .positions
            .values()
            .map(|p| p.fingerprint.map(|f| f.0))
            .collect();
        self.history.clients[0]
            .execute(
                "INSERT INTO consumer_offsets (group_id, topic, partition, next_offset, \
                     incarnation, last_fingerprint, fingerprint_offset) \
                 SELECT $1, $2, p, n, $3, f, o \
                 FROM unnest($4::int4[], $5::int8[], $6::int8[], $7::int8[]) AS x(p, n, f, o)",
                &[
                    &self.group,
                    &self.topic,
                    &INCARNATION,
                    &partitions,
                    &next,
                    &fingerprint,
                    &fingerprint_offset,
                ],
            )
            .await?;

        // The streams' connections go back to the pool for the builds.
        let BulkFill {
            store,
            deferred,
            report,
            history,
            dead_letters,
            ..
        } = self;
        drop((history, dead_letters));

        // Every table's indexes, each on a connection of its own, at most
        // INDEX_BUILDS at once; then per table its keys from their indexes
        // and statistics for the planner.
        let started = std::time::Instant::now();
        // Each future owns what it uses, as in `compare_side_by_side`.
        let indexes: Vec<String> = deferred.iter().flat_map(|d| d.indexes.clone()).collect();
        stream::iter(indexes)
            .map(|index| {
                let store = store.clone();
                async move {
                    store
                        .client()
                        .await?
                        .batch_execute(&format!(
                            "SET maintenance_work_mem = '{INDEX_BUILD_MEMORY}'; {index}; \
                             RESET maintenance_work_mem"
                        ))
                        .await?;
                    Result::<()>::Ok(())
                }
            })
            .buffer_unordered(INDEX_BUILDS)
            .try_collect::<()>()
            .await?;
        stream::iter(deferred)
            .map(|table| {
                let store = store.clone();
                async move {
                    let mut script = table.constraints;
                    script.push(format!("ANALYZE {}.{}", store.schema_name(), table.table));
                    store
                        .client()
                        .await?
                        .batch_execute(&script.join(";\n"))
                        .await?;
                    tracing::info!(
                        table = table.table,
                        seconds = started.elapsed().as_secs_f64(),
                        "indexed and analyzed"
                    );
                    Result::<()>::Ok(())
                }
            })
            .buffer_unordered(TABLES.len())
            .try_collect::<()>()
            .await?;
        Ok(report)
    }
}
