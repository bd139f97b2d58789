//! Purpose binding and onward transfer (Art. 11.2, 11.3), as a pure ledger.
//!
//! - Art. 11.2: the results of a request may be used only for the purpose
//!   they were requested and provided for, unless the providing party
//!   consents to another purpose.
//! - Art. 11.3: information received under the agreement may be passed to a
//!   third party only with the prior consent of the party that provided it.
//!
//! The [`ConsentLedger`] records which message provided data (a
//! [`Provision`]: who provided it, to whom, for which purpose), the consent
//! requests about such data and their decisions. [`ConsentLedger::check`]
//! answers whether a use is allowed; its error names the consent that is
//! missing: for which data, from which authority, for which recipient or
//! purpose, and whether it was never asked, is pending or was refused.
//!
//! Matching is exact: a consent to pass data to a third party matches when
//! its `recipient` is the receiving authority's id (for example `by.mvd`),
//! its `country` (if given) is that authority's state, and its `purpose` is
//! the purpose of the transfer; a consent to another purpose matches that
//! purpose. Texts are compared trimmed, and the ledger keeps only their
//! SHA-256, never the texts themselves, so it holds no message content.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::cbor::{self, CborError};
use crate::model::{
    AuthorityId, ConsentScope, CountryCode, Digest, Id, Message, MessageBody, MessageKind, Timestamp,
};
use crate::receipt::RejectCode;
use crate::workflow::MAX_STATE_LEN;

fn text_digest(s: &str) -> Digest {
    Digest::of(s.trim().as_bytes())
}

/// Data provided by one authority to another in one message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provision {
    /// The message that carried the data.
    pub message: Id,
    /// The authority that provided it.
    pub provider: AuthorityId,
    /// The state of the providing party.
    pub provider_country: CountryCode,
    /// The authority it was provided to.
    pub recipient: AuthorityId,
    /// SHA-256 of the purpose it was requested and provided for (Art. 11.2);
    /// `None` for information sent without a request (Art. 8), which is not
    /// bound to a purpose under Art. 11.2.
    pub purpose: Option<Digest>,
    /// Header time of the message.
    pub time: Timestamp,
}

/// What a consent allows (the texts as SHA-256).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentFor {
    /// Art. 11.2: use for another purpose.
    OtherPurpose {
        /// SHA-256 of the purpose.
        purpose: Digest,
    },
    /// Art. 11.3: passing to a third party.
    ThirdParty {
        /// SHA-256 of the recipient (an authority id for transfers through Konvert).
        recipient: Digest,
        /// State of the recipient, if named.
        country: Option<CountryCode>,
        /// SHA-256 of the purpose of the recipient's use.
        purpose: Digest,
    },
}

impl From<&ConsentScope> for ConsentFor {
    fn from(s: &ConsentScope) -> Self {
        match s {
            ConsentScope::OtherPurpose { purpose } => Self::OtherPurpose {
                purpose: text_digest(purpose),
            },
            ConsentScope::ThirdParty {
                country,
                recipient,
                purpose,
            } => Self::ThirdParty {
                recipient: text_digest(recipient),
                country: *country,
                purpose: text_digest(purpose),
            },
        }
    }
}

/// The decision on a consent request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentDecisionRecord {
    /// The decision's message id.
    pub message: Id,
    /// Granted or refused.
    pub granted: bool,
    /// Granted on conditions (their text stays in the message).
    pub conditional: bool,
    /// Header time of the decision.
    pub time: Timestamp,
}

/// A consent request and its decision, if any.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentRecord {
    /// The consent request's message id.
    pub request: Id,
    /// The message whose data is concerned.
    pub data: Id,
    /// Who asks (the holder of the data).
    pub asked_by: AuthorityId,
    /// Who decides (the provider of the data).
    pub provider: AuthorityId,
    /// What is asked for.
    pub scope: ConsentFor,
    /// Header time of the request.
    pub time: Timestamp,
    /// The decision, once made.
    pub decision: Option<ConsentDecisionRecord>,
}

/// An intended use of received data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use<'a> {
    /// Use by the holder for `purpose` (Art. 11.2).
    Purpose {
        /// The purpose.
        purpose: &'a str,
    },
    /// Passing the data to another authority (Art. 11.3).
    Transfer {
        /// The receiving authority.
        recipient: &'a AuthorityId,
        /// Its state.
        country: CountryCode,
        /// The purpose of the transfer (the receiver's use).
        purpose: &'a str,
    },
}

/// The consent a use would need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wanted {
    /// Art. 11.2: consent to use the data for another purpose.
    OtherPurpose,
    /// Art. 11.3: consent to pass the data to this authority.
    ThirdParty {
        /// The third-party authority.
        recipient: AuthorityId,
        /// Its state.
        country: CountryCode,
    },
}

