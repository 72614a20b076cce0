//! The invariants, with the daemon stopped: the model against the database, the mirror against
//! the emulator, the database's integrity, and (in [`super::secrets`]) no secret at rest.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use appdata_syncd::store::Store;
use futures::StreamExt;
use sqlx::Row;

use super::big_user::{mirrored_bytes, BIG_FILE_BYTES, BIG_USER, MAX_USER_BYTES};
use super::calls::EmuFile;
use super::config::sqlite_url;
use super::secrets::scan_for_secrets;
use super::state::{lock, Soak};

/// Figures [`check`] gathers for the report.
#[derive(Default)]
pub(super) struct Checked {
    pub(super) users_by_state: BTreeMap<String, i64>,
    pub(super) syncs: BTreeMap<String, i64>,
    pub(super) max_api_calls_per_sync: i64,
    pub(super) files_mirrored: usize,
    pub(super) secrets_scanned: usize,
    pub(super) bytes_scanned: u64,
    pub(super) cycles: usize,
    pub(super) cycles_skipped: usize,
    /// Syncs that failed because the disk was under `min_free_disk_bytes`.
    pub(super) syncs_refused_by_floor: i64,
    /// The big user's `over_quota` reason at the end.
    pub(super) big_user_over_quota: Option<String>,
}

/// A `users` row, with how many credentials the user has.
struct DbUser {
    state: String,
    last_error: Option<String>,
    over_quota: Option<String>,
    credentials: i64,
}

/// A `files` row, by file id.
struct FileRow {
    name: String,
    md5: Option<String>,
}

/// Every invariant, with the daemon stopped. Violations go to `soak.violations`.
pub(super) async fn check(soak: &Soak) -> anyhow::Result<Checked> {
    let mut out = Checked::default();
    // Secrets first: opening the database ourselves may checkpoint and remove the WAL.
    let (secrets, bytes) = scan_for_secrets(soak).await?;
    out.secrets_scanned = secrets;
    out.bytes_scanned = bytes;
    let log_text = std::fs::read_to_string(&soak.paths.log).unwrap_or_default();
    out.cycles = log_text.matches("sync cycle finished").count();
    out.cycles_skipped = log_text.matches("previous cycle still running").count();

    let store = Store::connect(&sqlite_url(&soak.paths.db), 1).await?;
    let integrity: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_all(store.pool())
        .await?;
    if integrity != ["ok"] {
        soak.violation(format!("PRAGMA integrity_check: {}", integrity.join("; ")));
    }
    let db_users = db_users(&store).await?;
    for u in db_users.values() {
        *out.users_by_state.entry(u.state.clone()).or_default() += 1;
    }
    sync_figures(&store, &mut out).await?;
    check_model(soak, &db_users);
    out.files_mirrored = check_mirrors(soak, &store, &db_users).await?;
    out.big_user_over_quota = db_users.get(BIG_USER).and_then(|u| u.over_quota.clone());
    check_over_quota(soak, &db_users);
    store.close().await;
    check_no_tmp_leftovers(soak);
    Ok(out)
}

async fn db_users(store: &Store) -> anyhow::Result<HashMap<String, DbUser>> {
    let rows = sqlx::query(
        "SELECT u.sub, u.state, u.last_error, u.over_quota, \
                (SELECT COUNT(*) FROM credentials c WHERE c.sub = u.sub) AS creds \
         FROM users u",
    )
    .fetch_all(store.pool())
    .await?;
    let mut db_users = HashMap::new();
    for r in rows {
        db_users.insert(
            r.try_get("sub")?,
            DbUser {
                state: r.try_get("state")?,
                last_error: r.try_get("last_error")?,
                over_quota: r.try_get("over_quota")?,
                credentials: r.try_get("creds")?,
            },
        );
    }
    Ok(db_users)
}

