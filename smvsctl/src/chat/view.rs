//! Drawing the chat: a pure function of [`App`] onto a ratatui frame.
//!
//! ```text
//!  ☎ bob is calling (video): a answer · d decline                   (only while a call rings)
//!  ┌ chats ────────┐┌ bob · disappearing 1d ───────────────────────┐
//!  │> bob     2 new││──────── Tuesday 1 December 2026 ────────     │
//!  │  carol        ││09:14 bob: see you at eight                   │
//!  │! dave         ││09:15 me: fine ✓✓ delivered                   │
//!  └───────────────┘└──────────────────────────────────────────────┘
//!  ┌ to bob: Enter sends · Alt-Enter new line · Esc ── 12 B of 64 KiB ┐
//!  │hello_                                                          │
//!  └────────────────────────────────────────────────────────────────┘
//!  sent                                                  (the last notice)
//!  i write · ↑↓ choose · x delete · v verify · c call · ? help · q quit
//! ```
//!
//! Every state is a word or a symbol as well as a colour; with `NO_COLOR` the colours go and
//! the words stay. Peer text is drawn through [`text::visible`] only.

use chrono::{Local, TimeZone};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph};
use ratatui::Frame;
use smvs_schema::MAX_TEXT_BYTES;

use super::app::{App, Confirm, Focus, Overlay, Prompt};
use super::text;
use crate::client::{Integrity, MessageStatus, MessageView};
use crate::output;

/// Lines of one message shown at most; the rest is summed up in one line.
pub const MAX_MESSAGE_LINES: usize = 40;
/// Lines the compose box grows to.
const COMPOSE_LINES: usize = 5;

/// Styles, without colour under `NO_COLOR`.
struct Theme {
    colour: bool,
}

impl Theme {
    fn fg(&self, colour: Color) -> Style {
        if self.colour {
            Style::new().fg(colour)
        } else {
            Style::new()
        }
    }
    fn warning(&self) -> Style {
        self.fg(Color::Red).add_modifier(Modifier::BOLD)
    }
    fn dim(&self) -> Style {
        if self.colour {
            Style::new().add_modifier(Modifier::DIM)
        } else {
            Style::new()
        }
    }
    fn selected(&self) -> Style {
        Style::new().add_modifier(Modifier::REVERSED)
    }
    fn banner(&self) -> Style {
        self.fg(Color::Yellow)
            .add_modifier(Modifier::BOLD | Modifier::REVERSED)
    }
    fn me(&self) -> Style {
        self.fg(Color::Cyan).add_modifier(Modifier::BOLD)
    }
    fn peer(&self) -> Style {
        self.fg(Color::Green).add_modifier(Modifier::BOLD)
    }
}

pub fn draw(frame: &mut Frame, app: &App) {
    let theme = Theme { colour: app.colour };
    let area = frame.area();
    app.screen.set((area.width, area.height));
    let compose_rows = compose_rows(app, area.width.saturating_sub(2) as usize);
    let banner = u16::from(!app.ringing.is_empty());
    let call_line = if app.call.is_some() { 2 } else { 0 };
    let [banner_area, call_area, main, compose, notice, help] = Layout::vertical([
        Constraint::Length(banner),
        Constraint::Length(call_line),
        Constraint::Min(3),
        Constraint::Length(compose_rows as u16 + 2),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_banner(frame, app, &theme, banner_area);
    draw_call(frame, app, &theme, call_area);
    let list_width = (area.width / 4).clamp(14, 28);
    let [list, conversation] =
        Layout::horizontal([Constraint::Length(list_width), Constraint::Min(10)]).areas(main);
    draw_list(frame, app, &theme, list);
    draw_conversation(frame, app, &theme, conversation);
    draw_compose(frame, app, &theme, compose);
    draw_notice(frame, app, &theme, notice);
    draw_help_line(frame, app, &theme, help);
    if let Some(overlay) = &app.overlay {
        draw_overlay(frame, &theme, overlay, area);
    }
}

fn draw_banner(frame: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let Some(call) = app.ringing.first() else {
        return;
    };
    let kind = if call.video { "video" } else { "audio" };
    let more = match app.ringing.len() {
        1 => String::new(),
        n => format!(" (+{} more ringing)", n - 1),
    };
    let first = if app.focus == Focus::Compose {
        "Esc, then "
    } else {
        ""
    };
    let line = format!(
        "☎ RINGING: {} is calling ({kind}): {first}a answer · d decline{more}",
        call.peer
    );
    frame.render_widget(
        Paragraph::new(text::truncate(&line, area.width as usize)).style(theme.banner()),
        area,
    );
}

fn draw_call(frame: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let Some(call) = &app.call else {
        return;
    };
    let (first, second) = match &call.since {
        Some(since) => {
            let secs = since.elapsed().as_secs();
            let first = format!(
                "☎ IN CALL with {} {:02}:{:02} · {} · e hang up · m mute",
                call.peer,
                secs / 60,
                secs % 60,
                if call.muted { "MIC MUTED" } else { "mic on" }
            );
            let second = match &call.stats {
                Some(s) => call_figures(call, s),
                None => "  connecting…".to_string(),
            };
            (first, second)
        }
        None if call.outgoing => (
            format!("☎ CALLING {}… · e hang up", call.peer),
            "  ringing at their devices".to_string(),
        ),
        None => (
            format!("☎ ANSWERING {}… · e hang up", call.peer),
            "  setting up the media".to_string(),
        ),
    };
    let style = theme.fg(Color::Green).add_modifier(Modifier::BOLD);
    let width = area.width as usize;
    frame.render_widget(
        Paragraph::new(vec![
            Line::styled(text::truncate(&first, width), style),
            Line::styled(text::truncate(&second, width), theme.fg(Color::Green)),
        ]),
        area,
    );
}

/// The call's figures: what we send, what arrives, loss and round trip.
fn call_figures(call: &super::app::OurCall, s: &smvs_media::CallStats) -> String {
    let mut parts = Vec::new();
    if call.video {
        parts.push(format!(
            "{}x{} · {:.0} fps",
            call.size.0, call.size.1, s.video_fps_decoded
        ));
    }
    parts.push(format!(
        "↑{:.0} ↓{:.0} kbit/s",
        s.bitrate_sent_kbps, s.bitrate_received_kbps
    ));
    let lost = (s.video.packets_lost.max(0) + s.audio.packets_lost.max(0)) as f64;
    let got = (s.video.packets_received + s.audio.packets_received) as f64;
    let loss = if lost + got > 0.0 {
        100.0 * lost / (lost + got)
    } else {
        0.0
    };
    parts.push(format!("loss {loss:.1}%"));
    parts.push(match s.rtt_ms {
        Some(rtt) => format!("rtt {rtt:.0} ms"),
        None => "rtt -".to_string(),
    });
    format!("  {}", parts.join(" · "))
}

fn bordered<'a>(title: Line<'a>, focused: bool, theme: &Theme) -> Block<'a> {
    let block = Block::bordered().title(title);
    if focused {
        block.border_style(theme.fg(Color::Cyan).add_modifier(Modifier::BOLD))
    } else {
        block.border_style(theme.dim())
    }
}

