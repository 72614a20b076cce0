//! The secrets invariant: no token, code or client secret the emulator issued is in the
//! database files, the mirror or the daemon's log.

use std::path::{Path, PathBuf};

use super::state::Soak;

/// Looks for every token, code and client secret the emulator issued, verbatim or
/// percent-encoded, in the database files, the mirror and the daemon's log. Returns how many
/// secrets and bytes were scanned.
pub(super) async fn scan_for_secrets(soak: &Soak) -> anyhow::Result<(usize, u64)> {
    let secrets: Vec<String> = soak
        .control(reqwest::Method::GET, "issued-secrets", None)
        .await?
        .json()
        .await?;
    let mut files: Vec<PathBuf> = ["", "-wal", "-shm"]
        .iter()
        .map(|s| PathBuf::from(format!("{}{s}", soak.paths.db.display())))
        .filter(|p| p.exists())
        .collect();
    files.push(soak.paths.log.clone());
    collect_files(&soak.paths.mirror, &mut files);
    let n = secrets.len();
    let (found, bytes) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let mut patterns: Vec<String> = secrets.clone();
        patterns.extend(
            secrets
                .iter()
                .filter(|s| s.contains('/'))
                .map(|s| s.replace('/', "%2F")),
        );
        let ac = aho_corasick::AhoCorasick::new(&patterns)?;
        let mut found = Vec::new();
        let mut bytes = 0u64;
        for path in files {
            let Ok(data) = std::fs::read(&path) else {
                continue;
            };
            bytes += data.len() as u64;
            if let Some(m) = ac.find(&data) {
                let secret = &patterns[m.pattern().as_usize()];
                let kind = match secret {
                    s if s.starts_with("ya29.") => "an access token",
                    s if s.starts_with("1/") || s.starts_with("1%2F") => "a refresh token",
                    s if s.starts_with("4/") || s.starts_with("4%2F") => "an auth code",
                    s if s.starts_with("GOCSPX-") => "the client secret",
                    _ => "a secret",
                };
                found.push(format!(
                    "{kind} Google issued is in plaintext in {}",
                    path.display()
                ));
            }
        }
        Ok((found, bytes))
    })
    .await??;
    for f in found {
        soak.violation(f);
    }
    Ok((n, bytes))
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(|e| e.ok()) {
        let path = e.path();
        if path.is_dir() {
            collect_files(&path, out);
        } else {
            out.push(path);
        }
    }
}
