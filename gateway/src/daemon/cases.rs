//! The agreement's procedure on this node: request cases
//! ([`konvert_envelope::workflow::CaseBook`]), the verified directory of
//! the peers (signatory rosters, renamings: [`DirectoryHistory`]) and the
//! consent ledger ([`ConsentLedger`]), kept durably next to the store.
//!
//! The three live in one [`Procedure`], written as one deterministic CBOR
//! snapshot (`DATA_DIR/procedure.cbor`, mode 0600) by an atomic replace
//! (temporary file, fsync, rename, fsync of the directory) after every
//! change and before the change is acknowledged to anyone. The snapshot is
//! the record of cases; the store's case records ([`mirror`]: state code and
//! running deadline, for the store's overdue list and per-case keys) follow
//! it, written after it and idempotently, so a crash between the two is
//! repaired by the resend that follows. It holds ids, kinds,
//! times, states, Art. 10.4 grounds and SHA-256 digests of purposes and
//! consent scopes — no personal data and no message text.
//!
//! Order of durable steps, and why a crash between them is harmless:
//!
//! - **Received message**: the change is applied and the snapshot written
//!   *before* `put_inbox` and the `accepted` receipt. A crash after the
//!   snapshot but before the receipt leaves the sender without a receipt;
//!   it sends the same envelope again, the book answers `Duplicate` (the
//!   message is on record) and the message is stored and accepted. A
//!   refused message changes nothing (the change is made on a copy).
//! - **Sent message**: checked against a copy of the book before sealing;
//!   applied, and the snapshot written, when the peer's receipt says
//!   `accepted` and *before* the store marks it delivered. A crash between
//!   the two leaves the message `sent`; it is delivered again, the peer
//!   answers with the same receipt, and applying it again is `Duplicate`.
//! - **Messages in flight**: at most one outgoing message per case is
//!   queued or sent at a time. This is not written anywhere: it is rebuilt
//!   at start from the store's undelivered outbound messages.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use konvert_envelope::consent::{ConsentError, ConsentLedger, Use};
use konvert_envelope::keys::{AuthorityCard, KeyId, TrustedSigner};
use konvert_envelope::model::{
    AuthorityId, CountryCode, DirectoryChange, Id, Message, MessageBody, Timestamp,
};
use konvert_envelope::profile::{NotInForce, Profile};
use konvert_envelope::receipt::{Outcome, Receipt, RejectCode};
use konvert_envelope::roster::{DirectoryHistory, SignedRoster};
use konvert_envelope::workflow::{Applied, Case, CaseBook, CaseError, Side, MAX_STATE_LEN};
use serde::{Deserialize, Serialize};

use super::Node;
use crate::api::cases::{grounds_of, CaseFilter, CaseSelection, CaseView};
use crate::files;
use konvert_store::{CaseId, NewCase};

/// The snapshot file in the data directory.
pub const STATE_FILE: &str = "procedure.cbor";

/// Everything the node knows of the procedure (see the module documentation).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Procedure {
    /// Request cases and the messages outside cases.
    pub book: CaseBook,
    /// Verified rosters and authority changes of the peers.
    pub directory: DirectoryHistory,
    /// Provisions of data, consent requests and decisions.
    pub consents: ConsentLedger,
    /// The version of this authority's own roster queued to each peer.
    pub rosters_sent: BTreeMap<AuthorityId, u64>,
}

