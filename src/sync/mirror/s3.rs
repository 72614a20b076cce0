//! The object-storage backend: a file's content is the object `PREFIX/SUB/FILE_ID` of an
//! S3-compatible bucket (any [`ObjectStore`] works; the daemon builds an S3 one).
//!
//! An object appears whole or not at all, and only after its md5 matched Drive's: content up to
//! [`INLINE_LIMIT`] is buffered and sent with one PUT after the check; larger content goes up as
//! a multipart upload that is completed after the check and aborted on a mismatch or a cut
//! download. An incomplete multipart upload is never visible as an object; one left by a crash
//! only costs storage until the bucket's `AbortIncompleteMultipartUpload` lifecycle rule (which
//! operators should set) removes it.

use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload, WriteMultipart};

use super::{clamp, safe_component, Content, MirrorError};

/// Content up to this size is buffered in memory and sent with a single PUT.
pub const INLINE_LIMIT: usize = 8 * 1024 * 1024;
/// Part size of larger uploads (S3 wants at least 5 MiB for every part but the last).
const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts of one upload in flight at once: bounds memory to about this many parts per file.
const PARTS_IN_FLIGHT: usize = 2;

#[derive(Clone)]
pub(super) struct ObjectMirror {
    store: Arc<dyn ObjectStore>,
    /// Key prefix, without leading or trailing '/'; empty for the bucket's root.
    prefix: Vec<String>,
    inline_limit: usize,
}

impl ObjectMirror {
    /// An S3 bucket, configured like the AWS tools: credentials, region and endpoint come from
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`/`AWS_DEFAULT_REGION`,
    /// `AWS_ENDPOINT_URL` (for S3-compatible servers) and the other `AWS_*` variables
    /// [`AmazonS3Builder::from_env`] reads. An `http://` endpoint is allowed as such.
    pub(super) fn s3(bucket: &str, prefix: &str) -> Result<ObjectMirror, MirrorError> {
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if builder
            .get_config_value(&AmazonS3ConfigKey::Endpoint)
            .is_some_and(|e| e.starts_with("http://"))
        {
            builder = builder.with_allow_http(true);
        }
        Ok(Self::new(Arc::new(builder.build()?), prefix))
    }

    pub(super) fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> ObjectMirror {
        ObjectMirror {
            store,
            prefix: prefix
                .split('/')
                .filter(|p| !p.is_empty())
                .map(String::from)
                .collect(),
            inline_limit: INLINE_LIMIT,
        }
    }

    #[cfg(test)]
    pub(super) fn with_inline_limit(mut self, limit: usize) -> ObjectMirror {
        self.inline_limit = limit;
        self
    }

    /// `PREFIX/RELATIVE`, where `relative` is `SUB` or `SUB/FILE_ID`.
    fn key(&self, relative: &str) -> Path {
        Path::from_iter(
            self.prefix
                .iter()
                .map(String::as_str)
                .chain(relative.split('/').filter(|p| !p.is_empty())),
        )
    }

    pub(super) async fn exists(&self, relative: &str) -> bool {
        match self.store.head(&self.key(relative)).await {
            Ok(_) => true,
            Err(object_store::Error::NotFound { .. }) => false,
            Err(e) => {
                // Treated as missing: the content is downloaded again, which is safe.
                tracing::warn!(key = %self.key(relative), error = %e, "cannot check an object in the mirror");
                false
            }
        }
    }

    /// An object upload for the content of `file_id`: buffered in memory up to the inline
    /// limit, a multipart upload beyond it; nothing is visible until [`ObjectDownload::finish`].
    pub(super) fn start(&self, relative: &str) -> Result<ObjectDownload, MirrorError> {
        Ok(ObjectDownload {
            mirror: self.clone(),
            key: self.key(relative),
            inline: Vec::new(),
            inline_size: 0,
            multipart: None,
        })
    }