/// The markers of a conversation in the list: `!` key changed, `?` request, `x` blocked.
fn markers(app: &App, peer: &smvs_schema::Username) -> &'static str {
    match app.contact(peer) {
        Some(c) if c.key_changed => "!",
        Some(c) if c.blocked => "x",
        Some(c) if c.request => "?",
        _ => " ",
    }
}

fn draw_list(frame: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let focused = app.focus == Focus::List && app.overlay.is_none();
    let unread_total: u32 = app.conversations.iter().map(|c| c.unread).sum();
    let title = if unread_total > 0 {
        format!(" chats ({unread_total} new) ")
    } else {
        " chats ".to_string()
    };
    let block = bordered(Line::from(title), focused, theme);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let width = inner.width as usize;
    let rows = inner.height as usize;
    if app.conversations.is_empty() {
        frame.render_widget(
            Paragraph::new(vec![
                Line::from("no chats yet"),
                Line::from("n: write to"),
                Line::from("someone"),
            ])
            .style(theme.dim()),
            inner,
        );
        return;
    }
    // Keep the selected row in view.
    let first = app.selected.saturating_sub(rows.saturating_sub(1));
    let lines: Vec<Line> = app
        .conversations
        .iter()
        .enumerate()
        .skip(first)
        .take(rows)
        .map(|(i, c)| {
            let chosen = if i == app.selected { ">" } else { " " };
            let unread = if c.unread > 0 {
                format!(" {} new", c.unread)
            } else {
                String::new()
            };
            let name_width = width.saturating_sub(2 + text::width(&unread));
            let name = text::truncate(c.peer.as_str(), name_width);
            let pad = width.saturating_sub(2 + text::width(&name) + text::width(&unread));
            let mut spans = vec![
                Span::raw(chosen),
                Span::styled(markers(app, &c.peer), theme.warning()),
                Span::raw(name),
                Span::raw(" ".repeat(pad)),
            ];
            if !unread.is_empty() {
                spans.push(Span::styled(
                    unread,
                    theme.fg(Color::Yellow).add_modifier(Modifier::BOLD),
                ));
            }
            let line = Line::from(spans);
            if i == app.selected {
                line.style(theme.selected())
            } else {
                line
            }
        })
        .collect();
    frame.render_widget(Paragraph::new(lines), inner);
}

fn conversation_title(app: &App) -> String {
    let Some(open) = &app.open else {
        return " no chat open ".to_string();
    };
    let mut parts = vec![open.peer.to_string()];
    if let Some(c) = app.contact(&open.peer) {
        if c.key_changed {
            parts.push("KEY CHANGED".into());
        }
        if c.blocked {
            parts.push("blocked".into());
        }
        if c.request {
            parts.push("request".into());
        }
    }
    if let Some(selected) = open.selected {
        // Where the chosen message is in the whole conversation (the host's count).
        let total = app
            .conversations
            .iter()
            .find(|c| c.peer == open.peer)
            .map_or(open.messages.len(), |c| c.messages as usize);
        let from_end = open.messages.len() - selected;
        parts.push(format!(
            "#{} of {total}",
            total.saturating_sub(from_end) + 1
        ));
    }
    let expire = app.expire_seconds(&open.peer);
    if expire > 0 {
        parts.push(format!("disappearing {}", output::human_duration(expire)));
    }
    format!(" {} ", parts.join(" · "))
}

