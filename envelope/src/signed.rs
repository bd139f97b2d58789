//! The signatory's signature over a message: a COSE_Sign1 (RFC 9052, EdDSA).
//!
//! The message is encoded as deterministic CBOR; the COSE_Sign1 payload is
//! the SHA-256 of those bytes (the "hash envelope" shape of
//! draft-ietf-cose-hash-envelope: header 258 = payload hash algorithm -16
//! SHA-256, header 259 = the preimage's content type), so signing costs the
//! same for a 1 KiB and a 100 MiB message. The protected header binds the
//! routing, so a signed message cannot be re-addressed:
//!
//! | label | value |
//! |---|---|
//! | 1 (alg) | -8 (EdDSA) |
//! | 4 (kid) | signatory key id (16 bytes) |
//! | 258 | -16 (SHA-256) |
//! | 259 | `"application/konvert-message+cbor"` |
//! | `"konvert-id"` | message id (16-byte bstr) |
//! | `"konvert-to"` | recipient authority (tstr) |
//! | `"konvert-from"` | sender authority (tstr) |
//! | `"konvert-time"` | message time (int, Unix seconds) |
//! | `"konvert-agreement"` | agreement id (tstr) |
//!
//! External AAD is the ASCII string `konvert/1 message`.

use coset::cbor::value::Value;
use coset::iana;
use coset::{CborSerializable, CoseSign1, CoseSign1Builder, HeaderBuilder, Label, TaggedCborSerializable};
use serde::{Deserialize, Serialize};

use crate::cbor;
use crate::keys::{KeyId, SigningKey, TrustedSigner};
use crate::model::{AgreementId, AuthorityId, Digest, Id, Message, Timestamp};

/// Content type of the signed preimage (header 259).
pub const MESSAGE_CONTENT_TYPE: &str = "application/konvert-message+cbor";
/// External additional authenticated data of a message signature.
pub const MESSAGE_AAD: &[u8] = b"konvert/1 message";
/// COSE header label: hash algorithm of the payload (draft-ietf-cose-hash-envelope).
pub const LABEL_PAYLOAD_HASH_ALG: i64 = 258;
/// COSE header label: content type of the hashed preimage.
pub const LABEL_PREIMAGE_CONTENT_TYPE: i64 = 259;
/// COSE algorithm id of SHA-256.
pub const ALG_SHA256: i64 = -16;
/// Largest COSE_Sign1 accepted.
pub const MAX_COSE_LEN: usize = 4096;

const L_ID: &str = "konvert-id";
const L_TO: &str = "konvert-to";
const L_FROM: &str = "konvert-from";
const L_TIME: &str = "konvert-time";
const L_AGREEMENT: &str = "konvert-agreement";

/// Why a signed message was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// The COSE_Sign1 does not parse or lacks a required header.
    #[error("malformed COSE_Sign1: {0}")]
    Malformed(String),
    /// The signature algorithm is not EdDSA or the hash is not SHA-256.
    #[error("unsupported algorithm in COSE_Sign1 (expected EdDSA over a SHA-256 payload hash)")]
    UnsupportedAlgorithm,
    /// No trusted signer has this key id for the sending authority.
    #[error("signatory key {kid} is not among the trusted signers of {authority}")]
    UnknownSigner {
        /// The key id in the protected header.
        kid: String,
        /// The claimed sending authority.
        authority: AuthorityId,
    },
    /// The signer is known but was not valid at the time of signing.
    #[error("signatory key {kid} was not valid at the signing time {time}")]
    SignerNotValid {
        /// The key id.
        kid: String,
        /// The signing time claimed in the protected header.
        time: Timestamp,
    },
    /// The signer was valid at the signing time, but its validity ended
    /// (revoked, expired, dropped from its roster) longer than the
    /// receiver's grace period before the message arrived: a late delivery
    /// can no longer be told from a backdated signature.
    #[error(
        "signatory key {kid} was valid at the signing time {time}, but its validity ended at {ended}, \
         more than {grace_secs} s before this arrival at {now}; a message signed by it had to arrive \
         by then: sign it again with a current signatory"
    )]
    SignerNoLongerValid {
        /// The key id.
        kid: String,
        /// The signing time claimed in the protected header.
        time: Timestamp,
        /// The last moment the key was valid.
        ended: Timestamp,
        /// The receiver's grace period.
        grace_secs: u64,
        /// The time of arrival.
        now: Timestamp,
    },
    /// The Ed25519 signature does not verify.
    #[error("signatory signature does not verify")]
    BadSignature,
    /// The signature is good but the message bytes are not the signed ones.
    #[error("message bytes do not match the signed SHA-256 digest")]
    DigestMismatch,
    /// Could not encode (sealing side).
    #[error("cannot encode signed message: {0}")]
    Encode(String),
}

