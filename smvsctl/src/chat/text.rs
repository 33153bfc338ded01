//! Peer text made safe to draw, and wrapped to a width.
//!
//! Whatever a peer writes is drawn as what it is: nothing in it can move the cursor, change
//! colours, reverse the order of text, or hide itself. [`visible`] maps one line of a message:
//!
//! - C0 controls become their Control Pictures (ESC shows as `␛`, CR as `␍`), DEL as `␡`, C1
//!   controls as `�`; a tab is a space;
//! - bidirectional controls (overrides, embeddings, isolates, marks) and invisible formatting
//!   characters (zero-width space and joiners, word joiner, BOM, soft hyphen, Hangul fillers,
//!   tag characters) become `�`, so a reader sees that something is there;
//! - variation selectors are dropped (they only change how a terminal sizes an emoji);
//! - a combining mark with nothing to sit on is drawn on a dotted circle `◌`, as Unicode
//!   suggests, and at most [`MAX_MARKS`] marks stack on one character (no "Zalgo" text
//!   spilling over the lines around it).
//!
//! - emoji skin-tone modifiers are dropped too (terminals disagree on how wide the pair is),
//!   and any grapheme still wider than two cells becomes `�`: nothing can be wider than the
//!   widest letter, so wrapping always has room.
//!
//! Widths are counted per grapheme exactly as ratatui draws them ([`CellWidth`]), so a
//! wrapped line never spills past its pane: East Asian wide characters take two cells.

use ratatui::buffer::CellWidth;
use unicode_segmentation::UnicodeSegmentation;
use unicode_width::UnicodeWidthStr;

/// Combining marks kept on one base character; more are dropped.
pub const MAX_MARKS: usize = 3;

/// Where a lone combining mark is drawn (U+25CC DOTTED CIRCLE).
const MARK_BASE: char = '\u{25CC}';
const REPLACEMENT: char = '\u{FFFD}';

/// One line of peer text (no `\n` in it), safe to draw.
pub fn visible(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    // Marks on the last base character pushed; None: no base to sit on.
    let mut marks: Option<usize> = None;
    for c in line.chars() {
        let shown = match c {
            '\t' => ' ',
            '\u{0}'..='\u{1f}' => char::from_u32(0x2400 + c as u32).unwrap_or(REPLACEMENT),
            '\u{7f}' => '\u{2421}',
            '\u{80}'..='\u{9f}' => REPLACEMENT,
            c if is_variation_selector(c) || is_skin_tone(c) => continue,
            c if is_bidi_control(c) || is_invisible(c) => REPLACEMENT,
            c => c,
        };
        if char_width(shown) == 0 {
            match marks {
                Some(n) if n < MAX_MARKS => {
                    marks = Some(n + 1);
                    out.push(shown);
                }
                Some(_) => {}
                None => {
                    out.push(MARK_BASE);
                    out.push(shown);
                    marks = Some(1);
                }
            }
        } else {
            out.push(shown);
            marks = (shown != ' ').then_some(0);
        }
    }
    if out.graphemes(true).all(|g| grapheme_width(g) <= 2) {
        return out;
    }
    out.graphemes(true)
        .map(|g| {
            if grapheme_width(g) <= 2 {
                g
            } else {
                "\u{FFFD}"
            }
        })
        .collect()
}

fn is_skin_tone(c: char) -> bool {
    matches!(c, '\u{1F3FB}'..='\u{1F3FF}')
}

fn char_width(c: char) -> usize {
    let mut buf = [0u8; 4];
    UnicodeWidthStr::width(&*c.encode_utf8(&mut buf))
}

fn is_variation_selector(c: char) -> bool {
    matches!(c, '\u{FE00}'..='\u{FE0F}' | '\u{E0100}'..='\u{E01EF}' | '\u{180B}'..='\u{180F}')
}

fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

/// Characters that draw nothing (or a blank the width of a letter) and so can hide or fake text.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            // Prepended concatenation marks: they join the grapheme after them, so a chain of
            // them would make one arbitrarily wide grapheme.
            | '\u{0600}'..='\u{0605}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{0890}'..='\u{0891}'
            | '\u{08E2}'
            | '\u{110BD}'
            | '\u{110CD}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{17B4}'
            | '\u{17B5}'
            | '\u{200B}'..='\u{200D}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{2060}'..='\u{2065}'
            | '\u{206A}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E007F}'
    )
}

/// Cells `text` takes when drawn (as ratatui counts them: per grapheme).
pub fn width(text: &str) -> usize {
    text.graphemes(true).map(grapheme_width).sum()
}

