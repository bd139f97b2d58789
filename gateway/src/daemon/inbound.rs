//! Envelopes arriving from peers: checked, stored durably, then answered
//! with a signed receipt.
//!
//! Per envelope stream: the declared length is checked against the limit
//! before any body byte is read (a `too_large` receipt otherwise); the body
//! is read; then, on a blocking thread, every check of
//! [`konvert_envelope::envelope`] runs in order (structure, sender is the
//! connection's authenticated peer, node signature, agreement in force for
//! this peer, decryption, signatory against the peer's card, routing,
//! decoding, attachments, profile). Only after the store's `put_inbox` has
//! returned (a real fdatasync) is the `accepted` receipt sent. An envelope
//! received twice is stored once and answered with the same receipt bytes
//! (the stored ones). Directory updates are applied by the gateway and
//! acknowledged on receipt: they never appear in the application inbox.

use std::sync::Arc;

use konvert_envelope::batch::{Deferred, Now, SignatureVerifier};
use konvert_envelope::envelope::{self, EnvelopeHeader, MemoryParts, OpenError, PartSink};
use konvert_envelope::model::{AuthorityId, Digest, Id, Timestamp};
use konvert_envelope::receipt::{Outcome, Receipt, RejectCode};
use konvert_envelope::signed::SignedMessage;
use konvert_store::{BlobRef, Direction, MessageId, NewMessage, NewReceipt};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::Node;
use crate::transport::{Connection, EnvelopeStream};

/// What the store keeps (sealed at rest) for a received message.
#[derive(Debug, Serialize, Deserialize)]
pub struct InboxRecord {
    /// The envelope's routing header.
    pub envelope: EnvelopeHeader,
    /// The envelope digest.
    pub digest: Digest,
    /// The signed message exactly as received (COSE_Sign1 + message CBOR).
    pub signed: SignedMessage,
    /// The signatory's id on the sender's card.
    pub signatory: String,
    /// Attachment plaintexts, in message order (envelopes read whole: up to
    /// [`STREAM_ABOVE`] bytes of attachments and the envelope's overhead).
    pub attachments: Vec<serde_bytes::ByteBuf>,
    /// The attachments of a larger envelope, in message order: store blobs
    /// (streamed in and out; their keys sealed in this record).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachment_blobs: Vec<BlobRef>,
    /// The receipt sent (replayed for duplicates).
    #[serde(with = "serde_bytes")]
    pub receipt: Vec<u8>,
    /// When it was received.
    pub received: Timestamp,
}

/// Envelopes declared larger than this are streamed: from the QUIC stream
/// through every check into store blobs, in bounded memory (the body
/// ciphertext waits in an unlinked spool file while the node signature at
/// its end is checked). Smaller ones are read whole.
pub const STREAM_ABOVE: u64 = 1 << 20;

/// What an envelope adds to the attachments it carries, at most, for the
/// messages a sender seals in memory (attachments up to [`STREAM_ABOVE`]):
/// the header, the signed message, the age header and 16 bytes per 64 KiB
/// chunk, CBOR framing. Such an envelope is read whole here too, instead
/// of going through a spool file and blobs.
const ENVELOPE_OVERHEAD: u64 = 64 << 10;

/// The part of an attachment's plaintext held in memory at a time when
/// streamed (the decryption's and the blob's chunk).
const DUPLEX_BYTES: usize = 256 << 10;

impl InboxRecord {
    /// The number of attachments.
    pub fn attachment_count(&self) -> usize {
        self.attachments.len().max(self.attachment_blobs.len())
    }

    /// Encodes as CBOR.
    pub fn to_vec(&self) -> Result<Vec<u8>, String> {
        // Sized for the attachments, so that the buffer does not grow (and
        // copy) through every power of two up to them.
        let attachments: usize = self.attachments.iter().map(|a| a.len()).sum();
        let mut out = Vec::with_capacity(attachments + self.receipt.len() + (16 << 10));
        ciborium::into_writer(self, &mut out).map_err(|e| e.to_string())?;
        Ok(out)
    }
    /// Decodes from CBOR.
    pub fn from_slice(b: &[u8]) -> Result<Self, String> {
        ciborium::from_reader(b).map_err(|e| e.to_string())
    }
}