/// The routing the signatory signed (the COSE protected header).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedClaims {
    /// Signatory key id.
    pub kid: KeyId,
    /// Message id.
    pub id: Id,
    /// Message time (= signing time).
    pub time: Timestamp,
    /// Agreement.
    pub agreement: AgreementId,
    /// Sender authority.
    pub from: AuthorityId,
    /// Recipient authority.
    pub to: AuthorityId,
}

impl SignedClaims {
    /// The claims of a message header (what a signature over it binds).
    pub fn of(message: &Message, kid: KeyId) -> Self {
        let h = &message.header;
        Self {
            kid,
            id: h.id,
            time: h.time,
            agreement: h.agreement.clone(),
            from: h.from.clone(),
            to: h.to.clone(),
        }
    }
}

/// A message with its signatory's signature: the last item of an envelope
/// body's plaintext, `[cose: bstr, message: bstr]` in CBOR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedMessage {
    /// Tagged COSE_Sign1 (tag 18) whose payload is SHA-256(message).
    pub cose: Vec<u8>,
    /// The message in deterministic CBOR.
    pub message: Vec<u8>,
}

impl Serialize for SignedMessage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (
            serde_bytes::Bytes::new(&self.cose),
            serde_bytes::Bytes::new(&self.message),
        )
            .serialize(s)
    }
}

impl<'de> Deserialize<'de> for SignedMessage {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (cose, message) = <(serde_bytes::ByteBuf, serde_bytes::ByteBuf)>::deserialize(d)?;
        Ok(Self {
            cose: cose.into_vec(),
            message: message.into_vec(),
        })
    }
}

impl SignedMessage {
    /// Encodes the message deterministically and signs it.
    pub fn sign(message: &Message, signer: &SigningKey) -> Result<Self, SignatureError> {
        let msg = cbor::to_deterministic_vec(message).map_err(|e| SignatureError::Encode(e.to_string()))?;
        let digest = Digest::of(&msg);
        let claims = SignedClaims::of(message, signer.verifying_key().key_id());
        let cose = sign_claims(&claims, &digest, signer)?;
        Ok(Self { cose, message: msg })
    }

    /// Signs already encoded message bytes under the given claims, as they
    /// are. Low-level: [`SignedMessage::sign`] is the normal way; this one
    /// exists to build test vectors (for example bytes that do not decode).
    pub fn sign_raw(
        message_cbor: Vec<u8>,
        claims: &SignedClaims,
        signer: &SigningKey,
    ) -> Result<Self, SignatureError> {
        let cose = sign_claims(claims, &Digest::of(&message_cbor), signer)?;
        Ok(Self {
            cose,
            message: message_cbor,
        })
    }

    /// Encodes `[cose, message]` as CBOR: an array of two byte strings,
    /// written straight out (their headers in shortest form, so the result
    /// is deterministic as it stands; no value tree, no copy of the message
    /// into one).
    pub fn to_vec(&self) -> Result<Vec<u8>, SignatureError> {
        let mut out = Vec::with_capacity(self.cose.len() + self.message.len() + 20);
        let mut enc = ciborium_ll::Encoder::from(&mut out);
        let encode = |e: std::io::Error| SignatureError::Encode(e.to_string());
        enc.push(ciborium_ll::Header::Array(Some(2))).map_err(encode)?;
        enc.bytes(&self.cose, None).map_err(encode)?;
        enc.bytes(&self.message, None).map_err(encode)?;
        Ok(out)
    }

