#![allow(clippy::unwrap_used)]
//! The local API over a real Unix socket, against an in-memory test double of
//! the daemon: every route, status codes, problem documents, access control,
//! limits, long polling, acknowledgement and graceful shutdown.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame};
use hyper::header::{self, HeaderMap};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use konvert_envelope::model::{AuthorityId, Digest, Id, Message, SignatoryId, Timestamp};
use konvert_envelope::profile::Profile;
use konvert_envelope::receipt::Outcome;
use konvert_gateway::api::*;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tokio::sync::{oneshot, Notify};

// ---------------------------------------------------------------------------
// The test double
// ---------------------------------------------------------------------------

const NOW: &str = "2026-11-22T10:00:00Z";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn example(name: &str) -> Message {
    let text = std::fs::read_to_string(root().join("docs/examples").join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn id(n: u8) -> Id {
    let mut b = [0u8; 16];
    b[0] = 0x01;
    b[6] = 0x70;
    b[8] = 0x80;
    b[15] = n;
    Id::from_bytes(b)
}

fn auth(s: &str) -> AuthorityId {
    AuthorityId::new(s).unwrap()
}

struct InboxEntry {
    view: InboxMessage,
    parts: Vec<Vec<u8>>,
    seq: u64,
}

#[derive(Default)]
struct State {
    submitted: HashMap<Id, (Message, Submitted)>,
    uploads: HashMap<Id, Upload>,
    inbox: Vec<InboxEntry>,
    receipts: Vec<(ReceiptView, Vec<u8>)>,
    next_seq: u64,
    acks: u32,
    /// The timeouts `status_wait` was called with.
    status_waits: Vec<Duration>,
}

/// The daemon, in memory.
struct Double {
    profile: Profile,
    state: Mutex<State>,
    /// Notified when an inbox item arrives.
    arrived: Notify,
    /// Notified when a long poll starts waiting.
    waiting: Notify,
    /// When set, `peers` waits for `gate` (graceful shutdown test).
    hold_peers: std::sync::atomic::AtomicBool,
    entered: Notify,
    gate: Notify,
}

impl Double {
    fn new() -> Self {
        let text = std::fs::read_to_string(root().join("deploy/profiles/kz-by-2019.toml")).unwrap();
        let d = Self {
            profile: Profile::from_toml_str(&text, "kz-by-2019.toml").unwrap(),
            state: Mutex::new(State::default()),
            arrived: Notify::new(),
            waiting: Notify::new(),
            hold_peers: false.into(),
            entered: Notify::new(),
            gate: Notify::new(),
        };
        {
            let mut s = d.state.lock().unwrap();
            for n in 1..=3u8 {
                let rejected = n == 3;
                // The second is one this gateway issued for a message it received.
                let inbound = n == 2;
                let view = ReceiptView {
                    envelope_id: id(100 + n),
                    message_id: Some(id(n)),
                    direction: if inbound {
                        Direction::Inbound
                    } else {
                        Direction::Outbound
                    },
                    peer: auth("by.mvd"),
                    receiver: auth(if inbound { "kz.mvd" } else { "by.mvd" }),
                    sender: auth(if inbound { "by.mvd" } else { "kz.mvd" }),
                    time: Timestamp::from_unix(1_790_000_000 + i64::from(n) * 3600),
                    outcome: if rejected {
                        Outcome::Rejected {
                            code: konvert_envelope::receipt::RejectCode::InvalidMessage,
                        }
                    } else {
                        Outcome::Accepted
                    },
                    envelope_digest: Some(Digest::of(&[n])),
                    verified: true,
                    unverified_reason: None,
                };
                s.receipts.push((view, vec![0xd2, 0x84, n]));
            }
        }
        d
    }

    /// A message arrives from by.mvd, with two attachments.
    fn deliver(&self, n: u8) -> Id {
        let mut message = example("response.json");
        message.header.id = id(50 + n);
        let parts = vec![format!("photo {n}").into_bytes(), b"%PDF-1.7 test".to_vec()];
        let attachments = parts
            .iter()
            .enumerate()
            .map(|(i, p)| AttachmentView {
                index: i as u32,
                media_type: if i == 0 { "image/jpeg" } else { "application/pdf" }.into(),
                length: p.len() as u64,
                sha256: Digest::of(p),
            })
            .collect();
        let mut s = self.state.lock().unwrap();
        s.next_seq += 1;
        let seq = s.next_seq;
        let view = InboxMessage {
            item: InboxItem {
                id: message.header.id,
                cursor: Cursor::new(format!("c{seq:08}")).unwrap(),
                envelope_id: id(200 + n),
                from: message.header.from.clone(),
                to: message.header.to.clone(),
                agreement: message.header.agreement.clone(),
                kind: "response".into(),
                in_reply_to: message.header.in_reply_to,
                received: NOW.parse().unwrap(),
                attachments: 2,
                due: None,
                purpose: Some("Проверка сведений".into()),
                expires: Some(Timestamp::from_unix(1_900_000_000)),
            },
            acknowledged: false,
            purpose: Some("Проверка сведений".into()),
            signatory: SignatoryId::new("by.mvd.petrov-i").unwrap(),
            message,
            attachments,
        };
        let msg_id = view.item.id;
        s.inbox.push(InboxEntry { view, parts, seq });
        drop(s);
        self.arrived.notify_waiters();
        msg_id
    }

    fn unacked(&self, after: Option<&Cursor>, limit: u32) -> Vec<InboxItem> {
        let s = self.state.lock().unwrap();
        s.inbox
            .iter()
            .filter(|e| !e.view.acknowledged)
            .filter(|e| after.is_none_or(|c| e.view.item.cursor > *c))
            .take(limit as usize)
            .map(|e| e.view.item.clone())
            .collect()
    }
}

fn not_found(what: &str) -> Problem {
    Problem::not_found(what)
}

impl ApiService for Double {
    async fn submit(&self, _caller: Caller, request: SubmitRequest) -> Result<Submitted, Problem> {
        let now: Timestamp = NOW.parse().unwrap();
        self.profile.validate_unsealed(&request.message, now)?;
        let mut s = self.state.lock().unwrap();
        for (i, a) in request.message.attachments().iter().enumerate() {
            if let Some(upload) = a.file.as_deref().and_then(|f| f.strip_prefix(UPLOAD_REF_PREFIX)) {
                let known = upload
                    .parse::<Id>()
                    .ok()
                    .is_some_and(|u| s.uploads.contains_key(&u));
                if !known {
                    return Err(
                        Problem::new(ProblemType::Validation, "unknown upload").with_error(
                            format!("/message/attachments/{i}"),
                            "unknown_upload",
                            "no such upload",
                        ),
                    );
                }
            }
        }
        let mid = request.message.header.id;
        if let Some((m, sub)) = s.submitted.get(&mid) {
            return if *m == request.message {
                Ok(sub.clone())
            } else {
                Err(Problem::conflict("message id already used for another message"))
            };
        }
        let sub = Submitted {
            id: mid,
            envelope_id: Some(id(99)),
            state: MessageState::Queued,
        };
        s.submitted.insert(mid, (request.message, sub.clone()));
        Ok(sub)
    }

    async fn upload(
        &self,
        _caller: Caller,
        media_type: String,
        mut body: UploadBody,
    ) -> Result<Upload, Problem> {
        let mut data = Vec::new();
        body.read_to_end(&mut data)
            .await
            .map_err(|_| Problem::new(ProblemType::BadRequest, "upload broken off"))?;
        let mut s = self.state.lock().unwrap();
        let up = Upload {
            id: id(180 + s.uploads.len() as u8),
            media_type,
            length: data.len() as u64,
            sha256: Digest::of(&data),
            expires: None,
        };
        s.uploads.insert(up.id, up.clone());
        Ok(up)
    }

    async fn status(&self, _caller: Caller, mid: Id) -> Result<MessageStatus, Problem> {
        let s = self.state.lock().unwrap();
        let (m, sub) = s.submitted.get(&mid).ok_or_else(|| not_found("message"))?;
        Ok(MessageStatus {
            id: mid,
            direction: Direction::Outbound,
            peer: m.header.to.clone(),
            agreement: m.header.agreement.clone(),
            kind: "request".into(),
            envelope_id: sub.envelope_id,
            state: sub.state,
            times: MessageTimes {
                created: Some(NOW.parse().unwrap()),
                ..MessageTimes::default()
            },
            attempts: Some(0),
            error: None,
            paused: None,
            receipt: s.receipts.first().map(|r| r.0.clone()),
        })
    }

    async fn status_wait(
        &self,
        caller: Caller,
        mid: Id,
        timeout: Duration,
    ) -> Result<MessageStatus, Problem> {
        self.state.lock().unwrap().status_waits.push(timeout);
        self.status(caller, mid).await
    }

    async fn receipts(&self, _caller: Caller, f: ReceiptFilter) -> Result<Page<ReceiptView>, Problem> {
        let s = self.state.lock().unwrap();
        // The double's cursor is the last envelope id.
        let after = f
            .after
            .as_ref()
            .map(|c| {
                c.as_str().parse::<Id>().map_err(|_| {
                    Problem::bad_param("after", "invalid_format", "not a cursor of this gateway")
                })
            })
            .transpose()?;
        let items: Vec<ReceiptView> = s
            .receipts
            .iter()
            .map(|r| &r.0)
            .filter(|r| f.peer.as_ref().is_none_or(|p| *p == r.peer))
            .filter(|r| f.direction.is_none_or(|d| d == r.direction))
            .filter(|r| match f.state {
                Some(ReceiptState::Accepted) => r.outcome == Outcome::Accepted,
                Some(ReceiptState::Rejected) => r.outcome != Outcome::Accepted,
                None => true,
            })
            .filter(|r| f.since.is_none_or(|t| r.time >= t))
            .filter(|r| f.until.is_none_or(|t| r.time < t))
            .filter(|r| after.is_none_or(|a| r.envelope_id > a))
            .take(f.limit as usize)
            .cloned()
            .collect();
        let next = (items.len() >= f.limit as usize)
            .then(|| items.last().map(|r| r.envelope_id.to_string()))
            .flatten();
        Ok(Page { items, next })
    }

    async fn receipt(&self, _caller: Caller, envelope_id: Id) -> Result<ReceiptView, Problem> {
        let s = self.state.lock().unwrap();
        s.receipts
            .iter()
            .find(|r| r.0.envelope_id == envelope_id)
            .map(|r| r.0.clone())
            .ok_or_else(|| not_found("receipt"))
    }

    async fn receipt_raw(&self, _caller: Caller, envelope_id: Id) -> Result<Bytes, Problem> {
        let s = self.state.lock().unwrap();
        s.receipts
            .iter()
            .find(|r| r.0.envelope_id == envelope_id)
            .map(|r| Bytes::from(r.1.clone()))
            .ok_or_else(|| not_found("receipt"))
    }

    async fn inbox(
        &self,
        _caller: Caller,
        after: Option<Cursor>,
        limit: u32,
    ) -> Result<Vec<InboxItem>, Problem> {
        Ok(self.unacked(after.as_ref(), limit))
    }

    async fn inbox_wait(
        &self,
        _caller: Caller,
        after: Option<Cursor>,
        limit: u32,
        timeout: Duration,
    ) -> Result<Vec<InboxItem>, Problem> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let items = self.unacked(after.as_ref(), limit);
            if !items.is_empty() {
                return Ok(items);
            }
            self.waiting.notify_one();
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
            }
        }
    }

    async fn inbox_get(&self, _caller: Caller, mid: Id) -> Result<InboxMessage, Problem> {
        let s = self.state.lock().unwrap();
        s.inbox
            .iter()
            .find(|e| e.view.item.id == mid)
            .map(|e| e.view.clone())
            .ok_or_else(|| not_found("inbox item"))
    }

    async fn inbox_attachment(&self, _caller: Caller, mid: Id, index: u32) -> Result<Download, Problem> {
        let s = self.state.lock().unwrap();
        let e = s
            .inbox
            .iter()
            .find(|e| e.view.item.id == mid)
            .ok_or_else(|| not_found("inbox item"))?;
        let part = e
            .parts
            .get(index as usize)
            .ok_or_else(|| not_found("attachment"))?
            .clone();
        let a = &e.view.attachments[index as usize];
        Ok(Download {
            media_type: a.media_type.clone(),
            length: Some(a.length),
            sha256: Some(a.sha256),
            reader: Box::pin(std::io::Cursor::new(part)),
        })
    }

    async fn inbox_ack(&self, _caller: Caller, mid: Id) -> Result<(), Problem> {
        let mut s = self.state.lock().unwrap();
        let e = s
            .inbox
            .iter_mut()
            .find(|e| e.view.item.id == mid)
            .ok_or_else(|| not_found("inbox item"))?;
        e.view.acknowledged = true;
        let _ = e.seq;
        s.acks += 1;
        Ok(())
    }

    async fn peers(&self, _caller: Caller) -> Result<Vec<PeerView>, Problem> {
        if self.hold_peers.load(std::sync::atomic::Ordering::SeqCst) {
            let released = self.gate.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            self.entered.notify_one();
            released.await;
        }
        Ok(vec![PeerView {
            authority: auth("by.mvd"),
            addresses: vec!["gw.mvd.example.by:4433".into()],
            connected: true,
            last_delivery: Some(NOW.parse().unwrap()),
            queue_depth: 2,
            oldest_undelivered: Some(NOW.parse().unwrap()),
        }])
    }

    async fn health(&self, _caller: Caller) -> Result<Health, Problem> {
        Ok(Health {
            status: HealthStatus::Ok,
            reasons: Vec::new(),
            connections: 1,
            version: env!("CARGO_PKG_VERSION").into(),
            store: HealthStatus::Ok,
            peers_connected: 1,
            peers_total: 1,
            queue_depth: 2,
            inbox_depth: 0,
            uptime_seconds: 5,
        })
    }

    async fn audit(
        &self,
        _caller: Caller,
        from: u64,
        limit: u32,
    ) -> Result<Page<ops::AuditEntryView>, Problem> {
        // Echoes the parsed parameters: seq = from, count = limit.
        Ok(Page {
            items: vec![ops::AuditEntryView {
                seq: from,
                at: Timestamp::from_unix(0),
                kind: "opened".into(),
                message: None,
                case: None,
                peer: None,
                detail: None,
                count: Some(u64::from(limit)),
                digest: None,
                block: "00".into(),
            }],
            next: None,
        })
    }

    async fn audit_verify(&self, _caller: Caller) -> Result<ops::AuditVerification, Problem> {
        Err(Problem::not_found("audit trail"))
    }

    async fn story(&self, _caller: Caller, _id: Id) -> Result<ops::Story, Problem> {
        Err(Problem::not_found("message"))
    }

    async fn retention(
        &self,
        _caller: Caller,
        _q: ops::RetentionQuery,
    ) -> Result<ops::RetentionReport, Problem> {
        Err(Problem::not_found("retention"))
    }

    async fn purge_case(&self, _caller: Caller, case: Id) -> Result<ops::CasePurged, Problem> {
        Ok(ops::CasePurged { case, destroyed: 0 })
    }

    async fn node_status(&self, _caller: Caller) -> Result<ops::NodeStatus, Problem> {
        Err(Problem::not_found("status"))
    }
}

