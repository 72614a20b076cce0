//! The mirror: each file's content under one name, `SUB/FILE_ID`, behind one interface with two
//! backends, chosen by `[sync] mirror_url` ([`MirrorLocation`]):
//! - [`local`]: a directory (local, or a network filesystem shared by several instances);
//! - [`s3`]: S3-compatible object storage, so whichever instance syncs a user next sees the
//!   content the previous one wrote.
//!
//! Both write atomically (a name holds complete content or its previous content, never a torn
//! write) and check Drive's md5 before the content becomes visible; callers commit the database
//! row only after [`Mirror::write_stream`] returned.
//!
//! Names are built from Google's ids, never from file names (which may hold '/' or '..'), and
//! ids are checked to be plain path components.

mod local;
mod s3;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::{Stream, StreamExt};
use md5::{Digest, Md5};

use anyhow::{bail, Context};
use local::LocalMirror;
use s3::ObjectMirror;

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("unsafe path component {0:?} from Google")]
    UnsafeName(String),
    #[error("downloaded content does not match Drive's md5Checksum (truncated download?)")]
    ChecksumMismatch,
    #[error("download interrupted: {0}")]
    Download(String),
    #[error("mirror I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("mirror object storage error: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error("the content is larger than the {0} bytes allowed")]
    TooLarge(u64),
}

/// Where mirror contents live: `[sync] data_dir`, or what `[sync] mirror_url` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MirrorLocation {
    /// A local or shared network directory: `DIR/SUB/FILE_ID`.
    Directory(PathBuf),
    /// S3-compatible object storage: objects `PREFIX/SUB/FILE_ID` of `BUCKET`. `prefix` has no
    /// leading or trailing '/' and may be empty.
    S3 { bucket: String, prefix: String },
}

impl MirrorLocation {
    /// Parses `[sync] mirror_url`: `s3://BUCKET[/PREFIX]` or `file:///PATH`.
    pub fn parse(value: &str) -> anyhow::Result<MirrorLocation> {
        let url = url::Url::parse(value).with_context(|| {
            format!("[sync] mirror_url = {value:?} is not a URL (expected s3://BUCKET/PREFIX or file:///PATH)")
        })?;
        if !url.username().is_empty() || url.password().is_some() {
            bail!("[sync] mirror_url must not hold credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment instead");
        }
        if url.query().is_some() || url.fragment().is_some() {
            bail!("[sync] mirror_url = {value:?}: no query or fragment allowed; the endpoint and region come from AWS_ENDPOINT_URL and AWS_REGION");
        }
        match url.scheme() {
            "s3" => {
                let bucket = url.host_str().unwrap_or_default();
                let valid_bucket = (3..=63).contains(&bucket.len())
                    && bucket
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
                if !valid_bucket {
                    bail!("[sync] mirror_url = {value:?}: {bucket:?} is not a valid S3 bucket name (3 to 63 characters: a-z, 0-9, '-', '.')");
                }
                if url.port().is_some() {
                    bail!("[sync] mirror_url = {value:?}: an s3:// URL names a bucket, not a server; set the endpoint in AWS_ENDPOINT_URL");
                }
                // The URL parser already resolved any '.' and '..' segments.
                let segments: Vec<&str> = url.path().split('/').filter(|s| !s.is_empty()).collect();
                Ok(MirrorLocation::S3 {
                    bucket: bucket.to_string(),
                    prefix: segments.join("/"),
                })
            }
            "file" => match url.to_file_path() {
                Ok(path) if matches!(url.host_str(), None | Some("")) => {
                    Ok(MirrorLocation::Directory(path))
                }
                _ => bail!("[sync] mirror_url = {value:?}: expected file:///ABSOLUTE/PATH"),
            },
            other => bail!(
                "[sync] mirror_url = {value:?}: unsupported scheme {other:?}; use s3://BUCKET/PREFIX (S3-compatible object storage) or file:///PATH, or leave it unset for data_dir"
            ),
        }
    }
}

