//! What runs beside the coordinator's loop: the heartbeat task, the
//! partition-count watcher, the catch-up targets and the health check
//! `/healthz` answers with.

use super::*;

/// Heartbeats on their own timer until aborted, sending each view.
pub(super) async fn heartbeat_loop(
    store: Store,
    member: Member,
    status: Status,
    brokers: BrokerWatch,
    interval: std::time::Duration,
    session_timeout: std::time::Duration,
    beats: watch::Sender<Beat>,
) {
    let mut timer = tokio::time::interval(interval);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    timer.tick().await; // The first tick is now; the join was the first beat.
    let mut failing_since: Option<std::time::Instant> = None;
    loop {
        timer.tick().await;
        let reach = brokers.heartbeat();
        let state = match brokers.state_prefix() {
            Some(cut) => format!("{cut}; {}", status.summary_line()),
            None => status.summary_line(),
        };
        match store
            .heartbeat_with(&member, &state, false, session_timeout, &reach)
            .await
        {
            Ok(view) => {
                if let Some(since) = failing_since.take() {
                    tracing::info!("heartbeats work again after {:?}", since.elapsed());
                }
                if beats.send(Beat::View(view)).is_err() {
                    return;
                }
            }
            Err(e @ store::Error::MemberIdTaken { .. }) => {
                let _ = beats.send(Beat::Replaced(e.to_string()));
                return;
            }
            Err(e) => {
                // Logged once when it starts, then every tenth failure.
                let since = *failing_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() < interval || since.elapsed().as_secs().is_multiple_of(10) {
                    tracing::warn!(error = %e, "heartbeat failed; retrying (the group expires this member if it lasts past the session timeout)");
                }
            }
        }
    }
}

/// Re-reads the topic's partition count every few seconds and reports
/// changes (partitions added to the topic).
pub(super) async fn watch_partition_count(
    client: Arc<kafka::Client>,
    topic: String,
    mut known: u32,
    changes: mpsc::Sender<u32>,
) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        if let Ok(Some(n)) = kafka::topic_partitions(&client, &topic).await
            && n != known
        {
            known = n;
            if changes.send(n).await.is_err() {
                return;
            }
        }
    }
}

/// The stored offset every partition must reach for `--until-caught-up`.
pub(super) async fn targets(
    client: &kafka::Client,
    config: &ConsumeConfig,
    partitions: u32,
) -> Result<Targets> {
    let mut end = BTreeMap::new();
    let mut earliest = BTreeMap::new();
    for p in 0..partitions as i32 {
        let reader = PartitionReader::new(client, &config.topic, p).await?;
        earliest.insert(p, reader.offset(OffsetAt::Earliest).await?);
        let target = match (&config.targets, config.until) {
            // Listed targets are exact; unlisted partitions: nothing.
            (Some(listed), _) => listed.get(&p).copied().unwrap_or(0),
            (None, None) => reader.offset(OffsetAt::Latest).await?,
            (None, Some(t)) => {
                // The first record after `t`; none: the log end.
                let after = t + chrono::Duration::milliseconds(1);
                let at = reader.offset(OffsetAt::Timestamp(after)).await?;
                if at >= 0 {
                    at
                } else {
                    reader.offset(OffsetAt::Latest).await?
                }
            }
        };
        end.insert(p, target);
    }
    Ok(Targets { end, earliest })
}

/// `/healthz`: every partition makes progress (or waits for no longer than
/// the stall timeout), a broker has answered this member lately (from what
/// the fetcher and the probes saw, never a request of its own: the answer
/// comes at once and names the unreachable brokers), and PostgreSQL
/// answers a query within [`HEALTH_PG_TIMEOUT`].
pub(super) fn health_check(
    store: Store,
    brokers: BrokerWatch,
    status: Status,
) -> crate::observe::HealthCheck {
    Arc::new(move || {
        let store = store.clone();
        let brokers = brokers.clone();
        let status = status.clone();
        Box::pin(async move {
            let mut problems = Vec::new();
            if let Err(e) = status.verdict() {
                problems.push(e);
            }
            if let Err(e) = brokers.health() {
                problems.push(e);
            }
            match tokio::time::timeout(HEALTH_PG_TIMEOUT, store.ping()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => problems.push(e.to_string()),
                Err(_) => problems.push(format!(
                    "PostgreSQL: no answer within {HEALTH_PG_TIMEOUT:?}"
                )),
            }
            if problems.is_empty() {
                Ok(())
            } else {
                Err(problems.join("\n"))
            }
        })
    })
}

/// How long `/healthz` waits for PostgreSQL's answer.
const HEALTH_PG_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1500);
