//! The JSON documents of the local API (requests and responses).
//!
//! Ids are UUID text, times RFC 3339 UTC text, digests 64 lowercase hex
//! digits: the JSON forms of [`Id`], [`Timestamp`] and [`Digest`] from the
//! message model. Every document here describes metadata (ids, peers, states,
//! times, sizes) except [`InboxMessage::message`], which is the decrypted
//! message itself. `docs/api/openapi.yaml` is the reference for integrators
//! and is kept in step with these types.

use std::fmt;
use std::str::FromStr;

use konvert_envelope::model::{AgreementId, AuthorityId, Digest, Id, Message, SignatoryId, Timestamp};
use konvert_envelope::receipt::Outcome;
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// Who is calling: the peer credentials of the Unix socket connection
/// (`SO_PEERCRED`), checked against the [`super::AccessPolicy`] before any
/// request is served. Passed to every service method so that the daemon can
/// record who read or sent what in the audit trail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    /// User id of the connecting process.
    pub uid: u32,
    /// Primary group id of the connecting process.
    pub gid: u32,
    /// Process id, when the kernel reports one.
    pub pid: Option<i32>,
}

/// `POST /v1/messages`: a message to sign, seal and queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// The message in its unsealed JSON form (docs/MODEL.md). Attachments
    /// name an earlier upload as `"file": "upload:<id>"`; the id in the header
    /// is made by the application (UUIDv7) and makes submission idempotent:
    /// the same message submitted again returns the first submission, a
    /// different message with a used id is a `conflict`.
    pub message: Message,
    /// The authorised signatory (Art. 9.3) whose key signs the message.
    pub signatory: SignatoryId,
    /// Ids of received messages whose data this message passes on to its
    /// recipient (Art. 11.3): each needs the providing party's consent on
    /// record, unless the recipient is of the provider's own state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<Id>,
    /// The purpose of passing that data on, when the message states none
    /// itself (requests and responses state theirs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
}

/// Where a message is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageState {
    /// Outbound: signed, sealed and stored; waiting to be sent.
    Queued,
    /// Outbound: sent, no receipt yet.
    Sent,
    /// Outbound: the peer's signed receipt says it was accepted.
    Delivered,
    /// Outbound: the peer's signed receipt says it was rejected (see the receipt's code).
    Rejected,
    /// Outbound: delivery failed for good without a receipt.
    Failed,
    /// Inbound: received, not yet acknowledged by an application.
    New,
    /// Inbound: acknowledged by an application.
    Acknowledged,
}

impl MessageState {
    /// The stable snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Rejected => "rejected",
            Self::Failed => "failed",
            Self::New => "new",
            Self::Acknowledged => "acknowledged",
        }
    }
}

/// Outbound (sent by this gateway) or inbound (received from a peer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Handed in by a local application, delivered to a peer.
    Outbound,
    /// Received from a peer, handed to local applications.
    Inbound,
}

/// Answer to `POST /v1/messages` (202 Accepted).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Submitted {
    /// The message id (from the message header).
    pub id: Id,
    /// The envelope id, once sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envelope_id: Option<Id>,
    /// Usually `queued`; a repeated submission reports the current state.
    pub state: MessageState,
}

/// Answer to `POST /v1/uploads` (201 Created): an attachment stored for a later message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upload {
    /// The upload id; a message refers to it as `"file": "upload:<id>"`.
    pub id: Id,
    /// The media type given as `Content-Type` (type/subtype, lowercase, no parameters).
    pub media_type: String,
    /// Length in bytes.
    pub length: u64,
    /// SHA-256 of the bytes.
    pub sha256: Digest,
    /// When the upload is discarded if no message uses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<Timestamp>,
}

impl Upload {
    /// The value for an attachment's `file` field: `upload:<id>`.
    pub fn file_ref(&self) -> String {
        format!("{UPLOAD_REF_PREFIX}{}", self.id)
    }
}

/// Prefix of an attachment's `file` that names an upload.
pub const UPLOAD_REF_PREFIX: &str = "upload:";

/// The times in a message's life that have happened.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageTimes {
    /// Outbound: accepted from the application. Inbound: received from the peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<Timestamp>,
    /// Outbound: last sent to the peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent: Option<Timestamp>,
    /// Time of the delivery receipt (outbound: received; inbound: issued).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Timestamp>,
    /// Outbound: when the gateway stored the peer's receipt (`delivered`
    /// or `rejected`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered: Option<Timestamp>,
    /// Inbound: first acknowledged by an application.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged: Option<Timestamp>,
    /// When the retention period ends and the message is destroyed (Art. 11.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<Timestamp>,
    /// When it was destroyed, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destroyed: Option<Timestamp>,
}

