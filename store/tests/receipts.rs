#![allow(clippy::unwrap_used)]
//! Receipts of both directions, and the delivery times and attempts of a
//! message.

mod common;

use std::sync::Arc;

use common::*;
use konvert_store::*;

fn ms(t: i64) -> u64 {
    (t as u64) * 1000
}

fn receipt(outcome: &str, bytes: &[u8]) -> NewReceipt {
    NewReceipt {
        outcome: outcome.into(),
        bytes: bytes.to_vec(),
    }
}

#[test]
fn issued_receipts_are_kept_listed_and_outlive_the_message() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let s = open(tmp.path(), clock.clone());
    let inb = msg(ms(T0), "by.mvd", "request", b"received");
    s.put_inbox(&inb).unwrap();
    let out = msg(ms(T0) + 1, "by.mvd", "request", b"sent");
    s.put_outbox(&out).unwrap();
    s.mark_delivered(&out.id, &receipt("accepted", b"their receipt"))
        .unwrap();
    // A message stored with the receipt issued for it (one write, as the
    // gateway does it).
    let with = msg(ms(T0) + 2, "by.mvd", "request", b"received with its receipt");
    s.put_inbox_with_receipt(&with, &receipt("accepted", b"issued with it"))
        .unwrap();

    // No receipt issued yet.
    assert!(matches!(s.issued_receipt(&inb.id), Err(Error::NotFound { .. })));
    let r = s
        .put_issued_receipt(&inb.id, &receipt("accepted", b"our signed receipt"))
        .unwrap();
    assert_eq!(r.bytes, b"our signed receipt");
    assert_eq!(r.peer, "by.mvd");
    // Idempotent: the first one stays.
    let again = s
        .put_issued_receipt(&inb.id, &receipt("accepted", b"another"))
        .unwrap();
    assert_eq!(again.bytes, b"our signed receipt");
    // Only for messages the store holds.
    let unknown = MessageId::new_v7(ms(T0) + 99);
    assert!(matches!(
        s.put_issued_receipt(&unknown, &receipt("accepted", b"x")),
        Err(Error::NotFound { .. })
    ));

    // Each direction lists its own.
    let ours = s
        .receipts_by_peer_dir(Direction::Inbound, "by.mvd", None, 10)
        .unwrap();
    assert_eq!(ours.len(), 2);
    assert_eq!(ours[0].message, inb.id);
    assert_eq!(ours[1].message, with.id);
    let theirs = s
        .receipts_by_peer_dir(Direction::Outbound, "by.mvd", None, 10)
        .unwrap();
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0].message, out.id);
    assert_eq!(s.receipts_by_peer("by.mvd", None, 10).unwrap().len(), 1);
    assert_eq!(
        s.receipts_between_dir(Direction::Inbound, ms(T0), ms(T0) + 10, None, 10)
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        s.receipts_between_dir(Direction::Inbound, ms(T0), ms(T0) + 10, Some(&inb.id), 10)
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        s.receipt_dir(Direction::Outbound, &out.id).unwrap().bytes,
        b"their receipt"
    );
    assert!(s
        .audit_list(0, 1000)
        .unwrap()
        .iter()
        .any(|e| e.event.kind == AuditKind::ReceiptIssued && e.event.message == Some(inb.id)));

    // The message's retention ends: its payload goes, the receipt stays.
    clock.set(T0 + 31 * DAY);
    while s.sweep(1000).unwrap().remaining {}
    assert!(matches!(s.inbox_get(&inb.id), Err(Error::Destroyed { .. })));
    assert_eq!(s.issued_receipt(&inb.id).unwrap().bytes, b"our signed receipt");
    drop(s);
    let s = open(tmp.path(), clock.clone());
    assert_eq!(s.issued_receipt(&inb.id).unwrap().outcome, "accepted");

    // The audit retention ends: receipts of both directions are purged,
    // and with them their peer index entries.
    clock.set(T0 + 366 * DAY);
    let mut purged = 0;
    loop {
        let r = s.sweep(1000).unwrap();
        purged += r.purged;
        if !r.remaining {
            break;
        }
    }
    assert!(purged >= 3, "{purged}");
    for id in [&inb.id, &with.id] {
        assert!(matches!(s.issued_receipt(id), Err(Error::NotFound { .. })));
    }
    assert!(matches!(s.receipt(&out.id), Err(Error::NotFound { .. })));
    for dir in [Direction::Inbound, Direction::Outbound] {
        assert!(s
            .receipts_by_peer_dir(dir, "by.mvd", None, 10)
            .unwrap()
            .is_empty());
    }
    s.audit_verify().unwrap();
}

#[test]
fn delivery_times_and_attempts_are_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let s = open(tmp.path(), clock.clone());
    let out = msg(ms(T0), "by.mvd", "request", b"out");
    s.put_outbox(&out).unwrap();
    clock.advance(10);
    let m = s.mark_attempt(&out.id, "connection_refused").unwrap();
    assert_eq!(m.state, MessageState::Queued);
    assert_eq!(m.attempts, 1);
    assert_eq!(m.last_attempt_at, Some(T0 + 10));
    assert_eq!(m.outcome.as_deref(), Some("connection_refused"));
    assert_eq!(m.sent_at, None);
    assert!(s.mark_attempt(&out.id, "bad\ncode").is_err());
    clock.advance(10);
    let m = s.mark_sent(&out.id).unwrap();
    assert_eq!(
        (m.attempts, m.sent_at, m.last_attempt_at),
        (2, Some(T0 + 20), Some(T0 + 20))
    );
    clock.advance(5);
    let m = s.mark_delivered(&out.id, &receipt("accepted", b"r")).unwrap();
    assert_eq!(m.delivered_at, Some(T0 + 25));
    assert_eq!(m.sent_at, Some(T0 + 20));

    let inb = msg(ms(T0) + 1, "by.mvd", "request", b"in");
    s.put_inbox(&inb).unwrap();
    clock.advance(5);
    let a = s.inbox_ack(&inb.id).unwrap();
    assert_eq!(a.acknowledged_at, Some(T0 + 30));
    drop(s);
    let s = open(tmp.path(), clock);
    let m = s.meta(Direction::Outbound, &out.id).unwrap();
    assert_eq!(
        (m.attempts, m.sent_at, m.delivered_at),
        (2, Some(T0 + 20), Some(T0 + 25))
    );
    assert_eq!(
        s.meta(Direction::Inbound, &inb.id).unwrap().acknowledged_at,
        Some(T0 + 30)
    );
}

