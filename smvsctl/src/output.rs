//! How answers are shown: pure functions from views to text or JSON, so tests can check every
//! shape without a daemon.
//!
//! Text is for people. Everything that came from smvsd and may hold words a peer chose (message
//! bodies, fingerprints, error texts are not shown here) goes through [`clean`], so a peer cannot
//! move the cursor, recolour the terminal or reverse text with control characters.
//!
//! JSON is for programs: one object per command (an array for lists, one object per line for
//! `watch`), snake_case field names, ids as hex, times as Unix milliseconds. The field names are
//! a contract; rename only on purpose.

use serde::Serialize;
use serde_json::json;

use crate::client::{
    CallState, CallView, ContactView, ConversationView, EventView, HostStatus, Integrity,
    MessageId, MessageView, VerificationView,
};
use crate::error::CtlError;

/// Text for people or JSON for programs (`--json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

// ---------------------------------------------------------------------------------------------
// Building blocks

/// Replaces control characters (C0, DEL, C1: escape sequences, carriage returns, newlines) and
/// bidirectional overrides with U+FFFD, so text from a peer shows as what it is.
pub fn clean(text: &str) -> String {
    text.chars()
        .map(|c| {
            let bidi = matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
            if c.is_control() || bidi {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect()
}

/// Unix milliseconds as RFC 3339 in UTC with milliseconds: `2023-11-14T22:13:20.123Z`.
pub fn rfc3339_utc(unix_ms: i64) -> String {
    let days = unix_ms.div_euclid(86_400_000);
    let ms_of_day = unix_ms.rem_euclid(86_400_000);
    let (year, month, day) = civil_from_days(days);
    let (secs, ms) = (ms_of_day / 1000, ms_of_day % 1000);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`), to avoid a date crate for one formatting job.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era, 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1st, 0..=365
    let mp = (5 * doy + 2) / 153; // month from March, 0..=11
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A duration in the largest units that fit: `45s`, `1h`, `1d 2h`, `1w`.
pub fn human_duration(seconds: u32) -> String {
    const UNITS: [(u32, &str); 5] = [
        (604_800, "w"),
        (86_400, "d"),
        (3600, "h"),
        (60, "m"),
        (1, "s"),
    ];
    if seconds == 0 {
        return "0s".to_string();
    }
    let mut left = seconds;
    let mut parts = Vec::new();
    for (size, unit) in UNITS {
        if left >= size {
            parts.push(format!("{}{unit}", left / size));
            left %= size;
        }
    }
    parts.join(" ")
}

/// A safety number as 12 groups of 5 digits, three rows of four, as Signal shows it (however
/// smvsd spaced it). Anything that is not 60 digits is shown as it came.
pub fn safety_number_rows(number: &str) -> Vec<String> {
    let digits: String = number.chars().filter(|c| *c != ' ').collect();
    if digits.len() != 60 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return vec![clean(number)];
    }
    let groups: Vec<&str> = (0..12).map(|i| &digits[i * 5..i * 5 + 5]).collect();
    groups.chunks(4).map(|row| row.join(" ")).collect()
}

fn plural(n: u32, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn or_dash(value: Option<&str>) -> String {
    value.map(clean).unwrap_or_else(|| "-".to_string())
}

/// Any serializable value as one line of JSON.
pub fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<String, CtlError> {
    serde_json::to_string(value).map_err(|e| CtlError::Local(format!("cannot render JSON: {e}")))
}

// ---------------------------------------------------------------------------------------------
// Text, one function per answer

pub fn status_text(s: &HostStatus) -> String {
    [
        format!("username:     {}", or_dash(s.username.as_deref())),
        format!("registered:   {}", if s.registered { "yes" } else { "no" }),
        format!("fingerprint:  {}", or_dash(s.fingerprint.as_deref())),
        format!("host address: {}", or_dash(s.host_address.as_deref())),
        format!(
            "directory:    {}",
            or_dash(
                Some(&s.directory)
                    .filter(|d| !d.is_empty())
                    .map(String::as_str)
            )
        ),
        format!("queued:       {}", s.queued),
        format!("call port:    {}", or_dash(s.call_port.as_deref())),
        format!("dht node:     {}", or_dash(s.dht_node.as_deref())),
        format!("version:      {}", clean(&s.version)),
    ]
    .join("\n")
}

pub fn register_text(s: &HostStatus) -> String {
    format!(
        "registered {}\nfingerprint:  {}\nhost address: {}",
        or_dash(s.username.as_deref()),
        or_dash(s.fingerprint.as_deref()),
        or_dash(s.host_address.as_deref()),
    )
}

pub fn whoami_text(username: &str, fingerprint: &str) -> String {
    format!("{}\nfingerprint: {}", clean(username), clean(fingerprint))
}

/// `whoami --qr`: the name, and a QR code of it for a phone's camera (an identity address is
/// 61 characters, not for reading aloud).
pub fn whoami_qr_text(username: &str, fingerprint: &str) -> String {
    format!(
        "{}\n{}",
        whoami_text(username, fingerprint),
        qr_text(&clean(username))
    )
}

pub fn whoami_json(username: &str, fingerprint: &str) -> serde_json::Value {
    json!({
        "username": username,
        "fingerprint": fingerprint,
        "identity_address": username.starts_with("smvs:"),
    })
}

pub fn send_text(id: &MessageId) -> String {
    id.to_hex()
}

pub fn send_json(to: &str, id: &MessageId) -> serde_json::Value {
    json!({ "id": id, "to": to })
}

/// Why a message was not delivered, in words (None when it has no failure reason).
pub fn failure_text(m: &MessageView) -> Option<String> {
    Some(match m.reason.as_str() {
        "" => return None,
        "unknown-user" => format!(
            "the directory does not know {} (not registered, or deregistered)",
            m.to
        ),
        "refused" => format!("{}'s host refused it", m.to),
        "address-refused" => format!(
            "{}'s host address is of a kind this host does not connect to (loopback or private)",
            m.to
        ),
        other => clean(other),
    })
}

/// One message: a header line, then the body indented by four spaces, line by line.
pub fn message_text(m: &MessageView) -> String {
    let mut out = format!(
        "{}  {} -> {}  [{}, integrity {}]  id {}",
        rfc3339_utc(m.time),
        m.from,
        m.to,
        m.status.as_str(),
        m.integrity.as_str(),
        m.id
    );
    match m.integrity {
        Integrity::Gap => out.push_str(&format!(
            "\n  ! a message {} sent before this one never arrived",
            m.from
        )),
        Integrity::OutOfOrder => out.push_str(&format!(
            "\n  ! arrived after a later message from {}",
            m.from
        )),
        Integrity::Ok | Integrity::Unchecked => {}
    }
    if let Some(why) = failure_text(m) {
        out.push_str(&format!("\n  ! not delivered: {why}"));
    }
    if m.body.is_empty() {
        out.push_str("\n    (empty)");
    }
    for line in m.body.lines() {
        out.push_str("\n    ");
        out.push_str(&clean(line));
    }
    out
}

pub fn history_text(peer: &str, messages: &[MessageView]) -> String {
    if messages.is_empty() {
        return format!("no messages with {peer}");
    }
    messages
        .iter()
        .map(message_text)
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn conversations_text(conversations: &[ConversationView]) -> String {
    if conversations.is_empty() {
        return "no conversations".to_string();
    }
    let width = conversations
        .iter()
        .map(|c| c.peer.as_str().len())
        .max()
        .unwrap_or(0);
    conversations
        .iter()
        .map(|c| {
            let expiry = if c.expire_seconds == 0 {
                String::new()
            } else {
                format!(
                    "  messages disappear after {}",
                    human_duration(c.expire_seconds)
                )
            };
            let unread = if c.unread == 0 {
                String::new()
            } else {
                format!("  ({} unread)", c.unread)
            };
            format!(
                "{:width$}  {:>14}  last {}{unread}{expiry}",
                c.peer.as_str(),
                plural(c.messages, "message", "messages"),
                rfc3339_utc(c.last_time),
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn directories_text(directories: &[crate::client::DirectoryView]) -> String {
    directories
        .iter()
        .map(|d| {
            format!(
                "{}  {}  {}{}{}",
                clean(&d.name),
                clean(&d.address),
                clean(&d.key),
                if d.left { "  (left)" } else { "" },
                if d.scoped {
                    format!("  (scoped: its users are NAME@{})", clean(&d.name))
                } else {
                    String::new()
                }
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn petnames_text(petnames: &[crate::client::PetnameView]) -> String {
    if petnames.is_empty() {
        return "no petnames".to_string();
    }
    let width = petnames.iter().map(|p| p.name.len()).max().unwrap_or(0);
    petnames
        .iter()
        .map(|p| format!("{:width$}  {}", clean(&p.name), clean(&p.address)))
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn contacts_text(contacts: &[ContactView]) -> String {
    if contacts.is_empty() {
        return "no contacts".to_string();
    }
    let width = contacts
        .iter()
        .map(|c| c.username.as_str().len())
        .max()
        .unwrap_or(0);
    contacts
        .iter()
        .map(|c| {
            let mut flags = Vec::new();
            if c.blocked {
                flags.push("blocked");
            }
            if c.key_changed {
                flags.push("KEY CHANGED");
            }
            if c.request {
                flags.push("request");
            }
            if c.alarm.is_some() {
                flags.push("DIRECTORIES DISAGREE");
            }
            let introduced = c
                .introduced_by
                .as_ref()
                .map(|by| format!("introduced by {}", clean(by)));
            if let Some(by) = &introduced {
                flags.push(by);
            }
            let petname = c.petname.as_ref().map(|p| format!("petname {}", clean(p)));
            if let Some(p) = &petname {
                flags.push(p);
            }
            let flags = if flags.is_empty() {
                String::new()
            } else {
                format!("  ({})", flags.join(", "))
            };
            let mut line = format!(
                "{:width$}  {}{flags}",
                c.username.as_str(),
                clean(&c.fingerprint)
            );
            if let Some(how) = &c.alarm {
                line.push_str(&format!("\n{:width$}  {}", "", clean(how)));
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn verification_text(v: &VerificationView) -> String {
    let user = &v.user;
    let mut out = Vec::new();
    match (v.key_changed, v.accepted) {
        (true, false) if v.alarm.is_some() => out.push(format!(
            "ALARM: the directories disagree about {user}'s identity key ({}). At least one of \
             them lies: messages to {user} are refused and messages from {user} are held.\n\
             Compare both safety numbers below with {user} in person or over another channel. \
             If the pinned one matches, run: smvsctl verify {user} --keep-key\n\
             If the other one matches, run: smvsctl verify {user} --accept-new-key",
            clean(v.alarm.as_deref().unwrap_or_default())
        )),
        (true, true) => out.push(format!(
            "{user}'s identity key changed, and the new key is now accepted.\n\
             Compare the safety number below with {user} in person or over another channel."
        )),
        (true, false) => out.push(format!(
            "WARNING: {user}'s identity key changed and is NOT accepted: messages to {user} are \
             refused and messages from {user} are held.\n\
             Compare the safety number below with {user} in person or over another channel, \
             then run: smvsctl verify {user} --accept-new-key"
        )),
        (false, true) => out.push(format!("{user}'s key is accepted.")),
        (false, false) => {}
    }
    if let (true, Some(pinned)) = (v.key_changed, &v.pinned_safety_number) {
        out.push(format!("Safety number of the key pinned for {user}:"));
        for row in safety_number_rows(pinned) {
            out.push(format!("    {row}"));
        }
        out.push(format!(
            "Safety number of the other key now shown for {user}:"
        ));
    } else {
        out.push(format!("Safety number with {user}:"));
    }
    for row in safety_number_rows(&v.safety_number) {
        out.push(format!("    {row}"));
    }
    out.push(format!("Transcript hash: {}", clean(&v.transcript_hash)));
    out.push(match v.session_version {
        2 => "Session: v2 (forward-secret ratchet, post-quantum keys)".to_string(),
        n => format!(
            "Session: v{n} (static keys; v2 starts with the next message both hosts exchange)"
        ),
    });
    out.join("\n")
}

pub fn delete_text(peer: &str, id: Option<&MessageId>, everywhere: bool, deleted: u32) -> String {
    let what = match id {
        Some(id) => format!(
            "deleted message {id} with {peer} ({})",
            plural(deleted, "message", "messages")
        ),
        None => format!(
            "deleted the conversation with {peer} ({}); its key is destroyed",
            plural(deleted, "message", "messages")
        ),
    };
    if everywhere {
        format!("{what}\n{peer}'s host was asked to delete it too")
    } else {
        what
    }
}

pub fn delete_json(
    peer: &str,
    id: Option<&MessageId>,
    everywhere: bool,
    deleted: u32,
) -> serde_json::Value {
    json!({ "peer": peer, "id": id, "everywhere": everywhere, "deleted": deleted })
}

pub fn block_text(user: &str, blocked: bool) -> String {
    if blocked {
        format!("blocked {user}")
    } else {
        format!("unblocked {user}")
    }
}

pub fn block_json(user: &str, blocked: bool) -> serde_json::Value {
    json!({ "user": user, "blocked": blocked })
}

pub fn expire_text(peer: &str, seconds: u32) -> String {
    if seconds == 0 {
        format!("disappearing messages with {peer} are off")
    } else {
        format!(
            "messages with {peer} now disappear after {} (on both hosts)",
            human_duration(seconds)
        )
    }
}

pub fn expire_json(peer: &str, seconds: u32) -> serde_json::Value {
    json!({ "peer": peer, "expire_seconds": seconds })
}

/// One event as one line.
pub fn event_text(e: &EventView) -> String {
    match e {
        EventView::MessageReceived { id, peer, time } => {
            format!("message {peer} {} {id}", rfc3339_utc(*time))
        }
        EventView::MessageStatus { id, peer, status } => {
            format!("status {peer} {id} {}", status.as_str())
        }
        EventView::KeyChanged { peer } => {
            format!("key-changed {peer} (compare safety numbers: smvsctl verify {peer})")
        }
        EventView::DirectoryAlarm { peer } => format!(
            "directory-alarm {peer} (the directories disagree about {peer}'s key, or one served an older record than before; smvsctl verify {peer} says which)"
        ),
        EventView::Read { peer } => format!("read {peer}"),
        EventView::MessageSent { id, peer, time } => {
            format!("sent {peer} {} {id}", rfc3339_utc(*time))
        }
        EventView::Resync => "resync (events this device missed are no longer kept by the host: re-read conversations and history)".to_string(),
        EventView::DeviceLinked { name } => format!("device-linked {}", clean(name)),
        EventView::DeviceRevoked { name } => format!("device-revoked {}", clean(name)),
        EventView::IntegrityProblem { id, peer, time } => format!(
            "integrity {peer} {} {id} (a message is missing or out of order)",
            rfc3339_utc(*time)
        ),
        EventView::Deleted {
            id: Some(id), peer, ..
        } => format!("deleted {peer} {id}"),
        EventView::Deleted { id: None, peer, .. } => {
            format!("deleted {peer} (the whole conversation)")
        }
        EventView::CallIncoming(c) => format!(
            "call-incoming {} {} ({}; answer: smvsctl answer {})",
            c.peer,
            c.id,
            media_kind(c.video, c.audio),
            c.id
        ),
        EventView::CallState(c) if c.state == CallState::Ended => {
            format!("call-ended {} {} {}", c.peer, c.id, c.reason)
        }
        EventView::CallState(c) if c.reason == "answered-elsewhere" => format!(
            "call-{} {} {} (answered on another device)",
            c.state.as_str(),
            c.peer,
            c.id
        ),
        EventView::CallState(c) => format!("call-{} {} {}", c.state.as_str(), c.peer, c.id),
    }
}

fn media_kind(video: bool, audio: bool) -> &'static str {
    match (video, audio) {
        (true, true) => "video and audio",
        (true, false) => "video only",
        (false, true) => "audio only",
        (false, false) => "no media",
    }
}

/// `calls`: one line per call.
pub fn calls_text(calls: &[CallView]) -> String {
    if calls.is_empty() {
        return "no calls".to_string();
    }
    calls
        .iter()
        .map(|c| {
            format!(
                "{} {} {} {} since {}",
                c.id,
                c.peer,
                if c.outgoing { "outgoing" } else { "incoming" },
                c.state.as_str(),
                rfc3339_utc(c.since)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Why a call ended, as a sentence.
pub fn call_end_text(peer: &str, reason: &str) -> String {
    match reason {
        "declined" => format!("{peer} declined the call"),
        "busy" => format!("{peer} is busy in another call"),
        "no-answer" => format!("{peer} did not answer"),
        "missed" => format!("the call from {peer} was missed"),
        "remote-hangup" => format!("{peer} hung up"),
        "hangup" => format!("the call with {peer} was hung up"),
        "offline" => format!("{peer} cannot be reached"),
        other => format!("the call with {peer} ended ({other})"),
    }
}

/// Renders a value that has both shapes.
pub fn devices_text(devices: &[crate::client::DeviceView]) -> String {
    if devices.is_empty() {
        return "no linked devices (pair one: `smvsctl devices link --name laptop`)".to_string();
    }
    let width = devices.iter().map(|d| d.name.len()).max().unwrap_or(0);
    devices
        .iter()
        .map(|d| {
            let seen = if d.connected {
                format!("connected from {}", clean(&d.last_address))
            } else if d.last_seen == 0 {
                "never connected".to_string()
            } else {
                format!(
                    "last seen {} from {}",
                    rfc3339_utc(d.last_seen),
                    clean(&d.last_address)
                )
            };
            let admin = if d.admin { "  (admin)" } else { "" };
            format!(
                "{:width$}  {}  {seen}{admin}",
                clean(&d.name),
                clean(&d.fingerprint)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn device_link_text(link: &crate::client::DeviceLinkView) -> String {
    format!(
        "On the new machine, run:\n\n  smvsctl pair {} {}\n\nThe code works once, for 10 minutes (until {}). The host's key fingerprint,\nwhich `pair` shows too, is {}.\n\n{}",
        clean(&link.device_address),
        clean(&link.code),
        rfc3339_utc(link.expires_at),
        clean(&link.host_fingerprint),
        qr_text(&format!("smvs-pair:{}/{}", link.device_address, link.code)),
    )
}

pub fn paired_text(p: &crate::remote::Paired) -> String {
    format!(
        "paired as {}{} with the host at {}\nhost key fingerprint {} (compare it with what `devices link` printed)\nthis device's fingerprint {}",
        clean(&p.name),
        if p.admin { " (admin)" } else { "" },
        clean(&p.address),
        clean(&p.host_fingerprint),
        clean(&p.device_fingerprint)
    )
}

/// A QR code of `text` for a terminal (two rows per character), or nothing if it does not fit.
pub(crate) fn qr_text(text: &str) -> String {
    match qrcode::QrCode::new(text.as_bytes()) {
        Ok(code) => code
            .render::<qrcode::render::unicode::Dense1x2>()
            .quiet_zone(true)
            .build(),
        Err(_) => String::new(),
    }
}

pub fn render<T: Serialize + ?Sized>(
    format: Format,
    value: &T,
    text: impl FnOnce(&T) -> String,
) -> Result<String, CtlError> {
    match format {
        Format::Text => Ok(text(value)),
        Format::Json => to_json(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::MessageStatus;
    use smvs_schema::Username;

    fn name(s: &str) -> Username {
        Username::parse(s).unwrap()
    }

    fn id(byte: u8) -> MessageId {
        MessageId::from_slice(&[byte; 16]).unwrap()
    }

    fn message() -> MessageView {
        MessageView {
            id: id(0x0f),
            from: name("alice"),
            to: name("bob"),
            time: 1_700_000_000_123,
            status: MessageStatus::Delivered,
            reason: String::new(),
            integrity: Integrity::Ok,
            body: "hello\nsecond line".to_string(),
        }
    }

    fn status() -> HostStatus {
        HostStatus {
            username: Some("alice".into()),
            registered: true,
            fingerprint: Some("ab12 cd34".into()),
            host_address: Some("127.0.0.1:7421".into()),
            directory: "127.0.0.1:7420".into(),
            queued: 2,
            version: "0.1.0".into(),
            call_port: Some("127.0.0.1:7423".into()),
            dht_node: None,
        }
    }

    fn json_value(s: &str) -> serde_json::Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_utc(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339_utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_utc(4_107_542_399_999), "2100-02-28T23:59:59.999Z");
        assert_eq!(rfc3339_utc(-1), "1969-12-31T23:59:59.999Z");
        // Absurd values from a peer format without panicking.
        let _ = rfc3339_utc(i64::MIN);
        let _ = rfc3339_utc(i64::MAX);
    }

    #[test]
    fn control_characters_are_neutralised() {
        assert_eq!(clean("plain text, ünïcödé"), "plain text, ünïcödé");
        assert_eq!(clean("\x1b[31mred\x07"), "\u{FFFD}[31mred\u{FFFD}");
        assert_eq!(clean("a\rb\u{9b}c"), "a\u{FFFD}b\u{FFFD}c");
        assert_eq!(clean("evil\u{202E}txt.exe"), "evil\u{FFFD}txt.exe");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(45), "45s");
        assert_eq!(human_duration(3600), "1h");
        assert_eq!(human_duration(93_600), "1d 2h");
        assert_eq!(human_duration(604_800), "1w");
        assert_eq!(human_duration(3661), "1h 1m 1s");
    }

    #[test]
    fn safety_numbers_are_twelve_groups_of_five() {
        let digits: String = (0..60).map(|i| char::from(b'0' + (i % 10) as u8)).collect();
        let rows = safety_number_rows(&digits);
        assert_eq!(
            rows,
            vec![
                "01234 56789 01234 56789",
                "01234 56789 01234 56789",
                "01234 56789 01234 56789"
            ]
        );
        assert_eq!(safety_number_rows("12345"), vec!["12345"]);
        let spaced: Vec<String> = digits
            .as_bytes()
            .chunks(5)
            .map(|g| String::from_utf8_lossy(g).into_owned())
            .collect();
        assert_eq!(safety_number_rows(&spaced.join(" ")), rows);
    }

    #[test]
    fn status_text_and_json() {
        let s = status();
        let text = status_text(&s);
        assert!(text.contains("username:     alice"));
        assert!(text.contains("registered:   yes"));
        assert!(text.contains("queued:       2"));
        let unregistered = HostStatus {
            username: None,
            registered: false,
            fingerprint: None,
            host_address: None,
            ..status()
        };
        assert!(status_text(&unregistered).contains("username:     -"));
        assert_eq!(
            json_value(&to_json(&s).unwrap()),
            json!({
                "username": "alice", "registered": true, "fingerprint": "ab12 cd34",
                "host_address": "127.0.0.1:7421", "directory": "127.0.0.1:7420",
                "queued": 2, "version": "0.1.0", "call_port": "127.0.0.1:7423",
                "dht_node": null
            })
        );
        assert_eq!(
            json_value(&to_json(&unregistered).unwrap())["username"],
            serde_json::Value::Null
        );
        assert!(register_text(&s).starts_with("registered alice\n"));
    }

    #[test]
    fn whoami_and_send() {
        assert_eq!(whoami_text("alice", "ab12"), "alice\nfingerprint: ab12");
        assert_eq!(
            whoami_json("alice", "ab12"),
            json!({"username": "alice", "fingerprint": "ab12", "identity_address": false})
        );
        assert_eq!(send_text(&id(1)), "01".repeat(16));
        assert_eq!(
            send_json("bob", &id(1)),
            json!({"id": "01".repeat(16), "to": "bob"})
        );
    }

    #[test]
    fn history_text_shows_every_field() {
        let text = history_text("bob", &[message()]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            vec![
                format!(
                    "2023-11-14T22:13:20.123Z  alice -> bob  [delivered, integrity ok]  id {}",
                    "0f".repeat(16)
                )
                .as_str(),
                "    hello",
                "    second line",
            ]
        );
        assert_eq!(history_text("bob", &[]), "no messages with bob");
    }

    #[test]
    fn history_text_warns_about_gaps_and_escapes() {
        let m = MessageView {
            integrity: Integrity::Gap,
            status: MessageStatus::Received,
            body: "\x1b]0;pwned\x07".into(),
            ..message()
        };
        let text = message_text(&m);
        assert!(text.contains("[received, integrity gap]"));
        assert!(text.contains("! a message alice sent before this one never arrived"));
        assert!(!text.contains('\x1b'));
        let empty = MessageView {
            body: String::new(),
            ..message()
        };
        assert!(message_text(&empty).ends_with("\n    (empty)"));
        let failed = MessageView {
            status: MessageStatus::Failed,
            reason: "unknown-user".into(),
            ..message()
        };
        assert!(message_text(&failed)
            .contains("[failed, integrity ok]  id 0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f\n  ! not delivered: the directory does not know bob"));
    }

    #[test]
    fn history_json_uses_stable_names() {
        let m = MessageView {
            integrity: Integrity::OutOfOrder,
            ..message()
        };
        assert_eq!(
            json_value(&to_json(&[m]).unwrap()),
            json!([{
                "id": "0f".repeat(16), "from": "alice", "to": "bob", "time": 1_700_000_000_123_i64,
                "status": "delivered", "reason": "", "integrity": "out_of_order",
                "body": "hello\nsecond line"
            }])
        );
    }

    #[test]
    fn conversations_text_and_json() {
        let c = vec![
            ConversationView {
                peer: name("bob"),
                messages: 1,
                unread: 0,
                last_time: 0,
                expire_seconds: 0,
            },
            ConversationView {
                peer: name("carol.k"),
                messages: 12,
                unread: 2,
                last_time: 1_700_000_000_123,
                expire_seconds: 3600,
            },
        ];
        let text = conversations_text(&c);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "bob           1 message  last 1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            lines[1],
            "carol.k     12 messages  last 2023-11-14T22:13:20.123Z  (2 unread)  messages disappear after 1h"
        );
        assert_eq!(conversations_text(&[]), "no conversations");
        assert_eq!(
            json_value(&to_json(&c).unwrap())[1],
            json!({"peer": "carol.k", "messages": 12, "unread": 2,
                   "last_time": 1_700_000_000_123_i64, "expire_seconds": 3600})
        );
    }

    #[test]
    fn contacts_text_and_json() {
        let c = vec![
            ContactView {
                username: name("bob"),
                fingerprint: "f1".into(),
                blocked: false,
                key_changed: false,
                request: false,
                alarm: None,
                introduced_by: None,
                petname: None,
            },
            ContactView {
                username: name("mallory"),
                fingerprint: "f2".into(),
                blocked: true,
                key_changed: true,
                request: true,
                alarm: None,
                introduced_by: None,
                petname: None,
            },
        ];
        assert_eq!(
            contacts_text(&c),
            "bob      f1\nmallory  f2  (blocked, KEY CHANGED, request)"
        );
        assert_eq!(contacts_text(&[]), "no contacts");
        assert_eq!(
            json_value(&to_json(&c).unwrap())[1],
            json!({"username": "mallory", "fingerprint": "f2", "blocked": true,
                   "key_changed": true, "request": true})
        );
    }

    #[test]
    fn verification_text_says_what_happened_to_the_key() {
        let digits = "1".repeat(60);
        let v = VerificationView {
            user: name("bob"),
            safety_number: digits.clone(),
            transcript_hash: "abcd".into(),
            key_changed: false,
            accepted: false,
            alarm: None,
            pinned_safety_number: None,
            session_version: 2,
            record: None,
        };
        let text = verification_text(&v);
        assert_eq!(
            text,
            "Safety number with bob:\n    11111 11111 11111 11111\n    11111 11111 11111 11111\n    11111 11111 11111 11111\nTranscript hash: abcd\nSession: v2 (forward-secret ratchet, post-quantum keys)"
        );
        let refused = verification_text(&VerificationView {
            key_changed: true,
            ..v.clone()
        });
        assert!(refused.starts_with("WARNING: bob's identity key changed and is NOT accepted"));
        assert!(refused.contains("smvsctl verify bob --accept-new-key"));
        let accepted = verification_text(&VerificationView {
            key_changed: true,
            accepted: true,
            ..v.clone()
        });
        assert!(
            accepted.starts_with("bob's identity key changed, and the new key is now accepted.")
        );
        let alarm = verification_text(&VerificationView {
            key_changed: true,
            alarm: Some("default shows key 11; b shows key 22".into()),
            pinned_safety_number: Some("2".repeat(60)),
            ..v.clone()
        });
        assert!(alarm.starts_with(
            "ALARM: the directories disagree about bob's identity key (default shows key 11; b shows key 22)"
        ));
        assert!(alarm.contains("smvsctl verify bob --keep-key"), "{alarm}");
        assert!(
            alarm.contains("Safety number of the key pinned for bob:\n    22222 22222"),
            "{alarm}"
        );
        assert!(
            alarm.contains("Safety number of the other key now shown for bob:\n    11111"),
            "{alarm}"
        );
        assert_eq!(
            json_value(&to_json(&v).unwrap()),
            json!({"user": "bob", "safety_number": digits, "transcript_hash": "abcd",
                   "key_changed": false, "accepted": false, "session_version": 2,
                   "record": null})
        );
    }

    #[test]
    fn delete_block_expire() {
        assert_eq!(
            delete_text("bob", None, false, 3),
            "deleted the conversation with bob (3 messages); its key is destroyed"
        );
        assert_eq!(
            delete_text("bob", Some(&id(2)), true, 1),
            format!(
                "deleted message {} with bob (1 message)\nbob's host was asked to delete it too",
                "02".repeat(16)
            )
        );
        assert_eq!(
            delete_json("bob", None, true, 3),
            json!({"peer": "bob", "id": null, "everywhere": true, "deleted": 3})
        );
        assert_eq!(
            delete_json("bob", Some(&id(2)), false, 1)["id"],
            json!("02".repeat(16))
        );
        assert_eq!(block_text("bob", true), "blocked bob");
        assert_eq!(block_text("bob", false), "unblocked bob");
        assert_eq!(
            block_json("bob", true),
            json!({"user": "bob", "blocked": true})
        );
        assert_eq!(
            expire_text("bob", 0),
            "disappearing messages with bob are off"
        );
        assert_eq!(
            expire_text("bob", 86_400),
            "messages with bob now disappear after 1d (on both hosts)"
        );
        assert_eq!(
            expire_json("bob", 60),
            json!({"peer": "bob", "expire_seconds": 60})
        );
    }

    #[test]
    fn events_are_one_line_each() {
        let events = vec![
            EventView::MessageReceived {
                id: id(1),
                peer: name("bob"),
                time: 0,
            },
            EventView::MessageStatus {
                id: id(2),
                peer: name("bob"),
                status: MessageStatus::Delivered,
            },
            EventView::KeyChanged { peer: name("bob") },
            EventView::IntegrityProblem {
                id: id(3),
                peer: name("bob"),
                time: 0,
            },
            EventView::Deleted {
                id: None,
                peer: name("bob"),
                time: 0,
            },
            EventView::Deleted {
                id: Some(id(4)),
                peer: name("bob"),
                time: 0,
            },
        ];
        for e in &events {
            assert!(!event_text(e).contains('\n'));
            assert!(!to_json(e).unwrap().contains('\n'));
        }
        assert_eq!(
            event_text(&events[0]),
            format!("message bob 1970-01-01T00:00:00.000Z {}", "01".repeat(16))
        );
        assert_eq!(
            event_text(&events[1]),
            format!("status bob {} delivered", "02".repeat(16))
        );
        assert_eq!(
            event_text(&events[4]),
            "deleted bob (the whole conversation)"
        );
        assert_eq!(
            json_value(&to_json(&events[0]).unwrap()),
            json!({"event": "message_received", "id": "01".repeat(16), "peer": "bob", "time": 0})
        );
        assert_eq!(
            json_value(&to_json(&events[1]).unwrap()),
            json!({"event": "message_status", "id": "02".repeat(16), "peer": "bob",
                   "status": "delivered"})
        );
        assert_eq!(
            json_value(&to_json(&events[2]).unwrap()),
            json!({"event": "key_changed", "peer": "bob"})
        );
        assert_eq!(
            json_value(&to_json(&events[3]).unwrap())["event"],
            "integrity_problem"
        );
        assert_eq!(
            json_value(&to_json(&events[4]).unwrap()),
            json!({"event": "deleted", "id": null, "peer": "bob", "time": 0})
        );
    }

    #[test]
    fn render_picks_the_shape() {
        let s = status();
        assert_eq!(
            render(Format::Text, &s, status_text).unwrap(),
            status_text(&s)
        );
        assert!(render(Format::Json, &s, status_text)
            .unwrap()
            .starts_with('{'));
    }
}
