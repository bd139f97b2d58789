//! Signatory rosters and directory changes signed by an authority root key
//! (Art. 2, 9.3, 9.4), their history, and the agreement's versions and
//! dates in force (Art. 16, 17).
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use common::flow::*;
use common::{authority, profile, repo};
use konvert_envelope::keys::{AuthorityCard, NodeKeys, SigningKey};
use konvert_envelope::model::*;
use konvert_envelope::profile::{NotInForceReason, Profile, ProfileVersionError, ProfileVersions};
use konvert_envelope::receipt::RejectCode;
use konvert_envelope::roster::*;
use konvert_envelope::signed::{SignatureError, SignedMessage};

fn signatory(id: &str, key: &SigningKey, from: &str, until: Option<&str>) -> Signatory {
    Signatory {
        id: SignatoryId::new(id).unwrap(),
        name: "Иванов Иван Иванович".into(),
        position: "Заместитель министра".into(),
        public_key: PublicKeyBytes(key.verifying_key().to_bytes()),
        valid_from: ts(from),
        valid_until: until.map(ts),
    }
}

fn roster(version: u64, issued: &str, signatories: Vec<Signatory>) -> Roster {
    Roster {
        authority: authority("kz.mvd"),
        version,
        issued: ts(issued),
        signatories,
    }
}

/// The directory_update message carrying a signed statement.
fn update_msg(time: &str, body: DirectoryUpdate) -> Message {
    msg("kz.mvd", "by.mvd", time, None, MessageBody::DirectoryUpdate(body))
}

#[test]
fn a_roster_signs_and_verifies_with_the_root_key_only() {
    let root = SigningKey::generate();
    let a = SigningKey::generate();
    let r = roster(
        1,
        "2026-01-01T00:00:00Z",
        vec![signatory("kz.mvd.a", &a, "2026-01-01T00:00:00Z", None)],
    );
    let signed = r.sign(&root).unwrap();
    let back = SignedRoster::verify(signed.as_bytes(), &root.verifying_key()).unwrap();
    assert_eq!(back.roster(), &r);
    // Deterministic payload: signing twice gives the same bytes (Ed25519 is deterministic).
    assert_eq!(r.sign(&root).unwrap().as_bytes(), signed.as_bytes());
    let other = SigningKey::generate();
    let e = SignedRoster::verify(signed.as_bytes(), &other.verifying_key()).unwrap_err();
    assert!(matches!(e, RosterError::WrongKey { .. }), "{e}");
    assert_eq!(e.reject_code(), RejectCode::DirectoryNotVerified);
    let mut tampered = signed.as_bytes().to_vec();
    let n = tampered.len();
    tampered[n - 80] ^= 1;
    assert!(SignedRoster::verify(&tampered, &root.verifying_key()).is_err());
    assert!(SignedRoster::verify(b"garbage", &root.verifying_key()).is_err());
}

#[test]
fn an_inconsistent_roster_is_refused() {
    let root = SigningKey::generate();
    let a = SigningKey::generate();
    let dup_key = roster(
        1,
        "2026-01-01T00:00:00Z",
        vec![
            signatory("kz.mvd.a", &a, "2026-01-01T00:00:00Z", None),
            signatory("kz.mvd.b", &a, "2026-01-01T00:00:00Z", None),
        ],
    );
    let e = dup_key.sign(&root).unwrap_err();
    assert_eq!(e.reject_code(), RejectCode::InvalidMessage);
    assert!(!e.to_string().contains("Иванов"), "no names in errors: {e}");
    let bad_dates = roster(
        1,
        "2026-01-01T00:00:00Z",
        vec![signatory(
            "kz.mvd.a",
            &a,
            "2026-02-01T00:00:00Z",
            Some("2026-01-01T00:00:00Z"),
        )],
    );
    assert!(bad_dates.sign(&root).is_err());
}

