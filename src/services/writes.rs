//! Writes into a user's appDataFolder: the data API's `PUT` and `DELETE`, and `ctl push`.
//! Each is checked against the mirror as the writer saw it (`If-Match`), its content streamed
//! into the mirror's spool (never a database value), and queued: the user's next sync carries
//! it out (`sync::writes`) and reports a conflict when Drive changed meanwhile. `sync_now`
//! asks for that sync at once and waits for the outcome.

use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use super::data::{kind_of, views, DataError, Item, ItemKind, PreconditionFailed};
use super::{ServiceError, Services};
use crate::scheduler::resync::ResyncTarget;
use crate::store::files::{self, FileRow};
use crate::store::schedule::Resync;
use crate::store::users::UserState;
use crate::store::writes::{self, NewWrite, Write, WriteOp, WriteState};
use crate::store::{self};
use crate::sync::mirror::MirrorError;

/// The longest a write with `sync_now` waits for its outcome; it then answers `pending`.
pub const SYNC_NOW_WAIT: Duration = Duration::from_secs(120);
/// An upload that sends nothing for this long is dropped.
const UPLOAD_IDLE: Duration = Duration::from_secs(60);

/// What a write names, and the conditions it holds under.
#[derive(Debug, Clone)]
pub struct WriteTarget<'a> {
    pub sub: &'a str,
    pub item: Item<'a>,
    /// `If-Match`: `*`, or the md5s or versions (quoted or not, comma-separated) of the item
    /// the writer saw. Required to replace or delete an existing item.
    pub if_match: Option<&'a str>,
    /// `If-None-Match: *`: create only, never replace.
    pub if_none_match: Option<&'a str>,
    /// Run the user's sync at once and answer with the write's outcome.
    pub sync_now: bool,
}

/// A write, as `GET /v1/writes/{id}` and each write route answer it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriteView {
    pub id: i64,
    pub sub: String,
    pub op: WriteOp,
    /// `pending` until the user's sync carries it out: then `done`, `conflict` (the item
    /// changed on Drive since the writer saw it: nothing was written) or `failed`.
    pub state: WriteState,
    /// The item written (for a create, known once its id is generated).
    pub file_id: Option<String>,
    /// Where it goes, best-effort as item paths are.
    pub path: String,
    pub mime_type: Option<String>,
    pub size: Option<i64>,
    pub md5: Option<String>,
    /// Why it conflicted or failed (or the last failed attempt's error while pending).
    pub error: Option<String>,
    pub attempts: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Where a write lands: an item of the mirror, or a new one.
enum Resolved {
    Existing(FileRow),
    New {
        name: String,
        parent_id: Option<String>,
    },
}

/// Which version of the item a write replaces; the sync calls it a conflict when Drive's
/// differs by then.
#[derive(Debug, PartialEq)]
enum Base {
    Any,
    Md5(String),
    Version(i64),
}

/// Content received into the spool.
pub struct Spooled {
    pub name: String,
    pub size: i64,
    pub md5: String,
}