/// Accepts connections until the endpoint closes.
pub async fn accept_loop(node: Arc<Node>) {
    while let Some(incoming) = node.endpoint.accept().await {
        let node = Arc::clone(&node);
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.establish().await {
                Ok(conn) => {
                    info!(peer = %conn.peer(), remote = %remote, "peer connected");
                    serve_connection(node, conn).await;
                }
                Err(e) => warn!(remote = %remote, error = %e, "incoming connection refused"),
            }
        });
    }
}

async fn serve_connection(node: Arc<Node>, conn: Connection) {
    while let Some(incoming) = conn.accept_envelope().await {
        let node = Arc::clone(&node);
        tokio::spawn(async move {
            match incoming.read_header().await {
                Ok(stream) => handle(node, stream).await,
                Err(e) => warn!(error = %e, "envelope stream without a valid length prefix"),
            }
        });
    }
    info!(peer = %conn.peer(), "peer connection closed");
}

/// Counts an envelope in flight for the time it lives.
struct InFlight(Arc<Node>);

impl InFlight {
    fn new(node: &Arc<Node>) -> Self {
        node.inbound_in_flight
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        node.note_in_flight();
        Self(Arc::clone(node))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .inbound_in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        self.0.note_in_flight();
    }
}

async fn handle(node: Arc<Node>, mut stream: EnvelopeStream) {
    let _in_flight = InFlight::new(&node);
    let peer = stream.peer().clone();
    let started = std::time::Instant::now();
    if !stream.within_limit() {
        let receipt = reject(&node, &peer, None, Digest::default(), RejectCode::TooLarge);
        warn!(peer = %peer, declared = stream.declared_len(), limit = stream.limit(), "envelope too large; refused unread");
        let _ = stream.respond(&receipt).await;
        return;
    }
    let size = stream.declared_len();
    let node2 = Arc::clone(&node);
    let peer2 = peer.clone();
    let result = if size <= STREAM_ABOVE + ENVELOPE_OVERHEAD {
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        if let Err(e) = stream.copy_to(&mut bytes).await {
            warn!(peer = %peer, error = %e, "envelope body not received");
            return;
        }
        // Checked on this task (the public-key work of one small envelope,
        // a few hundred µs), stored with the async write.
        Ok(process_async(&node2, &peer2, bytes.as_slice()).await)
    } else {
        // Streamed: the checks read from the QUIC stream as it arrives.
        let (mut tx, rx) = tokio::io::duplex(DUPLEX_BYTES);
        let rt = tokio::runtime::Handle::current();
        let checks = tokio::task::spawn_blocking(move || {
            let mut input = tokio_util::io::SyncIoBridge::new_with_handle(rx, rt);
            let r = process(&node2, &peer2, &mut input, true);
            // Read to the end even after an early answer, so that the copy
            // below completes and the answer can be sent.
            let _ = std::io::copy(&mut input, &mut std::io::sink());
            r
        });
        let copied = async {
            let r = stream.copy_to(&mut tx).await;
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut tx).await;
            drop(tx);
            r
        }
        .await;
        let result = checks.await;
        if let Err(e) = copied {
            warn!(peer = %peer, error = %e, "envelope body not received");
            return;
        }
        result
    };
    let (receipt, outcome) = match result {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "envelope processing task failed");
            (
                reject(
                    &node,
                    &peer,
                    None,
                    Digest::default(),
                    RejectCode::TemporaryFailure,
                ),
                "rejected:temporary_failure".to_string(),
            )
        }
    };
    info!(peer = %peer, size, outcome = %outcome, ms = started.elapsed().as_millis() as u64, "envelope received");
    if let Err(e) = stream.respond(&receipt).await {
        warn!(peer = %peer, error = %e, "receipt not delivered");
    }
}

/// A signed negative receipt.
fn reject(node: &Node, sender: &AuthorityId, id: Option<Id>, digest: Digest, code: RejectCode) -> Vec<u8> {
    let r = Receipt {
        envelope_id: id.unwrap_or_else(|| Id::from_bytes([0; 16])),
        envelope_digest: digest,
        time: node.now(),
        receiver: node.keys.authority.clone(),
        sender: sender.clone(),
        outcome: Outcome::Rejected { code },
    };
    r.sign(&node.own.for_peer(sender, r.time).signing)
        .unwrap_or_default()
}

