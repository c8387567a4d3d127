/// Errors of foodpipe's PostgreSQL side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("invalid DATABASE_URL: {0} (expected postgres://user:password@host:port/database)")]
    BadUrl(String),
    /// The URL asks for TLS (`sslmode=require`) and this build has none.
    #[error(
        "DATABASE_URL says sslmode=require, and this foodpipe was built without TLS: \
         rebuild with `cargo build --release --features tls`, or drop sslmode=require"
    )]
    TlsNotBuiltIn,
    #[error(
        "invalid schema name {0:?}: use at most 63 lowercase letters, digits and _, \
         not starting with a digit"
    )]
    BadSchema(String),
    #[error("cannot connect to PostgreSQL at {target}: {source}")]
    Connect {
        target: String,
        source: deadpool_postgres::PoolError,
    },
    #[error("PostgreSQL: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("migrations failed: {0}")]
    Migrate(String),
    /// `rebuild`'s bulk fill could not write the shadow (a column it cannot
    /// copy, a COPY that stopped).
    #[error("the rebuild's bulk fill failed: {0}")]
    BulkFill(String),
    /// A read-only command found no foodpipe tables where it looked.
    #[error(
        "schema {schema} has no foodpipe tables; run `foodpipe consume` or `foodpipe migrate` first"
    )]
    NotMigrated { schema: String },
    /// The tables are there, but without migrations this build needs.
    #[error(
        "schema {schema} lacks foodpipe migration(s) {}; run `foodpipe migrate` first",
        missing.join(", ")
    )]
    MigrationsMissing {
        schema: String,
        missing: Vec<String>,
    },
    /// The schema exists and the role has no USAGE on it, so it sees no table.
    #[error(
        "role {role} may not use schema {schema}: GRANT USAGE ON SCHEMA {schema} TO {role} \
         (and SELECT ON ALL TABLES IN SCHEMA {schema})"
    )]
    SchemaNotUsable { schema: String, role: String },
    /// A row of the orders view that this build cannot read back: written
    /// by something else, or edited by hand. Folding onto a guess would
    /// store the guess, so the batch stops instead.
    #[error(
        "order {order_id} in the orders view cannot be read: {problem}; \
         `foodpipe rebuild` rebuilds the view from Kafka"
    )]
    UnreadableOrder {
        order_id: uuid::Uuid,
        problem: String,
    },
    #[error(
        "{topic}/{partition} is no longer this member's: its lease, epoch or stored offset \
         (expected {expected}) changed, so another member of group {group} owns it now"
    )]
    LeaseLost {
        group: String,
        topic: String,
        partition: i32,
        expected: i64,
    },
    #[error(
        "member id {member} of group {group} was taken over by another process \
         (host {host}, pid {pid}) started with the same --member-id; this one stops. \
         Give each consume process its own --member-id (or none)"
    )]
    MemberIdTaken {
        group: String,
        member: String,
        host: String,
        pid: i32,
    },
    /// `group reset` found members of the group live (checked under the
    /// lock of the offset rows it writes).
    #[error(
        "group {group} has {} live member(s) ({}); stop its consumers before resetting offsets",
        members.len(),
        members.join(", ")
    )]
    GroupLive { group: String, members: Vec<String> },
    /// Another rebuild holds the group's fence.
    #[error(
        "group {group} is being rebuilt by {by}; wait for it to finish (or, if it died, \
         for its fence to lapse after a session timeout) and run rebuild again"
    )]
    Fenced { group: String, by: String },
    /// Another rebuild of the same schema is under way (it holds the
    /// claim on the shadow schema, [`crate::Store::claim_rebuild`]).
    #[error(
        "another rebuild of schema {schema} is running: {by}; nothing was changed. \
         Wait for it to finish and run rebuild again"
    )]
    RebuildRunning { schema: String, by: String },
    /// A projection's definition PostgreSQL refuses, found at start before
    /// anything is applied.
    #[error("projection {name}: {file}: {message}")]
    ProjectionInvalid {
        name: String,
        file: String,
        message: String,
    },
    #[error("cannot read the projections directory {path}: {message}")]
    ProjectionDir { path: String, message: String },
    /// The registry holds another definition of the projection.
    #[error(
        "projection {name}: {file} changed since the projection was added, and a projection is \
         never applied halfway under two definitions; put the file back as it was, or run \
         `foodpipe rebuild --projection {name} --projections DIR` to rebuild it from Kafka with \
         the new definition"
    )]
    ProjectionChanged { name: String, file: String },
    /// A history row that does not decode as an event any more.
    #[error(
        "a row of order_events does not decode as an order event ({0}); it was not written by \
         foodpipe's fold: `foodpipe rebuild` rebuilds history from Kafka"
    )]
    UnreadableHistory(String),
    /// A projection cannot be added while a rebuild of the schema runs.
    #[error(
        "projection {name} was not added: a rebuild of the schema is running ({by}); add it \
         when the rebuild has finished (`foodpipe projection add {name}`, or restart consume)"
    )]
    ProjectionWaitsForRebuild { name: String, by: String },
    #[error("no projection named {0}; `foodpipe projection list` shows them")]
    ProjectionUnknown(String),
    /// A projection's apply failed on a batch.
    #[error(
        "projection {name} failed{}: {statement}: {}",
        offsets.map(|(a, b)| format!(" on offsets {a}..={b}")).unwrap_or_default(),
        source.as_db_error().map_or_else(|| source.to_string(), |d| d.message().to_owned())
    )]
    ProjectionFailed {
        name: String,
        statement: String,
        offsets: Option<(i64, i64)>,
        source: tokio_postgres::Error,
    },
}

impl Error {
    /// True for errors that say nothing about the data: the connection
    /// broke or the server is restarting. The batch is retried as it is,
    /// and never dead-lettered.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Connect { .. } => true,
            Error::Db(e) | Error::ProjectionFailed { source: e, .. } => {
                // FATAL: the server ended the session (shut down, killed it,
                // or it sat idle in a transaction past the timeout while
                // this process was paused). The statement was not judged;
                // a new session can run it.
                let session_ended = e.as_db_error().is_some_and(|d| d.severity() == "FATAL");
                session_ended
                    || e.is_closed()
                    || e.code().is_none()
                    || e.code().is_some_and(|c| {
                        let class = &c.code()[..2];
                        // 08: connection exception; 57: operator intervention
                        // (admin shutdown, crash recovery); 53: insufficient
                        // resources; 40: serialization failure / deadlock.
                        matches!(class, "08" | "57" | "53" | "40")
                    })
            }
            _ => false,
        }
    }

    /// True when PostgreSQL ended the transaction for a deadlock or a
    /// serialization failure (class 40): nothing was written, and the
    /// same transaction tried again can succeed.
    pub fn is_conflict(&self) -> bool {
        match self {
            Error::Db(e) | Error::ProjectionFailed { source: e, .. } => {
                e.code().is_some_and(|c| c.code().starts_with("40"))
            }
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
