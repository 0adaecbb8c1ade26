//! Names and tokens of the text form: quoting on the way out, a one-line
//! lexer on the way in.

use std::fmt::Write as _;

/// Characters a name may contain without quotes.
pub(crate) fn is_bare_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// Append `name` to `out`, bare when it is non-empty and made of
/// [`is_bare_char`] characters, otherwise quoted with escapes.
pub(crate) fn push_name(out: &mut String, name: &str) {
    if !name.is_empty() && name.chars().all(is_bare_char) {
        out.push_str(name);
        return;
    }
    out.push('"');
    for c in name.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // Every other control character is escaped so a name never
            // breaks the one-statement-per-line structure.
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A token of one line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    /// A bare word: keyword, op name, number, bool or unquoted name.
    Word(String),
    /// A quoted string (already unescaped).
    Str(String),
    /// `%name`: a node reference.
    Node(String),
    /// `@name`: a constant reference.
    Const(String),
    /// One of `{ } ( ) [ ] , : = < >`.
    Punct(char),
}

impl Tok {
    /// How the token is named in error messages.
    pub(crate) fn describe(&self) -> String {
        let mut s = String::new();
        match self {
            Tok::Word(w) => s.push_str(w),
            Tok::Str(w) => push_name(&mut s, w),
            Tok::Node(n) => {
                s.push('%');
                push_name(&mut s, n);
            }
            Tok::Const(n) => {
                s.push('@');
                push_name(&mut s, n);
            }
            Tok::Punct(c) => s.push(*c),
        }
        format!("`{s}`")
    }
}

/// Split one line into tokens; `;` starts a comment running to the end of
/// the line. The error is a message (the caller adds the line number).
pub(crate) fn lex_line(line: &str) -> Result<Vec<Tok>, String> {
    let mut toks = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            ';' => break,
            c if c.is_whitespace() => {
                chars.next();
            }
            '{' | '}' | '(' | ')' | '[' | ']' | ',' | ':' | '=' | '<' | '>' => {
                chars.next();
                toks.push(Tok::Punct(c));
            }
            '%' | '@' => {
                chars.next();
                let name = match chars.peek() {
                    Some('"') => {
                        chars.next();
                        lex_quoted(&mut chars)?
                    }
                    Some(&d) if is_bare_char(d) => lex_bare(&mut chars),
                    _ => return Err(format!("`{c}` must be followed by a name")),
                };
                toks.push(if c == '%' {
                    Tok::Node(name)
                } else {
                    Tok::Const(name)
                });
            }
            '"' => {
                chars.next();
                toks.push(Tok::Str(lex_quoted(&mut chars)?));
            }
            c if is_bare_char(c) => toks.push(Tok::Word(lex_bare(&mut chars))),
            c => return Err(format!("unexpected character {c:?}")),
        }
    }
    Ok(toks)
}

fn lex_bare(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> String {
    let mut s = String::new();
    while let Some(&c) = chars.peek() {
        if !is_bare_char(c) {
            break;
        }
        s.push(c);
        chars.next();
    }
    s
}

/// The rest of a quoted string, the opening quote already consumed.
fn lex_quoted(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<String, String> {
    let mut s = String::new();
    loop {
        match chars.next() {
            None => return Err("unterminated string".into()),
            Some('"') => return Ok(s),
            Some('\\') => match chars.next() {
                Some('"') => s.push('"'),
                Some('\\') => s.push('\\'),
                Some('n') => s.push('\n'),
                Some('r') => s.push('\r'),
                Some('t') => s.push('\t'),
                Some('u') => s.push(lex_unicode_escape(chars)?),
                Some(c) => return Err(format!("unknown escape `\\{c}`")),
                None => return Err("unterminated string".into()),
            },
            Some(c) => s.push(c),
        }
    }
}

/// `{hex}` after `\u`.
fn lex_unicode_escape(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
) -> Result<char, String> {
    if chars.next() != Some('{') {
        return Err("expected `{` after `\\u`".into());
    }
    let mut hex = String::new();
    loop {
        match chars.next() {
            Some('}') => break,
            Some(c) if c.is_ascii_hexdigit() && hex.len() < 6 => hex.push(c),
            _ => return Err("malformed `\\u{...}` escape".into()),
        }
    }
    u32::from_str_radix(&hex, 16)
        .ok()
        .and_then(char::from_u32)
        .ok_or_else(|| format!("`\\u{{{hex}}}` is not a character"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_round_trips() {
        for name in [
            "a.b-c_1",
            "",
            "with space",
            "q\"uote\\",
            "tab\tnl\n\u{7}é%@",
        ] {
            let mut s = String::new();
            push_name(&mut s, name);
            let toks = lex_line(&format!("%{s}")).map_err(|e| format!("{name:?}: {e}"));
            assert_eq!(toks, Ok(vec![Tok::Node(name.to_owned())]));
        }
    }

    #[test]
    fn comments_and_punctuation() {
        let toks = lex_line("x = [1, 2] ; comment").unwrap_or_default();
        assert_eq!(toks.len(), 7);
        assert!(lex_line("a # b").is_err());
        assert!(lex_line("\"open").is_err());
        assert!(lex_line("%").is_err());
    }
}
