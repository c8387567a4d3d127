use super::*;
use crate::model::{MemberView, PartitionView};
use ratatui::Terminal;
use ratatui::backend::TestBackend;

fn partition(p: i32, stored: i64, end: i64, owner: &str) -> PartitionView {
    PartitionView {
        partition: p,
        log_start: Some(0),
        log_end: Some(end),
        stored: Some(stored),
        lag: Some(end - stored),
        owner: Some(owner.to_owned()),
        owner_live: true,
        epoch: 3,
        rate: 12.0,
        history: vec![0.0, 6.0, 12.0],
        state: if end > stored {
            PartitionState::Lagging
        } else {
            PartitionState::Ok
        },
        stopped: None,
    }
}

fn snapshot(partitions: usize) -> Snapshot {
    Snapshot {
        topic: "food-orders".to_owned(),
        group: "order-processors".to_owned(),
        at: chrono::DateTime::parse_from_rfc3339("2026-11-24T12:00:00Z")
            .expect("time")
            .with_timezone(&chrono::Utc),
        generation: 4,
        partitions: (0..partitions as i32)
            .map(|p| partition(p, 100 + i64::from(p), 110 + i64::from(p) * 2, "m-a"))
            .collect(),
        members: vec![MemberView {
            id: "m-a".to_owned(),
            host: "box".to_owned(),
            pid: 42,
            heartbeat_age: 0.4,
            live: true,
            owned: partitions,
            state: "stable".to_owned(),
        }],
        total_lag: 0,
        consumed_rate: 36.0,
        produced_rate: 40.0,
        dead_letter_total: 1,
        dead_letters: vec![(2, 17, "malformed_json".to_owned())],
        gaps: store::Gaps::default(),
        projections: vec![
            ("orders".to_owned(), "attached".to_owned()),
            ("history".to_owned(), "attached".to_owned()),
            ("by_hour".to_owned(), "filling".to_owned()),
        ],
        events: vec!["12:00:00 m-a joined".to_owned()],
        banners: vec![],
    }
}

fn render(s: &Snapshot, view: &View, width: u16, height: u16) -> (String, Drawn) {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("terminal");
    let mut drawn = None;
    terminal
        .draw(|f| drawn = Some(draw(s, view, f.area(), f.buffer_mut())))
        .expect("draw");
    (
        buffer_text(terminal.backend().buffer()),
        drawn.expect("drawn"),
    )
}

fn row<'a>(text: &'a str, partition: &str) -> Vec<&'a str> {
    text.lines()
        .map(str::split_whitespace)
        .map(Iterator::collect::<Vec<_>>)
        .find(|w| w.first() == Some(&partition) && w.len() >= 5)
        .unwrap_or_else(|| panic!("no row for partition {partition} in\n{text}"))
}

/// At 80x24 the frame names the topic and group and shows each column
/// of a partition row, the totals, the members and the rebalance log.
#[test]
fn a_frame_at_80x24_shows_every_part() {
    let (text, drawn) = render(&snapshot(3), &View::default(), 80, 24);
    assert!(
        text.starts_with("foodpipe watch  topic food-orders  group order-processors  12:00:00 UTC"),
        "{text}"
    );
    assert!(text.contains("MEMBERS  generation 4"));
    assert!(text.contains("START") && text.contains("STORED") && text.contains("TREND"));
    let r = row(&text, "1");
    assert_eq!(&r[..5], ["1", "0", "112", "101", "11"], "{text}");
    assert!(r.contains(&"m-a") && r.contains(&"lagging"), "{r:?}");
    assert!(text.contains("consumed 36/s  produced 40/s"), "{text}");
    assert!(text.contains("dead letters 1 (latest p2@17 malformed_json)"));
    assert!(text.contains("projections 2 (filling by_hour)"), "{text}");
    assert!(text.contains("rebalance: 12:00:00 m-a joined"));
    assert!(row(&text, "m-a").contains(&"stable"));
    assert!(drawn.page >= 3);
    assert!(text.lines().all(|l| l.chars().count() <= 80));
}

/// Hundreds of partitions scroll: the visible rows follow the scroll
/// position, and the title says which rows are shown.
#[test]
fn the_partitions_table_scrolls() {
    let s = snapshot(300);
    let (first, drawn) = render(&s, &View::default(), 80, 24);
    assert!(
        first.contains(&format!("rows 1-{} of 300", drawn.page)),
        "{first}"
    );
    let mut view = View::default();
    view.on_key(Key::PageDown, drawn.page);
    view.on_key(Key::Down, drawn.page);
    let (text, _) = render(&s, &view, 80, 24);
    row(&text, &(drawn.page + 1).to_string());
    assert!(
        !text.lines().any(|l| l.trim_start().starts_with("0 ")),
        "{text}"
    );
    view.on_key(Key::End, drawn.page);
    let (text, end) = render(&s, &view, 80, 24);
    assert_eq!(end.scroll, 300 - end.page);
    row(&text, "299");
}