#[test]
fn history_judges_each_signature_by_the_roster_in_force_when_it_was_made() {
    let root = SigningKey::generate();
    let (a, b) = (SigningKey::generate(), SigningKey::generate());
    let v1 = roster(
        1,
        "2026-01-01T00:00:00Z",
        vec![signatory("kz.mvd.a", &a, "2026-01-01T00:00:00Z", None)],
    );
    // Version 2 revokes a (Art. 9.4) and adds b.
    let v2 = roster(
        2,
        "2026-06-01T00:00:00Z",
        vec![signatory(
            "kz.mvd.b",
            &b,
            "2026-06-01T00:00:00Z",
            Some("2027-06-01T00:00:00Z"),
        )],
    );
    let mut h = RosterHistory::new();
    assert_eq!(
        h.apply(v1.sign(&root).unwrap()).unwrap(),
        RosterApplied::Added { version: 1 }
    );
    assert_eq!(
        h.apply(v2.sign(&root).unwrap()).unwrap(),
        RosterApplied::Added { version: 2 }
    );
    let kz = authority("kz.mvd");
    let ka = PublicKeyBytes(a.verifying_key().to_bytes());
    let kb = PublicKeyBytes(b.verifying_key().to_bytes());
    // a signed in March: valid (roster 1); a in July: revoked.
    assert_eq!(
        h.signer_at(&kz, &ka, ts("2026-03-01T00:00:00Z"))
            .unwrap()
            .id
            .as_str(),
        "kz.mvd.a"
    );
    let e = h.signer_at(&kz, &ka, ts("2026-07-01T00:00:00Z")).unwrap_err();
    assert!(matches!(e, SignerError::NotOnRoster { version: 2, .. }), "{e}");
    assert_eq!(e.reject_code(), RejectCode::SignerNotAuthorised);
    // b before roster 2, within it, after its own validity.
    assert!(h.signer_at(&kz, &kb, ts("2026-03-01T00:00:00Z")).is_err());
    h.signer_at(&kz, &kb, ts("2026-07-01T00:00:00Z")).unwrap();
    let e = h.signer_at(&kz, &kb, ts("2027-07-01T00:00:00Z")).unwrap_err();
    assert!(matches!(e, SignerError::NotValid { .. }), "{e}");
    // Before any roster.
    let e = h.signer_at(&kz, &ka, ts("2025-12-31T00:00:00Z")).unwrap_err();
    assert!(matches!(e, SignerError::NoRoster { .. }));
    assert_eq!(h.roster_at(&kz, ts("2026-05-31T23:59:59Z")).unwrap().version, 1);
    assert_eq!(h.latest(&kz).unwrap().version, 2);
}

#[test]
fn old_messages_stay_verifiable_with_the_history_as_trusted_signers() {
    let root = SigningKey::generate();
    let a = SigningKey::generate();
    let b = SigningKey::generate();
    let mut h = RosterHistory::new();
    h.apply(
        roster(
            1,
            "2026-01-01T00:00:00Z",
            vec![signatory("kz.mvd.a", &a, "2026-01-01T00:00:00Z", None)],
        )
        .sign(&root)
        .unwrap(),
    )
    .unwrap();
    // a stays on roster 2 (same key in two versions), b joins.
    h.apply(
        roster(
            2,
            "2026-03-01T00:00:00Z",
            vec![
                signatory(
                    "kz.mvd.a",
                    &a,
                    "2026-01-01T00:00:00Z",
                    Some("2026-05-01T00:00:00Z"),
                ),
                signatory("kz.mvd.b", &b, "2026-03-01T00:00:00Z", None),
            ],
        )
        .sign(&root)
        .unwrap(),
    )
    .unwrap();
    let signers = h.trusted_signers(&authority("kz.mvd"));
    let signed_at = |key: &SigningKey, t: &str| {
        let m = request(t);
        SignedMessage::sign(&m, key).unwrap().verify(&signers)
    };
    signed_at(&a, "2026-02-01T00:00:00Z").unwrap();
    signed_at(&a, "2026-04-01T00:00:00Z").unwrap();
    assert!(matches!(
        signed_at(&a, "2026-06-01T00:00:00Z"),
        Err(SignatureError::SignerNotValid { .. })
    ));
    assert!(matches!(
        signed_at(&b, "2026-02-01T00:00:00Z"),
        Err(SignatureError::SignerNotValid { .. })
    ));
    signed_at(&b, "2026-12-01T00:00:00Z").unwrap();
    assert!(matches!(
        signed_at(&SigningKey::generate(), "2026-12-01T00:00:00Z"),
        Err(SignatureError::UnknownSigner { .. })
    ));
}

