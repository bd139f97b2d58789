//! The operator's routes in the client (`konvertctl audit`, `story`,
//! `retention`, `status`) and their text for people.

use std::fmt::Write as _;

use hyper::Method;
use konvert_envelope::model::{Id, Timestamp};

use super::{direction_text, fields, opt, Client, ClientError, Table};
use crate::api::ops::{
    AuditBreakView, AuditEntryView, AuditVerification, CasePurged, NodeStatus, RetentionReport, Story,
};
use crate::api::types::{HealthStatus, Page};

impl Client {
    /// `GET /v1/audit?from=&limit=`.
    pub async fn audit(
        &self,
        from: Option<u64>,
        limit: Option<u32>,
    ) -> Result<Page<AuditEntryView>, ClientError> {
        let mut q = Vec::new();
        if let Some(f) = from {
            q.push(format!("from={f}"));
        }
        if let Some(l) = limit {
            q.push(format!("limit={l}"));
        }
        let path = if q.is_empty() {
            "/v1/audit".to_owned()
        } else {
            format!("/v1/audit?{}", q.join("&"))
        };
        self.json(Method::GET, &path, None).await
    }

    /// `GET /v1/audit/verify`.
    pub async fn audit_verify(&self) -> Result<AuditVerification, ClientError> {
        self.json(Method::GET, "/v1/audit/verify", None).await
    }

    /// `GET /v1/messages/{id}/story`.
    pub async fn story(&self, id: Id) -> Result<Story, ClientError> {
        self.json(Method::GET, &format!("/v1/messages/{id}/story"), None)
            .await
    }

    /// `GET /v1/retention?by=&events=&ids=&bucket=`.
    pub async fn retention(
        &self,
        by_day: bool,
        events: Option<u32>,
        ids: bool,
        bucket: Option<Timestamp>,
    ) -> Result<RetentionReport, ClientError> {
        let mut path = format!("/v1/retention?by={}", if by_day { "day" } else { "hour" });
        if let Some(n) = events {
            let _ = write!(path, "&events={n}");
        }
        if ids {
            path.push_str("&ids=true");
        }
        if let Some(t) = bucket {
            let _ = write!(path, "&bucket={t}");
        }
        self.json(Method::GET, &path, None).await
    }

    /// `POST /v1/cases/{id}/purge`.
    pub async fn purge_case(&self, case: Id) -> Result<CasePurged, ClientError> {
        self.json(Method::POST, &format!("/v1/cases/{case}/purge"), None)
            .await
    }

    /// `GET /v1/status`.
    pub async fn node_status(&self) -> Result<NodeStatus, ClientError> {
        self.json(Method::GET, "/v1/status", None).await
    }
}

/// The audit table (`konvertctl audit list`).
pub fn audit_table(items: &[AuditEntryView]) -> String {
    let mut t = Table::new(&[
        "SEQ", "TIME", "EVENT", "MESSAGE", "CASE", "PEER", "DETAIL", "COUNT",
    ]);
    for e in items {
        t.row(vec![
            e.seq.to_string(),
            e.at.to_string(),
            e.kind.clone(),
            opt(e.message),
            opt(e.case),
            opt(e.peer.as_deref()),
            opt(e.detail.as_deref()),
            opt(e.count),
        ]);
    }
    t.render()
}

fn break_text(b: &AuditBreakView) -> String {
    format!("at entry {}: {} ({})", b.seq, b.kind, b.meaning)
}