// ---------------------------------------------------------------------------
// Harness and client
// ---------------------------------------------------------------------------

struct Harness {
    _dir: tempfile::TempDir,
    path: PathBuf,
    double: Arc<Double>,
    shutdown: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

impl Harness {
    async fn start(policy: AccessPolicy, limits: ApiLimits) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let double = Arc::new(Double::new());
        let server = ApiServer::bind(&path, 0o660, policy, double.clone(), limits).unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(server.serve(async {
            let _ = rx.await;
        }));
        Self {
            _dir: dir,
            path,
            double,
            shutdown: Some(tx),
            server,
        }
    }

    async fn default() -> Self {
        // Nobody listed: the test runs as the daemon's own user, which is allowed by default.
        Self::start(AccessPolicy::new(vec![], vec![]), ApiLimits::default()).await
    }

    async fn get(&self, uri: &str) -> Reply {
        send(&self.path, req("GET", uri, None, Full::new(Bytes::new()))).await
    }

    async fn post_json(&self, uri: &str, body: &Value) -> Reply {
        let body = Bytes::from(serde_json::to_vec(body).unwrap());
        send(
            &self.path,
            req("POST", uri, Some("application/json"), Full::new(body)),
        )
        .await
    }

    async fn stop(mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        self.server.await.unwrap();
    }
}

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        assert_eq!(self.headers[header::CONTENT_TYPE], "application/json", "{self:?}");
        serde_json::from_slice(&self.body).unwrap()
    }
    /// Checks the problem document's shape and returns it.
    fn problem(&self, slug: &str, status: u16) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "{:?}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(self.headers[header::CONTENT_TYPE], "application/problem+json");
        let v: Value = serde_json::from_slice(&self.body).unwrap();
        assert_eq!(
            v["type"],
            format!("https://konvert.invalid/problems/{slug}"),
            "{v}"
        );
        assert_eq!(v["status"], status);
        assert!(v["title"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(v["detail"].as_str().is_some());
        // It must also parse as the Rust type.
        let p: Problem = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(p.status, status);
        v
    }
    fn field(&self) -> String {
        let v: Value = serde_json::from_slice(&self.body).unwrap();
        v["errors"][0]["field"].as_str().unwrap_or_default().to_owned()
    }
}

