#![allow(clippy::unwrap_used)]
//! The audit chain detects modified, deleted, inserted and reordered entries.
//! The tampering is done on sled directly, as an attacker with file access would.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use konvert_store::*;

/// A store with 10 audit entries (seq 0..=9), closed again.
fn make(dir: &Path) {
    let s = open(dir, Arc::new(ManualClock::new(T0)));
    for i in 0..10u64 {
        s.audit_append(
            &AuditEvent::new(AuditKind::ConfigChanged)
                .detail("profile-reloaded")
                .count(i),
        )
        .unwrap();
    }
    assert_eq!(s.audit_verify().unwrap().entries, 10);
}

fn key(seq: u64) -> Vec<u8> {
    let mut k = vec![b'A'];
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn tamper(dir: &Path, f: impl FnOnce(&sled::Db)) {
    let db = sled::open(dir.join("sled")).unwrap();
    f(&db);
    db.flush().unwrap();
}

fn verify(dir: &Path) -> Result<VerifiedChain> {
    open(dir, Arc::new(ManualClock::new(T0))).audit_verify()
}

fn broken(dir: &Path) -> AuditBreak {
    match verify(dir) {
        Err(Error::AuditBroken(b)) => b,
        other => panic!("expected a break, got {other:?}"),
    }
}

/// Re-encode an entry with new fields and a correct own hash (the attacker
/// can compute SHA-256 too).
fn forge(seq: u64, prev: [u8; 32], count: u64) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Ev {
        at: i64,
        event: AuditEvent,
    }
    #[derive(serde::Serialize)]
    struct Body {
        seq: u64,
        #[serde(with = "serde_bytes")]
        prev: [u8; 32],
        events: Vec<Ev>,
    }
    let body = Body {
        seq,
        prev,
        events: vec![Ev {
            at: T0,
            event: AuditEvent::new(AuditKind::ConfigChanged).count(count),
        }],
    };
    let mut b = Vec::new();
    ciborium::into_writer(&body, &mut b).unwrap();
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"konvert-audit v2");
    h.update(&b);
    let mut out = h.finalize().to_vec();
    out.extend_from_slice(&b);
    out
}

fn hash_of(db: &sled::Db, seq: u64) -> [u8; 32] {
    db.get(key(seq)).unwrap().unwrap()[..32].try_into().unwrap()
}

#[test]
fn intact_chain_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    make(tmp.path());
    assert_eq!(verify(tmp.path()).unwrap().entries, 10);
}

#[test]
fn modified_entry_is_found() {
    let tmp = tempfile::tempdir().unwrap();
    make(tmp.path());
    tamper(tmp.path(), |db| {
        let mut v = db.get(key(4)).unwrap().unwrap().to_vec();
        let last = v.len() - 1;
        v[last] ^= 1;
        db.insert(key(4), v).unwrap();
    });
    assert_eq!(
        broken(tmp.path()),
        AuditBreak {
            index: 4,
            kind: BreakKind::Modified
        }
    );
}

#[test]
fn rewritten_entry_with_recomputed_hash_is_found() {
    let tmp = tempfile::tempdir().unwrap();
    make(tmp.path());
    tamper(tmp.path(), |db| {
        let prev = hash_of(db, 3);
        db.insert(key(4), forge(4, prev, 999)).unwrap();
    });
    assert_eq!(
        broken(tmp.path()),
        AuditBreak {
            index: 4,
            kind: BreakKind::Modified
        }
    );
}

#[test]
fn deleted_entry_is_found() {
    let tmp = tempfile::tempdir().unwrap();
    make(tmp.path());
    tamper(tmp.path(), |db| {
        db.remove(key(6)).unwrap();
    });
    assert_eq!(
        broken(tmp.path()),
        AuditBreak {
            index: 6,
            kind: BreakKind::Deleted
        }
    );
}

