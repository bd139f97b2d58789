//! The cooperation procedure of the agreements (Art. 8, 9.5, 10, 11.1) as a
//! pure state machine: request cases, their deadlines and the messages that
//! move them.
//!
//! Every request opens a **case** whose id is the request's message id; every
//! later message of the case names an earlier one in `in_reply_to` (or, for
//! an authenticity query, in its body), so a case is found by following that
//! reference. Both gateways of an exchange run the same machine on the same
//! messages — the requester's gateway on what it sends and receives, the
//! requested gateway likewise — and so agree on the state. Which side sent a
//! message is read from its signed header (`from`, `to`), never from the
//! caller, so the two views cannot disagree about it.
//!
//! ```text
//!            request (opens; deadline = receipt day + answer_deadline_days)
//!                 │
//!                 ▼
//!   ┌──────── received ──progress_notice──▶ in_progress ◀─┐
//!   │             │                            │          │ decision: proceed
//!   │  clarification_request            confidentiality_notice
//!   │             ▼                            ▼          │
//!   │   clarification_requested      confidentiality_notified ──decision: withdraw──▶ withdrawn
//!   │             │ clarification_answer (last open one)
//!   │             ▼
//!   │         clarified
//!   │
//!   │  response: postponed (Art. 10.2) ──▶ postponed (still open, deadline runs)
//!   └─ response: fulfilled / partially_fulfilled ──▶ answered
//!      response: refused (Art. 10.4)              ──▶ refused
//!                       answered / refused / withdrawn ──close (local)──▶ closed
//! ```
//!
//! The transitions are chosen so that messages crossing each other in
//! flight lead both sides to the same state: a clarification answer is
//! accepted in every state while its clarification request is open (it
//! moves the state only out of `clarification_requested`), and a progress
//! notice is recorded in every state but `closed`. A gateway applies a
//! message it receives before sending the positive receipt, and a message it
//! sends once the peer's receipt accepted it; [`CaseBook::check`] is the
//! same test without the change, for refusing locally before sealing.
//!
//! Times: a case records the (signed) header time of each message, which is
//! the same on both sides; the deadline runs from the receipt time of the
//! request (the `time` of the requested gateway's signed receipt, which the
//! requesting gateway also holds). The current time is always a parameter.
//!
//! A case holds ids, kinds, times, states, Art. 10.4 grounds and the SHA-256
//! of the request's purpose — no names, no message text — so it can be kept
//! next to the store's case metadata.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use jiff::civil::Date;
use serde::{Deserialize, Serialize};

use crate::cbor::{self, CborError};
use crate::model::{
    AgreementId, AuthorityId, ConfidentialityChoice, Digest, Id, Message, MessageBody, MessageKind, Outcome,
    ProgressKind, RefusalGround, Timestamp,
};
use crate::profile::{NotInForce, Profile};
use crate::receipt::RejectCode;

/// Largest serialised [`Case`] or [`CaseBook`] accepted by the decoders.
pub const MAX_STATE_LEN: usize = 64 * 1024 * 1024;

/// The two sides of a request case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The authority that sent the request.
    Requester,
    /// The authority the request was sent to.
    Requested,
}

impl Side {
    /// The other side.
    pub const fn other(self) -> Side {
        match self {
            Side::Requester => Side::Requested,
            Side::Requested => Side::Requester,
        }
    }
    /// `requester` or `requested`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Side::Requester => "requester",
            Side::Requested => "requested",
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a case ended before it was closed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "ending", rename_all = "snake_case")]
pub enum Ending {
    /// Answered, fully or in part.
    Answered {
        /// Partially fulfilled.
        partial: bool,
    },
    /// Refused (Art. 10.4).
    Refused {
        /// The grounds given.
        grounds: Vec<RefusalGround>,
        /// A partial refusal.
        partial: bool,
    },
    /// Withdrawn by the requester (Art. 11.1).
    Withdrawn,
}

/// The state of a request case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum CaseState {
    /// The request was received; nothing else has happened yet.
    Received,
    /// The requested side is executing it (a progress notice was sent, or
    /// the requester decided to proceed after a confidentiality notice).
    InProgress,
    /// Art. 10.1: the requested side asked for additional information.
    ClarificationRequested,
    /// Every clarification request has been answered.
    Clarified,
    /// Art. 10.2: execution postponed, possibly on conditions. The case stays
    /// open and its deadline keeps running.
    Postponed {
        /// Execution was made subject to conditions.
        conditional: bool,
    },
    /// Art. 11.1: the requested side said the request cannot be executed
    /// without breaking confidentiality; the requester is to decide.
    ConfidentialityNotified {
        /// The notice awaiting a decision.
        notice: Id,
    },
    /// Answered: fulfilled, or partially fulfilled.
    Answered {
        /// Partially fulfilled.
        partial: bool,
    },
    /// Art. 10.4: refused, fully or in part, on one or more grounds.
    Refused {
        /// The grounds (at least one).
        grounds: Vec<RefusalGround>,
        /// A partial refusal (the response says what is refused).
        partial: bool,
    },
    /// Art. 11.1: the requester withdrew the request after a confidentiality notice.
    Withdrawn,
    /// Closed locally after it ended (a case file that may now be destroyed early, Art. 11.5).
    Closed {
        /// How it ended.
        ending: Ending,
    },
}

