//! Opens arbitrary bytes as an envelope from kz.mvd to by.mvd with the keys
//! of the test vectors: every input must end in `Ok` or an `OpenError`,
//! never a panic, a hang or unbounded allocation.
//!
//! Seed corpus: `envelope/tests/vectors/{valid,fail}/*.env`.
#![no_main]

use konvert_envelope::envelope::{self, Limits};
use konvert_envelope::keys::{AgeIdentity, AuthorityCard, NodeKeys, SigningKey, TrustedSigner, VerifyingKey};
use konvert_envelope::model::{AuthorityId, Timestamp};
use konvert_envelope::profile::Profile;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

struct Ctx {
    card: AuthorityCard,
    keys: NodeKeys,
    signers: Vec<TrustedSigner>,
    profile: Profile,
}

fn ctx() -> &'static Ctx {
    static CTX: OnceLock<Ctx> = OnceLock::new();
    CTX.get_or_init(|| {
        let v = |f: &str| std::fs::read_to_string(format!("{}/../envelope/tests/vectors/keys/{f}", env!("CARGO_MANIFEST_DIR"))).expect("vector key");
        Ctx {
            card: AuthorityCard::from_toml_str(&v("kz.mvd.card.toml")).expect("card"),
            keys: NodeKeys {
                authority: AuthorityId::new("by.mvd").expect("id"),
                signing: SigningKey::from_pkcs8_pem(&v("by.mvd.node.key.pem")).expect("key"),
                age: AgeIdentity::from_text(&v("by.mvd.age.key")).expect("age"),
                previous_age: Vec::new(),
            },
            signers: vec![TrustedSigner {
                authority: AuthorityId::new("kz.mvd").expect("id"),
                key: VerifyingKey::from_public_key_pem(&v("signatory.key.pem.pub")).expect("pub"),
                valid_from: None,
                valid_until: None,
            }],
            profile: Profile::from_toml_str(
                include_str!("../../deploy/profiles/kz-by-2019.toml"),
                "kz-by-2019",
            )
            .expect("profile"),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let c = ctx();
    let limits = Limits {
        max_envelope: 1 << 20,
        ..Limits::default()
    };
    let now = Timestamp::from_unix(1_795_341_600);
    let _ = envelope::open_bytes(data, &limits, &c.card, &c.keys, &c.signers, &c.profile, now);
});