#[test]
fn inserted_entry_is_found() {
    let tmp = tempfile::tempdir().unwrap();
    make(tmp.path());
    tamper(tmp.path(), |db| {
        // Shift entries 5..=9 up by one (renumbered, hashes recomputed) and
        // slip a forged entry in at 5.
        let old: Vec<Vec<u8>> = (0..10)
            .map(|s| db.get(key(s)).unwrap().unwrap().to_vec())
            .collect();
        let prev4 = hash_of(db, 4);
        let forged = forge(5, prev4, 777);
        db.insert(key(5), forged).unwrap();
        for s in 5..10u64 {
            // Keep each moved entry's own prev link, renumber it.
            let v = &old[s as usize];
            let prev: [u8; 32] = {
                #[derive(serde::Deserialize)]
                struct B {
                    #[serde(with = "serde_bytes")]
                    prev: Vec<u8>,
                }
                let b: B = ciborium::from_reader(&v[32..]).unwrap();
                b.prev.try_into().unwrap()
            };
            db.insert(key(s + 1), forge(s + 1, prev, s)).unwrap();
        }
    });
    assert_eq!(
        broken(tmp.path()),
        AuditBreak {
            index: 5,
            kind: BreakKind::Inserted
        }
    );
}

#[test]
fn reordered_entries_are_found() {
    let tmp = tempfile::tempdir().unwrap();
    make(tmp.path());
    tamper(tmp.path(), |db| {
        let a = db.get(key(2)).unwrap().unwrap();
        let b = db.get(key(3)).unwrap().unwrap();
        db.insert(key(2), b).unwrap();
        db.insert(key(3), a).unwrap();
    });
    assert_eq!(
        broken(tmp.path()),
        AuditBreak {
            index: 2,
            kind: BreakKind::Reordered
        }
    );
}

// ---- pruning: the anchor ----

const YEAR: i64 = 366 * DAY; // past the 365-day audit retention of `policy()`

fn append(s: &Store, i: u64) {
    s.audit_append(
        &AuditEvent::new(AuditKind::ConfigChanged)
            .detail("profile-reloaded")
            .count(i),
    )
    .unwrap();
}

/// A store with 10 entries at T0 (seq 0..=9) and 5 at T0 + 100 days
/// (10..=14); at T0 + 366 days a sweep prunes the first 10 (past the 365-day
/// audit retention) and records it at 15. Returns the anchor and the head
/// saved after each entry (`heads[i]` ends at entry i).
fn make_pruned(dir: &Path) -> (AuditAnchor, Vec<AuditHead>) {
    let clock = Arc::new(ManualClock::new(T0));
    let s = open(dir, clock.clone());
    let mut heads = Vec::new();
    for i in 0..15u64 {
        if i == 10 {
            clock.advance(100 * DAY);
        }
        append(&s, i);
        heads.push(s.audit_head().unwrap());
    }
    clock.set(T0 + YEAR);
    let report = s.sweep(1000).unwrap();
    assert_eq!(report.audit_pruned, 10);
    assert!(!report.remaining);
    let chain = s.audit_verify().unwrap();
    assert_eq!((chain.first, chain.end, chain.entries), (10, 16, 6));
    (chain.anchor.unwrap(), heads)
}

fn open_at(dir: &Path, now: i64) -> Store {
    open(dir, Arc::new(ManualClock::new(now)))
}

/// Encode an anchor record as the store does (an attacker can too).
fn anchor_bytes(a: &AuditAnchor) -> Vec<u8> {
    let mut v = b"KVANCHR1".to_vec();
    v.extend_from_slice(&a.next_seq.to_be_bytes());
    v.extend_from_slice(&a.last_block_seq.to_be_bytes());
    v.extend_from_slice(&a.hash);
    v.extend_from_slice(&a.last_at.to_be_bytes());
    v.extend_from_slice(&a.pruned_at.to_be_bytes());
    v.extend_from_slice(&a.pruned.to_be_bytes());
    v
}

