//! The typed records the store keeps, and their on-disk encoding.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::error::{Error, Result};
use crate::ids::{CaseId, MessageId};

/// Which way a message travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Accepted from a local application, to be delivered to a peer.
    Outbound,
    /// Received from a peer, to be fetched by a local application.
    Inbound,
}

impl Direction {
    pub(crate) fn byte(self) -> u8 {
        match self {
            Direction::Outbound => b'O',
            Direction::Inbound => b'I',
        }
    }
    pub(crate) fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'O' => Some(Direction::Outbound),
            b'I' => Some(Direction::Inbound),
            _ => None,
        }
    }
}

/// Where a message is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MessageState {
    /// Outbound: accepted, not yet sent.
    Queued,
    /// Outbound: sent, no receipt yet.
    Sent,
    /// Outbound: a delivery receipt is stored.
    Delivered,
    /// Outbound: delivery failed for good.
    Failed,
    /// Inbound: received, not yet acknowledged by the application.
    New,
    /// Inbound: acknowledged by the application.
    Acknowledged,
}

impl MessageState {
    pub(crate) fn byte(self) -> u8 {
        match self {
            MessageState::Queued => 1,
            MessageState::Sent => 2,
            MessageState::Delivered => 3,
            MessageState::Failed => 4,
            MessageState::New => 5,
            MessageState::Acknowledged => 6,
        }
    }
    pub(crate) fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            1 => MessageState::Queued,
            2 => MessageState::Sent,
            3 => MessageState::Delivered,
            4 => MessageState::Failed,
            5 => MessageState::New,
            6 => MessageState::Acknowledged,
            _ => return None,
        })
    }
    /// The state's name, as shown to operators.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageState::Queued => "queued",
            MessageState::Sent => "sent",
            MessageState::Delivered => "delivered",
            MessageState::Failed => "failed",
            MessageState::New => "new",
            MessageState::Acknowledged => "acknowledged",
        }
    }
}

/// A message handed to [`crate::Store::put_outbox`] or [`crate::Store::put_inbox`].
#[derive(Clone)]
pub struct NewMessage {
    /// The envelope id (time-ordered).
    pub id: MessageId,
    /// The peer authority, e.g. `by.mvd`.
    pub peer: String,
    /// The agreement the message travels under.
    pub agreement: String,
    /// The message kind (request, response, receipt, ...), as a short string.
    pub kind: String,
    /// The request case it belongs to, if any (the case must be open).
    pub case: Option<CaseId>,
    /// The payload: opaque bytes, sealed before they reach the disk.
    pub payload: Vec<u8>,
    /// What the record and the audit trail name the payload by
    /// ([`MessageMeta::digest`]): a digest the caller already has (the
    /// gateway gives its envelope digest, which receipts name), or `None`
    /// for SHA-256 of the payload. (The store does not need it for
    /// integrity: the payload is sealed with an AEAD.)
    pub digest: Option<[u8; 32]>,
}

impl std::fmt::Debug for NewMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewMessage")
            .field("id", &self.id)
            .field("peer", &self.peer)
            .field("agreement", &self.agreement)
            .field("kind", &self.kind)
            .field("case", &self.case)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// A message as the state index has it (no record read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// The message id.
    pub id: MessageId,
    /// Its peer.
    pub peer: String,
    /// When it was stored (seconds), if the entry records it.
    pub created_at: Option<i64>,
}

/// A message's metadata: everything but the payload; no personal data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageMeta {
    /// The envelope id.
    pub id: MessageId,
    /// Outbound or inbound.
    pub direction: Direction,
    /// The peer authority.
    pub peer: String,
    /// The agreement.
    pub agreement: String,
    /// The message kind.
    pub kind: String,
    /// The current state.
    pub state: MessageState,
    /// The case, if any.
    pub case: Option<CaseId>,
    /// When the store accepted it (unix seconds).
    pub created_at: i64,
    /// Last state change (unix seconds).
    pub updated_at: i64,
    /// When its payload is destroyed at the latest (unix seconds; destruction
    /// happens within the hour after).
    pub expires_at: i64,
    /// Payload length in bytes.
    pub payload_len: u64,
    /// What the payload is named by: the digest given with it
    /// ([`NewMessage::digest`]; the gateway's envelope digest), or
    /// SHA-256 of the payload.
    pub digest: [u8; 32],
    /// When the payload was destroyed, if it was.
    pub destroyed_at: Option<i64>,
    /// The last failure or outcome code (no personal data).
    pub outcome: Option<String>,
    /// Send attempts (outbound): each `mark_sent` and each
    /// [`crate::Store::mark_attempt`].
    pub attempts: u32,
    /// Outbound: when it was last handed to the peer (`mark_sent`).
    pub sent_at: Option<i64>,
    /// Outbound: when its delivery receipt was stored.
    pub delivered_at: Option<i64>,
    /// Inbound: when the application acknowledged it.
    pub acknowledged_at: Option<i64>,
    /// Outbound: when the last attempt to send it was made (successful or not).
    pub last_attempt_at: Option<i64>,
}

