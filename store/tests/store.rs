#![allow(clippy::unwrap_used)]
//! Behaviour of the store through its public API, with an injected clock.

mod common;

use std::sync::Arc;

use common::*;
use konvert_store::*;

fn ms(t: i64) -> u64 {
    (t as u64) * 1000
}

#[test]
fn outbox_lifecycle_and_receipts() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let s = open(tmp.path(), clock.clone());
    let m = msg(ms(T0), "by.mvd", "request", b"payload one");
    let put = s.put_outbox(&m).unwrap();
    assert!(put.created);
    assert_eq!(put.meta.state, MessageState::Queued);
    assert_eq!(put.meta.expires_at, T0 + 30 * DAY);
    assert_eq!(s.outbox_get(&m.id).unwrap().payload, b"payload one");
    assert_eq!(s.outbox_pending(None, 10).unwrap().len(), 1);

    s.mark_sealed(&m.id).unwrap();
    clock.advance(5);
    let sent = s.mark_sent(&m.id).unwrap();
    assert_eq!(sent.state, MessageState::Sent);
    assert_eq!(sent.attempts, 1);
    assert!(s.outbox_pending(None, 10).unwrap().is_empty());
    let d = s
        .mark_delivered(
            &m.id,
            &NewReceipt {
                outcome: "delivered".into(),
                bytes: b"signed receipt".to_vec(),
            },
        )
        .unwrap();
    assert_eq!(d.state, MessageState::Delivered);
    // Delivered cannot go back to failed.
    assert!(matches!(
        s.mark_failed(&m.id, "timeout"),
        Err(Error::BadTransition { .. })
    ));

    let r = s.receipt(&m.id).unwrap();
    assert_eq!(r.bytes, b"signed receipt");
    assert_eq!(r.outcome, "delivered");
    assert_eq!(s.receipts_by_peer("by.mvd", None, 10).unwrap().len(), 1);
    assert!(s.receipts_by_peer("am.police", None, 10).unwrap().is_empty());
    assert_eq!(s.receipts_between(ms(T0), ms(T0 + 1), 10).unwrap().len(), 1);
    assert!(s.receipts_between(ms(T0 + 1), ms(T0 + 2), 10).unwrap().is_empty());

    let by_state = s
        .list_by_state(Direction::Outbound, MessageState::Delivered, None, 10)
        .unwrap();
    assert_eq!(by_state.len(), 1);
    assert_eq!(
        s.list_by_peer(Direction::Outbound, "by.mvd", None, 10)
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        s.list_between(Direction::Outbound, ms(T0), ms(T0) + 1, 10)
            .unwrap()
            .len(),
        1
    );
    s.audit_verify().unwrap();
    let kinds: Vec<AuditKind> = s
        .audit_list(0, 100)
        .unwrap()
        .into_iter()
        .map(|e| e.event.kind)
        .collect();
    for k in [
        AuditKind::Accepted,
        AuditKind::Sealed,
        AuditKind::Sent,
        AuditKind::Delivered,
    ] {
        assert!(kinds.contains(&k), "{k:?} missing from {kinds:?}");
    }
}