#[test]
fn a_signature_of_an_ended_signatory_is_accepted_only_within_the_grace_after_the_end() {
    let root = SigningKey::generate();
    let (a, b) = (SigningKey::generate(), SigningKey::generate());
    let mut h = RosterHistory::new();
    h.apply(
        roster(
            1,
            "2026-01-01T00:00:00Z",
            vec![
                signatory("kz.mvd.a", &a, "2026-01-01T00:00:00Z", None),
                signatory("kz.mvd.b", &b, "2026-01-01T00:00:00Z", None),
            ],
        )
        .sign(&root)
        .unwrap(),
    )
    .unwrap();
    // Version 2 revokes a (drops it) on 2026-03-01; b stays.
    h.apply(
        roster(
            2,
            "2026-03-01T00:00:00Z",
            vec![signatory("kz.mvd.b", &b, "2026-01-01T00:00:00Z", None)],
        )
        .sign(&root)
        .unwrap(),
    )
    .unwrap();
    let signers = h.trusted_signers(&authority("kz.mvd"));
    let day = 86_400;
    let arriving = |key: &SigningKey, signed: &str, now: &str| {
        let m = request(signed);
        SignedMessage::sign(&m, key)
            .unwrap()
            .verify_arriving(&signers, ts(now), Some(day))
    };
    // Signed by a while valid (the claimed time), arriving within a day of
    // the revocation: a late delivery, accepted.
    arriving(&a, "2026-02-27T10:00:00Z", "2026-03-01T23:59:59Z").unwrap();
    // Arriving later: the time may be backdated; refused with its own code.
    let e = arriving(&a, "2026-02-27T10:00:00Z", "2026-03-02T00:00:00Z").unwrap_err();
    let SignatureError::SignerNoLongerValid {
        ended, grace_secs, ..
    } = &e
    else {
        panic!("{e}")
    };
    assert_eq!(*ended, ts("2026-02-28T23:59:59Z"));
    assert_eq!(*grace_secs, day);
    assert_eq!(
        RejectCode::from(&konvert_envelope::envelope::OpenError::Signature(e)),
        RejectCode::SignerNoLongerValid
    );
    // Without a bound (offline verification of an archived envelope), as before.
    let m = request("2026-02-27T10:00:00Z");
    SignedMessage::sign(&m, &a)
        .unwrap()
        .verify_arriving(&signers, ts("2027-01-01T00:00:00Z"), None)
        .unwrap();
    // A signatory still valid is not bounded: an old message after a long
    // outage still verifies.
    arriving(&b, "2026-02-27T10:00:00Z", "2026-09-01T00:00:00Z").unwrap();
    // Signed after the end: refused as before (not valid at signing time).
    assert!(matches!(
        arriving(&a, "2026-03-01T10:00:00Z", "2026-03-01T10:00:00Z"),
        Err(SignatureError::SignerNotValid { .. })
    ));
    // A planned end (valid_until) counts the same as a revocation.
    let c = SigningKey::generate();
    let mut h = RosterHistory::new();
    h.apply(
        roster(
            1,
            "2026-01-01T00:00:00Z",
            vec![signatory(
                "kz.mvd.c",
                &c,
                "2026-01-01T00:00:00Z",
                Some("2026-06-30T23:59:59Z"),
            )],
        )
        .sign(&root)
        .unwrap(),
    )
    .unwrap();
    let signers = h.trusted_signers(&authority("kz.mvd"));
    let m = request("2026-06-30T12:00:00Z");
    let sm = SignedMessage::sign(&m, &c).unwrap();
    sm.verify_arriving(&signers, ts("2026-07-01T12:00:00Z"), Some(day))
        .unwrap();
    assert!(matches!(
        sm.verify_arriving(&signers, ts("2026-07-02T00:00:00Z"), Some(day)),
        Err(SignatureError::SignerNoLongerValid { .. })
    ));
}

#[test]
fn the_card_signatories_apply_until_the_first_roster() {
    let node = NodeKeys::generate(authority("kz.mvd"));
    let old = SigningKey::generate();
    let mut card = node.card(None);
    card.signatories = vec![konvert_envelope::keys::CardSignatory {
        id: "ivanov".into(),
        key: old.verifying_key(),
        valid_from: None,
        valid_until: None,
    }];
    let root = SigningKey::generate();
    let mut h = RosterHistory::new();
    let signers = h.trusted_signers_with_card(&card);
    SignedMessage::sign(&request("2026-12-01T00:00:00Z"), &old)
        .unwrap()
        .verify(&signers)
        .unwrap();
    let new = SigningKey::generate();
    h.apply(
        roster(
            1,
            "2026-06-01T00:00:00Z",
            vec![signatory("kz.mvd.n", &new, "2026-06-01T00:00:00Z", None)],
        )
        .sign(&root)
        .unwrap(),
    )
    .unwrap();
    let signers = h.trusted_signers_with_card(&card);
    SignedMessage::sign(&request("2026-05-01T00:00:00Z"), &old)
        .unwrap()
        .verify(&signers)
        .unwrap();
    assert!(SignedMessage::sign(&request("2026-07-01T00:00:00Z"), &old)
        .unwrap()
        .verify(&signers)
        .is_err());
    SignedMessage::sign(&request("2026-07-01T00:00:00Z"), &new)
        .unwrap()
        .verify(&signers)
        .unwrap();
}

