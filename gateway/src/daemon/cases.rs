//! The agreement's procedure on this node: request cases
//! ([`konvert_envelope::workflow::CaseBook`]), the verified directory of
//! the peers (signatory rosters, renamings: [`DirectoryHistory`]) and the
//! consent ledger ([`ConsentLedger`]), kept durably next to the store.
//!
//! The three live in memory in one [`Procedure`] and are kept in the
//! store record by record ([`konvert_store::Store::records_apply`]): a
//! case under its key; everything on record of one message outside the
//! cases (loose message, authenticity query, answered mark, provision,
//! consent request) under the message's key, so that an ordinary message
//! is one record write (two records a message cost 6 % more CPU end to
//! end: a group of several goes through an intent record); the directory
//! as one record. A change writes only the
//! records it touched, under the state's lock (so records are written in
//! the order of the changes), and then waits for the store's group commit
//! outside the lock: many changes share one sync, and the cost of a change
//! does not grow with the history. The records are loaded at start. They
//! hold ids, kinds, times, states, Art. 10.4 grounds and SHA-256 digests of
//! purposes and consent scopes — no personal data and no message text. The
//! store's case records ([`mirror`]: state code and running deadline, for
//! the store's overdue list and per-case keys) follow them, written after
//! them and idempotently, so a crash between the two is repaired by the
//! resend that follows. A data directory of an earlier version, with the
//! whole procedure in one snapshot file (`procedure.cbor`), is moved into
//! records at start.
//!
//! Order of durable steps, and why a crash between them is harmless:
//!
//! - **Received message**: the change is applied and its records made
//!   durable *before* `put_inbox` and the `accepted` receipt. A crash after
//!   the records but before the receipt leaves the sender without a receipt;
//!   it sends the same envelope again, the book answers `Duplicate` (the
//!   message is on record) and the message is stored and accepted. A
//!   refused message changes nothing (every check is made before the first change).
//! - **Sent message**: checked against the book (a dry run) before sealing;
//!   applied, and its records written, when the peer's receipt says
//!   `accepted` and *before* the store marks it delivered. A crash between
//!   the two leaves the message `sent`; it is delivered again, the peer
//!   answers with the same receipt, and applying it again is `Duplicate`.
//! - **Messages in flight**: at most one outgoing message per case is
//!   queued or sent at a time. This is not written anywhere: it is rebuilt
//!   at start from the store's undelivered outbound messages.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use konvert_envelope::consent::{ConsentError, ConsentLedger};
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
use konvert_store::{CaseId, NewCase, Store};

/// The snapshot file of earlier versions in the data directory (moved
/// into the store's records at start, then removed).
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
    /// The procedure's records could not be written or read.
    #[error("procedure records in the store: {0}")]
    Records(#[from] konvert_store::Error),
    /// A record in the store cannot be decoded.
    #[error("procedure record {key}: {reason}")]
    BadRecord {
        /// What the record is (kind and id).
        key: String,
        /// What is wrong with it.
        reason: String,
    },
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
    store: Arc<Store>,
    /// The state. Changes are applied to it and their records to the store
    /// under this lock, so that the store has them in the same order.
    state: Mutex<Procedure>,
    /// Case id → the outgoing message of it now queued or sent.
    in_flight: Mutex<BTreeMap<Id, Id>>,
}

/// A record of the procedure in the store (see [`Key::bytes`] for the keys).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    /// A request case, by case id.
    Case(Id),
    /// Everything on record of one message outside the cases: as a loose
    /// message, an authenticity query, answered, its provision, its
    /// consent request ([`MessageRecord`]; written instead of the five
    /// per-part keys of earlier versions, `l`, `q`, `d`, `p` and `r`,
    /// which are moved into it at start).
    Message(Id),
    /// Art. 2: a renamed or replaced authority's old id → its new id.
    Renamed(AuthorityId),
    /// The version of the own roster queued to a peer.
    RosterSent(AuthorityId),
    /// The verified directory of the peers (one record; changes rarely;
    /// its key sorts after the others', apart from often changed records).
    Directory,
}

const K_CASE: u8 = b'c';
const K_MESSAGE: u8 = b'm';
const K_LOOSE: u8 = b'l';
const K_QUERY: u8 = b'q';
const K_DECIDED: u8 = b'd';
const K_RENAMED: u8 = b'n';
const K_PROVISION: u8 = b'p';
const K_CONSENT: u8 = b'r';
const K_ROSTER_SENT: u8 = b's';
const K_DIRECTORY: &[u8] = b"~directory";

impl Key {
    fn bytes(&self) -> Vec<u8> {
        let (tag, rest): (u8, &[u8]) = match self {
            Key::Case(id) => (K_CASE, id.as_bytes()),
            Key::Message(id) => (K_MESSAGE, id.as_bytes()),
            Key::Renamed(a) => (K_RENAMED, a.as_str().as_bytes()),
            Key::RosterSent(a) => (K_ROSTER_SENT, a.as_str().as_bytes()),
            Key::Directory => return K_DIRECTORY.to_vec(),
        };
        let mut k = Vec::with_capacity(1 + rest.len());
        k.push(tag);
        k.extend_from_slice(rest);
        k
    }

