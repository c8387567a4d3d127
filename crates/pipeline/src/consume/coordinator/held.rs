//! What this member holds of each partition: one [`Held`] per partition in
//! one table, [`Holdings`], so a partition cannot be taking and running at
//! once, or running and stopped. Its transitions are the only way to change
//! it, and they are pure: the coordinator carries out what each one means
//! (a release, a status, a log line, a spawned task).
//!
//! A partition missing from the table is free: this member holds nothing
//! of it. Each tenure starts from free and ends in free; the coordinator
//! moves a partition on from there within the same step:
//!
//! | from                  | transition      | to         |
//! |-----------------------|-----------------|------------|
//! | free                  | `start_take`    | `Taking`   |
//! | `Taking`              | `take_ended`    | free       |
//! | free                  | `start_running` | `Running`  |
//! | `Running`             | `let_go`        | `Stopping` |
//! | `Running`, `Stopping` | `worker_ended`  | free       |
//! | free                  | `stopped`       | `Stopped`  |
//! | `Stopped`             | `let_go`        | free       |
//! | free                  | `done_with`     | `Done`     |
//!
//! Entering a state from anything but free is a bug (a debug assertion).

use std::collections::{BTreeMap, BTreeSet};

use tokio::sync::watch;
use tokio::task::Id;

use super::PartitionSummary;

/// One partition this member holds, or is finished with.
///
/// "Waiting for a named member" is not a state here: such a partition is
/// assigned to this member but it holds nothing of it (no task, no lease),
/// so it is free in this table and only [`State::Waiting`] in the
/// [`Status`] says whom it waits for.
///
/// [`State::Waiting`]: crate::consume::status::State::Waiting
/// [`Status`]: crate::consume::status::Status
#[derive(Debug)]
pub(super) enum Held {
    /// A take is under way: the lease, the stored offset and the leader are
    /// being read, in this task of the coordinator's `takes`.
    Taking { task: Id },
    /// A worker applies batches under the lease.
    Running(Tenure),
    /// Its worker was asked to stop (the partition moved, or shutdown): it
    /// finishes the batch in hand, and its exit (`Released`, as a rule)
    /// ends the tenure.
    Stopping(Tenure),
    /// Stopped on an error retrying cannot fix: kept, with the lease at
    /// `epoch` if one was taken, so the partition is not passed around to
    /// fail elsewhere; released when the assignment moves it away.
    Stopped { epoch: Option<i64> },
    /// `--until-caught-up`: reached its target; never taken again.
    Done,
}

/// A worker's tenure, as the coordinator sees it.
#[derive(Debug)]
pub(super) struct Tenure {
    /// The worker's task in the coordinator's `workers`.
    pub task: Id,
    /// The lease epoch of this tenure.
    pub epoch: i64,
    /// Asks the worker to stop.
    pub stop: watch::Sender<bool>,
}

/// What [`Holdings::let_go`] found, and what the coordinator does about it.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum LetGo {
    /// The worker was asked to stop (now or earlier); its exit releases
    /// the lease.
    WorkerStopping,
    /// A take is under way; its end sees the assignment and releases.
    Taking,
    /// It was stopped here and is free now: release the lease at this epoch.
    Stopped(Option<i64>),
    /// Not held (free, or done): release whatever lease an earlier process
    /// of this member id left.
    NotHeld,
}

/// Every partition this member holds or is finished with, and what each
/// partition did over all its tenures in this run.
#[derive(Debug, Default)]
pub(super) struct Holdings {
    held: BTreeMap<i32, Held>,
    /// Kept after a tenure ends: the run's summary covers every tenure.
    summaries: BTreeMap<i32, PartitionSummary>,
}

impl Holdings {
    /// The partitions this member works on now, as `rebalance::decide`
    /// takes them: taking, running, stopping and stopped (not done).
    pub fn held(&self) -> BTreeSet<i32> {
        self.held
            .iter()
            .filter(|(_, h)| !matches!(h, Held::Done))
            .map(|(p, _)| *p)
            .collect()
    }

    /// The partitions that reached their `--until-caught-up` target.
    pub fn done(&self) -> BTreeSet<i32> {
        self.held
            .iter()
            .filter(|(_, h)| matches!(h, Held::Done))
            .map(|(p, _)| *p)
            .collect()
    }

