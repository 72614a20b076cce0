//! Random identifiers and secrets shaped like Google's.
//!
//! Every secret is drawn from the thread-local CSPRNG, so nothing a test sees can be guessed
//! from anything else it sees. The prefixes (`4/`, `ya29.`, `1//`) match Google's so that
//! code which sniffs token kinds, or log scrubbers keyed on them, behave as in production.

use rand::Rng;

const URL_SAFE: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Length of the random part of codes and tokens (the issue asks for at least 32).
pub(crate) const SECRET_LEN: usize = 64;

pub(crate) const CODE_PREFIX: &str = "4/";
pub(crate) const ACCESS_PREFIX: &str = "ya29.";
pub(crate) const REFRESH_PREFIX: &str = "1//";

pub(crate) fn url_safe(n: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..n)
        .map(|_| URL_SAFE[rng.gen_range(0..URL_SAFE.len())] as char)
        .collect()
}

pub(crate) fn is_url_safe(s: &str) -> bool {
    s.bytes().all(|b| URL_SAFE.contains(&b))
}

fn lower_alnum(n: usize) -> String {
    const ALPHA: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..n)
        .map(|_| ALPHA[rng.gen_range(0..ALPHA.len())] as char)
        .collect()
}

pub(crate) fn auth_code() -> String {
    format!("{CODE_PREFIX}{}", url_safe(SECRET_LEN))
}

/// Whether `code` could have been minted by [`auth_code`]; anything else is "Malformed".
pub(crate) fn is_well_formed_code(code: &str) -> bool {
    code.strip_prefix(CODE_PREFIX)
        .is_some_and(|rest| rest.len() == SECRET_LEN && is_url_safe(rest))
}

pub(crate) fn access_token() -> String {
    format!("{ACCESS_PREFIX}{}", url_safe(SECRET_LEN))
}

pub(crate) fn refresh_token() -> String {
    format!("{REFRESH_PREFIX}{}", url_safe(SECRET_LEN))
}

/// Drive file ids are 33 url-safe characters starting with `1`.
pub(crate) fn file_id() -> String {
    format!("1{}", url_safe(32))
}

/// A resumable upload session id (`upload_id=` in the session URI). It authenticates the
/// session's `PUT`s on its own, so it is a secret like the tokens.
pub(crate) fn upload_id() -> String {
    format!("ADPyc{}", url_safe(SECRET_LEN))
}

/// The appDataFolder's own id looks like a Drive root id (`0A…Uk9PVA`).
pub(crate) fn folder_id() -> String {
    let mut rng = rand::thread_rng();
    let mid: String = (0..13)
        .map(|_| URL_SAFE[rng.gen_range(0..62)] as char)
        .collect();
    format!("0A{mid}Uk9PVA")
}

pub(crate) fn revision_id() -> String {
    format!("0B{}", url_safe(40))
}

/// Google's JWKS key ids are 40 hex digits.
pub(crate) fn kid() -> String {
    let bytes: [u8; 20] = rand::thread_rng().gen();
    hex::encode(bytes)
}

/// `NNNNNNNNNNNN-xxxxxxxx….apps.googleusercontent.com`, sharing the project number prefix.
pub(crate) fn client_id(project_number: &str) -> String {
    format!(
        "{project_number}-{}.apps.googleusercontent.com",
        lower_alnum(32)
    )
}

pub(crate) fn project_number() -> String {
    let mut rng = rand::thread_rng();
    let first = rng.gen_range(1..10);
    let rest: String = (0..11)
        .map(|_| char::from(b'0' + rng.gen_range(0..10)))
        .collect();
    format!("{first}{rest}")
}

pub(crate) fn client_secret() -> String {
    format!("GOCSPX-{}", url_safe(28))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_the_format_check() {
        let code = auth_code();
        assert!(is_well_formed_code(&code));
        assert!(!is_well_formed_code("4/short"));
        assert!(!is_well_formed_code(&code.replacen("4/", "5/", 1)));
    }

    #[test]
    fn client_ids_look_like_googles() {
        let id = client_id(&project_number());
        let (num, rest) = id.split_once('-').unwrap();
        assert_eq!(num.len(), 12);
        assert!(rest.ends_with(".apps.googleusercontent.com"));
        assert_eq!(file_id().len(), 33);
    }
}