/// The body ciphertext between reading and opening: in memory, or (for a
/// streamed envelope) in an unlinked file in `DATA_DIR/spool` — age
/// ciphertext to this node, gone when closed, also after a crash.
enum BodySpool {
    Memory(Vec<u8>),
    File(std::io::BufWriter<std::fs::File>),
}

impl BodySpool {
    /// `capacity`: what the body may take in memory (the envelope's size
    /// when it is read whole, so that the buffer does not grow and copy).
    fn new(node: &Node, streamed: bool, capacity: usize) -> std::io::Result<BodySpool> {
        if !streamed {
            return Ok(BodySpool::Memory(Vec::with_capacity(capacity)));
        }
        // Made (0700) at start.
        let f = tempfile::tempfile_in(node.config.data_dir.join("spool"))?;
        Ok(BodySpool::File(std::io::BufWriter::with_capacity(64 << 10, f)))
    }

    /// The spooled bytes, from the start (in memory: read in place).
    fn into_reader(self) -> std::io::Result<Box<dyn std::io::BufRead>> {
        use std::io::Seek;
        Ok(match self {
            BodySpool::Memory(v) => Box::new(std::io::Cursor::new(v)),
            BodySpool::File(w) => {
                let mut f = w.into_inner().map_err(|e| e.into_error())?;
                f.rewind()?;
                Box::new(std::io::BufReader::with_capacity(64 << 10, f))
            }
        })
    }
}

impl std::io::Write for BodySpool {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            BodySpool::Memory(v) => v.write(b),
            BodySpool::File(f) => f.write(b),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            BodySpool::Memory(_) => Ok(()),
            BodySpool::File(f) => f.flush(),
        }
    }
}

/// Attachments of a streamed envelope, written into store blobs as they
/// are decrypted. Blobs of a message that is then not stored are discarded.
struct BlobParts<'a> {
    store: &'a konvert_store::Store,
    agreement: String,
    blobs: Vec<BlobRef>,
}

impl PartSink for BlobParts<'_> {
    type Writer = konvert_store::BlobWriter;
    fn create(&mut self, _index: u32) -> std::io::Result<Self::Writer> {
        self.store
            .blob_writer(&self.agreement, None)
            .map_err(std::io::Error::other)
    }
    fn finish(&mut self, _index: u32, w: Self::Writer) -> std::io::Result<()> {
        self.blobs.push(w.finish().map_err(std::io::Error::other)?);
        Ok(())
    }
}

impl BlobParts<'_> {
    /// The blobs now belong to a stored message.
    fn keep(mut self) -> Vec<BlobRef> {
        std::mem::take(&mut self.blobs)
    }
}

impl Drop for BlobParts<'_> {
    fn drop(&mut self) {
        for b in &self.blobs {
            if let Err(e) = self.store.blob_discard(b) {
                warn!(error = %e, "blob of a message not stored not removed (it goes with its hour)");
            }
        }
    }
}

/// Where the attachments go while an envelope is opened.
enum Parts<'a> {
    Memory(MemoryParts),
    Blobs(BlobParts<'a>),
}

/// The receipt to send and its outcome text.
type Answer = (Vec<u8>, String);

/// A received envelope that passed every check, ready for its durable write.
struct Accepted<'a> {
    id: Id,
    key: MessageId,
    digest: Digest,
    new: NewMessage,
    issued: NewReceipt,
    receipt: Vec<u8>,
    /// The attachments' blobs of a streamed envelope.
    blobs: Option<BlobParts<'a>>,
}

/// Runs every check, stores (waiting on this thread), and returns the
/// receipt to send and its outcome text. `streamed`: the envelope is
/// large; its body is spooled to a file and its attachments go to store
/// blobs.
fn process<R: std::io::Read>(node: &Arc<Node>, peer: &AuthorityId, input: R, streamed: bool) -> Answer {
    let dir = node.directory();
    // (A large envelope's signatures are checked at once: it is read once,
    // and its public-key work is small beside its size.)
    let a = match examine(node, &dir, peer, input, streamed, 0).and_then(|e| finish(node, peer, e)) {
        Ok(a) => a,
        Err(answer) => return answer,
    };
    let put = node.store.put_inbox_with_receipt(&a.new, &a.issued);
    let (answer, ack) = stored(node, peer, a, put);
    if let Some(key) = ack {
        gateway_ack(node, &key);
    }
    answer
}