#[test]
fn inbox_is_idempotent_and_ack_removes_from_new() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let s = open(tmp.path(), clock.clone());
    let mut ids = Vec::new();
    for i in 0..5u64 {
        let m = msg(ms(T0) + i, "by.mvd", "request", format!("p{i}").as_bytes());
        assert!(s.put_inbox(&m).unwrap().created);
        ids.push(m.id);
    }
    // Same id again, even with other bytes: nothing new stored.
    let mut dup = msg(ms(T0), "by.mvd", "request", b"other");
    dup.id = ids[0];
    let again = s.put_inbox(&dup).unwrap();
    assert!(!again.created);
    assert_eq!(s.inbox_get(&ids[0]).unwrap().payload, b"p0");
    let audit_len = s.audit_list(0, 1000).unwrap().len();
    s.put_inbox(&dup).unwrap();
    assert_eq!(s.audit_list(0, 1000).unwrap().len(), audit_len);

    // Listing with a cursor.
    let first = s.inbox_list(None, 2).unwrap();
    assert_eq!(first.iter().map(|m| m.id).collect::<Vec<_>>(), ids[..2].to_vec());
    let next = s.inbox_list(Some(&first[1].id), 10).unwrap();
    assert_eq!(next.len(), 3);

    // Fetch without ack keeps it new; ack removes it for good.
    s.inbox_get(&ids[2]).unwrap();
    assert_eq!(s.inbox_list(None, 10).unwrap().len(), 5);
    s.inbox_ack(&ids[2]).unwrap();
    s.inbox_ack(&ids[2]).unwrap();
    let listed: Vec<MessageId> = s
        .inbox_list(None, 10)
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(listed.len(), 4);
    assert!(!listed.contains(&ids[2]));
    drop(s);
    let s = open(tmp.path(), clock);
    assert_eq!(s.inbox_list(None, 10).unwrap().len(), 4);
    assert_eq!(
        s.meta(Direction::Inbound, &ids[2]).unwrap().state,
        MessageState::Acknowledged
    );
    s.audit_verify().unwrap();
}

#[test]
fn a_message_is_named_by_the_digest_given_with_it_or_its_sha256() {
    use sha2::Digest as _;
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path(), Arc::new(ManualClock::new(T0)));
    let plain = msg(ms(T0), "by.mvd", "request", b"envelope one");
    let mut given = msg(ms(T0) + 1, "by.mvd", "request", b"envelope two");
    given.digest = Some([0xab; 32]);
    s.put_inbox(&plain).unwrap();
    s.put_outbox(&given).unwrap();
    let sha: [u8; 32] = sha2::Sha256::digest(b"envelope one").into();
    assert_eq!(s.meta(Direction::Inbound, &plain.id).unwrap().digest, sha);
    assert_eq!(s.meta(Direction::Outbound, &given.id).unwrap().digest, [0xab; 32]);
    // The audit trail names each by the same digest.
    let named = |id: MessageId| {
        s.audit_list(0, 100)
            .unwrap()
            .into_iter()
            .find(|e| e.event.message == Some(id))
            .and_then(|e| e.event.digest)
    };
    assert_eq!(named(plain.id), Some(sha));
    assert_eq!(named(given.id), Some([0xab; 32]));
}

#[test]
fn expiry_destroys_payload_and_key_then_purges_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let s = open(tmp.path(), clock.clone());
    let short = msg(ms(T0), "by.mvd", "notice", b"short-lived");
    let long = msg(ms(T0) + 1, "by.mvd", "request", b"long-lived");
    s.put_inbox(&short).unwrap();
    s.put_inbox(&long).unwrap();
    let short_hour = (T0 + 2 * DAY).div_euclid(HOUR);
    assert!(s.keyring_summary().bucket_hours.contains(&short_hour));

    // Not yet expired: nothing happens.
    clock.set(T0 + 2 * DAY - 10);
    let r = s.sweep(1000).unwrap();
    assert_eq!(r.destroyed, 0);
    assert!(s.inbox_get(&short.id).is_ok());

    // Past the end of the expiry hour.
    clock.set((short_hour + 1) * HOUR);
    let r = s.sweep(1000).unwrap();
    assert_eq!(r.destroyed, 1);
    assert!(r.keys_destroyed >= 1);
    assert!(!r.remaining);
    assert!(matches!(s.inbox_get(&short.id), Err(Error::Destroyed { .. })));
    assert_eq!(s.inbox_get(&long.id).unwrap().payload, b"long-lived");
    let meta = s.meta(Direction::Inbound, &short.id).unwrap();
    assert!(meta.destroyed_at.is_some());
    // Destroyed messages are not listed as new.
    assert_eq!(s.inbox_list(None, 10).unwrap().len(), 1);
    let on_disk = read_keyring_summary(&tmp.path().join("keyring"), &master()).unwrap();
    assert!(!on_disk.bucket_hours.contains(&short_hour));
    let audit = s.audit_list(0, 1000).unwrap();
    assert!(audit
        .iter()
        .any(|e| e.event.kind == AuditKind::Destroyed && e.event.count == Some(1)));
    assert!(audit.iter().any(|e| e.event.kind == AuditKind::KeyDestroyed));

    // After the audit retention, the metadata is purged too.
    clock.set(T0 + 400 * DAY);
    let r = s.sweep(1000).unwrap();
    // The long one's payload went at its own expiry; the short one's
    // metadata is past its audit retention.
    assert_eq!(r.destroyed, 1, "{r:?}");
    assert_eq!(r.purged, 1, "{r:?}");
    // The report names it, for the caller's own records of it.
    assert_eq!(r.purged_messages, [(Direction::Inbound, short.id)]);
    assert!(r.purged_cases.is_empty());
    assert!(matches!(
        s.meta(Direction::Inbound, &short.id),
        Err(Error::NotFound { .. })
    ));
    let left = s.list_by_peer(Direction::Inbound, "by.mvd", None, 10).unwrap();
    assert_eq!(left.len(), 1);
    assert!(left[0].destroyed_at.is_some());
    s.audit_verify().unwrap();
}

