//! Sealing and opening: round trips of every message kind and one test per
//! failure mode, each expecting its own error variant.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use ciborium::value::Value;
use common::*;
use konvert_envelope::cbor;
use konvert_envelope::envelope::{self, EnvelopeHeader, Limits, OpenError};
use konvert_envelope::keys::{AuthorityCard, SigningKey, TrustedSigner};
use konvert_envelope::model::{Attachment, Digest, Id, Message, Timestamp};
use konvert_envelope::signed::{SignatureError, SignedClaims, SignedMessage};
use proptest::prelude::*;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn every_example_kind_round_trips() {
    let w = World::new();
    let names = example_names();
    assert!(
        names.len() >= 13,
        "expected an example of every kind, found {names:?}"
    );
    for name in names {
        let mut msg = example(&name);
        let n = unseal_attachments(&mut msg);
        // One attachment crosses several 64 KiB chunks.
        let bodies: Vec<Vec<u8>> = (0..n)
            .map(|i| pattern(if i == 0 { 200_000 } else { 1000 + i }, i as u8))
            .collect();
        let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
        let h = msg.header.clone();
        let (env, sealed) = w
            .seal_full(msg, &refs)
            .unwrap_or_else(|e| panic!("{name}: seal: {e}"));
        let (opened, plains) = w
            .open(&env, h.from.as_str(), h.to.as_str())
            .unwrap_or_else(|e| panic!("{name}: open: {e}"));
        assert_eq!(opened.message, sealed.message, "{name}");
        assert_eq!(plains, bodies, "{name}");
        for (a, b) in opened.message.attachments().iter().zip(&bodies) {
            assert_eq!(a.length, b.len() as u64);
            assert_eq!(a.sha256, Digest::of(b));
            assert!(a.file.is_none());
        }
        // The cleartext holds no message kind and nothing from the body.
        let kind = opened.message.kind().as_str().as_bytes();
        assert!(
            !env.windows(kind.len()).any(|x| x == kind),
            "{name}: kind in cleartext"
        );
    }
}

#[test]
fn sealed_attachments_with_matching_digests_are_accepted_and_mismatches_refused() {
    let w = World::new();
    let mut msg = example("request");
    let n = unseal_attachments(&mut msg);
    assert!(n > 0, "the request example carries attachments");
    let bytes = pattern(5000, 7);
    for a in msg.attachments_mut() {
        a.length = bytes.len() as u64;
        a.sha256 = Digest::of(&bytes);
    }
    let refs = vec![bytes.as_slice(); n];
    let ok = w.seal_full(msg.clone(), &refs);
    assert!(ok.is_ok());
    let other = pattern(5000, 8);
    let mut bad_refs = refs.clone();
    bad_refs[0] = &other;
    let err = w.seal_full(msg, &bad_refs).unwrap_err();
    assert!(
        matches!(err, envelope::SealError::AttachmentMismatch { index: 0 }),
        "{err}"
    );
}

fn sealed_request(w: &World) -> Vec<u8> {
    let mut msg = example("request");
    let n = unseal_attachments(&mut msg);
    let att = pattern(70_000, 1);
    w.seal(msg, &vec![att.as_slice(); n])
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).position(|x| x == needle).unwrap()
}

#[test]
fn tampered_header_fails_node_signature() {
    let w = World::new();
    let mut env = sealed_request(&w);
    let at = find(&env, b"kz-by-2019");
    env[at + 9] = b'8';
    assert!(matches!(
        w.open(&env, "kz.mvd", "by.mvd"),
        Err(OpenError::NodeSignature { .. })
    ));
}

#[test]
fn tampered_body_fails_node_signature() {
    let w = World::new();
    let mut env = sealed_request(&w);
    let at = env.len() - 66 - 20; // inside the body, before the node signature
    env[at] ^= 0x01;
    assert!(matches!(
        w.open(&env, "kz.mvd", "by.mvd"),
        Err(OpenError::NodeSignature { .. })
    ));
}