    /// What this member holds of `partition`; `None`: it is free.
    #[cfg(test)]
    pub fn get(&self, partition: i32) -> Option<&Held> {
        self.held.get(&partition)
    }

    pub fn is_stopped(&self, partition: i32) -> bool {
        matches!(self.held.get(&partition), Some(Held::Stopped { .. }))
    }

    /// The partition whose take runs in `task`.
    pub fn taking_in(&self, task: Id) -> Option<i32> {
        self.held.iter().find_map(|(p, h)| match h {
            Held::Taking { task: t } if *t == task => Some(*p),
            _ => None,
        })
    }

    /// The partition whose worker runs in `task`.
    pub fn worker_in(&self, task: Id) -> Option<i32> {
        self.held.iter().find_map(|(p, h)| match h {
            Held::Running(t) | Held::Stopping(t) if t.task == task => Some(*p),
            _ => None,
        })
    }

    /// Free → `Taking`: calls `spawn` (which starts the take and gives its
    /// task) only for a free partition. False, and nothing spawned, when
    /// the partition is held or done.
    pub fn start_take(&mut self, partition: i32, spawn: impl FnOnce() -> Id) -> bool {
        if self.held.contains_key(&partition) {
            return false;
        }
        self.enter(partition, Held::Taking { task: spawn() });
        true
    }

    /// `Taking` → free: the take ended, however it went. False (and nothing
    /// changed) when the partition was not being taken.
    pub fn take_ended(&mut self, partition: i32) -> bool {
        if matches!(self.held.get(&partition), Some(Held::Taking { .. })) {
            self.held.remove(&partition);
            true
        } else {
            false
        }
    }

    /// Free → `Running`: a worker started on a taken partition.
    pub fn start_running(&mut self, partition: i32, tenure: Tenure) {
        self.enter(partition, Held::Running(tenure));
    }

    /// `Running`, `Stopping` → free: the worker ended. Adds its tenure to
    /// the partition's summary (whatever the state) and gives the tenure's
    /// epoch; `None`, and nothing changed, when no worker was recorded.
    pub fn worker_ended(&mut self, partition: i32, summary: PartitionSummary) -> Option<i64> {
        self.summaries.entry(partition).or_default().merge(summary);
        match self.held.remove(&partition) {
            Some(Held::Running(t) | Held::Stopping(t)) => Some(t.epoch),
            Some(other) => {
                self.held.insert(partition, other);
                None
            }
            None => None,
        }
    }

    /// Free → `Stopped`, keeping the lease at `epoch` if one was taken.
    pub fn stopped(&mut self, partition: i32, epoch: Option<i64>) {
        self.enter(partition, Held::Stopped { epoch });
    }

    /// Free → `Done`.
    pub fn done_with(&mut self, partition: i32) {
        self.enter(partition, Held::Done);
    }

    /// The rebalance no longer gives this member `partition`: `Running` →
    /// `Stopping` (the worker is asked to stop, once), `Stopped` → free;
    /// a take under way, a done partition and a free one stay as they are.
    pub fn let_go(&mut self, partition: i32) -> LetGo {
        match self.held.remove(&partition) {
            Some(Held::Running(t)) => {
                let _ = t.stop.send(true);
                self.held.insert(partition, Held::Stopping(t));
                LetGo::WorkerStopping
            }
            Some(Held::Stopped { epoch }) => LetGo::Stopped(epoch),
            Some(h @ Held::Stopping(_)) => {
                // Asked already: the stop stays `true` in the channel, and
                // the worker returns at its next look at it.
                self.held.insert(partition, h);
                LetGo::WorkerStopping
            }
            Some(h @ Held::Taking { .. }) => {
                self.held.insert(partition, h);
                LetGo::Taking
            }
            Some(h @ Held::Done) => {
                self.held.insert(partition, h);
                LetGo::NotHeld
            }
            None => LetGo::NotHeld,
        }
    }

    /// Shutdown: every `Running` worker → `Stopping`.
    pub fn stop_all_workers(&mut self) {
        for p in self.held.keys().copied().collect::<Vec<_>>() {
            if matches!(self.held.get(&p), Some(Held::Running(_))) {
                self.let_go(p);
            }
        }
    }

