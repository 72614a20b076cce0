//! The directory backend: `DATA_DIR/SUB/FILE_ID` holds a file's content and nothing else lives
//! in `DATA_DIR/SUB/`. Content is written to `DATA_DIR/.tmp/`, fsynced, renamed into place (same
//! filesystem, so atomic) and the directory fsynced: a path either holds complete content or
//! the previous content, never a torn write. Leftover temporaries (a crash mid-write) are
//! removed at start-up. A shared network filesystem works as long as its rename is atomic.
//!
//! Paths are rebuilt from ids (never read back from the database), and the mirror never goes
//! through a symlink someone planted: a user's directory must be a real directory, files are
//! opened with `O_NOFOLLOW`, and everything is created private (0700 / 0600) whatever the
//! process's umask.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;

use super::{clamp, safe_component, Content, MirrorError};

pub(super) const TMP_DIR: &str = ".tmp";

#[derive(Clone)]
pub(super) struct LocalMirror {
    root: PathBuf,
}

impl LocalMirror {
    /// Opens the mirror at `root`, creating it, and removes temporaries a crash left behind.
    pub(super) fn open(root: &Path) -> std::io::Result<LocalMirror> {
        let tmp = root.join(TMP_DIR);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&tmp)?;
        for dir in [root, tmp.as_path()] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        for entry in std::fs::read_dir(&tmp)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(LocalMirror {
            root: root.to_path_buf(),
        })
    }

    pub(super) fn root(&self) -> &Path {
        &self.root
    }

    pub(super) fn absolute(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    /// `root/relative`, when its directory is a real directory (or not there yet): never a
    /// symlink to somewhere else.
    fn beneath(&self, relative: &str) -> Result<PathBuf, MirrorError> {
        let path = self.root.join(relative);
        if let Some(dir) = path.parent().filter(|d| *d != self.root) {
            if let Ok(m) = std::fs::symlink_metadata(dir) {
                if !m.file_type().is_dir() {
                    return Err(MirrorError::NotADirectory(dir.display().to_string()));
                }
            }
        }
        Ok(path)
    }

    /// A regular file is there (a symlink is not content).
    pub(super) async fn exists(&self, relative: &str) -> bool {
        match self.beneath(relative) {
            Ok(path) => tokio::fs::symlink_metadata(path)
                .await
                .is_ok_and(|m| m.file_type().is_file()),
            Err(_) => false,
        }
    }

    /// A temporary file in `.tmp` for the content of `relative`; placed by [`LocalMirror::place`].
    pub(super) async fn start(&self, relative: &str) -> Result<LocalDownload, MirrorError> {
        let relative = relative.to_string();
        let tmp = self.root.join(TMP_DIR).join(format!(
            "{}.{:016x}",
            relative.replace('/', "."),
            rand::random::<u64>()
        ));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)
            .await?;
        Ok(LocalDownload {
            mirror: self.clone(),
            relative,
            tmp,
            file,
        })
    }

    async fn place(&self, tmp: &Path, relative: &str) -> Result<(), MirrorError> {
        let target = self.beneath(relative)?;
        let dir = target
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root.clone());
        let placed = async {
            let mut builder = tokio::fs::DirBuilder::new();
            builder.recursive(true).mode(0o700);
            builder.create(&dir).await?;
            tokio::fs::rename(tmp, &target).await?;
            // The rename is durable only once the directory is.
            tokio::fs::File::open(&dir).await?.sync_all().await
        }
        .await;
        if placed.is_err() {
            let _ = tokio::fs::remove_file(tmp).await;
        }
        Ok(placed?)
    }

    pub(super) async fn read(
        &self,
        relative: &str,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<Option<Content>, MirrorError> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let opened = tokio::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(self.beneath(relative)?)
            .await;
        let mut file = match opened {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let total = file.metadata().await?.len();
        let range = clamp(range, total);
        file.seek(std::io::SeekFrom::Start(range.start)).await?;
        let body = tokio_util::io::ReaderStream::new(file.take(range.end - range.start));
        Ok(Some(Content {
            total,
            range,
            body: Box::pin(body),
        }))
    }

    pub(super) async fn remove(&self, relative: &str) -> Result<(), MirrorError> {
        match tokio::fs::remove_file(self.beneath(relative)?).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub(super) async fn list_user(&self, sub: &str) -> Result<Vec<String>, MirrorError> {
        let dir = self.root.join(safe_component(sub)?);
        self.beneath(&format!("{}/x", safe_component(sub)?))?;
        let mut entries = match tokio::fs::read_dir(dir).await {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut ids = Vec::new();
        while let Some(entry) = entries.next_entry().await? {
            if let Ok(name) = entry.file_name().into_string() {
                ids.push(name);
            }
        }
        Ok(ids)
    }

    pub(super) async fn remove_user(&self, sub: &str) -> Result<(), MirrorError> {
        let dir = self.root.join(safe_component(sub)?);
        match tokio::fs::remove_dir_all(dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Content arriving into a temporary file; nothing is visible until [`LocalDownload::finish`].
pub(super) struct LocalDownload {
    mirror: LocalMirror,
    relative: String,
    tmp: PathBuf,
    file: tokio::fs::File,
}

impl LocalDownload {
    pub(super) async fn write(&mut self, chunk: &[u8]) -> Result<(), MirrorError> {
        Ok(self.file.write_all(chunk).await?)
    }

    /// Makes the content durable and puts it in place.
    pub(super) async fn finish(mut self) -> Result<(), MirrorError> {
        // tokio writes in the background: a failed write (ENOSPC) surfaces only on the next
        // write or flush, and sync_all alone would swallow it and let a short file be renamed
        // into place.
        let durable = async {
            self.file.flush().await?;
            self.file.sync_all().await
        }
        .await;
        if let Err(e) = durable {
            self.abandon().await;
            return Err(e.into());
        }
        self.mirror.place(&self.tmp, &self.relative).await
    }

    pub(super) async fn abandon(self) {
        drop(self.file);
        let _ = tokio::fs::remove_file(&self.tmp).await;
    }
}

#[cfg(test)]
mod tests {
    use super::super::Mirror;
    use super::*;

    #[tokio::test]
    async fn a_checksum_mismatch_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let mirror = Mirror::open(dir.path()).unwrap();
        mirror.write_bytes("u", "f", b"good").await.unwrap();
        let body = futures::stream::iter([Ok::<_, std::convert::Infallible>(
            bytes::Bytes::from_static(b"trunc"),
        )]);
        let err = mirror
            .write_stream("u", "f", body, Some("00000000000000000000000000000000"))
            .await;
        assert!(matches!(err, Err(MirrorError::ChecksumMismatch)));
        assert_eq!(std::fs::read(dir.path().join("u/f")).unwrap(), b"good");
        assert_eq!(
            std::fs::read_dir(dir.path().join(TMP_DIR)).unwrap().count(),
            0
        );
    }

    #[tokio::test]
    async fn the_mirror_never_goes_through_a_planted_symlink_and_keeps_everything_private() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let mirror = Mirror::open(dir.path()).unwrap();
        // Someone replaces a user's directory with a link to elsewhere.
        std::os::unix::fs::symlink(elsewhere.path(), dir.path().join("victim")).unwrap();
        let err = mirror.write_bytes("victim", "f", b"x").await.unwrap_err();
        assert!(matches!(err, MirrorError::NotADirectory(_)), "{err:?}");
        assert!(mirror.read("victim/f", None).await.is_err());
        assert!(!mirror.exists("victim/f").await);
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
        // A file replaced by a link is not content either.
        mirror.write_bytes("u", "f", b"mine").await.unwrap();
        std::fs::remove_file(dir.path().join("u/f")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("u/f")).unwrap();
        assert!(!mirror.exists("u/f").await);
        assert!(mirror.read("u/f", None).await.is_err());
        // Private whatever the umask: 0700 directories, 0600 files.
        mirror.write_bytes("u", "g", b"mine").await.unwrap();
        for (path, want) in [("", 0o700), ("u", 0o700), (".tmp", 0o700), ("u/g", 0o600)] {
            let mode = std::fs::metadata(dir.path().join(path)).unwrap().mode() & 0o777;
            assert_eq!(mode & 0o077, 0, "{path}: {mode:o}");
            assert_eq!(mode & want, want, "{path}: {mode:o}");
        }
    }

    #[tokio::test]
    async fn content_past_the_limit_is_refused_whatever_was_announced() {
        let dir = tempfile::tempdir().unwrap();
        let mirror = Mirror::open(dir.path()).unwrap();
        let mut download = mirror.start_download("u", "f").await.unwrap();
        download.limit_to(10);
        let body = futures::stream::iter([
            Ok::<_, std::convert::Infallible>(bytes::Bytes::from_static(b"123456")),
            Ok(bytes::Bytes::from_static(b"789012")),
        ]);
        let err = download.feed(body).await.unwrap_err();
        assert!(matches!(err, MirrorError::TooLarge(10)), "{err:?}");
        download.abandon().await;
        assert!(!dir.path().join("u/f").exists());
        assert_eq!(
            std::fs::read_dir(dir.path().join(TMP_DIR)).unwrap().count(),
            0
        );
    }

    #[tokio::test]
    async fn remove_user_deletes_only_that_user() {
        let dir = tempfile::tempdir().unwrap();
        let mirror = Mirror::open(dir.path()).unwrap();
        mirror.write_bytes("u1", "a", b"1").await.unwrap();
        mirror.write_bytes("u10", "a", b"2").await.unwrap();
        assert!(mirror.exists("u1/a").await);
        mirror.remove_user("u1").await.unwrap();
        mirror.remove_user("u1").await.unwrap();
        assert!(!mirror.exists("u1/a").await);
        assert!(mirror.exists("u10/a").await);
        mirror.remove("u10/a").await.unwrap();
        mirror.remove("u10/a").await.unwrap();
        assert!(!dir.path().join("u10/a").exists());
    }
}