#[test]
fn tampered_attachment_fails_node_signature() {
    let w = World::new();
    let mut env = sealed_request(&w);
    let at = find(&env, b"age-encryption.org/v1") + 3000;
    env[at] ^= 0x80;
    assert!(matches!(
        w.open(&env, "kz.mvd", "by.mvd"),
        Err(OpenError::NodeSignature { .. })
    ));
}

#[test]
fn tampered_node_signature_fails() {
    let w = World::new();
    let mut env = sealed_request(&w);
    let last = env.len() - 1;
    env[last] ^= 0x01;
    assert!(matches!(
        w.open(&env, "kz.mvd", "by.mvd"),
        Err(OpenError::NodeSignature { .. })
    ));
}

#[test]
fn envelope_from_another_gateway_is_an_unknown_sender() {
    let w = World::new();
    let env = sealed_request(&w);
    let p = profile("kz-by-2019");
    let err = envelope::open_bytes(
        &env,
        &Limits::default(),
        &w.card(&authority("kz.mtszn")),
        w.node(&authority("by.mvd")),
        &w.signers(&authority("kz.mvd")),
        &p,
        now(),
    )
    .unwrap_err();
    assert!(matches!(err, OpenError::UnknownSender { .. }), "{err}");
}

#[test]
fn wrong_recipient_is_refused_before_decryption() {
    let w = World::new();
    let env = sealed_request(&w);
    let err = w.open(&env, "kz.mvd", "by.gpk").unwrap_err();
    assert!(matches!(err, OpenError::WrongRecipient { .. }), "{err}");
}

#[test]
fn body_encrypted_to_another_key_fails_decryption() {
    let w = World::new();
    let mut msg = example("clarification_request");
    unseal_attachments(&mut msg);
    let h = msg.header.clone();
    // A card that names the right authority but another gateway's age recipient.
    let mut card: AuthorityCard = w.card(&h.to);
    card.age_recipients = w.card(&authority("am.police")).age_recipients;
    let p = profile("kz-by-2019");
    let (env, _) = envelope::seal_to_vec(
        msg,
        &[],
        &envelope::SealParams {
            signatory: &w.signatory,
            node: w.node(&h.from),
            recipient: &card,
            profile: &p,
            envelope_id: Id::new(now()),
            now: now(),
        },
    )
    .unwrap();
    let err = w.open(&env, h.from.as_str(), h.to.as_str()).unwrap_err();
    assert!(matches!(err, OpenError::Decrypt(_)), "{err}");
}

#[test]
fn unknown_signatory_is_refused() {
    let w = World::new();
    let env = sealed_request(&w);
    let other = SigningKey::generate();
    let signers = vec![TrustedSigner {
        authority: authority("kz.mvd"),
        key: other.verifying_key(),
        valid_from: None,
        valid_until: None,
    }];
    let err = envelope::open_bytes(
        &env,
        &Limits::default(),
        &w.card(&authority("kz.mvd")),
        w.node(&authority("by.mvd")),
        &signers,
        &profile("kz-by-2019"),
        now(),
    )
    .unwrap_err();
    assert!(
        matches!(err, OpenError::Signature(SignatureError::UnknownSigner { .. })),
        "{err}"
    );
}

#[test]
fn signatory_trusted_for_another_authority_is_refused() {
    let w = World::new();
    let env = sealed_request(&w);
    let err = envelope::open_bytes(
        &env,
        &Limits::default(),
        &w.card(&authority("kz.mvd")),
        w.node(&authority("by.mvd")),
        &w.signers(&authority("kz.mtszn")),
        &profile("kz-by-2019"),
        now(),
    )
    .unwrap_err();
    assert!(
        matches!(err, OpenError::Signature(SignatureError::UnknownSigner { .. })),
        "{err}"
    );
}

