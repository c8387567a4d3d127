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

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

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
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ],
        )?
        .build_recorder();
    let h = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        anyhow::bail!("a metrics recorder is already installed");
    }
    Ok(HANDLE.get_or_init(|| h).clone())
}

/// Installs the recorder, binds `addr` and serves `/metrics` and
/// `/healthz` until the process ends.
pub(crate) async fn serve(addr: SocketAddr, health: HealthCheck) -> anyhow::Result<SocketAddr> {
    let handle = handle()?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot serve metrics on --metrics-addr {addr}: {e}; choose another address, or `--metrics-addr off`"
        )
    })?;
    let bound = listener.local_addr()?;
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
    tracing::info!("serving /metrics and /healthz on http://{bound}");
    Ok(bound)
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

    pub(crate) fn batch(&self, applied: &store::Applied, seconds: f64) {
        metrics::counter!("foodpipe_records_applied_total", &self.labels)
            .increment(applied.events as u64);
        metrics::counter!("foodpipe_dead_letters_total", &self.labels)
            .increment(applied.dead_letters.len() as u64);
        metrics::counter!("foodpipe_duplicates_total", &self.labels)
            .increment(applied.duplicates as u64);
        metrics::histogram!("foodpipe_batch_seconds", &self.labels).record(seconds);
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