fn req<B>(method: &str, uri: &str, content_type: Option<&str>, body: B) -> Request<B> {
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, "localhost");
    if let Some(ct) = content_type {
        b = b.header(header::CONTENT_TYPE, ct);
    }
    b.body(body).unwrap()
}

async fn send<B>(path: &Path, request: Request<B>) -> Reply
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = UnixStream::connect(path).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = sender.send_request(request).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// A body of `n` chunks of `size` bytes with no announced length (sent chunked).
struct Chunks {
    left: usize,
    size: usize,
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        self.left -= 1;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![7u8; self.size])))))
    }
}

fn submit_body(message: &Message) -> Value {
    json!({"message": message, "signatory": "kz.mvd.ivanov-a"})
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test]
async fn socket_has_mode_0660_and_is_removed_at_shutdown() {
    let h = Harness::default().await;
    let mode = std::fs::metadata(&h.path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660);
    let path = h.path.clone();
    h.stop().await;
    assert!(!path.exists());
}

#[tokio::test]
async fn stale_socket_is_replaced_live_one_and_other_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap()); // leaves a stale socket file
    let double = Arc::new(Double::new());
    let policy = AccessPolicy::new(vec![], vec![]);
    let first = ApiServer::bind(&path, 0o660, policy.clone(), double.clone(), ApiLimits::default()).unwrap();
    let second = ApiServer::bind(&path, 0o660, policy.clone(), double.clone(), ApiLimits::default());
    assert!(matches!(second, Err(BindError::InUse(_))), "{second:?}");
    drop(first);
    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, b"x").unwrap();
    let third = ApiServer::bind(&file, 0o660, policy, double, ApiLimits::default());
    assert!(matches!(third, Err(BindError::NotASocket(_))), "{third:?}");
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
}

