//! The coordinator's side of a partition's tenure: starting its worker,
//! what a worker's exit means, releasing a lease, and the summary at the end.

use super::*;

impl Coordinator {
    pub(super) fn start_worker(&mut self, partition: i32, taken: Taken) {
        let Taken {
            lease,
            reader,
            start,
            latest,
        } = taken;
        tracing::info!(
            partition,
            epoch = lease.epoch,
            offset = start.next_offset,
            "took partition"
        );
        self.group_metrics.partition_taken();
        let target = self
            .targets
            .as_ref()
            .map(|t| t.end.get(&partition).copied().unwrap_or(0));
        let (tx, deliveries) = mpsc::channel(1);
        let (stop_tx, stop) = watch::channel(false);
        self.fetcher.add(Assigned {
            partition,
            reader,
            offset: start.next_offset,
            high_watermark: latest,
            target,
            worker: tx,
        });
        self.status.set(partition, State::Running);
        self.status
            .positions(partition, Some(start.next_offset), Some(latest));
        let bar = self.bars.add(indicatif::ProgressBar::new(
            target.unwrap_or(latest).max(0) as u64
        ));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "partition {prefix:>3} {bar:40} {pos}/{len} ({per_sec})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_prefix(partition.to_string());
        bar.set_position(start.next_offset.max(0) as u64);
        let worker = Worker {
            config: Arc::clone(&self.config),
            store: self.data.clone(),
            status: self.status.clone(),
            partition,
            lease: (self.member.id.clone(), lease.epoch),
            start,
            target,
            deliveries,
            room: self.fetcher.room(),
            stop,
            dead_letter_topic: self.dead_letter_topic.clone(),
            bar,
        };
        let handle = self.workers.spawn(worker.run());
        self.holdings.start_running(
            partition,
            Tenure {
                task: handle.id(),
                epoch: lease.epoch,
                stop: stop_tx,
            },
        );
    }

    pub(super) async fn on_worker_exit(
        &mut self,
        joined: std::result::Result<(Id, (i32, Exit, PartitionSummary)), tokio::task::JoinError>,
    ) {
        let (partition, exit, summary) = match joined {
            Ok((_, done)) => done,
            Err(e) => {
                // The worker panicked, so it recorded nothing: the stop is
                // said and recorded here, as for a take that cannot go on.
                let Some(partition) = self.holdings.worker_in(e.id()) else {
                    return;
                };
                let error =
                    Error::Internal(format!("the worker of partition {partition} failed: {e}"));
                self.fetcher.remove(partition);
                let epoch = self
                    .holdings
                    .worker_ended(partition, PartitionSummary::default());
                self.stop(partition, epoch, &error).await;
                return;
            }
        };
        self.fetcher.remove(partition);
        if matches!(exit, Exit::Released | Exit::CaughtUp)
            && let Some(mirror) = &self.mirror
        {
            mirror.released(partition, summary.next_offset);
        }
        let epoch = self.holdings.worker_ended(partition, summary);
        match exit {
            Exit::Released => {
                self.release(partition, epoch).await;
                if !self.assigned.contains(&partition) {
                    self.status.remove(partition);
                }
            }
            Exit::CaughtUp => {
                self.holdings.done_with(partition);
                self.status.set(partition, State::Done);
                self.release(partition, epoch).await;
            }
            Exit::LeaseLost => {
                tracing::warn!(
                    partition,
                    "lease lost: another member owns the partition now"
                );
                self.status.remove(partition);
                self.rebalance().await;
            }
            Exit::Retake(error) => {
                tracing::warn!(partition, %error, "taking the partition again");
                if self.assigned.contains(&partition) {
                    self.start_take(partition);
                } else {
                    self.release(partition, epoch).await;
                }
            }
            Exit::Stopped(_) => {
                // The worker recorded the stop; the lease stays ours so
                // the partition is not passed around to fail elsewhere.
                self.holdings.stopped(partition, epoch);
            }
        }
    }

