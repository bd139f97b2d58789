//! JSON documents of the operator's routes: the audit trail and its
//! verification, a message's story, the retention report, early
//! destruction of a case, and the node's status (`docs/API.md`,
//! "Operating a gateway"). Everything here is metadata: ids, times, peers,
//! counts, codes and digests, never message content or personal data.

use konvert_envelope::model::{AuthorityId, Id, Timestamp};
use serde::{Deserialize, Serialize};

use super::types::{HealthStatus, PeerView};

/// One event of the audit trail (`GET /v1/audit`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntryView {
    /// Its sequence number in the chain (0 = the first event ever written).
    pub seq: u64,
    /// When it happened.
    pub at: Timestamp,
    /// What happened: `accepted`, `sealed`, `sent`, `delivered`, `failed`,
    /// `received`, `receipt_issued`, `acknowledged`, `case_opened`,
    /// `case_state_changed`, `destroyed`, `purged`, `key_created`,
    /// `key_destroyed`, `config_changed`, `opened`, `audit_pruned`,
    /// `master_key_rotated` (an unknown kind from a newer store: `other`).
    pub kind: String,
    /// The message concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Id>,
    /// The case concerned (the id of the request that opened it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case: Option<Id>,
    /// The peer concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// A short code (outcome, reason, `expired`, `early`, `expiry-bucket`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// A count (records destroyed, the key hour of a destroyed bucket key, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// A digest in hex (payload or receipt SHA-256, SHA-256 of a list of destroyed ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Hash of the block holding the event (hex).
    pub block: String,
}

/// Where and how the audit chain is broken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditBreakView {
    /// Sequence number of the first event of the first bad block.
    pub seq: u64,
    /// `modified`, `deleted`, `inserted`, `reordered`, `anchor` or `truncated`.
    pub kind: String,
    /// What that means, for a person.
    pub meaning: String,
}

/// The check of the chain against the configured audit head log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadLogCheck {
    /// The last head in the log (`seq`, hash in hex), if the log has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Its hash (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// Whether the chain still holds that head.
    pub ok: bool,
    /// The break found against the log, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broken: Option<AuditBreakView>,
    /// The log could not be read (the error, without content).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The result of `GET /v1/audit/verify`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditVerification {
    /// The chain verifies (and holds the head log's last head, if a log is configured).
    pub ok: bool,
    /// Events checked.
    pub entries: u64,
    /// Sequence number of the first event kept (0 unless pruned).
    pub first: u64,
    /// Sequence number after the last event (events ever written).
    pub end: u64,
    /// Hash of the last block (hex); record it elsewhere to detect truncation.
    pub head: String,
    /// Whether the front of the chain was pruned after the audit retention.
    pub pruned: bool,
    /// Where and how the chain itself is broken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broken: Option<AuditBreakView>,
    /// The check against the audit head log; absent when none is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_log: Option<HeadLogCheck>,
}

/// One step of a message's story.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoryStep {
    /// When.
    pub at: Timestamp,
    /// `accepted`, `sealed`, `sent`, `delivered`, `failed`, `received`,
    /// `receipt_issued`, `acknowledged`, `key_destroyed`, `destroyed`, `purged`.
    pub step: String,
    /// The audit event's sequence number; absent for a step known only
    /// from the message's metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The event's code (outcome, reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The event's digest (hex): payload, receipt, or destroyed ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// How the step is tied to the message: `message` (the event names it),
    /// `case` (a destruction of its case), `key_hour` (the destruction of
    /// its expiry hour's key), `metadata` (its record's times only).
    pub link: String,
}

/// `GET /v1/messages/{id}/story`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Story {
    /// The message.
    pub id: Id,
    /// `outbound` or `inbound`.
    pub direction: super::types::Direction,
    /// The peer.
    pub peer: AuthorityId,
    /// Its kind.
    pub kind: String,
    /// Its case, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case: Option<Id>,
    /// Its state now (store state code).
    pub state: String,
    /// When its retention ends.
    pub expires: Timestamp,
    /// When it was destroyed (from its record: the end of its key hour, or
    /// its case's destruction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destroyed: Option<Timestamp>,
    /// The steps, oldest first.
    pub steps: Vec<StoryStep>,
    /// Audit events read to build it (the cost; see `docs/API.md`).
    pub events_read: u64,
    /// Whether every window was read to its end; `false` when a window hit
    /// its bound (a very busy second) and a step may be missing.
    pub complete: bool,
    /// What the story cannot show, in words (e.g. why an expiry
    /// destruction is tied by key hour and not by id).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// What `GET /v1/retention` reports (its query parameters).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionQuery {
    /// Periods of a UTC day instead of an hour.
    pub by_day: bool,
    /// At most this many destruction events, newest first.
    pub events: u32,
    /// List message ids: those of each upcoming bucket (at most
    /// [`RETENTION_BUCKET_IDS`] each) and those each destruction event recorded.
    pub ids: bool,
    /// Only the upcoming bucket holding this time (implies `ids`).
    pub bucket: Option<Timestamp>,
}

/// Most message ids listed per upcoming bucket.
pub const RETENTION_BUCKET_IDS: usize = 10_000;

/// A message named by a retention report: its direction and id (nothing else).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRef {
    /// `outbound` or `inbound`.
    pub direction: super::types::Direction,
    /// The message id.
    pub id: Id,
}