    /// The record's current value in `p` (`None`: not there).
    fn value(&self, p: &Procedure) -> Result<Option<Vec<u8>>, CasesError> {
        // (Local records: plain CBOR, read back with `cbor::from_slice`.)
        fn enc<T: Serialize>(key: &Key, v: Option<&T>) -> Result<Option<Vec<u8>>, CasesError> {
            v.map(|v| konvert_envelope::cbor::to_vec(v).map_err(|e| key.bad(e)))
                .transpose()
        }
        match self {
            Key::Case(id) => enc(self, p.book.case(id)),
            Key::Message(id) => enc(self, MessageRecord::of(p, id).as_ref()),
            Key::Renamed(a) => enc(self, p.book.renamed().get(a)),
            Key::RosterSent(a) => enc(self, p.rosters_sent.get(a)),
            Key::Directory => enc(self, Some(&p.directory)),
        }
    }

    fn bad(&self, reason: impl std::fmt::Display) -> CasesError {
        CasesError::BadRecord {
            key: format!("{self:?}"),
            reason: reason.to_string(),
        }
    }
}

/// The record of one message id ([`Key::Message`]): one store key, so
/// that a message's change is one record write instead of two or more
/// (each group of several is atomic through an intent record: four sled
/// writes for the two of an ordinary message).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct MessageRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    loose: Option<konvert_envelope::workflow::LooseMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    query: Option<konvert_envelope::workflow::QueryRecord>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    decided: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    provision: Option<konvert_envelope::consent::Provision>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    consent: Option<konvert_envelope::consent::ConsentRecord>,
}

impl MessageRecord {
    /// What `p` has on record of `id`; `None` if nothing.
    fn of(p: &Procedure, id: &Id) -> Option<MessageRecord> {
        let r = MessageRecord {
            loose: p.book.loose(id).cloned(),
            query: p.book.loose_query(id).cloned(),
            decided: p.book.is_decided(id),
            provision: p.consents.provision(id).cloned(),
            consent: p.consents.request(id).cloned(),
        };
        (r != MessageRecord::default()).then_some(r)
    }
}

