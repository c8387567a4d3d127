//! Drawing a [`Snapshot`]: a pure function from a snapshot and the view's
//! state (scroll position, key explorer, help) to the cells of a buffer,
//! so the same code draws the live screen, the `--once` text and the
//! frames the tests check.
//!
//! Everything is said in characters: states are words, the lag bar and
//! the events/s trend are block characters. Colour only repeats what the
//! words say, and is left out entirely under `NO_COLOR`.

use events::escape_for_terminal;
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table, Widget, Wrap};

use super::model::{KeyPlacement, PartitionState, Snapshot};

/// What the viewer has done: where the partitions table is scrolled to,
/// whether the key explorer or the help is open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// The first partition row shown.
    pub scroll: usize,
    /// The key typed into the explorer, when it is open.
    pub explorer: Option<String>,
    pub help: bool,
    /// Colour on (false under `NO_COLOR`).
    pub color: bool,
}

/// A key, as the view understands it (the terminal's events are mapped
/// to these by the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Up,
    Down,
    PageUp,
    PageDown,
    Home,
    End,
    Enter,
    Esc,
    Backspace,
    Char(char),
    /// Ctrl-C: quits whatever is open.
    Interrupt,
}

/// What a key asks of the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Redraw,
    Quit,
}

impl View {
    /// Applies `key`; `page` is how many partition rows the last frame showed.
    pub fn on_key(&mut self, key: Key, page: usize) -> Action {
        if key == Key::Interrupt {
            return Action::Quit;
        }
        if let Some(typed) = &mut self.explorer {
            match key {
                Key::Enter | Key::Esc => self.explorer = None,
                Key::Backspace => {
                    typed.pop();
                }
                Key::Char(c) if !c.is_control() => typed.push(c),
                _ => {}
            }
            return Action::Redraw;
        }
        if self.help {
            // Any key closes the help; q still quits.
            self.help = false;
            return if key == Key::Char('q') {
                Action::Quit
            } else {
                Action::Redraw
            };
        }
        let page = page.max(1);
        match key {
            Key::Char('q') | Key::Esc => return Action::Quit,
            Key::Char('/') => self.explorer = Some(String::new()),
            Key::Char('?') => self.help = true,
            Key::Up | Key::Char('k') => self.scroll = self.scroll.saturating_sub(1),
            Key::Down | Key::Char('j') => self.scroll = self.scroll.saturating_add(1),
            Key::PageUp => self.scroll = self.scroll.saturating_sub(page),
            Key::PageDown => self.scroll = self.scroll.saturating_add(page),
            Key::Home => self.scroll = 0,
            Key::End => self.scroll = usize::MAX,
            _ => {}
        }
        Action::Redraw
    }
}

/// What a frame showed, for the next key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drawn {
    /// Partition rows visible: one page.
    pub page: usize,
    /// The first row shown (the scroll position, clamped).
    pub scroll: usize,
}

/// Rows of the key explorer panel, borders included.
const EXPLORER_ROWS: u16 = 7;
/// Rebalance lines shown under the members.
const EVENT_ROWS: usize = 3;

/// The height that shows every partition, member and event at once: the
/// `--once` frame.
pub fn full_height(snapshot: &Snapshot, view: &View) -> u16 {
    let rows = 1 // title
        + snapshot.banners.len()
        + 2 // totals
        + 2 + snapshot.partitions.len().max(1) // title, header, rows
        + 2 + snapshot.members.len().max(1)
        + snapshot.events.len().min(EVENT_ROWS)
        + if view.explorer.is_some() { EXPLORER_ROWS as usize } else { 0 };
    u16::try_from(rows).unwrap_or(u16::MAX)
}