fn draw_conversation(frame: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let focused = app.focus == Focus::Messages && app.overlay.is_none();
    let block = bordered(Line::from(conversation_title(app)), focused, theme);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let Some(open) = &app.open else {
        let hint = if app.conversations.is_empty() {
            "n: start a chat with a username · ? help"
        } else {
            "Enter: open the chosen chat · n: a new one · ? help"
        };
        frame.render_widget(Paragraph::new(hint).style(theme.dim()), inner);
        return;
    };
    let width = inner.width as usize;
    let mut rows = inner.height as usize;
    let mut top: Vec<Line> = Vec::new();
    if let Some(contact) = app.contact(&open.peer) {
        if contact.key_changed {
            let warning = format!(
                "⚠ WARNING: {}'s identity key changed. This may be a new phone, or someone \
                 in the middle. Sending is refused until you compare the safety number: press v.",
                open.peer
            );
            for piece in text::wrap(&warning, width) {
                top.push(Line::styled(
                    piece,
                    theme.warning().add_modifier(Modifier::REVERSED),
                ));
            }
        } else if contact.request {
            let hint = format!(
                "{} is not in your contacts: their messages are held. Reply to accept, b to \
                 block, D to delete.",
                open.peer
            );
            for piece in text::wrap(&hint, width) {
                top.push(Line::styled(piece, theme.fg(Color::Yellow)));
            }
        }
    }
    rows = rows.saturating_sub(top.len());
    let body = message_lines(app, theme, open, width, rows);
    let mut lines = top;
    // The newest message sits on the bottom row, as in every chat.
    lines.extend(std::iter::repeat_n(
        Line::raw(""),
        rows.saturating_sub(body.len()),
    ));
    lines.extend(body);
    frame.render_widget(Paragraph::new(lines), inner);
}

/// The lines of the open conversation that fit in `rows`, ending with the selected message (or
/// the newest).
fn message_lines<'a>(
    app: &App,
    theme: &Theme,
    open: &'a super::app::Open,
    width: usize,
    rows: usize,
) -> Vec<Line<'a>> {
    if open.messages.is_empty() {
        return vec![Line::styled(
            "no messages yet: press i to write",
            theme.dim(),
        )];
    }
    let last = open.selected.unwrap_or(open.messages.len() - 1);
    let mut blocks: Vec<Vec<Line>> = Vec::new();
    let mut used = 0;
    let mut i = last as isize;
    while i >= 0 && used < rows {
        let index = i as usize;
        let m = &open.messages[index];
        let mut block = Vec::new();
        let day = local_day(m.time);
        let earlier_day = index
            .checked_sub(1)
            .map(|j| local_day(open.messages[j].time));
        if earlier_day.as_ref() != Some(&day) && (index > 0 || !open.more) {
            block.push(day_separator(&day, width, theme));
        }
        block.extend(message_block(
            app,
            theme,
            m,
            width,
            open.selected == Some(index),
        ));
        used += block.len();
        blocks.push(block);
        i -= 1;
    }
    if i < 0 && open.more && used < rows {
        blocks.push(vec![Line::styled(
            "↑ older messages: k or ↑ reads them",
            theme.dim(),
        )]);
    }
    let mut lines: Vec<Line> = blocks.into_iter().rev().flatten().collect();
    // The newest lines stay; what does not fit at the top is cut.
    if lines.len() > rows {
        lines.drain(..lines.len() - rows);
    }
    lines
}

fn local_day(unix_ms: i64) -> String {
    match Local.timestamp_millis_opt(unix_ms).single() {
        Some(t) => t.format("%A %-d %B %Y").to_string(),
        None => "?".to_string(),
    }
}

pub fn local_time(unix_ms: i64) -> String {
    match Local.timestamp_millis_opt(unix_ms).single() {
        Some(t) => t.format("%H:%M").to_string(),
        None => "--:--".to_string(),
    }
}

fn day_separator<'a>(day: &str, width: usize, theme: &Theme) -> Line<'a> {
    let label = format!(" {day} ");
    let side = width.saturating_sub(text::width(&label)) / 2;
    Line::styled(
        format!("{}{label}{}", "─".repeat(side), "─".repeat(side)),
        theme.dim(),
    )
}

