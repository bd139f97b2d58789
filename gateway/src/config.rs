//! `konvert.toml`: the daemon's configuration.
//!
//! Loaded once at start and again on SIGHUP. Unknown keys and bad values are
//! refused with the file, the line and the reason. Paths may be relative:
//! they are resolved against the directory of the configuration file.
//!
//! Under systemd, key material comes from `LoadCredential=` /
//! `LoadCredentialEncrypted=`: `keys_dir`, `store.master_key_file` and
//! `signatories[].key` may start with `${CREDENTIALS_DIRECTORY}`, which
//! is replaced by the directory systemd names in `$CREDENTIALS_DIRECTORY`
//! (see `deploy/systemd/konvertd.service`). Without that variable (an
//! operator's `konvertctl`), such paths stay as written and
//! [`Config::unresolved_credentials`] names them; `konvertd` refuses to
//! start with them.
//!
//! ```toml
//! authority = "kz.mvd"
//! keys_dir = "keys"                      # node.key.pem, age.key, tls.cert.pem, tls.key.pem, card.toml
//! data_dir = "data"
//! profiles = ["profiles/kz-by-2019.toml"]
//!
//! [quic]
//! listen = "0.0.0.0:7443"
//!
//! [api]
//! socket = "/run/konvert/api.sock"
//! users = ["migration-app"]
//! groups = ["konvert"]
//!
//! [store]
//! master_key_file = "keys/master.key"     # or: master_key_credential = "konvert-master"
//! retention_default = "30d"               # messages without a more specific rule
//! audit_retention = "1825d"               # metadata, receipts, audit trail (5 years)
//! retention = { "kz-by-2019" = { request = "90d", "*" = "60d" } }
//! sweep_interval = "1m"                   # how often expired data is destroyed
//! audit_head_log = "/var/log/konvert/audit-heads.jsonl"   # optional; another disk
//!
//! [[signatories]]                         # who may sign what this gateway sends
//! id = "ivanov"
//! key = "keys/signatories/ivanov.key.pem"
//!
//! [[peers]]                               # added by `konvertctl peer add`
//! authority = "by.mvd"
//! addresses = ["192.0.2.10:7443"]
//! agreements = ["kz-by-2019"]
//! card = "peers/by.mvd.toml"
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use konvert_envelope::keys::AuthorityCard;
use konvert_envelope::model::{AgreementId, AuthorityId};
use konvert_envelope::profile::Profile;
use serde::{Deserialize, Serialize};

use crate::files::{self, FileError};

/// Largest configuration file read.
pub const MAX_CONFIG: u64 = 1024 * 1024;

/// The environment variable in which systemd names the directory of the
/// credentials it passes to the service (`LoadCredential=`).
pub const CREDENTIALS_VAR: &str = "CREDENTIALS_DIRECTORY";

/// How a key path in `konvert.toml` names that directory.
pub const CREDENTIALS_PLACEHOLDER: &str = "${CREDENTIALS_DIRECTORY}";

/// For a path starting with [`CREDENTIALS_PLACEHOLDER`]: the rest (empty for
/// the directory itself), or why it is not acceptable. `None` for other paths.
fn credential_suffix(p: &Path) -> Option<Result<PathBuf, String>> {
    let text = p.to_str()?;
    let rest = text.strip_prefix(CREDENTIALS_PLACEHOLDER)?;
    if rest.is_empty() {
        return Some(Ok(PathBuf::new()));
    }
    let Some(rest) = rest.strip_prefix('/') else {
        return Some(Err(format!(
            "write {CREDENTIALS_PLACEHOLDER} alone or followed by /NAME"
        )));
    };
    let rest = Path::new(rest);
    let plain = rest
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !plain || rest.as_os_str().is_empty() {
        return Some(Err(format!(
            "{text:?}: a credential is named by plain names below {CREDENTIALS_PLACEHOLDER}"
        )));
    }
    Some(Ok(rest.to_path_buf()))
}

