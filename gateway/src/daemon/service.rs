//! The local API's operations ([`ApiService`]) on top of the store.
//!
//! Problem texts name ids, fields and rules, never message content.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use konvert_envelope::model::{AgreementId, AuthorityId, Digest, Id, Message, SignatoryId, Timestamp};
use konvert_envelope::receipt::{Outcome, Receipt};
use konvert_store::{Direction as StoreDirection, MessageId, MessageMeta, MessageState as StoreState};
use tokio::io::AsyncWriteExt;

use super::inbound::InboxRecord;
use super::outbound::{self, Submission, SubmitError};
use super::Node;
use crate::api::types::{
    AttachmentView, Caller, Cursor, Direction, Health, HealthStatus, InboxItem, InboxMessage, MessageState,
    MessageStatus, MessageTimes, PeerView, ReceiptFilter, ReceiptState, ReceiptView, SubmitRequest,
    Submitted, Upload,
};
use crate::api::{ApiService, Download, Problem, ProblemType, UploadBody};

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

fn receipt_view(node: &Node, r: &konvert_store::Receipt) -> Option<ReceiptView> {
    let peer = AuthorityId::new(r.peer.clone()).ok()?;
    let dir = node.directory();
    let key = dir.peers.get(&peer).map(|p| p.card.node_key);
    let parsed = key.and_then(|k| Receipt::verify(&r.bytes, &k).ok());
    let (receipt, verified) = match parsed {
        Some(p) => (p, true),
        None => return None,
    };
    Some(ReceiptView {
        envelope_id: receipt.envelope_id,
        message_id: Some(Id::from_bytes(r.message.0)),
        direction: Direction::Outbound,
        peer,
        receiver: receipt.receiver,
        sender: receipt.sender,
        time: receipt.time,
        outcome: receipt.outcome,
        envelope_digest: receipt.envelope_digest,
        verified,
    })
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
        attachments: u32::try_from(rec.attachments.len()).unwrap_or(u32::MAX),
        due: None,
        expires: Some(ts(meta.expires_at)),
    })
}

fn parse_cursor(c: &Cursor) -> Result<MessageId, Problem> {
    let mut b = [0u8; 16];
    hex::decode_to_slice(c.as_str(), &mut b)
        .map_err(|_| Problem::bad_param("after", "cursor", "not a cursor returned by this gateway"))?;
    Ok(MessageId(b))
}