/// [`process`] of a small envelope in memory on an async task: the store's
/// write is awaited without holding a thread.
///
/// Its two signatures are checked in batches with those of other envelopes
/// and receipts (crate::verifier): the node signature before anything is
/// decrypted, the signatory signature with the other checks of the signed
/// message deferred until it verified; nothing is acted on (procedure,
/// receipt, store) before both did. If one does not, or a check failed
/// while the signature was deferred, the checks are made again with the
/// signatures checked at once, so that the answer is exactly the one they
/// give (which signature, or which other fault comes first).
async fn process_async(node: &Arc<Node>, peer: &AuthorityId, input: &[u8]) -> Answer {
    let dir = node.directory();
    let at_once = || examine(node, &dir, peer, input, false, input.len());
    let all_valid = |verdicts: Vec<bool>| verdicts.iter().all(|ok| *ok);
    let examined = 'checked: {
        // The node signature verifies before anything is decrypted.
        let mut deferred = Deferred::new();
        let a = match authenticate(node, &dir, peer, input, false, input.len(), &mut deferred) {
            // (Its last step is the deferred check: an error is from before it.)
            Err(answer) => return answer,
            Ok(a) => a,
        };
        if !all_valid(node.verifier.verify(deferred.into_checks()).await) {
            break 'checked at_once();
        }
        let mut deferred = Deferred::new();
        match open(node, &dir, peer, a, false, input.len(), &mut deferred) {
            Err(answer) if deferred.is_empty() || all_valid(deferred.verify_now()) => return answer,
            Err(_) => at_once(),
            Ok(e) if all_valid(node.verifier.verify(deferred.into_checks()).await) => Ok(e),
            Ok(_) => at_once(),
        }
    };
    let a = match examined.and_then(|e| finish(node, peer, e)) {
        Ok(a) => a,
        Err(answer) => return answer,
    };
    let put = node.store.put_inbox_with_receipt_async(&a.new, &a.issued).await;
    let (answer, ack) = stored(node, peer, a, put);
    if let Some(key) = ack {
        let node = Arc::clone(node);
        let _ = tokio::task::spawn_blocking(move || gateway_ack(&node, &key)).await;
    }
    answer
}

/// A directory update is the gateway's own business: verified and applied
/// before its receipt, stored and receipted like any message, and
/// acknowledged here (audited) instead of being listed for applications.
/// A crash before this is repaired by the inbox listing, which
/// acknowledges such leftovers and skips them.
fn gateway_ack(node: &Node, key: &MessageId) {
    let id = Id::from_bytes(key.0);
    match node.store.inbox_ack(key) {
        Ok(_) => info!(id = %id, "applied and acknowledged by the gateway"),
        Err(e) => warn!(id = %id, error = %e, "gateway's own message not acknowledged yet"),
    }
}

/// After the durable write: the answer, and the message to acknowledge on
/// the gateway's behalf (its own kinds), if any.
fn stored(
    node: &Node,
    peer: &AuthorityId,
    a: Accepted<'_>,
    put: konvert_store::Result<konvert_store::Put>,
) -> (Answer, Option<MessageId>) {
    let refuse = |code: RejectCode| {
        (
            reject(node, peer, Some(a.id), a.digest, code),
            format!("rejected:{code}"),
        )
    };
    match put {
        Ok(put) if put.created => {
            if let Some(b) = a.blobs {
                b.keep();
            }
            let answer = (a.receipt, "accepted".to_string());
            if super::service::GATEWAY_KINDS.contains(&a.new.kind.as_str()) {
                return (answer, Some(a.key));
            }
            node.inbox_wake.notify_waiters();
            (answer, None)
        }
        // Raced with a duplicate: answer as the first time.
        Ok(_) => match stored_receipt(node, &a.key) {
            Some(r) => ((r, "duplicate".into()), None),
            None => (refuse(RejectCode::TemporaryFailure), None),
        },
        Err(e) => {
            warn!(error = %e, "store refused a received envelope");
            (refuse(RejectCode::TemporaryFailure), None)
        }
    }
}

