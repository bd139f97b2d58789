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
