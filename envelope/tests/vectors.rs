//! Test vectors on disk (`tests/vectors/`, written by `examples/make_vectors.rs`):
//! valid envelopes that must open, and must-fail envelopes that must be
//! refused with a named receipt code. One test per vector.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::{Path, PathBuf};

use konvert_envelope::envelope::{self, Limits};
use konvert_envelope::keys::{AgeIdentity, AuthorityCard, NodeKeys, SigningKey, TrustedSigner, VerifyingKey};
use konvert_envelope::model::{AuthorityId, Timestamp};
use konvert_envelope::profile::Profile;
use konvert_envelope::receipt::RejectCode;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(dir().join(rel)).unwrap()
}

fn node(a: &str) -> NodeKeys {
    NodeKeys {
        authority: AuthorityId::new(a).unwrap(),
        signing: SigningKey::from_pkcs8_pem(&read(&format!("keys/{a}.node.key.pem"))).unwrap(),
        age: AgeIdentity::from_text(&read(&format!("keys/{a}.age.key"))).unwrap(),
        previous_age: Vec::new(),
    }
}

fn card(a: &str) -> AuthorityCard {
    AuthorityCard::from_toml_str(&read(&format!("keys/{a}.card.toml"))).unwrap()
}

struct Case {
    file: &'static str,
    max_envelope: u64,
    signer_valid_from: Option<&'static str>,
}

const fn case(file: &'static str) -> Case {
    Case {
        file,
        max_envelope: 64 * 1024 * 1024,
        signer_valid_from: None,
    }
}

/// Opens a vector at by.mvd, as sent by kz.mvd; returns Ok or the receipt code.
fn open(c: &Case) -> Result<(), RejectCode> {
    let bytes = std::fs::read(dir().join(c.file)).unwrap();
    let profile = Profile::from_toml_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/profiles/kz-by-2019.toml"),
        )
        .unwrap(),
        "kz-by-2019",
    )
    .unwrap();
    let signers = vec![TrustedSigner {
        authority: AuthorityId::new("kz.mvd").unwrap(),
        key: VerifyingKey::from_public_key_pem(&read("keys/signatory.key.pem.pub")).unwrap(),
        valid_from: c.signer_valid_from.map(|t| t.parse::<Timestamp>().unwrap()),
        valid_until: None,
    }];
    let limits = Limits {
        max_envelope: c.max_envelope,
        ..Limits::default()
    };
    let now: Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
    let (opened, plains) = envelope::open_bytes(
        &bytes,
        &limits,
        &card("kz.mvd"),
        &node("by.mvd"),
        &signers,
        &profile,
        now,
    )
    .map_err(|e| RejectCode::from(&e))?;
    // Valid vectors with attachments carry the known plaintext.
    if !plains.is_empty() {
        let expected = std::fs::read(dir().join(c.file.replace(".env", ".attachment"))).unwrap();
        assert!(plains.iter().all(|p| *p == expected));
        assert_eq!(opened.message.attachments().len(), plains.len());
    }
    Ok(())
}

macro_rules! vector {
    ($name:ident, $case:expr, ok) => {
        #[test]
        fn $name() {
            assert_eq!(open(&$case), Ok(()));
        }
    };
    ($name:ident, $case:expr, $code:ident) => {
        #[test]
        fn $name() {
            assert_eq!(open(&$case), Err(RejectCode::$code));
        }
    };
}

vector!(valid_request, case("valid/request.env"), ok);
vector!(
    valid_unsolicited_information,
    case("valid/unsolicited_information.env"),
    ok
);
vector!(
    fail_tampered_header,
    case("fail/tampered-header.env"),
    BadNodeSignature
);
vector!(
    fail_tampered_body,
    case("fail/tampered-body.env"),
    BadNodeSignature
);
vector!(
    fail_tampered_attachment,
    case("fail/tampered-attachment.env"),
    BadNodeSignature
);
vector!(fail_truncated, case("fail/truncated.env"), Malformed);
vector!(fail_garbage, case("fail/garbage.env"), Malformed);
vector!(
    fail_wrong_recipient,
    case("fail/wrong-recipient.env"),
    WrongRecipient
);
vector!(
    fail_unknown_signer,
    case("fail/unknown-signer.env"),
    SignerNotAuthorised
);
vector!(
    fail_signer_not_yet_valid,
    Case {
        signer_valid_from: Some("2026-11-01T00:00:00Z"),
        ..case("fail/signer-not-yet-valid.env")
    },
    SignerNotAuthorised
);
vector!(fail_readdressed, case("fail/readdressed.env"), Readdressed);
vector!(
    fail_field_outside_art6,
    case("fail/field-outside-art6.env"),
    MalformedMessage
);
vector!(
    fail_category_outside_art5,
    case("fail/category-outside-art5.env"),
    MalformedMessage
);
vector!(
    fail_missing_substance,
    case("fail/missing-substance.env"),
    InvalidMessage
);
vector!(
    fail_oversize,
    Case {
        max_envelope: 16 * 1024,
        ..case("fail/oversize.env")
    },
    TooLarge
);

#[test]
fn every_vector_file_has_a_test() {
    let src =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors.rs")).unwrap();
    for sub in ["valid", "fail"] {
        for e in std::fs::read_dir(dir().join(sub)).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            if name.ends_with(".env") {
                assert!(
                    src.contains(&format!("\"{sub}/{name}\"")),
                    "no test for {sub}/{name}"
                );
            }
        }
    }
}

mod mutations {
    //! What the fuzz target `open_envelope` (fuzz/) explores, run briefly on
    //! every test: mutated vectors are refused with an error, never a panic.
    use super::*;
    use proptest::prelude::*;

    fn open_raw(bytes: &[u8]) -> Result<(), RejectCode> {
        let profile = Profile::from_toml_str(
            include_str!("../../deploy/profiles/kz-by-2019.toml"),
            "kz-by-2019",
        )
        .unwrap();
        let signers = vec![TrustedSigner {
            authority: AuthorityId::new("kz.mvd").unwrap(),
            key: VerifyingKey::from_public_key_pem(&read("keys/signatory.key.pem.pub")).unwrap(),
            valid_from: None,
            valid_until: None,
        }];
        let now: Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
        envelope::open_bytes(
            bytes,
            &Limits::default(),
            &card("kz.mvd"),
            &node("by.mvd"),
            &signers,
            &profile,
            now,
        )
        .map(|_| ())
        .map_err(|e| RejectCode::from(&e))
    }

    #[derive(Debug, Clone)]
    enum Mutation {
        Flip(usize, u8),
        Truncate(usize),
        Insert(usize, u8),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            (any::<usize>(), 1..=255u8).prop_map(|(i, x)| Mutation::Flip(i, x)),
            any::<usize>().prop_map(Mutation::Truncate),
            (any::<usize>(), any::<u8>()).prop_map(|(i, x)| Mutation::Insert(i, x)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        #[test]
        fn mutated_envelopes_are_refused(m in mutation(), which in 0..2usize) {
            let name = ["valid/unsolicited_information.env", "valid/request.env"][which];
            let mut bytes = std::fs::read(dir().join(name)).unwrap();
            let n = bytes.len();
            match m {
                Mutation::Flip(i, x) => bytes[i % n] ^= x,
                Mutation::Truncate(i) => bytes.truncate(i % n),
                Mutation::Insert(i, x) => bytes.insert(i % (n + 1), x),
            }
            prop_assert!(open_raw(&bytes).is_err());
        }

        #[test]
        fn arbitrary_bytes_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            prop_assert!(open_raw(&bytes).is_err());
        }
    }
}
