//! The coordinator: this member's one place of decisions.
//!
//! It owns the membership view, the assignment, and what this member
//! holds of each partition: one state per partition (taking, running,
//! stopping, stopped, done) in one table, [`held::Holdings`], changed only
//! by its transitions. It is the only task that starts or stops workers.
//! Everything else reaches it by message:
//!
//! - the heartbeat task (its own timer and its own connection, so no take,
//!   fetch or commit can delay a heartbeat past the session timeout) sends
//!   each view of the group; every view runs the rebalance decision;
//! - takes run concurrently (bounded by `take_concurrency`) and report
//!   back; a taken partition gets a worker and a place in the fetcher;
//! - workers report how their tenure ended ([`Exit`]).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;

use group::rebalance::{self, Holder};
use kafka::{KafkaConfig, OffsetAt, PartitionReader};
use store::{GroupView, LeaseRow, Member, Store, StoreConfig};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::{Id, JoinSet};

use super::brokers::BrokerWatch;
use super::dlt::DeadLetterTopic;
use super::error::{Action, Error, Result};
use super::fetcher::{self, Assigned, FetcherHandle};
use super::mirror::Mirror;
use super::offsets::{self, NotTaken, Taken};
use super::status::{State, Status, StoppedPartition};
use super::worker::{Exit, Worker};
use super::{ConsumeConfig, ConsumeSummary, MetricsListen, PartitionSummary};

mod background;
mod held;
mod takes;
mod workers;

use background::{health_check, heartbeat_loop, targets, watch_partition_count};
use held::{Holdings, LetGo, Tenure};

/// What the heartbeat task reports.
#[derive(Debug, Clone)]
enum Beat {
    View(GroupView),
    /// Another process took this member id over: stop.
    Replaced(String),
}

/// `--until-caught-up`: where each partition must get to.
#[derive(Debug, Clone)]
struct Targets {
    /// The stored offset each partition must reach.
    end: BTreeMap<i32, i64>,
    /// The log start at start: a partition with nothing to apply
    /// (`end <= earliest`) and no stored offset is caught up as it is.
    earliest: BTreeMap<i32, i64>,
}

impl Targets {
    fn reached(&self, partition: i32, stored: Option<i64>) -> bool {
        let end = self.end.get(&partition).copied().unwrap_or(0);
        match stored {
            Some(s) => s >= end,
            None => end <= self.earliest.get(&partition).copied().unwrap_or(0),
        }
    }
}

