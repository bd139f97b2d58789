#![allow(clippy::unwrap_used)]
//! Master-key rotation: the keyring is re-sealed under a new master key,
//! online (`Store::rotate_master_key`) or offline (`rekey_keyring`), without
//! losing a message; the old key no longer opens it; an interrupted
//! rotation leaves the old or the new keyring, never neither.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use konvert_store::*;

fn new_master() -> MasterKey {
    MasterKey::from_bytes([42u8; 32])
}

fn open_with(dir: &Path, key: MasterKey) -> Result<Store> {
    let mut c = config(dir, Arc::new(ManualClock::new(T0)));
    c.master_key = key;
    Store::open(c)
}

/// A store with an inbound and an outbound message and one in a case; the
/// messages, closed again.
fn fill(dir: &Path) -> Vec<(Direction, MessageId, Vec<u8>)> {
    let s = open(dir, Arc::new(ManualClock::new(T0)));
    let case = CaseId::new_v7(T0 as u64 * 1000);
    s.case_open(&NewCase {
        id: case,
        peer: "by.mvd".into(),
        agreement: "kz-by-2019".into(),
        state: "requested".into(),
        deadline: None,
    })
    .unwrap();
    let a = msg(T0 as u64 * 1000 + 1, "by.mvd", "request", b"inbound payload");
    let b = msg(T0 as u64 * 1000 + 2, "by.mvd", "request", b"outbound payload");
    let mut c = msg(T0 as u64 * 1000 + 3, "by.mvd", "request", b"case payload");
    c.case = Some(case);
    s.put_inbox(&a).unwrap();
    s.put_outbox(&b).unwrap();
    s.put_inbox(&c).unwrap();
    vec![
        (Direction::Inbound, a.id, a.payload),
        (Direction::Outbound, b.id, b.payload),
        (Direction::Inbound, c.id, c.payload),
    ]
}

fn all_readable(s: &Store, msgs: &[(Direction, MessageId, Vec<u8>)]) {
    for (d, id, payload) in msgs {
        assert_eq!(&s.get(*d, id).unwrap().payload, payload);
    }
}

fn refused_as_wrong_master_key(r: Result<Store>) {
    let err = r.unwrap_err();
    assert!(matches!(err, Error::KeyringAuth { .. }), "{err:?}");
    assert!(err.to_string().contains("master key"), "{err}");
}

#[test]
fn online_rotation_keeps_every_message_and_retires_the_old_key() {
    let tmp = tempfile::tempdir().unwrap();
    let msgs = fill(tmp.path());
    let keyring = tmp.path().join("keyring");
    let before = read_keyring_summary(&keyring, &master()).unwrap();
    let mut msgs = msgs;
    {
        let s = open(tmp.path(), Arc::new(ManualClock::new(T0)));
        s.rotate_master_key(new_master()).unwrap();
        // Still open and working: reads, and keys created after the rotation.
        all_readable(&s, &msgs);
        let later = msg((T0 as u64 + 7200) * 1000, "by.mvd", "notice", b"after rotation");
        s.put_inbox(&later).unwrap();
        msgs.push((Direction::Inbound, later.id, later.payload));
        // The rotation is audited, without key material.
        let rotated: Vec<AuditEntry> = s
            .audit_list(0, 100)
            .unwrap()
            .into_iter()
            .filter(|e| e.event.kind == AuditKind::MasterKeyRotated)
            .collect();
        assert_eq!(rotated.len(), 1);
        let ev = &rotated[0].event;
        assert_eq!(ev.detail.as_deref(), Some("keyring"));
        assert_eq!(ev.count, Some(before.generation + 1));
        assert_eq!(
            (ev.digest, ev.message, ev.case, ev.peer.as_deref()),
            (None, None, None, None)
        );
        s.audit_verify().unwrap();
    }
    // The new key opens it with the same keys; the old one does not.
    let after = read_keyring_summary(&keyring, &new_master()).unwrap();
    assert!(before.bucket_hours.iter().all(|h| after.bucket_hours.contains(h)));
    assert_eq!(after.cases, before.cases);
    refused_as_wrong_master_key(open_with(tmp.path(), master()));
    let s = open_with(tmp.path(), new_master()).unwrap();
    all_readable(&s, &msgs);
    s.audit_verify().unwrap();
}

