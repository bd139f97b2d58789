#![allow(clippy::unwrap_used)]
//! The async write path: tasks queue puts, the group commit's service
//! threads prepare, apply and sync them; synchronous writers share the
//! same groups.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::*;
use konvert_store::*;

/// The tests count this process's commit threads: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    let guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // Those of an earlier test's store end on their own once it is dropped.
    wait_for_commit_threads_to_end();
    guard
}

fn wait_for_commit_threads_to_end() {
    let mut waited = 0;
    while commit_threads() > 0 {
        std::thread::sleep(std::time::Duration::from_millis(50));
        waited += 1;
        assert!(waited < 200, "commit threads did not end");
    }
}

fn ms(t: i64) -> u64 {
    (t as u64) * 1000
}

/// A request from by.mvd, `n` ms after T0.
fn from_by(n: u64, payload: &[u8]) -> NewMessage {
    msg(ms(T0) + n, "by.mvd", "request", payload)
}

/// One test's store in a fresh directory, with the runtime its async
/// writers run on; tests take one at a time (they count commit threads).
struct Fixture {
    // (Dropped in this order: the runtime and the store before the directory.)
    rt: tokio::runtime::Runtime,
    store: Arc<Store>,
    clock: Arc<ManualClock>,
    tmp: tempfile::TempDir,
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl Fixture {
    fn new() -> Self {
        let serial = serial();
        let tmp = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let store = Arc::new(open(tmp.path(), clock.clone()));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        Fixture {
            rt,
            store,
            clock,
            tmp,
            _serial: serial,
        }
    }

    /// Drops the runtime and the store, and opens the store again.
    fn reopen(self) -> (Store, tempfile::TempDir) {
        let Fixture {
            rt,
            store,
            clock,
            tmp,
            _serial,
        } = self;
        drop(rt);
        drop(store);
        (open(tmp.path(), clock), tmp)
    }
}

/// The names of this process's threads that serve the group commit.
fn commit_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
        .filter(|c| c.starts_with("konvert-store-c"))
        .count()
}

#[test]
fn async_and_blocking_writers_share_groups_and_every_write_lands() {
    let f = Fixture::new();
    let s = f.store.clone();
    let before = s.stats();
    // 64 tasks x 20 async puts, while 4 threads put and mark messages sent.
    let blocking: Vec<_> = (0..4u64)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut ids = Vec::new();
                for i in 0..25u64 {
                    let m = msg(
                        ms(T0) + 1_000_000 + t * 1000 + i,
                        "am.police",
                        "request",
                        b"blocking",
                    );
                    s.put_outbox(&m).unwrap();
                    s.mark_sent(&m.id).unwrap();
                    ids.push(m.id);
                }
                ids
            })
        })
        .collect();
    let async_ids: Vec<MessageId> = f.rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..64u64 {
            let s = s.clone();
            tasks.spawn(async move {
                let mut ids = Vec::new();
                for i in 0..20u64 {
                    let m = from_by(t * 100 + i, format!("async {t}/{i}").as_bytes());
                    let put = s.put_inbox_async(&m).await.unwrap();
                    assert!(put.created);
                    assert_eq!(put.meta.state, MessageState::New);
                    // Readable as soon as the put returns.
                    assert_eq!(s.inbox_get(&m.id).unwrap().payload, m.payload);
                    ids.push(m.id);
                }
                ids
            });
        }
        let mut all = Vec::new();
        while let Some(r) = tasks.join_next().await {
            all.extend(r.unwrap());
        }
        all
    });
    let blocking_ids: Vec<MessageId> = blocking.into_iter().flat_map(|h| h.join().unwrap()).collect();
    assert_eq!(async_ids.len(), 1280);
    assert_eq!(async_ids.iter().collect::<HashSet<_>>().len(), 1280);
    let after = s.stats();
    assert!(after.acked_writes - before.acked_writes >= 1280 + 200);
    // Group commit: far fewer syncs than acknowledged writes.
    assert!(
        after.syncs - before.syncs < after.acked_writes - before.acked_writes,
        "{before:?} -> {after:?}"
    );
    assert_eq!(commit_threads(), 1);

    // Every acknowledged write is there after a reopen, and the audit chain
    // (which the service threads extended) verifies.
    drop(s);
    let (s, _tmp) = f.reopen();
    for id in &async_ids {
        assert_eq!(s.meta(Direction::Inbound, id).unwrap().state, MessageState::New);
    }
    for id in &blocking_ids {
        assert_eq!(s.meta(Direction::Outbound, id).unwrap().state, MessageState::Sent);
    }
    assert_eq!(s.inbox_list(None, 2000).unwrap().len(), 1280);
    s.audit_verify().unwrap();
}

