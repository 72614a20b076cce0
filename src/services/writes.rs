//! Accepting writes: the content goes to the mirror's spool (streamed, never held whole), then
//! the write is queued for the user's next sync, which carries it out (`sync::writes`).

use futures::Stream;

use super::{ServiceError, Services};
use crate::store::writes::{self, NewWrite, WriteOp};
use crate::store::{self};

/// Content received into the spool.
pub struct Spooled {
    pub name: String,
    pub size: i64,
    pub md5: String,
}

impl Services {
    /// Streams `body` into a new spool file.
    pub async fn spool<S, E>(&self, body: S) -> Result<Spooled, ServiceError>
    where
        S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let name = uuid::Uuid::new_v4().simple().to_string();
        let internal = |e: crate::sync::mirror::MirrorError| {
            ServiceError::Internal(format!("cannot store the content: {e}"))
        };
        let mut download = self.mirror.start_spool(&name).await.map_err(internal)?;
        if let Err(e) = download.feed(body).await {
            download.abandon().await;
            return Err(ServiceError::BadRequest(format!(
                "the content did not arrive whole: {e}"
            )));
        }
        let written = download.finish(None).await.map_err(internal)?;
        Ok(Spooled {
            name,
            size: written.size,
            md5: written.md5,
        })
    }

    /// Queues a write; the user's next sync carries it out.
    pub async fn queue_write(
        &self,
        sub: &str,
        op: WriteOp,
        write: &NewWrite,
    ) -> Result<i64, ServiceError> {
        let mut tx = self.store.begin_write().await?;
        let id = writes::insert(tx.conn(), sub, op, write, store::now_ms()).await?;
        tx.commit().await?;
        Ok(id)
    }
}
