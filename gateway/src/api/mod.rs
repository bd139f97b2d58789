//! The local API for ministry applications: HTTP/1.1 with JSON over a Unix
//! domain socket (as Docker and Podman expose theirs), so that any language
//! and `curl --unix-socket` can use it. Reference: `docs/api/openapi.yaml`;
//! guide: `docs/API.md`.
//!
//! - [`ApiService`]: what the daemon implements (submit, status, receipts,
//!   inbox, peers, health). The HTTP layer here parses and checks every
//!   request at the boundary and hands the service typed values only.
//! - [`ApiServer`]: the socket (mode 0660), the peer-credential check of each
//!   connection against an [`AccessPolicy`], limits, graceful shutdown.
//! - [`Problem`]: every error, as an RFC 9457 problem document.
//! - [`types`]: the JSON documents.
//! - [`ops`]: the operator's documents (audit trail, story, retention, status).
//!
//! Routes (all under `/v1`) are listed in [`ROUTES`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use hyper::body::Body;
use konvert_envelope::model::{Digest, Id};
use tokio::io::{AsyncRead, ReadBuf};

pub mod cases;
pub mod directory;
mod json_pointer;
pub mod ops;
pub mod problem;
mod router;
mod server;
pub mod types;

pub use problem::{FieldError, Problem, ProblemType, PROBLEM_CONTENT_TYPE};
pub use router::{RouteSpec, ROUTES};
pub use server::{AccessPolicy, ApiServer, BindError, PolicyError};
pub use types::*;

