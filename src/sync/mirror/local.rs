//! The directory backend: `DATA_DIR/SUB/FILE_ID` holds a file's content and nothing else lives
//! in `DATA_DIR/SUB/`. Content is written to `DATA_DIR/.tmp/`, fsynced, renamed into place (same
//! filesystem, so atomic) and the directory fsynced: a path either holds complete content or
//! the previous content, never a torn write. Leftover temporaries (a crash mid-write) are
//! removed at start-up. A shared network filesystem works as long as its rename is atomic.

use std::path::{Path, PathBuf};

use futures::{Stream, StreamExt};
use md5::{Digest, Md5};
use tokio::io::AsyncWriteExt;

use super::{safe_component, Mirror, MirrorError, Written};

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

    pub(super) async fn write_stream<S, E>(
        &self,
        sub: &str,
        file_id: &str,
        mut body: S,
        expected_md5: Option<&str>,
    ) -> Result<Written, MirrorError>
    where
        S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let relative = Mirror::relative_path(sub, file_id)?;
        let tmp = self.root.join(TMP_DIR).join(format!(
            "{}.{}.{:016x}",
            safe_component(sub)?,
            safe_component(file_id)?,
            rand::random::<u64>()
        ));
        let result = async {
            let mut file = tokio::fs::File::create(&tmp).await?;
            let mut md5 = Md5::new();
            let mut size = 0i64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| MirrorError::Download(e.to_string()))?;
                md5.update(&chunk);
                size += chunk.len() as i64;
                file.write_all(&chunk).await?;
            }
            let md5 = hex::encode(md5.finalize());
            if expected_md5.is_some_and(|want| !want.eq_ignore_ascii_case(&md5)) {
                return Err(MirrorError::ChecksumMismatch);
            }
            // tokio writes in the background: a failed write (ENOSPC) surfaces only on the
            // next write or flush, and sync_all alone would swallow it and let a short file
            // be renamed into place.
            file.flush().await?;
            file.sync_all().await?;
            Ok(Written { size, md5 })
        }
        .await;
        match result {
            Ok(written) => {
                self.place(&tmp, &relative).await?;
                Ok(written)
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                Err(e)
            }
        }
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

#[cfg(test)]
mod tests {
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