fn decode_anchor(v: &[u8]) -> AuditAnchor {
    assert_eq!(&v[..8], b"KVANCHR1");
    let u = |i: usize| -> [u8; 8] { v[i..i + 8].try_into().unwrap() };
    AuditAnchor {
        next_seq: u64::from_be_bytes(u(8)),
        last_block_seq: u64::from_be_bytes(u(16)),
        hash: v[24..56].try_into().unwrap(),
        last_at: i64::from_be_bytes(u(56)),
        pruned_at: i64::from_be_bytes(u(64)),
        pruned: u64::from_be_bytes(u(72)),
    }
}

/// A block of `events` with a correct own hash.
fn forge_block(seq: u64, prev: [u8; 32], events: Vec<(i64, AuditEvent)>) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Ev {
        at: i64,
        event: AuditEvent,
    }
    #[derive(serde::Serialize)]
    struct Body {
        seq: u64,
        #[serde(with = "serde_bytes")]
        prev: [u8; 32],
        events: Vec<Ev>,
    }
    let body = Body {
        seq,
        prev,
        events: events.into_iter().map(|(at, event)| Ev { at, event }).collect(),
    };
    let mut b = Vec::new();
    ciborium::into_writer(&body, &mut b).unwrap();
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"konvert-audit v2");
    h.update(&b);
    let mut out = h.finalize().to_vec();
    out.extend_from_slice(&b);
    out
}

fn prev_of(db: &sled::Db, seq: u64) -> [u8; 32] {
    #[derive(serde::Deserialize)]
    struct B {
        #[serde(with = "serde_bytes")]
        prev: Vec<u8>,
    }
    let v = db.get(key(seq)).unwrap().unwrap();
    let b: B = ciborium::from_reader(&v[32..]).unwrap();
    b.prev.try_into().unwrap()
}

#[test]
fn pruned_chain_verifies_from_its_anchor() {
    let tmp = tempfile::tempdir().unwrap();
    let (anchor, heads) = make_pruned(tmp.path());
    assert_eq!(anchor.next_seq, 10);
    assert_eq!(anchor.last_block_seq, 9);
    assert_eq!(anchor.hash, heads[9].hash);
    assert_eq!(
        (anchor.pruned, anchor.pruned_at, anchor.last_at),
        (10, T0 + YEAR, T0)
    );
    let s = open_at(tmp.path(), T0 + YEAR);
    // The pruned entries are gone; the pruning is recorded in the chain.
    let listed = s.audit_list(0, 100).unwrap();
    let seqs: Vec<u64> = listed.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (10..16).collect::<Vec<_>>());
    assert_eq!(listed[0].prev, anchor.hash);
    let ev = &listed[5].event;
    assert_eq!(ev.kind, AuditKind::AuditPruned);
    assert_eq!((ev.detail.as_deref(), ev.count), (Some("audit"), Some(10)));
    assert_eq!(ev.digest, Some(anchor.digest()));
    // Later entries chain on; a second sweep has nothing to prune.
    append(&s, 99);
    assert_eq!(s.sweep(1000).unwrap().audit_pruned, 0);
    let chain = s.audit_verify().unwrap();
    assert_eq!((chain.first, chain.end, chain.anchor), (10, 17, Some(anchor)));
    // The head saved before the pruning and still in the chain checks out,
    // as does one that ended exactly at the anchor.
    s.audit_verify_against(&heads[12]).unwrap();
    s.audit_verify_against(&heads[9]).unwrap();
    // One pruned after its retention cannot be checked any more: accepted.
    s.audit_verify_against(&heads[4]).unwrap();
    // External callers cannot write pruning events.
    assert!(matches!(
        s.audit_append(&AuditEvent::new(AuditKind::AuditPruned).detail("audit")),
        Err(Error::Invalid(_))
    ));
}