impl std::fmt::Display for MirrorLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MirrorLocation::Directory(path) => write!(f, "{}", path.display()),
            MirrorLocation::S3 { bucket, prefix } if prefix.is_empty() => {
                write!(f, "s3://{bucket}")
            }
            MirrorLocation::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

#[derive(Clone)]
pub struct Mirror {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Local(LocalMirror),
    Object(ObjectMirror),
}

/// What was written: size and md5 (hex) of the content.
pub struct Written {
    pub size: i64,
    pub md5: String,
}

impl Mirror {
    /// Opens the directory mirror at `root`, creating it, and removes temporaries a crash left
    /// behind.
    pub fn open(root: &Path) -> std::io::Result<Mirror> {
        Ok(Mirror {
            backend: Backend::Local(LocalMirror::open(root)?),
        })
    }

    /// Opens the mirror `[sync]` names: a directory, or an S3 bucket (configured from the
    /// standard `AWS_*` environment variables). Connects to nothing yet.
    pub fn open_location(location: &MirrorLocation) -> Result<Mirror, MirrorError> {
        match location {
            MirrorLocation::Directory(root) => Ok(Self::open(root)?),
            MirrorLocation::S3 { bucket, prefix } => Ok(Mirror {
                backend: Backend::Object(ObjectMirror::s3(bucket, prefix)?),
            }),
        }
    }

    /// A mirror in any object store, keys under `prefix` (for tests and other clouds).
    pub fn with_object_store(store: Arc<dyn object_store::ObjectStore>, prefix: &str) -> Mirror {
        Mirror {
            backend: Backend::Object(ObjectMirror::new(store, prefix)),
        }
    }

