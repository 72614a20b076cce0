//! What each admin command does: parse its arguments into the types of [`Services`], call the
//! one operation that does it, and send its typed result (or error) back as JSON.

use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

use super::protocol::{Command, ErrorBody, ErrorCode};
use crate::scheduler::resync::ResyncTarget;
use crate::scheduler::SyncEvent;
use crate::services::data::{DataError, Item};
use crate::services::reports::LogFilter;
use crate::services::writes::WriteTarget;
use crate::services::{Pause, ServiceError, Services};
use crate::store::schedule::Resync;

type CmdResult = Result<Value, ErrorBody>;

fn err(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
    ErrorBody {
        code,
        message: message.into(),
    }
}

impl From<ServiceError> for ErrorBody {
    fn from(e: ServiceError) -> Self {
        let code = match &e {
            ServiceError::UnknownUser(_) => ErrorCode::UnknownUser,
            ServiceError::InvalidState(_) => ErrorCode::InvalidState,
            ServiceError::BadRequest(_) => ErrorCode::BadRequest,
            ServiceError::InvalidFilter(_) => ErrorCode::InvalidFilter,
            ServiceError::Unavailable(_) => ErrorCode::Unavailable,
            ServiceError::Database(e) => {
                tracing::warn!(error = %e, "admin command: database error");
                ErrorCode::Unavailable
            }
            ServiceError::Internal(_) => ErrorCode::Internal,
        };
        err(code, e.to_string())
    }
}

impl From<DataError> for ErrorBody {
    fn from(e: DataError) -> Self {
        match e {
            DataError::Service(e) => e.into(),
            e => err(data_error_code(&e), e.to_string()),
        }
    }
}

fn data_error_code(e: &DataError) -> ErrorCode {
    match e {
        DataError::Service(_) => ErrorCode::Internal,
        DataError::UnknownFile { .. }
        | DataError::UnknownPath { .. }
        | DataError::NoParentFolder { .. }
        | DataError::UnknownWrite(_) => ErrorCode::NotFound,
        DataError::PreconditionRequired { .. } | DataError::PreconditionFailed(_) => {
            ErrorCode::PreconditionFailed
        }
        DataError::AmbiguousPath { .. }
        | DataError::MetadataOnly { .. }
        | DataError::NotWritable { .. }
        | DataError::TooLarge { .. } => ErrorCode::Conflict,
        DataError::ContentMissing(_) | DataError::InsufficientStorage => ErrorCode::Unavailable,
        DataError::InvalidCursor(_) | DataError::CursorExpired => ErrorCode::BadRequest,
    }
}

fn reply<T: Serialize, E: Into<ErrorBody>>(result: Result<T, E>) -> CmdResult {
    let value = result.map_err(Into::into)?;
    serde_json::to_value(value).map_err(|e| err(ErrorCode::Internal, e.to_string()))
}

/// `resync SUB` or `resync --all`, never both, never neither.
fn resync_target(sub: Option<String>, all: bool) -> Result<ResyncTarget, ErrorBody> {
    match (sub, all) {
        (Some(_), true) => Err(err(ErrorCode::BadRequest, "give a sub or --all, not both")),
        (None, false) => Err(err(
            ErrorCode::BadRequest,
            "missing argument: sub (or --all)",
        )),
        (Some(sub), false) => Ok(ResyncTarget::User(sub)),
        (None, true) => Ok(ResyncTarget::All),
    }
}

/// Runs one command. Progress lines (for `resync --wait`) go to `events`. One arm per
/// command of the protocol, each a call to [`Services`]: longer than a screen, but flat.
pub async fn execute(
    services: &Services,
    command: Command,
    events: mpsc::Sender<Value>,
    upload: &mut (dyn tokio::io::AsyncRead + Unpin + Send),
) -> CmdResult {
    match command {
        Command::Status => reply(services.status().await),
        Command::Users {
            state,
            after,
            limit,
        } => reply(
            services
                .users(state, after.as_deref(), limit.map(i64::from))
                .await,
        ),
        Command::User { sub } => reply(services.user(&sub).await),
        Command::Files { sub } => reply(services.files(&sub).await),
        Command::Resync {
            sub,
            all,
            full,
            wait,
        } => {
            let target = resync_target(sub, all)?;
            let kind = if full {
                Resync::Full
            } else {
                Resync::Incremental
            };
            if !wait {
                return reply(services.resync(&target, kind).await);
            }
            let progress = |event: &SyncEvent| {
                if let Ok(v) = serde_json::to_value(event) {
                    // A slow client only misses progress lines; the result still comes.
                    let _ = events.try_send(v);
                }
            };
            reply(services.resync_and_wait(&target, kind, progress).await)
        }
        Command::Pause { sub } => reply(services.set_paused(&sub, Pause::Pause).await),
        Command::Resume { sub } => reply(services.set_paused(&sub, Pause::Resume).await),
        Command::Push {
            sub,
            path,
            content_length,
            mime_type,
            if_match,
            if_none_match,
            sync_now,
        } => {
            let target = WriteTarget {
                sub: &sub,
                item: Item::Path(path.strip_prefix('/').unwrap_or(&path)),
                if_match: if_match.as_deref(),
                if_none_match: if_none_match.as_deref(),
                sync_now,
            };
            let body = tokio_util::io::ReaderStream::new(upload);
            let size = Some(content_length);
            reply(
                services
                    .put_content(&target, mime_type.as_deref(), size, body)
                    .await,
            )
        }
        Command::Forget { sub } => reply(services.forget(&sub).await),
        Command::Acknowledge { sub } => reply(services.acknowledge(&sub).await),
        Command::LogLevel { filter } => reply(
            services
                .set_log_filter(&filter)
                .map(|()| LogFilter { filter }),
        ),
        Command::ApiKeyCreate { name, write } => reply(services.create_api_key(&name, write).await),
        Command::ApiKeyList => reply(services.api_keys().await),
        Command::ApiKeyRevoke { name } => reply(services.revoke_api_key(&name).await),
        Command::Webhooks => reply(services.webhooks_status().await),
        Command::Reload => services
            .reload()
            .await
            .map_err(|e| err(ErrorCode::BadRequest, format!("{e:#}")))
            .and_then(|r| reply(Ok::<_, ServiceError>(r))),
    }
}
