//! Ed25519 signatures checked many at once.
//!
//! Every signature of the protocol is valid by one rule, ZIP-215
//! (`docs/PROTOCOL.md` §1): `S` canonical, `R` and `A` points of the curve,
//! and the cofactored equation `[8][S]B = [8]R + [8][k]A`. Unlike RFC 8032's
//! cofactorless check, that rule gives the same answer for a signature
//! checked alone and in a batch, so a receiver may check the signatures of
//! many envelopes and receipts with one multiscalar multiplication (about a
//! quarter of the cost per signature from a few dozen on, when most come
//! from a few keys, as a peer's do) and get exactly the verdicts single
//! checks would give. Every RFC 8032 signature is valid by it; keys of
//! small order are refused where keys are read ([`VerifyingKey`]).
//!
//! Code that checks a signature does it through a [`SignatureVerifier`]:
//! [`Now`] checks at once; [`Deferred`] collects the checks and answers
//! "valid" for now, for the caller to check them together (a gateway does,
//! across messages, see `gateway/src/verifier.rs`) before it acts on
//! anything that depended on them.
//!
//! The implementation (ed25519-zebra) stays behind this module and
//! [`VerifyingKey::verify`].

use std::fmt;

use ed25519_zebra::batch::{Item, Verifier};

use crate::keys::VerifyingKey;

/// One signature to check: by one key, or (during a key rotation's window)
/// by any of several.
#[derive(Clone)]
pub struct SignatureCheck(Check);

#[derive(Clone)]
enum Check {
    /// Malformed (not 64 bytes, or no key to check it by): never valid.
    Invalid,
    One(Item),
    Any(Vec<Item>),
}

impl SignatureCheck {
    /// The check of `sig` over `msg` by any of `keys` (the message is
    /// hashed now; the check keeps no reference to it).
    pub fn new(keys: &[VerifyingKey], msg: &[u8], sig: &[u8]) -> Self {
        let Ok(sig) = <[u8; 64]>::try_from(sig) else {
            return Self(Check::Invalid);
        };
        let sig = ed25519_zebra::Signature::from_bytes(&sig);
        let item = |k: &VerifyingKey| Item::from((k.zebra_bytes(), sig, msg));
        Self(match keys {
            [] => Check::Invalid,
            [k] => Check::One(item(k)),
            many => Check::Any(many.iter().map(item).collect()),
        })
    }

    /// Checks this one alone.
    pub fn verify(&self) -> bool {
        match &self.0 {
            Check::Invalid => false,
            Check::One(i) => i.clone().verify_single().is_ok(),
            Check::Any(items) => items.iter().any(|i| i.clone().verify_single().is_ok()),
        }
    }
}

impl fmt::Debug for SignatureCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = match &self.0 {
            Check::Invalid => 0,
            Check::One(_) => 1,
            Check::Any(v) => v.len(),
        };
        write!(f, "SignatureCheck(by any of {keys} keys)")
    }
}

/// Checks every one of `checks`: `result[i]` says whether `checks[i]` is
/// valid. The single-key checks are checked in one batch; only when the
/// batch fails (some signature is bad) is each checked alone, to say
/// which. A check with several keys is checked alone.
pub fn verify_each(checks: &[SignatureCheck]) -> Vec<bool> {
    let mut batch = Verifier::new();
    let mut batched = 0usize;
    for c in checks {
        if let Check::One(i) = &c.0 {
            batch.queue(i.clone());
            batched += 1;
        }
    }
    let batch_ok = match batched {
        0 => true,
        1 => false, // a batch of one costs more than checking it alone
        _ => batch.verify(rand::thread_rng()).is_ok(),
    };
    checks
        .iter()
        .map(|c| match &c.0 {
            Check::One(_) if batch_ok => true,
            _ => c.verify(),
        })
        .collect()
}

/// Checks the signatures that code verifying a structure asks about.
pub trait SignatureVerifier {
    /// Whether `sig` over `msg` is valid by any of `keys` — or, for a
    /// deferring verifier, whether the caller should go on as if it were.
    fn check_any(&mut self, keys: &[VerifyingKey], msg: &[u8], sig: &[u8]) -> bool;

