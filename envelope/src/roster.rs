//! Who may sign for an authority (Art. 9.3, 9.4) and what the authorities
//! are called (Art. 2): directory statements signed by an authority root key.
//!
//! Each authority has an **root key** (Ed25519, published on its authority
//! card as `root_key`). It signs **directory statements**: its complete
//! signatory roster (a new, higher version on every change, Art. 9.4), or
//! the renaming or replacement of an authority of its party (Art. 2). A
//! statement travels as the `attestation` of a `directory_update` message
//! whose `change` it repeats; the receiver verifies it with the sender's
//! root key ([`verify_update`]) before applying it.
//!
//! The signed form is a COSE_Sign1 (RFC 9052, tag 18, EdDSA) whose payload is
//! the deterministic CBOR of a [`DirectoryStatement`]; protected header
//! `{1: -8, 3: "application/konvert-directory+cbor", 4: kid}`, external AAD
//! `konvert/1 directory` (see `docs/PROTOCOL.md` §7).
//!
//! [`RosterHistory`] keeps every roster version, so a message is judged by
//! the roster in force when it was signed: version *n* applies from its
//! `issued` time until the `issued` time of the next version, and within
//! that, each signatory only inside its own `valid_from`..`valid_until`.
//! [`DirectoryHistory`] adds the renamings and replacements: an old id stays
//! resolvable, and rosters published under an old id keep verifying the
//! messages signed under it.

use std::collections::{BTreeMap, BTreeSet};

use coset::iana;
use coset::{CborSerializable, CoseSign1, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable};
use serde::{Deserialize, Serialize};

use crate::cbor;
use crate::keys::{AgeRecipient, AuthorityCard, SigningKey, TrustedSigner, VerifyingKey};
use crate::model::{
    Attestation, AuthorityId, DirectoryChange, DirectoryUpdate, Message, MessageBody, PublicKeyBytes,
    RotatedKey, RotatedText, Signatory, SignatoryId, Timestamp, MAX_ATTESTATION_LEN,
};
use crate::receipt::RejectCode;

/// Content type of a directory statement (COSE header 3).
pub const DIRECTORY_CONTENT_TYPE: &str = "application/konvert-directory+cbor";
/// External AAD of a root-key signature.
pub const DIRECTORY_AAD: &[u8] = b"konvert/1 directory";

/// Why a directory statement or update was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RosterError {
    /// The message is not a directory update.
    #[error("not a directory_update")]
    NotDirectoryUpdate,
    /// The update carries no root-key attestation.
    #[error("directory update of {0} has no root-key attestation")]
    NotAttested(AuthorityId),
    /// The sender's card has no root key.
    #[error("no root key is known for {0}")]
    NoRootKey(AuthorityId),
    /// The attestation is not a well-formed COSE_Sign1 statement.
    #[error("malformed directory statement: {0}")]
    Malformed(String),
    /// Signed by another key than the authority's root key.
    #[error("directory statement is signed by key {found}, not by the root key {expected} of the authority")]
    WrongKey {
        /// Key id in the statement.
        found: String,
        /// Key id of the root key.
        expected: String,
    },
    /// The signature does not verify.
    #[error("directory statement signature does not verify")]
    BadSignature,
    /// The statement is not the sender's, or the roster not the signing authority's.
    #[error("directory statement of {statement} arrived from {sender}")]
    WrongAuthority {
        /// The authority named by the statement.
        statement: AuthorityId,
        /// The sender of the message, or the roster's authority.
        sender: AuthorityId,
    },
    /// The signed change differs from the change in the message.
    #[error("the signed directory change differs from the change in the message")]
    ChangeMismatch,
    /// The statement was issued after the message carrying it was made.
    #[error("directory statement issued at {issued}, after its message ({message})")]
    IssuedAfterMessage {
        /// Issue time.
        issued: Timestamp,
        /// Message time.
        message: Timestamp,
    },
    /// A roster whose version is not higher than the one on record, or
    /// issued before it, or the same version with other content.
    #[error("roster of {authority} version {version} is not newer than version {known} on record")]
    Stale {
        /// The authority.
        authority: AuthorityId,
        /// The version received.
        version: u64,
        /// The highest version on record.
        known: u64,
    },
    /// The roster is inconsistent.
    #[error("roster of {authority}: {what}")]
    InvalidRoster {
        /// The authority.
        authority: AuthorityId,
        /// What is wrong (ids and positions in the list, no names).
        what: String,
    },
    /// The statement is a roster where a renaming was expected, or the reverse.
    #[error("directory statement holds another kind of change than expected")]
    WrongChange,
    /// A key rotation that is inconsistent.
    #[error("key rotation of {authority}: {what}")]
    InvalidRotation {
        /// The authority.
        authority: AuthorityId,
        /// What is wrong (field names, never key material).
        what: String,
    },
    /// Could not encode.
    #[error("cannot encode directory statement: {0}")]
    Encode(String),
}

impl RosterError {
    /// The receipt code for a directory update refused for this reason.
    pub fn reject_code(&self) -> RejectCode {
        match self {
            Self::Stale { .. } => RejectCode::StaleDirectoryUpdate,
            Self::NotDirectoryUpdate | Self::WrongChange => RejectCode::WrongState,
            Self::InvalidRoster { .. } | Self::InvalidRotation { .. } => RejectCode::InvalidMessage,
            _ => RejectCode::DirectoryNotVerified,
        }
    }
}

