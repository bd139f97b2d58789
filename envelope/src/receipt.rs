//! Signed delivery receipts.
//!
//! The receiving gateway answers every envelope with a receipt: a COSE_Sign1
//! (RFC 9052, EdDSA) by its node key whose payload is the deterministic CBOR
//! of [`Receipt`]: the envelope id, the envelope digest (which commits to
//! every byte of the envelope's header and body), the time, both authorities and the outcome. A receipt can be
//! verified offline with only the receiver's authority card.

use std::fmt;
use std::str::FromStr;

use coset::iana;
use coset::{CborSerializable, CoseSign1, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable};
use serde::{Deserialize, Serialize};

use crate::cbor;
use crate::envelope::OpenError;
use crate::keys::{SigningKey, VerifyingKey};
use crate::model::{AuthorityId, Digest, Id, Timestamp};
use crate::signed::SignatureError;

/// Content type of the receipt payload (COSE header 3).
pub const RECEIPT_CONTENT_TYPE: &str = "application/konvert-receipt+cbor";
/// External AAD of a receipt signature.
pub const RECEIPT_AAD: &[u8] = b"konvert/1 receipt";
/// Largest receipt accepted.
pub const MAX_RECEIPT_LEN: usize = 4096;

/// Machine-readable reason for rejecting an envelope. The snake_case names
/// are stable: they appear on the wire and in the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectCode {
    /// Larger than the receiver's size limit.
    TooLarge,
    /// Not a well-formed envelope.
    Malformed,
    /// Envelope version not supported.
    UnsupportedVersion,
    /// The sender is not a known peer of the receiver.
    UnknownSender,
    /// The node signature does not verify.
    BadNodeSignature,
    /// Addressed to another authority.
    WrongRecipient,
    /// The agreement is unknown to the receiver or not in force.
    AgreementNotInForce,
    /// The body cannot be decrypted with the receiver's identity.
    DecryptFailed,
    /// The signatory is not on the sender's roster or was not valid at signing time.
    SignerNotAuthorised,
    /// The signatory signature does not verify.
    BadSignature,
    /// The signed routing differs from the envelope.
    Readdressed,
    /// The message does not decode.
    MalformedMessage,
    /// The message is not valid under the receiver's profile.
    InvalidMessage,
    /// An attachment does not match the signed message.
    AttachmentMismatch,
    /// The receiver could not store the envelope; the sender should retry.
    TemporaryFailure,
    /// Art. 17: the agreement's termination period (six months after a
    /// notice of termination) has ended.
    AgreementTerminated,
    /// The message answers (or concerns) a request or message the receiver
    /// does not know: an answer to an unknown request.
    UnknownCase,
    /// A second final answer (response fulfilled, partially fulfilled or
    /// refused) to a request already answered.
    AlreadyAnswered,
    /// The case was withdrawn (Art. 11.1) or closed; it takes no more messages.
    CaseClosed,
    /// Sent by, or to, an authority other than the one the case expects for
    /// this message: an answer from an authority that was not asked.
    NotAddressee,
    /// The message does not fit the state of its case (for example a
    /// confidentiality decision when no notice is pending).
    WrongState,
    /// Art. 11.2: a response does not carry the purpose of its request.
    PurposeMismatch,
    /// Art. 11.2, 11.3: the data may not be used or passed on without a
    /// consent of the providing party, and none is on record.
    ConsentMissing,
    /// A directory update (Art. 2, 9.3, 9.4) without a valid signature of the
    /// sending authority's root key, or the receiver has no root key for it.
    DirectoryNotVerified,
    /// A signatory roster whose version is not higher than the one on record
    /// (or the same version with different content).
    StaleDirectoryUpdate,
    /// The signatory was valid at the signing time, but its validity ended
    /// (revoked, expired, dropped from the roster) longer than the
    /// receiver's grace period before the envelope arrived (a bound on
    /// backdated signatures; see `SignedMessage::verify_arriving`).
    SignerNoLongerValid,
}