#[test]
fn expired_signatory_is_refused_and_earlier_validity_accepted() {
    let w = World::new();
    let env = sealed_request(&w);
    let t = example("request").header.time;
    let open_at = |from: Option<Timestamp>, until: Option<Timestamp>, limits: Limits| {
        let signers = vec![TrustedSigner {
            authority: authority("kz.mvd"),
            key: w.signatory.verifying_key(),
            valid_from: from,
            valid_until: until,
        }];
        envelope::open_bytes(
            &env,
            &limits,
            &w.card(&authority("kz.mvd")),
            w.node(&authority("by.mvd")),
            &signers,
            &profile("kz-by-2019"),
            now(),
        )
    };
    let open_with = |from, until| open_at(from, until, Limits::default());
    let err = open_with(None, Some(t.plus_secs(-1))).unwrap_err();
    assert!(
        matches!(err, OpenError::Signature(SignatureError::SignerNotValid { .. })),
        "{err}"
    );
    let err = open_with(Some(t.plus_secs(1)), None).unwrap_err();
    assert!(
        matches!(err, OpenError::Signature(SignatureError::SignerNotValid { .. })),
        "{err}"
    );
    // Valid exactly when signed, even if expired by now: old messages stay
    // verifiable (offline, without the bound on late arrivals) ...
    let archive = Limits {
        ended_signer_grace_secs: None,
        ..Limits::default()
    };
    assert!(open_at(Some(t), Some(t), archive).is_ok());
    // ... and arriving, within the grace after the end (a late delivery) ...
    assert!(
        now().as_unix() - t.as_unix() > 3600,
        "now() is well after the example"
    );
    let grace = Limits {
        ended_signer_grace_secs: Some(u64::try_from(now().as_unix() - t.as_unix()).unwrap()),
        ..Limits::default()
    };
    assert!(open_at(Some(t), Some(t), grace).is_ok());
    // ... but not later (the signing time might be backdated).
    let err = open_with(Some(t), Some(t)).unwrap_err();
    assert!(
        matches!(
            err,
            OpenError::Signature(SignatureError::SignerNoLongerValid { .. })
        ),
        "{err}"
    );
    assert_eq!(
        konvert_envelope::receipt::RejectCode::from(&err),
        konvert_envelope::receipt::RejectCode::SignerNoLongerValid
    );
}

/// Decrypts the signed message of an envelope addressed to `to`.
fn signed_of(w: &World, env: &[u8], from: &str, to: &str) -> SignedMessage {
    w.open(env, from, to).unwrap().0.signed
}

fn header(from: &str, to: &str) -> EnvelopeHeader {
    EnvelopeHeader {
        id: Id::new(now()),
        from: authority(from),
        to: authority(to),
        agreement: konvert_envelope::model::AgreementId::new("kz-by-2019").unwrap(),
        created: now(),
        attachments: 0,
    }
}

#[test]
fn signed_message_readdressed_to_another_recipient_is_refused() {
    let w = World::new();
    let mut msg = example("clarification_request");
    unseal_attachments(&mut msg);
    let (from, to) = (msg.header.from.to_string(), msg.header.to.to_string());
    let env = w.seal(msg, &[]);
    let signed = signed_of(&w, &env, &from, &to);
    // The sender's gateway puts the same signed message into an envelope for another authority.
    let other = if to == "by.mvd" { "by.gpk" } else { "kz.mtszn" };
    let h = header(&from, other);
    let re = envelope::seal_signed(
        &signed,
        &h,
        &[],
        &w.card(&authority(other)).age_recipients,
        &w.node(&authority(&from)).signing,
    )
    .unwrap();
    let err = w.open(&re, &from, other).unwrap_err();
    assert!(matches!(err, OpenError::Readdressed { field: "to", .. }), "{err}");
}