/// A received envelope whose checks passed, its signatures as far as
/// `verifier` said (see [`examine`]); nothing acted on yet.
struct Examined<'a, 'd> {
    id: Id,
    key: MessageId,
    digest: Digest,
    now: Timestamp,
    entry: &'d super::PeerEntry,
    profile: &'d konvert_envelope::profile::Profile,
    auth: envelope::Authenticated,
    opened: envelope::Opened,
    parts: Parts<'a>,
}

/// An envelope read and authenticated (as far as the verifier said), its
/// body not opened yet.
struct Authenticated<'d> {
    auth: envelope::Authenticated,
    body: BodySpool,
    entry: &'d super::PeerEntry,
}

/// Every check of a received envelope that acts on nothing: reading,
/// sender, node signature ([`authenticate`]); agreement, duplicate,
/// decryption, signatory signature, routing, attachments, profile
/// ([`open`]), each signature checked at once. `Err` is the answer to send
/// at once (a refusal, or a duplicate's receipt).
fn examine<'a, 'd, R: std::io::Read>(
    node: &'a Arc<Node>,
    dir: &'d super::Directory,
    peer: &AuthorityId,
    input: R,
    streamed: bool,
    body_capacity: usize,
) -> Result<Examined<'a, 'd>, Answer> {
    let a = authenticate(node, dir, peer, input, streamed, body_capacity, &mut Now)?;
    open(node, dir, peer, a, streamed, body_capacity, &mut Now)
}

/// Reads the envelope and checks its sender and node signature (by
/// `verifier`); nothing is decrypted.
fn authenticate<'d, R: std::io::Read>(
    node: &Arc<Node>,
    dir: &'d super::Directory,
    peer: &AuthorityId,
    input: R,
    streamed: bool,
    body_capacity: usize,
    verifier: &mut dyn SignatureVerifier,
) -> Result<Authenticated<'d>, Answer> {
    let temporary = |node: &Node| {
        (
            reject(node, peer, None, Digest::default(), RejectCode::TemporaryFailure),
            "rejected:temporary_failure".to_string(),
        )
    };
    let mut body = match BodySpool::new(node, streamed, body_capacity) {
        Ok(b) => b,
        Err(e) => {
            warn!(error = %e, "no spool file for a large envelope");
            return Err(temporary(node));
        }
    };
    let received = match envelope::receive(input, &node.limits, &mut body) {
        Ok(r) => r,
        Err(e) => {
            let code = RejectCode::from(&e);
            return Err((
                reject(node, peer, None, Digest::default(), code),
                format!("rejected:{code}"),
            ));
        }
    };
    let id = received.header.id;
    let digest = received.envelope_digest();
    let refuse = |code: RejectCode| {
        (
            reject(node, peer, Some(id), digest, code),
            format!("rejected:{code}"),
        )
    };
    if &received.header.from != peer {
        return Err(refuse(RejectCode::UnknownSender));
    }
    let Some(entry) = dir.peers.get(peer) else {
        return Err(refuse(RejectCode::UnknownSender));
    };
    // The card's node key, and during the peer's key rotation its old and new ones.
    let node_keys = crate::rotation::accepted_node_keys(node, &entry.card);
    match received.authenticate_any_by(peer, &node_keys, verifier) {
        Ok(auth) => Ok(Authenticated { auth, body, entry }),
        Err(e) => Err(refuse(RejectCode::from(&e))),
    }
}

