//! `docs/konvert.cddl` (the wire format in CDDL, RFC 8610) against what this
//! crate really writes: every example message, the envelope test vectors and
//! a freshly sealed envelope, the node signature input, a signed message
//! with its COSE_Sign1 and Sig_structure, and signed receipts of every
//! outcome. Negative checks make sure the schema (and the validator) refuse
//! what they must, so these tests cannot pass vacuously.
//!
//! The `cddl` crate validates against the *first* type rule of a document and
//! has no API taking a rule name, so each check prepends
//! `konvert-check-root = <rule>` to the schema. Its `.regexp` matches
//! unanchored (RFC 8610 §3.8.3 says XSD regular expressions, which are
//! anchored), so the check also anchors every `.regexp` before validating.
//! It does not check deterministic encoding (nothing in CDDL does); the
//! tests check that by re-encoding.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::sync::OnceLock;

use ciborium::value::Value;
use common::*;
use coset::{CborSerializable, CoseSign1, TaggedCborSerializable};
use konvert_envelope::cbor;
use konvert_envelope::envelope::{self, Limits};
use konvert_envelope::keys::SigningKey;
use konvert_envelope::model::{AuthorityId, Digest, Id};
use konvert_envelope::receipt::{Outcome, Receipt, RejectCode};
use konvert_envelope::signed::{SignedMessage, MESSAGE_AAD};

/// The schema as on disk.
fn schema_text() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| std::fs::read_to_string(repo().join("docs/konvert.cddl")).unwrap())
}

/// The schema with every `.regexp "…"` anchored (see the module comment).
fn anchored_schema() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        const CTRL: &str = ".regexp \"";
        let mut rest = schema_text();
        let mut out = String::with_capacity(rest.len() + 64);
        let mut count = 0;
        while let Some(at) = rest.find(CTRL) {
            let (head, tail) = rest.split_at(at + CTRL.len());
            let end = tail.find('"').unwrap();
            out.push_str(head);
            out.push_str("^(?:");
            out.push_str(&tail[..end]);
            out.push_str(")$");
            rest = &tail[end..];
            count += 1;
        }
        out.push_str(rest);
        assert!(count >= 3, "expected the identifier, country and date regexps");
        // 0.10.7 panics on a byte string literal matched against a byte string
        // (an unwrap of the absent control operator), so the external AADs
        // are checked by their lengths here and byte for byte by the tests.
        for aad in [
            "'konvert/1 message'",
            "'konvert/1 receipt'",
            "'konvert/1 directory'",
        ] {
            assert_eq!(out.matches(aad).count(), 1, "{aad} in the schema");
            out = out.replace(aad, &format!("bstr .size {}", aad.len() - 2));
        }
        out
    })
}

/// Validates `bytes` against rule `rule` of the schema.
fn validate(rule: &str, bytes: &[u8]) -> Result<(), String> {
    let doc = format!("konvert-check-root = {rule}\n\n{}", anchored_schema());
    cddl::validate_cbor_from_slice(&doc, bytes, None).map_err(|e| e.to_string())
}

#[track_caller]
fn assert_valid(rule: &str, bytes: &[u8], what: &str) {
    if let Err(e) = validate(rule, bytes) {
        // The validator quotes whole values; keep the report readable.
        let e: String = e.chars().take(3000).collect();
        panic!("{what}: does not match rule `{rule}` of docs/konvert.cddl:\n{e}");
    }
}

#[track_caller]
fn assert_invalid(rule: &str, bytes: &[u8], what: &str) {
    assert!(
        validate(rule, bytes).is_err(),
        "{what}: matches rule `{rule}` of docs/konvert.cddl but must not"
    );
}

fn decode(bytes: &[u8]) -> Value {
    ciborium::from_reader(bytes).unwrap()
}

fn encode(v: Value) -> Vec<u8> {
    cbor::value_to_deterministic_vec(v).unwrap()
}

