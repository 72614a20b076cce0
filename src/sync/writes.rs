//! Carrying out queued writes, after the mirror is brought up to date: a write whose
//! precondition no longer holds (the file changed on Drive since the writer saw it) is a
//! conflict, reported and never forced.
//!
//! Creates take their file id from `files.generateIds` before the first upload and send it, so
//! that a create retried after a timeout finds its own file (409) instead of making a second
//! one. Content above 5 MB goes up in a resumable session, resumed after a dropped connection.
//! <https://developers.google.com/workspace/drive/api/guides/manage-uploads>

use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;

use super::mirror::Mirror;
use super::session::Session;
use super::SyncError;
use crate::google::drive::{NewFile, UploadProgress, UploadTarget, SIMPLE_UPLOAD_LIMIT};
use crate::google::{drive::DriveFile, GoogleError};
use crate::store::changes::{self, ChangeKind, NewChange};
use crate::store::files::{self, FileRow};
use crate::store::writes::{self, Write, WriteOp, WriteState};
use crate::store::{self};

/// A write that failed this many times is given up on ([`WriteState::Failed`]).
const MAX_WRITE_ATTEMPTS: i64 = 5;
/// Resumable upload chunks: a multiple of 256 KiB, as Drive requires of every chunk but the last.
const CHUNK: u64 = 8 * 1024 * 1024;
/// Failed chunk sends in a row before an upload is given up (until the next sync).
const MAX_CHUNK_FAILURES: u32 = 5;

/// What carrying out a write came to.
enum Outcome {
    /// The row that now mirrors the written file (`None`: deleted).
    Done(Option<FileRow>),
    Conflict(String),
}

