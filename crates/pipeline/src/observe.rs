//! Prometheus metrics and the health endpoint of a running consumer.
//!
//! The `metrics` facade records; `metrics-exporter-prometheus` renders the
//! text format; a small axum server answers `GET /metrics` with it and
//! `GET /healthz` with `ok` (200) only when the broker and PostgreSQL both
//! answer, else the reason (503).
//!
//! Metric names, all labelled with `group`, `topic` and `partition`:
//!
//! | name | type | meaning |
//! |---|---|---|
//! | `foodpipe_committed_offset` | gauge | stored next offset |
//! | `foodpipe_high_watermark` | gauge | log-end offset last seen |
//! | `foodpipe_lag` | gauge | high watermark − committed offset |
//! | `foodpipe_records_applied_total` | counter | events written to history |
//! | `foodpipe_dead_letters_total` | counter | records sent to dead letters |
//! | `foodpipe_duplicates_total` | counter | records skipped as already applied |
//! | `foodpipe_retries_total` | counter | failed fetches or commits retried (`operation`) |
//! | `foodpipe_batch_seconds` | histogram | fetch-to-commit time of a batch |
//! | `foodpipe_projection_apply_seconds` | histogram | time a batch spent in one projection's apply (`projection`; no `partition` label) |
//! | `foodpipe_partition_state` | gauge | 1 for the partition's current `state` (taking, waiting, running, retrying, stopped, done), 0 for the others |
//! | `foodpipe_offset_mirror_drift` | gauge | stored offset − the offset last mirrored to the broker, at the last mirror round (`consume::mirror`) |
//!
//! Per member, labelled with `group` and `topic` only ([`GroupMetrics`]):
//! `foodpipe_rebalances_total` (times this member's assignment changed,
//! its first one included) and `foodpipe_partitions_taken_total` (leases
//! this member took and started a worker on).
//!
//! Gauges of a partition this member no longer owns stop being updated and
//! disappear from `/metrics` after [`GAUGE_IDLE`], so two members never
//! both export a lag for one partition for long.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

/// How long a gauge nobody sets stays in `/metrics`. The coordinator sets
/// every owned partition's gauges each heartbeat, so this only removes the
/// gauges of partitions that moved to another member.
pub(crate) const GAUGE_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// Checks the consumer's dependencies; `Err` says which one failed.
pub(crate) type HealthCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// The process-wide recorder. Installed once; later calls (a second `run`
/// in the same process, as in tests) share it.
fn handle() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let recorder = PrometheusBuilder::new()
        // Batches take milliseconds to seconds.
        .set_buckets_for_metric(
            Matcher::Full("foodpipe_batch_seconds".to_owned()),
            BATCH_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full("foodpipe_projection_apply_seconds".to_owned()),
            BATCH_BUCKETS,
        )?
        .idle_timeout(MetricKindMask::GAUGE, Some(GAUGE_IDLE))
        .build_recorder();
    let h = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        anyhow::bail!("a metrics recorder is already installed");
    }
    Ok(HANDLE.get_or_init(|| h).clone())
}