/// What an authority's root key signs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryStatement {
    /// The authority whose root key signs.
    pub authority: AuthorityId,
    /// When it was signed; a roster applies from this time.
    pub issued: Timestamp,
    /// The change.
    pub change: DirectoryChange,
}

impl DirectoryStatement {
    /// Signs the statement with the authority's root key; returns the tagged COSE_Sign1.
    pub fn sign(&self, root: &SigningKey) -> Result<Vec<u8>, RosterError> {
        let payload = cbor::to_deterministic_vec(self).map_err(|e| RosterError::Encode(e.to_string()))?;
        let header = HeaderBuilder::new()
            .algorithm(iana::Algorithm::EdDSA)
            .content_type(DIRECTORY_CONTENT_TYPE.into())
            .key_id(root.verifying_key().key_id().0.to_vec())
            .build();
        CoseSign1Builder::new()
            .protected(header)
            .payload(payload)
            .create_signature(DIRECTORY_AAD, |tbs| root.sign(tbs).to_vec())
            .build()
            .to_tagged_vec()
            .map_err(|e| RosterError::Encode(e.to_string()))
    }

    /// Verifies a signed statement with a root key and returns it.
    pub fn verify(bytes: &[u8], root: &VerifyingKey) -> Result<DirectoryStatement, RosterError> {
        if bytes.len() > MAX_ATTESTATION_LEN {
            return Err(RosterError::Malformed("longer than 1 MiB".into()));
        }
        let sign1 = CoseSign1::from_tagged_slice(bytes)
            .or_else(|_| CoseSign1::from_slice(bytes))
            .map_err(|e| RosterError::Malformed(e.to_string()))?;
        let h = &sign1.protected.header;
        if h.alg
            != Some(coset::RegisteredLabelWithPrivate::Assigned(
                iana::Algorithm::EdDSA,
            ))
        {
            return Err(RosterError::Malformed("algorithm is not EdDSA".into()));
        }
        if h.content_type != Some(coset::ContentType::Text(DIRECTORY_CONTENT_TYPE.into())) {
            return Err(RosterError::Malformed(format!(
                "content type is not {DIRECTORY_CONTENT_TYPE}"
            )));
        }
        let kid = root.key_id();
        if h.key_id != kid.0 {
            return Err(RosterError::WrongKey {
                found: hex::encode(&h.key_id),
                expected: kid.to_string(),
            });
        }
        sign1.verify_signature(DIRECTORY_AAD, |sig, tbs| {
            if root.verify(tbs, sig) {
                Ok(())
            } else {
                Err(RosterError::BadSignature)
            }
        })?;
        let payload = sign1.payload.as_deref().unwrap_or_default();
        cbor::from_deterministic_slice(payload, MAX_ATTESTATION_LEN)
            .map_err(|e| RosterError::Malformed(e.to_string()))
    }
}

/// An authority's complete signatory roster, one version (Art. 9.3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roster {
    /// The authority.
    pub authority: AuthorityId,
    /// Version; each version replaces every lower one (Art. 9.4).
    pub version: u64,
    /// When the root key signed it; it applies from then.
    pub issued: Timestamp,
    /// The signatories.
    pub signatories: Vec<Signatory>,
}

impl Roster {
    /// The statement the root key signs.
    pub fn statement(&self) -> DirectoryStatement {
        DirectoryStatement {
            authority: self.authority.clone(),
            issued: self.issued,
            change: DirectoryChange::SignatoryRoster {
                authority: self.authority.clone(),
                version: self.version,
                signatories: self.signatories.clone(),
            },
        }
    }

    /// The roster of a statement, if it holds one.
    pub fn from_statement(s: &DirectoryStatement) -> Result<Roster, RosterError> {
        let DirectoryChange::SignatoryRoster {
            authority,
            version,
            signatories,
        } = &s.change
        else {
            return Err(RosterError::WrongChange);
        };
        if authority != &s.authority {
            return Err(RosterError::WrongAuthority {
                statement: s.authority.clone(),
                sender: authority.clone(),
            });
        }
        let r = Roster {
            authority: authority.clone(),
            version: *version,
            issued: s.issued,
            signatories: signatories.clone(),
        };
        r.check()?;
        Ok(r)
    }

    /// Checks the roster: ids and keys unique, keys valid Ed25519 points,
    /// `valid_until` after `valid_from`.
    pub fn check(&self) -> Result<(), RosterError> {
        let bad = |what: String| RosterError::InvalidRoster {
            authority: self.authority.clone(),
            what,
        };
        let mut ids = BTreeSet::new();
        let mut keys = BTreeSet::new();
        for (i, s) in self.signatories.iter().enumerate() {
            if !ids.insert(&s.id) {
                return Err(bad(format!("signatories[{i}]: id {} listed twice", s.id)));
            }
            if !keys.insert(s.public_key) {
                return Err(bad(format!("signatories[{i}]: public key listed twice")));
            }
            if VerifyingKey::from_bytes(s.public_key.as_bytes()).is_err() {
                return Err(bad(format!("signatories[{i}]: not an Ed25519 public key")));
            }
            if s.valid_until.is_some_and(|u| u <= s.valid_from) {
                return Err(bad(format!(
                    "signatories[{i}]: valid_until is not after valid_from"
                )));
            }
        }
        Ok(())
    }

