//! The operator's view of a running gateway: the audit trail and its
//! verification, a message's story, the retention report, early
//! destruction of a case, and the node's status (which the metrics
//! endpoint exposes too). Read-only on the store except
//! [`purge_case`]; everything returned is metadata (ids, times, peers,
//! counts, codes, digests).
//!
//! Costs (the store has no index of audit events by message):
//! - a **story** reads the message's record, then for each time its record
//!   holds (created, sent, delivered, acknowledged, last change) finds that
//!   second in the audit trail by binary search over sequence numbers
//!   (`audit_list(seq, 1)`, one block read per probe, about 2·log2(N)
//!   probes) and reads the events of a window of ±[`STORY_SLACK`] seconds
//!   around it, at most [`STORY_WINDOW_CAP`] events per window; the
//!   destruction of its expiry hour's key is found the same way, from the
//!   end of that hour forward. So a story costs O(log N + events in its
//!   windows), independent of the trail's length; the answer says how many
//!   events it read and whether a window hit its bound.
//! - the **retention report** counts live messages by expiry from the
//!   state index (at most [`RETENTION_SCAN`] records) and reads the newest
//!   [`RETENTION_AUDIT_SCAN`] audit events for destruction events.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;

use konvert_envelope::model::{AuthorityId, Id, Timestamp};
use konvert_store::{
    AuditEntry, AuditKind, BreakKind, CaseId, Direction as StoreDirection, MessageId, MessageMeta,
    MessageState as StoreState,
};

use super::Node;
use crate::api::ops::{
    AuditBreakView, AuditEntryView, AuditVerification, CasePurged, DestroyedEvent, HeadLogCheck, KeyFileView,
    MessageRef, NodeStatus, OverdueCase, RetentionBucket, RetentionQuery, RetentionReport, Story, StoryStep,
    SweeperTotals, RETENTION_BUCKET_IDS,
};
use crate::api::types::{Direction, HealthStatus, Page, PeerView};
use crate::api::Problem;

/// Seconds around a recorded time in which a story looks for its events.
pub const STORY_SLACK: i64 = 2;
/// Most audit events a story reads per window.
pub const STORY_WINDOW_CAP: u64 = 20_000;
/// Most live message records the retention report reads.
pub const RETENTION_SCAN: u64 = 1_000_000;
/// Most audit events (the newest) the retention report reads.
pub const RETENTION_AUDIT_SCAN: u64 = 200_000;
/// Audit events read per store call when scanning.
const AUDIT_PAGE: usize = 512;

fn store_problem(e: konvert_store::Error) -> Problem {
    match e {
        konvert_store::Error::NotFound { .. } => Problem::not_found("message"),
        other => {
            tracing::error!(error = %other, "store error");
            Problem::internal()
        }
    }
}

fn ts(secs: i64) -> Timestamp {
    Timestamp::from_unix(secs)
}

/// The stable name of an audit event kind.
pub fn kind_name(k: AuditKind) -> &'static str {
    match k {
        AuditKind::Accepted => "accepted",
        AuditKind::Sealed => "sealed",
        AuditKind::Sent => "sent",
        AuditKind::Delivered => "delivered",
        AuditKind::Failed => "failed",
        AuditKind::Received => "received",
        AuditKind::Acknowledged => "acknowledged",
        AuditKind::CaseOpened => "case_opened",
        AuditKind::CaseStateChanged => "case_state_changed",
        AuditKind::Destroyed => "destroyed",
        AuditKind::Purged => "purged",
        AuditKind::KeyCreated => "key_created",
        AuditKind::KeyDestroyed => "key_destroyed",
        AuditKind::ConfigChanged => "config_changed",
        AuditKind::Opened => "opened",
        AuditKind::AuditPruned => "audit_pruned",
        AuditKind::MasterKeyRotated => "master_key_rotated",
        AuditKind::ReceiptIssued => "receipt_issued",
        _ => "other",
    }
}

/// The stable name of a break kind and what it means.
pub fn break_view(seq: u64, kind: BreakKind) -> AuditBreakView {
    let (k, meaning) = match kind {
        BreakKind::Modified => (
            "modified",
            "a block's content does not match its hash, or a block was rewritten",
        ),
        BreakKind::Deleted => ("deleted", "events are missing before this position"),
        BreakKind::Inserted => ("inserted", "a block was inserted that is not part of the chain"),
        BreakKind::Reordered => ("reordered", "blocks are out of order here"),
        BreakKind::Anchor => (
            "anchor",
            "the pruning anchor does not match the chain (where the chain starts after pruning)",
        ),
        BreakKind::Truncated => (
            "truncated",
            "the chain ends before a head saved earlier: its newest events were removed",
        ),
    };
    AuditBreakView {
        seq,
        kind: k.to_owned(),
        meaning: meaning.to_owned(),
    }
}

/// An audit entry as the API shows it.
pub fn entry_view(e: &AuditEntry) -> AuditEntryView {
    AuditEntryView {
        seq: e.seq,
        at: ts(e.at),
        kind: kind_name(e.event.kind).to_owned(),
        message: e.event.message.map(|m| Id::from_bytes(m.0)),
        case: e.event.case.map(|c| Id::from_bytes(c.0)),
        peer: e.event.peer.clone(),
        detail: e.event.detail.clone(),
        count: e.event.count,
        digest: e.event.digest.map(hex::encode),
        block: hex::encode(e.hash),
    }
}