impl RejectCode {
    /// Every code, in declaration order.
    pub const ALL: [RejectCode; 26] = [
        Self::TooLarge,
        Self::Malformed,
        Self::UnsupportedVersion,
        Self::UnknownSender,
        Self::BadNodeSignature,
        Self::WrongRecipient,
        Self::AgreementNotInForce,
        Self::DecryptFailed,
        Self::SignerNotAuthorised,
        Self::BadSignature,
        Self::Readdressed,
        Self::MalformedMessage,
        Self::InvalidMessage,
        Self::AttachmentMismatch,
        Self::TemporaryFailure,
        Self::AgreementTerminated,
        Self::UnknownCase,
        Self::AlreadyAnswered,
        Self::CaseClosed,
        Self::NotAddressee,
        Self::WrongState,
        Self::PurposeMismatch,
        Self::ConsentMissing,
        Self::DirectoryNotVerified,
        Self::StaleDirectoryUpdate,
        Self::SignerNoLongerValid,
    ];
    /// The stable wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::Malformed => "malformed",
            Self::UnsupportedVersion => "unsupported_version",
            Self::UnknownSender => "unknown_sender",
            Self::BadNodeSignature => "bad_node_signature",
            Self::WrongRecipient => "wrong_recipient",
            Self::AgreementNotInForce => "agreement_not_in_force",
            Self::DecryptFailed => "decrypt_failed",
            Self::SignerNotAuthorised => "signer_not_authorised",
            Self::BadSignature => "bad_signature",
            Self::Readdressed => "readdressed",
            Self::MalformedMessage => "malformed_message",
            Self::InvalidMessage => "invalid_message",
            Self::AttachmentMismatch => "attachment_mismatch",
            Self::TemporaryFailure => "temporary_failure",
            Self::AgreementTerminated => "agreement_terminated",
            Self::UnknownCase => "unknown_case",
            Self::AlreadyAnswered => "already_answered",
            Self::CaseClosed => "case_closed",
            Self::NotAddressee => "not_addressee",
            Self::WrongState => "wrong_state",
            Self::PurposeMismatch => "purpose_mismatch",
            Self::ConsentMissing => "consent_missing",
            Self::DirectoryNotVerified => "directory_not_verified",
            Self::StaleDirectoryUpdate => "stale_directory_update",
            Self::SignerNoLongerValid => "signer_no_longer_valid",
        }
    }
    /// Whether the sender should retry later (only [`RejectCode::TemporaryFailure`]).
    pub fn is_temporary(self) -> bool {
        self == Self::TemporaryFailure
    }
}

impl fmt::Display for RejectCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RejectCode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown receipt code {s:?}"))
    }
}

impl From<&OpenError> for RejectCode {
    fn from(e: &OpenError) -> Self {
        match e {
            OpenError::TooLarge { .. } => Self::TooLarge,
            OpenError::Structure(_) => Self::Malformed,
            OpenError::UnsupportedVersion(_) => Self::UnsupportedVersion,
            OpenError::UnknownSender { .. } => Self::UnknownSender,
            OpenError::NodeSignature { .. } => Self::BadNodeSignature,
            OpenError::WrongRecipient { .. } => Self::WrongRecipient,
            OpenError::AgreementNotInForce { .. } => Self::AgreementNotInForce,
            OpenError::AgreementTerminated { .. } => Self::AgreementTerminated,
            OpenError::Decrypt(_) => Self::DecryptFailed,
            OpenError::Signature(
                SignatureError::UnknownSigner { .. } | SignatureError::SignerNotValid { .. },
            ) => Self::SignerNotAuthorised,
            OpenError::Signature(SignatureError::SignerNoLongerValid { .. }) => Self::SignerNoLongerValid,
            OpenError::Signature(_) => Self::BadSignature,
            OpenError::Readdressed { .. } => Self::Readdressed,
            OpenError::MessageDecode(_) => Self::MalformedMessage,
            OpenError::Invalid(_) => Self::InvalidMessage,
            OpenError::AttachmentMismatch { .. } => Self::AttachmentMismatch,
            OpenError::Io(_) => Self::TemporaryFailure,
        }
    }
}

/// What the receiver did with the envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// Stored durably.
    Accepted,
    /// Not stored, for the reason given.
    Rejected {
        /// Why.
        code: RejectCode,
    },
}

/// A delivery receipt (the signed payload).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// The envelope this receipt is for.
    pub envelope_id: Id,
    /// The envelope digest (SHA-256 of the node signature input, which commits
    /// to the header bytes and the SHA-256 of the body ciphertext).
    pub envelope_digest: Digest,
    /// When the receiver decided.
    pub time: Timestamp,
    /// The receiving authority (the signer of the receipt).
    pub receiver: AuthorityId,
    /// The authority that sent the envelope.
    pub sender: AuthorityId,
    /// Accepted, or rejected with a code.
    pub outcome: Outcome,
}

