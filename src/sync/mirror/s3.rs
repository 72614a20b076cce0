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
use futures::{Stream, StreamExt, TryStreamExt};
use md5::{Digest, Md5};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload, WriteMultipart};

use super::{safe_component, Mirror, MirrorError, Written};

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

    pub(super) async fn write_stream<S, E>(
        &self,
        sub: &str,
        file_id: &str,
        body: S,
        expected_md5: Option<&str>,
    ) -> Result<Written, MirrorError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let key = self.key(&Mirror::relative_path(sub, file_id)?);
        let mut multipart = None;
        match self.receive(&key, body, expected_md5, &mut multipart).await {
            Ok((written, inline)) => {
                match multipart {
                    // On failure, `finish` aborts the upload itself.
                    Some(upload) => upload.finish().await?,
                    None => self.store.put(&key, PutPayload::from_iter(inline)).await?,
                };
                Ok(written)
            }
            Err(e) => {
                if let Some(upload) = multipart {
                    if let Err(abort) = upload.abort().await {
                        tracing::warn!(key = %key, error = %abort,
                            "cannot abort an incomplete multipart upload; it stays invisible until the bucket's lifecycle rule removes it");
                    }
                }
                Err(e)
            }
        }
    }

    /// Reads `body`, hashing it, into memory or (past the inline limit) a multipart upload it
    /// starts in `multipart`; checks the md5. Returns what was written and the buffered chunks
    /// (empty when uploading in parts). Nothing is visible yet.
    async fn receive<S, E>(
        &self,
        key: &Path,
        mut body: S,
        expected_md5: Option<&str>,
        multipart: &mut Option<WriteMultipart>,
    ) -> Result<(Written, Vec<Bytes>), MirrorError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut md5 = Md5::new();
        let mut size = 0usize;
        let mut inline = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| MirrorError::Download(e.to_string()))?;
            md5.update(&chunk);
            size += chunk.len();
            match multipart {
                Some(upload) => {
                    upload.wait_for_capacity(PARTS_IN_FLIGHT).await?;
                    upload.put(chunk);
                }
                None => {
                    inline.push(chunk);
                    if size > self.inline_limit {
                        let mut upload = WriteMultipart::new_with_chunk_size(
                            self.store.put_multipart(key).await?,
                            PART_SIZE,
                        );
                        for chunk in inline.drain(..) {
                            upload.put(chunk);
                        }
                        *multipart = Some(upload);
                    }
                }
            }
        }
        let md5 = hex::encode(md5.finalize());
        if expected_md5.is_some_and(|want| !want.eq_ignore_ascii_case(&md5)) {
            return Err(MirrorError::ChecksumMismatch);
        }
        let size = i64::try_from(size).unwrap_or(i64::MAX);
        Ok((Written { size, md5 }, inline))
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

#[cfg(test)]
mod tests {
    use super::*;
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
