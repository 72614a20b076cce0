//! [`Emulator`]: the shared state behind every endpoint, and the synchronous control API.
//!
//! Accounts live in a sharded map; each account owns its Drive store behind its own mutex, so
//! requests of different users never contend. Nothing here awaits: handlers lock, work and
//! unlock. The HTTP control endpoints (`http::control`) call these same methods.

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::drive::store::{CreateError, Drive, Edit, MoveError, NewFile, FOLDER_MIME};
use crate::drive::DriveFile;
use crate::faults::{FaultState, Faults, MinuteWindow, Window};
use crate::keys::{KeyRing, SigningKey};
use crate::oauth::{AccessToken, Grant, PendingCode};
use crate::sharded::Sharded;
use crate::stats::{Counters, EndpointCounters, Stats};
use crate::Error;

/// A Google account, as the ID token and userinfo describe it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct User {
    pub sub: String,
    pub email: String,
    pub email_verified: bool,
    pub name: String,
    pub given_name: String,
    pub family_name: String,
    pub picture: String,
    pub locale: String,
}

/// What `create_user` takes; everything but `sub` gets a derived default.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NewUser {
    pub sub: String,
    pub email: Option<String>,
    pub name: Option<String>,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub picture: Option<String>,
    pub locale: Option<String>,
    pub email_verified: Option<bool>,
}

/// The one web (server) client and the one Android client the emulator knows.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Clients {
    pub web_client_id: String,
    pub web_client_secret: String,
    pub android_client_id: String,
}

pub(crate) struct Account {
    pub(crate) user: User,
    pub(crate) drive: Mutex<Drive>,
    pub(crate) counters: EndpointCounters,
    /// Access tokens issued before the current epoch are expired (`expire_access_tokens`).
    pub(crate) access_epoch: AtomicU64,
    /// Live grants, newest last; revoked ones are removed.
    pub(crate) grants: Mutex<Vec<Arc<Grant>>>,
    /// Per-user quota window (`user_quota_rps`).
    pub(crate) quota: Window,
    /// Per-user sliding minute (`user_quota_per_minute`).
    pub(crate) minute_quota: MinuteWindow,
}

/// The shared state; reachable only inside the crate (its module is private).
#[doc(hidden)]
pub struct Inner {
    pub(crate) base_url: String,
    pub(crate) project_id: String,
    pub(crate) clients: Clients,
    pub(crate) accounts: Sharded<Arc<Account>>,
    pub(crate) codes: Mutex<std::collections::HashMap<String, PendingCode>>,
    pub(crate) refresh_tokens: Sharded<Arc<Grant>>,
    pub(crate) access_tokens: Sharded<AccessToken>,
    pub(crate) keys: RwLock<KeyRing>,
    pub(crate) access_lifetime_s: AtomicU64,
    pub(crate) jwks_max_age_s: AtomicU64,
    /// Bumped by `expire_access_tokens(None)`.
    pub(crate) global_access_epoch: AtomicU64,
    pub(crate) grant_ids: AtomicU64,
    /// How far `advance_clock` has moved the emulator's time, in milliseconds.
    pub(crate) clock_offset_ms: AtomicU64,
    /// Lifetime of refresh tokens issued from now on, in seconds; 0 means they do not expire
    /// by age (`set_refresh_token_lifetime`).
    pub(crate) refresh_lifetime_s: AtomicU64,
    /// Open resumable upload sessions, by upload id.
    pub(crate) uploads: crate::http::resumable::Sessions,
    pub(crate) faults: FaultState,
    pub(crate) stats: Counters,
    pub(crate) issued: Mutex<Vec<String>>,
    /// Cross-Account Protection: SET keys, service accounts, the stream, deliveries.
    pub(crate) risc: crate::risc::RiscState,
}

/// Cheap-to-clone handle on the emulator's state. All methods are synchronous.
#[derive(Clone)]
pub struct Emulator(pub(crate) Arc<Inner>);

impl std::ops::Deref for Emulator {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Emulator {
    pub(crate) fn new(base_url: String, clients: Clients, first_key: SigningKey) -> Self {
        let project_id = format!("fake-google-{}", crate::ids::url_safe(6).to_lowercase());
        let emu = Emulator(Arc::new(Inner {
            base_url,
            project_id,
            accounts: Sharded::default(),
            codes: Mutex::default(),
            refresh_tokens: Sharded::default(),
            access_tokens: Sharded::default(),
            keys: RwLock::new(KeyRing::new(first_key)),
            access_lifetime_s: AtomicU64::new(3599),
            jwks_max_age_s: AtomicU64::new(21600),
            global_access_epoch: AtomicU64::new(0),
            grant_ids: AtomicU64::new(1),
            clock_offset_ms: AtomicU64::new(0),
            refresh_lifetime_s: AtomicU64::new(0),
            uploads: Default::default(),
            faults: FaultState::default(),
            stats: Counters::default(),
            issued: Mutex::default(),
            risc: Default::default(),
            clients,
        }));
        emu.record_secret(&emu.clients.web_client_secret);
        emu
    }