#[test]
fn signed_message_forwarded_by_its_recipient_is_refused() {
    let w = World::new();
    let mut msg = example("clarification_request");
    unseal_attachments(&mut msg);
    let (from, to) = (msg.header.from.to_string(), msg.header.to.to_string());
    let env = w.seal(msg, &[]);
    let signed = signed_of(&w, &env, &from, &to);
    // The recipient forwards it to a third authority of its own party, as if it were its own.
    let third = if to == "by.mvd" { "by.gpk" } else { "kz.mtszn" };
    let h = header(&to, third);
    let re = envelope::seal_signed(
        &signed,
        &h,
        &[],
        &w.card(&authority(third)).age_recipients,
        &w.node(&authority(&to)).signing,
    )
    .unwrap();
    // The third authority trusts the original signatory for the original sender.
    let err = envelope::open_bytes(
        &re,
        &Limits::default(),
        &w.card(&authority(&to)),
        w.node(&authority(third)),
        &w.signers(&authority(&from)),
        &profile("kz-by-2019"),
        now(),
    )
    .unwrap_err();
    assert!(
        matches!(err, OpenError::Readdressed { field: "from", .. }),
        "{err}"
    );
}

#[test]
fn oversize_envelope_is_refused_with_the_limit() {
    let w = World::new();
    let env = sealed_request(&w);
    let limits = Limits {
        max_envelope: 10_000,
        ..Limits::default()
    };
    let err = envelope::receive(env.as_slice(), &limits, std::io::sink()).unwrap_err();
    assert!(matches!(err, OpenError::TooLarge { limit: 10_000, .. }), "{err}");
    let limits = Limits {
        max_chunk: 1000,
        ..Limits::default()
    };
    let err = envelope::receive(env.as_slice(), &limits, std::io::sink()).unwrap_err();
    assert!(matches!(err, OpenError::TooLarge { .. }), "{err}");
    let limits = Limits {
        max_message: 100,
        ..Limits::default()
    };
    let err = envelope::open_bytes(
        &env,
        &limits,
        &w.card(&authority("kz.mvd")),
        w.node(&authority("by.mvd")),
        &w.signers(&authority("kz.mvd")),
        &profile("kz-by-2019"),
        now(),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            OpenError::TooLarge {
                what: "the signed message",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn every_truncation_is_a_structure_error() {
    let w = World::new();
    let mut msg = example("progress_notice");
    unseal_attachments(&mut msg);
    let env = w.seal(msg, &[]);
    for cut in (0..env.len()).step_by(7).chain([env.len() - 1]) {
        let err = envelope::receive(&env[..cut], &Limits::default(), std::io::sink()).unwrap_err();
        assert!(matches!(err, OpenError::Structure(_)), "cut at {cut}: {err}");
    }
    let mut longer = env.clone();
    longer.push(0);
    let err = envelope::receive(longer.as_slice(), &Limits::default(), std::io::sink()).unwrap_err();
    assert!(matches!(err, OpenError::Structure(_)), "{err}");
}

#[test]
fn garbage_and_wrong_shapes_are_structure_errors() {
    for bytes in [
        b"not cbor at all".to_vec(),
        vec![0xff; 64],
        cbor::to_deterministic_vec(&Value::Map(vec![])).unwrap(),
        cbor::to_deterministic_vec(&Value::Array(vec![Value::Integer(1.into())])).unwrap(),
        vec![0x84, 0x01, 0x5f, 0xff], // indefinite header bytes
    ] {
        let err = envelope::receive(bytes.as_slice(), &Limits::default(), std::io::sink()).unwrap_err();
        assert!(matches!(err, OpenError::Structure(_)), "{bytes:x?}: {err}");
    }
    let v2 = vec![0x84, 0x02];
    let err = envelope::receive(v2.as_slice(), &Limits::default(), std::io::sink()).unwrap_err();
    assert!(matches!(err, OpenError::UnsupportedVersion(2)), "{err}");
}

/// Signs arbitrary message bytes as the sender's signatory would and seals them.
fn seal_raw(w: &World, like: &Message, bytes: Vec<u8>) -> Vec<u8> {
    let claims = SignedClaims::of(like, w.signatory.verifying_key().key_id());
    let signed = SignedMessage::sign_raw(bytes, &claims, &w.signatory).unwrap();
    let h = &like.header;
    let mut eh = header(h.from.as_str(), h.to.as_str());
    eh.agreement = h.agreement.clone();
    envelope::seal_signed(
        &signed,
        &eh,
        &[],
        &w.card(&h.to).age_recipients,
        &w.node(&h.from).signing,
    )
    .unwrap()
}

fn request_value() -> (Message, Value) {
    let mut msg = example("request");
    // seal_raw builds envelopes without attachment parts.
    if let konvert_envelope::model::MessageBody::Request(r) = &mut msg.body {
        r.attachments.clear();
        for p in &mut r.persons {
            p.photographs.clear();
            p.fingerprint_card = None;
        }
    }
    assert!(msg.attachments().is_empty());
    let v = Value::serialized(&msg).unwrap();
    (msg, v)
}

fn map_get<'a>(v: &'a mut Value, key: &str) -> &'a mut Value {
    match v {
        Value::Map(m) => &mut m.iter_mut().find(|(k, _)| k.as_text() == Some(key)).unwrap().1,
        _ => panic!("not a map"),
    }
}

#[test]
fn field_outside_article_6_fails_to_decode_and_names_the_field() {
    let w = World::new();
    let (msg, mut v) = request_value();
    let person = match map_get(map_get(map_get(&mut v, "body"), "content"), "persons") {
        Value::Array(a) => &mut a[0],
        _ => panic!(),
    };
    if let Value::Map(m) = person {
        m.push((Value::Text("religion".into()), Value::Text("x".into())));
    }
    let env = seal_raw(&w, &msg, cbor::value_to_deterministic_vec(v).unwrap());
    let err = w.open(&env, "kz.mvd", "by.mvd").unwrap_err();
    assert!(matches!(err, OpenError::MessageDecode(_)), "{err}");
    assert!(err.to_string().contains("religion"), "{err}");
}

#[test]
fn category_outside_article_5_fails_to_decode() {
    let w = World::new();
    let (msg, mut v) = request_value();
    *map_get(map_get(map_get(&mut v, "body"), "content"), "categories") =
        Value::Array(vec![Value::Text("tourist".into())]);
    let env = seal_raw(&w, &msg, cbor::value_to_deterministic_vec(v).unwrap());
    let err = w.open(&env, "kz.mvd", "by.mvd").unwrap_err();
    assert!(matches!(err, OpenError::MessageDecode(_)), "{err}");
}

#[test]
fn non_deterministic_message_bytes_fail_to_decode() {
    let w = World::new();
    let (msg, v) = request_value();
    let mut bytes = Vec::new();
    ciborium::into_writer(&v, &mut bytes).unwrap(); // serde field order, not sorted
    assert_ne!(bytes, cbor::value_to_deterministic_vec(v).unwrap());
    let env = seal_raw(&w, &msg, bytes);
    let err = w.open(&env, "kz.mvd", "by.mvd").unwrap_err();
    assert!(matches!(err, OpenError::MessageDecode(_)), "{err}");
}

#[test]
fn message_invalid_under_the_receivers_profile_is_refused() {
    let w = World::new();
    let (msg, mut v) = request_value();
    *map_get(map_get(map_get(&mut v, "body"), "content"), "substance") = Value::Text(String::new());
    let env = seal_raw(&w, &msg, cbor::value_to_deterministic_vec(v).unwrap());
    let err = w.open(&env, "kz.mvd", "by.mvd").unwrap_err();
    assert!(matches!(err, OpenError::Invalid(_)), "{err}");
}

#[test]
fn attachment_not_matching_the_signed_digest_is_refused() {
    let w = World::new();
    let mut msg = example("request");
    let n = unseal_attachments(&mut msg);
    let good = pattern(3000, 3);
    for a in msg.attachments_mut() {
        a.length = good.len() as u64;
        a.sha256 = Digest::of(&good);
    }
    let claims = SignedClaims::of(&msg, w.signatory.verifying_key().key_id());
    let signed =
        SignedMessage::sign_raw(cbor::to_deterministic_vec(&msg).unwrap(), &claims, &w.signatory).unwrap();
    let mut eh = header("kz.mvd", "by.mvd");
    eh.attachments = n as u32;
    let seal_with = |atts: &[&[u8]]| {
        envelope::seal_signed(
            &signed,
            &eh,
            atts,
            &w.card(&authority("by.mvd")).age_recipients,
            &w.node(&authority("kz.mvd")).signing,
        )
        .unwrap()
    };
    let ok = seal_with(&vec![good.as_slice(); n]);
    assert!(w.open(&ok, "kz.mvd", "by.mvd").is_ok());
    let other = pattern(3000, 4);
    let mut atts = vec![good.as_slice(); n];
    atts[n - 1] = &other;
    let err = w.open(&seal_with(&atts), "kz.mvd", "by.mvd").unwrap_err();
    assert!(
        matches!(err, OpenError::AttachmentMismatch { reason, .. } if reason.contains("SHA-256")),
        "{err}"
    );
    let shorter = &good[..2999];
    let mut atts = vec![good.as_slice(); n];
    atts[0] = shorter;
    let err = w.open(&seal_with(&atts), "kz.mvd", "by.mvd").unwrap_err();
    assert!(
        matches!(err, OpenError::AttachmentMismatch { reason, .. } if reason.contains("length")),
        "{err}"
    );
    // One attachment too few in the body: the signed message ends up read as an attachment.
    let err = w
        .open(&seal_with(&vec![good.as_slice(); n - 1]), "kz.mvd", "by.mvd")
        .unwrap_err();
    assert!(matches!(err, OpenError::Decrypt(_)), "{err}");
}

#[test]
fn cleartext_header_holds_only_routing() {
    let w = World::new();
    let env = sealed_request(&w);
    let r = envelope::receive(env.as_slice(), &Limits::default(), std::io::sink()).unwrap();
    assert!(r.body_size > 0);
    let json = serde_json::to_value(&r.header).unwrap();
    let mut keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["agreement", "attachments", "created", "from", "id", "to"]);
    // No Cyrillic or Latin name of the person appears anywhere in the envelope.
    for marker in ["Сейткали".as_bytes(), b"SEITKALI", "Просим".as_bytes()] {
        assert!(!env.windows(marker.len()).any(|x| x == marker));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Any summary text and any attachment bytes survive sealing and opening unchanged.
    #[test]
    fn unsolicited_information_round_trips(
        summary in "[а-яА-Я0-9 ,.]{1,300}",
        atts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..140_000), 0..3),
    ) {
        let w = World::new();
        let mut msg = example("unsolicited_information");
        if let konvert_envelope::model::MessageBody::UnsolicitedInformation(u) = &mut msg.body {
            u.summary = summary;
            u.attachments = atts.iter().map(|_| Attachment {
                media_type: "application/pdf".into(), length: 0, sha256: Digest::default(), file: None,
            }).collect();
            u.persons.iter_mut().for_each(|p| { p.photographs.clear(); p.fingerprint_card = None; });
        } else {
            panic!("example is not unsolicited information");
        }
        let refs: Vec<&[u8]> = atts.iter().map(Vec::as_slice).collect();
        let env = w.seal(msg.clone(), &refs);
        let (opened, plains) = w.open(&env, msg.header.from.as_str(), msg.header.to.as_str()).unwrap();
        prop_assert_eq!(plains, atts);
        if let (konvert_envelope::model::MessageBody::UnsolicitedInformation(a),
                konvert_envelope::model::MessageBody::UnsolicitedInformation(b)) = (&opened.message.body, &msg.body) {
            prop_assert_eq!(&a.summary, &b.summary);
        }
    }
}

