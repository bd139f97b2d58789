//! From an application's submission to a verified delivery receipt.
//!
//! [`submit`] validates, signs, seals and queues durably (the store's
//! `put_outbox_async` answers after a real fdatasync; small messages are
//! sealed on the submitting task, large ones on a blocking thread), then
//! starts the first delivery attempt at once with the envelope still in
//! memory. Messages that find all of a peer's slots taken wait in its
//! backlog and start as slots free; the [`dispatch`] task starts what is
//! due at start and when retries fall due. Delivery: for each peer one long-lived QUIC connection
//! (re-established on failure, addresses tried in turn), one stream per
//! envelope, at most `quic.max_streams_per_connection` envelopes (default
//! [`IN_FLIGHT_PER_PEER`]) and [`IN_FLIGHT_BYTES_PER_PEER`] of envelopes
//! held in memory in flight per peer, each peer with slots of its own so
//! that a slow peer never blocks the others. A transport failure schedules
//! a retry (exponential backoff with jitter, [`crate::retry`]); after the
//! configured number of attempts the message is marked failed for operators.
//! A receipt is verified with the peer's card before it is stored.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Read;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use konvert_envelope::envelope;
use konvert_envelope::model::{AuthorityId, Id, Message, Timestamp};
use konvert_envelope::profile::ProfileVersionError;
use konvert_envelope::receipt::Outcome;
use konvert_store::{Direction, MessageId, MessageState, NewMessage, NewReceipt};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use super::{Directory, Node};
use crate::retry::{AddressRotation, Next};
use crate::transport::{CloseCode, Connection, Endpoint};

/// Envelopes in flight to one peer at a time unless the configuration says
/// otherwise: konvertd takes `quic.max_streams_per_connection`, the number of
/// streams a peer with the same setting lets it open at once, so that the
/// slots are not a second, narrower limit. (At 64, below that, the two
/// gateways' cores stood a fifth idle with 256 messages of 1 KiB in
/// flight: the slots, not the CPU, set the rate — docs/BENCHMARKS.md,
/// stop 17.)
pub const IN_FLIGHT_PER_PEER: usize = 256;

/// Envelope bytes held in memory for deliveries in flight to one peer at a
/// time (envelopes up to 1 MiB are sent from memory; larger ones stream
/// from their store blob through a fixed buffer). With
/// [`IN_FLIGHT_PER_PEER`] slots alone, 256 envelopes of 1 MiB would hold
/// 256 MiB per peer, and on one connection they only share its bandwidth:
/// a delivery waits for its envelope's share of this budget before it
/// sends. A just-queued envelope waits in hand (its submission made it);
/// a stored one is read back only once its share is free.
pub const IN_FLIGHT_BYTES_PER_PEER: usize = 64 << 20;