    pub fn base_url(&self) -> String {
        self.base_url.clone()
    }

    pub fn clients(&self) -> Clients {
        self.clients.clone()
    }

    /// The emulator's time for expiries (tokens, codes, upload sessions) and quota windows:
    /// real time plus whatever `advance_clock` added. Timestamps in responses stay real.
    pub(crate) fn now(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.clock_offset_ms.load(Ordering::Relaxed))
    }

    /// [`Emulator::now`] as whole seconds since the Unix epoch, for the quota windows.
    pub(crate) fn clock_unix_s(&self) -> u64 {
        let real = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        (real + self.clock_offset_ms.load(Ordering::Relaxed)) / 1000
    }

    /// Moves the emulator's clock forward: tokens, codes and upload sessions expire, refresh
    /// tokens age and quota windows slide as if `by` had passed. Tests need not wait.
    pub fn advance_clock(&self, by: Duration) {
        self.clock_offset_ms
            .fetch_add(by.as_millis() as u64, Ordering::Relaxed);
    }

    pub(crate) fn record_secret(&self, s: &str) {
        self.issued.lock().push(s.to_string());
    }

    pub(crate) fn account(&self, sub: &str) -> Result<Arc<Account>, Error> {
        self.accounts
            .get(sub)
            .ok_or_else(|| Error::UnknownUser(sub.to_string()))
    }

    pub fn create_user(&self, new: NewUser) -> Result<User, Error> {
        let sub = new.sub;
        if sub.is_empty() || sub.contains('/') {
            return Err(Error::Invalid(
                "sub must be non-empty and contain no '/'".into(),
            ));
        }
        let user = User {
            email: new.email.unwrap_or_else(|| format!("user{sub}@gmail.com")),
            email_verified: new.email_verified.unwrap_or(true),
            given_name: new.given_name.unwrap_or_else(|| "Test".into()),
            family_name: new.family_name.unwrap_or_else(|| format!("User {sub}")),
            name: new.name.unwrap_or_else(|| format!("Test User {sub}")),
            picture: new
                .picture
                .unwrap_or_else(|| format!("https://lh3.googleusercontent.com/a/{sub}=s96-c")),
            locale: new.locale.unwrap_or_else(|| "en".into()),
            sub: sub.clone(),
        };
        let account = Arc::new(Account {
            user: user.clone(),
            drive: Mutex::default(),
            counters: EndpointCounters::default(),
            access_epoch: AtomicU64::new(0),
            grants: Mutex::default(),
            quota: Window::default(),
            minute_quota: MinuteWindow::default(),
        });
        if !self.accounts.insert_new(sub.clone(), account) {
            return Err(Error::UserExists(sub));
        }
        Ok(user)
    }

    pub fn user(&self, sub: &str) -> Result<User, Error> {
        Ok(self.account(sub)?.user.clone())
    }

    // ---- appDataFolder, as the phone app would change it ----

    /// Creates or updates the first file named `name`.
    pub fn put_file(
        &self,
        sub: &str,
        name: &str,
        content: impl Into<Bytes>,
        mime: Option<&str>,
    ) -> Result<DriveFile, Error> {
        let account = self.account(sub)?;
        let mut drive = account.drive.lock();
        let content = content.into();
        match drive.first_named(name) {
            Some(id) => Ok(drive
                .update(&id, Some(content), None, mime)
                .expect("the id was just found")),
            None => Ok(drive.create(name, mime, content)),
        }
    }

    /// Always creates a new file, even if one with that name exists.
    pub fn create_file(
        &self,
        sub: &str,
        name: &str,
        content: impl Into<Bytes>,
        mime: Option<&str>,
    ) -> Result<DriveFile, Error> {
        let account = self.account(sub)?;
        let file = account.drive.lock().create(name, mime, content.into());
        Ok(file)
    }

    /// Creates a file in `parent` (a folder id; `None` for the appDataFolder itself). Any
    /// content and type, Google-native ones (`application/vnd.google-apps.document`, …)
    /// included: those have no md5 and answer 403 `fileNotDownloadable` to `alt=media`.
    pub fn create_file_in(
        &self,
        sub: &str,
        parent: Option<&str>,
        name: &str,
        content: impl Into<Bytes>,
        mime: Option<&str>,
    ) -> Result<DriveFile, Error> {
        let account = self.account(sub)?;
        let file = account.drive.lock().create_with(NewFile {
            name,
            mime,
            content: content.into(),
            parent,
            id: None,
        });
        file.map_err(control_error)
    }

