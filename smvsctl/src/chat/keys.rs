//! Keys to actions: vi-style letters and the arrow keys both work. A pure mapping, so every
//! binding can be checked without a terminal.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::app::{Focus, Overlay};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Quit,
    Help,
    Close,
    Up,
    Down,
    PageUp,
    PageDown,
    Oldest,
    Newest,
    FocusList,
    ToggleFocus,
    Open,
    Write,
    StopWriting,
    Type(char),
    NewLine,
    Backspace,
    Delete,
    Left,
    Right,
    Home,
    End,
    ClearLine,
    Send,
    NewConversation,
    DeleteMessage,
    DeleteConversation,
    Disappearing,
    ToggleBlock,
    Verify,
    AcceptKey,
    /// Keep the pinned key and refuse the other one (`verify --keep-key`).
    KeepKey,
    CallVideo,
    CallAudio,
    Answer,
    Decline,
    HangUp,
    Mute,
    /// In a confirmation: yes (here), or everywhere.
    Yes,
    Everywhere,
    /// In a prompt.
    Submit,
    /// Draw the whole screen again (Ctrl-L).
    Redraw,
    Nothing,
}

/// What `key` does given where the focus is and which overlay is up.
pub fn action(key: KeyEvent, focus: Focus, overlay: Option<&Overlay>) -> Action {
    if key.kind == KeyEventKind::Release {
        return Action::Nothing;
    }
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    let alt = key.modifiers.contains(KeyModifiers::ALT);
    if ctrl && matches!(key.code, KeyCode::Char('c')) {
        return Action::Quit;
    }
    // In a window over the rest, Control and Alt letters do nothing (Ctrl-Y must not confirm).
    if overlay.is_some() && (ctrl || alt) && matches!(key.code, KeyCode::Char(_)) {
        return Action::Nothing;
    }
    match overlay {
        Some(Overlay::Help) => {
            return match key.code {
                KeyCode::Esc | KeyCode::Char('?') | KeyCode::Char('q') | KeyCode::Enter => {
                    Action::Close
                }
                _ => Action::Nothing,
            }
        }
        Some(Overlay::Verify(_)) => {
            return match key.code {
                KeyCode::Char('A') => Action::AcceptKey,
                KeyCode::Char('K') => Action::KeepKey,
                KeyCode::Esc | KeyCode::Char('q') | KeyCode::Char('v') => Action::Close,
                _ => Action::Nothing,
            }
        }
        Some(Overlay::Confirm(_)) => {
            return match key.code {
                KeyCode::Char('y') => Action::Yes,
                KeyCode::Char('e') => Action::Everywhere,
                KeyCode::Esc | KeyCode::Char('n') | KeyCode::Char('q') => Action::Close,
                _ => Action::Nothing,
            }
        }
        Some(Overlay::Prompt(..)) => {
            return match key.code {
                KeyCode::Enter => Action::Submit,
                KeyCode::Esc => Action::Close,
                KeyCode::Backspace => Action::Backspace,
                KeyCode::Char(c) if !ctrl && !alt => Action::Type(c),
                _ => Action::Nothing,
            }
        }
        None => {}
    }
    if focus == Focus::Compose {
        return match key.code {
            KeyCode::Enter if alt => Action::NewLine,
            KeyCode::Char('j') if ctrl => Action::NewLine,
            KeyCode::Enter => Action::Send,
            KeyCode::Esc => Action::StopWriting,
            KeyCode::Backspace => Action::Backspace,
            KeyCode::Delete => Action::Delete,
            KeyCode::Left => Action::Left,
            KeyCode::Right => Action::Right,
            KeyCode::Home => Action::Home,
            KeyCode::End => Action::End,
            KeyCode::Char('a') if ctrl => Action::Home,
            KeyCode::Char('e') if ctrl => Action::End,
            KeyCode::Char('u') if ctrl => Action::ClearLine,
            KeyCode::Tab => Action::Type(' '),
            // The conversation scrolls while writing, as in every chat.
            KeyCode::PageUp => Action::PageUp,
            KeyCode::PageDown => Action::PageDown,
            KeyCode::Char('l') if ctrl => Action::Redraw,
            KeyCode::Char(c) if !ctrl && !alt => Action::Type(c),
            _ => Action::Nothing,
        };
    }
    // Control and Alt with a letter never fall through to the plain letter's action (Ctrl-B
    // must not unblock, Ctrl-E not hang up).
    if let KeyCode::Char(c) = key.code {
        if ctrl || alt {
            return match c {
                'u' if ctrl => Action::PageUp,
                'd' if ctrl => Action::PageDown,
                'l' if ctrl => Action::Redraw,
                _ => Action::Nothing,
            };
        }
    }
    let in_list = focus == Focus::List;
    match key.code {
        KeyCode::Char('q') => Action::Quit,
        KeyCode::Char('?') => Action::Help,
        KeyCode::Up | KeyCode::Char('k') => Action::Up,
        KeyCode::Down | KeyCode::Char('j') => Action::Down,
        KeyCode::PageUp => Action::PageUp,
        KeyCode::PageDown => Action::PageDown,
        KeyCode::Char('g') | KeyCode::Home => Action::Oldest,
        KeyCode::Char('G') | KeyCode::End => Action::Newest,
        KeyCode::Tab => Action::ToggleFocus,
        KeyCode::Left | KeyCode::Char('h') => Action::FocusList,
        KeyCode::Enter | KeyCode::Right | KeyCode::Char('l') if in_list => Action::Open,
        KeyCode::Enter | KeyCode::Char('i') => Action::Write,
        KeyCode::Char('n') => Action::NewConversation,
        KeyCode::Char('x') => Action::DeleteMessage,
        KeyCode::Char('D') => Action::DeleteConversation,
        KeyCode::Char('t') => Action::Disappearing,
        KeyCode::Char('b') => Action::ToggleBlock,
        KeyCode::Char('v') => Action::Verify,
        KeyCode::Char('c') => Action::CallVideo,
        KeyCode::Char('C') => Action::CallAudio,
        KeyCode::Char('a') => Action::Answer,
        KeyCode::Char('d') => Action::Decline,
        KeyCode::Char('e') => Action::HangUp,
        KeyCode::Char('m') => Action::Mute,
        KeyCode::Esc => Action::Close,
        _ => Action::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    #[test]
    fn vi_keys_and_arrows_do_the_same() {
        for focus in [Focus::List, Focus::Messages] {
            assert_eq!(action(key(KeyCode::Char('k')), focus, None), Action::Up);
            assert_eq!(action(key(KeyCode::Up), focus, None), Action::Up);
            assert_eq!(action(key(KeyCode::Char('j')), focus, None), Action::Down);
            assert_eq!(action(key(KeyCode::Down), focus, None), Action::Down);
        }
        assert_eq!(
            action(key(KeyCode::Char('l')), Focus::List, None),
            Action::Open
        );
        assert_eq!(action(key(KeyCode::Right), Focus::List, None), Action::Open);
        assert_eq!(
            action(key(KeyCode::Char('h')), Focus::Messages, None),
            Action::FocusList
        );
        assert_eq!(
            action(key(KeyCode::Left), Focus::Messages, None),
            Action::FocusList
        );
    }

    #[test]
    fn writing_takes_letters_until_escape() {
        assert_eq!(
            action(key(KeyCode::Char('q')), Focus::Compose, None),
            Action::Type('q')
        );
        assert_eq!(
            action(key(KeyCode::Char('a')), Focus::Compose, None),
            Action::Type('a')
        );
        assert_eq!(
            action(key(KeyCode::Enter), Focus::Compose, None),
            Action::Send
        );
        let alt_enter = KeyEvent::new(KeyCode::Enter, KeyModifiers::ALT);
        assert_eq!(action(alt_enter, Focus::Compose, None), Action::NewLine);
        assert_eq!(
            action(key(KeyCode::Esc), Focus::Compose, None),
            Action::StopWriting
        );
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(action(ctrl_c, Focus::Compose, None), Action::Quit);
        assert_eq!(
            action(key(KeyCode::PageUp), Focus::Compose, None),
            Action::PageUp
        );
    }

    #[test]
    fn control_letters_are_not_plain_letters() {
        for c in ['b', 'e', 'x', 'D', 'a', 'q'] {
            let ctrl = KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL);
            assert_eq!(action(ctrl, Focus::Messages, None), Action::Nothing, "{c}");
        }
        let ctrl_l = KeyEvent::new(KeyCode::Char('l'), KeyModifiers::CONTROL);
        assert_eq!(action(ctrl_l, Focus::List, None), Action::Redraw);
    }

    #[test]
    fn accepting_a_key_needs_the_verification_screen() {
        assert_ne!(
            action(key(KeyCode::Char('A')), Focus::Messages, None),
            Action::AcceptKey
        );
        let v = Overlay::Verify(crate::client::VerificationView {
            user: smvs_schema::Username::parse("bob").unwrap(),
            safety_number: String::new(),
            transcript_hash: String::new(),
            key_changed: true,
            accepted: false,
            alarm: None,
            pinned_safety_number: None,
            session_version: 2,
            record: None,
        });
        assert_eq!(
            action(key(KeyCode::Char('A')), Focus::Messages, Some(&v)),
            Action::AcceptKey
        );
        assert_eq!(
            action(key(KeyCode::Char('K')), Focus::Messages, Some(&v)),
            Action::KeepKey
        );
    }
}