impl CaseState {
    /// The stable snake_case code (for the store, the API and the CLI):
    /// `received`, `in_progress`, `clarification_requested`, `clarified`,
    /// `postponed`, `confidentiality_notified`, `answered`,
    /// `partially_answered`, `refused`, `partially_refused`, `withdrawn`,
    /// `closed`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Received => "received",
            Self::InProgress => "in_progress",
            Self::ClarificationRequested => "clarification_requested",
            Self::Clarified => "clarified",
            Self::Postponed { .. } => "postponed",
            Self::ConfidentialityNotified { .. } => "confidentiality_notified",
            Self::Answered { partial: false } => "answered",
            Self::Answered { partial: true } => "partially_answered",
            Self::Refused { partial: false, .. } => "refused",
            Self::Refused { partial: true, .. } => "partially_refused",
            Self::Withdrawn => "withdrawn",
            Self::Closed { .. } => "closed",
        }
    }
    /// Whether the request still awaits its answer (the deadline runs).
    pub fn is_open(&self) -> bool {
        matches!(
            self,
            Self::Received
                | Self::InProgress
                | Self::ClarificationRequested
                | Self::Clarified
                | Self::Postponed { .. }
                | Self::ConfidentialityNotified { .. }
        )
    }
    /// Whether the request has a final answer (answered or refused).
    pub fn is_answered(&self) -> bool {
        matches!(self, Self::Answered { .. } | Self::Refused { .. })
    }
    fn ending(&self) -> Option<Ending> {
        match self {
            Self::Answered { partial } => Some(Ending::Answered { partial: *partial }),
            Self::Refused { grounds, partial } => Some(Ending::Refused {
                grounds: grounds.clone(),
                partial: *partial,
            }),
            Self::Withdrawn => Some(Ending::Withdrawn),
            _ => None,
        }
    }
}

impl fmt::Display for CaseState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Why a message does not fit its case (or no case). Texts carry ids,
/// kinds, states and authority ids only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaseError {
    /// The message answers, or concerns, a message that is not on record:
    /// an answer to an unknown request.
    #[error("{kind} refers to message {reference}, which is not on record here")]
    UnknownCase {
        /// The kind of the refused message.
        kind: MessageKind,
        /// The id it refers to.
        reference: Id,
    },
    /// A second final answer, or a second answer to the same clarification
    /// request, confidentiality notice or authenticity query.
    #[error("case {case}: {kind} refused, message {reference} has already been answered")]
    AlreadyAnswered {
        /// The case, or the message outside a case.
        case: Id,
        /// The kind of the refused message.
        kind: MessageKind,
        /// The message already answered.
        reference: Id,
    },
    /// The case is withdrawn or closed.
    #[error("case {case} is {state} and takes no more messages ({kind} refused)")]
    CaseClosed {
        /// The case.
        case: Id,
        /// Its state code.
        state: &'static str,
        /// The kind of the refused message.
        kind: MessageKind,
    },
    /// Sent by, or to, an authority other than the one the case expects:
    /// an answer from an authority that was not asked, or a message in the
    /// wrong direction.
    #[error(
        "{kind} from {from} to {to} does not go between the authorities of {case} in the required direction"
    )]
    NotAddressee {
        /// The case, or the message outside a case.
        case: Id,
        /// The kind of the refused message.
        kind: MessageKind,
        /// The sender named in the message.
        from: AuthorityId,
        /// The recipient named in the message.
        to: AuthorityId,
    },
    /// The message does not fit the case's state, or answers the wrong message.
    #[error("case {case} is {state}: a {kind} does not fit ({why})")]
    WrongState {
        /// The case.
        case: Id,
        /// Its state code.
        state: &'static str,
        /// The kind of the refused message.
        kind: MessageKind,
        /// What is expected instead.
        why: &'static str,
    },
    /// Art. 11.2: a response does not carry the purpose of its request.
    #[error("case {case}: the response's purpose is not the purpose of the request (Art. 11.2)")]
    PurposeMismatch {
        /// The case.
        case: Id,
    },
    /// The message is under another agreement than its case or profile.
    #[error("message is under agreement {found}, its case under {expected}")]
    AgreementMismatch {
        /// The agreement of the case (or profile).
        expected: AgreementId,
        /// The agreement the message names.
        found: AgreementId,
    },
    /// Art. 17: the agreement is not in force.
    #[error(transparent)]
    NotInForce(#[from] NotInForce),
    /// A required element of a transition is missing (Art. 10.2, 10.4).
    #[error("{kind}: {what}")]
    Incomplete {
        /// The kind of the refused message.
        kind: MessageKind,
        /// What is missing.
        what: &'static str,
    },
    /// A case can be opened only by a request.
    #[error("a case is opened by a request, not by a {0}")]
    NotARequest(MessageKind),
}

impl CaseError {
    /// The delivery receipt code for a received message refused for this reason.
    pub fn reject_code(&self) -> RejectCode {
        match self {
            Self::UnknownCase { .. } => RejectCode::UnknownCase,
            Self::AlreadyAnswered { .. } => RejectCode::AlreadyAnswered,
            Self::CaseClosed { .. } => RejectCode::CaseClosed,
            Self::NotAddressee { .. } => RejectCode::NotAddressee,
            Self::WrongState { .. } | Self::NotARequest(_) => RejectCode::WrongState,
            Self::PurposeMismatch { .. } => RejectCode::PurposeMismatch,
            Self::AgreementMismatch { .. } | Self::Incomplete { .. } => RejectCode::InvalidMessage,
            Self::NotInForce(e) => e.reject_code(),
        }
    }
}

/// One message of a case, as recorded on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseEntry {
    /// The message id.
    pub message: Id,
    /// Its kind.
    pub kind: MessageKind,
    /// Which side sent it.
    pub by: Side,
    /// Its (signed) header time.
    pub time: Timestamp,
    /// The state code of the case after it.
    pub state: String,
}

/// Art. 10.1: a progress notice recorded on its case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressRecord {
    /// The notice's message id (its text stays in the stored message).
    pub message: Id,
    /// Its header time.
    pub time: Timestamp,
    /// Obstacle or delay.
    pub progress: ProgressKind,
    /// When results are expected, if said.
    pub expected_by: Option<Date>,
}

/// Art. 9.5: an authenticity query and, once answered, its result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryRecord {
    /// The query's message id.
    pub query: Id,
    /// The message in doubt.
    pub about: Id,
    /// Who asked.
    pub asked_by: AuthorityId,
    /// Who is asked (the sender of the message in doubt).
    pub asked: AuthorityId,
    /// `None` while unanswered; then whether authenticity was confirmed.
    pub confirmed: Option<bool>,
}