/// Why a submission was refused (mapped to API problems by the service).
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The message's sender is not this gateway.
    #[error("the message is from {0}, but this gateway serves {1}")]
    NotOwnAuthority(AuthorityId, AuthorityId),
    /// The recipient is not a configured peer, or not for this agreement.
    #[error("{0} is not a peer of this gateway under agreement {1}")]
    UnknownPeer(AuthorityId, String),
    /// No profile for the agreement.
    #[error("no profile is configured for agreement {0}")]
    UnknownAgreement(String),
    /// The signatory is not configured.
    #[error("signatory {0} is not configured on this gateway")]
    UnknownSignatory(String),
    /// The signatory is not on the own latest roster, or not valid now or
    /// at the message's time (Art. 9.3, 9.4).
    #[error(transparent)]
    SignerNotAuthorised(#[from] crate::signatories::NotAuthorised),
    /// No profile version governs the message (Art. 16).
    #[error(transparent)]
    ProfileVersion(super::versions::VersionError),
    /// The own roster file exists but cannot be read or verified.
    #[error("the own signatory roster cannot be used: {0}")]
    OwnRoster(String),
    /// An attachment names an upload that does not exist.
    #[error("attachment {index}: {reason}")]
    Attachment {
        /// Index in the message's attachment order.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// A different message was already submitted with this id.
    #[error("message id {0} is already used by a different message")]
    IdInUse(Id),
    /// Sealing failed (validation errors included).
    #[error(transparent)]
    Seal(#[from] envelope::SealError),
    /// The store refused the write.
    #[error("store: {0}")]
    Store(#[from] konvert_store::Error),
    /// A background task failed.
    #[error("internal error: {0}")]
    Internal(String),
    /// The agreement's procedure refuses it (case, consent, in force).
    #[error(transparent)]
    Procedure(#[from] super::cases::OutgoingError),
}

/// The state kept per peer for delivery.
#[derive(Debug)]
pub struct Link {
    connection: tokio::sync::Mutex<Option<Connection>>,
    addresses: Mutex<AddressRotation>,
    slots: Arc<Semaphore>,
    /// [`IN_FLIGHT_BYTES_PER_PEER`], in KiB.
    bytes: Semaphore,
    /// When the last receipt arrived.
    pub last_delivery: Mutex<Option<Timestamp>>,
    /// Delivery attempts to this peer that failed in a row (no connection,
    /// or the envelope could not be sent or got no receipt).
    failures: AtomicU32,
    /// When the current run of failures began.
    failing_since: Mutex<Option<Timestamp>>,
    /// Messages due now that found every slot taken: a finishing delivery
    /// starts the next one (no rescan of the outbox per delivery).
    backlog: Mutex<Backlog>,
}

/// Messages of one peer waiting for a delivery slot, oldest first.
#[derive(Debug, Default)]
struct Backlog {
    order: VecDeque<([u8; 16], bool)>,
    /// Ids still waiting (an id started by another path meanwhile is
    /// removed here and skipped when its turn comes).
    waiting: HashSet<[u8; 16]>,
}

impl Link {
    fn new(addresses: Vec<String>, slots: usize) -> Self {
        Self {
            connection: tokio::sync::Mutex::new(None),
            addresses: Mutex::new(AddressRotation::new(addresses)),
            slots: Arc::new(Semaphore::new(slots)),
            bytes: Semaphore::new(IN_FLIGHT_BYTES_PER_PEER >> 10),
            last_delivery: Mutex::new(None),
            failures: AtomicU32::new(0),
            failing_since: Mutex::new(None),
            backlog: Mutex::new(Backlog::default()),
        }
    }

    /// Waits for `len` envelope bytes of [`IN_FLIGHT_BYTES_PER_PEER`]
    /// (whole KiB; never more than all of it, so that no envelope waits
    /// forever); `None` for none. The budget is never closed.
    async fn reserve_bytes(&self, len: usize) -> Option<tokio::sync::SemaphorePermit<'_>> {
        let kib = len.div_ceil(1024).min(IN_FLIGHT_BYTES_PER_PEER >> 10);
        if kib == 0 {
            return None;
        }
        self.bytes
            .acquire_many(u32::try_from(kib).unwrap_or(u32::MAX))
            .await
            .ok()
    }

    /// Queues a due message for the next free slot.
    fn wait_for_slot(&self, id: [u8; 16], first_send: bool) {
        if let Ok(mut b) = self.backlog.lock() {
            if b.waiting.insert(id) {
                b.order.push_back((id, first_send));
            }
        }
    }

    /// The next message waiting for a slot, if any.
    fn next_waiting(&self) -> Option<([u8; 16], bool)> {
        let mut b = self.backlog.lock().ok()?;
        while let Some((id, first)) = b.order.pop_front() {
            if b.waiting.remove(&id) {
                return Some((id, first));
            }
        }
        None
    }

    /// A delivery of `id` starts: it no longer waits for a slot.
    fn started(&self, id: &[u8; 16]) {
        if let Ok(mut b) = self.backlog.lock() {
            if b.waiting.remove(id) && b.waiting.is_empty() {
                b.order.clear();
            }
        }
    }

    /// Whether a live connection exists.
    pub fn connected(&self) -> bool {
        self.connection
            .try_lock()
            .map(|c| c.as_ref().is_some_and(|c| c.close_reason().is_none()))
            .unwrap_or(true)
    }

    /// Failed delivery attempts in a row, and since when.
    pub fn failing(&self) -> (u32, Option<Timestamp>) {
        (
            self.failures.load(Ordering::Acquire),
            self.failing_since.lock().ok().and_then(|t| *t),
        )
    }

    fn record_failure(&self) {
        if self.failures.fetch_add(1, Ordering::AcqRel) == 0 {
            if let Ok(mut t) = self.failing_since.lock() {
                *t = Some(Timestamp::now());
            }
        }
    }

    fn record_success(&self) {
        self.failures.store(0, Ordering::Release);
        if let Ok(mut t) = self.failing_since.lock() {
            *t = None;
        }
    }

    /// Closes the connection this link holds, if any.
    fn close(&self) {
        if let Ok(mut c) = self.connection.try_lock() {
            if let Some(c) = c.take() {
                c.close(CloseCode::UnknownPeer);
            }
        }
    }
}

/// What the dispatcher knows of one message's delivery since the daemon
/// started (memory only; see [`Links::live`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveDelivery {
    /// The recipient.
    pub peer: AuthorityId,
    /// Attempts begun since the daemon started (connect, send, receipt).
    pub attempts: u32,
    /// When the envelope last went out on a connection.
    pub last_sent: Option<Timestamp>,
    /// Earliest time of the next attempt after a failure.
    next_at: Option<Instant>,
}

/// Finished deliveries whose [`LiveDelivery`] is kept for status queries.
const LIVE_FINISHED_KEPT: usize = 16_384;

#[derive(Debug, Default)]
struct LiveLog {
    map: HashMap<[u8; 16], LiveDelivery>,
    finished: VecDeque<[u8; 16]>,
}

/// Links of all peers.
#[derive(Debug)]
pub struct Links {
    inner: Mutex<HashMap<AuthorityId, Arc<Link>>>,
    /// Messages being delivered now (not to be picked up twice).
    in_flight: Mutex<HashSet<[u8; 16]>>,
    /// Delivery state per message since the daemon started.
    live: Mutex<LiveLog>,
    /// Envelopes just queued, handed to their first delivery attempt
    /// without reading them back from the store (bounded; see [`Fresh`]).
    fresh: Mutex<Fresh>,
    /// Envelopes in flight per peer ([`IN_FLIGHT_PER_PEER`] unless set).
    per_peer: usize,
}

impl Default for Links {
    fn default() -> Self {
        Self {
            inner: Mutex::default(),
            in_flight: Mutex::default(),
            live: Mutex::default(),
            fresh: Mutex::default(),
            per_peer: IN_FLIGHT_PER_PEER,
        }
    }
}

/// Tasks waiting for outgoing messages to settle: a receipt arrived
/// (accepted or rejected) or delivery was given up (`failed`). A waiter
/// registers with [`Outcomes::watch`] *before* it reads the state, so that
/// an outcome in between is not missed; it is told once, with no store read
/// per message on behalf of anyone else.
#[derive(Debug, Default)]
pub struct Outcomes {
    waiting: Mutex<HashMap<[u8; 16], Vec<tokio::sync::oneshot::Sender<()>>>>,
}

impl Outcomes {
    /// The receiver is told (or dropped) when message `id` settles next.
    pub fn watch(&self, id: &MessageId) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if let Ok(mut w) = self.waiting.lock() {
            let list = w.entry(id.0).or_default();
            // Waiters that gave up (timed out, disconnected) go now: a
            // message that never settles keeps only its live waiters.
            list.retain(|t| !t.is_closed());
            list.push(tx);
        }
        rx
    }

    /// Forgets the waiters of `id` that gave up (called by one that timed
    /// out, its receiver dropped).
    pub fn unwatch(&self, id: &MessageId) {
        if let Ok(mut w) = self.waiting.lock() {
            if let Some(list) = w.get_mut(&id.0) {
                list.retain(|t| !t.is_closed());
                if list.is_empty() {
                    w.remove(&id.0);
                }
            }
        }
    }

    /// Message `id` settled: tells its waiters.
    fn settled(&self, id: &MessageId) {
        let waiters = self.waiting.lock().ok().and_then(|mut w| w.remove(&id.0));
        for tx in waiters.into_iter().flatten() {
            let _ = tx.send(());
        }
    }

    /// Messages with a waiter (for tests and metrics).
    pub fn watched(&self) -> usize {
        self.waiting.lock().map_or(0, |w| w.len())
    }
}

/// Outbox records of messages just queued, by id, until their first
/// attempt takes them. At most [`FRESH_MAX_BYTES`] of envelopes are kept;
/// a message that does not fit is read back from the store, as after a
/// restart or for a retry.
#[derive(Debug, Default)]
struct Fresh {
    map: HashMap<[u8; 16], Arc<OutboxRecord>>,
    bytes: usize,
}

/// Envelope bytes kept in [`Fresh`] at most.
const FRESH_MAX_BYTES: usize = 32 << 20;

impl Links {
    /// Links for the peers of `dir`, each with `per_peer` envelopes in
    /// flight at most (at least 1).
    pub fn new(dir: &Directory, per_peer: usize) -> Self {
        let l = Self {
            per_peer: per_peer.max(1),
            ..Self::default()
        };
        l.add_and_refresh(dir);
        l
    }

    /// Applies a reloaded directory (SIGHUP): links of new peers are added
    /// (their paused messages become due at once), addresses refreshed,
    /// existing connections stay. A peer no longer in `dir` loses its link:
    /// every connection with it, both directions, is closed on `endpoint`,
    /// and its queued messages stay in the outbox, paused, until it is
    /// added again.
    pub fn update(&self, dir: &Directory, endpoint: &Endpoint) {
        let removed: Vec<(AuthorityId, Arc<Link>)> = match self.inner.lock() {
            Ok(mut m) => {
                let gone: Vec<AuthorityId> = m
                    .keys()
                    .filter(|a| !dir.peers.contains_key(*a))
                    .cloned()
                    .collect();
                gone.into_iter()
                    .filter_map(|a| m.remove(&a).map(|l| (a, l)))
                    .collect()
            }
            Err(_) => Vec::new(),
        };
        for (peer, link) in removed {
            link.close();
            let closed = endpoint.close_peer(&peer, CloseCode::UnknownPeer);
            info!(peer = %peer, connections_closed = closed, "peer removed: delivery to it paused");
        }
        self.add_and_refresh(dir);
    }

    fn add_and_refresh(&self, dir: &Directory) {
        let mut added = Vec::new();
        if let Ok(mut m) = self.inner.lock() {
            for (a, p) in &dir.peers {
                match m.get(a) {
                    Some(link) => {
                        if let Ok(mut r) = link.addresses.lock() {
                            *r = AddressRotation::new(p.addresses.clone());
                        }
                    }
                    None => {
                        m.insert(a.clone(), Arc::new(Link::new(p.addresses.clone(), self.per_peer)));
                        added.push(a.clone());
                    }
                }
            }
        }
        if !added.is_empty() {
            if let Ok(mut l) = self.live.lock() {
                for d in l.map.values_mut().filter(|d| added.contains(&d.peer)) {
                    d.next_at = None;
                }
            }
        }
    }

    fn keep_fresh(&self, id: [u8; 16], record: Arc<OutboxRecord>) {
        let len = record.envelope.len();
        if let Ok(mut f) = self.fresh.lock() {
            if f.bytes + len <= FRESH_MAX_BYTES && !f.map.contains_key(&id) {
                f.bytes += len;
                f.map.insert(id, record);
            }
        }
    }

    fn take_fresh(&self, id: &[u8; 16]) -> Option<Arc<OutboxRecord>> {
        let mut f = self.fresh.lock().ok()?;
        let r = f.map.remove(id)?;
        f.bytes -= r.envelope.len();
        Some(r)
    }

    /// The link of `peer`.
    pub fn get(&self, peer: &AuthorityId) -> Option<Arc<Link>> {
        self.inner.lock().ok().and_then(|m| m.get(peer).cloned())
    }

    /// What the dispatcher knows of a message's delivery since the daemon
    /// started (attempts, last send). Kept while the message is undelivered
    /// and for the last 16,384 finished ones.
    pub fn live(&self, id: &MessageId) -> Option<LiveDelivery> {
        self.live.lock().ok().and_then(|l| l.map.get(&id.0).cloned())
    }

    fn next_at(&self, id: &[u8; 16]) -> Option<Instant> {
        self.live
            .lock()
            .ok()
            .and_then(|l| l.map.get(id).and_then(|d| d.next_at))
    }

    /// An attempt begins; returns the attempts so far, this one included.
    fn begin_attempt(&self, id: &MessageId, peer: &AuthorityId) -> u32 {
        let Ok(mut l) = self.live.lock() else { return 1 };
        let d = l.map.entry(id.0).or_insert_with(|| LiveDelivery {
            peer: peer.clone(),
            attempts: 0,
            last_sent: None,
            next_at: None,
        });
        d.attempts = d.attempts.saturating_add(1);
        d.next_at = None;
        d.attempts
    }

    /// Attempts made before a restart (the store's count), at start.
    fn seed_attempts(&self, id: &MessageId, peer: &AuthorityId, attempts: u32) {
        if attempts == 0 {
            return;
        }
        if let Ok(mut l) = self.live.lock() {
            l.map.entry(id.0).or_insert_with(|| LiveDelivery {
                peer: peer.clone(),
                attempts,
                last_sent: None,
                next_at: None,
            });
        }
    }

    /// An attempt interrupted because the peer was removed: not counted.
    fn uncount_attempt(&self, id: &MessageId) {
        if let Ok(mut l) = self.live.lock() {
            if let Some(d) = l.map.get_mut(&id.0) {
                d.attempts = d.attempts.saturating_sub(1);
                d.next_at = None;
            }
        }
    }

    fn sent(&self, id: &MessageId) {
        if let Ok(mut l) = self.live.lock() {
            if let Some(d) = l.map.get_mut(&id.0) {
                d.last_sent = Some(Timestamp::now());
            }
        }
    }

    fn retry_at(&self, id: &MessageId, at: Instant) {
        if let Ok(mut l) = self.live.lock() {
            if let Some(d) = l.map.get_mut(&id.0) {
                d.next_at = Some(at);
            }
        }
    }

    /// Delivered or failed for good: kept (bounded) for status queries.
    fn finish(&self, id: &MessageId) {
        let _ = self.take_fresh(&id.0);
        if let Ok(mut l) = self.live.lock() {
            if let Some(d) = l.map.get_mut(&id.0) {
                d.next_at = None;
                l.finished.push_back(id.0);
            }
            while l.finished.len() > LIVE_FINISHED_KEPT {
                if let Some(old) = l.finished.pop_front() {
                    l.map.remove(&old);
                }
            }
        }
    }
}

/// What the store keeps (sealed at rest) for a queued message.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct OutboxRecord {
    /// The envelope exactly as it is sent.
    #[serde(with = "serde_bytes")]
    pub envelope: Vec<u8>,
    /// Its envelope digest (what the receipt must name).
    pub digest: konvert_envelope::model::Digest,
    /// Fingerprint of the submission (the message without attachment
    /// sources), to tell a resubmission from a different message reusing
    /// the id.
    pub fingerprint: konvert_envelope::model::Digest,
    /// The sealed message (deterministic CBOR), applied to its case when
    /// the peer accepts it (absent in records written before cases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<serde_bytes::ByteBuf>,
    /// A large envelope is kept in a store blob instead of `envelope`
    /// (sealed into it and streamed out of it in bounded memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envelope_blob: Option<konvert_store::BlobRef>,
    /// `message` as sealed, while the record is held in memory between its
    /// submission and its first attempt (not stored: a record read back is
    /// decoded again when its receipt arrives).
    #[serde(skip)]
    pub decoded: Option<Arc<Message>>,
}

