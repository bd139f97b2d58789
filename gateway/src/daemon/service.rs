//! The local API's operations ([`ApiService`]) on top of the store.
//!
//! Problem texts name ids, fields and rules, never message content.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use konvert_envelope::model::{AgreementId, AuthorityId, Digest, Id, Message, SignatoryId, Timestamp};
use konvert_envelope::receipt::Outcome;
use konvert_store::{Direction as StoreDirection, MessageId, MessageMeta, MessageState as StoreState};

use super::inbound::InboxRecord;
use super::outbound::{self, Submission, SubmitError};
use super::Node;
use crate::api::types::{
    AttachmentView, Caller, Cursor, Direction, Health, HealthReason, HealthReasonCode, HealthStatus,
    InboxItem, InboxMessage, MessageState, MessageStatus, MessageTimes, Page, PausedReason, PeerView,
    ReceiptFilter, ReceiptState, ReceiptView, SubmitRequest, Submitted, UnverifiedReason, Upload,
};
use crate::api::{ApiService, Download, Problem, ProblemType, UploadBody};
use crate::config::HealthConfig;

/// The daemon's implementation of the local API.
#[derive(Debug, Clone)]
pub struct Service(pub Arc<Node>);

fn store_err(e: konvert_store::Error) -> Problem {
    match e {
        konvert_store::Error::NotFound { .. } => Problem::not_found("message"),
        konvert_store::Error::Destroyed { .. } => Problem::new(
            ProblemType::NotFound,
            "the message was destroyed at the end of its retention period",
        ),
        konvert_store::Error::Poisoned | konvert_store::Error::Locked { .. } => {
            tracing::error!(error = %e, "store unavailable");
            Problem::unavailable("the store cannot accept writes; see the daemon's log")
        }
        other => {
            tracing::error!(error = %other, "store error");
            Problem::internal()
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Problem> + Send + 'static,
) -> Result<T, Problem> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| Problem::internal())?
}

fn ts(secs: i64) -> Timestamp {
    Timestamp::from_unix(secs)
}

fn api_state(meta: &MessageMeta) -> MessageState {
    match meta.state {
        StoreState::Queued => MessageState::Queued,
        StoreState::Sent => MessageState::Sent,
        StoreState::Delivered if meta.outcome.as_deref().is_some_and(|o| o.starts_with("rejected")) => {
            MessageState::Rejected
        }
        StoreState::Delivered => MessageState::Delivered,
        StoreState::Failed => MessageState::Failed,
        StoreState::New => MessageState::New,
        StoreState::Acknowledged => MessageState::Acknowledged,
    }
}

/// `accepted` or `rejected:<code>`, as the dispatcher records outcomes.
fn parse_outcome(s: &str) -> Option<Outcome> {
    match s.split_once(':') {
        None if s == "accepted" => Some(Outcome::Accepted),
        Some(("rejected", code)) => code.parse().ok().map(|code| Outcome::Rejected { code }),
        _ => None,
    }
}

fn authority(s: &str) -> Result<AuthorityId, Problem> {
    AuthorityId::new(s.to_owned()).map_err(|_| {
        tracing::error!("store: a record names an invalid authority");
        Problem::internal()
    })
}

/// The receipt a peer signed for a message this gateway sent; when it
/// cannot be verified (peer removed, key changed), it is still shown, from
/// the store's record, with `verified: false` and the reason.
fn outbound_receipt_view(
    node: &Node,
    dir: &super::Directory,
    r: &konvert_store::Receipt,
) -> Result<ReceiptView, Problem> {
    let peer = authority(&r.peer)?;
    let checked = match dir.peers.get(&peer) {
        None => Err(UnverifiedReason::PeerNotConfigured),
        Some(p) => {
            crate::rotation::verify_receipt(&r.bytes, &crate::rotation::known_node_keys(node, &p.card))
                .map_err(|_| UnverifiedReason::SignatureInvalid)
        }
    };
    let message_id = Id::from_bytes(r.message.0);
    match checked {
        Ok(rc) => Ok(ReceiptView {
            envelope_id: rc.envelope_id,
            message_id: Some(message_id),
            direction: Direction::Outbound,
            peer,
            receiver: rc.receiver,
            sender: rc.sender,
            time: rc.time,
            outcome: rc.outcome,
            envelope_digest: Some(rc.envelope_digest),
            verified: true,
            unverified_reason: None,
        }),
        Err(reason) => {
            let outcome = parse_outcome(&r.outcome).ok_or_else(|| {
                tracing::error!(id = %message_id, "store: a receipt outcome is not readable");
                Problem::internal()
            })?;
            let digest = node
                .store
                .outbox_get(&r.message)
                .ok()
                .and_then(|m| outbound::OutboxRecord::from_slice(&m.payload).ok())
                .map(|rec| rec.digest);
            Ok(ReceiptView {
                envelope_id: message_id,
                message_id: Some(message_id),
                direction: Direction::Outbound,
                receiver: peer.clone(),
                peer,
                sender: node.keys.authority.clone(),
                time: ts(r.at),
                outcome,
                envelope_digest: digest,
                verified: false,
                unverified_reason: Some(reason),
            })
        }
    }
}

/// The receipt this gateway issued for a message it received, verified with
/// its own node key: the copy the store keeps apart for the audit retention
/// (it outlives the message's payload and needs no decryption of
/// attachments), else the one in the inbox record (messages received before
/// the store kept issued receipts). `None` if the message was purged meanwhile.
fn inbound_receipt_view(node: &Node, meta: &MessageMeta) -> Result<Option<ReceiptView>, Problem> {
    let peer = authority(&meta.peer)?;
    let id = Id::from_bytes(meta.id.0);
    if let Ok(kept) = node.store.issued_receipt(&meta.id) {
        return Ok(Some(issued_view(node, id, peer, &kept.bytes, ts(kept.at), None)));
    }
    let unverified = |reason: UnverifiedReason, time: Timestamp, digest: Option<Digest>| ReceiptView {
        envelope_id: id,
        message_id: Some(id),
        direction: Direction::Inbound,
        peer: peer.clone(),
        receiver: node.keys.authority.clone(),
        sender: peer.clone(),
        time,
        // Only accepted envelopes are stored, so only their receipts are kept.
        outcome: Outcome::Accepted,
        envelope_digest: digest,
        verified: false,
        unverified_reason: Some(reason),
    };
    let msg = match node.store.get(StoreDirection::Inbound, &meta.id) {
        Ok(m) => m,
        Err(konvert_store::Error::NotFound { .. }) => return Ok(None),
        Err(konvert_store::Error::Destroyed { .. }) => {
            return Ok(Some(unverified(
                UnverifiedReason::Destroyed,
                ts(meta.created_at),
                None,
            )))
        }
        Err(konvert_store::Error::Unseal { .. } | konvert_store::Error::Corrupt { .. }) => {
            tracing::warn!(id = %id, "an inbox record cannot be read");
            return Ok(Some(unverified(
                UnverifiedReason::Unreadable,
                ts(meta.created_at),
                None,
            )));
        }
        Err(e) => return Err(store_err(e)),
    };
    let Ok(rec) = InboxRecord::from_slice(&msg.payload) else {
        tracing::warn!(id = %id, "an inbox record does not decode");
        return Ok(Some(unverified(
            UnverifiedReason::Unreadable,
            ts(meta.created_at),
            None,
        )));
    };
    Ok(Some(issued_view(
        node,
        id,
        peer,
        &rec.receipt,
        rec.received,
        Some(rec.digest),
    )))
}

