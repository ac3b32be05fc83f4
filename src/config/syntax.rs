//! Just enough TOML lexing to know where strings and comments are.
//!
//! Interpolation needs it to escape a value for the string it lands in and to leave
//! comments alone; error reporting needs it to find table headers and keys without
//! being fooled by a template that contains `[` at the start of a line.

/// What kind of text a byte belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Context {
    /// Keys, values, punctuation, whitespace.
    Code,
    /// From `#` to the end of the line.
    Comment,
    /// Inside `"..."`.
    Basic,
    /// Inside `"""..."""`.
    MultiBasic,
    /// Inside `'...'`.
    Literal,
    /// Inside `'''...'''`.
    MultiLiteral,
}

/// A streaming lexer: call [`Lexer::step`] with the unread rest of the text.
#[derive(Debug)]
pub(super) struct Lexer {
    context: Context,
}

impl Lexer {
    pub(super) fn new() -> Self {
        Self {
            context: Context::Code,
        }
    }

    /// The context the next byte is in.
    pub(super) fn context(&self) -> Context {
        self.context
    }

    /// Consumes one token from the start of `rest` (which must not be empty) and returns
    /// its length in bytes; the context changes when the token opens or closes a string
    /// or comment.
    pub(super) fn step(&mut self, rest: &str) -> usize {
        let first = rest.chars().next().map_or(1, char::len_utf8);
        match self.context {
            Context::Code => {
                if rest.starts_with('#') {
                    self.context = Context::Comment;
                } else if rest.starts_with("\"\"\"") {
                    self.context = Context::MultiBasic;
                    return 3;
                } else if rest.starts_with('"') {
                    self.context = Context::Basic;
                } else if rest.starts_with("'''") {
                    self.context = Context::MultiLiteral;
                    return 3;
                } else if rest.starts_with('\'') {
                    self.context = Context::Literal;
                }
                first
            }
            Context::Comment => {
                if rest.starts_with('\n') {
                    self.context = Context::Code;
                }
                first
            }
            Context::Basic | Context::MultiBasic if rest.starts_with('\\') => {
                // An escape pair: `\"` must not close the string.
                1 + rest[1..].chars().next().map_or(0, char::len_utf8)
            }
            Context::Basic | Context::Literal => {
                let close = if self.context == Context::Basic {
                    '"'
                } else {
                    '\''
                };
                // A newline ends a broken single-line string; toml reports it, we resync.
                if rest.starts_with(close) || rest.starts_with('\n') {
                    self.context = Context::Code;
                }
                first
            }
            Context::MultiBasic | Context::MultiLiteral => {
                let close = if self.context == Context::MultiBasic {
                    '"'
                } else {
                    '\''
                };
                let run = rest.chars().take_while(|&c| c == close).count();
                if run >= 3 {
                    // Up to two quotes may sit right before the closing delimiter.
                    self.context = Context::Code;
                    return run.min(5);
                }
                first
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contexts(text: &str) -> Vec<(char, Context)> {
        let mut lexer = Lexer::new();
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < text.len() {
            let ctx = lexer.context();
            let len = lexer.step(&text[pos..]);
            for c in text[pos..pos + len].chars() {
                out.push((c, ctx));
            }
            pos += len;
        }
        out
    }

    #[test]
    fn tracks_strings_and_comments() {
        let got = contexts("a = \"x\\\"#\" # c\nb = '''\n[t]'''\n");
        let at = |c: char| got.iter().find(|(ch, _)| *ch == c).map(|(_, ctx)| *ctx);
        assert_eq!(at('a'), Some(Context::Code));
        assert_eq!(at('x'), Some(Context::Basic));
        assert_eq!(at('#'), Some(Context::Basic));
        assert_eq!(at('c'), Some(Context::Comment));
        assert_eq!(at('b'), Some(Context::Code));
        assert_eq!(at('t'), Some(Context::MultiLiteral));
    }
}