#[test]
fn stale_and_repeated_rosters() {
    let root = SigningKey::generate();
    let a = SigningKey::generate();
    let s = vec![signatory("kz.mvd.a", &a, "2026-01-01T00:00:00Z", None)];
    let mut h = RosterHistory::new();
    h.apply(roster(3, "2026-03-01T00:00:00Z", s.clone()).sign(&root).unwrap())
        .unwrap();
    assert_eq!(
        h.apply(roster(3, "2026-03-01T00:00:00Z", s.clone()).sign(&root).unwrap())
            .unwrap(),
        RosterApplied::Unchanged
    );
    for stale in [
        roster(2, "2026-04-01T00:00:00Z", s.clone()),
        roster(3, "2026-04-01T00:00:00Z", s.clone()),
        roster(4, "2026-02-01T00:00:00Z", s.clone()),
    ] {
        let e = h.apply(stale.sign(&root).unwrap()).unwrap_err();
        assert_eq!(e.reject_code(), RejectCode::StaleDirectoryUpdate, "{e}");
    }
    assert_eq!(h.versions(&authority("kz.mvd")).len(), 1);
}

#[test]
fn a_directory_update_is_applied_only_after_verification() {
    let root = SigningKey::generate();
    let a = SigningKey::generate();
    let r = roster(
        1,
        "2026-01-12T00:00:00Z",
        vec![signatory("kz.mvd.a", &a, "2026-01-12T00:00:00Z", None)],
    );
    let body = r
        .sign(&root)
        .unwrap()
        .to_directory_update(Some("Перечень версии 1.".into()));
    let m = update_msg("2026-01-12T09:00:00Z", body.clone());
    // The update is a valid message under the profile (the attestation is allowed).
    profile("kz-by-2019").validate(&m, m.header.time).unwrap();
    let mut d = DirectoryHistory::new();
    // No root key for the sender.
    assert_eq!(
        d.apply_update(&m, None).unwrap_err().reject_code(),
        RejectCode::DirectoryNotVerified
    );
    // Another root key.
    let wrong = SigningKey::generate().verifying_key();
    assert!(matches!(
        d.apply_update(&m, Some(&wrong)).unwrap_err(),
        RosterError::WrongKey { .. }
    ));
    // Without attestation.
    let mut bare = body.clone();
    bare.attestation = None;
    let e = d
        .apply_update(
            &update_msg("2026-01-12T09:00:00Z", bare),
            Some(&root.verifying_key()),
        )
        .unwrap_err();
    assert!(matches!(e, RosterError::NotAttested(_)));
    assert_eq!(e.reject_code(), RejectCode::DirectoryNotVerified);
    // A change that differs from the signed one.
    let mut changed = body.clone();
    if let DirectoryChange::SignatoryRoster { version, .. } = &mut changed.change {
        *version = 9;
    }
    let e = d
        .apply_update(
            &update_msg("2026-01-12T09:00:00Z", changed),
            Some(&root.verifying_key()),
        )
        .unwrap_err();
    assert_eq!(e, RosterError::ChangeMismatch);
    // Sent by another authority than the one that signed.
    let mut other = update_msg("2026-01-12T09:00:00Z", body.clone());
    other.header.from = authority("kz.mtszn");
    assert!(matches!(
        d.apply_update(&other, Some(&root.verifying_key())).unwrap_err(),
        RosterError::WrongAuthority { .. }
    ));
    // Issued after the message.
    let early = update_msg("2026-01-11T09:00:00Z", body.clone());
    assert!(matches!(
        d.apply_update(&early, Some(&root.verifying_key())).unwrap_err(),
        RosterError::IssuedAfterMessage { .. }
    ));
    // Not a directory update.
    assert_eq!(
        d.apply_update(&request("2026-01-12T09:00:00Z"), Some(&root.verifying_key()))
            .unwrap_err(),
        RosterError::NotDirectoryUpdate
    );
    assert_eq!(
        d.rosters().versions(&authority("kz.mvd")).len(),
        0,
        "nothing applied so far"
    );
    // Verified: applied.
    assert_eq!(
        d.apply_update(&m, Some(&root.verifying_key())).unwrap(),
        DirectoryApplied::Roster(RosterApplied::Added { version: 1 })
    );
    assert_eq!(d.rosters().latest(&authority("kz.mvd")).unwrap(), &r);
    // The message round-trips through CBOR and JSON with its attestation.
    let cbor = konvert_envelope::cbor::to_deterministic_vec(&m).unwrap();
    let back: Message = konvert_envelope::cbor::from_deterministic_slice(&cbor, 1 << 20).unwrap();
    assert_eq!(back, m);
    let json = serde_json::to_string(&m).unwrap();
    assert_eq!(serde_json::from_str::<Message>(&json).unwrap(), m);
}