    /// Signs the roster with the authority's root key.
    pub fn sign(&self, root: &SigningKey) -> Result<SignedRoster, RosterError> {
        self.check()?;
        Ok(SignedRoster {
            roster: self.clone(),
            cose: self.statement().sign(root)?,
        })
    }

    /// The signatory with this key, if listed.
    pub fn signatory_by_key(&self, key: &PublicKeyBytes) -> Option<&Signatory> {
        self.signatories.iter().find(|s| &s.public_key == key)
    }
}

/// A roster with its root-key signature, verified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRoster {
    roster: Roster,
    #[serde(with = "serde_bytes")]
    cose: Vec<u8>,
}

impl SignedRoster {
    /// Verifies signed bytes with the authority's root key.
    pub fn verify(bytes: &[u8], root: &VerifyingKey) -> Result<SignedRoster, RosterError> {
        let s = DirectoryStatement::verify(bytes, root)?;
        Ok(SignedRoster {
            roster: Roster::from_statement(&s)?,
            cose: bytes.to_vec(),
        })
    }
    /// The roster.
    pub fn roster(&self) -> &Roster {
        &self.roster
    }
    /// The signed bytes (tagged COSE_Sign1).
    pub fn as_bytes(&self) -> &[u8] {
        &self.cose
    }
    /// The `directory_update` body that notifies the roster (Art. 9.4).
    pub fn to_directory_update(&self, note: Option<String>) -> DirectoryUpdate {
        DirectoryUpdate {
            change: self.roster.statement().change,
            note,
            attestation: Some(Attestation(self.cose.clone())),
        }
    }
}

/// Builds the signed `directory_update` body for a renaming or replacement
/// of an authority (Art. 2), signed by the sending authority's root key.
pub fn authority_change_update(
    authority: &AuthorityId,
    issued: Timestamp,
    change: DirectoryChange,
    note: Option<String>,
    root: &SigningKey,
) -> Result<DirectoryUpdate, RosterError> {
    if matches!(
        change,
        DirectoryChange::SignatoryRoster { .. } | DirectoryChange::KeyRotation { .. }
    ) {
        return Err(RosterError::WrongChange);
    }
    let stmt = DirectoryStatement {
        authority: authority.clone(),
        issued,
        change,
    };
    let cose = stmt.sign(root)?;
    Ok(DirectoryUpdate {
        change: stmt.change,
        note,
        attestation: Some(Attestation(cose)),
    })
}

/// A directory update whose root-key signature has been verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedUpdate {
    /// The signed statement.
    pub statement: DirectoryStatement,
    /// Its signed bytes.
    pub cose: Vec<u8>,
}

/// Verifies a `directory_update` message with the sender's root key: it
/// must carry an attestation signed by that key, naming the sender, issued
/// no later than the message, whose change is the message's change.
pub fn verify_update(msg: &Message, root: Option<&VerifyingKey>) -> Result<VerifiedUpdate, RosterError> {
    let MessageBody::DirectoryUpdate(u) = &msg.body else {
        return Err(RosterError::NotDirectoryUpdate);
    };
    let h = &msg.header;
    let root = root.ok_or_else(|| RosterError::NoRootKey(h.from.clone()))?;
    let att = u
        .attestation
        .as_ref()
        .ok_or_else(|| RosterError::NotAttested(h.from.clone()))?;
    let statement = DirectoryStatement::verify(&att.0, root)?;
    if statement.authority != h.from {
        return Err(RosterError::WrongAuthority {
            statement: statement.authority.clone(),
            sender: h.from.clone(),
        });
    }
    if statement.change != u.change {
        return Err(RosterError::ChangeMismatch);
    }
    if statement.issued > h.time {
        return Err(RosterError::IssuedAfterMessage {
            issued: statement.issued,
            message: h.time,
        });
    }
    Ok(VerifiedUpdate {
        statement,
        cose: att.0.clone(),
    })
}

/// What lets a `directory_update` carrying a new signatory roster be
/// signed by a signatory on that roster (Art. 9.4): the root key on the
/// sender's card, and the sender's latest roster on record.
///
/// A new roster may not list any signatory the receiver already trusts
/// (the first roster need not repeat the card's list), so the message that
/// carries it could otherwise never be opened. The roster is authorised by
/// the root key, not by the message's signatory; so when the message's
/// signatory is not trusted yet, [`RosterAnchor::carried_signers`] adds the
/// signatories of the roster it carries, if that roster verifies with the
/// root key, names the sender, is the message's change, was issued no later
/// than the message, and is newer than the latest on record (the same rule
/// as [`RosterHistory::apply`]). Nothing else is trusted this way: other
/// message kinds, other directory changes and stale or repeated rosters
/// need a signatory trusted before the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RosterAnchor<'a> {
    /// The root key on the sender's card.
    pub root: &'a VerifyingKey,
    /// Version and issue time of the sender's latest roster on record, if any.
    pub latest: Option<(u64, Timestamp)>,
}

