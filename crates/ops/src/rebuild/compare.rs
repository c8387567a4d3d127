//! Comparing one table in two schemas key by key: how `rebuild` finds the
//! rows its rebuilt copy would change before it swaps that copy in.

use futures::{StreamExt, TryStreamExt, stream};
use store::{Result, Store, Transaction, primary_key, quote_identifier as quote};
use tokio_postgres::IsolationLevel;

/// Columns that say when or in which incarnation of the topic a row was
/// written, not what the fold made of the events: left out when a rebuild
/// compares rows (a replay starts again at incarnation 0).
pub const BOOKKEEPING_COLUMNS: [&str; 3] =
    ["recorded_at", "kafka_incarnation", "source_incarnation"];

/// A key whose rows differ between two schemas' copies of a table.
#[derive(Debug, Clone)]
pub struct KeyDifference {
    /// The primary key as a JSON array (the whole row's digest if the
    /// table has no primary key).
    pub key: String,
    /// The rows as JSON, cut short; `None` where the key is missing.
    pub live: Option<String>,
    pub rebuilt: Option<String>,
}

/// A table to compare: the projection it belongs to, its name, and
/// whether the live schema has it yet (see [`compare_tables`]).
#[derive(Debug, Clone)]
pub struct Pending {
    pub projection: String,
    pub table: String,
    pub live_has: bool,
}

/// How many tables are compared at once, each on a connection of its own.
/// Each comparison is one join PostgreSQL runs on one core; history is
/// most of the work, so the others finish beside it.
pub const COMPARE_CONNECTIONS: usize = 3;