#[test]
fn pruning_is_bounded_by_the_sweep_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let s = open(tmp.path(), clock.clone());
    for i in 0..10u64 {
        append(&s, i);
    }
    clock.advance(100 * DAY);
    append(&s, 10);
    clock.set(T0 + YEAR);
    let r = s.sweep(3).unwrap();
    assert_eq!((r.audit_pruned, r.remaining), (3, true));
    let chain = s.audit_verify().unwrap();
    assert_eq!((chain.first, chain.end), (3, 12));
    let r = s.sweep(1000).unwrap();
    assert_eq!((r.audit_pruned, r.remaining), (7, false));
    let chain = s.audit_verify().unwrap();
    // Entries 0..=9 pruned; 10 kept; the two pruning events at 11 and 12.
    assert_eq!((chain.first, chain.end, chain.entries), (10, 13, 3));
    assert_eq!(chain.anchor.unwrap().pruned, 7);
    // The first pruning event was itself kept, and the last one is the anchor's.
    let listed = s.audit_list(0, 10).unwrap();
    let kinds: Vec<AuditKind> = listed.iter().map(|e| e.event.kind).collect();
    assert_eq!(
        kinds,
        vec![
            AuditKind::ConfigChanged,
            AuditKind::AuditPruned,
            AuditKind::AuditPruned
        ]
    );
}

#[test]
fn pruning_keeps_the_last_put_group_and_reopening_adds_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let end = {
        let s = open(tmp.path(), clock.clone());
        append(&s, 0);
        let m = msg(T0 as u64 * 1000, "by.mvd", "request", b"payload");
        s.put_inbox(&m).unwrap();
        clock.set(T0 + 2 * YEAR);
        while s.sweep(1000).unwrap().remaining {}
        let chain = s.audit_verify().unwrap();
        // Everything before the put group's block went; the group's block
        // stays (the group repair at open reads it).
        let first = s.audit_list(0, 1).unwrap();
        assert_eq!(first[0].seq, chain.first);
        assert_eq!(first[0].event.kind, AuditKind::Received);
        assert_eq!(first[0].event.message, Some(m.id));
        assert!(
            chain.first >= 2,
            "the entry before the put and its key's creation were pruned"
        );
        chain.end
    };
    // Reopening finds the group complete: no event is added again.
    let s = open(tmp.path(), clock);
    assert_eq!(s.audit_verify().unwrap().end, end);
}