/// `GET /v1/audit`: events from `from`, at most `limit`; `next` is the
/// sequence number to continue from.
pub fn audit_page(node: &Node, from: u64, limit: u32) -> Result<Page<AuditEntryView>, Problem> {
    let entries = node
        .store
        .audit_list(from, limit as usize)
        .map_err(store_problem)?;
    let next = if entries.len() >= limit as usize {
        entries.last().map(|e| (e.seq + 1).to_string())
    } else {
        None
    };
    Ok(Page {
        items: entries.iter().map(entry_view).collect(),
        next,
    })
}

/// `GET /v1/audit/verify`: the chain, then (if configured) the head log.
pub fn audit_verify(node: &Node) -> Result<AuditVerification, Problem> {
    let mut v = match node.store.audit_verify() {
        Ok(c) => AuditVerification {
            ok: true,
            entries: c.entries,
            first: c.first,
            end: c.end,
            head: hex::encode(c.head),
            pruned: c.anchor.is_some(),
            broken: None,
            head_log: None,
        },
        Err(konvert_store::Error::AuditBroken(b)) => AuditVerification {
            ok: false,
            entries: 0,
            first: 0,
            end: 0,
            head: String::new(),
            pruned: false,
            broken: Some(break_view(b.index, b.kind)),
            head_log: None,
        },
        Err(e) => return Err(store_problem(e)),
    };
    if let Some(log) = &node.config.store.audit_head_log {
        let check = match konvert_store::last_audit_head(log) {
            Err(e) => HeadLogCheck {
                seq: None,
                hash: None,
                ok: false,
                broken: None,
                error: Some(e.to_string()),
            },
            Ok(None) => HeadLogCheck {
                seq: None,
                hash: None,
                ok: true,
                broken: None,
                error: None,
            },
            Ok(Some(h)) => {
                let (ok, broken) = if v.broken.is_some() {
                    // The chain itself is broken; the head cannot be judged.
                    (false, None)
                } else {
                    match node.store.audit_verify_against(&h) {
                        Ok(_) => (true, None),
                        Err(konvert_store::Error::AuditBroken(b)) => {
                            (false, Some(break_view(b.index, b.kind)))
                        }
                        Err(e) => return Err(store_problem(e)),
                    }
                };
                HeadLogCheck {
                    seq: Some(h.seq),
                    hash: Some(hex::encode(h.hash)),
                    ok,
                    broken,
                    error: None,
                }
            }
        };
        v.ok &= check.ok;
        v.head_log = Some(check);
    }
    if !v.ok {
        tracing::error!(
            broken = ?v.broken.as_ref().map(|b| (b.seq, b.kind.clone())),
            head_log = ?v.head_log.as_ref().and_then(|h| h.broken.as_ref()).map(|b| (b.seq, b.kind.clone())),
            "audit verification failed"
        );
    }
    Ok(v)
}

/// Reads the audit trail by position and by time (see the module's costs).
pub(crate) trait AuditSource {
    /// Events from `from` (the first at or after it), at most `limit`.
    fn list(&self, from: u64, limit: usize) -> Result<Vec<AuditEntry>, konvert_store::Error>;
}

impl AuditSource for konvert_store::Store {
    fn list(&self, from: u64, limit: usize) -> Result<Vec<AuditEntry>, konvert_store::Error> {
        self.audit_list(from, limit)
    }
}

/// A cursor over an audit source that counts what it reads.
pub(crate) struct Trail<'a, A: AuditSource + ?Sized> {
    src: &'a A,
    /// Events read so far.
    pub read: u64,
    bounds: Option<(u64, u64)>,
}

impl<'a, A: AuditSource + ?Sized> Trail<'a, A> {
    pub(crate) fn new(src: &'a A) -> Self {
        Self {
            src,
            read: 0,
            bounds: None,
        }
    }

    fn at(&mut self, seq: u64) -> Result<Option<AuditEntry>, konvert_store::Error> {
        let e = self.src.list(seq, 1)?.into_iter().next();
        self.read += u64::from(e.is_some());
        Ok(e)
    }

