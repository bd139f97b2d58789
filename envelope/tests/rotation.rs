//! Key rotation of a gateway (operations): a directory statement signed by
//! the authority root key that names the new TLS pin, node signing key and
//! age recipient, verified, recorded, and the dual-key window it opens.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use common::flow::*;
use common::{authority, profile};
use konvert_envelope::envelope::{self, Limits};
use konvert_envelope::keys::{AgeIdentity, AuthorityCard, NodeKeys, SigningKey};
use konvert_envelope::model::*;
use konvert_envelope::receipt::RejectCode;
use konvert_envelope::roster::*;

const PIN_OLD: &str = "sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
const PIN_NEW: &str = "sha256/AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

struct Rotated {
    root: SigningKey,
    old: NodeKeys,
    new: NodeKeys,
    card: AuthorityCard,
}

fn setup() -> Rotated {
    let root = SigningKey::generate();
    let old = NodeKeys::generate(authority("kz.mvd"));
    let new = NodeKeys::generate(authority("kz.mvd"));
    let mut card = old.card(None);
    card.tls_pin = Some(PIN_OLD.into());
    card.root_key = Some(root.verifying_key());
    Rotated { root, old, new, card }
}

fn rotation(r: &Rotated, issued: &str, effective: &str, old_until: &str) -> KeyRotation {
    KeyRotation {
        authority: authority("kz.mvd"),
        issued: ts(issued),
        effective: ts(effective),
        old_until: ts(old_until),
        tls_pin: Some(RotatedText {
            old: PIN_OLD.into(),
            new: PIN_NEW.into(),
        }),
        node_key: Some(RotatedKey {
            old: PublicKeyBytes(r.old.signing.verifying_key().to_bytes()),
            new: PublicKeyBytes(r.new.signing.verifying_key().to_bytes()),
        }),
        age_recipient: Some(RotatedText {
            old: r.old.age.recipient().to_string(),
            new: r.new.age.recipient().to_string(),
        }),
        cose: Vec::new(),
    }
}

fn update_msg(time: &str, body: DirectoryUpdate) -> Message {
    msg("kz.mvd", "by.mvd", time, None, MessageBody::DirectoryUpdate(body))
}

#[test]
fn a_rotation_signs_verifies_and_is_recorded_once() {
    let r = setup();
    let rot = rotation(
        &r,
        "2026-03-01T10:00:00Z",
        "2026-03-01T10:00:00Z",
        "2026-03-08T10:00:00Z",
    )
    .sign(&r.root)
    .unwrap();
    let back = KeyRotation::verify(&rot.cose, &r.root.verifying_key()).unwrap();
    assert_eq!(back, rot);
    let m = update_msg("2026-03-01T10:00:05Z", rot.to_directory_update(None));
    // A valid message under the profile.
    profile("kz-by-2019").validate(&m, m.header.time).unwrap();
    // CBOR and JSON round trips keep the change.
    let cbor = konvert_envelope::cbor::to_deterministic_vec(&m).unwrap();
    let decoded: Message = konvert_envelope::cbor::from_deterministic_slice(&cbor, 1 << 20).unwrap();
    assert_eq!(decoded, m);
    let json = serde_json::to_string(&m).unwrap();
    assert!(json.contains("\"key_rotation\""), "{json}");
    assert_eq!(serde_json::from_str::<Message>(&json).unwrap(), m);

    let mut d = DirectoryHistory::new();
    assert_eq!(
        d.apply_update(&m, r.card.root_key.as_ref()).unwrap(),
        DirectoryApplied::KeysRotated {
            authority: authority("kz.mvd"),
            added: true
        }
    );
    // The same statement again changes nothing.
    assert_eq!(
        d.apply_update(&m, r.card.root_key.as_ref()).unwrap(),
        DirectoryApplied::KeysRotated {
            authority: authority("kz.mvd"),
            added: false
        }
    );
    assert_eq!(d.rotations(&authority("kz.mvd")).count(), 1);
    // The history round-trips through CBOR (it is persisted that way).
    let bytes = konvert_envelope::cbor::to_deterministic_vec(&d).unwrap();
    let d2: DirectoryHistory = konvert_envelope::cbor::from_slice(&bytes, 1 << 20).unwrap();
    assert_eq!(d2, d);
}