    /// Verifies the signatory signature against `signers` and returns the
    /// signed claims. Does not decode the message.
    ///
    /// Checks: well-formed COSE_Sign1, EdDSA + SHA-256, a trusted signer with
    /// this key id for the claimed sender, valid at the claimed time, the
    /// signature, and that the message bytes hash to the signed digest.
    pub fn verify(&self, signers: &[TrustedSigner]) -> Result<SignedClaims, SignatureError> {
        self.verify_by(signers, &mut crate::batch::Now)
    }

    /// [`SignedMessage::verify`] with the signature itself checked by
    /// `verifier` (which may defer it: [`crate::batch::Deferred`]).
    pub fn verify_by(
        &self,
        signers: &[TrustedSigner],
        verifier: &mut dyn crate::batch::SignatureVerifier,
    ) -> Result<SignedClaims, SignatureError> {
        if self.cose.len() > MAX_COSE_LEN {
            return Err(SignatureError::Malformed("longer than 4 KiB".into()));
        }
        let sign1 = CoseSign1::from_tagged_slice(&self.cose)
            .or_else(|_| CoseSign1::from_slice(&self.cose))
            .map_err(|e| SignatureError::Malformed(e.to_string()))?;
        let claims = parse_claims(&sign1)?;
        // The same key may be listed several times with different periods
        // (one entry per roster version, see `roster::RosterHistory`): take
        // one valid at the signing time if there is one.
        let mut candidates = signers
            .iter()
            .filter(|s| s.key.key_id() == claims.kid && s.authority == claims.from)
            .peekable();
        let first = candidates
            .peek()
            .copied()
            .ok_or_else(|| SignatureError::UnknownSigner {
                kid: claims.kid.to_string(),
                authority: claims.from.clone(),
            })?;
        let signer = candidates.find(|s| s.valid_at(claims.time)).unwrap_or(first);
        sign1.verify_signature(MESSAGE_AAD, |sig, tbs| {
            if verifier.check(&signer.key, tbs, sig) {
                Ok(())
            } else {
                Err(SignatureError::BadSignature)
            }
        })?;
        if !signer.valid_at(claims.time) {
            return Err(SignatureError::SignerNotValid {
                kid: claims.kid.to_string(),
                time: claims.time,
            });
        }
        let payload = sign1.payload.as_deref().unwrap_or_default();
        if payload != Digest::of(&self.message).0 {
            return Err(SignatureError::DigestMismatch);
        }
        Ok(claims)
    }
}

impl SignedMessage {
    /// [`SignedMessage::verify`] for a message arriving at `now`, bounding
    /// backdating. The signing time (`konvert-time`) is set by the sender,
    /// so a signatory whose key was revoked could sign later with an
    /// earlier time. Therefore, when the key is valid at `now` on none of
    /// its entries in `signers` (revoked, expired or dropped from the
    /// roster), its signature is accepted only until `grace_secs` after the
    /// last moment it was valid; later arrivals are
    /// [`SignatureError::SignerNoLongerValid`]. A key still valid at `now`
    /// is not bounded: its holder may sign with the current time anyway,
    /// and an envelope queued through a long outage still opens.
    /// `grace_secs = None` checks no bound.
    pub fn verify_arriving(
        &self,
        signers: &[TrustedSigner],
        now: Timestamp,
        grace_secs: Option<u64>,
    ) -> Result<SignedClaims, SignatureError> {
        self.verify_arriving_by(signers, now, grace_secs, &mut crate::batch::Now)
    }