#[test]
fn with_many_writers_announced_every_write_still_lands_and_shares_syncs() {
    let f = Fixture::new();
    let s = f.store.clone();
    s.set_concurrent_writers(256);
    let before = s.stats();
    let ids: Vec<MessageId> = f.rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..64u64 {
            let s = s.clone();
            tasks.spawn(async move {
                let mut ids = Vec::new();
                for i in 0..10u64 {
                    let m = from_by(t * 100 + i, format!("busy {t}/{i}").as_bytes());
                    assert!(s.put_inbox_async(&m).await.unwrap().created);
                    ids.push(m.id);
                }
                ids
            });
        }
        let mut all = Vec::new();
        while let Some(r) = tasks.join_next().await {
            all.extend(r.unwrap());
        }
        all
    });
    let after = s.stats();
    let syncs = after.syncs - before.syncs;
    assert!(syncs < after.acked_writes - before.acked_writes);
    // The payloads of a group are synced together, not one put at a time
    // as they arrive while the group gathers.
    let payload_syncs = after.payload_syncs - before.payload_syncs;
    assert!(
        payload_syncs <= 2 * syncs + 2,
        "{payload_syncs} payload syncs for {syncs} syncs"
    );
    // A writer after the crowd has gone still gets its sync (the gather
    // wait bounds how long a sync is deferred).
    s.set_concurrent_writers(1000);
    f.rt.block_on(s.put_inbox_async(&from_by(99_999, b"alone")))
        .unwrap();
    drop(s);
    let (s, _tmp) = f.reopen();
    for id in &ids {
        assert_eq!(s.meta(Direction::Inbound, id).unwrap().state, MessageState::New);
    }
    s.audit_verify().unwrap();
}

#[test]
fn async_duplicates_are_stored_once() {
    let f = Fixture::new();
    let s = &f.store;
    let m = from_by(0, b"same envelope");
    let created = f.rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let (s, m) = (s.clone(), m.clone());
            tasks.spawn(async move { s.put_inbox_async(&m).await.unwrap().created });
        }
        let mut n = 0;
        while let Some(r) = tasks.join_next().await {
            n += usize::from(r.unwrap());
        }
        n
    });
    assert_eq!(created, 1);
    assert_eq!(s.inbox_list(None, 10).unwrap().len(), 1);
    // A blocking put of the same id agrees.
    assert!(!s.put_inbox(&m).unwrap().created);
}

#[test]
fn a_failed_sync_fails_async_writers_and_poisons_the_store() {
    let f = Fixture::new();
    let (s, rt) = (&f.store, &f.rt);
    rt.block_on(s.put_outbox_async(&from_by(0, b"ok"))).unwrap();
    s.fail_next_sync_for_tests();
    let lost = rt.block_on(s.put_outbox_async(&from_by(1, b"lost")));
    assert!(lost.is_err(), "{lost:?}");
    assert!(matches!(
        rt.block_on(s.put_outbox_async(&from_by(2, b"x"))),
        Err(Error::Poisoned)
    ));
    assert!(matches!(s.put_outbox(&from_by(3, b"y")), Err(Error::Poisoned)));
    assert!(s.stats().poisoned);
}

#[test]
fn service_threads_end_with_the_store() {
    let f = Fixture::new();
    f.rt.block_on(f.store.put_inbox_async(&from_by(0, b"one")))
        .unwrap();
    assert_eq!(commit_threads(), 1);
    // They notice the dropped store and end; the data directory can be
    // opened again (its lock released) meanwhile or after.
    let (s, _tmp) = f.reopen();
    assert_eq!(s.inbox_list(None, 10).unwrap().len(), 1);
    wait_for_commit_threads_to_end();
}