#[test]
fn tampering_after_pruning_is_found() {
    type Tamper = fn(&sled::Db);
    let cases: Vec<(&str, Tamper, AuditBreak)> = vec![
        (
            "modified",
            |db| {
                let mut v = db.get(key(12)).unwrap().unwrap().to_vec();
                let last = v.len() - 1;
                v[last] ^= 1;
                db.insert(key(12), v).unwrap();
            },
            AuditBreak {
                index: 12,
                kind: BreakKind::Modified,
            },
        ),
        (
            "deleted",
            |db| {
                db.remove(key(12)).unwrap();
            },
            AuditBreak {
                index: 12,
                kind: BreakKind::Deleted,
            },
        ),
        (
            "reordered",
            |db| {
                let a = db.get(key(11)).unwrap().unwrap();
                let b = db.get(key(12)).unwrap().unwrap();
                db.insert(key(11), b).unwrap();
                db.insert(key(12), a).unwrap();
            },
            AuditBreak {
                index: 11,
                kind: BreakKind::Reordered,
            },
        ),
        (
            "inserted",
            |db| {
                // Slip a forged block in at 12, renumber 12..=15 to 13..=16
                // keeping their links.
                let prevs: Vec<[u8; 32]> = (12..16).map(|s| prev_of(db, s)).collect();
                let ev = |n| vec![(T0, AuditEvent::new(AuditKind::ConfigChanged).count(n))];
                db.insert(key(12), forge_block(12, hash_of(db, 11), ev(777)))
                    .unwrap();
                for (i, s) in (12..16u64).enumerate() {
                    db.insert(key(s + 1), forge_block(s + 1, prevs[i], ev(s)))
                        .unwrap();
                }
            },
            AuditBreak {
                index: 12,
                kind: BreakKind::Inserted,
            },
        ),
        (
            "blocks just after the anchor deleted",
            |db| {
                db.remove(key(10)).unwrap();
                db.remove(key(11)).unwrap();
            },
            AuditBreak {
                index: 10,
                kind: BreakKind::Deleted,
            },
        ),
        (
            "blocks after the anchor deleted and the anchor moved past them",
            |db| {
                let mut a = decode_anchor(&db.get(b"a").unwrap().unwrap());
                db.remove(key(10)).unwrap();
                db.remove(key(11)).unwrap();
                a.hash = prev_of(db, 12);
                a.last_block_seq = 11;
                a.next_seq = 12;
                a.pruned = 12;
                db.insert(b"a", anchor_bytes(&a)).unwrap();
            },
            // The pruning event in the chain records the real anchor.
            AuditBreak {
                index: 12,
                kind: BreakKind::Anchor,
            },
        ),
        (
            "anchor hash changed",
            |db| {
                let mut a = decode_anchor(&db.get(b"a").unwrap().unwrap());
                a.hash[0] ^= 1;
                db.insert(b"a", anchor_bytes(&a)).unwrap();
            },
            AuditBreak {
                index: 10,
                kind: BreakKind::Anchor,
            },
        ),
        (
            "anchor's pruning time changed",
            |db| {
                let mut a = decode_anchor(&db.get(b"a").unwrap().unwrap());
                a.pruned_at -= 1;
                db.insert(b"a", anchor_bytes(&a)).unwrap();
            },
            AuditBreak {
                index: 10,
                kind: BreakKind::Anchor,
            },
        ),
        (
            "anchor garbled",
            |db| {
                db.insert(b"a", b"garbage".to_vec()).unwrap();
            },
            AuditBreak {
                index: 0,
                kind: BreakKind::Anchor,
            },
        ),
        (
            "anchor deleted",
            |db| {
                db.remove(b"a").unwrap();
            },
            AuditBreak {
                index: 0,
                kind: BreakKind::Deleted,
            },
        ),
        (
            "the pruning event's block deleted",
            |db| {
                db.remove(key(15)).unwrap();
            },
            AuditBreak {
                index: 10,
                kind: BreakKind::Anchor,
            },
        ),
        (
            "every block deleted, anchor kept",
            |db| {
                for s in 10..16 {
                    db.remove(key(s)).unwrap();
                }
            },
            AuditBreak {
                index: 10,
                kind: BreakKind::Anchor,
            },
        ),
    ];
    for (what, tamper_with, expected) in cases {
        let tmp = tempfile::tempdir().unwrap();
        make_pruned(tmp.path());
        tamper(tmp.path(), tamper_with);
        let got = match open_at(tmp.path(), T0 + YEAR).audit_verify() {
            Err(Error::AuditBroken(b)) => b,
            other => panic!("{what}: expected a break, got {other:?}"),
        };
        assert_eq!(got, expected, "{what}");
    }
}

/// What the store alone cannot see: an attacker who removes blocks after the
/// anchor, moves the anchor past them and rewrites every block from the
/// pruning event on (here the head) with recomputed hashes leaves a chain
/// that verifies. A head saved before catches it.
#[test]
fn a_consistent_rewrite_of_anchor_and_tail_is_caught_only_against_a_saved_head() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, _) = make_pruned(tmp.path());
    let saved = open_at(tmp.path(), T0 + YEAR).audit_head().unwrap();
    assert_eq!(saved.seq, 16);
    tamper(tmp.path(), |db| {
        let mut a = decode_anchor(&db.get(b"a").unwrap().unwrap());
        db.remove(key(10)).unwrap();
        db.remove(key(11)).unwrap();
        a.hash = prev_of(db, 12);
        a.last_block_seq = 11;
        a.next_seq = 12;
        a.pruned = 12;
        db.insert(b"a", anchor_bytes(&a)).unwrap();
        let ev = AuditEvent::new(AuditKind::AuditPruned)
            .detail("audit")
            .count(12)
            .digest(a.digest());
        db.insert(key(15), forge_block(15, hash_of(db, 14), vec![(T0 + YEAR, ev)]))
            .unwrap();
    });
    let s = open_at(tmp.path(), T0 + YEAR);
    let chain = s.audit_verify().unwrap();
    assert_eq!((chain.first, chain.end), (12, 16));
    assert!(matches!(
        s.audit_verify_against(&saved),
        Err(Error::AuditBroken(AuditBreak {
            index: 15,
            kind: BreakKind::Modified
        }))
    ));
}

