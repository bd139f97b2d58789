//! Keys and authority cards, in standard text formats.
//!
//! - Ed25519 keys (gateway node keys, signatories, authority root keys):
//!   private keys as PKCS#8 PEM, public keys as SPKI PEM; OpenSSL reads both
//!   (`openssl pkey -in node.key.pem -text`).
//! - age identities (`AGE-SECRET-KEY-1…`) and recipients (`age1…`) in age's
//!   own text format, so the `age`/`rage` tools can decrypt an envelope body.
//!
//! Secret keys zeroize on drop and their `Debug` shows only the public key id.
//! This module parses and formats text; reading and writing files is the
//! caller's job.

use crate::age_x25519::X25519Opener;
use std::fmt;
use std::str::FromStr;

use age::secrecy::ExposeSecret;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::Signer as _;
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

use crate::model::{AuthorityId, Digest, Timestamp};

/// Largest key or card text accepted (a card is a few hundred bytes).
pub const MAX_KEY_TEXT: usize = 16 * 1024;

/// Why a key or card could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The text is larger than [`MAX_KEY_TEXT`].
    #[error("key text of {0} bytes is larger than the limit of 16 KiB")]
    TooLarge(usize),
    /// Not a PEM-encoded Ed25519 private key (PKCS#8).
    #[error("not an Ed25519 private key in PKCS#8 PEM form (-----BEGIN PRIVATE KEY-----)")]
    PrivateKeyPem,
    /// Not a PEM-encoded Ed25519 public key (SPKI).
    #[error("not an Ed25519 public key in SPKI PEM form (-----BEGIN PUBLIC KEY-----)")]
    PublicKeyPem,
    /// An Ed25519 public key of small order (anyone could sign for it).
    #[error("the Ed25519 public key is of small order (a weak key anyone could sign for)")]
    WeakKey,
    /// Not an age X25519 identity.
    #[error("not an age X25519 identity (AGE-SECRET-KEY-1…): {0}")]
    AgeIdentity(&'static str),
    /// Not an age X25519 recipient.
    #[error("not an age X25519 recipient (age1…): {0}")]
    AgeRecipient(&'static str),
    /// The authority card does not parse.
    #[error("authority card: {0}")]
    Card(String),
    /// Could not encode a key.
    #[error("cannot encode key: {0}")]
    Encode(String),
}

/// A short identifier of an Ed25519 public key: the first 16 bytes of the
/// SHA-256 of its 32 raw bytes. Used as the COSE `kid`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 16]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}
impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// An Ed25519 private key. Zeroized on drop; never printed.
pub struct SigningKey {
    secret: ed25519_dalek::SigningKey,
    /// Its public half, decompressed once: every signature names its key
    /// id, and decompressing the point for it each time (a square root in
    /// the field) cost about a tenth of a signature.
    public: VerifyingKey,
}

impl SigningKey {
    fn new(secret: ed25519_dalek::SigningKey) -> Self {
        let dalek = secret.verifying_key();
        let zebra = ed25519_zebra::VerificationKey::try_from(dalek.to_bytes())
            .expect("the public half of a signing key is a curve point");
        Self {
            secret,
            public: VerifyingKey { dalek, zebra },
        }
    }
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Self {
        Self::new(ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng))
    }
    /// Reads a PKCS#8 PEM private key.
    pub fn from_pkcs8_pem(text: &str) -> Result<Self, KeyError> {
        if text.len() > MAX_KEY_TEXT {
            return Err(KeyError::TooLarge(text.len()));
        }
        ed25519_dalek::SigningKey::from_pkcs8_pem(text.trim())
            .map(Self::new)
            .map_err(|_| KeyError::PrivateKeyPem)
    }
    /// The key as PKCS#8 PEM (zeroized when dropped).
    ///
    /// Written as a version 1 `PrivateKeyInfo` (RFC 5208/8410) without the
    /// optional public key, the form every OpenSSL release reads
    /// (`openssl pkey -in FILE`); version 2 is read as well.
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, KeyError> {
        use zeroize::Zeroize as _;
        let mut kp = ed25519_dalek::pkcs8::KeypairBytes {
            secret_key: self.secret.to_bytes(),
            public_key: None,
        };
        let pem = kp
            .to_pkcs8_pem(Default::default())
            .map(|s| Zeroizing::new(s.to_string()))
            .map_err(|e| KeyError::Encode(e.to_string()));
        kp.secret_key.zeroize();
        pem
    }
    /// The public half.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.public
    }
    /// Signs `msg` (callers sign short structures holding digests, never bulk data).
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.secret.sign(msg).to_bytes()
    }
}
impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey(kid {})", self.verifying_key().key_id())
    }
}