/// Where the missing consent stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MissingStatus {
    /// No matching consent request is on record.
    NotRequested,
    /// A matching request awaits its decision.
    Pending {
        /// The consent request.
        request: Id,
    },
    /// A matching request was refused.
    Refused {
        /// The consent request.
        request: Id,
    },
}

/// A use that needs a consent that is not on record. Names the data, the
/// providing authority and the recipient, never a purpose text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsentMissing {
    /// The message that provided the data.
    pub data: Id,
    /// The authority whose consent is needed.
    pub provider: AuthorityId,
    /// What would need a consent.
    pub wanted: Wanted,
    /// Whether it was asked.
    pub status: MissingStatus,
}

impl fmt::Display for ConsentMissing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.wanted {
            Wanted::OtherPurpose => write!(
                f,
                "no consent of {} on record to use the data of message {} for a purpose other than the one it was provided for (Art. 11.2)",
                self.provider, self.data
            )?,
            Wanted::ThirdParty { recipient, country } => write!(
                f,
                "no consent of {} on record to pass the data of message {} to {recipient} ({country}) for this purpose (Art. 11.3)",
                self.provider, self.data
            )?,
        }
        match self.status {
            MissingStatus::NotRequested => write!(f, "; no consent request has been made"),
            MissingStatus::Pending { request } => {
                write!(f, "; consent request {request} awaits its decision")
            }
            MissingStatus::Refused { request } => write!(f, "; consent request {request} was refused"),
        }
    }
}

/// Why a consent message or a use was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConsentError {
    /// The use needs a consent that is not on record.
    #[error("{0}")]
    Missing(ConsentMissing),
    /// The data (message) is not on record as provided to this side.
    #[error("message {0} is not on record as having provided data")]
    UnknownData(Id),
    /// A consent decision answers an unknown consent request.
    #[error("consent request {0} is not on record")]
    UnknownRequest(Id),
    /// The consent request does not go from the holder to the provider of
    /// the data, or the decision not from the provider back.
    #[error("{kind} from {from} to {to} does not go between the holder and the provider of the data")]
    NotAddressee {
        /// The kind.
        kind: MessageKind,
        /// Its sender.
        from: AuthorityId,
        /// Its recipient.
        to: AuthorityId,
    },
    /// A second decision on the same consent request.
    #[error("consent request {0} has already been decided")]
    AlreadyDecided(Id),
    /// Not a consent request or decision.
    #[error("a {0} is not a consent request or decision")]
    NotConsent(MessageKind),
    /// A consent decision without `in_reply_to`.
    #[error("consent_decision: in_reply_to is missing")]
    MissingReplyTo,
}

impl ConsentError {
    /// The receipt code for a received message refused for this reason.
    pub fn reject_code(&self) -> RejectCode {
        match self {
            Self::Missing(_) => RejectCode::ConsentMissing,
            Self::UnknownData(_) | Self::UnknownRequest(_) => RejectCode::UnknownCase,
            Self::NotAddressee { .. } => RejectCode::NotAddressee,
            Self::AlreadyDecided(_) => RejectCode::AlreadyAnswered,
            Self::NotConsent(_) => RejectCode::WrongState,
            Self::MissingReplyTo => RejectCode::InvalidMessage,
        }
    }
}

/// Provisions of data, consent requests and decisions of one gateway.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentLedger {
    provisions: BTreeMap<Id, Provision>,
    requests: BTreeMap<Id, ConsentRecord>,
}

