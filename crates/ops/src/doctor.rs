//! `foodpipe cluster` and `foodpipe doctor`: what the bootstrap servers
//! say, and whether everything foodpipe needs answers, each with the fix.

use kafka::{ClusterView, KafkaConfig};
use store::{Store, StoreConfig};

/// One bootstrap entry and what it answered.
#[derive(Debug, Clone)]
pub struct BootstrapAnswer {
    pub address: String,
    pub answer: Result<ClusterView, String>,
}

impl std::fmt::Display for BootstrapAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.answer {
            Ok(_) => write!(f, "bootstrap {}: answered", self.address),
            Err(e) => write!(f, "bootstrap {}: no answer ({e})", self.address),
        }
    }
}

/// Asks every bootstrap entry for the cluster's brokers, each given the
/// Kafka timeout (`--kafka-timeout-secs`) to answer, as every other request
/// is (a fixed 3 s failed a loaded broker that answered in 4). The probe
/// is a raw Metadata request in plaintext: with TLS or SASL configured it
/// is not sent, and each entry says so.
pub async fn cluster(kafka: &KafkaConfig) -> Vec<BootstrapAnswer> {
    let mut answers = Vec::new();
    for address in &kafka.bootstrap_servers {
        let answer = if kafka.security.is_plaintext() {
            kafka::describe_cluster(address, kafka.timeout).await
        } else {
            Err(format!(
                "not probed: the raw metadata probe speaks PLAINTEXT and this cluster is {}; \
                 `foodpipe topics list` goes through the client",
                kafka.security.protocol()
            ))
        };
        answers.push(BootstrapAnswer {
            address: address.clone(),
            answer,
        });
    }
    answers
}

/// One line of `doctor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub ok: bool,
    pub what: String,
    /// What to do about a failure.
    pub fix: Option<String>,
}

impl Check {
    fn ok(what: impl Into<String>) -> Self {
        Check {
            ok: true,
            what: what.into(),
            fix: None,
        }
    }
    fn warn(what: impl Into<String>, fix: impl Into<String>) -> Self {
        Check {
            ok: true,
            what: what.into(),
            fix: Some(fix.into()),
        }
    }
    fn fail(what: impl Into<String>, fix: impl Into<String>) -> Self {
        Check {
            ok: false,
            what: what.into(),
            fix: Some(fix.into()),
        }
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.ok, &self.fix) {
            (true, None) => write!(f, "ok   {}", self.what),
            // Passed, but something to look at (a dead bootstrap entry
            // while another one answers).
            (true, Some(fix)) => write!(f, "WARN {}: {fix}", self.what),
            (false, None) => write!(f, "FAIL {}", self.what),
            (false, Some(fix)) => write!(f, "FAIL {}: {fix}", self.what),
        }
    }
}

/// PostgreSQL's shared buffers and the indexes every new event writes to
/// (those of `order_events` and `orders`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryMemory {
    pub shared_buffers: Size,
    pub indexes: Size,
}

/// A size in bytes, and as PostgreSQL's `pg_size_pretty` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Size {
    pub bytes: i64,
    pub pretty: String,
}

impl HistoryMemory {
    /// Fine while the indexes fit in shared buffers. Once they outgrow
    /// them, each new event whose id is random (UUID v4) lands on an index
    /// page read from outside them, and the fold slows as history grows:
    /// measured over a 10,000,000-event fold with 128 MB shared buffers,
    /// 0.49-0.75 of its first rate at the end, against 0.74 with 4 GB; ids
    /// that grow with time (UUID v7, what `produce` writes) kept 0.95 with
    /// 128 MB, and the fold took 305 s instead of 470 (docs/benchmarks.md,
    /// "Growth").
    pub fn check(&self) -> Check {
        let (indexes, buffers) = (&self.indexes.pretty, &self.shared_buffers.pretty);
        if self.indexes.bytes <= self.shared_buffers.bytes {
            Check::ok(format!(
                "history's indexes ({indexes}) fit in PostgreSQL's shared_buffers ({buffers})"
            ))
        } else {
            Check::warn(
                format!(
                    "history's indexes ({indexes}) outgrow PostgreSQL's shared_buffers \
                     ({buffers}), so the fold slows as history grows"
                ),
                format!(
                    "raise shared_buffers above {indexes} (a restart of PostgreSQL), and \
                     max_wal_size so that checkpoints stay minutes apart; producers that \
                     write ids growing with time (UUID v7) slow it far less"
                ),
            )
        }
    }
}

