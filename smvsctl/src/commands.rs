//! One function per command: ask smvsd through [`HostClient`], render with [`crate::output`],
//! write to `out`. Nothing here parses arguments (that is [`crate::cli`]) or formats by hand.

use std::future::Future;
use std::io::{Read, Write};

use smvs_schema::Username;
use tokio::sync::mpsc;

use crate::cli::Command;
use crate::client::{CallId, HostClient, KeyChoice, MessageId, Start, EVENT_QUEUE};
use crate::error::{CtlError, ErrorCode};
use crate::output::{self, Format};

/// The largest message body read from stdin; smvsd refuses far smaller ones (`too-large`), this
/// only bounds what smvsctl holds in memory.
pub const MAX_STDIN_BODY: usize = smvs_schema::MAX_MESSAGE_BYTES;

/// Writes one rendered answer and a newline, and flushes, so a reader on a pipe sees each line
/// as soon as it is complete.
pub(crate) fn emit(out: &mut dyn Write, text: &str) -> Result<(), CtlError> {
    writeln!(out, "{text}").map_err(CtlError::output)?;
    out.flush().map_err(CtlError::output)
}

/// The body of `send`: TEXT itself, or with `-` everything on `stdin` (UTF-8, at most
/// [`MAX_STDIN_BODY`] bytes) minus one trailing newline, the one `echo` adds.
pub fn read_body(text: &str, stdin: impl Read) -> Result<String, CtlError> {
    if text != "-" {
        return Ok(text.to_string());
    }
    let mut bytes = Vec::new();
    stdin
        .take(MAX_STDIN_BODY as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| CtlError::Io {
            what: "cannot read the message from stdin",
            source,
        })?;
    if bytes.len() > MAX_STDIN_BODY {
        return Err(CtlError::Local(format!(
            "the message on stdin is larger than {} MiB",
            MAX_STDIN_BODY / (1024 * 1024)
        )));
    }
    let mut body = String::from_utf8(bytes)
        .map_err(|_| CtlError::Local("the message on stdin is not UTF-8".to_string()))?;
    if body.ends_with('\n') {
        body.pop();
        if body.ends_with('\r') {
            body.pop();
        }
    }
    Ok(body)
}

/// Runs one command. `Send`'s text is the message itself: resolve `-` with [`read_body`] first.
/// `stop` ends `watch` (the caller passes the SIGINT/SIGTERM future); other commands ignore it.
pub async fn execute(
    host: &HostClient,
    command: &Command,
    format: Format,
    out: &mut dyn Write,
    stop: impl Future<Output = ()>,
) -> Result<(), CtlError> {
    match command {
        Command::Register { username, dht } => {
            register(host, format, out, username.as_ref(), *dht).await
        }
        Command::Whoami { qr } => whoami(host, format, out, *qr).await,
        Command::Status => status(host, format, out).await,
        Command::Send { user, text } => send(host, format, out, user, text).await,
        Command::History {
            user,
            limit,
            before,
        } => history(host, format, out, user, *limit, before.as_ref()).await,
        Command::Conversations => conversations(host, format, out).await,
        Command::Read { user } => {
            let was = host.mark_read(user).await?;
            let text = output::render(
                format,
                &serde_json::json!({ "peer": user.as_str(), "was_unread": was }),
                |_| format!("{} read ({} were unread)", user, was),
            )?;
            emit(out, &text)
        }
        Command::Watch {
            count,
            since,
            cursor,
            live,
        } => {
            let start = match (since, cursor) {
                (Some(seq), _) => Start::After(*seq),
                (None, Some(name)) => Start::Cursor(name.clone()),
                // A linked device comes and goes: by default it resumes where it was.
                (None, None) if host.is_remote() && !live => Start::Cursor("watch".into()),
                (None, None) => Start::Live,
            };
            watch(host, format, out, *count, &start, stop).await
        }
        // The agent keeps (and remakes) its own connections; `run` starts it before connecting
        // here. Given a connection, it is the agent beside that host.
        Command::Agent {
            preview,
            bus,
            media,
        } => {
            let reach = crate::agent::Reach::Local {
                socket: host.path(),
                session: bus == "session",
            };
            crate::agent::run(reach, *preview, media, stop).await
        }
        Command::Delete {
            user,
            id,
            everywhere,
        } => delete(host, format, out, user, id.as_ref(), *everywhere).await,
        Command::Block { user } => block(host, format, out, user, true).await,
        Command::Unblock { user } => block(host, format, out, user, false).await,
        Command::Contacts => contacts(host, format, out).await,
        Command::Devices { action } => devices(host, format, out, action.as_ref()).await,
        // Pairing needs no host connection; `run` does it before connecting.
        Command::Pair { .. } => Err(CtlError::Local("pair runs on its own".into())),
        // The chat owns its connection (it shares it with its calls); `run` starts it.
        Command::Chat { .. } => Err(CtlError::Local("chat runs on its own".into())),
        Command::Verify {
            user,
            accept_new_key,
            keep_key,
        } => {
            let choice = match (accept_new_key, keep_key) {
                (true, _) => KeyChoice::Accept,
                (_, true) => KeyChoice::Keep,
                _ => KeyChoice::Look,
            };
            verify(host, format, out, user, choice).await
        }
        Command::Expire { user, seconds } => expire(host, format, out, user, *seconds).await,
        Command::Directory { action } => directory(host, format, out, action).await,
        Command::Petname { action } => petname(host, format, out, action).await,
        Command::Introduce { user, to } => {
            host.introduce(user, to).await?;
            let text = match format {
                Format::Text => format!("introduced {user} to {to}"),
                Format::Json => output::to_json(&serde_json::json!({
                    "introduced": user.as_str(), "to": to.as_str()
                }))?,
            };
            emit(out, &text)
        }
        Command::Call { user, media } => {
            crate::call::place(host, user, media, format, out, stop).await
        }
        Command::Answer {
            call_id,
            wait,
            media,
        } => crate::call::answer(host, call_id.as_ref(), *wait, media, format, out, stop).await,
        Command::Hangup { call_id } => hangup(host, format, out, call_id.as_ref()).await,
        Command::Calls => calls(host, format, out).await,
    }
}