/// The file a key named `${CREDENTIALS_DIRECTORY}/NAME` in `konvert.toml`
/// comes from, as the packaged unit's `LoadCredential=` lines load it from
/// `keys_dir` (the `--keys-dir` of the offline commands, normally
/// `/etc/konvert/keys`): a directory credential's files `signatory_FILE`
/// and `rotation_FILE` come from `keys_dir/signatories/FILE` and
/// `keys_dir/rotation/FILE`, any other `NAME` from `keys_dir/NAME`; the
/// placeholder alone is `keys_dir`. Other paths are returned unchanged.
pub fn credential_source(p: &Path, keys_dir: &Path) -> PathBuf {
    match credential_suffix(p) {
        Some(Ok(rest)) if rest.as_os_str().is_empty() => keys_dir.to_path_buf(),
        Some(Ok(rest)) => {
            let name = rest.to_string_lossy();
            for (prefix, dir) in [("signatory_", "signatories"), ("rotation_", "rotation")] {
                if let Some(file) = name.strip_prefix(prefix).filter(|f| !f.is_empty()) {
                    return keys_dir.join(dir).join(file);
                }
            }
            keys_dir.join(rest)
        }
        _ => p.to_path_buf(),
    }
}

/// Whether a key path names the credentials directory (`${CREDENTIALS_DIRECTORY}`…).
pub fn is_credential_path(p: &Path) -> bool {
    credential_suffix(p).is_some()
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error(transparent)]
    File(#[from] FileError),
    /// The TOML does not parse or has an unknown key or a bad value.
    #[error("{path}:{line}:{column}: {reason}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line (0 if unknown).
        line: usize,
        /// 1-based column (0 if unknown).
        column: usize,
        /// What is wrong.
        reason: String,
    },
    /// A value parses but is not acceptable.
    #[error("{path}: {key}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key at fault, e.g. `peers[1].addresses`.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// A duration written as text: `"30s"`, `"10m"`, `"2h"`, `"30d"`, or ISO 8601 (`"PT30S"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(pub Duration);

impl Serialize for Span {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let d = jiff::SignedDuration::try_from(self.0).map_err(serde::ser::Error::custom)?;
        s.collect_str(&format_args!("{d:#}"))
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_span(&s).map(Span).map_err(serde::de::Error::custom)
    }
}

/// Parses `"30s"`, `"10m"`, `"2h"`, `"30d"` (days of 24 h) or ISO 8601.
pub fn parse_span(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if let Some(days) = t.strip_suffix('d').and_then(|n| n.trim().parse::<u64>().ok()) {
        return Ok(Duration::from_secs(days.saturating_mul(86_400)));
    }
    let d: jiff::SignedDuration = t
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as \"30s\", \"10m\", \"2h\" or \"30d\""))?;
    Duration::try_from(d).map_err(|_| format!("{s:?} is negative"))
}

/// The whole configuration file, as written.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This gateway's authority, e.g. `kz.mvd`.
    pub authority: AuthorityId,
    /// Directory of the node's keys and card (`konvertctl init` makes it).
    pub keys_dir: PathBuf,
    /// Directory of the store (created with mode 0700).
    pub data_dir: PathBuf,
    /// Agreement profile files; several versions of one agreement (Art. 16,
    /// each with its own `version`) may be listed, each once.
    pub profiles: Vec<PathBuf>,
    /// Where gateways reach this one.
    pub quic: QuicConfig,
    /// The local API for applications.
    pub api: ApiConfig,
    /// The store: master key, retention.
    #[serde(default)]
    pub store: StoreSection,
    /// Delivery retries.
    #[serde(default)]
    pub outbox: OutboxConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// When `GET /v1/health` reports `degraded`.
    #[serde(default)]
    pub health: HealthConfig,
    /// Signatories whose keys this gateway holds and signs with on their behalf.
    #[serde(default)]
    pub signatories: Vec<SignatoryConfig>,
    /// Peer gateways.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PeerConfig>,
    /// The Prometheus metrics endpoint (off unless `listen` is set).
    #[serde(default, skip_serializing_if = "MetricsConfig::is_off")]
    pub metrics: MetricsConfig,
    /// How received signatures are judged.
    #[serde(default, skip_serializing_if = "SignaturesConfig::is_default")]
    pub signatures: SignaturesConfig,
}

/// `[signatures]`: how signatures on received messages are judged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignaturesConfig {
    /// A message signed by a peer's signatory while valid is accepted for
    /// this long after the signatory's validity ended (revoked, expired,
    /// dropped from the roster); after that it is refused with
    /// `signer_no_longer_valid`, since the signing time is the sender's
    /// claim and a late arrival could be backdated (docs/THREAT-MODEL.md).
    /// Signatures of signatories still valid are not bounded, so messages
    /// queued through a long outage are delivered. Default 24 h; 5m..30d.
    #[serde(default = "default_ended_signer_grace")]
    pub ended_signer_grace: Span,
}

impl Default for SignaturesConfig {
    fn default() -> Self {
        Self {
            ended_signer_grace: default_ended_signer_grace(),
        }
    }
}

