//! Opening age's X25519 recipient stanza with the identity's public key
//! computed once.
//!
//! `age::x25519::Identity::unwrap_stanza` derives the identity's public
//! key from its secret for every file it opens (the key is part of the
//! HKDF salt): a fixed-base scalar multiplication, about as much CPU as
//! the signature the sender makes over the envelope, spent again on every
//! envelope a gateway receives. [`X25519Opener`] keeps the public key
//! beside the secret and otherwise does what age does, step by step, with
//! age's own primitives (`age_core::primitives::{hkdf, aead_decrypt}`,
//! x25519-dalek for the Diffie-Hellman): the stanza format of
//! <https://c2sp.org/age#x25519-recipient-stanza> (tag `X25519`, one
//! argument — the ephemeral share in canonical unpadded base64 — and a
//! 32-byte body), the all-zero shared secret refused, and a body that does
//! not open answered "not ours" (`None`), so that the next identity is
//! tried. Files are still encrypted by age itself; the tests open age's
//! files with it and refuse what age refuses.

use age::DecryptError;
use age_core::format::{FileKey, Stanza, FILE_KEY_BYTES};
use age_core::primitives::{aead_decrypt, hkdf};
use age_core::secrecy::ExposeSecret;
use base64::{prelude::BASE64_STANDARD_NO_PAD, Engine};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, Zeroizing};

/// The stanza tag of age's X25519 recipients.
const TAG: &str = "X25519";
/// HKDF info of the wrapping key.
const KEY_LABEL: &[u8] = b"age-encryption.org/v1/X25519";
/// The wrapped file key: 16 bytes and a 16-byte Poly1305 tag.
const WRAPPED_LEN: usize = FILE_KEY_BYTES + 16;

/// An age X25519 identity with its public key at hand. The secret is
/// zeroized on drop (x25519-dalek's `StaticSecret`).
pub(crate) struct X25519Opener {
    secret: StaticSecret,
    public: PublicKey,
}

impl X25519Opener {
    /// The opener of `identity`: its secret read back from age's own
    /// encoding of it (Bech32, `AGE-SECRET-KEY-1…`), and its public key
    /// computed once. `None` if that encoding does not hold a 32-byte key
    /// (it always does for an identity age made or parsed).
    pub(crate) fn of(identity: &age::x25519::Identity) -> Option<Self> {
        let text = identity.to_string();
        let (_, bytes) = bech32::decode(text.expose_secret()).ok()?;
        let bytes = Zeroizing::new(bytes);
        let mut raw: [u8; 32] = bytes.as_slice().try_into().ok()?;
        let secret = StaticSecret::from(raw);
        raw.zeroize();
        let public = PublicKey::from(&secret);
        // The same key as age's: its recipient is this public key.
        (identity.to_public().to_string() == recipient_string(&public)).then_some(Self { secret, public })
    }
}

/// `age1…` text of an X25519 public key, as age writes it.
fn recipient_string(public: &PublicKey) -> String {
    const HRP: bech32::Hrp = bech32::Hrp::parse_unchecked("age");
    bech32::encode::<bech32::Bech32>(HRP, public.as_bytes()).unwrap_or_default()
}

/// The 32-byte ephemeral share of a stanza argument: canonical unpadded
/// base64 (43 characters), as age requires.
fn ephemeral_share(arg: &str) -> Option<[u8; 32]> {
    let mut buf = [0u8; 33];
    match BASE64_STANDARD_NO_PAD.decode_slice(arg, &mut buf) {
        Ok(32) => buf[..32].try_into().ok(),
        _ => None,
    }
}