/// The result of `konvertctl audit verify`.
pub fn audit_verify_text(v: &AuditVerification) -> String {
    let mut rows = Vec::new();
    match &v.broken {
        None => {
            rows.push(("chain", "intact".to_owned()));
            rows.push((
                "entries",
                format!("{} (from {} to {})", v.entries, v.first, v.end),
            ));
            rows.push(("head", v.head.clone()));
            if v.pruned {
                rows.push(("pruned", format!("yes: entries before {} expired", v.first)));
            }
        }
        Some(b) => rows.push(("chain", format!("BROKEN {}", break_text(b)))),
    }
    match &v.head_log {
        None => rows.push(("head log", "not configured".to_owned())),
        Some(h) => {
            let text = match (&h.error, &h.broken, h.seq) {
                (Some(e), _, _) => format!("UNREADABLE: {e}"),
                (None, Some(b), _) => format!("BROKEN {}", break_text(b)),
                (None, None, None) => "empty (nothing to check against yet)".to_owned(),
                (None, None, Some(seq)) if h.ok => format!("holds its last head (entry {seq})"),
                (None, None, Some(seq)) => {
                    format!("not checked against its last head (entry {seq}): the chain is broken")
                }
            };
            rows.push(("head log", text));
        }
    }
    rows.push(("result", if v.ok { "ok" } else { "FAILED" }.to_owned()));
    fields(&rows)
}

/// A message's story (`konvertctl story`).
pub fn story_text(s: &Story) -> String {
    let mut out = fields(&[
        ("id", s.id.to_string()),
        ("direction", direction_text(s.direction).to_owned()),
        ("peer", s.peer.to_string()),
        ("kind", s.kind.clone()),
        ("case", opt(s.case)),
        ("state", s.state.clone()),
        ("expires", s.expires.to_string()),
        ("destroyed", opt(s.destroyed)),
    ]);
    out.push('\n');
    let mut t = Table::new(&["TIME", "STEP", "SEQ", "DETAIL", "LINK"]);
    for st in &s.steps {
        t.row(vec![
            st.at.to_string(),
            st.step.clone(),
            opt(st.seq),
            opt(st.detail.as_deref()),
            st.link.clone(),
        ]);
    }
    out.push_str(&t.render());
    let _ = writeln!(
        out,
        "\n{} audit events read{}",
        s.events_read,
        if s.complete {
            ""
        } else {
            "; a window hit its bound, so a step may be missing (see the audit list around the times above)"
        }
    );
    for n in &s.notes {
        let _ = writeln!(out, "note: {n}");
    }
    out
}

/// The retention report (`konvertctl retention`).
pub fn retention_text(r: &RetentionReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Will be destroyed (live messages by end of retention, per {}; {} counted{}):",
        r.period,
        r.live,
        if r.live_complete { "" } else { ", not all" }
    );
    let mut t = Table::new(&["FROM", "OUTBOUND", "INBOUND"]);
    for b in &r.upcoming {
        t.row(vec![
            b.from.to_string(),
            b.outbound.to_string(),
            b.inbound.to_string(),
        ]);
    }
    out.push_str(&t.render());
    for b in &r.upcoming {
        if let Some(ids) = &b.ids {
            let _ = writeln!(
                out,
                "\nTo be destroyed in the period from {} ({} messages{}):",
                b.from,
                b.outbound + b.inbound,
                if b.ids_complete == Some(false) {
                    ", first ones listed"
                } else {
                    ""
                }
            );
            for m in ids {
                let _ = writeln!(out, "  {} {}", direction_text(m.direction), m.id);
            }
        }
    }
    let _ = writeln!(
        out,
        "\nKeys held: {} expiry hours, {} cases",
        r.key_hours, r.case_keys
    );
    let s = &r.sweeper;
    let _ = writeln!(
        out,
        "Sweeper since start: {} sweeps, {} destroyed, {} purged, {} keys destroyed, {} audit entries pruned, {} failures, last {}",
        s.sweeps,
        s.destroyed,
        s.purged,
        s.keys_destroyed,
        s.audit_pruned,
        s.failures,
        opt(s.last_sweep)
    );
    let _ = writeln!(
        out,
        "\nWas destroyed (audit trail, newest first; {} events read{}):",
        r.events_read,
        if r.complete { "" } else { ", the newest part only" }
    );
    let mut t = Table::new(&["SEQ", "TIME", "REASON", "CASE", "PEER", "COUNT", "IDS SHA-256"]);
    for d in &r.destroyed {
        t.row(vec![
            d.seq.to_string(),
            d.at.to_string(),
            d.reason.clone(),
            opt(d.case),
            opt(d.peer.as_deref()),
            d.count.to_string(),
            opt(d.ids_digest.as_deref()),
        ]);
    }
    out.push_str(&t.render());
    for d in &r.destroyed {
        match &d.ids {
            Some(ids) => {
                let _ = writeln!(out, "\nDestroyed by event {} ({}):", d.seq, d.at);
                for m in ids {
                    let _ = writeln!(out, "  {} {}", direction_text(m.direction), m.id);
                }
            }
            None if !d.ids_recorded && r.destroyed.iter().any(|e| e.ids.is_some()) => {
                let _ = writeln!(
                    out,
                    "\nEvent {} records no ids (written before ids were recorded): {} messages, ids SHA-256 {}",
                    d.seq,
                    d.count,
                    opt(d.ids_digest.as_deref())
                );
            }
            None => {}
        }
    }
    out
}

