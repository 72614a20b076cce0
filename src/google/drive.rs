//! Drive API v3, restricted to the appDataFolder space.
//! <https://developers.google.com/workspace/drive/api/guides/appdata>
//!
//! Each method is one HTTP call and classifies failures into [`GoogleError`]; retries, rate
//! limiting and token refresh are the caller's (sync's) business. Requests ask only for the
//! fields sync uses, so responses stay small.

use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::{malformed, retry_after, GoogleError};

/// The fields of a file that the mirror keeps.
const FILE_FIELDS: &str = "id,name,mimeType,parents,size,md5Checksum,version,modifiedTime,trashed";

/// Google Workspace types (`application/vnd.google-apps.*`: folders, Docs editors files,
/// shortcuts) have no binary content to download.
/// <https://developers.google.com/workspace/drive/api/guides/mime-types>
const GOOGLE_APPS_MIME: &str = "application/vnd.google-apps.";

#[derive(Clone)]
pub struct DriveClient {
    http: super::Http,
    /// e.g. `https://www.googleapis.com`
    base: String,
}

/// The largest JSON answer read from Drive (a page of 1,000 files is well under 1 MiB).
const MAX_JSON_RESPONSE: usize = 16 * 1024 * 1024;

/// Simple and multipart uploads are for content of this size at most; above it, a resumable
/// upload session. <https://developers.google.com/workspace/drive/api/guides/manage-uploads>
pub const SIMPLE_UPLOAD_LIMIT: u64 = 5 * 1024 * 1024;

/// What a new file is: its id (from `files.generateIds`, so that a retried create cannot make a
/// second file), name, type and folder (`None`: the appDataFolder).
#[derive(Debug, Clone)]
pub struct NewFile<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub mime_type: &'a str,
    pub parent: Option<&'a str>,
}

/// What a resumable upload writes: a new file, or new content for an existing one.
#[derive(Debug, Clone)]
pub enum UploadTarget<'a> {
    Create(NewFile<'a>),
    Update {
        file_id: &'a str,
        mime_type: &'a str,
    },
}

/// Where a resumable upload stands, as the session reports it.
#[derive(Debug)]
pub enum UploadProgress {
    /// `308 Resume Incomplete`: the session holds this many bytes; send from there.
    Incomplete(u64),
    Done(DriveFile),
}

/// A Drive file's metadata. Drive v3 sends int64 values (size, version) as JSON strings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DriveFile {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub mime_type: Option<String>,
    /// In appDataFolder, one parent: a folder, or the appDataFolder itself.
    #[serde(default)]
    pub parents: Vec<String>,
    #[serde(default, deserialize_with = "int64_string")]
    pub size: Option<i64>,
    #[serde(default)]
    pub md5_checksum: Option<String>,
    #[serde(default, deserialize_with = "int64_string")]
    pub version: Option<i64>,
    #[serde(default)]
    pub modified_time: Option<String>,
    #[serde(default)]
    pub trashed: bool,
}

