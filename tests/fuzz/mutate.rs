//! Inputs shared by the targets: arbitrary bytes, and valid seeds mutated the way a fuzzer does
//! (truncation, byte flips, insertions, deletions, splicing, duplicated ranges, dictionary
//! tokens, huge numbers, deep nesting, invalid UTF-8, percent-encoding garbage).

use std::fmt;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

/// Bytes that print as an escaped string, so a shrunk failure is readable.
#[derive(Clone, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b\"{}\"", self.0.escape_ascii())
    }
}

impl Bytes {
    pub fn lossy(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

/// Tokens every target's dictionary holds: structure, huge and odd numbers, invalid UTF-8,
/// bad escapes, percent-encoding garbage.
const COMMON_TOKENS: &[&[u8]] = &[
    b"\"",
    b"'",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"=",
    b"&",
    b"%",
    b"+",
    b";",
    b"\n",
    b"\r\n",
    b"\0",
    b"\\",
    b"\\u0000",
    b"\\ud800",
    b"\\udc00\\ud800",
    b"\\uZZZZ",
    b"\\x",
    b"null",
    b"true",
    b"-0",
    b"1e999999",
    b"-1e-999999",
    b"1E400",
    b"0.000000000000000000000000000001",
    b"18446744073709551616",
    b"18446744073709551615",
    b"-9223372036854775809",
    b"9223372036854775807",
    b"9223372036854775808",
    b"99999999999999999999999999999999999",
    b"NaN",
    b"Infinity",
    b"0x10",
    b"\xff",
    b"\xfe\xff",
    b"\xc3\x28",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xe2\x80\xae",
    b"%",
    b"%z",
    b"%zz",
    b"%ff",
    b"%FF%FE",
    b"%C3%28",
    b"%00",
    b"%%",
    b"%E0%A4%A",
    b"%2F",
    b"%0A",
    b"ya29.a0AfB_byC7xq9Lm3nVtR8pW2kJdFgH5sQe",
    b"1//0gLxYzAbCdEfGhIjKlMnOpQrStUvWxYz",
];

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(Index),
    Flip(Index, u8),
    Insert(Index, Vec<u8>),
    Token(Index, Index),
    Delete(Index, u8),
    /// Copies a range to just after itself: duplicated keys, fields, lines.
    Duplicate(Index, u8),
    /// A piece of another seed.
    Splice(Index, Index, Index, u8),
    /// `depth` openers (and maybe closers) of `[`, `{"a":` or `a=[`.
    Nest(Index, u16, u8, bool),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        1 => any::<Index>().prop_map(Mutation::Truncate),
        3 => (any::<Index>(), 1..=255u8).prop_map(|(i, x)| Mutation::Flip(i, x)),
        2 => (any::<Index>(), vec(any::<u8>(), 1..8)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        4 => (any::<Index>(), any::<Index>()).prop_map(|(i, t)| Mutation::Token(i, t)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, n)| Mutation::Delete(i, n)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
        2 => (any::<Index>(), any::<Index>(), any::<Index>(), any::<u8>())
            .prop_map(|(s, i, at, n)| Mutation::Splice(s, i, at, n)),
        1 => (any::<Index>(), 1..3000u16, 0..3u8, any::<bool>())
            .prop_map(|(i, d, k, c)| Mutation::Nest(i, d, k, c)),
    ]
}

fn apply(seeds: &[Vec<u8>], dict: &[Vec<u8>], mut b: Vec<u8>, m: &Mutation) -> Vec<u8> {
    // Positions 0..=len, so insertions can append.
    let at = |i: &Index, b: &Vec<u8>| i.index(b.len() + 1);
    match m {
        Mutation::Truncate(i) => b.truncate(i.index(b.len() + 1)),
        Mutation::Flip(i, x) => {
            if !b.is_empty() {
                let i = i.index(b.len());
                b[i] ^= x;
            }
        }
        Mutation::Insert(i, bytes) => {
            let i = at(i, &b);
            b.splice(i..i, bytes.iter().copied());
        }
        Mutation::Token(i, t) => {
            let i = at(i, &b);
            let token = &dict[t.index(dict.len())];
            b.splice(i..i, token.iter().copied());
        }
        Mutation::Delete(i, n) => {
            let i = i.index(b.len() + 1);
            let end = (i + *n as usize + 1).min(b.len());
            b.drain(i..end);
        }
        Mutation::Duplicate(i, n) => {
            let i = i.index(b.len() + 1);
            let end = (i + *n as usize + 1).min(b.len());
            let copy = b[i..end].to_vec();
            b.splice(end..end, copy);
        }
        Mutation::Splice(s, i, to, n) => {
            let other = &seeds[s.index(seeds.len())];
            let start = i.index(other.len() + 1);
            let end = (start + *n as usize + 1).min(other.len());
            let to = at(to, &b);
            b.splice(to..to, other[start..end].iter().copied());
        }
        Mutation::Nest(i, depth, kind, close) => {
            let i = at(i, &b);
            let (open, shut): (&[u8], &[u8]) = match kind {
                0 => (b"[", b"]"),
                1 => (b"{\"a\":", b"}"),
                _ => (b"a=[", b"]"),
            };
            let mut nest = open.repeat(*depth as usize);
            if *close {
                nest.extend(shut.repeat(*depth as usize));
            }
            b.splice(i..i, nest);
        }
    }
    b
}

/// One seed with one to six mutations applied.
pub fn mutated(seeds: Vec<Vec<u8>>, extra_tokens: &[&[u8]]) -> BoxedStrategy<Bytes> {
    assert!(!seeds.is_empty());
    let dict: Vec<Vec<u8>> = COMMON_TOKENS
        .iter()
        .chain(extra_tokens)
        .map(|t| t.to_vec())
        .collect();
    (any::<Index>(), vec(mutation(), 1..6))
        .prop_map(move |(seed, mutations)| {
            let mut b = seeds[seed.index(seeds.len())].clone();
            for m in &mutations {
                b = apply(&seeds, &dict, b, m);
            }
            Bytes(b)
        })
        .boxed()
}

/// Arbitrary bytes, printable text, or (mostly) mutated seeds.
pub fn input(seeds: Vec<Vec<u8>>, extra_tokens: &[&[u8]]) -> BoxedStrategy<Bytes> {
    prop_oneof![
        1 => vec(any::<u8>(), 0..512).prop_map(Bytes),
        1 => "[ -~\n]{0,256}".prop_map(|s| Bytes(s.into_bytes())),
        6 => mutated(seeds, extra_tokens),
    ]
    .boxed()
}

/// A secret as Google issues them: access token, refresh token or client secret.
pub fn secret() -> impl Strategy<Value = String> {
    (0..3usize, "[A-Za-z0-9_-]{30,120}").prop_map(|(kind, tail)| match kind {
        0 => format!("ya29.{tail}"),
        1 => format!("1//0{tail}"),
        _ => format!("GOCSPX-{tail}"),
    })
}