/// The status of one of our messages, as a symbol and a word.
pub fn status_mark(m: &MessageView) -> Option<String> {
    Some(match m.status {
        MessageStatus::Queued => "◷ queued".to_string(),
        MessageStatus::Sent => "✓ sent".to_string(),
        MessageStatus::Delivered => "✓✓ delivered".to_string(),
        MessageStatus::Failed => match output::failure_text(m) {
            Some(why) => format!("✗ failed: {why}"),
            None => "✗ failed".to_string(),
        },
        // Held until a changed key is accepted, or a request answered: the chat's header says
        // which.
        MessageStatus::Held => "⏸ held".to_string(),
        MessageStatus::Received => return None,
    })
}

/// Where a message's order is in doubt, said above it.
pub fn integrity_mark(m: &MessageView) -> Option<&'static str> {
    match m.integrity {
        Integrity::Gap => Some("⚠ gap: a message sent before this one never arrived"),
        Integrity::OutOfOrder => Some("⚠ out of order: this message arrived late"),
        Integrity::Ok | Integrity::Unchecked => None,
    }
}

fn message_block<'a>(
    app: &App,
    theme: &Theme,
    m: &MessageView,
    width: usize,
    selected: bool,
) -> Vec<Line<'a>> {
    let mut lines = Vec::new();
    if let Some(mark) = integrity_mark(m) {
        lines.push(Line::styled(text::truncate(mark, width), theme.warning()));
    }
    let ours = m.from.as_str() == app.me;
    let who = if ours {
        "me".to_string()
    } else {
        m.from.to_string()
    };
    let prefix = format!(
        "{}{} {who}: ",
        if selected { "›" } else { "" },
        local_time(m.time)
    );
    let prefix_width = text::width(&prefix);
    // Continuation lines are indented under the text when that leaves room for it.
    let indent = if prefix_width * 2 < width {
        prefix_width
    } else {
        2
    };
    let mut body: Vec<String> = Vec::new();
    // A name so long that no text fits after it: the text starts on the next row.
    let mut first_width = width.saturating_sub(prefix_width);
    let own_row = first_width < 8;
    if own_row {
        first_width = width.saturating_sub(indent);
    }
    for raw in m.body.split('\n') {
        let shown = text::visible(raw);
        let mut pieces = if body.is_empty() {
            // The first line shares its row with the time and name; the rest of it wraps at
            // the continuation width.
            let first = text::wrap(&shown, first_width).swap_remove(0);
            let rest = shown[first.len()..].trim_start_matches(' ');
            let mut pieces = vec![first];
            if !rest.is_empty() {
                pieces.extend(text::wrap(rest, width.saturating_sub(indent)));
            }
            pieces
        } else {
            text::wrap(&shown, width.saturating_sub(indent))
        };
        body.append(&mut pieces);
        first_width = width;
        if body.len() > MAX_MESSAGE_LINES + 1 {
            break;
        }
    }
    let total_lines: usize = m
        .body
        .split('\n')
        .map(|l| {
            text::width(l)
                .div_ceil(width.saturating_sub(indent).max(1))
                .max(1)
        })
        .sum();
    let cut = body.len() > MAX_MESSAGE_LINES;
    body.truncate(MAX_MESSAGE_LINES);
    let name_style = if ours { theme.me() } else { theme.peer() };
    let status = if ours { status_mark(m) } else { None };
    // The status goes after the text when it fits there, else on a line of its own.
    let last_room = match body.len() {
        1 if !own_row => width.saturating_sub(prefix_width),
        _ => width.saturating_sub(indent),
    };
    let status_fits = status.as_ref().is_none_or(|st| {
        body.last()
            .is_some_and(|l| text::width(l) + 1 + text::width(st) <= last_room)
    });
    let count = body.len();
    if own_row {
        let header = Line::from(vec![
            Span::styled(
                format!("{}{} ", if selected { "›" } else { "" }, local_time(m.time)),
                theme.dim(),
            ),
            Span::styled(format!("{who}:"), name_style),
        ]);
        lines.push(if selected {
            header.style(theme.selected())
        } else {
            header
        });
    }
    for (i, piece) in body.into_iter().enumerate() {
        let mut spans = Vec::new();
        if i == 0 && !own_row {
            spans.push(Span::styled(
                format!("{}{} ", if selected { "›" } else { "" }, local_time(m.time)),
                theme.dim(),
            ));
            spans.push(Span::styled(format!("{who}:"), name_style));
            spans.push(Span::raw(" "));
        } else {
            spans.push(Span::raw(" ".repeat(indent)));
        }
        spans.push(Span::raw(piece));
        if i + 1 == count && !cut && status_fits {
            if let Some(status) = &status {
                spans.push(Span::raw(" "));
                spans.push(Span::styled(status.clone(), status_style(m, theme)));
            }
        }
        let line = Line::from(spans);
        lines.push(if selected {
            line.style(theme.selected())
        } else {
            line
        });
    }
    if !cut && !status_fits {
        if let Some(status) = &status {
            lines.push(Line::styled(
                text::truncate(&format!("{}{status}", " ".repeat(indent)), width),
                status_style(m, theme),
            ));
        }
    }
    if cut {
        let note = format!(
            "{}[… about {} more lines: smvsctl history shows it whole]",
            " ".repeat(indent),
            total_lines.saturating_sub(MAX_MESSAGE_LINES)
        );
        lines.push(Line::styled(text::truncate(&note, width), theme.dim()));
        if let Some(status) = status {
            lines.push(Line::styled(
                format!("{}{status}", " ".repeat(indent)),
                status_style(m, theme),
            ));
        }
    }
    lines
}