/// What applying a message did to its case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The case.
    pub case: Id,
    /// The message applied.
    pub message: Id,
    /// Its kind.
    pub kind: MessageKind,
    /// The side that sent it.
    pub by: Side,
    /// State before.
    pub from: CaseState,
    /// State after (equal to `from` for a message recorded without a change of state).
    pub to: CaseState,
}

impl Transition {
    /// Whether the state changed.
    pub fn changed(&self) -> bool {
        self.from != self.to
    }
}

/// The two authorities of a case, with ids they had before a renaming (Art. 2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct PartyIds {
    current: AuthorityId,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    former: Vec<AuthorityId>,
}

impl PartyIds {
    fn new(id: AuthorityId) -> Self {
        Self {
            current: id,
            former: Vec::new(),
        }
    }
    fn is(&self, id: &AuthorityId) -> bool {
        &self.current == id || self.former.contains(id)
    }
}

/// A request case (Art. 8–11). Built by [`Case::open`], moved by [`Case::apply`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Case {
    id: Id,
    agreement: AgreementId,
    profile_version: u32,
    requester: PartyIds,
    requested: PartyIds,
    requested_at: Timestamp,
    received_at: Timestamp,
    deadline: Timestamp,
    purpose: Digest,
    state: CaseState,
    open_clarifications: BTreeSet<Id>,
    answered_clarifications: BTreeSet<Id>,
    decided_notices: BTreeSet<Id>,
    queries: Vec<QueryRecord>,
    progress: Vec<ProgressRecord>,
    history: Vec<CaseEntry>,
    closed_at: Option<Timestamp>,
}

/// SHA-256 of a purpose text, trimmed: what a case keeps of the purpose (Art. 11.2).
pub fn purpose_digest(purpose: &str) -> Digest {
    Digest::of(purpose.trim().as_bytes())
}

impl Case {
    /// Opens the case of a request received (by the requested gateway) at
    /// `received_at`, under `profile` (the profile version in force for the
    /// request). The deadline is `profile.answer_deadline(received_at)`
    /// (Art. 10.3: by default 30 calendar days from the day of receipt).
    pub fn open(request: &Message, received_at: Timestamp, profile: &Profile) -> Result<Case, CaseError> {
        let MessageBody::Request(r) = &request.body else {
            return Err(CaseError::NotARequest(request.kind()));
        };
        let h = &request.header;
        if h.agreement != profile.id {
            return Err(CaseError::AgreementMismatch {
                expected: profile.id.clone(),
                found: h.agreement.clone(),
            });
        }
        let state = CaseState::Received;
        Ok(Case {
            id: h.id,
            agreement: h.agreement.clone(),
            profile_version: profile.version(),
            requester: PartyIds::new(h.from.clone()),
            requested: PartyIds::new(h.to.clone()),
            requested_at: h.time,
            received_at,
            deadline: profile.answer_deadline(received_at),
            purpose: purpose_digest(&r.purpose),
            history: vec![CaseEntry {
                message: h.id,
                kind: MessageKind::Request,
                by: Side::Requester,
                time: h.time,
                state: state.code().to_owned(),
            }],
            state,
            open_clarifications: BTreeSet::new(),
            answered_clarifications: BTreeSet::new(),
            decided_notices: BTreeSet::new(),
            queries: Vec::new(),
            progress: Vec::new(),
            closed_at: None,
        })
    }

    /// The case id: the message id of its request.
    pub fn id(&self) -> Id {
        self.id
    }
    /// The agreement.
    pub fn agreement(&self) -> &AgreementId {
        &self.agreement
    }
    /// The profile version the case was opened under (Art. 16); it keeps it.
    pub fn profile_version(&self) -> u32 {
        self.profile_version
    }
    /// The requesting authority (its current id).
    pub fn requester(&self) -> &AuthorityId {
        &self.requester.current
    }
    /// The requested authority (its current id).
    pub fn requested(&self) -> &AuthorityId {
        &self.requested.current
    }
    /// The authority of a side.
    pub fn authority(&self, side: Side) -> &AuthorityId {
        match side {
            Side::Requester => self.requester(),
            Side::Requested => self.requested(),
        }
    }
    /// Header time of the request.
    pub fn requested_at(&self) -> Timestamp {
        self.requested_at
    }
    /// When the request was received (start of the deadline).
    pub fn received_at(&self) -> Timestamp {
        self.received_at
    }
    /// The answer deadline (Art. 10.3), whatever the state.
    pub fn deadline(&self) -> Timestamp {
        self.deadline
    }
    /// The deadline while it runs (the case is open), `None` once the
    /// request is answered, refused, withdrawn or closed: what the store's
    /// `case_update` takes.
    pub fn tracked_deadline(&self) -> Option<Timestamp> {
        self.state.is_open().then_some(self.deadline)
    }
    /// Whether the case is open and its deadline passed at `now`.
    pub fn is_overdue(&self, now: Timestamp) -> bool {
        self.state.is_open() && now > self.deadline
    }
    /// SHA-256 of the request's purpose (trimmed).
    pub fn purpose(&self) -> &Digest {
        &self.purpose
    }
    /// The current state.
    pub fn state(&self) -> &CaseState {
        &self.state
    }
    /// Clarification requests not yet answered.
    pub fn open_clarifications(&self) -> impl Iterator<Item = &Id> {
        self.open_clarifications.iter()
    }
    /// Progress notices, in order (Art. 10.1).
    pub fn progress(&self) -> &[ProgressRecord] {
        &self.progress
    }
    /// Authenticity queries about messages of this case (Art. 9.5).
    pub fn queries(&self) -> &[QueryRecord] {
        &self.queries
    }
    /// Every message of the case, in the order applied.
    pub fn history(&self) -> &[CaseEntry] {
        &self.history
    }
    /// When the case was closed locally.
    pub fn closed_at(&self) -> Option<Timestamp> {
        self.closed_at
    }
    /// Whether message `id` belongs to this case.
    pub fn contains(&self, id: &Id) -> bool {
        self.history.iter().any(|e| &e.message == id)
    }
    fn entry(&self, id: &Id) -> Option<&CaseEntry> {
        self.history.iter().find(|e| &e.message == id)
    }