impl SignaturesConfig {
    /// All defaults (not written out by `konvertctl init`).
    pub fn is_default(&self) -> bool {
        self == &Self::default()
    }
}

fn default_ended_signer_grace() -> Span {
    Span(Duration::from_secs(
        konvert_envelope::envelope::DEFAULT_ENDED_SIGNER_GRACE_SECS,
    ))
}

/// Bounds of `[signatures] ended_signer_grace`: at least the clock skew
/// tolerated between gateways, at most 30 days (a longer grace would let a
/// revoked signatory backdate for that long).
pub const ENDED_SIGNER_GRACE_RANGE: (Duration, Duration) = (
    Duration::from_secs(konvert_envelope::profile::MAX_CLOCK_SKEW_SECS as u64),
    Duration::from_secs(30 * 86_400),
);

/// `[metrics]`: the Prometheus metrics endpoint (`GET /metrics`), off by default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// A loopback address and port, e.g. `127.0.0.1:9464`; other addresses
    /// are refused (the endpoint has no authentication).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
}

impl MetricsConfig {
    /// No endpoint.
    pub fn is_off(&self) -> bool {
        self.listen.is_none()
    }
}

/// `[quic]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuicConfig {
    /// UDP address to listen on, e.g. `0.0.0.0:7443` or `[::]:7443`.
    pub listen: SocketAddr,
    /// Largest envelope accepted from a peer (default 64 MiB). Received
    /// envelopes are still read into memory before they are checked, so this
    /// also bounds the memory one incoming stream can take.
    #[serde(default = "default_max_envelope")]
    pub max_envelope_bytes: u64,
    /// Close a connection idle for this long.
    #[serde(default = "default_idle")]
    pub idle_timeout: Span,
    /// Send keep-alives this often.
    #[serde(default = "default_keep_alive")]
    pub keep_alive: Span,
    /// Concurrent envelope streams per connection: what a peer may open to
    /// this gateway at once, and the envelopes this gateway keeps in flight
    /// to each peer.
    #[serde(default = "default_streams")]
    pub max_streams_per_connection: u32,
    /// Connections accepted per peer.
    #[serde(default = "default_conns")]
    pub max_connections_per_peer: u32,
}

fn default_max_envelope() -> u64 {
    320 * 1024 * 1024
}
fn default_idle() -> Span {
    Span(Duration::from_secs(60))
}
fn default_keep_alive() -> Span {
    Span(Duration::from_secs(15))
}
fn default_streams() -> u32 {
    256
}
fn default_conns() -> u32 {
    4
}

/// `[api]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Path of the Unix socket (created with mode 0660).
    pub socket: PathBuf,
    /// Local users allowed to use the API (names).
    #[serde(default)]
    pub users: Vec<String>,
    /// Local groups whose members may use the API (names).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Largest JSON request body.
    #[serde(default = "default_max_json")]
    pub max_json_bytes: u64,
    /// Largest attachment upload.
    #[serde(default = "default_max_upload")]
    pub max_upload_bytes: u64,
    /// Uploads no submitted message has used are removed after this long
    /// (default 24 h); a sweep runs every `upload_max_age / 4`, at most
    /// every 10 minutes.
    #[serde(default = "default_upload_max_age")]
    pub upload_max_age: Span,
}

fn default_upload_max_age() -> Span {
    Span(Duration::from_secs(24 * 3600))
}

fn default_max_json() -> u64 {
    16 * 1024 * 1024
}
fn default_max_upload() -> u64 {
    256 * 1024 * 1024
}

/// `[store]`
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// File holding the 32-byte master key (mode 0600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_key_file: Option<PathBuf>,
    /// Name of a systemd credential holding the master key (`LoadCredentialEncrypted=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_key_credential: Option<String>,
    /// Retention of messages without a more specific rule (default 30 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_default: Option<Span>,
    /// Retention of metadata, receipts and the audit trail (default 5 years).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_retention: Option<Span>,
    /// Retention per agreement and message kind: `{ "kz-by-2019" = { request = "90d", "*" = "60d" } }`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub retention: BTreeMap<String, BTreeMap<String, Span>>,
    /// How often the retention sweeper runs (default 1 minute): it destroys
    /// the keys and payload files of expired hours, then does the index
    /// bookkeeping and prunes the audit trail in bounded steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep_interval: Option<Span>,
    /// An append-only file to which the audit chain's head is appended (JSON
    /// lines) after each sweep; keep it on another disk or ship it away, so
    /// that a truncated audit trail can be detected (`konvert-store`
    /// `audit_verify_against_log`). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_head_log: Option<PathBuf>,
}