// ---- the published head ----

#[test]
fn truncated_tail_is_found_against_a_saved_head() {
    let tmp = tempfile::tempdir().unwrap();
    make(tmp.path());
    let saved = open_at(tmp.path(), T0).audit_head().unwrap();
    assert_eq!(saved.seq, 10);
    assert_eq!(saved.at, T0);
    // The newest two blocks removed: the chain alone still verifies.
    tamper(tmp.path(), |db| {
        assert_eq!(hash_of(db, 9), saved.hash);
        db.remove(key(9)).unwrap();
        db.remove(key(8)).unwrap();
    });
    let s = open_at(tmp.path(), T0);
    assert_eq!(s.audit_verify().unwrap().end, 8);
    assert!(matches!(
        s.audit_verify_against(&saved),
        Err(Error::AuditBroken(AuditBreak {
            index: 8,
            kind: BreakKind::Truncated
        }))
    ));
    // New entries written over the gap do not hide it.
    for i in 0..4 {
        append(&s, 100 + i);
    }
    assert_eq!(s.audit_verify().unwrap().end, 12);
    assert!(matches!(
        s.audit_verify_against(&saved),
        Err(Error::AuditBroken(AuditBreak {
            index: 9,
            kind: BreakKind::Modified
        }))
    ));
    // An earlier head that is still in the chain checks out.
    let mut early = s.audit_list(5, 1).unwrap()[0].clone();
    early.seq += 1;
    s.audit_verify_against(&AuditHead {
        seq: early.seq,
        hash: early.hash,
        at: early.at,
    })
    .unwrap();
}

fn config_with_log(dir: &Path, log: &Path, now: i64) -> StoreConfig {
    let mut c = config(dir, Arc::new(ManualClock::new(now)));
    c.audit_head_log = Some(log.to_path_buf());
    c
}

fn log_lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn head_log_records_durable_heads_and_catches_a_truncation() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, log) = (tmp.path().join("data"), tmp.path().join("heads.jsonl"));
    {
        let s = Store::open(config_with_log(&data, &log, T0)).unwrap();
        for i in 0..5 {
            append(&s, i);
        }
        // One line per published head, the last one the current head.
        let lines = log_lines(&log);
        assert_eq!(lines.len(), 5);
        let head = s.audit_head().unwrap();
        assert_eq!(last_audit_head(&log).unwrap(), Some(head));
        assert_eq!(
            lines[4],
            format!(r#"{{"seq":5,"hash":"{}","at":{T0}}}"#, hex::encode(head.hash))
        );
        assert_eq!(AuditHead::parse_json_line(&lines[4]), Some(head));
        // audit_head does not repeat a head already logged.
        assert_eq!(log_lines(&log).len(), 5);
        s.audit_verify_against_log().unwrap();
    }
    tamper(&data, |db| {
        db.remove(key(4)).unwrap();
        db.remove(key(3)).unwrap();
    });
    let s = Store::open(config_with_log(&data, &log, T0)).unwrap();
    s.audit_verify().unwrap();
    assert!(matches!(
        s.audit_verify_against_log(),
        Err(Error::AuditBroken(AuditBreak {
            index: 3,
            kind: BreakKind::Truncated
        }))
    ));
    // The store does not log past a head its chain no longer holds: the
    // log keeps the evidence.
    for i in 0..4 {
        append(&s, 10 + i);
    }
    assert_eq!(log_lines(&log).len(), 5);
    assert!(matches!(
        s.audit_verify_against_log(),
        Err(Error::AuditBroken(AuditBreak {
            index: 4,
            kind: BreakKind::Modified
        }))
    ));
}

