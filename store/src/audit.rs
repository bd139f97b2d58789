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
//!
//! Blocks past the audit retention are pruned from the front of the chain;
//! the *anchor* (key `a`) then says where the chain starts: the sequence
//! number and hash of the last pruned block. Each pruning is recorded in
//! the chain itself (an [`AuditKind::AuditPruned`] event whose digest is the
//! SHA-256 of the anchor record), so verification checks the anchor against
//! the chain as well as the chain against the anchor. The *head* (sequence
//! number and hash of the newest block) can be kept elsewhere
//! ([`AuditHead`], the head log) to detect a truncated tail.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::ids::{CaseId, MessageId};
use crate::model::Direction;

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
    /// Audit blocks past the audit retention were pruned from the front of
    /// the chain (detail `audit`, count = entries removed, digest = SHA-256
    /// of the new anchor record). Written by the store only.
    AuditPruned,
    /// The keyring was re-sealed under a new master key (detail `keyring`,
    /// count = the keyring's new generation; no key material).
    MasterKeyRotated,
    /// The delivery receipt this gateway signed for a received message was
    /// stored (detail = its outcome code, digest = SHA-256 of the signed
    /// receipt).
    ReceiptIssued,
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
    /// The messages a [`AuditKind::Destroyed`] event destroyed (direction
    /// and id: no content, no personal data), at most [`MAX_EVENT_IDS`]:
    /// a larger destruction is written as several events. Set with
    /// [`AuditEvent::destroyed`], which also sets `digest` to the SHA-256
    /// of the list, as before. Empty in every other event and in
    /// destruction events written before ids were recorded (those keep
    /// only count and digest); an empty list is not encoded, so blocks
    /// written before the field existed decode and verify unchanged.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "ids_list")]
    pub ids: Vec<(Direction, MessageId)>,
}

/// Most message ids one audit event carries (17 bytes each in the block):
/// the store destroys in steps of this many records and writes one event
/// per step.
pub const MAX_EVENT_IDS: usize = 512;

/// The list of destroyed messages as the store keeps and hashes it:
/// direction byte (`O`, `I`) and 16-byte id per message.
pub fn destroyed_list(ids: &[(Direction, MessageId)]) -> Vec<u8> {
    let mut v = Vec::with_capacity(ids.len() * 17);
    for (d, m) in ids {
        v.push(d.byte());
        v.extend_from_slice(&m.0);
    }
    v
}

/// SHA-256 of [`destroyed_list`]: the digest of a destruction event.
pub fn destroyed_digest(ids: &[(Direction, MessageId)]) -> [u8; 32] {
    Sha256::digest(destroyed_list(ids)).into()
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
            ids: Vec::new(),
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
    /// Set the destroyed messages of a [`AuditKind::Destroyed`] event (at
    /// most [`MAX_EVENT_IDS`]; the rest is dropped: split larger lists into
    /// several events) and the digest to [`destroyed_digest`] of the whole
    /// given list.
    pub fn destroyed(mut self, ids: &[(Direction, MessageId)]) -> Self {
        self.digest = Some(destroyed_digest(ids));
        self.ids = ids.iter().take(MAX_EVENT_IDS).copied().collect();
        self
    }
    /// This event once per [`MAX_EVENT_IDS`] of `ids`, each with its part's
    /// count, ids and digest: how a destruction of any size is audited
    /// with bounded events (none for an empty list).
    pub fn destroyed_events(self, ids: &[(Direction, MessageId)]) -> Vec<AuditEvent> {
        ids.chunks(MAX_EVENT_IDS)
            .map(|part| self.clone().count(part.len() as u64).destroyed(part))
            .collect()
    }
    /// Whether the event's ids are the whole list its digest names: `None`
    /// when it records no ids (an older event, or not a destruction).
    pub fn ids_match_digest(&self) -> Option<bool> {
        if self.ids.is_empty() {
            return None;
        }
        Some(self.digest == Some(destroyed_digest(&self.ids)))
    }
}