/// `shared_buffers` and the size of history's indexes in the store's schema.
async fn history_memory(store: &Store) -> store::Result<HistoryMemory> {
    let row = store
        .client()
        .await?
        .query_one(
            "WITH s AS ( \
                 SELECT pg_size_bytes(current_setting('shared_buffers')) AS buffers, \
                        coalesce(sum(pg_relation_size(i.indexrelid)), 0)::bigint AS indexes \
                 FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid \
                 JOIN pg_namespace n ON n.oid = t.relnamespace \
                 WHERE n.nspname = current_schema() \
                   AND t.relname IN ('order_events', 'orders')) \
             SELECT buffers, pg_size_pretty(buffers), indexes, pg_size_pretty(indexes) FROM s",
            &[],
        )
        .await?;
    Ok(HistoryMemory {
        shared_buffers: Size {
            bytes: row.get(0),
            pretty: row.get(1),
        },
        indexes: Size {
            bytes: row.get(2),
            pretty: row.get(3),
        },
    })
}

/// Checks each bootstrap entry, each advertised broker address,
/// PostgreSQL, the migrations and the topic.
pub async fn doctor(kafka: &KafkaConfig, store: &StoreConfig, topic: &str) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut advertised_ok = false;
    // With TLS or SASL the raw probes below cannot speak to the brokers:
    // the topic check at the end, through the client, covers them.
    let answers = if kafka.security.is_plaintext() {
        cluster(kafka).await
    } else {
        advertised_ok = true;
        Vec::new()
    };
    // As with Kafka's bootstrap.servers, any one entry answering is
    // enough: a dead entry beside a live one is a warning, all dead fails.
    let any_answered = answers.iter().any(|a| a.answer.is_ok());
    for a in &answers {
        match &a.answer {
            Ok(view) => checks.push(Check::ok(format!(
                "bootstrap {} answered: {} broker(s), controller {}",
                a.address,
                view.brokers.len(),
                view.controller_id
            ))),
            Err(e) if any_answered => checks.push(Check::warn(
                format!("bootstrap {} did not answer ({e})", a.address),
                "another entry answered, so clients start; remove or fix this entry in KAFKA_BOOTSTRAP_SERVERS",
            )),
            Err(e) => checks.push(Check::fail(
                format!("bootstrap {} did not answer ({e})", a.address),
                "check KAFKA_BOOTSTRAP_SERVERS, and that the broker runs (`make up` starts one)",
            )),
        }
    }
    if let Some((address, view)) = answers
        .iter()
        .find_map(|a| a.answer.as_ref().ok().map(|v| (&a.address, v)))
    {
        advertised_ok = true;
        for b in &view.brokers {
            let target = b.address();
            let listeners = "check KAFKA_ADVERTISED_LISTENERS (the broker's advertised.listeners): \
                 it must name an address clients can reach, e.g. localhost:9092 for clients on this host";
            match tokio::net::lookup_host(&target).await {
                Err(_) => {
                    advertised_ok = false;
                    checks.push(Check::fail(
                        format!(
                            "bootstrap {address} answered, but it advertises {target}, which does not resolve from here"
                        ),
                        listeners,
                    ));
                }
                Ok(_) => match tokio::time::timeout(
                    kafka.timeout,
                    tokio::net::TcpStream::connect(&target),
                )
                .await
                {
                    Ok(Ok(_)) => checks.push(Check::ok(format!(
                        "advertised broker {} at {target} is reachable",
                        b.id
                    ))),
                    Ok(Err(e)) => {
                        advertised_ok = false;
                        checks.push(Check::fail(
                            format!("bootstrap {address} answered, but it advertises {target}, which is not reachable from here ({e})"),
                            listeners,
                        ));
                    }
                    Err(_) => {
                        advertised_ok = false;
                        checks.push(Check::fail(
                            format!("bootstrap {address} answered, but it advertises {target}, which does not answer within {:?}", kafka.timeout),
                            listeners,
                        ));
                    }
                },
            }
        }
    }

    match Store::connect(store).await {
        Ok(s) => {
            checks.push(Check::ok(format!("PostgreSQL at {} answered", s.target())));
            match s.migration_status().await {
                Ok((applied, known)) if applied >= known => {
                    checks.push(Check::ok(format!("migrations: all {known} applied")));
                    checks.push(match history_memory(&s).await {
                        Ok(memory) => memory.check(),
                        Err(e) => Check::warn(
                            format!("cannot read the sizes of history's indexes ({e})"),
                            "check the role's rights on the database",
                        ),
                    });
                }
                Ok((applied, known)) => checks.push(Check::fail(
                    format!("migrations: {applied} of {known} applied"),
                    "run `foodpipe migrate` (the next `foodpipe consume` also applies them)",
                )),
                Err(e) => checks.push(Check::fail(
                    format!("migrations: cannot read refinery_schema_history ({e})"),
                    "check the role's rights on the database",
                )),
            }
        }
        Err(e) => checks.push(Check::fail(
            format!("PostgreSQL: {e}"),
            "check DATABASE_URL (`make up` starts a local PostgreSQL with role kafka_user and database food_orders)",
        )),
    }

    if advertised_ok {
        match kafka::connect(kafka).await {
            Ok(client) => match kafka::topic_partitions(&client, topic).await {
                Ok(Some(n)) => {
                    checks.push(Check::ok(format!("topic {topic} has {n} partition(s)")))
                }
                Ok(None) => checks.push(Check::fail(
                    format!("topic {topic} does not exist"),
                    "produce to it (`foodpipe produce` creates it) or check --topic",
                )),
                Err(e) => checks.push(Check::fail(
                    format!("topic {topic}: {e}"),
                    "see the broker's log",
                )),
            },
            Err(e) => checks.push(Check::fail(
                format!("Kafka client: {e}"),
                "see the checks above",
            )),
        }
    } else {
        checks.push(Check::fail(
            format!("topic {topic} not checked"),
            "fix the broker checks above first",
        ));
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(bytes: i64, pretty: &str) -> Size {
        Size {
            bytes,
            pretty: pretty.to_owned(),
        }
    }

    /// Indexes within shared buffers pass; past them, a warning that names both sizes and the fix (the line still passes: the fold works, slower).
    #[test]
    fn history_memory_warns_once_the_indexes_outgrow_shared_buffers() {
        const MB: i64 = 1024 * 1024;
        let fits = HistoryMemory {
            shared_buffers: size(128 * MB, "128 MB"),
            indexes: size(128 * MB, "128 MB"),
        }
        .check();
        assert_eq!(
            fits.to_string(),
            "ok   history's indexes (128 MB) fit in PostgreSQL's shared_buffers (128 MB)"
        );
        let outgrown = HistoryMemory {
            shared_buffers: size(128 * MB, "128 MB"),
            indexes: size(128 * MB + 1, "128 MB"),
        }
        .check();
        assert!(outgrown.ok, "a warning, not a failure");
        let line = outgrown.to_string();
        assert!(
            line.starts_with(
                "WARN history's indexes (128 MB) outgrow PostgreSQL's shared_buffers (128 MB)"
            ),
            "{line}"
        );
        assert!(line.contains("raise shared_buffers above 128 MB"), "{line}");
    }
}