impl<'a> RosterAnchor<'a> {
    /// The anchor of the peer with `card` given its roster history; `None`
    /// when the card has no root key.
    pub fn of(card: &'a AuthorityCard, history: &RosterHistory) -> Option<Self> {
        let root = card.root_key.as_ref()?;
        Some(Self {
            root,
            latest: history.latest(&card.authority).map(|r| (r.version, r.issued)),
        })
    }

    /// The signers authorised by the new roster `msg` carries (see
    /// [`RosterAnchor`]): each signatory on it, from the later of its
    /// `valid_from` and the roster's `issued` to its `valid_until`. `None`
    /// when `msg` is not a root-signed directory update carrying a newer
    /// roster of its sender.
    pub fn carried_signers(&self, msg: &Message) -> Option<Vec<TrustedSigner>> {
        let MessageBody::DirectoryUpdate(DirectoryUpdate {
            change: DirectoryChange::SignatoryRoster { .. },
            ..
        }) = &msg.body
        else {
            return None;
        };
        let v = verify_update(msg, Some(self.root)).ok()?;
        let r = Roster::from_statement(&v.statement).ok()?;
        if r.authority != msg.header.from {
            return None;
        }
        if let Some((version, issued)) = self.latest {
            if r.version <= version || r.issued < issued {
                return None;
            }
        }
        Some(
            r.signatories
                .iter()
                .filter_map(|s| {
                    let key = VerifyingKey::from_bytes(s.public_key.as_bytes()).ok()?;
                    let from = s.valid_from.max(r.issued);
                    if s.valid_until.is_some_and(|u| u < from) {
                        return None;
                    }
                    Some(TrustedSigner {
                        authority: r.authority.clone(),
                        key,
                        valid_from: Some(from),
                        valid_until: s.valid_until,
                    })
                })
                .collect(),
        )
    }
}

/// What [`RosterHistory::apply`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RosterApplied {
    /// A new version was added.
    Added {
        /// The version.
        version: u64,
    },
    /// The same version with the same content was already on record.
    Unchanged,
}

/// Why a signatory is not accepted at a time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignerError {
    /// No roster of the authority was in force at that time.
    #[error("no signatory roster of {authority} was in force at {time}")]
    NoRoster {
        /// The authority.
        authority: AuthorityId,
        /// The time.
        time: Timestamp,
    },
    /// The key is not on the roster in force at that time.
    #[error("the key is not on roster version {version} of {authority}, in force at {time}")]
    NotOnRoster {
        /// The authority.
        authority: AuthorityId,
        /// The roster version in force.
        version: u64,
        /// The time.
        time: Timestamp,
    },
    /// The signatory is listed but not valid at that time.
    #[error("signatory {signatory} of {authority} was not valid at {time}")]
    NotValid {
        /// The authority.
        authority: AuthorityId,
        /// The signatory id.
        signatory: SignatoryId,
        /// The time.
        time: Timestamp,
    },
}

impl SignerError {
    /// Always `signer_not_authorised`.
    pub fn reject_code(&self) -> RejectCode {
        RejectCode::SignerNotAuthorised
    }
}

/// Every roster version of every authority (Art. 9.3, 9.4).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterHistory {
    by_authority: BTreeMap<AuthorityId, Vec<SignedRoster>>,
}

impl RosterHistory {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a verified roster. It must have a higher version than every
    /// roster on record for its authority and not be issued before the
    /// latest; the same version with the same content again changes nothing.
    pub fn apply(&mut self, r: SignedRoster) -> Result<RosterApplied, RosterError> {
        let list = self.by_authority.entry(r.roster.authority.clone()).or_default();
        if let Some(last) = list.last() {
            if let Some(same) = list.iter().find(|x| x.roster.version == r.roster.version) {
                if same.roster == r.roster {
                    return Ok(RosterApplied::Unchanged);
                }
            }
            if r.roster.version <= last.roster.version || r.roster.issued < last.roster.issued {
                return Err(RosterError::Stale {
                    authority: r.roster.authority.clone(),
                    version: r.roster.version,
                    known: last.roster.version,
                });
            }
        }
        let version = r.roster.version;
        list.push(r);
        Ok(RosterApplied::Added { version })
    }

    /// Every version of an authority's roster, oldest first.
    pub fn versions(&self, authority: &AuthorityId) -> &[SignedRoster] {
        self.by_authority.get(authority).map_or(&[], Vec::as_slice)
    }

    /// The latest roster of an authority.
    pub fn latest(&self, authority: &AuthorityId) -> Option<&Roster> {
        self.versions(authority).last().map(SignedRoster::roster)
    }

    /// The roster in force at `t`: the highest version issued at or before `t`.
    pub fn roster_at(&self, authority: &AuthorityId, t: Timestamp) -> Option<&Roster> {
        self.versions(authority)
            .iter()
            .rev()
            .map(SignedRoster::roster)
            .find(|r| r.issued <= t)
    }