/// A receipt this gateway signed, verified with its own node key; if it does
/// not verify, shown unverified with `time` and `digest` from elsewhere.
fn issued_view(
    node: &Node,
    id: Id,
    peer: AuthorityId,
    bytes: &[u8],
    time: Timestamp,
    digest: Option<Digest>,
) -> ReceiptView {
    let mut own = node.own.own_node_keys();
    let start = node.keys.signing.verifying_key();
    if !own.contains(&start) {
        own.push(start);
    }
    match crate::rotation::verify_receipt(bytes, &own) {
        Ok(rc) => ReceiptView {
            envelope_id: rc.envelope_id,
            message_id: Some(id),
            direction: Direction::Inbound,
            peer,
            receiver: rc.receiver,
            sender: rc.sender,
            time: rc.time,
            outcome: rc.outcome,
            envelope_digest: Some(rc.envelope_digest),
            verified: true,
            unverified_reason: None,
        },
        Err(_) => ReceiptView {
            envelope_id: id,
            message_id: Some(id),
            direction: Direction::Inbound,
            peer: peer.clone(),
            receiver: node.keys.authority.clone(),
            sender: peer,
            time,
            // Only accepted envelopes are stored, so only their receipts are kept.
            outcome: Outcome::Accepted,
            envelope_digest: digest,
            verified: false,
            unverified_reason: Some(UnverifiedReason::SignatureInvalid),
        },
    }
}

/// A position in the receipts list: envelope id, then direction (outbound
/// first). Its cursor text is 32 hex digits and `o` or `i`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ReceiptPos {
    id: [u8; 16],
    inbound: bool,
}

impl ReceiptPos {
    fn cursor(self) -> String {
        format!("{}{}", hex::encode(self.id), if self.inbound { 'i' } else { 'o' })
    }
    fn parse(c: &Cursor) -> Result<Self, Problem> {
        let bad = || Problem::bad_param("after", "invalid_format", "not a cursor returned by this gateway");
        let s = c.as_str();
        if s.len() != 33 {
            return Err(bad());
        }
        let (h, d) = s.split_at(32);
        let mut id = [0u8; 16];
        hex::decode_to_slice(h, &mut id).map_err(|_| bad())?;
        let inbound = match d {
            "o" => false,
            "i" => true,
            _ => return Err(bad()),
        };
        Ok(Self { id, inbound })
    }
}

/// At most this many records are looked at per direction for one page of
/// receipts; a page may then be short and carry a `next`.
const RECEIPT_SCAN: usize = 1000;

/// Up to `n` records with ids strictly after `after`, in id order, from a
/// store range scan by id time (`fetch(from_ms, limit)`).
fn scan_after<T>(
    after: Option<MessageId>,
    n: usize,
    id_of: impl Fn(&T) -> MessageId,
    fetch: impl Fn(u64, usize) -> Result<Vec<T>, konvert_store::Error>,
) -> Result<Vec<T>, konvert_store::Error> {
    let from = after.map_or(0, |a| a.unix_ms());
    let mut want = n.saturating_add(8);
    loop {
        let got = fetch(from, want)?;
        let total = got.len();
        let out: Vec<T> = got
            .into_iter()
            .filter(|x| after.is_none_or(|a| id_of(x) > a))
            .take(n)
            .collect();
        if out.len() >= n || total < want {
            return Ok(out);
        }
        want = want.saturating_mul(2);
    }
}

/// The end of every id-time range (48-bit milliseconds).
const ID_TIME_END: u64 = (1 << 48) - 1;

fn id_before(id: [u8; 16]) -> Option<MessageId> {
    u128::from_be_bytes(id)
        .checked_sub(1)
        .map(|v| MessageId(v.to_be_bytes()))
}

enum Entry {
    Out(konvert_store::Receipt),
    In(MessageMeta),
}

fn receipts_page(node: &Node, f: &ReceiptFilter) -> Result<Page<ReceiptView>, Problem> {
    let after = f.after.as_ref().map(ReceiptPos::parse).transpose()?;
    let peer = f.peer.as_ref().map(|p| p.as_str().to_owned());
    let n = RECEIPT_SCAN.max(f.limit as usize);
    // Outbound first at an equal id: after (X, o) the inbound side still
    // starts at X itself.
    let out_after = after.map(|a| MessageId(a.id));
    let in_after = after.and_then(|a| {
        if a.inbound {
            Some(MessageId(a.id))
        } else {
            id_before(a.id)
        }
    });
    let store = &node.store;
    let outs: Vec<konvert_store::Receipt> = if f.direction == Some(Direction::Inbound) {
        Vec::new()
    } else {
        match &peer {
            Some(p) => store.receipts_by_peer(p, out_after.as_ref(), n),
            None => scan_after(
                out_after,
                n,
                |r: &konvert_store::Receipt| r.message,
                |from, k| store.receipts_between(from, ID_TIME_END, k),
            ),
        }
        .map_err(store_err)?
    };
    // Rejected receipts are never inbound ones (only accepted envelopes are kept).
    let ins: Vec<MessageMeta> =
        if f.direction == Some(Direction::Outbound) || f.state == Some(ReceiptState::Rejected) {
            Vec::new()
        } else {
            match &peer {
                Some(p) => store.list_by_peer(StoreDirection::Inbound, p, in_after.as_ref(), n),
                None => scan_after(
                    in_after,
                    n,
                    |m: &MessageMeta| m.id,
                    |from, k| store.list_between(StoreDirection::Inbound, from, ID_TIME_END, k),
                ),
            }
            .map_err(store_err)?
        };
    // A side that filled its scan may have more beyond its last record:
    // entries past that point wait for the next page.
    let horizon = [
        (outs.len() >= n).then(|| {
            outs.last().map(|r| ReceiptPos {
                id: r.message.0,
                inbound: false,
            })
        }),
        (ins.len() >= n).then(|| {
            ins.last().map(|m| ReceiptPos {
                id: m.id.0,
                inbound: true,
            })
        }),
    ]
    .into_iter()
    .flatten()
    .flatten()
    .min();
    let mut entries: Vec<(ReceiptPos, Entry)> = outs
        .into_iter()
        .map(|r| {
            (
                ReceiptPos {
                    id: r.message.0,
                    inbound: false,
                },
                Entry::Out(r),
            )
        })
        .chain(ins.into_iter().map(|m| {
            (
                ReceiptPos {
                    id: m.id.0,
                    inbound: true,
                },
                Entry::In(m),
            )
        }))
        .filter(|(p, _)| horizon.is_none_or(|h| *p <= h))
        .collect();
    entries.sort_by_key(|(p, _)| *p);
    // One directory for the whole page, also across a reload.
    let dir = node.directory();
    let mut items = Vec::new();
    for (pos, e) in entries {
        let view = match e {
            Entry::Out(r) => Some(outbound_receipt_view(node, &dir, &r)?),
            Entry::In(m) => inbound_receipt_view(node, &m)?,
        };
        let Some(v) = view else { continue };
        let state = match v.outcome {
            Outcome::Accepted => ReceiptState::Accepted,
            Outcome::Rejected { .. } => ReceiptState::Rejected,
        };
        if f.state.is_some_and(|s| s != state)
            || f.since.is_some_and(|t| v.time < t)
            || f.until.is_some_and(|t| v.time >= t)
        {
            continue;
        }
        items.push(v);
        if items.len() >= f.limit as usize {
            return Ok(Page {
                items,
                next: Some(pos.cursor()),
            });
        }
    }
    Ok(Page {
        items,
        next: horizon.map(ReceiptPos::cursor),
    })
}