#[test]
fn agreement_not_in_force_or_other_profile_is_refused_before_decryption() {
    let w = World::new();
    let env = sealed_request(&w);
    let open_at = |p: &konvert_envelope::profile::Profile, now: Timestamp| {
        envelope::open_bytes(
            &env,
            &Limits::default(),
            &w.card(&authority("kz.mvd")),
            w.node(&authority("by.mvd")),
            &w.signers(&authority("kz.mvd")),
            p,
            now,
        )
    };
    let early: Timestamp = "2019-01-01T00:00:00Z".parse().unwrap();
    let err = open_at(&profile("kz-by-2019"), early).unwrap_err();
    assert!(matches!(err, OpenError::AgreementNotInForce { .. }), "{err}");
    let err = open_at(&profile("kz-am-2024"), now()).unwrap_err();
    assert!(matches!(err, OpenError::AgreementNotInForce { .. }), "{err}");
}

#[test]
fn memory_parts_reserve_their_room_and_a_small_part_gives_it_back() {
    use konvert_envelope::envelope::{MemoryParts, PartSink};
    use std::io::Write;
    let mut parts = MemoryParts::with_room(1 << 20);
    let mut w = parts.create(0).unwrap();
    assert!(w.capacity() >= 1 << 20);
    w.write_all(b"small").unwrap();
    parts.finish(0, w).unwrap();
    // The next one reserves what is left.
    let mut w = parts.create(1).unwrap();
    assert!(w.capacity() >= (1 << 20) - 5);
    let ptr = w.as_ptr();
    w.write_all(&pattern(700_000, 3)).unwrap();
    assert_eq!(w.as_ptr(), ptr, "written without growing");
    parts.finish(1, w).unwrap();
    assert_eq!(parts.parts[0], b"small");
    assert!(
        parts.parts[0].capacity() < 8192,
        "the small one gave its room back"
    );
    assert_eq!(parts.parts[1], pattern(700_000, 3));
    // Beyond the room a part still grows as it needs.
    let mut w = parts.create(2).unwrap();
    w.write_all(&pattern(400_000, 4)).unwrap();
    parts.finish(2, w).unwrap();
    assert_eq!(parts.parts[2], pattern(400_000, 4));
    assert_eq!(MemoryParts::default().create(0).unwrap().capacity(), 0);
}