    /// The side of an authority in this case, if it is one of the two.
    pub fn side_of(&self, authority: &AuthorityId) -> Option<Side> {
        if self.requester.is(authority) {
            Some(Side::Requester)
        } else if self.requested.is(authority) {
            Some(Side::Requested)
        } else {
            None
        }
    }

    /// Art. 2: an authority of the case was renamed or replaced; messages
    /// from and to the new id belong to the case, and the old id stays valid.
    pub fn rename_authority(&mut self, old: &AuthorityId, new: &AuthorityId) {
        for p in [&mut self.requester, &mut self.requested] {
            if p.is(old) && &p.current != new {
                let prev = std::mem::replace(&mut p.current, new.clone());
                if !p.former.contains(&prev) {
                    p.former.push(prev);
                }
            }
        }
    }

    /// Checks that `msg` fits the case without changing it; returns what
    /// [`Case::apply`] would do.
    pub fn check(&self, msg: &Message) -> Result<Transition, CaseError> {
        self.clone().apply(msg)
    }

    /// Applies a message of the case (an answer to the request or to one of
    /// its messages, or an authenticity query about one of them). Applying
    /// a message already on the case changes nothing and returns the
    /// unchanged state.
    pub fn apply(&mut self, msg: &Message) -> Result<Transition, CaseError> {
        let h = &msg.header;
        let kind = msg.kind();
        if h.agreement != self.agreement {
            return Err(CaseError::AgreementMismatch {
                expected: self.agreement.clone(),
                found: h.agreement.clone(),
            });
        }
        if let Some(e) = self.entry(&h.id) {
            return Ok(Transition {
                case: self.id,
                message: h.id,
                kind,
                by: e.by,
                from: self.state.clone(),
                to: self.state.clone(),
            });
        }
        if matches!(self.state, CaseState::Closed { .. }) {
            return Err(self.closed(kind));
        }
        let by = match (self.side_of(&h.from), self.side_of(&h.to)) {
            (Some(a), Some(b)) if a != b => a,
            _ => {
                return Err(CaseError::NotAddressee {
                    case: self.id,
                    kind,
                    from: h.from.clone(),
                    to: h.to.clone(),
                })
            }
        };
        if let Some(expected) = self.expected_sender(msg) {
            if by != expected {
                // For example a response sent by the requester.
                return Err(CaseError::NotAddressee {
                    case: self.id,
                    kind,
                    from: h.from.clone(),
                    to: h.to.clone(),
                });
            }
        }
        let from = self.state.clone();
        let to = self.next(msg, by)?;
        self.commit(msg, by, to.clone());
        Ok(Transition {
            case: self.id,
            message: h.id,
            kind,
            by,
            from,
            to,
        })
    }

    /// Closes a case that has ended (answered, refused or withdrawn) — a
    /// local step on one gateway, after which the case takes no messages and
    /// may be destroyed early (Art. 11.5).
    /// Returns the state before.
    pub fn close(&mut self, at: Timestamp) -> Result<CaseState, CaseError> {
        let Some(ending) = self.state.ending() else {
            return Err(CaseError::WrongState {
                case: self.id,
                state: self.state.code(),
                kind: MessageKind::Request,
                why: "only an answered, refused or withdrawn case can be closed",
            });
        };
        self.closed_at = Some(at);
        Ok(std::mem::replace(&mut self.state, CaseState::Closed { ending }))
    }

    /// The side that must send a message of this kind (`None`: either side).
    fn expected_sender(&self, msg: &Message) -> Option<Side> {
        match &msg.body {
            MessageBody::Response(_)
            | MessageBody::ClarificationRequest(_)
            | MessageBody::ProgressNotice(_)
            | MessageBody::ConfidentialityNotice(_) => Some(Side::Requested),
            MessageBody::ClarificationAnswer(_) | MessageBody::ConfidentialityDecision(_) => {
                Some(Side::Requester)
            }
            MessageBody::AuthenticityQuery(q) => self.entry(&q.message).map(|e| e.by.other()),
            MessageBody::AuthenticityConfirmation(_) => msg
                .header
                .in_reply_to
                .and_then(|r| self.queries.iter().find(|q| q.query == r))
                .and_then(|q| self.side_of(&q.asked)),
            _ => None,
        }
    }

    fn closed(&self, kind: MessageKind) -> CaseError {
        CaseError::CaseClosed {
            case: self.id,
            state: self.state.code(),
            kind,
        }
    }

    fn wrong(&self, kind: MessageKind, why: &'static str) -> CaseError {
        CaseError::WrongState {
            case: self.id,
            state: self.state.code(),
            kind,
            why,
        }
    }

    /// `in_reply_to` must name the request itself.
    fn replies_to_request(&self, msg: &Message) -> Result<(), CaseError> {
        match msg.header.in_reply_to {
            Some(r) if r == self.id => Ok(()),
            Some(_) => Err(self.wrong(msg.kind(), "it must answer the request itself")),
            None => Err(CaseError::Incomplete {
                kind: msg.kind(),
                what: "in_reply_to is missing",
            }),
        }
    }