fn grapheme_width(g: &str) -> usize {
    // One byte: ASCII, one cell, as ratatui counts it (whose own check would refuse a control
    // character here; text not yet made visible is measured too).
    if g.len() == 1 {
        1
    } else {
        usize::from(g.cell_width())
    }
}

/// Splits an already [`visible`] line into pieces at most `width` cells wide: at the last space
/// that fits, else inside the word. A wide character never straddles two pieces.
pub fn wrap(line: &str, width: usize) -> Vec<String> {
    let width = width.max(2);
    let mut pieces = Vec::new();
    let mut current = String::new();
    let mut current_width = 0;
    // Byte offset in `current` just after its last space, and the width up to it.
    let mut last_space: Option<(usize, usize)> = None;
    for g in line.graphemes(true) {
        let w = grapheme_width(g);
        while current_width + w > width && !current.is_empty() {
            match last_space {
                Some((at, w_at)) if at < current.len() => {
                    let rest = current.split_off(at);
                    pieces.push(std::mem::take(&mut current).trim_end().to_string());
                    current = rest;
                    current_width -= w_at;
                }
                _ => {
                    pieces.push(std::mem::take(&mut current));
                    current_width = 0;
                }
            }
            last_space = None;
        }
        if g == " " && current.is_empty() && !pieces.is_empty() {
            // A line never starts with the space it was broken at.
            continue;
        }
        current.push_str(g);
        current_width += w;
        if g == " " {
            last_space = Some((current.len(), current_width));
        }
    }
    if !current.is_empty() || pieces.is_empty() {
        pieces.push(current);
    }
    pieces
}

/// Splits a line at exactly `width` cells (a wide character that would straddle moves down),
/// never at spaces: the compose box, where the cursor must land where it was typed. Greedy, so
/// the pieces of a prefix are a prefix of the pieces.
pub fn wrap_hard(line: &str, width: usize) -> Vec<String> {
    let width = width.max(2);
    let mut pieces = vec![String::new()];
    let mut used = 0;
    for g in line.graphemes(true) {
        let w = grapheme_width(g);
        if used + w > width {
            pieces.push(String::new());
            used = 0;
        }
        if let Some(last) = pieces.last_mut() {
            last.push_str(g);
        }
        used += w;
    }
    pieces
}