/// One receipt by envelope id: the one received for a message sent, else
/// the one issued for a message received.
fn receipt_by_id(node: &Node, id: Id) -> Result<ReceiptView, Problem> {
    let key = MessageId(*id.as_bytes());
    match node.store.receipt(&key) {
        Ok(r) => return outbound_receipt_view(node, &node.directory(), &r),
        Err(konvert_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(store_err(e)),
    }
    match node.store.meta(StoreDirection::Inbound, &key) {
        Ok(m) => inbound_receipt_view(node, &m)?.ok_or_else(|| Problem::not_found("receipt")),
        Err(konvert_store::Error::NotFound { .. }) => Err(Problem::not_found("receipt")),
        Err(e) => Err(store_err(e)),
    }
}

fn inbox_item(meta: &MessageMeta, rec: &InboxRecord) -> Result<InboxItem, Problem> {
    let msg: Message =
        konvert_envelope::cbor::from_slice(&rec.signed.message, 64 << 20).map_err(|_| Problem::internal())?;
    Ok(InboxItem {
        id: msg.header.id,
        cursor: Cursor::new(meta.id.to_hex()).map_err(|_| Problem::internal())?,
        envelope_id: rec.envelope.id,
        from: msg.header.from.clone(),
        to: msg.header.to.clone(),
        agreement: msg.header.agreement.clone(),
        kind: meta.kind.clone(),
        in_reply_to: msg.header.in_reply_to,
        received: rec.received,
        attachments: u32::try_from(rec.attachment_count()).unwrap_or(u32::MAX),
        due: None,
        purpose: purpose_of(&msg),
        expires: Some(ts(meta.expires_at)),
    })
}

fn parse_cursor(c: &Cursor) -> Result<MessageId, Problem> {
    let mut b = [0u8; 16];
    hex::decode_to_slice(c.as_str(), &mut b)
        .map_err(|_| Problem::bad_param("after", "cursor", "not a cursor returned by this gateway"))?;
    Ok(MessageId(b))
}

/// The kinds the gateway handles itself and never lists for applications:
/// directory updates (rosters, renamings) are verified and applied by the
/// gateway on receipt, and acknowledged there ([`super::inbound`]).
pub const GATEWAY_KINDS: &[&str] = &["directory_update"];

/// Unacknowledged received messages of the gateway's own kinds (left by a
/// crash between the store's put and the acknowledgement, or received
/// before they were acknowledged on receipt) are acknowledged here, and the
/// list goes on after them: an application never sees one.
fn inbox_metas(node: &Node, after: Option<MessageId>, limit: u32) -> Result<Vec<MessageMeta>, Problem> {
    let mut after = after;
    let mut out = Vec::new();
    loop {
        let batch = node
            .store
            .inbox_list(after.as_ref(), limit as usize)
            .map_err(store_err)?;
        let Some(last) = batch.last() else {
            return Ok(out);
        };
        after = Some(last.id);
        let full = batch.len() >= limit as usize;
        for m in batch {
            if GATEWAY_KINDS.contains(&m.kind.as_str()) {
                match node.store.inbox_ack(&m.id) {
                    Ok(_) => {
                        tracing::info!(id = %Id::from_bytes(m.id.0), kind = %m.kind, "gateway's own message acknowledged")
                    }
                    Err(e) => tracing::warn!(error = %e, "gateway's own message not acknowledged"),
                }
                continue;
            }
            out.push(m);
            if out.len() >= limit as usize {
                return Ok(out);
            }
        }
        if !full {
            return Ok(out);
        }
    }
}

fn inbox_list(node: &Node, after: Option<&Cursor>, limit: u32) -> Result<Vec<InboxItem>, Problem> {
    let after = after.map(parse_cursor).transpose()?;
    let metas = inbox_metas(node, after, limit)?;
    let mut out = Vec::with_capacity(metas.len());
    for m in metas {
        let Ok(msg) = node.store.get(StoreDirection::Inbound, &m.id) else {
            continue;
        };
        let rec = InboxRecord::from_slice(&msg.payload).map_err(|_| Problem::internal())?;
        let mut item = inbox_item(&m, &rec)?;
        item.due = super::cases::due_of(node, &item.id);
        if item.purpose.is_none() {
            item.purpose = super::cases::case_purpose(node, &item.id);
        }
        out.push(item);
    }
    Ok(out)
}

impl ApiService for Service {
    async fn submit(&self, caller: Caller, request: SubmitRequest) -> Result<Submitted, Problem> {
        let node = Arc::clone(&self.0);
        tracing::info!(uid = caller.uid, pid = caller.pid, "api: submit");
        let sub = Submission {
            message: request.message,
            signatory: request.signatory.to_string(),
            sources: request.sources,
            purpose: request.purpose,
        };
        match outbound::submit(&node, sub).await {
            Ok((id, _created)) => {
                let state = node
                    .store
                    .meta(StoreDirection::Outbound, &MessageId(*id.as_bytes()))
                    .map(|m| api_state(&m))
                    .unwrap_or(MessageState::Queued);
                Ok(Submitted {
                    id,
                    envelope_id: Some(id),
                    state,
                })
            }
            Err(e) => Err(submit_problem(e)),
        }
    }

    async fn upload(&self, caller: Caller, media_type: String, body: UploadBody) -> Result<Upload, Problem> {
        tracing::info!(uid = caller.uid, "api: upload");
        let expected = body.content_length();
        let stored = self
            .0
            .uploads
            .receive(body, expected)
            .await
            .map_err(|e| match e {
                super::uploads::UploadError::Body => {
                    Problem::new(ProblemType::PayloadTooLarge, e.to_string())
                }
                super::uploads::UploadError::Storage => Problem::unavailable(e.to_string()),
            })?;
        let max_age = i64::try_from(self.0.config.api.upload_max_age.0.as_secs()).unwrap_or(i64::MAX);
        Ok(Upload {
            id: stored.id,
            media_type,
            length: stored.len,
            sha256: Digest(stored.sha256),
            expires: Some(Timestamp::now().plus_secs(max_age)),
        })
    }

    async fn status(&self, _caller: Caller, id: Id) -> Result<MessageStatus, Problem> {
        let node = Arc::clone(&self.0);
        blocking(move || message_status(&node, id)).await
    }

    async fn status_wait(&self, caller: Caller, id: Id, timeout: Duration) -> Result<MessageStatus, Problem> {
        let pending = |s: &MessageStatus| {
            s.direction == Direction::Outbound && matches!(s.state, MessageState::Queued | MessageState::Sent)
        };
        let status = self.status(caller, id).await?;
        if !pending(&status) {
            return Ok(status);
        }
        // Registered before looking again, so that an outcome in between
        // is not missed.
        let key = MessageId(*id.as_bytes());
        let settled = self.0.outcomes.watch(&key);
        let status = self.status(caller, id).await?;
        if !pending(&status) {
            return Ok(status);
        }
        match tokio::time::timeout(timeout, settled).await {
            Ok(_) => self.status(caller, id).await,
            Err(_) => {
                self.0.outcomes.unwatch(&key);
                Ok(status)
            }
        }
    }

    async fn receipts(&self, _caller: Caller, filter: ReceiptFilter) -> Result<Page<ReceiptView>, Problem> {
        let node = Arc::clone(&self.0);
        blocking(move || receipts_page(&node, &filter)).await
    }

    async fn receipt(&self, _caller: Caller, envelope_id: Id) -> Result<ReceiptView, Problem> {
        let node = Arc::clone(&self.0);
        blocking(move || receipt_by_id(&node, envelope_id)).await
    }

    async fn receipt_raw(&self, _caller: Caller, envelope_id: Id) -> Result<Bytes, Problem> {
        let node = Arc::clone(&self.0);
        blocking(move || {
            let key = MessageId(*envelope_id.as_bytes());
            match node.store.receipt(&key) {
                Ok(r) => return Ok(Bytes::from(r.bytes)),
                Err(konvert_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_err(e)),
            }
            match node.store.issued_receipt(&key) {
                Ok(r) => return Ok(Bytes::from(r.bytes)),
                Err(konvert_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_err(e)),
            }
            // Received before the store kept issued receipts apart.
            match node.store.get(StoreDirection::Inbound, &key) {
                Ok(m) => InboxRecord::from_slice(&m.payload)
                    .map(|r| Bytes::from(r.receipt))
                    .map_err(|_| Problem::internal()),
                Err(konvert_store::Error::NotFound { .. }) => Err(Problem::not_found("receipt")),
                Err(konvert_store::Error::Destroyed { .. }) => Err(Problem::new(
                    ProblemType::NotFound,
                    "the receipt was kept with the received message, which was destroyed at the end of its retention period",
                )),
                Err(e) => Err(store_err(e)),
            }
        })
        .await
    }

    async fn inbox(
        &self,
        _caller: Caller,
        after: Option<Cursor>,
        limit: u32,
    ) -> Result<Vec<InboxItem>, Problem> {
        let node = Arc::clone(&self.0);
        blocking(move || inbox_list(&node, after.as_ref(), limit)).await
    }

    async fn inbox_wait(
        &self,
        caller: Caller,
        after: Option<Cursor>,
        limit: u32,
        timeout: Duration,
    ) -> Result<Vec<InboxItem>, Problem> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Register interest before looking, so an arrival in between is not missed.
            let notified = self.0.inbox_wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let items = self.inbox(caller, after.clone(), limit).await?;
            if !items.is_empty() {
                return Ok(items);
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
            }
        }
    }

    async fn inbox_get(&self, _caller: Caller, id: Id) -> Result<InboxMessage, Problem> {
        let node = Arc::clone(&self.0);
        blocking(move || {
            let key = MessageId(*id.as_bytes());
            let meta = node
                .store
                .meta(StoreDirection::Inbound, &key)
                .map_err(store_err)?;
            let msg = node.store.get(StoreDirection::Inbound, &key).map_err(store_err)?;
            let rec = InboxRecord::from_slice(&msg.payload).map_err(|_| Problem::internal())?;
            let mut item = inbox_item(&meta, &rec)?;
            item.due = super::cases::due_of(&node, &item.id);
            let message: Message = konvert_envelope::cbor::from_slice(&rec.signed.message, 64 << 20)
                .map_err(|_| Problem::internal())?;
            let attachments = message
                .attachments()
                .iter()
                .enumerate()
                .map(|(i, a)| AttachmentView {
                    index: i as u32,
                    media_type: a.media_type.clone(),
                    length: a.length,
                    sha256: a.sha256,
                })
                .collect();
            let purpose = purpose_of(&message).or_else(|| super::cases::case_purpose(&node, &item.id));
            item.purpose.clone_from(&purpose);
            Ok(InboxMessage {
                item,
                acknowledged: meta.state == StoreState::Acknowledged,
                message,
                purpose,
                signatory: SignatoryId::new(if rec.signatory.is_empty() {
                    "unknown".into()
                } else {
                    rec.signatory
                })
                .map_err(|_| Problem::internal())?,
                attachments,
            })
        })
        .await
    }

    async fn inbox_attachment(&self, _caller: Caller, id: Id, index: u32) -> Result<Download, Problem> {
        let node = Arc::clone(&self.0);
        blocking(move || {
            let key = MessageId(*id.as_bytes());
            let msg = node.store.get(StoreDirection::Inbound, &key).map_err(store_err)?;
            let rec = InboxRecord::from_slice(&msg.payload).map_err(|_| Problem::internal())?;
            let message: Message = konvert_envelope::cbor::from_slice(&rec.signed.message, 64 << 20)
                .map_err(|_| Problem::internal())?;
            let atts = message.attachments();
            let Some(a) = atts.get(index as usize) else {
                return Err(Problem::not_found("attachment"));
            };
            let reader: std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>> =
                if let Some(blob) = rec.attachment_blobs.get(index as usize) {
                    // Streamed out of the store in bounded memory.
                    let r = node.store.blob_reader(blob).map_err(store_err)?;
                    stream_blocking(r, id)
                } else if let Some(bytes) = rec.attachments.into_iter().nth(index as usize) {
                    Box::pin(std::io::Cursor::new(bytes.into_vec()))
                } else {
                    return Err(Problem::not_found("attachment"));
                };
            Ok(Download {
                media_type: a.media_type.clone(),
                length: Some(a.length),
                sha256: Some(a.sha256),
                reader,
            })
        })
        .await
    }

    async fn inbox_ack(&self, caller: Caller, id: Id) -> Result<(), Problem> {
        let node = Arc::clone(&self.0);
        blocking(move || {
            let key = MessageId(*id.as_bytes());
            let meta = node
                .store
                .meta(StoreDirection::Inbound, &key)
                .map_err(store_err)?;
            if meta.state == StoreState::Acknowledged {
                return Ok(());
            }
            node.store.inbox_ack(&key).map_err(store_err)?;
            tracing::info!(id = %id, uid = caller.uid, "inbox item acknowledged");
            Ok(())
        })
        .await
    }

    async fn cases(
        &self,
        _caller: Caller,
        filter: crate::api::cases::CaseFilter,
    ) -> Result<Vec<crate::api::cases::CaseView>, Problem> {
        Ok(super::cases::list_views(&self.0, filter))
    }

    async fn case(&self, _caller: Caller, id: Id) -> Result<crate::api::cases::CaseView, Problem> {
        super::cases::view(&self.0, &id).ok_or_else(|| Problem::not_found("case"))
    }

    async fn close_case(&self, caller: Caller, id: Id) -> Result<crate::api::cases::CaseView, Problem> {
        let node = Arc::clone(&self.0);
        tracing::info!(case = %id, uid = caller.uid, "case close requested");
        blocking(move || super::local::close_case(&node, id)).await
    }

    async fn directory(&self, _caller: Caller) -> Result<crate::api::directory::DirectoryView, Problem> {
        Ok(super::local::directory_view(&self.0))
    }

    async fn directory_change(
        &self,
        caller: Caller,
        request: crate::api::directory::ChangeRequest,
    ) -> Result<crate::api::directory::ChangeQueued, Problem> {
        let node = Arc::clone(&self.0);
        tracing::info!(uid = caller.uid, "api: directory change");
        blocking(move || super::local::send_change(&node, request)).await
    }

    async fn peers(&self, _caller: Caller) -> Result<Vec<PeerView>, Problem> {
        let node = Arc::clone(&self.0);
        blocking(move || {
            let dir = node.directory();
            let pending = undelivered(&node).map_err(store_err)?;
            let mut out = Vec::new();
            for (a, p) in &dir.peers {
                let mine: Vec<i64> = pending
                    .iter()
                    .filter(|(p, _)| p == a.as_str())
                    .map(|(_, t)| *t)
                    .collect();
                let link = node.links.get(a);
                out.push(PeerView {
                    authority: a.clone(),
                    addresses: p.addresses.clone(),
                    // Either direction: the peer's own connection to us counts too.
                    connected: link.as_ref().is_some_and(|l| l.connected())
                        || node.endpoint.peer_connections(a) > 0,
                    last_delivery: link.and_then(|l| l.last_delivery.lock().ok().and_then(|t| *t)),
                    queue_depth: mine.len() as u64,
                    oldest_undelivered: mine.iter().min().copied().map(ts),
                });
            }
            Ok(out)
        })
        .await
    }

    async fn health(&self, _caller: Caller) -> Result<Health, Problem> {
        let node = Arc::clone(&self.0);
        blocking(move || health(&node)).await
    }

    async fn audit(
        &self,
        _caller: Caller,
        from: u64,
        limit: u32,
    ) -> Result<Page<crate::api::ops::AuditEntryView>, Problem> {
        let node = Arc::clone(&self.0);
        blocking(move || super::operator::audit_page(&node, from, limit)).await
    }

    async fn audit_verify(&self, _caller: Caller) -> Result<crate::api::ops::AuditVerification, Problem> {
        let node = Arc::clone(&self.0);
        blocking(move || super::operator::audit_verify(&node)).await
    }

    async fn story(&self, _caller: Caller, id: Id) -> Result<crate::api::ops::Story, Problem> {
        let node = Arc::clone(&self.0);
        blocking(move || super::operator::story(&node, id)).await
    }

    async fn retention(
        &self,
        _caller: Caller,
        q: crate::api::ops::RetentionQuery,
    ) -> Result<crate::api::ops::RetentionReport, Problem> {
        let node = Arc::clone(&self.0);
        blocking(move || super::operator::retention_report(&node, &q)).await
    }

    async fn purge_case(&self, caller: Caller, case: Id) -> Result<crate::api::ops::CasePurged, Problem> {
        let node = Arc::clone(&self.0);
        tracing::info!(case = %case, uid = caller.uid, "case purge requested");
        blocking(move || super::operator::purge_case(&node, case)).await
    }

    async fn node_status(&self, caller: Caller) -> Result<crate::api::ops::NodeStatus, Problem> {
        let peers = self.peers(caller).await?;
        let health = self.health(caller).await?.status;
        let node = Arc::clone(&self.0);
        blocking(move || super::operator::node_status(&node, peers, health)).await
    }
}

