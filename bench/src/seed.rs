//! Users seeded straight into the emulator and the daemon's database, for idle-cycle sizes
//! above what the intake seeds in reasonable time (about 800 sign-ins/s here: 100,000 users
//! take two minutes, a million twenty). It writes what a sign-in and a first sync leave:
//! the emulator's account, grant and access token (`POST /_emulator/bulk-users`); the user's
//! row, its refresh and access tokens sealed with the daemon's key, and its changes page
//! token (through the daemon's own store functions); and an empty manifest in the mirror, so
//! the measured cycle is the idle one. Users go a chunk at a time and nothing per user is
//! kept here, so the benchmark's own memory does not grow with N either.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use appdata_syncd::crypto::{Keyring, Purpose};
use appdata_syncd::store::users::Profile;
use appdata_syncd::store::{self, credentials, schedule, Store};
use appdata_syncd::sync::mirror::Mirror;
use secrecy::SecretString;

use crate::google::{BulkUser, FakeGoogle};

/// Users per emulator call and per database transaction.
const CHUNK: usize = 10_000;

/// Seeds `prefix{i:07}` for i in 0..n; returns the seconds it took.
pub async fn direct(
    google: &FakeGoogle,
    store: &Store,
    keyring: &Keyring,
    mirror: &Path,
    prefix: &str,
    n: usize,
) -> anyhow::Result<f64> {
    let t = Instant::now();
    let mut from = 0;
    while from < n {
        let count = CHUNK.min(n - from);
        let users = google.bulk_users(prefix, from, count).await?;
        anyhow::ensure!(
            users.len() == count,
            "the emulator made {} users, not {count}",
            users.len()
        );
        write_rows(store, keyring, &users).await?;
        write_manifests(mirror.to_path_buf(), users).await?;
        from += count;
        if from % 100_000 == 0 {
            eprintln!("[bench] seeded {from} of {n} users directly");
        }
    }
    Ok(t.elapsed().as_secs_f64())
}

/// One transaction per chunk: the users, their sealed tokens and page tokens.
async fn write_rows(store: &Store, keyring: &Keyring, users: &[BulkUser]) -> anyhow::Result<()> {
    let now = store::now_ms();
    let mut tx = store.begin_write().await?;
    for u in users {
        let profile = Profile {
            sub: u.sub.clone(),
            email: Some(format!("user{}@gmail.com", u.sub)),
            email_verified: true,
            name: Some(format!("Test User {}", u.sub)),
            given_name: Some("Test".into()),
            family_name: Some(format!("User {}", u.sub)),
            picture: None,
            locale: Some("en".into()),
        };
        store::users::upsert_profile(tx.conn(), &profile, now).await?;
        let refresh = keyring.seal(
            &u.sub,
            Purpose::RefreshToken,
            &SecretString::from(u.refresh_token.clone()),
        );
        let access = keyring.seal(
            &u.sub,
            Purpose::AccessToken,
            &SecretString::from(u.access_token.clone()),
        );
        let expires_at = now + u.expires_in as i64 * 1000;
        credentials::put_refresh_token(
            tx.conn(),
            &u.sub,
            &refresh,
            &u.scope,
            now,
            Some((&access, expires_at)),
        )
        .await?;
        schedule::set_page_token(tx.conn(), &u.sub, Some(&u.start_page_token)).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// What the first sync of a user with no files writes: `SUB/manifest.json`, listing nothing.
async fn write_manifests(mirror: PathBuf, users: Vec<BulkUser>) -> anyhow::Result<()> {
    let now = store::now_ms();
    tokio::task::spawn_blocking(move || {
        for u in users {
            let relative = Mirror::manifest_path(&u.sub)?;
            let path = mirror.join(&relative);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            let manifest = serde_json::json!({ "sub": u.sub, "generated_at": now, "files": {} });
            std::fs::write(&path, serde_json::to_vec_pretty(&manifest)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    })
    .await?
}