impl DriveFile {
    /// Folders and Google-native files: Drive serves no content for them (`alt=media` answers
    /// 403 fileNotDownloadable), so only their metadata is mirrored.
    pub fn is_metadata_only(&self) -> bool {
        self.mime_type
            .as_deref()
            .is_some_and(|m| m.starts_with(GOOGLE_APPS_MIME))
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileList {
    #[serde(default)]
    pub files: Vec<DriveFile>,
    pub next_page_token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    pub file_id: String,
    #[serde(default)]
    pub removed: bool,
    pub file: Option<DriveFile>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangeList {
    #[serde(default)]
    pub changes: Vec<Change>,
    pub next_page_token: Option<String>,
    pub new_start_page_token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartPageToken {
    pub start_page_token: String,
}

fn int64_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        S(String),
        I(i64),
    }
    match Option::<N>::deserialize(d)? {
        None => Ok(None),
        Some(N::I(i)) => Ok(Some(i)),
        Some(N::S(s)) => s.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

/// Drive's error body: `{"error": {"code": N, "message": ..., "errors": [{"reason", "location"}]}}`.
#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    error: ErrorDetail,
}
#[derive(Deserialize, Default)]
struct ErrorDetail {
    #[serde(default)]
    message: String,
    #[serde(default)]
    errors: Vec<ErrorItem>,
}
#[derive(Deserialize, Default)]
struct ErrorItem {
    #[serde(default)]
    reason: String,
    #[serde(default)]
    location: String,
}

impl DriveClient {
    pub fn new(http: super::Http, base: &str) -> Self {
        Self {
            http,
            base: base.trim_end_matches('/').to_string(),
        }
    }

    /// <https://developers.google.com/workspace/drive/api/reference/rest/v3/changes/getStartPageToken>
    pub async fn start_page_token(&self, token: &SecretString) -> Result<String, GoogleError> {
        const E: &str = "changes.startPageToken";
        let resp = self
            .get(E, token, "/drive/v3/changes/startPageToken", &[])
            .await?;
        Ok(json::<StartPageToken>(E, resp).await?.start_page_token)
    }

    /// One page of the appDataFolder listing (the whole tree: folders and nested files too).
    /// <https://developers.google.com/workspace/drive/api/reference/rest/v3/files/list>
    pub async fn list_files(
        &self,
        token: &SecretString,
        page_token: Option<&str>,
    ) -> Result<FileList, GoogleError> {
        const E: &str = "files.list";
        let fields = format!("nextPageToken,files({FILE_FIELDS})");
        let mut query = vec![
            ("spaces", "appDataFolder"),
            ("pageSize", "1000"),
            ("fields", fields.as_str()),
            ("q", "trashed = false"),
        ];
        if let Some(p) = page_token {
            query.push(("pageToken", p));
        }
        let resp = self.get(E, token, "/drive/v3/files", &query).await?;
        json(E, resp).await
    }

    /// One page of changes since `page_token`.
    /// <https://developers.google.com/workspace/drive/api/reference/rest/v3/changes/list>
    pub async fn list_changes(
        &self,
        token: &SecretString,
        page_token: &str,
    ) -> Result<ChangeList, GoogleError> {
        const E: &str = "changes.list";
        let fields =
            format!("nextPageToken,newStartPageToken,changes(fileId,removed,file({FILE_FIELDS}))");
        let query = [
            ("pageToken", page_token),
            ("spaces", "appDataFolder"),
            ("includeRemoved", "true"),
            ("pageSize", "1000"),
            ("fields", fields.as_str()),
        ];
        let resp = self.get(E, token, "/drive/v3/changes", &query).await?;
        json(E, resp).await
    }

    /// One file's metadata.
    /// <https://developers.google.com/workspace/drive/api/reference/rest/v3/files/get>
    pub async fn get_file(
        &self,
        token: &SecretString,
        file_id: &str,
    ) -> Result<DriveFile, GoogleError> {
        const E: &str = "files.get";
        let path = format!("/drive/v3/files/{}", urlencode(file_id));
        let resp = self
            .get(E, token, &path, &[("fields", FILE_FIELDS)])
            .await?;
        json(E, resp).await
    }

    /// Starts a content download (`alt=media`) from byte `offset` (a `Range` request when it
    /// is not 0: Drive answers 206 with the rest); the caller streams the body. On the media
    /// client: bounded per read, not as a whole.
    /// <https://developers.google.com/workspace/drive/api/guides/manage-downloads#partial_download>
    pub async fn download(
        &self,
        token: &SecretString,
        file_id: &str,
        offset: u64,
    ) -> Result<reqwest::Response, GoogleError> {
        const E: &str = "files.download";
        let url = format!("{}/drive/v3/files/{}", self.base, urlencode(file_id));
        let mut req = self
            .http
            .media
            .get(url)
            .bearer_auth(token.expose_secret())
            .query(&[("alt", "media")]);
        if offset > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={offset}-"));
        }
        let resp = send(E, req).await?;
        if offset > 0 && resp.status() != StatusCode::PARTIAL_CONTENT {
            return Err(GoogleError::Malformed {
                endpoint: E,
                reason: format!("asked for bytes {offset}- and got HTTP {}", resp.status()),
            });
        }
        Ok(resp)
    }

    /// Ids for new files, so that a create sent twice (a retry after a timeout) makes one
    /// file: Drive refuses the second with 409.
    /// <https://developers.google.com/workspace/drive/api/reference/rest/v3/files/generateIds>
    pub async fn generate_ids(
        &self,
        token: &SecretString,
        count: u32,
    ) -> Result<Vec<String>, GoogleError> {
        const E: &str = "files.generateIds";
        #[derive(Deserialize)]
        struct Ids {
            ids: Vec<String>,
        }
        let count = count.to_string();
        let query = [("count", count.as_str()), ("space", "appDataFolder")];
        let resp = self
            .get(E, token, "/drive/v3/files/generateIds", &query)
            .await?;
        Ok(json::<Ids>(E, resp).await?.ids)
    }

    /// Creates a file in appDataFolder with content of at most [`SIMPLE_UPLOAD_LIMIT`] (a
    /// multipart upload: metadata + content).
    /// <https://developers.google.com/workspace/drive/api/guides/manage-uploads#multipart>
    pub async fn create_file(
        &self,
        token: &SecretString,
        file: &NewFile<'_>,
        content: bytes::Bytes,
    ) -> Result<DriveFile, GoogleError> {
        const E: &str = "files.create";
        let url = format!(
            "{}/upload/drive/v3/files?uploadType=multipart&fields={FILE_FIELDS}",
            self.base
        );
        let (content_type, body) = multipart_related(&file.metadata(), file.mime_type, &content);
        let req = self
            .http
            .media
            .post(url)
            .bearer_auth(token.expose_secret())
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        let resp = send(E, req).await?;
        json(E, resp).await
    }

    /// Replaces a file's content, of at most [`SIMPLE_UPLOAD_LIMIT`] (a media upload).
    pub async fn update_content(
        &self,
        token: &SecretString,
        file_id: &str,
        mime_type: &str,
        content: bytes::Bytes,
    ) -> Result<DriveFile, GoogleError> {
        const E: &str = "files.update";
        let url = format!(
            "{}/upload/drive/v3/files/{}?uploadType=media&fields={FILE_FIELDS}",
            self.base,
            urlencode(file_id)
        );
        let req = self
            .http
            .media
            .patch(url)
            .bearer_auth(token.expose_secret())
            .header(reqwest::header::CONTENT_TYPE, mime_type)
            .body(content);
        let resp = send(E, req).await?;
        json(E, resp).await
    }

    /// Deletes a file (a folder: with everything in it). Gone already is not an error here:
    /// the caller decides.
    /// <https://developers.google.com/workspace/drive/api/reference/rest/v3/files/delete>
    pub async fn delete_file(
        &self,
        token: &SecretString,
        file_id: &str,
    ) -> Result<(), GoogleError> {
        const E: &str = "files.delete";
        let url = format!("{}/drive/v3/files/{}", self.base, urlencode(file_id));
        let req = self.http.api.delete(url).bearer_auth(token.expose_secret());
        send(E, req).await?;
        Ok(())
    }

    /// Opens a resumable upload session for `size` bytes and returns its URI (a secret: it
    /// alone authorises the upload, so it is never logged).
    /// <https://developers.google.com/workspace/drive/api/guides/manage-uploads#resumable>
    pub async fn start_resumable(
        &self,
        token: &SecretString,
        target: &UploadTarget<'_>,
        size: u64,
    ) -> Result<SecretString, GoogleError> {
        const E: &str = "files.resumable";
        let (req, mime) = match target {
            UploadTarget::Create(file) => (
                self.http
                    .api
                    .post(format!(
                        "{}/upload/drive/v3/files?uploadType=resumable&fields={FILE_FIELDS}",
                        self.base
                    ))
                    .json(&file.metadata()),
                file.mime_type,
            ),
            UploadTarget::Update { file_id, mime_type } => (
                self.http
                    .api
                    .patch(format!(
                        "{}/upload/drive/v3/files/{}?uploadType=resumable&fields={FILE_FIELDS}",
                        self.base,
                        urlencode(file_id)
                    ))
                    .json(&serde_json::json!({})),
                *mime_type,
            ),
        };
        let req = req
            .bearer_auth(token.expose_secret())
            .header("X-Upload-Content-Type", mime)
            .header("X-Upload-Content-Length", size);
        let resp = send(E, req).await?;
        let location = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| GoogleError::Malformed {
                endpoint: E,
                reason: "no Location header with the session URI".into(),
            })?;
        // The session must be Drive's own: a URI elsewhere would receive the content.
        if !location.starts_with(&format!("{}/", self.base)) {
            return Err(GoogleError::Malformed {
                endpoint: E,
                reason: "the upload session is not on the Drive API's host".into(),
            });
        }
        Ok(SecretString::from(location.to_string()))
    }

    /// Sends `chunk`, the bytes at `offset` of `total`, to an upload session. Chunks other than
    /// the last must be multiples of 256 KiB.
    pub async fn upload_chunk(
        &self,
        session: &SecretString,
        chunk: bytes::Bytes,
        offset: u64,
        total: u64,
    ) -> Result<UploadProgress, GoogleError> {
        let range = if chunk.is_empty() {
            format!("bytes */{total}")
        } else {
            format!(
                "bytes {}-{}/{total}",
                offset,
                offset + chunk.len() as u64 - 1
            )
        };
        let req = self
            .http
            .media
            .put(session.expose_secret())
            .header(reqwest::header::CONTENT_RANGE, range)
            .body(chunk);
        upload_progress(req).await
    }

    /// Asks an upload session how much it holds (after a dropped connection).
    pub async fn upload_status(
        &self,
        session: &SecretString,
        total: u64,
    ) -> Result<UploadProgress, GoogleError> {
        let req = self
            .http
            .media
            .put(session.expose_secret())
            .header(reqwest::header::CONTENT_RANGE, format!("bytes */{total}"))
            .header(reqwest::header::CONTENT_LENGTH, 0);
        upload_progress(req).await
    }

    async fn get(
        &self,
        endpoint: &'static str,
        token: &SecretString,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<reqwest::Response, GoogleError> {
        let req = self
            .http
            .api
            .get(format!("{}{path}", self.base))
            .bearer_auth(token.expose_secret())
            .query(query);
        send(endpoint, req).await
    }
}

impl NewFile<'_> {
    fn metadata(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "name": self.name,
            "mimeType": self.mime_type,
            "parents": [self.parent.unwrap_or("appDataFolder")],
        })
    }
}

