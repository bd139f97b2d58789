//! The Prometheus metrics endpoint: `GET /metrics` on a loopback TCP
//! address (`[metrics] listen = "127.0.0.1:9464"`; off by default), in
//! the text exposition format 0.0.4.
//!
//! The figures are those of `GET /v1/status` ([`NodeStatus`]): per-peer
//! connection, queue depth, oldest undelivered age and last delivery;
//! outbox, inbox and overdue-case counts; store size and free space; key
//! file ages and the TLS certificate's end of validity; the retention
//! sweeper's totals. Labels are peers (authority ids) and key names only:
//! no message or case ids, nothing personal.
//!
//! Why no metrics crate: the format for a fixed set of gauges and counters
//! with at most one label is a few lines ([`render`]), the figures are
//! computed per scrape from the status (there is no registry to keep), and
//! it keeps the dependency tree as it is. Label values are escaped as the
//! format requires (`\\`, `"`, newline).
//!
//! One scrape at a time computes the status (it reads the store's indexes);
//! a scrape within a second of the last one gets the same text.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{watch, Mutex, Semaphore};

use crate::api::ops::NodeStatus;
use crate::api::types::{Caller, HealthStatus};
use crate::api::ApiService;
use crate::daemon::service::Service;
use crate::daemon::Node;

/// Content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Most scrape connections served at once.
const MAX_CONNECTIONS: usize = 8;
/// Longest a scrape connection may stay open.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a computed text is reused.
const CACHE_FOR: Duration = Duration::from_secs(1);

fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Writes metric families in the text format.
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, label: Option<(&str, &str)>, value: impl std::fmt::Display) {
        match label {
            Some((k, v)) => {
                let _ = writeln!(self.0, "{name}{{{k}=\"{}\"}} {value}", escape(v));
            }
            None => {
                let _ = writeln!(self.0, "{name} {value}");
            }
        }
    }
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, None, value);
    }
}

