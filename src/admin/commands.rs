//! What each admin command does: parse its arguments into the types of [`Services`], call the
//! one operation that does it, and send its typed result (or error) back as JSON.

use base64::Engine;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

use super::protocol::{Command, ErrorBody, ErrorCode};
use crate::scheduler::resync::ResyncTarget;
use crate::scheduler::SyncEvent;
use crate::services::reports::LogFilter;
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

fn reply<T: Serialize>(result: Result<T, ServiceError>) -> CmdResult {
    let value = result?;
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
) -> CmdResult {
    match command {
        Command::Status => reply(services.status().await),
        Command::Users { state } => reply(services.users(state).await),
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
            name,
            content_base64,
            mime_type,
        } => {
            let content = base64::engine::general_purpose::STANDARD
                .decode(content_base64)
                .map_err(|e| {
                    err(
                        ErrorCode::BadRequest,
                        format!("content_base64 is not base64: {e}"),
                    )
                })?;
            reply(
                services
                    .push(&sub, &name, mime_type.as_deref(), &content)
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
        Command::Reload => services
            .reload()
            .await
            .map_err(|e| err(ErrorCode::BadRequest, format!("{e:#}")))
            .and_then(|r| reply(Ok(r))),
    }
}
