//! The rebalance decision: given what the assignor gives this member, what
//! it holds now and who holds each partition's lease, what to release,
//! what to take and what to wait for.
//!
//! It is a pure function so that every rule about moving partitions lives
//! in one place and can be property-tested; the coordinator in
//! `pipeline::consume` reads the inputs from PostgreSQL and carries the
//! actions out. The lease SQL (`store::membership`) applies the same rule
//! once more at the moment of taking, with liveness read in that same
//! statement, so a decision made on a view that is a moment old can never
//! take a partition from a live owner: at worst the take finds the lease
//! held and the partition waits for the next round.

use std::collections::{BTreeMap, BTreeSet};

/// Who holds a partition's lease, as the database said when it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// Nobody: never read by the group, released, or its owner left.
    Free,
    /// This member (an earlier process with the same member id included).
    Me,
    /// Another member whose heartbeat is within the session timeout.
    Live(String),
    /// Another member that is expired or silent past the session timeout.
    Dead(String),
}

/// Everything the decision looks at.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The partitions the assignor gives this member.
    pub assigned: &'a BTreeSet<i32>,
    /// The partitions this member works on now: running or stopped
    /// workers, and takes under way.
    pub held: &'a BTreeSet<i32>,
    /// Partitions this member has finished with (their `--until-caught-up`
    /// target is reached) and does not take again.
    pub done: &'a BTreeSet<i32>,
    /// The lease of each partition; a partition missing here is free.
    pub leases: &'a BTreeMap<i32, Holder>,
}

/// What to do, each list sorted by partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actions {
    /// Held partitions no longer assigned here: finish the batch in hand,
    /// then release the lease so their new owner can take them. Also the
    /// leases the database says are this member's but that it neither
    /// holds nor is assigned: left by an earlier process with the same
    /// member id (a restart), they would otherwise keep the partition
    /// from its new owner for ever, since the member id is live.
    pub release: Vec<i32>,
    /// Assigned partitions whose lease is free, ours, or held by a member
    /// that is no longer live.
    pub take: Vec<i32>,
    /// Assigned partitions still held by another live member (which will
    /// release them once it sees the same assignment), with that member.
    pub wait: Vec<(i32, String)>,
}