    /// `(first, end)`: the first sequence number kept and the one after the
    /// last, found by exponential then binary search.
    pub(crate) fn bounds(&mut self) -> Result<(u64, u64), konvert_store::Error> {
        if let Some(b) = self.bounds {
            return Ok(b);
        }
        let Some(first) = self.at(0)?.map(|e| e.seq) else {
            self.bounds = Some((0, 0));
            return Ok((0, 0));
        };
        // `lo` exists; find some `hi` that does not.
        let (mut lo, mut step) = (first, 1u64);
        let mut hi = loop {
            let probe = lo.saturating_add(step);
            match self.at(probe)? {
                Some(e) => {
                    lo = e.seq;
                    step = step.saturating_mul(2);
                }
                None => break probe,
            }
        };
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            match self.at(mid)? {
                Some(e) if e.seq < hi => lo = e.seq,
                _ => hi = mid,
            }
        }
        self.bounds = Some((first, lo + 1));
        Ok((first, lo + 1))
    }

    /// The first sequence number whose event is at or after `t` (`end` if
    /// none). Times in the trail are non-decreasing up to the slack the
    /// callers allow for.
    pub(crate) fn first_at_or_after(&mut self, t: i64) -> Result<u64, konvert_store::Error> {
        let (first, end) = self.bounds()?;
        let (mut lo, mut hi) = (first, end);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.at(mid)? {
                Some(e) if e.at < t => lo = e.seq + 1,
                Some(_) => hi = mid,
                None => hi = mid,
            }
        }
        Ok(lo)
    }

    /// Calls `f` for each event from `from` while its time is at most
    /// `until` and `f` returns true, reading at most `cap` events; returns
    /// `true` if it stopped before the cap.
    pub(crate) fn scan(
        &mut self,
        from: u64,
        until: i64,
        cap: u64,
        mut f: impl FnMut(&AuditEntry) -> bool,
    ) -> Result<bool, konvert_store::Error> {
        let mut next = from;
        let mut n = 0u64;
        loop {
            let page = self.src.list(next, AUDIT_PAGE)?;
            if page.is_empty() {
                return Ok(true);
            }
            for e in &page {
                if e.at > until + STORY_SLACK {
                    return Ok(true);
                }
                n += 1;
                self.read += 1;
                if !f(e) {
                    return Ok(true);
                }
                if n >= cap {
                    return Ok(false);
                }
                next = e.seq + 1;
            }
        }
    }
}

/// What a story needs to know of a message, from its record (and its case's).
#[derive(Clone, Debug)]
pub(crate) struct StoryFacts {
    pub id: MessageId,
    pub case: Option<CaseId>,
    /// Times its record holds.
    pub times: Vec<i64>,
    /// Its expiry hour, if the hour has ended by `now` (its key is gone or due).
    pub key_hour_ended: Option<i64>,
    /// When its case was destroyed, if it was.
    pub case_destroyed: Option<i64>,
}

fn step_name(k: AuditKind) -> Option<&'static str> {
    match k {
        AuditKind::Accepted
        | AuditKind::Sealed
        | AuditKind::Sent
        | AuditKind::Delivered
        | AuditKind::Failed
        | AuditKind::Received
        | AuditKind::ReceiptIssued
        | AuditKind::Acknowledged
        | AuditKind::Destroyed
        | AuditKind::Purged
        | AuditKind::KeyDestroyed => Some(kind_name(k)),
        _ => None,
    }
}

fn step_of(e: &AuditEntry, link: &str) -> Option<StoryStep> {
    Some(StoryStep {
        at: ts(e.at),
        step: step_name(e.event.kind)?.to_owned(),
        seq: Some(e.seq),
        detail: e.event.detail.clone(),
        digest: e.event.digest.map(hex::encode),
        link: link.to_owned(),
    })
}

/// The steps of a message's story from the audit trail, found by time
/// windows (see the module's costs); returns (steps, complete).
pub(crate) fn story_steps<A: AuditSource + ?Sized>(
    trail: &mut Trail<'_, A>,
    f: &StoryFacts,
) -> Result<(Vec<StoryStep>, bool), konvert_store::Error> {
    let mut steps: BTreeMap<u64, StoryStep> = BTreeMap::new();
    let mut complete = true;
    // Merge the windows around each recorded time.
    let mut times = f.times.clone();
    if let Some(t) = f.case_destroyed {
        times.push(t);
    }
    times.sort_unstable();
    let mut windows: Vec<(i64, i64)> = Vec::new();
    for t in times {
        match windows.last_mut() {
            Some((_, hi)) if t - STORY_SLACK <= *hi => *hi = (*hi).max(t + STORY_SLACK),
            _ => windows.push((t - STORY_SLACK, t + STORY_SLACK)),
        }
    }
    for (lo, hi) in windows {
        let from = trail.first_at_or_after(lo)?;
        complete &= trail.scan(from, hi - STORY_SLACK, STORY_WINDOW_CAP, |e| {
            let ev = &e.event;
            if ev.message == Some(f.id) {
                if let Some(s) = step_of(e, "message") {
                    steps.insert(e.seq, s);
                }
            } else if f.case.is_some()
                && ev.case == f.case
                && matches!(ev.kind, AuditKind::Destroyed | AuditKind::KeyDestroyed)
            {
                if let Some(s) = step_of(e, "case") {
                    steps.insert(e.seq, s);
                }
            }
            true
        })?;
    }
    // The destruction of its expiry hour's key: the first sweep after the
    // hour's end (or the next start of the daemon) destroys it.
    if let Some(hour) = f.key_hour_ended {
        let end = hour.saturating_add(1).saturating_mul(3600);
        let from = trail.first_at_or_after(end - STORY_SLACK)?;
        let mut found = false;
        let stopped = trail.scan(from, i64::MAX - STORY_SLACK, STORY_WINDOW_CAP, |e| {
            let ev = &e.event;
            if ev.kind == AuditKind::KeyDestroyed
                && ev.detail.as_deref() == Some("expiry-bucket")
                && ev.count == u64::try_from(hour).ok()
            {
                if let Some(s) = step_of(e, "key_hour") {
                    steps.insert(e.seq, s);
                }
                found = true;
                return false;
            }
            true
        })?;
        complete &= stopped || found;
    }
    Ok((steps.into_values().collect(), complete))
}