#[test]
fn a_bad_signature_or_another_key_is_refused_and_nothing_is_recorded() {
    let r = setup();
    let rot = rotation(
        &r,
        "2026-03-01T10:00:00Z",
        "2026-03-01T10:00:00Z",
        "2026-03-08T10:00:00Z",
    )
    .sign(&r.root)
    .unwrap();
    let mut d = DirectoryHistory::new();
    // Signed by another key than the card's root key (for instance the old node key).
    let forged = rotation(
        &r,
        "2026-03-01T10:00:00Z",
        "2026-03-01T10:00:00Z",
        "2026-03-08T10:00:00Z",
    )
    .sign(&r.old.signing)
    .unwrap();
    let m = update_msg("2026-03-01T10:00:05Z", forged.to_directory_update(None));
    let e = d.apply_update(&m, r.card.root_key.as_ref()).unwrap_err();
    assert!(matches!(e, RosterError::WrongKey { .. }), "{e}");
    assert_eq!(e.reject_code(), RejectCode::DirectoryNotVerified);
    // A flipped bit in the signature.
    let mut body = rot.to_directory_update(None);
    let att = body.attestation.as_mut().unwrap();
    let last = att.0.len() - 1;
    att.0[last] ^= 1;
    let e = d
        .apply_update(
            &update_msg("2026-03-01T10:00:05Z", body),
            r.card.root_key.as_ref(),
        )
        .unwrap_err();
    assert_eq!(e, RosterError::BadSignature);
    // The message's change differs from the signed one (a swapped new key).
    let mut body = rot.to_directory_update(None);
    if let DirectoryChange::KeyRotation { node_key, .. } = &mut body.change {
        node_key.as_mut().unwrap().new = PublicKeyBytes(SigningKey::generate().verifying_key().to_bytes());
    }
    let e = d
        .apply_update(
            &update_msg("2026-03-01T10:00:05Z", body),
            r.card.root_key.as_ref(),
        )
        .unwrap_err();
    assert_eq!(e, RosterError::ChangeMismatch);
    // Sent by another authority than the one whose keys it rotates.
    let mut other = update_msg("2026-03-01T10:00:05Z", rot.to_directory_update(None));
    other.header.from = authority("kz.mtszn");
    assert!(matches!(
        d.apply_update(&other, r.card.root_key.as_ref()).unwrap_err(),
        RosterError::WrongAuthority { .. }
    ));
    // No root key on the card.
    assert!(matches!(
        d.apply_update(
            &update_msg("2026-03-01T10:00:05Z", rot.to_directory_update(None)),
            None
        )
        .unwrap_err(),
        RosterError::NoRootKey(_)
    ));
    assert_eq!(d.rotations(&authority("kz.mvd")).count(), 0);
    // Nothing recorded: only the card's keys are accepted.
    assert_eq!(
        d.accepted_node_keys(&r.card, ts("2026-03-02T00:00:00Z")),
        vec![r.old.signing.verifying_key()]
    );
}

#[test]
fn inconsistent_rotations_are_refused_before_signing() {
    let r = setup();
    let base = rotation(
        &r,
        "2026-03-01T10:00:00Z",
        "2026-03-01T10:00:00Z",
        "2026-03-08T10:00:00Z",
    );
    let check = |k: KeyRotation, what: &str| {
        let e = k.sign(&r.root).unwrap_err();
        assert!(
            matches!(&e, RosterError::InvalidRotation { what: w, .. } if w.contains(what)),
            "{e}"
        );
        assert_eq!(e.reject_code(), RejectCode::InvalidMessage);
    };
    let mut k = base.clone();
    k.tls_pin = None;
    k.node_key = None;
    k.age_recipient = None;
    check(k, "names no key");
    let mut k = base.clone();
    k.old_until = ts("2026-02-28T00:00:00Z");
    check(k, "before effective");
    let mut k = base.clone();
    k.old_until = ts("2027-03-08T10:00:00Z");
    check(k, "366 days");
    let mut k = base.clone();
    k.tls_pin.as_mut().unwrap().new = "sha1/abc".into();
    check(k, "tls_pin.new");
    let mut k = base.clone();
    k.tls_pin.as_mut().unwrap().new = PIN_OLD.into();
    check(k, "tls_pin.new equals");
    let mut k = base.clone();
    k.age_recipient.as_mut().unwrap().new = "age1nope".into();
    check(k, "age_recipient.new");
    let mut k = base.clone();
    let same = k.node_key.as_ref().unwrap().old;
    k.node_key.as_mut().unwrap().new = same;
    check(k, "node_key.new equals");
    // A rotation of another authority than the signing one.
    let mut s = base.statement();
    s.authority = authority("kz.mtszn");
    let bytes = s.sign(&r.root).unwrap();
    assert!(matches!(
        KeyRotation::verify(&bytes, &r.root.verifying_key()).unwrap_err(),
        RosterError::WrongAuthority { .. }
    ));
    // The profile refuses a rotation of another authority's keys too.
    let signed = base.clone().sign(&r.root).unwrap();
    let mut m = update_msg("2026-03-01T10:00:05Z", signed.to_directory_update(None));
    if let MessageBody::DirectoryUpdate(u) = &mut m.body {
        if let DirectoryChange::KeyRotation { authority: a, .. } = &mut u.change {
            *a = authority("by.mvd");
        }
    }
    assert!(profile("kz-by-2019").validate(&m, m.header.time).is_err());
}