/// A session's answer: `308` with `Range: bytes=0-N` (N+1 bytes held; no `Range`: none), or
/// the file once complete.
async fn upload_progress(req: reqwest::RequestBuilder) -> Result<UploadProgress, GoogleError> {
    const E: &str = "files.resumable";
    let resp = req.send().await.map_err(|e| {
        crate::metrics::google_call(E, None);
        GoogleError::from_reqwest(E, e)
    })?;
    let status = resp.status();
    crate::metrics::google_call(E, Some(status.as_u16()));
    if status.as_u16() == 308 {
        let held = resp
            .headers()
            .get(reqwest::header::RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|r| r.strip_prefix("bytes=0-"))
            .and_then(|n| n.parse::<u64>().ok())
            .map_or(0, |last| last + 1);
        return Ok(UploadProgress::Incomplete(held));
    }
    if status.is_success() {
        return Ok(UploadProgress::Done(json(E, resp).await?));
    }
    let headers = resp.headers().clone();
    let body = super::read_capped(E, resp, MAX_JSON_RESPONSE)
        .await
        .unwrap_or_default();
    Err(drive_error(E, status, &headers, &body))
}

async fn send(
    endpoint: &'static str,
    req: reqwest::RequestBuilder,
) -> Result<reqwest::Response, GoogleError> {
    let resp = req.send().await.map_err(|e| {
        crate::metrics::google_call(endpoint, None);
        GoogleError::from_reqwest(endpoint, e)
    })?;
    crate::metrics::google_call(endpoint, Some(resp.status().as_u16()));
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = super::read_capped(endpoint, resp, MAX_JSON_RESPONSE)
        .await
        .unwrap_or_default();
    Err(drive_error(endpoint, status, &headers, &body))
}