    /// Was the holder of `key` an authorised signatory of `authority` at
    /// time `t`? Judged by the roster in force at `t` (old messages stay
    /// verifiable after later changes).
    pub fn signer_at(
        &self,
        authority: &AuthorityId,
        key: &PublicKeyBytes,
        t: Timestamp,
    ) -> Result<&Signatory, SignerError> {
        let r = self
            .roster_at(authority, t)
            .ok_or_else(|| SignerError::NoRoster {
                authority: authority.clone(),
                time: t,
            })?;
        let s = r.signatory_by_key(key).ok_or_else(|| SignerError::NotOnRoster {
            authority: authority.clone(),
            version: r.version,
            time: t,
        })?;
        if t < s.valid_from || s.valid_until.is_some_and(|u| t > u) {
            return Err(SignerError::NotValid {
                authority: authority.clone(),
                signatory: s.id.clone(),
                time: t,
            });
        }
        Ok(s)
    }

    /// Every (key, period) the rosters of `authority` authorise, for
    /// [`crate::signed::SignedMessage::verify`]: one entry per signatory per
    /// version, its period cut to the time that version was in force.
    pub fn trusted_signers(&self, authority: &AuthorityId) -> Vec<TrustedSigner> {
        self.trusted_signers_as(authority, authority, None)
    }

    fn trusted_signers_as(
        &self,
        of: &AuthorityId,
        label: &AuthorityId,
        cut: Option<Timestamp>,
    ) -> Vec<TrustedSigner> {
        let versions = self.versions(of);
        let mut out = Vec::new();
        for (i, sr) in versions.iter().enumerate() {
            let r = sr.roster();
            let next = versions.get(i + 1).map(|n| n.roster().issued);
            let end = match (next, cut) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            for s in &r.signatories {
                let Ok(key) = VerifyingKey::from_bytes(s.public_key.as_bytes()) else {
                    continue;
                };
                let from = s.valid_from.max(r.issued);
                let mut until = s.valid_until;
                if let Some(e) = end {
                    let last = e.plus_secs(-1);
                    until = Some(until.map_or(last, |u| u.min(last)));
                }
                if until.is_some_and(|u| u < from) {
                    continue;
                }
                out.push(TrustedSigner {
                    authority: label.clone(),
                    key,
                    valid_from: Some(from),
                    valid_until: until,
                });
            }
        }
        out
    }

    /// The trusted signers of a peer: its card's signatories until its first
    /// roster is issued (the card is the list exchanged before rosters), its
    /// rosters from then on.
    pub fn trusted_signers_with_card(&self, card: &AuthorityCard) -> Vec<TrustedSigner> {
        let first = self.versions(&card.authority).first().map(|r| r.roster().issued);
        let mut out: Vec<TrustedSigner> = card
            .trusted_signers()
            .into_iter()
            .filter_map(|mut s| {
                if let Some(f) = first {
                    let last = f.plus_secs(-1);
                    s.valid_until = Some(s.valid_until.map_or(last, |u| u.min(last)));
                    if s.valid_from.is_some_and(|v| v > last) {
                        return None;
                    }
                }
                Some(s)
            })
            .collect();
        out.extend(self.trusted_signers(&card.authority));
        out
    }
}

/// Art. 2: a recorded renaming or replacement of an authority.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorityChange {
    /// Renamed (same body, new id and name) or replaced (another body).
    pub replaced: bool,
    /// The id until `effective`.
    pub old: AuthorityId,
    /// The id from `effective` on.
    pub new: AuthorityId,
    /// The new name, in Russian.
    pub new_name: String,
    /// The new name in English, if given.
    pub new_name_en: Option<String>,
    /// When it takes effect.
    pub effective: Timestamp,
    /// The authority that notified it.
    pub notified_by: AuthorityId,
    /// The signed statement.
    #[serde(with = "serde_bytes")]
    pub cose: Vec<u8>,
}

/// Longest dual-key window a key rotation may ask for (`old_until - effective`).
pub const MAX_ROTATION_WINDOW_SECS: i64 = 366 * 24 * 3600;

/// Checks the text form of a TLS pin: `sha256/` and the standard base64 of 32 bytes.
pub fn check_tls_pin(pin: &str) -> Result<[u8; 32], &'static str> {
    use base64::Engine as _;
    let b64 = pin
        .strip_prefix("sha256/")
        .ok_or("a TLS pin starts with \"sha256/\"")?;
    if b64.len() != 44 {
        return Err("a TLS pin is \"sha256/\" and the base64 of 32 bytes");
    }
    let v = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| "a TLS pin is \"sha256/\" and the base64 of 32 bytes")?;
    <[u8; 32]>::try_from(v.as_slice()).map_err(|_| "a TLS pin is \"sha256/\" and the base64 of 32 bytes")
}

/// A verified rotation of a gateway's own keys (see
/// [`DirectoryChange::KeyRotation`]): what [`DirectoryHistory`] records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRotation {
    /// The authority whose gateway keys change.
    pub authority: AuthorityId,
    /// When the root key signed it.
    pub issued: Timestamp,
    /// From when the new keys are used.
    pub effective: Timestamp,
    /// Until when the old TLS pin and node key stay accepted.
    pub old_until: Timestamp,
    /// TLS pin, old and new.
    pub tls_pin: Option<RotatedText>,
    /// Node signing key, old and new.
    pub node_key: Option<RotatedKey>,
    /// age recipient, old and new.
    pub age_recipient: Option<RotatedText>,
    /// The signed statement.
    #[serde(with = "serde_bytes")]
    pub cose: Vec<u8>,
}