#[test]
fn sweep_is_bounded_and_resumes_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let ids: Vec<MessageId> = {
        let s = open(tmp.path(), clock.clone());
        (0..50u64)
            .map(|i| {
                let m = msg(ms(T0) + i, "am.police", "notice", b"x");
                s.put_outbox(&m).unwrap();
                m.id
            })
            .collect()
    };
    // Expired while the gateway was down: keys go at open.
    clock.set(T0 + 3 * DAY);
    let s = open(tmp.path(), clock.clone());
    assert!(s
        .keyring_summary()
        .bucket_hours
        .iter()
        .all(|h| *h >= (T0 + 3 * DAY) / HOUR));
    assert!(matches!(s.outbox_get(&ids[0]), Err(Error::Destroyed { .. })));
    let r = s.sweep(20).unwrap();
    assert_eq!(r.destroyed, 20);
    assert!(r.remaining);
    let mut total = r.destroyed;
    loop {
        let r = s.sweep(20).unwrap();
        total += r.destroyed;
        if !r.remaining {
            break;
        }
    }
    assert_eq!(total, 50);
    assert_eq!(s.stats().destroyed, 50);
    s.audit_verify().unwrap();
}

#[test]
fn cases_deadlines_and_early_destruction() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let s = open(tmp.path(), clock.clone());
    let case = CaseId::new_v7(ms(T0));
    let other = CaseId::new_v7(ms(T0) + 1);
    s.case_open(&NewCase {
        id: case,
        peer: "by.mvd".into(),
        agreement: "kz-by-2019".into(),
        state: "requested".into(),
        deadline: Some(T0 + 30 * DAY),
    })
    .unwrap();
    s.case_open(&NewCase {
        id: other,
        peer: "by.mvd".into(),
        agreement: "kz-by-2019".into(),
        state: "requested".into(),
        deadline: Some(T0 + 10 * DAY),
    })
    .unwrap();
    assert!(s.keyring_summary().cases.contains(&case));
    let mut m1 = msg(ms(T0) + 2, "by.mvd", "request", b"in case");
    m1.case = Some(case);
    let mut m2 = msg(ms(T0) + 3, "by.mvd", "response", b"answer in case");
    m2.case = Some(case);
    let free = msg(ms(T0) + 4, "by.mvd", "request", b"no case");
    s.put_outbox(&m1).unwrap();
    s.put_inbox(&m2).unwrap();
    s.put_inbox(&free).unwrap();

    assert_eq!(
        s.cases_due_within(15 * DAY, 10)
            .unwrap()
            .iter()
            .map(|c| c.id)
            .collect::<Vec<_>>(),
        vec![other]
    );
    clock.set(T0 + 20 * DAY);
    assert_eq!(
        s.cases_overdue(10)
            .unwrap()
            .iter()
            .map(|c| c.id)
            .collect::<Vec<_>>(),
        vec![other]
    );
    s.case_update(&other, "answered", None).unwrap();
    assert!(s.cases_overdue(10).unwrap().is_empty());
    assert_eq!(s.case_get(&other).unwrap().state, "answered");

    // Early destruction of one case.
    assert_eq!(s.destroy_case(&case).unwrap(), 2);
    assert!(matches!(s.outbox_get(&m1.id), Err(Error::Destroyed { .. })));
    assert!(matches!(s.inbox_get(&m2.id), Err(Error::Destroyed { .. })));
    assert_eq!(s.inbox_get(&free.id).unwrap().payload, b"no case");
    assert!(s.case_get(&case).unwrap().destroyed_at.is_some());
    assert!(s.cases_due_within(100 * DAY, 10).unwrap().is_empty());
    let on_disk = read_keyring_summary(&tmp.path().join("keyring"), &master()).unwrap();
    assert!(!on_disk.cases.contains(&case));
    assert!(on_disk.cases.contains(&other));
    // A destroyed case takes no new messages.
    let mut m3 = msg(ms(T0) + 5, "by.mvd", "request", b"late");
    m3.case = Some(case);
    assert!(matches!(s.put_inbox(&m3), Err(Error::Destroyed { .. })));
    s.audit_verify().unwrap();

    // At the end of the audit retention the case's record and its messages'
    // metadata are purged, and the sweep names them.
    clock.set(T0 + 20 * DAY + 366 * DAY);
    let (mut cases, mut messages) = (Vec::new(), Vec::new());
    loop {
        let r = s.sweep(1000).unwrap();
        cases.extend(r.purged_cases);
        messages.extend(r.purged_messages);
        if !r.remaining {
            break;
        }
    }
    assert!(cases.contains(&case), "{cases:?}");
    for (dir, id) in [(Direction::Outbound, m1.id), (Direction::Inbound, m2.id)] {
        assert!(messages.contains(&(dir, id)), "{messages:?}");
        assert!(matches!(s.meta(dir, &id), Err(Error::NotFound { .. })));
    }
    assert!(matches!(s.case_get(&case), Err(Error::NotFound { .. })));
}

