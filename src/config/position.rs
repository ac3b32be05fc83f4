//! Where in the file a TOML error is: line, column and key path.
//!
//! toml reports a byte span but no key path, and its `Display` quotes the source line
//! (which may hold an interpolated secret), so we build the location ourselves from
//! the raw text: the path of `[table]` / `[[array]]` headers (arrays counted, giving
//! `subscriptions[1]`) plus the keys leading to the span (`retry.max_attempts`).
//! It is a best effort for messages; a wrong guess only makes a message less precise.

use std::collections::HashMap;

use super::syntax::{Context, Lexer};

/// A location in the raw config text.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Position {
    /// 1-based line.
    pub(super) line: usize,
    /// 1-based column, in characters.
    pub(super) column: usize,
    /// Key path such as `subscriptions[0].timeout`, when one could be determined.
    pub(super) path: Option<String>,
}

/// Locates byte offset `pos` of `raw`.
pub(super) fn locate(raw: &str, pos: usize) -> Position {
    let pos = floor_char_boundary(raw, pos);
    let line_start = raw[..pos].rfind('\n').map_or(0, |i| i + 1);
    let line = raw[..pos].matches('\n').count() + 1;
    let column = raw[line_start..pos].chars().count() + 1;

    let mut table = String::new();
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut key_line: Option<usize> = None;
    let mut error_on_header = false;
    for start in code_line_starts(raw, line_start) {
        let text = raw[start..].lines().next().unwrap_or("").trim_start();
        let indent = raw[start..].len() - raw[start..].trim_start().len();
        let is_header = text.starts_with('[');
        if let Some(inner) = text.strip_prefix("[[") {
            let name = parse_key(inner.trim_start())
                .map(|(k, _)| k)
                .unwrap_or_default();
            let n = counts.entry(name.clone()).or_insert(0);
            table = format!("{name}[{n}]");
            *n += 1;
            key_line = None;
        } else if let Some(inner) = text.strip_prefix('[') {
            table = parse_key(inner.trim_start())
                .map(|(k, _)| k)
                .unwrap_or_default();
            key_line = None;
        } else if parse_key(text).is_some_and(|(_, rest)| rest.trim_start().starts_with('=')) {
            key_line = Some(start + indent);
        }
        if start == line_start {
            error_on_header = is_header;
        }
    }

    let mut parts: Vec<String> = Vec::new();
    if !table.is_empty() {
        parts.push(table);
    }
    if !error_on_header {
        if let Some(start) = key_line {
            parts.extend(inline_keys(raw, start, pos));
        }
    }
    Position {
        line,
        column,
        path: (!parts.is_empty()).then(|| parts.join(".")),
    }
}

/// Offsets of the lines up to and including the one starting at `last`, that start in
/// code (not inside a multi-line string).
fn code_line_starts(raw: &str, last: usize) -> Vec<usize> {
    let mut starts = vec![0];
    let mut lexer = Lexer::new();
    let mut pos = 0;
    while pos < last {
        let len = lexer.step(&raw[pos..]);
        pos += len;
        if raw[..pos].ends_with('\n') && matches!(lexer.context(), Context::Code) {
            starts.push(pos);
        }
    }
    starts.retain(|&s| s <= last);
    starts
}

/// The keys (nested through inline tables) leading to `pos`, scanning from the key at
/// `start`.
fn inline_keys(raw: &str, start: usize, pos: usize) -> Vec<String> {
    let mut path: Vec<String> = Vec::new();
    let mut open: Vec<u8> = Vec::new();
    let mut expect_key = true;
    let bytes = raw.as_bytes();
    let mut i = start;
    while i <= pos && i < raw.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'#' {
            i = raw[i..].find('\n').map_or(raw.len(), |n| i + n);
            continue;
        }
        if expect_key {
            let Some((key, rest)) = parse_key(&raw[i..]) else {
                break;
            };
            let Some(after) = rest.trim_start().strip_prefix('=') else {
                break;
            };
            let depth = open.iter().filter(|&&b| b == b'{').count();
            path.truncate(depth);
            path.push(key);
            i = raw.len() - after.len();
            expect_key = false;
            continue;
        }
        match c {
            b'"' | b'\'' => i = skip_string(raw, i),
            b'{' => {
                open.push(c);
                expect_key = true;
                i += 1;
            }
            b'[' => {
                open.push(c);
                i += 1;
            }
            b'}' | b']' => {
                open.pop();
                let depth = open.iter().filter(|&&b| b == b'{').count();
                path.truncate(depth + 1);
                i += 1;
            }
            b',' => {
                expect_key = open.last() == Some(&b'{');
                i += 1;
            }
            _ => i += 1,
        }
    }
    path
}

