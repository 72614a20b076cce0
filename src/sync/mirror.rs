//! The mirror on disk: `DATA_DIR/SUB/FILE_ID` holds a file's content and nothing else lives in
//! `DATA_DIR/SUB/`. Content is written to `DATA_DIR/.tmp/`, fsynced, renamed into place (same
//! filesystem, so atomic) and the directory fsynced: a path either holds complete content or
//! the previous content, never a torn write. Leftover temporaries (a crash mid-write) are
//! removed at start-up.
//!
//! Paths are built from Google's ids, never from file names (which may hold '/' or '..'), and
//! ids are checked to be plain path components.

use std::path::{Path, PathBuf};

use futures::{Stream, StreamExt};
use md5::{Digest, Md5};
use tokio::io::AsyncWriteExt;

const TMP_DIR: &str = ".tmp";

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
}

#[derive(Clone)]
pub struct Mirror {
    root: PathBuf,
}

/// What was written: size and md5 (hex) of the content.
pub struct Written {
    pub size: i64,
    pub md5: String,
}

impl Mirror {
    /// Opens the mirror at `root`, creating it, and removes temporaries a crash left behind.
    pub fn open(root: &Path) -> std::io::Result<Mirror> {
        let tmp = root.join(TMP_DIR);
        std::fs::create_dir_all(&tmp)?;
        for entry in std::fs::read_dir(&tmp)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(Mirror {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `SUB/FILE_ID`, relative to the root; refuses anything that is not a plain component.
    pub fn relative_path(sub: &str, file_id: &str) -> Result<String, MirrorError> {
        Ok(format!(
            "{}/{}",
            safe_component(sub)?,
            safe_component(file_id)?
        ))
    }

    pub fn absolute(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    pub async fn exists(&self, relative: &str) -> bool {
        tokio::fs::metadata(self.absolute(relative)).await.is_ok()
    }

    /// Streams content into place. When `expected_md5` is given, a mismatch discards the
    /// temporary and fails, so a truncated body never replaces good content.
    pub async fn write_stream<S, E>(
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
        let relative = Self::relative_path(sub, file_id)?;
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

    pub async fn remove(&self, relative: &str) -> Result<(), MirrorError> {
        match tokio::fs::remove_file(self.absolute(relative)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes everything mirrored for a user.
    pub async fn remove_user(&self, sub: &str) -> Result<(), MirrorError> {
        let dir = self.root.join(safe_component(sub)?);
        match tokio::fs::remove_dir_all(dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
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
}