/// Why the procedure state cannot be loaded or written.
#[derive(Debug, thiserror::Error)]
pub enum CasesError {
    /// The store's case record could not be written.
    #[error("store case record: {0}")]
    Store(String),
    /// The snapshot cannot be read or written.
    #[error("{path}: {reason}")]
    File {
        /// The snapshot file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

/// Why an outgoing message is refused before sealing.
#[derive(Debug, thiserror::Error)]
pub enum OutgoingError {
    /// Art. 17: the agreement is not in force now or at the message's time.
    #[error(transparent)]
    NotInForce(#[from] NotInForce),
    /// The message does not fit its case (the code the peer would answer).
    #[error("{0}")]
    Case(CaseError),
    /// A consent request or decision that does not fit the ledger.
    #[error("{0}")]
    Consent(ConsentError),
    /// Art. 11.2, 11.3: data received from another party without the consent it needs.
    #[error("{error}")]
    ConsentMissing {
        /// Index in the submission's `sources`.
        index: usize,
        /// What is missing.
        error: ConsentError,
    },
    /// Another message of the same case is still queued or sent.
    #[error("case {case}: message {pending} of this case is still being delivered; send this one after its receipt")]
    InFlight {
        /// The case.
        case: Id,
        /// The message in flight.
        pending: Id,
    },
    /// The submission names data sources but no purpose can be found.
    #[error("the message carries received data (sources) but has no purpose: give \"purpose\"")]
    NoPurpose,
    /// The snapshot could not be written.
    #[error(transparent)]
    State(#[from] CasesError),
}

impl OutgoingError {
    /// The receipt code the peer would give (for problem documents).
    pub fn code(&self) -> Option<RejectCode> {
        match self {
            Self::NotInForce(e) => Some(e.reject_code()),
            Self::Case(e) => Some(e.reject_code()),
            Self::Consent(e) | Self::ConsentMissing { error: e, .. } => Some(e.reject_code()),
            Self::InFlight { .. } => Some(RejectCode::WrongState),
            Self::NoPurpose | Self::State(_) => None,
        }
    }
}

/// The node's procedure state (see the module documentation).
#[derive(Debug)]
pub struct Cases {
    path: PathBuf,
    /// The state and the number of changes applied to it.
    state: Mutex<(Procedure, u64)>,
    /// The number of changes on disk; held while writing (group commit:
    /// one write covers every change applied before it began).
    durable: Mutex<u64>,
    /// Case id → the outgoing message of it now queued or sent.
    in_flight: Mutex<BTreeMap<Id, Id>>,
}

fn country_of(profile: &Profile, a: &AuthorityId) -> Option<CountryCode> {
    profile.party_of(a).map(|p| p.country)
}

/// The purpose a message states (a request's, or the one a response was provided for).
pub fn stated_purpose(m: &Message) -> Option<&str> {
    match &m.body {
        MessageBody::Request(r) => Some(&r.purpose),
        MessageBody::Response(r) => Some(&r.purpose),
        _ => None,
    }
}

impl Cases {
    /// Loads the snapshot from `data_dir`, or starts empty if there is none.
    pub fn load(data_dir: &Path) -> Result<Cases, CasesError> {
        let path = data_dir.join(STATE_FILE);
        let err = |reason: String| CasesError::File {
            path: path.clone(),
            reason,
        };
        let state = if path.exists() {
            let bytes = files::read_limited(&path, MAX_STATE_LEN as u64).map_err(|e| err(e.to_string()))?;
            konvert_envelope::cbor::from_slice(&bytes, MAX_STATE_LEN).map_err(|e| err(e.to_string()))?
        } else {
            Procedure::default()
        };
        Ok(Cases {
            path,
            state: Mutex::new((state, 0)),
            durable: Mutex::new(0),
            in_flight: Mutex::new(BTreeMap::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, (Procedure, u64)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn flights(&self) -> MutexGuard<'_, BTreeMap<Id, Id>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn persist(&self, p: &Procedure) -> Result<(), CasesError> {
        let err = |reason: String| CasesError::File {
            path: self.path.clone(),
            reason,
        };
        let bytes = konvert_envelope::cbor::to_deterministic_vec(p).map_err(|e| err(e.to_string()))?;
        files::write_atomic(&self.path, &bytes, 0o600, true).map_err(|e| err(e.to_string()))
    }

    /// Changes a copy of the state with `f`; when `f` succeeds the copy
    /// replaces the state, and returns once it is on disk (a refusal
    /// changes nothing). Concurrent changes share one write: whoever writes
    /// writes every change applied so far.
    fn update<T, E: From<CasesError>>(&self, f: impl FnOnce(&mut Procedure) -> Result<T, E>) -> Result<T, E> {
        let seen = {
            let mut guard = self.lock();
            let mut next = guard.0.clone();
            let out = f(&mut next);
            if out.is_ok() && next != guard.0 {
                guard.0 = next;
                guard.1 += 1;
            }
            // Even an unchanged outcome waits for what it saw (a duplicate
            // of a change whose write failed must not be acknowledged first).
            (out, guard.1)
        };
        let (out, version) = seen;
        let out = out?;
        self.make_durable(version)?;
        Ok(out)
    }

    /// Returns once change `version` (and every earlier one) is on disk.
    fn make_durable(&self, version: u64) -> Result<(), CasesError> {
        let mut durable = self.durable.lock().unwrap_or_else(|p| p.into_inner());
        if *durable >= version {
            return Ok(());
        }
        let (snapshot, latest) = {
            let g = self.lock();
            (g.0.clone(), g.1)
        };
        self.persist(&snapshot)?;
        *durable = latest;
        Ok(())
    }

    /// A read-only view of the state.
    pub fn with<T>(&self, f: impl FnOnce(&Procedure) -> T) -> T {
        f(&self.lock().0)
    }

    /// The signers whose signatures are accepted from a peer: its card's
    /// signatories until its first roster, its rosters from then on.
    pub fn trusted_signers(&self, card: &AuthorityCard) -> Vec<TrustedSigner> {
        self.lock().0.directory.rosters().trusted_signers_with_card(card)
    }

    /// The id of the signatory with key id `kid`: on the peer's rosters, else on its card.
    pub fn signatory_id(&self, card: &AuthorityCard, kid: &KeyId) -> Option<String> {
        let g = self.lock();
        let p = &g.0;
        for r in p.directory.rosters().versions(&card.authority).iter().rev() {
            for s in &r.roster().signatories {
                let key = konvert_envelope::keys::VerifyingKey::from_bytes(s.public_key.as_bytes());
                if key.is_ok_and(|k| &k.key_id() == kid) {
                    return Some(s.id.to_string());
                }
            }
        }
        card.signatories
            .iter()
            .find(|s| &s.key.key_id() == kid)
            .map(|s| s.id.clone())
    }

    /// A received message (after every envelope check, before it is stored
    /// and acknowledged): applied to its case, the directory and the
    /// consent ledger, and written durably. On refusal nothing changes and
    /// the receipt code is returned.
    pub fn receive(
        &self,
        msg: &Message,
        card: &AuthorityCard,
        profile: &Profile,
        received_at: Timestamp,
        now: Timestamp,
    ) -> Result<Applied, RejectCode> {
        let r = self.update(|p| -> Result<Applied, Refusal> {
            let applied = p
                .book
                .apply(msg, received_at, now, profile)
                .map_err(|e| Refusal::Code(e.reject_code()))?;
            if let MessageBody::DirectoryUpdate(_) = &msg.body {
                let applied = p
                    .directory
                    .apply_update(msg, card.root_key.as_ref())
                    .map_err(|e| Refusal::Code(e.reject_code()))?;
                // Art. 2: the cases follow a renaming or replacement (both ids accepted).
                if let konvert_envelope::roster::DirectoryApplied::AuthorityChanged { old, new, .. } = applied
                {
                    p.book.rename_authority(&old, &new);
                }
            }
            apply_consent(p, msg, profile).map_err(|e| Refusal::Code(e.reject_code()))?;
            Ok(applied)
        });
        match r {
            Ok(a) => Ok(a),
            Err(Refusal::Code(c)) => Err(c),
            Err(Refusal::State(e)) => {
                tracing::error!(error = %e, "procedure state not written; refusing for now");
                Err(RejectCode::TemporaryFailure)
            }
        }
    }

    /// Checks an outgoing message before it is sealed and reserves its
    /// case's in-flight slot: the agreement is in force at `now` and at the
    /// message's time (Art. 17), the message fits its case, a consent
    /// message fits the ledger, the data of every received message in
    /// `sources` may go to the recipient for the message's purpose (Art.
    /// 11.2, 11.3), and no other message of the case is in flight. Call
    /// [`Cases::release`] if the message is then not queued.
    pub fn check_outgoing(
        &self,
        msg: &Message,
        profile: &Profile,
        sources: &[Id],
        purpose: Option<&str>,
        now: Timestamp,
    ) -> Result<(), OutgoingError> {
        profile.in_force_at(now)?;
        profile.in_force_at(msg.header.time)?;
        let g = self.lock();
        let p = &g.0;
        let case = match p.book.check(msg, now, now, profile) {
            Ok(Applied::Opened { case, .. }) => Some(case),
            Ok(Applied::Case(t)) => Some(t.case),
            Ok(Applied::Recorded { .. } | Applied::Duplicate) => None,
            Err(e) => return Err(OutgoingError::Case(e)),
        };
        if matches!(
            msg.body,
            MessageBody::ConsentRequest(_) | MessageBody::ConsentDecision(_)
        ) {
            p.consents.clone().apply(msg).map_err(OutgoingError::Consent)?;
        }
        if !sources.is_empty() {
            let purpose = purpose.or(stated_purpose(msg)).ok_or(OutgoingError::NoPurpose)?;
            let to = &msg.header.to;
            let country = country_of(profile, to).ok_or(OutgoingError::NoPurpose)?;
            for (index, s) in sources.iter().enumerate() {
                p.consents
                    .check(
                        s,
                        &Use::Transfer {
                            recipient: to,
                            country,
                            purpose,
                        },
                        now,
                    )
                    .map_err(|error| OutgoingError::ConsentMissing { index, error })?;
            }
        }
        drop(g);
        if let Some(case) = case {
            let mut f = self.flights();
            match f.get(&case) {
                Some(pending) if *pending != msg.header.id => {
                    return Err(OutgoingError::InFlight {
                        case,
                        pending: *pending,
                    })
                }
                _ => {
                    f.insert(case, msg.header.id);
                }
            }
        }
        Ok(())
    }

    /// Frees the in-flight slot a message holds (not queued after all,
    /// rejected by the peer, or undeliverable).
    pub fn release(&self, message: &Id) {
        self.flights().retain(|_, m| m != message);
    }

    /// Rebuilds the in-flight slot of an undelivered outgoing message (at start).
    pub fn restore_in_flight(&self, msg: &Message) {
        let case = {
            let g = self.lock();
            let p = &g.0;
            case_of_outgoing(&p.book, msg)
        };
        if let Some(case) = case {
            self.flights().insert(case, msg.header.id);
        }
    }

    /// The peer accepted an outgoing message: applied to its case and the
    /// ledger and written durably. `receipt_time` is the time of the peer's
    /// receipt (the start of a request's deadline on both sides).
    pub fn sent_accepted(
        &self,
        msg: &Message,
        profile: &Profile,
        receipt_time: Timestamp,
        now: Timestamp,
    ) -> Result<(), CasesError> {
        let r = self.update(|p| -> Result<(), Refusal> {
            match p.book.apply(msg, receipt_time, now, profile) {
                Ok(_) => {}
                // The peer accepted it, so the two sides now differ: say so
                // loudly; the peer's view is the one that was acknowledged.
                Err(e) => tracing::error!(id = %msg.header.id, kind = msg.kind().as_str(), error = %e, "an accepted message does not fit this side's case"),
            }
            if let Err(e) = apply_consent(p, msg, profile) {
                tracing::error!(id = %msg.header.id, error = %e, "an accepted consent message does not fit the ledger");
            }
            if let MessageBody::DirectoryUpdate(u) = &msg.body {
                if let DirectoryChange::SignatoryRoster { version, .. } = &u.change {
                    let v = p.rosters_sent.entry(msg.header.to.clone()).or_default();
                    *v = (*v).max(*version);
                }
            }
            Ok(())
        });
        self.release(&msg.header.id);
        match r {
            Ok(()) => Ok(()),
            Err(Refusal::State(e)) => Err(e),
            Err(Refusal::Code(_)) => Ok(()),
        }
    }

    /// Records that roster `version` was queued to `peer`.
    pub fn roster_queued(&self, peer: &AuthorityId, version: u64) -> Result<(), CasesError> {
        self.update(|p| -> Result<(), CasesError> {
            let v = p.rosters_sent.entry(peer.clone()).or_default();
            *v = (*v).max(version);
            Ok(())
        })
    }

    /// The peers among `peers` that have not been sent `roster` yet.
    pub fn roster_due<'a>(
        &self,
        roster: &SignedRoster,
        peers: impl Iterator<Item = &'a AuthorityId>,
    ) -> Vec<AuthorityId> {
        let g = self.lock();
        let p = &g.0;
        let v = roster.roster().version;
        peers
            .filter(|a| p.rosters_sent.get(*a).is_none_or(|s| *s < v))
            .cloned()
            .collect()
    }

    /// Closes an ended case (local; Art. 11.5).
    pub fn close(&self, case: &Id, at: Timestamp) -> Result<Case, CloseError> {
        self.update(|p| -> Result<Case, CloseError> {
            p.book.close(case, at).map_err(CloseError::Case)?;
            p.book
                .case(case)
                .cloned()
                .ok_or(CloseError::Case(CaseError::UnknownCase {
                    kind: konvert_envelope::model::MessageKind::Request,
                    reference: *case,
                }))
        })
    }
}

/// The peer's receipt for an outgoing message arrived (hook of the
/// dispatcher, before the store marks the message delivered): an accepted
/// message is applied to its case; a rejected one frees its case's slot.
pub fn delivered(node: &Node, message: Option<&[u8]>, receipt: &Receipt) -> Result<(), CasesError> {
    let Some(msg) = message.and_then(|b| konvert_envelope::cbor::from_slice::<Message>(b, 64 << 20).ok())
    else {
        return Ok(());
    };
    match receipt.outcome {
        Outcome::Accepted => {
            let dir = node.directory();
            // Art. 16: the version the receiver applied it under (its case's, or the one at its time).
            let governing = node
                .cases
                .with(|p| super::versions::governing(&dir.versions, &p.book, &msg).ok());
            let Some(profile) = governing.or_else(|| dir.profiles.get(&msg.header.agreement)) else {
                node.cases.release(&msg.header.id);
                return Ok(());
            };
            node.cases
                .sent_accepted(&msg, profile, receipt.time, node.now())?;
            let case = node.cases.with(|p| case_of_outgoing(&p.book, &msg));
            if let Some(case) = case {
                mirror(node, &case).map_err(|e| CasesError::Store(e.to_string()))?;
            }
            Ok(())
        }
        Outcome::Rejected { .. } => {
            node.cases.release(&msg.header.id);
            // A refused request opened no case: its store case says so.
            let opened = node.cases.with(|p| p.book.case(&msg.header.id).is_some());
            if matches!(msg.body, MessageBody::Request(_)) && !opened {
                let id = CaseId(*msg.header.id.as_bytes());
                if let Err(e) = node.store.case_update(&id, "rejected", None) {
                    tracing::warn!(id = %msg.header.id, error = %e, "store case of a rejected request not updated");
                }
            }
            Ok(())
        }
    }
}

/// Sends this authority's latest signatory roster (`keys/roster.cose`, made
/// by `konvertctl signatory add|revoke`) as a signed `directory_update` to
/// every peer that has not been sent that version yet. Runs at start and
/// on every reload (SIGHUP). The message is signed by a configured
/// signatory who is on that roster.
pub fn announce_roster(node: &Arc<Node>) {
    let roster = match crate::signatories::load_roster(&node.config.keys_dir) {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(error = %e, "own signatory roster not usable; not sent to peers");
            return;
        }
    };
    let now = node.now();
    let signer = node.config.signatories.iter().find(|s| {
        node.signatories.get(&s.id).is_some_and(|k| {
            let pk = konvert_envelope::model::PublicKeyBytes(k.verifying_key().to_bytes());
            roster
                .roster()
                .signatory_by_key(&pk)
                .is_some_and(|r| r.valid_from <= now && r.valid_until.is_none_or(|u| u >= now))
        })
    });
    let Some(signer) = signer else {
        tracing::error!(
            version = roster.roster().version,
            "no configured signatory is on the own roster; roster not sent"
        );
        return;
    };
    let dir = node.directory();
    for peer in node.cases.roster_due(&roster, dir.peers.keys()) {
        let Some(agreement) = dir.peers.get(&peer).and_then(|p| p.agreements.first()) else {
            continue;
        };
        let id = Id::new(now);
        let msg = Message {
            header: konvert_envelope::model::MessageHeader {
                id,
                time: now,
                agreement: agreement.clone(),
                from: node.keys.authority.clone(),
                to: peer.clone(),
                in_reply_to: None,
            },
            body: MessageBody::DirectoryUpdate(roster.to_directory_update(None)),
        };
        let sub = super::outbound::Submission {
            message: msg,
            signatory: signer.id.clone(),
            sources: Vec::new(),
            purpose: None,
        };
        match super::outbound::submit_blocking(node, sub) {
            Ok(_) => {
                if let Err(e) = node.cases.roster_queued(&peer, roster.roster().version) {
                    tracing::error!(error = %e, "roster queued but not recorded");
                }
                tracing::info!(peer = %peer, id = %id, version = roster.roster().version, "signatory roster queued");
            }
            Err(e) => tracing::error!(peer = %peer, error = %e, "signatory roster not queued"),
        }
    }
}

/// A case as the API shows it (`history` only when `with_history`).
pub fn case_view(c: &Case, own: &AuthorityId, now: Timestamp, with_history: bool) -> CaseView {
    CaseView {
        id: c.id(),
        agreement: c.agreement().clone(),
        profile_version: c.profile_version(),
        requester: c.requester().clone(),
        requested: c.requested().clone(),
        role: c.side_of(own).unwrap_or(Side::Requested),
        state: c.state().code().to_owned(),
        open: c.state().is_open(),
        grounds: grounds_of(c.state()),
        requested_at: c.requested_at(),
        received_at: c.received_at(),
        deadline: c.deadline(),
        overdue: c.is_overdue(now),
        closed_at: c.closed_at(),
        open_clarifications: c.open_clarifications().copied().collect(),
        progress: c.progress().to_vec(),
        history: if with_history {
            c.history().to_vec()
        } else {
            Vec::new()
        },
    }
}

/// `GET /v1/cases`: the selected cases, earliest deadline first, at the node's time.
pub fn list_views(node: &Node, filter: CaseFilter) -> Vec<CaseView> {
    let now = node.now();
    let own = &node.keys.authority;
    node.cases.with(|p| {
        let mut cases: Vec<&Case> = match filter.selection {
            CaseSelection::All => {
                let mut v: Vec<&Case> = p.book.cases().collect();
                v.sort_by_key(|c| (c.deadline(), c.id()));
                v
            }
            CaseSelection::Overdue => p.book.overdue(now),
            CaseSelection::DueWithin(secs) => p.book.due_within(now, secs),
        };
        cases.truncate(filter.limit as usize);
        cases.into_iter().map(|c| case_view(c, own, now, false)).collect()
    })
}

/// `GET /v1/cases/{id}`: a case with its history (also found by any of its message ids).
pub fn view(node: &Node, id: &Id) -> Option<CaseView> {
    let now = node.now();
    node.cases.with(|p| {
        p.book
            .case(id)
            .or_else(|| p.book.case_of(id))
            .map(|c| case_view(c, &node.keys.authority, now, true))
    })
}

/// Mirrors a case's state code and running deadline into the store's case
/// record (`case_open`, then `case_update` when they differ): what the
/// store's overdue list, per-case keys and early destruction (Art. 11.5)
/// use. Idempotent, so a resend after a crash between the snapshot and this
/// repairs it. Returns the store case to file the case's messages under,
/// `None` if there is no such case or it was destroyed early.
pub fn mirror(node: &Node, case: &Id) -> Result<Option<CaseId>, konvert_store::Error> {
    let own = &node.keys.authority;
    let Some((peer, agreement, state, deadline)) = node.cases.with(|p| {
        p.book.case(case).map(|c| {
            let peer = if c.requester() == own {
                c.requested()
            } else {
                c.requester()
            };
            (
                peer.to_string(),
                c.agreement().to_string(),
                c.state().code(),
                c.tracked_deadline().map(|t| t.as_unix()),
            )
        })
    }) else {
        return Ok(None);
    };
    let id = CaseId(*case.as_bytes());
    let info = node.store.case_open(&NewCase {
        id,
        peer,
        agreement,
        state: state.to_owned(),
        deadline,
    })?;
    if info.destroyed_at.is_some() {
        return Ok(None);
    }
    if info.state != state || info.deadline != deadline {
        match node.store.case_update(&id, state, deadline) {
            Ok(_) => {}
            Err(konvert_store::Error::Destroyed { .. }) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Ok(Some(id))
}

/// The store case a received message is filed under, mirrored first.
pub fn store_case_of_received(node: &Node, message: &Id) -> Result<Option<CaseId>, konvert_store::Error> {
    match node.cases.with(|p| p.book.case_of(message).map(Case::id)) {
        Some(case) => mirror(node, &case),
        None => Ok(None),
    }
}

/// The store case an outgoing message is filed under: a request opens its
/// store case as `queued` (the book opens the case when the peer accepts
/// it), a later message uses its case's.
pub fn store_case_of_outgoing(node: &Node, msg: &Message) -> Result<Option<CaseId>, konvert_store::Error> {
    let Some(case) = node.cases.with(|p| case_of_outgoing(&p.book, msg)) else {
        return Ok(None);
    };
    if let MessageBody::Request(_) = msg.body {
        let info = node.store.case_open(&NewCase {
            id: CaseId(*case.as_bytes()),
            peer: msg.header.to.to_string(),
            agreement: msg.header.agreement.to_string(),
            state: "queued".into(),
            deadline: None,
        })?;
        return Ok(info.destroyed_at.is_none().then_some(info.id));
    }
    mirror(node, &case)
}

/// The purpose of the request whose case message `id` belongs to (Art.
/// 11.2: what every message of the case may be used for), read from the
/// request as stored (received, or sent by this gateway).
pub fn case_purpose(node: &Node, id: &Id) -> Option<String> {
    let case = node.cases.with(|p| p.book.case_of(id).map(Case::id))?;
    let key = konvert_store::MessageId(*case.as_bytes());
    let request: Message = if let Ok(m) = node.store.get(konvert_store::Direction::Inbound, &key) {
        let rec = super::inbound::InboxRecord::from_slice(&m.payload).ok()?;
        konvert_envelope::cbor::from_slice(&rec.signed.message, 64 << 20).ok()?
    } else {
        let m = node.store.outbox_get(&key).ok()?;
        let rec = super::outbound::OutboxRecord::from_slice(&m.payload).ok()?;
        konvert_envelope::cbor::from_slice(rec.message.as_deref()?, 64 << 20).ok()?
    };
    stated_purpose(&request).map(str::to_owned)
}

/// The running deadline of the case a request opened (for inbox items).
pub fn due_of(node: &Node, request: &Id) -> Option<Timestamp> {
    node.cases
        .with(|p| p.book.case(request).and_then(Case::tracked_deadline))
}

/// Why a case cannot be closed.
#[derive(Debug, thiserror::Error)]
pub enum CloseError {
    /// Not a case, or not ended.
    #[error("{0}")]
    Case(CaseError),
    /// The snapshot could not be written.
    #[error(transparent)]
    State(#[from] CasesError),
}

enum Refusal {
    Code(RejectCode),
    State(CasesError),
}

impl From<CasesError> for Refusal {
    fn from(e: CasesError) -> Self {
        Refusal::State(e)
    }
}

fn apply_consent(p: &mut Procedure, msg: &Message, profile: &Profile) -> Result<(), ConsentError> {
    match &msg.body {
        MessageBody::ConsentRequest(_) | MessageBody::ConsentDecision(_) => p.consents.apply(msg),
        _ => {
            if let Some(country) = country_of(profile, &msg.header.from) {
                p.consents.record_message(msg, country, None);
            }
            Ok(())
        }
    }
}

/// The case an outgoing message belongs to, if any (requests open their own).
fn case_of_outgoing(book: &CaseBook, msg: &Message) -> Option<Id> {
    match &msg.body {
        MessageBody::Request(_) => Some(msg.header.id),
        MessageBody::AuthenticityQuery(q) => book.case_of(&q.message).map(Case::id),
        _ => msg
            .header
            .in_reply_to
            .and_then(|r| book.case_of(&r))
            .map(Case::id),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn profile() -> Profile {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/profiles/kz-by-2019.toml"),
        )
        .unwrap();
        Profile::from_toml_str(&text, "kz-by-2019.toml").unwrap()
    }

    fn example(name: &str) -> Message {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../docs/examples/{name}.json")),
        )
        .unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn card(authority: &str) -> AuthorityCard {
        let t = tempfile::tempdir().unwrap();
        crate::offline::keygen(&AuthorityId::new(authority).unwrap(), t.path(), None, false).unwrap()
    }

    #[test]
    fn a_received_case_survives_a_reload_and_refusals_change_nothing() {
        let t = tempfile::tempdir().unwrap();
        let p = profile();
        let req = example("request");
        let now = req.header.time.plus_secs(60);
        let kz = card("kz.mvd");
        let cases = Cases::load(t.path()).unwrap();
        assert!(matches!(
            cases.receive(&req, &kz, &p, now, now),
            Ok(Applied::Opened { .. })
        ));
        // The same message again (a resend after a crash before the receipt).
        assert_eq!(cases.receive(&req, &kz, &p, now, now), Ok(Applied::Duplicate));
        let before = std::fs::read(t.path().join(STATE_FILE)).unwrap();
        // An answer to an unknown request is refused and not written.
        let mut stray = example("response");
        stray.header.in_reply_to = Some(Id::new(now));
        assert_eq!(
            cases.receive(&stray, &kz, &p, now, now).unwrap_err(),
            RejectCode::UnknownCase
        );
        assert_eq!(std::fs::read(t.path().join(STATE_FILE)).unwrap(), before);
        // A new process sees the case (a crash after the snapshot, before
        // the store's put and the receipt) ...
        let again = Cases::load(t.path()).unwrap();
        let state = again.with(|p| p.book.case(&req.header.id).map(|c| c.state().code()));
        assert_eq!(state, Some("received"));
        // ... and the sender's resend of the same envelope is a duplicate
        // there, so it is stored and accepted without a second transition.
        assert_eq!(again.receive(&req, &kz, &p, now, now), Ok(Applied::Duplicate));
        assert_eq!(std::fs::read(t.path().join(STATE_FILE)).unwrap(), before);
    }

    #[test]
    fn the_directory_update_example_holds_a_valid_roster() {
        let m = example("directory_update");
        let MessageBody::DirectoryUpdate(u) = &m.body else {
            panic!("not a directory_update")
        };
        let DirectoryChange::SignatoryRoster {
            authority,
            version,
            signatories,
        } = &u.change
        else {
            panic!("not a roster")
        };
        let roster = konvert_envelope::roster::Roster {
            authority: authority.clone(),
            version: *version,
            issued: m.header.time,
            signatories: signatories.clone(),
        };
        // Every public key is a valid Ed25519 point, ids and keys unique.
        roster.check().unwrap();
    }

    #[test]
    fn concurrent_changes_share_writes_and_every_acknowledged_one_is_on_disk() {
        let t = tempfile::tempdir().unwrap();
        let p = profile();
        let kz = card("kz.mvd");
        let cases = Cases::load(t.path()).unwrap();
        let base = example("request");
        let now = base.header.time.plus_secs(60);
        let ids: Vec<Id> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let (cases, p, kz, base) = (&cases, &p, &kz, &base);
                    scope.spawn(move || {
                        let mut mine = Vec::new();
                        for j in 0..10 {
                            let mut m = base.clone();
                            m.header.id = Id::new(now.plus_secs(i * 100 + j));
                            // Returns only once the change is on disk.
                            cases.receive(&m, kz, p, now, now).unwrap();
                            mine.push(m.header.id);
                        }
                        mine
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let again = Cases::load(t.path()).unwrap();
        for id in &ids {
            assert!(again.with(|p| p.book.case(id).is_some()), "case {id} not on disk");
        }
        assert_eq!(again.with(|p| p.book.cases().count()), 80);
    }

    #[test]
    fn one_outgoing_message_per_case_in_flight() {
        let t = tempfile::tempdir().unwrap();
        let p = profile();
        let req = example("request");
        let now = req.header.time.plus_secs(60);
        let cases = Cases::load(t.path()).unwrap();
        cases.receive(&req, &card("kz.mvd"), &p, now, now).unwrap();
        let mut a = example("clarification_request");
        a.header.in_reply_to = Some(req.header.id);
        a.header.time = now;
        a.header.id = Id::new(now);
        cases.check_outgoing(&a, &p, &[], None, now).unwrap();
        let mut b = example("progress_notice");
        b.header.in_reply_to = Some(req.header.id);
        b.header.time = now;
        b.header.id = Id::new(now.plus_secs(1));
        assert!(matches!(
            cases.check_outgoing(&b, &p, &[], None, now),
            Err(OutgoingError::InFlight { .. })
        ));
        cases.release(&a.header.id);
        cases.check_outgoing(&b, &p, &[], None, now).unwrap();
    }
}