    /// For a message from the requested side that moves the case: the
    /// errors of a case that has ended or awaits a confidentiality decision.
    fn requested_may_act(&self, kind: MessageKind) -> Result<(), CaseError> {
        match &self.state {
            CaseState::Withdrawn | CaseState::Closed { .. } => Err(self.closed(kind)),
            CaseState::Answered { .. } | CaseState::Refused { .. } => Err(CaseError::AlreadyAnswered {
                case: self.id,
                kind,
                reference: self.id,
            }),
            CaseState::ConfidentialityNotified { .. } => {
                Err(self.wrong(kind, "the requester's confidentiality decision is awaited"))
            }
            _ => Ok(()),
        }
    }

    /// The state after `msg` (sent by `by`), or why it does not fit.
    fn next(&self, msg: &Message, by: Side) -> Result<CaseState, CaseError> {
        let kind = msg.kind();
        let reply = msg.header.in_reply_to;
        match &msg.body {
            MessageBody::Request(_) => Err(self.wrong(kind, "a request opens a case of its own")),
            MessageBody::Response(r) => {
                self.replies_to_request(msg)?;
                self.requested_may_act(kind)?;
                if purpose_digest(&r.purpose) != self.purpose {
                    return Err(CaseError::PurposeMismatch { case: self.id });
                }
                Ok(match &r.outcome {
                    Outcome::Fulfilled => CaseState::Answered { partial: false },
                    Outcome::PartiallyFulfilled { missing } => {
                        if missing.is_empty() {
                            return Err(CaseError::Incomplete {
                                kind,
                                what: "a partial answer must say what is missing",
                            });
                        }
                        CaseState::Answered { partial: true }
                    }
                    Outcome::Refused {
                        grounds,
                        reason,
                        partial,
                    } => {
                        if grounds.is_empty() {
                            return Err(CaseError::Incomplete {
                                kind,
                                what: "a refusal needs at least one Art. 10.4 ground",
                            });
                        }
                        if reason.trim().is_empty() {
                            return Err(CaseError::Incomplete {
                                kind,
                                what: "a refusal needs its reasons (Art. 10.4)",
                            });
                        }
                        if partial.as_ref().is_some_and(|p| p.is_empty()) {
                            return Err(CaseError::Incomplete {
                                kind,
                                what: "a partial refusal must say what is refused",
                            });
                        }
                        let mut g = Vec::with_capacity(grounds.len());
                        for x in grounds {
                            if !g.contains(x) {
                                g.push(*x);
                            }
                        }
                        CaseState::Refused {
                            grounds: g,
                            partial: partial.is_some(),
                        }
                    }
                    Outcome::Postponed { reason, conditions } => {
                        if reason.trim().is_empty() {
                            return Err(CaseError::Incomplete {
                                kind,
                                what: "a postponement needs its reason (Art. 10.2)",
                            });
                        }
                        CaseState::Postponed {
                            conditional: conditions.as_deref().is_some_and(|c| !c.trim().is_empty()),
                        }
                    }
                })
            }
            MessageBody::ClarificationRequest(_) => {
                self.replies_to_request(msg)?;
                self.requested_may_act(kind)?;
                Ok(CaseState::ClarificationRequested)
            }
            MessageBody::ConfidentialityNotice(_) => {
                self.replies_to_request(msg)?;
                self.requested_may_act(kind)?;
                Ok(CaseState::ConfidentialityNotified {
                    notice: msg.header.id,
                })
            }
            MessageBody::ProgressNotice(_) => {
                self.replies_to_request(msg)?;
                // Recorded in every state but closed (checked before): a
                // notice may cross an answer or a withdrawal in flight.
                // It moves only a case that was just received: elsewhere
                // it could cross a clarification answer or a decision, and
                // the two orders must end alike.
                Ok(match self.state {
                    CaseState::Received => CaseState::InProgress,
                    _ => self.state.clone(),
                })
            }
            MessageBody::ClarificationAnswer(_) => {
                let Some(q) = reply else {
                    return Err(CaseError::Incomplete {
                        kind,
                        what: "in_reply_to is missing",
                    });
                };
                if matches!(self.state, CaseState::Withdrawn) {
                    return Err(self.closed(kind));
                }
                if self.answered_clarifications.contains(&q) {
                    return Err(CaseError::AlreadyAnswered {
                        case: self.id,
                        kind,
                        reference: q,
                    });
                }
                if !self.open_clarifications.contains(&q) {
                    return Err(self.wrong(kind, "it must answer an open clarification request"));
                }
                let last = self.open_clarifications.len() == 1;
                Ok(match self.state {
                    CaseState::ClarificationRequested if last => CaseState::Clarified,
                    _ => self.state.clone(),
                })
            }
            MessageBody::ConfidentialityDecision(d) => {
                let Some(n) = reply else {
                    return Err(CaseError::Incomplete {
                        kind,
                        what: "in_reply_to is missing",
                    });
                };
                if self.decided_notices.contains(&n) {
                    return Err(CaseError::AlreadyAnswered {
                        case: self.id,
                        kind,
                        reference: n,
                    });
                }
                match &self.state {
                    CaseState::ConfidentialityNotified { notice } if *notice == n => Ok(match d.decision {
                        ConfidentialityChoice::Proceed => CaseState::InProgress,
                        ConfidentialityChoice::Withdraw => CaseState::Withdrawn,
                    }),
                    CaseState::Withdrawn => Err(self.closed(kind)),
                    _ => Err(self.wrong(kind, "it must answer the pending confidentiality notice")),
                }
            }
            MessageBody::AuthenticityQuery(q) => {
                let Some(doubted) = self.entry(&q.message) else {
                    return Err(CaseError::UnknownCase {
                        kind,
                        reference: q.message,
                    });
                };
                if doubted.by == by {
                    return Err(CaseError::NotAddressee {
                        case: self.id,
                        kind,
                        from: msg.header.from.clone(),
                        to: msg.header.to.clone(),
                    });
                }
                Ok(self.state.clone())
            }
            MessageBody::AuthenticityConfirmation(_) => {
                let Some(r) = reply else {
                    return Err(CaseError::Incomplete {
                        kind,
                        what: "in_reply_to is missing",
                    });
                };
                match self.queries.iter().find(|x| x.query == r) {
                    None => Err(self.wrong(kind, "it must answer an authenticity query")),
                    Some(x) if x.confirmed.is_some() => Err(CaseError::AlreadyAnswered {
                        case: self.id,
                        kind,
                        reference: r,
                    }),
                    Some(_) => Ok(self.state.clone()),
                }
            }
            MessageBody::ConsentRequest(_)
            | MessageBody::ConsentDecision(_)
            | MessageBody::UnsolicitedInformation(_)
            | MessageBody::DirectoryUpdate(_) => {
                Err(self.wrong(kind, "this kind does not belong to a request case"))
            }
        }
    }