#[test]
fn offline_rekey_keeps_every_message_and_is_safe_to_run_again() {
    let tmp = tempfile::tempdir().unwrap();
    let msgs = fill(tmp.path());
    let keyring = tmp.path().join("keyring");
    let before = read_keyring_summary(&keyring, &master()).unwrap();
    let summary = rekey_keyring(&keyring, &master(), &new_master()).unwrap();
    assert_eq!(summary.generation, before.generation + 1);
    assert_eq!(
        (&summary.bucket_hours, &summary.cases),
        (&before.bucket_hours, &before.cases)
    );
    refused_as_wrong_master_key(open_with(tmp.path(), master()));
    {
        let s = open_with(tmp.path(), new_master()).unwrap();
        all_readable(&s, &msgs);
    }
    // Run again after (say) a crash that hid whether it completed: the
    // keyring is already under the new key and left as it is.
    assert_eq!(
        rekey_keyring(&keyring, &master(), &new_master()).unwrap(),
        summary
    );
    // Neither key opens it: refused, named.
    let err = rekey_keyring(
        &keyring,
        &MasterKey::from_bytes([1u8; 32]),
        &MasterKey::from_bytes([2u8; 32]),
    )
    .unwrap_err();
    assert!(matches!(err, Error::KeyringAuth { .. }), "{err:?}");
    // It never creates a keyring.
    let missing = tmp.path().join("no-such-keyring");
    assert!(matches!(
        rekey_keyring(&missing, &master(), &new_master()),
        Err(Error::Io { .. })
    ));
    assert!(!missing.exists());
}

#[test]
fn offline_rekey_refuses_a_keyring_in_use() {
    let tmp = tempfile::tempdir().unwrap();
    let msgs = fill(tmp.path());
    let keyring = tmp.path().join("keyring");
    let s = open(tmp.path(), Arc::new(ManualClock::new(T0)));
    assert!(matches!(
        rekey_keyring(&keyring, &master(), &new_master()),
        Err(Error::Locked { .. })
    ));
    all_readable(&s, &msgs);
    drop(s);
    rekey_keyring(&keyring, &master(), &new_master()).unwrap();
}

/// A crash after the new keyring was written to `keyring.tmp` and before
/// the rename: the old keyring is in place and opens with the old key; the
/// temporary file is removed at open. (A crash after the rename is the
/// rotation completed: the new key opens it, as tested above.)
#[test]
fn a_rotation_interrupted_before_its_rename_leaves_the_old_keyring() {
    let tmp = tempfile::tempdir().unwrap();
    let msgs = fill(tmp.path());
    let keyring = tmp.path().join("keyring");
    let tmp_file = tmp.path().join("keyring.tmp");
    // Make exactly what the rotation writes before its rename: the keyring
    // sealed under the new key, as keyring.tmp.
    let copy = tmp.path().join("copy");
    std::fs::copy(&keyring, &copy).unwrap();
    rekey_keyring(&copy, &master(), &new_master()).unwrap();
    std::fs::rename(&copy, &tmp_file).unwrap();
    refused_as_wrong_master_key(open_with(tmp.path(), new_master()));
    assert!(!tmp_file.exists(), "the leftover is removed at open");
    std::fs::copy(&keyring, &copy).unwrap();
    rekey_keyring(&copy, &master(), &new_master()).unwrap();
    std::fs::rename(&copy, &tmp_file).unwrap();
    {
        let s = open_with(tmp.path(), master()).unwrap();
        assert!(!tmp_file.exists());
        all_readable(&s, &msgs);
    }
    // A torn temporary file (crash while writing it) is removed too.
    std::fs::write(&tmp_file, b"KVKEYRG1 torn").unwrap();
    read_keyring_summary(&keyring, &master()).unwrap();
    let s = open_with(tmp.path(), master()).unwrap();
    assert!(!tmp_file.exists());
    all_readable(&s, &msgs);
    drop(s);
    // Offline re-keying cleans it up as well, and does its work.
    std::fs::write(&tmp_file, b"KVKEYRG1 torn").unwrap();
    rekey_keyring(&keyring, &master(), &new_master()).unwrap();
    assert!(!tmp_file.exists());
    all_readable(&open_with(tmp.path(), new_master()).unwrap(), &msgs);
}