/// What the local API needs from the daemon. The HTTP layer has checked
/// every argument (ids, parameters, sizes, content types) before calling.
/// Errors are [`Problem`]s; the HTTP layer sends them as they are (adding
/// `instance`), so their texts must not carry personal data.
pub trait ApiService: Send + Sync + 'static {
    /// Validates the message against its profile, resolves `upload:<id>`
    /// attachments, signs it with the named signatory, seals it and queues it
    /// durably. Idempotent per message id (see [`SubmitRequest::message`]).
    fn submit(
        &self,
        caller: Caller,
        request: SubmitRequest,
    ) -> impl Future<Output = Result<Submitted, Problem>> + Send;

    /// Stores an attachment streamed from the application (to disk, not
    /// memory). `media_type` is the checked `Content-Type` essence. The body
    /// ends with an error once more than the configured upload limit arrives;
    /// the HTTP layer then answers 413 whatever the service returns.
    fn upload(
        &self,
        caller: Caller,
        media_type: String,
        body: UploadBody,
    ) -> impl Future<Output = Result<Upload, Problem>> + Send;

    /// The state of a message (either direction) and its receipt.
    fn status(&self, caller: Caller, id: Id) -> impl Future<Output = Result<MessageStatus, Problem>> + Send;

    /// Like [`ApiService::status`], but while an outgoing message has no
    /// outcome yet (`queued` or `sent`), waits up to `timeout` (at most 60
    /// s) for its receipt or for its delivery to be given up, and returns
    /// the status then (or at the timeout, as it is). The HTTP layer also
    /// stops waiting at shutdown and a little after `timeout`.
    fn status_wait(
        &self,
        caller: Caller,
        id: Id,
        timeout: Duration,
    ) -> impl Future<Output = Result<MessageStatus, Problem>> + Send;

    /// Receipts matching the filter, in a stable order, at most
    /// `filter.limit`, and the position to continue from (`next`, absent
    /// when nothing more follows). A page may hold fewer items than the
    /// limit and still have a `next` (the service bounds the work per page).
    fn receipts(
        &self,
        caller: Caller,
        filter: ReceiptFilter,
    ) -> impl Future<Output = Result<Page<ReceiptView>, Problem>> + Send;

    /// One receipt by envelope id.
    fn receipt(
        &self,
        caller: Caller,
        envelope_id: Id,
    ) -> impl Future<Output = Result<ReceiptView, Problem>> + Send;

    /// The signed receipt bytes (tagged COSE_Sign1) by envelope id, for export.
    fn receipt_raw(
        &self,
        caller: Caller,
        envelope_id: Id,
    ) -> impl Future<Output = Result<Bytes, Problem>> + Send;

    /// Unacknowledged inbox items in arrival order, after `after`, at most `limit`.
    fn inbox(
        &self,
        caller: Caller,
        after: Option<Cursor>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<InboxItem>, Problem>> + Send;

    /// Like [`ApiService::inbox`], but when there is nothing yet, waits up to
    /// `timeout` (at most 60 s) for an item to arrive; returns as soon as
    /// there is one, or an empty list at the timeout. The HTTP layer also
    /// stops waiting at shutdown and a little after `timeout`.
    fn inbox_wait(
        &self,
        caller: Caller,
        after: Option<Cursor>,
        limit: u32,
        timeout: Duration,
    ) -> impl Future<Output = Result<Vec<InboxItem>, Problem>> + Send;

    /// A received message, decrypted, with its attachment list. Fetching
    /// does not acknowledge: an item is handed out until acknowledged.
    fn inbox_get(&self, caller: Caller, id: Id)
        -> impl Future<Output = Result<InboxMessage, Problem>> + Send;

    /// Attachment `index` of a received message, as a stream.
    fn inbox_attachment(
        &self,
        caller: Caller,
        id: Id,
        index: u32,
    ) -> impl Future<Output = Result<Download, Problem>> + Send;

    /// Marks a received message as handled: durably, before returning; it is
    /// never listed as new again. Acknowledging twice is fine; an unknown id
    /// is `not-found`.
    fn inbox_ack(&self, caller: Caller, id: Id) -> impl Future<Output = Result<(), Problem>> + Send;

    /// Request cases (`GET /v1/cases`), earliest deadline first. A service
    /// that keeps no cases (a test double) has none to list.
    fn cases(
        &self,
        _caller: Caller,
        _filter: cases::CaseFilter,
    ) -> impl Future<Output = Result<Vec<cases::CaseView>, Problem>> + Send {
        async { Ok(Vec::new()) }
    }

    /// One request case with its history (`GET /v1/cases/{id}`).
    fn case(
        &self,
        _caller: Caller,
        _id: Id,
    ) -> impl Future<Output = Result<cases::CaseView, Problem>> + Send {
        async { Err(Problem::not_found("case")) }
    }

    /// Closes an ended case on this side (`POST /v1/cases/{id}/close`, Art.
    /// 11.5): after its final answer, refusal or withdrawal, so that its
    /// messages may be destroyed early. Answers the closed case.
    fn close_case(
        &self,
        _caller: Caller,
        _id: Id,
    ) -> impl Future<Output = Result<cases::CaseView, Problem>> + Send {
        async { Err(Problem::not_found("case")) }
    }

    /// The verified directory of the peers (`GET /v1/directory`). A service
    /// that keeps none (a test double) shows it empty.
    fn directory(
        &self,
        _caller: Caller,
    ) -> impl Future<Output = Result<directory::DirectoryView, Problem>> + Send {
        async {
            Ok(directory::DirectoryView {
                rosters: Vec::new(),
                changes: Vec::new(),
            })
        }
    }

    /// Sends this authority's signed renaming or replacement to every peer
    /// (`POST /v1/directory/changes`, Art. 2).
    fn directory_change(
        &self,
        _caller: Caller,
        _request: directory::ChangeRequest,
    ) -> impl Future<Output = Result<directory::ChangeQueued, Problem>> + Send {
        async { Err(Problem::not_found("route")) }
    }

    /// The peers and their connections.
    fn peers(&self, caller: Caller) -> impl Future<Output = Result<Vec<PeerView>, Problem>> + Send;

    /// Health of the daemon.
    fn health(&self, caller: Caller) -> impl Future<Output = Result<Health, Problem>> + Send;

    /// The audit trail from sequence number `from`, at most `limit` events
    /// (`GET /v1/audit`; `next` continues it).
    fn audit(
        &self,
        caller: Caller,
        from: u64,
        limit: u32,
    ) -> impl Future<Output = Result<Page<ops::AuditEntryView>, Problem>> + Send;

    /// Verifies the audit chain, and against the head log if one is configured.
    fn audit_verify(
        &self,
        caller: Caller,
    ) -> impl Future<Output = Result<ops::AuditVerification, Problem>> + Send;

    /// A message's story from the audit trail (either direction).
    fn story(&self, caller: Caller, id: Id) -> impl Future<Output = Result<ops::Story, Problem>> + Send;

    /// What will be destroyed when (per hour, or per day) and what was
    /// destroyed (destruction events, newest first), with ids if asked.
    fn retention(
        &self,
        caller: Caller,
        q: ops::RetentionQuery,
    ) -> impl Future<Output = Result<ops::RetentionReport, Problem>> + Send;

    /// Destroys a case and its messages now (the case closed before its retention ended).
    fn purge_case(
        &self,
        caller: Caller,
        case: Id,
    ) -> impl Future<Output = Result<ops::CasePurged, Problem>> + Send;

    /// The node's status: peers, queues, cases, store, keys, sweeper.
    fn node_status(&self, caller: Caller) -> impl Future<Output = Result<ops::NodeStatus, Problem>> + Send;
}