/// `GET /v1/messages/{id}/story`.
pub fn story(node: &Node, id: Id) -> Result<Story, Problem> {
    let key = MessageId(*id.as_bytes());
    let (meta, direction) = match node.store.meta(StoreDirection::Outbound, &key) {
        Ok(m) => (m, Direction::Outbound),
        Err(konvert_store::Error::NotFound { .. }) => (
            node.store
                .meta(StoreDirection::Inbound, &key)
                .map_err(store_problem)?,
            Direction::Inbound,
        ),
        Err(e) => return Err(store_problem(e)),
    };
    let now = node.now().as_unix();
    let case_destroyed = match meta.case {
        Some(c) => match node.store.case_get(&c) {
            Ok(info) => info.destroyed_at,
            Err(konvert_store::Error::NotFound { .. }) => None,
            Err(e) => return Err(store_problem(e)),
        },
        None => None,
    };
    let facts = story_facts(&meta, now, case_destroyed);
    let mut trail = Trail::new(&*node.store);
    let (mut steps, complete) = story_steps(&mut trail, &facts).map_err(store_problem)?;
    let mut notes = Vec::new();
    if let Some(d) = meta.destroyed_at {
        if !steps
            .iter()
            .any(|s| matches!(s.step.as_str(), "destroyed" | "key_destroyed"))
        {
            steps.push(StoryStep {
                at: ts(d),
                step: "destroyed".into(),
                seq: None,
                detail: None,
                digest: None,
                link: "metadata".into(),
            });
        }
        notes.push(
            "a destruction by expiry is recorded per sweep step (count and SHA-256 of the ids \
             destroyed), not per message; the story shows the destruction of the message's \
             expiry-hour key (link key_hour), which is what made it unreadable"
                .into(),
        );
    }
    Ok(Story {
        id,
        direction,
        peer: AuthorityId::new(meta.peer.clone()).map_err(|_| Problem::internal())?,
        kind: meta.kind.clone(),
        case: meta.case.map(|c| Id::from_bytes(c.0)),
        state: meta.state.as_str().to_owned(),
        expires: ts(meta.expires_at),
        destroyed: meta.destroyed_at.map(ts),
        steps,
        events_read: trail.read,
        complete,
        notes,
    })
}

pub(crate) fn story_facts(meta: &MessageMeta, now: i64, case_destroyed: Option<i64>) -> StoryFacts {
    let mut times = vec![meta.created_at, meta.updated_at];
    times.extend(
        [
            meta.sent_at,
            meta.delivered_at,
            meta.acknowledged_at,
            meta.last_attempt_at,
            meta.destroyed_at,
        ]
        .into_iter()
        .flatten(),
    );
    let hour = meta.expires_at.div_euclid(3600);
    StoryFacts {
        id: meta.id,
        case: meta.case,
        times,
        key_hour_ended: (hour.saturating_add(1).saturating_mul(3600) <= now).then_some(hour),
        case_destroyed,
    }
}

/// Counts live messages by the start of their expiry period (`period_secs`
/// 3600 or 86400), soonest first.
#[cfg(test)]
pub(crate) fn bucket_counts(
    expiries: impl IntoIterator<Item = (Direction, i64)>,
    period_secs: i64,
) -> Vec<RetentionBucket> {
    bucket_ids(
        expiries.into_iter().map(|(d, t)| (d, t, None)),
        period_secs,
        false,
    )
}

/// Buckets of `(direction, expiry, id)`; with `list`, each bucket's ids
/// (soonest expiry first, then by id; at most [`RETENTION_BUCKET_IDS`]).
pub(crate) fn bucket_ids(
    expiries: impl IntoIterator<Item = (Direction, i64, Option<Id>)>,
    period_secs: i64,
    list: bool,
) -> Vec<RetentionBucket> {
    type Bucket = (u64, u64, Vec<(i64, Id, Direction)>);
    let mut by: BTreeMap<i64, Bucket> = BTreeMap::new();
    for (d, t, id) in expiries {
        let e = by.entry(t.div_euclid(period_secs) * period_secs).or_default();
        match d {
            Direction::Outbound => e.0 += 1,
            Direction::Inbound => e.1 += 1,
        }
        if let (true, Some(id)) = (list, id) {
            e.2.push((t, id, d));
        }
    }
    by.into_iter()
        .map(|(from, (outbound, inbound, mut ids))| {
            let (ids, ids_complete) = if list {
                ids.sort_by_key(|(t, id, _)| (*t, *id.as_bytes()));
                let complete = ids.len() <= RETENTION_BUCKET_IDS;
                ids.truncate(RETENTION_BUCKET_IDS);
                let refs = ids
                    .into_iter()
                    .map(|(_, id, direction)| MessageRef { direction, id })
                    .collect();
                (Some(refs), Some(complete))
            } else {
                (None, None)
            };
            RetentionBucket {
                from: ts(from),
                outbound,
                inbound,
                ids,
                ids_complete,
            }
        })
        .collect()
}

fn message_ref(d: StoreDirection, m: &MessageId) -> MessageRef {
    MessageRef {
        direction: match d {
            StoreDirection::Outbound => Direction::Outbound,
            StoreDirection::Inbound => Direction::Inbound,
        },
        id: Id::from_bytes(m.0),
    }
}

const LIVE_STATES: [(StoreDirection, StoreState); 6] = [
    (StoreDirection::Outbound, StoreState::Queued),
    (StoreDirection::Outbound, StoreState::Sent),
    (StoreDirection::Outbound, StoreState::Delivered),
    (StoreDirection::Outbound, StoreState::Failed),
    (StoreDirection::Inbound, StoreState::New),
    (StoreDirection::Inbound, StoreState::Acknowledged),
];

