//! The three tables of the view: partitions, members and the key explorer.

use super::*;

pub(super) fn draw_partitions(
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

pub(super) fn draw_members(snapshot: &Snapshot, area: Rect, buf: &mut Buffer, styles: &Styles) {
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

pub(super) fn draw_explorer(
    snapshot: &Snapshot,
    key: &str,
    area: Rect,
    buf: &mut Buffer,
    styles: &Styles,
) {
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