fn health_word(h: HealthStatus) -> &'static str {
    match h {
        HealthStatus::Ok => "ok",
        HealthStatus::Degraded => "degraded",
        HealthStatus::Unavailable => "unavailable",
    }
}

fn bytes_text(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The node's status (`konvertctl status` without an id).
pub fn node_status_text(s: &NodeStatus) -> String {
    let mut out = fields(&[
        ("authority", s.authority.to_string()),
        ("health", health_word(s.health).to_owned()),
        ("version", s.version.clone()),
        ("now", s.now.to_string()),
        ("uptime", format!("{} s", s.uptime_seconds)),
        ("outbox undelivered", s.outbox_undelivered.to_string()),
        ("outbox failed", s.outbox_failed.to_string()),
        ("inbox unacknowledged", s.inbox_unacknowledged.to_string()),
        ("cases overdue", s.cases_overdue.to_string()),
        (
            "uploads waiting",
            format!(
                "{} in memory ({}), {} in files ({})",
                s.uploads.in_memory,
                bytes_text(s.uploads.in_memory_bytes),
                s.uploads.files,
                bytes_text(s.uploads.file_bytes)
            ),
        ),
        ("store size", bytes_text(s.store_bytes)),
        (
            "free space",
            s.free_bytes.map_or_else(|| "-".to_owned(), bytes_text),
        ),
        (
            "last sweep",
            format!(
                "{} ({} destroyed since start, {} failures)",
                opt(s.sweeper.last_sweep),
                s.sweeper.destroyed,
                s.sweeper.failures
            ),
        ),
    ]);
    if s.truncated {
        out.push_str("(some counts stopped at 100000 and are lower bounds)\n");
    }
    out.push_str("\nPeers:\n");
    out.push_str(&super::peers_table(&s.peers));
    if !s.overdue.is_empty() {
        out.push_str("\nOverdue cases:\n");
        let mut t = Table::new(&["CASE", "PEER", "STATE", "DEADLINE"]);
        for c in &s.overdue {
            t.row(vec![
                c.case.to_string(),
                c.peer.clone(),
                c.state.clone(),
                c.deadline.to_string(),
            ]);
        }
        out.push_str(&t.render());
    }
    out.push_str("\nKeys:\n");
    let mut t = Table::new(&["KEY", "FILE", "AGE (DAYS)", "NOT AFTER", "PROBLEM"]);
    for k in &s.keys {
        t.row(vec![
            k.what.clone(),
            k.file.clone(),
            opt(k.age_days),
            opt(k.not_after),
            opt(k.error.as_deref()),
        ]);
    }
    out.push_str(&t.render());
    out
}

/// The result of `konvertctl retention purge`.
pub fn purged_text(p: &CasePurged) -> String {
    if p.destroyed == 0 {
        format!(
            "case {}: nothing left to destroy (destroyed before, or no messages)\n",
            p.case
        )
    } else {
        format!("case {}: {} message(s) destroyed\n", p.case, p.destroyed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::api::ops::{HeadLogCheck, RetentionBucket, StoryStep, SweeperTotals};
    use crate::api::types::Direction;
    use konvert_envelope::model::{AuthorityId, Timestamp};

    fn verification() -> AuditVerification {
        AuditVerification {
            ok: true,
            entries: 10,
            first: 0,
            end: 10,
            head: "ab".repeat(32),
            pruned: false,
            broken: None,
            head_log: None,
        }
    }

    #[test]
    fn a_broken_chain_says_where_and_how() {
        let mut v = verification();
        v.ok = false;
        v.broken = Some(crate::daemon::operator::break_view(
            7,
            konvert_store::BreakKind::Deleted,
        ));
        let t = audit_verify_text(&v);
        assert!(t.contains("BROKEN at entry 7: deleted"), "{t}");
        assert!(t.contains("FAILED"), "{t}");
        let t = audit_verify_text(&verification());
        assert!(
            t.contains("intact") && t.contains("result:") && t.contains("ok"),
            "{t}"
        );
        assert!(t.contains("not configured"), "{t}");
    }

    #[test]
    fn a_truncation_against_the_head_log_is_named() {
        let mut v = verification();
        v.ok = false;
        v.head_log = Some(HeadLogCheck {
            seq: Some(12),
            hash: Some("cd".repeat(32)),
            ok: false,
            broken: Some(crate::daemon::operator::break_view(
                10,
                konvert_store::BreakKind::Truncated,
            )),
            error: None,
        });
        let t = audit_verify_text(&v);
        assert!(
            t.contains("head log:") && t.contains("BROKEN at entry 10: truncated"),
            "{t}"
        );
    }

    #[test]
    fn story_and_retention_render_every_row() {
        let s = Story {
            id: "01890a5d-ac96-774b-bcce-b302099a8057".parse().unwrap(),
            direction: Direction::Outbound,
            peer: AuthorityId::new("by.mvd".to_owned()).unwrap(),
            kind: "request".into(),
            case: None,
            state: "delivered".into(),
            expires: Timestamp::from_unix(86_400),
            destroyed: None,
            steps: vec![
                StoryStep {
                    at: Timestamp::from_unix(10),
                    step: "accepted".into(),
                    seq: Some(3),
                    detail: None,
                    digest: None,
                    link: "message".into(),
                },
                StoryStep {
                    at: Timestamp::from_unix(12),
                    step: "delivered".into(),
                    seq: Some(9),
                    detail: Some("accepted".into()),
                    digest: None,
                    link: "message".into(),
                },
            ],
            events_read: 42,
            complete: false,
            notes: vec![],
        };
        let t = story_text(&s);
        let lines: Vec<&str> = t.lines().filter(|l| l.contains("1970-01-01T00:00:1")).collect();
        assert_eq!(lines.len(), 2, "{t}");
        assert!(
            lines[1].contains("delivered") && lines[1].contains("accepted"),
            "{t}"
        );
        assert!(t.contains("42 audit events read; a window hit its bound"), "{t}");
        let r = RetentionReport {
            now: Timestamp::from_unix(0),
            period: "day".into(),
            upcoming: vec![RetentionBucket {
                from: Timestamp::from_unix(86_400),
                outbound: 3,
                inbound: 4,
                ids: None,
                ids_complete: None,
            }],
            live: 7,
            live_complete: true,
            key_hours: 2,
            case_keys: 1,
            sweeper: SweeperTotals::default(),
            destroyed: vec![],
            events_read: 5,
            complete: true,
        };
        let t = retention_text(&r);
        assert!(t.contains("per day; 7 counted)"), "{t}");
        assert!(
            t.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["1970-01-02T00:00:00Z", "3", "4"]),
            "{t}"
        );
    }

    #[test]
    fn sizes_are_readable() {
        assert_eq!(bytes_text(512), "512 B");
        assert_eq!(bytes_text(1536), "1.5 KiB");
        assert_eq!(bytes_text(3 << 30), "3.0 GiB");
    }
}
