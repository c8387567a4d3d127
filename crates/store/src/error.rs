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
        "invalid --schema {0:?}: use lowercase letters, digits and _, not starting with a digit"
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
}

impl Error {
    /// True for errors that say nothing about the data: the connection
    /// broke or the server is restarting. The batch is retried as it is,
    /// and never dead-lettered.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Connect { .. } => true,
            Error::Db(e) => {
                e.is_closed()
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
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