impl Services {
    /// Creates the file `target` names, or replaces its content, with `body` (`mime_type`, or
    /// the item's, or `application/octet-stream`). `size` (a Content-Length) refuses too large
    /// a body before any of it is read.
    pub async fn put_content<S, E>(
        &self,
        target: &WriteTarget<'_>,
        mime_type: Option<&str>,
        size: Option<u64>,
        body: S,
    ) -> Result<WriteView, DataError>
    where
        S: Stream<Item = Result<bytes::Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        let planned = self.plan(target, WriteOp::Put).await?;
        let limits = self.config().raw.sync;
        if size.is_some_and(|s| s > limits.max_file_bytes) {
            return Err(DataError::TooLarge {
                limit: limits.max_file_bytes,
            });
        }
        if self
            .mirror
            .free_space()
            .is_some_and(|free| free < limits.min_free_disk_bytes)
        {
            return Err(DataError::InsufficientStorage);
        }
        let spooled = self.spool(body, limits.max_file_bytes).await?;
        let write = NewWrite {
            mime_type: Some(
                mime_type
                    .or(planned.mime_type.as_deref())
                    .unwrap_or("application/octet-stream")
                    .to_string(),
            ),
            spool: Some(spooled.name),
            size: Some(spooled.size),
            md5: Some(spooled.md5),
            ..planned
        };
        let id = self.queue_write(target.sub, WriteOp::Put, &write).await?;
        tracing::info!(user = %target.sub, write = id, file = ?write.file_id, name = ?write.name,
            bytes = spooled.size, "write queued");
        self.settle(id, target).await
    }

    /// Deletes the item `target` names (never a folder).
    pub async fn delete_content(&self, target: &WriteTarget<'_>) -> Result<WriteView, DataError> {
        let planned = self.plan(target, WriteOp::Delete).await?;
        let id = self
            .queue_write(target.sub, WriteOp::Delete, &planned)
            .await?;
        tracing::info!(user = %target.sub, write = id, file = ?planned.file_id, "delete queued");
        self.settle(id, target).await
    }

    /// A write and where it stands.
    pub async fn write_view(&self, id: i64) -> Result<WriteView, DataError> {
        let mut conn = self.store.pool().acquire().await?;
        let w = writes::get(&mut conn, id)
            .await?
            .ok_or(DataError::UnknownWrite(id))?;
        // The path of what is there now, else of where a create goes.
        let row = match &w.file_id {
            Some(id) => files::get(&mut conn, &w.sub, id).await?,
            None => None,
        };
        let row = row.unwrap_or_else(|| FileRow {
            file_id: w.file_id.clone().unwrap_or_default(),
            name: w.name.clone().unwrap_or_default(),
            parent_id: w.parent_id.clone(),
            ..FileRow::default()
        });
        let path = files::path_of(&mut conn, &w.sub, &row).await?;
        Ok(view(w, path))
    }

    /// Checks the write against the mirror and its preconditions: the write to queue, without
    /// its content.
    async fn plan(&self, target: &WriteTarget<'_>, op: WriteOp) -> Result<NewWrite, DataError> {
        let user = self.user_row(target.sub).await?;
        if target.sync_now && user.state != UserState::Active {
            return Err(DataError::Service(ServiceError::InvalidState(format!(
                "user {} is {}: sync=now needs an active user (without it, the write waits \
                 for the user's next sync)",
                target.sub, user.state
            ))));
        }
        let resolved = self.resolve(target.sub, target.item).await?;
        let current = match &resolved {
            Resolved::Existing(row) => Some(row),
            Resolved::New { .. } => None,
        };
        if let Some(row) = current {
            let kind = kind_of(row);
            let writable = match op {
                WriteOp::Put => matches!(kind, ItemKind::File | ItemKind::Withheld),
                WriteOp::Delete => kind != ItemKind::Folder,
            };
            if !writable {
                return Err(DataError::NotWritable {
                    file_id: row.file_id.clone(),
                    kind,
                });
            }
        }
        let base = check_preconditions(target, current)?;
        Ok(match resolved {
            Resolved::Existing(row) => NewWrite {
                file_id: Some(row.file_id.clone()),
                name: Some(row.name.clone()),
                parent_id: row.parent_id.clone(),
                mime_type: row.mime_type.clone(),
                base_md5: match &base {
                    Some(Base::Md5(md5)) => Some(md5.clone()),
                    _ => None,
                },
                base_version: match base {
                    Some(Base::Version(v)) => Some(v),
                    _ => None,
                },
                ..Default::default()
            },
            Resolved::New { name, parent_id } => match op {
                WriteOp::Put => NewWrite {
                    create_new: true,
                    must_be_new: true,
                    name: Some(name),
                    parent_id,
                    ..Default::default()
                },
                WriteOp::Delete => {
                    return Err(DataError::UnknownPath {
                        sub: target.sub.into(),
                        path: item_text(target.item).into(),
                    })
                }
            },
        })
    }

    /// The item `item` names, or where a new one of that path goes (in an existing folder).
    async fn resolve(&self, sub: &str, item: Item<'_>) -> Result<Resolved, DataError> {
        let path = match item {
            Item::Id(id) => {
                let mut conn = self.store.pool().acquire().await?;
                return match files::get(&mut conn, sub, id).await? {
                    Some(row) => Ok(Resolved::Existing(row)),
                    None => Err(DataError::UnknownFile {
                        sub: sub.into(),
                        file_id: id.into(),
                    }),
                };
            }
            Item::Path(path) => path,
        };
        let rows = self.file_rows(sub).await?;
        let all = views(&rows);
        let matching: Vec<&str> = all
            .iter()
            .filter(|v| v.path == path)
            .map(|v| v.id.as_str())
            .collect();
        match matching[..] {
            [id] => {
                let row = rows.iter().find(|r| r.file_id == id).cloned();
                return row.map(Resolved::Existing).ok_or_else(|| {
                    DataError::Service(ServiceError::Internal("a listed item vanished".into()))
                });
            }
            [] => {}
            _ => return Err(self.path_error(sub, path, &rows)),
        }
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
        if parent.is_empty() {
            return Ok(Resolved::New {
                name: name.into(),
                parent_id: None,
            });
        }
        let folders: Vec<&str> = all
            .iter()
            .filter(|v| v.path == parent && v.kind == ItemKind::Folder)
            .map(|v| v.id.as_str())
            .collect();
        match folders[..] {
            [id] => Ok(Resolved::New {
                name: name.into(),
                parent_id: Some(id.into()),
            }),
            [] => Err(DataError::NoParentFolder {
                path: path.into(),
                parent: parent.into(),
            }),
            _ => Err(self.path_error(sub, parent, &rows)),
        }
    }

    /// With `sync_now`, runs the user's sync until it has carried the write out (or the wait
    /// is over); then the write as it stands.
    async fn settle(&self, id: i64, target: &WriteTarget<'_>) -> Result<WriteView, DataError> {
        if target.sync_now {
            let deadline = Instant::now() + SYNC_NOW_WAIT;
            let user = ResyncTarget::User(target.sub.to_string());
            // A sync already running when the write was queued may end first: then another.
            for _ in 0..3 {
                let left = deadline.saturating_duration_since(Instant::now());
                let synced = tokio::time::timeout(
                    left,
                    self.resync_and_wait(&user, Resync::Incremental, |_| {}),
                )
                .await;
                match synced {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::info!(write = id, error = %e, "the sync for a write failed; it stays queued");
                        break;
                    }
                    Err(_) => break,
                }
                if self.write_view(id).await?.state != WriteState::Pending {
                    break;
                }
            }
        }
        self.write_view(id).await
    }

    /// Streams `body` into a new spool file, at most `limit` bytes.
    pub async fn spool<S, E>(&self, body: S, limit: u64) -> Result<Spooled, DataError>
    where
        S: Stream<Item = Result<bytes::Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        let name = uuid::Uuid::new_v4().simple().to_string();
        let internal = |e: MirrorError| {
            DataError::Service(ServiceError::Internal(format!(
                "cannot store the content: {e}"
            )))
        };
        let mut spool = self.mirror.start_spool(&name).await.map_err(internal)?;
        spool.limit_to(limit);
        match spool.feed(idle_timeout(body)).await {
            Ok(()) => {}
            Err(e) => {
                spool.abandon().await;
                return Err(match e {
                    MirrorError::TooLarge(limit) => DataError::TooLarge { limit },
                    MirrorError::Download(why) => DataError::Service(ServiceError::BadRequest(
                        format!("the content did not arrive whole: {why}"),
                    )),
                    e => internal(e),
                });
            }
        }
        let written = spool.finish(None).await.map_err(internal)?;
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