/// `[outbox]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// Delivery attempts before a message is marked failed.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// First retry delay (doubled each attempt, with jitter).
    #[serde(default = "default_initial_backoff")]
    pub initial_backoff: Span,
    /// Largest retry delay.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: Span,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            max_attempts: default_attempts(),
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
        }
    }
}

fn default_attempts() -> u32 {
    50
}
fn default_initial_backoff() -> Span {
    Span(Duration::from_secs(1))
}
fn default_max_backoff() -> Span {
    Span(Duration::from_secs(600))
}

/// `[health]`: thresholds of the `degraded` health reasons (docs/API.md).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// `undelivered_too_old` when the oldest undelivered outbound message is
    /// older than this (default 1 h).
    #[serde(default = "default_max_undelivered_age")]
    pub max_undelivered_age: Span,
    /// `failed_messages` while a message was marked failed within this
    /// window (default 24 h).
    #[serde(default = "default_failed_window")]
    pub failed_window: Span,
    /// `peer_unreachable` after this many failed delivery attempts to a peer
    /// in a row (default 3).
    #[serde(default = "default_peer_failures")]
    pub peer_failures: u32,
    /// `disk_space_low` when the data directory's file system has less free
    /// space than this, in bytes (default 1 GiB; 0 turns the check off).
    #[serde(default = "default_min_free_bytes")]
    pub min_free_bytes: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            max_undelivered_age: default_max_undelivered_age(),
            failed_window: default_failed_window(),
            peer_failures: default_peer_failures(),
            min_free_bytes: default_min_free_bytes(),
        }
    }
}

fn default_max_undelivered_age() -> Span {
    Span(Duration::from_secs(3600))
}
fn default_failed_window() -> Span {
    Span(Duration::from_secs(24 * 3600))
}
fn default_peer_failures() -> u32 {
    3
}
fn default_min_free_bytes() -> u64 {
    1 << 30
}

/// `[log]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    #[serde(default = "default_log_format")]
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `konvert_gateway=debug,info`.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: default_log_format(),
            level: default_log_level(),
        }
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn default_log_format() -> LogFormat {
    LogFormat::Text
}
fn default_log_level() -> String {
    "info".into()
}

/// `[[signatories]]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatoryConfig {
    /// Short id applications name when they submit (`"signatory": "ivanov"`).
    pub id: String,
    /// The private key (PKCS#8 PEM, mode 0600).
    pub key: PathBuf,
}

/// `[[peers]]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The peer's authority.
    pub authority: AuthorityId,
    /// Addresses tried in turn (`host:port`).
    pub addresses: Vec<String>,
    /// Agreements under which messages are exchanged with this peer.
    pub agreements: Vec<AgreementId>,
    /// The peer's authority card (keys, TLS pin, signatories).
    pub card: PathBuf,
}

/// A configuration with every file it names loaded and checked.
#[derive(Debug)]
pub struct Loaded {
    /// The file it came from.
    pub path: PathBuf,
    /// Its contents, paths resolved.
    pub config: Config,
    /// The highest loaded version of each agreement's profile (its dates in
    /// force are the agreement's: Art. 17).
    pub profiles: BTreeMap<AgreementId, Profile>,
    /// Every loaded version of every agreement (Art. 16): a case keeps the
    /// version it was opened under.
    pub versions: konvert_envelope::profile::ProfileVersions,
    /// Peer cards by authority.
    pub cards: BTreeMap<AuthorityId, AuthorityCard>,
}

