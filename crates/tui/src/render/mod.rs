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

mod tables;

use tables::{draw_explorer, draw_members, draw_partitions};

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
mod tests;