#[test]
fn delivered_straight_from_queued_counts_as_sent_and_ids_list_without_records() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let s = open(tmp.path(), clock.clone());
    let a = msg(ms(T0), "by.mvd", "request", b"a");
    let b = msg(ms(T0) + 1, "am.police", "request", b"b");
    let c = msg(ms(T0) + 2, "by.mvd", "request", b"c");
    for m in [&a, &b, &c] {
        s.put_outbox(m).unwrap();
    }
    let ids = s
        .list_ids_by_state(Direction::Outbound, MessageState::Queued, None, 10)
        .unwrap();
    assert_eq!(
        ids,
        vec![
            (a.id, "by.mvd".to_string()),
            (b.id, "am.police".to_string()),
            (c.id, "by.mvd".to_string())
        ]
    );
    assert_eq!(
        s.list_ids_by_state(Direction::Outbound, MessageState::Queued, Some(&a.id), 1)
            .unwrap(),
        vec![(b.id, "am.police".to_string())]
    );
    clock.advance(3);
    let m = s.mark_delivered(&a.id, &receipt("accepted", b"r")).unwrap();
    assert_eq!(
        (m.state, m.attempts, m.sent_at),
        (MessageState::Delivered, 1, Some(T0 + 3))
    );
    let kinds: Vec<AuditKind> = s
        .audit_list(0, 1000)
        .unwrap()
        .into_iter()
        .filter(|e| e.event.message == Some(a.id))
        .map(|e| e.event.kind)
        .collect();
    assert_eq!(
        kinds,
        vec![AuditKind::Accepted, AuditKind::Sent, AuditKind::Delivered]
    );
    assert_eq!(
        s.list_ids_by_state(Direction::Outbound, MessageState::Queued, None, 10)
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn a_message_and_its_issued_receipt_are_stored_in_one_write() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let s = Arc::new(open(tmp.path(), clock.clone()));
    // (The first message and receipt of an hour create its keys: a write each.)
    let first = msg(ms(T0) - 1, "by.mvd", "request", b"first");
    s.put_inbox_with_receipt(&first, &receipt("accepted", b"first receipt"))
        .unwrap();
    let syncs_before = s.stats().syncs;
    let inb = msg(ms(T0), "by.mvd", "request", b"received");
    let put = s
        .put_inbox_with_receipt(&inb, &receipt("accepted", b"our receipt"))
        .unwrap();
    assert!(put.created);
    // One sync for both.
    assert_eq!(s.stats().syncs - syncs_before, 1);
    assert_eq!(s.issued_receipt(&inb.id).unwrap().bytes, b"our receipt");
    assert_eq!(s.inbox_get(&inb.id).unwrap().payload, b"received");
    // A duplicate changes neither (the first receipt stays).
    let again = s
        .put_inbox_with_receipt(&inb, &receipt("accepted", b"another"))
        .unwrap();
    assert!(!again.created);
    assert_eq!(s.issued_receipt(&inb.id).unwrap().bytes, b"our receipt");
    // A bad outcome text is refused before anything is written.
    let bad = msg(ms(T0) + 1, "by.mvd", "request", b"x");
    assert!(s
        .put_inbox_with_receipt(&bad, &receipt("bad\noutcome", b"r"))
        .is_err());
    assert!(matches!(s.inbox_get(&bad.id), Err(Error::NotFound { .. })));
    // Concurrent writers of both kinds share groups; every receipt is
    // listed with its message and audited once.
    std::thread::scope(|sc| {
        for t in 0..4u64 {
            let s = &s;
            sc.spawn(move || {
                for i in 0..25u64 {
                    let m = msg(ms(T0) + 100 + t * 1000 + i, "kz.mvd", "response", b"p");
                    if i % 2 == 0 {
                        s.put_inbox_with_receipt(&m, &receipt("accepted", &m.id.0))
                            .unwrap();
                    } else {
                        s.put_inbox(&m).unwrap();
                    }
                }
            });
        }
    });
    let listed = s
        .receipts_by_peer_dir(Direction::Inbound, "kz.mvd", None, 1000)
        .unwrap();
    assert_eq!(listed.len(), 4 * 13);
    for r in &listed {
        assert_eq!(r.bytes, r.message.0);
        assert!(s.inbox_get(&r.message).is_ok());
    }
    let issued = s
        .audit_list(0, 10_000)
        .unwrap()
        .iter()
        .filter(|e| e.event.kind == AuditKind::ReceiptIssued)
        .count();
    assert_eq!(issued, 2 + 4 * 13);
    drop(s);
    let s = open(tmp.path(), clock);
    assert_eq!(
        s.receipts_by_peer_dir(Direction::Inbound, "kz.mvd", None, 1000)
            .unwrap()
            .len(),
        52
    );
    s.audit_verify().unwrap();
}