impl OutboxRecord {
    fn to_vec(&self) -> Result<Vec<u8>, SubmitError> {
        // The envelope, the message and a few hundred bytes of CBOR framing
        // and fields: one allocation (a 1 MiB record that outgrew its
        // buffer was copied into a fresh 2 MiB one).
        let message = self.message.as_ref().map_or(0, |m| m.len());
        let mut out = Vec::with_capacity(self.envelope.len() + message + 512);
        ciborium::into_writer(self, &mut out).map_err(|e| SubmitError::Internal(e.to_string()))?;
        Ok(out)
    }
    /// Decodes a stored record.
    pub fn from_slice(b: &[u8]) -> Result<Self, String> {
        ciborium::from_reader(b).map_err(|e| e.to_string())
    }
}

/// The fingerprint of a submitted message: SHA-256 of its deterministic
/// CBOR with attachment sources, lengths and digests cleared.
fn fingerprint(m: &Message) -> Result<konvert_envelope::model::Digest, SubmitError> {
    let mut m = m.clone();
    for a in m.attachments_mut() {
        a.file = None;
        a.length = 0;
        a.sha256 = Default::default();
    }
    let bytes =
        konvert_envelope::cbor::to_deterministic_vec(&m).map_err(|e| SubmitError::Internal(e.to_string()))?;
    Ok(konvert_envelope::model::Digest::of(&bytes))
}