/// Syncs by outcome and the most API calls one sync made, for the report.
async fn sync_figures(store: &Store, out: &mut Checked) -> anyhow::Result<()> {
    for r in sqlx::query("SELECT outcome, COUNT(*) AS n FROM syncs GROUP BY outcome")
        .fetch_all(store.pool())
        .await?
    {
        out.syncs.insert(r.try_get("outcome")?, r.try_get("n")?);
    }
    out.syncs_refused_by_floor =
        sqlx::query_scalar("SELECT COUNT(*) FROM syncs WHERE error LIKE '%min_free_disk_bytes%'")
            .fetch_one(store.pool())
            .await?;
    out.max_api_calls_per_sync =
        sqlx::query_scalar("SELECT COALESCE(MAX(api_calls), 0) FROM syncs")
            .fetch_one(store.pool())
            .await?;
    Ok(())
}

/// The users' states in the database against what the workers saw happen
/// ([`super::state::Model`]); users whose last sign-in or forget got no answer are left out.
fn check_model(soak: &Soak, db_users: &HashMap<String, DbUser>) {
    let (acked, revoked, forgotten, uncertain) = {
        let m = lock(&soak.model);
        (
            m.acked.clone(),
            m.revoked.clone(),
            m.forgotten.clone(),
            m.uncertain.clone(),
        )
    };
    for sub in acked.difference(&uncertain) {
        let wrong = match db_users.get(sub) {
            None => "no user row",
            Some(u) if u.credentials == 0 => "no credential",
            Some(u) if u.state == "forgotten" => "user is forgotten",
            Some(_) => continue,
        };
        soak.violation(format!(
            "acknowledged sign-in of {sub}: {wrong} (trail: {})",
            soak.trail_of(sub)
        ));
    }
    for (sub, u) in db_users {
        let state = &u.state;
        if state == "reauth_required" && !revoked.contains(sub) && !uncertain.contains(sub) {
            soak.violation(format!(
                "{sub} is reauth_required but its grant was not revoked (last_error: {}; trail: {})",
                u.last_error.as_deref().unwrap_or("none"),
                soak.trail_of(sub)
            ));
        }
        if revoked.contains(sub) && !uncertain.contains(sub) && state != "reauth_required" {
            soak.violation(format!(
                "{sub}'s grant was revoked but it is {state} (trail: {})",
                soak.trail_of(sub)
            ));
        }
    }
    for sub in forgotten.difference(&uncertain) {
        if db_users.contains_key(sub) {
            soak.violation(format!("{sub} was forgotten but still has a user row"));
        }
        if soak.paths.mirror.join(sub).exists() {
            soak.violation(format!(
                "{sub} was forgotten but its mirror directory remains"
            ));
        }
    }
}

/// [`check_mirror`] for every active user, 16 at a time. Returns the number of files.
async fn check_mirrors(
    soak: &Soak,
    store: &Store,
    db_users: &HashMap<String, DbUser>,
) -> anyhow::Result<usize> {
    let active: Vec<String> = db_users
        .iter()
        .filter(|(_, u)| u.state == "active")
        .map(|(sub, _)| sub.clone())
        .collect();
    let results: Vec<anyhow::Result<usize>> = futures::stream::iter(active)
        .map(|sub| async move { check_mirror(soak, store, &sub).await })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut files = 0;
    for r in results {
        files += r?;
    }
    Ok(files)
}

/// The big user is active and over_quota; no other user is (their files are far smaller).
fn check_over_quota(soak: &Soak, db_users: &HashMap<String, DbUser>) {
    match db_users.get(BIG_USER) {
        None => soak.violation(format!("the big user {BIG_USER} has no user row")),
        Some(u) if u.state != "active" || u.over_quota.is_none() => soak.violation(format!(
            "the big user {BIG_USER} is {} with over_quota {:?}",
            u.state, u.over_quota
        )),
        Some(_) => {}
    }
    for (sub, u) in db_users.iter().filter(|(sub, _)| *sub != BIG_USER) {
        if let Some(reason) = &u.over_quota {
            soak.violation(format!("{sub} is over_quota: {reason}"));
        }
    }
}

fn check_no_tmp_leftovers(soak: &Soak) {
    let tmp = soak.paths.mirror.join(".tmp");
    let leftovers = match std::fs::read_dir(&tmp) {
        Ok(entries) => entries.count(),
        Err(_) => 0,
    };
    if leftovers > 0 {
        soak.violation(format!(
            "{leftovers} temporary files left in {}",
            tmp.display()
        ));
    }
}