/// A message with its payload, as read through the API.
#[derive(Clone)]
pub struct Message {
    /// The metadata.
    pub meta: MessageMeta,
    /// The payload, unsealed.
    pub payload: Vec<u8>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("meta", &self.meta)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// The result of a put: the record, and whether this call created it (a put
/// of an id already stored stores nothing and returns the existing record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Put {
    /// The stored record's metadata.
    pub meta: MessageMeta,
    /// `false` if the id was already stored.
    pub created: bool,
}

/// A delivery receipt handed to [`crate::Store::mark_delivered`].
#[derive(Clone)]
pub struct NewReceipt {
    /// The outcome code (`delivered`, `refused:<field>`, ...), no personal data.
    pub outcome: String,
    /// The signed receipt as received (sealed at rest).
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for NewReceipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewReceipt")
            .field("outcome", &self.outcome)
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// A stored delivery receipt. Kept for the audit retention.
#[derive(Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The message it acknowledges.
    pub message: MessageId,
    /// The peer that signed it.
    pub peer: String,
    /// The outcome code.
    pub outcome: String,
    /// When it was stored (unix seconds).
    pub at: i64,
    /// When it is purged.
    pub expires_at: i64,
    /// The signed receipt bytes.
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for Receipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receipt")
            .field("message", &self.message)
            .field("peer", &self.peer)
            .field("outcome", &self.outcome)
            .field("at", &self.at)
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// A request case handed to [`crate::Store::case_open`].
#[derive(Debug, Clone)]
pub struct NewCase {
    /// The case id.
    pub id: CaseId,
    /// The peer authority.
    pub peer: String,
    /// The agreement.
    pub agreement: String,
    /// The initial state (a short code such as `requested`).
    pub state: String,
    /// The answer deadline (unix seconds), if tracked.
    pub deadline: Option<i64>,
}

/// A stored request case (metadata only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseInfo {
    /// The case id.
    pub id: CaseId,
    /// The peer authority.
    pub peer: String,
    /// The agreement.
    pub agreement: String,
    /// The state code.
    pub state: String,
    /// The deadline (unix seconds), if tracked.
    pub deadline: Option<i64>,
    /// When it was opened.
    pub opened_at: i64,
    /// Last change.
    pub updated_at: i64,
    /// The case key lives at least until then (the latest expiry of its
    /// messages, or the case retention).
    pub retain_until: i64,
    /// When the case and its messages were destroyed, if they were.
    pub destroyed_at: Option<i64>,
}

/// What [`crate::Store::sweep`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Messages whose payload was destroyed.
    pub destroyed: u64,
    /// Metadata records purged after the audit retention.
    pub purged: u64,
    /// The messages whose metadata was purged (nothing of them is left in
    /// the store but audit entries): what the caller may now forget too.
    pub purged_messages: Vec<(Direction, MessageId)>,
    /// The same for cases.
    pub purged_cases: Vec<CaseId>,
    /// Data keys destroyed (expiry buckets and cases).
    pub keys_destroyed: u64,
    /// Audit entries pruned after the audit retention (see
    /// [`crate::Store::audit_verify`] for the anchor they leave).
    pub audit_pruned: u64,
    /// Whether expired work is left (the budget ran out).
    pub remaining: bool,
}

/// Counters since the store was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Group-commit syncs done (each one `flush` + `fdatasync` under
    /// [`crate::SyncMode::Fdatasync`]; rounds without a sync in the dangerous modes).
    pub syncs: u64,
    /// Syncs of the payload files of queued puts, before their group is
    /// applied (one `fdatasync` per payload file written since the last).
    pub payload_syncs: u64,
    /// Writes acknowledged as durable.
    pub acked_writes: u64,
    /// Total time spent in syncs, microseconds.
    pub sync_micros: u64,
    /// Messages destroyed.
    pub destroyed: u64,
    /// Records purged.
    pub purged: u64,
    /// Keys destroyed.
    pub keys_destroyed: u64,
    /// Whether the store is poisoned.
    pub poisoned: bool,
}

// ---- on-disk records ----