#[test]
fn a_lone_writer_gets_a_sync_per_write_and_concurrent_ones_share_them() {
    let f = Fixture::new();
    let (s, rt) = (&f.store, &f.rt);
    // One writer at a time: nothing to gather, each write is synced at once.
    let before = s.stats();
    for i in 0..20u64 {
        rt.block_on(s.put_inbox_async(&from_by(i, b"alone"))).unwrap();
    }
    let after = s.stats();
    // (No write waited for company: a sync for each acknowledgment.)
    let acked = after.acked_writes - before.acked_writes;
    assert!(acked >= 20, "{before:?} -> {after:?}");
    assert!(after.syncs - before.syncs >= acked, "{before:?} -> {after:?}");
    // 64 at once: they share syncs (and every one is acknowledged).
    let before = s.stats();
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..64u64 {
            let s = Arc::clone(s);
            tasks.spawn(async move {
                s.put_inbox_async(&from_by(1000 + i, b"together")).await.unwrap();
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
    });
    let after = s.stats();
    let acked = after.acked_writes - before.acked_writes;
    assert!(acked >= 64, "{before:?} -> {after:?}");
    assert!(after.syncs - before.syncs < acked, "{before:?} -> {after:?}");
    assert_eq!(s.inbox_list(None, 100).unwrap().len(), 84);
}

#[test]
fn async_deliveries_are_applied_in_groups_each_once_and_survive_a_reopen() {
    let f = Fixture::new();
    let s = f.store.clone();
    // 48 queued and 16 sent messages to by.mvd; one of them, in a case,
    // is destroyed with it.
    let case = CaseId::new_v7(ms(T0));
    s.case_open(&NewCase {
        id: case,
        peer: "by.mvd".into(),
        agreement: "kz-by-2019".into(),
        state: "requested".into(),
        deadline: None,
    })
    .unwrap();
    let mut ids = Vec::new();
    for i in 0..64u64 {
        let mut m = msg(
            ms(T0) + 10 + i,
            "by.mvd",
            "request",
            format!("out {i}").as_bytes(),
        );
        if i == 5 {
            m.case = Some(case);
        }
        s.put_outbox(&m).unwrap();
        if i >= 48 {
            s.mark_sent(&m.id).unwrap();
        }
        ids.push(m.id);
    }
    let gone = ids[5];
    assert_eq!(s.destroy_case(&case).unwrap(), 1);
    let unknown = msg(ms(T0) + 999, "by.mvd", "request", b"never stored").id;
    let receipt = |id: &MessageId| NewReceipt {
        outcome: "accepted".into(),
        bytes: format!("signed receipt of {id}").into_bytes(),
    };
    // Every receipt twice, concurrently (a peer answering a resend), plus
    // one for a message that does not exist.
    let results = f.rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for id in ids.iter().chain(ids.iter()).chain([&unknown]) {
            let (s, id, r) = (s.clone(), *id, receipt(id));
            tasks.spawn(async move { (id, s.mark_delivered_async(&id, &r).await) });
        }
        let mut out = Vec::new();
        while let Some(r) = tasks.join_next().await {
            out.push(r.unwrap());
        }
        out
    });
    for (id, r) in &results {
        match r {
            Ok(meta) => {
                assert!(id != &gone && id != &unknown);
                assert_eq!(meta.state, MessageState::Delivered);
                assert!(meta.delivered_at.is_some());
            }
            Err(Error::Destroyed { .. }) => assert_eq!(id, &gone),
            Err(Error::NotFound { .. }) => assert_eq!(id, &unknown),
            Err(e) => panic!("{id}: {e}"),
        }
    }
    // Each delivery audited once (with a sent event for the queued ones),
    // however many receipts came and however the groups fell.
    let audit = s.audit_list(0, 10_000).unwrap();
    let count = |kind: AuditKind, id: &MessageId| {
        audit
            .iter()
            .filter(|e| e.event.kind == kind && e.event.message.as_ref() == Some(id))
            .count()
    };
    for (i, id) in ids.iter().enumerate() {
        let delivered = usize::from(id != &gone);
        assert_eq!(count(AuditKind::Delivered, id), delivered, "{i}");
        assert_eq!(
            count(AuditKind::Sent, id),
            if i < 48 { delivered } else { 1 },
            "{i}"
        );
    }
    // Deliveries share audit blocks (one per group, not one per message).
    let delivery_blocks: HashSet<[u8; 32]> = audit
        .iter()
        .filter(|e| e.event.kind == AuditKind::Delivered)
        .map(|e| e.hash)
        .collect();
    assert!(delivery_blocks.len() < 63, "{}", delivery_blocks.len());

    drop(s);
    let clock = f.clock.clone();
    let (s, _tmp) = f.reopen();
    for id in ids.iter().filter(|id| **id != gone) {
        let meta = s.meta(Direction::Outbound, id).unwrap();
        assert_eq!(meta.state, MessageState::Delivered);
        assert_eq!(s.receipt(id).unwrap().bytes, receipt(id).bytes);
    }
    assert_eq!(s.receipts_by_peer("by.mvd", None, 1000).unwrap().len(), 63);
    assert!(s
        .list_ids_by_state(Direction::Outbound, MessageState::Queued, None, 100)
        .unwrap()
        .is_empty());
    s.audit_verify().unwrap();

    // At the end of their audit retention the receipts go, each group's
    // purge list with them, in sweep steps smaller than a list.
    clock.set(T0 + 366 * 86_400);
    let mut purged = 0;
    loop {
        let r = s.sweep(10).unwrap();
        purged += r.purged;
        if !r.remaining {
            break;
        }
    }
    assert!(purged >= 63, "{purged}");
    assert!(s.receipts_by_peer("by.mvd", None, 1000).unwrap().is_empty());
    for id in &ids {
        assert!(matches!(s.receipt(id), Err(Error::NotFound { .. })), "{id}");
    }
    s.audit_verify().unwrap();
}
