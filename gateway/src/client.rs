//! The client of the local API that `konvertctl`'s online commands use:
//! HTTP/1.1 over the daemon's Unix socket (hyper's `client::conn::http1`),
//! one connection per request, typed answers, and the text formatting of
//! those answers for people (fixed-width tables, ids in full).
//!
//! - [`Client`]: one method per route of `docs/api/openapi.yaml`, plus
//!   [`Client::send_file`] (upload attachments, then submit),
//!   [`Client::export_receipt`] and [`Client::save_attachments`].
//! - [`verify_receipt_file`]: checks an exported receipt offline with the
//!   receiver's card; no daemon involved.
//! - [`format_problem`], [`receipts_table`], [`inbox_table`],
//!   [`peers_table`], [`status_text`], [`health_text`], [`receipt_text`]:
//!   what a person reads.
//!
//! Limits: JSON answers are read up to [`MAX_JSON_RESPONSE`], receipts up
//! to [`MAX_RECEIPT_RESPONSE`]; attachments are streamed to disk (never
//! held in memory) and checked against the length and SHA-256 the message
//! states. Uploads are streamed from disk as well.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use konvert_envelope::keys::AuthorityCard;
use konvert_envelope::model::{AuthorityId, Id, Timestamp};
use konvert_envelope::receipt::{Outcome, Receipt, ReceiptError};
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::Digest as _;
use tokio::io::AsyncWriteExt;

use crate::api::types::{
    Acknowledged, Cursor, Direction, Health, HealthReasonCode, InboxItem, InboxMessage, MessageStatus, Page,
    PausedReason, PeerView, ReceiptState, ReceiptView, Submitted, UnverifiedReason, Upload,
    UPLOAD_REF_PREFIX,
};
use crate::api::{Problem, PROBLEM_CONTENT_TYPE};
use crate::files::{self, FileError};

mod ops;
pub use ops::*;

/// Where `konvertd` listens unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/run/konvert/api.sock";
/// Signatory used by `send` when none is named (the one `konvertctl init` makes).
pub const DEFAULT_SIGNATORY: &str = "head";
/// Largest JSON answer read (lists of 1000 items, a decrypted message).
pub const MAX_JSON_RESPONSE: usize = 64 << 20;
/// Largest exported receipt read (a receipt is at most 4 KiB).
pub const MAX_RECEIPT_RESPONSE: usize = 64 << 10;
/// Largest problem document read.
const MAX_PROBLEM_RESPONSE: usize = 1 << 20;
/// Largest message or submit-request JSON file read by [`Client::send_file`].
pub const MAX_MESSAGE_FILE: u64 = 16 << 20;

/// Why a call of the local API failed; `Display` is one sentence for a person.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket cannot be reached.
    #[error(
        "cannot connect to the konvertd API socket {}: {source}; is konvertd running? \
         (name another socket with --socket, KONVERT_SOCKET or --config)",
        path.display()
    )]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The HTTP exchange broke off (the daemon stopped, the connection was cut).
    #[error("the HTTP exchange over {} failed: {source}", path.display())]
    Http {
        /// The socket path.
        path: PathBuf,
        /// hyper's error.
        source: hyper::Error,
    },
    /// The API answered with a problem document.
    #[error("{}", format_problem(.0))]
    Problem(Box<Problem>),
    /// The API answered something this client does not understand.
    #[error("unexpected answer from konvertd to {what}: {reason}")]
    Unexpected {
        /// The request (method and path).
        what: String,
        /// What was wrong (status, content type, JSON error).
        reason: String,
    },
    /// An answer was larger than this client reads.
    #[error("the answer of konvertd to {what} is larger than {limit} bytes")]
    TooLarge {
        /// The request.
        what: String,
        /// The limit.
        limit: usize,
    },
    /// A local file could not be read or written.
    #[error(transparent)]
    File(#[from] FileError),
    /// The message file given to `send` is not usable.
    #[error("{}: {reason}", path.display())]
    Input {
        /// The file.
        path: PathBuf,
        /// What is wrong (no message content).
        reason: String,
    },
    /// A downloaded attachment does not match what the message states.
    #[error("attachment {index} of message {id}: {reason}")]
    Attachment {
        /// The message.
        id: Id,
        /// Index in the message's attachment order.
        index: u32,
        /// What is wrong.
        reason: String,
    },
    /// An exported receipt does not verify with the card.
    #[error("{}: the receipt does not verify with the card of {authority}: {source}", path.display())]
    Receipt {
        /// The receipt file.
        path: PathBuf,
        /// The authority of the card.
        authority: AuthorityId,
        /// Why.
        source: ReceiptError,
    },
    /// The receipt verifies but was signed for another receiver than the card's authority.
    #[error("{}: the receipt names receiver {receiver}, but the card is of {authority}", path.display())]
    ReceiverMismatch {
        /// The receipt file.
        path: PathBuf,
        /// The receiver named in the receipt.
        receiver: AuthorityId,
        /// The authority of the card.
        authority: AuthorityId,
    },
    /// A card could not be loaded.
    #[error(transparent)]
    Card(#[from] crate::offline::Error),
}

impl ClientError {
    /// The problem document, if the API answered with one.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Self::Problem(p) => Some(p),
            _ => None,
        }
    }
}