impl ConsentLedger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that a message provided data (idempotent per message id).
    pub fn record_provision(&mut self, p: Provision) {
        self.provisions.entry(p.message).or_insert(p);
    }

    /// Records the data a message carries, if its kind carries data: a
    /// request (bound to its purpose), a response (bound to the purpose it
    /// carries), a clarification answer (bound to `case_purpose`, the
    /// purpose of its request) or unsolicited information (not bound).
    /// Returns whether something was recorded. Both sides call it, the
    /// provider on sending and the holder on receiving.
    pub fn record_message(
        &mut self,
        msg: &Message,
        provider_country: CountryCode,
        case_purpose: Option<&str>,
    ) -> bool {
        let purpose = match &msg.body {
            MessageBody::Request(r) => Some(text_digest(&r.purpose)),
            MessageBody::Response(r) => Some(text_digest(&r.purpose)),
            MessageBody::ClarificationAnswer(_) => case_purpose.map(text_digest),
            MessageBody::UnsolicitedInformation(_) => None,
            _ => return false,
        };
        let h = &msg.header;
        self.record_provision(Provision {
            message: h.id,
            provider: h.from.clone(),
            provider_country,
            recipient: h.to.clone(),
            purpose,
            time: h.time,
        });
        true
    }

    /// Checks a consent request or decision as [`ConsentLedger::apply`]
    /// would, without changing anything.
    pub fn check_apply(&self, msg: &Message) -> Result<(), ConsentError> {
        let h = &msg.header;
        match &msg.body {
            MessageBody::ConsentRequest(r) => {
                if self.requests.contains_key(&h.id) {
                    return Ok(());
                }
                let p = self
                    .provisions
                    .get(&r.message)
                    .ok_or(ConsentError::UnknownData(r.message))?;
                if h.from != p.recipient || h.to != p.provider {
                    return Err(ConsentError::NotAddressee {
                        kind: msg.kind(),
                        from: h.from.clone(),
                        to: h.to.clone(),
                    });
                }
                Ok(())
            }
            MessageBody::ConsentDecision(_) => {
                let r = h.in_reply_to.ok_or(ConsentError::MissingReplyTo)?;
                let rec = self.requests.get(&r).ok_or(ConsentError::UnknownRequest(r))?;
                if rec.decision.as_ref().is_some_and(|x| x.message == h.id) {
                    return Ok(());
                }
                if h.from != rec.provider || h.to != rec.asked_by {
                    return Err(ConsentError::NotAddressee {
                        kind: msg.kind(),
                        from: h.from.clone(),
                        to: h.to.clone(),
                    });
                }
                if rec.decision.is_some() {
                    return Err(ConsentError::AlreadyDecided(r));
                }
                Ok(())
            }
            _ => Err(ConsentError::NotConsent(msg.kind())),
        }
    }

    /// Applies a consent request or decision (sent or received); checks
    /// that it concerns data on record and goes between the right authorities.
    pub fn apply(&mut self, msg: &Message) -> Result<(), ConsentError> {
        self.check_apply(msg)?;
        let h = &msg.header;
        match &msg.body {
            MessageBody::ConsentRequest(r) => {
                self.requests.entry(h.id).or_insert_with(|| ConsentRecord {
                    request: h.id,
                    data: r.message,
                    asked_by: h.from.clone(),
                    provider: h.to.clone(),
                    scope: ConsentFor::from(&r.scope),
                    time: h.time,
                    decision: None,
                });
            }
            MessageBody::ConsentDecision(d) => {
                // check_apply: in_reply_to names a request on record.
                if let Some(rec) = h.in_reply_to.and_then(|r| self.requests.get_mut(&r)) {
                    rec.decision.get_or_insert_with(|| ConsentDecisionRecord {
                        message: h.id,
                        granted: d.granted,
                        conditional: d.conditions.as_deref().is_some_and(|c| !c.trim().is_empty()),
                        time: h.time,
                    });
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether the data of message `data` may be put to `use_` at time `at`.
    ///
    /// - Use for the purpose the data was provided for, or of data sent
    ///   without a request: allowed.
    /// - Passing it to an authority of the providing party's own state, or
    ///   back to the provider: allowed (not a third party).
    /// - Otherwise a matching consent granted by the provider, decided at
    ///   or before `at`, must be on record.
    pub fn check(&self, data: &Id, use_: &Use<'_>, at: Timestamp) -> Result<(), ConsentError> {
        let p = self
            .provisions
            .get(data)
            .ok_or(ConsentError::UnknownData(*data))?;
        let (wanted, needed) = match *use_ {
            Use::Purpose { purpose } => {
                let d = text_digest(purpose);
                if p.purpose.is_none_or(|x| x == d) {
                    return Ok(());
                }
                (Wanted::OtherPurpose, ConsentFor::OtherPurpose { purpose: d })
            }
            Use::Transfer {
                recipient,
                country,
                purpose,
            } => {
                if country == p.provider_country || recipient == &p.provider {
                    return Ok(());
                }
                (
                    Wanted::ThirdParty {
                        recipient: recipient.clone(),
                        country,
                    },
                    ConsentFor::ThirdParty {
                        recipient: text_digest(recipient.as_str()),
                        country: Some(country),
                        purpose: text_digest(purpose),
                    },
                )
            }
        };
        let matches = |c: &ConsentFor| match (c, &needed) {
            (ConsentFor::OtherPurpose { purpose: a }, ConsentFor::OtherPurpose { purpose: b }) => a == b,
            (
                ConsentFor::ThirdParty {
                    recipient: r1,
                    country: c1,
                    purpose: p1,
                },
                ConsentFor::ThirdParty {
                    recipient: r2,
                    country: c2,
                    purpose: p2,
                },
            ) => r1 == r2 && p1 == p2 && (c1.is_none() || c1 == c2),
            _ => false,
        };
        let mut status = MissingStatus::NotRequested;
        for rec in self
            .requests
            .values()
            .filter(|rec| &rec.data == data && rec.provider == p.provider && matches(&rec.scope))
        {
            match &rec.decision {
                Some(d) if d.granted && d.time <= at => return Ok(()),
                Some(d) if !d.granted => {
                    if status == MissingStatus::NotRequested {
                        status = MissingStatus::Refused { request: rec.request };
                    }
                }
                _ => status = MissingStatus::Pending { request: rec.request },
            }
        }
        Err(ConsentError::Missing(ConsentMissing {
            data: *data,
            provider: p.provider.clone(),
            wanted,
            status,
        }))
    }

    /// Whether a message from `sender` to `recipient` (an authority of
    /// state `country`), sent for `purpose`, may carry the data of message
    /// `data` at time `at`: Art. 11.2 and 11.3 together, as the sending
    /// gateway checks every source a submission declares.
    ///
    /// - Data `sender` provided itself is its own: Art. 11 binds the
    ///   receiving party only.
    /// - To a third party (neither the provider nor an authority of the
    ///   provider's state): the provider's consent to pass it to
    ///   `recipient` for `purpose` ([`Use::Transfer`]). That consent names
    ///   the purpose of the transfer, so it also settles Art. 11.2.
    /// - Otherwise (back to the provider, or to another authority of its
    ///   state): `purpose` must be the one the data was provided for, or
    ///   the provider must have consented to this other purpose
    ///   ([`Use::Purpose`], Art. 11.2).
    pub fn check_outgoing(
        &self,
        data: &Id,
        sender: &AuthorityId,
        recipient: &AuthorityId,
        country: CountryCode,
        purpose: &str,
        at: Timestamp,
    ) -> Result<(), ConsentError> {
        let p = self
            .provisions
            .get(data)
            .ok_or(ConsentError::UnknownData(*data))?;
        if &p.provider == sender {
            return Ok(());
        }
        let third_party = country != p.provider_country && recipient != &p.provider;
        let use_ = if third_party {
            Use::Transfer {
                recipient,
                country,
                purpose,
            }
        } else {
            Use::Purpose { purpose }
        };
        self.check(data, &use_, at)
    }

    /// Checks [`ConsentLedger::check`] for every message in `sources`
    /// (the received messages whose data an outgoing message carries);
    /// the first refusal is returned.
    pub fn check_all(&self, sources: &[Id], use_: &Use<'_>, at: Timestamp) -> Result<(), ConsentError> {
        sources.iter().try_for_each(|s| self.check(s, use_, at))
    }

    /// A provision by message id.
    pub fn provision(&self, message: &Id) -> Option<&Provision> {
        self.provisions.get(message)
    }
    /// Every consent request on record, by id.
    pub fn consents(&self) -> impl Iterator<Item = &ConsentRecord> {
        self.requests.values()
    }
    /// A consent request (with its decision, if any) by the request's id.
    pub fn request(&self, id: &Id) -> Option<&ConsentRecord> {
        self.requests.get(id)
    }
    /// Every provision on record, by message id.
    pub fn provisions(&self) -> impl Iterator<Item = &Provision> {
        self.provisions.values()
    }
    /// A ledger from its parts (as kept record by record by a gateway).
    pub fn from_parts(
        provisions: impl IntoIterator<Item = Provision>,
        requests: impl IntoIterator<Item = ConsentRecord>,
    ) -> ConsentLedger {
        ConsentLedger {
            provisions: provisions.into_iter().map(|p| (p.message, p)).collect(),
            requests: requests.into_iter().map(|r| (r.request, r)).collect(),
        }
    }
    /// Forgets message `id` altogether (its metadata has gone): its
    /// provision, a consent request with that id, and the consent requests
    /// about its data. Returns the ids whose records changed (`id` and those
    /// requests').
    pub fn forget_message(&mut self, id: &Id) -> Vec<Id> {
        let mut touched = vec![*id];
        self.provisions.remove(id);
        self.requests.remove(id);
        self.requests.retain(|r, rec| {
            let about = &rec.data == id;
            if about {
                touched.push(*r);
            }
            !about
        });
        touched
    }

    /// Removes the provision of a destroyed message and the consents about it (Art. 11.5).
    pub fn forget(&mut self, message: &Id) {
        self.provisions.remove(message);
        self.requests.retain(|_, r| &r.data != message);
    }

    /// The ledger as deterministic CBOR.
    pub fn to_cbor(&self) -> Result<Vec<u8>, CborError> {
        cbor::to_deterministic_vec(self)
    }
    /// A ledger from [`ConsentLedger::to_cbor`] bytes.
    pub fn from_cbor(bytes: &[u8]) -> Result<ConsentLedger, CborError> {
        cbor::from_slice(bytes, MAX_STATE_LEN)
    }
}