/// The status as metrics (text exposition format 0.0.4).
pub fn render(s: &NodeStatus) -> String {
    let now = s.now.as_unix();
    let mut e = Exposition(String::new());
    e.single("konvert_up", "gauge", "1 while konvertd answers.", 1);
    e.family(
        "konvert_health",
        "gauge",
        "Health status of the daemon: 1 for the current status, 0 for the others.",
    );
    for (name, h) in [
        ("ok", HealthStatus::Ok),
        ("degraded", HealthStatus::Degraded),
        ("unavailable", HealthStatus::Unavailable),
    ] {
        e.sample("konvert_health", Some(("status", name)), u8::from(s.health == h));
    }
    e.single(
        "konvert_uptime_seconds",
        "gauge",
        "Seconds since konvertd started.",
        s.uptime_seconds,
    );
    e.family(
        "konvert_peer_connected",
        "gauge",
        "1 if a connection to the peer is open.",
    );
    for p in &s.peers {
        e.sample(
            "konvert_peer_connected",
            Some(("peer", p.authority.as_str())),
            u8::from(p.connected),
        );
    }
    e.family(
        "konvert_peer_queue_depth",
        "gauge",
        "Outbound messages waiting for the peer's receipt (queued or sent).",
    );
    for p in &s.peers {
        e.sample(
            "konvert_peer_queue_depth",
            Some(("peer", p.authority.as_str())),
            p.queue_depth,
        );
    }
    e.family(
        "konvert_peer_oldest_undelivered_age_seconds",
        "gauge",
        "Age of the oldest outbound message without a receipt (0 if none).",
    );
    for p in &s.peers {
        let age = p
            .oldest_undelivered
            .map_or(0, |t| now.saturating_sub(t.as_unix()).max(0));
        e.sample(
            "konvert_peer_oldest_undelivered_age_seconds",
            Some(("peer", p.authority.as_str())),
            age,
        );
    }
    e.family(
        "konvert_peer_last_delivery_timestamp_seconds",
        "gauge",
        "When the peer last took an envelope (unix time; absent if never since start).",
    );
    for p in &s.peers {
        if let Some(t) = p.last_delivery {
            e.sample(
                "konvert_peer_last_delivery_timestamp_seconds",
                Some(("peer", p.authority.as_str())),
                t.as_unix(),
            );
        }
    }
    e.single(
        "konvert_outbox_undelivered",
        "gauge",
        "Outbound messages without a receipt yet.",
        s.outbox_undelivered,
    );
    e.single(
        "konvert_outbox_failed",
        "gauge",
        "Outbound messages that failed for good.",
        s.outbox_failed,
    );
    e.single(
        "konvert_inbox_unacknowledged",
        "gauge",
        "Received messages the application has not acknowledged.",
        s.inbox_unacknowledged,
    );
    e.single(
        "konvert_cases_overdue",
        "gauge",
        "Request cases past their answer deadline.",
        s.cases_overdue,
    );
    e.single(
        "konvert_store_bytes",
        "gauge",
        "Bytes the store takes on disk.",
        s.store_bytes,
    );
    if let Some(free) = s.free_bytes {
        e.single(
            "konvert_store_free_bytes",
            "gauge",
            "Free bytes on the data directory's file system.",
            free,
        );
    }
    let u = &s.uploads;
    e.family(
        "konvert_uploads_waiting",
        "gauge",
        "Uploads no submission has used yet, held in memory or in files.",
    );
    e.sample("konvert_uploads_waiting", Some(("held", "memory")), u.in_memory);
    e.sample("konvert_uploads_waiting", Some(("held", "file")), u.files);
    e.family(
        "konvert_uploads_waiting_bytes",
        "gauge",
        "Bytes of the uploads no submission has used yet.",
    );
    e.sample(
        "konvert_uploads_waiting_bytes",
        Some(("held", "memory")),
        u.in_memory_bytes,
    );
    e.sample(
        "konvert_uploads_waiting_bytes",
        Some(("held", "file")),
        u.file_bytes,
    );
    e.family(
        "konvert_key_age_seconds",
        "gauge",
        "Age of the node's key files (since last written).",
    );
    for k in &s.keys {
        if let Some(m) = k.modified {
            e.sample(
                "konvert_key_age_seconds",
                Some(("key", &k.what)),
                now.saturating_sub(m.as_unix()).max(0),
            );
        }
    }
    if let Some(t) = s.keys.iter().find_map(|k| k.not_after) {
        e.single(
            "konvert_tls_certificate_expiry_timestamp_seconds",
            "gauge",
            "End of validity of the node's TLS certificate (unix time).",
            t.as_unix(),
        );
    }
    let w = &s.sweeper;
    e.single(
        "konvert_sweeps_total",
        "counter",
        "Retention sweeps since start.",
        w.sweeps,
    );
    e.single(
        "konvert_destroyed_total",
        "counter",
        "Messages destroyed by the sweeper since start.",
        w.destroyed,
    );
    e.single(
        "konvert_purged_total",
        "counter",
        "Metadata records purged by the sweeper since start.",
        w.purged,
    );
    e.single(
        "konvert_keys_destroyed_total",
        "counter",
        "Data keys destroyed by the sweeper since start.",
        w.keys_destroyed,
    );
    e.single(
        "konvert_audit_pruned_total",
        "counter",
        "Audit entries pruned by the sweeper since start.",
        w.audit_pruned,
    );
    e.single(
        "konvert_sweep_failures_total",
        "counter",
        "Retention sweeps that failed since start.",
        w.failures,
    );
    if let Some(t) = w.last_sweep {
        e.single(
            "konvert_last_sweep_timestamp_seconds",
            "gauge",
            "When the last retention sweep finished (unix time).",
            t.as_unix(),
        );
    }
    e.0
}

/// Computes the text, at most one at a time, reused for [`CACHE_FOR`].
#[derive(Debug)]
struct Scraper {
    service: Service,
    cache: Mutex<Option<(Instant, Bytes)>>,
}

