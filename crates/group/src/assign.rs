//! Deterministic partition assignors.
//!
//! Every member of a group runs the assignor on the same inputs — the
//! sorted ids of the live members and the partition count — and so reaches
//! the same answer without talking to the others.
//!
//! # References
//!
//! - Kafka `RangeAssignor`: per topic, members sorted, partitions split into
//!   contiguous ranges, the first `partitions % members` members get one
//!   more.
//! - Kafka `RoundRobinAssignor`: partitions dealt to sorted members in turn.
//! - Kafka `StickyAssignor`: balanced, and moving as few partitions as
//!   possible from the previous assignment.

use std::collections::{BTreeMap, BTreeSet};

/// Which partitions each member owns: member id → sorted partitions.
pub type Assignment = BTreeMap<String, Vec<i32>>;

/// How partitions are dealt to members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Assignor {
    /// Contiguous ranges (Kafka's classic default).
    #[default]
    Range,
    /// One partition to each member in turn.
    RoundRobin,
    /// Balanced like the others, but keeps each member's previous
    /// partitions where it can, so a join or leave moves as few as needed.
    Sticky,
}

impl Assignor {
    pub fn as_str(self) -> &'static str {
        match self {
            Assignor::Range => "range",
            Assignor::RoundRobin => "round-robin",
            Assignor::Sticky => "sticky",
        }
    }

    /// Assigns `partitions` partitions to `members`. `previous` is the last
    /// assignment (only the sticky assignor looks at it). Every member
    /// appears in the result, possibly with no partitions.
    pub fn assign(self, members: &[String], partitions: u32, previous: &Assignment) -> Assignment {
        let members: Vec<&String> = members
            .iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut out: Assignment = members.iter().map(|m| ((*m).clone(), Vec::new())).collect();
        if members.is_empty() {
            return out;
        }
        let n = members.len() as u32;
        match self {
            Assignor::Range => {
                let per = partitions / n;
                let extra = partitions % n;
                let mut next = 0u32;
                for (i, m) in members.iter().enumerate() {
                    let count = per + u32::from((i as u32) < extra);
                    out.insert(
                        (*m).clone(),
                        (next..next + count).map(|p| p as i32).collect(),
                    );
                    next += count;
                }
            }
            Assignor::RoundRobin => {
                for p in 0..partitions {
                    if let Some(list) = out.get_mut(members[(p % n) as usize].as_str()) {
                        list.push(p as i32);
                    }
                }
            }
            Assignor::Sticky => {
                // Each member may keep up to its quota of its previous
                // partitions. The `partitions % n` quotas of one more go to
                // the members that held the most before (ties by id), which
                // keeps the most partitions where they are. Everything else
                // is dealt to whoever is short.
                let quota = sticky_quotas(&members, partitions, previous);
                let mut taken = BTreeSet::new();
                for m in &members {
                    let keep = previous.get(m.as_str()).cloned().unwrap_or_default();
                    let list = out.get_mut(m.as_str()).expect("member present");
                    for p in keep {
                        if (p as u32) < partitions
                            && (list.len() as u32) < quota[m.as_str()]
                            && taken.insert(p)
                        {
                            list.push(p);
                        }
                    }
                }
                let mut free = (0..partitions as i32).filter(|p| !taken.contains(p));
                for m in &members {
                    let list = out.get_mut(m.as_str()).expect("member present");
                    while (list.len() as u32) < quota[m.as_str()] {
                        match free.next() {
                            Some(p) => list.push(p),
                            None => break,
                        }
                    }
                    list.sort_unstable();
                }
            }
        }
        out
    }
}

/// How many partitions each member should hold under the sticky assignor.
fn sticky_quotas<'a>(
    members: &[&'a String],
    partitions: u32,
    previous: &Assignment,
) -> BTreeMap<&'a str, u32> {
    let n = members.len() as u32;
    let (per, extra) = (partitions / n, partitions % n);
    let held = |m: &str| {
        previous.get(m).map_or(0, |ps| {
            ps.iter().filter(|p| (**p as u32) < partitions).count()
        })
    };
    let mut by_held: Vec<&str> = members.iter().map(|m| m.as_str()).collect();
    by_held.sort_by(|a, b| held(b).cmp(&held(a)).then(a.cmp(b)));
    by_held
        .into_iter()
        .enumerate()
        .map(|(i, m)| (m, per + u32::from((i as u32) < extra)))
        .collect()
}

