//! What the daemon accepts on the wire to Google and to the database: plain HTTP only to
//! loopback (fake-google, tests, dev), and a PostgreSQL server off this machine only over TLS
//! with its certificate and name verified (`sslmode=verify-full`) unless the operator says the
//! network is trusted. Also where the database URL comes from (`url` or `url_file`).

use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;

use anyhow::{bail, Context};

use crate::store::{redact_url, DatabaseUrl};

/// `localhost`, 127.0.0.0/8 and ::1 (brackets allowed): traffic that never leaves the machine.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A Google endpoint: `https://`, or `http://` to a loopback host (an emulator on this machine).
/// Plain HTTP anywhere else would carry the client secret and users' tokens in the clear.
pub fn check_google_url(section: &str, key: &str, value: &str) -> anyhow::Result<()> {
    let url = url::Url::parse(value)
        .with_context(|| format!("[{section}] {key} = {value:?} is not a URL"))?;
    match url.scheme() {
        "https" => Ok(()),
        "http" if url.host_str().is_some_and(is_loopback_host) => Ok(()),
        "http" => bail!(
            "[{section}] {key} = {value:?}: plain http:// is refused except to loopback \
             (127.0.0.0/8, ::1, localhost): it would carry secrets in the clear; use https://"
        ),
        _ => bail!("[{section}] {key} = {value:?} must be an https:// URL"),
    }
}

/// `[store] url`, or the first line of `[store] url_file` (a file only we may read, so the
/// password is not in a world-readable config), or SQLite in the state directory.
pub fn database_url(
    url: Option<&str>,
    url_file: Option<&Path>,
    state_dir: &Path,
) -> anyhow::Result<DatabaseUrl> {
    let url = match (url, url_file) {
        (Some(_), Some(_)) => bail!("[store] url and url_file are both set: set only one"),
        (Some(url), None) => url.to_string(),
        (None, Some(path)) => {
            crate::crypto::check_private(path, "[store] url_file")?;
            let text = zeroize::Zeroizing::new(
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read [store] url_file {}", path.display()))?,
            );
            let line = text.lines().next().unwrap_or("").trim();
            if line.is_empty() {
                bail!("[store] url_file {} is empty", path.display());
            }
            line.to_string()
        }
        (None, None) => format!("sqlite://{}", state_dir.join("appdata-syncd.db").display()),
    };
    if !(url.starts_with("sqlite:") || url.starts_with("postgres")) {
        bail!(
            "[store] url must start with sqlite:// or postgres://, got {}",
            redact_url(&url)
        );
    }
    Ok(DatabaseUrl::new(url))
}

/// A PostgreSQL server that is not on this machine (a TCP host other than loopback) must be
/// reached with `sslmode=verify-full`: with `require` or `verify-ca` anyone on the path who
/// holds any certificate of the CA (or none at all) could read the password and every token.
/// The URL is read as the driver reads it, so `PGHOST`, `PGSSLMODE` and `host=` count too.
pub fn check_database_transport(url: &DatabaseUrl, allow_unverified: bool) -> anyhow::Result<()> {
    use sqlx::postgres::{PgConnectOptions, PgSslMode};
    if !url.is_postgres() || allow_unverified {
        return Ok(());
    }
    let options = PgConnectOptions::from_str(url.expose())
        .map_err(|e| anyhow::anyhow!("[store] url {} is not a PostgreSQL URL: {e}", url))?;
    if options.get_socket().is_some() || is_loopback_host(options.get_host()) {
        return Ok(());
    }
    if matches!(options.get_ssl_mode(), PgSslMode::VerifyFull) {
        return Ok(());
    }
    bail!(
        "[store] url: the PostgreSQL server {} is not on this machine, so the connection must \
         use TLS with its certificate and name verified: add sslmode=verify-full to the URL \
         (and sslrootcert=PATH when its CA is not in the system's store), or set \
         [store] allow_unverified_tls = true if the network itself is trusted",
        options.get_host()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(url: &str) -> DatabaseUrl {
        DatabaseUrl::new(url.to_string())
    }

    #[test]
    fn loopback_hosts_are_loopback_and_nothing_else_is() {
        for host in [
            "localhost",
            "127.0.0.1",
            "127.8.9.10",
            "::1",
            "[::1]",
            "LOCALHOST",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "10.0.0.1",
            "db.example.com",
            "localhost.example.com",
            "::2",
            "",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn plain_http_to_google_is_refused_except_to_loopback() {
        for ok in [
            "https://oauth2.googleapis.com/token",
            "http://127.0.0.1:9999/token",
            "http://[::1]:80/x",
            "http://localhost/x",
        ] {
            check_google_url("google", "token_uri", ok).unwrap();
        }
        for bad in [
            "http://oauth2.googleapis.com/token",
            "http://10.1.2.3/token",
            "ftp://127.0.0.1/x",
        ] {
            assert!(
                check_google_url("google", "token_uri", bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn remote_postgres_needs_verify_full_unless_allowed() {
        for ok in [
            "sqlite:///var/lib/x.db",
            "postgres://u:p@127.0.0.1/db",
            "postgres://u@localhost:5433/db?sslmode=disable",
            "postgres://u@[::1]/db",
            "postgres:///db?host=/run/postgresql",
            "postgres://u:p@db.example.com/db?sslmode=verify-full",
        ] {
            check_database_transport(&pg(ok), false).unwrap();
        }
        for bad in [
            "postgres://u:p@db.example.com/db",
            "postgres://u:p@db.example.com/db?sslmode=require",
            "postgresql://u@10.0.0.5/db?sslmode=verify-ca",
            "postgres:///db?host=db.example.com&sslmode=prefer",
        ] {
            let err = check_database_transport(&pg(bad), false).unwrap_err();
            let text = format!("{err:#}");
            assert!(text.contains("verify-full"), "{bad}: {text}");
            assert!(!text.contains(":p@"), "{text}");
            check_database_transport(&pg(bad), true).unwrap();
        }
    }

    #[test]
    fn url_file_holds_the_url_and_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("db-url");
        std::fs::write(&file, "postgres://u:hunter2@127.0.0.1/db\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let url = database_url(None, Some(&file), dir.path()).unwrap();
        assert_eq!(url.expose(), "postgres://u:hunter2@127.0.0.1/db");
        assert!(!format!("{url} {url:?}").contains("hunter2"));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = database_url(None, Some(&file), dir.path()).unwrap_err();
        assert!(format!("{err:#}").contains("chmod 600"), "{err:#}");
        assert!(database_url(Some("sqlite://x"), Some(&file), dir.path()).is_err());
    }
}
