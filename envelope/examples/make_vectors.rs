//! Writes the envelope test vectors used by `tests/vectors.rs`.
//!
//! ```text
//! cargo run -p konvert-envelope --example make_vectors -- envelope/tests/vectors
//! ```
//!
//! Keys are made fresh each time, so rerunning replaces every file. The
//! vectors are committed; the tests only read them.

use std::fs;
use std::path::{Path, PathBuf};

use ciborium::value::Value;
use konvert_envelope::cbor;
use konvert_envelope::envelope::{self, EnvelopeHeader};
use konvert_envelope::keys::{NodeKeys, SigningKey};
use konvert_envelope::model::{AgreementId, AuthorityId, Id, Message, MessageBody, Timestamp};
use konvert_envelope::profile::Profile;
use konvert_envelope::signed::{SignedClaims, SignedMessage};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    let out = PathBuf::from(std::env::args().nth(1).ok_or("usage: make_vectors OUT_DIR")?);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    fs::create_dir_all(out.join("keys"))?;
    fs::create_dir_all(out.join("valid"))?;
    fs::create_dir_all(out.join("fail"))?;
    let now: Timestamp = "2026-11-22T10:00:00Z".parse()?;
    let profile = Profile::from_toml_str(
        &fs::read_to_string(repo.join("deploy/profiles/kz-by-2019.toml"))?,
        "kz-by-2019",
    )?;

    // Keys of three gateways and two signatories of kz.mvd.
    let mut nodes = Vec::new();
    for a in ["kz.mvd", "by.mvd", "by.gpk"] {
        let n = NodeKeys::generate(AuthorityId::new(a)?);
        fs::write(
            out.join(format!("keys/{a}.node.key.pem")),
            n.signing.to_pkcs8_pem()?.as_bytes(),
        )?;
        fs::write(out.join(format!("keys/{a}.age.key")), n.age.to_text().as_bytes())?;
        fs::write(
            out.join(format!("keys/{a}.card.toml")),
            n.card(None).to_toml_string()?,
        )?;
        nodes.push(n);
    }
    let (kz, by, gpk) = (&nodes[0], &nodes[1], &nodes[2]);
    let signatory = SigningKey::generate();
    let stranger = SigningKey::generate();
    for (name, k) in [("signatory", &signatory), ("stranger", &stranger)] {
        fs::write(
            out.join(format!("keys/{name}.key.pem")),
            k.to_pkcs8_pem()?.as_bytes(),
        )?;
        fs::write(
            out.join(format!("keys/{name}.key.pem.pub")),
            k.verifying_key().to_public_key_pem()?,
        )?;
    }

    let example = |name: &str| -> Result<Message> {
        Ok(serde_json::from_str(&fs::read_to_string(
            repo.join(format!("docs/examples/{name}.json")),
        )?)?)
    };
    let strip = |mut m: Message| -> Message {
        for a in m.attachments_mut() {
            a.length = 0;
            a.sha256 = Default::default();
            a.file = None;
        }
        m
    };
    let seal = |m: Message, atts: &[&[u8]], signer: &SigningKey, to: &NodeKeys| -> Result<Vec<u8>> {
        Ok(envelope::seal_to_vec(
            m,
            atts,
            &envelope::SealParams {
                signatory: signer,
                node: kz,
                recipient: &to.card(None),
                profile: &profile,
                envelope_id: Id::new(now),
                now,
            },
        )?
        .0)
    };

    // Valid vectors.
    let request = strip(example("request")?);
    let n = request.attachments().len();
    let photo: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(out.join("valid/request.attachment"), &photo)?;
    let atts = vec![photo.as_slice(); n];
    let valid_request = seal(request.clone(), &atts, &signatory, by)?;
    fs::write(out.join("valid/request.env"), &valid_request)?;
    let mut unsolicited = strip(example("unsolicited_information")?);
    if let MessageBody::UnsolicitedInformation(u) = &mut unsolicited.body {
        u.attachments.clear();
        for p in &mut u.persons {
            p.photographs.clear();
            p.fingerprint_card = None;
        }
    }
    if unsolicited.header.from.as_str() == "kz.mvd" && unsolicited.header.to.as_str() == "by.mvd" {
        fs::write(
            out.join("valid/unsolicited_information.env"),
            seal(unsolicited, &[], &signatory, by)?,
        )?;
    }

    // Must-fail vectors.
    let flip = |mut v: Vec<u8>, at: usize| {
        v[at] ^= 0x01;
        v
    };
    let pos = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|x| x == needle).unwrap_or(0);
    let at = pos(&valid_request, b"kz-by-2019") + 9;
    fs::write(
        out.join("fail/tampered-header.env"),
        flip(valid_request.clone(), at),
    )?;
    fs::write(
        out.join("fail/tampered-body.env"),
        flip(valid_request.clone(), valid_request.len() - 90),
    )?;
    let at = pos(&valid_request, b"age-encryption.org/v1") + 5000;
    fs::write(
        out.join("fail/tampered-attachment.env"),
        flip(valid_request.clone(), at),
    )?;
    fs::write(
        out.join("fail/truncated.env"),
        &valid_request[..valid_request.len() / 2],
    )?;
    fs::write(
        out.join("fail/garbage.env"),
        b"\x84\x01\x58\x20this is not an envelope header!!",
    )?;

    // Addressed to by.gpk: by.mvd must refuse it.
    let mut to_gpk = request.clone();
    to_gpk.header.to = gpk.authority.clone();
    fs::write(
        out.join("fail/wrong-recipient.env"),
        seal(to_gpk, &atts, &signatory, gpk)?,
    )?;
    // Signed by a key that is not on kz.mvd's list.
    fs::write(
        out.join("fail/unknown-signer.env"),
        seal(request.clone(), &atts, &stranger, by)?,
    )?;
    // The valid request again; the test trusts the signatory only from 2026-11-01,
    // after the message was signed (2026-10-05).
    fs::write(out.join("fail/signer-not-yet-valid.env"), &valid_request)?;

    // Raw signed messages in hand-made envelopes.
    let mut plain = request.clone();
    if let MessageBody::Request(r) = &mut plain.body {
        r.attachments.clear();
        for p in &mut r.persons {
            p.photographs.clear();
            p.fingerprint_card = None;
        }
    }
    let raw = |m: &Message, bytes: Vec<u8>, to: &NodeKeys| -> Result<Vec<u8>> {
        let claims = SignedClaims::of(m, signatory.verifying_key().key_id());
        let signed = SignedMessage::sign_raw(bytes, &claims, &signatory)?;
        let h = EnvelopeHeader {
            id: Id::new(now),
            from: kz.authority.clone(),
            to: to.authority.clone(),
            agreement: AgreementId::new("kz-by-2019")?,
            created: now,
            attachments: 0,
        };
        Ok(envelope::seal_signed(
            &signed,
            &h,
            &[],
            &to.card(None).age_recipients,
            &kz.signing,
        )?)
    };
    // Signed for by.gpk, put in an envelope for by.mvd.
    let mut for_gpk = plain.clone();
    for_gpk.header.to = gpk.authority.clone();
    fs::write(
        out.join("fail/readdressed.env"),
        raw(&for_gpk, cbor::to_deterministic_vec(&for_gpk)?, by)?,
    )?;
    let edit = |f: &dyn Fn(&mut Value)| -> Result<Vec<u8>> {
        let mut v = Value::serialized(&plain)?;
        f(&mut v);
        Ok(cbor::value_to_deterministic_vec(v)?)
    };
    fs::write(
        out.join("fail/field-outside-art6.env"),
        raw(
            &plain,
            edit(&|v| {
                with_content(v, |c| {
                    if let Some(Value::Array(ps)) = map_get(c, "persons") {
                        if let Value::Map(p) = &mut ps[0] {
                            p.push((Value::Text("religion".into()), Value::Text("-".into())));
                        }
                    }
                })
            })?,
            by,
        )?,
    )?;
    fs::write(
        out.join("fail/category-outside-art5.env"),
        raw(
            &plain,
            edit(&|v| {
                with_content(v, |c| {
                    if let Some(cat) = map_get(c, "categories") {
                        *cat = Value::Array(vec![Value::Text("tourist".into())]);
                    }
                })
            })?,
            by,
        )?,
    )?;
    fs::write(
        out.join("fail/missing-substance.env"),
        raw(
            &plain,
            edit(&|v| {
                with_content(v, |c| {
                    if let Some(s) = map_get(c, "substance") {
                        *s = Value::Text(String::new());
                    }
                })
            })?,
            by,
        )?,
    )?;
    // Oversize: the valid request is larger than the 64 KiB limit the test uses for this file.
    fs::write(out.join("fail/oversize.env"), &valid_request)?;
    println!("vectors written to {}", out.display());
    Ok(())
}

fn map_get<'a>(v: &'a mut Value, k: &str) -> Option<&'a mut Value> {
    match v {
        Value::Map(m) => m
            .iter_mut()
            .find(|(kk, _)| kk.as_text() == Some(k))
            .map(|(_, v)| v),
        _ => None,
    }
}

fn with_content(v: &mut Value, f: impl FnOnce(&mut Value)) {
    if let Some(body) = map_get(v, "body") {
        if let Some(c) = map_get(body, "content") {
            f(c);
        }
    }
}