/// Compares every table of `pending` side by side on up to
/// [`COMPARE_CONNECTIONS`] connections of `db`, each in a read-only
/// `REPEATABLE READ` transaction that imports `snapshot` (exported by the
/// swap's transaction with `pg_export_snapshot()`): every comparison sees
/// exactly the rows the swap's transaction sees, as if it had run them
/// itself one after another. Results come in `pending`'s order. JIT is off
/// for them: compiling a comparison's expressions cost more than it saved
/// (3.0 s against 2.7 s for a million events).
pub async fn compare_side_by_side(
    db: &Store,
    snapshot: &str,
    (live, shadow): (&str, &str),
    pending: &[Pending],
) -> Result<Vec<(i64, Vec<KeyDifference>)>> {
    let import = format!(
        "SET TRANSACTION SNAPSHOT '{}'; SET LOCAL work_mem = '{COMPARE_WORK_MEM}'; \
         SET LOCAL jit = off",
        snapshot.replace('\'', "''")
    );
    // Each comparison's future owns what it uses: borrowed, the stream's
    // futures would not be provably `Send` (rustc's higher-ranked lifetime
    // limitation for closures returning futures).
    let compared = stream::iter(pending.to_vec())
        .map(|job| {
            let (db, import) = (db.clone(), import.clone());
            let (live, shadow) = (live.to_owned(), shadow.to_owned());
            async move {
                let mut client = db.client().await?;
                let tx = client
                    .build_transaction()
                    .isolation_level(IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .await?;
                tx.batch_execute(&import).await?;
                let compared =
                    compare_tables(&tx, (&live, &shadow), &job.table, job.live_has).await?;
                tx.rollback().await?;
                Ok::<_, store::Error>(compared)
            }
        })
        .buffered(COMPARE_CONNECTIONS)
        .try_collect()
        .await?;
    Ok(compared)
}

/// Memory for one comparison's hash join: a million keys fit without
/// spilling to disk in batches (the default 4 MB spills).
pub const COMPARE_WORK_MEM: &str = "256MB";

/// A column compared, and whether its type has an `=` of its own (else it
/// is compared as text).
struct Column {
    name: String,
    native: bool,
}

/// Compares `table` in the two schemas key by key, leaving out
/// [`BOOKKEEPING_COLUMNS`]. Returns how many keys differ (missing on one
/// side, or another value in a column) and the first five, in key order.
/// `live_has` false: the live schema has no such table yet (a projection
/// new with this rebuild), so every key differs.
///
/// When both copies have the same primary key and the same columns of the
/// same types (the usual case) this is one join on the key comparing the
/// columns in place: a merge or hash join PostgreSQL runs at scan speed. A
/// table without a primary key, or copies whose columns differ, are
/// compared by an md5 of each row as JSON instead (several times slower).
pub async fn compare_tables(
    tx: &Transaction<'_>,
    (live, shadow): (&str, &str),
    table: &str,
    live_has: bool,
) -> Result<(i64, Vec<KeyDifference>)> {
    let pk = primary_key(tx, shadow, table).await?;
    let shadow_columns = columns(tx, shadow, table).await?;
    let same = |mut a: Vec<(String, String, bool)>, mut b: Vec<(String, String, bool)>| {
        a.sort();
        b.sort();
        a == b
    };
    if live_has && !pk.is_empty() && same(columns(tx, live, table).await?, shadow_columns.clone()) {
        let compared: Vec<Column> = shadow_columns
            .into_iter()
            .filter(|(name, _, _)| !pk.contains(name))
            .map(|(name, _, native)| Column { name, native })
            .collect();
        return by_join(tx, (live, shadow), table, &pk, &compared).await;
    }
    by_digest(tx, (live, shadow), table, &pk, live_has).await
}

/// A table's columns other than [`BOOKKEEPING_COLUMNS`], in order: name,
/// type, and whether the type has an `=` taking it on both sides.
async fn columns(
    tx: &Transaction<'_>,
    schema: &str,
    table: &str,
) -> Result<Vec<(String, String, bool)>> {
    let ignored: Vec<&str> = BOOKKEEPING_COLUMNS.to_vec();
    Ok(tx
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), \
                    EXISTS (SELECT 1 FROM pg_operator o WHERE o.oprname = '=' \
                            AND o.oprleft = a.atttypid AND o.oprright = a.atttypid) \
             FROM pg_attribute a \
             JOIN pg_class c ON c.oid = a.attrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 \
               AND NOT a.attisdropped AND NOT (a.attname::text = ANY ($3)) \
             ORDER BY a.attnum",
            &[&schema, &table, &ignored],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// The first five differences and the count, as the query `select` (rows
/// of key, in live, in shadow, live text, rebuilt text, count) found them.
async fn differences(tx: &Transaction<'_>, select: &str) -> Result<(i64, Vec<KeyDifference>)> {
    let ignored: Vec<&str> = BOOKKEEPING_COLUMNS.to_vec();
    let rows = tx.query(select, &[&ignored]).await?;
    let count = rows.first().map_or(0, |r| r.get::<_, i64>(5));
    let first = rows
        .iter()
        .map(|r| KeyDifference {
            key: r.get(0),
            live: r.get::<_, bool>(1).then(|| r.get(3)),
            rebuilt: r.get::<_, bool>(2).then(|| r.get(4)),
        })
        .collect();
    Ok((count, first))
}

/// A row of alias `t` as JSON without the bookkeeping columns, cut short.
fn row_text(t: &str) -> String {
    format!("left((to_jsonb({t}) - $1::text[])::text, 200)")
}

/// Both copies keyed alike with the same columns: one full join on the key.
///
/// The join carries only the key and the compared columns, so PostgreSQL
/// hashes narrow rows; the whole rows, as text, are read afterwards for
/// the five keys shown, by their primary key. (With the whole rows in the
/// join, the planner chose a merge join over both primary key indexes,
/// reading the heap in key order: 7.8 s instead of 3.0 s for a million
/// events.)
async fn by_join(
    tx: &Transaction<'_>,
    (live, shadow): (&str, &str),
    table: &str,
    pk: &[String],
    compared: &[Column],
) -> Result<(i64, Vec<KeyDifference>)> {
    let t = quote(table);
    let on = pk
        .iter()
        .map(|c| format!("l.{0} = s.{0}", quote(c)))
        .collect::<Vec<_>>()
        .join(" AND ");
    // The key of a differing row, from whichever side has it: k0, k1, ..
    let keys = pk
        .iter()
        .enumerate()
        .map(|(i, c)| format!("coalesce(l.{0}, s.{0}) AS k{i}", quote(c)))
        .collect::<Vec<_>>()
        .join(", ");
    let key_list = (0..pk.len())
        .map(|i| format!("k{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let side = |alias: &str| {
        compared
            .iter()
            .map(|c| {
                let column = format!("{alias}.{}", quote(&c.name));
                if c.native {
                    column
                } else {
                    format!("{column}::text")
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let first_key = quote(&pk[0]);
    let mut differ = format!("l.{first_key} IS NULL OR s.{first_key} IS NULL");
    if !compared.is_empty() {
        differ.push_str(&format!(
            " OR ROW({}) IS DISTINCT FROM ROW({})",
            side("l"),
            side("s")
        ));
    }
    // One shown row, looked up by its key.
    let shown = |schema: &str| {
        let by_key = pk
            .iter()
            .enumerate()
            .map(|(i, c)| format!("t.{} = f.k{i}", quote(c)))
            .collect::<Vec<_>>()
            .join(" AND ");
        format!(
            "(SELECT {} FROM {schema}.{t} t WHERE {by_key})",
            row_text("t")
        )
    };
    let select = format!(
        "WITH d AS ( \
             SELECT {keys}, l.{first_key} IS NOT NULL AS in_live, \
                    s.{first_key} IS NOT NULL AS in_rebuilt \
             FROM {live}.{t} l FULL JOIN {shadow}.{t} s ON {on} WHERE {differ}), \
         f AS ( \
             SELECT jsonb_build_array({key_list})::text AS key, d.*, count(*) OVER () AS n \
             FROM d ORDER BY 1 LIMIT 5) \
         SELECT key, in_live, in_rebuilt, {}, {}, n FROM f ORDER BY 1",
        shown(live),
        shown(shadow)
    );
    differences(tx, &select).await
}

/// By an md5 of each row as JSON per key (the whole row's digest as key
/// when there is no primary key).
async fn by_digest(
    tx: &Transaction<'_>,
    (live, shadow): (&str, &str),
    table: &str,
    pk: &[String],
    live_has: bool,
) -> Result<(i64, Vec<KeyDifference>)> {
    let key = if pk.is_empty() {
        "md5(to_jsonb(t)::text)".to_owned()
    } else {
        format!(
            "jsonb_build_array({})::text",
            pk.iter()
                .map(|c| format!("t.{}", quote(c)))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let t = quote(table);
    let digests = |schema: &str| {
        format!(
            "SELECT {key} AS key, md5((to_jsonb(t) - $1::text[])::text) AS d, {} AS row \
             FROM {schema}.{t} t",
            row_text("t")
        )
    };
    let live_rows = if live_has {
        digests(live)
    } else {
        "SELECT NULL::text AS key, NULL::text AS d, NULL::text AS row WHERE false".to_owned()
    };
    let select = format!(
        "WITH l AS ({live_rows}), s AS ({}) \
         SELECT coalesce(l.key, s.key), l.d IS NOT NULL, s.d IS NOT NULL, l.row, s.row, \
                count(*) OVER () \
         FROM l FULL JOIN s ON l.key = s.key \
         WHERE l.d IS DISTINCT FROM s.d ORDER BY 1 LIMIT 5",
        digests(shadow)
    );
    differences(tx, &select).await
}