/// One line for a problem: `<title>: <detail> [field: message; …]`.
pub fn format_problem(p: &Problem) -> String {
    let mut s = format!("{}: {}", p.title, p.detail);
    if !p.errors.is_empty() {
        let list: Vec<String> = p
            .errors
            .iter()
            .map(|e| {
                if e.field.is_empty() {
                    e.message.clone()
                } else {
                    format!("{}: {}", e.field, e.message)
                }
            })
            .collect();
        let _ = write!(s, " [{}]", list.join("; "));
    }
    // One line, whatever the daemon put in.
    s.replace(['\n', '\r'], " ")
}

type ReqBody = UnsyncBoxBody<Bytes, io::Error>;

/// `GET /v1/receipts` filters; every field optional.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReceiptQuery {
    /// Only receipts exchanged with this authority.
    pub peer: Option<AuthorityId>,
    /// Only receipts of outbound (received from peers) or inbound (issued
    /// by this gateway) messages.
    pub direction: Option<Direction>,
    /// Only accepted or only rejected ones.
    pub state: Option<ReceiptState>,
    /// Only receipts at or after this time.
    pub since: Option<Timestamp>,
    /// Only receipts before this time.
    pub until: Option<Timestamp>,
    /// At most this many (the daemon's default is 100).
    pub limit: Option<u32>,
    /// The `next` of the previous page.
    pub after: Option<Cursor>,
}

impl ReceiptQuery {
    fn to_query(&self) -> String {
        let mut q = Query::default();
        q.opt("peer", self.peer.as_ref().map(|p| p.as_str().to_owned()));
        q.opt("direction", self.direction.map(|d| direction_text(d).to_owned()));
        q.opt(
            "state",
            self.state.map(|s| match s {
                ReceiptState::Accepted => "accepted".to_owned(),
                ReceiptState::Rejected => "rejected".to_owned(),
            }),
        );
        q.opt("since", self.since.map(|t| t.to_string()));
        q.opt("until", self.until.map(|t| t.to_string()));
        q.opt("limit", self.limit.map(|n| n.to_string()));
        q.opt("after", self.after.as_ref().map(|c| c.as_str().to_owned()));
        q.finish()
    }
}

/// `GET /v1/inbox` parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InboxQuery {
    /// Wait up to this many seconds (1–60) when nothing is there.
    pub wait: Option<u32>,
    /// At most this many.
    pub limit: Option<u32>,
    /// Only items after this cursor.
    pub after: Option<Cursor>,
}

impl InboxQuery {
    fn to_query(&self) -> String {
        let mut q = Query::default();
        q.opt("wait", self.wait.map(|n| n.to_string()));
        q.opt("limit", self.limit.map(|n| n.to_string()));
        q.opt("after", self.after.as_ref().map(|c| c.as_str().to_owned()));
        q.finish()
    }
}

#[derive(Default)]
struct Query(Vec<String>);