fn status_style(m: &MessageView, theme: &Theme) -> Style {
    match m.status {
        MessageStatus::Failed | MessageStatus::Held => theme.warning(),
        MessageStatus::Delivered => theme.fg(Color::Green),
        _ => theme.dim(),
    }
}

/// Rows the compose box needs for its text (1 to [`COMPOSE_LINES`]).
fn compose_rows(app: &App, width: usize) -> usize {
    compose_lines(&app.compose.text, width)
        .len()
        .clamp(1, COMPOSE_LINES)
}

fn compose_lines(textv: &str, width: usize) -> Vec<String> {
    textv
        .split('\n')
        .flat_map(|l| text::wrap_hard(&text::visible(l), width))
        .collect()
}

/// Row and column of the compose cursor in the hard-wrapped text.
fn compose_cursor(textv: &str, cursor: usize, width: usize) -> (usize, usize) {
    let before = &textv[..cursor.min(textv.len())];
    let lines = compose_lines(before, width);
    let row = lines.len().saturating_sub(1);
    let col = lines.last().map_or(0, |l| text::width(l));
    if col >= width.max(2) {
        (row + 1, 0)
    } else {
        (row, col)
    }
}

fn draw_compose(frame: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let focused = app.focus == Focus::Compose && app.overlay.is_none();
    let title = match (app.open_peer(), focused) {
        (Some(peer), true) => format!(" to {peer}: Enter sends · Alt-Enter new line · Esc "),
        (Some(peer), false) => format!(" to {peer}: press i to write "),
        (None, _) => " open a chat to write ".to_string(),
    };
    let len = app.compose.text.len();
    let size = if app.compose.over_limit() > 0 {
        format!(
            " TOO LONG: {} B over the {} KiB limit ",
            app.compose.over_limit(),
            MAX_TEXT_BYTES / 1024
        )
    } else {
        format!(" {len} B of {} KiB ", MAX_TEXT_BYTES / 1024)
    };
    let size_style = if app.compose.over_limit() > 0 {
        theme.warning()
    } else {
        theme.dim()
    };
    let block = bordered(Line::from(title), focused, theme)
        .title(Line::from(Span::styled(size, size_style)).right_aligned());
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let width = inner.width as usize;
    let lines = compose_lines(&app.compose.text, width);
    let (row, col) = compose_cursor(&app.compose.text, app.compose.cursor, width);
    let rows = inner.height as usize;
    let first = (row + 1).saturating_sub(rows);
    let shown: Vec<Line> = lines
        .into_iter()
        .skip(first)
        .take(rows)
        .map(Line::from)
        .collect();
    frame.render_widget(Paragraph::new(shown), inner);
    if focused {
        frame.set_cursor_position((
            inner.x + col.min(width.saturating_sub(1)) as u16,
            inner.y + row.saturating_sub(first).min(rows.saturating_sub(1)) as u16,
        ));
    }
}

fn draw_notice(frame: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let Some(notice) = &app.notice else {
        return;
    };
    let (label, style) = if notice.error {
        ("error: ", theme.warning())
    } else {
        ("", theme.fg(Color::Green))
    };
    let line = text::truncate(&format!("{label}{}", notice.text), area.width as usize);
    frame.render_widget(Paragraph::new(line).style(style), area);
}

fn draw_help_line(frame: &mut Frame, app: &App, theme: &Theme, area: Rect) {
    let keys = match (&app.overlay, app.focus) {
        (Some(Overlay::Help), _) => "Esc or ? close",
        (Some(Overlay::Verify(v)), _) if v.key_changed => {
            "A accept the other key · K keep the pinned one · Esc close"
        }
        (Some(Overlay::Verify(_)), _) => "Esc close",
        (Some(Overlay::Confirm(_)), _) => "y yes · e everywhere · Esc no",
        (Some(Overlay::Prompt(..)), _) => "Enter done · Esc cancel",
        (None, Focus::Compose) => "Enter send · Alt-Enter new line · Esc stop writing · Ctrl-U clear",
        (None, Focus::Messages) => {
            "i write · ↑↓ jk choose · x delete · D delete chat · v verify · c call · ? help · q quit"
        }
        (None, Focus::List) => "↑↓ jk choose · Enter open · n new chat · ? help · q quit",
    };
    frame.render_widget(
        Paragraph::new(text::truncate(keys, area.width as usize)).style(theme.dim()),
        area,
    );
}

fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let width = width.min(area.width);
    let height = height.min(area.height);
    Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    }
}