    /// [`SignedMessage::verify_arriving`] with the signature checked by
    /// `verifier`.
    pub fn verify_arriving_by(
        &self,
        signers: &[TrustedSigner],
        now: Timestamp,
        grace_secs: Option<u64>,
        verifier: &mut dyn crate::batch::SignatureVerifier,
    ) -> Result<SignedClaims, SignatureError> {
        let claims = self.verify_by(signers, verifier)?;
        let Some(grace) = grace_secs else {
            return Ok(claims);
        };
        let mut ended: Option<Timestamp> = None;
        for s in signers
            .iter()
            .filter(|s| s.key.key_id() == claims.kid && s.authority == claims.from)
        {
            if s.valid_at(now) {
                return Ok(claims);
            }
            if let Some(u) = s.valid_until.filter(|u| *u < now) {
                ended = Some(ended.map_or(u, |e| e.max(u)));
            }
        }
        match ended {
            Some(e) if now > e.plus_secs(i64::try_from(grace).unwrap_or(i64::MAX)) => {
                Err(SignatureError::SignerNoLongerValid {
                    kid: claims.kid.to_string(),
                    time: claims.time,
                    ended: e,
                    grace_secs: grace,
                    now,
                })
            }
            _ => Ok(claims),
        }
    }
}

/// Builds the tagged COSE_Sign1 over `digest` with `claims` in the protected header.
pub(crate) fn sign_claims(
    claims: &SignedClaims,
    digest: &Digest,
    signer: &SigningKey,
) -> Result<Vec<u8>, SignatureError> {
    // Labels after alg (1) and kid (4) in deterministic order: integers first,
    // then text labels shorter-first and bytewise (RFC 8949 §4.2.1).
    let mut rest: Vec<(Label, Value)> = vec![
        (
            Label::Int(LABEL_PAYLOAD_HASH_ALG),
            Value::Integer(ALG_SHA256.into()),
        ),
        (
            Label::Int(LABEL_PREIMAGE_CONTENT_TYPE),
            Value::Text(MESSAGE_CONTENT_TYPE.into()),
        ),
        (
            Label::Text(L_ID.into()),
            Value::Bytes(claims.id.as_bytes().to_vec()),
        ),
        (Label::Text(L_TO.into()), Value::Text(claims.to.to_string())),
        (Label::Text(L_FROM.into()), Value::Text(claims.from.to_string())),
        (
            Label::Text(L_TIME.into()),
            Value::Integer(claims.time.as_unix().into()),
        ),
        (
            Label::Text(L_AGREEMENT.into()),
            Value::Text(claims.agreement.to_string()),
        ),
    ];
    sort_labels(&mut rest);
    let mut header = HeaderBuilder::new()
        .algorithm(iana::Algorithm::EdDSA)
        .key_id(claims.kid.0.to_vec())
        .build();
    header.rest = rest;
    let sign1 = CoseSign1Builder::new()
        .protected(header)
        .payload(digest.0.to_vec())
        .create_signature(MESSAGE_AAD, |tbs| signer.sign(tbs).to_vec())
        .build();
    sign1
        .to_tagged_vec()
        .map_err(|e| SignatureError::Encode(e.to_string()))
}

fn sort_labels(rest: &mut [(Label, Value)]) {
    fn key(l: &Label) -> Vec<u8> {
        let v = match l {
            Label::Int(i) => Value::Integer((*i).into()),
            Label::Text(t) => Value::Text(t.clone()),
        };
        let mut out = Vec::new();
        // Encoding a small integer or text into a Vec cannot fail.
        let _ = ciborium::into_writer(&v, &mut out);
        out
    }
    rest.sort_by_key(|(l, _)| key(l));
}