#[test]
fn renaming_keeps_the_old_id_resolvable_and_its_rosters_usable() {
    let root = SigningKey::generate();
    let a = SigningKey::generate();
    let mut d = DirectoryHistory::new();
    let r = roster(
        1,
        "2026-01-01T00:00:00Z",
        vec![signatory("kz.mvd.a", &a, "2026-01-01T00:00:00Z", None)],
    );
    d.apply_update(
        &update_msg(
            "2026-01-01T09:00:00Z",
            r.sign(&root).unwrap().to_directory_update(None),
        ),
        Some(&root.verifying_key()),
    )
    .unwrap();
    let change = DirectoryChange::AuthorityRenamed {
        old: authority("kz.mvd"),
        new: authority("kz.mvd2"),
        new_name: "Министерство внутренних дел и миграции".into(),
        new_name_en: None,
        effective: ts("2026-07-01T00:00:00Z"),
    };
    let body = authority_change_update(
        &authority("kz.mvd"),
        ts("2026-06-01T00:00:00Z"),
        change,
        None,
        &root,
    )
    .unwrap();
    let m = update_msg("2026-06-01T09:00:00Z", body.clone());
    profile("kz-by-2019").validate(&m, m.header.time).unwrap();
    assert_eq!(
        d.apply_update(&m, Some(&root.verifying_key())).unwrap(),
        DirectoryApplied::AuthorityChanged {
            old: authority("kz.mvd"),
            new: authority("kz.mvd2"),
            added: true
        }
    );
    // Again: already on record.
    assert!(matches!(
        d.apply_update(&m, Some(&root.verifying_key())).unwrap(),
        DirectoryApplied::AuthorityChanged { added: false, .. }
    ));
    assert_eq!(
        d.resolve(&authority("kz.mvd"), ts("2026-06-30T00:00:00Z")),
        authority("kz.mvd")
    );
    assert_eq!(
        d.resolve(&authority("kz.mvd"), ts("2026-07-01T00:00:00Z")),
        authority("kz.mvd2")
    );
    assert_eq!(d.former_ids(&authority("kz.mvd2")), vec![authority("kz.mvd")]);
    assert_eq!(d.changes()[0].notified_by, authority("kz.mvd"));
    // Messages under the new id verify against the rosters of the old one.
    let signers = d.trusted_signers(&authority("kz.mvd2"));
    let mut req = request("2026-08-01T00:00:00Z");
    req.header.from = authority("kz.mvd2");
    SignedMessage::sign(&req, &a).unwrap().verify(&signers).unwrap();
    // A roster is not an authority change and the reverse.
    let e = authority_change_update(
        &authority("kz.mvd"),
        ts("2026-06-01T00:00:00Z"),
        r.statement().change,
        None,
        &root,
    )
    .unwrap_err();
    assert_eq!(e, RosterError::WrongChange);
    // A replaced authority is another body: its signatories do not carry over.
    let replaced = DirectoryChange::AuthorityReplaced {
        old: authority("kz.mvd2"),
        new: authority("kz.mvd3"),
        new_name: "Агентство".into(),
        new_name_en: Some("Agency".into()),
        effective: ts("2026-09-01T00:00:00Z"),
    };
    let body = authority_change_update(
        &authority("kz.mvd"),
        ts("2026-08-01T00:00:00Z"),
        replaced,
        None,
        &root,
    )
    .unwrap();
    d.apply_update(
        &update_msg("2026-08-01T09:00:00Z", body),
        Some(&root.verifying_key()),
    )
    .unwrap();
    assert_eq!(
        d.resolve(&authority("kz.mvd"), ts("2026-10-01T00:00:00Z")),
        authority("kz.mvd3")
    );
    assert!(d.trusted_signers(&authority("kz.mvd3")).is_empty());
    // The directory persists.
    let bytes = konvert_envelope::cbor::to_deterministic_vec(&d).unwrap();
    let back: DirectoryHistory = konvert_envelope::cbor::from_slice(&bytes, 1 << 24).unwrap();
    assert_eq!(back, d);
}