pub async fn register(
    host: &HostClient,
    format: Format,
    out: &mut dyn Write,
    username: Option<&Username>,
    dht: bool,
) -> Result<(), CtlError> {
    let status = match (username, dht) {
        (Some(username), false) => host.register(username).await?,
        _ => host.register_in_dht().await?,
    };
    emit(
        out,
        &output::render(format, &status, output::register_text)?,
    )
}

pub async fn whoami(
    host: &HostClient,
    format: Format,
    out: &mut dyn Write,
    qr: bool,
) -> Result<(), CtlError> {
    let status = host.status().await?;
    let (Some(username), true) = (status.username.as_deref(), status.registered) else {
        return Err(CtlError::Refused {
            code: Some(ErrorCode::NotRegistered),
            message: "no user is registered on this host; run: smvsctl register USERNAME"
                .to_string(),
        });
    };
    let fingerprint = status.fingerprint.as_deref().unwrap_or("");
    let text = match format {
        Format::Text if qr => output::whoami_qr_text(username, fingerprint),
        Format::Text => output::whoami_text(username, fingerprint),
        Format::Json => output::to_json(&output::whoami_json(username, fingerprint))?,
    };
    emit(out, &text)
}

pub async fn status(
    host: &HostClient,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    let status = host.status().await?;
    emit(out, &output::render(format, &status, output::status_text)?)
}

pub async fn send(
    host: &HostClient,
    format: Format,
    out: &mut dyn Write,
    to: &Username,
    body: &str,
) -> Result<(), CtlError> {
    let id = host.send(to, body).await?;
    let text = match format {
        Format::Text => output::send_text(&id),
        Format::Json => output::to_json(&output::send_json(to.as_str(), &id))?,
    };
    emit(out, &text)
}

pub async fn history(
    host: &HostClient,
    format: Format,
    out: &mut dyn Write,
    peer: &Username,
    limit: u32,
    before: Option<&MessageId>,
) -> Result<(), CtlError> {
    let messages = match before {
        None => host.history(peer, limit).await?,
        Some(before) => host.history_page(peer, limit, Some(before)).await?.0,
    };
    emit(
        out,
        &output::render(format, messages.as_slice(), |m| {
            output::history_text(peer.as_str(), m)
        })?,
    )
}

