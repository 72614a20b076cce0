//! Configuration: one serde tree, layered as defaults < config.toml < `APPDATA_SYNCD_SECTION__KEY`
//! environment variables (so systemd's `Environment=` wins over the file).
//!
//! [`Config::load`] only parses; [`Config::resolve`] turns paths and files into a
//! [`ResolvedConfig`] (client secret read, key loaded, defaults derived from the state directory).
//! `check-config` prints the resolved form with every secret redacted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize};

use crate::crypto::Keyring;
use crate::google::risc_api::ServiceAccountKey;
use crate::google::HttpVersion;
use crate::scheduler::schedule::Schedule;
pub use crate::sync::mirror::MirrorLocation;

pub mod transport;

/// Prefix of the environment variables that override config.toml keys.
pub const ENV_PREFIX: &str = "APPDATA_SYNCD_";

/// The drive.appdata scope: the only one sync needs.
pub const DRIVE_APPDATA_SCOPE: &str = "https://www.googleapis.com/auth/drive.appdata";

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub google: GoogleConfig,
    pub intake: IntakeConfig,
    pub store: StoreConfig,
    pub sync: SyncConfig,
    pub admin: AdminConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    pub api: ApiConfig,
    pub risc: RiscConfig,
    /// The file this was read from, for reloads.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GoogleConfig {
    /// Google's client_secret.json for the web (server) client. Default:
    /// `$CREDENTIALS_DIRECTORY/client_secret.json` when run under systemd with LoadCredential.
    pub client_secret_file: Option<PathBuf>,
    /// Overrides the token_uri of client_secret.json.
    pub token_uri: Option<String>,
    /// Overrides the auth_uri of client_secret.json (informational: the app does the consent).
    pub auth_uri: Option<String>,
    pub jwks_uri: String,
    pub revoke_uri: String,
    /// Base of the Drive API: `{base}/drive/v3/...` and `{base}/upload/drive/v3/...`.
    pub drive_api_base: String,
    /// Allowed `azp` claims (the Android app's client ids). Empty refuses to start unless
    /// `allow_any_android_client` says that any client of the project may sign users in.
    #[serde(deserialize_with = "string_or_list")]
    pub android_client_ids: Vec<String>,
    pub allow_any_android_client: bool,
    /// The redirect_uri used in the code exchange: "" for Android apps.
    pub redirect_uri: String,
    #[serde(deserialize_with = "string_or_list")]
    pub required_scopes: Vec<String>,
    /// Timeout of one call to Google's JSON endpoints; for content transfers, the longest
    /// wait for the next bytes (a big file may take as long as it needs while bytes flow).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// "1.1" or "2": the HTTP version spoken to Google.
    pub http_version: HttpVersion,
    /// Retries of a failed call wait this long first, doubling (with jitter) up to
    /// `retry_max_delay`, as Google's error guide asks; Retry-After wins when longer.
    #[serde(with = "humantime_serde")]
    pub retry_initial_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max_delay: Duration,
}

impl Default for GoogleConfig {
    fn default() -> Self {
        Self {
            client_secret_file: None,
            token_uri: None,
            auth_uri: None,
            jwks_uri: "https://www.googleapis.com/oauth2/v3/certs".into(),
            revoke_uri: "https://oauth2.googleapis.com/revoke".into(),
            drive_api_base: "https://www.googleapis.com".into(),
            android_client_ids: Vec::new(),
            allow_any_android_client: false,
            redirect_uri: String::new(),
            required_scopes: vec![DRIVE_APPDATA_SCOPE.into()],
            request_timeout: Duration::from_secs(10),
            http_version: HttpVersion::default(),
            retry_initial_delay: Duration::from_secs(1),
            retry_max_delay: Duration::from_secs(32),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntakeConfig {
    pub listen: SocketAddr,
    /// PEM certificate chain; with tls_key, the intake serves HTTPS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Open connections at most; past it, silent ones make room, then new ones are refused.
    pub max_connections: usize,
    /// A connection that sends nothing (or does not finish its TLS handshake) within this is
    /// closed.
    #[serde(with = "humantime_serde")]
    pub first_byte_timeout: Duration,
    /// Sign-ins in progress at once; past it, `POST /authcode` answers 503 with Retry-After.
    pub max_concurrent_signins: usize,
    /// Sign-ins per client address per minute; past it, 429 with Retry-After.
    pub signins_per_client_per_minute: u32,
    /// Calls to Google's token endpoint for sign-ins, per second: a budget of their own, apart
    /// from `[sync] max_requests_per_second`; past it, 503 with Retry-After.
    pub token_calls_per_second: u32,
    /// Reverse proxies (addresses or CIDR ranges) whose `X-Forwarded-For` / `Forwarded`
    /// headers name the client; from anyone else those headers are ignored.
    #[serde(deserialize_with = "networks")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// Addresses (`10.0.0.1`) or CIDR ranges (`10.0.0.0/8`), as a list or a comma-separated string.
fn networks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    string_or_list(d)?
        .iter()
        .map(|s| {
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format!("{s:?} is not an address or a CIDR range"))
                })
        })
        .collect()
}