#[test]
fn head_log_survives_a_torn_last_line() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, log) = (tmp.path().join("data"), tmp.path().join("heads.jsonl"));
    {
        let s = Store::open(config_with_log(&data, &log, T0)).unwrap();
        append(&s, 0);
    }
    // A crash in the middle of writing a line.
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(&mut f, br#"{"seq":2,"ha"#).unwrap();
    drop(f);
    let first = AuditHead::parse_json_line(&log_lines(&log)[0]).unwrap();
    assert_eq!(last_audit_head(&log).unwrap(), Some(first));
    let s = Store::open(config_with_log(&data, &log, T0)).unwrap();
    append(&s, 1);
    let lines = log_lines(&log);
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[1], r#"{"seq":2,"ha"#);
    assert_eq!(AuditHead::parse_json_line(&lines[2]).unwrap().seq, 2);
    s.audit_verify_against_log().unwrap();
    // A complete last line that is not a head is refused.
    std::fs::write(&log, "{\"seq\":1}\n").unwrap();
    assert!(matches!(last_audit_head(&log), Err(Error::Corrupt { .. })));
}

#[test]
fn sweep_publishes_the_head_and_pruning_keeps_the_log_valid() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, log) = (tmp.path().join("data"), tmp.path().join("heads.jsonl"));
    let clock = Arc::new(ManualClock::new(T0));
    let mut c = config(&data, clock.clone());
    c.audit_head_log = Some(log.clone());
    let s = Store::open(c).unwrap();
    append(&s, 0);
    append(&s, 1);
    clock.set(T0 + YEAR);
    assert_eq!(s.sweep(1000).unwrap().audit_pruned, 2);
    // The pruning event's block was published by the sweep.
    let last = last_audit_head(&log).unwrap().unwrap();
    assert_eq!((last.seq, last.at), (3, T0 + YEAR));
    s.audit_verify_against_log().unwrap();
    // A head saved before that was pruned after its retention: accepted.
    let first = AuditHead::parse_json_line(&log_lines(&log)[0]).unwrap();
    s.audit_verify_against(&first).unwrap();
}

#[test]
fn pruning_past_an_unexpired_saved_head_is_found() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, heads) = make_pruned(tmp.path());
    // Remove entries 10..=12 and move the anchor past them, consistently
    // with a forged pruning event in the head block.
    tamper(tmp.path(), |db| {
        let mut a = decode_anchor(&db.get(b"a").unwrap().unwrap());
        for s in 10..13 {
            db.remove(key(s)).unwrap();
        }
        a.hash = prev_of(db, 13);
        a.last_block_seq = 12;
        a.next_seq = 13;
        a.pruned = 13;
        db.insert(b"a", anchor_bytes(&a)).unwrap();
        let ev = AuditEvent::new(AuditKind::AuditPruned)
            .detail("audit")
            .count(13)
            .digest(a.digest());
        db.insert(key(15), forge_block(15, hash_of(db, 14), vec![(T0 + YEAR, ev)]))
            .unwrap();
    });
    let s = open_at(tmp.path(), T0 + YEAR);
    s.audit_verify().unwrap();
    // Entry 11 was written at T0 + 100 days: it cannot have expired yet.
    assert!(matches!(
        s.audit_verify_against(&heads[11]),
        Err(Error::AuditBroken(AuditBreak {
            index: 13,
            kind: BreakKind::Anchor
        }))
    ));
}

#[test]
fn a_tampered_chain_is_not_pruned() {
    let tmp = tempfile::tempdir().unwrap();
    make(tmp.path());
    tamper(tmp.path(), |db| {
        let mut v = db.get(key(3)).unwrap().unwrap().to_vec();
        let last = v.len() - 1;
        v[last] ^= 1;
        db.insert(key(3), v).unwrap();
    });
    let s = open_at(tmp.path(), T0 + YEAR);
    // Every entry is past its retention, but pruning would remove the
    // evidence: nothing is pruned and the break stays visible.
    let r = s.sweep(1000).unwrap();
    assert_eq!((r.audit_pruned, r.remaining), (0, false));
    assert!(matches!(
        s.audit_verify(),
        Err(Error::AuditBroken(AuditBreak {
            index: 3,
            kind: BreakKind::Modified
        }))
    ));
    assert_eq!(s.audit_list(0, 1).unwrap()[0].seq, 0);
}