/// `text` cut to at most `width` cells, with `…` when something was cut.
pub fn truncate(text: &str, width: usize) -> String {
    if self::width(text) <= width {
        return text.to_string();
    }
    let mut out = String::new();
    let mut used = 0;
    for g in text.graphemes(true) {
        let w = grapheme_width(g);
        if used + w + 1 > width {
            break;
        }
        out.push_str(g);
        used += w;
    }
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_escapes_show_as_pictures() {
        assert_eq!(visible("a\u{1b}[31mred"), "a\u{241b}[31mred");
        assert_eq!(visible("x\ry\u{7}"), "x\u{240d}y\u{2407}");
        assert_eq!(visible("\u{9b}2J"), "\u{FFFD}2J");
        assert_eq!(visible("del\u{7f}"), "del\u{2421}");
        assert_eq!(visible("a\tb"), "a b");
        for c in visible("\u{1b}]0;title\u{7}\u{1b}[2J\u{1b}[H").chars() {
            assert!(!c.is_control(), "{c:?}");
        }
    }

    #[test]
    fn bidi_and_invisible_characters_are_shown_as_replacements() {
        assert_eq!(visible("abc\u{202E}fed"), "abc\u{FFFD}fed");
        assert_eq!(visible("\u{2067}x\u{2069}"), "\u{FFFD}x\u{FFFD}");
        assert_eq!(visible("pay\u{200B}pal"), "pay\u{FFFD}pal");
        assert_eq!(visible("\u{FEFF}"), "\u{FFFD}");
        assert_eq!(visible("\u{E0041}"), "\u{FFFD}");
        // Variation selectors only change an emoji's size: dropped.
        assert_eq!(visible("\u{2764}\u{FE0F}"), "\u{2764}");
    }

    #[test]
    fn combining_marks_need_a_base_and_do_not_pile_up() {
        assert_eq!(visible("e\u{301}"), "e\u{301}");
        assert_eq!(visible("\u{301}"), "\u{25CC}\u{301}");
        assert_eq!(visible("a \u{301}"), "a \u{25CC}\u{301}");
        let zalgo = format!("z{}", "\u{336}".repeat(50));
        assert_eq!(visible(&zalgo).chars().count(), 1 + MAX_MARKS);
        assert_eq!(width(&visible(&zalgo)), 1);
    }

    #[test]
    fn no_grapheme_is_wider_than_two_cells() {
        // A chain of prepended concatenation marks, halfwidth sound marks, skin tones.
        let text = format!("{}x ｶﾞﾞﾞﾞ 👍\u{1F3FD}", "\u{0600}".repeat(30));
        let shown = visible(&text);
        for g in shown.graphemes(true) {
            assert!(grapheme_width(g) <= 2, "{g:?} in {shown:?}");
        }
        assert!(!shown.contains('\u{1F3FD}'));
        for piece in wrap(&shown, 3) {
            assert!(width(&piece) <= 3, "{piece:?}");
        }
    }

    #[test]
    fn wide_characters_count_two_cells_and_never_straddle() {
        assert_eq!(width("日本"), 4);
        let pieces = wrap("日本語のテキスト", 5);
        for p in &pieces {
            assert!(width(p) <= 5, "{p:?}");
        }
        assert_eq!(pieces.concat(), "日本語のテキスト");
    }

    #[test]
    fn wrapping_breaks_at_spaces_else_inside_words() {
        assert_eq!(wrap("hello there world", 11), vec!["hello", "there world"]);
        assert_eq!(wrap("abcdefghij", 4), vec!["abcd", "efgh", "ij"]);
        assert_eq!(wrap("abcd efgh ijkl", 4), vec!["abcd", "efgh", "ijkl"]);
        assert_eq!(wrap("", 10), vec![""]);
        let long = "x".repeat(65_536);
        let pieces = wrap(&long, 78);
        assert!(pieces.iter().all(|p| width(p) <= 78));
        assert_eq!(pieces.iter().map(|p| p.len()).sum::<usize>(), 65_536);
    }

    #[test]
    fn hard_wrapping_is_prefix_stable() {
        let line = "ab日本cdef";
        let all = wrap_hard(line, 3);
        assert_eq!(all, vec!["ab", "日", "本c", "def"]);
        let prefix = wrap_hard("ab日本c", 3);
        assert_eq!(prefix[..], all[..3]);
        assert_eq!(wrap_hard("", 3), vec![""]);
    }

    /// Random strings from a palette of troublemakers: whatever comes in, what `visible`
    /// gives out has no control, bidi or invisible character and no grapheme wider than two
    /// cells, and `wrap` keeps every piece within its width and loses no text.
    #[test]
    fn visible_text_and_its_wrapping_hold_for_random_hostile_input() {
        const PALETTE: &[char] = &[
            'a',
            ' ',
            '\u{1b}',
            '[',
            '\n',
            '\r',
            '\t',
            '\u{7f}',
            '\u{9b}',
            '\u{202E}',
            '\u{2067}',
            '\u{200B}',
            '\u{200D}',
            '\u{FEFF}',
            '\u{301}',
            '\u{336}',
            '\u{0600}',
            '\u{FE0F}',
            '\u{1F3FD}',
            '👍',
            '日',
            'ｶ',
            'ﾞ',
            '\u{1160}',
            '\u{E0041}',
            'é',
            '\u{FFFD}',
            '\u{10FFFF}',
        ];
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..5_000 {
            let len = (next() % 40) as usize;
            let line: String = (0..len)
                .map(|_| PALETTE[(next() % PALETTE.len() as u64) as usize])
                .filter(|c| *c != '\n')
                .collect();
            let shown = visible(&line);
            for c in shown.chars() {
                assert!(!c.is_control(), "{c:?} from {line:?}");
                assert!(
                    !is_bidi_control(c) && !is_invisible(c),
                    "{c:?} from {line:?}"
                );
            }
            for g in shown.graphemes(true) {
                assert!(grapheme_width(g) <= 2, "{g:?} from {line:?}");
            }
            let w = 1 + (next() % 12) as usize;
            let pieces = wrap(&shown, w);
            for p in &pieces {
                assert!(width(p) <= w.max(2), "{p:?} wider than {w} from {line:?}");
            }
            let kept: String = pieces.concat().chars().filter(|c| *c != ' ').collect();
            let all: String = shown.chars().filter(|c| *c != ' ').collect();
            assert_eq!(kept, all, "{line:?}");
            for p in wrap_hard(&shown, w) {
                assert!(width(&p) <= w.max(2), "{p:?} from {line:?}");
            }
        }
    }

    #[test]
    fn raw_text_can_be_measured() {
        assert_eq!(width("a\u{1b}[31m"), 6);
        assert_eq!(wrap("\u{1b}\u{7}x", 2).concat(), "\u{1b}\u{7}x");
    }

    #[test]
    fn truncation_marks_the_cut() {
        assert_eq!(truncate("bob", 10), "bob");
        assert_eq!(truncate("abcdefghij", 5), "abcd…");
        assert_eq!(width(&truncate("日本語日本語", 5)), 5);
    }
}