fn entry<'a>(map: &'a mut Value, key: &str) -> &'a mut Value {
    let Value::Map(entries) = map else {
        panic!("not a map: {map:?}")
    };
    entries
        .iter_mut()
        .find(|(k, _)| k.as_text() == Some(key))
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no key {key:?}"))
}

fn entry_ref<'a>(map: &'a Value, key: &str) -> &'a Value {
    map.as_map()
        .unwrap_or_else(|| panic!("not a map: {map:?}"))
        .iter()
        .find(|(k, _)| k.as_text() == Some(key))
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no key {key:?}"))
}

fn bytes_of(v: &Value) -> &[u8] {
    v.as_bytes().unwrap_or_else(|| panic!("not a byte string: {v:?}"))
}

/// An example message, encoded as it is signed.
fn example_cbor(name: &str) -> Vec<u8> {
    cbor::to_deterministic_vec(&example(name)).unwrap()
}

#[test]
fn schema_parses() {
    cddl::cddl_from_str(schema_text(), true).unwrap();
    cddl::cddl_from_str(anchored_schema(), true).unwrap();
}

#[test]
fn every_example_message_matches() {
    let names = example_names();
    assert!(
        names.len() >= 13,
        "expected an example of every kind, found {names:?}"
    );
    let mut kinds = std::collections::BTreeSet::new();
    for name in names {
        let msg = example(&name);
        assert_eq!(
            cbor::to_deterministic_vec(&msg).unwrap(),
            cbor::to_deterministic_vec_by_value_tree(&msg).unwrap(),
            "{name}: the direct encoder and the value tree agree"
        );
        kinds.insert(msg.kind());
        assert_valid("message", &cbor::to_deterministic_vec(&msg).unwrap(), &name);
    }
    assert_eq!(kinds.len(), 13, "every kind is covered by an example");
}

fn vector(name: &str) -> Vec<u8> {
    std::fs::read(repo().join("envelope/tests/vectors").join(name)).unwrap()
}

/// Whether a raw envelope's body is an indefinite-length byte string.
fn body_is_indefinite(env: &[u8]) -> bool {
    use ciborium_ll::{Decoder, Header};
    let mut dec = Decoder::from(env);
    assert!(matches!(dec.pull().unwrap(), Header::Array(Some(4))));
    assert!(matches!(dec.pull().unwrap(), Header::Positive(1)));
    let Header::Bytes(Some(n)) = dec.pull().unwrap() else {
        panic!("header is not a definite byte string")
    };
    let mut skip = vec![0u8; n];
    ciborium_io::Read::read_exact(&mut dec, &mut skip).unwrap();
    match dec.pull().unwrap() {
        Header::Bytes(None) => true,
        Header::Bytes(Some(_)) => false,
        h => panic!("body is {h:?}"),
    }
}

/// Checks an envelope and everything inside it that can be seen without keys.
fn check_envelope(env: &[u8], what: &str) {
    assert_valid("envelope", env, what);
    let v = decode(env);
    let items = v.as_array().unwrap();
    let header = bytes_of(&items[1]);
    assert_valid("envelope-header", header, &format!("{what}: header"));
    assert_eq!(encode(decode(header)), header, "{what}: header is deterministic");

    // The node signature input, rebuilt from the body as received.
    let mut received_body = Vec::new();
    let received = envelope::receive(env, &Limits::default(), &mut received_body).unwrap();
    let body = bytes_of(&items[2]);
    assert_eq!(received_body, body);
    let tbs = envelope::node_sig_input(header, &Digest::of(body)).unwrap();
    assert_valid("node-sig-input", &tbs, &format!("{what}: node signature input"));
    assert_eq!(received.envelope_digest(), Digest::of(&tbs));
}