fn draw_overlay(frame: &mut Frame, theme: &Theme, overlay: &Overlay, area: Rect) {
    let (title, lines): (String, Vec<Line>) = match overlay {
        Overlay::Help => (" keys ".into(), help_lines()),
        Overlay::Verify(v) => (format!(" verify {} ", v.user), verify_lines(v, theme, area)),
        Overlay::Confirm(c) => (" are you sure? ".into(), confirm_lines(c)),
        Overlay::Prompt(p, input) => {
            let question = match p {
                Prompt::NewConversation => "Write to (username):",
                Prompt::Disappearing => "Messages disappear after (30s, 5m, 1h, 1d, 1w; off):",
            };
            (
                " ".into(),
                vec![
                    Line::from(question),
                    Line::from(format!("> {}", text::visible(input))),
                ],
            )
        }
    };
    let width = lines
        .iter()
        .map(|l| l.width() as u16)
        .max()
        .unwrap_or(10)
        .max(text::width(&title) as u16)
        + 4;
    let popup = centered(area, width, lines.len() as u16 + 2);
    frame.render_widget(Clear, popup);
    let block = Block::bordered()
        .title(Line::from(title))
        .border_style(theme.fg(Color::Cyan).add_modifier(Modifier::BOLD));
    let inner = block.inner(popup);
    frame.render_widget(block, popup);
    frame.render_widget(Paragraph::new(lines), inner);
    if let Overlay::Prompt(_, input) = overlay {
        let col = 2 + text::width(&text::visible(input)) as u16;
        frame.set_cursor_position((
            inner.x + col.min(inner.width.saturating_sub(1)),
            inner.y + 1,
        ));
    }
}

pub fn help_lines<'a>() -> Vec<Line<'a>> {
    [
        "Chats list      ↑↓ or j k choose · Enter, → or l open · n new chat",
        "Conversation    i or Enter write · ↑↓ j k choose a message (older pages load)",
        "                g oldest read · G newest · PgUp PgDn · ← h or Tab the list",
        "                x delete the chosen message · D delete the chat",
        "                t disappearing messages · b block or unblock · v verify",
        "Writing         Enter send · Alt-Enter or Ctrl-J new line · Esc stop",
        "Calls           c video call · C audio call · a answer · d decline",
        "                e hang up · m mute or unmute",
        "Verifying       A accept the other key · K keep the pinned one (after comparing)",
        "Anywhere        ? this help · q or Ctrl-C quit",
        "",
        "Marks  ! key changed · ? request · x blocked · N new: unread",
        "       ◷ queued · ✓ sent · ✓✓ delivered · ✗ failed · ⏸ held",
        "       ⚠ gap or out of order (where it happened)",
    ]
    .into_iter()
    .map(Line::from)
    .collect()
}

/// Whether the verification screen of `v` fits a terminal of `size` (columns, rows) whole:
/// a changed key is accepted only after its numbers were all on screen.
pub fn verify_fits(v: &crate::client::VerificationView, size: (u16, u16)) -> bool {
    let area = Rect::new(0, 0, size.0, size.1);
    let theme = Theme { colour: false };
    let lines = verify_lines(v, &theme, area);
    // The number rows (the widest thing that must be whole) inside the popup's border.
    let numbers = output::safety_number_rows(&v.safety_number)
        .iter()
        .map(|row| 4 + text::width(row))
        .max()
        .unwrap_or(0);
    let warning = lines.iter().map(|l| l.width()).max().unwrap_or(0);
    lines.len() + 2 <= size.1 as usize && numbers.max(warning.min(numbers)) + 2 <= size.0 as usize
}

fn verify_lines<'a>(
    v: &crate::client::VerificationView,
    theme: &Theme,
    area: Rect,
) -> Vec<Line<'a>> {
    let mut lines = Vec::new();
    let room = (area.width as usize).saturating_sub(4).clamp(20, 76);
    if let (true, Some(how)) = (v.key_changed, &v.alarm) {
        let alarm = format!(
            "⚠ ALARM: the directories disagree about {}'s key ({}). Compare both numbers with {} \
             in person or on a call: K keeps the pinned key, A takes the other.",
            v.user,
            text::visible(how),
            v.user
        );
        for piece in text::wrap(&alarm, room) {
            lines.push(Line::styled(piece, theme.warning()));
        }
    }
    // Under an alarm both keys are candidates, so both numbers are shown; after a plain key
    // change, the new key's number is the one to compare (K keeps the old all the same).
    if let (true, Some(pinned), Some(_)) = (v.key_changed, &v.pinned_safety_number, &v.alarm) {
        lines.push(Line::from("Pinned key's safety number:"));
        for row in output::safety_number_rows(pinned) {
            lines.push(Line::styled(
                format!("    {row}"),
                Style::new().add_modifier(Modifier::BOLD),
            ));
        }
        lines.push(Line::from("The other key's safety number:"));
    } else {
        lines.push(Line::from("Safety number (the same on both phones):"));
    }
    for row in output::safety_number_rows(&v.safety_number) {
        lines.push(Line::styled(
            format!("    {row}"),
            Style::new().add_modifier(Modifier::BOLD),
        ));
    }
    lines.push(Line::from(format!(
        "Transcript hash: {}",
        text::truncate(&text::visible(&v.transcript_hash), 40)
    )));
    lines.push(Line::from(format!(
        "Session: v{}{}",
        v.session_version,
        if v.session_version >= 2 {
            " (forward secret, post-quantum)"
        } else {
            ""
        }
    )));
    if v.accepted {
        lines.push(Line::styled(
            "✓ the new key is accepted",
            theme.fg(Color::Green),
        ));
    } else if v.key_changed && v.alarm.is_none() {
        let warning = format!(
            "⚠ {}'s KEY CHANGED. Compare these numbers with {} in person or on a call; only if \
             they match, press A to accept the new key.",
            v.user, v.user
        );
        // Wrapped to the popup (its border and margin take four columns), so that it is read
        // whole on any terminal the numbers fit.
        for piece in text::wrap(&warning, room) {
            lines.push(Line::styled(piece, theme.warning()));
        }
    }
    let qr = output::qr_text(&format!("smvs-verify:{}:{}", v.user, v.safety_number));
    let qr_lines: Vec<&str> = qr.lines().collect();
    if lines.len() + qr_lines.len() + 2 <= area.height as usize {
        lines.extend(qr_lines.into_iter().map(|l| Line::from(l.to_string())));
    } else {
        lines.push(Line::styled(
            "(a taller terminal shows the numbers as a QR code too)",
            theme.dim(),
        ));
    }
    lines
}