/// `GET /v1/messages/{id}`: a message's state and its receipt, no content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageStatus {
    /// The message id.
    pub id: Id,
    /// Outbound or inbound.
    pub direction: Direction,
    /// The other authority (recipient of an outbound, sender of an inbound message).
    pub peer: AuthorityId,
    /// The agreement.
    pub agreement: AgreementId,
    /// The message kind (`request`, `response`, ...).
    pub kind: String,
    /// The envelope id, once sealed or received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envelope_id: Option<Id>,
    /// The current state.
    pub state: MessageState,
    /// When things happened.
    pub times: MessageTimes,
    /// Outbound: delivery attempts so far (docs/API.md says exactly what is
    /// counted, and what survives a restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// The last failure code (`failed`), no personal data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Outbound, not yet delivered: why delivery is on hold, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<PausedReason>,
    /// The delivery receipt, once there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<ReceiptView>,
}

/// Why delivery of a queued message is on hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PausedReason {
    /// The recipient is no longer a configured peer (removed on reload).
    /// The message stays queued and is delivered if the peer is added again.
    PeerNotConfigured,
}

/// Why a listed receipt could not be verified (`verified: false`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnverifiedReason {
    /// Outbound: the receiver is no longer a configured peer, so there is no
    /// card to verify with.
    PeerNotConfigured,
    /// The signature does not verify with the current key (outbound: the
    /// peer's card, for example after a key change; inbound: this gateway's
    /// node key).
    SignatureInvalid,
    /// Inbound: the receipt was kept with the message, which was destroyed
    /// at the end of its retention period; what is shown comes from the
    /// metadata.
    Destroyed,
    /// The stored record could not be read; the gateway log has details.
    Unreadable,
}

/// Outcome of a receipt, for filtering.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptState {
    /// The receiver stored the envelope.
    Accepted,
    /// The receiver refused it (with a code).
    Rejected,
}

impl FromStr for ReceiptState {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "accepted" => Ok(Self::Accepted),
            "rejected" => Ok(Self::Rejected),
            _ => Err(()),
        }
    }
}

/// A signed delivery receipt, decoded (docs/PROTOCOL.md §5).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptView {
    /// The envelope the receipt is for; also the receipt's id in `/v1/receipts/{id}`.
    pub envelope_id: Id,
    /// The message in that envelope, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<Id>,
    /// `outbound`: a receipt this gateway received for a message it sent;
    /// `inbound`: a receipt it issued for a message it received.
    pub direction: Direction,
    /// The other authority.
    pub peer: AuthorityId,
    /// The receiving authority, which signed the receipt.
    pub receiver: AuthorityId,
    /// The sending authority.
    pub sender: AuthorityId,
    /// When the receiver decided (from the signed receipt; when it cannot be
    /// verified, when the gateway stored it).
    pub time: Timestamp,
    /// `{"status": "accepted"}` or `{"status": "rejected", "code": "..."}`.
    pub outcome: Outcome,
    /// The envelope digest the receipt commits to; absent when it is not
    /// verified and the gateway no longer holds the envelope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envelope_digest: Option<Digest>,
    /// Whether the gateway verified the signature: outbound with the
    /// receiver's card, inbound with its own node key.
    pub verified: bool,
    /// Why not, when `verified` is false. The other fields then come from
    /// the gateway's own records, not from the signed receipt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unverified_reason: Option<UnverifiedReason>,
}

/// `GET /v1/receipts` query, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiptFilter {
    /// Only receipts exchanged with this authority.
    pub peer: Option<AuthorityId>,
    /// Only receipts of outbound messages (received from peers) or of
    /// inbound messages (issued by this gateway).
    pub direction: Option<Direction>,
    /// Only accepted or only rejected ones.
    pub state: Option<ReceiptState>,
    /// Only receipts with `time` at or after this.
    pub since: Option<Timestamp>,
    /// Only receipts with `time` before this.
    pub until: Option<Timestamp>,
    /// At most this many (1..=1000).
    pub limit: u32,
    /// Continue after this position (the `next` of the previous page; opaque).
    pub after: Option<Cursor>,
}

/// An opaque position in a list (the inbox, in order of arrival; receipts).
/// Made by the service; 1 to 128 characters of `A-Z a-z 0-9 - . _ ~`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor(String);

impl Cursor {
    /// Longest cursor.
    pub const MAX_LEN: usize = 128;
    /// Checks a cursor's shape.
    pub fn new(s: impl Into<String>) -> Result<Self, InvalidCursor> {
        let s = s.into();
        let ok = !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
        if ok {
            Ok(Self(s))
        } else {
            Err(InvalidCursor)
        }
    }
    /// The cursor as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A cursor of the wrong shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a cursor (1 to 128 characters of A-Z a-z 0-9 - . _ ~)")]
pub struct InvalidCursor;

impl FromStr for Cursor {
    type Err = InvalidCursor;
    fn from_str(s: &str) -> Result<Self, InvalidCursor> {
        Self::new(s)
    }
}
impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cursor({})", self.0)
    }
}
impl Serialize for Cursor {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}
impl<'de> Deserialize<'de> for Cursor {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(s).map_err(de::Error::custom)
    }
}

