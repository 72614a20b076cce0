//! The directory backend: `DATA_DIR/SUB/FILE_ID` holds a file's content and nothing else lives
//! in `DATA_DIR/SUB/`. Content is written to `DATA_DIR/.tmp/`, fsynced, renamed into place (same
//! filesystem, so atomic) and the directory fsynced: a path either holds complete content or
//! the previous content, never a torn write. Leftover temporaries (a crash mid-write) are
//! removed at start-up. A shared network filesystem works as long as its rename is atomic.

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
        std::fs::create_dir_all(&tmp)?;
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

    pub(super) async fn exists(&self, relative: &str) -> bool {
        tokio::fs::metadata(self.absolute(relative)).await.is_ok()
    }

    /// A temporary file in `.tmp` for the content of `relative`; placed by [`LocalMirror::place`].
    pub(super) async fn start(&self, relative: &str) -> Result<LocalDownload, MirrorError> {
        let relative = relative.to_string();
        let tmp = self.root.join(TMP_DIR).join(format!(
            "{}.{:016x}",
            relative.replace('/', "."),
            rand::random::<u64>()
        ));
        let file = tokio::fs::File::create(&tmp).await?;
        Ok(LocalDownload {
            mirror: self.clone(),
            relative,
            tmp,
            file,
        })
    }

    async fn place(&self, tmp: &Path, relative: &str) -> Result<(), MirrorError> {
        let target = self.absolute(relative);
        let dir = target
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root.clone());
        let placed = async {
            tokio::fs::create_dir_all(&dir).await?;
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
        let mut file = match tokio::fs::File::open(self.absolute(relative)).await {
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
        match tokio::fs::remove_file(self.absolute(relative)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub(super) async fn list_user(&self, sub: &str) -> Result<Vec<String>, MirrorError> {
        let dir = self.root.join(safe_component(sub)?);
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