fn confirm_lines<'a>(c: &Confirm) -> Vec<Line<'a>> {
    let text: Vec<String> = match c {
        Confirm::DeleteMessage(peer, _, preview) => vec![
            format!("Delete this message? {}", text::truncate(preview, 50)),
            "y: here, on all your devices.".into(),
            format!("e: everywhere: also asks {peer}'s host to delete it. Their host"),
            "   deletes it if it honours the request; a copy they made stays.".into(),
        ],
        Confirm::DeleteConversation(peer) => vec![
            format!("Delete the whole chat with {peer}? Its key is destroyed."),
            "y: here, on all your devices.".into(),
            format!("e: everywhere: also asks {peer}'s host to delete it. Their host"),
            "   deletes it if it honours the request; a copy they made stays.".into(),
        ],
        Confirm::Block(peer) => vec![
            format!("Block {peer}? Their messages will be refused."),
            "y: block · Esc: no".into(),
        ],
    };
    text.into_iter().map(Line::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{ConversationView, MessageView};
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;
    use smvs_schema::Username;

    fn message(i: usize, from: &str, body: &str) -> MessageView {
        MessageView {
            id: crate::client::MessageId::from_slice(&[i as u8; 16]).unwrap(),
            from: Username::parse(from).unwrap(),
            to: Username::parse(if from == "alice" { "bob" } else { "alice" }).unwrap(),
            time: 1_700_000_000_000 + i as i64 * 60_000,
            status: if from == "alice" {
                MessageStatus::Failed
            } else {
                MessageStatus::Received
            },
            reason: "unknown-user".into(),
            integrity: if i == 2 {
                Integrity::Gap
            } else {
                Integrity::Ok
            },
            body: body.into(),
        }
    }

    /// An app with a bit of everything on screen: list, open chat, compose text, a ringing
    /// call, our call, a notice.
    fn busy_app() -> App {
        let bob = Username::parse("bob").unwrap();
        let mut app = App::new("alice".into(), true);
        app.conversations = vec![ConversationView {
            peer: bob.clone(),
            messages: 3,
            unread: 2,
            last_time: 1_700_000_000_000,
            expire_seconds: 3600,
        }];
        app.open = Some(super::super::app::Open {
            peer: bob.clone(),
            messages: vec![
                message(1, "bob", "hi"),
                message(2, "alice", &"long line ".repeat(50)),
                message(3, "bob", "日本語\n\u{301}x\u{1b}[2J"),
            ],
            more: true,
            selected: Some(1),
        });
        app.focus = Focus::Compose;
        app.compose.text = "a\nb日本".into();
        app.compose.cursor = app.compose.text.len();
        app.say("something happened");
        let id = crate::client::CallId::from_slice(&[7; 16]).unwrap();
        app.ringing = vec![crate::client::CallEventView {
            id,
            peer: Username::parse("carol-with-a-long-name").unwrap(),
            state: crate::client::CallState::Ringing,
            reason: String::new(),
            video: true,
            audio: true,
            outgoing: false,
        }];
        app.call = Some(super::super::app::OurCall {
            peer: bob,
            id: Some(id),
            video: true,
            outgoing: true,
            since: Some(std::time::Instant::now()),
            stats: Some(smvs_media::CallStats::default()),
            muted: true,
            size: (640, 480),
        });
        app
    }

    fn verification() -> crate::client::VerificationView {
        crate::client::VerificationView {
            user: Username::parse("a-very-long-user-name-of-32-char").unwrap(),
            safety_number: "0123456789".repeat(6),
            transcript_hash: "ab".repeat(32),
            key_changed: true,
            accepted: false,
            alarm: None,
            pinned_safety_number: None,
            session_version: 2,
            record: None,
        }
    }

    #[test]
    fn any_terminal_size_draws_without_panicking() {
        let mut app = busy_app();
        let bob = Username::parse("bob").unwrap();
        let id = crate::client::MessageId::from_slice(&[1; 16]).unwrap();
        let overlays = [
            None,
            Some(Overlay::Help),
            Some(Overlay::Verify(verification())),
            Some(Overlay::Verify(crate::client::VerificationView {
                alarm: Some(
                    "default, b show key 0123456789abcdef; c shows key fedcba9876543210".into(),
                ),
                pinned_safety_number: Some("9876543210".repeat(6)),
                ..verification()
            })),
            Some(Overlay::Confirm(Confirm::DeleteMessage(
                bob.clone(),
                id,
                "(09:14 bob: hi)".into(),
            ))),
            Some(Overlay::Confirm(Confirm::DeleteConversation(bob))),
            Some(Overlay::Prompt(Prompt::NewConversation, "日本".into())),
        ];
        let sizes = [
            (1, 1),
            (3, 3),
            (10, 5),
            (20, 8),
            (80, 24),
            (200, 60),
            (5, 40),
            (300, 2),
        ];
        for overlay in overlays {
            app.overlay = overlay;
            for (w, h) in sizes {
                let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
                terminal.draw(|f| draw(f, &app)).unwrap();
            }
        }
    }

    #[test]
    fn a_tall_terminal_shows_the_safety_number_as_a_qr_code_too() {
        let mut app = busy_app();
        app.ringing.clear();
        app.call = None;
        app.overlay = Some(Overlay::Verify(verification()));
        let screen = |w, h| {
            let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
            terminal.draw(|f| draw(f, &app)).unwrap();
            terminal
                .backend()
                .buffer()
                .content()
                .iter()
                .map(|c| c.symbol().to_string())
                .collect::<String>()
        };
        let tall = screen(100, 60);
        assert!(tall.contains("01234 56789 01234 56789"), "{tall}");
        assert!(
            tall.contains('█') || tall.contains('▀'),
            "no QR code:\n{tall}"
        );
        assert!(!tall.contains("taller terminal"), "{tall}");
        let short = screen(80, 24);
        assert!(short.contains("01234 56789 01234 56789"), "{short}");
        assert!(short.contains("taller terminal"), "{short}");
    }

    #[test]
    fn a_changed_key_can_be_accepted_where_the_numbers_fit_whatever_the_name() {
        let v = verification();
        assert!(verify_fits(&v, (80, 24)));
        assert!(verify_fits(&v, (40, 20)));
        assert!(verify_fits(&v, (29, 24)));
        assert!(
            !verify_fits(&v, (28, 24)),
            "the number rows are 27 wide, in a border"
        );
        assert!(!verify_fits(&v, (80, 8)));
    }

    #[test]
    fn a_status_that_does_not_fit_after_the_text_gets_its_own_line() {
        let mut app = busy_app();
        app.ringing.clear();
        app.call = None;
        let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
        terminal.draw(|f| draw(f, &app)).unwrap();
        let screen: String = terminal
            .backend()
            .buffer()
            .content()
            .iter()
            .map(|c| c.symbol())
            .collect();
        assert!(
            screen.contains("✗ failed: the directory does not know bob"),
            "{screen}"
        );
        assert!(screen.contains("⚠ gap"), "{screen}");
        assert!(screen.contains("disappearing 1h"), "{screen}");
    }

    #[test]
    fn the_compose_cursor_follows_wrapping() {
        assert_eq!(compose_cursor("", 0, 10), (0, 0));
        assert_eq!(compose_cursor("hello", 5, 10), (0, 5));
        assert_eq!(compose_cursor("0123456789ab", 12, 10), (1, 2));
        assert_eq!(compose_cursor("0123456789", 10, 10), (1, 0));
        assert_eq!(compose_cursor("ab\ncd", 4, 10), (1, 1));
        assert_eq!(compose_cursor("日本語日本", 15, 5), (2, 2));
    }

    #[test]
    fn an_alarm_shows_both_numbers_and_both_choices() {
        let v = crate::client::VerificationView {
            alarm: Some("default shows key 0123456789abcdef; b shows key fedcba9876543210".into()),
            pinned_safety_number: Some("9876543210".repeat(6)),
            ..verification()
        };
        let theme = Theme { colour: false };
        let lines: Vec<String> = verify_lines(&v, &theme, Rect::new(0, 0, 100, 60))
            .iter()
            .map(|l| l.to_string())
            .collect();
        let all = lines.join("\n");
        assert!(all.contains("ALARM: the directories disagree"), "{all}");
        assert!(
            all.contains("Pinned key's safety number:\n    98765 43210"),
            "{all}"
        );
        assert!(
            all.contains("The other key's safety number:\n    01234 56789"),
            "{all}"
        );
        assert!(!all.contains("press A to accept the new key"), "{all}");
        assert!(verify_fits(&v, (100, 60)));
    }
}