impl KeyRotation {
    /// The rotation of a statement, checked: the rotated authority is the
    /// signing one, at least one key, `effective <= old_until` within
    /// [`MAX_ROTATION_WINDOW_SECS`], old and new differ, every key parses.
    pub fn from_statement(s: &DirectoryStatement, cose: Vec<u8>) -> Result<KeyRotation, RosterError> {
        let DirectoryChange::KeyRotation {
            authority,
            effective,
            old_until,
            tls_pin,
            node_key,
            age_recipient,
        } = &s.change
        else {
            return Err(RosterError::WrongChange);
        };
        if authority != &s.authority {
            return Err(RosterError::WrongAuthority {
                statement: s.authority.clone(),
                sender: authority.clone(),
            });
        }
        let r = KeyRotation {
            authority: authority.clone(),
            issued: s.issued,
            effective: *effective,
            old_until: *old_until,
            tls_pin: tls_pin.clone(),
            node_key: node_key.clone(),
            age_recipient: age_recipient.clone(),
            cose,
        };
        r.check()?;
        Ok(r)
    }

    /// Checks the rotation (see [`KeyRotation::from_statement`]).
    pub fn check(&self) -> Result<(), RosterError> {
        let bad = |what: &str| RosterError::InvalidRotation {
            authority: self.authority.clone(),
            what: what.to_string(),
        };
        if self.tls_pin.is_none() && self.node_key.is_none() && self.age_recipient.is_none() {
            return Err(bad("names no key (tls_pin, node_key or age_recipient)"));
        }
        if self.old_until < self.effective {
            return Err(bad("old_until is before effective"));
        }
        if self.old_until.as_unix() - self.effective.as_unix() > MAX_ROTATION_WINDOW_SECS {
            return Err(bad(
                "the window from effective to old_until is longer than 366 days",
            ));
        }
        if let Some(p) = &self.tls_pin {
            check_tls_pin(&p.old).map_err(|_| bad("tls_pin.old is not a pin (sha256/<base64>)"))?;
            check_tls_pin(&p.new).map_err(|_| bad("tls_pin.new is not a pin (sha256/<base64>)"))?;
            if p.old == p.new {
                return Err(bad("tls_pin.new equals tls_pin.old"));
            }
        }
        if let Some(k) = &self.node_key {
            VerifyingKey::from_bytes(k.old.as_bytes())
                .map_err(|_| bad("node_key.old is not an Ed25519 key"))?;
            VerifyingKey::from_bytes(k.new.as_bytes())
                .map_err(|_| bad("node_key.new is not an Ed25519 key"))?;
            if k.old == k.new {
                return Err(bad("node_key.new equals node_key.old"));
            }
        }
        if let Some(a) = &self.age_recipient {
            let old: AgeRecipient = a
                .old
                .parse()
                .map_err(|_| bad("age_recipient.old is not an age recipient (age1…)"))?;
            let new: AgeRecipient = a
                .new
                .parse()
                .map_err(|_| bad("age_recipient.new is not an age recipient (age1…)"))?;
            if old == new {
                return Err(bad("age_recipient.new equals age_recipient.old"));
            }
        }
        Ok(())
    }

    /// The statement the root key signs.
    pub fn statement(&self) -> DirectoryStatement {
        DirectoryStatement {
            authority: self.authority.clone(),
            issued: self.issued,
            change: DirectoryChange::KeyRotation {
                authority: self.authority.clone(),
                effective: self.effective,
                old_until: self.old_until,
                tls_pin: self.tls_pin.clone(),
                node_key: self.node_key.clone(),
                age_recipient: self.age_recipient.clone(),
            },
        }
    }

    /// Checks and signs the rotation with the authority's root key; the
    /// result holds the signed bytes.
    pub fn sign(mut self, root: &SigningKey) -> Result<KeyRotation, RosterError> {
        self.check()?;
        self.cose = self.statement().sign(root)?;
        Ok(self)
    }

    /// Verifies signed bytes with the authority's root key.
    pub fn verify(bytes: &[u8], root: &VerifyingKey) -> Result<KeyRotation, RosterError> {
        let s = DirectoryStatement::verify(bytes, root)?;
        KeyRotation::from_statement(&s, bytes.to_vec())
    }

    /// The `directory_update` body that announces the rotation.
    pub fn to_directory_update(&self, note: Option<String>) -> DirectoryUpdate {
        DirectoryUpdate {
            change: self.statement().change,
            note,
            attestation: Some(Attestation(self.cose.clone())),
        }
    }

    /// Is `t` inside the dual-key window (old keys still accepted)?
    pub fn old_accepted_at(&self, t: Timestamp) -> bool {
        t <= self.old_until
    }

    fn same_change(&self, other: &KeyRotation) -> bool {
        self.authority == other.authority
            && self.issued == other.issued
            && self.statement().change == other.statement().change
    }
}

