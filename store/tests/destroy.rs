#![allow(clippy::unwrap_used)]
//! Destruction takes effect when the hour's key goes, before the sweeper has
//! moved any index entry: lists skip the destroyed messages at once, reads
//! refuse them, and the later bookkeeping changes nothing that is visible.

mod common;

use std::sync::Arc;

use common::*;
use konvert_store::*;

fn ms(t: i64) -> u64 {
    (t as u64) * 1000
}

#[test]
fn destroyed_messages_leave_every_list_as_soon_as_their_key_goes() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let s = open(tmp.path(), clock.clone());
    // 600 inbound messages expiring with the first key hour (30 days),
    // spread over the peers; then, a day later, 10 that live on.
    let peers = ["by.mvd", "am.police"];
    let mut old = Vec::new();
    for i in 0..600u64 {
        let m = msg(ms(T0) + i, peers[(i % 2) as usize], "request", b"old");
        s.put_inbox(&m).unwrap();
        old.push(m.id);
    }
    // Some of them acknowledged, some outbound ones delivered.
    for id in old.iter().take(30) {
        s.inbox_ack(id).unwrap();
    }
    let out_old = msg(ms(T0) + 5000, "by.mvd", "request", b"out old");
    s.put_outbox(&out_old).unwrap();
    clock.advance(DAY);
    let mut young = Vec::new();
    for i in 0..10u64 {
        let m = msg(ms(T0 + DAY) + i, peers[(i % 2) as usize], "request", b"young");
        s.put_inbox(&m).unwrap();
        young.push(m.id);
    }
    assert_eq!(s.inbox_list(None, 5000).unwrap().len(), 570 + 10);

    // Past the old ones' retention: one sweep step with the smallest budget
    // destroys the key; most index entries are not yet moved.
    clock.set(T0 + 30 * DAY + 2 * 3600);
    let r = s.sweep(1).unwrap();
    assert!(r.keys_destroyed >= 1);
    assert!(r.remaining, "one step cannot have moved 600 entries: {r:?}");

    let new: Vec<MessageId> = s
        .inbox_list(None, 5000)
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(new, young, "only the live messages are listed as new");
    // Pages are full: destroyed entries do not count against the limit.
    assert_eq!(s.inbox_list(None, 3).unwrap().len(), 3);
    assert!(s
        .list_by_state(Direction::Inbound, MessageState::Acknowledged, None, 10)
        .unwrap()
        .is_empty());
    assert!(s.outbox_pending(None, 10).unwrap().is_empty());
    for id in old.iter().step_by(97) {
        assert!(matches!(s.inbox_get(id), Err(Error::Destroyed { .. })));
        assert!(s.meta(Direction::Inbound, id).unwrap().destroyed_at.is_some());
    }
    // The history by peer still shows them, as destroyed metadata.
    let by_peer = s.list_by_peer(Direction::Inbound, "by.mvd", None, 5000).unwrap();
    assert_eq!(by_peer.len(), 300 + 5);
    assert_eq!(by_peer.iter().filter(|m| m.destroyed_at.is_some()).count(), 300);

    // The sweeper finishes its bookkeeping; nothing visible changes.
    let mut destroyed = r.destroyed;
    let mut more = r.remaining;
    while more {
        let r = s.sweep(500).unwrap();
        destroyed += r.destroyed;
        more = r.remaining;
    }
    assert_eq!(destroyed, 601);
    let new_after: Vec<MessageId> = s
        .inbox_list(None, 5000)
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(new_after, young);
    assert_eq!(
        s.list_by_peer(Direction::Inbound, "by.mvd", None, 5000)
            .unwrap()
            .len(),
        305
    );
    s.audit_verify().unwrap();

    // And after a restart.
    drop(s);
    let s = open(tmp.path(), clock);
    let new_reopened: Vec<MessageId> = s
        .inbox_list(None, 5000)
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(new_reopened, young);
}