/// Sweeper totals as the API shows them.
pub fn sweeper_totals(node: &Node) -> SweeperTotals {
    let s = &node.sweeps;
    SweeperTotals {
        sweeps: s.sweeps.load(Ordering::Relaxed),
        destroyed: s.destroyed.load(Ordering::Relaxed),
        purged: s.purged.load(Ordering::Relaxed),
        keys_destroyed: s.keys_destroyed.load(Ordering::Relaxed),
        audit_pruned: s.audit_pruned.load(Ordering::Relaxed),
        failures: s.failures.load(Ordering::Relaxed),
        last_sweep: super::retention::last_sweep(s),
    }
}

/// `GET /v1/retention`: `day` or `hour` periods; at most `q.events`
/// destruction events; with `q.ids` the ids of each upcoming bucket and of
/// each destruction event (where it records them); with `q.bucket` only
/// the bucket holding that time.
pub fn retention_report(node: &Node, q: &RetentionQuery) -> Result<RetentionReport, Problem> {
    let by_day = q.by_day;
    let list_ids = q.ids || q.bucket.is_some();
    let mut expiries = Vec::new();
    let mut scanned = 0u64;
    let mut complete = true;
    'states: for (dir, state) in LIVE_STATES {
        let mut after: Option<MessageId> = None;
        loop {
            let page = node
                .store
                .list_by_state(dir, state, after.as_ref(), 10_000)
                .map_err(store_problem)?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            for m in &page {
                let d = match dir {
                    StoreDirection::Outbound => Direction::Outbound,
                    StoreDirection::Inbound => Direction::Inbound,
                };
                expiries.push((d, m.expires_at, list_ids.then_some(Id::from_bytes(m.id.0))));
            }
            scanned += page.len() as u64;
            if scanned >= RETENTION_SCAN {
                complete = false;
                break 'states;
            }
            if page.len() < 10_000 {
                break;
            }
        }
    }
    let period = if by_day { 86_400 } else { 3_600 };
    let keyring = node.store.keyring_summary();
    let mut trail = Trail::new(&*node.store);
    let (first, end) = trail.bounds().map_err(store_problem)?;
    let from = end.saturating_sub(RETENTION_AUDIT_SCAN).max(first);
    // Oldest first; only the newest `q.events` are kept (with their ids).
    let mut destroyed = std::collections::VecDeque::new();
    trail
        .scan(from, i64::MAX - STORY_SLACK, RETENTION_AUDIT_SCAN, |e| {
            if e.event.kind == AuditKind::Destroyed && q.events > 0 {
                if destroyed.len() >= q.events as usize {
                    destroyed.pop_front();
                }
                let ids_recorded = !e.event.ids.is_empty();
                destroyed.push_back(DestroyedEvent {
                    ids_recorded,
                    ids: (list_ids && ids_recorded)
                        .then(|| e.event.ids.iter().map(|(d, m)| message_ref(*d, m)).collect()),
                    seq: e.seq,
                    at: ts(e.at),
                    reason: e.event.detail.clone().unwrap_or_default(),
                    case: e.event.case.map(|c| Id::from_bytes(c.0)),
                    peer: e.event.peer.clone(),
                    count: e.event.count.unwrap_or(0),
                    ids_digest: e.event.digest.map(hex::encode),
                });
            }
            true
        })
        .map_err(store_problem)?;
    let destroyed: Vec<DestroyedEvent> = destroyed.into_iter().rev().collect();
    let mut upcoming = bucket_ids(expiries, period, list_ids);
    if let Some(t) = q.bucket {
        let start = t.as_unix().div_euclid(period) * period;
        upcoming.retain(|b| b.from.as_unix() == start);
    }
    Ok(RetentionReport {
        now: node.now(),
        period: if by_day { "day" } else { "hour" }.into(),
        upcoming,
        live: scanned,
        live_complete: complete,
        key_hours: keyring.bucket_hours.len() as u64,
        case_keys: keyring.cases.len() as u64,
        sweeper: sweeper_totals(node),
        destroyed,
        events_read: trail.read,
        complete: from == first,
    })
}

/// `POST /v1/cases/{id}/purge`: destroys the case's key and marks its messages destroyed.
pub fn purge_case(node: &Node, id: Id) -> Result<CasePurged, Problem> {
    purge_case_in(&node.store, id)
}

fn purge_case_in(store: &konvert_store::Store, id: Id) -> Result<CasePurged, Problem> {
    let case = CaseId(*id.as_bytes());
    let destroyed = match store.destroy_case(&case) {
        Ok(n) => n,
        Err(konvert_store::Error::NotFound { .. }) => return Err(Problem::not_found("case")),
        Err(e @ (konvert_store::Error::Poisoned | konvert_store::Error::Locked { .. })) => {
            tracing::error!(error = %e, "store unavailable");
            return Err(Problem::unavailable(
                "the store cannot accept writes; see the daemon's log",
            ));
        }
        Err(e) => return Err(store_problem(e)),
    };
    tracing::info!(case = %id, destroyed, "case purged early");
    Ok(CasePurged { case: id, destroyed })
}

