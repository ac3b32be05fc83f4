//! `${VAR}` interpolation over the raw config text.
//!
//! A pure function of the text and an injected lookup, so tests never touch the
//! process environment. Rules:
//! - `${NAME}` (`NAME` = letters, digits, `_`, not starting with a digit) is replaced by
//!   the variable's value; an unset variable is an error naming it and its line.
//! - `$${NAME}` is an escape and yields a literal `${NAME}`.
//! - Inside `"..."` / `"""..."""` strings the value is escaped, so a password with `"`
//!   or `\` arrives intact instead of breaking (or silently changing) the TOML.
//!   Inside `'...'` strings, which cannot escape anything, a value containing `'` or a
//!   control character is an error. Outside strings the value is inserted as is
//!   (`max_concurrency = ${WORKERS}`).
//! - Comments are left untouched, so commented-out examples need no variables.
//!
//! The values are remembered ([`Expanded::substitutions`]) so that error messages
//! can be scrubbed of them and positions mapped back to the file the user wrote.

use std::ops::Range;

use super::syntax::{Context, Lexer};
use super::ConfigError;

/// Replaces `${VAR}` placeholders in `text` with values from `env`.
///
/// Errors ([`ConfigError::UnsetVar`], [`ConfigError::Invalid`]) never contain a value
/// and carry no origin; [`super::from_str_with_env`] adds it.
pub fn interpolate(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    expand(text, env).map(|expanded| expanded.text)
}

/// One replaced span of the raw text.
#[derive(Debug)]
pub(super) struct Substitution {
    /// Byte range in the raw text (`${NAME}` or `$${`).
    pub(super) input: Range<usize>,
    /// Byte range in the expanded text.
    pub(super) output: Range<usize>,
    /// `Some((name, value))` for a variable, `None` for a `$${` escape.
    pub(super) variable: Option<(String, String)>,
}

/// The expanded text plus what was replaced where.
#[derive(Debug)]
pub(super) struct Expanded {
    pub(super) text: String,
    pub(super) substitutions: Vec<Substitution>,
}

impl Expanded {
    /// Maps a byte offset of the expanded text to the raw text, so that error
    /// positions point at what the user wrote.
    pub(super) fn raw_offset(&self, pos: usize) -> usize {
        let mut delta: isize = 0;
        for sub in &self.substitutions {
            if pos < sub.output.start {
                break;
            }
            if pos < sub.output.end {
                return sub.input.start;
            }
            delta = sub.input.end as isize - sub.output.end as isize;
        }
        pos.saturating_add_signed(delta)
    }

    /// The variables whose values overlap `range` of the expanded text.
    pub(super) fn overlaps(&self, range: &Range<usize>) -> impl Iterator<Item = &Substitution> {
        let range = range.clone();
        self.substitutions.iter().filter(move |sub| {
            sub.variable.is_some()
                && sub.output.start < range.end.max(range.start + 1)
                && range.start < sub.output.end.max(sub.output.start + 1)
        })
    }
}

pub(super) fn expand(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Expanded, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut substitutions = Vec::new();
    let mut lexer = Lexer::new();
    let mut pos = 0;
    while pos < text.len() {
        let rest = &text[pos..];
        let context = lexer.context();
        if context != Context::Comment {
            if rest.starts_with("$${") {
                let start = out.len();
                out.push_str("${");
                substitutions.push(Substitution {
                    input: pos..pos + 3,
                    output: start..out.len(),
                    variable: None,
                });
                pos += 3;
                continue;
            }
            if rest.starts_with("${") {
                let line = line_of(text, pos);
                let name = placeholder_name(rest).ok_or_else(|| ConfigError::Invalid {
                    origin: String::new(),
                    field: format!("line {line}"),
                    message: "`${` must be followed by a variable name and `}`, like \
                              ${PGPASSWORD}; write `$${` for a literal `${`"
                        .to_owned(),
                })?;
                let value = env(name).ok_or_else(|| ConfigError::UnsetVar {
                    origin: String::new(),
                    name: name.to_owned(),
                    line,
                })?;
                let start = out.len();
                place(&mut out, &value, context).map_err(|why| ConfigError::Invalid {
                    origin: String::new(),
                    field: format!("line {line}"),
                    message: format!(
                        "the value of ${{{name}}} contains {why}, which a '...' string cannot \
                         hold; put ${{{name}}} inside a \"...\" string instead"
                    ),
                })?;
                let len = name.len() + 3;
                substitutions.push(Substitution {
                    input: pos..pos + len,
                    output: start..out.len(),
                    variable: Some((name.to_owned(), value)),
                });
                pos += len;
                continue;
            }
        }
        let len = lexer.step(rest);
        out.push_str(&rest[..len]);
        pos += len;
    }
    Ok(Expanded {
        text: out,
        substitutions,
    })
}