impl Config {
    /// Parses configuration text; `path` is named in errors and relative paths
    /// resolve against its directory; `${CREDENTIALS_DIRECTORY}` in key paths
    /// resolves against `$CREDENTIALS_DIRECTORY` when that is set.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let credentials = std::env::var_os(CREDENTIALS_VAR).filter(|d| !d.is_empty());
        Self::parse_with_credentials(text, path, credentials.as_deref().map(Path::new))
    }

    /// Like [`Config::parse`], with the credentials directory given instead of
    /// taken from the environment (`None`: leave such paths as written).
    pub fn parse_with_credentials(
        text: &str,
        path: &Path,
        credentials: Option<&Path>,
    ) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((0, 0), |s| line_col(text, s.start));
            ConfigError::Syntax {
                path: path.to_path_buf(),
                line,
                column,
                reason: e.message().to_string(),
            }
        })?;
        Self::resolve(&mut cfg, path, credentials)?;
        cfg.check(path)?;
        Ok(cfg)
    }

    /// Resolves relative paths against the configuration file's directory and
    /// `${CREDENTIALS_DIRECTORY}` in key paths against `credentials` (left as
    /// written when it is `None`).
    fn resolve(cfg: &mut Config, path: &Path, credentials: Option<&Path>) -> Result<(), ConfigError> {
        let base = files::parent_dir(path);
        let invalid = |key: String, reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            reason,
        };
        // Paths that may name the credentials directory: the keys.
        let key_path = |p: &mut PathBuf, key: String| -> Result<(), ConfigError> {
            match credential_suffix(p) {
                Some(Err(reason)) => Err(invalid(key, reason)),
                Some(Ok(rest)) => {
                    if let Some(dir) = credentials {
                        *p = if rest.as_os_str().is_empty() {
                            dir.to_path_buf()
                        } else {
                            dir.join(rest)
                        };
                    }
                    Ok(())
                }
                None => {
                    if p.is_relative() {
                        *p = base.join(&*p);
                    }
                    Ok(())
                }
            }
        };
        key_path(&mut cfg.keys_dir, "keys_dir".into())?;
        if let Some(p) = cfg.store.master_key_file.as_mut() {
            key_path(p, "store.master_key_file".into())?;
        }
        for (i, s) in cfg.signatories.iter_mut().enumerate() {
            key_path(&mut s.key, format!("signatories[{i}].key"))?;
        }
        // Everything else: relative to the configuration file; no credentials.
        let plain = |p: &mut PathBuf, key: String| -> Result<(), ConfigError> {
            if credential_suffix(p).is_some() {
                return Err(invalid(
                    key,
                    format!(
                        "{CREDENTIALS_PLACEHOLDER} is only for keys_dir, store.master_key_file and signatories[].key"
                    ),
                ));
            }
            if p.is_relative() {
                *p = base.join(&*p);
            }
            Ok(())
        };
        plain(&mut cfg.data_dir, "data_dir".into())?;
        plain(&mut cfg.api.socket, "api.socket".into())?;
        if let Some(p) = cfg.store.audit_head_log.as_mut() {
            plain(p, "store.audit_head_log".into())?;
        }
        for (i, p) in cfg.profiles.iter_mut().enumerate() {
            plain(p, format!("profiles[{i}]"))?;
        }
        for (i, p) in cfg.peers.iter_mut().enumerate() {
            plain(&mut p.card, format!("peers[{i}].card"))?;
        }
        Ok(())
    }

    /// The keys whose paths still start with `${CREDENTIALS_DIRECTORY}`
    /// because `$CREDENTIALS_DIRECTORY` was not set when the file was parsed.
    /// `konvertd` refuses to start while any remain; other tools that only
    /// need the API socket, peers or profiles do not care.
    pub fn unresolved_credentials(&self) -> Vec<String> {
        let mut out = Vec::new();
        if credential_suffix(&self.keys_dir).is_some() {
            out.push("keys_dir".to_string());
        }
        if self
            .store
            .master_key_file
            .as_deref()
            .is_some_and(|p| credential_suffix(p).is_some())
        {
            out.push("store.master_key_file".to_string());
        }
        for (i, s) in self.signatories.iter().enumerate() {
            if credential_suffix(&s.key).is_some() {
                out.push(format!("signatories[{i}].key"));
            }
        }
        out
    }

    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, reason: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            reason: reason.to_string(),
        };
        if self.profiles.is_empty() {
            return Err(invalid(
                "profiles".into(),
                "at least one agreement profile is needed",
            ));
        }
        match (&self.store.master_key_file, &self.store.master_key_credential) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "store".into(),
                    "set master_key_file or master_key_credential, not both",
                ))
            }
            (None, None) => {
                return Err(invalid(
                    "store.master_key_file".into(),
                    "a master key is needed (master_key_file or master_key_credential)",
                ))
            }
            _ => {}
        }
        if self.quic.max_envelope_bytes < 4096 {
            return Err(invalid("quic.max_envelope_bytes".into(), "must be at least 4096"));
        }
        if self.quic.max_streams_per_connection == 0 || self.quic.max_connections_per_peer == 0 {
            return Err(invalid(
                "quic".into(),
                "stream and connection limits must be at least 1",
            ));
        }
        if self.api.upload_max_age.0 < Duration::from_secs(1) {
            return Err(invalid("api.upload_max_age".into(), "must be at least 1s"));
        }
        if let Some(a) = self.metrics.listen {
            if !a.ip().is_loopback() {
                return Err(invalid(
                    "metrics.listen".into(),
                    "must be a loopback address such as 127.0.0.1:9464 or [::1]:9464: the metrics \
                     endpoint has no authentication (put a proxy with authentication in front of it \
                     to scrape it from another host)",
                ));
            }
        }
        let (lo, hi) = ENDED_SIGNER_GRACE_RANGE;
        if self.signatures.ended_signer_grace.0 < lo || self.signatures.ended_signer_grace.0 > hi {
            return Err(invalid(
                "signatures.ended_signer_grace".into(),
                "must be between 5m (the clock skew tolerated between gateways) and 30d \
                 (a revoked signatory could backdate signatures for that long)",
            ));
        }
        if self.health.peer_failures == 0 {
            return Err(invalid("health.peer_failures".into(), "must be at least 1"));
        }
        if self.outbox.max_attempts == 0 {
            return Err(invalid("outbox.max_attempts".into(), "must be at least 1"));
        }
        if self.outbox.initial_backoff > self.outbox.max_backoff {
            return Err(invalid(
                "outbox.initial_backoff".into(),
                "is larger than outbox.max_backoff",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, s) in self.signatories.iter().enumerate() {
            if s.id.is_empty() || s.id.len() > 64 || !seen.insert(s.id.clone()) {
                return Err(invalid(
                    format!("signatories[{i}].id"),
                    "must be 1-64 characters and unique",
                ));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, p) in self.peers.iter().enumerate() {
            if p.authority == self.authority {
                return Err(invalid(
                    format!("peers[{i}].authority"),
                    "is this gateway's own authority",
                ));
            }
            if !seen.insert(p.authority.clone()) {
                return Err(invalid(format!("peers[{i}].authority"), "appears twice"));
            }
            if p.addresses.is_empty() {
                return Err(invalid(
                    format!("peers[{i}].addresses"),
                    "at least one address is needed",
                ));
            }
            for (j, a) in p.addresses.iter().enumerate() {
                if a.len() > 255
                    || a.rsplit_once(':')
                        .and_then(|(_, port)| port.parse::<u16>().ok())
                        .is_none()
                {
                    return Err(invalid(
                        format!("peers[{i}].addresses[{j}]"),
                        "expected host:port",
                    ));
                }
            }
            if p.agreements.is_empty() {
                return Err(invalid(
                    format!("peers[{i}].agreements"),
                    "at least one agreement is needed",
                ));
            }
        }
        Ok(())
    }

    /// The configuration as TOML text.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(|e| ConfigError::Invalid {
            path: PathBuf::new(),
            key: String::new(),
            reason: e.to_string(),
        })
    }
}