impl std::str::FromStr for Assignor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "range" => Ok(Assignor::Range),
            "round-robin" | "roundrobin" => Ok(Assignor::RoundRobin),
            "sticky" => Ok(Assignor::Sticky),
            other => Err(format!(
                "unknown assignor {other:?}: use range, round-robin or sticky"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn members(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| (*s).to_owned()).collect()
    }

    /// Range gives contiguous blocks, the first members one extra, as Kafka's RangeAssignor.
    #[test]
    fn range_matches_kafka() {
        let a = Assignor::Range.assign(&members(&["c", "a", "b"]), 7, &Assignment::new());
        assert_eq!(a["a"], vec![0, 1, 2]);
        assert_eq!(a["b"], vec![3, 4]);
        assert_eq!(a["c"], vec![5, 6]);
    }

    /// Round-robin deals partitions to sorted members in turn.
    #[test]
    fn round_robin_deals_in_turn() {
        let a = Assignor::RoundRobin.assign(&members(&["b", "a"]), 5, &Assignment::new());
        assert_eq!(a["a"], vec![0, 2, 4]);
        assert_eq!(a["b"], vec![1, 3]);
    }

    fn arb_members() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::btree_set("[a-z]{1,6}", 1..8).prop_map(|s| s.into_iter().collect())
    }

    fn arb_assignor() -> impl Strategy<Value = Assignor> {
        prop_oneof![
            Just(Assignor::Range),
            Just(Assignor::RoundRobin),
            Just(Assignor::Sticky)
        ]
    }

    fn check_valid(
        a: &Assignment,
        members: &[String],
        partitions: u32,
    ) -> Result<(), TestCaseError> {
        let mut owners = BTreeMap::new();
        for (m, ps) in a {
            prop_assert!(members.contains(m), "only members own partitions");
            for p in ps {
                prop_assert!(
                    owners.insert(*p, m.clone()).is_none(),
                    "partition {} owned twice",
                    p
                );
            }
        }
        prop_assert_eq!(
            owners.len() as u32,
            partitions,
            "every partition has an owner"
        );
        let counts: Vec<usize> = members
            .iter()
            .map(|m| a.get(m).map_or(0, Vec::len))
            .collect();
        let (min, max) = (
            counts.iter().min().copied().unwrap_or(0),
            counts.iter().max().copied().unwrap_or(0),
        );
        prop_assert!(max - min <= 1, "counts differ by at most one: {:?}", counts);
        Ok(())
    }

    proptest! {
        /// Every partition has exactly one owner and counts differ by at most one.
        #[test]
        fn assignments_are_complete_and_balanced(assignor in arb_assignor(), ms in arb_members(), partitions in 0u32..64) {
            let a = assignor.assign(&ms, partitions, &Assignment::new());
            check_valid(&a, &ms, partitions)?;
        }

        /// The result depends only on the inputs, not on the order members are listed in.
        #[test]
        fn assignments_are_deterministic(assignor in arb_assignor(), ms in arb_members(), partitions in 0u32..64) {
            let mut reversed = ms.clone();
            reversed.reverse();
            prop_assert_eq!(
                assignor.assign(&ms, partitions, &Assignment::new()),
                assignor.assign(&reversed, partitions, &Assignment::new())
            );
        }

        /// Sticky: after one member joins or leaves, no more partitions move than balance requires.
        #[test]
        fn sticky_moves_only_what_it_must(ms in arb_members(), partitions in 1u32..64, newcomer in "[A-Z]{1,4}", leave in any::<bool>()) {
            let before = Assignor::Sticky.assign(&ms, partitions, &Assignment::new());
            let mut after_members = ms.clone();
            if leave && ms.len() > 1 {
                after_members.pop();
            } else {
                after_members.push(newcomer);
            }
            let after = Assignor::Sticky.assign(&after_members, partitions, &before);
            check_valid(&after, &after_members, partitions)?;
            // A partition moves if its owner changed. The least any
            // balanced assignment can move: every partition of a leaver,
            // plus what staying members hold above their new share, where
            // the `partitions % n` larger shares go to those holding most.
            let owner = |a: &Assignment, p: i32| a.iter().find(|(_, ps)| ps.contains(&p)).map(|(m, _)| m.clone());
            let moved = (0..partitions as i32).filter(|p| owner(&before, *p) != owner(&after, *p)).count() as u32;
            let n = after_members.len() as u32;
            let (per, extra) = (partitions / n, partitions % n);
            let mut staying: Vec<u32> = after_members
                .iter()
                .map(|m| before.get(m).map_or(0, |ps| ps.len() as u32))
                .collect();
            staying.sort_unstable_by(|a, b| b.cmp(a));
            let over: u32 = staying
                .iter()
                .enumerate()
                .map(|(i, held)| held.saturating_sub(per + u32::from((i as u32) < extra)))
                .sum();
            let left: u32 = before
                .iter()
                .filter(|(m, _)| !after_members.contains(m))
                .map(|(_, ps)| ps.len() as u32)
                .sum();
            prop_assert_eq!(moved, over + left);
        }
    }
}