/// A submission after the API layer parsed it.
#[derive(Debug)]
pub struct Submission {
    /// The message (attachments name `upload:<id>` files).
    pub message: Message,
    /// The signatory id.
    pub signatory: String,
    /// Received messages whose data this message passes on (Art. 11.3).
    pub sources: Vec<Id>,
    /// The purpose of passing them on, if the message states none itself.
    pub purpose: Option<String>,
}

/// Validates, signs, seals and durably queues a message. Returns its id
/// (which is also the envelope id) and whether it was new (a resubmission
/// of the same message id is idempotent).
pub async fn submit(node: &Arc<Node>, sub: Submission) -> Result<(Id, bool), SubmitError> {
    if uploads_len(node, &sub.message) > super::inbound::STREAM_ABOVE {
        // Large: sealed into a store blob, streamed, on a blocking thread.
        let node2 = Arc::clone(node);
        return tokio::task::spawn_blocking(move || submit_blocking(&node2, sub))
            .await
            .map_err(|e| SubmitError::Internal(e.to_string()))?;
    }
    // Small: validated, signed and sealed on this task (a few hundred µs
    // of CPU, most of it the public-key work), then queued with the
    // store's async write: no thread waits for the fdatasync.
    match prepare(node, sub)? {
        Prepared::Existing(r) => Ok(r),
        Prepared::Sealed(q) => {
            let put = node.store.put_outbox_async(&q.new).await;
            queued(node, q, put)
        }
    }
}

/// [`submit`] on the caller's thread, which waits for the durable write.
pub(crate) fn submit_blocking(node: &Arc<Node>, sub: Submission) -> Result<(Id, bool), SubmitError> {
    match prepare(node, sub)? {
        Prepared::Existing(r) => Ok(r),
        Prepared::Sealed(q) => {
            let put = node.store.put_outbox(&q.new);
            queued(node, q, put)
        }
    }
}

/// The bytes of the uploads a message's attachments name (what decides
/// whether it is sealed in memory or streamed); unknown uploads count as
/// nothing here and are refused by [`prepare`].
fn uploads_len(node: &Node, msg: &Message) -> u64 {
    msg.attachments()
        .into_iter()
        .filter_map(|a| {
            let name = a
                .file
                .as_deref()?
                .strip_prefix(crate::api::types::UPLOAD_REF_PREFIX)?;
            let upload: Id = name.parse().ok()?;
            node.uploads.len(&upload)
        })
        .sum()
}

/// A submission after its checks: already queued before, or sealed and
/// ready for the durable outbox write.
enum Prepared {
    Existing((Id, bool)),
    Sealed(Box<Ready>),
}

/// A sealed message ready for the outbox.
struct Ready {
    id: Id,
    peer: AuthorityId,
    kind: &'static str,
    size: u64,
    new: NewMessage,
    /// The record being stored, also handed to the first delivery attempt.
    record: Arc<OutboxRecord>,
    /// The uploads it used (claimed), spent once it is queued.
    used: Vec<super::uploads::Claim>,
}

/// Everything before the durable write: checks, validation, signing and
/// sealing.
fn prepare(node: &Arc<Node>, sub: Submission) -> Result<Prepared, SubmitError> {
    let msg = sub.message;
    let h = msg.header.clone();
    if h.from != node.keys.authority {
        return Err(SubmitError::NotOwnAuthority(h.from, node.keys.authority.clone()));
    }
    let dir = node.directory();
    let peer = dir
        .peers
        .get(&h.to)
        .filter(|p| p.agreements.contains(&h.agreement))
        .ok_or_else(|| SubmitError::UnknownPeer(h.to.clone(), h.agreement.to_string()))?;
    let profile = dir
        .profiles
        .get(&h.agreement)
        .ok_or_else(|| SubmitError::UnknownAgreement(h.agreement.to_string()))?;
    let signer = node
        .signatories
        .get(&sub.signatory)
        .ok_or_else(|| SubmitError::UnknownSignatory(sub.signatory.clone()))?;
    let id = MessageId(*h.id.as_bytes());
    let print = fingerprint(&msg)?;
    // Idempotent: the same message submitted again is the same message; a
    // different one with the same id is refused.
    if node.store.meta(konvert_store::Direction::Outbound, &id).is_ok() {
        let same = node
            .store
            .outbox_get(&id)
            .ok()
            .and_then(|m| OutboxRecord::from_slice(&m.payload).ok())
            .is_some_and(|r| r.fingerprint == print);
        return if same {
            Ok(Prepared::Existing((h.id, false)))
        } else {
            Err(SubmitError::IdInUse(h.id))
        };
    }
    let now = node.now();
    // Who may sign: the own latest roster, at the node's time and at the
    // message's (what the peer checks), before anything is sealed.
    if let Some(roster) = node
        .own_roster
        .current(&node.config.keys_dir)
        .map_err(|e| SubmitError::OwnRoster(e.to_string()))?
    {
        crate::signatories::check_signer(
            roster.roster(),
            &sub.signatory,
            &signer.verifying_key(),
            &[now, h.time],
        )?;
    }
    let mut sources = Vec::new();
    // The digests of uploads held in memory, hashed when they arrived:
    // sealing does not hash them again.
    let mut known = Vec::new();
    let mut used = Vec::new();
    let mut upload_bytes = 0u64;
    for (index, a) in msg.attachments().into_iter().enumerate() {
        let name = a
            .file
            .as_deref()
            .and_then(|f| f.strip_prefix(crate::api::types::UPLOAD_REF_PREFIX))
            .ok_or_else(|| SubmitError::Attachment {
                index,
                reason: "must name an upload (\"file\": \"upload:<id>\")".into(),
            })?;
        let upload: Id = name.parse().map_err(|_| SubmitError::Attachment {
            index,
            reason: "the upload id is not a UUID".into(),
        })?;
        let missing = || SubmitError::Attachment {
            index,
            reason: format!("upload {upload} {}", super::uploads::ClaimError::Missing),
        };
        // Claimed first: a concurrent submission naming it is refused
        // until this one is queued (the upload is spent) or refused.
        if !used.iter().any(|c: &super::uploads::Claim| c.id() == upload) {
            let claim = node.uploads.claim(&upload).map_err(|e| SubmitError::Attachment {
                index,
                reason: format!("upload {upload} {e}"),
            })?;
            used.push(claim);
        }
        let (source, len, digest) = used
            .iter()
            .find(|c| c.id() == upload)
            .and_then(super::uploads::Claim::open_with_digest)
            .ok_or_else(missing)?;
        upload_bytes += len;
        sources.push(source);
        known.push(digest.map(konvert_envelope::model::Digest));
    }
    let mut dyns: Vec<&mut dyn Read> = sources.iter_mut().map(|s| s as &mut dyn Read).collect();
    // Art. 17 first, so that the refusal names the receipt code the peer
    // would give (agreement_not_in_force or agreement_terminated); then the
    // message itself (fields, kind), then its place in the procedure.
    profile
        .in_force_at(now)
        .and_then(|()| profile.in_force_at(h.time))
        .map_err(|e| SubmitError::Procedure(super::cases::OutgoingError::NotInForce(e)))?;
    // Art. 16: the version its case was opened under, or the one in force at its time.
    let profile = node
        .cases
        .with(|p| super::versions::governing(&dir.versions, &p.book, &msg))
        .map_err(|e| match e {
            super::versions::VersionError::At(ProfileVersionError::NotInForce(e)) => {
                SubmitError::Procedure(super::cases::OutgoingError::NotInForce(e))
            }
            e => SubmitError::ProfileVersion(e),
        })?;
    profile
        .validate_unsealed(&msg, now)
        .map_err(|e| SubmitError::Seal(envelope::SealError::Invalid(e)))?;
    node.cases
        .check_outgoing(&msg, profile, &sub.sources, sub.purpose.as_deref(), now)?;
    let sealed = seal_for_outbox(
        node,
        msg,
        &mut dyns,
        &known,
        signer,
        peer,
        profile,
        now,
        print,
        upload_bytes,
    );
    if sealed.is_err() {
        node.cases.release(&h.id);
    }
    let mut sealed = sealed?;
    sealed.used = used;
    Ok(Prepared::Sealed(Box::new(sealed)))
}