impl Scraper {
    async fn text(&self) -> Result<Bytes, crate::api::Problem> {
        let mut cache = self.cache.lock().await;
        if let Some((at, text)) = cache.as_ref() {
            if at.elapsed() < CACHE_FOR {
                return Ok(text.clone());
            }
        }
        let caller = Caller {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            pid: None,
        };
        let status = self.service.node_status(caller).await?;
        let text = Bytes::from(render(&status));
        *cache = Some((Instant::now(), text.clone()));
        Ok(text)
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r
}

async fn answer(scraper: Arc<Scraper>, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "not found; metrics are at /metrics\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match scraper.text().await {
        Ok(text) => {
            let mut r = Response::new(Full::new(text));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
            r
        }
        Err(p) => {
            tracing::warn!(problem = %p.detail, "metrics scrape failed");
            plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "the status cannot be read; see the daemon's log\n",
            )
        }
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Serves `/metrics` on `listener` until `stop` turns true.
pub async fn serve(listener: TcpListener, node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let scraper = Arc::new(Scraper {
        service: Service(node),
        cache: Mutex::new(None),
    });
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&slots).acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            () = stopped(&mut stop) => return,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = stopped(&mut stop) => return,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let scraper = Arc::clone(&scraper);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let scraper = Arc::clone(&scraper);
                async move { Ok::<_, std::convert::Infallible>(answer(scraper, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::api::ops::{KeyFileView, SweeperTotals};
    use crate::api::types::PeerView;
    use konvert_envelope::model::{AuthorityId, Timestamp};

    fn status() -> NodeStatus {
        NodeStatus {
            authority: AuthorityId::new("kz.mvd".to_owned()).unwrap(),
            version: "0".into(),
            now: Timestamp::from_unix(1000),
            uptime_seconds: 5,
            health: HealthStatus::Degraded,
            peers: vec![PeerView {
                authority: AuthorityId::new("by.mvd".to_owned()).unwrap(),
                addresses: vec!["127.0.0.1:1".into()],
                connected: true,
                last_delivery: Some(Timestamp::from_unix(990)),
                queue_depth: 3,
                oldest_undelivered: Some(Timestamp::from_unix(400)),
            }],
            outbox_undelivered: 3,
            outbox_failed: 1,
            inbox_unacknowledged: 2,
            cases_overdue: 0,
            overdue: vec![],
            store_bytes: 4096,
            free_bytes: None,
            keys: vec![KeyFileView {
                what: "tls_certificate".into(),
                file: "tls.cert.pem".into(),
                modified: Some(Timestamp::from_unix(100)),
                age_days: Some(0),
                not_after: Some(Timestamp::from_unix(5000)),
                error: None,
            }],
            sweeper: SweeperTotals {
                sweeps: 2,
                ..SweeperTotals::default()
            },
            uploads: crate::api::ops::UploadsView {
                in_memory: 2,
                in_memory_bytes: 2048,
                files: 1,
                file_bytes: 5 << 20,
            },
            truncated: false,
        }
    }

    #[test]
    fn the_text_format_has_help_type_and_samples() {
        let t = render(&status());
        assert!(t.contains("# TYPE konvert_peer_queue_depth gauge\n"), "{t}");
        assert!(t.contains("konvert_peer_queue_depth{peer=\"by.mvd\"} 3\n"), "{t}");
        assert!(
            t.contains("konvert_peer_oldest_undelivered_age_seconds{peer=\"by.mvd\"} 600\n"),
            "{t}"
        );
        assert!(
            t.contains("konvert_health{status=\"degraded\"} 1\nkonvert_health{status=\"ok\"} 0")
                || t.contains("konvert_health{status=\"ok\"} 0\nkonvert_health{status=\"degraded\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("konvert_key_age_seconds{key=\"tls_certificate\"} 900\n"),
            "{t}"
        );
        assert!(
            t.contains("konvert_tls_certificate_expiry_timestamp_seconds 5000\n"),
            "{t}"
        );
        assert!(
            t.contains("# TYPE konvert_sweeps_total counter\nkonvert_sweeps_total 2\n"),
            "{t}"
        );
        assert!(
            t.contains(
                "konvert_uploads_waiting{held=\"memory\"} 2\nkonvert_uploads_waiting{held=\"file\"} 1\n"
            ),
            "{t}"
        );
        assert!(
            t.contains("konvert_uploads_waiting_bytes{held=\"file\"} 5242880\n"),
            "{t}"
        );
        assert!(
            !t.contains("konvert_store_free_bytes"),
            "absent when unknown: {t}"
        );
        assert!(!t.contains("konvert_last_sweep_timestamp_seconds"), "{t}");
        // Every sample line belongs to a family declared before it.
        let mut declared = std::collections::BTreeSet::new();
        for l in t.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                declared.insert(rest.split(' ').next().unwrap().to_owned());
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap();
                assert!(declared.contains(name), "{l}");
                let value = l.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "{l}");
            }
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