#[tokio::test]
async fn caller_not_on_the_allow_list_is_refused_and_disconnected() {
    let policy = AccessPolicy {
        users: vec![],
        groups: vec![],
        allow_own_uid: false,
    };
    let h = Harness::start(policy, ApiLimits::default()).await;
    let stream = UnixStream::connect(&h.path).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let resp = sender
        .send_request(req("GET", "/v1/health", None, Full::new(Bytes::new())))
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let reply = Reply {
        status,
        headers,
        body,
    };
    reply.problem("unauthorized-caller", 403);
    // The server closes the connection after the answer.
    tokio::time::timeout(Duration::from_secs(30), conn)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    h.stop().await;
}

#[tokio::test]
async fn callers_are_allowed_by_uid_or_group() {
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    for policy in [
        AccessPolicy {
            users: vec![uid],
            groups: vec![],
            allow_own_uid: false,
        },
        AccessPolicy {
            users: vec![],
            groups: vec![gid],
            allow_own_uid: false,
        },
    ] {
        let h = Harness::start(policy, ApiLimits::default()).await;
        assert_eq!(h.get("/v1/health").await.status, StatusCode::OK);
        h.stop().await;
    }
    // Names resolve; unknown names are named in the error.
    let me = nix::unistd::User::from_uid(nix::unistd::getuid())
        .unwrap()
        .unwrap();
    let p = AccessPolicy::from_names(&[me.name.clone(), "0".into()], &[]).unwrap();
    assert_eq!(p.users, vec![uid, 0]);
    assert!(p.allow_own_uid);
    let e = AccessPolicy::from_names(&["no-such-user-konvert".into()], &[]).unwrap_err();
    assert!(e.to_string().contains("no-such-user-konvert"));
    let e = AccessPolicy::from_names(&[], &["no-such-group-konvert".into()]).unwrap_err();
    assert!(matches!(e, PolicyError::UnknownGroup(_)));
}