pub async fn conversations(
    host: &HostClient,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    let conversations = host.conversations().await?;
    emit(
        out,
        &output::render(format, conversations.as_slice(), output::conversations_text)?,
    )
}

/// Prints events as they come, one line each, until `count` were printed, `stop` resolves (both
/// exit 0), or the connection ends (an error: whoever relies on the stream must know it broke).
/// Each event is handed back as handled only once its line is written, so a cursor never
/// passes an event that was not printed.
pub async fn watch(
    host: &HostClient,
    format: Format,
    out: &mut dyn Write,
    count: Option<u64>,
    start: &Start,
    stop: impl Future<Output = ()>,
) -> Result<(), CtlError> {
    let (events_tx, mut events) = mpsc::channel(EVENT_QUEUE);
    // Held until we return: dropping it ends the subscription.
    let _subscription = host.subscribe_from(start, events_tx).await?;
    tokio::pin!(stop);
    let mut printed = 0u64;
    while count.is_none_or(|n| printed < n) {
        tokio::select! {
            // Events already queued are printed before a stop or a close is noticed.
            biased;
            event = events.recv() => {
                let Some(event) = event else {
                    return Err(CtlError::Disconnected("smvsd ended the subscription".to_string()));
                };
                let delivered = event?;
                let line = match format {
                    Format::Text => output::event_text(&delivered.event.event),
                    Format::Json => output::to_json(&delivered.event)?,
                };
                emit(out, &line)?;
                delivered.handled();
                printed += 1;
            }
            () = &mut stop => return Ok(()),
            reason = host.closed() => return Err(CtlError::Disconnected(reason)),
        }
    }
    Ok(())
}

pub async fn delete(
    host: &HostClient,
    format: Format,
    out: &mut dyn Write,
    peer: &Username,
    id: Option<&MessageId>,
    everywhere: bool,
) -> Result<(), CtlError> {
    let deleted = host.delete(peer, id, everywhere).await?;
    let text = match format {
        Format::Text => output::delete_text(peer.as_str(), id, everywhere, deleted),
        Format::Json => {
            output::to_json(&output::delete_json(peer.as_str(), id, everywhere, deleted))?
        }
    };
    emit(out, &text)
}

/// `block` (`blocked: true`) and `unblock`.
pub async fn block(
    host: &HostClient,
    format: Format,
    out: &mut dyn Write,
    user: &Username,
    blocked: bool,
) -> Result<(), CtlError> {
    if blocked {
        host.block(user).await?;
    } else {
        host.unblock(user).await?;
    }
    let text = match format {
        Format::Text => output::block_text(user.as_str(), blocked),
        Format::Json => output::to_json(&output::block_json(user.as_str(), blocked))?,
    };
    emit(out, &text)
}

pub async fn contacts(
    host: &HostClient,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    let contacts = host.contacts().await?;
    emit(
        out,
        &output::render(format, contacts.as_slice(), output::contacts_text)?,
    )
}

pub async fn devices(
    host: &HostClient,
    format: Format,
    out: &mut dyn Write,
    action: Option<&crate::cli::DevicesAction>,
) -> Result<(), CtlError> {
    use crate::cli::DevicesAction;
    let text = match action {
        None => {
            let devices = host.devices().await?;
            output::render(format, devices.as_slice(), output::devices_text)?
        }
        Some(DevicesAction::Link { name }) => {
            let link = host.link_device(name).await?;
            output::render(format, &link, output::device_link_text)?
        }
        Some(DevicesAction::Revoke { name }) => {
            let device = host.revoke_device(name).await?;
            output::render(format, &device, |d| {
                format!(
                    "revoked {}: its connections are cut",
                    output::clean(&d.name)
                )
            })?
        }
    };
    emit(out, &text)
}