    fn commit(&mut self, msg: &Message, by: Side, to: CaseState) {
        let h = &msg.header;
        match &msg.body {
            MessageBody::ClarificationRequest(_) => {
                self.open_clarifications.insert(h.id);
            }
            MessageBody::ClarificationAnswer(_) => {
                if let Some(q) = h.in_reply_to {
                    self.open_clarifications.remove(&q);
                    self.answered_clarifications.insert(q);
                }
            }
            MessageBody::ConfidentialityDecision(_) => {
                if let Some(n) = h.in_reply_to {
                    self.decided_notices.insert(n);
                }
            }
            MessageBody::ProgressNotice(p) => self.progress.push(ProgressRecord {
                message: h.id,
                time: h.time,
                progress: p.progress,
                expected_by: p.expected_by,
            }),
            MessageBody::AuthenticityQuery(q) => self.queries.push(QueryRecord {
                query: h.id,
                about: q.message,
                asked_by: h.from.clone(),
                asked: h.to.clone(),
                confirmed: None,
            }),
            MessageBody::AuthenticityConfirmation(c) => {
                if let Some(x) = self.queries.iter_mut().find(|x| Some(x.query) == h.in_reply_to) {
                    x.confirmed = Some(c.confirmed);
                }
            }
            _ => {}
        }
        self.state = to;
        self.history.push(CaseEntry {
            message: h.id,
            kind: msg.kind(),
            by,
            time: h.time,
            state: self.state.code().to_owned(),
        });
    }

    /// The case as deterministic CBOR (for the gateway to persist).
    pub fn to_cbor(&self) -> Result<Vec<u8>, CborError> {
        cbor::to_deterministic_vec(self)
    }
    /// A case from [`Case::to_cbor`] bytes.
    pub fn from_cbor(bytes: &[u8]) -> Result<Case, CborError> {
        cbor::from_slice(bytes, MAX_STATE_LEN)
    }
}

/// A message on record that does not belong to a case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LooseMessage {
    /// Its kind.
    pub kind: MessageKind,
    /// Sender.
    pub from: AuthorityId,
    /// Recipient.
    pub to: AuthorityId,
    /// Header time.
    pub time: Timestamp,
}

/// What [`CaseBook::apply`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// A request opened a case (Art. 10.3: the deadline starts).
    Opened {
        /// The case (= request id).
        case: Id,
        /// Its deadline.
        deadline: Timestamp,
    },
    /// A message of a case was applied.
    Case(Transition),
    /// Kept on record outside any case, without a deadline: unsolicited
    /// information (Art. 8), consent requests and decisions (see
    /// [`crate::consent::ConsentLedger`]), directory updates (see
    /// [`crate::roster`]), authenticity queries about such messages and their answers.
    Recorded {
        /// The kind.
        kind: MessageKind,
    },
    /// The message was applied before; nothing changed.
    Duplicate,
}

/// What [`CaseBook::apply`] will do, decided before anything changes.
enum Plan {
    Duplicate,
    Open(Box<Case>),
    Case(Transition),
    Loose {
        kind: MessageKind,
        /// An authenticity query about a message outside a case.
        query: Option<QueryRecord>,
        /// The message answers `target` (with a confirmation's verdict).
        decided: Option<(Id, Option<bool>)>,
    },
}

impl Plan {
    fn outcome(&self) -> Applied {
        match self {
            Plan::Duplicate => Applied::Duplicate,
            Plan::Open(c) => Applied::Opened {
                case: c.id(),
                deadline: c.deadline(),
            },
            Plan::Case(t) => Applied::Case(t.clone()),
            Plan::Loose { kind, .. } => Applied::Recorded { kind: *kind },
        }
    }
}

/// Every case of a gateway, and the index that finds the case of a message.
///
/// The book is pure and serialisable; the gateway keeps it (or its cases)
/// in its store. Messages outside a case are indexed too, so that answers to
/// them and authenticity queries about them can be checked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseBook {
    cases: BTreeMap<Id, Case>,
    /// Message id → its case (the case id).
    index: BTreeMap<Id, Id>,
    loose: BTreeMap<Id, LooseMessage>,
    queries: BTreeMap<Id, QueryRecord>,
    decided: BTreeSet<Id>,
    /// Art. 2: old authority id → new id.
    renamed: BTreeMap<AuthorityId, AuthorityId>,
}

impl CaseBook {
    /// An empty book.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks `msg` as [`CaseBook::apply`] would, without changing anything:
    /// the test before sealing an outgoing message. Nothing is cloned but
    /// the one case the message belongs to.
    pub fn check(
        &self,
        msg: &Message,
        received_at: Timestamp,
        now: Timestamp,
        profile: &Profile,
    ) -> Result<Applied, CaseError> {
        Ok(self.decide(msg, received_at, now, profile)?.outcome())
    }