/// The key explorer shows each step of the partitioner and the owner
/// of the partition the key lands on.
#[test]
fn the_key_explorer_shows_each_step() {
    let s = snapshot(6);
    let mut view = View::default();
    view.on_key(Key::Char('/'), 10);
    for c in "CUST-0042".chars() {
        view.on_key(Key::Char(c), 10);
    }
    let (text, _) = render(&s, &view, 80, 24);
    let k = KeyPlacement::of(b"CUST-0042", 6).expect("placed");
    assert!(text.contains("key         CUST-0042_"), "{text}");
    assert!(text.contains(&format!("murmur2     0x{:08x}", k.murmur2 as u32)));
    assert!(text.contains(&format!("toPositive  0x{:08x}", k.positive as u32)));
    assert!(text.contains(&format!("% 6         partition {}", k.partition)));
    assert!(text.contains("owner       m-a epoch 3"));
    // q is typed into the key, it does not quit.
    assert_eq!(view.on_key(Key::Char('q'), 10), Action::Redraw);
    assert_eq!(view.explorer.as_deref(), Some("CUST-0042q"));
    view.on_key(Key::Esc, 10);
    assert_eq!(view.explorer, None);
    assert_eq!(view.on_key(Key::Char('q'), 10), Action::Quit);
}

/// Without colour nothing is lost: states are words, a banner is
/// marked with `!`, and no cell carries a colour.
#[test]
fn no_color_frames_carry_no_colour_and_say_everything() {
    let mut s = snapshot(2);
    s.banners = vec!["broker: cannot reach any bootstrap server".to_owned()];
    s.partitions[0].state = PartitionState::Stalled;
    let mut terminal = Terminal::new(TestBackend::new(80, 24)).expect("terminal");
    terminal
        .draw(|f| {
            draw(&s, &View::default(), f.area(), f.buffer_mut());
        })
        .expect("draw");
    let buf = terminal.backend().buffer();
    assert!(
        buf.content()
            .iter()
            .all(|c| c.fg == Color::Reset && c.bg == Color::Reset)
    );
    let text = buffer_text(buf);
    assert!(
        text.contains("! broker: cannot reach any bootstrap server"),
        "{text}"
    );
    assert!(row(&text, "0").contains(&"stalled"));
    let coloured = View {
        color: true,
        ..View::default()
    };
    terminal
        .draw(|f| {
            draw(&s, &coloured, f.area(), f.buffer_mut());
        })
        .expect("draw");
    assert!(
        terminal
            .backend()
            .buffer()
            .content()
            .iter()
            .any(|c| c.bg == Color::Red)
    );
}

/// A record's control characters in a member id or dead-letter kind are
/// shown escaped, never sent to the terminal.
#[test]
fn text_from_the_database_is_escaped() {
    let mut s = snapshot(1);
    s.members[0].id = "evil\x1b[2J".to_owned();
    let (text, _) = render(&s, &View::default(), 100, 24);
    assert!(!text.contains('\x1b'));
    assert!(text.contains("evil\\x1b[2J"), "{text}");
}

/// The lag bar and the trend are proportional, in block characters.
#[test]
fn bars_and_trends_are_characters() {
    assert_eq!(bar(10, 10, 5), "█████");
    assert_eq!(bar(5, 10, 5), "██▌");
    assert_eq!(bar(1, 1000, 5), "▏");
    assert_eq!(bar(0, 10, 5), "");
    assert_eq!(trend(&[0.0, 1.0, 8.0], 8.0, 8), "·▁█");
    assert_eq!(trend(&[1.0, 2.0, 3.0], 3.0, 2), "▆█");
}

/// `full_height` fits every row: nothing scrolls in the --once frame.
#[test]
fn the_full_height_fits_every_partition() {
    let s = snapshot(40);
    let view = View::default();
    let (text, drawn) = render(&s, &view, 100, full_height(&s, &view));
    assert_eq!(drawn.page, 40);
    assert!(!text.contains("rows 1-"));
    row(&text, "39");
    assert!(text.contains("rebalance:"));
}
