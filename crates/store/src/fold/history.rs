//! [`fold_history`]: applied events folded again, for `asof`.

use std::collections::{HashMap, HashSet};

use events::{OrderState, Status};

use super::{Source, SourceRecord, plan};

/// Folds applied events again, as `asof` does with history up to a time:
/// each order's events are steps of one chain of the state machine
/// (history holds only applied events), so folding them in lifecycle order
/// (created, paid, shipped, then delivered or cancelled) gives each order's
/// state after the last of them, whatever order they were applied in (two
/// partitions) and whatever their occurred_at says (a producer's clock). A
/// step whose predecessor is missing (it occurred after the time asked
/// for) is refused by the machine, as the fold would. Returns one state
/// per order.
pub fn fold_history(mut events: Vec<events::OrderEvent>) -> Vec<OrderState> {
    let rank = |e: &events::OrderEvent| match Status::after(&e.body) {
        Status::Pending => 0,
        Status::Paid => 1,
        Status::Shipped => 2,
        Status::Delivered | Status::Cancelled => 3,
    };
    events.sort_by_key(|e| (rank(e), e.occurred_at));
    let records: Vec<SourceRecord> = events
        .into_iter()
        .enumerate()
        .map(|(i, e)| SourceRecord {
            offset: i as i64,
            timestamp: e.occurred_at,
            key: None,
            value: None,
            headers: Vec::new(),
            event: Ok(e),
        })
        .collect();
    let source = Source {
        topic: "history",
        partition: 0,
        incarnation: 0,
    };
    plan(source, &records, &HashSet::new(), HashMap::new())
        .view
        .into_iter()
        .map(|c| c.state)
        .collect()
}
