//! Uploading queued pushes, after the mirror is brought up to date. A push whose base no
//! longer matches Drive is a conflict: it is reported, never forced.

use super::mirror::Mirror;
use super::session::Session;
use super::SyncError;
use crate::store::files::{self, FileRow};
use crate::store::pushes::{self, Push, PushState};
use crate::store::{self};

/// A push that failed this many times is given up on ([`PushState::Failed`]).
const MAX_PUSH_ATTEMPTS: i64 = 5;

impl Session<'_> {
    /// Uploads queued pushes. The mirror is current (we just synced), so the base check is
    /// against what Drive has now.
    pub(super) async fn push_pending(&mut self) -> Result<(), SyncError> {
        let mut conn = self.engine.store.pool().acquire().await?;
        let queued = pushes::pending(&mut conn, &self.sub).await?;
        drop(conn);
        for push in queued {
            self.check_cancel()?;
            if let Some(why) = self.conflict(&push).await? {
                tracing::warn!(user = %self.sub, push = push.id, name = %push.name, reason = %why,
                    "push not uploaded: conflict with a change on Drive; queue it again after checking `ctl files`");
                self.set_push_state(&push, PushState::Conflict, Some(&why))
                    .await?;
                self.counts.conflicts += 1;
                continue;
            }
            self.upload(&push).await?;
        }
        Ok(())
    }

    /// Why `push` would overwrite a change it did not see, if it would.
    async fn conflict(&self, push: &Push) -> Result<Option<String>, SyncError> {
        let mut conn = self.engine.store.pool().acquire().await?;
        let current = match &push.base_file_id {
            Some(id) => files::get(&mut conn, &self.sub, id).await?,
            None => files::by_name(&mut conn, &self.sub, &push.name).await?,
        };
        Ok(match (&push.base_file_id, &current) {
            (None, Some(existing)) => Some(format!(
                "a file named {:?} was created on Drive (id {}) after the push was queued",
                push.name, existing.file_id
            )),
            (Some(id), None) => Some(format!(
                "file {id} was deleted on Drive after the push was queued"
            )),
            (Some(_), Some(cur)) if cur.version != push.base_version => Some(format!(
                "the file changed on Drive (version {:?}, push based on {:?})",
                cur.version, push.base_version
            )),
            _ => None,
        })
    }

    async fn upload(&mut self, push: &Push) -> Result<(), SyncError> {
        let drive = self.engine.drive.clone();
        let uploaded = self
            .call(|t| {
                let d = drive.clone();
                let (name, mime, content, base) = (
                    push.name.clone(),
                    push.mime_type.clone(),
                    push.content.clone(),
                    push.base_file_id.clone(),
                );
                async move {
                    match base {
                        Some(id) => d.update_content(&t, &id, &mime, content).await,
                        None => d.create_file(&t, &name, &mime, content).await,
                    }
                }
            })
            .await;
        let file = match uploaded {
            Ok(file) => file,
            Err(SyncError::Cancelled) => return Err(SyncError::Cancelled),
            Err(e) => {
                let give_up = push.attempts + 1 >= MAX_PUSH_ATTEMPTS;
                let state = if give_up {
                    PushState::Failed
                } else {
                    PushState::Pending
                };
                self.set_push_state(push, state, Some(&e.to_string()))
                    .await?;
                return Err(e);
            }
        };
        let written = self
            .engine
            .mirror
            .write_bytes(&self.sub, &file.id, &push.content)
            .await?;
        let row = FileRow {
            file_id: file.id.clone(),
            name: file.name.clone(),
            mime_type: file.mime_type.clone(),
            size: Some(written.size),
            md5: Some(written.md5),
            version: file.version,
            modified_time: file.modified_time.clone(),
            local_path: Mirror::relative_path(&self.sub, &file.id)?,
            parent_id: file.parents.first().cloned(),
            metadata_only: false,
        };
        let mut tx = self.engine.store.begin_write().await?;
        files::upsert(tx.conn(), &self.sub, &row).await?;
        pushes::set_state(tx.conn(), push.id, PushState::Done, None, store::now_ms()).await?;
        tx.commit().await?;
        self.counts.uploaded += 1;
        self.counts.bytes_up += push.content.len() as i64;
        Ok(())
    }

    async fn set_push_state(
        &self,
        push: &Push,
        state: PushState,
        error: Option<&str>,
    ) -> Result<(), SyncError> {
        let mut tx = self.engine.store.begin_write().await?;
        pushes::set_state(tx.conn(), push.id, state, error, store::now_ms()).await?;
        tx.commit().await?;
        Ok(())
    }
}