/// Messages whose retention ends in one period (`GET /v1/retention`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionBucket {
    /// Start of the period (an hour or a UTC day).
    pub from: Timestamp,
    /// Outbound messages expiring then.
    pub outbound: u64,
    /// Inbound messages expiring then.
    pub inbound: u64,
    /// With `ids=true`: the messages, soonest expiry first (at most
    /// [`RETENTION_BUCKET_IDS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<MessageRef>>,
    /// With `ids=true`: whether `ids` lists every message counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids_complete: Option<bool>,
}

/// Destruction events of the audit trail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestroyedEvent {
    /// Sequence number of the event.
    pub seq: u64,
    /// When.
    pub at: Timestamp,
    /// `expired` or `early` (a case purge).
    pub reason: String,
    /// The case, for an early destruction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case: Option<Id>,
    /// The peer, when the event names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// Messages destroyed.
    pub count: u64,
    /// SHA-256 of the list of destroyed ids (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids_digest: Option<String>,
    /// Whether the event records the destroyed ids (events written before
    /// the store recorded them carry only `count` and `ids_digest`).
    pub ids_recorded: bool,
    /// With `ids=true`: the destroyed messages the event records (at most
    /// 512 per event; a larger destruction is several events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<MessageRef>>,
}

/// What the sweeper has done since the daemon started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweeperTotals {
    /// Sweeps run.
    pub sweeps: u64,
    /// Messages destroyed.
    pub destroyed: u64,
    /// Metadata records purged after the audit retention.
    pub purged: u64,
    /// Data keys destroyed.
    pub keys_destroyed: u64,
    /// Audit entries pruned.
    pub audit_pruned: u64,
    /// Sweeps that failed.
    pub failures: u64,
    /// When the last sweep finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sweep: Option<Timestamp>,
}

/// `GET /v1/retention`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionReport {
    /// Now (the node's clock).
    pub now: Timestamp,
    /// `hour` or `day`.
    pub period: String,
    /// What will be destroyed when, soonest first (live messages only).
    pub upcoming: Vec<RetentionBucket>,
    /// Live messages counted.
    pub live: u64,
    /// Whether every live message was counted (else the first 1,000,000 by state and id).
    pub live_complete: bool,
    /// Expiry hours holding a data key now.
    pub key_hours: u64,
    /// Cases holding a key now.
    pub case_keys: u64,
    /// What the sweeper did since the daemon started.
    pub sweeper: SweeperTotals,
    /// Destruction events in the audit trail, newest first (at most `events`).
    pub destroyed: Vec<DestroyedEvent>,
    /// Audit events read to find them.
    pub events_read: u64,
    /// Whether the whole audit trail was read (else only its newest part).
    pub complete: bool,
}

/// `POST /v1/cases/{id}/purge`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CasePurged {
    /// The case.
    pub case: Id,
    /// Messages destroyed by this call (0 if the case was destroyed before).
    pub destroyed: u64,
}

/// A key or certificate file of the node and its age.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyFileView {
    /// `node_signing_key`, `age_identity`, `tls_key`, `tls_certificate`.
    pub what: String,
    /// File name in the keys directory.
    pub file: String,
    /// When the file was last written (its age).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified: Option<Timestamp>,
    /// Age in days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_days: Option<u64>,
    /// For the certificate: the end of its validity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Timestamp>,
    /// The file cannot be read or parsed (why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An overdue request case (no answer by its deadline).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverdueCase {
    /// The case.
    pub case: Id,
    /// The peer.
    pub peer: String,
    /// Its state code.
    pub state: String,
    /// The deadline.
    pub deadline: Timestamp,
}

/// `GET /v1/status`: the figures an operator watches (also the metrics).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// This gateway.
    pub authority: AuthorityId,
    /// The daemon's version.
    pub version: String,
    /// Now (the node's clock).
    pub now: Timestamp,
    /// Seconds since the daemon started.
    pub uptime_seconds: u64,
    /// `ok`, `degraded` or `unavailable` (as `GET /v1/health`).
    pub health: HealthStatus,
    /// Peers and their queues.
    pub peers: Vec<PeerView>,
    /// Outbound messages not yet delivered (queued or sent, waiting for a receipt).
    pub outbox_undelivered: u64,
    /// Outbound messages that failed for good.
    pub outbox_failed: u64,
    /// Received messages not acknowledged by the application.
    pub inbox_unacknowledged: u64,
    /// Request cases past their deadline (at most 1000 counted).
    pub cases_overdue: u64,
    /// The first of them, by deadline (at most 20).
    pub overdue: Vec<OverdueCase>,
    /// Bytes the store's data directory takes on disk.
    pub store_bytes: u64,
    /// Free bytes on its file system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_bytes: Option<u64>,
    /// The node's keys and TLS certificate.
    pub keys: Vec<KeyFileView>,
    /// The retention sweeper.
    pub sweeper: SweeperTotals,
    /// Uploads waiting for a submission.
    #[serde(default)]
    pub uploads: UploadsView,
    /// Whether a count hit its scan bound (100,000) and is a lower bound.
    pub truncated: bool,
}

/// Uploads (`POST /v1/uploads`) no submission has used yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadsView {
    /// Held in memory (at most 1 MiB each; gone after a restart).
    pub in_memory: u64,
    /// Bytes they hold.
    pub in_memory_bytes: u64,
    /// In files under `DATA_DIR/uploads` (at most 100,000 directory entries
    /// read; beyond that the status is `truncated`).
    pub files: u64,
    /// Bytes the files hold.
    pub file_bytes: u64,
}