/// Limits applied at the boundary, before anything reaches the service.
#[derive(Clone, Debug)]
pub struct ApiLimits {
    /// Largest JSON request body (default 16 MiB).
    pub max_json_body: u64,
    /// Largest upload (default 256 MiB); streamed, never held in memory.
    pub max_upload: u64,
    /// Most request headers (default 64).
    pub max_headers: usize,
    /// Largest request head, start line and headers (default 16 KiB).
    pub max_header_bytes: usize,
    /// Time allowed to send a request head (default 10 s).
    pub header_read_timeout: Duration,
    /// Most connections served at once (default 256); more wait to be accepted.
    pub max_connections: usize,
    /// Largest `limit` of a list (default 1000).
    pub max_list_limit: u32,
    /// Longest `wait` of a long poll (default 60 s).
    pub max_wait: Duration,
    /// How long shutdown waits for in-flight requests before closing them (default 30 s).
    pub shutdown_grace: Duration,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            max_json_body: 16 << 20,
            max_upload: 256 << 20,
            max_headers: 64,
            max_header_bytes: 16 << 10,
            header_read_timeout: Duration::from_secs(10),
            max_connections: 256,
            max_list_limit: 1000,
            max_wait: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Error of an [`UploadBody`] read past the size limit.
#[derive(Debug, thiserror::Error)]
#[error("upload larger than the limit of {limit} bytes")]
pub struct UploadTooLarge {
    /// The limit.
    pub limit: u64,
}

type DynBody = Pin<Box<dyn Body<Data = Bytes, Error = hyper::Error> + Send>>;

/// The body of an upload as an [`AsyncRead`], bounded by the upload limit:
/// reading past the limit fails with an `io::Error` wrapping
/// [`UploadTooLarge`]. Also fails if the client breaks off the body.
pub struct UploadBody {
    body: DynBody,
    chunk: Bytes,
    read: u64,
    limit: u64,
    content_length: Option<u64>,
    exceeded: Arc<AtomicBool>,
    done: bool,
}

impl std::fmt::Debug for UploadBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadBody")
            .field("read", &self.read)
            .field("limit", &self.limit)
            .field("content_length", &self.content_length)
            .finish()
    }
}

impl UploadBody {
    /// Wraps a request body.
    pub fn new(
        body: impl Body<Data = Bytes, Error = hyper::Error> + Send + 'static,
        limit: u64,
        content_length: Option<u64>,
    ) -> Self {
        Self {
            body: Box::pin(body),
            chunk: Bytes::new(),
            read: 0,
            limit,
            content_length,
            exceeded: Arc::new(AtomicBool::new(false)),
            done: false,
        }
    }
    /// The length the client announced (`Content-Length`), if it did.
    pub fn content_length(&self) -> Option<u64> {
        self.content_length
    }
    /// The size limit.
    pub fn limit(&self) -> u64 {
        self.limit
    }
    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }
    pub(crate) fn exceeded_flag(&self) -> Arc<AtomicBool> {
        self.exceeded.clone()
    }
}

impl AsyncRead for UploadBody {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            if !self.chunk.is_empty() {
                let n = self.chunk.len().min(out.remaining());
                out.put_slice(&self.chunk[..n]);
                self.chunk.advance(n);
                return Poll::Ready(Ok(()));
            }
            if self.done {
                return Poll::Ready(Ok(()));
            }
            match self.body.as_mut().poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => self.done = true,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(std::io::Error::other(e))),
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.read = self.read.saturating_add(data.len() as u64);
                        if self.read > self.limit {
                            self.exceeded.store(true, Ordering::SeqCst);
                            self.done = true;
                            let limit = self.limit;
                            return Poll::Ready(Err(std::io::Error::other(UploadTooLarge { limit })));
                        }
                        self.chunk = data;
                    }
                }
            }
        }
    }
}

/// A byte stream handed out by the service (an inbox attachment).
pub struct Download {
    /// Media type (sent as `Content-Type`).
    pub media_type: String,
    /// Length in bytes, when known (sent as `Content-Length`).
    pub length: Option<u64>,
    /// SHA-256 of the bytes, when known (sent as `Repr-Digest`, RFC 9530).
    pub sha256: Option<Digest>,
    /// The bytes.
    pub reader: Pin<Box<dyn AsyncRead + Send>>,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("media_type", &self.media_type)
            .field("length", &self.length)
            .field("sha256", &self.sha256)
            .finish()
    }
}
