//! What the operations of [`super::Services`] answer: typed, serialisable results shared by
//! the admin socket (which sends them as JSON, see docs/admin-protocol.md) and `ctl` (which
//! reads them back into these same types), so a renamed field cannot print `-` silently.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::scheduler::{CycleOutcome, CycleProgress};
use crate::store::api_keys::ApiKey;
use crate::store::files::FileRow;
use crate::store::schedule::Instance;
use crate::store::security_events::SecurityEvent;
use crate::store::syncs::SyncRecord;
use crate::store::users::{User, UserState, UserSummary};
use crate::store::webhooks::EndpointStats;
use crate::store::writes::Write;

/// `ctl status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub uptime_s: u64,
    /// The store URL, password redacted.
    pub database: String,
    pub instance: String,
    pub instances: Vec<Instance>,
    pub users_by_state: BTreeMap<UserState, i64>,
    /// Users who became reauth_required in the last 24 hours: many at once means Google stopped
    /// honouring the refresh tokens (a consent screen in Testing mode gives 7-day tokens).
    pub reauth_required_last_day: i64,
    pub syncs_running: usize,
    pub syncs_queued: usize,
    pub last_cycle: Option<CycleOutcome>,
    /// The cycle this instance is starting users in: how far through its spread.
    #[serde(default)]
    pub cycle: Option<CycleProgress>,
    pub next_cycle_at: Option<i64>,
    pub rate_limit: RateLimitStatus,
    /// Cross-Account Protection.
    #[serde(default)]
    pub security: SecurityCounts,
}

/// Cross-Account Protection at a glance: `ctl status` and the metrics.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SecurityCounts {
    /// Users Google disabled (`appdata_syncd_users_flagged{flag="suspended_by_google"}`).
    pub suspended_by_google: i64,
    /// Users flagged for a credential change, not yet acknowledged
    /// (`appdata_syncd_users_flagged{flag="credential_change_required"}`).
    pub credential_change_required: i64,
    /// Security events received in the last 24 hours.
    pub events_last_day: i64,
    /// Received and not yet acted on (`appdata_syncd_risc_pending_events`).
    pub pending_events: i64,
}

impl SecurityCounts {
    /// Sets the gauges (before a scrape).
    pub fn to_metrics(&self) {
        crate::metrics::set_users_flagged("suspended_by_google", self.suspended_by_google);
        crate::metrics::set_users_flagged(
            "credential_change_required",
            self.credential_change_required,
        );
        crate::metrics::set_risc_pending(self.pending_events);
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RateLimitStatus {
    /// The ceiling: this instance's share of `[sync] max_requests_per_second`.
    pub per_second: u32,
    /// `[sync] max_requests_per_second`, shared by the instances on the database (0 from a
    /// daemon that predates sharing).
    #[serde(default)]
    pub budget_per_second: u32,
    /// The instances sharing it, this one included.
    #[serde(default)]
    pub instances: u32,
    /// The rate in force: lower while Google says the project is over quota.
    pub current_per_second: u32,
    pub waits: u64,
    pub waited_ms: u64,
}

/// `ctl users`: a page of users in sub order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserList {
    pub users: Vec<UserSummary>,
    /// How many more users match after the last one listed (0: the list is complete); the
    /// next page is the request again with `after` = the last sub.
    #[serde(default)]
    pub remaining: i64,
}

/// `ctl user SUB`: everything about one user, never a token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserDetail {
    pub user: User,
    pub sync: SyncView,
    pub credentials: Option<CredentialView>,
    pub files: i64,
    pub bytes: i64,
    pub recent_syncs: Vec<SyncRecord>,
    /// The last 10 writes queued for the user.
    pub writes: Vec<Write>,
    /// Cross-Account Protection: the user's flags and last security events.
    #[serde(default)]
    pub security: SecurityView,
}

/// What Google's security events did to one user.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SecurityView {
    /// The reason Google disabled the account (`hijacking`, `bulk-account`, `unspecified`);
    /// `None`: not suspended. Nothing calls Google for the user while it is set.
    pub suspended_by_google: Option<String>,
    /// When Google said the user must change a credential (unix ms); `None`: no flag.
    pub credential_change_required_at: Option<i64>,
    /// The last 20 security events about the user, newest first.
    pub events: Vec<SecurityEvent>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncView {
    pub has_page_token: bool,
    pub next_sync_at: i64,
    pub failures: i64,
    pub last_sync_at: Option<i64>,
    pub resync_requested: bool,
    pub syncing_now: bool,
    /// Syncs since the last one in `recent_syncs` that found nothing to do (not recorded).
    pub idle_syncs: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CredentialView {
    pub scopes: String,
    pub obtained_at: i64,
    /// Which key sealed the refresh token (for key rotation).
    pub key_id: String,
    pub access_token_expires_at: Option<i64>,
}

/// `ctl files SUB`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileList {
    pub files: Vec<FileRow>,
}

/// `ctl resync` without `--wait`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResyncQueued {
    pub queued: usize,
    pub full: bool,
}

/// `ctl pause` / `ctl resume`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateChanged {
    pub user: String,
    pub state: UserState,
}

/// `ctl forget`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Forgotten {
    pub user: String,
    /// Whether Google revoked a grant (false: there was no usable refresh token).
    pub revoked: bool,
    pub deleted: bool,
}

/// `ctl log-level`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogFilter {
    pub filter: String,
}

/// What a reload changed, and what it could not.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReloadReport {
    pub applied: Vec<String>,
    pub needs_restart: Vec<String>,
}

/// `ctl api-key create`: the key itself, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiKeyCreated {
    pub name: String,
    pub can_write: bool,
    pub key: String,
}

/// `ctl api-key list`: names, rights and times; never a key or its hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiKeyList {
    pub keys: Vec<ApiKey>,
}

/// `ctl webhooks`: each configured endpoint and its outbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebhookStatus {
    pub endpoints: Vec<WebhookEndpointStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebhookEndpointStatus {
    pub name: String,
    pub url: String,
    /// Event types sent (empty: all).
    pub events: Vec<String>,
    #[serde(flatten)]
    pub stats: EndpointStats,
}

/// `ctl acknowledge`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Acknowledged {
    pub user: String,
    /// Whether a credential-change flag was set (and is now cleared).
    pub cleared: bool,
}
