//! The subset of Drive's `q` search language the emulator understands.
//!
//! Clauses joined by `and`: `name = 'x'`, `name != 'x'`, `name contains 'x'`,
//! `mimeType = 'x'` (and `!=`), `'<id or appDataFolder>' in parents`, `trashed = true|false`.
//! Anything else is refused with 400 rather than silently ignored, so a client never believes
//! a filter was applied when it was not.

use super::store::DriveFile;

#[derive(Debug, PartialEq)]
enum Tok {
    Str(String),
    Word(String),
    Op(&'static str),
}

#[derive(Debug, PartialEq)]
pub(crate) enum Clause {
    Name { op: &'static str, value: String },
    Mime { op: &'static str, value: String },
    InParents(String),
    Trashed(bool),
}

/// Parsed `q`: every clause must hold.
#[derive(Debug, Default)]
pub(crate) struct Query(Vec<Clause>);

fn lex(q: &str) -> Option<Vec<Tok>> {
    let mut out = Vec::new();
    let mut chars = q.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '\'' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next()? {
                        '\\' => s.push(chars.next()?),
                        '\'' => break,
                        c => s.push(c),
                    }
                }
                out.push(Tok::Str(s));
            }
            '=' => {
                chars.next();
                out.push(Tok::Op("="));
            }
            '!' => {
                chars.next();
                if chars.next()? != '=' {
                    return None;
                }
                out.push(Tok::Op("!="));
            }
            c if c.is_ascii_alphanumeric() => {
                let mut w = String::new();
                while let Some(&c) = chars.peek() {
                    if !c.is_ascii_alphanumeric() {
                        break;
                    }
                    w.push(c);
                    chars.next();
                }
                out.push(Tok::Word(w));
            }
            _ => return None,
        }
    }
    Some(out)
}

pub(crate) fn parse(q: &str) -> Option<Query> {
    let toks = lex(q)?;
    let mut clauses = Vec::new();
    for group in toks.split(|t| matches!(t, Tok::Word(w) if w.eq_ignore_ascii_case("and"))) {
        let clause = match group {
            [Tok::Word(f), Tok::Op(op), Tok::Str(v)] if f == "name" => Clause::Name {
                op,
                value: v.clone(),
            },
            [Tok::Word(f), Tok::Word(c), Tok::Str(v)] if f == "name" && c == "contains" => {
                Clause::Name {
                    op: "contains",
                    value: v.clone(),
                }
            }
            [Tok::Word(f), Tok::Op(op), Tok::Str(v)] if f == "mimeType" => Clause::Mime {
                op,
                value: v.clone(),
            },
            [Tok::Str(v), Tok::Word(i), Tok::Word(p)] if i == "in" && p == "parents" => {
                Clause::InParents(v.clone())
            }
            [Tok::Word(f), Tok::Op(op), Tok::Word(b)] if f == "trashed" => {
                let b = match b.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return None,
                };
                Clause::Trashed(if *op == "=" { b } else { !b })
            }
            _ => return None,
        };
        clauses.push(clause);
    }
    Some(Query(clauses))
}

impl Query {
    /// `folder_id` is the user's appDataFolder id (`'appDataFolder' in parents` means it).
    pub(crate) fn matches(&self, f: &DriveFile, folder_id: &str) -> bool {
        self.0.iter().all(|c| match c {
            Clause::Name { op, value } => match *op {
                "=" => f.name == *value,
                "!=" => f.name != *value,
                _ => f.name.contains(value.as_str()),
            },
            Clause::Mime { op, value } => (*op == "=") == (f.mime_type == *value),
            Clause::InParents(p) => {
                let p = if p == "appDataFolder" { folder_id } else { p };
                f.parents.iter().any(|x| x == p)
            }
            Clause::Trashed(t) => f.trashed == *t,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_queries() {
        let q = parse("name = 'a\\'b' and 'appDataFolder' in parents and trashed = false").unwrap();
        assert_eq!(q.0.len(), 3);
        assert_eq!(
            q.0[0],
            Clause::Name {
                op: "=",
                value: "a'b".into()
            }
        );
        assert!(parse("name = ").is_none());
        assert!(parse("name = 'x' or name = 'y'").is_none());
        assert!(parse("size > 3").is_none());
        assert!(parse("name = 'unterminated").is_none());
    }
}