impl Query {
    fn opt(&mut self, name: &str, value: Option<String>) {
        if let Some(v) = value {
            self.0.push(format!("{name}={}", percent_encode(&v)));
        }
    }
    fn finish(self) -> String {
        if self.0.is_empty() {
            String::new()
        } else {
            format!("?{}", self.0.join("&"))
        }
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters (so `+` in a time offset survives).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A client of one gateway's local API.
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client of the API listening on `socket`. Nothing is connected until a call.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends one request on a new connection and returns the answer's head and streaming body.
    async fn request(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: ReqBody,
    ) -> Result<Response<Incoming>, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Connect {
                path: self.socket.clone(),
                source,
            })?;
        let http_err = |source| ClientError::Http {
            path: self.socket.clone(),
            source,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http_err)?;
        // The connection task ends when the answer has been read (or the daemon closes it).
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(header::HOST, "localhost");
        if let Some(ct) = content_type {
            let v = HeaderValue::from_str(ct).map_err(|_| ClientError::Unexpected {
                what: format!("{method} {path}"),
                reason: format!("the media type {ct:?} cannot be sent as a header"),
            })?;
            req = req.header(header::CONTENT_TYPE, v);
        }
        let req = req.body(body).map_err(|e| ClientError::Unexpected {
            what: format!("{method} {path}"),
            reason: e.to_string(),
        })?;
        sender.send_request(req).await.map_err(http_err)
    }

    /// Reads an answer body up to `limit` bytes.
    async fn read_body(
        &self,
        what: &str,
        resp: Response<Incoming>,
        limit: usize,
    ) -> Result<Bytes, ClientError> {
        match Limited::new(resp.into_body(), limit).collect().await {
            Ok(c) => Ok(c.to_bytes()),
            Err(e) => match e.downcast::<hyper::Error>() {
                Ok(source) => Err(ClientError::Http {
                    path: self.socket.clone(),
                    source: *source,
                }),
                Err(_) => Err(ClientError::TooLarge {
                    what: what.to_owned(),
                    limit,
                }),
            },
        }
    }

    /// Turns a non-success answer into [`ClientError::Problem`] (or `Unexpected`).
    async fn check(&self, what: &str, resp: Response<Incoming>) -> Result<Response<Incoming>, ClientError> {
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(self.failure(what, resp).await)
    }

    async fn failure(&self, what: &str, resp: Response<Incoming>) -> ClientError {
        let status = resp.status();
        let is_problem = content_type(&resp).is_some_and(|ct| ct == PROBLEM_CONTENT_TYPE);
        let body = match self.read_body(what, resp, MAX_PROBLEM_RESPONSE).await {
            Ok(b) => b,
            Err(e) => return e,
        };
        if is_problem {
            if let Ok(p) = serde_json::from_slice::<Problem>(&body) {
                return ClientError::Problem(Box::new(p));
            }
        }
        ClientError::Unexpected {
            what: what.to_owned(),
            reason: format!("HTTP {status}"),
        }
    }

    /// A JSON request (or none) whose answer is JSON of type `T`.
    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, ClientError> {
        let what = format!("{method} {}", path.split('?').next().unwrap_or(path));
        let (ct, b) = match body {
            Some(v) => {
                let bytes = serde_json::to_vec(v).map_err(|e| ClientError::Unexpected {
                    what: what.clone(),
                    reason: e.to_string(),
                })?;
                (Some("application/json"), full(bytes))
            }
            None => (None, empty()),
        };
        let resp = self.request(method, path, ct, b).await?;
        let resp = self.check(&what, resp).await?;
        self.parse_json(&what, resp).await
    }

    async fn parse_json<T: DeserializeOwned>(
        &self,
        what: &str,
        resp: Response<Incoming>,
    ) -> Result<T, ClientError> {
        let bytes = self.read_body(what, resp, MAX_JSON_RESPONSE).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Unexpected {
            what: what.to_owned(),
            reason: format!(
                "not the JSON expected: {}",
                konvert_envelope::model::redact_serde_message(&e.to_string())
            ),
        })
    }

    /// `GET /v1/health`. A 503 answer with a health document is returned as
    /// it is (its `status` is `unavailable`), not as an error.
    pub async fn health(&self) -> Result<Health, ClientError> {
        let what = "GET /v1/health";
        let resp = self.request(Method::GET, "/v1/health", None, empty()).await?;
        let json = content_type(&resp).is_some_and(|ct| ct == "application/json");
        if resp.status().is_success() || (resp.status() == StatusCode::SERVICE_UNAVAILABLE && json) {
            self.parse_json(what, resp).await
        } else {
            Err(self.failure(what, resp).await)
        }
    }

    /// `GET /v1/peers`.
    pub async fn peers(&self) -> Result<Vec<PeerView>, ClientError> {
        let page: Page<PeerView> = self.json(Method::GET, "/v1/peers", None).await?;
        Ok(page.items)
    }

    /// `POST /v1/uploads`: streams the file at `path` with its media type.
    pub async fn upload(&self, path: &Path, media_type: &str) -> Result<Upload, ClientError> {
        let what = "POST /v1/uploads";
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|source| FileError::Io {
                action: "cannot open",
                path: path.to_path_buf(),
                source,
            })?;
        let length = file
            .metadata()
            .await
            .map_err(|source| FileError::Io {
                action: "cannot stat",
                path: path.to_path_buf(),
                source,
            })?
            .len();
        let body = crate::reader_body::ReaderBody::new(Box::pin(file), Some(length));
        let resp = self
            .request(Method::POST, "/v1/uploads", Some(media_type), body.boxed_unsync())
            .await?;
        let resp = self.check(what, resp).await?;
        self.parse_json(what, resp).await
    }

    /// `POST /v1/messages` with a submit request (`{"message": …, "signatory": …}`)
    /// as JSON: the daemon checks it and names any field at fault.
    pub async fn submit(&self, request: &Value) -> Result<Submitted, ClientError> {
        self.json(Method::POST, "/v1/messages", Some(request)).await
    }

    /// Sends a message file: a message JSON (the `docs/examples` form) or a
    /// submit request. Attachments whose `file` is a path (relative to the
    /// file's directory) are uploaded first and replaced by `upload:<id>`;
    /// `signatory` overrides the request's, else [`DEFAULT_SIGNATORY`].
    pub async fn send_file(&self, path: &Path, signatory: Option<&str>) -> Result<Submitted, ClientError> {
        let bytes = files::read_limited(path, MAX_MESSAGE_FILE)?;
        let input = |reason: String| ClientError::Input {
            path: path.to_path_buf(),
            reason,
        };
        let doc: Value = serde_json::from_slice(&bytes).map_err(|e| {
            input(format!(
                "not JSON: {}",
                konvert_envelope::model::redact_serde_message(&e.to_string())
            ))
        })?;
        let Value::Object(mut obj) = doc else {
            return Err(input(
                "expected a JSON object (a message or a submit request)".into(),
            ));
        };
        let (mut message, file_signatory) = if obj.contains_key("message") {
            let m = obj.remove("message").unwrap_or(Value::Null);
            let s = obj.remove("signatory");
            if let Some(k) = obj.keys().next() {
                return Err(input(format!("unknown field {k:?} in a submit request")));
            }
            let s = match s {
                Some(Value::String(s)) => Some(s),
                None => None,
                Some(_) => return Err(input("\"signatory\" must be a string".into())),
            };
            (m, s)
        } else {
            (Value::Object(obj), None)
        };
        let base = files::parent_dir(path);
        let mut attachments = Vec::new();
        collect_attachments(&mut message, &mut attachments);
        for att in attachments {
            let Some(Value::String(file)) = att.get("file") else {
                continue;
            };
            if file.starts_with(UPLOAD_REF_PREFIX) {
                continue;
            }
            let Some(Value::String(media_type)) = att.get("media_type") else {
                continue;
            };
            let upload = self.upload(&base.join(file), media_type).await?;
            att.insert("file".into(), Value::String(upload.file_ref()));
            // The daemon fills these in from the upload.
            att.remove("length");
            att.remove("sha256");
        }
        let signatory = signatory
            .map(str::to_owned)
            .or(file_signatory)
            .unwrap_or_else(|| DEFAULT_SIGNATORY.to_owned());
        let request = serde_json::json!({ "message": message, "signatory": signatory });
        self.submit(&request).await
    }

    /// `GET /v1/messages/{id}`.
    pub async fn status(&self, id: Id) -> Result<MessageStatus, ClientError> {
        self.json(Method::GET, &format!("/v1/messages/{id}"), None).await
    }

    /// `GET /v1/messages/{id}?wait=N`: with `wait`, an outgoing message
    /// without an outcome yet is answered when its receipt arrives (or after
    /// N seconds, as it is then).
    pub async fn status_wait(&self, id: Id, wait: Option<u32>) -> Result<MessageStatus, ClientError> {
        match wait {
            Some(n) if n > 0 => {
                self.json(Method::GET, &format!("/v1/messages/{id}?wait={n}"), None)
                    .await
            }
            _ => self.status(id).await,
        }
    }

    /// `GET /v1/cases`: `overdue=true`, or `due_within` (a duration such as `7d`), or every case.
    pub async fn cases(
        &self,
        overdue: bool,
        due_within: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Page<crate::api::cases::CaseView>, ClientError> {
        let mut q: Vec<String> = Vec::new();
        if overdue {
            q.push("overdue=true".into());
        }
        if let Some(d) = due_within {
            q.push(format!("due_within={}", percent_encode(d)));
        }
        if let Some(n) = limit {
            q.push(format!("limit={n}"));
        }
        let query = if q.is_empty() {
            String::new()
        } else {
            format!("?{}", q.join("&"))
        };
        self.json(Method::GET, &format!("/v1/cases{query}"), None).await
    }

    /// `GET /v1/cases/{id}`.
    pub async fn case(&self, id: Id) -> Result<crate::api::cases::CaseView, ClientError> {
        self.json(Method::GET, &format!("/v1/cases/{id}"), None).await
    }

    /// `POST /v1/cases/{id}/close`.
    pub async fn close_case(&self, id: Id) -> Result<crate::api::cases::CaseView, ClientError> {
        self.json(Method::POST, &format!("/v1/cases/{id}/close"), None)
            .await
    }

    /// `GET /v1/directory`.
    pub async fn directory(&self) -> Result<crate::api::directory::DirectoryView, ClientError> {
        self.json(Method::GET, "/v1/directory", None).await
    }

    /// `POST /v1/directory/changes`.
    pub async fn directory_change(
        &self,
        request: &crate::api::directory::ChangeRequest,
    ) -> Result<crate::api::directory::ChangeQueued, ClientError> {
        let body = serde_json::to_value(request).map_err(|e| ClientError::Unexpected {
            what: "POST /v1/directory/changes".into(),
            reason: e.to_string(),
        })?;
        self.json(Method::POST, "/v1/directory/changes", Some(&body))
            .await
    }

    /// `GET /v1/receipts`: one page.
    pub async fn receipts(&self, q: &ReceiptQuery) -> Result<Page<ReceiptView>, ClientError> {
        self.json(Method::GET, &format!("/v1/receipts{}", q.to_query()), None)
            .await
    }

    /// `GET /v1/receipts`, following `next` until the last page; at most
    /// `max_pages` pages (a guard against a daemon that never ends the list).
    pub async fn receipts_all(
        &self,
        q: &ReceiptQuery,
        max_pages: usize,
    ) -> Result<Page<ReceiptView>, ClientError> {
        let mut q = q.clone();
        let mut items = Vec::new();
        for _ in 0..max_pages {
            let page = self.receipts(&q).await?;
            items.extend(page.items);
            match page.next {
                Some(n) => {
                    q.after = Some(Cursor::new(n).map_err(|e| ClientError::Unexpected {
                        what: "GET /v1/receipts".into(),
                        reason: e.to_string(),
                    })?)
                }
                None => return Ok(Page { items, next: None }),
            }
        }
        Ok(Page {
            items,
            next: q.after.map(|c| c.as_str().to_owned()),
        })
    }

    /// `GET /v1/receipts/{id}`.
    pub async fn receipt(&self, envelope_id: Id) -> Result<ReceiptView, ClientError> {
        self.json(Method::GET, &format!("/v1/receipts/{envelope_id}"), None)
            .await
    }

    /// `GET /v1/receipts/{id}/raw`: the signed COSE_Sign1 bytes.
    pub async fn receipt_raw(&self, envelope_id: Id) -> Result<Bytes, ClientError> {
        let path = format!("/v1/receipts/{envelope_id}/raw");
        let what = format!("GET {path}");
        let resp = self.request(Method::GET, &path, None, empty()).await?;
        let resp = self.check(&what, resp).await?;
        self.read_body(&what, resp, MAX_RECEIPT_RESPONSE).await
    }

    /// Writes the signed receipt of `envelope_id` to `out` (atomically, mode 0644).
    pub async fn export_receipt(
        &self,
        envelope_id: Id,
        out: &Path,
        overwrite: bool,
    ) -> Result<u64, ClientError> {
        if !overwrite && out.exists() {
            return Err(FileError::Exists(out.to_path_buf()).into());
        }
        let bytes = self.receipt_raw(envelope_id).await?;
        files::write_atomic(out, &bytes, 0o644, overwrite)?;
        Ok(bytes.len() as u64)
    }

    /// `GET /v1/inbox`.
    pub async fn inbox(&self, q: &InboxQuery) -> Result<Page<InboxItem>, ClientError> {
        self.json(Method::GET, &format!("/v1/inbox{}", q.to_query()), None)
            .await
    }

    /// `GET /v1/inbox/{id}`: the message, decrypted and verified.
    pub async fn inbox_get(&self, id: Id) -> Result<InboxMessage, ClientError> {
        self.json(Method::GET, &format!("/v1/inbox/{id}"), None).await
    }

    /// `POST /v1/inbox/{id}/ack`.
    pub async fn inbox_ack(&self, id: Id) -> Result<Acknowledged, ClientError> {
        let path = format!("/v1/inbox/{id}/ack");
        let what = format!("POST {path}");
        let resp = self.request(Method::POST, &path, None, empty()).await?;
        let resp = self.check(&what, resp).await?;
        self.parse_json(&what, resp).await
    }

    /// `GET /v1/inbox/{id}/attachments/{n}`, streamed into a new file `target`
    /// (mode 0600, written to a temporary file and renamed once complete).
    /// The bytes must have the length and SHA-256 that `view` states.
    pub async fn download_attachment(
        &self,
        id: Id,
        view: &crate::api::types::AttachmentView,
        target: &Path,
    ) -> Result<(), ClientError> {
        let n = view.index;
        let path = format!("/v1/inbox/{id}/attachments/{n}");
        let what = format!("GET {path}");
        let resp = self.request(Method::GET, &path, None, empty()).await?;
        let resp = self.check(&what, resp).await?;
        let dir = files::parent_dir(target);
        let io_err = |action: &'static str, p: &Path| {
            let p = p.to_path_buf();
            move |source| {
                ClientError::File(FileError::Io {
                    action,
                    path: p,
                    source,
                })
            }
        };
        let tmp = tempfile::NamedTempFile::new_in(&dir)
            .map_err(io_err("cannot create a temporary file in", &dir))?;
        let std_file = tmp.reopen().map_err(io_err("cannot open", tmp.path()))?;
        let mut file = tokio::fs::File::from_std(std_file);
        let mut body = resp.into_body();
        let mut hasher = sha2::Sha256::new();
        let mut len = 0u64;
        let bad = |reason: String| ClientError::Attachment { id, index: n, reason };
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|source| ClientError::Http {
                path: self.socket.clone(),
                source,
            })?;
            let Ok(data) = frame.into_data() else { continue };
            len += data.len() as u64;
            if len > view.length {
                return Err(bad(format!(
                    "more than the {} bytes the message states",
                    view.length
                )));
            }
            hasher.update(&data);
            file.write_all(&data)
                .await
                .map_err(io_err("cannot write", tmp.path()))?;
        }
        if len != view.length {
            return Err(bad(format!(
                "{len} bytes, but the message states {}",
                view.length
            )));
        }
        if hasher.finalize().as_slice() != view.sha256.0.as_slice() {
            return Err(bad("the SHA-256 of the bytes differs from the message's".into()));
        }
        file.sync_all().await.map_err(io_err("cannot sync", tmp.path()))?;
        drop(file);
        tmp.persist_noclobber(target).map_err(|e| {
            if e.error.kind() == io::ErrorKind::AlreadyExists {
                ClientError::File(FileError::Exists(target.to_path_buf()))
            } else {
                ClientError::File(FileError::Io {
                    action: "cannot write",
                    path: target.to_path_buf(),
                    source: e.error,
                })
            }
        })?;
        Ok(())
    }

    /// Downloads every attachment of a received message into `dir` (created
    /// 0700 if missing) as `attachment-<n><ext>`; returns the files written.
    pub async fn save_attachments(
        &self,
        message: &InboxMessage,
        dir: &Path,
    ) -> Result<Vec<PathBuf>, ClientError> {
        files::create_private_dir(dir)?;
        let mut written = Vec::new();
        for a in &message.attachments {
            let target = dir.join(format!("attachment-{}{}", a.index, extension_for(&a.media_type)));
            self.download_attachment(message.item.id, a, &target).await?;
            written.push(target);
        }
        files::sync_dir(dir)?;
        Ok(written)
    }
}