#[test]
fn the_window_accepts_old_and_new_keys_and_then_only_the_new() {
    let r = setup();
    let rot = rotation(
        &r,
        "2026-03-01T10:00:00Z",
        "2026-03-01T12:00:00Z",
        "2026-03-08T10:00:00Z",
    )
    .sign(&r.root)
    .unwrap();
    let mut d = DirectoryHistory::new();
    d.apply_update(
        &update_msg("2026-03-01T10:00:05Z", rot.to_directory_update(None)),
        r.card.root_key.as_ref(),
    )
    .unwrap();
    let old_key = r.old.signing.verifying_key();
    let new_key = r.new.signing.verifying_key();
    // Recorded, not yet effective: both keys and pins accepted, still sealed to the old recipient.
    let t = ts("2026-03-01T11:00:00Z");
    let keys = d.accepted_node_keys(&r.card, t);
    assert!(keys.contains(&old_key) && keys.contains(&new_key), "{keys:?}");
    let pins = d.accepted_tls_pins(&r.card, t);
    assert!(pins.contains(&PIN_OLD.to_string()) && pins.contains(&PIN_NEW.to_string()));
    assert_eq!(d.age_recipients_at(&r.card, t), vec![r.old.age.recipient()]);
    assert_eq!(d.effective_card(&r.card, t).node_key, old_key);
    // Effective, inside the window: both accepted, sealed to the new recipient.
    let t = ts("2026-03-05T00:00:00Z");
    assert_eq!(d.accepted_node_keys(&r.card, t).len(), 2);
    assert_eq!(d.accepted_tls_pins(&r.card, t).len(), 2);
    assert_eq!(d.age_recipients_at(&r.card, t), vec![r.new.age.recipient()]);
    let eff = d.effective_card(&r.card, t);
    assert_eq!(eff.node_key, new_key);
    assert_eq!(eff.tls_pin.as_deref(), Some(PIN_NEW));
    // The last second of the window still accepts the old key.
    let t = ts("2026-03-08T10:00:00Z");
    assert!(d.accepted_node_keys(&r.card, t).contains(&old_key));
    // After the window: only the new ones.
    let t = ts("2026-03-08T10:00:01Z");
    assert_eq!(d.accepted_node_keys(&r.card, t), vec![new_key]);
    assert_eq!(d.accepted_tls_pins(&r.card, t), vec![PIN_NEW.to_string()]);
    // A card already updated to the new keys: the old key is still
    // accepted inside the window, and not after it.
    let mut new_card = r.new.card(None);
    new_card.tls_pin = Some(PIN_NEW.into());
    new_card.root_key = r.card.root_key;
    let inside = d.accepted_node_keys(&new_card, ts("2026-03-02T00:00:00Z"));
    assert!(inside.contains(&old_key) && inside.contains(&new_key));
    assert_eq!(
        d.accepted_node_keys(&new_card, ts("2026-03-09T00:00:00Z")),
        vec![new_key]
    );
    // Another authority's keys are not affected.
    let other = NodeKeys::generate(authority("kz.mtszn")).card(None);
    assert_eq!(
        d.accepted_node_keys(&other, ts("2026-03-05T00:00:00Z")),
        vec![other.node_key]
    );
}