/// After the outbox write: the uploads are spent, the first delivery
/// starts; a failed write frees the message's place in its case.
fn queued(
    node: &Arc<Node>,
    mut q: Box<Ready>,
    put: konvert_store::Result<konvert_store::Put>,
) -> Result<(Id, bool), SubmitError> {
    let put = match put {
        Ok(p) => p,
        Err(e) => {
            discard_blob(node, &q.record);
            node.cases.release(&q.id);
            return Err(e.into());
        }
    };
    if !put.created {
        // A concurrent submission of the same id won: its envelope is the one.
        discard_blob(node, &q.record);
    }
    // The envelope now holds the attachments (sealed); the uploads are spent.
    for claim in std::mem::take(&mut q.used) {
        claim.spend();
    }
    info!(id = %q.id, peer = %q.peer, kind = q.kind, size = q.size, "queued");
    if put.created {
        let key = *q.id.as_bytes();
        node.links.keep_fresh(key, Arc::clone(&q.record));
        if tokio::runtime::Handle::try_current().is_ok() {
            let mut next = Duration::MAX;
            start_delivery(
                node,
                &MessageId(key),
                q.peer.as_str(),
                MessageState::Queued,
                Instant::now(),
                &mut next,
            );
        } else {
            node.outbox_wake.notify_one();
        }
    }
    Ok((q.id, put.created))
}

fn discard_blob(node: &Node, record: &OutboxRecord) {
    if let Some(b) = &record.envelope_blob {
        let _ = node.store.blob_discard(b);
    }
}

#[allow(clippy::too_many_arguments)]
fn seal_for_outbox(
    node: &Node,
    msg: Message,
    dyns: &mut [&mut dyn Read],
    known: &[Option<konvert_envelope::model::Digest>],
    signer: &konvert_envelope::keys::SigningKey,
    peer: &super::PeerEntry,
    profile: &konvert_envelope::profile::Profile,
    now: Timestamp,
    print: konvert_envelope::model::Digest,
    upload_bytes: u64,
) -> Result<Ready, SubmitError> {
    // Large messages are sealed into a store blob and streamed out later,
    // in bounded memory; small ones are sealed in memory.
    let streamed = upload_bytes > super::inbound::STREAM_ABOVE;
    let h = msg.header.clone();
    let id = MessageId(*h.id.as_bytes());
    let kind = msg.kind().as_str();
    // The node key towards this peer and its current age recipients
    // (both follow key rotations: crate::rotation).
    let own = node.own.for_peer(&h.to, now);
    let card = crate::rotation::sealing_card(node, &peer.card);
    let params = envelope::SealParams {
        signatory: signer,
        node: &own,
        recipient: &card,
        profile,
        envelope_id: h.id,
        now,
    };
    let (mut sealed, envelope, envelope_blob) = if streamed {
        let mut w = std::io::BufWriter::with_capacity(
            envelope::CHUNK_SIZE,
            node.store.blob_writer(h.agreement.as_str(), Some(kind))?,
        );
        let sealed = envelope::seal(msg, dyns, known, &params, &mut w)?;
        let w = w
            .into_inner()
            .map_err(|e| SubmitError::Internal(format!("sealed envelope not written: {}", e.error())))?;
        (sealed, Vec::new(), Some(w.finish()?))
    } else {
        // Sized for the attachments and the message, so that a large one is
        // not copied again and again as the buffer grows.
        let mut bytes = Vec::with_capacity(usize::try_from(upload_bytes).unwrap_or(0) + (16 << 10));
        let sealed = envelope::seal(msg, dyns, known, &params, &mut bytes)?;
        (sealed, bytes, None)
    };
    let blob = envelope_blob.clone();
    let record = OutboxRecord {
        envelope,
        digest: sealed.envelope_digest,
        fingerprint: print,
        message: None,
        envelope_blob,
        decoded: None,
    };
    let message = std::mem::take(&mut sealed.message_cbor);
    let built = super::cases::store_case_of_outgoing(node, &sealed.message)
        .map_err(SubmitError::from)
        .and_then(|case| {
            let record = OutboxRecord {
                message: Some(serde_bytes::ByteBuf::from(message)),
                ..record
            };
            let payload = record.to_vec()?;
            Ok((record, case, payload))
        });
    let (mut record, case, payload) = match built {
        Ok(b) => b,
        Err(e) => {
            if let Some(b) = &blob {
                let _ = node.store.blob_discard(b);
            }
            return Err(e);
        }
    };
    let size = sealed.size;
    // Applied to its case when the peer accepts it: kept decoded.
    record.decoded = Some(Arc::new(sealed.message));
    Ok(Ready {
        id: h.id,
        peer: h.to.clone(),
        kind,
        size,
        new: NewMessage {
            id,
            peer: h.to.to_string(),
            agreement: h.agreement.to_string(),
            kind: kind.to_string(),
            case,
            payload,
            digest: Some(record.digest.0),
        },
        record: Arc::new(record),
        used: Vec::new(),
    })
}

/// Rebuilds the cases' in-flight slots from the undelivered outbox (at start).
pub fn restore_in_flight(node: &Node) {
    for state in [MessageState::Queued, MessageState::Sent] {
        let mut after: Option<MessageId> = None;
        loop {
            let Ok(batch) = node
                .store
                .list_by_state(Direction::Outbound, state, after.as_ref(), 256)
            else {
                break;
            };
            let Some(last) = batch.last() else { break };
            after = Some(last.id);
            for meta in &batch {
                if let Some(m) = outbox_message(node, &meta.id) {
                    node.cases.restore_in_flight(&m);
                    // The attempts made before the restart count toward the limit.
                    node.links.seed_attempts(&meta.id, &m.header.to, meta.attempts);
                }
            }
            if batch.len() < 256 {
                break;
            }
        }
    }
}

/// The message of a queued envelope, as sealed.
fn outbox_message(node: &Node, id: &MessageId) -> Option<Message> {
    let rec = OutboxRecord::from_slice(&node.store.outbox_get(id).ok()?.payload).ok()?;
    konvert_envelope::cbor::from_slice(rec.message.as_deref()?, 64 << 20).ok()
}