mod ids_list {
    use crate::ids::MessageId;
    use crate::model::Direction;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    pub fn serialize<S: Serializer>(v: &[(Direction, MessageId)], s: S) -> Result<S::Ok, S::Error> {
        serde_bytes::Bytes::new(&super::destroyed_list(v)).serialize(s)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(Direction, MessageId)>, D::Error> {
        let b = serde_bytes::ByteBuf::deserialize(d)?;
        if b.len() % 17 != 0 || b.len() / 17 > super::MAX_EVENT_IDS {
            return Err(serde::de::Error::custom("destroyed id list length"));
        }
        b.chunks(17)
            .map(|c| {
                let dir = c
                    .first()
                    .copied()
                    .and_then(Direction::from_byte)
                    .ok_or_else(|| serde::de::Error::custom("destroyed id direction"))?;
                let id: [u8; 16] = c
                    .get(1..)
                    .and_then(|r| r.try_into().ok())
                    .ok_or_else(|| serde::de::Error::custom("destroyed id length"))?;
                Ok((dir, MessageId(id)))
            })
            .collect()
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
    /// Time of the block's newest event.
    pub(crate) fn newest(&self) -> i64 {
        self.events.iter().map(|e| e.at).max().unwrap_or(i64::MIN)
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
/// is returned as is; [`ChainWalk`] checks it.
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
    /// Number of entries (events) checked: `end - first`.
    pub entries: u64,
    /// Hash of the last block (all zeroes for an empty chain; the anchor's
    /// hash if every block was pruned). Record it outside the machine
    /// ([`crate::Store::audit_head`]) to detect a later truncation or
    /// rewrite of the tail.
    pub head: [u8; 32],
    /// Sequence number of the first entry checked: 0, or where the anchor
    /// says the chain starts after pruning.
    pub first: u64,
    /// Sequence number after the last entry checked (entries ever written).
    pub end: u64,
    /// The anchor the chain was verified from, if it was ever pruned.
    pub anchor: Option<AuditAnchor>,
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
    /// The anchor (where the chain starts after pruning) does not match the
    /// chain: the first block kept does not link to it, it is not the one
    /// the latest pruning recorded, or it is past a saved head that cannot
    /// have expired. `index` is where the anchor says the chain starts.
    Anchor,
    /// The chain ends before a saved head ([`crate::Store::audit_verify_against`]):
    /// its newest entries were removed. `index` is where the chain ends now.
    Truncated,
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

/// Verifies a chain block by block, in key order, from genesis or from an
/// anchor.
pub(crate) struct ChainWalk {
    anchor: Option<AuditAnchor>,
    prev_hash: [u8; 32],
    /// Hash before the previous block (`None` before the second block).
    prev_prev: Option<[u8; 32]>,
    /// Where the previous block starts.
    prev_start: u64,
    expected: u64,
    first_block: bool,
    /// The digest of the newest `AuditPruned` event seen.
    last_pruned: Option<Option<[u8; 32]>>,
}

impl ChainWalk {
    pub(crate) fn new(anchor: Option<AuditAnchor>) -> Self {
        let (prev_hash, expected, prev_start) = match &anchor {
            Some(a) => (a.hash, a.next_seq, a.last_block_seq),
            None => ([0u8; 32], 0, 0),
        };
        ChainWalk {
            anchor,
            prev_hash,
            prev_prev: None,
            prev_start,
            expected,
            first_block: true,
            last_pruned: None,
        }
    }

    /// Check the next block (stored under `key_seq`) and return it decoded.
    pub(crate) fn push(&mut self, key_seq: u64, value: &[u8]) -> Result<Block, AuditBreak> {
        let expected = self.expected;
        let brk = |kind| AuditBreak {
            index: expected,
            kind,
        };
        let b = decode_block(value).ok_or(brk(BreakKind::Modified))?;
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
        if b.prev != self.prev_hash {
            if self.first_block && self.anchor.is_some() {
                // The first block kept does not link to the anchor.
                return Err(brk(BreakKind::Anchor));
            }
            if Some(b.prev) == self.prev_prev {
                // This block links to the one before the previous one:
                // the previous block was slipped in.
                return Err(AuditBreak {
                    index: self.prev_start,
                    kind: BreakKind::Inserted,
                });
            }
            // The previous block is not the one this block was chained to:
            // it was rewritten (with a recomputed hash).
            return Err(AuditBreak {
                index: self.prev_start,
                kind: BreakKind::Modified,
            });
        }
        self.prev_prev = Some(self.prev_hash);
        self.prev_hash = b.hash;
        self.prev_start = b.seq;
        self.expected = b.end();
        self.first_block = false;
        for e in &b.events {
            if e.event.kind == AuditKind::AuditPruned {
                self.last_pruned = Some(e.event.digest);
            }
        }
        Ok(b)
    }

    /// End of the walk: an anchored chain must hold the pruning event that
    /// wrote its anchor, as its newest pruning event.
    pub(crate) fn finish(self) -> Result<VerifiedChain, AuditBreak> {
        let first = self.anchor.map_or(0, |a| a.next_seq);
        if let Some(a) = &self.anchor {
            if self.last_pruned != Some(Some(a.digest())) {
                return Err(AuditBreak {
                    index: first,
                    kind: BreakKind::Anchor,
                });
            }
        }
        Ok(VerifiedChain {
            entries: self.expected - first,
            head: self.prev_hash,
            first,
            end: self.expected,
            anchor: self.anchor,
        })
    }
}

// ---- pruning: the anchor ----

/// The key of the anchor record (one key, outside the `A` range).
pub(crate) const ANCHOR_KEY: &[u8] = b"a";
const ANCHOR_MAGIC: &[u8; 8] = b"KVANCHR1";
const ANCHOR_LEN: usize = 8 + 8 + 8 + 32 + 8 + 8 + 8;

/// Where the audit chain starts after pruning: the last pruned block, and
/// the latest pruning. Stored under its own key, written in the same atomic
/// group (intent record) as the removal of the blocks and the
/// [`AuditKind::AuditPruned`] event that records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditAnchor {
    /// Sequence number of the first entry kept: every entry before it was
    /// pruned.
    pub next_seq: u64,
    /// Sequence number of the first event of the last pruned block.
    pub last_block_seq: u64,
    /// Hash of the last pruned block: the first block kept links to it.
    pub hash: [u8; 32],
    /// Time of the newest pruned event (unix seconds).
    pub last_at: i64,
    /// When the latest pruning happened (unix seconds).
    pub pruned_at: i64,
    /// Entries removed by the latest pruning.
    pub pruned: u64,
}

impl AuditAnchor {
    /// The stored form: magic, then the fields big-endian, fixed width.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(ANCHOR_LEN);
        v.extend_from_slice(ANCHOR_MAGIC);
        v.extend_from_slice(&self.next_seq.to_be_bytes());
        v.extend_from_slice(&self.last_block_seq.to_be_bytes());
        v.extend_from_slice(&self.hash);
        v.extend_from_slice(&self.last_at.to_be_bytes());
        v.extend_from_slice(&self.pruned_at.to_be_bytes());
        v.extend_from_slice(&self.pruned.to_be_bytes());
        v
    }

    pub(crate) fn decode(v: &[u8]) -> Option<Self> {
        if v.len() != ANCHOR_LEN || !v.starts_with(ANCHOR_MAGIC) {
            return None;
        }
        let u = |i: usize| -> Option<[u8; 8]> { v.get(i..i + 8)?.try_into().ok() };
        Some(AuditAnchor {
            next_seq: u64::from_be_bytes(u(8)?),
            last_block_seq: u64::from_be_bytes(u(16)?),
            hash: v.get(24..56)?.try_into().ok()?,
            last_at: i64::from_be_bytes(u(56)?),
            pruned_at: i64::from_be_bytes(u(64)?),
            pruned: u64::from_be_bytes(u(72)?),
        })
    }

    /// SHA-256 of the anchor record: the digest of the `AuditPruned` event
    /// that wrote it.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"konvert-audit anchor v1");
        h.update(self.encode());
        h.finalize().into()
    }
}

/// The anchor stored in `db`, if the chain was ever pruned. A record that
/// does not decode is an [`AuditBreak`] of kind [`BreakKind::Anchor`].
pub(crate) fn read_anchor(db: &sled::Db) -> Result<Option<AuditAnchor>> {
    match db.get(ANCHOR_KEY)? {
        None => Ok(None),
        Some(v) => AuditAnchor::decode(&v)
            .map(Some)
            .ok_or(Error::AuditBroken(AuditBreak {
                index: 0,
                kind: BreakKind::Anchor,
            })),
    }
}

/// The sequence number in an audit block's key.
pub(crate) fn key_seq(k: &[u8]) -> u64 {
    k.get(1..9)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(u64::MAX)
}

/// What one pruning step removes, and the anchor it leaves.
pub(crate) struct PrunePlan {
    /// Keys of the blocks to remove, oldest first.
    pub(crate) keys: Vec<[u8; 9]>,
    /// The anchor after the removal.
    pub(crate) anchor: AuditAnchor,
}

/// Plan the pruning of the oldest blocks: from the front of the chain, each
/// block whose newest event is `expired`, that ends at or before `limit`,
/// at most `max_blocks` of them. Every block pruned and the first block
/// kept are verified first (from the current anchor): a chain that does not
/// verify there is not pruned, since that would remove the evidence
/// (`Error::AuditBroken`). Returns the plan (`None`: nothing to prune) and
/// whether more blocks could be pruned than `max_blocks` allowed.
pub(crate) fn plan_prune(
    db: &sled::Db,
    anchor: Option<AuditAnchor>,
    expired: impl Fn(i64) -> bool,
    limit: u64,
    max_blocks: usize,
    now: i64,
) -> Result<(Option<PrunePlan>, bool)> {
    let mut walk = ChainWalk::new(anchor);
    let mut keys = Vec::new();
    let mut last: Option<(u64, [u8; 32], u64)> = None;
    let mut last_at = anchor.map_or(i64::MIN, |a| a.last_at);
    let mut events = 0u64;
    let mut more = false;
    for r in db.scan_prefix([crate::store::P_AUDIT]) {
        let (k, v) = r?;
        if keys.is_empty() {
            // Nothing due: no need to verify anything.
            if let Some(b) = decode_block(&v) {
                if b.end() > limit || !expired(b.newest()) {
                    return Ok((None, false));
                }
            }
        }
        let b = walk.push(key_seq(&k), &v)?;
        if b.end() > limit || !expired(b.newest()) {
            break; // the first block kept (verified: it links to the last pruned)
        }
        if keys.len() >= max_blocks {
            more = true;
            break;
        }
        keys.push(audit_key(b.seq));
        events += b.events.len() as u64;
        last_at = last_at.max(b.newest());
        last = Some((b.seq, b.hash, b.end()));
    }
    let Some((last_block_seq, hash, next_seq)) = last else {
        return Ok((None, more));
    };
    let anchor = AuditAnchor {
        next_seq,
        last_block_seq,
        hash,
        last_at,
        pruned_at: now,
        pruned: events,
    };
    Ok((Some(PrunePlan { keys, anchor }), more))
}

// ---- the published head ----

/// The head of the audit chain: what an operator or a peer keeps elsewhere
/// to detect later that the newest entries were removed (truncation) or
/// rewritten, which the store alone cannot see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditHead {
    /// Sequence number after the head block's last event: the number of
    /// entries ever written (0 for an empty chain).
    pub seq: u64,
    /// Hash of the head block (all zeroes for an empty chain).
    pub hash: [u8; 32],
    /// Time of the newest event of the head block (unix seconds; 0 for an
    /// empty chain).
    pub at: i64,
}