/// `body`, failing when it sends nothing for [`UPLOAD_IDLE`].
fn idle_timeout<S, E>(body: S) -> impl Stream<Item = Result<bytes::Bytes, String>> + Unpin + Send
where
    S: Stream<Item = Result<bytes::Bytes, E>> + Unpin + Send,
    E: std::fmt::Display,
{
    Box::pin(futures::stream::unfold(Some(body), |body| async move {
        let mut body = body?;
        match tokio::time::timeout(UPLOAD_IDLE, body.next()).await {
            Ok(Some(Ok(bytes))) => Some((Ok(bytes), Some(body))),
            Ok(Some(Err(e))) => Some((Err(e.to_string()), None)),
            Ok(None) => None,
            Err(_) => Some((
                Err(format!("nothing received for {}s", UPLOAD_IDLE.as_secs())),
                None,
            )),
        }
    }))
}

/// What a write's conditions say about `current` (the item now, or none): which version it
/// replaces (`None`: a create).
fn check_preconditions(
    target: &WriteTarget<'_>,
    current: Option<&FileRow>,
) -> Result<Option<Base>, DataError> {
    let failed = |message: String| {
        DataError::PreconditionFailed(PreconditionFailed {
            message,
            file_id: current.map(|c| c.file_id.clone()),
            md5: current.and_then(|c| c.md5.clone()),
            version: current.and_then(|c| c.version),
        })
    };
    if let Some(v) = target.if_none_match {
        if v.trim() != "*" {
            return Err(DataError::Service(ServiceError::BadRequest(
                "If-None-Match on a write takes only * (create, never replace)".into(),
            )));
        }
        if let Some(c) = current {
            return Err(failed(format!(
                "If-None-Match: * but {:?} exists (id {})",
                item_text(target.item),
                c.file_id
            )));
        }
    }
    let Some(current) = current else {
        return match target.if_match {
            Some(_) => Err(failed(format!(
                "If-Match, but nothing is at {:?}",
                item_text(target.item)
            ))),
            None => Ok(None),
        };
    };
    let Some(if_match) = target.if_match else {
        return Err(DataError::PreconditionRequired {
            file_id: current.file_id.clone(),
        });
    };
    if if_match.trim() == "*" {
        return Ok(Some(Base::Any));
    }
    for tag in if_match.split(',').map(str::trim) {
        // If-Match compares strongly: a weak tag never matches (RFC 9110 §13.1.1).
        if tag.starts_with("W/") {
            continue;
        }
        let tag = tag.trim_matches('"');
        if current.md5.as_deref() == Some(tag) {
            return Ok(Some(Base::Md5(tag.to_string())));
        }
        if let Some(v) = current.version.filter(|v| tag.parse() == Ok(*v)) {
            return Ok(Some(Base::Version(v)));
        }
    }
    Err(failed(format!(
        "{} changed: it is now md5 {}, version {} (If-Match: {if_match})",
        current.file_id,
        current.md5.as_deref().unwrap_or("none"),
        current.version.map_or("none".into(), |v| v.to_string()),
    )))
}