impl Loaded {
    /// Reads `path` and every profile and peer card it names.
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        let text = files::read_text(path, MAX_CONFIG)?;
        let config = Config::parse(&text, path)?;
        let mut profiles: BTreeMap<AgreementId, Profile> = BTreeMap::new();
        let mut versions = konvert_envelope::profile::ProfileVersions::new();
        for (i, p) in config.profiles.iter().enumerate() {
            let text = files::read_text(p, MAX_CONFIG)?;
            let profile = Profile::from_toml_str(&text, &p.display().to_string()).map_err(|e| {
                ConfigError::Invalid {
                    path: path.to_path_buf(),
                    key: format!("profiles[{i}]"),
                    reason: e.to_string(),
                }
            })?;
            // Several versions of one agreement (Art. 16), each once.
            versions
                .insert(profile.clone())
                .map_err(|e| ConfigError::Invalid {
                    path: path.to_path_buf(),
                    key: format!("profiles[{i}]"),
                    reason: e.to_string(),
                })?;
            let newer = profiles
                .get(&profile.id)
                .is_none_or(|known| known.version() < profile.version());
            if newer {
                profiles.insert(profile.id.clone(), profile);
            }
        }
        let mut cards = BTreeMap::new();
        for (i, peer) in config.peers.iter().enumerate() {
            let text = files::read_text(&peer.card, MAX_CONFIG)?;
            let card = AuthorityCard::from_toml_str(&text).map_err(|e| ConfigError::Invalid {
                path: path.to_path_buf(),
                key: format!("peers[{i}].card"),
                reason: format!("{}: {e}", peer.card.display()),
            })?;
            if card.authority != peer.authority {
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    key: format!("peers[{i}].card"),
                    reason: format!("the card is for {}, not {}", card.authority, peer.authority),
                });
            }
            if card.tls_pin.is_none() {
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    key: format!("peers[{i}].card"),
                    reason: "the card has no tls_pin (make it with `konvertctl init`)".into(),
                });
            }
            for a in &peer.agreements {
                if !profiles.contains_key(a) {
                    return Err(ConfigError::Invalid {
                        path: path.to_path_buf(),
                        key: format!("peers[{i}].agreements"),
                        reason: format!("no profile is configured for agreement {a}"),
                    });
                }
            }
            cards.insert(card.authority.clone(), card);
        }
        Ok(Loaded {
            path: path.to_path_buf(),
            config,
            profiles,
            versions,
            cards,
        })
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
authority = "kz.mvd"
keys_dir = "keys"
data_dir = "data"
profiles = ["profiles/kz-by-2019.toml"]