impl AuditHead {
    /// One line of the head log, without the newline:
    /// `{"seq":12,"hash":"<64 hex digits>","at":1750000000}`.
    pub fn to_json_line(&self) -> String {
        format!(
            "{{\"seq\":{},\"hash\":\"{}\",\"at\":{}}}",
            self.seq,
            hex::encode(self.hash),
            self.at
        )
    }

    /// Parse a line written by [`AuditHead::to_json_line`] (whitespace
    /// around the JSON tokens is allowed; the three fields must all be there,
    /// once, and nothing else).
    pub fn parse_json_line(line: &str) -> Option<Self> {
        let body = line.trim().strip_prefix('{')?.strip_suffix('}')?;
        let (mut seq, mut hash, mut at) = (None, None, None);
        for part in body.split(',') {
            let (k, v) = part.split_once(':')?;
            let k = k.trim().strip_prefix('"')?.strip_suffix('"')?;
            let v = v.trim();
            match k {
                "seq" if seq.is_none() => seq = Some(v.parse::<u64>().ok()?),
                "at" if at.is_none() => at = Some(v.parse::<i64>().ok()?),
                "hash" if hash.is_none() => {
                    let hx = v.strip_prefix('"')?.strip_suffix('"')?;
                    let mut h = [0u8; 32];
                    hex::decode_to_slice(hx, &mut h).ok()?;
                    hash = Some(h);
                }
                _ => return None,
            }
        }
        Some(AuditHead {
            seq: seq?,
            hash: hash?,
            at: at?,
        })
    }
}