/// A message record as stored: CBOR with one-letter field names (this is
/// sled's most frequent value; its size is log to write and to replay).
#[derive(Serialize, Deserialize, Clone)]
pub(crate) struct MsgRec {
    #[serde(rename = "p")]
    pub peer: String,
    #[serde(rename = "a")]
    pub agreement: String,
    #[serde(rename = "k")]
    pub kind: String,
    #[serde(rename = "s")]
    pub state: u8,
    #[serde(rename = "c")]
    pub case: Option<CaseId>,
    #[serde(rename = "t")]
    pub created_at: i64,
    #[serde(rename = "u")]
    pub updated_at: i64,
    #[serde(rename = "e")]
    pub expires_at: i64,
    #[serde(rename = "h")]
    pub key_hour: i64,
    #[serde(rename = "l")]
    pub payload_len: u64,
    #[serde(rename = "d")]
    pub payload_sha256: ByteBuf,
    /// Random tag in the payload's key (a duplicate put never overwrites).
    #[serde(rename = "g")]
    pub tag: u32,
    #[serde(rename = "x")]
    pub destroyed_at: Option<i64>,
    #[serde(rename = "o")]
    pub outcome: Option<String>,
    #[serde(rename = "n")]
    pub attempts: u32,
    #[serde(rename = "ts", default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<i64>,
    #[serde(rename = "td", default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<i64>,
    #[serde(rename = "ta", default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_at: Option<i64>,
    #[serde(rename = "tl", default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_at: Option<i64>,
    /// Where the sealed payload is in its hour's payload file; `None` once
    /// destroyed.
    #[serde(rename = "f")]
    pub seg: Option<SegRef>,
}

/// A sealed payload's place in the payload file of its key hour.
#[derive(Serialize, Deserialize, Clone, Copy, Debug)]
pub(crate) struct SegRef {
    #[serde(rename = "o")]
    pub off: u64,
    #[serde(rename = "l")]
    pub len: u32,
    /// How it is sealed ([`crate::keys::PayloadSeal::byte`]); records
    /// written before it was recorded have none: 0, XChaCha20-Poly1305.
    #[serde(rename = "a", default)]
    pub seal: u8,
}

impl MsgRec {
    pub(crate) fn state(&self, id: &MessageId) -> Result<MessageState> {
        MessageState::from_byte(self.state).ok_or_else(|| Error::corrupt(format!("message {id}: state")))
    }
    pub(crate) fn meta(&self, dir: Direction, id: MessageId) -> Result<MessageMeta> {
        let sha: [u8; 32] = self
            .payload_sha256
            .as_slice()
            .try_into()
            .map_err(|_| Error::corrupt(format!("message {id}: digest")))?;
        Ok(MessageMeta {
            id,
            direction: dir,
            peer: self.peer.clone(),
            agreement: self.agreement.clone(),
            kind: self.kind.clone(),
            state: self.state(&id)?,
            case: self.case,
            created_at: self.created_at,
            updated_at: self.updated_at,
            expires_at: self.expires_at,
            payload_len: self.payload_len,
            digest: sha,
            destroyed_at: self.destroyed_at,
            outcome: self.outcome.clone(),
            attempts: self.attempts,
            sent_at: self.sent_at,
            delivered_at: self.delivered_at,
            acknowledged_at: self.acknowledged_at,
            last_attempt_at: self.last_attempt_at,
        })
    }
}

#[derive(Serialize, Deserialize, Clone)]
pub(crate) struct ReceiptRec {
    pub peer: String,
    pub outcome: String,
    pub at: i64,
    pub expires_at: i64,
    pub key_hour: i64,
    pub sealed: ByteBuf,
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut buf = Vec::with_capacity(256);
    // Encoding plain structs into a Vec cannot fail.
    let _ = ciborium::into_writer(v, &mut buf);
    buf
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: impl FnOnce() -> String,
) -> Result<T> {
    ciborium::from_reader(bytes).map_err(|_| Error::corrupt(what()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_payload_place_written_before_the_seal_was_recorded_reads_as_xchacha() {
        #[derive(Serialize)]
        struct Earlier {
            #[serde(rename = "o")]
            off: u64,
            #[serde(rename = "l")]
            len: u32,
        }
        let s: SegRef = decode(&encode(&Earlier { off: 5, len: 7 }), String::new).unwrap();
        assert_eq!((s.off, s.len, s.seal), (5, 7, 0));
        assert_eq!(
            crate::keys::PayloadSeal::from_byte(s.seal),
            Some(crate::keys::PayloadSeal::XChaCha20Poly1305)
        );
        let now = SegRef { seal: 1, ..s };
        let back: SegRef = decode(&encode(&now), String::new).unwrap();
        assert_eq!(back.seal, 1);
    }
}