fn inbox_list(node: &Node, after: Option<&Cursor>, limit: u32) -> Result<Vec<InboxItem>, Problem> {
    let after = after.map(parse_cursor).transpose()?;
    let metas = node
        .store
        .inbox_list(after.as_ref(), limit as usize)
        .map_err(store_err)?;
    let mut out = Vec::with_capacity(metas.len());
    for m in metas {
        let Ok(msg) = node.store.get(StoreDirection::Inbound, &m.id) else {
            continue;
        };
        let rec = InboxRecord::from_slice(&msg.payload).map_err(|_| Problem::internal())?;
        out.push(inbox_item(&m, &rec)?);
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

    async fn upload(
        &self,
        caller: Caller,
        media_type: String,
        mut body: UploadBody,
    ) -> Result<Upload, Problem> {
        use sha2::Digest as _;
        use tokio::io::AsyncReadExt;
        tracing::info!(uid = caller.uid, "api: upload");
        let id = Id::new(Timestamp::now());
        let path = self.0.uploads_dir.join(id.to_string());
        let tmp = self.0.uploads_dir.join(format!(".{id}.part"));
        let mut f = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .await
            .map_err(|_| Problem::internal())?;
        let mut hasher = sha2::Sha256::new();
        let mut len = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match body.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(_) => {
                    let _ = tokio::fs::remove_file(&tmp).await;
                    return Err(Problem::new(
                        ProblemType::PayloadTooLarge,
                        "the upload is larger than allowed or was cut off",
                    ));
                }
            };
            hasher.update(&buf[..n]);
            len += n as u64;
            if f.write_all(&buf[..n]).await.is_err() {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(Problem::unavailable("cannot store the upload"));
            }
        }
        f.sync_all()
            .await
            .map_err(|_| Problem::unavailable("cannot store the upload"))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|_| Problem::internal())?;
        Ok(Upload {
            id,
            media_type,
            length: len,
            sha256: Digest(hasher.finalize().into()),
            expires: None,
        })
    }

    async fn status(&self, _caller: Caller, id: Id) -> Result<MessageStatus, Problem> {
        let node = Arc::clone(&self.0);
        blocking(move || {
            let key = MessageId(*id.as_bytes());
            let (meta, dir) = match node.store.meta(StoreDirection::Outbound, &key) {
                Ok(m) => (m, Direction::Outbound),
                Err(_) => (
                    node.store
                        .meta(StoreDirection::Inbound, &key)
                        .map_err(store_err)?,
                    Direction::Inbound,
                ),
            };
            let receipt = if dir == Direction::Outbound {
                node.store
                    .receipt(&key)
                    .ok()
                    .and_then(|r| receipt_view(&node, &r))
            } else {
                None
            };
            let mut state = api_state(&meta);
            if receipt
                .as_ref()
                .is_some_and(|r| matches!(r.outcome, Outcome::Rejected { .. }))
            {
                state = MessageState::Rejected;
            }
            Ok(MessageStatus {
                id,
                direction: dir,
                peer: AuthorityId::new(meta.peer.clone()).map_err(|_| Problem::internal())?,
                agreement: AgreementId::new(meta.agreement.clone()).map_err(|_| Problem::internal())?,
                kind: meta.kind.clone(),
                envelope_id: Some(id),
                state,
                times: MessageTimes {
                    created: Some(ts(meta.created_at)),
                    sent: None,
                    receipt: receipt.as_ref().map(|r| r.time),
                    acknowledged: None,
                    expires: Some(ts(meta.expires_at)),
                    destroyed: meta.destroyed_at.map(ts),
                },
                attempts: Some(meta.attempts),
                error: meta.outcome.clone().filter(|_| meta.state == StoreState::Failed),
                receipt,
            })
        })
        .await
    }

    async fn receipts(&self, _caller: Caller, filter: ReceiptFilter) -> Result<Vec<ReceiptView>, Problem> {
        let node = Arc::clone(&self.0);
        blocking(move || {
            let after = filter.after.map(|a| MessageId(*a.as_bytes()));
            let raw = match &filter.peer {
                Some(p) => node
                    .store
                    .receipts_by_peer(p.as_str(), after.as_ref(), 10_000)
                    .map_err(store_err)?,
                None => {
                    let from = filter.since.map_or(0, |t| t.as_millis().max(0) as u64);
                    let to = filter
                        .until
                        .map_or(u64::MAX / 2, |t| t.as_millis().max(0) as u64 + 1000);
                    node.store.receipts_between(from, to, 10_000).map_err(store_err)?
                }
            };
            let mut out = Vec::new();
            for r in &raw {
                if after.is_some_and(|a| r.message <= a) {
                    continue;
                }
                let Some(v) = receipt_view(&node, r) else { continue };
                let state = match v.outcome {
                    Outcome::Accepted => ReceiptState::Accepted,
                    Outcome::Rejected { .. } => ReceiptState::Rejected,
                };
                if filter.state.is_some_and(|s| s != state)
                    || filter.since.is_some_and(|t| v.time < t)
                    || filter.until.is_some_and(|t| v.time > t)
                {
                    continue;
                }
                out.push(v);
                if out.len() >= filter.limit as usize {
                    break;
                }
            }
            Ok(out)
        })
        .await
    }

    async fn receipt(&self, _caller: Caller, envelope_id: Id) -> Result<ReceiptView, Problem> {
        let node = Arc::clone(&self.0);
        blocking(move || {
            let r = node
                .store
                .receipt(&MessageId(*envelope_id.as_bytes()))
                .map_err(|_| Problem::not_found("receipt"))?;
            receipt_view(&node, &r).ok_or_else(|| Problem::not_found("receipt"))
        })
        .await
    }

    async fn receipt_raw(&self, _caller: Caller, envelope_id: Id) -> Result<Bytes, Problem> {
        let node = Arc::clone(&self.0);
        blocking(move || {
            let r = node
                .store
                .receipt(&MessageId(*envelope_id.as_bytes()))
                .map_err(|_| Problem::not_found("receipt"))?;
            Ok(Bytes::from(r.bytes))
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
            let item = inbox_item(&meta, &rec)?;
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
            let purpose = purpose_of(&message);
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
            let (Some(a), Some(bytes)) = (atts.get(index as usize), rec.attachments.get(index as usize))
            else {
                return Err(Problem::not_found("attachment"));
            };
            Ok(Download {
                media_type: a.media_type.clone(),
                length: Some(a.length),
                sha256: Some(a.sha256),
                reader: Box::pin(std::io::Cursor::new(bytes.to_vec())),
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

    async fn peers(&self, _caller: Caller) -> Result<Vec<PeerView>, Problem> {
        let node = Arc::clone(&self.0);
        blocking(move || {
            let dir = node.directory();
            let pending = node.store.outbox_pending(None, 100_000).map_err(store_err)?;
            let mut out = Vec::new();
            for (a, p) in &dir.peers {
                let mine: Vec<_> = pending.iter().filter(|m| m.peer == a.as_str()).collect();
                let link = node.links.get(a);
                out.push(PeerView {
                    authority: a.clone(),
                    addresses: p.addresses.clone(),
                    connected: link.as_ref().is_some_and(|l| l.connected()),
                    last_delivery: link.and_then(|l| l.last_delivery.lock().ok().and_then(|t| *t)),
                    queue_depth: mine.len() as u64,
                    oldest_undelivered: mine.first().map(|m| ts(m.created_at)),
                });
            }
            Ok(out)
        })
        .await
    }

    async fn health(&self, caller: Caller) -> Result<Health, Problem> {
        let peers = self.peers(caller).await?;
        let node = Arc::clone(&self.0);
        let inbox_depth =
            blocking(move || Ok(node.store.inbox_list(None, 100_000).map_err(store_err)?.len() as u64))
                .await?;
        let stats = self.0.store.stats();
        let store = if stats.poisoned {
            HealthStatus::Unavailable
        } else {
            HealthStatus::Ok
        };
        Ok(Health {
            status: store,
            version: env!("CARGO_PKG_VERSION").into(),
            store,
            peers_connected: peers.iter().filter(|p| p.connected).count() as u32,
            peers_total: peers.len() as u32,
            queue_depth: peers.iter().map(|p| p.queue_depth).sum(),
            inbox_depth,
            uptime_seconds: self.0.started.elapsed().as_secs(),
        })
    }
}

fn purpose_of(m: &Message) -> Option<String> {
    let v = serde_json::to_value(&m.body).ok()?;
    v.get("content")?.get("purpose")?.as_str().map(str::to_string)
}

fn submit_problem(e: SubmitError) -> Problem {
    use konvert_envelope::envelope::SealError;
    match e {
        SubmitError::Seal(SealError::Invalid(errs)) => {
            let mut p = Problem::from_validation(&errs, "/message");
            if errs.has(konvert_envelope::profile::ValidationRule::NotInForce) {
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
        SubmitError::Attachment { index, ref reason } => Problem::new(ProblemType::Validation, e.to_string())
            .with_error(
                format!("/message/attachments/{index}"),
                "attachment",
                reason.clone(),
            ),
        SubmitError::IdInUse(_) => Problem::conflict(e.to_string()),
        SubmitError::Store(s) => store_err(s),
        other => {
            tracing::error!(error = %other, "submit failed");
            Problem::internal()
        }
    }
}