#[test]
fn an_envelope_signed_with_either_key_authenticates_inside_the_window() {
    let r = setup();
    let by = NodeKeys::generate(authority("by.mvd"));
    let by_card = by.card(None);
    let signer = SigningKey::generate();
    let p = profile("kz-by-2019");
    let m = request("2026-03-02T09:00:00Z");
    let now = m.header.time;
    let mut old_env = Vec::new();
    envelope::seal(
        m.clone(),
        &mut [],
        &[],
        &envelope::SealParams {
            signatory: &signer,
            node: &r.old,
            recipient: &by_card,
            profile: &p,
            envelope_id: m.header.id,
            now,
        },
        &mut old_env,
    )
    .unwrap();
    let mut new_env = Vec::new();
    envelope::seal(
        m.clone(),
        &mut [],
        &[],
        &envelope::SealParams {
            signatory: &signer,
            node: &r.new,
            recipient: &by_card,
            profile: &p,
            envelope_id: m.header.id,
            now,
        },
        &mut new_env,
    )
    .unwrap();
    let limits = Limits::default();
    let accepted = [r.old.signing.verifying_key(), r.new.signing.verifying_key()];
    for env in [&old_env, &new_env] {
        let rec = envelope::receive(env.as_slice(), &limits, std::io::sink()).unwrap();
        rec.authenticate_any(&authority("kz.mvd"), &accepted).unwrap();
    }
    // After the window only the new key: the old signature is refused.
    let rec = envelope::receive(old_env.as_slice(), &limits, std::io::sink()).unwrap();
    let e = rec
        .authenticate_any(&authority("kz.mvd"), &[r.new.signing.verifying_key()])
        .unwrap_err();
    assert_eq!(RejectCode::from(&e), RejectCode::BadNodeSignature);
}

#[test]
fn an_envelope_sealed_to_the_old_recipient_opens_with_the_kept_identity() {
    let kz = NodeKeys::generate(authority("kz.mvd"));
    let old_by = NodeKeys::generate(authority("by.mvd"));
    let by_card_old = old_by.card(None);
    let signer = SigningKey::generate();
    let mut kz_card = kz.card(None);
    kz_card.signatories = vec![konvert_envelope::keys::CardSignatory {
        id: "a".into(),
        key: signer.verifying_key(),
        valid_from: None,
        valid_until: None,
    }];
    let p = profile("kz-by-2019");
    let m = request("2026-03-02T09:00:00Z");
    let now = m.header.time;
    let mut env = Vec::new();
    envelope::seal(
        m.clone(),
        &mut [],
        &[],
        &envelope::SealParams {
            signatory: &signer,
            node: &kz,
            recipient: &by_card_old,
            profile: &p,
            envelope_id: m.header.id,
            now,
        },
        &mut env,
    )
    .unwrap();
    // by.mvd rotated its age identity: the new one first, the old one kept.
    let text = format!(
        "{}{}",
        AgeIdentity::generate().to_text().as_str(),
        old_by.age.to_text().as_str()
    );
    let mut ids = AgeIdentity::all_from_text(&text).unwrap().into_iter();
    let rotated = NodeKeys {
        authority: authority("by.mvd"),
        signing: SigningKey::generate(),
        age: ids.next().unwrap(),
        previous_age: ids.collect(),
    };
    assert_eq!(rotated.previous_age.len(), 1);
    let signers = kz_card.trusted_signers();
    let (opened, _) =
        envelope::open_bytes(&env, &Limits::default(), &kz_card, &rotated, &signers, &p, now).unwrap();
    assert_eq!(opened.message, m);
    // Without the kept identity it does not open.
    let dropped = NodeKeys {
        previous_age: Vec::new(),
        ..rotated
    };
    let e =
        envelope::open_bytes(&env, &Limits::default(), &kz_card, &dropped, &signers, &p, now).unwrap_err();
    assert_eq!(RejectCode::from(&e), RejectCode::DecryptFailed);
    // A single-key reader refuses a file with two identities; all_from_text reads both.
    assert!(AgeIdentity::from_text(&text).is_err());
}