/// Joins the group and runs the member until shutdown or, with
/// `until_caught_up`, until the group reached the targets.
pub(super) async fn run(
    config: ConsumeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<ConsumeSummary> {
    // Every statement of a member is bounded by the session timeout, on the
    // server (statement_timeout) and on the socket (TCP_USER_TIMEOUT): a
    // lease wait, a commit behind a lock or a half-open connection ends in
    // a transient error, retried, within the time the group waits anyway.
    let with_timeout = |pool_size, statement_timeout| StoreConfig {
        idle_in_transaction_timeout: Some(config.session_timeout),
        statement_timeout: Some(statement_timeout),
        pool_size,
        ..config.store.clone()
    };
    // Three pools. Heartbeats have a connection of their own, so no take
    // waiting on a row lock (a `rebuild --dry-run` holds every offset row
    // FOR SHARE while it compares) and no slow commit can delay one; its
    // statements are bounded by a quarter of the session timeout, so a
    // beat that cannot get through is retried on a new connection several
    // times before the group would expire the member. The control plane
    // (leases, takes) never waits behind batch commits for a connection.
    let beat_store = Store::connect(&with_timeout(
        1,
        (config.session_timeout / 4).max(std::time::Duration::from_secs(1)),
    ))
    .await?;
    let control =
        Store::connect(&with_timeout(CONTROL_CONNECTIONS, config.session_timeout)).await?;
    control.migrate().await?;
    crate::projections::prepare(&config.store, &config.projections, &config.group).await?;
    let data = Store::connect(&with_timeout(
        config.db_connections.max(1),
        config.session_timeout,
    ))
    .await?;
    // Every request to a broker is bounded: a broker whose packets are
    // dropped must not hold a fetch, a take or a metadata request for the
    // minutes the kernel keeps a connection (see `brokers`).
    let kafka_config = KafkaConfig {
        request_timeout: config.broker_timeout + config.fetch_max_wait,
        ..config.kafka.clone()
    };
    // The cluster, for metadata and the tools' requests.
    let client = Arc::new(kafka::connect(&kafka_config).await?);
    // The client partition readers are made from (takes, then fetches;
    // rskafka gives each partition client a connection of its own). Both
    // retry failed requests themselves, with backoff and health saying so;
    // rskafka's own retry loop would only hide a failing partition from
    // them for the whole --kafka-timeout.
    let reader_client = Arc::new(
        kafka::connect(&KafkaConfig {
            timeout: config.kafka.timeout.min(READER_RETRY_DEADLINE),
            ..kafka_config.clone()
        })
        .await?,
    );
    let partitions = kafka::existing_topic_partitions(&client, &config.topic).await?;
    let status = Status::new(&config.group, &config.topic, config.stall_timeout);
    let brokers = BrokerWatch::new(
        &config.kafka.bootstrap_servers,
        &config.topic,
        config.broker_timeout,
    );
    let probes = tokio::spawn(brokers.clone().probe_loop(config.kafka.clone()));

    let metrics_addr = match config.metrics {
        MetricsListen::Off => None,
        listen => {
            let health = health_check(control.clone(), brokers.clone(), status.clone());
            Some(crate::observe::serve(listen, health).await?)
        }
    };
    let dead_letter_topic = match &config.dead_letter_topic {
        Some(topic) => Some(Arc::new(
            DeadLetterTopic::open(&client, topic, partitions).await?,
        )),
        None => None,
    };
    let targets = if config.until_caught_up {
        Some(targets(&client, &config, partitions).await?)
    } else {
        None
    };
    let member = Member {
        group: config.group.clone(),
        id: config
            .member_id
            .clone()
            .unwrap_or_else(super::default_member_id),
        host: super::hostname(),
        pid: std::process::id() as i32,
        session: super::process_token(),
        metrics_addr: metrics_addr.map(|a| a.to_string()),
    };
    tracing::info!(
        group = %config.group,
        member = %member.id,
        assignor = config.assignor.as_str(),
        partitions,
        "joining consumer group"
    );
    // The first heartbeat joins, and claims the member id from any earlier
    // process still holding it (static membership: the new one wins).
    let first = beat_store
        .heartbeat(&member, "joining", true, config.session_timeout)
        .await?;
    let (beats_tx, beats) = watch::channel(Beat::View(first));
    let heartbeats = tokio::spawn(heartbeat_loop(
        beat_store,
        member.clone(),
        status.clone(),
        brokers.clone(),
        config.heartbeat_interval,
        config.session_timeout,
        beats_tx,
    ));

    let mirror = config.mirror_interval.map(|interval| {
        Mirror::start(
            kafka::BrokerGroups::new(Arc::clone(&client)),
            config.group.clone(),
            config.topic.clone(),
            status.clone(),
            interval,
        )
    });
    let config = Arc::new(config);
    let budget = Arc::new(Semaphore::new(config.max_inflight_bytes.max(2048)));
    let (fetcher, fetcher_task) =
        fetcher::spawn(Arc::clone(&config), status.clone(), budget, brokers);
    let bars = indicatif::MultiProgress::new();
    if !config.progress {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let group_metrics = crate::observe::GroupMetrics::new(&config.group, &config.topic);
    let take_slots = Arc::new(Semaphore::new(config.take_concurrency.max(1)));
    let mut coordinator = Coordinator {
        config,
        member,
        group_metrics,
        control,
        data,
        client,
        reader_client,
        status,
        fetcher,
        mirror,
        dead_letter_topic,
        partitions,
        view: None,
        assigned: BTreeSet::new(),
        leases: Vec::new(),
        holdings: Holdings::default(),
        workers: JoinSet::new(),
        takes: JoinSet::new(),
        take_slots,
        targets,
        bars,
    };
    let outcome = coordinator.run(beats, shutdown).await;
    heartbeats.abort();
    probes.abort();
    let summary = coordinator.finish(outcome).await;
    fetcher_task.abort();
    summary
}

/// PostgreSQL connections of the control plane: a lease read and a few
/// takes at a time; heartbeats have a connection of their own. Takes spend
/// most of their time on the broker; more of them wait here for a
/// connection, never holding one idle.
const CONTROL_CONNECTIONS: usize = 6;

/// How long rskafka itself retries a failed request of a partition reader
/// before the take or the fetcher sees the failure.
const READER_RETRY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(3);

/// A take's partition and how it went.
type TakeResult = (i32, std::result::Result<Taken, NotTaken>);

/// Why the main loop ended.
#[derive(Debug)]
enum Outcome {
    Shutdown,
    /// `--until-caught-up`: every partition reached its target, or every
    /// one that did not is stopped.
    Finished,
    Fatal(Error),
}

struct Coordinator {
    config: Arc<ConsumeConfig>,
    member: Member,
    /// `foodpipe_rebalances_total`, `foodpipe_partitions_taken_total`.
    group_metrics: crate::observe::GroupMetrics,
    /// Heartbeats, leases, takes and releases.
    control: Store,
    /// Batch commits.
    data: Store,
    client: Arc<kafka::Client>,
    /// Partition readers are made from this one (see `run`).
    reader_client: Arc<kafka::Client>,
    status: Status,
    fetcher: FetcherHandle,
    mirror: Option<Mirror>,
    dead_letter_topic: Option<Arc<DeadLetterTopic>>,
    partitions: u32,
    view: Option<GroupView>,
    /// What the assignor gave this member at the last rebalance.
    assigned: BTreeSet<i32>,
    /// The group's leases at the last rebalance.
    leases: Vec<LeaseRow>,
    /// One state per partition this member holds or is done with, and
    /// the summary of every tenure.
    holdings: Holdings,
    /// The workers' tasks; each says its partition when it ends.
    workers: JoinSet<(i32, Exit, PartitionSummary)>,
    /// The takes' tasks; each says its partition when it ends.
    takes: JoinSet<TakeResult>,
    /// Bounds the takes running at once (`take_concurrency`).
    take_slots: Arc<Semaphore>,
    targets: Option<Targets>,
    bars: indicatif::MultiProgress,
}

impl Coordinator {
    async fn run(
        &mut self,
        mut beats: watch::Receiver<Beat>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Outcome {
        let mut shutdown = std::pin::pin!(shutdown);
        let (topic_tx, mut topic_changes) = mpsc::channel(1);
        let watcher = tokio::spawn(watch_partition_count(
            Arc::clone(&self.client),
            self.config.topic.clone(),
            self.partitions,
            topic_tx,
        ));
        // The first view is already there: decide at once.
        beats.mark_changed();
        let outcome = loop {
            tokio::select! {
                () = &mut shutdown => break Outcome::Shutdown,
                changed = beats.changed() => {
                    if changed.is_err() {
                        break Outcome::Fatal(Error::Internal("the heartbeat task ended".into()));
                    }
                    let beat = beats.borrow_and_update().clone();
                    match beat {
                        Beat::View(view) => {
                            self.view = Some(view);
                            self.rebalance().await;
                            if self.targets.is_some() && self.until_finished().await {
                                break Outcome::Finished;
                            }
                        }
                        Beat::Replaced(message) => break Outcome::Fatal(Error::Replaced(message)),
                    }
                }
                Some(joined) = self.workers.join_next_with_id() => self.on_worker_exit(joined).await,
                Some(joined) = self.takes.join_next_with_id() => self.on_taken(joined).await,
                Some(count) = topic_changes.recv() => {
                    tracing::info!(from = self.partitions, to = count, "the topic's partition count changed");
                    self.partitions = count;
                    self.rebalance().await;
                }
            }
        };
        watcher.abort();
        outcome
    }

    /// The group's leases on the topic, with their owners' liveness.
    async fn read_leases(&self) -> store::Result<Vec<LeaseRow>> {
        self.control
            .leases(
                &self.config.group,
                &self.config.topic,
                self.config.session_timeout,
            )
            .await
    }

    /// The rebalance decision on the latest view, carried out.
    async fn rebalance(&mut self) {
        let Some(view) = self.view.clone() else {
            return;
        };
        let leases = match self.read_leases().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the group's leases; deciding again at the next heartbeat");
                return;
            }
        };
        let me = self.member.id.as_str();
        let holders: BTreeMap<i32, Holder> = leases
            .iter()
            .map(|l| {
                let holder = match &l.owner {
                    None => Holder::Free,
                    Some(o) if o == me => Holder::Me,
                    Some(o) if l.owner_live => Holder::Live(o.clone()),
                    Some(o) => Holder::Dead(o.clone()),
                };
                (l.partition, holder)
            })
            .collect();
        let previous = if self.config.assignor == group::Assignor::Sticky {
            let mut previous = group::assign::Assignment::new();
            for l in leases.iter().filter(|l| l.owner_live) {
                if let Some(o) = &l.owner {
                    previous.entry(o.clone()).or_default().push(l.partition);
                }
            }
            previous
        } else {
            group::assign::Assignment::new()
        };
        // Members cut off from the brokers get nothing while another
        // member reaches them (`group::reach`).
        let members = group::reach::eligible(&view.members, &view.cut_off, &view.answering);
        let assignment = self
            .config
            .assignor
            .assign(&members, self.partitions, &previous);
        let assigned: BTreeSet<i32> = assignment
            .get(me)
            .map(|ps| ps.iter().copied().collect())
            .unwrap_or_default();
        if assigned != self.assigned {
            self.group_metrics.rebalanced();
            tracing::info!(
                generation = view.generation,
                members = view.members.len(),
                cut_off = ?view.cut_off,
                partitions = ?assigned,
                "assignment"
            );
        }
        for gone in &view.expired {
            tracing::warn!(member = %gone, "expired a silent member");
        }
        self.assigned = assigned;
        self.leases = leases;
        let held = self.holdings.held();
        let done = self.holdings.done();
        let actions = rebalance::decide(rebalance::Inputs {
            assigned: &self.assigned,
            held: &held,
            done: &done,
            leases: &holders,
        });
        for p in actions.release {
            match self.holdings.let_go(p) {
                // The worker finishes its batch in hand; its exit releases.
                // A take's end sees the assignment moved on.
                LetGo::WorkerStopping | LetGo::Taking => {}
                LetGo::Stopped(epoch) => {
                    self.release(p, epoch).await;
                    self.status.remove(p);
                }
                // A lease left by an earlier process of this member id.
                LetGo::NotHeld => self.release(p, None).await,
            }
        }
        for p in actions.take {
            self.start_take(p);
        }
        for (p, holder) in actions.wait {
            self.status.set(p, State::Waiting(holder));
        }
        // Partitions neither assigned nor held are no concern of ours.
        for p in 0..self.partitions as i32 {
            if !self.assigned.contains(&p) && !held.contains(&p) && !done.contains(&p) {
                self.status.remove(p);
            }
        }
    }
}