/// Delivers queued messages until `shutdown` resolves; also runs the
/// sweep of unused uploads ([`super::uploads::Uploads::sweep`]).
pub async fn dispatch(node: Arc<Node>, shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut shutdown = shutdown;
    let sweeper = tokio::spawn(upload_sweeper(Arc::clone(&node), shutdown.clone()));
    loop {
        if *shutdown.borrow() {
            break;
        }
        let wait = match schedule(&node) {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "outbox: cannot read the queue");
                Duration::from_secs(5)
            }
        };
        tokio::select! {
            _ = node.outbox_wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
        }
    }
    let _ = sweeper.await;
}

async fn upload_sweeper(node: Arc<Node>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let max_age = node.config.api.upload_max_age.0;
    let every = super::uploads::sweep_interval(max_age);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            break;
        }
        let node2 = Arc::clone(&node);
        match tokio::task::spawn_blocking(move || node2.uploads.sweep(max_age, SystemTime::now())).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => info!(removed = n, "expired uploads removed"),
            Ok(Err(e)) => warn!(error = %e, "upload sweep failed"),
            Err(e) => warn!(error = %e, "upload sweep task failed"),
        }
    }
}

/// Starts deliveries of undelivered messages (queued, or sent without a
/// receipt yet) that are due; returns how long to wait before looking again.
fn schedule(node: &Arc<Node>) -> Result<Duration, konvert_store::Error> {
    let mut next_check = Duration::from_secs(30);
    let now = Instant::now();
    for state in [MessageState::Queued, MessageState::Sent] {
        let mut after: Option<MessageId> = None;
        loop {
            // Ids and peers from the index alone: this runs after every
            // delivery, so it must not read a record per queued message.
            let batch = node
                .store
                .list_ids_by_state(Direction::Outbound, state, after.as_ref(), 1024)?;
            let Some(last) = batch.last() else { break };
            after = Some(last.0);
            for (id, peer) in &batch {
                start_delivery(node, id, peer, state, now, &mut next_check);
            }
            if batch.len() < 1024 {
                break;
            }
        }
    }
    Ok(next_check)
}

fn start_delivery(
    node: &Arc<Node>,
    id: &MessageId,
    peer: &str,
    state: MessageState,
    now: Instant,
    next_check: &mut Duration,
) {
    let key = id.0;
    if node
        .links
        .in_flight
        .lock()
        .map(|s| s.contains(&key))
        .unwrap_or(true)
    {
        return;
    }
    if let Some(at) = node.links.next_at(&key) {
        if at > now {
            *next_check = (*next_check).min(at - now);
            return;
        }
    }
    let Ok(peer) = AuthorityId::new(peer.to_owned()) else {
        return;
    };
    let Some(link) = node.links.get(&peer) else {
        // Peer removed from the configuration: the message stays, paused.
        return;
    };
    // This peer has enough in flight: the message waits for the next free
    // slot (a finishing delivery starts it), then slots are taken up again
    // in case one came free meanwhile.
    link.wait_for_slot(key, state == MessageState::Queued);
    pump(node, &peer, &link);
}

/// Starts deliveries of messages waiting for a slot of `link` while slots
/// are free.
fn pump(node: &Arc<Node>, peer: &AuthorityId, link: &Arc<Link>) {
    loop {
        let Ok(permit) = Arc::clone(&link.slots).try_acquire_owned() else {
            return;
        };
        let Some((key, first_send)) = link.next_waiting() else {
            return;
        };
        let fresh = match node.links.in_flight.lock() {
            Ok(mut s) => {
                let fresh = s.insert(key);
                node.outbound_in_flight
                    .store(s.len(), std::sync::atomic::Ordering::Relaxed);
                fresh
            }
            Err(_) => false,
        };
        if !fresh {
            continue;
        }
        node.note_in_flight();
        link.started(&key);
        let node = Arc::clone(node);
        let (peer, link) = (peer.clone(), Arc::clone(link));
        tokio::spawn(async move {
            let retry = deliver(&node, peer.clone(), Arc::clone(&link), meta_id(key), first_send).await;
            drop(permit);
            if let Ok(mut s) = node.links.in_flight.lock() {
                s.remove(&key);
                node.outbound_in_flight
                    .store(s.len(), std::sync::atomic::Ordering::Relaxed);
            }
            node.note_in_flight();
            pump(&node, &peer, &link);
            if retry {
                // The dispatcher's next look must come in time for it.
                node.outbox_wake.notify_one();
            }
        });
    }
}

fn meta_id(key: [u8; 16]) -> MessageId {
    MessageId(key)
}

/// Why one delivery attempt did not get a receipt.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("no address could be reached: {0}")]
    Connect(String),
    #[error("sending failed: {0}")]
    Send(String),
    #[error("the receipt does not verify: {0}")]
    BadReceipt(String),
    #[error("the receiver could not store it (temporary_failure)")]
    Temporary,
    #[error("store: {0}")]
    Store(#[from] konvert_store::Error),
}

impl AttemptError {
    /// Whether the peer could not be reached (no connection, or the
    /// envelope could not be sent or got no receipt), as opposed to an
    /// answer it gave or a local failure.
    fn unreachable(&self) -> bool {
        matches!(self, Self::Connect(_) | Self::Send(_))
    }

    /// A short code for the store's record of a failed attempt.
    fn code(&self) -> &'static str {
        match self {
            Self::Connect(_) => "unreachable",
            Self::Send(_) => "send_failed",
            Self::BadReceipt(_) => "bad_receipt",
            Self::Temporary => "temporary_failure",
            Self::Store(_) => "local_store_error",
        }
    }
}

/// One delivery attempt and its bookkeeping; returns whether a retry was
/// scheduled.
async fn deliver(
    node: &Arc<Node>,
    peer: AuthorityId,
    link: Arc<Link>,
    id: MessageId,
    first_send: bool,
) -> bool {
    let started = Instant::now();
    let attempts = node.links.begin_attempt(&id, &peer);
    match attempt(node, &peer, &link, &id, first_send).await {
        Ok(outcome) => {
            link.record_success();
            node.links.finish(&id);
            info!(id = %Id::from_bytes(id.0), peer = %peer, outcome = %outcome, attempt = attempts, ms = started.elapsed().as_millis() as u64, "delivered");
            false
        }
        Err(e) => {
            if node.links.get(&peer).is_none_or(|l| !Arc::ptr_eq(&l, &link)) {
                // Removed on reload while in flight: paused, not counted.
                node.links.uncount_attempt(&id);
                info!(id = %Id::from_bytes(id.0), peer = %peer, "delivery interrupted: peer removed; message paused");
                return false;
            }
            if e.unreachable() {
                link.record_failure();
            }
            let next = node.backoff.next(attempts, &mut rand::thread_rng());
            match next {
                Next::RetryAfter(d) => {
                    warn!(id = %Id::from_bytes(id.0), peer = %peer, attempt = attempts, retry_in_ms = d.as_millis() as u64, error = %e, "delivery failed; will retry");
                    // Counted durably too, so that the limit holds across
                    // restarts (restore_in_flight seeds the count from it).
                    let (store, code) = (Arc::clone(&node.store), e.code());
                    match tokio::task::spawn_blocking(move || store.mark_attempt(&id, code)).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => debug!(error = %e, "failed attempt not recorded"),
                        Err(e) => debug!(error = %e, "failed attempt not recorded"),
                    }
                    node.links.retry_at(&id, Instant::now() + d);
                    true
                }
                Next::GiveUp => {
                    warn!(id = %Id::from_bytes(id.0), peer = %peer, attempts, error = %e, "delivery failed; giving up");
                    node.links.finish(&id);
                    node.cases.release(&Id::from_bytes(id.0));
                    let (store, outcome) = (Arc::clone(&node.store), failure_outcome(attempts, &e));
                    match tokio::task::spawn_blocking(move || store.mark_failed(&id, &outcome)).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => warn!(error = %e, "cannot mark a message failed"),
                        Err(e) => warn!(error = %e, "cannot mark a message failed"),
                    }
                    node.outcomes.settled(&id);
                    false
                }
            }
        }
    }
}