/// An Ed25519 public key (never one of small order: those are refused
/// where a key is read, see [`VerifyingKey::from_bytes`]).
#[derive(Clone, Copy)]
pub struct VerifyingKey {
    /// For the encodings (SPKI PEM) and the key id.
    dalek: ed25519_dalek::VerifyingKey,
    /// For verifying: decompressed once (crate::batch).
    zebra: ed25519_zebra::VerificationKey,
}

impl PartialEq for VerifyingKey {
    fn eq(&self, other: &Self) -> bool {
        self.dalek == other.dalek
    }
}
impl Eq for VerifyingKey {}

impl VerifyingKey {
    fn new(dalek: ed25519_dalek::VerifyingKey) -> Result<Self, KeyError> {
        // Anyone can make signatures that verify under a key of small order.
        if dalek.is_weak() {
            return Err(KeyError::WeakKey);
        }
        let zebra =
            ed25519_zebra::VerificationKey::try_from(dalek.to_bytes()).map_err(|_| KeyError::PublicKeyPem)?;
        Ok(Self { dalek, zebra })
    }
    /// Reads an SPKI PEM public key.
    pub fn from_public_key_pem(text: &str) -> Result<Self, KeyError> {
        if text.len() > MAX_KEY_TEXT {
            return Err(KeyError::TooLarge(text.len()));
        }
        let key = ed25519_dalek::VerifyingKey::from_public_key_pem(text.trim())
            .map_err(|_| KeyError::PublicKeyPem)?;
        Self::new(key)
    }
    /// The key as SPKI PEM.
    pub fn to_public_key_pem(&self) -> Result<String, KeyError> {
        self.dalek
            .to_public_key_pem(Default::default())
            .map_err(|e| KeyError::Encode(e.to_string()))
    }
    /// From the 32 raw bytes; a point of small order is
    /// [`KeyError::WeakKey`].
    pub fn from_bytes(b: &[u8; 32]) -> Result<Self, KeyError> {
        let key = ed25519_dalek::VerifyingKey::from_bytes(b).map_err(|_| KeyError::PublicKeyPem)?;
        Self::new(key)
    }
    /// The 32 raw bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.dalek.to_bytes()
    }
    /// The key id (first 16 bytes of SHA-256 of the raw key).
    pub fn key_id(&self) -> KeyId {
        let d = Digest::of(self.dalek.as_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&d.0[..16]);
        KeyId(id)
    }
    /// Verifies a signature over `msg` by the protocol's rule (ZIP-215,
    /// `docs/PROTOCOL.md` §1: canonical `S`, cofactored equation), the
    /// same rule as [`crate::batch`] checks many signatures by.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        let Ok(sig) = <[u8; 64]>::try_from(sig) else {
            return false;
        };
        self.zebra
            .verify(&ed25519_zebra::Signature::from_bytes(&sig), msg)
            .is_ok()
    }
    /// For crate::batch.
    pub(crate) fn zebra_bytes(&self) -> ed25519_zebra::VerificationKeyBytes {
        ed25519_zebra::VerificationKeyBytes::from(self.dalek.to_bytes())
    }
}
impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyingKey(kid {})", self.key_id())
    }
}
impl Serialize for VerifyingKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let pem = self.to_public_key_pem().map_err(serde::ser::Error::custom)?;
        s.serialize_str(&pem)
    }
}
impl<'de> Deserialize<'de> for VerifyingKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::from_public_key_pem(&s).map_err(de::Error::custom)
    }
}

/// An age X25519 identity (secret). Zeroized on drop (by age and
/// x25519-dalek); never printed. Envelopes are opened with its public key
/// computed once (`envelope/src/age_x25519.rs`), not once per envelope as age does.
pub struct AgeIdentity {
    age: age::x25519::Identity,
    opener: X25519Opener,
}