/// The values accepted at `t` from a starting set and a list of (old, new,
/// old_until) rotations: every new value, and the starting ones, with each
/// old value accepted until its `old_until` and refused after it.
fn accepted_at<T: PartialEq + Clone>(
    base: impl IntoIterator<Item = T>,
    rotations: &[(T, T, Timestamp)],
    t: Timestamp,
) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    let add = |v: &T, out: &mut Vec<T>| {
        if !out.contains(v) {
            out.push(v.clone());
        }
    };
    for v in base {
        add(&v, &mut out);
    }
    for (old, new, until) in rotations {
        add(new, &mut out);
        if t <= *until {
            add(old, &mut out);
        }
    }
    // A value retired by one rotation stays retired unless a later one
    // names it as new again.
    for (i, (old, _, until)) in rotations.iter().enumerate() {
        let renewed = rotations[i + 1..].iter().any(|(_, n, _)| n == old);
        if t > *until && !renewed {
            out.retain(|v| v != old);
        }
    }
    out
}

/// What [`DirectoryHistory::apply_update`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirectoryApplied {
    /// A roster version (see [`RosterApplied`]).
    Roster(RosterApplied),
    /// A renaming or replacement was recorded (or was already on record).
    AuthorityChanged {
        /// The old id.
        old: AuthorityId,
        /// The new id.
        new: AuthorityId,
        /// Whether it was new.
        added: bool,
    },
    /// A key rotation was recorded (or was already on record).
    KeysRotated {
        /// The authority whose keys changed.
        authority: AuthorityId,
        /// Whether it was new.
        added: bool,
    },
}

/// The verified directory of the peers: roster history and the renamings
/// and replacements of authorities (Art. 2, 9.3, 9.4).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryHistory {
    rosters: RosterHistory,
    changes: Vec<AuthorityChange>,
    /// Key rotations of the peers' gateways, by issue time (absent in
    /// snapshots written before rotations existed).
    #[serde(default)]
    rotations: Vec<KeyRotation>,
}