/// Decrypts an envelope body with by.mvd's identity and splits the
/// plaintext sequence into its attachments and the signed message.
fn body_plaintext(env: &[u8]) -> (Vec<Value>, Vec<u8>) {
    use std::io::Read as _;
    use std::str::FromStr as _;
    // The recipient's age identity; the file also has a `# public key` comment line.
    let text = std::fs::read_to_string(repo().join("envelope/tests/vectors/keys/by.mvd.age.key")).unwrap();
    let line = text.lines().find(|l| l.starts_with("AGE-SECRET-KEY-")).unwrap();
    let identity = age::x25519::Identity::from_str(line).unwrap();
    let v = decode(env);
    let items = v.as_array().unwrap();
    let header: Value = decode(bytes_of(&items[1]));
    let count = match entry_ref(&header, "attachments") {
        Value::Integer(i) => usize::try_from(i128::from(*i)).unwrap(),
        other => panic!("attachments is {other:?}"),
    };
    let mut plain = Vec::new();
    age::Decryptor::new(bytes_of(&items[2]))
        .unwrap()
        .decrypt(std::iter::once(&identity as &dyn age::Identity))
        .unwrap()
        .read_to_end(&mut plain)
        .unwrap();
    let mut cursor = std::io::Cursor::new(plain.as_slice());
    let mut atts = Vec::new();
    for _ in 0..count {
        atts.push(ciborium::de::from_reader::<Value, _>(&mut cursor).unwrap());
    }
    let signed: Value = ciborium::de::from_reader(&mut cursor).unwrap();
    assert_eq!(
        cursor.position() as usize,
        plain.len(),
        "nothing follows the signed message"
    );
    // The sequence, seen as the `body-plaintext` array.
    let seq = encode(Value::Array(vec![Value::Array(atts.clone()), signed.clone()]));
    assert_valid("body-plaintext", &seq, "body plaintext");
    (atts, bytes_of(&signed).to_vec())
}

#[test]
fn vector_envelopes_match() {
    for name in ["request.env", "unsolicited_information.env"] {
        let env = vector(&format!("valid/{name}"));
        check_envelope(&env, name);
    }
    // The sealer streams the body as an indefinite-length byte string; a
    // receiver also accepts a definite one (ciborium re-encodes the decoded
    // value with definite lengths).
    let env = vector("valid/request.env");
    assert!(body_is_indefinite(&env));
    let definite = encode(decode(&env));
    assert!(!body_is_indefinite(&definite));
    check_envelope(&definite, "request.env with a definite body");
}

#[test]
fn vector_body_decrypts_to_a_matching_signed_message() {
    for name in ["request.env", "unsolicited_information.env"] {
        let env = vector(&format!("valid/{name}"));
        let (atts, signed) = body_plaintext(&env);
        if name == "request.env" {
            let expected = vector("valid/request.attachment");
            assert!(!atts.is_empty());
            assert!(atts.iter().all(|a| bytes_of(a) == expected.as_slice()));
        }
        check_signed_message(&signed, name);
    }
}

#[test]
fn freshly_sealed_envelope_matches() {
    let w = World::new();
    let mut msg = example("request");
    let n = unseal_attachments(&mut msg);
    assert!(n > 0);
    // One attachment crosses several 64 KiB chunks.
    let bodies: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8; 150_000 + i]).collect();
    let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
    let env = w.seal(msg, &refs);
    assert!(body_is_indefinite(&env));
    check_envelope(&env, "sealed request");
}

/// Checks the plaintext of an envelope body.
fn check_signed_message(plain: &[u8], what: &str) {
    assert_valid("signed-message", plain, what);
    let v = decode(plain);
    let (cose, message) = match &v {
        Value::Array(items) if items.len() == 2 => (bytes_of(&items[0]), bytes_of(&items[1])),
        other => panic!("{what}: signed message is not a 2-item array: {other:?}"),
    };
    assert_valid("message", message, &format!("{what}: message"));
    assert_eq!(
        encode(decode(message)),
        message,
        "{what}: message is deterministic"
    );
    assert_valid("message-signature", cose, &format!("{what}: COSE_Sign1"));

    let sign1 = CoseSign1::from_tagged_slice(cose).unwrap();
    let protected = sign1.protected.original_data.clone().unwrap();
    assert_valid(
        "message-protected-header",
        &protected,
        &format!("{what}: protected header"),
    );
    assert_eq!(
        encode(decode(&protected)),
        protected,
        "{what}: protected header is deterministic"
    );
    assert_eq!(sign1.payload.as_deref(), Some(&Digest::of(message).0[..]));
    let tbs = sign1.tbs_data(MESSAGE_AAD);
    assert_valid("message-sig-structure", &tbs, &format!("{what}: Sig_structure"));
    assert_eq!(
        bytes_of(&decode(&tbs).as_array().unwrap()[2]),
        b"konvert/1 message"
    );
}