#[test]
fn a_known_digest_is_used_unhashed_and_a_wrong_one_is_refused_at_the_receiver() {
    let w = World::new();
    let mut msg = example("request");
    let n = unseal_attachments(&mut msg);
    assert!(n >= 1);
    let bodies: Vec<Vec<u8>> = (0..n).map(|i| pattern(70_000 + i, i as u8)).collect();
    let h = msg.header.clone();
    let seal_with = |known: &[Option<Digest>]| {
        let mut readers: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
        let mut dyns: Vec<&mut dyn std::io::Read> =
            readers.iter_mut().map(|r| r as &mut dyn std::io::Read).collect();
        let mut out = Vec::new();
        let sealed = w.seal_to(msg.clone(), &mut dyns, known, &mut out).unwrap();
        (out, sealed)
    };
    // The right digest, given: the same message as hashing it would sign.
    let (env, sealed) = seal_with(&[Some(Digest::of(&bodies[0]))]);
    assert_eq!(sealed.message.attachments()[0].sha256, Digest::of(&bodies[0]));
    let (opened, plains) = w.open(&env, h.from.as_str(), h.to.as_str()).unwrap();
    assert_eq!(plains, bodies);
    assert_eq!(opened.message, sealed.message);
    // A wrong one is signed as given (it is not checked here), and the
    // receiver refuses the attachment that does not match it.
    let (env, sealed) = seal_with(&[Some(Digest([7; 32]))]);
    assert_eq!(sealed.message.attachments()[0].sha256, Digest([7; 32]));
    let err = w.open(&env, h.from.as_str(), h.to.as_str()).unwrap_err();
    assert!(
        matches!(err, OpenError::AttachmentMismatch { index: 0, .. }),
        "{err:?}"
    );
}
