//! The tamper-evident audit trail: append-only, hash-chained entries.
//!
//! The events of one atomic group of changes (a group commit of many puts,
//! a state change, a sweep step) form one *block*, stored under key `A || n`
//! (big-endian; `n` is the sequence number of its first event) as
//! `hash(32) || cbor(body)`, where `body = { seq, prev, events: [{at, event}] }`
//! and `hash = SHA-256("konvert-audit v2" || cbor(body))`. `prev` is the hash
//! of the previous block (all zeroes for the first). Events carry ids, times,
//! peers, counts, outcomes and digests, never personal data or message
//! substance.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ids::{CaseId, MessageId};

/// What an audit entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AuditKind {
    /// A message was accepted from a local application into the outbox.
    Accepted,
    /// A message was sealed (signed and encrypted) for its peer.
    Sealed,
    /// A message was sent to its peer.
    Sent,
    /// A delivery receipt for a sent message was stored.
    Delivered,
    /// Delivery of a message failed for good.
    Failed,
    /// A message was received from a peer.
    Received,
    /// A local application acknowledged a received message.
    Acknowledged,
    /// A request case was opened.
    CaseOpened,
    /// A request case changed state or deadline.
    CaseStateChanged,
    /// Records were destroyed (crypto-shredded), by expiry or early.
    Destroyed,
    /// Metadata past its audit retention was purged.
    Purged,
    /// A data key was created.
    KeyCreated,
    /// A data key was destroyed.
    KeyDestroyed,
    /// The configuration changed.
    ConfigChanged,
    /// The store was opened.
    Opened,
}

/// An audit event as given to [`crate::Store::audit_append`] and stored.
/// Free-text fields must hold no personal data and no message substance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// What happened.
    pub kind: AuditKind,
    /// The message concerned, if any.
    pub message: Option<MessageId>,
    /// The case concerned, if any.
    pub case: Option<CaseId>,
    /// The peer concerned, if any.
    pub peer: Option<String>,
    /// A short outcome or reason code (no personal data).
    pub detail: Option<String>,
    /// A count (records destroyed, bytes, ...).
    pub count: Option<u64>,
    /// A digest (payload hash, hash of destroyed ids, ...).
    #[serde(with = "opt_digest")]
    pub digest: Option<[u8; 32]>,
}

impl AuditEvent {
    /// An event of `kind` with no fields set.
    pub fn new(kind: AuditKind) -> Self {
        AuditEvent {
            kind,
            message: None,
            case: None,
            peer: None,
            detail: None,
            count: None,
            digest: None,
        }
    }
    /// Set the message.
    pub fn message(mut self, id: MessageId) -> Self {
        self.message = Some(id);
        self
    }
    /// Set the case.
    pub fn case(mut self, id: CaseId) -> Self {
        self.case = Some(id);
        self
    }
    /// Set the peer.
    pub fn peer(mut self, peer: &str) -> Self {
        self.peer = Some(peer.to_owned());
        self
    }
    /// Set the detail code.
    pub fn detail(mut self, d: &str) -> Self {
        self.detail = Some(d.to_owned());
        self
    }
    /// Set the count.
    pub fn count(mut self, n: u64) -> Self {
        self.count = Some(n);
        self
    }
    /// Set the digest.
    pub fn digest(mut self, d: [u8; 32]) -> Self {
        self.digest = Some(d);
        self
    }
}

mod opt_digest {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    pub fn serialize<S: Serializer>(v: &Option<[u8; 32]>, s: S) -> Result<S::Ok, S::Error> {
        v.as_ref().map(|d| serde_bytes::Bytes::new(&d[..])).serialize(s)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u8; 32]>, D::Error> {
        let v: Option<serde_bytes::ByteBuf> = Option::deserialize(d)?;
        match v {
            None => Ok(None),
            Some(b) => b
                .as_slice()
                .try_into()
                .map(Some)
                .map_err(|_| serde::de::Error::custom("digest length")),
        }
    }
}

mod id_serde {
    use crate::ids::{CaseId, MessageId};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    macro_rules! id_serde {
        ($t:ident) => {
            impl Serialize for $t {
                fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                    serde_bytes::Bytes::new(&self.0).serialize(s)
                }
            }
            impl<'de> Deserialize<'de> for $t {
                fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                    let b = serde_bytes::ByteBuf::deserialize(d)?;
                    b.as_slice()
                        .try_into()
                        .map($t)
                        .map_err(|_| serde::de::Error::custom("id length"))
                }
            }
        };
    }
    id_serde!(MessageId);
    id_serde!(CaseId);
}

/// One entry of the audit trail as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Position in the chain, from 0.
    pub seq: u64,
    /// When (unix seconds).
    pub at: i64,
    /// Hash of the previous block (the events of one atomic group of
    /// changes share a block).
    pub prev: [u8; 32],
    /// Hash of the block holding this entry.
    pub hash: [u8; 32],
    /// What happened.
    pub event: AuditEvent,
}

/// One audited event inside a block.
#[derive(Serialize, Deserialize, Clone)]
pub(crate) struct TimedEvent {
    pub(crate) at: i64,
    pub(crate) event: AuditEvent,
}