fn parse_claims(sign1: &CoseSign1) -> Result<SignedClaims, SignatureError> {
    let h = &sign1.protected.header;
    if h.alg
        != Some(coset::RegisteredLabelWithPrivate::Assigned(
            iana::Algorithm::EdDSA,
        ))
    {
        return Err(SignatureError::UnsupportedAlgorithm);
    }
    let kid: [u8; 16] = h
        .key_id
        .as_slice()
        .try_into()
        .map_err(|_| SignatureError::Malformed("kid is not 16 bytes".into()))?;
    let get = |label: Label| {
        h.rest
            .iter()
            .find(|(l, _)| *l == label)
            .map(|(_, v)| v)
            .ok_or_else(|| SignatureError::Malformed(format!("protected header lacks {label:?}")))
    };
    match get(Label::Int(LABEL_PAYLOAD_HASH_ALG))? {
        Value::Integer(i) if i128::from(*i) == i128::from(ALG_SHA256) => {}
        _ => return Err(SignatureError::UnsupportedAlgorithm),
    }
    let text = |label: &str| match get(Label::Text(label.into()))? {
        Value::Text(t) => Ok(t.clone()),
        _ => Err(SignatureError::Malformed(format!("{label} is not text"))),
    };
    let id: [u8; 16] = match get(Label::Text(L_ID.into()))? {
        Value::Bytes(b) => b
            .as_slice()
            .try_into()
            .map_err(|_| SignatureError::Malformed("konvert-id is not 16 bytes".into()))?,
        _ => {
            return Err(SignatureError::Malformed(
                "konvert-id is not a byte string".into(),
            ))
        }
    };
    let time = match get(Label::Text(L_TIME.into()))? {
        Value::Integer(i) => {
            i64::try_from(*i).map_err(|_| SignatureError::Malformed("konvert-time out of range".into()))?
        }
        _ => return Err(SignatureError::Malformed("konvert-time is not an integer".into())),
    };
    let ident = |label: &str| -> Result<String, SignatureError> { text(label) };
    Ok(SignedClaims {
        kid: KeyId(kid),
        id: Id::from_bytes(id),
        time: Timestamp::from_unix(time),
        agreement: AgreementId::new(ident(L_AGREEMENT)?)
            .map_err(|e| SignatureError::Malformed(e.to_string()))?,
        from: AuthorityId::new(ident(L_FROM)?).map_err(|e| SignatureError::Malformed(e.to_string()))?,
        to: AuthorityId::new(ident(L_TO)?).map_err(|e| SignatureError::Malformed(e.to_string()))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pair_is_written_as_its_deterministic_encoding() {
        // Byte-string lengths on each side of every header size (inline,
        // one, two and four length bytes).
        for (cose, msg) in [(0, 0), (23, 24), (255, 256), (65_535, 65_536), (100, 70_000)] {
            let signed = SignedMessage {
                cose: vec![0x5a; cose],
                message: vec![0xa5; msg],
            };
            let direct = signed.to_vec().unwrap();
            assert_eq!(
                direct,
                cbor::to_deterministic_vec_by_value_tree(&signed).unwrap(),
                "{cose}/{msg}"
            );
            cbor::check_deterministic(&direct).unwrap();
        }
    }

    #[test]
    fn protected_header_is_deterministic() {
        let k = SigningKey::generate();
        let claims = SignedClaims {
            kid: k.verifying_key().key_id(),
            id: Id::new(Timestamp::from_unix(1_700_000_000)),
            time: Timestamp::from_unix(1_700_000_000),
            agreement: AgreementId::new("kz-by-2019").unwrap(),
            from: AuthorityId::new("kz.mvd").unwrap(),
            to: AuthorityId::new("by.mvd").unwrap(),
        };
        let cose = sign_claims(&claims, &Digest::of(b"x"), &k).unwrap();
        let sign1 = CoseSign1::from_tagged_slice(&cose).unwrap();
        let prot = sign1.protected.original_data.clone().unwrap();
        let v: Value = cbor::from_slice(&prot, 4096).unwrap();
        assert_eq!(cbor::value_to_deterministic_vec(v).unwrap(), prot);
        assert_eq!(parse_claims(&sign1).unwrap(), claims);
    }
}