/// The checks after [`authenticate`]'s (which must have verified): the
/// agreement, a duplicate, then the body decrypted and the signed message
/// checked (its signature by `verifier`).
fn open<'a, 'd>(
    node: &'a Arc<Node>,
    dir: &'d super::Directory,
    peer: &AuthorityId,
    a: Authenticated<'d>,
    streamed: bool,
    body_capacity: usize,
    verifier: &mut dyn SignatureVerifier,
) -> Result<Examined<'a, 'd>, Answer> {
    let Authenticated { auth, body, entry } = a;
    let id = auth.header().id;
    let digest = auth.envelope_digest();
    let refuse = |code: RejectCode| {
        (
            reject(node, peer, Some(id), digest, code),
            format!("rejected:{code}"),
        )
    };
    let agreement = auth.header().agreement.clone();
    let Some(profile) = dir
        .profiles
        .get(&agreement)
        .filter(|_| entry.agreements.contains(&agreement))
    else {
        return Err(refuse(RejectCode::AgreementNotInForce));
    };
    let key = MessageId(*id.as_bytes());
    // A duplicate: the same receipt again.
    if let Some(r) = stored_receipt(node, &key) {
        return Err((r, "duplicate".into()));
    }
    let now = node.now();
    // Signatories by the peer's roster in force at signing time (Art. 9.3).
    let signers = node.cases.trusted_signers(&entry.card);
    // A new roster of the peer may be carried by one of its own signatories (Art. 9.4).
    let anchor = node.cases.roster_anchor(&entry.card);
    let mut parts = if streamed {
        Parts::Blobs(BlobParts {
            store: &node.store,
            agreement: agreement.to_string(),
            blobs: Vec::new(),
        })
    } else {
        // (The attachments are smaller than the envelope read whole.)
        Parts::Memory(MemoryParts::with_room(body_capacity))
    };
    let body = match body.into_reader() {
        Ok(b) => b,
        Err(e) => {
            warn!(error = %e, "spooled envelope body not readable");
            return Err(refuse(RejectCode::TemporaryFailure));
        }
    };
    // Art. 16: the message is validated against the version its case was
    // opened under, or the one in force at its time.
    let mut governing: Option<&konvert_envelope::profile::Profile> = None;
    let version = |m: &konvert_envelope::model::Message| {
        let p = node
            .cases
            .with(|c| super::versions::governing(&dir.versions, &c.book, m))
            .map_err(version_refusal)?;
        governing = Some(p);
        Ok(p)
    };
    let limits = &node.limits;
    // Every age identity kept after a key rotation opens (crate::rotation).
    let own = node.own.current();
    let opened = match &mut parts {
        Parts::Memory(p) => auth.open_with_roster(
            body, &own, &signers, anchor, profile, now, limits, p, version, verifier,
        ),
        Parts::Blobs(p) => auth.open_with_roster(
            body, &own, &signers, anchor, profile, now, limits, p, version, verifier,
        ),
    };
    let opened = match opened {
        Ok(o) => o,
        Err(e) => {
            if let OpenError::Io(_) = e {
                return Err(refuse(RejectCode::TemporaryFailure));
            }
            return Err(refuse(RejectCode::from(&e)));
        }
    };
    let profile = governing.unwrap_or(profile);
    Ok(Examined {
        id,
        key,
        digest,
        now,
        entry,
        profile,
        auth,
        opened,
        parts,
    })
}