impl Session<'_> {
    /// Carries out the user's pending writes, oldest first.
    pub(super) async fn write_pending(&mut self) -> Result<(), SyncError> {
        let mut conn = self.engine.store.pool().acquire().await?;
        let queued = writes::pending(&mut conn, &self.sub).await?;
        drop(conn);
        for write in queued {
            self.check_cancel()?;
            self.carry_out(&write).await?;
        }
        Ok(())
    }

    async fn carry_out(&mut self, w: &Write) -> Result<(), SyncError> {
        let result = match self.conflict(w).await? {
            Some(why) => Ok(Outcome::Conflict(why)),
            None => match w.op {
                WriteOp::Put => self.put(w).await.map(|row| Outcome::Done(Some(row))),
                WriteOp::Delete => self.delete(w).await.map(|()| Outcome::Done(None)),
            },
        };
        match result {
            Ok(Outcome::Done(row)) => {
                self.settle_done(w, row.as_ref()).await?;
                if row.is_none() {
                    if let Some(id) = &w.file_id {
                        let path = Mirror::relative_path(&self.sub, id)?;
                        self.engine.mirror.remove(&path).await?;
                    }
                    self.counts.removed += 1;
                } else {
                    self.counts.uploaded += 1;
                    self.counts.bytes_up += w.size.unwrap_or(0);
                }
                self.drop_spool(w).await;
                Ok(())
            }
            Ok(Outcome::Conflict(why)) => {
                tracing::warn!(user = %self.sub, write = w.id, reason = %why,
                    "write not carried out: it conflicts with a change on Drive");
                self.finish(w, WriteState::Conflict, Some(&why)).await?;
                self.counts.conflicts += 1;
                self.drop_spool(w).await;
                Ok(())
            }
            Err(SyncError::Cancelled) => Err(SyncError::Cancelled),
            Err(e) => {
                let permanent = matches!(&e, SyncError::Google(g) if !g.is_transient());
                let give_up = permanent || w.attempts + 1 >= MAX_WRITE_ATTEMPTS;
                let state = if give_up {
                    WriteState::Failed
                } else {
                    WriteState::Pending
                };
                self.finish(w, state, Some(&e.to_string())).await?;
                if give_up {
                    self.drop_spool(w).await;
                }
                Err(e)
            }
        }
    }

    /// Why `w` would overwrite a change it did not see, if it would.
    async fn conflict(&self, w: &Write) -> Result<Option<String>, SyncError> {
        let mut conn = self.engine.store.pool().acquire().await?;
        if w.create_new {
            if w.must_be_new {
                let rows = files::list(&mut conn, &self.sub).await?;
                // A parent that is no folder of ours is the appDataFolder itself: the root.
                let folder = |id: Option<&String>| {
                    id.filter(|id| {
                        rows.iter().any(|r| {
                            &r.file_id == *id && r.mime_type.as_deref() == Some(files::FOLDER_MIME)
                        })
                    })
                    .cloned()
                };
                let parent = folder(w.parent_id.as_ref());
                let taken = rows.iter().find(|f| {
                    Some(&f.name) == w.name.as_ref()
                        && folder(f.parent_id.as_ref()) == parent
                        && Some(&f.file_id) != w.file_id.as_ref()
                });
                if let Some(f) = taken {
                    return Ok(Some(format!(
                        "an item named {:?} was created there on Drive (id {}) after the write was queued",
                        f.name, f.file_id
                    )));
                }
            }
            return Ok(None);
        }
        let Some(id) = &w.file_id else {
            return Ok(Some("the write names no file".into()));
        };
        let current = files::get(&mut conn, &self.sub, id).await?;
        Ok(match current {
            // Deleting what is gone already is done, not a conflict.
            None if w.op == WriteOp::Delete => None,
            None => Some(format!(
                "file {id} was deleted on Drive after the write was queued"
            )),
            Some(cur) if w.base_md5.is_some() && cur.md5 != w.base_md5 => Some(format!(
                "the file changed on Drive (md5 {}, the write expected {})",
                cur.md5.as_deref().unwrap_or("none"),
                w.base_md5.as_deref().unwrap_or("none")
            )),
            Some(cur) if w.base_version.is_some() && cur.version != w.base_version => {
                Some(format!(
                    "the file changed on Drive (version {:?}, the write expected {:?})",
                    cur.version, w.base_version
                ))
            }
            Some(_) => None,
        })
    }

    /// Uploads the write's content (creating the file or replacing its content) and places it
    /// in the mirror; returns the file's new row.
    async fn put(&mut self, w: &Write) -> Result<FileRow, SyncError> {
        let spool = Mirror::spool_path(w.spool.as_deref().unwrap_or_default())?;
        let size = w.size.unwrap_or(0).max(0) as u64;
        let mime = w.mime_type.as_deref().unwrap_or("application/octet-stream");
        let file = if w.create_new {
            let id = self.new_file_id(w).await?;
            let new = NewFile {
                id: &id,
                name: w.name.as_deref().unwrap_or("untitled"),
                mime_type: mime,
                parent: w.parent_id.as_deref(),
            };
            match self.upload(UploadTarget::Create(new), &spool, size).await {
                // Our own earlier attempt went through: that file is this write, if its
                // content is ours.
                Err(SyncError::Google(GoogleError::AlreadyExists { .. })) => {
                    let drive = self.engine.drive.clone();
                    let existing = self
                        .call(|t| {
                            let (d, id) = (drive.clone(), id.clone());
                            async move { d.get_file(&t, &id).await }
                        })
                        .await?;
                    if existing.md5_checksum != w.md5 {
                        return Err(SyncError::Google(GoogleError::Rejected {
                            endpoint: "files.create",
                            status: 409,
                            error: "fileIdInUse".into(),
                            description: "a file with the generated id exists with other content"
                                .into(),
                        }));
                    }
                    existing
                }
                other => other?,
            }
        } else {
            let id = w.file_id.as_deref().unwrap_or_default();
            let target = UploadTarget::Update {
                file_id: id,
                mime_type: mime,
            };
            self.upload(target, &spool, size).await?
        };
        let relative = Mirror::relative_path(&self.sub, &file.id)?;
        let written = self.engine.mirror.copy(&spool, &relative).await?;
        Ok(FileRow {
            file_id: file.id.clone(),
            name: file.name.clone(),
            mime_type: file.mime_type.clone(),
            size: Some(written.size),
            md5: Some(written.md5),
            version: file.version,
            modified_time: file.modified_time.clone(),
            local_path: relative,
            parent_id: file
                .parents
                .first()
                .cloned()
                .or_else(|| w.parent_id.clone()),
            metadata_only: false,
        })
    }

    /// The id of the file a create makes: generated (and saved) before the first attempt.
    async fn new_file_id(&mut self, w: &Write) -> Result<String, SyncError> {
        if let Some(id) = &w.file_id {
            return Ok(id.clone());
        }
        let drive = self.engine.drive.clone();
        let ids = self
            .call(|t| {
                let d = drive.clone();
                async move { d.generate_ids(&t, 1).await }
            })
            .await?;
        let id = ids.into_iter().next().ok_or(GoogleError::Malformed {
            endpoint: "files.generateIds",
            reason: "no id".into(),
        })?;
        let mut tx = self.engine.store.begin_write().await?;
        writes::set_file_id(tx.conn(), w.id, &id).await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Sends `size` bytes of the spool file `spool`: in one request up to 5 MB, else in a
    /// resumable session.
    async fn upload(
        &mut self,
        target: UploadTarget<'_>,
        spool: &str,
        size: u64,
    ) -> Result<DriveFile, SyncError> {
        if size > SIMPLE_UPLOAD_LIMIT {
            return self.upload_resumable(&target, spool, size).await;
        }
        let content = self.read_spool(spool, 0..size).await?;
        let drive = self.engine.drive.clone();
        self.call(|t| {
            let (d, content, target) = (drive.clone(), content.clone(), target.clone());
            async move {
                match target {
                    UploadTarget::Create(file) => d.create_file(&t, &file, content).await,
                    UploadTarget::Update { file_id, mime_type } => {
                        d.update_content(&t, file_id, mime_type, content).await
                    }
                }
            }
        })
        .await
    }

    /// A resumable upload: chunk after chunk; after a chunk that failed, the session is asked
    /// how much it holds and the upload goes on from there.
    async fn upload_resumable(
        &mut self,
        target: &UploadTarget<'_>,
        spool: &str,
        size: u64,
    ) -> Result<DriveFile, SyncError> {
        let drive = self.engine.drive.clone();
        let session = self
            .call(|t| {
                let (d, target) = (drive.clone(), target.clone());
                async move { d.start_resumable(&t, &target, size).await }
            })
            .await?;
        let (mut offset, mut failures) = (0u64, 0u32);
        loop {
            self.check_cancel()?;
            let chunk = self
                .read_spool(spool, offset..(offset + CHUNK).min(size))
                .await?;
            self.paced().await?;
            self.counts.api_calls += 1;
            let sent = drive.upload_chunk(&session, chunk, offset, size).await;
            let progress = match sent {
                Ok(p) => p,
                Err(e) if e.is_transient() && failures < MAX_CHUNK_FAILURES => {
                    failures += 1;
                    tracing::debug!(user = %self.sub, error = %e, offset, "upload chunk failed; asking the session how much it holds");
                    tokio::time::sleep(Duration::from_millis(200) * 2u32.pow(failures)).await;
                    self.paced().await?;
                    self.counts.api_calls += 1;
                    match drive.upload_status(&session, size).await {
                        Ok(p) => p,
                        Err(e) if e.is_transient() => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(e) => return Err(e.into()),
            };
            match progress {
                UploadProgress::Done(file) => return Ok(file),
                UploadProgress::Incomplete(held) => {
                    if held > offset {
                        failures = 0;
                    }
                    offset = held;
                }
            }
        }
    }

    async fn read_spool(
        &self,
        spool: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, SyncError> {
        let content = self
            .engine
            .mirror
            .read(spool, Some(range))
            .await?
            .ok_or_else(|| {
                super::mirror::MirrorError::Io(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the write's content is missing from the spool",
                ))
            })?;
        let chunks: Vec<Bytes> = content
            .body
            .try_collect()
            .await
            .map_err(super::mirror::MirrorError::Io)?;
        Ok(chunks.concat().into())
    }

    async fn delete(&mut self, w: &Write) -> Result<(), SyncError> {
        let Some(id) = w.file_id.clone() else {
            return Ok(());
        };
        let drive = self.engine.drive.clone();
        let deleted = self
            .call(|t| {
                let (d, id) = (drive.clone(), id.clone());
                async move { d.delete_file(&t, &id).await }
            })
            .await;
        match deleted {
            Ok(()) | Err(SyncError::Google(GoogleError::NotFound { .. })) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A write carried out: the file's row (`row`, or none: deleted), the file's change and
    /// the write's outcome for the feed, in one transaction.
    async fn settle_done(&self, w: &Write, row: Option<&FileRow>) -> Result<(), SyncError> {
        let now = store::now_ms();
        let detail = Some(write_detail(w, None));
        let mut tx = self.engine.store.begin_write().await?;
        match (row, &w.file_id) {
            (Some(row), _) => {
                let kind = match files::get(tx.conn(), &self.sub, &row.file_id).await? {
                    Some(_) => ChangeKind::FileUpdated,
                    None => ChangeKind::FileAdded,
                };
                files::upsert(tx.conn(), &self.sub, row).await?;
                changes::record_file(tx.conn(), kind, &self.sub, row, detail.clone(), now).await?;
            }
            (None, Some(id)) => {
                if let Some(old) = files::get(tx.conn(), &self.sub, id).await? {
                    let kind = ChangeKind::FileRemoved;
                    changes::record_file(tx.conn(), kind, &self.sub, &old, detail.clone(), now)
                        .await?;
                    files::delete(tx.conn(), &self.sub, id).await?;
                }
            }
            (None, None) => {}
        }
        writes::set_state(tx.conn(), w.id, WriteState::Done, None, now).await?;
        record_outcome(tx.conn(), w, ChangeKind::WriteDone, None, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Moves the write to `state`; a settled one (conflict, failed) enters the feed.
    async fn finish(
        &self,
        w: &Write,
        state: WriteState,
        error: Option<&str>,
    ) -> Result<(), SyncError> {
        let now = store::now_ms();
        let mut tx = self.engine.store.begin_write().await?;
        writes::set_state(tx.conn(), w.id, state, error, now).await?;
        let kind = match state {
            WriteState::Conflict => Some(ChangeKind::WriteConflict),
            WriteState::Failed => Some(ChangeKind::WriteFailed),
            WriteState::Pending | WriteState::Done => None,
        };
        if let Some(kind) = kind {
            record_outcome(tx.conn(), w, kind, error, now).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The content is no longer needed once the write is settled.
    async fn drop_spool(&self, w: &Write) {
        if let Some(Ok(path)) = w.spool.as_deref().map(Mirror::spool_path) {
            if let Err(e) = self.engine.mirror.remove(&path).await {
                tracing::warn!(write = w.id, error = %e, "cannot remove a write's spool file");
            }
        }
    }
}

/// What a change made by (or about) a write carries: the write's id and op, and why it was
/// not carried out.
fn write_detail(w: &Write, error: Option<&str>) -> serde_json::Value {
    let mut detail = serde_json::json!({"write_id": w.id, "op": w.op.as_str()});
    if let (Some(e), Some(obj)) = (error, detail.as_object_mut()) {
        obj.insert("error".into(), e.into());
    }
    detail
}

/// The write's outcome in the feed.
async fn record_outcome(
    conn: &mut store::Conn,
    w: &Write,
    kind: ChangeKind,
    error: Option<&str>,
    now: i64,
) -> Result<(), sqlx::Error> {
    let change = NewChange {
        file_id: w.file_id.as_deref(),
        md5: w.md5.as_deref(),
        detail: Some(write_detail(w, error)),
        ..NewChange::new(kind, &w.sub)
    };
    changes::record(conn, &change, now).await
}

/// Moves pushes queued by an older version (content in the database) to writes (content in
/// the spool), once, at start-up; each in its own transaction, so a crash loses none.
pub async fn adopt_legacy_pushes(store: &store::Store, mirror: &Mirror) -> anyhow::Result<()> {
    use crate::store::pushes;
    let legacy: Vec<(String, i64)> =
        sqlx::query_as("SELECT sub, id FROM pushes WHERE state = 'pending' ORDER BY id")
            .fetch_all(store.pool())
            .await?;
    for (sub, id) in legacy {
        let mut conn = store.pool().acquire().await?;
        let Some(push) = pushes::pending(&mut conn, &sub)
            .await?
            .into_iter()
            .find(|p| p.id == id)
        else {
            continue;
        };
        drop(conn);
        let name = uuid::Uuid::new_v4().simple().to_string();
        let mut spool = mirror.start_spool(&name).await?;
        let body = futures::stream::iter([Ok::<_, std::convert::Infallible>(Bytes::from(
            push.content.clone(),
        ))]);
        spool.feed(body).await?;
        let written = spool.finish(None).await?;
        let write = writes::NewWrite {
            file_id: push.base_file_id.clone(),
            create_new: push.base_file_id.is_none(),
            name: Some(push.name.clone()),
            mime_type: Some(push.mime_type.clone()),
            spool: Some(name),
            size: Some(written.size),
            md5: Some(written.md5),
            base_version: push.base_version,
            must_be_new: push.base_file_id.is_none(),
            ..Default::default()
        };
        let mut tx = store.begin_write().await?;
        writes::insert(tx.conn(), &sub, WriteOp::Put, &write, store::now_ms()).await?;
        sqlx::query("DELETE FROM pushes WHERE id = $1")
            .bind(id)
            .execute(tx.conn())
            .await?;
        tx.commit().await?;
        tracing::info!(user = %sub, push = id, "a push queued by an older version is now a write");
    }
    Ok(())
}
