//! The `/_emulator/` control API: JSON wrappers around the [`Emulator`] methods, so tests in
//! other languages (or curl) can drive the emulator exactly as Rust tests do.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use std::time::Duration;

use crate::{Emulator, Error, Faults, MintCode, NewUser};

pub(crate) fn router() -> Router<Emulator> {
    Router::new()
        .route("/_emulator/users", post(create_user))
        .route("/_emulator/bulk-users", post(bulk_users))
        .route("/_emulator/users/{sub}", get(get_user))
        .route("/_emulator/authcodes", post(mint_code))
        .route("/_emulator/users/{sub}/appdata", get(list_files))
        .route("/_emulator/users/{sub}/folders", post(create_folder))
        .route("/_emulator/users/{sub}/files", post(create_file))
        .route(
            "/_emulator/users/{sub}/files/{file_id}/move",
            post(move_file),
        )
        .route(
            "/_emulator/users/{sub}/files/{file_id}/copies",
            post(copy_file),
        )
        .route("/_emulator/clock", post(advance_clock))
        .route("/_emulator/redirect-target", any(redirect_target))
        .route(
            "/_emulator/users/{sub}/appdata/{*name}",
            put(put_file).patch(rename_file).delete(delete_file),
        )
        .route(
            "/_emulator/users/{sub}/appdata-content/{file_id}",
            get(file_content),
        )
        .route("/_emulator/users/{sub}/revoke", post(revoke_user))
        .route(
            "/_emulator/users/{sub}/invalidate-page-tokens",
            post(invalidate_page_tokens),
        )
        .route(
            "/_emulator/expire-access-tokens",
            post(expire_access_tokens),
        )
        .route("/_emulator/settings", put(settings))
        .route("/_emulator/rotate-keys", post(rotate_keys))
        .route("/_emulator/faults", put(set_faults).delete(clear_faults))
        .route("/_emulator/stats", get(stats).delete(reset_stats))
        .route("/_emulator/clients", get(clients))
        .route("/_emulator/client-secret-json", get(client_secret_json))
        .route("/_emulator/issued-secrets", get(issued_secrets))
        .route(
            "/_emulator/risc/service-accounts",
            post(super::risc::create_service_account),
        )
        .route("/_emulator/risc/events", post(super::risc::emit))
        .route("/_emulator/risc/deliveries", get(super::risc::deliveries))
        .route(
            "/_emulator/risc/deliveries/{jti}/replay",
            post(super::risc::replay),
        )
        .route(
            "/_emulator/risc/stream",
            get(super::risc::get_stream).put(super::risc::put_stream),
        )
        .route("/_emulator/risc/settings", put(super::risc::settings))
        .route(
            "/_emulator/risc/rotate-keys",
            post(super::risc::rotate_keys),
        )
}

type Ctl = Result<Response, Error>;

fn ok() -> Ctl {
    Ok(Json(serde_json::json!({})).into_response())
}

/// JSON bodies may be empty (`{}` implied) for calls whose fields are all optional.
fn json_or_default<T: for<'de> Deserialize<'de> + Default>(body: &[u8]) -> Result<T, Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| Error::Invalid(e.to_string()))
}

async fn create_user(State(emu): State<Emulator>, body: Bytes) -> Ctl {
    let new: NewUser = json_or_default(&body)?;
    let user = emu.create_user(new)?;
    Ok((StatusCode::CREATED, Json(user)).into_response())
}

/// `{"prefix": "i", "from": 0, "count": 10000}`: users `{prefix}{i:07}` for i in from..from+count,
/// each signed in at once (see `Emulator::bulk_sign_in`); answers `{"users": [...]}` with their
/// tokens and changes start page tokens. Not a Google API: for benchmarks.
#[derive(Deserialize)]
struct BulkUsers {
    prefix: String,
    from: usize,
    count: usize,
}

/// Users per `bulk-users` call at most: one answer stays a few megabytes.
const MAX_BULK_USERS: usize = 100_000;

async fn bulk_users(State(emu): State<Emulator>, body: Bytes) -> Ctl {
    let req: BulkUsers =
        serde_json::from_slice(&body).map_err(|e| Error::Invalid(e.to_string()))?;
    if req.count > MAX_BULK_USERS {
        return Err(Error::Invalid(format!(
            "count {} is over {MAX_BULK_USERS}",
            req.count
        )));
    }
    let users = (req.from..req.from.saturating_add(req.count))
        .map(|i| emu.bulk_sign_in(&format!("{}{i:07}", req.prefix)))
        .collect::<Result<Vec<_>, Error>>()?;
    Ok(Json(serde_json::json!({ "users": users })).into_response())
}