    /// [`SignatureVerifier::check_any`] with one key.
    fn check(&mut self, key: &VerifyingKey, msg: &[u8], sig: &[u8]) -> bool {
        self.check_any(std::slice::from_ref(key), msg, sig)
    }
}

/// Checks each signature at once, alone.
#[derive(Debug, Default, Clone, Copy)]
pub struct Now;

impl SignatureVerifier for Now {
    fn check_any(&mut self, keys: &[VerifyingKey], msg: &[u8], sig: &[u8]) -> bool {
        keys.iter().any(|k| k.verify(msg, sig))
    }
}

/// Collects the checks, in the order asked, and lets the caller go on as if
/// each were valid. **Whatever was decided meanwhile holds only if every
/// collected check then verifies**; until then, the caller must not act on
/// it (store, answer, apply).
#[derive(Debug, Default)]
pub struct Deferred {
    checks: Vec<SignatureCheck>,
}

impl Deferred {
    /// An empty collection.
    pub fn new() -> Self {
        Self::default()
    }
    /// How many checks were collected so far (a caller notes this to tell
    /// which of its steps a failed check belongs to).
    pub fn len(&self) -> usize {
        self.checks.len()
    }
    /// No check collected.
    pub fn is_empty(&self) -> bool {
        self.checks.is_empty()
    }
    /// The checks collected, in order.
    pub fn into_checks(self) -> Vec<SignatureCheck> {
        self.checks
    }
    /// Checks them now ([`verify_each`]).
    pub fn verify_now(&self) -> Vec<bool> {
        verify_each(&self.checks)
    }
}