/// Every attachment object of a message JSON (an object with a string
/// `media_type` and a `file`). The order does not matter: each is uploaded
/// and rewritten in place.
fn collect_attachments<'a>(v: &'a mut Value, out: &mut Vec<&'a mut serde_json::Map<String, Value>>) {
    match v {
        Value::Object(map) => {
            let is_attachment = matches!(map.get("media_type"), Some(Value::String(_)))
                && matches!(map.get("file"), Some(Value::String(_)));
            if is_attachment {
                out.push(map);
            } else {
                for child in map.values_mut() {
                    collect_attachments(child, out);
                }
            }
        }
        Value::Array(items) => {
            for child in items {
                collect_attachments(child, out);
            }
        }
        _ => {}
    }
}

/// File name extension for a media type (as `envelope open` names attachments).
pub fn extension_for(media_type: &str) -> &'static str {
    match media_type {
        "image/jpeg" => ".jpg",
        "image/png" => ".png",
        "application/pdf" => ".pdf",
        "text/csv" => ".csv",
        "application/json" => ".json",
        _ => ".bin",
    }
}

/// Verifies an exported receipt file offline with the receiver's authority
/// card (`receipts verify`): the signature must be by the card's node key
/// and the receipt must name the card's authority as receiver.
pub fn verify_receipt_file(receipt: &Path, card: &Path) -> Result<(Receipt, AuthorityCard), ClientError> {
    let card = crate::offline::load_card(card)?;
    let bytes = files::read_limited(receipt, MAX_RECEIPT_RESPONSE as u64)?;
    let r = Receipt::verify(&bytes, &card.node_key).map_err(|source| ClientError::Receipt {
        path: receipt.to_path_buf(),
        authority: card.authority.clone(),
        source,
    })?;
    if r.receiver != card.authority {
        return Err(ClientError::ReceiverMismatch {
            path: receipt.to_path_buf(),
            receiver: r.receiver,
            authority: card.authority,
        });
    }
    Ok((r, card))
}

