//! Whether this member reaches the Kafka brokers, and what it says about it.
//!
//! A member heartbeats to PostgreSQL on its own connection, so a member
//! whose packets to the brokers are dropped stays alive in the group and
//! would keep its partitions, folding nothing. This watch notices:
//!
//! - every answer a broker gives this member counts: each fetch round
//!   answered (records or an error code: the broker is there), and a probe
//!   sent every [`PROBE_INTERVAL`] to each bootstrap address (a fresh
//!   connection and a Metadata request for the topic, bounded by
//!   [`PROBE_TIMEOUT`], so it also covers a member that owns nothing;
//!   only every [`PROBE_WHILE_FETCHING`] while fetches are answered);
//! - *silent*: no broker answered for [`SILENT_AFTER`]: `/healthz` answers
//!   503 naming the unreachable brokers, at once, from what the probes saw
//!   (it never waits on a broker itself);
//! - *cut off*: silent for `--broker-timeout`. The member says so in its
//!   heartbeat and the assignment leaves it out, so members that reach the
//!   brokers take its partitions (`group::reach` has the rule, and why it
//!   moves nothing when every member is cut off). The first answer ends it
//!   and the member is dealt partitions again;
//! - *answering*: answers with no silence for [`STEADY_AFTER`]: what a
//!   member must be for the others to leave it their partitions.
//!
//! The log says when a broker stops answering and when the member is cut
//! off, once, then every [`LOG_EVERY`] while it lasts, and when it ends.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kafka::KafkaConfig;
use store::BrokerReach;

/// How often each bootstrap address is probed.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// How long a probe may take (connect, handshake, metadata).
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// No answer for this long: `/healthz` reports the brokers unreachable.
pub(crate) const SILENT_AFTER: Duration = Duration::from_secs(5);
/// Answers without a gap of [`SILENT_AFTER`] for this long: answering.
pub(crate) const STEADY_AFTER: Duration = Duration::from_secs(5);
/// A condition that lasts is logged again this often.
const LOG_EVERY: Duration = Duration::from_secs(60);
/// While fetches are answered, the probes (a connection and two Metadata
/// requests for every topic each, as rskafka builds a client) are sent
/// only this often: enough to keep `foodpipe_broker_up` and the topic
/// check current.
const PROBE_WHILE_FETCHING: Duration = Duration::from_secs(20);

/// How a member reaches the brokers, judged at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reach {
    /// Answers keep coming; `steady` once they have for [`STEADY_AFTER`].
    Answering { steady: bool },
    /// No answer for `for_` (at least [`SILENT_AFTER`]).
    Silent { for_: Duration },
    /// No answer for `for_`, at least the broker timeout.
    CutOff { for_: Duration },
}

/// Judges reach from the last answer and when the current run of answers
/// began. Pure, for tests.
pub(crate) fn judge(
    last_answer: Instant,
    streak_since: Instant,
    now: Instant,
    broker_timeout: Duration,
) -> Reach {
    let silence = now.saturating_duration_since(last_answer);
    if silence >= broker_timeout {
        Reach::CutOff { for_: silence }
    } else if silence >= SILENT_AFTER {
        Reach::Silent { for_: silence }
    } else {
        Reach::Answering {
            steady: now.saturating_duration_since(streak_since) >= STEADY_AFTER,
        }
    }
}

/// One bootstrap address as the probes saw it.
#[derive(Debug, Clone, Default)]
struct Probe {
    /// The error of the last probe, if it failed.
    error: Option<String>,
    /// Whether the last probe that got an answer found the topic.
    topic_exists: Option<bool>,
}