impl SignatureVerifier for Deferred {
    fn check_any(&mut self, keys: &[VerifyingKey], msg: &[u8], sig: &[u8]) -> bool {
        let c = SignatureCheck::new(keys, msg, sig);
        let malformed = matches!(c.0, Check::Invalid);
        self.checks.push(c);
        !malformed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SigningKey;

    fn signed(n: usize, keys: &[SigningKey]) -> Vec<(VerifyingKey, Vec<u8>, [u8; 64])> {
        (0..n)
            .map(|i| {
                let k = &keys[i % keys.len()];
                let msg = format!("message {i}").into_bytes();
                let sig = k.sign(&msg);
                (k.verifying_key(), msg, sig)
            })
            .collect()
    }

    #[test]
    fn a_batch_gives_the_verdict_of_each_signature_alone() {
        let keys: Vec<SigningKey> = (0..3).map(|_| SigningKey::generate()).collect();
        let items = signed(40, &keys);
        let mut checks: Vec<SignatureCheck> = items
            .iter()
            .map(|(k, m, s)| SignatureCheck::new(std::slice::from_ref(k), m, s))
            .collect();
        assert!(verify_each(&checks).iter().all(|ok| *ok));
        // A bad signature, a signature over another message, a wrong key and
        // a malformed signature among good ones: exactly those fail.
        let mut bad = items[3].2;
        bad[10] ^= 1;
        checks[3] = SignatureCheck::new(std::slice::from_ref(&items[3].0), &items[3].1, &bad);
        checks[7] = SignatureCheck::new(std::slice::from_ref(&items[7].0), b"other", &items[7].2);
        checks[11] = SignatureCheck::new(std::slice::from_ref(&items[12].0), &items[11].1, &items[11].2);
        checks[20] = SignatureCheck::new(
            std::slice::from_ref(&items[20].0),
            &items[20].1,
            &items[20].2[..63],
        );
        let verdicts = verify_each(&checks);
        for (i, ok) in verdicts.iter().enumerate() {
            assert_eq!(*ok, ![3, 7, 11, 20].contains(&i), "check {i}");
            assert_eq!(*ok, checks[i].verify(), "check {i} alone");
        }
        // One, none.
        assert_eq!(verify_each(&checks[..1]), vec![true]);
        assert_eq!(verify_each(&checks[3..4]), vec![false]);
        assert!(verify_each(&[]).is_empty());
    }

    #[test]
    fn a_check_by_several_keys_passes_with_any_of_them() {
        let old = SigningKey::generate();
        let new = SigningKey::generate();
        let other = SigningKey::generate();
        let sig = new.sign(b"m");
        let both = [old.verifying_key(), new.verifying_key()];
        let checks = vec![
            SignatureCheck::new(&both, b"m", &sig),
            SignatureCheck::new(&[old.verifying_key(), other.verifying_key()], b"m", &sig),
            SignatureCheck::new(&[], b"m", &sig),
        ];
        assert_eq!(verify_each(&checks), vec![true, false, false]);
        assert!(Now.check_any(&both, b"m", &sig));
        assert!(!Now.check(&old.verifying_key(), b"m", &sig));
    }

    #[test]
    fn deferred_collects_in_order_and_answers_only_for_the_form() {
        let k = SigningKey::generate();
        let sig = k.sign(b"m");
        let mut d = Deferred::new();
        assert!(d.is_empty());
        assert!(d.check(&k.verifying_key(), b"m", &sig));
        assert!(d.check(&k.verifying_key(), b"not m", &sig));
        assert!(!d.check(&k.verifying_key(), b"m", &sig[..10]));
        assert_eq!(d.len(), 3);
        assert_eq!(d.verify_now(), vec![true, false, false]);
        assert_eq!(d.into_checks().len(), 3);
    }

    /// The point of the rule: a signature whose `R` carries a small-order
    /// component (only its signer can make one) is valid by the cofactored
    /// equation, alone and in a batch alike — where RFC 8032's cofactorless
    /// check would reject it alone but let a batch pass it by chance.
    #[test]
    fn single_and_batch_agree_on_a_signature_with_a_small_order_component() {
        use curve25519_dalek::constants::EIGHT_TORSION;
        use curve25519_dalek::edwards::CompressedEdwardsY;
        use curve25519_dalek::scalar::Scalar;
        use sha2::{Digest as _, Sha512};

        // A signature made by hand with a nonce point R + T (T of order 8).
        let seed = [7u8; 32];
        let h = Sha512::digest(seed);
        let mut a_bytes = [0u8; 32];
        a_bytes.copy_from_slice(&h[..32]);
        a_bytes[0] &= 248;
        a_bytes[31] &= 127;
        a_bytes[31] |= 64;
        let a = Scalar::from_bytes_mod_order(a_bytes);
        let public = curve25519_dalek::constants::ED25519_BASEPOINT_POINT * a;
        let key = VerifyingKey::from_bytes(&public.compress().to_bytes()).expect("a key");
        let msg = b"torsion";
        let r = Scalar::from_bytes_mod_order_wide(&Sha512::digest(b"nonce").into());
        let big_r = curve25519_dalek::constants::ED25519_BASEPOINT_POINT * r + EIGHT_TORSION[1];
        let big_r_bytes = big_r.compress().to_bytes();
        let k = Scalar::from_bytes_mod_order_wide(
            &Sha512::new()
                .chain_update(big_r_bytes)
                .chain_update(public.compress().to_bytes())
                .chain_update(msg)
                .finalize()
                .into(),
        );
        let s = r + k * a;
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&big_r_bytes);
        sig[32..].copy_from_slice(s.as_bytes());
        assert!(CompressedEdwardsY(big_r_bytes).decompress().is_some());

        assert!(key.verify(msg, &sig), "valid by the cofactored rule alone");
        let k2 = SigningKey::generate();
        let checks = vec![
            SignatureCheck::new(&[key], msg, &sig),
            SignatureCheck::new(&[k2.verifying_key()], b"x", &k2.sign(b"x")),
        ];
        assert_eq!(verify_each(&checks), vec![true, true], "and in a batch");
        // RFC 8032's strict check rejects it: the rules differ exactly here.
        let dalek = ed25519_dalek::VerifyingKey::from_bytes(&key.to_bytes()).expect("a key");
        assert!(dalek
            .verify_strict(msg, &ed25519_dalek::Signature::from_bytes(&sig))
            .is_err());
    }

    #[test]
    fn keys_of_small_order_are_refused() {
        use curve25519_dalek::constants::EIGHT_TORSION;
        for t in EIGHT_TORSION {
            assert!(matches!(
                VerifyingKey::from_bytes(&t.compress().to_bytes()),
                Err(crate::keys::KeyError::WeakKey)
            ));
        }
    }
}