fn item_text<'a>(item: Item<'a>) -> &'a str {
    match item {
        Item::Id(id) | Item::Path(id) => id,
    }
}

fn view(w: Write, path: String) -> WriteView {
    WriteView {
        id: w.id,
        sub: w.sub,
        op: w.op,
        state: w.state,
        file_id: w.file_id,
        path,
        mime_type: w.mime_type,
        size: w.size,
        md5: w.md5,
        error: w.error,
        attempts: w.attempts,
        created_at: w.created_at,
        updated_at: w.updated_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target<'a>(if_match: Option<&'a str>, if_none_match: Option<&'a str>) -> WriteTarget<'a> {
        WriteTarget {
            sub: "u",
            item: Item::Path("a.json"),
            if_match,
            if_none_match,
            sync_now: false,
        }
    }

    fn current() -> FileRow {
        FileRow {
            file_id: "f1".into(),
            name: "a.json".into(),
            md5: Some("0123456789abcdef0123456789abcdef".into()),
            version: Some(7),
            ..FileRow::default()
        }
    }

    #[test]
    fn if_match_names_the_md5_or_the_version_the_writer_saw() {
        let c = current();
        let md5 = "\"0123456789abcdef0123456789abcdef\"";
        assert_eq!(
            check_preconditions(&target(Some(md5), None), Some(&c)).ok(),
            Some(Some(Base::Md5("0123456789abcdef0123456789abcdef".into())))
        );
        assert_eq!(
            check_preconditions(&target(Some("\"x\", 7"), None), Some(&c)).ok(),
            Some(Some(Base::Version(7)))
        );
        assert_eq!(
            check_preconditions(&target(Some("*"), None), Some(&c)).ok(),
            Some(Some(Base::Any))
        );
    }

    #[test]
    fn a_stale_weak_or_missing_if_match_refuses_the_write() {
        let c = current();
        let stale = check_preconditions(&target(Some("\"6\""), None), Some(&c));
        assert!(matches!(stale, Err(DataError::PreconditionFailed(p)) if p.version == Some(7)));
        let weak = check_preconditions(&target(Some("W/\"7\""), None), Some(&c));
        assert!(matches!(weak, Err(DataError::PreconditionFailed(_))));
        let missing = check_preconditions(&target(None, None), Some(&c));
        assert!(matches!(
            missing,
            Err(DataError::PreconditionRequired { .. })
        ));
    }

    #[test]
    fn creates_need_no_precondition_and_refuse_if_match() {
        assert_eq!(
            check_preconditions(&target(None, Some("*")), None).ok(),
            Some(None)
        );
        let c = current();
        assert!(matches!(
            check_preconditions(&target(None, Some("*")), Some(&c)),
            Err(DataError::PreconditionFailed(_))
        ));
        assert!(matches!(
            check_preconditions(&target(Some("*"), None), None),
            Err(DataError::PreconditionFailed(_))
        ));
        assert!(matches!(
            check_preconditions(&target(None, Some("\"x\"")), None),
            Err(DataError::Service(ServiceError::BadRequest(_)))
        ));
    }
}
