//! Record bytes made safe to print on a terminal.
//!
//! A record's key, value and headers are whatever a producer wrote. Printed
//! as they are, an escape sequence in them (`ESC [ 2 J` clears the screen;
//! others move the cursor, retitle the window or, on some terminals, write
//! to the clipboard) would be obeyed by the terminal of whoever reads them.
//! Every printer of record bytes (`tail`, `dead-letters`, `asof`) goes
//! through [`escape_for_terminal`]. JSON output is escaped by serde_json
//! for U+0000..U+001F only; [`json_for_terminal`] escapes the rest (DEL,
//! C1, bidirectional controls) the JSON way.
//!
//! # References
//!
//! ECMA-48 (control functions: C0 and C1 sets); Unicode Technical Report
//! #36 and CVE-2021-42574 ("Trojan Source": bidirectional controls that
//! make text display in another order than it is stored).

use std::fmt::Write as _;

/// `bytes` as text that a terminal prints and does not obey.
///
/// Printable UTF-8 is kept as it is. A byte that is not part of valid
/// UTF-8, and every ASCII control character (tab and newline included, so
/// a record stays on its line), is shown as `\xNN`; other control
/// characters (C1, bidirectional overrides and isolates) as `\u{NNNN}`.
/// The result is for reading, not parsing: a backslash in the record is
/// printed as it is (`tail --format json` gives exact values).
pub fn escape_for_terminal(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    escape_for_terminal_onto(bytes, &mut out);
    out
}

/// [`escape_for_terminal`] of `bytes`, appended to `out`: for a printer
/// that builds each line in one buffer it reuses.
pub fn escape_for_terminal_onto(bytes: &[u8], out: &mut String) {
    let mut rest = bytes;
    // Runs of printable ASCII, most of a record, are copied as they are;
    // only what lies between them is looked at character by character.
    // Cutting there changes nothing: an ASCII byte is never inside a UTF-8
    // sequence, valid or not.
    while !rest.is_empty() {
        let plain = rest
            .iter()
            .position(|&b| !is_printable_ascii(b))
            .unwrap_or(rest.len());
        let (run, after) = rest.split_at(plain);
        out.push_str(std::str::from_utf8(run).unwrap_or_default());
        let odd = after
            .iter()
            .position(|&b| is_printable_ascii(b))
            .unwrap_or(after.len());
        let (odd, after) = after.split_at(odd);
        escape_chars(odd, out);
        rest = after;
    }
}

fn is_printable_ascii(b: u8) -> bool {
    (0x20..0x7f).contains(&b)
}

/// [`escape_for_terminal`] of `bytes`, character by character, onto `out`.
fn escape_chars(bytes: &[u8], out: &mut String) {
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_ascii_control() {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            } else if is_unsafe(c) {
                let _ = write!(out, "\\u{{{:04x}}}", u32::from(c));
            } else {
                out.push(c);
            }
        }
        for byte in chunk.invalid() {
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
}

/// Compact JSON (as `serde_json::to_string` writes it) with every other
/// character a terminal acts on written as a JSON `\uNNNN` escape: DEL,
/// the C1 controls and the bidirectional controls, which serde_json leaves
/// as they are. A JSON parser reads exactly the same value.
pub fn json_for_terminal(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        // serde_json escapes U+0000..U+001F inside strings, and compact
        // JSON has none outside them; whitespace is left for pretty JSON.
        if is_unsafe(c) && !c.is_ascii_whitespace() {
            // Every unsafe character is in the Basic Multilingual Plane.
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

/// Characters a terminal acts on or that reorder what is shown: the C1
/// controls (U+0080..U+009F, which include CSI and OSC), and Unicode's
/// bidirectional marks, embeddings, overrides and isolates.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The whole input character by character: what the run-copying
    /// [`escape_for_terminal`] must print, byte for byte.
    fn escaped_char_by_char(bytes: &[u8]) -> String {
        let mut out = String::new();
        escape_chars(bytes, &mut out);
        out
    }

    proptest! {
        /// Copying printable ASCII runs whole prints the same as looking
        /// at every character, for any bytes: ASCII, UTF-8 (controls,
        /// bidirectional marks, emoji), cut-off and invalid sequences.
        #[test]
        fn copying_plain_runs_prints_what_char_by_char_prints(
            parts in proptest::collection::vec(
                prop_oneof![
                    "[ -~]{0,12}".prop_map(String::into_bytes),
                    any::<String>().prop_map(String::into_bytes),
                    Just("\u{202e}\u{9b}\u{1b}[2J\u{7f}".as_bytes().to_vec()),
                    proptest::collection::vec(any::<u8>(), 0..6),
                ],
                0..8,
            )
        ) {
            let bytes = parts.concat();
            prop_assert_eq!(escape_for_terminal(&bytes), escaped_char_by_char(&bytes));
        }
    }

    /// A multi-byte sequence cut by a printable ASCII byte is escaped byte by byte on both sides.
    #[test]
    fn a_sequence_cut_by_ascii_is_escaped_byte_by_byte() {
        assert_eq!(
            escape_for_terminal(&[0xe2, b'a', 0x82, 0xac]),
            "\\xe2a\\x82\\xac"
        );
        assert_eq!(escape_for_terminal("é a".as_bytes()), "é a");
    }

    /// An ESC sequence and other C0 controls are shown, not sent to the terminal.
    #[test]
    fn ascii_controls_are_escaped() {
        assert_eq!(
            escape_for_terminal(b"a\x1b[2Jb\x07\x00\r\n\t\x7f"),
            "a\\x1b[2Jb\\x07\\x00\\x0d\\x0a\\x09\\x7f"
        );
    }

    /// Bytes that are not UTF-8 are shown as `\xNN`, valid text around them is kept.
    #[test]
    fn invalid_utf8_is_escaped_byte_by_byte() {
        assert_eq!(escape_for_terminal(b"ok\xff\xfe!"), "ok\\xff\\xfe!");
        assert_eq!(escape_for_terminal(&[0xe2, 0x82]), "\\xe2\\x82");
    }

    /// C1 controls (the 8-bit CSI) and bidirectional overrides are shown as code points.
    #[test]
    fn c1_and_bidi_controls_are_escaped() {
        assert_eq!(escape_for_terminal("x\u{9b}2J".as_bytes()), "x\\u{009b}2J");
        assert_eq!(
            escape_for_terminal("a\u{202e}cba\u{2066}".as_bytes()),
            "a\\u{202e}cba\\u{2066}"
        );
    }

    /// JSON keeps its value and loses every character a terminal acts on.
    #[test]
    fn json_escapes_what_serde_leaves() {
        let value = serde_json::json!({"v": "a\u{1b}[2J\u{7f}\u{9b}\u{202e}é🍕"});
        let json = serde_json::to_string(&value).expect("json");
        let safe = json_for_terminal(&json);
        assert_eq!(safe, r#"{"v":"a\u001b[2J\u007f\u009b\u202eé🍕"}"#);
        let back: serde_json::Value = serde_json::from_str(&safe).expect("still JSON");
        assert_eq!(back, value);
    }

    /// Printable text, non-ASCII letters and emoji included, is kept as it is.
    #[test]
    fn printable_text_is_kept() {
        let text = r#"{"customer_id":"CUST-0042","note":"Crème brûlée ✓ 🍕 \"quoted\""}"#;
        assert_eq!(escape_for_terminal(text.as_bytes()), text);
        assert_eq!(escape_for_terminal(b""), "");
    }
}