fn content_type(resp: &Response<Incoming>) -> Option<String> {
    let v = resp.headers().get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
}

fn full(bytes: Vec<u8>) -> ReqBody {
    Full::new(Bytes::from(bytes))
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn empty() -> ReqBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

// ---------------------------------------------------------------------------
// Text for people

/// A table with fixed-width columns: each column as wide as its widest cell,
/// two spaces between columns, no truncation (ids are printed in full).
#[derive(Debug)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (missing cells are empty).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, one line per row, each ending in a newline.
    pub fn render(&self) -> String {
        let n = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(n) {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: &[String]| {
            let mut l = String::new();
            for (i, w) in widths.iter().enumerate() {
                let c = cells.get(i).map_or("", String::as_str);
                if i + 1 == n {
                    l.push_str(c);
                } else {
                    let _ = write!(l, "{c:<w$}  ");
                }
            }
            out.push_str(l.trim_end());
            out.push('\n');
        };
        line(&mut out, &self.header);
        for r in &self.rows {
            line(&mut out, r);
        }
        out
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// `accepted` or `rejected:<code>`.
pub fn outcome_text(o: &Outcome) -> String {
    match o {
        Outcome::Accepted => "accepted".to_owned(),
        Outcome::Rejected { code } => format!("rejected:{code}"),
    }
}

/// The receipts table (`konvertctl receipts`).
pub fn receipts_table(items: &[ReceiptView]) -> String {
    let mut t = Table::new(&["ENVELOPE", "PEER", "DIRECTION", "TIME", "OUTCOME", "VERIFIED"]);
    for r in items {
        t.row(vec![
            r.envelope_id.to_string(),
            r.peer.to_string(),
            direction_text(r.direction).to_owned(),
            r.time.to_string(),
            outcome_text(&r.outcome),
            verified_text(r),
        ]);
    }
    t.render()
}

fn direction_text(d: Direction) -> &'static str {
    match d {
        Direction::Outbound => "outbound",
        Direction::Inbound => "inbound",
    }
}

fn unverified_text(r: Option<UnverifiedReason>) -> &'static str {
    match r {
        None => "no",
        Some(UnverifiedReason::PeerNotConfigured) => "no (peer not configured)",
        Some(UnverifiedReason::SignatureInvalid) => "no (signature invalid)",
        Some(UnverifiedReason::Destroyed) => "no (destroyed)",
        Some(UnverifiedReason::Unreadable) => "no (unreadable)",
    }
}

fn verified_text(r: &ReceiptView) -> String {
    if r.verified {
        "yes".to_owned()
    } else {
        unverified_text(r.unverified_reason).to_owned()
    }
}

/// The stable name of a health reason code.
pub fn health_reason_text(c: HealthReasonCode) -> &'static str {
    match c {
        HealthReasonCode::StoreUnavailable => "store_unavailable",
        HealthReasonCode::PeerUnreachable => "peer_unreachable",
        HealthReasonCode::FailedMessages => "failed_messages",
        HealthReasonCode::UndeliveredTooOld => "undelivered_too_old",
        HealthReasonCode::MessagesPaused => "messages_paused",
        HealthReasonCode::DiskSpaceLow => "disk_space_low",
    }
}