/// Draws `snapshot` into `area` of `buf`.
pub fn draw(snapshot: &Snapshot, view: &View, area: Rect, buf: &mut Buffer) -> Drawn {
    let styles = Styles::new(view.color);
    let events = snapshot.events.len().min(EVENT_ROWS);
    let banners = snapshot.banners.len().min(usize::from(area.height / 4));
    let explorer = if view.explorer.is_some() {
        EXPLORER_ROWS
    } else {
        0
    };
    // The partitions get what the rest leaves, and at least three rows;
    // the members at most a quarter of the screen.
    let fixed = 1 + banners as u16 + 2 + 2 + 2 + events as u16 + explorer;
    let members = (snapshot.members.len().max(1) as u16)
        .min((area.height / 4).max(1))
        .min(area.height.saturating_sub(fixed + 3).max(1));
    let [title, banner, totals, parts, members_area, explorer_area] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(banners as u16),
        Constraint::Length(2),
        Constraint::Min(3),
        Constraint::Length(2 + members + events as u16),
        Constraint::Length(explorer),
    ])
    .areas(area);

    draw_title(snapshot, view, title, buf, &styles);
    let lines: Vec<Line> = snapshot
        .banners
        .iter()
        .take(banners)
        .map(|b| Line::styled(format!("! {}", one_line(b)), styles.banner))
        .collect();
    Paragraph::new(lines).render(banner, buf);
    draw_totals(snapshot, totals, buf);
    let drawn = draw_partitions(snapshot, view, parts, buf, &styles);
    draw_members(snapshot, members_area, buf, &styles);
    if let Some(key) = &view.explorer {
        draw_explorer(snapshot, key, explorer_area, buf, &styles);
    }
    if view.help {
        draw_help(area, buf);
    }
    drawn
}

