//! `multipart/related` upload bodies: one JSON metadata part, then the media part.
//!
//! Hand-rolled because the bodies are tiny and strict: exactly what Google's upload protocol
//! documents, parsed over bytes so binary media survives untouched.

use bytes::Bytes;

pub(crate) struct Related {
    pub(crate) metadata: Bytes,
    pub(crate) media: Bytes,
    pub(crate) media_type: Option<String>,
}

/// The `boundary` parameter of a `multipart/related` content type.
pub(crate) fn boundary(content_type: &str) -> Option<String> {
    let mut parts = content_type.split(';');
    if !parts
        .next()?
        .trim()
        .eq_ignore_ascii_case("multipart/related")
    {
        return None;
    }
    parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// Splits one part into (headers, body).
fn split_part(part: &[u8]) -> Option<(String, &[u8])> {
    let (head_end, body_start) = match find(part, b"\r\n\r\n", 0) {
        Some(p) => (p, p + 4),
        None => {
            let p = find(part, b"\n\n", 0)?;
            (p, p + 2)
        }
    };
    Some((
        String::from_utf8_lossy(&part[..head_end]).into_owned(),
        &part[body_start..],
    ))
}

fn content_type(headers: &str) -> Option<String> {
    headers.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-type")
            .then(|| v.trim().to_string())
    })
}

pub(crate) fn parse(body: &[u8], boundary: &str) -> Option<Related> {
    let delim = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut pos = find(body, delim.as_bytes(), 0)? + delim.len();
    loop {
        if body.get(pos..pos + 2) == Some(b"--") {
            break;
        }
        // Skip the line break after the delimiter.
        pos = find(body, b"\n", pos)? + 1;
        let next = find(body, format!("\n{delim}").as_bytes(), pos)?;
        let mut end = next;
        if end > pos && body[end - 1] == b'\r' {
            end -= 1;
        }
        parts.push(&body[pos..end]);
        pos = next + 1 + delim.len();
    }
    let [meta, media] = parts.as_slice() else {
        return None;
    };
    let (_, meta_body) = split_part(meta)?;
    let (media_headers, media_body) = split_part(media)?;
    Some(Related {
        metadata: Bytes::copy_from_slice(meta_body),
        media: Bytes::copy_from_slice(media_body),
        media_type: content_type(&media_headers),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_google_style_related_body() {
        let body = b"--xyz\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{\"name\":\"a\"}\r\n--xyz\r\nContent-Type: text/plain\r\n\r\nhello\r\n--\r\nworld\r\n--xyz--\r\n";
        let ct = "multipart/related; boundary=\"xyz\"";
        let r = parse(body, &boundary(ct).unwrap()).unwrap();
        assert_eq!(&r.metadata[..], b"{\"name\":\"a\"}");
        assert_eq!(&r.media[..], b"hello\r\n--\r\nworld");
        assert_eq!(r.media_type.as_deref(), Some("text/plain"));
        assert!(parse(b"--xyz\r\n\r\n{}\r\n--xyz--", "xyz").is_none());
    }
}
