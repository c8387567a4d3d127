//! Projections: many views from one stream.
//!
//! A projection is a name, the tables it owns and an apply step that runs
//! inside every batch's transaction, over the events the fold applied in
//! that batch, so every projection commits with the Kafka offsets and all
//! of them share one offset vector (invariant 12). The fold alone decides
//! which events are applied (state machine, duplicates, stale records,
//! dead letters); a projection only sees what it accepted.
//!
//! - `history` (`order_events`) and `orders` are written in Rust
//!   (apply.rs). The fold reads them to decide, so they cannot be dropped.
//! - The others are SQL: `schema.sql` makes their tables, `apply.sql` is
//!   run against the relation `applied_events` (sql/applied_events.sql).
//!   `restaurant_daily` and `customer_stats` are shipped in the binary
//!   (kind `builtin`); a directory given with `--projections` holds the
//!   user's (kind `sql`), one folder per projection.
//!
//! The `projections` table (migration V10) is the registry: each
//! projection's tables and its SQL as it was added, so every member
//! applies the same definition, and a definition changed since it was
//! added is refused instead of applied halfway.
//!
//! A projection added to a running system is filled from history, which
//! holds exactly the applied events ([`Store::add_projection`]), then
//! attached under the attach lock: batches take it shared, the attach
//! takes it exclusive, so every batch either committed before the attach
//! (its events are in what the attach fills) or applies the projection
//! itself.

use std::collections::BTreeMap;
use std::path::Path;

use crate::{Error, Result, Store};

/// The projections the fold itself reads, written in Rust.
pub const RUST_PROJECTIONS: [&str; 2] = ["history", "orders"];

/// Where a projection's definition comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Shipped in the binary.
    Builtin,
    /// Read from a `--projections` directory.
    Sql,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Builtin => "builtin",
            Kind::Sql => "sql",
        }
    }
}

/// A SQL projection's definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    pub name: String,
    pub kind: Kind,
    /// Makes its tables (and their indexes); run once, when it is added.
    pub schema_sql: String,
    /// Run in every batch's transaction against `applied_events`.
    pub apply_sql: String,
    /// Where it was read from, for messages: `built in` or a directory.
    pub origin: String,
}

impl Definition {
    /// The statements of `apply.sql`, each run on its own so a failure
    /// names the one that failed.
    pub fn statements(&self) -> Vec<String> {
        split_statements(&self.apply_sql)
    }
}

/// The SQL projections shipped in the binary.
pub fn builtins() -> Vec<Definition> {
    let def = |name: &str, schema: &str, apply: &str| Definition {
        name: name.to_owned(),
        kind: Kind::Builtin,
        schema_sql: schema.to_owned(),
        apply_sql: apply.to_owned(),
        origin: "built in".to_owned(),
    };
    vec![
        def(
            "customer_stats",
            include_str!("projections/customer_stats/schema.sql"),
            include_str!("projections/customer_stats/apply.sql"),
        ),
        def(
            "restaurant_daily",
            include_str!("projections/restaurant_daily/schema.sql"),
            include_str!("projections/restaurant_daily/apply.sql"),
        ),
    ]
}

/// Checks a projection's name: what a folder may be called.
pub fn check_name(name: &str) -> Result<()> {
    let ok = (1..=48).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::ProjectionInvalid {
            name: name.to_owned(),
            file: String::new(),
            message: "a projection's name (its folder) is 1 to 48 lowercase letters, digits \
                      and _, starting with a letter"
                .to_owned(),
        })
    }
}

/// Reads `dir`: one folder per projection, each with `schema.sql` and
/// `apply.sql`. Other files are left alone (a folder may keep queries
/// beside them); a folder without both files is an error naming it.
pub fn load_dir(dir: &Path) -> Result<Vec<Definition>> {
    let unreadable = |what: &Path, e: std::io::Error| Error::ProjectionDir {
        path: what.display().to_string(),
        message: e.to_string(),
    };
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(|e| unreadable(dir, e))? {
        let entry = entry.map_err(|e| unreadable(dir, e))?;
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        check_name(&name)?;
        if RUST_PROJECTIONS.contains(&name.as_str()) || builtins().iter().any(|b| b.name == name) {
            return Err(Error::ProjectionInvalid {
                name,
                file: String::new(),
                message: format!(
                    "{} has a folder in {} and is a projection foodpipe ships; rename the folder",
                    entry.file_name().to_string_lossy(),
                    dir.display()
                ),
            });
        }
        let read = |file: &str| {
            std::fs::read_to_string(path.join(file)).map_err(|e| Error::ProjectionInvalid {
                name: name.clone(),
                file: path.join(file).display().to_string(),
                message: format!("cannot read it: {e}"),
            })
        };
        let definition = Definition {
            schema_sql: read("schema.sql")?,
            apply_sql: read("apply.sql")?,
            name: name.clone(),
            kind: Kind::Sql,
            origin: path.display().to_string(),
        };
        found.insert(name, definition);
    }
    Ok(found.into_values().collect())
}