    /// Creates a folder (mimeType `application/vnd.google-apps.folder`) in `parent` (`None`
    /// for the appDataFolder), so nested trees can be built.
    pub fn create_folder(
        &self,
        sub: &str,
        name: &str,
        parent: Option<&str>,
    ) -> Result<DriveFile, Error> {
        self.create_file_in(sub, parent, name, Bytes::new(), Some(FOLDER_MIME))
    }

    /// Moves a file or folder into `parent` (a folder id, or `None` for the appDataFolder).
    pub fn move_file(
        &self,
        sub: &str,
        file_id: &str,
        parent: Option<&str>,
    ) -> Result<DriveFile, Error> {
        let account = self.account(sub)?;
        let mut drive = account.drive.lock();
        let current = drive
            .files
            .get(file_id)
            .map(|e| e.file.parents.clone())
            .ok_or_else(|| Error::FileNotFound(file_id.to_string()))?;
        let edit = Edit {
            reparent: Some((vec![parent.unwrap_or("appDataFolder").to_string()], current)),
            ..Edit::default()
        };
        match drive.edit(file_id, edit) {
            Ok(Some(f)) => Ok(f),
            Ok(None) => Err(Error::FileNotFound(file_id.to_string())),
            Err(MoveError::ParentNotFound(p)) => Err(Error::FileNotFound(p)),
            Err(e) => Err(Error::Invalid(format!("cannot move there: {e:?}"))),
        }
    }

    /// `count` copies of file `file_id` in the appDataFolder, named `NAME.1` … `NAME.count`,
    /// sharing its content (see `files.copy`): gigabytes of appDataFolder for the memory of one
    /// file.
    pub fn copy_file(
        &self,
        sub: &str,
        file_id: &str,
        count: usize,
    ) -> Result<Vec<DriveFile>, Error> {
        let account = self.account(sub)?;
        let mut drive = account.drive.lock();
        let name = drive
            .files
            .get(file_id)
            .map(|e| e.file.name.clone())
            .ok_or_else(|| Error::FileNotFound(file_id.to_string()))?;
        (1..=count)
            .map(|i| {
                drive
                    .copy(file_id, &format!("{name}.{i}"))
                    .ok_or_else(|| Error::Invalid(format!("{file_id} is a folder")))
            })
            .collect()
    }

    pub fn update_file(
        &self,
        sub: &str,
        file_id: &str,
        content: impl Into<Bytes>,
    ) -> Result<DriveFile, Error> {
        let account = self.account(sub)?;
        let file = account
            .drive
            .lock()
            .update(file_id, Some(content.into()), None, None);
        file.ok_or_else(|| Error::FileNotFound(file_id.to_string()))
    }

    /// Same as [`Emulator::update_file`]; the name the control API uses.
    pub fn put_file_by_id(
        &self,
        sub: &str,
        file_id: &str,
        content: impl Into<Bytes>,
    ) -> Result<DriveFile, Error> {
        self.update_file(sub, file_id, content)
    }

    pub fn rename_file(
        &self,
        sub: &str,
        file_id: &str,
        new_name: &str,
    ) -> Result<DriveFile, Error> {
        let account = self.account(sub)?;
        let file = account
            .drive
            .lock()
            .update(file_id, None, Some(new_name), None);
        file.ok_or_else(|| Error::FileNotFound(file_id.to_string()))
    }

    /// Deletes the first file named `name`.
    pub fn delete_file(&self, sub: &str, name: &str) -> Result<(), Error> {
        let account = self.account(sub)?;
        let mut drive = account.drive.lock();
        let id = drive
            .first_named(name)
            .ok_or_else(|| Error::FileNotFound(name.to_string()))?;
        drive.delete(&id);
        Ok(())
    }

    pub fn delete_file_by_id(&self, sub: &str, file_id: &str) -> Result<(), Error> {
        let account = self.account(sub)?;
        let deleted = account.drive.lock().delete(file_id);
        deleted
            .then_some(())
            .ok_or_else(|| Error::FileNotFound(file_id.to_string()))
    }

    /// The user's Drive storage quota, in bytes (`None`: unlimited). Uploads that would pass it
    /// are refused with 403 `storageQuotaExceeded`, as Drive refuses them.
    pub fn set_storage_limit(&self, sub: &str, limit: Option<u64>) -> Result<(), Error> {
        self.account(sub)?.drive.lock().storage_limit = limit;
        Ok(())
    }