    pub(super) async fn read(
        &self,
        relative: &str,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<Option<Content>, MirrorError> {
        let key = self.key(relative);
        let total = match self.store.head(&key).await {
            Ok(meta) => meta.size,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let range = clamp(range, total);
        if range.is_empty() {
            let body = futures::stream::empty();
            return Ok(Some(Content {
                total,
                range,
                body: Box::pin(body),
            }));
        }
        let options = object_store::GetOptions {
            range: Some(object_store::GetRange::Bounded(range.clone())),
            ..Default::default()
        };
        let got = match self.store.get_opts(&key, options).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let body = got
            .into_stream()
            .map_err(|e| std::io::Error::other(e.to_string()));
        Ok(Some(Content {
            total,
            range,
            body: Box::pin(body),
        }))
    }

    pub(super) async fn remove(&self, relative: &str) -> Result<(), MirrorError> {
        match self.store.delete(&self.key(relative)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Lists `PREFIX/SUB/` and deletes what it finds (in batches where the store supports it).
    pub(super) async fn list_user(&self, sub: &str) -> Result<Vec<String>, MirrorError> {
        let prefix = self.key(safe_component(sub)?);
        let metas: Vec<_> = self.store.list(Some(&prefix)).try_collect().await?;
        Ok(metas
            .into_iter()
            .filter_map(|m| m.location.filename().map(str::to_string))
            .collect())
    }

    pub(super) async fn remove_user(&self, sub: &str) -> Result<(), MirrorError> {
        let prefix = self.key(safe_component(sub)?);
        let locations = self
            .store
            .list(Some(&prefix))
            .map_ok(|meta| meta.location)
            .boxed();
        let mut deleted = self.store.delete_stream(locations);
        while let Some(result) = deleted.next().await {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for ObjectMirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} prefix {:?}", self.store, self.prefix.join("/"))
    }
}

pub(super) struct ObjectDownload {
    mirror: ObjectMirror,
    key: Path,
    inline: Vec<Bytes>,
    inline_size: usize,
    multipart: Option<WriteMultipart>,
}

impl ObjectDownload {
    pub(super) async fn write(&mut self, chunk: Bytes) -> Result<(), MirrorError> {
        if let Some(upload) = &mut self.multipart {
            upload.wait_for_capacity(PARTS_IN_FLIGHT).await?;
            upload.put(chunk);
            return Ok(());
        }
        self.inline_size += chunk.len();
        self.inline.push(chunk);
        if self.inline_size > self.mirror.inline_limit {
            let mut upload = WriteMultipart::new_with_chunk_size(
                self.mirror.store.put_multipart(&self.key).await?,
                PART_SIZE,
            );
            for chunk in self.inline.drain(..) {
                upload.put(chunk);
            }
            self.multipart = Some(upload);
        }
        Ok(())
    }

    /// Makes the object visible (a single PUT, or the multipart upload completed).
    pub(super) async fn finish(self) -> Result<(), MirrorError> {
        match self.multipart {
            // On failure, `finish` aborts the upload itself.
            Some(upload) => upload.finish().await?,
            None => {
                self.mirror
                    .store
                    .put(&self.key, PutPayload::from_iter(self.inline))
                    .await?
            }
        };
        Ok(())
    }

    pub(super) async fn abandon(self) {
        if let Some(upload) = self.multipart {
            if let Err(abort) = upload.abort().await {
                tracing::warn!(key = %self.key, error = %abort,
                    "cannot abort an incomplete multipart upload; it stays invisible until the bucket's lifecycle rule removes it");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Mirror;
    use super::*;
    use md5::{Digest, Md5};
    use object_store::memory::InMemory;

    fn md5_hex(data: &[u8]) -> String {
        hex::encode(Md5::digest(data))
    }

    fn chunks(data: &[u8], size: usize) -> Vec<Result<Bytes, std::io::Error>> {
        data.chunks(size)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect()
    }

    async fn objects(store: &InMemory) -> Vec<String> {
        let mut keys: Vec<String> = store
            .list(None)
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        keys.sort();
        keys
    }

    fn mirror(store: &Arc<InMemory>, limit: usize) -> Mirror {
        Mirror {
            backend: super::super::Backend::Object(
                ObjectMirror::new(store.clone(), "/pre/fix/").with_inline_limit(limit),
            ),
        }
    }

    #[tokio::test]
    async fn small_and_multipart_writes_land_under_the_prefix() {
        let store = Arc::new(InMemory::new());
        // A limit of 10 bytes: the 12 MiB file goes up in two 8 MiB-or-less parts.
        let m = mirror(&store, 10);
        let big: Vec<u8> = (0..12 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let body = futures::stream::iter(chunks(&big, 64 * 1024));
        let w = m
            .write_stream("u1", "big", body, Some(&md5_hex(&big)))
            .await
            .unwrap();
        assert_eq!((w.size, w.md5), (big.len() as i64, md5_hex(&big)));
        m.write_bytes("u1", "small", b"tiny").await.unwrap();
        m.write_bytes("u10", "other", b"x").await.unwrap();
        assert_eq!(
            objects(&store).await,
            ["pre/fix/u1/big", "pre/fix/u1/small", "pre/fix/u10/other"]
        );
        let got = store.get(&Path::from("pre/fix/u1/big")).await.unwrap();
        assert_eq!(got.bytes().await.unwrap().as_ref(), &big[..]);
        assert!(m.exists("u1/small").await);
        assert!(!m.exists("u1/nothing").await);

        m.remove("u1/small").await.unwrap();
        m.remove("u1/small").await.unwrap();
        m.remove_user("u1").await.unwrap();
        assert_eq!(objects(&store).await, ["pre/fix/u10/other"]);
    }

    #[tokio::test]
    async fn a_mismatch_or_a_cut_download_never_replaces_the_object() {
        let store = Arc::new(InMemory::new());
        for limit in [INLINE_LIMIT, 10] {
            let m = mirror(&store, limit);
            m.write_bytes("u", "f", b"good").await.unwrap();
            let content = vec![7u8; 1024 * 1024];
            let body = futures::stream::iter(chunks(&content, 4096));
            let err = m
                .write_stream("u", "f", body, Some("00000000000000000000000000000000"))
                .await;
            assert!(matches!(err, Err(MirrorError::ChecksumMismatch)), "{limit}");
            let mut cut = chunks(&content[..content.len() / 2], 4096);
            cut.push(Err(std::io::Error::other("connection reset")));
            let err = m
                .write_stream("u", "f", futures::stream::iter(cut), None)
                .await;
            assert!(matches!(err, Err(MirrorError::Download(_))), "{limit}");
            let got = store.get(&Path::from("pre/fix/u/f")).await.unwrap();
            assert_eq!(got.bytes().await.unwrap().as_ref(), b"good");
            let err = m
                .write_stream(
                    "u",
                    "new",
                    futures::stream::iter(chunks(&content, 4096)),
                    Some("0"),
                )
                .await;
            assert!(err.is_err());
            assert!(!m.exists("u/new").await, "{limit}");
        }
    }
}
