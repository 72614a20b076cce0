//! `alt=media` bodies: the whole content, or the one byte range a `Range` header asks for.
//!
//! "Partial download involves downloading only a specified portion of a file. You can specify
//! the portion of the file you want to download by using a byte range with the Range header.
//! For example: `Range: bytes=500-999`."
//! (<https://developers.google.com/drive/api/guides/manage-downloads#partial_download>)
//! The rest is RFC 9110 §14: 206 with `Content-Range`, 416 for a range past the end, and a
//! Range the server cannot parse (or several ranges) is ignored and the whole body is sent.

use axum::body::Bytes;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::drive::error::DriveError;

#[derive(Debug, PartialEq, Eq)]
enum Wanted {
    All,
    /// First and last byte, inclusive, already clamped to the content.
    Part(usize, usize),
    Unsatisfiable,
}

fn wanted(range: Option<&HeaderValue>, len: usize) -> Wanted {
    let Some(spec) = range
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return Wanted::All;
    };
    if spec.contains(',') {
        return Wanted::All;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Wanted::All;
    };
    let num = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    match (num(first), num(last), first.is_empty()) {
        // bytes=-N: the last N bytes.
        (None, Some(n), true) => match n {
            0 => Wanted::Unsatisfiable,
            _ if len == 0 => Wanted::Unsatisfiable,
            n => Wanted::Part(len.saturating_sub(n as usize), len - 1),
        },
        (Some(a), None, false) if last.is_empty() => part(a, u64::MAX, len),
        (Some(a), Some(b), false) if b >= a => part(a, b, len),
        _ => Wanted::All,
    }
}

fn part(first: u64, last: u64, len: usize) -> Wanted {
    if first >= len as u64 {
        return Wanted::Unsatisfiable;
    }
    Wanted::Part(first as usize, last.min(len as u64 - 1) as usize)
}

pub(crate) fn respond(
    mime: HeaderValue,
    content: Bytes,
    range: Option<&HeaderValue>,
) -> Result<Response, DriveError> {
    let len = content.len();
    match wanted(range, len) {
        Wanted::All => Ok(([(header::CONTENT_TYPE, mime)], content).into_response()),
        Wanted::Part(a, b) => {
            let cr = HeaderValue::from_str(&format!("bytes {a}-{b}/{len}")).expect("ASCII");
            Ok((
                StatusCode::PARTIAL_CONTENT,
                [(header::CONTENT_TYPE, mime), (header::CONTENT_RANGE, cr)],
                content.slice(a..=b),
            )
                .into_response())
        }
        Wanted::Unsatisfiable => {
            let mut resp = DriveError::range_not_satisfiable().into_response();
            let cr = HeaderValue::from_str(&format!("bytes */{len}")).expect("ASCII");
            resp.headers_mut().insert(header::CONTENT_RANGE, cr);
            Ok(resp)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(v: &str, len: usize) -> Wanted {
        wanted(Some(&HeaderValue::from_str(v).unwrap()), len)
    }

    #[test]
    fn ranges_as_rfc_9110_reads_them() {
        assert_eq!(w("bytes=0-4", 10), Wanted::Part(0, 4));
        assert_eq!(w("bytes=5-", 10), Wanted::Part(5, 9));
        assert_eq!(w("bytes=5-100", 10), Wanted::Part(5, 9));
        assert_eq!(w("bytes=-3", 10), Wanted::Part(7, 9));
        assert_eq!(w("bytes=-30", 10), Wanted::Part(0, 9));
        assert_eq!(w("bytes=10-", 10), Wanted::Unsatisfiable);
        assert_eq!(w("bytes=0-", 0), Wanted::Unsatisfiable);
        assert_eq!(w("bytes=4-2", 10), Wanted::All);
        assert_eq!(w("bytes=0-1,4-5", 10), Wanted::All);
        assert_eq!(w("items=0-1", 10), Wanted::All);
        assert_eq!(wanted(None, 10), Wanted::All);
    }
}