/// Most undelivered or failed messages one health or peers query reads.
pub(crate) const HEALTH_SCAN: usize = 100_000;

/// Outbound messages without a receipt yet, queued or sent and waiting (at
/// most [`HEALTH_SCAN`] of each): (peer, stored at, unix seconds), from the
/// store's state index alone, no record reads.
fn undelivered(node: &Node) -> Result<Vec<(String, i64)>, konvert_store::Error> {
    let mut all = Vec::new();
    for state in [StoreState::Queued, StoreState::Sent] {
        for e in node
            .store
            .list_index_by_state(StoreDirection::Outbound, state, None, HEALTH_SCAN)?
        {
            // Index entries of an older store carry no time: the id's (UUIDv7) then.
            let created = e
                .created_at
                .unwrap_or_else(|| i64::try_from(e.id.unix_ms() / 1000).unwrap_or(i64::MAX));
            all.push((e.peer, created));
        }
    }
    Ok(all)
}

/// Received messages not acknowledged yet (at most [`HEALTH_SCAN`]), from the index alone.
pub(crate) fn inbox_depth(node: &Node) -> Result<u64, konvert_store::Error> {
    Ok(node
        .store
        .list_index_by_state(StoreDirection::Inbound, StoreState::New, None, HEALTH_SCAN)?
        .len() as u64)
}