/// How much of a head log's end is read to find its last line.
const HEAD_LOG_TAIL: u64 = 4096;

/// The last head in a head log file (see [`crate::StoreConfig::audit_head_log`]),
/// `None` if it has none. A fragment after the last newline (a crash in the
/// middle of a write) is ignored; a last complete line that does not parse
/// is `Error::Corrupt`.
pub fn last_audit_head(path: &Path) -> Result<Option<AuditHead>> {
    Ok(read_tail(path)?.0)
}

/// The last complete head of the log at `path`, and whether the file ends
/// in a fragment without its newline.
fn read_tail(path: &Path) -> Result<(Option<AuditHead>, bool)> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let from = len.saturating_sub(HEAD_LOG_TAIL);
    let mut buf = Vec::with_capacity((len - from) as usize);
    f.seek(SeekFrom::Start(from))
        .and_then(|_| f.take(HEAD_LOG_TAIL).read_to_end(&mut buf))
        .map_err(|e| Error::io(path, e))?;
    let partial = buf.last().is_some_and(|b| *b != b'\n');
    // Drop the fragment after the last newline, then take the last line.
    let complete = match buf.iter().rposition(|b| *b == b'\n') {
        Some(i) => &buf[..i],
        None => return Ok((None, partial)),
    };
    let line = match complete.iter().rposition(|b| *b == b'\n') {
        Some(i) => &complete[i + 1..],
        None if from == 0 => complete,
        // The last line is longer than the tail read: not one of ours.
        None => {
            return Err(Error::corrupt(format!(
                "audit head log {}: last line",
                path.display()
            )))
        }
    };
    let head = std::str::from_utf8(line)
        .ok()
        .and_then(AuditHead::parse_json_line)
        .ok_or_else(|| Error::corrupt(format!("audit head log {}: last line", path.display())))?;
    Ok((Some(head), partial))
}

