//! One fetch round: the request for the ready partitions, and what each
//! partition's answer becomes (a delivery, a backoff, a strike).

use super::*;

impl Fetcher {
    /// Fetches once for the `ready` partitions and delivers the results.
    /// Returns false when the coordinator is gone.
    pub(super) async fn fetch_round(&mut self, mut ready: Vec<i32>) -> bool {
        self.round = self.round.wrapping_add(1);
        // Least recently served first: a broker fills a round's bytes in
        // request order (and Tansu lets the first partition take them all,
        // whatever its own limit), so the partition waiting longest for
        // records must come first, or it may never get any.
        least_recently_served_first(&mut ready, &self.served);
        let round_bytes = (self.config.max_inflight_bytes / 2).max(1024);
        let share = self.config.fetch_max_bytes.max(1024) as usize;
        // A round of busy partitions names only as many as its bytes can be
        // expected to fill (lag times the record size seen so far, at most
        // a partition's share): naming more adds nothing to the answer and
        // costs the broker a lookup each (Tansu caps an answer at 5 MiB and
        // still looks up every partition named). The rotation gives each
        // its turn.
        if ready
            .iter()
            .all(|p| self.slots.get(p).is_some_and(Slot::busy))
        {
            let mut expected = 0usize;
            ready.retain(|p| {
                let fits = expected < round_bytes;
                if let Some(slot) = self.slots.get(p) {
                    let lag = (slot.high_watermark - slot.offset).max(1) as usize;
                    expected += (lag.saturating_mul(self.record_size)).min(share);
                }
                fits
            });
        }
        // Long-poll only when no owned partition has records waiting: a
        // round must not sit in the broker's wait while a busy partition
        // (not in this round because its worker is full) gets room.
        let busy = self.slots.values().any(Slot::busy);
        let idle_wait = self.idle_wait();
        let max_wait = if busy { Duration::ZERO } else { idle_wait };
        // The round's bytes, reserved before it is sent: half the budget
        // (the other half holds batches waiting to be applied). Each
        // partition may bring up to --fetch-max-bytes of it; the broker
        // fills partitions in request order until the round's bytes are
        // used, and the rotation above makes that fair over rounds. Large
        // batches for a few partitions beat small ones for all: each batch
        // is one transaction.
        let reserve = (share * ready.len()).min(round_bytes);
        let permit = tokio::select! {
            permit = Arc::clone(&self.budget).acquire_many_owned(reserve as u32) => match permit {
                Ok(p) => p,
                Err(_) => return false,
            },
            command = self.commands.recv() => {
                // Something changed while waiting for budget: start over.
                return match command {
                    Some(c) => { self.apply(c); true }
                    None => false,
                };
            }
        };
        let requests: Vec<(i32, i64, i32)> = ready
            .iter()
            .filter_map(|p| self.slots.get(p).map(|s| (*p, s.offset, share as i32)))
            .collect();
        let started = Instant::now();
        let results = self
            .topic
            .fetch_many(&requests, Some(reserve as i32), max_wait)
            .await;
        // An answer, even an error code, is a broker reaching this member.
        if results.iter().any(|(_, r)| {
            r.as_ref()
                .map_or_else(kafka::Error::broker_answered, |_| true)
        }) {
            self.brokers.fetch_answered();
        }
        let mut permit = Some(permit);
        let mut progress = false;
        let alone = requests.len() == 1;
        for ((partition, result), &(_, from_offset, _)) in results.into_iter().zip(&requests) {
            let Some(slot) = self.slots.get_mut(&partition) else {
                continue; // Removed while fetching.
            };
            if slot.offset != from_offset {
                continue;
            }
            match result {
                Ok(fetched) => {
                    slot.alone = false;
                    slot.strikes = 0;
                    if slot.retry_at.take().is_some() {
                        slot.backoff = Backoff::new(self.config.max_backoff);
                        self.status.recover(partition, "fetch");
                    }
                    slot.high_watermark = fetched.high_watermark;
                    self.status
                        .positions(partition, None, Some(fetched.high_watermark));
                    let high_watermark = fetched.high_watermark;
                    let mut records = fetched.records;
                    // Past the whole batches fetched, transaction markers
                    // and aborted records included, never past the target.
                    let mut next_offset = fetched.next_offset;
                    if let Some(t) = slot.target {
                        records.retain(|r| r.offset < t);
                        next_offset = next_offset.min(t);
                    }
                    if next_offset <= from_offset {
                        if let Some(corrupt) = fetched.corrupt {
                            let at = Position {
                                from_offset,
                                high_watermark,
                                target: slot.target,
                            };
                            let delivery = corrupt_delivery(&self.config, partition, corrupt, at);
                            if let Delivery::Batch(b) = &delivery {
                                slot.offset = b.next_offset;
                            } else {
                                // The worker stops the partition.
                                slot.target = Some(from_offset);
                            }
                            let _ = slot.worker.try_send(delivery);
                            progress = true;
                        } else if from_offset > high_watermark {
                            let _ = slot.worker.try_send(Delivery::PastLogEnd {
                                offset: from_offset,
                                high_watermark,
                            });
                            // The worker ends this tenure; nothing more to fetch.
                            slot.target = Some(from_offset);
                        }
                        continue;
                    }
                    progress = true;
                    self.last_records = Some(Instant::now());
                    self.served.insert(partition, self.round);
                    let bytes: usize = records.iter().map(record_bytes).sum();
                    if let Some(per_record) = bytes.checked_div(records.len()) {
                        self.record_size = (self.record_size * 7 + per_record) / 8;
                    }
                    let share = permit.as_mut().and_then(|p| {
                        let n = bytes.min(p.num_permits());
                        if n == p.num_permits() {
                            None
                        } else {
                            p.split(n)
                        }
                    });
                    // The last batch of a round takes what is left whole.
                    let share = share.or_else(|| permit.take());
                    // A round that brought only markers (or aborted
                    // records) still moves the stored offset past them.
                    let batch = Fetched {
                        from_offset,
                        next_offset,
                        high_watermark,
                        fetched: records,
                        records: Vec::new(),
                        started,
                        _permit: share,
                    };
                    // Only ready partitions (with room) were fetched, and
                    // only the fetcher sends, so this does not block.
                    if slot.worker.try_send(Delivery::Batch(batch)).is_ok() {
                        slot.offset = next_offset;
                    }
                }
                Err(error) if error.kind() == kafka::ErrorKind::Transient => {
                    let delay = slot.backoff.next_delay();
                    slot.retry_at = Some(tokio::time::Instant::now() + delay);
                    self.status.set(
                        partition,
                        State::Retrying {
                            what: "fetch",
                            error: error.to_string(),
                        },
                    );
                    crate::observe::PartitionMetrics::new(
                        &self.config.group,
                        &self.config.topic,
                        partition,
                    )
                    .retry("fetch");
                    tracing::warn!(partition, offset = from_offset, %error, "fetch failed; retrying in {delay:?}");
                    // Lag stays known while fetches fail: ask ListOffsets.
                    // Its answer also tells whether the broker is up.
                    // Bounded: a broker that does not answer at all must
                    // not hold the fetcher for a whole request timeout per
                    // partition of the round.
                    let asked = tokio::time::timeout(
                        super::super::brokers::PROBE_TIMEOUT,
                        self.topic.offset(partition, kafka::OffsetAt::Latest),
                    );
                    let broker_answers = match asked.await {
                        Ok(Ok(end)) => {
                            self.status.positions(partition, None, Some(end));
                            true
                        }
                        _ => false,
                    };
                    if strikes_against_partition(alone, broker_answers, &error) {
                        slot.strikes += 1;
                    }
                    slot.alone = true;
                    if slot.strikes >= STRIKES {
                        let _ = slot.worker.try_send(Delivery::Broken {
                            offset: from_offset,
                            attempts: slot.strikes,
                            error,
                        });
                        self.slots.remove(&partition);
                    }
                }
                Err(error) => {
                    let _ = slot.worker.try_send(Delivery::Failed(error));
                    self.slots.remove(&partition);
                }
            }
        }
        tracing::debug!(
            partitions = requests.len(),
            wait_ms = max_wait.as_millis() as u64,
            elapsed_ms = started.elapsed().as_millis() as u64,
            progress,
            "fetch round"
        );
        // A round that brought nothing back: do not spin. Wait until a
        // worker takes a batch (a busy partition gets room), or a moment
        // (the broker may answer an idle long poll at once).
        if !progress && started.elapsed() < idle_wait / 4 {
            let pause = if busy {
                Duration::from_millis(10)
            } else {
                idle_wait / 4
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = self.room.notified() => {}
            }
        }
        true
    }
}