#[test]
fn cards_with_and_without_a_root_key_parse() {
    // Cards written before the root key existed (the shipped test vectors' card form).
    let node = NodeKeys::generate(authority("kz.mvd"));
    let card = node.card(Some("МВД".into()));
    let text = card.to_toml_string().unwrap();
    assert!(!text.contains("root_key"));
    assert_eq!(AuthorityCard::from_toml_str(&text).unwrap().root_key, None);
    let mut with_root = card.clone();
    with_root.root_key = Some(SigningKey::generate().verifying_key());
    let text = with_root.to_toml_string().unwrap();
    assert!(text.contains("root_key"));
    assert_eq!(AuthorityCard::from_toml_str(&text).unwrap(), with_root);
}

// ----------------------------------------------------- Art. 16, 17

fn kz_by_text() -> String {
    std::fs::read_to_string(repo().join("deploy/profiles/kz-by-2019.toml")).unwrap()
}

fn variant(version: u32, from: Option<&str>, notice: Option<&str>) -> Profile {
    let mut t = kz_by_text().replace("version = 1\n", &format!("version = {version}\n"));
    if let Some(f) = from {
        t = t.replace(
            "in_force_from = \"2020-12-03\"",
            &format!("in_force_from = \"2020-12-03\"\nversion_in_force_from = \"{f}\""),
        );
    }
    if let Some(n) = notice {
        t = t.replace(
            "# termination_notice = \"YYYY-MM-DD\"",
            &format!("termination_notice = \"{n}\""),
        );
    }
    Profile::from_toml_str(&t, "variant").unwrap()
}

#[test]
fn in_force_at_says_not_yet_or_terminated() {
    let p = variant(1, None, Some("2027-03-10"));
    p.in_force_at(ts("2020-12-03T00:00:00Z")).unwrap();
    let e = p.in_force_at(ts("2020-12-02T23:59:59Z")).unwrap_err();
    assert_eq!(
        e.reason,
        NotInForceReason::NotYet {
            from: "2020-12-03".parse().unwrap()
        }
    );
    assert_eq!(e.reject_code(), RejectCode::AgreementNotInForce);
    assert!(!e.is_terminated());
    p.in_force_at(ts("2027-09-09T23:59:59Z")).unwrap();
    let e = p.in_force_at(ts("2027-09-10T00:00:00Z")).unwrap_err();
    assert!(e.is_terminated());
    assert_eq!(e.reject_code(), RejectCode::AgreementTerminated);
    assert_eq!(
        e.to_string(),
        "agreement kz-by-2019 terminated on 2027-09-10, 6 months after the notice of 2027-03-10 (Art. 17)"
    );
}

#[test]
fn profile_versions_pick_the_version_in_force_and_keep_old_ones() {
    let mut set = ProfileVersions::new();
    set.insert(variant(1, None, None)).unwrap();
    set.insert(variant(2, Some("2026-06-01"), None)).unwrap();
    let e = set.insert(variant(2, None, None)).unwrap_err();
    assert!(matches!(
        e,
        ProfileVersionError::DuplicateVersion { version: 2, .. }
    ));
    let id = AgreementId::new("kz-by-2019").unwrap();
    assert_eq!(set.at(&id, ts("2026-05-31T23:59:59Z")).unwrap().version(), 1);
    assert_eq!(set.at(&id, ts("2026-06-01T00:00:00Z")).unwrap().version(), 2);
    assert_eq!(set.get(&id, 1).unwrap().version(), 1, "a case keeps its version");
    assert_eq!(set.latest(&id).unwrap().version(), 2);
    let e = set.at(&id, ts("2019-01-01T00:00:00Z")).unwrap_err();
    assert_eq!(e.reject_code(), RejectCode::AgreementNotInForce);
    let unknown = AgreementId::new("kz-ru-2030").unwrap();
    assert!(matches!(
        set.at(&unknown, ts("2026-01-01T00:00:00Z")),
        Err(ProfileVersionError::UnknownAgreement(_))
    ));
    // A termination notice in the highest version ends every version.
    set.insert(variant(3, Some("2026-09-01"), Some("2026-10-01")))
        .unwrap();
    let e = set.at(&id, ts("2027-04-01T00:00:00Z")).unwrap_err();
    assert_eq!(e.reject_code(), RejectCode::AgreementTerminated);
    // A case opened under version 1 keeps its version and deadline rules.
    let r = request("2026-03-01T09:00:00Z");
    let case = konvert_envelope::workflow::Case::open(&r, r.header.time, set.at(&id, r.header.time).unwrap())
        .unwrap();
    assert_eq!(case.profile_version(), 1);
    assert_eq!(set.agreements().count(), 1);
}