    /// Applies a message sent or received under `profile` (the profile of
    /// its agreement in force at `now`).
    ///
    /// - `received_at`: when the requested gateway received the message
    ///   (its receipt time); used only for a request, as the start of the
    ///   deadline. The requesting gateway passes the time of the receipt it got.
    /// - `now`: the time of processing; the agreement must be in force at
    ///   `now` and at the message's time (Art. 17).
    pub fn apply(
        &mut self,
        msg: &Message,
        received_at: Timestamp,
        now: Timestamp,
        profile: &Profile,
    ) -> Result<Applied, CaseError> {
        let plan = self.decide(msg, received_at, now, profile)?;
        let outcome = plan.outcome();
        let h = &msg.header;
        match plan {
            Plan::Duplicate => {}
            Plan::Open(case) => {
                self.index.insert(h.id, h.id);
                self.cases.insert(h.id, *case);
            }
            Plan::Case(t) => {
                if let Some(case) = self.cases.get_mut(&t.case) {
                    case.apply(msg)?;
                }
                self.index.insert(h.id, t.case);
            }
            Plan::Loose { query, decided, .. } => {
                if let Some(q) = query {
                    self.queries.insert(h.id, q);
                }
                if let Some((target, confirmed)) = decided {
                    if let (Some(c), Some(q)) = (confirmed, self.queries.get_mut(&target)) {
                        q.confirmed = Some(c);
                    }
                    self.decided.insert(target);
                }
                self.record_loose(msg);
            }
        }
        Ok(outcome)
    }

    /// What applying `msg` would do, decided without changing anything.
    fn decide(
        &self,
        msg: &Message,
        received_at: Timestamp,
        now: Timestamp,
        profile: &Profile,
    ) -> Result<Plan, CaseError> {
        let h = &msg.header;
        let kind = msg.kind();
        if h.agreement != profile.id {
            return Err(CaseError::AgreementMismatch {
                expected: profile.id.clone(),
                found: h.agreement.clone(),
            });
        }
        profile.in_force_at(h.time)?;
        profile.in_force_at(now)?;
        if self.index.contains_key(&h.id) || self.loose.contains_key(&h.id) {
            return Ok(Plan::Duplicate);
        }
        let loose = |query, decided| Plan::Loose { kind, query, decided };
        match &msg.body {
            MessageBody::Request(_) => {
                let mut case = Case::open(msg, received_at, profile)?;
                for (old, new) in &self.renamed {
                    case.rename_authority(old, new);
                }
                Ok(Plan::Open(Box::new(case)))
            }
            MessageBody::UnsolicitedInformation(_)
            | MessageBody::DirectoryUpdate(_)
            | MessageBody::ConsentRequest(_) => Ok(loose(None, None)),
            MessageBody::AuthenticityQuery(q) => {
                if let Some(case_id) = self.index.get(&q.message).copied() {
                    return self.decide_for_case(case_id, msg);
                }
                let Some(doubted) = self.loose.get(&q.message) else {
                    return Err(CaseError::UnknownCase {
                        kind,
                        reference: q.message,
                    });
                };
                if !self.same(&h.from, &doubted.to) || !self.same(&h.to, &doubted.from) {
                    return Err(CaseError::NotAddressee {
                        case: q.message,
                        kind,
                        from: h.from.clone(),
                        to: h.to.clone(),
                    });
                }
                let query = QueryRecord {
                    query: h.id,
                    about: q.message,
                    asked_by: h.from.clone(),
                    asked: h.to.clone(),
                    confirmed: None,
                };
                Ok(loose(Some(query), None))
            }
            _ => {
                let Some(target) = h.in_reply_to else {
                    return Err(CaseError::Incomplete {
                        kind,
                        what: "in_reply_to is missing",
                    });
                };
                if let Some(case_id) = self.index.get(&target).copied() {
                    return self.decide_for_case(case_id, msg);
                }
                let Some(t) = self.loose.get(&target) else {
                    return Err(CaseError::UnknownCase {
                        kind,
                        reference: target,
                    });
                };
                self.decide_loose_answer(msg, target, t)
            }
        }
    }

    fn decide_loose_answer(&self, msg: &Message, target: Id, t: &LooseMessage) -> Result<Plan, CaseError> {
        let h = &msg.header;
        let kind = msg.kind();
        let expected_target = match &msg.body {
            MessageBody::AuthenticityConfirmation(_) => MessageKind::AuthenticityQuery,
            MessageBody::ConsentDecision(_) => MessageKind::ConsentRequest,
            _ => {
                return Err(CaseError::UnknownCase {
                    kind,
                    reference: target,
                })
            }
        };
        if t.kind != expected_target {
            return Err(CaseError::WrongState {
                case: target,
                state: "recorded",
                kind,
                why: "it answers a message of another kind",
            });
        }
        if !self.same(&h.from, &t.to) || !self.same(&h.to, &t.from) {
            return Err(CaseError::NotAddressee {
                case: target,
                kind,
                from: h.from.clone(),
                to: h.to.clone(),
            });
        }
        if self.decided.contains(&target) {
            return Err(CaseError::AlreadyAnswered {
                case: target,
                kind,
                reference: target,
            });
        }
        let confirmed = match &msg.body {
            MessageBody::AuthenticityConfirmation(c) => Some(c.confirmed),
            _ => None,
        };
        Ok(Plan::Loose {
            kind,
            query: None,
            decided: Some((target, confirmed)),
        })
    }

    fn decide_for_case(&self, case_id: Id, msg: &Message) -> Result<Plan, CaseError> {
        let case = self.cases.get(&case_id).ok_or(CaseError::UnknownCase {
            kind: msg.kind(),
            reference: case_id,
        })?;
        Ok(Plan::Case(case.check(msg)?))
    }

    fn record_loose(&mut self, msg: &Message) {
        let h = &msg.header;
        self.loose.insert(
            h.id,
            LooseMessage {
                kind: msg.kind(),
                from: h.from.clone(),
                to: h.to.clone(),
                time: h.time,
            },
        );
    }

    /// Whether two ids name the same authority, following renamings (Art. 2).
    fn same(&self, a: &AuthorityId, b: &AuthorityId) -> bool {
        self.canonical(a) == self.canonical(b)
    }