struct HeadLogState {
    last: Option<AuditHead>,
    /// The file ends in a fragment (a crash mid-write): start on a new line.
    partial: bool,
}

/// The append-only head log: one JSON line per published head, each
/// fdatasynced before the call that wrote it returns.
pub(crate) struct HeadLog {
    path: PathBuf,
    state: Mutex<HeadLogState>,
}

impl HeadLog {
    /// Open (or create, mode 0640) the head log and read its last head.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let (last, partial) = match std::fs::metadata(path) {
            Ok(_) => read_tail(path)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o640)
                    .open(path)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| Error::io(path, e))?;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    crate::keys::sync_dir(dir)?;
                }
                (None, false)
            }
            Err(e) => return Err(Error::io(path, e)),
        };
        Ok(HeadLog {
            path: path.into(),
            state: Mutex::new(HeadLogState { last, partial }),
        })
    }

    /// The log file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HeadLogState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last head written (or found at open).
    pub(crate) fn last(&self) -> Option<AuditHead> {
        self.state().last
    }

    /// Append `head` if it is newer than the last one, and fdatasync.
    /// `check` is called with the last head logged (under the log's lock)
    /// and must say whether the chain still holds it.
    pub(crate) fn append(
        &self,
        head: &AuditHead,
        check: impl FnOnce(&AuditHead) -> Result<()>,
    ) -> Result<bool> {
        let mut st = self.state();
        if let Some(last) = &st.last {
            if head.seq <= last.seq {
                return Ok(false);
            }
            check(last)?;
        }
        let mut line = String::with_capacity(120);
        if st.partial {
            line.push('\n');
        }
        line.push_str(&head.to_json_line());
        line.push('\n');
        let path = &self.path;
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        f.write_all(line.as_bytes())
            .and_then(|_| f.sync_data())
            .map_err(|e| Error::io(path, e))?;
        st.last = Some(*head);
        st.partial = false;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The event as blocks encoded it before destroyed ids were recorded.
    #[derive(Serialize)]
    struct OldEvent {
        kind: AuditKind,
        message: Option<MessageId>,
        case: Option<CaseId>,
        peer: Option<String>,
        detail: Option<String>,
        count: Option<u64>,
        #[serde(with = "opt_digest")]
        digest: Option<[u8; 32]>,
    }

    #[test]
    fn blocks_written_before_ids_decode_and_hash_the_same() {
        let old = vec![TimedEvent {
            at: 1_700_000_000,
            event: AuditEvent::new(AuditKind::Destroyed)
                .case(CaseId([7; 16]))
                .peer("by.mvd")
                .detail("early")
                .count(2)
                .digest([9; 32]),
        }];
        let old_body = {
            #[derive(Serialize)]
            struct OldTimed {
                at: i64,
                event: OldEvent,
            }
            #[derive(Serialize)]
            struct OldBody {
                seq: u64,
                #[serde(with = "serde_bytes")]
                prev: [u8; 32],
                events: Vec<OldTimed>,
            }
            let e = &old[0].event;
            let body = OldBody {
                seq: 5,
                prev: [1; 32],
                events: vec![OldTimed {
                    at: old[0].at,
                    event: OldEvent {
                        kind: e.kind,
                        message: e.message,
                        case: e.case,
                        peer: e.peer.clone(),
                        detail: e.detail.clone(),
                        count: e.count,
                        digest: e.digest,
                    },
                }],
            };
            let mut b = Vec::new();
            ciborium::into_writer(&body, &mut b).unwrap();
            b
        };
        let (new, hash) = encode_block(5, [1; 32], old.clone());
        // Same bytes, so the same hash: old chains verify unchanged.
        assert_eq!(&new[32..], &old_body[..]);
        assert_eq!(hash, hash_body(&old_body));
        let mut stored = hash.to_vec();
        stored.extend_from_slice(&old_body);
        let b = decode_block(&stored).unwrap();
        assert_eq!(b.computed, b.hash);
        assert!(b.events[0].event.ids.is_empty());
        assert_eq!(b.events[0].event.ids_match_digest(), None);
    }

    #[test]
    fn destroyed_ids_round_trip_split_into_bounded_events() {
        let ids: Vec<(Direction, MessageId)> = (0..1100u32)
            .map(|i| {
                let mut b = [0u8; 16];
                b[12..].copy_from_slice(&i.to_be_bytes());
                let d = if i % 3 == 0 {
                    Direction::Inbound
                } else {
                    Direction::Outbound
                };
                (d, MessageId(b))
            })
            .collect();
        let events = AuditEvent::new(AuditKind::Destroyed)
            .detail("expired")
            .destroyed_events(&ids);
        assert_eq!(
            events.iter().map(|e| e.ids.len()).collect::<Vec<_>>(),
            [512, 512, 76]
        );
        let back: Vec<_> = events.iter().flat_map(|e| e.ids.iter().copied()).collect();
        assert_eq!(back, ids);
        for e in &events {
            assert_eq!(e.count, Some(e.ids.len() as u64));
            assert_eq!(e.ids_match_digest(), Some(true));
        }
        let timed: Vec<TimedEvent> = events
            .into_iter()
            .map(|event| TimedEvent { at: 1, event })
            .collect();
        let (stored, _) = encode_block(0, [0; 32], timed.clone());
        let b = decode_block(&stored).unwrap();
        assert_eq!(b.computed, b.hash);
        assert_eq!(
            b.events.iter().map(|e| e.event.clone()).collect::<Vec<_>>(),
            timed.into_iter().map(|e| e.event).collect::<Vec<_>>()
        );
        // A list longer than an event holds keeps only the first MAX_EVENT_IDS,
        // and says so by its digest.
        let one = AuditEvent::new(AuditKind::Destroyed).destroyed(&ids);
        assert_eq!(one.ids.len(), MAX_EVENT_IDS);
        assert_eq!(one.ids_match_digest(), Some(false));
    }
}