#[test]
fn a_version_before_the_agreement_is_refused() {
    let t = kz_by_text().replace(
        "in_force_from = \"2020-12-03\"",
        "in_force_from = \"2020-12-03\"\nversion_in_force_from = \"2020-01-01\"",
    );
    let e = Profile::from_toml_str(&t, "p.toml").unwrap_err();
    assert!(e.to_string().contains("version_in_force_from"), "{e}");
}

/// Opens `env` at by.mvd as the gateway does: trusted signers from the
/// card and the history, and optionally the anchor for a carried roster.
fn open_at_by(
    w: &common::World,
    env: &[u8],
    card: &AuthorityCard,
    signers: &[konvert_envelope::keys::TrustedSigner],
    anchor: Option<RosterAnchor<'_>>,
) -> Result<konvert_envelope::envelope::Opened, konvert_envelope::envelope::OpenError> {
    use konvert_envelope::envelope::{receive, Limits, MemoryParts};
    let limits = Limits::default();
    let p = profile("kz-by-2019");
    let mut body = Vec::new();
    let auth = receive(env, &limits, &mut body)?.authenticate(card)?;
    let by = w.node(&authority("by.mvd"));
    let mut parts = MemoryParts::default();
    auth.open_with_roster(
        body.as_slice(),
        by,
        signers,
        anchor,
        &p,
        common::now(),
        &limits,
        &mut parts,
        |_| Ok(&p),
        &mut konvert_envelope::batch::Now,
    )
}

