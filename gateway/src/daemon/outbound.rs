//! From an application's submission to a verified delivery receipt.
//!
//! [`submit`] validates, signs, seals and queues durably (the store's
//! `put_outbox` returns after a real fdatasync). The [`dispatch`] task then
//! delivers queued envelopes: for each peer one long-lived QUIC connection
//! (re-established on failure, addresses tried in turn), one stream per
//! envelope, at most [`IN_FLIGHT_PER_PEER`] envelopes in flight per peer so
//! that a slow peer never blocks the others. A transport failure schedules
//! a retry (exponential backoff with jitter, [`crate::retry`]); after the
//! configured number of attempts the message is marked failed for operators.
//! A receipt is verified with the peer's card before it is stored.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use konvert_envelope::envelope;
use konvert_envelope::model::{AuthorityId, Id, Message, Timestamp};
use konvert_envelope::receipt::{Outcome, Receipt};
use konvert_store::{MessageId, NewMessage, NewReceipt};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use super::{Directory, Node};
use crate::retry::{AddressRotation, Next};
use crate::transport::{Connection, Peer};

/// Envelopes in flight to one peer at a time.
pub const IN_FLIGHT_PER_PEER: usize = 64;

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
}

/// The state kept per peer for delivery.
#[derive(Debug)]
pub struct Link {
    connection: tokio::sync::Mutex<Option<Connection>>,
    addresses: Mutex<AddressRotation>,
    slots: Arc<Semaphore>,
    /// When the last receipt arrived.
    pub last_delivery: Mutex<Option<Timestamp>>,
}

impl Link {
    fn new(addresses: Vec<String>) -> Self {
        Self {
            connection: tokio::sync::Mutex::new(None),
            addresses: Mutex::new(AddressRotation::new(addresses)),
            slots: Arc::new(Semaphore::new(IN_FLIGHT_PER_PEER)),
            last_delivery: Mutex::new(None),
        }
    }

    /// Whether a live connection exists.
    pub fn connected(&self) -> bool {
        self.connection
            .try_lock()
            .map(|c| c.as_ref().is_some_and(|c| c.close_reason().is_none()))
            .unwrap_or(true)
    }
}

/// Links of all peers.
#[derive(Debug, Default)]
pub struct Links {
    inner: Mutex<HashMap<AuthorityId, Arc<Link>>>,
    /// Messages being delivered now (not to be picked up twice).
    in_flight: Mutex<HashSet<[u8; 16]>>,
    /// Earliest time of the next attempt, and attempts so far, per message.
    retry: Mutex<HashMap<[u8; 16], (Instant, u32)>>,
}

impl Links {
    /// Links for the peers of `dir`.
    pub fn new(dir: &Directory) -> Self {
        let l = Self::default();
        l.update(dir);
        l
    }

    /// Adds links of new peers and refreshes addresses (SIGHUP); existing connections stay.
    pub fn update(&self, dir: &Directory) {
        if let Ok(mut m) = self.inner.lock() {
            for (a, p) in &dir.peers {
                match m.get(a) {
                    Some(link) => {
                        if let Ok(mut r) = link.addresses.lock() {
                            *r = AddressRotation::new(p.addresses.clone());
                        }
                    }
                    None => {
                        m.insert(a.clone(), Arc::new(Link::new(p.addresses.clone())));
                    }
                }
            }
        }
    }

    /// The link of `peer`.
    pub fn get(&self, peer: &AuthorityId) -> Option<Arc<Link>> {
        self.inner.lock().ok().and_then(|m| m.get(peer).cloned())
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
}

impl OutboxRecord {
    fn to_vec(&self) -> Result<Vec<u8>, SubmitError> {
        let mut out = Vec::with_capacity(self.envelope.len() + 128);
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
}

/// Validates, signs, seals and durably queues a message. Returns its id
/// (which is also the envelope id) and whether it was new (a resubmission
/// of the same message id is idempotent).
pub async fn submit(node: &Arc<Node>, sub: Submission) -> Result<(Id, bool), SubmitError> {
    let node2 = Arc::clone(node);
    tokio::task::spawn_blocking(move || submit_blocking(&node2, sub))
        .await
        .map_err(|e| SubmitError::Internal(e.to_string()))?
}

fn submit_blocking(node: &Arc<Node>, sub: Submission) -> Result<(Id, bool), SubmitError> {
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
            Ok((h.id, false))
        } else {
            Err(SubmitError::IdInUse(h.id))
        };
    }
    let mut sources = Vec::new();
    let mut used = Vec::new();
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
        let path = node.uploads_dir.join(upload.to_string());
        used.push(path.clone());
        let f = std::fs::File::open(&path).map_err(|_| SubmitError::Attachment {
            index,
            reason: format!("upload {upload} does not exist (or has expired)"),
        })?;
        sources.push(std::io::BufReader::with_capacity(envelope::CHUNK_SIZE, f));
    }
    let mut dyns: Vec<&mut dyn Read> = sources.iter_mut().map(|s| s as &mut dyn Read).collect();
    let now = node.now();
    let mut bytes = Vec::new();
    let sealed = envelope::seal(
        msg, &mut dyns, signer, &node.keys, &peer.card, profile, h.id, now, &mut bytes,
    )?;
    let put = node.store.put_outbox(&NewMessage {
        id,
        peer: h.to.to_string(),
        agreement: h.agreement.to_string(),
        kind: sealed.message.kind().as_str().to_string(),
        case: None,
        payload: OutboxRecord {
            envelope: bytes,
            digest: sealed.envelope_digest,
            fingerprint: print,
        }
        .to_vec()?,
    })?;
    // The envelope now holds the attachments (sealed); the uploads are spent.
    drop(dyns);
    drop(sources);
    for p in used {
        let _ = std::fs::remove_file(p);
    }
    info!(
        id = %h.id,
        peer = %h.to,
        kind = sealed.message.kind().as_str(),
        size = sealed.size,
        "queued"
    );
    node.outbox_wake.notify_one();
    Ok((h.id, put.created))
}