#[test]
fn marker_never_reaches_the_disk() {
    #[derive(serde::Serialize)]
    struct Person<'a> {
        surname_cyr: &'a str,
        surname_lat: &'a str,
        given_name: &'a str,
    }
    const LAT: &str = "Zxqvmarkerovich";
    const CYR: &str = "Жщюмаркеровна";
    let person = Person {
        surname_cyr: CYR,
        surname_lat: LAT,
        given_name: "Ivan",
    };
    let mut cbor = Vec::new();
    ciborium::into_writer(&person, &mut cbor).unwrap();
    let mut json = serde_json_like(person.surname_lat, person.surname_cyr);
    json.extend_from_slice(&cbor);

    let mut needles: Vec<Vec<u8>> = Vec::new();
    for s in [LAT, CYR] {
        needles.push(s.as_bytes().to_vec());
        needles.push(s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect());
        needles.push(s.encode_utf16().flat_map(|u| u.to_be_bytes()).collect());
        needles.push(hex_lower(s.as_bytes()).into_bytes());
        let mut item = Vec::new();
        ciborium::into_writer(&s, &mut item).unwrap();
        needles.push(item);
    }
    let scan = |when: &str, root: &std::path::Path| {
        for f in all_files(root) {
            let bytes = std::fs::read(&f).unwrap();
            for n in &needles {
                assert!(!contains(&bytes, n), "marker found {when} in {}", f.display());
            }
        }
    };

    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let s = open(tmp.path(), clock.clone());
    let case = CaseId::new_v7(ms(T0));
    s.case_open(&NewCase {
        id: case,
        peer: "by.mvd".into(),
        agreement: "kz-by-2019".into(),
        state: "requested".into(),
        deadline: None,
    })
    .unwrap();
    let a = msg(ms(T0), "by.mvd", "notice", &json);
    let mut b = msg(ms(T0) + 1, "by.mvd", "request", &cbor);
    b.case = Some(case);
    s.put_inbox(&a).unwrap();
    s.put_outbox(&b).unwrap();
    s.mark_delivered(
        &b.id,
        &NewReceipt {
            outcome: "delivered".into(),
            bytes: cbor.clone(),
        },
    )
    .unwrap();
    s.sync().unwrap();
    assert_eq!(s.inbox_get(&a.id).unwrap().payload, json);
    scan("before expiry", tmp.path());

    s.destroy_case(&case).unwrap();
    clock.set(T0 + 3 * DAY);
    s.sweep(1000).unwrap();
    assert!(matches!(s.inbox_get(&a.id), Err(Error::Destroyed { .. })));
    assert!(matches!(s.outbox_get(&b.id), Err(Error::Destroyed { .. })));
    drop(s);
    scan("after expiry", tmp.path());
    let kr = read_keyring_summary(&tmp.path().join("keyring"), &master()).unwrap();
    assert!(!kr.cases.contains(&case));
    assert!(!kr.bucket_hours.contains(&(T0 + 2 * DAY).div_euclid(HOUR)));
}