/// Emulator, `files` rows and mirror files of one active user agree: the same ids, names,
/// md5s, and on disk the emulator's bytes. Returns the number of files.
async fn check_mirror(soak: &Soak, store: &Store, sub: &str) -> anyhow::Result<usize> {
    let emulator = soak.files_of(sub).await?;
    let db = file_rows(store, sub).await?;
    let dir = soak.paths.mirror.join(sub);
    let on_disk: HashSet<String> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name != "manifest.json")
            .collect(),
        Err(_) => HashSet::new(),
    };
    // The big user's content past max_user_bytes is withheld: absent on disk, by the rules.
    let withheld_allowed = sub == BIG_USER;
    let mut wrong = Vec::new();
    for f in &emulator {
        row_differences(f, db.get(&f.id), &mut wrong);
        if withheld_allowed && !on_disk.contains(&f.id) {
            continue;
        }
        disk_differences(soak, sub, &dir, f, &mut wrong).await?;
    }
    if withheld_allowed {
        let bytes = mirrored_bytes(&dir);
        if bytes > MAX_USER_BYTES || bytes + BIG_FILE_BYTES as u64 <= MAX_USER_BYTES {
            wrong.push(format!(
                "{bytes} bytes mirrored; with max_user_bytes {MAX_USER_BYTES}, as many \
                 {BIG_FILE_BYTES}-byte files as fit"
            ));
        }
    }
    let ids: HashSet<&str> = emulator.iter().map(|f| f.id.as_str()).collect();
    for id in db.keys().filter(|id| !ids.contains(id.as_str())) {
        wrong.push(format!("{id} has a row but is not on Drive"));
    }
    for name in on_disk.iter().filter(|n| !ids.contains(n.as_str())) {
        wrong.push(format!("{name} is on disk but not on Drive"));
    }
    if !wrong.is_empty() {
        soak.violation(format!(
            "mirror of {sub} differs from Drive: {}",
            wrong.join("; ")
        ));
    }
    Ok(emulator.len())
}

async fn file_rows(store: &Store, sub: &str) -> anyhow::Result<HashMap<String, FileRow>> {
    let rows = sqlx::query("SELECT file_id, name, md5 FROM files WHERE sub = $1")
        .bind(sub)
        .fetch_all(store.pool())
        .await?;
    let mut db = HashMap::new();
    for r in rows {
        db.insert(
            r.try_get("file_id")?,
            FileRow {
                name: r.try_get("name")?,
                md5: r.try_get("md5")?,
            },
        );
    }
    Ok(db)
}

/// How the `files` row of Drive's file `f` differs from it, if it does.
fn row_differences(f: &EmuFile, row: Option<&FileRow>, wrong: &mut Vec<String>) {
    let Some(FileRow { name, md5 }) = row else {
        wrong.push(format!("{} ({:?}) has no row", f.id, f.name));
        return;
    };
    if *name != f.name {
        wrong.push(format!(
            "{} is named {name:?}, Drive says {:?}",
            f.id, f.name
        ));
    }
    if md5.as_deref() != Some(f.md5_checksum.as_str()) {
        wrong.push(format!(
            "{}: md5 {md5:?}, Drive says {}",
            f.id, f.md5_checksum
        ));
    }
}

/// How the mirror file of Drive's file `f` (in `dir`) differs from it, if it does.
async fn disk_differences(
    soak: &Soak,
    sub: &str,
    dir: &Path,
    f: &EmuFile,
    wrong: &mut Vec<String>,
) -> anyhow::Result<()> {
    let Ok(bytes) = std::fs::read(dir.join(&f.id)) else {
        wrong.push(format!("{} ({:?}) missing on disk", f.id, f.name));
        return Ok(());
    };
    let content = soak
        .control(
            reqwest::Method::GET,
            &format!("users/{sub}/appdata-content/{}", f.id),
            None,
        )
        .await?
        .bytes()
        .await?;
    if bytes != content {
        wrong.push(format!(
            "{}: {} bytes on disk differ from Drive's {}",
            f.id,
            bytes.len(),
            content.len()
        ));
    }
    Ok(())
}