impl Default for IntakeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls_cert: None,
            tls_key: None,
            max_connections: 1024,
            first_byte_timeout: Duration::from_secs(5),
            max_concurrent_signins: 64,
            signins_per_client_per_minute: 30,
            token_calls_per_second: 50,
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Where state lives. Default: `$STATE_DIRECTORY` (systemd's StateDirectory), else
    /// /var/lib/appdata-syncd.
    pub state_dir: Option<PathBuf>,
    /// `sqlite://PATH` or `postgres://...`. Default: `sqlite://STATE_DIR/appdata-syncd.db`.
    /// A PostgreSQL server off this machine needs `sslmode=verify-full`.
    pub url: Option<String>,
    /// A file (mode 0600, or under `$CREDENTIALS_DIRECTORY`) whose first line is the URL, so
    /// the password need not be in this file. Or leave the password out of the URL and let
    /// `~/.pgpass` / `PGPASSFILE` hold it.
    pub url_file: Option<PathBuf>,
    /// Accept a PostgreSQL server off this machine without `sslmode=verify-full` (a network
    /// you trust end to end): the password and every token then cross it unverified.
    pub allow_unverified_tls: bool,
    /// 32-byte key that encrypts tokens at rest. Default: `$CREDENTIALS_DIRECTORY/encryption.key`.
    pub encryption_key_file: Option<PathBuf>,
    /// Keys that were current before a rotation: still decrypt, never encrypt.
    pub previous_key_files: Vec<PathBuf>,
    /// Connections in the pool.
    pub max_connections: u32,
    /// Sync records, settled writes and gone instances older than this are pruned...
    #[serde(with = "humantime_serde")]
    pub keep_history: Duration,
    /// ...except each user's newest sync records, this many.
    pub keep_syncs_per_user: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            state_dir: None,
            url: None,
            url_file: None,
            allow_unverified_tls: false,
            encryption_key_file: None,
            previous_key_files: Vec::new(),
            max_connections: 0,
            keep_history: Duration::from_secs(7 * 86_400),
            keep_syncs_per_user: 20,
        }
    }
}

/// By hand: `url` may hold a password.
impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("state_dir", &self.state_dir)
            .field("url", &self.url.as_deref().map(crate::store::redact_url))
            .field("url_file", &self.url_file)
            .field("allow_unverified_tls", &self.allow_unverified_tls)
            .field("encryption_key_file", &self.encryption_key_file)
            .field("previous_key_files", &self.previous_key_files)
            .field("max_connections", &self.max_connections)
            .field("keep_history", &self.keep_history)
            .field("keep_syncs_per_user", &self.keep_syncs_per_user)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    /// Where mirrors are written: `DATA_DIR/SUB/FILE_ID`. Default: `STATE_DIR/mirror`.
    pub data_dir: Option<PathBuf>,
    /// Where mirror contents live instead of `data_dir`: `s3://BUCKET/PREFIX` (objects
    /// `PREFIX/SUB/FILE_ID`; credentials, region and endpoint from the `AWS_*` environment
    /// variables) or `file:///PATH`. Unset: the directory `data_dir`.
    pub mirror_url: Option<String>,
    /// Cron expression (with seconds) of the sync cycle.
    pub schedule: String,
    /// Users synced at once.
    pub concurrency: usize,
    /// Scheduled cycles spread their users over the interval (each at its stable slot)
    /// instead of starting them all on the tick.
    pub spread: bool,
    /// All Google calls together stay under this.
    pub max_requests_per_second: u32,
    /// How long running syncs get to finish on SIGTERM.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// This instance's name among several sharing one database. Default: hostname-pid.
    pub instance_id: Option<String>,
    /// How long a claimed user stays with an instance that stopped renewing (it died) before
    /// another instance takes it over.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// A file bigger than this is not mirrored (kept as metadata; the user is over_quota).
    pub max_file_bytes: u64,
    /// A user's mirrored content stays under this; content past it is not mirrored.
    pub max_user_bytes: u64,
    /// Items a user may have in the mirror; items past it are not mirrored at all.
    pub max_files_per_user: u64,
    /// Below this much free space on the mirror's filesystem no download starts (the sync
    /// fails and is retried later), so the disk never fills up to the database's detriment.
    pub min_free_disk_bytes: u64,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            data_dir: None,
            mirror_url: None,
            schedule: "0 */15 * * * *".into(),
            concurrency: 32,
            spread: true,
            max_requests_per_second: 100,
            shutdown_grace: Duration::from_secs(20),
            instance_id: None,
            lease: Duration::from_secs(60),
            max_file_bytes: 1 << 30,
            max_user_bytes: 10 << 30,
            max_files_per_user: 100_000,
            min_free_disk_bytes: 1 << 30,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub socket: PathBuf,
    /// Group that owns the socket (mode 0660).
    pub group: Option<String>,
    /// Extra uids (numbers) or group names allowed on the socket, beside root and our own uid.
    #[serde(deserialize_with = "string_or_list")]
    pub allow: Vec<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from("/run/appdata-syncd/admin.sock"),
            group: None,
            allow: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Where Prometheus scrapes `GET /metrics`. Unset: no metrics endpoint.
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// tracing filter, e.g. "info" or "appdata_syncd=debug,info". RUST_LOG wins when set.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Auto,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// The journal's native protocol when stderr is the journal (`JOURNAL_STREAM`),
    /// human-readable on a terminal, JSON lines otherwise.
    #[default]
    Auto,
    Human,
    Json,
    /// journald's native protocol, with every event field as a journal field.
    Journal,
}