#[tokio::test]
async fn operator_routes_parse_their_parameters() {
    let h = Harness::default().await;
    let v = h.get("/v1/audit?from=5&limit=7").await.json();
    assert_eq!(v["items"][0]["seq"], 5);
    assert_eq!(v["items"][0]["count"], 7);
    let v = h.get("/v1/audit").await.json();
    assert_eq!(v["items"][0]["seq"], 0);
    assert_eq!(v["items"][0]["count"], 100);
    assert_eq!(h.get("/v1/audit?from=x").await.status, StatusCode::BAD_REQUEST);
    assert_eq!(h.get("/v1/audit?limit=0").await.status, StatusCode::BAD_REQUEST);
    assert_eq!(h.get("/v1/audit?seq=1").await.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        h.get("/v1/retention?by=week").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        h.get("/v1/messages/not-an-id/story").await.status,
        StatusCode::BAD_REQUEST
    );
    let id = "01890a5d-ac96-774b-bcce-b302099a8057";
    assert_eq!(
        h.get(&format!("/v1/cases/{id}/purge")).await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

#[tokio::test]
async fn procedure_routes_check_ids_methods_and_bodies_before_the_service() {
    let h = Harness::default().await;
    let id = "01890a5d-ac96-774b-bcce-b302099a8057";
    // Closing: POST only, a UUID id, and the service's answer (none kept here).
    assert_eq!(
        h.get(&format!("/v1/cases/{id}/close")).await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    let r = h.post_json("/v1/cases/not-an-id/close", &json!({})).await;
    r.problem("bad-request", 400);
    assert_eq!(r.field(), "id");
    h.post_json(&format!("/v1/cases/{id}/close"), &json!({}))
        .await
        .problem("not-found", 404);
    h.post_json(&format!("/v1/cases/{id}/close?force=1"), &json!({}))
        .await
        .problem("bad-request", 400);
    // The directory: GET only; an empty one from a service without it.
    let v = h.get("/v1/directory").await.json();
    assert_eq!(v, json!({"rosters": [], "changes": []}));
    // A directory change: JSON with an `update` that is a directory_update body.
    assert_eq!(
        h.get("/v1/directory/changes").await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    let r = h
        .post_json(
            "/v1/directory/changes",
            &json!({"update": {"change": {}}, "extra": 1}),
        )
        .await;
    assert!(
        r.status == StatusCode::BAD_REQUEST || r.status == StatusCode::UNPROCESSABLE_ENTITY,
        "{r:?}"
    );
    let r = h
        .post_json("/v1/directory/changes", &json!({"signatory": "head"}))
        .await;
    assert!(
        r.status == StatusCode::BAD_REQUEST || r.status == StatusCode::UNPROCESSABLE_ENTITY,
        "{r:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn health_and_peers() {
    let h = Harness::default().await;
    let r = h.get("/v1/health").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers[header::CACHE_CONTROL], "no-store");
    let v = r.json();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["store"], "ok");
    let v = h.get("/v1/peers").await.json();
    assert_eq!(v["items"][0]["authority"], "by.mvd");
    assert_eq!(v["items"][0]["connected"], true);
    assert_eq!(v["items"][0]["queue_depth"], 2);
    h.stop().await;
}

#[tokio::test]
async fn unknown_route_wrong_method_and_stray_parameters() {
    let h = Harness::default().await;
    h.get("/v1/nothing").await.problem("not-found", 404);
    h.get("/v1/messages/").await.problem("not-found", 404);
    let r = send(
        &h.path,
        req("DELETE", "/v1/health", None, Full::new(Bytes::new())),
    )
    .await;
    r.problem("method-not-allowed", 405);
    assert_eq!(r.headers[header::ALLOW], "GET");
    let r = h.get("/v1/messages").await;
    r.problem("method-not-allowed", 405);
    assert_eq!(r.headers[header::ALLOW], "POST");
    let r = h.get("/v1/health?verbose=1").await;
    r.problem("bad-request", 400);
    assert_eq!(r.field(), "verbose");
    h.stop().await;
}

#[tokio::test]
async fn submit_upload_and_status() {
    let h = Harness::default().await;
    // Upload an attachment first (raw body; Content-Type is its media type).
    let pdf = Bytes::from_static(b"%PDF-1.7 konvert test attachment\n");
    let r = send(
        &h.path,
        req(
            "POST",
            "/v1/uploads",
            Some("Application/PDF"),
            Full::new(pdf.clone()),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let up = r.json();
    assert_eq!(up["media_type"], "application/pdf");
    assert_eq!(up["length"], pdf.len());
    assert_eq!(up["sha256"], Digest::of(&pdf).to_string());
    let upload_id = up["id"].as_str().unwrap().to_owned();

    let mut message = example("request.json");
    let mut body = submit_body(&message);
    body["message"]["body"]["content"]["attachments"] =
        json!([{"media_type": "application/pdf", "file": format!("upload:{upload_id}")}]);
    let r = h.post_json("/v1/messages", &body).await;
    assert_eq!(
        r.status,
        StatusCode::ACCEPTED,
        "{:?}",
        String::from_utf8_lossy(&r.body)
    );
    let mid = message.header.id.to_string();
    assert_eq!(r.headers[header::LOCATION], format!("/v1/messages/{mid}"));
    let v = r.json();
    assert_eq!(v["id"], mid);
    assert_eq!(v["state"], "queued");

    // Idempotent: the same message again is the same submission; another message with the id is a conflict.
    let r = h.post_json("/v1/messages", &body).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    message.header.time = "2026-10-05T09:00:01Z".parse().unwrap();
    h.post_json("/v1/messages", &submit_body(&message))
        .await
        .problem("conflict", 409);

    let v = h.get(&format!("/v1/messages/{mid}")).await.json();
    assert_eq!(v["state"], "queued");
    assert_eq!(v["direction"], "outbound");
    assert_eq!(v["peer"], "by.mvd");
    assert_eq!(v["receipt"]["outcome"]["status"], "accepted");
    h.get(&format!("/v1/messages/{}", id(77)))
        .await
        .problem("not-found", 404);
    let r = h.get("/v1/messages/not-an-id").await;
    r.problem("bad-request", 400);
    assert_eq!(r.field(), "id");

    // `wait=N` asks the service to wait for an outcome up to N seconds;
    // without it (or with 0) nothing waits. Anything else is refused.
    let v = h.get(&format!("/v1/messages/{mid}?wait=20")).await.json();
    assert_eq!(v["id"], mid);
    let v = h.get(&format!("/v1/messages/{mid}?wait=0")).await.json();
    assert_eq!(v["id"], mid);
    assert_eq!(
        h.double.state.lock().unwrap().status_waits,
        [Duration::from_secs(20)]
    );
    for (q, field) in [("wait=61", "wait"), ("wait=soon", "wait"), ("limit=1", "limit")] {
        let r = h.get(&format!("/v1/messages/{mid}?{q}")).await;
        r.problem("bad-request", 400);
        assert_eq!(r.field(), field, "{q}");
    }
    h.stop().await;
}

#[tokio::test]
async fn submit_errors_name_the_field() {
    let h = Harness::default().await;
    // Profile validation: an authority that is not in the agreement.
    let mut body = submit_body(&example("request.json"));
    body["message"]["header"]["to"] = json!("am.police");
    let r = h.post_json("/v1/messages", &body).await;
    let v = r.problem("validation", 422);
    assert!(
        v["errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["field"] == "/message/header/to"),
        "{v}"
    );
    // A field outside Art. 6 cannot even be decoded: named by its pointer, its value never repeated.
    let mut body = submit_body(&example("request.json"));
    body["message"]["body"]["content"]["persons"][0]["religion"] = json!("секретное значение");
    let r = h.post_json("/v1/messages", &body).await;
    let v = r.problem("validation", 422);
    assert_eq!(
        v["errors"][0]["field"], "/message/body/content/persons/0/religion",
        "{v}"
    );
    assert_eq!(v["errors"][0]["rule"], "schema");
    assert!(!String::from_utf8_lossy(&r.body).contains("секретное"));
    // A key that looks like data is not repeated either.
    let mut body = submit_body(&example("request.json"));
    body["message"]["body"]["content"]["persons"][0]["Сейткали"] = json!(1);
    let r = h.post_json("/v1/messages", &body).await;
    let v = r.problem("validation", 422);
    assert_eq!(
        v["errors"][0]["field"], "/message/body/content/persons/0/*",
        "{v}"
    );
    assert!(!String::from_utf8_lossy(&r.body).contains("Сейткали"), "{v}");
    // A value of the wrong shape: the value is not repeated either.
    let mut body = submit_body(&example("request.json"));
    body["message"]["body"]["content"]["persons"][0]["sex"] = json!("Сейткали");
    let r = h.post_json("/v1/messages", &body).await;
    let v = r.problem("validation", 422);
    // Inside the tagged message body serde reports only the body's end: the
    // pointer names the closest place known, the message the rule broken.
    assert!(
        v["errors"][0]["field"]
            .as_str()
            .unwrap()
            .starts_with("/message/body"),
        "{v}"
    );
    assert!(v["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("expected `male` or `female`"));
    assert!(!String::from_utf8_lossy(&r.body).contains("Сейткали"));
    // Not JSON at all.
    let r = send(
        &h.path,
        req(
            "POST",
            "/v1/messages",
            Some("application/json"),
            Full::new(Bytes::from_static(b"{\"message\": [")),
        ),
    )
    .await;
    r.problem("bad-request", 400);
    // An agreement not in force: its own problem type.
    let mut body = submit_body(&example("request.json"));
    body["message"]["header"]["time"] = json!("2019-01-01T00:00:00Z");
    h.post_json("/v1/messages", &body)
        .await
        .problem("not-in-force", 422);
    h.stop().await;
}

#[tokio::test]
async fn wrong_content_type_is_415() {
    let h = Harness::default().await;
    let body = Bytes::from(serde_json::to_vec(&submit_body(&example("request.json"))).unwrap());
    for ct in [Some("text/plain"), None, Some("application/json; charset=latin1")] {
        let r = send(&h.path, req("POST", "/v1/messages", ct, Full::new(body.clone()))).await;
        r.problem("unsupported-media-type", 415);
        assert_eq!(r.field(), "content-type");
    }
    let r = send(
        &h.path,
        req(
            "POST",
            "/v1/messages",
            Some("application/json; charset=UTF-8"),
            Full::new(body),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = send(
        &h.path,
        req("POST", "/v1/uploads", None, Full::new(Bytes::from_static(b"x"))),
    )
    .await;
    r.problem("unsupported-media-type", 415);
    let r = send(
        &h.path,
        req(
            "POST",
            "/v1/uploads",
            Some("image"),
            Full::new(Bytes::from_static(b"x")),
        ),
    )
    .await;
    r.problem("unsupported-media-type", 415);
    h.stop().await;
}

#[tokio::test]
async fn oversize_bodies_are_413() {
    let limits = ApiLimits {
        max_json_body: 64 << 10,
        max_upload: 100 << 10,
        ..ApiLimits::default()
    };
    let h = Harness::start(AccessPolicy::new(vec![], vec![]), limits).await;
    // JSON with a Content-Length over the limit.
    let big = Bytes::from(vec![b' '; 80 << 10]);
    let r = send(
        &h.path,
        req("POST", "/v1/messages", Some("application/json"), Full::new(big)),
    )
    .await;
    r.problem("payload-too-large", 413);
    // JSON sent chunked, no length announced.
    let r = send(
        &h.path,
        req(
            "POST",
            "/v1/messages",
            Some("application/json"),
            Chunks {
                left: 3,
                size: 32 << 10,
            },
        ),
    )
    .await;
    r.problem("payload-too-large", 413);
    // Upload with a length over the limit, and a chunked one that grows past it.
    let r = send(
        &h.path,
        req(
            "POST",
            "/v1/uploads",
            Some("image/jpeg"),
            Full::new(Bytes::from(vec![1u8; 120 << 10])),
        ),
    )
    .await;
    r.problem("payload-too-large", 413);
    let r = send(
        &h.path,
        req(
            "POST",
            "/v1/uploads",
            Some("image/jpeg"),
            Chunks {
                left: 3,
                size: 48 << 10,
            },
        ),
    )
    .await;
    r.problem("payload-too-large", 413);
    // Just under the limit, chunked: fine.
    let r = send(
        &h.path,
        req(
            "POST",
            "/v1/uploads",
            Some("image/jpeg"),
            Chunks {
                left: 2,
                size: 48 << 10,
            },
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.json()["length"], 96 << 10);
    h.stop().await;
}

#[tokio::test]
async fn receipts_list_filter_show_and_export() {
    let h = Harness::default().await;
    let v = h.get("/v1/receipts").await.json();
    assert_eq!(v["items"].as_array().unwrap().len(), 3);
    assert!(v.get("next").is_none());
    let v = h.get("/v1/receipts?peer=by.mvd&state=rejected").await.json();
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    assert_eq!(v["items"][0]["outcome"]["code"], "invalid_message");
    let v = h.get("/v1/receipts?direction=inbound").await.json();
    assert_eq!(v["items"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["items"][0]["direction"], "inbound");
    assert_eq!(v["items"][0]["receiver"], "kz.mvd");
    // Pages.
    let v = h.get("/v1/receipts?limit=2").await.json();
    assert_eq!(v["items"].as_array().unwrap().len(), 2);
    let next = v["next"].as_str().unwrap().to_owned();
    let v = h.get(&format!("/v1/receipts?limit=2&after={next}")).await.json();
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    // Time window; '+' in an offset is kept.
    let v = h
        .get("/v1/receipts?since=2026-09-21T17:00:00%2B01:00&until=2027-01-01T00:00:00Z")
        .await
        .json();
    assert_eq!(v["items"].as_array().unwrap().len(), 2, "{v}");
    let v = h.get("/v1/receipts?since=2026-09-21T17:00:00+01:00").await.json();
    assert_eq!(v["items"].as_array().unwrap().len(), 2, "{v}");
    // Bad parameters are named.
    for (q, field) in [
        ("limit=0", "limit"),
        ("limit=ten", "limit"),
        ("state=lost", "state"),
        ("since=yesterday", "since"),
        ("until=2020-01-01T00:00:00Z&since=2021-01-01T00:00:00Z", "until"),
        ("peer=BY.MVD", "peer"),
        ("after=12", "after"),
        ("after=not%20a%20cursor", "after"),
        ("direction=sideways", "direction"),
        ("limit=1&limit=2", "limit"),
        ("colour=red", "colour"),
    ] {
        let r = h.get(&format!("/v1/receipts?{q}")).await;
        r.problem("bad-request", 400);
        assert_eq!(r.field(), field, "{q}");
    }
    // One receipt, and its signed bytes.
    let eid = id(101).to_string();
    let v = h.get(&format!("/v1/receipts/{eid}")).await.json();
    assert_eq!(v["envelope_id"], eid);
    assert_eq!(v["verified"], true);
    let r = h.get(&format!("/v1/receipts/{eid}/raw")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("application/cose"));
    assert_eq!(&r.body[..], &[0xd2, 0x84, 1]);
    h.get(&format!("/v1/receipts/{}", id(1)))
        .await
        .problem("not-found", 404);
    h.get(&format!("/v1/receipts/{}/raw", id(1)))
        .await
        .problem("not-found", 404);
    h.get("/v1/receipts/xyz/raw").await.problem("bad-request", 400);
    h.stop().await;
}

#[tokio::test]
async fn inbox_fetch_attachments_and_idempotent_ack() {
    let h = Harness::default().await;
    let first = h.double.deliver(1);
    let second = h.double.deliver(2);
    let v = h.get("/v1/inbox").await.json();
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["id"], first.to_string());
    assert_eq!(items[0]["from"], "by.mvd");
    // after= shows only later arrivals.
    let cursor = items[0]["cursor"].as_str().unwrap().to_owned();
    let v = h.get(&format!("/v1/inbox?after={cursor}")).await.json();
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    assert_eq!(v["items"][0]["id"], second.to_string());
    let v = h.get("/v1/inbox?limit=1").await.json();
    assert_eq!(v["next"], cursor);

    // Fetching does not acknowledge: a crash between fetch and ack loses nothing.
    let v = h.get(&format!("/v1/inbox/{first}")).await.json();
    assert_eq!(v["message"]["body"]["kind"], "response");
    assert_eq!(v["acknowledged"], false);
    assert_eq!(v["attachments"][1]["media_type"], "application/pdf");
    assert_eq!(
        h.get("/v1/inbox").await.json()["items"].as_array().unwrap().len(),
        2
    );

    let r = h.get(&format!("/v1/inbox/{first}/attachments/0")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers[header::CONTENT_TYPE], "image/jpeg");
    assert_eq!(&r.body[..], b"photo 1");
    assert_eq!(r.headers[header::CONTENT_LENGTH], "7");
    assert!(r.headers["repr-digest"]
        .to_str()
        .unwrap()
        .starts_with("sha-256=:"));
    h.get(&format!("/v1/inbox/{first}/attachments/2"))
        .await
        .problem("not-found", 404);
    let r = h.get(&format!("/v1/inbox/{first}/attachments/-1")).await;
    r.problem("bad-request", 400);
    assert_eq!(r.field(), "n");

    // Ack twice: 200 both times; never listed as new again.
    for _ in 0..2 {
        let r = send(
            &h.path,
            req(
                "POST",
                &format!("/v1/inbox/{first}/ack"),
                None,
                Full::new(Bytes::new()),
            ),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json()["state"], "acknowledged");
    }
    let v = h.get("/v1/inbox").await.json();
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    assert_eq!(v["items"][0]["id"], second.to_string());
    assert_eq!(
        h.get(&format!("/v1/inbox/{first}")).await.json()["acknowledged"],
        true
    );
    let r = send(
        &h.path,
        req(
            "POST",
            &format!("/v1/inbox/{}/ack", id(9)),
            None,
            Full::new(Bytes::new()),
        ),
    )
    .await;
    r.problem("not-found", 404);
    let r = send(
        &h.path,
        req("POST", "/v1/inbox/1234/ack", None, Full::new(Bytes::new())),
    )
    .await;
    r.problem("bad-request", 400);
    assert_eq!(r.field(), "id");
    h.get(&format!("/v1/inbox/{}", id(9)))
        .await
        .problem("not-found", 404);
    for (q, field) in [
        ("wait=61", "wait"),
        ("after=a/b", "after"),
        ("limit=1001", "limit"),
    ] {
        let r = h.get(&format!("/v1/inbox?{q}")).await;
        r.problem("bad-request", 400);
        assert_eq!(r.field(), field);
    }
    h.stop().await;
}

#[tokio::test]
async fn long_poll_returns_the_item_that_arrives() {
    let h = Harness::default().await;
    let double = h.double.clone();
    let waiting = double.waiting.notified();
    tokio::pin!(waiting);
    waiting.as_mut().enable();
    let path = h.path.clone();
    let poll = tokio::spawn(async move {
        send(
            &path,
            req("GET", "/v1/inbox?wait=30", None, Full::new(Bytes::new())),
        )
        .await
    });
    waiting.await;
    let mid = h.double.deliver(5);
    let r = poll.await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["items"][0]["id"], mid.to_string());
    h.stop().await;
}

#[tokio::test]
async fn long_poll_with_nothing_arriving_returns_an_empty_list() {
    let h = Harness::default().await;
    let v = h.get("/v1/inbox?wait=1").await.json();
    assert_eq!(v["items"], json!([]));
    // Items already acknowledged do not wake a poll either.
    let mid = h.double.deliver(1);
    send(
        &h.path,
        req(
            "POST",
            &format!("/v1/inbox/{mid}/ack"),
            None,
            Full::new(Bytes::new()),
        ),
    )
    .await;
    let v = h.get("/v1/inbox?wait=1").await.json();
    assert_eq!(v["items"], json!([]));
    h.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_the_request_in_flight() {
    let mut h = Harness::default().await;
    h.double
        .hold_peers
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let entered = h.double.entered.notified();
    tokio::pin!(entered);
    entered.as_mut().enable();
    let path = h.path.clone();
    let in_flight =
        tokio::spawn(
            async move { send(&path, req("GET", "/v1/peers", None, Full::new(Bytes::new()))).await },
        );
    entered.await;
    // A long poll in flight as well: shutdown ends it with an empty list.
    let path = h.path.clone();
    let waiting = h.double.waiting.notified();
    tokio::pin!(waiting);
    waiting.as_mut().enable();
    let poll = tokio::spawn(async move {
        send(
            &path,
            req("GET", "/v1/inbox?wait=60", None, Full::new(Bytes::new())),
        )
        .await
    });
    waiting.await;

    let _ = h.shutdown.take().unwrap().send(());
    // The server stops accepting: the socket file goes away.
    while h.path.exists() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(UnixStream::connect(&h.path).await.is_err());
    assert!(!h.server.is_finished());
    let v = poll.await.unwrap().json();
    assert_eq!(v["items"], json!([]));
    h.double.gate.notify_one();
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["items"][0]["authority"], "by.mvd");
    h.server.await.unwrap();
}

#[tokio::test]
async fn curl_can_use_the_socket() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("note: curl is not installed; skipping the curl check");
        return;
    }
    let h = Harness::default().await;
    let path = h.path.clone();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("scan.pdf");
    std::fs::write(&file, b"%PDF-1.7 curl").unwrap();
    let out = tokio::task::spawn_blocking(move || {
        let run = |args: &[&str]| {
            let o = std::process::Command::new("curl")
                .args(["-sS", "--unix-socket"])
                .arg(&path)
                .args(args)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            String::from_utf8(o.stdout).unwrap()
        };
        let health = run(&["http://localhost/v1/health"]);
        let upload = run(&[
            "-H",
            "Content-Type: application/pdf",
            "--data-binary",
            &format!("@{}", file.display()),
            "http://localhost/v1/uploads",
        ]);
        let status = run(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://localhost/v1/nothing",
        ]);
        (health, upload, status)
    })
    .await
    .unwrap();
    let health: Value = serde_json::from_str(&out.0).unwrap();
    assert_eq!(health["status"], "ok");
    let upload: Value = serde_json::from_str(&out.1).unwrap();
    assert_eq!(upload["length"], 13);
    assert_eq!(out.2, "404");
    h.stop().await;
}

#[test]
fn openapi_documents_every_route_and_problem_type() {
    let text = std::fs::read_to_string(root().join("docs/api/openapi.yaml")).unwrap();
    assert!(text.starts_with("openapi: 3.1"));
    let lines: Vec<&str> = text.lines().collect();
    for route in ROUTES {
        let key = format!("  {}:", route.path);
        let start = lines
            .iter()
            .position(|l| *l == key)
            .unwrap_or_else(|| panic!("{} is not in openapi.yaml", route.path));
        let end = lines[start + 1..]
            .iter()
            .position(|l| l.starts_with("  /") || !l.starts_with(' ') && !l.is_empty())
            .map_or(lines.len(), |e| start + 1 + e);
        for m in route.methods {
            let op = format!("    {}:", m.to_ascii_lowercase());
            assert!(
                lines[start..end].contains(&op.as_str()),
                "{} {} is not in openapi.yaml",
                m,
                route.path
            );
        }
    }
    for t in ProblemType::ALL {
        assert!(
            text.contains(&t.uri()),
            "problem type {} is not in openapi.yaml",
            t.uri()
        );
    }
    let guide = std::fs::read_to_string(root().join("docs/API.md")).unwrap();
    for t in ProblemType::ALL {
        assert!(
            guide.contains(t.slug()),
            "problem type {} is not in API.md",
            t.slug()
        );
    }
}

#[tokio::test]
async fn too_many_headers_are_refused_by_the_http_layer() {
    let h = Harness::start(
        AccessPolicy::new(vec![], vec![]),
        ApiLimits {
            max_headers: 16,
            ..ApiLimits::default()
        },
    )
    .await;
    let mut r = req("GET", "/v1/health", None, Full::new(Bytes::new()));
    for i in 0..40 {
        r.headers_mut().insert(
            header::HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap(),
            "v".parse().unwrap(),
        );
    }
    assert_eq!(
        send(&h.path, r).await.status,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    assert_eq!(h.get("/v1/health").await.status, StatusCode::OK);
    h.stop().await;
}
