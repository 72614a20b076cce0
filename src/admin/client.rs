//! The client side of the admin socket, for `appdata-syncd ctl` and tests.

use std::path::Path;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::UnixStream;
use tokio_util::codec::{Framed, LinesCodec};

use super::protocol::{Command, Response};

/// Responses can be large (`users` on a big install).
const MAX_RESPONSE_LINE: usize = 512 * 1024 * 1024;

/// The daemon could not be reached (no socket, permission denied, connection refused), or
/// hung up before answering: `ctl` exits 3 on it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unreachable(String);

pub struct AdminClient {
    framed: Framed<UnixStream, LinesCodec>,
    next_id: u64,
}

impl AdminClient {
    pub async fn connect(path: &Path) -> anyhow::Result<AdminClient> {
        let stream = UnixStream::connect(path).await.map_err(|e| {
            Unreachable(format!(
                "cannot connect to {}: is appdata-syncd running? ({e})",
                path.display()
            ))
        })?;
        Ok(AdminClient {
            framed: Framed::new(stream, LinesCodec::new_with_max_length(MAX_RESPONSE_LINE)),
            next_id: 1,
        })
    }

    /// Sends `command` and returns its final response; progress lines go to `on_event`.
    pub async fn request(
        &mut self,
        command: &Command,
        on_event: impl FnMut(&Value),
    ) -> anyhow::Result<Response> {
        self.request_with_upload(command, None, on_event).await
    }

    /// Sends `command`, then `upload`'s bytes (a `push`'s content: as many as its
    /// `content_length` says), and returns the final response.
    pub async fn request_with_upload(
        &mut self,
        command: &Command,
        upload: Option<&mut (dyn tokio::io::AsyncRead + Unpin + Send)>,
        mut on_event: impl FnMut(&Value),
    ) -> anyhow::Result<Response> {
        let mut value = serde_json::to_value(command)?;
        let id = self.next_id;
        self.next_id += 1;
        if let Value::Object(map) = &mut value {
            map.insert("id".into(), Value::from(id));
        }
        // A refused client is told why in one line and disconnected, possibly before our
        // request is written: read that line even when sending failed.
        let mut sent = self.framed.send(value.to_string()).await;
        if let (Ok(()), Some(upload)) = (&sent, upload) {
            let copied = tokio::io::copy(upload, self.framed.get_mut()).await;
            sent = copied.map(|_| ()).map_err(Into::into);
        }
        loop {
            let line = match (self.framed.next().await, &sent) {
                (Some(Ok(line)), _) => line,
                (_, Err(e)) => {
                    return Err(Unreachable(format!("cannot send the request: {e}")).into())
                }
                (Some(Err(e)), _) => return Err(e.into()),
                (None, _) => {
                    return Err(Unreachable("the daemon closed the connection".into()).into())
                }
            };
            let response: Response = serde_json::from_str(&line)
                .map_err(|e| anyhow::anyhow!("unreadable response from the daemon: {e}"))?;
            if let Some(event) = &response.event {
                on_event(event);
                continue;
            }
            if response.is_final() {
                return Ok(response);
            }
        }
    }
}