/// Decides what this member does with its partitions (see the module doc).
pub fn decide(inputs: Inputs<'_>) -> Actions {
    let stale_leases = inputs.leases.iter().filter(|(p, holder)| {
        **holder == Holder::Me && !inputs.held.contains(p) && !inputs.assigned.contains(p)
    });
    let mut release: BTreeSet<i32> = inputs.held.difference(inputs.assigned).copied().collect();
    release.extend(stale_leases.map(|(p, _)| *p));
    let mut actions = Actions {
        release: release.into_iter().collect(),
        ..Actions::default()
    };
    for &p in inputs.assigned {
        if inputs.held.contains(&p) || inputs.done.contains(&p) {
            continue;
        }
        match inputs.leases.get(&p).unwrap_or(&Holder::Free) {
            Holder::Free | Holder::Me | Holder::Dead(_) => actions.take.push(p),
            Holder::Live(other) => actions.wait.push((p, other.clone())),
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Assignor;
    use crate::assign::Assignment;
    use proptest::prelude::*;

    fn set(ps: &[i32]) -> BTreeSet<i32> {
        ps.iter().copied().collect()
    }

    /// Held but no longer assigned partitions, and leases left by an earlier process of this member, are released; assigned ones are taken unless a live member holds them.
    #[test]
    fn releases_takes_and_waits() {
        let leases: BTreeMap<i32, Holder> = [
            (1, Holder::Me),
            (7, Holder::Me),
            (2, Holder::Live("b".into())),
            (3, Holder::Dead("c".into())),
            (4, Holder::Free),
        ]
        .into_iter()
        .collect();
        let actions = decide(Inputs {
            assigned: &set(&[1, 2, 3, 4, 5, 6]),
            held: &set(&[0, 6]),
            done: &set(&[5]),
            leases: &leases,
        });
        assert_eq!(
            actions,
            Actions {
                release: vec![0, 7],
                take: vec![1, 3, 4],
                wait: vec![(2, "b".into())],
            }
        );
    }

    /// A simulated group: the database's leases and each member's state.
    #[derive(Debug, Default)]
    struct Sim {
        /// partition -> owner (None: free).
        owner: BTreeMap<i32, Option<String>>,
        live: BTreeSet<String>,
        /// member -> partitions it holds.
        held: BTreeMap<String, BTreeSet<i32>>,
    }

    impl Sim {
        fn holder(&self, p: i32, me: &str) -> Holder {
            match self.owner.get(&p).cloned().flatten() {
                None => Holder::Free,
                Some(o) if o == me => Holder::Me,
                Some(o) if self.live.contains(&o) => Holder::Live(o),
                Some(o) => Holder::Dead(o),
            }
        }

        /// One member's round: decide on `view` (its possibly stale member
        /// list), then act. Takes go through the same rule the lease SQL
        /// applies, with liveness as it is now. Returns false if a take
        /// came from a live owner's lease.
        fn round(&mut self, me: &str, view: &[String], partitions: u32) -> bool {
            let assignment: Assignment =
                Assignor::Range.assign(view, partitions, &Assignment::new());
            let assigned: BTreeSet<i32> = assignment
                .get(me)
                .map(|ps| ps.iter().copied().collect())
                .unwrap_or_default();
            let leases: BTreeMap<i32, Holder> = (0..partitions as i32)
                .map(|p| (p, self.holder(p, me)))
                .collect();
            let held = self.held.get(me).cloned().unwrap_or_default();
            let actions = decide(Inputs {
                assigned: &assigned,
                held: &held,
                done: &BTreeSet::new(),
                leases: &leases,
            });
            for p in actions.release {
                self.held.entry(me.to_owned()).or_default().remove(&p);
                if self.owner.get(&p).cloned().flatten().as_deref() == Some(me) {
                    self.owner.insert(p, None);
                }
            }
            let mut fair = true;
            for p in actions.take {
                // The SQL re-checks liveness at the moment of taking.
                match self.holder(p, me) {
                    Holder::Live(_) => {
                        // Refused by the SQL; the decision was on a stale view.
                        // That is allowed, but the take must not happen.
                    }
                    _ => {
                        if let Some(Some(prev)) = self.owner.get(&p)
                            && prev != me
                            && self.live.contains(prev)
                        {
                            fair = false;
                        }
                        self.owner.insert(p, Some(me.to_owned()));
                        self.held.entry(me.to_owned()).or_default().insert(p);
                    }
                }
            }
            // A held partition whose lease another member took is lost at
            // the next commit, and the member drops it.
            let lost: Vec<i32> = self
                .held
                .get(me)
                .map(|h| {
                    h.iter()
                        .copied()
                        .filter(|p| self.owner.get(p).cloned().flatten().as_deref() != Some(me))
                        .collect()
                })
                .unwrap_or_default();
            for p in lost {
                self.held.entry(me.to_owned()).or_default().remove(&p);
            }
            fair
        }
    }

    /// A membership change: a member joins, or one dies (SIGKILL: its
    /// leases stay until it is no longer live).
    #[derive(Debug, Clone)]
    enum Change {
        Join(u8),
        Die(u8),
    }

    fn arb_change() -> impl Strategy<Value = Change> {
        prop_oneof![
            (0u8..5).prop_map(Change::Join),
            (0u8..5).prop_map(Change::Die)
        ]
    }

    proptest! {
        /// After membership settles and every member has run a few rounds, every partition has exactly one live owner, the one the assignor names; and no take ever came from a live owner's lease, even while members decided on stale views.
        #[test]
        fn converges_to_one_live_owner_per_partition(
            partitions in 1u32..40,
            changes in prop::collection::vec(arb_change(), 1..12),
            order_seed in any::<u64>(),
        ) {
            let mut sim = Sim::default();
            let mut rng = order_seed;
            let mut next = || {
                // xorshift: a deterministic order of rounds from the seed.
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng
            };
            for change in changes {
                // Views lag: a member decides on the list before this change.
                let stale: Vec<String> = sim.live.iter().cloned().collect();
                match change {
                    Change::Join(m) => { sim.live.insert(format!("m{m}")); }
                    Change::Die(m) => {
                        let m = format!("m{m}");
                        sim.live.remove(&m);
                        sim.held.remove(&m);
                    }
                }
                let members: Vec<String> = sim.live.iter().cloned().collect();
                for _ in 0..members.len() {
                    if members.is_empty() { break; }
                    let m = &members[(next() % members.len() as u64) as usize];
                    let view = if next() % 2 == 0 { &stale } else { &members };
                    prop_assert!(sim.round(m, view, partitions), "a take came from a live owner");
                }
            }
            // Settled: everyone sees the same live members.
            let members: Vec<String> = sim.live.iter().cloned().collect();
            for _ in 0..3 {
                for m in &members {
                    prop_assert!(sim.round(m, &members, partitions), "a take came from a live owner");
                }
            }
            let assignment = Assignor::Range.assign(&members, partitions, &Assignment::new());
            for p in 0..partitions as i32 {
                if members.is_empty() {
                    break;
                }
                let holders: Vec<&String> = sim
                    .held
                    .iter()
                    .filter(|(_, h)| h.contains(&p))
                    .map(|(m, _)| m)
                    .collect();
                prop_assert_eq!(holders.len(), 1, "partition {} held by {:?}", p, holders);
                let owner = sim.owner.get(&p).cloned().flatten();
                prop_assert_eq!(owner.as_ref(), Some(holders[0]));
                prop_assert!(sim.live.contains(holders[0]));
                prop_assert!(assignment[holders[0]].contains(&p));
            }
        }
    }
}