[quic]
listen = "127.0.0.1:7443"

[api]
socket = "api.sock"
groups = ["konvert"]

[store]
master_key_file = "keys/master.key"
retention = { "kz-by-2019" = { request = "90d" } }

[outbox]
initial_backoff = "500ms"

[[peers]]
authority = "by.mvd"
addresses = ["127.0.0.1:7444"]
agreements = ["kz-by-2019"]
card = "peers/by.mvd.toml"
"#;

    #[test]
    fn parses_and_resolves_paths() {
        let cfg = Config::parse(GOOD, Path::new("/etc/konvert/konvert.toml")).unwrap();
        assert_eq!(cfg.keys_dir, Path::new("/etc/konvert/keys"));
        assert_eq!(cfg.peers[0].card, Path::new("/etc/konvert/peers/by.mvd.toml"));
        assert_eq!(cfg.outbox.initial_backoff, Span(Duration::from_millis(500)));
        assert_eq!(
            cfg.store.retention["kz-by-2019"]["request"],
            Span(Duration::from_secs(90 * 86400))
        );
        assert_eq!(cfg.quic.max_connections_per_peer, 4);
        assert_eq!(cfg.api.upload_max_age, Span(Duration::from_secs(86_400)));
        assert_eq!(cfg.health.peer_failures, 3);
        assert_eq!(cfg.health.max_undelivered_age, Span(Duration::from_secs(3600)));
    }

    #[test]
    fn upload_age_and_health_thresholds_are_read_and_checked() {
        let text = GOOD.replace(
            "groups = [\"konvert\"]",
            "groups = [\"konvert\"]\nupload_max_age = \"2h\"",
        ) + "\n[health]\nmax_undelivered_age = \"10m\"\nmin_free_bytes = 0\n";
        let cfg = Config::parse(&text, Path::new("k.toml")).unwrap();
        assert_eq!(cfg.api.upload_max_age, Span(Duration::from_secs(7200)));
        assert_eq!(cfg.health.max_undelivered_age, Span(Duration::from_secs(600)));
        assert_eq!(cfg.health.min_free_bytes, 0);
        let bad = GOOD.replace(
            "groups = [\"konvert\"]",
            "groups = [\"konvert\"]\nupload_max_age = \"0s\"",
        );
        let err = Config::parse(&bad, Path::new("k.toml")).unwrap_err().to_string();
        assert!(err.contains("api.upload_max_age"), "{err}");
        let bad = GOOD.to_owned() + "\n[health]\npeer_failures = 0\n";
        let err = Config::parse(&bad, Path::new("k.toml")).unwrap_err().to_string();
        assert!(err.contains("health.peer_failures"), "{err}");
    }

    #[test]
    fn the_grace_of_ended_signatories_defaults_to_a_day_and_is_bounded() {
        let cfg = Config::parse(GOOD, Path::new("k.toml")).unwrap();
        assert_eq!(
            cfg.signatures.ended_signer_grace,
            Span(Duration::from_secs(86_400))
        );
        // Defaults are not written out (konvertctl init's file stays as it was).
        assert!(!cfg.to_toml().unwrap().contains("[signatures]"));
        let cfg = Config::parse(
            &(GOOD.to_owned() + "\n[signatures]\nended_signer_grace = \"2h\"\n"),
            Path::new("k.toml"),
        )
        .unwrap();
        assert_eq!(cfg.signatures.ended_signer_grace, Span(Duration::from_secs(7200)));
        assert!(cfg.to_toml().unwrap().contains("ended_signer_grace = \"2h\""));
        for bad in ["0s", "4m", "31d"] {
            let text = GOOD.to_owned() + &format!("\n[signatures]\nended_signer_grace = \"{bad}\"\n");
            let err = Config::parse(&text, Path::new("k.toml")).unwrap_err().to_string();
            assert!(err.contains("signatures.ended_signer_grace"), "{bad}: {err}");
        }
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let bad = GOOD.replace("groups = [\"konvert\"]", "groups = [\"konvert\"]\ngroupz = 1");
        let err = Config::parse(&bad, Path::new("k.toml")).unwrap_err().to_string();
        assert!(err.starts_with("k.toml:13:"), "{err}");
        assert!(err.contains("groupz"), "{err}");
    }

    const CREDS: &str = r#"