/// `[api]`: the data API for the operator's backend (docs/data-api.md).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// A Unix socket path (anything with a '/') or `host:port`. Unset: no data API.
    pub listen: Option<String>,
    /// PEM certificate chain and key: with both, a `host:port` listener serves HTTPS (the
    /// intake's files may be named again here).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// How long the change feed keeps a change; an older cursor gets 410 cursor_expired.
    #[serde(with = "humantime_serde")]
    pub change_retention: Duration,
    /// `[[api.webhooks]]`: endpoints every change is POSTed to, signed.
    pub webhooks: Vec<WebhookConfig>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: None,
            tls_cert: None,
            tls_key: None,
            change_retention: Duration::from_secs(7 * 24 * 3600),
            webhooks: Vec::new(),
        }
    }
}

/// Cross-Account Protection: Google's security events at `POST /risc`, and the service account
/// key `appdata-syncd risc ...` registers the receiver with.
/// <https://developers.google.com/identity/protocols/risc>
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RiscConfig {
    /// Serve `POST /risc` on the intake. Off: 404, as any unknown path.
    pub enabled: bool,
    /// Google's RISC configuration document (issuer and signing keys).
    pub configuration_uri: String,
    /// The stream management API (`{base}/v1beta/stream...`).
    pub api_base: String,
    /// The service account's JSON key (role RISC Configuration Admin), for `risc register`,
    /// `verify`, `status`, `enable`, `disable`. Default: `$CREDENTIALS_DIRECTORY/risc-service-account.json`
    /// when that file exists. The daemon itself does not need it.
    pub service_account_file: Option<PathBuf>,
    /// Events issued longer ago are refused; their `jti`s need not be remembered longer.
    #[serde(with = "humantime_serde")]
    pub max_event_age: Duration,
    /// How long acted-on events stay in users' histories (at least `max_event_age`).
    #[serde(with = "humantime_serde")]
    pub history_retention: Duration,
}

impl Default for RiscConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            configuration_uri: crate::google::risc::GOOGLE_CONFIGURATION_URI.into(),
            api_base: crate::google::risc_api::GOOGLE_API_BASE.into(),
            service_account_file: None,
            max_event_age: Duration::from_secs(7 * 86_400),
            history_retention: Duration::from_secs(180 * 86_400),
        }
    }
}

/// One `[[api.webhooks]]` endpoint.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Its name in `ctl webhooks`, logs and metrics: letters, digits, '-' and '_'.
    pub name: String,
    pub url: String,
    /// A file holding the Standard Webhooks secret, `whsec_` + base64 of 24 to 64 bytes.
    pub secret_file: PathBuf,
    /// Event types to send (`file.added`, `user.paused`, ...), or prefixes such as `file.*`;
    /// empty: every event.
    #[serde(default, deserialize_with = "string_or_list")]
    pub events: Vec<String>,
    /// Requests in flight to this endpoint at once.
    #[serde(default = "WebhookConfig::default_concurrency")]
    pub concurrency: usize,
    /// Timeout of one delivery attempt.
    #[serde(default = "WebhookConfig::default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// How long a message is retried (exponential backoff) before it is marked failed.
    #[serde(default = "WebhookConfig::default_retry_for", with = "humantime_serde")]
    pub retry_for: Duration,
}

impl WebhookConfig {
    fn default_concurrency() -> usize {
        4
    }
    fn default_timeout() -> Duration {
        Duration::from_secs(10)
    }
    fn default_retry_for() -> Duration {
        Duration::from_secs(24 * 3600)
    }
}

/// Where the data API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiListen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl ApiListen {
    pub fn parse(value: &str) -> anyhow::Result<ApiListen> {
        if value.contains('/') {
            let path = PathBuf::from(value);
            if !path.is_absolute() {
                bail!("[api] listen = {value:?}: a Unix socket path must be absolute");
            }
            return Ok(ApiListen::Unix(path));
        }
        value.parse().map(ApiListen::Tcp).map_err(|_| {
            anyhow::anyhow!(
                "[api] listen = {value:?} is neither host:port (e.g. 127.0.0.1:8081) nor an absolute Unix socket path"
            )
        })
    }
}