    /// Takes away (or gives back) the app's permission to change the user's files: creates,
    /// updates and deletes answer 403 `insufficientFilePermissions`, reads still work. A
    /// permanent refusal, for testing how a client gives up.
    pub fn set_read_only(&self, sub: &str, read_only: bool) -> Result<(), Error> {
        self.account(sub)?.drive.lock().read_only = read_only;
        Ok(())
    }

    /// Every file and folder in the user's appDataFolder, nested ones too, in creation order.
    pub fn list_files(&self, sub: &str) -> Result<Vec<DriveFile>, Error> {
        let account = self.account(sub)?;
        let drive = account.drive.lock();
        Ok(drive
            .files_in_order()
            .into_iter()
            .map(|e| e.file.clone())
            .collect())
    }

    pub fn file_content(&self, sub: &str, file_id: &str) -> Result<Bytes, Error> {
        let account = self.account(sub)?;
        let drive = account.drive.lock();
        drive
            .files
            .get(file_id)
            .map(|e| e.content.clone())
            .ok_or_else(|| Error::FileNotFound(file_id.to_string()))
    }

    /// Makes every change page token the user holds invalid (Drive answers 400 to them).
    pub fn invalidate_page_tokens(&self, sub: &str) {
        if let Ok(account) = self.account(sub) {
            account.drive.lock().invalidate_page_tokens();
        }
    }

    // ---- settings ----

    pub fn set_access_token_lifetime(&self, secs: u64) {
        self.access_lifetime_s.store(secs, Ordering::Relaxed);
    }

    /// Refresh tokens issued from now on stop working `lifetime` after issue (`None`: never by
    /// age). Models a consent screen in the "Testing" publishing status, whose refresh tokens
    /// last 7 days unless only identity scopes were granted
    /// (<https://developers.google.com/identity/protocols/oauth2#expiration>); grants of only
    /// openid/email/profile are therefore exempt.
    pub fn set_refresh_token_lifetime(&self, lifetime: Option<Duration>) {
        let secs = lifetime.map(|d| d.as_secs().max(1)).unwrap_or(0);
        self.refresh_lifetime_s.store(secs, Ordering::Relaxed);
    }

    pub fn set_jwks_max_age(&self, secs: u64) {
        self.jwks_max_age_s.store(secs, Ordering::Relaxed);
    }

    /// A new key signs from now on; the old one stays in the JWKS for `grace`.
    /// Generates an RSA-2048 key, which takes a moment.
    pub fn rotate_keys(&self, grace: Duration) {
        let next = SigningKey::generate().expect("RSA key generation");
        self.keys.write().rotate(next, Instant::now() + grace);
    }

    pub(crate) fn jwks(&self) -> serde_json::Value {
        self.keys.write().jwks()
    }

    pub fn set_faults(&self, faults: Faults) {
        self.faults.set(faults);
    }

    pub fn clear_faults(&self) {
        self.faults.set(Faults::default());
    }

    pub fn stats(&self) -> Stats {
        let mut accounts = Vec::new();
        self.accounts.for_each(|_, a| accounts.push(a.clone()));
        self.stats
            .snapshot(accounts.iter().map(|a| (a.user.sub.as_str(), &a.counters)))
    }

    /// [`Emulator::stats`] with `by_user` left empty: costs the same at any number of users.
    pub fn totals(&self) -> Stats {
        self.stats.snapshot(std::iter::empty())
    }

    pub fn reset_stats(&self) {
        self.stats.reset();
        self.accounts.for_each(|_, a| a.counters.reset());
    }

    /// Every access token, refresh token, auth code and client secret ever issued.
    pub fn issued_secrets(&self) -> Vec<String> {
        self.issued.lock().clone()
    }

    /// Google's `client_secret.json` for the web client, pointing at this emulator.
    pub fn client_secret_json(&self) -> serde_json::Value {
        serde_json::json!({
            "web": {
                "client_id": self.clients.web_client_id,
                "project_id": self.project_id,
                "auth_uri": format!("{}/o/oauth2/auth", self.base_url),
                "token_uri": format!("{}/token", self.base_url),
                "auth_provider_x509_cert_url": format!("{}/oauth2/v3/certs", self.base_url),
                "client_secret": self.clients.web_client_secret,
                "redirect_uris": [],
            }
        })
    }
}

/// The control API's view of a refused create.
fn control_error(e: CreateError) -> Error {
    match e {
        CreateError::ParentNotFound(p) => Error::FileNotFound(p),
        CreateError::ParentNotFolder(p) => Error::Invalid(format!("{p} is not a folder")),
        CreateError::IdNotUsable => Error::Invalid("that id was not generated".into()),
        CreateError::IdInUse => Error::Invalid("that id is in use".into()),
    }
}