authority = "kz.mvd"
keys_dir = "${CREDENTIALS_DIRECTORY}"
data_dir = "/var/lib/konvert"
profiles = ["profiles/kz-by-2019.toml"]

[quic]
listen = "127.0.0.1:7443"

[api]
socket = "/run/konvert/api.sock"

[store]
master_key_file = "${CREDENTIALS_DIRECTORY}/master.key"

[[signatories]]
id = "ivanov"
key = "${CREDENTIALS_DIRECTORY}/signatory_ivanov.key.pem"

[[peers]]
authority = "by.mvd"
addresses = ["127.0.0.1:7444"]
agreements = ["kz-by-2019"]
card = "peers/by.mvd.toml"
"#;

    #[test]
    fn key_paths_resolve_against_the_credentials_directory() {
        let text = CREDS.to_string();
        let creds = Path::new("/run/credentials/konvertd.service");
        let cfg = Config::parse_with_credentials(&text, Path::new("/etc/konvert/konvert.toml"), Some(creds))
            .unwrap();
        assert_eq!(cfg.keys_dir, creds);
        assert_eq!(
            cfg.store.master_key_file.as_deref(),
            Some(creds.join("master.key").as_path())
        );
        assert_eq!(cfg.signatories[0].key, creds.join("signatory_ivanov.key.pem"));
        assert!(cfg.unresolved_credentials().is_empty());
        // Other paths are not affected.
        assert_eq!(
            cfg.profiles[0],
            Path::new("/etc/konvert/profiles/kz-by-2019.toml")
        );
    }

    #[test]
    fn without_the_variable_key_paths_stay_and_are_named() {
        let text = CREDS.to_string();
        let cfg =
            Config::parse_with_credentials(&text, Path::new("/etc/konvert/konvert.toml"), None).unwrap();
        assert_eq!(cfg.keys_dir, Path::new("${CREDENTIALS_DIRECTORY}"));
        assert_eq!(
            cfg.unresolved_credentials(),
            ["keys_dir", "store.master_key_file", "signatories[0].key"]
        );
        // The API socket, peers and profiles are still usable (konvertctl).
        assert_eq!(cfg.api.socket, Path::new("/run/konvert/api.sock"));
        assert_eq!(cfg.peers[0].card, Path::new("/etc/konvert/peers/by.mvd.toml"));
    }

    #[test]
    fn bad_credential_paths_are_refused() {
        for (bad, key) in [
            ("${CREDENTIALS_DIRECTORY}/../master.key", "store.master_key_file"),
            ("${CREDENTIALS_DIRECTORY}master.key", "store.master_key_file"),
            ("${CREDENTIALS_DIRECTORY}/", "store.master_key_file"),
        ] {
            let text = CREDS.replace("${CREDENTIALS_DIRECTORY}/master.key", bad);
            let err = Config::parse_with_credentials(&text, Path::new("k.toml"), Some(Path::new("/c")))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{bad}: {err}");
        }
        let text = GOOD.replace(
            "data_dir = \"data\"",
            "data_dir = \"${CREDENTIALS_DIRECTORY}/data\"",
        );
        let err = Config::parse_with_credentials(&text, Path::new("k.toml"), Some(Path::new("/c")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("data_dir"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        for (from, to, key) in [
            ("127.0.0.1:7443", "not an address", "k.toml:8:"),
            ("\"500ms\"", "\"soon\"", "soon"),
            ("[\"127.0.0.1:7444\"]", "[\"nohost\"]", "peers[0].addresses[0]"),
            (
                "authority = \"by.mvd\"",
                "authority = \"kz.mvd\"",
                "peers[0].authority",
            ),
            (
                "master_key_file = \"keys/master.key\"",
                "",
                "store.master_key_file",
            ),
        ] {
            let bad = GOOD.replace(from, to);
            let err = Config::parse(&bad, Path::new("k.toml")).unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }
}
