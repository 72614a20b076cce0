//! Load: files created, updated, deleted and renamed in users' appDataFolders on the emulator,
//! as the phone would.

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::pause;
use super::state::Soak;

/// An emulator user never holds more files than this.
const MAX_FILES: usize = 8;

/// About 20 changes a second: create, update, delete, rename.
pub(super) async fn changes(soak: Arc<Soak>, stop: CancellationToken) -> anyhow::Result<()> {
    while pause(&stop, Duration::from_millis(50)).await {
        let Some(sub) = soak.random_sub() else {
            continue;
        };
        let files = soak.files_of(&sub).await?;
        let roll: f64 = rand::thread_rng().gen();
        let pick = files.choose(&mut rand::thread_rng()).cloned();
        let (kind, resp) = match pick {
            Some(f) if roll < 0.35 || (files.len() >= MAX_FILES && roll < 0.7) => {
                let len = rand::thread_rng().gen_range(0..6000);
                soak.google.put_file(&sub, &f.name, payload(len)).await?;
                ("update", None)
            }
            Some(f) if roll < 0.55 || files.len() >= MAX_FILES => {
                let r = soak
                    .raw(reqwest::Method::DELETE, &appdata_path(&sub, &f.name), None)
                    .await?;
                ("delete", Some(r))
            }
            Some(f) if roll < 0.7 => {
                let r = soak
                    .raw(
                        reqwest::Method::PATCH,
                        &appdata_path(&sub, &f.name),
                        Some(json!({ "name": file_name() })),
                    )
                    .await?;
                ("rename", Some(r))
            }
            _ => {
                let len = rand::thread_rng().gen_range(0..6000);
                soak.google
                    .put_file(&sub, &file_name(), payload(len))
                    .await?;
                ("create", None)
            }
        };
        match resp.map(|r| r.status()) {
            None => soak.counts.add(format!("change.{kind}")),
            Some(s) if s.is_success() => soak.counts.add(format!("change.{kind}")),
            // The daemon (a push) or an earlier change got there first.
            Some(s) if s == reqwest::StatusCode::NOT_FOUND => soak.counts.add("change_lost_race"),
            Some(s) => bail!("{kind} on the emulator answered {s}"),
        }
    }
    Ok(())
}

pub(super) fn payload(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::thread_rng().fill(&mut v[..]);
    v
}

/// Names as an app might use: plain, with a slash, with dots (never paths in the mirror).
pub(super) fn file_name() -> String {
    let n: u32 = rand::thread_rng().gen();
    match n % 4 {
        0 => format!("notes/day-{n:08x}.json"),
        1 => format!("..settings-{n:08x}"),
        _ => format!("f-{n:08x}.bin"),
    }
}

fn appdata_path(sub: &str, name: &str) -> String {
    format!("users/{sub}/appdata/{}", name.replace('/', "%2F"))
}
