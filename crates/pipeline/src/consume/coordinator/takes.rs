//! The coordinator's takes: starting one (concurrent, bounded by
//! `take_slots`), what its end means, and stopping a partition this
//! member keeps (the one place the coordinator marks a stop).

use super::*;

impl Coordinator {
    /// Starts taking `partition` if it is free (see [`Holdings::start_take`]).
    pub(super) fn start_take(&mut self, partition: i32) {
        let store = self.control.clone();
        let client = Arc::clone(&self.reader_client);
        let config = Arc::clone(&self.config);
        let member = self.member.clone();
        let slots = Arc::clone(&self.take_slots);
        let takes = &mut self.takes;
        let started = self.holdings.start_take(partition, || {
            let handle = takes.spawn(async move {
                let _slot = slots.acquire_owned().await;
                let taken = offsets::take(&store, &client, &config, &member, partition).await;
                (partition, taken)
            });
            handle.id()
        });
        if started {
            self.status.set(partition, State::Taking);
        }
    }

    pub(super) async fn on_taken(
        &mut self,
        joined: std::result::Result<(Id, TakeResult), tokio::task::JoinError>,
    ) {
        let (partition, result) = match joined {
            Ok((_, done)) => done,
            Err(e) => {
                let Some(partition) = self.holdings.taking_in(e.id()) else {
                    return;
                };
                (
                    partition,
                    Err(NotTaken::Failed {
                        epoch: None,
                        error: Error::Internal(format!(
                            "the take of partition {partition} failed: {e}"
                        )),
                    }),
                )
            }
        };
        self.holdings.take_ended(partition);
        match result {
            Ok(taken) if !self.assigned.contains(&partition) => {
                // The assignment moved on while taking.
                self.release(partition, Some(taken.lease.epoch)).await;
                self.status.remove(partition);
            }
            Ok(taken) => self.start_worker(partition, taken),
            Err(NotTaken::Held(holder)) => {
                self.status.set(partition, State::Waiting(holder));
            }
            Err(NotTaken::Failed { epoch, error }) => match error.action() {
                Action::Retry | Action::Retake => {
                    tracing::warn!(partition, %error, "could not take the partition; trying again at the next heartbeat");
                    self.status.set(
                        partition,
                        State::Retrying {
                            what: "take",
                            error: error.to_string(),
                        },
                    );
                    if let Some(epoch) = epoch {
                        self.release(partition, Some(epoch)).await;
                    }
                }
                Action::Stop => self.stop(partition, epoch, &error).await,
            },
        }
    }

    /// Stops a free partition on an error retrying cannot fix (a take's, or
    /// a worker that panicked): says so (log and status), records it in
    /// `consumer_offsets` under the lease at `epoch` if one was taken, and
    /// keeps the partition `Stopped` ([`offsets::record_stop`]). A worker
    /// that stops on an error records the stop the same way itself
    /// (`Worker::run`), on its own connection, before its exit.
    pub(super) async fn stop(&mut self, partition: i32, epoch: Option<i64>, error: &Error) {
        let lease = epoch.map(|epoch| (self.member.id.as_str(), epoch));
        offsets::record_stop(
            &self.control,
            &self.status,
            &self.config,
            partition,
            lease,
            &error.to_string(),
        )
        .await;
        self.holdings.stopped(partition, epoch);
    }
}