/// The envelope of a record held in memory, for quinn to send from as it
/// is (see [`crate::transport::Connection::send_envelope_bytes`]).
struct EnvelopeOf(Arc<OutboxRecord>);

impl AsRef<[u8]> for EnvelopeOf {
    fn as_ref(&self) -> &[u8] {
        &self.0.envelope
    }
}

async fn attempt(
    node: &Arc<Node>,
    peer: &AuthorityId,
    link: &Link,
    id: &MessageId,
    first_send: bool,
) -> Result<String, AttemptError> {
    // Its share of the peer's in-memory budget, held until its receipt is
    // handled. A just-queued envelope is in memory already (its submission
    // made it; taking it frees room for the next): it waits for its share
    // in hand — at most one per slot. A stored one (a retry, after a
    // restart) is read only once its share, sized from its record, is
    // free, so that a backlog read back from the disk never piles up in
    // memory. None for an envelope streamed from a blob.
    let (record, _budget) = match node.links.take_fresh(&id.0) {
        Some(r) => {
            let budget = link.reserve_bytes(r.envelope.len()).await;
            (r, budget)
        }
        None => {
            let meta = node.store.meta(konvert_store::Direction::Outbound, id)?;
            let budget = link
                .reserve_bytes(usize::try_from(meta.payload_len).unwrap_or(usize::MAX))
                .await;
            let r = OutboxRecord::from_slice(&node.store.outbox_get(id)?.payload)
                .map_err(AttemptError::BadReceipt)?;
            (Arc::new(r), budget)
        }
    };
    let conn = connection(node, peer, link).await?;
    let sent = match &record.envelope_blob {
        Some(blob) => {
            let reader = node.store.blob_reader(blob)?;
            let len = blob.len;
            let stream = super::service::stream_blocking(reader, Id::from_bytes(id.0));
            conn.send_envelope(len, stream).await
        }
        None => {
            conn.send_envelope_bytes(bytes::Bytes::from_owner(EnvelopeOf(Arc::clone(&record))))
                .await
        }
    };
    // `sent`: the envelope went out on a connection the peer accepted (a
    // refused or lost connection is not sending). Recorded in memory, and
    // the first time durably as queued → sent (audited).
    let reached = sent
        .as_ref()
        .map_or_else(|e| e.connection_error().is_none(), |_| true);
    if reached {
        node.links.sent(id);
    }
    let receipt_bytes = match sent {
        Ok(r) => r,
        Err(e) => {
            if reached && first_send {
                let store = Arc::clone(&node.store);
                let key = *id;
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || store.mark_sent(&key)).await {
                    debug!(error = %e, "marking a message sent failed");
                }
            }
            // A lost connection, or a peer that stopped answering (timeout: it
            // may have restarted and cannot tell us), is dropped so that the
            // next attempt connects afresh.
            let stale = e.connection_error().is_some()
                || matches!(
                    e,
                    crate::transport::SendError::Timeout(_) | crate::transport::SendError::Receipt(_)
                );
            if stale {
                let mut c = link.connection.lock().await;
                if c.as_ref()
                    .is_some_and(|c| c.remote_address() == conn.remote_address())
                {
                    if let Some(old) = c.take() {
                        old.close(crate::transport::CloseCode::Normal);
                    }
                }
            }
            return Err(AttemptError::Send(e.to_string()));
        }
    };
    let dir = node.directory();
    let card = &dir
        .peers
        .get(peer)
        .ok_or_else(|| AttemptError::BadReceipt("peer no longer configured".into()))?
        .card;
    let keys = crate::rotation::accepted_node_keys(node, card);
    let receipt = crate::rotation::verify_receipt_batched(node, &receipt_bytes, &keys)
        .await
        .map_err(|e| AttemptError::BadReceipt(e.to_string()))?;
    let digest = record.digest;
    // A receiver that refuses an envelope unread (too large) cannot name it:
    // it answers on the envelope's own stream with the nil id and digest.
    let unread_refusal = matches!(
        receipt.outcome,
        Outcome::Rejected {
            code: konvert_envelope::receipt::RejectCode::TooLarge
        }
    ) && receipt.envelope_id.as_bytes() == &[0; 16]
        && receipt.envelope_digest.is_zero();
    let names_this = receipt.envelope_id.as_bytes() == &id.0 && receipt.envelope_digest == digest;
    if !(names_this || unread_refusal) || &receipt.receiver != peer {
        return Err(AttemptError::BadReceipt(
            "it names another envelope or receiver".into(),
        ));
    }
    let outcome = match receipt.outcome {
        Outcome::Accepted => "accepted".to_string(),
        Outcome::Rejected { code } if code.is_temporary() => return Err(AttemptError::Temporary),
        Outcome::Rejected { code } => format!("rejected:{code}"),
    };
    crate::rotation::delivered(
        node,
        peer,
        &konvert_envelope::model::Id::from_bytes(id.0),
        matches!(receipt.outcome, Outcome::Accepted),
    );
    // The case applied (its records ride on the durable write that
    // follows), then (queued →) sent → delivered, each audited: the store
    // records a delivery straight from queued as sent too, in the same
    // write, whose sync this task awaits without holding a thread.
    let read_back;
    let message = match &record.decoded {
        Some(m) => Some(&**m),
        None => {
            read_back = record.message.as_ref().and_then(|b| {
                konvert_envelope::cbor::from_slice::<Message>(b, super::cases::MESSAGE_RECORD_MAX).ok()
            });
            read_back.as_ref()
        }
    };
    super::cases::delivered(node, message, &receipt).map_err(|e| AttemptError::Send(e.to_string()))?;
    // The peer has answered: its last delivery is now (set before the
    // durable mark is awaited, which a reader sees applied at once while
    // the group commit may still gather before its sync).
    if let Ok(mut t) = link.last_delivery.lock() {
        *t = Some(Timestamp::now());
    }
    node.store
        .mark_delivered_async(
            id,
            &NewReceipt {
                outcome: outcome.clone(),
                bytes: receipt_bytes,
            },
        )
        .await?;
    node.outcomes.settled(id);
    Ok(outcome)
}