#[test]
fn signed_message_matches() {
    let signer = SigningKey::generate();
    for name in example_names() {
        let signed = SignedMessage::sign(&example(&name), &signer).unwrap();
        check_signed_message(&signed.to_vec().unwrap(), &name);
    }
}

fn receipt(outcome: Outcome) -> Receipt {
    Receipt {
        envelope_id: Id::new(now()),
        envelope_digest: Digest::of(b"an envelope"),
        time: now(),
        receiver: AuthorityId::new("by.mvd").unwrap(),
        sender: AuthorityId::new("kz.mvd").unwrap(),
        outcome,
    }
}

#[test]
fn signed_receipts_of_every_outcome_match() {
    let key = SigningKey::generate();
    let outcomes =
        std::iter::once(Outcome::Accepted).chain(RejectCode::ALL.map(|code| Outcome::Rejected { code }));
    for outcome in outcomes {
        let what = format!("receipt {outcome:?}");
        let signed = receipt(outcome).sign(&key).unwrap();
        assert_valid("signed-receipt", &signed, &what);
        let sign1 = CoseSign1::from_tagged_slice(&signed).unwrap();
        let payload = sign1.payload.clone().unwrap();
        assert_valid("receipt", &payload, &format!("{what}: payload"));
        assert_eq!(
            encode(decode(&payload)),
            payload,
            "{what}: payload is deterministic"
        );
        let protected = sign1.protected.original_data.clone().unwrap();
        assert_valid(
            "receipt-protected-header",
            &protected,
            &format!("{what}: protected header"),
        );
        let tbs = sign1.tbs_data(konvert_envelope::receipt::RECEIPT_AAD);
        assert_valid("receipt-sig-structure", &tbs, &format!("{what}: Sig_structure"));
        assert_eq!(
            bytes_of(&decode(&tbs).as_array().unwrap()[2]),
            b"konvert/1 receipt"
        );
    }
}

// ---------------------------------------------------------------------------
// Must fail: each starts from a valid encoding and breaks one thing.
// ---------------------------------------------------------------------------

/// A message with one change applied to its CBOR value.
fn altered_message(name: &str, change: impl FnOnce(&mut Value)) -> Vec<u8> {
    let bytes = example_cbor(name);
    assert_valid("message", &bytes, name);
    let mut v = decode(&bytes);
    change(&mut v);
    encode(v)
}

fn first_person(v: &mut Value) -> &mut Value {
    let persons = entry(entry(entry(v, "body"), "content"), "persons");
    &mut persons.as_array_mut().unwrap()[0]
}

#[test]
fn person_with_a_field_outside_art6_fails() {
    let bad = altered_message("request", |v| {
        first_person(v)
            .as_map_mut()
            .unwrap()
            .push((Value::Text("religion".into()), Value::Text("x".into())));
    });
    assert_invalid("message", &bad, "person with `religion`");
}

#[test]
fn unknown_kind_fails() {
    let bad = altered_message("request", |v| {
        *entry(entry(v, "body"), "kind") = Value::Text("petition".into());
    });
    assert_invalid("message", &bad, "kind `petition`");
    // A known kind with the content of another kind.
    let bad = altered_message("request", |v| {
        *entry(entry(v, "body"), "kind") = Value::Text("response".into());
    });
    assert_invalid("message", &bad, "kind `response` with request content");
}