impl DirectoryHistory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Verifies a `directory_update` with the sender's root key (from its
    /// card) and applies it. The profile rules (own roster only, own party's
    /// authorities only) are checked by `Profile::validate` before.
    pub fn apply_update(
        &mut self,
        msg: &Message,
        root: Option<&VerifyingKey>,
    ) -> Result<DirectoryApplied, RosterError> {
        let v = verify_update(msg, root)?;
        self.apply_verified(v)
    }

    /// Applies an update verified by [`verify_update`].
    pub fn apply_verified(&mut self, v: VerifiedUpdate) -> Result<DirectoryApplied, RosterError> {
        let (replaced, old, new, new_name, new_name_en, effective) = match &v.statement.change {
            DirectoryChange::KeyRotation { .. } => {
                let r = KeyRotation::from_statement(&v.statement, v.cose)?;
                let added = !self.rotations.iter().any(|x| x.same_change(&r));
                let authority = r.authority.clone();
                if added {
                    self.rotations.push(r);
                    self.rotations.sort_by_key(|x| (x.issued, x.effective));
                }
                return Ok(DirectoryApplied::KeysRotated { authority, added });
            }
            DirectoryChange::SignatoryRoster { .. } => {
                let roster = Roster::from_statement(&v.statement)?;
                return self
                    .rosters
                    .apply(SignedRoster { roster, cose: v.cose })
                    .map(DirectoryApplied::Roster);
            }
            DirectoryChange::AuthorityRenamed {
                old,
                new,
                new_name,
                new_name_en,
                effective,
            } => (false, old, new, new_name, new_name_en, effective),
            DirectoryChange::AuthorityReplaced {
                old,
                new,
                new_name,
                new_name_en,
                effective,
            } => (true, old, new, new_name, new_name_en, effective),
        };
        let added = !self
            .changes
            .iter()
            .any(|c| &c.old == old && &c.new == new && c.replaced == replaced);
        if added {
            self.changes.push(AuthorityChange {
                replaced,
                old: old.clone(),
                new: new.clone(),
                new_name: new_name.clone(),
                new_name_en: new_name_en.clone(),
                effective: *effective,
                notified_by: v.statement.authority.clone(),
                cose: v.cose,
            });
            self.changes.sort_by_key(|c| c.effective);
        }
        Ok(DirectoryApplied::AuthorityChanged {
            old: old.clone(),
            new: new.clone(),
            added,
        })
    }

    /// The roster history.
    pub fn rosters(&self) -> &RosterHistory {
        &self.rosters
    }
    /// Mutable roster history (to add rosters received out of band).
    pub fn rosters_mut(&mut self) -> &mut RosterHistory {
        &mut self.rosters
    }
    /// Every renaming and replacement, by effective time.
    pub fn changes(&self) -> &[AuthorityChange] {
        &self.changes
    }

    /// Every recorded key rotation of `authority`, by issue time.
    pub fn rotations<'a>(
        &'a self,
        authority: &'a AuthorityId,
    ) -> impl DoubleEndedIterator<Item = &'a KeyRotation> + 'a {
        self.rotations.iter().filter(move |r| &r.authority == authority)
    }

    /// The node signing keys of the peer with `card` accepted at `t`: the
    /// card's key and every rotated-in key; a rotated-out key until the
    /// rotation's `old_until`, not after.
    pub fn accepted_node_keys(&self, card: &AuthorityCard, t: Timestamp) -> Vec<VerifyingKey> {
        let rot: Vec<(PublicKeyBytes, PublicKeyBytes, Timestamp)> = self
            .rotations(&card.authority)
            .filter_map(|r| r.node_key.as_ref().map(|k| (k.old, k.new, r.old_until)))
            .collect();
        let own = PublicKeyBytes(card.node_key.to_bytes());
        if rot.is_empty() {
            return vec![card.node_key];
        }
        // The card's key is already a point; only rotated-in keys are
        // decompressed (some tens of µs each, on every envelope otherwise).
        accepted_at([own], &rot, t)
            .iter()
            .filter_map(|k| {
                if *k == own {
                    Some(card.node_key)
                } else {
                    VerifyingKey::from_bytes(k.as_bytes()).ok()
                }
            })
            .collect()
    }

    /// The TLS pins of the peer with `card` accepted at `t` (text form), by
    /// the same rule as [`DirectoryHistory::accepted_node_keys`].
    pub fn accepted_tls_pins(&self, card: &AuthorityCard, t: Timestamp) -> Vec<String> {
        let rot: Vec<(String, String, Timestamp)> = self
            .rotations(&card.authority)
            .filter_map(|r| {
                r.tls_pin
                    .as_ref()
                    .map(|p| (p.old.clone(), p.new.clone(), r.old_until))
            })
            .collect();
        accepted_at(card.tls_pin.clone(), &rot, t)
    }

    /// The age recipients to seal to for the peer with `card` at `t`: the
    /// new recipient of the latest age rotation effective at or before `t`,
    /// else the card's recipients.
    pub fn age_recipients_at(&self, card: &AuthorityCard, t: Timestamp) -> Vec<AgeRecipient> {
        let latest = self
            .rotations(&card.authority)
            .filter(|r| r.effective <= t)
            .filter_map(|r| r.age_recipient.as_ref())
            .next_back();
        match latest.and_then(|a| a.new.parse::<AgeRecipient>().ok()) {
            Some(r) => vec![r],
            None => card.age_recipients.clone(),
        }
    }

    /// The peer's card as it applies at `t`: the age recipients to seal to
    /// and the current node key and pin (the latest rotated-in ones).
    /// Checks that accept old keys too use the `accepted_*` functions.
    pub fn effective_card(&self, card: &AuthorityCard, t: Timestamp) -> AuthorityCard {
        let mut c = card.clone();
        c.age_recipients = self.age_recipients_at(card, t);
        for r in self.rotations(&card.authority).filter(|r| r.effective <= t) {
            if let Some(k) = r
                .node_key
                .as_ref()
                .and_then(|k| VerifyingKey::from_bytes(k.new.as_bytes()).ok())
            {
                c.node_key = k;
            }
            if let Some(p) = &r.tls_pin {
                c.tls_pin = Some(p.new.clone());
            }
        }
        c
    }

    /// The id under which the authority known as `id` acts at `t`, after
    /// every renaming or replacement effective at or before `t`.
    pub fn resolve(&self, id: &AuthorityId, t: Timestamp) -> AuthorityId {
        let mut cur = id.clone();
        // Each change is followed at most once: no cycles.
        let mut used = vec![false; self.changes.len()];
        while let Some(i) = self
            .changes
            .iter()
            .enumerate()
            .position(|(i, c)| !used[i] && c.old == cur && c.effective <= t)
        {
            used[i] = true;
            cur = self.changes[i].new.clone();
        }
        cur
    }

    /// Every earlier id of an authority (renamings and replacements leading to `id`).
    pub fn former_ids(&self, id: &AuthorityId) -> Vec<AuthorityId> {
        let mut out: Vec<AuthorityId> = Vec::new();
        let mut frontier = vec![id.clone()];
        while let Some(cur) = frontier.pop() {
            for c in self.changes.iter().filter(|c| c.new == cur) {
                if &c.old != id && !out.contains(&c.old) {
                    out.push(c.old.clone());
                    frontier.push(c.old.clone());
                }
            }
        }
        out
    }

    /// The trusted signers for messages from `authority`: its own rosters;
    /// for a renamed authority (not a replaced one: that is another body
    /// with its own signatories) also the rosters under its former ids,
    /// re-labelled with the new id, until its first roster under the new id.
    pub fn trusted_signers(&self, authority: &AuthorityId) -> Vec<TrustedSigner> {
        let mut out = self.rosters.trusted_signers(authority);
        let cut = self
            .rosters
            .versions(authority)
            .first()
            .map(|r| r.roster().issued);
        let mut frontier = vec![authority.clone()];
        let mut seen = vec![authority.clone()];
        while let Some(cur) = frontier.pop() {
            for c in self.changes.iter().filter(|c| c.new == cur && !c.replaced) {
                if seen.contains(&c.old) {
                    continue;
                }
                seen.push(c.old.clone());
                frontier.push(c.old.clone());
                out.extend(self.rosters.trusted_signers_as(&c.old, authority, cut));
            }
        }
        out
    }
}