/// The cells of `buf` as text, one line per row, trailing spaces trimmed.
pub fn buffer_text(buf: &Buffer) -> String {
    let area = buf.area;
    let mut out = String::new();
    for y in area.top()..area.bottom() {
        let mut line = String::new();
        for x in area.left()..area.right() {
            line.push_str(buf[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

struct Styles {
    bold: Style,
    banner: Style,
    ok: Style,
    lagging: Style,
    stalled: Style,
    dim: Style,
}

impl Styles {
    fn new(color: bool) -> Self {
        let bold = Style::new().add_modifier(Modifier::BOLD);
        if !color {
            return Self {
                bold,
                banner: bold,
                ok: Style::new(),
                lagging: Style::new(),
                stalled: bold,
                dim: Style::new(),
            };
        }
        Self {
            bold,
            banner: bold.fg(Color::White).bg(Color::Red),
            ok: Style::new().fg(Color::Green),
            lagging: Style::new().fg(Color::Yellow),
            stalled: bold.fg(Color::Red),
            dim: Style::new().fg(Color::DarkGray),
        }
    }

    fn state(&self, state: PartitionState) -> Style {
        match state {
            PartitionState::Ok => self.ok,
            PartitionState::Lagging => self.lagging,
            PartitionState::Stalled | PartitionState::Stopped => self.stalled,
        }
    }
}

/// Text from the database or a member id, safe to print: control
/// characters shown escaped, never obeyed; one line.
fn one_line(s: &str) -> String {
    escape_for_terminal(s.as_bytes())
}

fn draw_title(snapshot: &Snapshot, view: &View, area: Rect, buf: &mut Buffer, styles: &Styles) {
    let title = format!(
        "foodpipe watch  topic {}  group {}  {} UTC",
        one_line(&snapshot.topic),
        one_line(&snapshot.group),
        snapshot.at.format("%H:%M:%S")
    );
    let hint = if view.explorer.is_some() {
        "Enter/Esc close"
    } else {
        "? help  q quit"
    };
    let width = usize::from(area.width);
    let used = title.chars().count();
    Paragraph::new(Line::styled(title, styles.bold)).render(area, buf);
    if used + hint.len() + 2 <= width {
        Paragraph::new(Line::from(hint).right_aligned()).render(area, buf);
    }
}

fn rate(r: f64) -> String {
    if r < 10.0 && r.fract() != 0.0 {
        format!("{r:.1}")
    } else {
        format!("{r:.0}")
    }
}

fn draw_totals(snapshot: &Snapshot, area: Rect, buf: &mut Buffer) {
    let first = format!(
        "lag {}  consumed {}/s  produced {}/s  partitions {}  members {}",
        snapshot.total_lag,
        rate(snapshot.consumed_rate),
        rate(snapshot.produced_rate),
        snapshot.partitions.len(),
        snapshot.members.iter().filter(|m| m.live).count(),
    );
    let mut second = format!("dead letters {}", snapshot.dead_letter_total);
    if !snapshot.dead_letters.is_empty() {
        let latest: Vec<String> = snapshot
            .dead_letters
            .iter()
            .map(|(p, o, kind)| format!("p{p}@{o} {}", one_line(kind)))
            .collect();
        second.push_str(&format!(" (latest {})", latest.join(", ")));
    }
    let attached = snapshot
        .projections
        .iter()
        .filter(|(_, state)| state == "attached")
        .count();
    second.push_str(&format!("  projections {attached}"));
    let filling: Vec<&str> = snapshot
        .projections
        .iter()
        .filter(|(_, state)| state != "attached")
        .map(|(name, _)| name.as_str())
        .collect();
    if !filling.is_empty() {
        second.push_str(&format!(" (filling {})", one_line(&filling.join(", "))));
    }
    second.push_str(&format!("  offset gaps {}", snapshot.gaps.total));
    if let Some(g) = snapshot.gaps.latest.first() {
        second.push_str(&format!(
            " (latest p{} {} {} -> {})",
            g.partition,
            one_line(&g.reason),
            g.stored_offset,
            g.reset_to
        ));
    }
    Paragraph::new(vec![Line::from(first), Line::from(second)]).render(area, buf);
}

/// A bar `width` cells long, filled in eighths for `value / max`; a
/// non-zero value shows at least a sliver.
fn bar(value: i64, max: i64, width: usize) -> String {
    const EIGHTHS: [char; 8] = [' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉'];
    if value <= 0 || max <= 0 {
        return String::new();
    }
    let eighths = ((value as f64 / max as f64) * (width * 8) as f64).ceil() as usize;
    let eighths = eighths.clamp(1, width * 8);
    let mut s = "█".repeat(eighths / 8);
    if !eighths.is_multiple_of(8) {
        s.push(EIGHTHS[eighths % 8]);
    }
    s
}

/// The last `width` rates as a sparkline scaled to `max`; `·` for none.
fn trend(history: &[f64], max: f64, width: usize) -> String {
    const LEVELS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let start = history.len().saturating_sub(width);
    history[start..]
        .iter()
        .map(|&r| {
            if r <= 0.0 || max <= 0.0 {
                '·'
            } else {
                let level = ((r / max) * 8.0).ceil() as usize;
                LEVELS[level.clamp(1, 8) - 1]
            }
        })
        .collect()
}

fn opt(v: Option<i64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn digits(values: impl Iterator<Item = Option<i64>>, header: &str) -> u16 {
    values
        .map(|v| opt(v).len())
        .chain([header.len()])
        .max()
        .unwrap_or(1) as u16
}

fn draw_partitions(
    snapshot: &Snapshot,
    view: &View,
    area: Rect,
    buf: &mut Buffer,
    styles: &Styles,
) -> Drawn {
    let [title, table] = Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(area);
    let parts = &snapshot.partitions;
    let page = usize::from(table.height.saturating_sub(1)).max(1);
    let scroll = view.scroll.min(parts.len().saturating_sub(page));
    let shown = parts.iter().skip(scroll).take(page);
    let last = (scroll + page).min(parts.len());
    let more = if parts.len() > page {
        format!(
            "  rows {}-{} of {} (arrows, PgUp/PgDn)",
            scroll + 1,
            last,
            parts.len()
        )
    } else {
        String::new()
    };
    Paragraph::new(Line::styled(format!("PARTITIONS{more}"), styles.bold)).render(title, buf);

    let wide = area.width >= 100;
    let (start_h, end_h, epoch_h) = if wide {
        ("LOG-START", "LOG-END", "EPOCH")
    } else {
        ("START", "END", "EP")
    };
    let bar_width: usize = if wide { 10 } else { 5 };
    let trend_width: usize = if wide { 16 } else { 8 };
    let max_lag = parts.iter().filter_map(|p| p.lag).max().unwrap_or(0);
    let max_rate = parts
        .iter()
        .flat_map(|p| p.history.iter().copied())
        .fold(0.0, f64::max);
    let widths = [
        Constraint::Length(digits(
            parts.iter().map(|p| Some(i64::from(p.partition))),
            "P",
        )),
        Constraint::Length(digits(parts.iter().map(|p| p.log_start), start_h)),
        Constraint::Length(digits(parts.iter().map(|p| p.log_end), end_h)),
        Constraint::Length(digits(parts.iter().map(|p| p.stored), "STORED")),
        Constraint::Length(digits(parts.iter().map(|p| p.lag), "LAG")),
        Constraint::Length(bar_width as u16),
        Constraint::Fill(1),
        Constraint::Length(digits(parts.iter().map(|p| Some(p.epoch)), epoch_h)),
        Constraint::Length(5),
        Constraint::Length(trend_width as u16),
        Constraint::Length(7),
    ];
    let right = |s: String| Cell::from(Line::from(s).right_aligned());
    let header = Row::new(vec![
        right("P".to_owned()),
        right(start_h.to_owned()),
        right(end_h.to_owned()),
        right("STORED".to_owned()),
        right("LAG".to_owned()),
        Cell::from(""),
        Cell::from("OWNER"),
        right(epoch_h.to_owned()),
        right("EV/S".to_owned()),
        Cell::from("TREND"),
        Cell::from("STATE"),
    ])
    .style(styles.bold);
    let rows: Vec<Row> = shown
        .map(|p| {
            let owner = match &p.owner {
                None => Span::styled("-", styles.dim),
                Some(o) if p.owner_live => Span::raw(one_line(o)),
                // An owner whose heartbeat stopped: still the lease holder.
                Some(o) => Span::raw(format!("{} (silent)", one_line(o))),
            };
            Row::new(vec![
                right(p.partition.to_string()),
                right(opt(p.log_start)),
                right(opt(p.log_end)),
                right(opt(p.stored)),
                right(opt(p.lag)),
                Cell::from(bar(p.lag.unwrap_or(0), max_lag, bar_width)),
                Cell::from(owner),
                right(p.epoch.to_string()),
                right(rate(p.rate)),
                Cell::from(trend(&p.history, max_rate, trend_width)),
                Cell::from(Span::styled(p.state.label(), styles.state(p.state))),
            ])
        })
        .collect();
    Widget::render(
        Table::new(rows, widths).header(header).column_spacing(1),
        table,
        buf,
    );
    Drawn { page, scroll }
}

fn draw_members(snapshot: &Snapshot, area: Rect, buf: &mut Buffer, styles: &Styles) {
    let events = snapshot.events.len().min(EVENT_ROWS) as u16;
    let [title, table, log] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(events),
    ])
    .areas(area);
    Paragraph::new(Line::styled(
        format!("MEMBERS  generation {}", snapshot.generation),
        styles.bold,
    ))
    .render(title, buf);
    let header =
        Row::new(vec!["MEMBER", "HOST", "PID", "HEARTBEAT", "OWNS", "STATE"]).style(styles.bold);
    let rows: Vec<Row> = if snapshot.members.is_empty() {
        vec![Row::new(vec![Cell::from(Span::styled(
            "none: no consume process is in this group",
            styles.dim,
        ))])]
    } else {
        snapshot
            .members
            .iter()
            .map(|m| {
                let age = format!(
                    "{:.1}s{}",
                    m.heartbeat_age,
                    if m.live { "" } else { " gone" }
                );
                Row::new(vec![
                    Cell::from(one_line(&m.id)),
                    Cell::from(one_line(&m.host)),
                    Cell::from(m.pid.to_string()),
                    Cell::from(Span::styled(
                        age,
                        if m.live { Style::new() } else { styles.stalled },
                    )),
                    Cell::from(m.owned.to_string()),
                    Cell::from(one_line(&m.state)),
                ])
            })
            .collect()
    };
    let widths = [
        Constraint::Fill(3),
        Constraint::Fill(1),
        Constraint::Length(7),
        Constraint::Length(10),
        Constraint::Length(4),
        Constraint::Fill(2),
    ];
    let widths: &[Constraint] = if snapshot.members.is_empty() {
        &[Constraint::Fill(1)]
    } else {
        &widths
    };
    Widget::render(
        Table::new(rows, widths.to_vec())
            .header(header)
            .column_spacing(1),
        table,
        buf,
    );
    let lines: Vec<Line> = snapshot
        .events
        .iter()
        .take(usize::from(events))
        .map(|e| Line::from(format!("rebalance: {}", one_line(e))))
        .collect();
    Paragraph::new(lines).render(log, buf);
}

fn draw_explorer(snapshot: &Snapshot, key: &str, area: Rect, buf: &mut Buffer, styles: &Styles) {
    let block = Block::new()
        .borders(Borders::ALL)
        .title(" key explorer: type a key, Enter or Esc closes ");
    let inner = block.inner(area);
    block.render(area, buf);
    let count = u32::try_from(snapshot.partitions.len()).unwrap_or(0);
    let label = |s: &str| Span::styled(format!("{s:<12}"), styles.bold);
    let mut lines = vec![Line::from(vec![
        label("key"),
        Span::raw(format!("{}_", one_line(key))),
    ])];
    match KeyPlacement::of(key.as_bytes(), count) {
        None => lines.push(Line::from("the partition count is not known yet")),
        Some(k) => {
            lines.push(Line::from(vec![
                label("murmur2"),
                Span::raw(format!("0x{:08x} ({})", k.murmur2 as u32, k.murmur2)),
            ]));
            lines.push(Line::from(vec![
                label("toPositive"),
                Span::raw(format!("0x{:08x} ({})", k.positive as u32, k.positive)),
            ]));
            lines.push(Line::from(vec![
                label(&format!("% {}", k.partitions)),
                Span::raw(format!("partition {}", k.partition)),
            ]));
            let owner = match snapshot.partition(k.partition) {
                Some(p) => format!(
                    "{} epoch {}, stored {}, log end {}",
                    p.owner.as_deref().map_or("nobody".to_owned(), one_line),
                    p.epoch,
                    opt(p.stored),
                    opt(p.log_end)
                ),
                None => "nobody".to_owned(),
            };
            lines.push(Line::from(vec![label("owner"), Span::raw(owner)]));
        }
    }
    Paragraph::new(lines).render(inner, buf);
}

const HELP: &str = "\
q, Esc          quit (the terminal is restored)
Up/Down, j/k    scroll the partitions one row
PgUp/PgDn       scroll one page; Home/End: first/last
/               key explorer: where a key goes
?               this help; any key closes it

START/END  log-start and log-end offsets on the broker
STORED     the group's next offset in PostgreSQL
LAG        END - STORED (END - START if nothing stored)
EV/S       records applied per second; TREND: the last ones
STATE      ok, lagging, stalled (lag and no live owner or
           no progress), stopped (by an error)";

fn draw_help(area: Rect, buf: &mut Buffer) {
    let height = (HELP.lines().count() as u16 + 2).min(area.height);
    let width = (HELP.lines().map(str::len).max().unwrap_or(0) as u16 + 4).min(area.width);
    let popup = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    };
    Clear.render(popup, buf);
    Paragraph::new(HELP)
        .wrap(Wrap { trim: false })
        .block(Block::new().borders(Borders::ALL).title(" help "))
        .render(popup, buf);
}

#[cfg(test)]
mod tests {
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
            text.starts_with(
                "foodpipe watch  topic food-orders  group order-processors  12:00:00 UTC"
            ),
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
}