    /// Releases a lease (at `epoch`, or whatever epoch a lease left by an
    /// earlier process of this member has). A failure is logged; the lease
    /// then shows as this member's without a worker, and the next
    /// rebalance releases it again.
    pub(super) async fn release(&self, partition: i32, epoch: Option<i64>) {
        if let Err(e) = self
            .control
            .release_lease(
                &self.config.group,
                &self.config.topic,
                partition,
                &self.member.id,
                epoch,
            )
            .await
        {
            tracing::warn!(partition, error = %e, "could not release the lease; trying again at the next heartbeat");
        }
    }

    /// `--until-caught-up`: has the group reached every target? Also true
    /// when every partition still short of its target is stopped (by any
    /// member): waiting longer would change nothing.
    pub(super) async fn until_finished(&self) -> bool {
        let Some(targets) = &self.targets else {
            return false;
        };
        let stored: BTreeMap<i32, i64> = match self
            .control
            .offsets(&self.config.group, &self.config.topic)
            .await
        {
            Ok(o) => o.into_iter().collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the group's offsets; checking again at the next heartbeat");
                return false;
            }
        };
        let short: Vec<i32> = targets
            .end
            .keys()
            .copied()
            .filter(|p| !targets.reached(*p, stored.get(p).copied()))
            .collect();
        let stopped_elsewhere = |p: &i32| {
            self.holdings.is_stopped(*p)
                || self
                    .leases
                    .iter()
                    .any(|l| l.partition == *p && l.stopped_error.is_some() && l.owner_live)
        };
        short.is_empty() || short.iter().all(stopped_elsewhere)
    }

    /// Stops every worker (each finishes its batch in hand), leaves the
    /// group and builds the summary.
    pub(super) async fn finish(&mut self, outcome: Outcome) -> Result<ConsumeSummary> {
        self.holdings.stop_all_workers();
        self.takes.abort_all();
        let mut last_offsets = self.status.committed_offsets();
        while let Some(joined) = self.workers.join_next_with_id().await {
            if let Ok((_, (partition, _, summary))) = joined {
                last_offsets.retain(|(p, _)| *p != partition);
                last_offsets.push((partition, summary.next_offset));
                self.holdings.worker_ended(partition, summary);
            }
        }
        if let Some(mirror) = self.mirror.take() {
            mirror.finish(last_offsets).await;
        }
        // Stopped partitions of the whole group: this member's, and those
        // other live members hold stopped. Read before leaving, which ends
        // this member's stops.
        let me = self.member.id.clone();
        let mut stopped = self.status.stopped();
        if let Ok(leases) = self.read_leases().await {
            for l in leases {
                if let (Some(error), Some(owner)) = (l.stopped_error, &l.owner)
                    && l.owner_live
                    && *owner != me
                    && !stopped.iter().any(|s| s.partition == l.partition)
                {
                    stopped.push(StoppedPartition {
                        partition: l.partition,
                        error: format!("{error} (member {owner})"),
                    });
                }
            }
        }
        stopped.sort_by_key(|s| s.partition);
        // Every member leaves on its way out, so its partitions move at
        // once rather than after the session timeout; only a member whose
        // id another process took over must not (the id is that process's
        // now).
        let replaced = matches!(&outcome, Outcome::Fatal(Error::Replaced(_)));
        if !replaced && let Err(e) = self.control.leave(&self.member).await {
            tracing::warn!(error = %e, "could not leave the group; it expires after the session timeout");
        }
        let interrupted = matches!(outcome, Outcome::Shutdown);
        if let Outcome::Fatal(error) = outcome {
            return Err(error);
        }
        let caught_up = self.targets.is_some() && !interrupted && stopped.is_empty();
        Ok(ConsumeSummary {
            topic: self.config.topic.clone(),
            group: self.config.group.clone(),
            member: self.member.id.clone(),
            partitions: self.holdings.take_summaries(),
            stopped,
            caught_up,
            interrupted,
        })
    }
}
