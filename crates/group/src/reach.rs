//! Which members get partitions when some cannot reach the brokers.
//!
//! A member heartbeats to PostgreSQL, so the group sees it alive even when
//! its packets to the brokers are dropped: it would keep its partitions
//! and fold nothing. So each member says in its heartbeat whether it is
//! *cut off* (no broker answered it for `--broker-timeout`) and whether the
//! brokers are *answering* it (steadily, for a few seconds). The assignors
//! then deal the partitions among the members that are not cut off, but
//! only while at least one member is answering:
//!
//! - one member cut off, the others fine: its partitions go to the others
//!   at once, and come back when the brokers answer it again;
//! - every member cut off (the brokers are down, or the network between
//!   the group and the brokers): nobody is left out, nothing moves, and
//!   every partition waits where it is, saying why, until the brokers come
//!   back. Moving partitions between members that all cannot fetch would
//!   only churn leases.
//!
//! "Answering" needs a few seconds of answers in a row, so members healing
//! from a cut that hit them all do not take each other's partitions in
//! the second between the first of them and the last getting answers.

/// The members the assignor deals partitions to: `members` less those
/// `cut_off`, unless none of the members is `answering` (then all of
/// them). All three lists are member ids.
pub fn eligible(members: &[String], cut_off: &[String], answering: &[String]) -> Vec<String> {
    let someone_answers = members
        .iter()
        .any(|m| answering.contains(m) && !cut_off.contains(m));
    if !someone_answers {
        return members.to_vec();
    }
    members
        .iter()
        .filter(|m| !cut_off.contains(m))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    /// One member cut off while the others reach the brokers: it gets nothing, the others share everything.
    #[test]
    fn a_member_cut_off_alone_is_left_out() {
        let members = ids(&["a", "b", "c"]);
        assert_eq!(
            eligible(&members, &ids(&["b"]), &ids(&["a", "c"])),
            ids(&["a", "c"])
        );
    }

    /// Every member cut off: nobody is left out, so the assignment does not change and no lease moves.
    #[test]
    fn when_every_member_is_cut_off_nothing_moves() {
        let members = ids(&["a", "b", "c"]);
        assert_eq!(eligible(&members, &members, &[]), members);
        // Still "answering" from before the cut, but cut off now: not an
        // answering member either.
        assert_eq!(eligible(&members, &members, &members), members);
    }

    /// Members healing from a cut that hit them all: those not yet answering steadily do not make the others leave.
    #[test]
    fn healing_members_do_not_push_each_other_out() {
        let members = ids(&["a", "b", "c"]);
        // a heals first: no longer cut off, but not answering steadily yet.
        assert_eq!(eligible(&members, &ids(&["b", "c"]), &[]), members);
        // Once a answers steadily while b and c are still cut off, they go.
        assert_eq!(
            eligible(&members, &ids(&["b", "c"]), &ids(&["a"])),
            ids(&["a"])
        );
    }

    /// Nobody cut off: every member is dealt partitions.
    #[test]
    fn nobody_cut_off_changes_nothing() {
        let members = ids(&["a", "b"]);
        assert_eq!(eligible(&members, &[], &members), members);
        assert_eq!(eligible(&members, &[], &[]), members);
    }
}