/// The inbox table (`konvertctl inbox`).
pub fn inbox_table(items: &[InboxItem]) -> String {
    let mut t = Table::new(&["ID", "FROM", "KIND", "RECEIVED", "ATTACHMENTS", "IN REPLY TO"]);
    for i in items {
        t.row(vec![
            i.id.to_string(),
            i.from.to_string(),
            i.kind.clone(),
            i.received.to_string(),
            i.attachments.to_string(),
            opt(i.in_reply_to),
        ]);
    }
    t.render()
}

/// The peers table (`konvertctl peers`).
pub fn peers_table(items: &[PeerView]) -> String {
    let mut t = Table::new(&[
        "AUTHORITY",
        "CONNECTED",
        "QUEUE",
        "OLDEST UNDELIVERED",
        "LAST DELIVERY",
        "ADDRESSES",
    ]);
    for p in items {
        t.row(vec![
            p.authority.to_string(),
            if p.connected { "yes" } else { "no" }.to_owned(),
            p.queue_depth.to_string(),
            opt(p.oldest_undelivered),
            opt(p.last_delivery),
            p.addresses.join(","),
        ]);
    }
    t.render()
}

/// `key: value` lines, keys padded to one width.
fn fields(rows: &[(&str, String)]) -> String {
    let w = rows.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        let _ = writeln!(out, "{:<w$} {v}", format!("{k}:"));
    }
    out
}