/// The rest, once [`examine`]'s signatures verified: the agreement's
/// procedure, the signed receipt and the record to store.
fn finish<'a>(node: &'a Arc<Node>, peer: &AuthorityId, e: Examined<'a, '_>) -> Result<Accepted<'a>, Answer> {
    let (id, key, digest, now) = (e.id, e.key, e.digest, e.now);
    let (entry, profile, auth, opened, parts) = (e.entry, e.profile, e.auth, e.opened, e.parts);
    let refuse = |code: RejectCode| {
        (
            reject(node, peer, Some(id), digest, code),
            format!("rejected:{code}"),
        )
    };
    // The agreement's procedure (case, directory, consents), durable before the receipt.
    if let Err(code) = node
        .cases
        .receive(&opened.message, &entry.card, profile, now, now)
    {
        return Err(refuse(code));
    }
    let case = match super::cases::store_case_of_received(node, &opened.message.header.id) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "store refused a case record");
            return Err(refuse(RejectCode::TemporaryFailure));
        }
    };
    let signatory = node
        .cases
        .signatory_id(&entry.card, &opened.claims.kid)
        .unwrap_or_default();
    let receipt = Receipt {
        envelope_id: id,
        envelope_digest: digest,
        time: now,
        receiver: node.keys.authority.clone(),
        sender: peer.clone(),
        outcome: Outcome::Accepted,
    };
    if let konvert_envelope::model::MessageBody::DirectoryUpdate(u) = &opened.message.body {
        if matches!(
            u.change,
            konvert_envelope::model::DirectoryChange::KeyRotation { .. }
        ) {
            // The peer's new pin is admitted before the receipt goes out.
            crate::rotation::apply(node);
            tracing::info!(peer = %peer, "peer's key rotation recorded");
        }
    }
    let Ok(receipt_bytes) = receipt.sign(&node.own.for_peer(peer, now).signing) else {
        return Err(refuse(RejectCode::TemporaryFailure));
    };
    let (attachments, blob_parts) = match parts {
        Parts::Memory(p) => (p.parts, None),
        Parts::Blobs(b) => (Vec::new(), Some(b)),
    };
    let record = InboxRecord {
        envelope: auth.header().clone(),
        digest,
        signed: opened.signed,
        signatory,
        attachments: attachments.into_iter().map(serde_bytes::ByteBuf::from).collect(),
        attachment_blobs: blob_parts.as_ref().map(|b| b.blobs.clone()).unwrap_or_default(),
        receipt: receipt_bytes.clone(),
        received: now,
    };
    let Ok(payload) = record.to_vec() else {
        return Err(refuse(RejectCode::TemporaryFailure));
    };
    // The message and the receipt issued for it go in one durable write
    // (the receipt is also kept apart from the message, for the audit
    // retention: a duplicate that arrives after the message's retention
    // ended still gets the same receipt). The procedure's records applied
    // above become durable with it.
    Ok(Accepted {
        id,
        key,
        digest,
        new: NewMessage {
            id: key,
            peer: peer.to_string(),
            agreement: auth.header().agreement.to_string(),
            kind: opened.message.kind().as_str().to_string(),
            case,
            payload,
            digest: Some(digest.0),
        },
        issued: NewReceipt {
            outcome: "accepted".into(),
            bytes: receipt_bytes.clone(),
        },
        receipt: receipt_bytes,
        blobs: blob_parts,
    })
}

/// Why no profile version governs a received message, as the open error
/// whose receipt code says it: not in force or terminated (Art. 17); a case
/// whose version is no longer loaded is this gateway's fault, so the sender
/// is asked to retry (`temporary_failure`) while the operator restores it.
fn version_refusal(e: super::versions::VersionError) -> OpenError {
    use konvert_envelope::profile::ProfileVersionError as V;
    match e {
        super::versions::VersionError::At(V::NotInForce(n)) if n.is_terminated() => {
            OpenError::AgreementTerminated {
                agreement: n.agreement.clone(),
                reason: n.reason.to_string(),
            }
        }
        super::versions::VersionError::At(V::NotInForce(n)) => OpenError::AgreementNotInForce {
            agreement: n.agreement.clone(),
            reason: n.reason.to_string(),
        },
        super::versions::VersionError::At(e) => OpenError::AgreementNotInForce {
            agreement: match &e {
                V::DuplicateVersion { agreement, .. }
                | V::NoVersionYet { agreement, .. }
                | V::UnknownAgreement(agreement) => agreement.clone(),
                V::NotInForce(n) => n.agreement.clone(),
            },
            reason: e.to_string(),
        },
        e @ super::versions::VersionError::CaseVersionMissing { .. } => {
            warn!(error = %e, "a received message's case has no loaded profile version; asking the sender to retry");
            OpenError::Io(std::io::Error::other(e.to_string()))
        }
    }
}

fn stored_receipt(node: &Node, key: &MessageId) -> Option<Vec<u8>> {
    // The message's record first: a receipt is never on record without it
    // (stored in the same write, or after it; and its metadata outlives the
    // receipt), so a new envelope costs one lookup, not two.
    node.store.meta(Direction::Inbound, key).ok()?;
    if let Ok(r) = node.store.issued_receipt(key) {
        return Some(r.bytes);
    }
    let msg = node.store.get(Direction::Inbound, key).ok()?;
    InboxRecord::from_slice(&msg.payload).ok().map(|r| r.receipt)
}