    /// The directory of a directory mirror; `None` for object storage.
    pub fn root(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Local(l) => Some(l.root()),
            Backend::Object(_) => None,
        }
    }

    /// `SUB/FILE_ID`, relative to the root; refuses anything that is not a plain component.
    pub fn relative_path(sub: &str, file_id: &str) -> Result<String, MirrorError> {
        Ok(format!(
            "{}/{}",
            safe_component(sub)?,
            safe_component(file_id)?
        ))
    }

    /// Where a relative path lives on disk, for a directory mirror; `None` for object storage.
    pub fn absolute(&self, relative: &str) -> Option<PathBuf> {
        match &self.backend {
            Backend::Local(l) => Some(l.absolute(relative)),
            Backend::Object(_) => None,
        }
    }

    pub async fn exists(&self, relative: &str) -> bool {
        match &self.backend {
            Backend::Local(l) => l.exists(relative).await,
            Backend::Object(o) => o.exists(relative).await,
        }
    }

    /// Starts receiving the content of `file_id`: feed it chunks (in several streams if a
    /// download is resumed), then [`Download::finish`] checks the md5 and makes it visible.
    pub async fn start_download(&self, sub: &str, file_id: &str) -> Result<Download, MirrorError> {
        self.start_at(&Self::relative_path(sub, file_id)?).await
    }

    /// Starts receiving content to be written to Drive later (a write's content), kept under
    /// `.spool/NAME` beside the mirror, so that whichever instance syncs the user can read it.
    pub async fn start_spool(&self, name: &str) -> Result<Download, MirrorError> {
        self.start_at(&Self::spool_path(name)?).await
    }

    /// Where the spool file `name` lives, relative to the root.
    pub fn spool_path(name: &str) -> Result<String, MirrorError> {
        Ok(format!("{SPOOL_DIR}/{}", safe_component(name)?))
    }

    /// Copies content within the mirror (a written file's spool into place), atomically.
    pub async fn copy(&self, from: &str, to: &str) -> Result<Written, MirrorError> {
        let content = self
            .read(from, None)
            .await?
            .ok_or_else(|| MirrorError::Io(std::io::ErrorKind::NotFound.into()))?;
        let mut download = self.start_at(to).await?;
        match download.feed(content.body).await {
            Ok(()) => download.finish(None).await,
            Err(e) => {
                download.abandon().await;
                Err(e)
            }
        }
    }

    async fn start_at(&self, relative: &str) -> Result<Download, MirrorError> {
        let sink = match &self.backend {
            Backend::Local(l) => Sink::Local(l.start(relative).await?),
            Backend::Object(o) => Sink::Object(o.start(relative)?),
        };
        Ok(Download {
            sink,
            md5: Md5::new(),
            size: 0,
            limit: u64::MAX,
        })
    }

    /// Streams content into place. When `expected_md5` is given, a mismatch discards what was
    /// received and fails, so a truncated body never replaces good content.
    pub async fn write_stream<S, E>(
        &self,
        sub: &str,
        file_id: &str,
        body: S,
        expected_md5: Option<&str>,
    ) -> Result<Written, MirrorError>
    where
        S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut download = self.start_download(sub, file_id).await?;
        match download.feed(body).await {
            Ok(()) => download.finish(expected_md5).await,
            Err(e) => {
                download.abandon().await;
                Err(e)
            }
        }
    }

    pub async fn write_bytes(
        &self,
        sub: &str,
        file_id: &str,
        content: &[u8],
    ) -> Result<Written, MirrorError> {
        let chunk = bytes::Bytes::copy_from_slice(content);
        let body = futures::stream::iter([Ok::<_, std::convert::Infallible>(chunk)]);
        self.write_stream(sub, file_id, body, None).await
    }

    /// Free space on the filesystem of a directory mirror; `None` for object storage.
    pub fn free_space(&self) -> Option<u64> {
        let root = self.root()?;
        let stat = nix::sys::statvfs::statvfs(root).ok()?;
        Some(stat.blocks_available() as u64 * stat.fragment_size() as u64)
    }

    /// Reads `relative` (`SUB/FILE_ID`) back, all of it or the bytes `range` asks for (its end
    /// clamped to the length), as a stream: nothing is buffered whole. `None` when absent.
    pub async fn read(
        &self,
        relative: &str,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<Option<Content>, MirrorError> {
        match &self.backend {
            Backend::Local(l) => l.read(relative, range).await,
            Backend::Object(o) => o.read(relative, range).await,
        }
    }

    /// Removes one file's content; already gone is fine.
    pub async fn remove(&self, relative: &str) -> Result<(), MirrorError> {
        match &self.backend {
            Backend::Local(l) => l.remove(relative).await,
            Backend::Object(o) => o.remove(relative).await,
        }
    }

    /// The file ids that have content for a user (to sweep what no row accounts for); the
    /// manifest is not one.
    pub async fn list_user(&self, sub: &str) -> Result<Vec<String>, MirrorError> {
        let names = match &self.backend {
            Backend::Local(l) => l.list_user(sub).await?,
            Backend::Object(o) => o.list_user(sub).await?,
        };
        Ok(names.into_iter().filter(|n| n != MANIFEST).collect())
    }

    /// `SUB/manifest.json`: what the user's directory holds, for readers of the files alone.
    /// (Drive ids have no '.', so no file's content can have this name.)
    pub fn manifest_path(sub: &str) -> Result<String, MirrorError> {
        Ok(format!("{}/{MANIFEST}", safe_component(sub)?))
    }

    /// Replaces `relative` with `content`, atomically.
    pub async fn put(&self, relative: &str, content: bytes::Bytes) -> Result<(), MirrorError> {
        let mut download = self.start_at(relative).await?;
        let body = futures::stream::iter([Ok::<_, std::convert::Infallible>(content)]);
        match download.feed(body).await {
            Ok(()) => download.finish(None).await.map(|_| ()),
            Err(e) => {
                download.abandon().await;
                Err(e)
            }
        }
    }

    /// Removes everything mirrored for a user.
    pub async fn remove_user(&self, sub: &str) -> Result<(), MirrorError> {
        match &self.backend {
            Backend::Local(l) => l.remove_user(sub).await,
            Backend::Object(o) => o.remove_user(sub).await,
        }
    }
}