/// A webhook endpoint with its secret read.
#[derive(Clone)]
pub struct WebhookEndpoint {
    pub config: WebhookConfig,
    /// The HMAC key: the base64-decoded part of `whsec_...`.
    pub key: std::sync::Arc<secrecy::SecretBox<Vec<u8>>>,
}

impl std::fmt::Debug for WebhookEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookEndpoint")
            .field("config", &self.config)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl WebhookEndpoint {
    /// Whether this endpoint wants events of type `event` (`file.added`, ...).
    pub fn wants(&self, event: &str) -> bool {
        let events = &self.config.events;
        events.is_empty()
            || events.iter().any(|e| {
                e == "*"
                    || e == event
                    || e.strip_suffix('*')
                        .is_some_and(|prefix| event.starts_with(prefix))
            })
    }
}

/// Parses a Standard Webhooks secret: `whsec_` + base64 of 24 to 64 bytes.
pub fn parse_webhook_secret(text: &str) -> anyhow::Result<Vec<u8>> {
    use base64::Engine;
    let Some(b64) = text.trim().strip_prefix("whsec_") else {
        bail!("a webhook secret is whsec_ followed by base64 (Standard Webhooks)");
    };
    let key = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .context("the part after whsec_ is not base64")?;
    if !(24..=64).contains(&key.len()) {
        bail!(
            "a webhook secret must decode to 24 to 64 bytes, not {}",
            key.len()
        );
    }
    Ok(key)
}

/// The data API's configuration, checked and with secrets read.
#[derive(Debug, Clone, Default)]
pub struct ResolvedApi {
    pub listen: Option<ApiListen>,
    pub webhooks: Vec<WebhookEndpoint>,
}

/// Accepts `["a", "b"]` or `"a,b"` (the latter is what an environment variable naturally holds).
fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::Many(v) => v,
        OneOrMany::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
    })
}

impl Config {
    /// Reads `path` (when given) and applies environment overrides from the process environment.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        Self::load_with_env(path, std::env::vars())
    }

    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Config> {
        let mut root = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                text.parse::<toml::Table>()
                    .with_context(|| format!("{} is not valid TOML", path.display()))?
            }
            None => toml::Table::new(),
        };
        apply_env_overrides(&mut root, env)?;
        let mut config: Config = toml::Value::Table(root).try_into().map_err(|e| {
            anyhow::anyhow!(
                "invalid configuration{}: {e}",
                path.map(|p| format!(" in {}", p.display()))
                    .unwrap_or_default()
            )
        })?;
        config.source = path.map(Path::to_path_buf);
        Ok(config)
    }
}

impl Config {
    /// This configuration as config.toml text, for tests, benchmarks and tools that write the
    /// config of a daemon they start. Unset optional keys are left out (their default).
    pub fn to_toml(&self) -> anyhow::Result<String> {
        toml::to_string(self).context("cannot write the configuration as TOML")
    }
}

/// `APPDATA_SYNCD_GOOGLE__JWKS_URI=...` sets `[google] jwks_uri`. Values are read as TOML
/// literals when they parse as one (numbers, booleans, arrays), else as plain strings.
fn apply_env_overrides(
    root: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> anyhow::Result<()> {
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let Some((section, key)) = rest.split_once("__") else {
            // Our other variables (the CLI's --config, test switches) are not config keys.
            if rest == "CONFIG" || rest.starts_with("TEST_") || rest.starts_with("SKIP_") {
                continue;
            }
            bail!("environment variable {name}: expected {ENV_PREFIX}<SECTION>__<KEY>");
        };
        let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
        let value = format!("v = {raw}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(raw));
        let table = root
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(table) = table.as_table_mut() else {
            bail!("environment variable {name}: [{section}] is not a table");
        };
        table.insert(key, value);
    }
    Ok(())
}

/// The web client from Google's client_secret.json ("web" or "installed").
#[derive(Clone)]
pub struct ClientSecret {
    pub client_id: String,
    pub client_secret: SecretString,
    pub token_uri: String,
    pub auth_uri: String,
}

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSecret")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("token_uri", &self.token_uri)
            .finish()
    }
}