/// What the health assessment looks at, gathered from the store, the
/// dispatcher and the file system (the time is passed in).
#[derive(Debug, Default, Clone)]
pub struct HealthFacts {
    /// Now (unix seconds).
    pub now: i64,
    /// The store refuses writes.
    pub store_poisoned: bool,
    /// Configured peers.
    pub peers: BTreeSet<String>,
    /// Undelivered outbound messages: (peer, created at).
    pub undelivered: Vec<(String, i64)>,
    /// Per configured peer: failed attempts in a row, and since when.
    pub failing: BTreeMap<String, (u32, Option<Timestamp>)>,
    /// When each failed outbound message was marked failed.
    pub failed_at: Vec<i64>,
    /// Free bytes on the data directory's file system, when known.
    pub free_bytes: Option<u64>,
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// The health status and its reasons (docs/API.md, "Health").
pub fn assess(f: &HealthFacts, cfg: &HealthConfig) -> (HealthStatus, Vec<HealthReason>) {
    let mut reasons = Vec::new();
    let reason = |code, peer: Option<&str>, count: Option<u64>, since: Option<Timestamp>, detail: String| {
        HealthReason {
            code,
            peer: peer.and_then(|p| AuthorityId::new(p.to_owned()).ok()),
            count,
            since,
            detail,
        }
    };
    if f.store_poisoned {
        reasons.push(reason(
            HealthReasonCode::StoreUnavailable,
            None,
            None,
            None,
            "the store refuses writes after a failed sync; restart konvertd after checking the disk".into(),
        ));
    }
    let mut waiting: BTreeMap<&str, u64> = BTreeMap::new();
    for (p, _) in &f.undelivered {
        *waiting.entry(p.as_str()).or_default() += 1;
    }
    for (peer, (failures, since)) in &f.failing {
        if *failures >= cfg.peer_failures && waiting.contains_key(peer.as_str()) {
            reasons.push(reason(
                HealthReasonCode::PeerUnreachable,
                Some(peer),
                Some(u64::from(*failures)),
                *since,
                format!("{failures} delivery attempts to {peer} failed in a row"),
            ));
        }
    }
    for (peer, n) in &waiting {
        if !f.peers.contains(*peer) {
            reasons.push(reason(
                HealthReasonCode::MessagesPaused,
                Some(peer),
                Some(*n),
                None,
                format!("{n} undelivered message(s) wait for {peer}, which is not a configured peer"),
            ));
        }
    }
    let window_start = f.now.saturating_sub(secs(cfg.failed_window.0));
    let failed = f.failed_at.iter().filter(|t| **t >= window_start).count() as u64;
    if failed > 0 {
        reasons.push(reason(
            HealthReasonCode::FailedMessages,
            None,
            Some(failed),
            f.failed_at
                .iter()
                .filter(|t| **t >= window_start)
                .min()
                .copied()
                .map(ts),
            format!("{failed} outbound message(s) were marked failed (undeliverable) recently"),
        ));
    }
    let too_old = f.now.saturating_sub(secs(cfg.max_undelivered_age.0));
    let old: Vec<i64> = f
        .undelivered
        .iter()
        .map(|(_, t)| *t)
        .filter(|t| *t < too_old)
        .collect();
    if let Some(oldest) = old.iter().min() {
        reasons.push(reason(
            HealthReasonCode::UndeliveredTooOld,
            None,
            Some(old.len() as u64),
            Some(ts(*oldest)),
            format!(
                "{} undelivered message(s) are older than {} s",
                old.len(),
                cfg.max_undelivered_age.0.as_secs()
            ),
        ));
    }
    if let Some(free) = f.free_bytes {
        if cfg.min_free_bytes > 0 && free < cfg.min_free_bytes {
            reasons.push(reason(
                HealthReasonCode::DiskSpaceLow,
                None,
                Some(free),
                None,
                format!(
                    "{free} bytes free on the data directory's file system, below {}",
                    cfg.min_free_bytes
                ),
            ));
        }
    }
    let status = if f.store_poisoned {
        HealthStatus::Unavailable
    } else if reasons.is_empty() {
        HealthStatus::Ok
    } else {
        HealthStatus::Degraded
    };
    (status, reasons)
}

pub(crate) fn free_bytes(path: &std::path::Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    #[allow(clippy::useless_conversion)] // the field types differ between platforms
    Some(u64::from(s.blocks_available()).saturating_mul(u64::from(s.fragment_size())))
}

fn health(node: &Node) -> Result<Health, Problem> {
    let stats = node.store.stats();
    let dir = node.directory();
    let mut facts = HealthFacts {
        now: Timestamp::now().as_unix(),
        store_poisoned: stats.poisoned,
        peers: dir.peers.keys().map(|a| a.to_string()).collect(),
        free_bytes: free_bytes(&node.config.data_dir),
        ..HealthFacts::default()
    };
    let mut inbox_depth = 0;
    let mut queue_depth = 0;
    // A poisoned store can still be read; if reading fails too, say what is known.
    match (|| -> Result<(), konvert_store::Error> {
        let pending = undelivered(node)?;
        queue_depth = pending.len() as u64;
        facts.undelivered = pending;
        facts.failed_at = node
            .store
            .list_by_state(StoreDirection::Outbound, StoreState::Failed, None, HEALTH_SCAN)?
            .into_iter()
            .map(|m| m.updated_at)
            .collect();
        inbox_depth = self::inbox_depth(node)?;
        Ok(())
    })() {
        Ok(()) => {}
        Err(e) if stats.poisoned => tracing::warn!(error = %e, "health: store not readable"),
        Err(e) => return Err(store_err(e)),
    }
    let mut connected = 0u32;
    for a in dir.peers.keys() {
        if let Some(link) = node.links.get(a) {
            facts.failing.insert(a.to_string(), link.failing());
            if link.connected() || node.endpoint.peer_connections(a) > 0 {
                connected += 1;
            }
        }
    }
    let (status, reasons) = assess(&facts, &node.config.health);
    let connections = node.endpoint.peer_connections_total();
    Ok(Health {
        status,
        reasons,
        version: env!("CARGO_PKG_VERSION").into(),
        store: if stats.poisoned {
            HealthStatus::Unavailable
        } else {
            HealthStatus::Ok
        },
        peers_connected: connected,
        peers_total: dir.peers.len() as u32,
        queue_depth,
        inbox_depth,
        connections: u32::try_from(connections).unwrap_or(u32::MAX),
        uptime_seconds: node.started.elapsed().as_secs(),
    })
}

/// The attempt count the dispatcher wrote into a failed message's outcome
/// (`undeliverable after N attempts: ...`).
fn attempts_in_outcome(outcome: &str) -> Option<u32> {
    outcome
        .strip_prefix("undeliverable after ")?
        .split_once(' ')?
        .0
        .parse()
        .ok()
}

fn message_status(node: &Node, id: Id) -> Result<MessageStatus, Problem> {
    let key = MessageId(*id.as_bytes());
    let (meta, dir) = match node.store.meta(StoreDirection::Outbound, &key) {
        Ok(m) => (m, Direction::Outbound),
        Err(konvert_store::Error::NotFound { .. }) => (
            node.store
                .meta(StoreDirection::Inbound, &key)
                .map_err(store_err)?,
            Direction::Inbound,
        ),
        Err(e) => return Err(store_err(e)),
    };
    let receipt = match dir {
        Direction::Outbound => match node.store.receipt(&key) {
            Ok(r) => Some(outbound_receipt_view(node, &node.directory(), &r)?),
            Err(_) => None,
        },
        Direction::Inbound => inbound_receipt_view(node, &meta)?,
    };
    let mut state = api_state(&meta);
    if dir == Direction::Outbound
        && receipt
            .as_ref()
            .is_some_and(|r| matches!(r.outcome, Outcome::Rejected { .. }))
    {
        state = MessageState::Rejected;
    }
    let at = |s: StoreState| (meta.state == s).then(|| ts(meta.updated_at));
    let mut times = MessageTimes {
        created: Some(ts(meta.created_at)),
        receipt: receipt.as_ref().map(|r| r.time),
        expires: Some(ts(meta.expires_at)),
        destroyed: meta.destroyed_at.map(ts),
        ..MessageTimes::default()
    };
    let (mut attempts, mut paused) = (None, None);
    match dir {
        Direction::Outbound => {
            let live = node.links.live(&key);
            times.sent = live
                .as_ref()
                .and_then(|l| l.last_sent)
                .or_else(|| at(StoreState::Sent));
            times.delivered = at(StoreState::Delivered);
            let persisted = meta
                .outcome
                .as_deref()
                .filter(|_| meta.state == StoreState::Failed)
                .and_then(attempts_in_outcome)
                .unwrap_or(meta.attempts);
            attempts = Some(persisted.max(live.map_or(0, |l| l.attempts)));
            if matches!(meta.state, StoreState::Queued | StoreState::Sent) {
                let configured = AuthorityId::new(meta.peer.clone())
                    .ok()
                    .is_some_and(|p| node.directory().peers.contains_key(&p));
                if !configured {
                    paused = Some(PausedReason::PeerNotConfigured);
                }
            }
        }
        Direction::Inbound => {
            times.acknowledged = at(StoreState::Acknowledged);
        }
    }
    Ok(MessageStatus {
        id,
        direction: dir,
        peer: authority(&meta.peer)?,
        agreement: AgreementId::new(meta.agreement.clone()).map_err(|_| Problem::internal())?,
        kind: meta.kind.clone(),
        envelope_id: Some(id),
        state,
        times,
        attempts,
        error: meta.outcome.clone().filter(|_| meta.state == StoreState::Failed),
        paused,
        receipt,
    })
}

fn purpose_of(m: &Message) -> Option<String> {
    let v = serde_json::to_value(&m.body).ok()?;
    v.get("content")?.get("purpose")?.as_str().map(str::to_string)
}

/// A refusal by the agreement's procedure (`daemon::cases`), before
/// sealing: the receipt code the peer would give is the error's `rule`.
fn procedure_problem(e: &crate::daemon::cases::OutgoingError) -> Problem {
    use crate::daemon::cases::OutgoingError as O;
    let rule = e.code().map_or_else(|| "internal".to_owned(), |c| c.to_string());
    match e {
        O::NotInForce(_) => Problem::new(ProblemType::NotInForce, e.to_string()).with_error(
            "/message/header/agreement",
            rule,
            e.to_string(),
        ),
        O::Case(_) => Problem::new(ProblemType::Validation, e.to_string()).with_error(
            "/message/header/in_reply_to",
            rule,
            e.to_string(),
        ),
        O::Consent(_) => Problem::new(ProblemType::Validation, e.to_string()).with_error(
            "/message/body/content",
            rule,
            e.to_string(),
        ),
        O::ConsentMissing { index, error } => {
            // A consent that is not on record has its own type; a source
            // that is not received data at all is a plain validation error.
            let t = match error {
                konvert_envelope::consent::ConsentError::Missing(_) => ProblemType::ConsentMissing,
                _ => ProblemType::Validation,
            };
            Problem::new(t, e.to_string()).with_error(format!("/sources/{index}"), rule, e.to_string())
        }
        O::NoPurpose => Problem::new(ProblemType::Validation, e.to_string()).with_error(
            "/purpose",
            "required",
            e.to_string(),
        ),
        O::InFlight { .. } => Problem::conflict(e.to_string()),
        O::State(err) => {
            tracing::error!(error = %err, "procedure state not written");
            Problem::new(ProblemType::Unavailable, "the gateway cannot record the case now")
        }
    }
}

fn submit_problem(e: SubmitError) -> Problem {
    use konvert_envelope::envelope::SealError;
    match e {
        SubmitError::Seal(SealError::Invalid(errs)) => {
            let mut p = Problem::from_validation(&errs, "/message");
            if errs.has(konvert_envelope::profile::ValidationRule::NotInForce)
                || errs.has(konvert_envelope::profile::ValidationRule::Terminated)
            {
                let t = ProblemType::NotInForce;
                p.type_ = t;
                p.title = t.title().to_owned();
                p.status = t.status();
            }
            p
        }
        SubmitError::NotOwnAuthority(..) => Problem::new(ProblemType::Validation, e.to_string()).with_error(
            "/message/header/from",
            "not_own_authority",
            e.to_string(),
        ),
        SubmitError::UnknownPeer(..) => Problem::new(ProblemType::Validation, e.to_string()).with_error(
            "/message/header/to",
            "unknown_peer",
            e.to_string(),
        ),
        SubmitError::UnknownAgreement(..) => Problem::new(ProblemType::Validation, e.to_string()).with_error(
            "/message/header/agreement",
            "unknown_agreement",
            e.to_string(),
        ),
        SubmitError::UnknownSignatory(..) => Problem::new(ProblemType::Validation, e.to_string()).with_error(
            "/signatory",
            "unknown_signatory",
            e.to_string(),
        ),
        SubmitError::SignerNotAuthorised(..) => Problem::new(ProblemType::SignerNotAuthorised, e.to_string())
            .with_error("/signatory", "signer_not_authorised", e.to_string()),
        SubmitError::ProfileVersion(super::versions::VersionError::At(ref v)) => Problem::new(
            ProblemType::NotInForce,
            e.to_string(),
        )
        .with_error("/message/header/time", "agreement_not_in_force", v.to_string()),
        SubmitError::ProfileVersion(ref v) => {
            tracing::error!(error = %v, "no loaded profile version for a case");
            Problem::new(ProblemType::Unavailable, e.to_string())
        }
        SubmitError::OwnRoster(ref reason) => {
            tracing::error!(error = %reason, "own signatory roster not usable; submissions refused");
            Problem::new(
                ProblemType::Unavailable,
                "the own signatory roster (keys/roster.cose) cannot be read or verified; see the daemon's log",
            )
        }
        SubmitError::Attachment { index, ref reason } => Problem::new(ProblemType::Validation, e.to_string())
            .with_error(
                format!("/message/attachments/{index}"),
                "attachment",
                reason.clone(),
            ),
        SubmitError::IdInUse(_) => Problem::conflict(e.to_string()),
        SubmitError::Procedure(p) => procedure_problem(&p),
        SubmitError::Store(s) => store_err(s),
        other => {
            tracing::error!(error = %other, "submit failed");
            Problem::internal()
        }
    }
}

/// An async reader over a blocking one (a store blob being decrypted): a
/// blocking task copies it through a bounded pipe. A failure midway (a
/// blob that does not authenticate) ends the stream early, which the HTTP
/// layer reports as a body shorter than its `Content-Length`.
pub(crate) fn stream_blocking(
    mut r: impl std::io::Read + Send + 'static,
    id: Id,
) -> std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>> {
    let (rx, tx) = tokio::io::duplex(256 << 10);
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut w = tokio_util::io::SyncIoBridge::new_with_handle(tx, rt);
        if let Err(e) = std::io::copy(&mut r, &mut w) {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                tracing::error!(id = %id, error = %e, "attachment not streamed out of the store");
            }
        }
        let _ = w.shutdown();
    });
    Box::pin(rx)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cfg() -> HealthConfig {
        HealthConfig::default()
    }

    const NOW: i64 = 1_790_000_000;

    fn facts() -> HealthFacts {
        HealthFacts {
            now: NOW,
            peers: ["by.mvd".to_owned(), "am.police".to_owned()].into(),
            free_bytes: Some(10 << 30),
            ..HealthFacts::default()
        }
    }

    fn codes(f: &HealthFacts) -> (HealthStatus, Vec<HealthReasonCode>) {
        let (s, r) = assess(f, &cfg());
        (s, r.into_iter().map(|r| r.code).collect())
    }

    #[test]
    fn healthy_is_ok_without_reasons() {
        let mut f = facts();
        f.undelivered = vec![("by.mvd".into(), NOW - 10)];
        f.failing.insert("by.mvd".into(), (2, None));
        assert_eq!(codes(&f), (HealthStatus::Ok, vec![]));
    }

    #[test]
    fn each_reason_degrades() {
        // A peer failing three times in a row with messages waiting.
        let mut f = facts();
        f.undelivered = vec![("by.mvd".into(), NOW - 10)];
        f.failing
            .insert("by.mvd".into(), (3, Some(Timestamp::from_unix(NOW - 5))));
        let (s, r) = assess(&f, &cfg());
        assert_eq!(s, HealthStatus::Degraded);
        assert_eq!(r[0].code, HealthReasonCode::PeerUnreachable);
        assert_eq!(r[0].peer.as_ref().unwrap().as_str(), "by.mvd");
        assert_eq!(r[0].count, Some(3));
        // ... but not without anything to deliver.
        f.undelivered.clear();
        assert_eq!(codes(&f).0, HealthStatus::Ok);

        // Failed within the window counts; before it, not.
        let mut f = facts();
        f.failed_at = vec![NOW - 25 * 3600, NOW - 60];
        let (s, r) = assess(&f, &cfg());
        assert_eq!(s, HealthStatus::Degraded);
        assert_eq!(r[0].code, HealthReasonCode::FailedMessages);
        assert_eq!(r[0].count, Some(1));
        f.failed_at = vec![NOW - 25 * 3600];
        assert_eq!(codes(&f).0, HealthStatus::Ok);

        // The oldest undelivered message is older than an hour.
        let mut f = facts();
        f.undelivered = vec![("by.mvd".into(), NOW - 3601), ("by.mvd".into(), NOW - 5)];
        let (_, r) = assess(&f, &cfg());
        assert_eq!(r[0].code, HealthReasonCode::UndeliveredTooOld);
        assert_eq!(r[0].count, Some(1));
        assert_eq!(r[0].since, Some(Timestamp::from_unix(NOW - 3601)));

        // Messages for a peer that is no longer configured.
        let mut f = facts();
        f.undelivered = vec![("ua.mvs".into(), NOW - 5), ("ua.mvs".into(), NOW - 4)];
        let (_, r) = assess(&f, &cfg());
        assert_eq!(r[0].code, HealthReasonCode::MessagesPaused);
        assert_eq!(r[0].count, Some(2));

        // Low disk; a minimum of 0 turns the check off.
        let mut f = facts();
        f.free_bytes = Some(1 << 20);
        assert_eq!(codes(&f).1, vec![HealthReasonCode::DiskSpaceLow]);
        let mut c = cfg();
        c.min_free_bytes = 0;
        assert_eq!(assess(&f, &c).0, HealthStatus::Ok);
    }

    #[test]
    fn a_poisoned_store_is_unavailable() {
        let mut f = facts();
        f.store_poisoned = true;
        f.failed_at = vec![NOW];
        let (s, r) = assess(&f, &cfg());
        assert_eq!(s, HealthStatus::Unavailable);
        assert_eq!(r[0].code, HealthReasonCode::StoreUnavailable);
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn outcomes_and_attempt_counts_parse() {
        assert_eq!(parse_outcome("accepted"), Some(Outcome::Accepted));
        assert_eq!(
            parse_outcome("rejected:too_large"),
            Some(Outcome::Rejected {
                code: konvert_envelope::receipt::RejectCode::TooLarge
            })
        );
        assert_eq!(parse_outcome("rejected:nonsense"), None);
        assert_eq!(parse_outcome("delivered"), None);
        assert_eq!(
            attempts_in_outcome("undeliverable after 7 attempts: no address could be reached"),
            Some(7)
        );
        assert_eq!(attempts_in_outcome("something else"), None);
    }

    #[test]
    fn receipt_cursors_round_trip_and_order() {
        let a = ReceiptPos {
            id: [3; 16],
            inbound: false,
        };
        let b = ReceiptPos {
            id: [3; 16],
            inbound: true,
        };
        assert!(a < b, "outbound first at an equal id");
        for p in [a, b] {
            let c = Cursor::new(p.cursor()).unwrap();
            assert_eq!(ReceiptPos::parse(&c).unwrap(), p);
        }
        for bad in [
            "0303",
            "zz030303030303030303030303030303o",
            "03030303030303030303030303030303x",
        ] {
            let e = ReceiptPos::parse(&Cursor::new(bad).unwrap()).unwrap_err();
            assert_eq!(e.errors[0].field, "after");
        }
        assert_eq!(id_before([0; 16]), None);
        let mut one = [0u8; 16];
        one[15] = 1;
        assert_eq!(id_before(one), Some(MessageId([0; 16])));
        let mut carry = [0u8; 16];
        carry[14] = 1;
        let mut expect = [0u8; 16];
        expect[15] = 0xff;
        assert_eq!(id_before(carry), Some(MessageId(expect)));
    }

    #[test]
    fn scan_after_skips_the_cursor_and_widens_within_one_millisecond() {
        // Ten ids in the same millisecond, then one later.
        let mut ids: Vec<MessageId> = (0..10u8)
            .map(|i| {
                let mut m = MessageId::min_at(5);
                m.0[15] = i;
                m
            })
            .collect();
        ids.push(MessageId::min_at(6));
        let calls = std::cell::Cell::new(0);
        let fetch = |from: u64, k: usize| {
            calls.set(calls.get() + 1);
            Ok(ids
                .iter()
                .copied()
                .filter(|m| m.unix_ms() >= from)
                .take(k)
                .collect())
        };
        // Nine records at or before the cursor fill the first fetch: it widens.
        let got = scan_after(Some(ids[8]), 1, |m| *m, fetch).unwrap();
        assert_eq!(got, vec![ids[9]]);
        assert_eq!(calls.get(), 2);
        let got = scan_after(Some(ids[9]), 5, |m| *m, fetch).unwrap();
        assert_eq!(got, vec![ids[10]]);
        let got = scan_after(None, 3, |m| *m, fetch).unwrap();
        assert_eq!(got, ids[..3].to_vec());
        let got = scan_after(Some(ids[10]), 3, |m| *m, fetch).unwrap();
        assert!(got.is_empty());
    }
}