/// Why a receipt does not verify.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    /// Larger than [`MAX_RECEIPT_LEN`].
    #[error("receipt of {0} bytes is larger than 4 KiB")]
    TooLarge(usize),
    /// Not a COSE_Sign1 receipt.
    #[error("malformed receipt: {0}")]
    Malformed(String),
    /// Signed by another key than the one given.
    #[error("receipt is signed by key {found}, not by the expected key {expected}")]
    WrongKey {
        /// Key id in the receipt.
        found: String,
        /// Key id of the key given.
        expected: String,
    },
    /// The signature does not verify.
    #[error("receipt signature does not verify")]
    BadSignature,
    /// Could not encode.
    #[error("cannot encode receipt: {0}")]
    Encode(String),
}

impl Receipt {
    /// Signs the receipt with the receiving gateway's node key; returns the tagged COSE_Sign1.
    pub fn sign(&self, key: &SigningKey) -> Result<Vec<u8>, ReceiptError> {
        let payload = cbor::to_deterministic_vec(self).map_err(|e| ReceiptError::Encode(e.to_string()))?;
        let header = HeaderBuilder::new()
            .algorithm(iana::Algorithm::EdDSA)
            .content_type(RECEIPT_CONTENT_TYPE.into())
            .key_id(key.verifying_key().key_id().0.to_vec())
            .build();
        CoseSign1Builder::new()
            .protected(header)
            .payload(payload)
            .create_signature(RECEIPT_AAD, |tbs| key.sign(tbs).to_vec())
            .build()
            .to_tagged_vec()
            .map_err(|e| ReceiptError::Encode(e.to_string()))
    }

    /// Verifies a signed receipt with the receiver's node key and returns it.
    pub fn verify(bytes: &[u8], key: &VerifyingKey) -> Result<Receipt, ReceiptError> {
        Self::verify_by(bytes, key, &mut crate::batch::Now)
    }

    /// [`Receipt::verify`] with the signature checked by `verifier` (which
    /// may defer it: [`crate::batch::Deferred`]).
    pub fn verify_by(
        bytes: &[u8],
        key: &VerifyingKey,
        verifier: &mut dyn crate::batch::SignatureVerifier,
    ) -> Result<Receipt, ReceiptError> {
        if bytes.len() > MAX_RECEIPT_LEN {
            return Err(ReceiptError::TooLarge(bytes.len()));
        }
        let sign1 = CoseSign1::from_tagged_slice(bytes)
            .or_else(|_| CoseSign1::from_slice(bytes))
            .map_err(|e| ReceiptError::Malformed(e.to_string()))?;
        if sign1.protected.header.alg
            != Some(coset::RegisteredLabelWithPrivate::Assigned(
                iana::Algorithm::EdDSA,
            ))
        {
            return Err(ReceiptError::Malformed("algorithm is not EdDSA".into()));
        }
        let kid = key.key_id();
        if sign1.protected.header.key_id != kid.0 {
            return Err(ReceiptError::WrongKey {
                found: hex::encode(&sign1.protected.header.key_id),
                expected: kid.to_string(),
            });
        }
        sign1.verify_signature(RECEIPT_AAD, |sig, tbs| {
            if verifier.check(key, tbs, sig) {
                Ok(())
            } else {
                Err(ReceiptError::BadSignature)
            }
        })?;
        let payload = sign1.payload.as_deref().unwrap_or_default();
        cbor::from_deterministic_slice(payload, MAX_RECEIPT_LEN)
            .map_err(|e| ReceiptError::Malformed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt() -> Receipt {
        Receipt {
            envelope_id: Id::from_bytes([7; 16]),
            envelope_digest: Digest::of(b"envelope"),
            time: Timestamp::from_unix(1_750_000_001),
            receiver: AuthorityId::new("by.mvd").unwrap(),
            sender: AuthorityId::new("kz.mvd").unwrap(),
            outcome: Outcome::Rejected {
                code: RejectCode::SignerNotAuthorised,
            },
        }
    }

    #[test]
    fn receipt_signs_and_verifies() {
        let k = SigningKey::generate();
        let signed = receipt().sign(&k).unwrap();
        assert_eq!(Receipt::verify(&signed, &k.verifying_key()).unwrap(), receipt());
        let other = SigningKey::generate();
        assert!(matches!(
            Receipt::verify(&signed, &other.verifying_key()),
            Err(ReceiptError::WrongKey { .. })
        ));
        let mut tampered = signed.clone();
        let n = tampered.len();
        tampered[n - 70] ^= 1; // inside the payload, before the signature
        assert!(Receipt::verify(&tampered, &k.verifying_key()).is_err());
    }

    #[test]
    fn codes_round_trip_their_names() {
        for c in RejectCode::ALL {
            assert_eq!(c.as_str().parse::<RejectCode>().unwrap(), c);
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.as_str()));
        }
    }
}