fn serde_json_like(lat: &str, cyr: &str) -> Vec<u8> {
    format!("{{\"surname_lat\":\"{lat}\",\"surname_cyr\":\"{cyr}\"}}").into_bytes()
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn second_open_is_refused_by_the_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let _s = open(tmp.path(), clock.clone());
    let err = Store::open(config(tmp.path(), clock)).unwrap_err();
    assert!(matches!(err, Error::Locked { .. }));
    let text = err.to_string();
    assert!(
        text.contains(&tmp.path().display().to_string()) && text.contains("another konvertd"),
        "{text}"
    );
}

#[test]
fn failed_sync_poisons_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let s = open(tmp.path(), clock);
    s.put_outbox(&msg(ms(T0), "by.mvd", "request", b"ok")).unwrap();
    s.fail_next_sync_for_tests();
    assert!(s
        .put_outbox(&msg(ms(T0) + 1, "by.mvd", "request", b"lost"))
        .is_err());
    assert!(matches!(
        s.put_outbox(&msg(ms(T0) + 2, "by.mvd", "request", b"x")),
        Err(Error::Poisoned)
    ));
    assert!(matches!(s.sweep(10), Err(Error::Poisoned)));
    assert!(s.stats().poisoned);
}

#[test]
fn group_commit_shares_syncs_between_writers() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let s = Arc::new(open(tmp.path(), clock));
    let before = s.stats();
    let threads: Vec<_> = (0..16u64)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..40u64 {
                    s.put_inbox(&msg(ms(T0) + t * 1000 + i, "by.gpk", "request", &[1u8; 1024]))
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let after = s.stats();
    let acked = after.acked_writes - before.acked_writes;
    let syncs = after.syncs - before.syncs;
    assert!(acked >= 640, "{acked}"); // plus the key-creation audit entry
    assert!(
        syncs >= 1 && syncs < acked,
        "{syncs} syncs for {acked} acknowledged writes"
    );
    println!(
        "group commit: {acked} acknowledged writes, {syncs} syncs, {:.1} writes per sync",
        acked as f64 / syncs as f64
    );
}

#[test]
fn master_key_files() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("master.key");
    let k = MasterKey::generate_to_file(&p).unwrap();
    assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(MasterKey::generate_to_file(&p).is_err(), "never overwrites");
    let loaded = MasterKey::from_file(&p).unwrap();
    assert_eq!(format!("{loaded:?}"), "MasterKey(<redacted>)");
    // The same key opens the same keyring.
    let clock = Arc::new(ManualClock::new(T0));
    let d = tmp.path().join("data");
    let mut c = config(&d, clock.clone());
    c.master_key = k;
    drop(Store::open(c).unwrap());
    let mut c = config(&d, clock.clone());
    c.master_key = loaded;
    drop(Store::open(c).unwrap());
    // A wrong master key is refused.
    let err = Store::open(config(&d, clock)).unwrap_err();
    assert!(matches!(err, Error::KeyringAuth { .. }), "{err}");

    // Too open: refused.
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(MasterKey::from_file(&p), Err(Error::MasterKey { .. })));

    // Raw and base64 forms.
    let raw = tmp.path().join("raw.key");
    std::fs::write(&raw, [9u8; 32]).unwrap();
    std::fs::set_permissions(&raw, std::fs::Permissions::from_mode(0o400)).unwrap();
    MasterKey::from_file(&raw).unwrap();
    let b64 = tmp.path().join("b64.key");
    std::fs::write(&b64, "CQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=\n").unwrap();
    std::fs::set_permissions(&b64, std::fs::Permissions::from_mode(0o600)).unwrap();
    MasterKey::from_file(&b64).unwrap();
    let bad = tmp.path().join("bad.key");
    std::fs::write(&bad, "not a key").unwrap();
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(matches!(MasterKey::from_file(&bad), Err(Error::MasterKey { .. })));
}