/// Bytes a directory tree takes on disk (allocated blocks), without following links.
pub fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0u64;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        total = total.saturating_add(md.blocks().saturating_mul(512));
        if md.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
    total
}

/// The key files of the keys directory, their ages, and the certificate's end of validity.
pub fn key_files(keys_dir: &Path, now: i64) -> Vec<KeyFileView> {
    let files = [
        ("node_signing_key", crate::offline::NODE_KEY_FILE),
        ("age_identity", crate::offline::AGE_KEY_FILE),
        ("tls_key", crate::init::TLS_KEY_FILE),
        ("tls_certificate", crate::init::TLS_CERT_FILE),
    ];
    files
        .iter()
        .map(|(what, file)| {
            let path = keys_dir.join(file);
            let mut v = KeyFileView {
                what: (*what).to_owned(),
                file: (*file).to_owned(),
                modified: None,
                age_days: None,
                not_after: None,
                error: None,
            };
            match std::fs::metadata(&path).and_then(|m| m.modified()) {
                Ok(t) => {
                    let secs = t
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
                    v.modified = Some(ts(secs));
                    v.age_days = u64::try_from(now.saturating_sub(secs) / 86_400).ok();
                }
                Err(e) => v.error = Some(format!("cannot read: {}", e.kind())),
            }
            if *what == "tls_certificate" && v.error.is_none() {
                match crate::files::read_limited(&path, 64 * 1024)
                    .map_err(|e| e.to_string())
                    .and_then(|pem| certificate_not_after(&pem))
                {
                    Ok(t) => v.not_after = Some(ts(t)),
                    Err(e) => v.error = Some(e),
                }
            }
            v
        })
        .collect()
}

/// Most overdue cases listed in the status.
const OVERDUE_LISTED: usize = 20;
/// Most overdue cases counted.
const OVERDUE_COUNTED: usize = 1000;

/// `GET /v1/status` from what the API's peers and health already computed.
pub fn node_status(node: &Node, peers: Vec<PeerView>, health: HealthStatus) -> Result<NodeStatus, Problem> {
    let scan = super::service::HEALTH_SCAN;
    let undelivered: u64 = peers.iter().map(|p| p.queue_depth).sum();
    let failed = node
        .store
        .list_by_state(StoreDirection::Outbound, StoreState::Failed, None, scan)
        .map_err(store_problem)?
        .len();
    let inbox = super::service::inbox_depth(node).map_err(store_problem)?;
    let overdue_cases = node.store.cases_overdue(OVERDUE_COUNTED).map_err(store_problem)?;
    let uploads = node.uploads.counts(scan);
    let now = node.now().as_unix();
    Ok(NodeStatus {
        authority: node.keys.authority.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        now: ts(now),
        uptime_seconds: node.started.elapsed().as_secs(),
        health,
        truncated: failed >= scan
            || inbox >= scan as u64
            || peers.iter().any(|p| p.queue_depth as usize >= scan)
            || uploads.truncated,
        peers,
        outbox_undelivered: undelivered,
        outbox_failed: failed as u64,
        inbox_unacknowledged: inbox,
        cases_overdue: overdue_cases.len() as u64,
        overdue: overdue_cases
            .iter()
            .take(OVERDUE_LISTED)
            .filter_map(|c| {
                Some(OverdueCase {
                    case: Id::from_bytes(c.id.0),
                    peer: c.peer.clone(),
                    state: c.state.clone(),
                    deadline: ts(c.deadline?),
                })
            })
            .collect(),
        store_bytes: disk_usage(&node.config.data_dir.join("store")),
        free_bytes: super::service::free_bytes(&node.config.data_dir),
        keys: key_files(&node.config.keys_dir, now),
        sweeper: sweeper_totals(node),
        uploads: crate::api::ops::UploadsView {
            in_memory: uploads.in_memory,
            in_memory_bytes: uploads.in_memory_bytes,
            files: uploads.files,
            file_bytes: uploads.file_bytes,
        },
    })
}

/// One DER element: (tag, contents, rest).
fn der_next(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&l0, rest) = rest.split_first()?;
    let (len, rest) = if l0 < 0x80 {
        (usize::from(l0), rest)
    } else {
        let n = usize::from(l0 & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, x| (a << 8) | usize::from(*x));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// A DER UTCTime (tag 0x17) or GeneralizedTime (0x18) in UTC as unix seconds.
fn der_time(tag: u8, v: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(v).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 => {
            let yy: i16 = s.get(..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, s.get(2..)?)
        }
        0x18 => (s.get(..4)?.parse().ok()?, s.get(4..)?),
        _ => return None,
    };
    if rest.len() != 10 || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = |i: usize| rest.get(i..i + 2).and_then(|x| x.parse::<i8>().ok());
    let dt = jiff::civil::DateTime::new(year, n(0)?, n(2)?, n(4)?, n(6)?, n(8)?, 0).ok()?;
    Some(dt.to_zoned(jiff::tz::TimeZone::UTC).ok()?.timestamp().as_second())
}

