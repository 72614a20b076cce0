//! `GET /v1/users`, `/v1/users/{sub}`, `/v1/users/{sub}/files`, `/v1/changes` and
//! `/v1/changes/cursor`.

use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::Json;
use serde::Deserialize;

use super::{parse_query, ApiError, ApiState};
use crate::services::data::{
    ChangePage, FileListing, HeadCursor, UserPage, UserView, MAX_PAGE, MAX_WAIT,
};
use crate::store::users::UserState;

/// Page size when `limit` is not given.
const DEFAULT_LIMIT: i64 = 100;

/// A path parameter that does not decode is a 400, in our error shape.
pub(super) fn path<T>(p: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    p.map(|Path(v)| v).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "invalid_path",
            e.body_text(),
        )
    })
}

fn limit(raw: Option<&str>) -> Result<i64, ApiError> {
    match raw {
        None => Ok(DEFAULT_LIMIT),
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| ApiError::bad_query(format!("limit must be 1 to {MAX_PAGE}"))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersQuery {
    state: Option<String>,
    cursor: Option<String>,
    limit: Option<String>,
}

pub(super) async fn users(
    State(s): State<ApiState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<UserPage>, ApiError> {
    let q: UsersQuery = parse_query(raw.as_deref())?;
    let state = q
        .state
        .map(|s| s.parse::<UserState>())
        .transpose()
        .map_err(ApiError::bad_query)?;
    let limit = limit(q.limit.as_deref())?;
    Ok(Json(
        s.services
            .user_page(state, q.cursor.as_deref(), limit)
            .await?,
    ))
}

pub(super) async fn user(
    State(s): State<ApiState>,
    sub: Result<Path<String>, PathRejection>,
) -> Result<Json<UserView>, ApiError> {
    let sub = path(sub)?;
    Ok(Json(s.services.user_view(&sub).await?))
}

pub(super) async fn files(
    State(s): State<ApiState>,
    sub: Result<Path<String>, PathRejection>,
) -> Result<Json<FileListing>, ApiError> {
    let sub = path(sub)?;
    Ok(Json(s.services.file_listing(&sub).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangesQuery {
    cursor: Option<String>,
    limit: Option<String>,
    wait: Option<String>,
}

/// `30`, `30s`, `500ms`, `1m`: at most [`MAX_WAIT`].
fn wait(raw: Option<&str>) -> Result<Duration, ApiError> {
    let Some(raw) = raw else {
        return Ok(Duration::ZERO);
    };
    let bad = || {
        ApiError::bad_query(format!(
            "wait must be a duration up to {}s, such as 30s or 500ms",
            MAX_WAIT.as_secs()
        ))
    };
    let digits = raw.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let d = match &raw[digits.len()..] {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(bad()),
    };
    if d > MAX_WAIT {
        return Err(bad());
    }
    Ok(d)
}

pub(super) async fn changes(
    State(s): State<ApiState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<ChangePage>, ApiError> {
    let q: ChangesQuery = parse_query(raw.as_deref())?;
    let limit = limit(q.limit.as_deref())?;
    let wait = wait(q.wait.as_deref())?;
    Ok(Json(
        s.services
            .changes_after(q.cursor.as_deref(), limit, wait)
            .await?,
    ))
}

pub(super) async fn change_head(State(s): State<ApiState>) -> Result<Json<HeadCursor>, ApiError> {
    Ok(Json(s.services.change_head().await?))
}
