//! The admin protocol: newline-delimited JSON over the Unix socket, one request and one
//! response per line; `resync --wait` sends progress lines (`event`) before its response.
//! Documented for humans in docs/admin-protocol.md; keep the two in step.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::users::UserState;

/// Longest request line accepted.
pub const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Command {
    Status,
    /// Users in sub order, a page at a time.
    Users {
        #[serde(default)]
        state: Option<UserState>,
        /// Only users whose sub sorts after this one (the last sub of the previous page).
        #[serde(default)]
        after: Option<String>,
        /// At most this many (absent: up to 100,000).
        #[serde(default)]
        limit: Option<u32>,
    },
    User {
        sub: String,
    },
    Files {
        sub: String,
    },
    Resync {
        #[serde(default)]
        sub: Option<String>,
        #[serde(default)]
        all: bool,
        #[serde(default)]
        full: bool,
        #[serde(default)]
        wait: bool,
    },
    Pause {
        sub: String,
    },
    Resume {
        sub: String,
    },
    /// Writes a file into the user's appDataFolder, as the data API's `PUT` does; the
    /// `content_length` bytes of content follow the request line, raw.
    Push {
        sub: String,
        /// Where, as the data API's `path` names items: `settings.json`, `docs/a.json`.
        path: String,
        content_length: u64,
        #[serde(default)]
        mime_type: Option<String>,
        /// Required to replace an existing file: its md5 or version, or `*`.
        #[serde(default)]
        if_match: Option<String>,
        /// `*`: create only.
        #[serde(default)]
        if_none_match: Option<String>,
        /// Sync the user at once and answer with the outcome.
        #[serde(default)]
        sync_now: bool,
    },
    Forget {
        sub: String,
    },
    /// Clears the user's Cross-Account Protection credential-change flag.
    Acknowledge {
        sub: String,
    },
    LogLevel {
        filter: String,
    },
    Reload,
    /// A data API key: the result holds the key, shown this once.
    ApiKeyCreate {
        name: String,
        #[serde(default)]
        write: bool,
    },
    ApiKeyList,
    ApiKeyRevoke {
        name: String,
    },
    /// Each webhook endpoint's outbox.
    Webhooks,
}

impl Command {
    /// The command's name on the wire (`pause`, `api-key-create`), for the audit log.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Status => "status",
            Command::Users { .. } => "users",
            Command::User { .. } => "user",
            Command::Files { .. } => "files",
            Command::Resync { .. } => "resync",
            Command::Pause { .. } => "pause",
            Command::Resume { .. } => "resume",
            Command::Push { .. } => "push",
            Command::Forget { .. } => "forget",
            Command::Acknowledge { .. } => "acknowledge",
            Command::LogLevel { .. } => "log-level",
            Command::Reload => "reload",
            Command::ApiKeyCreate { .. } => "api-key-create",
            Command::ApiKeyList => "api-key-list",
            Command::ApiKeyRevoke { .. } => "api-key-revoke",
            Command::Webhooks => "webhooks",
        }
    }

    /// Whether it changes anything (users, files, keys, settings): those are audited.
    pub fn is_mutating(&self) -> bool {
        !matches!(
            self,
            Command::Status
                | Command::Users { .. }
                | Command::User { .. }
                | Command::Files { .. }
                | Command::ApiKeyList
                | Command::Webhooks
        )
    }

    /// The user a command is about, when it names one: not a secret, and what an auditor asks.
    pub fn user(&self) -> Option<&str> {
        match self {
            Command::User { sub }
            | Command::Files { sub }
            | Command::Pause { sub }
            | Command::Resume { sub }
            | Command::Push { sub, .. }
            | Command::Forget { sub }
            | Command::Acknowledge { sub } => Some(sub),
            Command::Resync { sub, .. } => sub.as_deref(),
            _ => None,
        }
    }
}

/// Stable error codes (see docs/admin-protocol.md).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, unknown command, missing or malformed argument.
    BadRequest,
    LineTooLong,
    Forbidden,
    UnknownUser,
    /// The command does not apply to the user's state (e.g. resume of a reauth_required user).
    InvalidState,
    InvalidFilter,
    /// Google or the database failed; retry later.
    Unavailable,
    Internal,
    /// No such file, path, parent folder or write.
    NotFound,
    /// A write's If-Match did not hold, or it lacked one for an existing file.
    PreconditionFailed,
    /// A write that cannot be done as asked (ambiguous path, a folder, too large).
    Conflict,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

/// One line from the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    /// Absent on progress lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    /// A progress line of `resync --wait`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<Value>,
}

impl Response {
    pub fn ok(id: Option<Value>, result: Value) -> Self {
        Self {
            id,
            ok: Some(true),
            result: Some(result),
            error: None,
            event: None,
        }
    }

    pub fn error(id: Option<Value>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            id,
            ok: Some(false),
            result: None,
            error: Some(ErrorBody {
                code,
                message: message.into(),
            }),
            event: None,
        }
    }

    pub fn event(id: Option<Value>, event: Value) -> Self {
        Self {
            id,
            ok: None,
            result: None,
            error: None,
            event: Some(event),
        }
    }

    pub fn is_final(&self) -> bool {
        self.ok.is_some()
    }

    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"ok":false,"error":{"code":"internal","message":"unserialisable response"}}"#.into()
        });
        s.push('\n');
        s
    }
}

/// Parses one request line into its id and command; a bad line still yields its id when it
/// had one, so the error response can echo it.
pub fn parse_request(line: &str) -> (Option<Value>, Result<Command, String>) {
    let value: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return (None, Err(format!("not JSON: {e}"))),
    };
    let Value::Object(mut map) = value else {
        return (None, Err("a request is a JSON object".into()));
    };
    let id = map.remove("id");
    let command = serde_json::from_value::<Command>(Value::Object(map)).map_err(|e| e.to_string());
    (id, command)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_with_ids_and_clear_errors() {
        let (id, cmd) = parse_request(r#"{"id": 7, "cmd": "user", "sub": "123"}"#);
        assert_eq!(id, Some(Value::from(7)));
        assert_eq!(cmd.unwrap(), Command::User { sub: "123".into() });
        let (id, cmd) = parse_request(r#"{"id": "x", "cmd": "user"}"#);
        assert_eq!(id, Some(Value::from("x")));
        assert!(cmd.unwrap_err().contains("sub"));
        let (_, cmd) = parse_request(r#"{"cmd": "nope"}"#);
        assert!(cmd.unwrap_err().contains("unknown variant"));
        assert!(parse_request("garbage").1.is_err());
        assert!(parse_request("[1]").1.is_err());
    }

    #[test]
    fn users_pages_are_optional_so_older_clients_still_list_users() {
        let (_, old) = parse_request(r#"{"cmd": "users", "state": "paused"}"#);
        let paused = Some(UserState::Paused);
        assert_eq!(
            old.unwrap(),
            Command::Users {
                state: paused,
                after: None,
                limit: None
            }
        );
        let (_, page) = parse_request(r#"{"cmd": "users", "after": "u049", "limit": 50}"#);
        assert_eq!(
            page.unwrap(),
            Command::Users {
                state: None,
                after: Some("u049".into()),
                limit: Some(50)
            }
        );
    }
}