/// A block: the events of one atomic group of changes, chained to the
/// previous block. `seq` is the sequence number of its first event.
#[derive(Serialize, Deserialize)]
struct Body {
    seq: u64,
    #[serde(with = "serde_bytes")]
    prev: [u8; 32],
    events: Vec<TimedEvent>,
}

pub(crate) fn audit_key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = crate::store::P_AUDIT;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn hash_body(body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"konvert-audit v2");
    h.update(body);
    h.finalize().into()
}

/// Encode the block of `events` starting at sequence number `seq`; returns
/// (stored value, its hash).
pub(crate) fn encode_block(seq: u64, prev: [u8; 32], events: Vec<TimedEvent>) -> (Vec<u8>, [u8; 32]) {
    let body = Body { seq, prev, events };
    let mut buf = Vec::with_capacity(64 + 128 * body.events.len());
    buf.extend_from_slice(&[0u8; 32]);
    // Encoding into a Vec cannot fail for these types.
    let _ = ciborium::into_writer(&body, &mut buf);
    let hash = hash_body(&buf[32..]);
    buf[..32].copy_from_slice(&hash);
    (buf, hash)
}

/// A stored block as read back.
pub(crate) struct Block {
    pub(crate) seq: u64,
    pub(crate) prev: [u8; 32],
    /// The hash stored with the block.
    pub(crate) hash: [u8; 32],
    /// The hash of the block's content as it is now.
    pub(crate) computed: [u8; 32],
    pub(crate) events: Vec<TimedEvent>,
}

impl Block {
    /// Sequence number after this block's last event.
    pub(crate) fn end(&self) -> u64 {
        self.seq + self.events.len() as u64
    }
    /// The block's events as entries (each carries the block's hashes).
    pub(crate) fn entries(self) -> impl Iterator<Item = AuditEntry> {
        let (seq, prev, hash) = (self.seq, self.prev, self.hash);
        self.events.into_iter().enumerate().map(move |(i, e)| AuditEntry {
            seq: seq + i as u64,
            at: e.at,
            prev,
            hash,
            event: e.event,
        })
    }
}

/// Decode a stored block; `None` if it is not well-formed. The stored hash
/// is returned as is; [`verify_chain`] checks it.
pub(crate) fn decode_block(value: &[u8]) -> Option<Block> {
    if value.len() < 33 {
        return None;
    }
    let (h, body) = value.split_at(32);
    let b: Body = ciborium::from_reader(body).ok()?;
    if b.events.is_empty() {
        return None;
    }
    Some(Block {
        seq: b.seq,
        prev: b.prev,
        hash: h.try_into().ok()?,
        computed: hash_body(body),
        events: b.events,
    })
}

/// The result of a successful verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedChain {
    /// Number of entries (events) checked.
    pub entries: u64,
    /// Hash of the last block (all zeroes for an empty chain). Record it
    /// outside the machine to detect a later rewrite of the whole tail.
    pub head: [u8; 32],
}

/// How the chain is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakKind {
    /// An entry's content does not match its hash, or it cannot be decoded.
    Modified,
    /// One or more entries are missing before this position.
    Deleted,
    /// The entry at this position was inserted (it is not part of the chain).
    Inserted,
    /// Entries are out of order at this position.
    Reordered,
}

/// Where and how the audit chain is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("audit chain broken at entry {index}: {kind:?}")]
pub struct AuditBreak {
    /// Sequence number of the first entry of the first bad block (blocks
    /// hold the events of one atomic group; one event per block outside
    /// group commits).
    pub index: u64,
    /// What is wrong there.
    pub kind: BreakKind,
}

/// Verify a chain given as (key sequence number, stored block) in key order.
/// Positions in an [`AuditBreak`] are event sequence numbers: the first
/// event of the offending block.
pub(crate) fn verify_chain<I>(blocks: I) -> Result<VerifiedChain, AuditBreak>
where
    I: IntoIterator<Item = (u64, Vec<u8>)>,
{
    let mut prev_hash = [0u8; 32];
    // Hash before the previous block, and where the previous block starts.
    let mut prev_prev: Option<[u8; 32]> = None;
    let mut prev_start = 0u64;
    let mut expected = 0u64;
    for (key_seq, value) in blocks {
        let brk = |kind| AuditBreak {
            index: expected,
            kind,
        };
        let b = decode_block(&value).ok_or(brk(BreakKind::Modified))?;
        if b.hash != b.computed {
            return Err(brk(BreakKind::Modified));
        }
        if b.seq != key_seq {
            return Err(brk(BreakKind::Reordered));
        }
        if b.seq > expected {
            return Err(brk(BreakKind::Deleted));
        }
        if b.seq < expected {
            return Err(brk(BreakKind::Reordered));
        }
        if b.prev != prev_hash {
            if Some(b.prev) == prev_prev {
                // This block links to the one before the previous one:
                // the previous block was slipped in.
                return Err(AuditBreak {
                    index: prev_start,
                    kind: BreakKind::Inserted,
                });
            }
            // The previous block is not the one this block was chained to:
            // it was rewritten (with a recomputed hash).
            return Err(AuditBreak {
                index: prev_start,
                kind: BreakKind::Modified,
            });
        }
        prev_prev = Some(prev_hash);
        prev_hash = b.hash;
        prev_start = b.seq;
        expected = b.end();
    }
    Ok(VerifiedChain {
        entries: expected,
        head: prev_hash,
    })
}