/// A message's status (`konvertctl status`).
pub fn status_text(s: &MessageStatus) -> String {
    let mut rows = vec![
        ("id", s.id.to_string()),
        ("direction", direction_text(s.direction).to_owned()),
        ("peer", s.peer.to_string()),
        ("agreement", s.agreement.to_string()),
        ("kind", s.kind.clone()),
        ("envelope", opt(s.envelope_id)),
        ("state", s.state.as_str().to_owned()),
        ("created", opt(s.times.created)),
        ("sent", opt(s.times.sent)),
        ("receipt", opt(s.times.receipt)),
        ("delivered", opt(s.times.delivered)),
        ("acknowledged", opt(s.times.acknowledged)),
        ("expires", opt(s.times.expires)),
    ];
    if let Some(PausedReason::PeerNotConfigured) = s.paused {
        rows.push(("paused", "the peer is not configured".to_owned()));
    }
    if let Some(a) = s.attempts {
        rows.push(("attempts", a.to_string()));
    }
    if let Some(e) = &s.error {
        rows.push(("error", e.clone()));
    }
    if let Some(r) = &s.receipt {
        rows.push(("outcome", outcome_text(&r.outcome)));
        rows.push(("receipt verified", verified_text(r)));
    }
    fields(&rows)
}

/// One receipt (`konvertctl receipts show`).
pub fn receipt_text(r: &ReceiptView) -> String {
    fields(&[
        ("envelope", r.envelope_id.to_string()),
        ("message", opt(r.message_id)),
        ("direction", direction_text(r.direction).to_owned()),
        ("sender", r.sender.to_string()),
        ("receiver", r.receiver.to_string()),
        ("time", r.time.to_string()),
        ("outcome", outcome_text(&r.outcome)),
        ("digest", opt(r.envelope_digest)),
        ("verified", verified_text(r)),
    ])
}