/// An inbox entry: a received message not yet acknowledged, without content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboxItem {
    /// The message id (from the sender's header); used in `/v1/inbox/{id}`.
    pub id: Id,
    /// Position in the inbox; pass it as `after` to see only later arrivals.
    pub cursor: Cursor,
    /// The envelope id.
    pub envelope_id: Id,
    /// The sending authority.
    pub from: AuthorityId,
    /// The receiving authority (this gateway's).
    pub to: AuthorityId,
    /// The agreement.
    pub agreement: AgreementId,
    /// The message kind.
    pub kind: String,
    /// For answers: the message answered (often one this gateway sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_reply_to: Option<Id>,
    /// When this gateway received it.
    pub received: Timestamp,
    /// Number of attachments.
    pub attachments: u32,
    /// For requests: the answer deadline (Art. 10.3) while the case is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due: Option<Timestamp>,
    /// The purpose the data may be used for (Art. 11.2): a request's
    /// stated purpose, or the purpose a response was provided for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// When the retention period ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<Timestamp>,
}

/// One attachment of a received message, in the message's attachment order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachmentView {
    /// Position in the message's attachment order (`n` in `/v1/inbox/{id}/attachments/{n}`).
    pub index: u32,
    /// Media type.
    pub media_type: String,
    /// Length in bytes.
    pub length: u64,
    /// SHA-256 of the bytes (verified on receipt).
    pub sha256: Digest,
}

/// `GET /v1/inbox/{id}`: a received message, decrypted and verified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboxMessage {
    /// The inbox entry.
    pub item: InboxItem,
    /// Whether an application has acknowledged it.
    pub acknowledged: bool,
    /// The message (docs/MODEL.md), attachments in sealed form.
    pub message: Message,
    /// The purpose the data may be used for (Art. 11.2): a request's stated
    /// purpose, or the purpose a response was provided for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// The signatory who signed it.
    pub signatory: SignatoryId,
    /// Its attachments.
    pub attachments: Vec<AttachmentView>,
}

/// Answer to `POST /v1/inbox/{id}/ack`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acknowledged {
    /// The message id.
    pub id: Id,
    /// Always `acknowledged`.
    pub state: MessageState,
}

/// A peer gateway and its connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerView {
    /// The peer authority.
    pub authority: AuthorityId,
    /// Configured addresses (`host:port`).
    pub addresses: Vec<String>,
    /// Whether a QUIC connection with it is open now (dialled by this
    /// gateway or by the peer).
    pub connected: bool,
    /// Last successful delivery to the peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivery: Option<Timestamp>,
    /// Messages waiting to be delivered to it.
    pub queue_depth: u64,
    /// Creation time of the oldest of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_undelivered: Option<Timestamp>,
}

/// Overall or component health.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Working.
    Ok,
    /// Working with limits (for example, no peer connected).
    Degraded,
    /// Not accepting messages (for example, the store refuses writes). `GET /v1/health` answers 503.
    Unavailable,
}

/// Why the gateway is not fully `ok`: stable, machine-readable codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthReasonCode {
    /// The store refuses writes (a failed sync poisoned it): `unavailable`.
    StoreUnavailable,
    /// A peer with undelivered messages failed that many delivery attempts
    /// in a row (connect or send; its backoff has grown past its first
    /// steps).
    PeerUnreachable,
    /// Outbound messages were marked failed (undeliverable) within the
    /// configured window.
    FailedMessages,
    /// The oldest undelivered outbound message is older than the configured
    /// threshold.
    UndeliveredTooOld,
    /// Undelivered messages wait for a peer that is no longer configured.
    MessagesPaused,
    /// Free space on the data directory's file system is below the
    /// configured minimum.
    DiskSpaceLow,
}

/// One reason for a health status other than `ok`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthReason {
    /// What it is.
    pub code: HealthReasonCode,
    /// The peer concerned, if one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<AuthorityId>,
    /// How many messages (or attempts, bytes: see `detail`), if it counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Since when, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Timestamp>,
    /// One sentence for people (ids and numbers only).
    pub detail: String,
}

/// `GET /v1/health`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// Overall: `unavailable` if the store is; else `degraded` if there is
    /// any reason; else `ok`.
    pub status: HealthStatus,
    /// Why it is not `ok` (empty when it is).
    #[serde(default)]
    pub reasons: Vec<HealthReason>,
    /// konvertd version.
    pub version: String,
    /// The store.
    pub store: HealthStatus,
    /// Peers with an open connection.
    pub peers_connected: u32,
    /// Configured peers.
    pub peers_total: u32,
    /// Outbound messages not yet delivered.
    pub queue_depth: u64,
    /// Inbound messages not yet acknowledged.
    pub inbox_depth: u64,
    /// Open QUIC connections with peers (both directions).
    #[serde(default)]
    pub connections: u32,
    /// Seconds since the daemon started.
    pub uptime_seconds: u64,
}

/// A page of a list: `{"items": [...], "next": "..."}`. `next`, when present,
/// is the `after` value for the following page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Pass as `after` for the next page; absent when there is nothing more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}