async fn get_user(State(emu): State<Emulator>, Path(sub): Path<String>) -> Ctl {
    Ok(Json(emu.user(&sub)?).into_response())
}

async fn mint_code(State(emu): State<Emulator>, body: Bytes) -> Ctl {
    let req: MintCode = json_or_default(&body)?;
    let code = emu.mint_auth_code(req)?;
    Ok(Json(serde_json::json!({ "code": code })).into_response())
}

async fn list_files(State(emu): State<Emulator>, Path(sub): Path<String>) -> Ctl {
    let files = emu.list_files(&sub)?;
    Ok(Json(serde_json::json!({ "files": files })).into_response())
}

async fn put_file(
    State(emu): State<Emulator>,
    Path((sub, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Ctl {
    let mime = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let file = emu.put_file(&sub, &name, body, mime)?;
    Ok(Json(file).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FolderReq {
    name: String,
    /// A folder id; absent or null for the appDataFolder.
    #[serde(default)]
    parent: Option<String>,
}

async fn create_folder(State(emu): State<Emulator>, Path(sub): Path<String>, body: Bytes) -> Ctl {
    let req: FolderReq =
        serde_json::from_slice(&body).map_err(|e| Error::Invalid(e.to_string()))?;
    let folder = emu.create_folder(&sub, &req.name, req.parent.as_deref())?;
    Ok((StatusCode::CREATED, Json(folder)).into_response())
}

/// `POST …/files?name=N[&parent=FOLDER_ID]`, body = content, `Content-Type` = its type
/// (Google-native types such as `application/vnd.google-apps.document` included).
async fn create_file(
    State(emu): State<Emulator>,
    Path(sub): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Ctl {
    let p = super::drive::params(q);
    let name = p
        .get("name")
        .ok_or_else(|| Error::Invalid("the name query parameter is required".into()))?;
    let mime = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let parent = p.get("parent").map(String::as_str);
    let file = emu.create_file_in(&sub, parent, name, body, mime)?;
    Ok((StatusCode::CREATED, Json(file)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CopiesReq {
    count: usize,
}

/// `POST …/files/FILE_ID/copies {"count": N}`: N copies sharing the file's content.
async fn copy_file(
    State(emu): State<Emulator>,
    Path((sub, file_id)): Path<(String, String)>,
    body: Bytes,
) -> Ctl {
    let req: CopiesReq =
        serde_json::from_slice(&body).map_err(|e| Error::Invalid(e.to_string()))?;
    let files = emu.copy_file(&sub, &file_id, req.count)?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "files": files })),
    )
        .into_response())
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct MoveReq {
    /// A folder id; absent or null for the appDataFolder.
    parent: Option<String>,
}

async fn move_file(
    State(emu): State<Emulator>,
    Path((sub, file_id)): Path<(String, String)>,
    body: Bytes,
) -> Ctl {
    let req: MoveReq = json_or_default(&body)?;
    let file = emu.move_file(&sub, &file_id, req.parent.as_deref())?;
    Ok(Json(file).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockReq {
    advance_s: u64,
}

async fn advance_clock(State(emu): State<Emulator>, body: Bytes) -> Ctl {
    let req: ClockReq = serde_json::from_slice(&body).map_err(|e| Error::Invalid(e.to_string()))?;
    emu.advance_clock(Duration::from_secs(req.advance_s));
    ok()
}

/// Where a `redirect_to` fault may point: counts the clients that followed the redirect.
async fn redirect_target(State(emu): State<Emulator>) -> Ctl {
    emu.stats.inc(crate::stats::Counter::RedirectTargetHits);
    ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenameReq {
    name: String,
}

/// Renames the first file named `name`, keeping its id and content (Drive's `files.update`
/// with only a new name: a metadata-only change in the changes feed).
async fn rename_file(
    State(emu): State<Emulator>,
    Path((sub, name)): Path<(String, String)>,
    body: Bytes,
) -> Ctl {
    let req: RenameReq =
        serde_json::from_slice(&body).map_err(|e| Error::Invalid(e.to_string()))?;
    let file = emu
        .list_files(&sub)?
        .into_iter()
        .find(|f| f.name == name)
        .ok_or_else(|| Error::FileNotFound(name.clone()))?;
    let renamed = emu.rename_file(&sub, &file.id, &req.name)?;
    Ok(Json(renamed).into_response())
}

async fn delete_file(
    State(emu): State<Emulator>,
    Path((sub, name)): Path<(String, String)>,
) -> Ctl {
    emu.delete_file(&sub, &name)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn file_content(
    State(emu): State<Emulator>,
    Path((sub, file_id)): Path<(String, String)>,
) -> Ctl {
    Ok(emu.file_content(&sub, &file_id)?.into_response())
}

async fn revoke_user(State(emu): State<Emulator>, Path(sub): Path<String>) -> Ctl {
    emu.user(&sub)?;
    emu.revoke_user(&sub);
    ok()
}

async fn invalidate_page_tokens(State(emu): State<Emulator>, Path(sub): Path<String>) -> Ctl {
    emu.user(&sub)?;
    emu.invalidate_page_tokens(&sub);
    ok()
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ExpireReq {
    sub: Option<String>,
}

async fn expire_access_tokens(State(emu): State<Emulator>, body: Bytes) -> Ctl {
    let req: ExpireReq = json_or_default(&body)?;
    if let Some(sub) = &req.sub {
        emu.user(sub)?;
    }
    emu.expire_access_tokens(req.sub.as_deref());
    ok()
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    access_token_lifetime_s: Option<u64>,
    jwks_max_age_s: Option<u64>,
    /// Refresh tokens issued from now on expire this long after issue; 0: never by age.
    refresh_token_lifetime_s: Option<u64>,
}

async fn settings(State(emu): State<Emulator>, body: Bytes) -> Ctl {
    let s: Settings = json_or_default(&body)?;
    if let Some(v) = s.access_token_lifetime_s {
        emu.set_access_token_lifetime(v);
    }
    if let Some(v) = s.jwks_max_age_s {
        emu.set_jwks_max_age(v);
    }
    if let Some(v) = s.refresh_token_lifetime_s {
        emu.set_refresh_token_lifetime((v > 0).then(|| Duration::from_secs(v)));
    }
    ok()
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RotateReq {
    grace_s: u64,
}

impl Default for RotateReq {
    fn default() -> Self {
        Self { grace_s: 3600 }
    }
}

async fn rotate_keys(State(emu): State<Emulator>, body: Bytes) -> Ctl {
    let req: RotateReq = json_or_default(&body)?;
    // RSA key generation is CPU-heavy; keep it off the async workers.
    let emu2 = emu.clone();
    tokio::task::spawn_blocking(move || emu2.rotate_keys(Duration::from_secs(req.grace_s)))
        .await
        .map_err(|e| Error::Invalid(format!("key rotation failed: {e}")))?;
    Ok(Json(emu.jwks()).into_response())
}

async fn set_faults(State(emu): State<Emulator>, body: Bytes) -> Ctl {
    let faults: Faults = json_or_default(&body)?;
    for f in [&faults.token, &faults.drive, &faults.jwks]
        .into_iter()
        .flatten()
    {
        f.validate().map_err(Error::Invalid)?;
    }
    emu.set_faults(faults);
    ok()
}

async fn clear_faults(State(emu): State<Emulator>) -> Ctl {
    emu.clear_faults();
    ok()
}

/// `GET /_emulator/stats[?by_user=false]`: without `by_user`, cheap enough to sample every
/// second at any number of users.
async fn stats(State(emu): State<Emulator>, RawQuery(q): RawQuery) -> Ctl {
    let by_user = super::drive::params(q).get("by_user").map(String::as_str) != Some("false");
    let stats = if by_user { emu.stats() } else { emu.totals() };
    Ok(Json(stats).into_response())
}

async fn reset_stats(State(emu): State<Emulator>) -> Ctl {
    emu.reset_stats();
    ok()
}

async fn clients(State(emu): State<Emulator>) -> Ctl {
    let c = emu.clients();
    Ok(Json(serde_json::json!({
        "web": { "client_id": c.web_client_id, "client_secret": c.web_client_secret },
        "android_client_id": c.android_client_id,
    }))
    .into_response())
}

async fn client_secret_json(State(emu): State<Emulator>) -> Ctl {
    Ok(Json(emu.client_secret_json()).into_response())
}

async fn issued_secrets(State(emu): State<Emulator>) -> Ctl {
    Ok(Json(emu.issued_secrets()).into_response())
}