#[test]
fn a_new_roster_may_be_carried_by_a_signatory_on_it_and_nothing_else_is_trusted_that_way() {
    use konvert_envelope::envelope::{seal_to_vec, OpenError, SealParams};
    let w = common::World::new();
    let kz = authority("kz.mvd");
    let root = SigningKey::generate();
    // The card lists `head` (the world's signatory); the first roster lists
    // only ivanov, and `later` from a time after the message.
    let mut card = w.card(&kz);
    card.root_key = Some(root.verifying_key());
    card.signatories = vec![konvert_envelope::keys::CardSignatory {
        id: "head".into(),
        key: w.signatory.verifying_key(),
        valid_from: None,
        valid_until: None,
    }];
    let ivanov = SigningKey::generate();
    let later = SigningKey::generate();
    let v1 = roster(
        1,
        "2026-11-22T08:00:00Z",
        vec![
            signatory("ivanov", &ivanov, "2026-11-01T00:00:00Z", None),
            signatory("later", &later, "2026-12-01T00:00:00Z", None),
        ],
    )
    .sign(&root)
    .unwrap();
    let seal = |m: Message, by: &SigningKey| {
        let p = profile("kz-by-2019");
        let by_card = w.card(&authority("by.mvd"));
        seal_to_vec(
            m,
            &[],
            &SealParams {
                signatory: by,
                node: w.node(&kz),
                recipient: &by_card,
                profile: &p,
                envelope_id: fresh_id(),
                now: common::now(),
            },
        )
        .unwrap()
        .0
    };
    let update = update_msg("2026-11-22T09:00:00Z", v1.to_directory_update(None));
    let env = seal(update.clone(), &ivanov);
    let history = RosterHistory::new();
    let signers = history.trusted_signers_with_card(&card);
    let anchor = RosterAnchor::of(&card, &history);
    assert!(anchor.is_some());
    let refused = |r: Result<_, OpenError>| match r {
        Err(e) => RejectCode::from(&e),
        Ok(_) => panic!("opened"),
    };

    // Judged by the signers known before it alone, it is refused (the bug).
    assert_eq!(
        refused(open_at_by(&w, &env, &card, &signers, None)),
        RejectCode::SignerNotAuthorised
    );
    // The root key on the card authorises the roster, and so its signatory.
    let opened = open_at_by(&w, &env, &card, &signers, anchor).unwrap();
    assert_eq!(opened.claims.kid, ivanov.verifying_key().key_id());
    assert_eq!(opened.message, update);
    // The card's signatory may carry it too, as before.
    open_at_by(&w, &seal(update.clone(), &w.signatory), &card, &signers, anchor).unwrap();
    // A signatory on it who is not valid yet at the signing time may not.
    assert_eq!(
        refused(open_at_by(
            &w,
            &seal(update.clone(), &later),
            &card,
            &signers,
            anchor
        )),
        RejectCode::SignerNotAuthorised
    );
    // Nor anyone who is not on it.
    let stranger = SigningKey::generate();
    assert_eq!(
        refused(open_at_by(
            &w,
            &seal(update.clone(), &stranger),
            &card,
            &signers,
            anchor
        )),
        RejectCode::SignerNotAuthorised
    );
    // Another root key on the card: the roster authorises nothing.
    let mut other_card = card.clone();
    other_card.root_key = Some(SigningKey::generate().verifying_key());
    assert_eq!(
        refused(open_at_by(
            &w,
            &env,
            &card,
            &signers,
            RosterAnchor::of(&other_card, &history)
        )),
        RejectCode::SignerNotAuthorised
    );
    // A card without a root key: no anchor.
    let mut bare_card = card.clone();
    bare_card.root_key = None;
    assert!(RosterAnchor::of(&bare_card, &history).is_none());
    // A roster signed by another key than the card's root key.
    let forged = roster(
        1,
        "2026-11-22T08:00:00Z",
        vec![signatory("ivanov", &ivanov, "2026-11-01T00:00:00Z", None)],
    )
    .sign(&SigningKey::generate())
    .unwrap();
    let forged_env = seal(
        update_msg("2026-11-22T09:00:00Z", forged.to_directory_update(None)),
        &ivanov,
    );
    assert_eq!(
        refused(open_at_by(&w, &forged_env, &card, &signers, anchor)),
        RejectCode::SignerNotAuthorised
    );
    // A change in the message other than the signed one.
    let mut changed = v1.to_directory_update(None);
    if let DirectoryChange::SignatoryRoster { version, .. } = &mut changed.change {
        *version = 2;
    }
    let changed_env = seal(update_msg("2026-11-22T09:00:00Z", changed), &ivanov);
    assert_eq!(
        refused(open_at_by(&w, &changed_env, &card, &signers, anchor)),
        RejectCode::SignerNotAuthorised
    );
    // Any other kind of message by ivanov needs a signatory known before it.
    let req = seal(request("2026-11-22T09:00:00Z"), &ivanov);
    assert_eq!(
        refused(open_at_by(&w, &req, &card, &signers, anchor)),
        RejectCode::SignerNotAuthorised
    );

    // Once roster 1 is on record, head's requests are refused (the card's
    // list ended with it) and ivanov's are accepted.
    let mut history = RosterHistory::new();
    history.apply(v1.clone()).unwrap();
    let anchor = RosterAnchor::of(&card, &history);
    assert_eq!(anchor.unwrap().latest, Some((1, ts("2026-11-22T08:00:00Z"))));
    let signers = history.trusted_signers_with_card(&card);
    assert_eq!(
        refused(open_at_by(
            &w,
            &seal(request("2026-11-22T09:00:00Z"), &w.signatory),
            &card,
            &signers,
            anchor
        )),
        RejectCode::SignerNotAuthorised
    );
    open_at_by(&w, &req, &card, &signers, anchor).unwrap();
    // Roster 2 drops ivanov for petrov, carried by petrov.
    let petrov = SigningKey::generate();
    let v2 = roster(
        2,
        "2026-11-22T09:00:00Z",
        vec![signatory("petrov", &petrov, "2026-11-22T09:00:00Z", None)],
    )
    .sign(&root)
    .unwrap();
    let env2 = seal(
        update_msg("2026-11-22T09:30:00Z", v2.to_directory_update(None)),
        &petrov,
    );
    open_at_by(&w, &env2, &card, &signers, anchor).unwrap();
    history.apply(v2).unwrap();
    let anchor = RosterAnchor::of(&card, &history);
    let signers = history.trusted_signers_with_card(&card);
    // A roster that is not newer than the latest on record authorises
    // nobody: ivanov, dropped, cannot come back by replaying roster 1.
    let replay = seal(
        update_msg("2026-11-22T09:45:00Z", v1.to_directory_update(None)),
        &ivanov,
    );
    assert_eq!(
        refused(open_at_by(&w, &replay, &card, &signers, anchor)),
        RejectCode::SignerNotAuthorised
    );
    assert_eq!(
        refused(open_at_by(
            &w,
            &seal(request("2026-11-22T09:45:00Z"), &ivanov),
            &card,
            &signers,
            anchor
        )),
        RejectCode::SignerNotAuthorised
    );
}