#[test]
fn wrong_scalars_fail() {
    // Country codes are exactly three letters (checks that regexps are anchored).
    let bad = altered_message("request", |v| {
        let c = entry(first_person(v), "citizenship");
        *c = Value::Array(vec![Value::Map(vec![(
            Value::Text("country".into()),
            Value::Text("KAZX".into()),
        )])]);
    });
    assert_invalid("message", &bad, "country code KAZX");
    // Ids are 16 bytes, not text.
    let bad = altered_message("request", |v| {
        *entry(entry(v, "header"), "id") = Value::Text(Id::new(now()).to_string());
    });
    assert_invalid("message", &bad, "text id");
    // Times are integers.
    let bad = altered_message("request", |v| {
        *entry(entry(v, "header"), "time") = Value::Text("2026-11-22T10:00:00Z".into());
    });
    assert_invalid("message", &bad, "text time");
    // Authority ids are lowercase.
    let bad = altered_message("request", |v| {
        *entry(entry(v, "header"), "from") = Value::Text("KZ.MVD".into());
    });
    assert_invalid("message", &bad, "uppercase authority");
    // A sealed attachment has no `file` and always a digest.
    let bad = altered_message("request", |v| {
        let atts = entry(entry(entry(v, "body"), "content"), "attachments");
        atts.as_array_mut().unwrap()[0]
            .as_map_mut()
            .unwrap()
            .push((Value::Text("file".into()), Value::Text("a.pdf".into())));
    });
    assert_invalid("message", &bad, "attachment with `file`");
}

#[test]
fn envelope_of_version_2_fails() {
    let env = vector("valid/request.env");
    let mut v = decode(&env);
    v.as_array_mut().unwrap()[0] = Value::Integer(2.into());
    assert_invalid("envelope", &encode(v), "envelope version 2");
}

#[test]
fn envelope_with_short_node_signature_or_extra_header_field_fails() {
    let env = vector("valid/request.env");
    let mut v = decode(&env);
    v.as_array_mut().unwrap()[3] = Value::Bytes(vec![0; 63]);
    assert_invalid("envelope", &encode(v), "63-byte node signature");

    let mut v = decode(&env);
    let items = v.as_array_mut().unwrap();
    let mut header = decode(bytes_of(&items[1]));
    header
        .as_map_mut()
        .unwrap()
        .push((Value::Text("kind".into()), Value::Text("request".into())));
    items[1] = Value::Bytes(encode(header));
    assert_invalid("envelope", &encode(v), "header with a message kind");
}

#[test]
fn receipt_with_unknown_code_fails() {
    let key = SigningKey::generate();
    let payload = cbor::to_deterministic_vec(&receipt(Outcome::Rejected {
        code: RejectCode::Malformed,
    }))
    .unwrap();
    assert_valid("receipt", &payload, "receipt");
    let mut v = decode(&payload);
    *entry(entry(&mut v, "outcome"), "code") = Value::Text("lost".into());
    assert_invalid("receipt", &encode(v), "reject code `lost`");
    // An accepted receipt carries no code.
    let mut v = decode(&payload);
    *entry(entry(&mut v, "outcome"), "status") = Value::Text("accepted".into());
    assert_invalid("receipt", &encode(v), "accepted with a code");
    // The whole signed receipt: untagged is not what Konvert writes.
    let signed = receipt(Outcome::Accepted).sign(&key).unwrap();
    let untagged = CoseSign1::from_tagged_slice(&signed).unwrap().to_vec().unwrap();
    assert_invalid("signed-receipt", &untagged, "untagged receipt");
}