    /// The current id of an authority, following renamings (Art. 2).
    pub fn canonical<'a>(&'a self, mut id: &'a AuthorityId) -> &'a AuthorityId {
        // Bounded: a chain longer than the map is a cycle.
        for _ in 0..=self.renamed.len() {
            match self.renamed.get(id) {
                Some(n) => id = n,
                None => break,
            }
        }
        id
    }

    /// Art. 2: an authority was renamed or replaced (after the directory
    /// update was verified, see [`crate::roster::DirectoryHistory`]). Open
    /// and future cases accept both ids for it.
    pub fn rename_authority(&mut self, old: &AuthorityId, new: &AuthorityId) {
        if old == new {
            return;
        }
        self.renamed.insert(old.clone(), new.clone());
        for c in self.cases.values_mut() {
            c.rename_authority(old, new);
        }
    }

    /// Closes an ended case locally (see [`Case::close`]).
    pub fn close(&mut self, case: &Id, at: Timestamp) -> Result<CaseState, CaseError> {
        self.cases
            .get_mut(case)
            .ok_or(CaseError::UnknownCase {
                kind: MessageKind::Request,
                reference: *case,
            })?
            .close(at)
    }

    /// Forgets message `id` outside a case (its metadata has gone: nothing
    /// can refer to it any more): the message itself, whether it was
    /// answered, an authenticity query with that id, and the queries about
    /// it. Returns the ids whose records changed (`id` and those queries').
    pub fn forget_message(&mut self, id: &Id) -> Vec<Id> {
        let mut touched = vec![*id];
        self.loose.remove(id);
        self.decided.remove(id);
        self.queries.remove(id);
        self.queries.retain(|q, r| {
            let about = &r.about == id;
            if about {
                touched.push(*q);
            }
            !about
        });
        touched
    }

    /// Removes a case and its index entries (after the store destroyed it, Art. 11.5).
    pub fn forget_case(&mut self, case: &Id) -> Option<Case> {
        let c = self.cases.remove(case)?;
        self.index.retain(|_, v| v != case);
        Some(c)
    }

    /// A case by id.
    pub fn case(&self, id: &Id) -> Option<&Case> {
        self.cases.get(id)
    }
    /// The case a message belongs to.
    pub fn case_of(&self, message: &Id) -> Option<&Case> {
        self.cases.get(self.index.get(message)?)
    }
    /// Every case, by id (= time order of the requests).
    pub fn cases(&self) -> impl Iterator<Item = &Case> {
        self.cases.values()
    }
    /// A message outside a case, if on record.
    pub fn loose(&self, id: &Id) -> Option<&LooseMessage> {
        self.loose.get(id)
    }
    /// Authenticity queries about messages outside cases.
    pub fn loose_queries(&self) -> impl Iterator<Item = &QueryRecord> {
        self.queries.values()
    }

    /// An authenticity query about a message outside a case, by the query's id.
    pub fn loose_query(&self, query: &Id) -> Option<&QueryRecord> {
        self.queries.get(query)
    }
    /// Messages outside cases, by id.
    pub fn loose_messages(&self) -> impl Iterator<Item = (&Id, &LooseMessage)> {
        self.loose.iter()
    }
    /// Whether the message outside a case `target` has been answered
    /// (an authenticity query confirmed, a consent request decided).
    pub fn is_decided(&self, target: &Id) -> bool {
        self.decided.contains(target)
    }
    /// The answered messages outside cases.
    pub fn decided(&self) -> impl Iterator<Item = &Id> {
        self.decided.iter()
    }
    /// Art. 2: the renamings and replacements applied, old id → new id.
    pub fn renamed(&self) -> &BTreeMap<AuthorityId, AuthorityId> {
        &self.renamed
    }

    /// A book from its parts (as kept record by record by a gateway): the
    /// index of messages to cases is rebuilt from the cases' histories.
    pub fn from_parts(
        cases: impl IntoIterator<Item = Case>,
        loose: impl IntoIterator<Item = (Id, LooseMessage)>,
        queries: impl IntoIterator<Item = QueryRecord>,
        decided: impl IntoIterator<Item = Id>,
        renamed: impl IntoIterator<Item = (AuthorityId, AuthorityId)>,
    ) -> CaseBook {
        let mut book = CaseBook::new();
        for c in cases {
            let id = c.id();
            for e in &c.history {
                book.index.insert(e.message, id);
            }
            book.index.insert(id, id);
            book.cases.insert(id, c);
        }
        book.loose = loose.into_iter().collect();
        book.queries = queries.into_iter().map(|q| (q.query, q)).collect();
        book.decided = decided.into_iter().collect();
        book.renamed = renamed.into_iter().collect();
        book
    }

    /// Open cases whose deadline passed at `now`, earliest deadline first.
    pub fn overdue(&self, now: Timestamp) -> Vec<&Case> {
        let mut v: Vec<&Case> = self.cases.values().filter(|c| c.is_overdue(now)).collect();
        v.sort_by_key(|c| (c.deadline(), c.id()));
        v
    }

    /// Open cases due within `secs` seconds of `now` (`now <= deadline < now + secs`), earliest first.
    pub fn due_within(&self, now: Timestamp, secs: i64) -> Vec<&Case> {
        let until = now.plus_secs(secs);
        let mut v: Vec<&Case> = self
            .cases
            .values()
            .filter(|c| c.state().is_open() && c.deadline() >= now && c.deadline() < until)
            .collect();
        v.sort_by_key(|c| (c.deadline(), c.id()));
        v
    }

    /// The book as deterministic CBOR.
    pub fn to_cbor(&self) -> Result<Vec<u8>, CborError> {
        cbor::to_deterministic_vec(self)
    }
    /// A book from [`CaseBook::to_cbor`] bytes.
    pub fn from_cbor(bytes: &[u8]) -> Result<CaseBook, CborError> {
        cbor::from_slice(bytes, MAX_STATE_LEN)
    }
}