impl ClientSecret {
    pub fn parse(text: &str) -> anyhow::Result<ClientSecret> {
        #[derive(Deserialize)]
        struct File {
            web: Option<Details>,
            installed: Option<Details>,
        }
        #[derive(Deserialize)]
        struct Details {
            client_id: String,
            client_secret: String,
            #[serde(default = "default_token_uri")]
            token_uri: String,
            #[serde(default = "default_auth_uri")]
            auth_uri: String,
        }
        fn default_token_uri() -> String {
            "https://oauth2.googleapis.com/token".into()
        }
        fn default_auth_uri() -> String {
            "https://accounts.google.com/o/oauth2/auth".into()
        }
        let file: File = serde_json::from_str(text).context(
            "not a Google client_secret.json (expected {\"web\": {...}} or {\"installed\": {...}})",
        )?;
        let Some(d) = file.web.or(file.installed) else {
            bail!("client_secret.json has neither a \"web\" nor an \"installed\" client");
        };
        if d.client_id.trim().is_empty() || d.client_secret.trim().is_empty() {
            bail!("client_secret.json: client_id and client_secret must not be empty");
        }
        Ok(ClientSecret {
            client_id: d.client_id,
            client_secret: SecretString::from(d.client_secret),
            token_uri: d.token_uri,
            auth_uri: d.auth_uri,
        })
    }

    pub fn read(path: &Path) -> anyhow::Result<ClientSecret> {
        crate::crypto::check_private(path, "client secret file")?;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read client secret file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }
}

/// Everything the daemon runs with, files read and defaults derived.
#[derive(Debug, Clone)]
pub struct ResolvedConfig {
    pub raw: Config,
    pub client: ClientSecret,
    pub token_uri: String,
    /// Shown redacted; `expose()` only to connect.
    pub store_url: crate::store::DatabaseUrl,
    pub state_dir: PathBuf,
    pub data_dir: PathBuf,
    /// Where mirror contents live: `data_dir`, or what `[sync] mirror_url` names.
    pub mirror: MirrorLocation,
    pub keyring: Keyring,
    /// `[sync] schedule`, parsed.
    pub schedule: Schedule,
    /// `[api]`, checked, webhook secrets read.
    pub api: ResolvedApi,
    /// `[risc] service_account_file`, read and checked; `None` when there is none.
    pub risc_service_account: Option<ServiceAccountKey>,
}