impl AgeIdentity {
    fn new(age: age::x25519::Identity) -> Result<Self, KeyError> {
        let opener =
            X25519Opener::of(&age).ok_or(KeyError::AgeIdentity("not a 32-byte X25519 secret key"))?;
        Ok(Self { age, opener })
    }
    /// A fresh identity.
    pub fn generate() -> Self {
        Self::new(age::x25519::Identity::generate()).expect("age encodes the 32-byte key it generated")
    }
    /// Reads `AGE-SECRET-KEY-1…` text; comment lines (`#`) and blank lines are skipped,
    /// as in files written by `age-keygen`.
    pub fn from_text(text: &str) -> Result<Self, KeyError> {
        if text.len() > MAX_KEY_TEXT {
            return Err(KeyError::TooLarge(text.len()));
        }
        let mut keys = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        let line = keys.next().ok_or(KeyError::AgeIdentity("no key line found"))?;
        if keys.next().is_some() {
            return Err(KeyError::AgeIdentity("more than one key line"));
        }
        age::x25519::Identity::from_str(line)
            .map_err(|_| KeyError::AgeIdentity("invalid Bech32 secret key"))
            .and_then(Self::new)
    }
    /// Reads every identity of an identity file, in order: the current one
    /// first, then the previous ones a key rotation keeps (so that
    /// envelopes sealed to an old recipient still open). Comment and blank
    /// lines are skipped; at most 16 identities.
    pub fn all_from_text(text: &str) -> Result<Vec<Self>, KeyError> {
        if text.len() > MAX_KEY_TEXT {
            return Err(KeyError::TooLarge(text.len()));
        }
        let keys: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        if keys.is_empty() {
            return Err(KeyError::AgeIdentity("no key line found"));
        }
        if keys.len() > 16 {
            return Err(KeyError::AgeIdentity("more than 16 key lines"));
        }
        keys.into_iter()
            .map(|l| {
                age::x25519::Identity::from_str(l)
                    .map_err(|_| KeyError::AgeIdentity("invalid Bech32 secret key"))
                    .and_then(Self::new)
            })
            .collect()
    }
    /// The identity as text, in `age-keygen` file form (zeroized when dropped).
    pub fn to_text(&self) -> Zeroizing<String> {
        let secret = self.age.to_string();
        Zeroizing::new(format!(
            "# public key: {}\n{}\n",
            self.age.to_public(),
            secret.expose_secret()
        ))
    }
    /// The matching recipient.
    pub fn recipient(&self) -> AgeRecipient {
        AgeRecipient(self.age.to_public())
    }
    /// The identity that opens files sealed to [`AgeIdentity::recipient`].
    pub(crate) fn opener(&self) -> &dyn age::Identity {
        &self.opener
    }
}
impl fmt::Debug for AgeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AgeIdentity({})", self.age.to_public())
    }
}

/// An age X25519 recipient (public): `age1…`.
#[derive(Clone)]
pub struct AgeRecipient(age::x25519::Recipient);

impl AgeRecipient {
    pub(crate) fn inner(&self) -> &age::x25519::Recipient {
        &self.0
    }
}
impl FromStr for AgeRecipient {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        if s.len() > 256 {
            return Err(KeyError::AgeRecipient("longer than 256 characters"));
        }
        age::x25519::Recipient::from_str(s.trim())
            .map(Self)
            .map_err(|_| KeyError::AgeRecipient("invalid Bech32 recipient"))
    }
}
impl fmt::Display for AgeRecipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}
impl fmt::Debug for AgeRecipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AgeRecipient({})", self.0)
    }
}
impl PartialEq for AgeRecipient {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}
impl Eq for AgeRecipient {}
impl Serialize for AgeRecipient {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
impl<'de> Deserialize<'de> for AgeRecipient {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// A gateway's own secret keys: its node signing key and its age identity.
#[derive(Debug)]
pub struct NodeKeys {
    /// The authority this gateway serves.
    pub authority: AuthorityId,
    /// Signs envelopes and delivery receipts.
    pub signing: SigningKey,
    /// Decrypts envelopes addressed to this authority.
    pub age: AgeIdentity,
    /// Earlier age identities kept after a key rotation: envelopes sealed
    /// to their recipients still open (tried after `age`).
    pub previous_age: Vec<AgeIdentity>,
}

impl NodeKeys {
    /// Fresh keys for `authority`.
    pub fn generate(authority: AuthorityId) -> Self {
        Self {
            authority,
            signing: SigningKey::generate(),
            age: AgeIdentity::generate(),
            previous_age: Vec::new(),
        }
    }
    /// The public card that peers need to talk to this gateway.
    pub fn card(&self, name: Option<String>) -> AuthorityCard {
        AuthorityCard {
            authority: self.authority.clone(),
            name,
            age_recipients: vec![self.age.recipient()],
            node_key: self.signing.verifying_key(),
            tls_pin: None,
            root_key: None,
            signatories: Vec::new(),
        }
    }
}

/// The public "authority card" a gateway hands to its peers (`card.toml`):
/// who it is, where envelopes to it are encrypted, which key signs its
/// envelopes and receipts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorityCard {
    /// The authority, for example `kz.mvd`.
    pub authority: AuthorityId,
    /// Human-readable name (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// age recipients envelopes to this authority are encrypted to (one or more).
    pub age_recipients: Vec<AgeRecipient>,
    /// The gateway's node signing key (SPKI PEM).
    pub node_key: VerifyingKey,
    /// Pin of the gateway's QUIC TLS key (`sha256/<base64 of SHA-256(SPKI)>`), if it runs a daemon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_pin: Option<String>,
    /// The authority root key (SPKI PEM): signs the authority's signatory
    /// rosters (Art. 9.3, 9.4) and its directory changes (Art. 2), see
    /// `crate::roster`. Optional so that cards written before it existed
    /// still parse; a peer without one cannot send verifiable directory updates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_key: Option<VerifyingKey>,
    /// The authority's signatories whose signatures peers accept (until the
    /// signed roster of Art. 9.3 replaces this list).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signatories: Vec<CardSignatory>,
}

/// A signatory listed on an authority card.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardSignatory {
    /// Short id of the signatory, for example `ivanov`.
    pub id: String,
    /// The signatory's public key (SPKI PEM).
    pub key: VerifyingKey,
    /// Signatures made before this time are not accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_from: Option<Timestamp>,
    /// Signatures made after this time are not accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<Timestamp>,
}

