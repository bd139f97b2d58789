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
//! (the stored ones).

use std::sync::Arc;

use konvert_envelope::envelope::{self, EnvelopeHeader, MemoryParts, OpenError};
use konvert_envelope::model::{AuthorityId, Digest, Id, Timestamp};
use konvert_envelope::receipt::{Outcome, Receipt, RejectCode};
use konvert_envelope::signed::SignedMessage;
use konvert_store::{Direction, MessageId, NewMessage, NewReceipt};
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
    /// Attachment plaintexts, in message order.
    pub attachments: Vec<serde_bytes::ByteBuf>,
    /// The receipt sent (replayed for duplicates).
    #[serde(with = "serde_bytes")]
    pub receipt: Vec<u8>,
    /// When it was received.
    pub received: Timestamp,
}

impl InboxRecord {
    /// Encodes as CBOR.
    pub fn to_vec(&self) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
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
        Self(Arc::clone(node))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .inbound_in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
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
    let mut bytes = Vec::with_capacity(usize::try_from(stream.declared_len()).unwrap_or(0).min(64 << 20));
    if let Err(e) = stream.copy_to(&mut bytes).await {
        warn!(peer = %peer, error = %e, "envelope body not received");
        return;
    }
    let size = bytes.len();
    let node2 = Arc::clone(&node);
    let peer2 = peer.clone();
    let result = tokio::task::spawn_blocking(move || process(&node2, &peer2, &bytes)).await;
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

/// Runs every check, stores, and returns the receipt to send and its outcome text.
fn process(node: &Arc<Node>, peer: &AuthorityId, bytes: &[u8]) -> (Vec<u8>, String) {
    let mut body = Vec::with_capacity(bytes.len());
    let received = match envelope::receive(bytes, &node.limits, &mut body) {
        Ok(r) => r,
        Err(e) => {
            let code = RejectCode::from(&e);
            return (
                reject(node, peer, None, Digest::default(), code),
                format!("rejected:{code}"),
            );
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
        return refuse(RejectCode::UnknownSender);
    }
    let dir = node.directory();
    let Some(entry) = dir.peers.get(peer) else {
        return refuse(RejectCode::UnknownSender);
    };
    // The card's node key, and during the peer's key rotation its old and new ones.
    let node_keys = crate::rotation::accepted_node_keys(node, &entry.card);
    let auth = match received.authenticate_any(peer, &node_keys) {
        Ok(a) => a,
        Err(e) => return refuse(RejectCode::from(&e)),
    };
    let agreement = auth.header().agreement.clone();
    let Some(profile) = dir
        .profiles
        .get(&agreement)
        .filter(|_| entry.agreements.contains(&agreement))
    else {
        return refuse(RejectCode::AgreementNotInForce);
    };
    let key = MessageId(*id.as_bytes());
    // A duplicate: the same receipt again.
    if let Some(r) = stored_receipt(node, &key) {
        return (r, "duplicate".into());
    }
    let now = node.now();
    // Signatories by the peer's roster in force at signing time (Art. 9.3).
    let signers = node.cases.trusted_signers(&entry.card);
    let mut parts = MemoryParts::default();
    let opened = match auth.open(
        body.as_slice(),
        &node.own.current(),
        &signers,
        profile,
        now,
        &node.limits,
        &mut parts,
    ) {
        Ok(o) => o,
        Err(e) => {
            if let OpenError::Io(_) = e {
                return refuse(RejectCode::TemporaryFailure);
            }
            return refuse(RejectCode::from(&e));
        }
    };
    // The agreement's procedure (case, directory, consents), durable before the receipt.
    if let Err(code) = node
        .cases
        .receive(&opened.message, &entry.card, profile, now, now)
    {
        return refuse(code);
    }
    let case = match super::cases::store_case_of_received(node, &opened.message.header.id) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "store refused a case record");
            return refuse(RejectCode::TemporaryFailure);
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
        return refuse(RejectCode::TemporaryFailure);
    };
    let record = InboxRecord {
        envelope: auth.header().clone(),
        digest,
        signed: opened.signed,
        signatory,
        attachments: parts.parts.into_iter().map(serde_bytes::ByteBuf::from).collect(),
        receipt: receipt_bytes.clone(),
        received: now,
    };
    let Ok(payload) = record.to_vec() else {
        return refuse(RejectCode::TemporaryFailure);
    };
    match node.store.put_inbox(&NewMessage {
        id: key,
        peer: peer.to_string(),
        agreement: agreement.to_string(),
        kind: opened.message.kind().as_str().to_string(),
        case,
        payload,
    }) {
        Ok(put) if put.created => {
            // Also kept apart from the message, for the audit retention: a
            // duplicate that arrives after the message's retention ended
            // still gets the same receipt (the copy in the inbox record goes
            // with the payload).
            if let Err(e) = node.store.put_issued_receipt(
                &key,
                &NewReceipt {
                    outcome: "accepted".into(),
                    bytes: receipt_bytes.clone(),
                },
            ) {
                warn!(error = %e, "issued receipt not kept apart (it is in the inbox record)");
            }
            node.inbox_wake.notify_waiters();
            (receipt_bytes, "accepted".into())
        }
        // Raced with a duplicate: answer as the first time.
        Ok(_) => match stored_receipt(node, &key) {
            Some(r) => (r, "duplicate".into()),
            None => refuse(RejectCode::TemporaryFailure),
        },
        Err(e) => {
            warn!(error = %e, "store refused a received envelope");
            refuse(RejectCode::TemporaryFailure)
        }
    }
}

fn stored_receipt(node: &Node, key: &MessageId) -> Option<Vec<u8>> {
    if let Ok(r) = node.store.issued_receipt(key) {
        return Some(r.bytes);
    }
    node.store.meta(Direction::Inbound, key).ok()?;
    let msg = node.store.get(Direction::Inbound, key).ok()?;
    InboxRecord::from_slice(&msg.payload).ok().map(|r| r.receipt)
}