/// The records a change to the procedure may have touched: every key it
/// could have set (a key not in the state afterwards is not written).
fn touched_by(p: &Procedure, msg: &Message) -> Vec<Key> {
    let h = &msg.header;
    let mut keys = vec![Key::Message(h.id)];
    if let Some(c) = p.book.case_of(&h.id) {
        keys.push(Key::Case(c.id()));
    }
    let target = match &msg.body {
        MessageBody::AuthenticityQuery(q) => Some(q.message),
        _ => h.in_reply_to,
    };
    if let Some(t) = target {
        keys.push(Key::Message(t));
    }
    if let MessageBody::DirectoryUpdate(_) = &msg.body {
        // Rare, and may rename an authority in every case (Art. 2).
        keys.push(Key::Directory);
        keys.extend(p.book.renamed().keys().cloned().map(Key::Renamed));
        keys.extend(p.book.cases().map(|c| Key::Case(c.id())));
    }
    keys
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
    /// Loads the procedure from the store's records; moves the snapshot
    /// file of an earlier version (`DATA_DIR/procedure.cbor`) into records
    /// first if there is one.
    pub fn load(store: Arc<Store>, data_dir: &Path) -> Result<Cases, CasesError> {
        let legacy = data_dir.join(STATE_FILE);
        if legacy.exists() {
            migrate_snapshot(&store, &legacy)?;
        }
        let state = load_records(&store)?;
        Ok(Cases {
            store,
            state: Mutex::new(state),
            in_flight: Mutex::new(BTreeMap::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Procedure> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn flights(&self) -> MutexGuard<'_, BTreeMap<Id, Id>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the state with `f`, which returns its result and the records
    /// it may have touched, and must change nothing when it fails. The
    /// touched records are written to the store under the state's lock;
    /// the call returns once they (and every change before them) are
    /// durable. Even a change that touched nothing (a duplicate) waits: the
    /// change it repeats may not be durable yet.
    fn update<T, E: From<CasesError>>(
        &self,
        f: impl FnOnce(&mut Procedure) -> Result<(T, Vec<Key>), E>,
    ) -> Result<T, E> {
        let out = self.apply(f)?;
        self.store.sync().map_err(CasesError::from)?;
        Ok(out)
    }

    /// [`Cases::update`] without waiting for the sync: the records are
    /// applied to the store and become durable with the caller's next
    /// durable store write (sled recovers a prefix of its log, so that
    /// write's sync covers every change applied before it). For steps that
    /// are always followed by one: a received message by `put_inbox`, an
    /// accepted outgoing one by `mark_delivered`. A crash before it is the
    /// crash before the receipt described in the module documentation.
    fn apply<T, E: From<CasesError>>(
        &self,
        f: impl FnOnce(&mut Procedure) -> Result<(T, Vec<Key>), E>,
    ) -> Result<T, E> {
        let out = {
            let mut p = self.lock();
            let (out, mut keys) = f(&mut p)?;
            keys.sort();
            keys.dedup();
            let mut ops = Vec::with_capacity(keys.len());
            for k in &keys {
                if let Some(v) = k.value(&p)? {
                    ops.push((k.bytes(), Some(v)));
                }
            }
            // A failed write poisons the store: nothing is acknowledged
            // after it, so the state ahead of the disk is never relied on.
            self.store.records_apply(ops).map_err(CasesError::from)?;
            out
        };
        Ok(out)
    }

    /// A read-only view of the state.
    pub fn with<T>(&self, f: impl FnOnce(&Procedure) -> T) -> T {
        f(&self.lock())
    }

    /// The signers whose signatures are accepted from a peer: its card's
    /// signatories until its first roster, its rosters from then on.
    pub fn trusted_signers(&self, card: &AuthorityCard) -> Vec<TrustedSigner> {
        self.lock().directory.rosters().trusted_signers_with_card(card)
    }

    /// The peer's root key and latest roster on record: with it, the
    /// directory update carrying the peer's next roster may be signed by a
    /// signatory on that roster (`RosterAnchor`, Art. 9.4).
    pub fn roster_anchor<'a>(
        &self,
        card: &'a AuthorityCard,
    ) -> Option<konvert_envelope::roster::RosterAnchor<'a>> {
        konvert_envelope::roster::RosterAnchor::of(card, self.lock().directory.rosters())
    }

    /// The id of the signatory with key id `kid`: on the peer's rosters, else on its card.
    pub fn signatory_id(&self, card: &AuthorityCard, kid: &KeyId) -> Option<String> {
        let p = self.lock();
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
    /// consent ledger, and its records written to the store — durable with
    /// the `put_inbox` that must follow before the receipt (see
    /// `Cases::apply`). On refusal nothing changes and the receipt code
    /// is returned.
    pub fn receive(
        &self,
        msg: &Message,
        card: &AuthorityCard,
        profile: &Profile,
        received_at: Timestamp,
        now: Timestamp,
    ) -> Result<Applied, RejectCode> {
        let r = self.apply(|p| -> Result<(Applied, Vec<Key>), Refusal> {
            // Every check before the first change: a refusal changes nothing.
            let code = |e: &dyn CodeOf| Refusal::Code(e.code());
            p.book
                .check(msg, received_at, now, profile)
                .map_err(|e| code(&e))?;
            let directory = match &msg.body {
                MessageBody::DirectoryUpdate(_) => {
                    let mut d = p.directory.clone();
                    let applied = d
                        .apply_update(msg, card.root_key.as_ref())
                        .map_err(|e| code(&e))?;
                    let changed = match applied {
                        konvert_envelope::roster::DirectoryApplied::AuthorityChanged { old, new, .. } => {
                            Some((old, new))
                        }
                        _ => None,
                    };
                    Some((d, changed))
                }
                _ => None,
            };
            if is_consent(msg) {
                p.consents.check_apply(msg).map_err(|e| code(&e))?;
            }
            let applied = p
                .book
                .apply(msg, received_at, now, profile)
                .map_err(|e| code(&e))?;
            if let Some((d, changed)) = directory {
                p.directory = d;
                // Art. 2: the cases follow a renaming or replacement (both ids accepted).
                if let Some((old, new)) = changed {
                    p.book.rename_authority(&old, &new);
                }
            }
            apply_consent(p, msg, profile).map_err(|e| code(&e))?;
            let keys = touched_by(p, msg);
            Ok((applied, keys))
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
    /// `sources` may go to the recipient for the message's purpose
    /// ([`ConsentLedger::check_outgoing`]: a third party needs the
    /// provider's consent to the transfer, Art. 11.3; anyone else a purpose
    /// the data was provided for or the provider's consent to this other
    /// one, Art. 11.2), and no other message of the case is in flight. Call
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
        let p = self.lock();
        let case = match p.book.check(msg, now, now, profile) {
            Ok(Applied::Opened { case, .. }) => Some(case),
            Ok(Applied::Case(t)) => Some(t.case),
            Ok(Applied::Recorded { .. } | Applied::Duplicate) => None,
            Err(e) => return Err(OutgoingError::Case(e)),
        };
        if is_consent(msg) {
            p.consents.check_apply(msg).map_err(OutgoingError::Consent)?;
        }
        if !sources.is_empty() {
            let purpose = purpose.or(stated_purpose(msg)).ok_or(OutgoingError::NoPurpose)?;
            let (from, to) = (&msg.header.from, &msg.header.to);
            let country = country_of(profile, to).ok_or(OutgoingError::NoPurpose)?;
            // Art. 11.3 to a third party, else Art. 11.2 (another purpose).
            for (index, s) in sources.iter().enumerate() {
                p.consents
                    .check_outgoing(s, from, to, country, purpose, now)
                    .map_err(|error| OutgoingError::ConsentMissing { index, error })?;
            }
        }
        drop(p);
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
            let p = self.lock();
            case_of_outgoing(&p.book, msg)
        };
        if let Some(case) = case {
            self.flights().insert(case, msg.header.id);
        }
    }

    /// The peer accepted an outgoing message: applied to its case and the
    /// ledger, its records written to the store (durable with the
    /// `mark_delivered` that must follow, see `Cases::apply`).
    /// `receipt_time` is the time of the peer's receipt (the start of a
    /// request's deadline on both sides).
    pub fn sent_accepted(
        &self,
        msg: &Message,
        profile: &Profile,
        receipt_time: Timestamp,
        now: Timestamp,
    ) -> Result<(), CasesError> {
        let r = self.apply(|p| -> Result<((), Vec<Key>), Refusal> {
            match p.book.apply(msg, receipt_time, now, profile) {
                Ok(_) => {}
                // The peer accepted it, so the two sides now differ: say so
                // loudly; the peer's view is the one that was acknowledged.
                Err(e) => tracing::error!(id = %msg.header.id, kind = msg.kind().as_str(), error = %e, "an accepted message does not fit this side's case"),
            }
            if let Err(e) = apply_consent(p, msg, profile) {
                tracing::error!(id = %msg.header.id, error = %e, "an accepted consent message does not fit the ledger");
            }
            let mut keys = touched_by(p, msg);
            if let MessageBody::DirectoryUpdate(u) = &msg.body {
                if let DirectoryChange::SignatoryRoster { version, .. } = &u.change {
                    let v = p.rosters_sent.entry(msg.header.to.clone()).or_default();
                    *v = (*v).max(*version);
                    // (Only a roster changes it: other deliveries do not
                    // rewrite the peer's record.)
                    keys.push(Key::RosterSent(msg.header.to.clone()));
                }
            }
            Ok(((), keys))
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
        self.update(|p| -> Result<((), Vec<Key>), CasesError> {
            let v = p.rosters_sent.entry(peer.clone()).or_default();
            *v = (*v).max(version);
            Ok(((), vec![Key::RosterSent(peer.clone())]))
        })
    }

    /// The peers among `peers` that have not been sent `roster` yet.
    pub fn roster_due<'a>(
        &self,
        roster: &SignedRoster,
        peers: impl Iterator<Item = &'a AuthorityId>,
    ) -> Vec<AuthorityId> {
        let p = self.lock();
        let v = roster.roster().version;
        peers
            .filter(|a| p.rosters_sent.get(*a).is_none_or(|s| *s < v))
            .cloned()
            .collect()
    }

    /// Forgets messages and cases whose metadata the store has purged (the
    /// retention sweeper's report, at the end of the audit retention):
    /// their procedure records leave the state and the store, so that the
    /// state does not grow with every message ever exchanged. Returns how
    /// many records were removed or rewritten; durable with the next sync.
    pub fn forget(&self, messages: &[Id], cases: &[Id]) -> Result<usize, CasesError> {
        if messages.is_empty() && cases.is_empty() {
            return Ok(0);
        }
        let mut p = self.lock();
        let mut keys = Vec::new();
        for id in messages {
            keys.extend(p.book.forget_message(id).into_iter().map(Key::Message));
            keys.extend(p.consents.forget_message(id).into_iter().map(Key::Message));
        }
        for case in cases {
            p.book.forget_case(case);
            keys.push(Key::Case(*case));
        }
        keys.sort();
        keys.dedup();
        let mut ops = Vec::with_capacity(keys.len());
        for k in &keys {
            // What is left of a record (another part of it), or its removal.
            ops.push((k.bytes(), k.value(&p)?));
        }
        let n = ops.len();
        for chunk in ops.chunks(konvert_store::MAX_RECORD_OPS) {
            self.store
                .records_apply(chunk.to_vec())
                .map_err(CasesError::from)?;
        }
        Ok(n)
    }

    /// Closes an ended case (local; Art. 11.5).
    pub fn close(&self, case: &Id, at: Timestamp) -> Result<Case, CloseError> {
        self.update(|p| -> Result<(Case, Vec<Key>), CloseError> {
            p.book.close(case, at).map_err(CloseError::Case)?;
            let c = p
                .book
                .case(case)
                .cloned()
                .ok_or(CloseError::Case(CaseError::UnknownCase {
                    kind: konvert_envelope::model::MessageKind::Request,
                    reference: *case,
                }))?;
            Ok((c, vec![Key::Case(*case)]))
        })
    }
}

/// The largest sealed message an outbox record may carry for its case (as
/// decoded when its receipt arrives).
pub const MESSAGE_RECORD_MAX: usize = 64 << 20;

/// The peer's receipt for an outgoing message arrived (hook of the
/// dispatcher, before the store marks the message delivered): an accepted
/// message is applied to its case; a rejected one frees its case's slot.
pub fn delivered(node: &Node, message: Option<&Message>, receipt: &Receipt) -> Result<(), CasesError> {
    let Some(msg) = message else {
        return Ok(());
    };
    match receipt.outcome {
        Outcome::Accepted => {
            let dir = node.directory();
            // Art. 16: the version the receiver applied it under (its case's, or the one at its time).
            let governing = node
                .cases
                .with(|p| super::versions::governing(&dir.versions, &p.book, msg).ok());
            let Some(profile) = governing.or_else(|| dir.profiles.get(&msg.header.agreement)) else {
                node.cases.release(&msg.header.id);
                return Ok(());
            };
            node.cases.sent_accepted(msg, profile, receipt.time, node.now())?;
            let case = node.cases.with(|p| case_of_outgoing(&p.book, msg));
            if let Some(case) = case {
                mirror_deferred(node, &case).map_err(|e| CasesError::Store(e.to_string()))?;
            }
            Ok(())
        }
        Outcome::Rejected { .. } => {
            node.cases.release(&msg.header.id);
            // A refused request opened no case: its store case says so.
            let opened = node.cases.with(|p| p.book.case(&msg.header.id).is_some());
            if matches!(msg.body, MessageBody::Request(_)) && !opened {
                let id = CaseId(*msg.header.id.as_bytes());
                if let Err(e) = node.store.case_update_deferred(&id, "rejected", None) {
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
    let c = mirror_deferred(node, case)?;
    node.store.sync()?;
    Ok(c)
}

/// [`mirror`] whose store writes become durable with the next commit (the
/// put or delivery mark of the message being handled, which follows).
fn mirror_deferred(node: &Node, case: &Id) -> Result<Option<CaseId>, konvert_store::Error> {
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
    let info = node.store.case_open_deferred(&NewCase {
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
        match node.store.case_update_deferred(&id, state, deadline) {
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
        Some(case) => mirror_deferred(node, &case),
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
        let info = node.store.case_open_deferred(&NewCase {
            id: CaseId(*case.as_bytes()),
            peer: msg.header.to.to_string(),
            agreement: msg.header.agreement.to_string(),
            state: "queued".into(),
            deadline: None,
        })?;
        return Ok(info.destroyed_at.is_none().then_some(info.id));
    }
    mirror_deferred(node, &case)
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

/// The receipt code of a refusal.
trait CodeOf {
    fn code(&self) -> RejectCode;
}
impl CodeOf for CaseError {
    fn code(&self) -> RejectCode {
        self.reject_code()
    }
}
impl CodeOf for ConsentError {
    fn code(&self) -> RejectCode {
        self.reject_code()
    }
}
impl CodeOf for konvert_envelope::roster::RosterError {
    fn code(&self) -> RejectCode {
        self.reject_code()
    }
}

fn is_consent(msg: &Message) -> bool {
    matches!(
        msg.body,
        MessageBody::ConsentRequest(_) | MessageBody::ConsentDecision(_)
    )
}

/// Reads the procedure from the store's records.
fn load_records(store: &Store) -> Result<Procedure, CasesError> {
    fn dec<T: serde::de::DeserializeOwned>(key: &[u8], v: &[u8]) -> Result<T, CasesError> {
        konvert_envelope::cbor::from_slice(v, konvert_store::MAX_RECORD_VALUE).map_err(|e| {
            CasesError::BadRecord {
                key: String::from_utf8_lossy(&key[..1]).into_owned() + &hex::encode(&key[1..]),
                reason: e.to_string(),
            }
        })
    }
    let (mut cases, mut renamed) = (Vec::new(), Vec::new());
    let mut messages: BTreeMap<Id, MessageRecord> = BTreeMap::new();
    // Per-part records of earlier versions, by message id, with their keys.
    let mut legacy: BTreeMap<Id, (MessageRecord, Vec<Vec<u8>>)> = BTreeMap::new();
    let mut p = Procedure::default();
    for r in store.records(b"") {
        let (k, v) = r?;
        let id = || -> Result<Id, CasesError> {
            let b: [u8; 16] = k[1..].try_into().map_err(|_| CasesError::BadRecord {
                key: String::from_utf8_lossy(&k).into_owned(),
                reason: "not a 16-byte id".into(),
            })?;
            Ok(Id::from_bytes(b))
        };
        let authority = || -> Result<AuthorityId, CasesError> {
            let s = std::str::from_utf8(&k[1..])
                .ok()
                .and_then(|s| AuthorityId::new(s).ok());
            s.ok_or_else(|| CasesError::BadRecord {
                key: String::from_utf8_lossy(&k).into_owned(),
                reason: "not an authority id".into(),
            })
        };
        if k.as_slice() == K_DIRECTORY {
            p.directory = dec(&k, &v)?;
            continue;
        }
        let tag = k.first().copied();
        if matches!(tag, Some(K_LOOSE | K_QUERY | K_DECIDED | K_PROVISION | K_CONSENT)) {
            let (rec, keys) = legacy.entry(id()?).or_default();
            match tag {
                Some(K_LOOSE) => rec.loose = Some(dec(&k, &v)?),
                Some(K_QUERY) => rec.query = Some(dec(&k, &v)?),
                Some(K_DECIDED) => rec.decided = true,
                Some(K_PROVISION) => rec.provision = Some(dec(&k, &v)?),
                _ => rec.consent = Some(dec(&k, &v)?),
            }
            keys.push(k.clone());
            continue;
        }
        match tag {
            Some(K_CASE) => cases.push(dec::<Case>(&k, &v)?),
            Some(K_MESSAGE) => {
                messages.insert(id()?, dec(&k, &v)?);
            }
            Some(K_RENAMED) => renamed.push((authority()?, dec(&k, &v)?)),
            Some(K_ROSTER_SENT) => {
                p.rosters_sent.insert(authority()?, dec(&k, &v)?);
            }
            _ => {
                return Err(CasesError::BadRecord {
                    key: String::from_utf8_lossy(&k).into_owned(),
                    reason: "unknown kind of record".into(),
                })
            }
        }
    }
    if !legacy.is_empty() {
        migrate_per_part_records(store, &mut messages, legacy)?;
    }
    let (mut loose, mut queries, mut decided) = (Vec::new(), Vec::new(), Vec::new());
    let (mut provisions, mut requests) = (Vec::new(), Vec::new());
    for (id, m) in messages {
        if let Some(l) = m.loose {
            loose.push((id, l));
        }
        queries.extend(m.query);
        if m.decided {
            decided.push(id);
        }
        provisions.extend(m.provision);
        requests.extend(m.consent);
    }
    p.book = CaseBook::from_parts(cases, loose, queries, decided, renamed);
    p.consents = ConsentLedger::from_parts(provisions, requests);
    Ok(p)
}

/// Moves the per-part records of messages written by earlier versions
/// (`l`, `q`, `d`, `p`, `r` id) into one record per message (`m` id): each
/// message's new record and the removal of its old ones in one atomic
/// group, then one sync. A message that has a new record already (written
/// by this version after the old ones) keeps it; its old ones go.
fn migrate_per_part_records(
    store: &Store,
    messages: &mut BTreeMap<Id, MessageRecord>,
    legacy: BTreeMap<Id, (MessageRecord, Vec<Vec<u8>>)>,
) -> Result<(), CasesError> {
    let n = legacy.len();
    let mut ops: Vec<konvert_store::RecordOp> = Vec::new();
    for (id, (rec, keys)) in legacy {
        if ops.len() + keys.len() + 1 > konvert_store::MAX_RECORD_OPS {
            store.records_apply(std::mem::take(&mut ops))?;
        }
        let rec = messages.entry(id).or_insert(rec);
        let key = Key::Message(id);
        let value = konvert_envelope::cbor::to_deterministic_vec(&*rec).map_err(|e| key.bad(e))?;
        ops.push((key.bytes(), Some(value)));
        ops.extend(keys.into_iter().map(|k| (k, None)));
    }
    store.records_apply(ops)?;
    store.sync()?;
    tracing::info!(
        messages = n,
        "procedure records of an earlier version merged into one per message"
    );
    Ok(())
}

/// Moves the snapshot of an earlier version into records (in groups, then
/// one sync) and removes the file. Idempotent: a crash before the removal
/// writes the same records again at the next start.
fn migrate_snapshot(store: &Store, path: &Path) -> Result<(), CasesError> {
    let err = |reason: String| CasesError::File {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = files::read_limited(path, MAX_STATE_LEN as u64).map_err(|e| err(e.to_string()))?;
    let p: Procedure =
        konvert_envelope::cbor::from_slice(&bytes, MAX_STATE_LEN).map_err(|e| err(e.to_string()))?;
    let mut keys: Vec<Key> = Vec::new();
    keys.extend(p.book.cases().map(|c| Key::Case(c.id())));
    keys.extend(p.book.loose_messages().map(|(id, _)| Key::Message(*id)));
    keys.extend(p.book.loose_queries().map(|q| Key::Message(q.query)));
    keys.extend(p.book.decided().map(|id| Key::Message(*id)));
    keys.extend(p.book.renamed().keys().cloned().map(Key::Renamed));
    keys.extend(p.consents.provisions().map(|v| Key::Message(v.message)));
    keys.extend(p.consents.consents().map(|v| Key::Message(v.request)));
    keys.sort();
    keys.dedup();
    keys.extend(p.rosters_sent.keys().cloned().map(Key::RosterSent));
    keys.push(Key::Directory);
    for chunk in keys.chunks(konvert_store::MAX_RECORD_OPS) {
        let mut ops = Vec::with_capacity(chunk.len());
        for k in chunk {
            if let Some(v) = k.value(&p)? {
                ops.push((k.bytes(), Some(v)));
            }
        }
        store.records_apply(ops)?;
    }
    store.sync()?;
    std::fs::remove_file(path).map_err(|e| err(e.to_string()))?;
    if let Some(dir) = path.parent() {
        files::sync_dir(dir).map_err(|e| err(e.to_string()))?;
    }
    tracing::info!(
        cases = p.book.cases().count(),
        records = keys.len(),
        "procedure snapshot of an earlier version moved into the store"
    );
    Ok(())
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

    fn store(dir: &Path) -> Arc<Store> {
        let cfg =
            konvert_store::StoreConfig::new(dir.join("store"), konvert_store::MasterKey::from_bytes([7; 32]));
        Arc::new(Store::open(cfg).unwrap())
    }

    /// Opens the store and the procedure of data directory `dir`.
    fn open(dir: &Path) -> (Arc<Store>, Cases) {
        let st = store(dir);
        let cases = Cases::load(Arc::clone(&st), dir).unwrap();
        (st, cases)
    }

    fn records(st: &Store) -> Vec<(Vec<u8>, Vec<u8>)> {
        st.records(b"").map(Result::unwrap).collect()
    }

    fn card(authority: &str) -> AuthorityCard {
        let t = tempfile::tempdir().unwrap();
        crate::offline::keygen(&AuthorityId::new(authority).unwrap(), t.path(), None, false).unwrap()
    }

    #[test]
    fn what_the_store_purged_is_forgotten_in_the_state_and_its_records() {
        let t = tempfile::tempdir().unwrap();
        let p = profile();
        let kz = card("kz.mvd");
        let req = example("request");
        let mut info = example("unsolicited_information");
        info.header.from = AuthorityId::new("kz.mvd").unwrap();
        info.header.to = AuthorityId::new("by.mvd").unwrap();
        let now = req.header.time.max(info.header.time).plus_secs(60);
        let (case, loose) = (req.header.id, info.header.id);
        {
            let (st, cases) = open(t.path());
            assert!(matches!(
                cases.receive(&req, &kz, &p, now, now),
                Ok(Applied::Opened { .. })
            ));
            cases.receive(&info, &kz, &p, now, now).unwrap();
            assert!(cases.with(|p| p.book.loose(&loose).is_some() && p.consents.provision(&loose).is_some()));
            let before = records(&st).len();
            assert_eq!(cases.forget(&[], &[]).unwrap(), 0);
            // The sweep purged the loose message and the case.
            assert!(cases.forget(&[loose], &[case]).unwrap() >= 2);
            assert!(cases.with(|p| p.book.loose(&loose).is_none()
                && p.consents.provision(&loose).is_none()
                && p.book.case(&case).is_none()
                && p.book.case_of(&case).is_none()));
            let left = records(&st);
            assert!(left.len() < before, "{left:?}");
            for k in [Key::Message(loose).bytes(), Key::Case(case).bytes()] {
                assert!(left.iter().all(|(key, _)| *key != k), "{k:?} left");
            }
            // Forgetting again changes nothing.
            let again = cases.forget(&[loose], &[case]).unwrap();
            assert!(again >= 2);
            assert_eq!(records(&st), left);
            st.sync().unwrap();
        }
        // And a reload does not bring them back.
        let (_st, cases) = open(t.path());
        assert!(cases.with(|p| p.book.loose(&loose).is_none() && p.book.case(&case).is_none()));
    }

    #[test]
    fn a_received_case_survives_a_reload_and_refusals_change_nothing() {
        let t = tempfile::tempdir().unwrap();
        let p = profile();
        let req = example("request");
        let now = req.header.time.plus_secs(60);
        let kz = card("kz.mvd");
        let before = {
            let (st, cases) = open(t.path());
            assert!(matches!(
                cases.receive(&req, &kz, &p, now, now),
                Ok(Applied::Opened { .. })
            ));
            // The same message again (a resend after a crash before the receipt).
            assert_eq!(cases.receive(&req, &kz, &p, now, now), Ok(Applied::Duplicate));
            let before = records(&st);
            // The case and the data the request provided, each its own record.
            assert_eq!(before.len(), 2, "{before:?}");
            // An answer to an unknown request is refused and not written.
            let mut stray = example("response");
            stray.header.in_reply_to = Some(Id::new(now));
            assert_eq!(
                cases.receive(&stray, &kz, &p, now, now).unwrap_err(),
                RejectCode::UnknownCase
            );
            assert_eq!(records(&st), before);
            before
        };
        // A new process sees the case (a crash after the records, before
        // the store's put and the receipt) ...
        let (st, again) = open(t.path());
        let state = again.with(|p| p.book.case(&req.header.id).map(|c| c.state().code()));
        assert_eq!(state, Some("received"));
        assert!(again.with(|p| p.consents.provision(&req.header.id).is_some()));
        // ... and the sender's resend of the same envelope is a duplicate
        // there, so it is stored and accepted without a second transition.
        assert_eq!(again.receive(&req, &kz, &p, now, now), Ok(Applied::Duplicate));
        assert_eq!(records(&st), before);
    }

    #[test]
    fn a_change_writes_only_its_own_records_and_a_reload_rebuilds_the_book() {
        let t = tempfile::tempdir().unwrap();
        let p = profile();
        let kz = card("kz.mvd");
        let base = example("request");
        let now = base.header.time.plus_secs(60);
        let (st, cases) = open(t.path());
        let mut ids = Vec::new();
        for i in 0..20 {
            let mut m = base.clone();
            m.header.id = Id::new(now.plus_secs(i));
            cases.receive(&m, &kz, &p, now, now).unwrap();
            ids.push(m.header.id);
        }
        // The 21st change rewrites its case only: the other records stay
        // byte for byte (a change costs the same however long the history).
        let before = records(&st);
        let mut clar = example("clarification_request");
        clar.header.from = base.header.to.clone();
        clar.header.to = base.header.from.clone();
        clar.header.in_reply_to = Some(ids[3]);
        clar.header.time = now;
        clar.header.id = Id::new(now.plus_secs(100));
        cases.sent_accepted(&clar, &p, now, now).unwrap();
        let after = records(&st);
        assert_eq!(after.len(), before.len());
        let changed: Vec<_> = after
            .iter()
            .zip(&before)
            .filter(|(a, b)| a != b)
            .map(|(a, _)| a.0.clone())
            .collect();
        assert_eq!(changed, vec![Key::Case(ids[3]).bytes()]);
        let book = cases.with(|p| p.book.clone());
        drop(cases);
        drop(st);
        let (_st, again) = open(t.path());
        // The index of messages to cases is rebuilt too.
        assert_eq!(again.with(|p| p.book.clone()), book);
        assert_eq!(
            again.with(|p| p.book.case_of(&clar.header.id).map(Case::id)),
            Some(ids[3])
        );
    }

    #[test]
    fn a_message_is_one_record_and_per_part_records_of_earlier_versions_are_merged_at_start() {
        let t = tempfile::tempdir().unwrap();
        let p = profile();
        let kz = card("kz.mvd");
        let mut info = example("unsolicited_information");
        info.header.from = AuthorityId::new("kz.mvd").unwrap();
        info.header.to = AuthorityId::new("by.mvd").unwrap();
        let now = info.header.time.plus_secs(60);
        let (st, cases) = open(t.path());
        cases.receive(&info, &kz, &p, now, now).unwrap();
        // A loose message with its provision: one record.
        let id = info.header.id;
        let rec = cases.with(|p| MessageRecord::of(p, &id)).unwrap();
        assert!(rec.loose.is_some() && rec.provision.is_some());
        assert_eq!(
            records(&st).iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
            vec![Key::Message(id).bytes()]
        );
        let state = cases.with(|p| (p.book.clone(), p.consents.clone()));
        // As an earlier version wrote it: a record per part.
        let part = |tag: u8| [&[tag][..], id.as_bytes()].concat();
        fn enc<T: Serialize>(v: &T) -> Vec<u8> {
            konvert_envelope::cbor::to_deterministic_vec(v).unwrap()
        }
        st.records_apply(vec![
            (Key::Message(id).bytes(), None),
            (part(K_LOOSE), Some(enc(rec.loose.as_ref().unwrap()))),
            (part(K_PROVISION), Some(enc(rec.provision.as_ref().unwrap()))),
            (part(K_DECIDED), Some(Vec::new())),
        ])
        .unwrap();
        st.sync().unwrap();
        drop(cases);
        drop(st);
        let (st, again) = open(t.path());
        let merged = again.with(|p| MessageRecord::of(p, &id)).unwrap();
        assert_eq!(merged, MessageRecord { decided: true, ..rec });
        assert_eq!(again.with(|p| p.consents.clone()), state.1);
        assert!(again.with(|p| p.book.is_decided(&id)));
        // Only the merged record is left, and it is what a reload reads.
        let left = records(&st);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].0, Key::Message(id).bytes());
        drop(again);
        drop(st);
        let (_st, third) = open(t.path());
        assert_eq!(third.with(|p| MessageRecord::of(p, &id)), Some(merged));
        assert_eq!(
            third.with(|p| p.book.loose(&id).cloned()),
            state.0.loose(&id).cloned()
        );
    }

    #[test]
    fn a_snapshot_of_an_earlier_version_is_moved_into_records() {
        let t = tempfile::tempdir().unwrap();
        let p = profile();
        let kz = card("kz.mvd");
        let req = example("request");
        let now = req.header.time.plus_secs(60);
        let mut old = Procedure::default();
        old.book.apply(&req, now, now, &p).unwrap();
        apply_consent(&mut old, &req, &p).unwrap();
        old.rosters_sent.insert(AuthorityId::new("by.mvd").unwrap(), 3);
        let snapshot = t.path().join(STATE_FILE);
        std::fs::write(
            &snapshot,
            konvert_envelope::cbor::to_deterministic_vec(&old).unwrap(),
        )
        .unwrap();
        let (_st, cases) = open(t.path());
        assert!(!snapshot.exists(), "the snapshot is removed once moved");
        assert_eq!(cases.with(Clone::clone), old);
        assert_eq!(cases.receive(&req, &kz, &p, now, now), Ok(Applied::Duplicate));
        drop(cases);
        drop(_st);
        let (_st, again) = open(t.path());
        assert_eq!(again.with(Clone::clone), old);
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
    fn concurrent_changes_all_reach_the_store() {
        let t = tempfile::tempdir().unwrap();
        let p = profile();
        let kz = card("kz.mvd");
        let (st, cases) = open(t.path());
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
                            cases.receive(&m, kz, p, now, now).unwrap();
                            mine.push(m.header.id);
                        }
                        mine
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        drop(cases);
        drop(st);
        let (_st, again) = open(t.path());
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
        let (_st, cases) = open(t.path());
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