/// The name of each user's manifest in the user's directory.
pub const MANIFEST: &str = "manifest.json";

/// Where writes' content waits, under the root (never a user's directory: subs are plain
/// components that cannot start with '.').
const SPOOL_DIR: &str = ".spool";

/// Content read back from the mirror.
pub struct Content {
    /// The whole content's length.
    pub total: u64,
    /// The bytes `body` holds, `start..end`.
    pub range: std::ops::Range<u64>,
    pub body: futures::stream::BoxStream<'static, Result<bytes::Bytes, std::io::Error>>,
}

/// Content on its way into the mirror, hashed as it comes. An interrupted stream leaves what
/// arrived in place, so that the rest can be fed from where it stopped (an HTTP `Range`).
pub struct Download {
    sink: Sink,
    md5: Md5,
    size: u64,
    /// More bytes than this fail the feed ([`MirrorError::TooLarge`]).
    limit: u64,
}

enum Sink {
    Local(local::LocalDownload),
    Object(s3::ObjectDownload),
}

impl Download {
    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.size
    }

    /// Refuses content past `limit` bytes, whatever its sender announced.
    pub fn limit_to(&mut self, limit: u64) {
        self.limit = limit;
    }

    /// Appends what `body` yields. A stream that breaks is [`MirrorError::Download`], with
    /// what came before it kept.
    pub async fn feed<S, E>(&mut self, mut body: S) -> Result<(), MirrorError>
    where
        S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| MirrorError::Download(e.to_string()))?;
            if self.size + chunk.len() as u64 > self.limit {
                return Err(MirrorError::TooLarge(self.limit));
            }
            self.md5.update(&chunk);
            self.size += chunk.len() as u64;
            match &mut self.sink {
                Sink::Local(l) => l.write(&chunk).await?,
                Sink::Object(o) => o.write(chunk).await?,
            }
        }
        Ok(())
    }

    /// Checks the md5 (when Drive gave one) and makes the content visible; a mismatch
    /// discards it and fails, so a truncated or spliced body never replaces good content.
    pub async fn finish(self, expected_md5: Option<&str>) -> Result<Written, MirrorError> {
        let md5 = hex::encode(self.md5.clone().finalize());
        if expected_md5.is_some_and(|want| !want.eq_ignore_ascii_case(&md5)) {
            self.abandon().await;
            return Err(MirrorError::ChecksumMismatch);
        }
        let written = Written {
            size: i64::try_from(self.size).unwrap_or(i64::MAX),
            md5,
        };
        match self.sink {
            Sink::Local(l) => l.finish().await?,
            Sink::Object(o) => o.finish().await?,
        }
        Ok(written)
    }

    /// Throws away what arrived.
    pub async fn abandon(self) {
        match self.sink {
            Sink::Local(l) => l.abandon().await,
            Sink::Object(o) => o.abandon().await,
        }
    }
}

/// `range` within `0..total` (all of it when `None`).
fn clamp(range: Option<std::ops::Range<u64>>, total: u64) -> std::ops::Range<u64> {
    match range {
        Some(r) => r.start.min(total)..r.end.min(total).max(r.start.min(total)),
        None => 0..total,
    }
}

fn safe_component(s: &str) -> Result<&str, MirrorError> {
    let ok = !s.is_empty()
        && s.len() <= 255
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(s)
    } else {
        Err(MirrorError::UnsafeName(s.chars().take(64).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_components_become_paths() {
        assert_eq!(
            Mirror::relative_path("123", "abc_D-9").unwrap(),
            "123/abc_D-9"
        );
        for bad in ["..", "../x", "a/b", "", ".tmp", "a\0b"] {
            assert!(Mirror::relative_path("123", bad).is_err(), "{bad:?}");
            assert!(Mirror::relative_path(bad, "x").is_err(), "{bad:?}");
        }
    }
}