/// A receipt checked offline (`konvertctl receipts verify`).
pub fn verified_receipt_text(r: &Receipt) -> String {
    fields(&[
        ("envelope", r.envelope_id.to_string()),
        ("digest", r.envelope_digest.to_string()),
        ("sender", r.sender.to_string()),
        ("receiver", r.receiver.to_string()),
        ("time", r.time.to_string()),
        ("outcome", outcome_text(&r.outcome)),
        ("signature", format!("valid (node key of {})", r.receiver)),
    ])
}

/// The daemon's health (`konvertctl health`).
pub fn health_text(h: &Health) -> String {
    let s = |x: crate::api::types::HealthStatus| {
        match x {
            crate::api::types::HealthStatus::Ok => "ok",
            crate::api::types::HealthStatus::Degraded => "degraded",
            crate::api::types::HealthStatus::Unavailable => "unavailable",
        }
        .to_owned()
    };
    let mut rows = vec![
        ("status", s(h.status)),
        ("version", h.version.clone()),
        ("store", s(h.store)),
        (
            "peers",
            format!("{}/{} connected", h.peers_connected, h.peers_total),
        ),
        ("queue", h.queue_depth.to_string()),
        ("inbox", h.inbox_depth.to_string()),
        ("connections", h.connections.to_string()),
        ("uptime", format!("{} s", h.uptime_seconds)),
    ];
    for r in &h.reasons {
        rows.push(("reason", format!("{}: {}", health_reason_text(r.code), r.detail)));
    }
    fields(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{FieldError, ProblemType};

    #[test]
    fn problem_is_one_line_with_fields() {
        let mut p = Problem::new(ProblemType::Validation, "message refused, 1 error(s)");
        p.errors.push(FieldError::new(
            "/message/body/content/persons/0/fingerprint_card",
            "field_not_allowed",
            "not allowed",
        ));
        assert_eq!(
            format_problem(&p),
            "The message is not valid under its agreement: message refused, 1 error(s) \
             [/message/body/content/persons/0/fingerprint_card: not allowed]"
        );
    }

    #[test]
    fn tables_have_fixed_columns() {
        let mut t = Table::new(&["A", "BB"]);
        t.row(vec!["long value".into(), "x".into()]);
        assert_eq!(t.render(), "A           BB\nlong value  x\n");
    }

    #[test]
    fn queries_are_encoded() {
        let q = ReceiptQuery {
            since: Some("2026-11-01T00:00:00Z".parse().unwrap_or(Timestamp::from_unix(0))),
            limit: Some(5),
            ..ReceiptQuery::default()
        };
        assert_eq!(q.to_query(), "?since=2026-11-01T00%3A00%3A00Z&limit=5");
        assert_eq!(ReceiptQuery::default().to_query(), "");
        let q = ReceiptQuery {
            direction: Some(Direction::Inbound),
            after: Cursor::new("0a1bo").ok(),
            ..ReceiptQuery::default()
        };
        assert_eq!(q.to_query(), "?direction=inbound&after=0a1bo");
    }

    #[test]
    fn attachments_with_files_are_found() {
        let mut v = serde_json::json!({"body": {"content": {
            "persons": [{"photographs": [{"media_type": "image/jpeg", "file": "a.jpg"}]}],
            "attachments": [{"media_type": "application/pdf", "file": "b.pdf"}, {"media_type": "x/y"}]
        }}});
        let mut out = Vec::new();
        collect_attachments(&mut v, &mut out);
        let mut files: Vec<&str> = out.iter().filter_map(|m| m.get("file")?.as_str()).collect();
        files.sort_unstable();
        assert_eq!(files, ["a.jpg", "b.pdf"]);
    }
}