impl AuthorityCard {
    /// The signatories of this card as trusted signers of its authority.
    pub fn trusted_signers(&self) -> Vec<TrustedSigner> {
        self.signatories
            .iter()
            .map(|s| TrustedSigner {
                authority: self.authority.clone(),
                key: s.key,
                valid_from: s.valid_from,
                valid_until: s.valid_until,
            })
            .collect()
    }
}

impl AuthorityCard {
    /// Parses a card from TOML text; errors name the line and the problem.
    pub fn from_toml_str(text: &str) -> Result<Self, KeyError> {
        if text.len() > MAX_KEY_TEXT {
            return Err(KeyError::TooLarge(text.len()));
        }
        let card: Self = toml::from_str(text).map_err(|e| KeyError::Card(e.to_string()))?;
        if card.age_recipients.is_empty() {
            return Err(KeyError::Card(
                "age_recipients must list at least one recipient".into(),
            ));
        }
        if card.age_recipients.len() > 16 {
            return Err(KeyError::Card(
                "age_recipients lists more than 16 recipients".into(),
            ));
        }
        Ok(card)
    }
    /// The card as TOML text.
    pub fn to_toml_string(&self) -> Result<String, KeyError> {
        toml::to_string(self).map_err(|e| KeyError::Encode(e.to_string()))
    }
}

/// A signatory's public key that the receiver trusts for an authority, with
/// the period in which it may sign (from the authority's roster).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedSigner {
    /// The authority the signatory signs for.
    pub authority: AuthorityId,
    /// The signatory's public key.
    pub key: VerifyingKey,
    /// Signatures made before this time are not accepted.
    pub valid_from: Option<Timestamp>,
    /// Signatures made after this time are not accepted.
    pub valid_until: Option<Timestamp>,
}

impl TrustedSigner {
    /// Whether a signature made at `t` falls within the validity period.
    pub fn valid_at(&self, t: Timestamp) -> bool {
        self.valid_from.is_none_or(|f| t >= f) && self.valid_until.is_none_or(|u| t <= u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trips_and_debug_hides_secrets() {
        let k = SigningKey::generate();
        let pem = k.to_pkcs8_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let k2 = SigningKey::from_pkcs8_pem(&pem).unwrap();
        assert_eq!(k.verifying_key(), k2.verifying_key());
        let pubpem = k.verifying_key().to_public_key_pem().unwrap();
        assert!(pubpem.starts_with("-----BEGIN PUBLIC KEY-----"));
        assert_eq!(
            VerifyingKey::from_public_key_pem(&pubpem).unwrap(),
            k.verifying_key()
        );
        assert!(!format!("{k:?}").contains("PRIVATE"));

        let a = AgeIdentity::generate();
        let text = a.to_text();
        let a2 = AgeIdentity::from_text(&text).unwrap();
        assert_eq!(a.recipient(), a2.recipient());
        assert!(!format!("{a:?}").contains("AGE-SECRET-KEY"));
    }

    #[test]
    fn card_round_trips_through_toml() {
        let keys = NodeKeys::generate(AuthorityId::new("kz.mvd").unwrap());
        let card = keys.card(Some("МВД РК".into()));
        let text = card.to_toml_string().unwrap();
        assert_eq!(AuthorityCard::from_toml_str(&text).unwrap(), card);
        let bad = text.replace("age_recipients", "age_recipientz");
        let err = AuthorityCard::from_toml_str(&bad).unwrap_err().to_string();
        assert!(err.contains("age_recipientz"), "{err}");
    }
}