/// The outcome recorded for a message that could not be delivered: short,
/// one line, no control characters (the store's rule for outcome texts).
fn failure_outcome(attempts: u32, e: &AttemptError) -> String {
    let reason: String = e
        .to_string()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut s = format!("undeliverable after {attempts} attempts: {reason}");
    if s.len() > 120 {
        let mut cut = 117;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// The connection to `peer`, made if needed: addresses tried in turn.
async fn connection(node: &Arc<Node>, peer: &AuthorityId, link: &Link) -> Result<Connection, AttemptError> {
    let mut guard = link.connection.lock().await;
    if let Some(c) = guard.as_ref() {
        if c.close_reason().is_none() {
            return Ok(c.clone());
        }
    }
    *guard = None;
    let dir = node.directory();
    let entry = dir
        .peers
        .get(peer)
        .ok_or_else(|| AttemptError::Connect("peer no longer configured".into()))?;
    // The card's pin, and during the peer's key rotation its old and new ones.
    let pins = crate::rotation::dial_pins(node, &entry.card, entry.pin);
    let tries = entry.addresses.len().max(1);
    let mut last = String::new();
    for _ in 0..tries {
        let addr = link
            .addresses
            .lock()
            .ok()
            .and_then(|r| r.current().map(str::to_string))
            .unwrap_or_default();
        match resolve(&addr).await {
            Some(sa) => match node.endpoint.connect_any(sa, peer, &pins).await {
                Ok(c) => {
                    info!(peer = %peer, address = %addr, "connected");
                    *guard = Some(c.clone());
                    return Ok(c);
                }
                Err(e) => last = format!("{addr}: {e}"),
            },
            None => last = format!("{addr}: cannot resolve"),
        }
        debug!(peer = %peer, error = %last, "connect failed; trying the next address");
        if let Ok(mut r) = link.addresses.lock() {
            r.advance();
        }
    }
    Err(AttemptError::Connect(last))
}

async fn resolve(addr: &str) -> Option<std::net::SocketAddr> {
    tokio::net::lookup_host(addr).await.ok()?.next()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn each_peer_gets_the_configured_number_of_delivery_slots() {
        let t = tempfile::tempdir().unwrap();
        let mut dir = Directory {
            profiles: Default::default(),
            versions: Default::default(),
            peers: Default::default(),
        };
        for a in ["by.mvd", "am.police"] {
            let id = AuthorityId::new(a).unwrap();
            let card = crate::offline::keygen(&id, &t.path().join(a), None, false).unwrap();
            let entry = super::super::PeerEntry {
                card,
                addresses: vec!["127.0.0.1:1".into()],
                agreements: Vec::new(),
                pin: crate::transport::Pin::of_spki(a.as_bytes()),
            };
            dir.peers.insert(id, entry);
        }
        let links = Links::new(&dir, 3);
        for a in ["by.mvd", "am.police"] {
            let link = links.get(&AuthorityId::new(a).unwrap()).unwrap();
            assert_eq!(link.slots.available_permits(), 3, "{a}");
            assert_eq!(link.bytes.available_permits() << 10, IN_FLIGHT_BYTES_PER_PEER);
        }
        // Peers added on reload (SIGHUP) get the same; 0 is taken as 1.
        let empty = Directory {
            profiles: Default::default(),
            versions: Default::default(),
            peers: Default::default(),
        };
        let links = Links::new(&empty, 0);
        links.add_and_refresh(&dir);
        let link = links.get(&AuthorityId::new("am.police").unwrap()).unwrap();
        assert_eq!(link.slots.available_permits(), 1);
        assert_eq!(Links::default().per_peer, IN_FLIGHT_PER_PEER);
    }

    #[tokio::test]
    async fn the_byte_budget_is_taken_in_whole_kib_and_never_more_than_all_of_it() {
        let link = Link::new(vec!["127.0.0.1:1".into()], 4);
        let all = IN_FLIGHT_BYTES_PER_PEER >> 10;
        assert!(link.reserve_bytes(0).await.is_none(), "nothing to hold");
        let one = link.reserve_bytes(1).await.unwrap();
        let mib = link.reserve_bytes(1 << 20).await.unwrap();
        assert_eq!(link.bytes.available_permits(), all - 1 - 1024);
        drop((one, mib));
        // An envelope larger than the budget takes all of it, and waits for
        // the others rather than forever.
        let huge = link.reserve_bytes(usize::MAX).await.unwrap();
        assert_eq!(link.bytes.available_permits(), 0);
        let waiting = tokio::time::timeout(Duration::from_millis(20), link.reserve_bytes(1)).await;
        assert!(
            waiting.is_err(),
            "the next delivery waits while the budget is spent"
        );
        drop(huge);
        assert!(link.reserve_bytes(1).await.is_some());
    }

    #[test]
    fn outcome_waiters_are_told_once_and_those_that_gave_up_are_forgotten() {
        let outcomes = Outcomes::default();
        let (a, b) = (MessageId([1; 16]), MessageId([2; 16]));
        let mut first = outcomes.watch(&a);
        let mut second = outcomes.watch(&a);
        let mut other = outcomes.watch(&b);
        assert_eq!(outcomes.watched(), 2);
        outcomes.settled(&a);
        assert_eq!(first.try_recv(), Ok(()));
        assert_eq!(second.try_recv(), Ok(()));
        // Another message's waiter is not woken, and settling again tells no one.
        assert!(other.try_recv().is_err());
        outcomes.settled(&a);
        assert_eq!(outcomes.watched(), 1);
        // A waiter that timed out (receiver dropped) is pruned, and with it the entry.
        drop(other);
        outcomes.unwatch(&b);
        assert_eq!(outcomes.watched(), 0);
        // Dropped waiters also go when another one registers.
        for _ in 0..100 {
            drop(outcomes.watch(&b));
        }
        let mut live = outcomes.watch(&b);
        assert_eq!(outcomes.waiting.lock().unwrap()[&b.0].len(), 1);
        outcomes.settled(&b);
        assert_eq!(live.try_recv(), Ok(()));
    }

    #[test]
    fn live_attempts_are_counted_and_finished_ones_kept_bounded() {
        let links = Links::default();
        let peer = AuthorityId::new("by.mvd").unwrap();
        let id = MessageId([1; 16]);
        assert_eq!(links.begin_attempt(&id, &peer), 1);
        links.retry_at(&id, Instant::now() + Duration::from_secs(60));
        assert!(links.next_at(&id.0).is_some());
        assert_eq!(links.begin_attempt(&id, &peer), 2);
        assert!(links.next_at(&id.0).is_none());
        links.sent(&id);
        // An attempt cut short by the peer's removal does not count.
        assert_eq!(links.begin_attempt(&id, &peer), 3);
        links.uncount_attempt(&id);
        let live = links.live(&id).unwrap();
        assert_eq!(live.attempts, 2);
        assert!(live.last_sent.is_some());
        links.finish(&id);
        assert_eq!(links.live(&id).unwrap().attempts, 2);
        // Only the most recent finished ones are kept.
        for i in 0..LIVE_FINISHED_KEPT as u32 {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&i.to_be_bytes());
            b[15] = 9;
            let other = MessageId(b);
            links.begin_attempt(&other, &peer);
            links.finish(&other);
        }
        assert!(links.live(&id).is_none());
    }
}