impl Config {
    /// Reads every file the configuration names and checks every value, so that a bad config
    /// fails at start-up (and in `check-config`) rather than at the first sign-in.
    pub fn resolve(self) -> anyhow::Result<ResolvedConfig> {
        let credentials_dir = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        let state_dir = self
            .store
            .state_dir
            .clone()
            .or_else(|| std::env::var_os("STATE_DIRECTORY").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/var/lib/appdata-syncd"));
        let (client, token_uri) = self.resolve_google(credentials_dir.as_deref())?;
        let keyring = self.resolve_key(credentials_dir.as_deref())?;
        let store_url = transport::database_url(
            self.store.url.as_deref(),
            self.store.url_file.as_deref(),
            &state_dir,
        )?;
        transport::check_database_transport(&store_url, self.store.allow_unverified_tls)?;
        self.check_intake()?;
        let schedule = self.check_sync()?;
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .with_context(|| format!("[log] level = {:?} is not a valid filter", self.log.level))?;
        let (data_dir, mirror) = self.resolve_mirror(&state_dir)?;
        let api = self.resolve_api()?;
        let risc_service_account = self.resolve_risc(credentials_dir.as_deref())?;
        Ok(ResolvedConfig {
            api,
            risc_service_account,
            schedule,
            raw: self,
            client,
            token_uri,
            store_url,
            state_dir,
            data_dir,
            mirror,
            keyring,
        })
    }

    /// The client secret (read) and the effective token endpoint; every Google URL checked.
    fn resolve_google(&self, credentials: Option<&Path>) -> anyhow::Result<(ClientSecret, String)> {
        let secret_path = self
            .google
            .client_secret_file
            .clone()
            .or_else(|| credentials.map(|d| d.join("client_secret.json")))
            .context("[google] client_secret_file is not set (and no $CREDENTIALS_DIRECTORY)")?;
        let client = ClientSecret::read(&secret_path)?;
        let token_uri = self
            .google
            .token_uri
            .clone()
            .unwrap_or_else(|| client.token_uri.clone());
        for (key, value) in [
            ("token_uri", token_uri.as_str()),
            ("jwks_uri", &self.google.jwks_uri),
            ("revoke_uri", &self.google.revoke_uri),
            ("drive_api_base", &self.google.drive_api_base),
        ] {
            transport::check_google_url("google", key, value)?;
        }
        if self.google.required_scopes.is_empty() {
            bail!("[google] required_scopes must not be empty");
        }
        if self.google.android_client_ids.is_empty() && !self.google.allow_any_android_client {
            bail!(
                "[google] android_client_ids is empty: set your Android app's OAuth client ids \
                 (any client of the Google project could sign users in otherwise), or set \
                 allow_any_android_client = true if that is what you want"
            );
        }
        Ok((client, token_uri))
    }

    fn resolve_key(&self, credentials: Option<&Path>) -> anyhow::Result<Keyring> {
        let key_path = self
            .store
            .encryption_key_file
            .clone()
            .or_else(|| credentials.map(|d| d.join("encryption.key")))
            .context("[store] encryption_key_file is not set (and no $CREDENTIALS_DIRECTORY)")?;
        Keyring::from_files(&key_path, &self.store.previous_key_files)
    }

    fn check_intake(&self) -> anyhow::Result<()> {
        let i = &self.intake;
        for (key, value) in [
            ("max_connections", i.max_connections as u64),
            ("max_concurrent_signins", i.max_concurrent_signins as u64),
            (
                "signins_per_client_per_minute",
                i.signins_per_client_per_minute as u64,
            ),
            ("token_calls_per_second", i.token_calls_per_second as u64),
        ] {
            if value == 0 {
                bail!("[intake] {key} must be at least 1");
            }
        }
        match (&self.intake.tls_cert, &self.intake.tls_key) {
            (Some(cert), Some(key)) => {
                for p in [cert, key] {
                    std::fs::metadata(p)
                        .with_context(|| format!("[intake] cannot read {}", p.display()))?;
                }
                Ok(())
            }
            (None, None) => Ok(()),
            _ => bail!("[intake] tls_cert and tls_key must be set together"),
        }
    }

    /// `[api]`: the listener parsed, TLS files there, each webhook checked and its secret read.
    fn resolve_api(&self) -> anyhow::Result<ResolvedApi> {
        let api = &self.api;
        let listen = api.listen.as_deref().map(ApiListen::parse).transpose()?;
        match (&api.tls_cert, &api.tls_key, &listen) {
            (Some(_), Some(_), Some(ApiListen::Unix(_))) => {
                bail!("[api] tls_cert/tls_key need a host:port listen, not a Unix socket")
            }
            (Some(cert), Some(key), _) => {
                for p in [cert, key] {
                    std::fs::metadata(p)
                        .with_context(|| format!("[api] cannot read {}", p.display()))?;
                }
            }
            (None, None, _) => {}
            _ => bail!("[api] tls_cert and tls_key must be set together"),
        }
        if api.change_retention < Duration::from_secs(60) {
            bail!("[api] change_retention must be at least 1m");
        }
        let mut webhooks: Vec<WebhookEndpoint> = Vec::new();
        for w in &api.webhooks {
            let what = format!("[[api.webhooks]] {:?}", w.name);
            let good_name = !w.name.is_empty()
                && w.name.len() <= 64
                && w.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !good_name {
                bail!("{what}: name must be 1 to 64 letters, digits, '-' or '_'");
            }
            if webhooks.iter().any(|o| o.config.name == w.name) {
                bail!("{what}: two webhooks have this name");
            }
            let url =
                url::Url::parse(&w.url).with_context(|| format!("{what}: url is not a URL"))?;
            if !matches!(url.scheme(), "http" | "https") {
                bail!("{what}: url must be http(s)");
            }
            for e in &w.events {
                let known = e == "*"
                    || e.parse::<crate::store::changes::ChangeKind>().is_ok()
                    || e.strip_suffix('*').is_some_and(|p| {
                        crate::store::changes::ChangeKind::ALL
                            .iter()
                            .any(|k| k.as_str().starts_with(p))
                    });
                if !known {
                    bail!("{what}: unknown event {e:?}");
                }
            }
            if w.concurrency == 0 || w.timeout.is_zero() {
                bail!("{what}: concurrency and timeout must be above zero");
            }
            let text = std::fs::read_to_string(&w.secret_file).with_context(|| {
                format!(
                    "{what}: cannot read secret_file {}",
                    w.secret_file.display()
                )
            })?;
            let key = parse_webhook_secret(&text)
                .with_context(|| format!("{what}: secret_file {}", w.secret_file.display()))?;
            webhooks.push(WebhookEndpoint {
                config: w.clone(),
                key: std::sync::Arc::new(secrecy::SecretBox::new(Box::new(key))),
            });
        }
        Ok(ResolvedApi { listen, webhooks })
    }

    fn check_sync(&self) -> anyhow::Result<Schedule> {
        let schedule = Schedule::parse(&self.sync.schedule)?;
        if self.sync.concurrency == 0 {
            bail!("[sync] concurrency must be at least 1");
        }
        if self.sync.lease < Duration::from_secs(3) {
            bail!("[sync] lease must be at least 3s");
        }
        if self.sync.max_requests_per_second == 0 {
            bail!("[sync] max_requests_per_second must be at least 1");
        }
        Ok(schedule)
    }

    /// `[risc]`: URLs and ages checked, the service account key read (when there is one).
    fn resolve_risc(
        &self,
        credentials: Option<&Path>,
    ) -> anyhow::Result<Option<ServiceAccountKey>> {
        let r = &self.risc;
        for (key, value) in [
            ("configuration_uri", &r.configuration_uri),
            ("api_base", &r.api_base),
        ] {
            transport::check_google_url("risc", key, value)?;
        }
        if r.max_event_age < Duration::from_secs(60) {
            bail!("[risc] max_event_age must be at least 1m");
        }
        if r.history_retention < r.max_event_age {
            bail!("[risc] history_retention must be at least max_event_age: a replayed event is recognised only while its jti is kept");
        }
        let path = match (&r.service_account_file, credentials) {
            (Some(p), _) => p.clone(),
            (None, Some(dir)) if dir.join("risc-service-account.json").exists() => {
                dir.join("risc-service-account.json")
            }
            _ => return Ok(None),
        };
        ServiceAccountKey::read(&path)
            .map(Some)
            .context("[risc] service_account_file")
    }

    /// `[sync] data_dir` (default `STATE_DIR/mirror`) and where mirror contents live.
    fn resolve_mirror(&self, state_dir: &Path) -> anyhow::Result<(PathBuf, MirrorLocation)> {
        let data_dir = self
            .sync
            .data_dir
            .clone()
            .unwrap_or_else(|| state_dir.join("mirror"));
        let mirror = match &self.sync.mirror_url {
            None => MirrorLocation::Directory(data_dir.clone()),
            Some(url) => MirrorLocation::parse(url)?,
        };
        if let (MirrorLocation::Directory(dir), Some(set)) = (&mirror, &self.sync.data_dir) {
            if dir != set {
                bail!("[sync] data_dir and mirror_url = file://... name different directories: set only one");
            }
        }
        Ok((data_dir, mirror))
    }
}

impl ResolvedConfig {
    /// `[sync] instance_id`, or hostname-pid.
    pub fn instance_id(&self) -> String {
        self.raw.sync.instance_id.clone().unwrap_or_else(|| {
            let host = nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "localhost".into());
            format!("{host}-{}", std::process::id())
        })
    }