#[derive(Debug)]
struct Inner {
    last_answer: Instant,
    /// The last answer to a fetch round.
    last_fetch: Option<Instant>,
    streak_since: Instant,
    probes: BTreeMap<String, Probe>,
    /// What was last logged about reach, and when.
    logged: Option<(ReachKind, Instant)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReachKind {
    Answering,
    Silent,
    CutOff,
}

/// Shared by the fetcher (answers), the probe task, the heartbeat and
/// `/healthz`.
#[derive(Debug, Clone)]
pub(crate) struct BrokerWatch {
    inner: Arc<Mutex<Inner>>,
    broker_timeout: Duration,
    topic: String,
}

impl BrokerWatch {
    /// A watch for a member that has just connected (an answer).
    pub(crate) fn new(bootstrap: &[String], topic: &str, broker_timeout: Duration) -> Self {
        let now = Instant::now();
        Self {
            inner: Arc::new(Mutex::new(Inner {
                last_answer: now,
                last_fetch: None,
                streak_since: now,
                probes: bootstrap
                    .iter()
                    .map(|a| (a.clone(), Probe::default()))
                    .collect(),
                logged: None,
            })),
            broker_timeout,
            topic: topic.to_owned(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A broker answered a fetch round of this member.
    pub(crate) fn fetch_answered(&self) {
        self.lock().last_fetch = Some(Instant::now());
        self.answered();
    }

    /// Whether the probes can wait: a fetch was answered within the
    /// probe interval and the last probe is recent enough.
    fn probe_can_wait(&self, last_probe: Instant) -> bool {
        let fetching = self
            .lock()
            .last_fetch
            .is_some_and(|t| t.elapsed() < PROBE_INTERVAL);
        fetching && last_probe.elapsed() < PROBE_WHILE_FETCHING
    }

    /// A broker answered this member (a fetch, a probe).
    pub(crate) fn answered(&self) {
        let now = Instant::now();
        let mut inner = self.lock();
        if now.saturating_duration_since(inner.last_answer) >= SILENT_AFTER {
            inner.streak_since = now;
        }
        inner.last_answer = now;
    }

    /// Judges this member's reach now, and sets `foodpipe_member_cut_off`
    /// to agree: whatever reads the judgement (the heartbeat row,
    /// `/healthz`) never runs ahead of the gauge.
    pub(crate) fn reach(&self) -> Reach {
        let reach = {
            let inner = self.lock();
            judge(
                inner.last_answer,
                inner.streak_since,
                Instant::now(),
                self.broker_timeout,
            )
        };
        let cut_off = matches!(reach, Reach::CutOff { .. });
        metrics::gauge!("foodpipe_member_cut_off").set(f64::from(cut_off));
        reach
    }

    /// The unreachable brokers as the probes saw them, e.g.
    /// `localhost:9092 (no answer within 2s)`.
    fn unreachable(&self) -> String {
        let inner = self.lock();
        let failing: Vec<String> = inner
            .probes
            .iter()
            .filter_map(|(a, p)| p.error.as_ref().map(|e| format!("{a} ({e})")))
            .collect();
        if failing.is_empty() {
            inner.probes.keys().cloned().collect::<Vec<_>>().join(", ")
        } else {
            failing.join(", ")
        }
    }

    /// What the heartbeat says of this member's reach.
    pub(crate) fn heartbeat(&self) -> BrokerReach {
        match self.reach() {
            Reach::Answering { steady } => BrokerReach {
                cut_off: None,
                answering: steady,
            },
            Reach::Silent { .. } => BrokerReach {
                cut_off: None,
                answering: false,
            },
            Reach::CutOff { for_ } => BrokerReach {
                cut_off: Some(format!(
                    "no broker answered for {} s: {}",
                    for_.as_secs(),
                    self.unreachable()
                )),
                answering: false,
            },
        }
    }

    /// `/healthz`'s part: `Err` names the brokers this member cannot
    /// reach, or the missing topic. Never waits on a broker.
    pub(crate) fn health(&self) -> Result<(), String> {
        let reach = self.reach();
        match reach {
            Reach::Answering { .. } => {}
            Reach::Silent { for_ } | Reach::CutOff { for_ } => {
                let cut = if matches!(reach, Reach::CutOff { .. }) {
                    "; cut off: its partitions go to members that reach the brokers"
                } else {
                    ""
                };
                return Err(format!(
                    "broker unreachable: no broker answered this member for {} s: {}{cut}",
                    for_.as_secs(),
                    self.unreachable()
                ));
            }
        }
        let inner = self.lock();
        if inner.probes.values().any(|p| p.topic_exists == Some(false))
            && !inner.probes.values().any(|p| p.topic_exists == Some(true))
        {
            return Err(format!(
                "broker answers, but topic {:?} does not exist",
                self.topic
            ));
        }
        Ok(())
    }

    /// A status line prefix while the member is cut off.
    pub(crate) fn state_prefix(&self) -> Option<String> {
        self.heartbeat()
            .cut_off
            .map(|why| format!("cut off from the brokers ({why})"))
    }

    fn probed(&self, address: &str, outcome: Result<bool, String>) {
        let up = outcome.is_ok();
        {
            let mut inner = self.lock();
            let probe = inner.probes.entry(address.to_owned()).or_default();
            let was_failing = probe.error.is_some();
            match outcome {
                Ok(exists) => {
                    probe.error = None;
                    probe.topic_exists = Some(exists);
                    if was_failing {
                        tracing::info!(broker = address, "the broker answers this member again");
                    }
                }
                Err(e) => {
                    if !was_failing {
                        tracing::warn!(broker = address, error = %e, "the broker does not answer this member");
                    }
                    probe.error = Some(e);
                }
            }
        }
        if up {
            self.answered();
        }
        metrics::gauge!("foodpipe_broker_up", "broker" => address.to_owned()).set(f64::from(up));
    }

    /// Logs a change of reach (and a lasting one every [`LOG_EVERY`]).
    fn log_reach(&self) {
        let reach = self.reach();
        let kind = match reach {
            Reach::Answering { .. } => ReachKind::Answering,
            Reach::Silent { .. } => ReachKind::Silent,
            Reach::CutOff { .. } => ReachKind::CutOff,
        };
        let now = Instant::now();
        let due = {
            let mut inner = self.lock();
            let due = match inner.logged {
                Some((k, at)) => {
                    k != kind || (kind != ReachKind::Answering && now - at >= LOG_EVERY)
                }
                None => kind != ReachKind::Answering,
            };
            if due {
                inner.logged = Some((kind, now));
            }
            due
        };
        if !due {
            return;
        }
        match reach {
            Reach::Answering { .. } => tracing::info!("the brokers answer this member again"),
            Reach::Silent { for_ } => tracing::warn!(
                brokers = %self.unreachable(),
                "no broker has answered this member for {} s; its partitions go to other members after --broker-timeout ({} s)",
                for_.as_secs(),
                self.broker_timeout.as_secs()
            ),
            Reach::CutOff { for_ } => tracing::error!(
                brokers = %self.unreachable(),
                "cut off from the brokers for {} s: giving this member's partitions to members that reach them (none move if every member is cut off)",
                for_.as_secs()
            ),
        }
    }

    /// Probes every bootstrap address each [`PROBE_INTERVAL`], for ever.
    pub(crate) async fn probe_loop(self, kafka: KafkaConfig) {
        let addresses: Vec<String> = self.lock().probes.keys().cloned().collect();
        let mut timer = tokio::time::interval(PROBE_INTERVAL);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_probe: Option<Instant> = None;
        loop {
            timer.tick().await;
            if last_probe.is_some_and(|t| self.probe_can_wait(t)) {
                self.log_reach();
                continue;
            }
            last_probe = Some(Instant::now());
            let mut probes = tokio::task::JoinSet::new();
            for address in &addresses {
                let (kafka, topic, address) = (kafka.clone(), self.topic.clone(), address.clone());
                probes.spawn(async move {
                    let outcome = probe(&kafka, &address, &topic).await;
                    (address, outcome)
                });
            }
            while let Some(Ok((address, outcome))) = probes.join_next().await {
                self.probed(&address, outcome);
            }
            self.log_reach();
        }
    }
}

/// One probe of one address: a new connection (so a stuck one cannot
/// hide the answer), the handshake, and Metadata for the topic. `Ok`:
/// whether the topic exists.
async fn probe(kafka: &KafkaConfig, address: &str, topic: &str) -> Result<bool, String> {
    let config = KafkaConfig {
        bootstrap_servers: vec![address.to_owned()],
        timeout: PROBE_TIMEOUT,
        request_timeout: PROBE_TIMEOUT,
        ..kafka.clone()
    };
    let asked = async {
        let client = kafka::connect(&config).await.map_err(|e| cause(&e))?;
        kafka::topic_partitions(&client, topic)
            .await
            .map(|n| n.is_some())
            .map_err(|e| cause(&e))
    };
    match tokio::time::timeout(PROBE_TIMEOUT, asked).await {
        Ok(outcome) => outcome,
        Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
    }
}

/// What actually went wrong: the innermost error of the chain (e.g.
/// "Connection refused (os error 111)"), not the layers of retrying
/// around it.
fn cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = error;
    while let Some(source) = inner.source() {
        inner = source;
    }
    inner.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reach by the time since the last answer: answering, silent after five seconds, cut off at the broker timeout; steady only after five seconds of answers.
    #[test]
    fn reach_follows_the_silence() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(15);
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(
            judge(t0, t0, at(1), timeout),
            Reach::Answering { steady: false }
        );
        assert_eq!(
            judge(at(9), t0, at(10), timeout),
            Reach::Answering { steady: true }
        );
        assert_eq!(
            judge(t0, t0, at(6), timeout),
            Reach::Silent {
                for_: Duration::from_secs(6)
            }
        );
        assert_eq!(
            judge(t0, t0, at(15), timeout),
            Reach::CutOff {
                for_: Duration::from_secs(15)
            }
        );
    }

    /// An answer after a silence starts a new streak: the member is answering again at once, but steady only five seconds later.
    #[test]
    fn an_answer_after_silence_starts_a_new_streak() {
        let watch = BrokerWatch::new(&["b:9092".to_owned()], "t", Duration::from_secs(15));
        {
            let mut inner = watch.lock();
            inner.last_answer -= Duration::from_secs(20);
            inner.streak_since -= Duration::from_secs(60);
        }
        assert!(matches!(watch.reach(), Reach::CutOff { .. }));
        assert!(watch.heartbeat().cut_off.is_some());
        watch.answered();
        assert_eq!(watch.reach(), Reach::Answering { steady: false });
        assert_eq!(watch.heartbeat(), BrokerReach::default());
    }

    /// The health text and the heartbeat name the unreachable broker and the probe's error.
    #[test]
    fn health_names_the_unreachable_broker() {
        let watch = BrokerWatch::new(&["b:9092".to_owned()], "t", Duration::from_secs(15));
        watch.probed("b:9092", Err("no answer within 2s".to_owned()));
        watch.lock().last_answer -= Duration::from_secs(6);
        let health = watch.health().expect_err("unhealthy");
        assert!(health.contains("b:9092 (no answer within 2s)"), "{health}");
        assert!(!health.contains("cut off"), "{health}");
        watch.lock().last_answer -= Duration::from_secs(10);
        let cut = watch.heartbeat().cut_off.expect("cut off");
        assert!(cut.contains("b:9092 (no answer within 2s)"), "{cut}");
        assert!(watch.health().expect_err("unhealthy").contains("cut off"));
    }

    /// The heartbeat that says "cut off" has set `foodpipe_member_cut_off`
    /// to 1 already, whether or not a probe round has ended since: a
    /// scrape after the heartbeat row never reads 0.
    #[test]
    fn the_cut_off_gauge_agrees_with_the_heartbeat() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let watch = BrokerWatch::new(&["b:9092".to_owned()], "t", Duration::from_secs(15));
        watch.lock().last_answer -= Duration::from_secs(20);
        metrics::with_local_recorder(&recorder, || {
            assert!(watch.heartbeat().cut_off.is_some());
        });
        assert!(
            handle.render().contains("foodpipe_member_cut_off 1"),
            "{}",
            handle.render()
        );
    }

    /// A broker that answers but has no such topic makes health fail saying so.
    #[test]
    fn a_missing_topic_is_named() {
        let watch = BrokerWatch::new(&["b:9092".to_owned()], "orders", Duration::from_secs(15));
        watch.probed("b:9092", Ok(false));
        assert!(
            watch
                .health()
                .expect_err("unhealthy")
                .contains("\"orders\" does not exist")
        );
        watch.probed("b:9092", Ok(true));
        assert_eq!(watch.health(), Ok(()));
    }
}