    /// The summary of every partition worked in this run.
    pub fn take_summaries(&mut self) -> Vec<PartitionSummary> {
        std::mem::take(&mut self.summaries).into_values().collect()
    }

    fn enter(&mut self, partition: i32, state: Held) {
        let before = self.held.insert(partition, state);
        debug_assert!(
            before.is_none(),
            "partition {partition} entered a state while {before:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use group::rebalance::{self, Holder};

    /// A real task id: tokio gives no other way to make one.
    fn task() -> Id {
        tokio::spawn(async {}).id()
    }

    fn tenure(epoch: i64) -> (Tenure, watch::Receiver<bool>) {
        let (stop, rx) = watch::channel(false);
        (
            Tenure {
                task: task(),
                epoch,
                stop,
            },
            rx,
        )
    }

    fn set(ps: &[i32]) -> BTreeSet<i32> {
        ps.iter().copied().collect()
    }

    fn summary(partition: i32, start: i64, next: i64, events: u64) -> PartitionSummary {
        PartitionSummary {
            partition,
            start_offset: start,
            next_offset: next,
            batches: 1,
            events,
            ..PartitionSummary::default()
        }
    }

    /// One of each state: 0 taking, 1 running, 2 stopping, 3 stopped, 4 done.
    fn one_of_each() -> (Holdings, Vec<watch::Receiver<bool>>) {
        let mut h = Holdings::default();
        assert!(h.start_take(0, task));
        let (t1, rx1) = tenure(11);
        h.start_running(1, t1);
        let (t2, rx2) = tenure(12);
        h.start_running(2, t2);
        assert_eq!(h.let_go(2), LetGo::WorkerStopping);
        h.stopped(3, Some(13));
        h.done_with(4);
        (h, vec![rx1, rx2])
    }

    /// A tenure goes free → taking → free → running → stopping → free, and
    /// a take is started only on a free partition (nothing is spawned for
    /// a held or done one).
    #[tokio::test]
    async fn a_tenure_moves_one_state_at_a_time() {
        let mut h = Holdings::default();
        assert!(h.start_take(5, task));
        assert!(matches!(h.get(5), Some(Held::Taking { .. })));
        assert!(!h.start_take(5, || panic!("spawned a second take")));
        assert!(h.take_ended(5));
        assert!(h.get(5).is_none());
        assert!(!h.take_ended(5), "ended a take that was not under way");
        let (t, mut stop) = tenure(7);
        h.start_running(5, t);
        assert!(!h.start_take(5, || panic!("took a running partition")));
        assert!(!h.take_ended(5), "a running partition is not taking");
        assert!(matches!(h.get(5), Some(Held::Running(_))));
        assert_eq!(h.let_go(5), LetGo::WorkerStopping);
        assert!(
            *stop.borrow_and_update(),
            "the worker was not asked to stop"
        );
        assert!(matches!(h.get(5), Some(Held::Stopping(_))));
        assert_eq!(h.worker_ended(5, summary(5, 0, 10, 10)), Some(7));
        assert!(h.get(5).is_none());
        assert_eq!(h.held(), set(&[]));

        let (mut h, _rx) = one_of_each();
        for p in 0..5 {
            assert!(!h.start_take(p, || panic!("took partition {p}, held")));
        }
    }

    /// Entering a state from anything but free is refused loudly: a
    /// partition cannot be taking and running at once.
    #[cfg(debug_assertions)]
    #[tokio::test]
    #[should_panic(expected = "partition 5 entered a state while Some(Taking")]
    async fn taking_and_running_at_once_is_a_bug() {
        let mut h = Holdings::default();
        assert!(h.start_take(5, task));
        h.start_running(5, tenure(1).0);
    }

    /// What each state does when the rebalance lets the partition go.
    #[tokio::test]
    async fn let_go_per_state() {
        let (mut h, mut stops) = one_of_each();
        assert!(*stops[1].borrow_and_update());
        assert_eq!(h.let_go(0), LetGo::Taking);
        assert!(matches!(h.get(0), Some(Held::Taking { .. })));
        assert_eq!(h.let_go(1), LetGo::WorkerStopping);
        assert!(*stops[0].borrow_and_update());
        assert!(matches!(h.get(1), Some(Held::Stopping(_))));
        assert_eq!(h.let_go(2), LetGo::WorkerStopping);
        assert!(
            !stops[1]
                .has_changed()
                .expect("the worker's end of the stop"),
            "a stopping worker was asked again"
        );
        assert_eq!(h.let_go(3), LetGo::Stopped(Some(13)));
        assert!(h.get(3).is_none(), "a released stopped partition is free");
        assert_eq!(h.let_go(4), LetGo::NotHeld);
        assert!(matches!(h.get(4), Some(Held::Done)));
        assert_eq!(h.let_go(9), LetGo::NotHeld);
        assert!(h.get(9).is_none());
    }

    /// A worker's end frees the partition and gives its epoch; the
    /// summaries add up over tenures; an end with no worker recorded
    /// changes no state.
    #[tokio::test]
    async fn worker_ended_frees_and_sums() {
        let (mut h, _rx) = one_of_each();
        assert_eq!(h.worker_ended(1, summary(1, 100, 150, 50)), Some(11));
        assert!(h.get(1).is_none());
        h.start_running(1, tenure(21).0);
        assert_eq!(h.worker_ended(1, summary(1, 150, 160, 10)), Some(21));
        assert_eq!(h.worker_ended(3, PartitionSummary::default()), None);
        assert!(h.is_stopped(3), "a stopped partition lost its state");
        assert_eq!(h.worker_ended(4, PartitionSummary::default()), None);
        assert_eq!(h.done(), set(&[4]));
        let summaries = h.take_summaries();
        let one = summaries
            .iter()
            .find(|s| s.partition == 1)
            .expect("partition 1's summary");
        assert_eq!(
            (one.start_offset, one.next_offset, one.events, one.batches),
            (100, 160, 60, 2)
        );
    }

    /// Task ids find the partition (a task that panicked says only its id).
    #[tokio::test]
    async fn tasks_find_their_partition() {
        let mut h = Holdings::default();
        let take = task();
        assert!(h.start_take(3, || take));
        let (t, _rx) = tenure(1);
        let worker = t.task;
        h.start_running(4, t);
        assert_eq!(h.taking_in(take), Some(3));
        assert_eq!(h.worker_in(take), None);
        assert_eq!(h.worker_in(worker), Some(4));
        assert_eq!(h.taking_in(worker), None);
        h.let_go(4);
        assert_eq!(h.worker_in(worker), Some(4), "a stopping worker is lost");
    }

    /// Shutdown asks every running worker to stop.
    #[tokio::test]
    async fn stop_all_workers_stops_each_one() {
        let (mut h, mut stops) = one_of_each();
        h.stop_all_workers();
        assert!(*stops[0].borrow_and_update());
        assert!(matches!(h.get(1), Some(Held::Stopping(_))));
        assert!(matches!(h.get(0), Some(Held::Taking { .. })));
        assert!(h.is_stopped(3));
    }

    /// `held()` and `done()` are what `rebalance::decide` needs: nothing
    /// held is taken again, a done partition is not taken, every held
    /// partition no longer assigned is released, and a done one is not.
    #[tokio::test]
    async fn held_and_done_feed_the_decision() {
        let (h, _rx) = one_of_each();
        assert_eq!(h.held(), set(&[0, 1, 2, 3]));
        assert_eq!(h.done(), set(&[4]));
        let leases: BTreeMap<i32, Holder> = (0..6).map(|p| (p, Holder::Me)).collect();
        let held = h.held();
        let done = h.done();
        let all = set(&[0, 1, 2, 3, 4, 5]);
        let kept = rebalance::decide(rebalance::Inputs {
            assigned: &all,
            held: &held,
            done: &done,
            leases: &leases,
        });
        assert_eq!(kept.take, vec![5]);
        assert_eq!(kept.release, Vec::<i32>::new());
        let moved = rebalance::decide(rebalance::Inputs {
            assigned: &set(&[5]),
            held: &held,
            done: &done,
            leases: &BTreeMap::new(),
        });
        assert_eq!(moved.release, vec![0, 1, 2, 3]);
        assert_eq!(moved.take, vec![5]);
    }
}