pub async fn directory(
    host: &HostClient,
    format: Format,
    out: &mut dyn Write,
    action: &crate::cli::DirectoryAction,
) -> Result<(), CtlError> {
    use crate::cli::DirectoryAction;
    let text = match action {
        DirectoryAction::List => {
            let all = host.directories().await?;
            output::render(format, all.as_slice(), output::directories_text)?
        }
        DirectoryAction::Add {
            name,
            address,
            key,
            scoped,
        } => {
            let added = host.add_directory(name, address, key, *scoped).await?;
            match format {
                Format::Text => format!(
                    "added {}; look-ups ask it from now on",
                    output::directories_text(std::slice::from_ref(&added))
                ),
                Format::Json => output::to_json(&added)?,
            }
        }
        DirectoryAction::Remove { name } => {
            host.remove_directory(name).await?;
            match format {
                Format::Text => format!("removed {}", output::clean(name)),
                Format::Json => output::to_json(&serde_json::json!({"removed": name}))?,
            }
        }
        DirectoryAction::Move { name } => {
            let left = host.move_directory(name).await?;
            match format {
                Format::Text => format!(
                    "moved to {}; {} now tells whoever looks you up where you went",
                    output::clean(name),
                    output::clean(&left)
                ),
                Format::Json => {
                    output::to_json(&serde_json::json!({"moved_to": name, "left": left}))?
                }
            }
        }
    };
    emit(out, &text)
}

pub async fn petname(
    host: &HostClient,
    format: Format,
    out: &mut dyn Write,
    action: &crate::cli::PetnameAction,
) -> Result<(), CtlError> {
    use crate::cli::PetnameAction;
    let text = match action {
        PetnameAction::List => {
            let all = host.petnames().await?;
            output::render(format, all.as_slice(), output::petnames_text)?
        }
        PetnameAction::Add { name, address } => {
            let added = host.add_petname(name, address).await?;
            match format {
                Format::Text => format!(
                    "{} now means {}",
                    output::clean(&added.name),
                    output::clean(&added.address)
                ),
                Format::Json => output::to_json(&added)?,
            }
        }
        PetnameAction::Remove { name } => {
            host.remove_petname(name).await?;
            match format {
                Format::Text => format!("removed the petname {}", output::clean(name)),
                Format::Json => output::to_json(&serde_json::json!({"removed": name}))?,
            }
        }
    };
    emit(out, &text)
}

pub async fn verify(
    host: &HostClient,
    format: Format,
    out: &mut dyn Write,
    user: &Username,
    choice: KeyChoice,
) -> Result<(), CtlError> {
    let verification = host.verify(user, choice).await?;
    emit(
        out,
        &output::render(format, &verification, output::verification_text)?,
    )
}

pub async fn expire(
    host: &HostClient,
    format: Format,
    out: &mut dyn Write,
    peer: &Username,
    seconds: u32,
) -> Result<(), CtlError> {
    host.expire(peer, seconds).await?;
    let text = match format {
        Format::Text => output::expire_text(peer.as_str(), seconds),
        Format::Json => output::to_json(&output::expire_json(peer.as_str(), seconds))?,
    };
    emit(out, &text)
}

pub async fn hangup(
    host: &HostClient,
    format: Format,
    out: &mut dyn Write,
    id: Option<&CallId>,
) -> Result<(), CtlError> {
    host.hangup_call(id).await?;
    let text = match format {
        Format::Text => "hung up".to_string(),
        Format::Json => output::to_json(&serde_json::json!({ "hung_up": id.map(|i| i.to_hex()) }))?,
    };
    emit(out, &text)
}

pub async fn calls(host: &HostClient, format: Format, out: &mut dyn Write) -> Result<(), CtlError> {
    let calls = host.calls().await?;
    emit(
        out,
        &output::render(format, &calls, |c| output::calls_text(c))?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_come_from_the_argument_or_stdin() {
        assert_eq!(read_body("hello", &b"ignored"[..]).unwrap(), "hello");
        assert_eq!(read_body("-", &b"from stdin\n"[..]).unwrap(), "from stdin");
        assert_eq!(read_body("-", &b"crlf\r\n"[..]).unwrap(), "crlf");
        assert_eq!(read_body("-", &b"two\n\n"[..]).unwrap(), "two\n");
        assert_eq!(read_body("-", &b"no newline"[..]).unwrap(), "no newline");
        let e = read_body("-", &b"\xff\xfe"[..]).unwrap_err();
        assert_eq!(e.to_string(), "the message on stdin is not UTF-8");
        let big = vec![b'a'; MAX_STDIN_BODY + 1];
        let e = read_body("-", big.as_slice()).unwrap_err();
        assert!(e.to_string().contains("larger than 4 MiB"));
    }
}