#[test]
fn signed_message_with_wrong_protected_header_fails() {
    let signer = SigningKey::generate();
    let signed = SignedMessage::sign(&example("request"), &signer).unwrap();
    let sign1 = CoseSign1::from_tagged_slice(&signed.cose).unwrap();
    let protected = sign1.protected.original_data.clone().unwrap();
    let mut v = decode(&protected);
    *entry(&mut v, "konvert-time") = Value::Text("now".into());
    assert_invalid("message-protected-header", &encode(v), "text konvert-time");
    let mut v = decode(&protected);
    v.as_map_mut()
        .unwrap()
        .retain(|(k, _)| k.as_text() != Some("konvert-agreement"));
    assert_invalid("message-protected-header", &encode(v), "no konvert-agreement");
    // A payload that is the message itself instead of its SHA-256.
    let mut v = decode(&signed.cose);
    let Value::Tag(18, inner) = &mut v else {
        panic!("not tag 18")
    };
    inner.as_array_mut().unwrap()[2] = Value::Bytes(signed.message.clone());
    assert_invalid("message-signature", &encode(v), "payload not a digest");
}

/// A signed roster and a renaming (roster.rs) as `directory_update`
/// messages with their attestation, the signed statement on its own, and
/// what the root key signs.
#[test]
fn attested_directory_updates_match() {
    use konvert_envelope::model::{DirectoryChange, Message, MessageBody};
    use konvert_envelope::roster::{authority_change_update, DirectoryStatement, Roster, DIRECTORY_AAD};
    let root = SigningKey::generate();
    let mut msg: Message = example("directory_update");
    let MessageBody::DirectoryUpdate(u) = &msg.body else {
        panic!("example is not a directory update")
    };
    let DirectoryChange::SignatoryRoster {
        authority,
        version,
        signatories,
    } = u.change.clone()
    else {
        panic!("example is not a roster")
    };
    // The example's keys are placeholders, not Ed25519 points (which the roster check refuses).
    let signatories = signatories
        .into_iter()
        .map(|mut s| {
            s.public_key =
                konvert_envelope::model::PublicKeyBytes(SigningKey::generate().verifying_key().to_bytes());
            s
        })
        .collect();
    let roster = Roster {
        authority,
        version,
        issued: msg.header.time,
        signatories,
    };
    let body = roster.sign(&root).unwrap().to_directory_update(u.note.clone());
    let att = body.attestation.clone().unwrap().0;
    msg.body = MessageBody::DirectoryUpdate(body);
    assert_valid(
        "message",
        &cbor::to_deterministic_vec(&msg).unwrap(),
        "attested roster update",
    );
    assert_valid("signed-directory-statement", &att, "signed roster statement");

    let renamed: Message = example("directory_update-authority_renamed");
    let MessageBody::DirectoryUpdate(u) = &renamed.body else {
        panic!()
    };
    let body = authority_change_update(
        &renamed.header.from,
        renamed.header.time,
        u.change.clone(),
        None,
        &root,
    )
    .unwrap();
    let att2 = body.attestation.clone().unwrap().0;
    assert_valid("signed-directory-statement", &att2, "signed renaming statement");

    // The parts: payload, protected header, Sig_structure.
    let sign1 = CoseSign1::from_tagged_slice(&att).unwrap();
    let payload = sign1.payload.clone().unwrap();
    assert_valid("directory-statement", &payload, "statement payload");
    assert_eq!(encode(decode(&payload)), payload, "payload is deterministic");
    let prot = sign1.protected.original_data.clone().unwrap();
    assert_valid("directory-protected-header", &prot, "protected header");
    let tbs = coset::sig_structure_data(
        coset::SignatureContext::CoseSign1,
        sign1.protected.clone(),
        None,
        DIRECTORY_AAD,
        &payload,
    );
    assert_valid("directory-sig-structure", &tbs, "Sig_structure");
    assert!(root.verifying_key().verify(&tbs, &sign1.signature));
    assert!(DirectoryStatement::verify(&att, &root.verifying_key()).is_ok());

    // A statement with an unknown member does not match.
    let mut v = decode(&payload);
    if let Value::Map(m) = &mut v {
        m.push((Value::Text("extra".into()), Value::Integer(1.into())));
    }
    assert_invalid(
        "directory-statement",
        &encode(v),
        "statement with an extra member",
    );
}