async fn json<T: serde::de::DeserializeOwned>(
    endpoint: &'static str,
    resp: reqwest::Response,
) -> Result<T, GoogleError> {
    let body = super::read_capped(endpoint, resp, MAX_JSON_RESPONSE).await?;
    parse_json(endpoint, &body)
}

/// Decodes a 2xx body of a Drive call ([`FileList`], [`ChangeList`], [`StartPageToken`],
/// [`DriveFile`]).
pub fn parse_json<T: serde::de::DeserializeOwned>(
    endpoint: &'static str,
    body: &[u8],
) -> Result<T, GoogleError> {
    serde_json::from_slice(body).map_err(|e| malformed(endpoint, &e))
}

/// Classifies a Drive error response.
/// <https://developers.google.com/workspace/drive/api/guides/handle-errors>
pub fn drive_error(
    endpoint: &'static str,
    status: StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &[u8],
) -> GoogleError {
    let parsed: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
    let reason = parsed
        .error
        .errors
        .first()
        .map(|e| e.reason.as_str())
        .unwrap_or("");
    let location = parsed
        .error
        .errors
        .first()
        .map(|e| e.location.as_str())
        .unwrap_or("");
    let rate_limited = matches!(
        reason,
        "rateLimitExceeded" | "userRateLimitExceeded" | "sharingRateLimitExceeded"
    );
    match status.as_u16() {
        401 => GoogleError::Unauthorized { endpoint },
        404 => GoogleError::NotFound { endpoint },
        // A create whose id exists: our own earlier attempt went through (fileIdInUse).
        409 => GoogleError::AlreadyExists { endpoint },
        400 if location == "pageToken" => GoogleError::InvalidPageToken { endpoint },
        // Drive reports an expired changes token as 410 Gone on some paths.
        410 => GoogleError::InvalidPageToken { endpoint },
        429 | 500..=599 => GoogleError::Unavailable {
            endpoint,
            status: status.as_u16(),
            retry_after: retry_after(headers),
        },
        403 if reason == "fileNotDownloadable" => GoogleError::NotDownloadable { endpoint },
        // https://developers.google.com/workspace/drive/api/guides/handle-errors: the project's
        // quota; userRateLimitExceeded is one user's.
        403 if reason == "rateLimitExceeded" => GoogleError::ProjectQuota {
            endpoint,
            retry_after: retry_after(headers),
        },
        403 if rate_limited => GoogleError::Unavailable {
            endpoint,
            status: 403,
            retry_after: retry_after(headers),
        },
        code => GoogleError::Rejected {
            endpoint,
            status: code,
            error: if reason.is_empty() {
                "unknown".into()
            } else {
                reason.to_string()
            },
            description: parsed.error.message,
        },
    }
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Builds a `multipart/related` body: the JSON metadata part, then the media part.
fn multipart_related(
    metadata: &serde_json::Value,
    mime_type: &str,
    content: &[u8],
) -> (String, Vec<u8>) {
    let boundary = format!("appdata-syncd-{:016x}", rand::random::<u64>());
    let mut body = Vec::with_capacity(content.len() + 512);
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{metadata}\r\n\
             --{boundary}\r\nContent-Type: {mime_type}\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(content);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/related; boundary={boundary}"), body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drive_errors_are_classified_like_googles_guide_says() {
        let h = reqwest::header::HeaderMap::new();
        let body = |reason: &str, location: &str| {
            serde_json::json!({"error": {"code": 0, "message": "m",
                "errors": [{"domain": "usageLimits", "reason": reason, "message": "m", "location": location}]}})
            .to_string()
        };
        let e = drive_error(
            "x",
            StatusCode::FORBIDDEN,
            &h,
            body("userRateLimitExceeded", "").as_bytes(),
        );
        assert!(e.is_transient());
        let e = drive_error(
            "x",
            StatusCode::FORBIDDEN,
            &h,
            body("insufficientPermissions", "").as_bytes(),
        );
        assert!(!e.is_transient());
        let e = drive_error(
            "x",
            StatusCode::BAD_REQUEST,
            &h,
            body("invalid", "pageToken").as_bytes(),
        );
        assert!(matches!(e, GoogleError::InvalidPageToken { .. }));
        let e = drive_error("x", StatusCode::UNAUTHORIZED, &h, b"");
        assert!(matches!(e, GoogleError::Unauthorized { .. }));
    }

    #[test]
    fn int64_fields_arrive_as_strings() {
        let f: DriveFile = serde_json::from_str(
            r#"{"id": "a", "name": "n", "size": "12", "version": "3", "md5Checksum": "x"}"#,
        )
        .unwrap();
        assert_eq!((f.size, f.version), (Some(12), Some(3)));
    }
}