impl age::Identity for X25519Opener {
    fn unwrap_stanza(&self, stanza: &Stanza) -> Option<Result<FileKey, DecryptError>> {
        if stanza.tag != TAG {
            return None;
        }
        let epk = match &stanza.args[..] {
            [arg] => match ephemeral_share(arg) {
                Some(epk) => epk,
                None => return Some(Err(DecryptError::InvalidHeader)),
            },
            _ => return Some(Err(DecryptError::InvalidHeader)),
        };
        if stanza.body.len() != WRAPPED_LEN {
            return Some(Err(DecryptError::InvalidHeader));
        }
        let shared = self.secret.diffie_hellman(&PublicKey::from(epk));
        if !shared.was_contributory() {
            return Some(Err(DecryptError::InvalidHeader));
        }
        let mut salt = [0u8; 64];
        salt[..32].copy_from_slice(&epk);
        salt[32..].copy_from_slice(self.public.as_bytes());
        let key = Zeroizing::new(hkdf(&salt, KEY_LABEL, shared.as_bytes()));
        // Not ours (another identity may open it): not an error.
        let mut plain = aead_decrypt(&key, FILE_KEY_BYTES, &stanza.body).ok()?;
        let file_key = FileKey::init_with_mut(|k| k.copy_from_slice(&plain));
        plain.zeroize();
        Some(Ok(file_key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::Identity as _;
    use std::io::{Read, Write};

    fn encrypt(to: &[&age::x25519::Recipient], data: &[u8]) -> Vec<u8> {
        let e = age::Encryptor::with_recipients(to.iter().map(|r| *r as &dyn age::Recipient)).unwrap();
        let mut out = Vec::new();
        let mut w = e.wrap_output(&mut out).unwrap();
        w.write_all(data).unwrap();
        w.finish().unwrap();
        out
    }

    fn decrypt(file: &[u8], with: &[&dyn age::Identity]) -> Result<Vec<u8>, DecryptError> {
        let d = age::Decryptor::new_buffered(file)?;
        let mut r = d.decrypt(with.iter().copied())?;
        let mut v = Vec::new();
        r.read_to_end(&mut v).map_err(DecryptError::Io)?;
        Ok(v)
    }

    #[test]
    fn opens_what_age_encrypts_and_keeps_ages_key() {
        let id = age::x25519::Identity::generate();
        let opener = X25519Opener::of(&id).unwrap();
        assert_eq!(recipient_string(&opener.public), id.to_public().to_string());
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let file = encrypt(&[&id.to_public()], &data);
        assert_eq!(decrypt(&file, &[&opener]).unwrap(), data);
        // And of a file with several recipients, ours not the first.
        let other = age::x25519::Identity::generate();
        let file = encrypt(&[&other.to_public(), &id.to_public()], b"x");
        assert_eq!(decrypt(&file, &[&opener]).unwrap(), b"x");
    }

    #[test]
    fn a_file_for_another_key_is_not_ours() {
        let id = age::x25519::Identity::generate();
        let other = age::x25519::Identity::generate();
        let file = encrypt(&[&other.to_public()], b"secret");
        let opener = X25519Opener::of(&id).unwrap();
        assert!(matches!(
            decrypt(&file, &[&opener]),
            Err(DecryptError::NoMatchingKeys)
        ));
        // The next identity is tried after ours.
        let second = X25519Opener::of(&other).unwrap();
        assert_eq!(decrypt(&file, &[&opener, &second]).unwrap(), b"secret");
    }

    fn stanza(args: &[&str], body: usize) -> Stanza {
        Stanza {
            tag: TAG.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            body: vec![1u8; body],
        }
    }

    #[test]
    fn malformed_stanzas_are_refused_as_age_refuses_them() {
        let id = age::x25519::Identity::generate();
        let opener = X25519Opener::of(&id).unwrap();
        let share = BASE64_STANDARD_NO_PAD.encode([9u8; 32]);
        let cases = [
            (stanza(&[], WRAPPED_LEN), "no argument"),
            (stanza(&[&share, &share], WRAPPED_LEN), "two arguments"),
            (stanza(&[&share], WRAPPED_LEN - 1), "short body"),
            (stanza(&[&share], WRAPPED_LEN + 1), "long body"),
            (
                stanza(&[&BASE64_STANDARD_NO_PAD.encode([9u8; 31])], WRAPPED_LEN),
                "31-byte share",
            ),
            (stanza(&[&format!("{share}=")], WRAPPED_LEN), "padded share"),
            // The last character carries two bits that must be zero.
            (
                stanza(&[&format!("{}B", &share[..42])], WRAPPED_LEN),
                "non-canonical share",
            ),
            // The all-zero point gives an all-zero shared secret.
            (
                stanza(&[&BASE64_STANDARD_NO_PAD.encode([0u8; 32])], WRAPPED_LEN),
                "low-order share",
            ),
        ];
        for (s, what) in cases {
            let ours = opener.unwrap_stanza(&s);
            assert!(matches!(ours, Some(Err(DecryptError::InvalidHeader))), "{what}");
            let ages = age::Identity::unwrap_stanza(&id, &s);
            assert!(
                matches!(ages, Some(Err(DecryptError::InvalidHeader))),
                "{what}: age agrees"
            );
        }
        // Well formed but not for us; another tag is not ours either.
        assert!(opener.unwrap_stanza(&stanza(&[&share], WRAPPED_LEN)).is_none());
        let mut other = stanza(&[&share], WRAPPED_LEN);
        other.tag = "scrypt".into();
        assert!(opener.unwrap_stanza(&other).is_none());
    }
}