/// Delivers queued messages until `shutdown` resolves.
pub async fn dispatch(node: Arc<Node>, shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut shutdown = shutdown;
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
}

/// Starts deliveries of queued messages that are due; returns how long to wait before looking again.
fn schedule(node: &Arc<Node>) -> Result<Duration, konvert_store::Error> {
    let mut next_check = Duration::from_secs(30);
    let mut after: Option<MessageId> = None;
    let now = Instant::now();
    loop {
        let batch = node.store.outbox_pending(after.as_ref(), 256)?;
        let Some(last) = batch.last() else { break };
        after = Some(last.id);
        for meta in &batch {
            let key = meta.id.0;
            if node
                .links
                .in_flight
                .lock()
                .map(|s| s.contains(&key))
                .unwrap_or(true)
            {
                continue;
            }
            if let Some((at, _)) = node.links.retry.lock().ok().and_then(|r| r.get(&key).copied()) {
                if at > now {
                    next_check = next_check.min(at - now);
                    continue;
                }
            }
            let Ok(peer) = AuthorityId::new(meta.peer.clone()) else {
                continue;
            };
            let Some(link) = node.links.get(&peer) else {
                // Peer removed from the configuration: keep the message queued.
                continue;
            };
            let Ok(permit) = Arc::clone(&link.slots).try_acquire_owned() else {
                // This peer has enough in flight; look again soon.
                next_check = next_check.min(Duration::from_millis(50));
                continue;
            };
            if let Ok(mut s) = node.links.in_flight.lock() {
                s.insert(key);
            }
            let node = Arc::clone(node);
            tokio::spawn(async move {
                deliver(&node, peer, link, meta_id(key)).await;
                drop(permit);
                if let Ok(mut s) = node.links.in_flight.lock() {
                    s.remove(&key);
                }
                node.outbox_wake.notify_one();
            });
        }
        if batch.len() < 256 {
            break;
        }
    }
    Ok(next_check)
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

async fn deliver(node: &Arc<Node>, peer: AuthorityId, link: Arc<Link>, id: MessageId) {
    let started = Instant::now();
    match attempt(node, &peer, &link, &id).await {
        Ok(outcome) => {
            if let Ok(mut r) = node.links.retry.lock() {
                r.remove(&id.0);
            }
            info!(id = %Id::from_bytes(id.0), peer = %peer, outcome = %outcome, ms = started.elapsed().as_millis() as u64, "delivered");
        }
        Err(e) => {
            let attempts = node
                .links
                .retry
                .lock()
                .map(|r| r.get(&id.0).map_or(0, |x| x.1))
                .unwrap_or(0)
                + 1;
            match node.backoff.next(attempts, &mut rand::thread_rng()) {
                Next::RetryAfter(d) => {
                    warn!(id = %Id::from_bytes(id.0), peer = %peer, attempt = attempts, retry_in_ms = d.as_millis() as u64, error = %e, "delivery failed; will retry");
                    if let Ok(mut r) = node.links.retry.lock() {
                        r.insert(id.0, (Instant::now() + d, attempts));
                    }
                }
                Next::GiveUp => {
                    warn!(id = %Id::from_bytes(id.0), peer = %peer, attempts, error = %e, "delivery failed; giving up");
                    if let Ok(mut r) = node.links.retry.lock() {
                        r.remove(&id.0);
                    }
                    if let Err(e) = node.store.mark_failed(&id, &failure_outcome(attempts, &e)) {
                        warn!(error = %e, "cannot mark a message failed");
                    }
                }
            }
        }
    }
}

async fn attempt(
    node: &Arc<Node>,
    peer: &AuthorityId,
    link: &Link,
    id: &MessageId,
) -> Result<String, AttemptError> {
    let store = Arc::clone(&node.store);
    let key = *id;
    let msg = tokio::task::spawn_blocking(move || store.outbox_get(&key))
        .await
        .map_err(|e| AttemptError::Send(e.to_string()))??;
    let conn = connection(node, peer, link).await?;
    let record = OutboxRecord::from_slice(&msg.payload).map_err(AttemptError::BadReceipt)?;
    let len = record.envelope.len() as u64;
    let receipt_bytes = match conn.send_envelope(len, record.envelope.as_slice()).await {
        Ok(r) => r,
        Err(e) => {
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
    let receipt = Receipt::verify(&receipt_bytes, &card.node_key)
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
    let store = Arc::clone(&node.store);
    let key = *id;
    let out = outcome.clone();
    tokio::task::spawn_blocking(move || -> Result<(), konvert_store::Error> {
        // queued → sent → delivered, each audited.
        let _ = store.mark_sent(&key);
        store.mark_delivered(
            &key,
            &NewReceipt {
                outcome: out,
                bytes: receipt_bytes,
            },
        )?;
        Ok(())
    })
    .await
    .map_err(|e| AttemptError::Send(e.to_string()))??;
    if let Ok(mut t) = link.last_delivery.lock() {
        *t = Some(Timestamp::now());
    }
    node.delivered_wake.notify_waiters();
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
    let expected = Peer {
        authority: peer.clone(),
        pin: entry.pin,
    };
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
            Some(sa) => match node.endpoint.connect(sa, &expected).await {
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