#[test]
fn concurrent_puts_and_other_writes_all_land() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let s = Arc::new(open(tmp.path(), clock));
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut ids = Vec::new();
                for i in 0..60u64 {
                    let m = msg(ms(T0) + t * 1000 + i, "by.mvd", "request", &i.to_be_bytes());
                    s.put_outbox(&m).unwrap();
                    ids.push(m.id);
                    if i % 3 == 0 {
                        // Plain commits (no queued put) may lead a group too.
                        s.audit_append(&AuditEvent::new(AuditKind::ConfigChanged).detail("reload"))
                            .unwrap();
                        s.mark_sent(&m.id).unwrap();
                    }
                }
                ids
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in threads {
        all.extend(t.join().unwrap());
    }
    drop(s);
    let s = open(tmp.path(), Arc::new(ManualClock::new(T0)));
    for id in &all {
        s.outbox_get(id).unwrap();
    }
    assert_eq!(all.len(), 480);
    s.audit_verify().unwrap();
}

#[test]
fn the_state_index_alone_gives_peers_and_creation_times() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let s = open(tmp.path(), clock.clone());
    let a = msg(1_000, "by.mvd", "request", b"a");
    s.put_outbox(&a).unwrap();
    clock.advance(5);
    let b = msg(2_000, "am.police", "request", b"b");
    s.put_outbox(&b).unwrap();
    clock.advance(5);
    s.mark_sent(&a.id).unwrap();
    let queued = s
        .list_index_by_state(Direction::Outbound, MessageState::Queued, None, 10)
        .unwrap();
    assert_eq!(
        queued,
        vec![IndexEntry {
            id: b.id,
            peer: "am.police".into(),
            created_at: Some(T0 + 5)
        }]
    );
    // A transition keeps the creation time in the moved entry.
    let sent = s
        .list_index_by_state(Direction::Outbound, MessageState::Sent, None, 10)
        .unwrap();
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].id, sent[0].created_at), (a.id, Some(T0)));
    assert_eq!(
        s.list_ids_by_state(Direction::Outbound, MessageState::Sent, None, 10)
            .unwrap(),
        vec![(a.id, "by.mvd".to_string())]
    );
}

#[test]
fn a_format_2_store_opens_and_is_marked_3_and_an_unknown_format_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let m = msg(ms(T0), "by.mvd", "request", b"before the upgrade");
    {
        let s = open(tmp.path(), Arc::new(ManualClock::new(T0)));
        s.put_inbox(&m).unwrap();
    }
    let marker = |set: Option<&[u8]>| {
        let db = sled::open(tmp.path().join("sled")).unwrap();
        if let Some(v) = set {
            db.insert([b'M'], v).unwrap();
        }
        let v = db.get([b'M']).unwrap().unwrap().to_vec();
        db.flush().unwrap();
        v
    };
    assert_eq!(marker(None), b"konvert-store/3");
    // As a release before AES-256-GCM payloads left it.
    marker(Some(b"konvert-store/2"));
    {
        let s = open(tmp.path(), Arc::new(ManualClock::new(T0)));
        assert_eq!(s.inbox_get(&m.id).unwrap().payload, b"before the upgrade");
    }
    assert_eq!(marker(None), b"konvert-store/3");
    marker(Some(b"konvert-store/9"));
    let err = Store::open(config(tmp.path(), Arc::new(ManualClock::new(T0)))).unwrap_err();
    assert!(err.to_string().contains("unknown store format version"), "{err}");
}