/// Splits SQL into statements at the semicolons that end them: not those
/// inside quotes ('...', "..."), dollar quotes ($tag$...$tag$) or comments.
/// Empty statements (comments only) are left out.
pub fn split_statements(sql: &str) -> Vec<String> {
    let bytes = sql.as_bytes();
    let mut statements = Vec::new();
    let mut start = 0;
    let mut i = 0;
    let mut meaningful = false;
    while i < bytes.len() {
        let rest = &sql[i..];
        if rest.starts_with("--") {
            i += rest.find('\n').unwrap_or(rest.len());
            continue;
        }
        if let Some(comment) = rest.strip_prefix("/*") {
            i += comment.find("*/").map_or(rest.len(), |end| end + 4);
            continue;
        }
        match bytes[i] {
            q @ (b'\'' | b'"') => {
                meaningful = true;
                i += 1;
                while i < bytes.len() && bytes[i] != q {
                    i += 1;
                }
                i += 1;
            }
            b'$' => {
                meaningful = true;
                let tag_end = rest[1..]
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .map(|n| n + 1);
                match tag_end {
                    Some(n) if rest[n..].starts_with('$') => {
                        let tag = &rest[..=n];
                        let body = &rest[tag.len()..];
                        i += tag.len() + body.find(tag).map_or(body.len(), |e| e + tag.len());
                    }
                    _ => i += 1,
                }
            }
            b';' => {
                if meaningful {
                    statements.push(sql[start..i].trim().to_owned());
                }
                start = i + 1;
                meaningful = false;
                i += 1;
            }
            c => {
                if !c.is_ascii_whitespace() {
                    meaningful = true;
                }
                i += 1;
            }
        }
    }
    if meaningful {
        statements.push(sql[start.min(sql.len())..].trim().to_owned());
    }
    statements
}

/// The first line of a statement, cut short, to name it in a message.
pub(crate) fn statement_head(statement: &str) -> String {
    let line = statement
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("--"))
        .unwrap_or("");
    let mut head: String = line.chars().take(80).collect();
    if head.len() < line.len() {
        head.push_str("...");
    }
    head
}

/// The SQL projections attached in the registry, as a batch applies them.
#[derive(Debug, Default, Clone)]
pub(crate) struct Attached {
    /// `name:hash` of each attached projection, sorted: what a batch
    /// compares with the registry to notice a projection attached or
    /// dropped since.
    pub signature: Vec<String>,
    /// Each SQL projection's name and statements.
    pub sql: Vec<(String, Vec<String>)>,
}

/// One projection as `projection list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProjectionRow {
    pub name: String,
    pub kind: String,
    pub state: String,
    pub tables: Vec<String>,
    /// Rows in all its tables.
    pub rows: i64,
    pub added_at: chrono::DateTime<chrono::Utc>,
    pub attached_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A table of a projection as of some time: column names and rows as text.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TableRows {
    pub table: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl std::fmt::Display for TableRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} ({} rows)", self.table, self.rows.len())?;
        writeln!(f, "{}", self.columns.join(" | "))?;
        for row in &self.rows {
            let cells: Vec<String> = row
                .iter()
                .map(|c| {
                    c.as_deref().map_or("-".to_owned(), |s| {
                        events::escape_for_terminal(s.as_bytes())
                    })
                })
                .collect();
            writeln!(f, "{}", cells.join(" | "))?;
        }
        Ok(())
    }
}

impl Store {
    /// Refreshes this store's picture of the attached SQL projections from
    /// the registry, inside `tx` (a batch's transaction).
    pub(crate) async fn load_attached(
        &self,
        tx: &impl deadpool_postgres::GenericClient,
    ) -> Result<Attached> {
        let rows = tx
            .query(
                "SELECT name, definition_hash, apply_sql FROM projections \
                 WHERE state = 'attached' ORDER BY name",
                &[],
            )
            .await?;
        let mut attached = Attached::default();
        for row in rows {
            let name: String = row.get(0);
            let hash: String = row.get(1);
            attached.signature.push(format!("{name}:{hash}"));
            if let Some(apply) = row.get::<_, Option<String>>(2) {
                attached.sql.push((name, split_statements(&apply)));
            }
        }
        Ok(attached)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Semicolons inside quotes, dollar quotes and comments do not end a statement; comment-only pieces are dropped.
    #[test]
    fn statements_split_where_they_end() {
        let sql = "-- head; comment\nINSERT INTO t VALUES (';', \"a;b\");\n\
                   /* block; */ UPDATE t SET x = $$ ; $$ ;\n\
                   DO $f$ BEGIN PERFORM 1; END $f$;\n  -- trailing; only\n";
        assert_eq!(
            split_statements(sql),
            vec![
                "-- head; comment\nINSERT INTO t VALUES (';', \"a;b\")".to_owned(),
                "/* block; */ UPDATE t SET x = $$ ; $$".to_owned(),
                "DO $f$ BEGIN PERFORM 1; END $f$".to_owned(),
            ]
        );
        assert_eq!(split_statements("SELECT 1"), vec!["SELECT 1".to_owned()]);
        assert!(split_statements("-- nothing;\n").is_empty());
        assert_eq!(split_statements("SELECT $1;"), vec!["SELECT $1".to_owned()]);
    }

    /// Every shipped projection's apply.sql is at least one statement, and names are what folders may be called.
    #[test]
    fn shipped_projections_are_well_formed() {
        for b in builtins() {
            check_name(&b.name).expect("name");
            assert!(!b.statements().is_empty(), "{}", b.name);
        }
        assert!(check_name("Bad-Name").is_err());
        assert!(check_name("9lives").is_err());
    }
}