    /// What `check-config` prints and what a reload compares: every key of the file (derived
    /// from the serialised [`Config`], so a new key needs no code here), then the values
    /// derived from files and the environment. Secrets never appear: the client secret is
    /// `[redacted]` (see [`ResolvedConfig::changed_keys`]), a key shows as its key id.
    pub fn settings(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        if let Ok(toml::Value::Table(root)) = toml::Value::try_from(&self.raw) {
            flatten("", &toml::Value::Table(root), &mut m);
        }
        let mut derived = |key: &str, value: String| {
            m.insert(key.to_string(), value);
        };
        derived("google.client_id", self.client.client_id.clone());
        derived(
            "google.client_secret",
            redact(self.client.client_secret.expose_secret()),
        );
        derived("google.token_uri", self.token_uri.clone());
        derived(
            "intake.tls",
            match &self.raw.intake.tls_cert {
                Some(c) => format!("on ({})", c.display()),
                None => "off (plain HTTP: put a TLS-terminating proxy in front)".into(),
            },
        );
        derived("store.url", self.store_url.to_string());
        derived("store.state_dir", self.state_dir.display().to_string());
        derived(
            "store.encryption_key",
            format!(
                "[redacted] (key id {}, {} previous)",
                self.keyring.current_id(),
                self.keyring.len() - 1
            ),
        );
        derived("sync.data_dir", self.data_dir.display().to_string());
        derived("sync.mirror", self.mirror_description());
        derived("sync.instance_id", self.instance_id());
        derived(
            "risc.service_account",
            match &self.risc_service_account {
                Some(k) => format!(
                    "{} (key {}, private key [redacted])",
                    k.client_email, k.private_key_id
                ),
                None => "none (needed only by `appdata-syncd risc ...`)".into(),
            },
        );
        m
    }

    /// What is valid but almost surely wrong, for `check-config` and the start-up log.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for scope in &self.raw.google.required_scopes {
            // Google returns granted scopes as full URLs (`openid` is the one short name it
            // keeps): a short name here would never match, and every sign-in would be refused.
            if scope != "openid" && !scope.starts_with("https://") {
                let full = match scope.as_str() {
                    "email" => "https://www.googleapis.com/auth/userinfo.email".to_string(),
                    "profile" => "https://www.googleapis.com/auth/userinfo.profile".to_string(),
                    other => format!("https://www.googleapis.com/auth/{other}"),
                };
                out.push(format!(
                    "[google] required_scopes contains {scope:?}, which Google never returns: \
                     it reports granted scopes as full URLs; write {full:?}"
                ));
            }
        }
        out
    }

    /// Keys whose value differs between `self` and `new`, as [`ResolvedConfig::settings`]
    /// names them (and `google.client_secret` when only the secret changed).
    pub fn changed_keys(&self, new: &ResolvedConfig) -> Vec<String> {
        let (old_map, new_map) = (self.settings(), new.settings());
        let mut keys: Vec<String> = old_map
            .keys()
            .chain(new_map.keys())
            .filter(|k| old_map.get(*k) != new_map.get(*k))
            .cloned()
            .collect();
        keys.sort();
        keys.dedup();
        if self.client.client_secret.expose_secret() != new.client.client_secret.expose_secret()
            && !keys.iter().any(|k| k == "google.client_secret")
        {
            keys.push("google.client_secret".into());
        }
        keys
    }

    fn mirror_description(&self) -> String {
        match &self.mirror {
            MirrorLocation::Directory(dir) => format!("directory {}", dir.display()),
            s3 @ MirrorLocation::S3 { .. } => format!(
                "{s3} (endpoint: {}; credentials and region from AWS_*)",
                std::env::var("AWS_ENDPOINT_URL")
                    .or_else(|_| std::env::var("AWS_ENDPOINT"))
                    .unwrap_or_else(|_| "AWS S3".into())
            ),
        }
    }
}