/// Buckets of the per-batch histograms, in seconds.
const BATCH_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Where to serve `/metrics` and `/healthz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsListen {
    Off,
    /// This address, or if it is taken the next free port above it: the
    /// default, so several members on one host all start.
    FirstFreeFrom(SocketAddr),
    /// Exactly this address; taken is an error (the user asked for it).
    Exactly(SocketAddr),
}

/// The default metrics address; members on one host fall back upwards.
pub const DEFAULT_METRICS_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9898);

/// Why [`serve`] did not start; `consume::Error` takes it over as its
/// `Metrics` (a bind) or `Internal` variant.
#[derive(Debug)]
pub(crate) enum ServeError {
    /// The address could not be bound.
    Bind {
        addr: String,
        source: std::io::Error,
    },
    /// The recorder, the bound address, or `MetricsListen::Off`.
    Internal(String),
}

/// How many ports above the default address a member tries when the
/// default is taken (several members on one host).
const FALLBACK_PORTS: u16 = 100;

/// Installs the recorder, binds an address as `listen` says and serves
/// `/metrics` and `/healthz` until the process ends. Returns the address
/// bound.
pub(crate) async fn serve(
    listen: MetricsListen,
    health: HealthCheck,
) -> Result<SocketAddr, ServeError> {
    use ServeError as Error;
    let handle = handle().map_err(|e| Error::Internal(e.to_string()))?;
    let bind_error = |addr: SocketAddr, source| Error::Bind {
        addr: addr.to_string(),
        source,
    };
    let listener = match listen {
        MetricsListen::Off => return Err(Error::Internal("metrics are off".into())),
        MetricsListen::Exactly(addr) => tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| bind_error(addr, e))?,
        MetricsListen::FirstFreeFrom(first) => {
            let mut bound = None;
            let mut last_error = None;
            for port in first.port()..=first.port().saturating_add(FALLBACK_PORTS) {
                let addr = SocketAddr::new(first.ip(), port);
                match tokio::net::TcpListener::bind(addr).await {
                    Ok(l) => {
                        bound = Some(l);
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => last_error = Some(e),
                    Err(e) => return Err(bind_error(addr, e)),
                }
            }
            match bound {
                Some(l) => l,
                None => {
                    return Err(bind_error(
                        first,
                        last_error.unwrap_or_else(|| std::io::ErrorKind::AddrInUse.into()),
                    ));
                }
            }
        }
    };
    let bound = listener
        .local_addr()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let handle = handle.clone();
                async move { handle.render() }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let health = Arc::clone(&health);
                async move {
                    match tokio::time::timeout(std::time::Duration::from_secs(5), health()).await {
                        Ok(Ok(())) => (StatusCode::OK, "ok\n".to_owned()),
                        Ok(Err(reason)) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
                        Err(_) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "health check timed out after 5 s\n".to_owned(),
                        ),
                    }
                }
            }),
        );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    match listen {
        MetricsListen::FirstFreeFrom(first) if first != bound => tracing::info!(
            "serving /metrics and /healthz on http://{bound} ({first} is taken, by another member on this host?)"
        ),
        _ => tracing::info!("serving /metrics and /healthz on http://{bound}"),
    }
    Ok(bound)
}

/// The member's counters of group movement: how often its assignment
/// changed and how many partitions it took. Both are registered at 0 when
/// the member starts, so a rate over them has a series from the start.
#[derive(Debug, Clone)]
pub(crate) struct GroupMetrics {
    labels: [(&'static str, String); 2],
}

impl GroupMetrics {
    pub(crate) fn new(group: &str, topic: &str) -> Self {
        let metrics = Self {
            labels: [("group", group.to_owned()), ("topic", topic.to_owned())],
        };
        metrics::counter!("foodpipe_rebalances_total", &metrics.labels).increment(0);
        metrics::counter!("foodpipe_partitions_taken_total", &metrics.labels).increment(0);
        metrics
    }

    /// The assignor gave this member a different set of partitions.
    pub(crate) fn rebalanced(&self) {
        metrics::counter!("foodpipe_rebalances_total", &self.labels).increment(1);
    }

    /// This member took a partition's lease and started its worker.
    pub(crate) fn partition_taken(&self) {
        metrics::counter!("foodpipe_partitions_taken_total", &self.labels).increment(1);
    }
}

/// Labels of one partition's metrics.
#[derive(Debug, Clone)]
pub(crate) struct PartitionMetrics {
    labels: [(&'static str, String); 3],
}

impl PartitionMetrics {
    pub(crate) fn new(group: &str, topic: &str, partition: i32) -> Self {
        Self {
            labels: [
                ("group", group.to_owned()),
                ("topic", topic.to_owned()),
                ("partition", partition.to_string()),
            ],
        }
    }

    pub(crate) fn positions(&self, committed: i64, high_watermark: i64) {
        metrics::gauge!("foodpipe_committed_offset", &self.labels).set(committed as f64);
        metrics::gauge!("foodpipe_high_watermark", &self.labels).set(high_watermark as f64);
        metrics::gauge!("foodpipe_lag", &self.labels)
            .set((high_watermark - committed).max(0) as f64);
    }

    /// Registers the partition's counters at 0 when a worker starts, so
    /// that the first batch's records and dead letters show in a rate (a
    /// counter first seen at 1 counts as no increase).
    pub(crate) fn start_counters(&self) {
        for name in [
            "foodpipe_records_applied_total",
            "foodpipe_dead_letters_total",
            "foodpipe_duplicates_total",
        ] {
            metrics::counter!(name, &self.labels).increment(0);
        }
    }

    pub(crate) fn batch(&self, applied: &store::Applied, seconds: f64) {
        metrics::counter!("foodpipe_records_applied_total", &self.labels)
            .increment(applied.events as u64);
        metrics::counter!("foodpipe_dead_letters_total", &self.labels)
            .increment(applied.dead_letters.len() as u64);
        metrics::counter!("foodpipe_duplicates_total", &self.labels)
            .increment(applied.duplicates as u64);
        metrics::histogram!("foodpipe_batch_seconds", &self.labels).record(seconds);
        for (projection, took) in &applied.projection_times {
            let labels = [
                self.labels[0].clone(),
                self.labels[1].clone(),
                ("projection", projection.clone()),
            ];
            metrics::histogram!("foodpipe_projection_apply_seconds", &labels)
                .record(took.as_secs_f64());
        }
    }

    /// Sets `foodpipe_partition_state`: 1 for `current`, 0 for the rest.
    pub(crate) fn state(&self, current: &str, all: &[&'static str]) {
        for label in all {
            let labels = [
                self.labels[0].clone(),
                self.labels[1].clone(),
                self.labels[2].clone(),
                ("state", (*label).to_owned()),
            ];
            metrics::gauge!("foodpipe_partition_state", &labels).set(if *label == current {
                1.0
            } else {
                0.0
            });
        }
    }

    /// The partition left this member: no state is current. Its gauges
    /// are no longer set and expire after [`GAUGE_IDLE`].
    pub(crate) fn forget(&self, all: &[&'static str]) {
        self.state("", all);
    }

    /// Counts `n` applied records of a batch whose key is not their
    /// event's `customer_id` (`reason` missing or differs).
    pub(crate) fn key_mismatches(&self, reason: &'static str, n: u64) {
        if n == 0 {
            return;
        }
        let labels = [
            self.labels[0].clone(),
            self.labels[1].clone(),
            self.labels[2].clone(),
            ("reason", reason.to_owned()),
        ];
        metrics::counter!("foodpipe_key_mismatch_total", &labels).increment(n);
    }

    pub(crate) fn retry(&self, operation: &'static str) {
        let labels = [
            self.labels[0].clone(),
            self.labels[1].clone(),
            self.labels[2].clone(),
            ("operation", operation.to_owned()),
        ];
        metrics::counter!("foodpipe_retries_total", &labels).increment(1);
    }
}