/// The end of validity (`notAfter`, unix seconds) of a PEM certificate.
pub fn certificate_not_after(pem: &[u8]) -> Result<i64, String> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem)
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    let bad = || "the certificate's validity cannot be read".to_owned();
    let (_, cert, _) = der_next(&der).ok_or_else(bad)?;
    let (_, tbs, _) = der_next(cert).ok_or_else(bad)?;
    // [0] version (optional), serial, signature algorithm, issuer, validity.
    let (tag, _, mut next) = der_next(tbs).ok_or_else(bad)?;
    if tag == 0xa0 {
        (_, _, next) = der_next(next).ok_or_else(bad)?; // serial
    }
    let (_, _, next) = der_next(next).ok_or_else(bad)?; // signature algorithm
    let (_, _, next) = der_next(next).ok_or_else(bad)?; // issuer
    let (vtag, validity, _) = der_next(next).ok_or_else(bad)?;
    if vtag != 0x30 {
        return Err(bad());
    }
    let (_, _, after) = der_next(validity).ok_or_else(bad)?; // notBefore
    let (t, v, _) = der_next(after).ok_or_else(bad)?;
    der_time(t, v).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use konvert_store::AuditEvent;

    /// An audit trail in memory: one event per block, `(at, event)`.
    struct Mem(Vec<(i64, AuditEvent)>, u64);

    impl AuditSource for Mem {
        fn list(&self, from: u64, limit: usize) -> Result<Vec<AuditEntry>, konvert_store::Error> {
            let first = self.1;
            Ok(self
                .0
                .iter()
                .enumerate()
                .map(|(i, (at, ev))| AuditEntry {
                    seq: first + i as u64,
                    at: *at,
                    prev: [0; 32],
                    hash: [0; 32],
                    event: ev.clone(),
                })
                .filter(|e| e.seq >= from)
                .take(limit)
                .collect())
        }
    }

    fn mid(n: u8) -> MessageId {
        MessageId([n; 16])
    }

    #[test]
    fn bounds_are_found_after_pruning_and_when_empty() {
        for first in [0u64, 7, 1000] {
            for len in [0usize, 1, 2, 3, 100, 1025] {
                let m = Mem(
                    (0..len)
                        .map(|i| (i as i64, AuditEvent::new(AuditKind::Opened)))
                        .collect(),
                    first,
                );
                let mut t = Trail::new(&m);
                let (f, e) = t.bounds().unwrap();
                if len == 0 {
                    assert_eq!((f, e), (0, 0));
                } else {
                    assert_eq!((f, e), (first, first + len as u64), "first {first} len {len}");
                }
                // log-many probes, not a scan
                assert!(t.read <= 2 * 64, "{}", t.read);
            }
        }
    }

    #[test]
    fn time_search_finds_the_first_event_of_a_second() {
        let m = Mem(
            [10, 10, 11, 11, 11, 15, 20]
                .iter()
                .map(|t| (*t, AuditEvent::new(AuditKind::Opened)))
                .collect(),
            3,
        );
        let mut t = Trail::new(&m);
        assert_eq!(t.first_at_or_after(0).unwrap(), 3);
        assert_eq!(t.first_at_or_after(11).unwrap(), 5);
        assert_eq!(t.first_at_or_after(12).unwrap(), 8);
        assert_eq!(t.first_at_or_after(21).unwrap(), 10);
    }

    #[test]
    fn a_story_finds_its_events_its_case_destruction_and_its_key_hour() {
        let me = mid(1);
        let case = CaseId([9; 16]);
        let hour = 100i64; // expires in hour 100: its key goes at the hour's end (363600) or after
        let mut evs = Vec::new();
        for i in 0..5000i64 {
            // noise: other messages, one event a second... up to 5000
            evs.push((i, AuditEvent::new(AuditKind::Accepted).message(mid(2))));
        }
        evs.insert(100, (100, AuditEvent::new(AuditKind::Accepted).message(me)));
        evs.insert(
            2001,
            (
                2000,
                AuditEvent::new(AuditKind::Delivered)
                    .message(me)
                    .detail("accepted"),
            ),
        );
        evs.push((
            363_700,
            AuditEvent::new(AuditKind::KeyDestroyed)
                .detail("expiry-bucket")
                .count(99),
        ));
        evs.push((
            363_720,
            AuditEvent::new(AuditKind::KeyDestroyed)
                .detail("expiry-bucket")
                .count(100),
        ));
        evs.push((
            363_730,
            AuditEvent::new(AuditKind::Destroyed)
                .detail("early")
                .case(case)
                .count(3),
        ));
        let m = Mem(evs, 0);
        let facts = StoryFacts {
            id: me,
            case: Some(case),
            times: vec![100, 2000],
            key_hour_ended: Some(hour),
            case_destroyed: Some(363_730),
        };
        let mut t = Trail::new(&m);
        let (steps, complete) = story_steps(&mut t, &facts).unwrap();
        assert!(complete);
        let names: Vec<(&str, &str)> = steps.iter().map(|s| (s.step.as_str(), s.link.as_str())).collect();
        assert_eq!(
            names,
            [
                ("accepted", "message"),
                ("delivered", "message"),
                ("key_destroyed", "key_hour"),
                ("destroyed", "case")
            ]
        );
        // bounded: a few windows and probes, not the 5000 events
        assert!(t.read < 200, "read {}", t.read);
    }

    #[test]
    fn a_window_that_hits_its_bound_says_so() {
        let me = mid(1);
        let n = STORY_WINDOW_CAP as i64 + 10;
        let evs: Vec<_> = (0..n)
            .map(|_| (50, AuditEvent::new(AuditKind::Accepted).message(mid(2))))
            .chain([(50, AuditEvent::new(AuditKind::Sent).message(me))])
            .collect();
        let m = Mem(evs, 0);
        let facts = StoryFacts {
            id: me,
            case: None,
            times: vec![50],
            key_hour_ended: None,
            case_destroyed: None,
        };
        let (steps, complete) = story_steps(&mut Trail::new(&m), &facts).unwrap();
        assert!(!complete);
        assert!(steps.is_empty());
    }

    #[test]
    fn buckets_count_by_hour_and_day_per_direction() {
        let b = bucket_counts(
            [
                (Direction::Outbound, 3600 * 5 + 1),
                (Direction::Inbound, 3600 * 5 + 3599),
                (Direction::Inbound, 3600 * 6),
                (Direction::Outbound, 86_400 * 2 + 5),
            ],
            3600,
        );
        let got: Vec<(i64, u64, u64)> = b
            .iter()
            .map(|x| (x.from.as_unix(), x.outbound, x.inbound))
            .collect();
        assert_eq!(got, [(18_000, 1, 1), (21_600, 0, 1), (172_800, 1, 0)]);
        let d = bucket_counts([(Direction::Outbound, 5), (Direction::Inbound, 86_399)], 86_400);
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].outbound, d[0].inbound), (1, 1));
    }

    #[test]
    fn the_certificate_validity_is_read() {
        let id =
            crate::transport::TlsIdentity::generate(&AuthorityId::new("kz.mvd".to_owned()).unwrap()).unwrap();
        let (cert, _) = id.to_pem();
        let after = certificate_not_after(cert.as_bytes()).unwrap();
        let now = Timestamp::now().as_unix();
        // init makes certificates valid for years from today
        assert!(after > now + 365 * 86_400, "{after}");
        assert_eq!(der_time(0x17, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(der_time(0x18, b"20000101000000Z"), Some(946_684_800));
        assert_eq!(der_time(0x18, b"2000010100000Z"), None);
        assert!(certificate_not_after(b"not pem").is_err());
    }

    #[test]
    fn a_purged_case_is_destroyed_once_and_its_messages_stories_show_it() {
        use konvert_store::{
            Clock as _, ManualClock, MasterKey, NewCase, NewMessage, NewReceipt, Store, StoreConfig,
        };
        let tmp = tempfile::tempdir().unwrap();
        let clock = std::sync::Arc::new(ManualClock::new(1_780_000_000));
        let mut cfg = StoreConfig::new(tmp.path().join("store"), MasterKey::from_bytes([7; 32]));
        cfg.clock = clock.clone();
        let store = Store::open(cfg).unwrap();
        let case_id = Id::new(Timestamp::from_unix(1_780_000_000));
        let case = CaseId(*case_id.as_bytes());
        store
            .case_open(&NewCase {
                id: case,
                peer: "by.mvd".into(),
                agreement: "kz-by-2019".into(),
                state: "requested".into(),
                deadline: Some(1_780_000_000 + 30 * 86_400),
            })
            .unwrap();
        let id = MessageId(*case_id.as_bytes());
        store
            .put_outbox(&NewMessage {
                id,
                peer: "by.mvd".into(),
                agreement: "kz-by-2019".into(),
                kind: "request".into(),
                case: Some(case),
                payload: vec![1; 64],
                digest: None,
            })
            .unwrap();
        clock.advance(5);
        store.mark_sent(&id).unwrap();
        clock.advance(5);
        store
            .mark_delivered(
                &id,
                &NewReceipt {
                    outcome: "accepted".into(),
                    bytes: vec![2; 32],
                },
            )
            .unwrap();
        clock.advance(60);
        let unknown = Id::new(Timestamp::from_unix(1_780_000_001));
        assert_eq!(purge_case_in(&store, unknown).unwrap_err().status, 404);
        assert_eq!(purge_case_in(&store, case_id).unwrap().destroyed, 1);
        assert_eq!(purge_case_in(&store, case_id).unwrap().destroyed, 0, "once");
        let meta = store.meta(StoreDirection::Outbound, &id).unwrap();
        assert!(meta.destroyed_at.is_some());
        let info = store.case_get(&case).unwrap();
        let facts = story_facts(&meta, clock.now(), info.destroyed_at);
        let (steps, complete) = story_steps(&mut Trail::new(&store), &facts).unwrap();
        assert!(complete);
        let got: Vec<(&str, &str)> = steps.iter().map(|s| (s.step.as_str(), s.link.as_str())).collect();
        for want in [
            ("accepted", "message"),
            ("sent", "message"),
            ("delivered", "message"),
            ("key_destroyed", "case"),
            ("destroyed", "case"),
        ] {
            assert!(got.contains(&want), "{want:?} in {got:?}");
        }
    }

    #[test]
    fn every_break_kind_has_a_name() {
        let names: Vec<String> = [
            BreakKind::Modified,
            BreakKind::Deleted,
            BreakKind::Inserted,
            BreakKind::Reordered,
            BreakKind::Anchor,
            BreakKind::Truncated,
        ]
        .iter()
        .map(|k| break_view(3, *k).kind)
        .collect();
        assert_eq!(
            names,
            [
                "modified",
                "deleted",
                "inserted",
                "reordered",
                "anchor",
                "truncated"
            ]
        );
    }
}