/// `{"sync": {"concurrency": 32}}` → `sync.concurrency = "32"`; strings unquoted, the rest
/// as TOML writes it.
fn flatten(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, String>) {
    match value {
        toml::Value::Table(t) if prefix.matches('.').count() < 1 => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        toml::Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

fn redact(secret: &str) -> String {
    if secret.is_empty() {
        "(empty)".into()
    } else {
        "[redacted]".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn env_overrides_file_and_parses_lists() {
        let config = Config::load_with_env(
            None,
            env(&[
                ("APPDATA_SYNCD_GOOGLE__ANDROID_CLIENT_IDS", "a.apps, b.apps"),
                ("APPDATA_SYNCD_SYNC__CONCURRENCY", "7"),
                ("APPDATA_SYNCD_INTAKE__LISTEN", "127.0.0.1:9999"),
                ("UNRELATED", "x"),
                ("APPDATA_SYNCD_CONFIG", "/etc/x.toml"),
                ("APPDATA_SYNCD_SKIP_POSTGRES", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(config.google.android_client_ids, vec!["a.apps", "b.apps"]);
        assert_eq!(config.sync.concurrency, 7);
        assert_eq!(config.intake.listen.port(), 9999);
    }

    #[test]
    fn a_config_written_as_toml_reads_back_the_same() {
        let mut config = Config::default();
        config.sync.schedule = "*/5 * * * * *".into();
        config.sync.shutdown_grace = Duration::from_millis(1500);
        config.google.android_client_ids = vec!["a.apps".into(), "b.apps".into()];
        config.intake.tls_cert = Some("/etc/cert.pem".into());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, config.to_toml().unwrap()).unwrap();
        let back = Config::load_with_env(Some(&path), []).unwrap();
        assert_eq!(back.to_toml().unwrap(), config.to_toml().unwrap());
        assert_eq!(back.sync.shutdown_grace, Duration::from_millis(1500));
    }

    #[test]
    fn unknown_env_key_is_an_error() {
        let err = Config::load_with_env(None, env(&[("APPDATA_SYNCD_SYNC__CONCURENCY", "7")]))
            .unwrap_err();
        assert!(format!("{err:#}").contains("concurency"), "{err:#}");
    }

    #[test]
    fn mirror_url_names_a_bucket_or_a_directory() {
        assert_eq!(
            MirrorLocation::parse("s3://my-bucket/a/b/").unwrap(),
            MirrorLocation::S3 {
                bucket: "my-bucket".into(),
                prefix: "a/b".into()
            }
        );
        let root = MirrorLocation::parse("s3://my-bucket").unwrap();
        assert_eq!(root.to_string(), "s3://my-bucket");
        assert_eq!(
            MirrorLocation::parse("file:///srv/mirror").unwrap(),
            MirrorLocation::Directory("/srv/mirror".into())
        );
        for (bad, why) in [
            ("gs://bucket/x", "unsupported scheme"),
            ("/srv/mirror", "not a URL"),
            ("s3://Bad_Bucket/x", "bucket name"),
            ("s3://key:secret@bucket/x", "credentials"),
            ("s3://bucket:9000/x", "AWS_ENDPOINT_URL"),
            ("s3://bucket/x?region=eu", "no query"),
        ] {
            let err = MirrorLocation::parse(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn client_secret_accepts_web_and_installed() {
        let web = r#"{"web":{"client_id":"1.apps","client_secret":"s","token_uri":"http://t"}}"#;
        let c = ClientSecret::parse(web).unwrap();
        assert_eq!(c.token_uri, "http://t");
        let installed = r#"{"installed":{"client_id":"1.apps","client_secret":"s"}}"#;
        assert_eq!(
            ClientSecret::parse(installed).unwrap().token_uri,
            "https://oauth2.googleapis.com/token"
        );
        assert!(ClientSecret::parse(r#"{"other":{}}"#).is_err());
        assert!(format!("{:?}", c).contains("[redacted]"));
    }
}