/// Index just past the string starting at `i`.
fn skip_string(raw: &str, i: usize) -> usize {
    let mut lexer = Lexer::new();
    let mut pos = i + lexer.step(&raw[i..]);
    while pos < raw.len() && lexer.context() != Context::Code {
        pos += lexer.step(&raw[pos..]);
    }
    pos
}

/// Parses a (possibly dotted, possibly quoted) key at the start of `text`; returns the
/// key with quotes removed and the rest of the text.
fn parse_key(text: &str) -> Option<(String, &str)> {
    let mut parts = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches([' ', '\t']);
        let (part, after) = if let Some(q) = rest.strip_prefix('"') {
            let end = q.find('"')?;
            (&q[..end], &q[end + 1..])
        } else if let Some(q) = rest.strip_prefix('\'') {
            let end = q.find('\'')?;
            (&q[..end], &q[end + 1..])
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
                .unwrap_or(rest.len());
            if end == 0 {
                return None;
            }
            (&rest[..end], &rest[end..])
        };
        parts.push(part.to_owned());
        let trimmed = after.trim_start_matches([' ', '\t']);
        match trimmed.strip_prefix('.') {
            Some(next) => rest = next,
            None => return Some((parts.join("."), after)),
        }
    }
}

fn floor_char_boundary(text: &str, mut pos: usize) -> usize {
    pos = pos.min(text.len());
    while !text.is_char_boundary(pos) {
        pos -= 1;
    }
    pos
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const TEXT: &str = "a = 1\n[source]\nurl = 'x'\n\n[[subscriptions]]\nname = 'a'\n\
        retry = { max_attempts = 0, x = { y = [1, 2] } }\n\
        template = '''\n[not.a.header]\n'''\n\
        [[subscriptions]]\nname = 'b'\n  \"headers\".\"X-A\" = 1\nops = [\n  \"bogus\",\n]\n";

    fn at(needle: &str) -> Position {
        locate(TEXT, TEXT.find(needle).unwrap())
    }

    #[test]
    fn finds_paths() {
        assert_eq!(at("a = 1").path.as_deref(), Some("a"));
        assert_eq!(at("'x'").path.as_deref(), Some("source.url"));
        assert_eq!(at("'a'").path.as_deref(), Some("subscriptions[0].name"));
        assert_eq!(
            at("0,").path.as_deref(),
            Some("subscriptions[0].retry.max_attempts")
        );
        assert_eq!(at("2]").path.as_deref(), Some("subscriptions[0].retry.x.y"));
        assert_eq!(
            at("not.a").path.as_deref(),
            Some("subscriptions[0].template")
        );
        assert_eq!(at("'b'").path.as_deref(), Some("subscriptions[1].name"));
        assert_eq!(
            at("\"headers\"").path.as_deref(),
            Some("subscriptions[1].headers.X-A")
        );
        assert_eq!(
            at("\"bogus\"").path.as_deref(),
            Some("subscriptions[1].ops")
        );
        let header = TEXT.rfind("[[subscriptions]]").unwrap();
        assert_eq!(
            locate(TEXT, header).path.as_deref(),
            Some("subscriptions[1]")
        );
    }

    #[test]
    fn line_and_column() {
        let p = at("'x'");
        assert_eq!((p.line, p.column), (3, 7));
    }
}
