//! Attacker: a user whose appDataFolder holds 2 GiB, [`BIG_FILES`] files of [`BIG_FILE_BYTES`]
//! (one upload and its copies on the emulator, which share the content), against the soak's
//! `[sync] max_user_bytes` of [`MAX_USER_BYTES`]. While the run lasts, its mirror directory is
//! measured every 2 s and must never hold more than the limit; at the end
//! ([`super::check()`]) the user must be `over_quota`, with a row for every Drive file, the
//! mirrored ones equal to Drive's and as many as fit. No other worker touches the user.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::drive_changes::payload;
use super::state::{lock, Soak};
use super::{log, pause};

/// The user's sub (the soak's other users are 9xxxxxxx).
pub(super) const BIG_USER: &str = "80000000";
/// `[sync] max_user_bytes` of the soak: 4.5 of the big user's files.
pub(super) const MAX_USER_BYTES: u64 = 72 << 20;
pub(super) const BIG_FILE_BYTES: usize = 16 << 20;
/// 128 × 16 MiB = 2 GiB.
const BIG_FILES: usize = 128;

/// Creates the user and its files, signs it in (again until acknowledged), then watches its
/// mirror until `stop`.
pub(super) async fn big_user(soak: Arc<Soak>, stop: CancellationToken) -> anyhow::Result<()> {
    // Taken for good: no revoke, forget or re-sign-in picks it.
    lock(&soak.model).busy.insert(BIG_USER.to_string());
    soak.control(
        reqwest::Method::POST,
        "users",
        Some(json!({ "sub": BIG_USER, "email": "big@example.com" })),
    )
    .await?;
    soak.google
        .put_file(BIG_USER, "big.bin", payload(BIG_FILE_BYTES))
        .await?;
    let first = soak.files_of(BIG_USER).await?;
    let id = &first.first().context("the big user's first file")?.id;
    soak.control(
        reqwest::Method::POST,
        &format!("users/{BIG_USER}/files/{id}/copies"),
        Some(json!({ "count": BIG_FILES - 1 })),
    )
    .await?;
    log(format!(
        "big user {BIG_USER}: {BIG_FILES} files, {} MiB",
        (BIG_FILES * BIG_FILE_BYTES) >> 20
    ));
    loop {
        soak.sign_in(BIG_USER, false).await?;
        if lock(&soak.model).acked.contains(BIG_USER) || !pause(&stop, Duration::from_secs(2)).await
        {
            break;
        }
    }
    let dir = soak.paths.mirror.join(BIG_USER);
    while pause(&stop, Duration::from_secs(2)).await {
        let bytes = mirrored_bytes(&dir);
        soak.counts.max("big_user.mirror_max_bytes", bytes);
        if bytes > MAX_USER_BYTES {
            soak.violation(format!(
                "the big user's mirror holds {bytes} bytes, over max_user_bytes {MAX_USER_BYTES}"
            ));
        }
    }
    Ok(())
}

/// The bytes of the content files in a user's mirror directory (its manifest is not content).
pub(super) fn mirrored_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name() != "manifest.json")
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}