/// The `NAME` of a `${NAME}` at the start of `rest`, if well formed.
fn placeholder_name(rest: &str) -> Option<&str> {
    let body = rest.strip_prefix("${")?;
    let end = body.find('}')?;
    let name = &body[..end];
    let mut chars = name.chars();
    let first = chars.next()?;
    let valid = (first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    valid.then_some(name)
}

/// Appends `value` as it must be written in `context`; the error says what does not fit.
fn place(out: &mut String, value: &str, context: Context) -> Result<(), &'static str> {
    match context {
        Context::Code | Context::Comment => out.push_str(value),
        Context::Basic | Context::MultiBasic => {
            for c in value.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
                    c => out.push(c),
                }
            }
        }
        Context::Literal | Context::MultiLiteral => {
            if value.contains('\'') {
                return Err("a ' quote");
            }
            if value.chars().any(|c| c.is_control() && c != '\t') {
                return Err("a control character or line break");
            }
            out.push_str(value);
        }
    }
    Ok(())
}

/// 1-based line number of byte offset `pos`.
pub(super) fn line_of(text: &str, pos: usize) -> usize {
    text.as_bytes()[..pos.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PW" => Some("s3cr\"et\\x".to_owned()),
            "N" => Some("42".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn replaces_and_escapes_by_context() {
        let text = "a = \"u:${PW}@h\"\nn = ${N}\ne = \"${EMPTY}\"\n";
        let out = interpolate(text, &env).unwrap();
        assert_eq!(out, "a = \"u:s3cr\\\"et\\\\x@h\"\nn = 42\ne = \"\"\n");
        let parsed: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(parsed["a"].as_str(), Some("u:s3cr\"et\\x@h"));
        assert_eq!(parsed["n"].as_integer(), Some(42));
    }

    #[test]
    fn dollar_dollar_is_a_literal() {
        let out = interpolate("a = \"$${PW} and $${NOPE}\"\n", &env).unwrap();
        assert_eq!(out, "a = \"${PW} and ${NOPE}\"\n");
        assert_eq!(
            interpolate("a = \"$5 and $x\"", &env).unwrap(),
            "a = \"$5 and $x\""
        );
    }

    #[test]
    fn unset_variable_names_variable_and_line() {
        let err = interpolate("a = 1\n\nb = \"${MISSING}\"\n", &env).unwrap_err();
        match &err {
            ConfigError::UnsetVar { name, line, .. } => {
                assert_eq!(name, "MISSING");
                assert_eq!(*line, 3);
            }
            other => panic!("unexpected {other:?}"),
        }
        let text = err.to_string();
        assert!(text.contains("MISSING") && text.contains('3'), "{text}");
    }

    #[test]
    fn comments_are_not_interpolated() {
        let text = "# token = \"${MISSING}\"\na = 1 # ${ALSO_MISSING}\n";
        assert_eq!(interpolate(text, &env).unwrap(), text);
    }

    #[test]
    fn literal_strings_reject_values_they_cannot_hold() {
        let err = interpolate("a = '${PW}'\n", &|_| Some("it's".to_owned())).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("line 1") && text.contains("${PW}"), "{text}");
        assert!(!text.contains("it's"), "{text}");
        assert_eq!(interpolate("a = '${N}'", &env).unwrap(), "a = '42'");
    }

    #[test]
    fn malformed_placeholder_is_an_error() {
        for bad in [
            "a = \"${}\"",
            "a = \"${1X}\"",
            "a = \"${OPEN\"",
            "a = \"${A B}\"",
        ] {
            assert!(interpolate(bad, &env).is_err(), "{bad}");
        }
    }

    #[test]
    fn maps_offsets_back_to_the_raw_text() {
        let text = "a = \"${N}\"\nb = x";
        let expanded = expand(text, &env).unwrap();
        let b_out = expanded.text.find('b').unwrap();
        assert_eq!(expanded.raw_offset(b_out), text.find('b').unwrap());
        let value_out = expanded.text.find("42").unwrap();
        assert_eq!(expanded.raw_offset(value_out), text.find("${N}").unwrap());
    }
}
