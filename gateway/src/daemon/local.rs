//! Local acts of the agreement's procedure that the API asks for: closing
//! an ended case (Art. 11.5), the verified directory of the peers, and
//! sending this authority's renaming or replacement to every peer (Art. 2).

use std::sync::Arc;

use konvert_envelope::model::{AuthorityId, DirectoryChange, Id, Message, MessageBody, MessageHeader};
use konvert_envelope::roster::DirectoryStatement;
use konvert_envelope::workflow::CaseError;

use super::cases::{case_view, mirror, CloseError};
use super::outbound::{self, Submission};
use super::Node;
use crate::api::cases::CaseView;
use crate::api::directory::{
    AuthorityChangeView, ChangeKind, ChangeQueued, ChangeRequest, ChangeToPeer, DirectoryView,
    RosterEntryView, RosterSummary,
};
use crate::api::{Problem, ProblemType};

/// `POST /v1/cases/{id}/close`: closes an ended case on this side and
/// mirrors the store's case record (state `closed`, no deadline), so that
/// its messages may be destroyed early (`POST /v1/cases/{id}/purge`).
/// Closing a closed case again changes nothing and answers it as it is.
pub fn close_case(node: &Node, id: Id) -> Result<CaseView, Problem> {
    let now = node.now();
    let already = node
        .cases
        .with(|p| p.book.case(&id).map(|c| c.closed_at().is_some()));
    let case = match already {
        None => {
            return Err(Problem::not_found("case").with_error(
                "id",
                "unknown_case",
                format!("no request case {id} on this gateway (give the request's message id)"),
            ))
        }
        Some(true) => node.cases.with(|p| p.book.case(&id).cloned()),
        Some(false) => match node.cases.close(&id, now) {
            Ok(c) => Some(c),
            Err(CloseError::Case(e @ CaseError::WrongState { .. })) => {
                let state = node
                    .cases
                    .with(|p| p.book.case(&id).map(|c| c.state().code()))
                    .unwrap_or("unknown");
                return Err(Problem::new(
                    ProblemType::Conflict,
                    format!(
                        "case {id} is {state}: only an answered, refused or withdrawn case can be closed"
                    ),
                )
                .with_error("id", e.reject_code().to_string(), "the case has not ended"));
            }
            Err(CloseError::Case(e)) => {
                return Err(Problem::not_found("case").with_error(
                    "id",
                    e.reject_code().to_string(),
                    e.to_string(),
                ))
            }
            Err(CloseError::State(e)) => {
                tracing::error!(error = %e, "procedure state not written; case not closed");
                return Err(Problem::unavailable("the gateway cannot record the case now"));
            }
        },
    };
    let Some(case) = case else {
        return Err(Problem::not_found("case"));
    };
    // The store's record follows the book (idempotent: closing again repairs
    // a crash between the two writes).
    if let Err(e) = mirror(node, &id) {
        tracing::error!(case = %id, error = %e, "store case record not updated after close");
        return Err(Problem::unavailable(
            "the case is closed, but the store's case record could not be updated; close it again",
        ));
    }
    tracing::info!(case = %id, state = case.state().code(), "case closed");
    Ok(case_view(&case, &node.keys.authority, now, true))
}

/// `GET /v1/directory`: the peers' latest rosters (ids and validity only)
/// and every renaming or replacement on record.
pub fn directory_view(node: &Node) -> DirectoryView {
    node.cases.with(|p| {
        let dir = &p.directory;
        let mut authorities: Vec<AuthorityId> = node.directory().peers.keys().cloned().collect();
        for c in dir.changes() {
            for a in [&c.old, &c.new] {
                if !authorities.contains(a) {
                    authorities.push(a.clone());
                }
            }
        }
        authorities.sort();
        let rosters = authorities
            .iter()
            .filter_map(|a| {
                let versions = dir.rosters().versions(a);
                let last = versions.last()?.roster();
                Some(RosterSummary {
                    authority: a.clone(),
                    version: last.version,
                    issued: last.issued,
                    versions: u32::try_from(versions.len()).unwrap_or(u32::MAX),
                    signatories: last
                        .signatories
                        .iter()
                        .map(|s| RosterEntryView {
                            id: s.id.clone(),
                            valid_from: s.valid_from,
                            valid_until: s.valid_until,
                        })
                        .collect(),
                })
            })
            .collect();
        let changes = dir
            .changes()
            .iter()
            .map(|c| AuthorityChangeView {
                change: if c.replaced {
                    ChangeKind::Replaced
                } else {
                    ChangeKind::Renamed
                },
                old: c.old.clone(),
                new: c.new.clone(),
                name: c.new_name.clone(),
                name_en: c.new_name_en.clone(),
                effective: c.effective,
                notified_by: c.notified_by.clone(),
            })
            .collect();
        DirectoryView { rosters, changes }
    })
}

/// The configured signatory who signs the gateway's own directory updates:
/// the first one the own roster lets sign now, or (before the first
/// roster) the first configured one.
pub fn default_signatory(node: &Node) -> Option<String> {
    let now = node.now();
    let roster = node.own_roster.current(&node.config.keys_dir).ok()?;
    node.config
        .signatories
        .iter()
        .find(|s| {
            let Some(key) = node.signatories.get(&s.id) else {
                return false;
            };
            roster.as_ref().is_none_or(|r| {
                crate::signatories::check_signer(r.roster(), &s.id, &key.verifying_key(), &[now]).is_ok()
            })
        })
        .map(|s| s.id.clone())
}

fn bad(field: &str, rule: &str, message: impl Into<String>) -> Problem {
    let message = message.into();
    Problem::new(ProblemType::Validation, message.clone()).with_error(field, rule, message)
}

/// `POST /v1/directory/changes`: checks that the update is a renaming or
/// replacement signed by this authority's root key (the public half in
/// `keys/root.key.pem.pub`, the one on the card) over exactly this change,
/// issued no later than now; then queues one `directory_update` to every
/// peer (under the first agreement configured for it). The peers verify
/// it with the root key on this authority's card and record it (the old
/// id stays resolvable). Sending it again is harmless: a peer records a
/// change once.
pub fn send_change(node: &Arc<Node>, req: ChangeRequest) -> Result<ChangeQueued, Problem> {
    let (change, old, new) = match &req.update.change {
        DirectoryChange::AuthorityRenamed { old, new, .. } => (ChangeKind::Renamed, old, new),
        DirectoryChange::AuthorityReplaced { old, new, .. } => (ChangeKind::Replaced, old, new),
        DirectoryChange::SignatoryRoster { .. } => {
            return Err(bad(
                "/update/change",
                "wrong_change",
                "a signatory roster is sent by konvertd itself from keys/roster.cose \
                 (konvertctl signatory add|revoke, then reload)",
            ))
        }
        DirectoryChange::KeyRotation { .. } => {
            return Err(bad(
                "/update/change",
                "wrong_change",
                "a key rotation is sent by konvertd itself from keys/rotation/ \
                 (konvertctl keys rotate, then reload)",
            ))
        }
    };
    let own = &node.keys.authority;
    let att = req.update.attestation.as_ref().ok_or_else(|| {
        bad(
            "/update/attestation",
            "required",
            "the change must carry the root key's attestation (konvertctl authority rename|replace makes it)",
        )
    })?;
    let root_pub = crate::offline::pub_path(&node.config.keys_dir.join(crate::signatories::ROOT_KEY_FILE));
    let root = crate::offline::load_public_key(&root_pub).map_err(|e| {
        tracing::error!(error = %e, "own root public key not usable");
        Problem::new(
            ProblemType::Unavailable,
            "this gateway's root public key (keys/root.key.pem.pub) cannot be read; see the daemon's log",
        )
    })?;
    let statement = DirectoryStatement::verify(&att.0, &root)
        .map_err(|e| bad("/update/attestation", "directory_not_verified", e.to_string()))?;
    if &statement.authority != own {
        return Err(bad(
            "/update/attestation",
            "wrong_authority",
            format!(
                "the statement is of {}, this gateway serves {own}",
                statement.authority
            ),
        ));
    }
    if statement.change != req.update.change {
        return Err(bad(
            "/update/change",
            "change_mismatch",
            "the change differs from the signed one in the attestation",
        ));
    }
    let now = node.now();
    if statement.issued > now {
        return Err(bad(
            "/update/attestation",
            "issued_in_future",
            format!(
                "the statement is issued at {}, after now ({now})",
                statement.issued
            ),
        ));
    }
    let signatory = match &req.signatory {
        Some(s) => s.to_string(),
        None => default_signatory(node).ok_or_else(|| {
            bad(
                "/signatory",
                "signer_not_authorised",
                "no configured signatory may sign now: add one to the roster (konvertctl signatory add)",
            )
        })?,
    };
    let dir = node.directory();
    let mut peers = Vec::new();
    for (peer, entry) in &dir.peers {
        let Some(agreement) = entry.agreements.first() else {
            continue;
        };
        let id = Id::new(now);
        let msg = Message {
            header: MessageHeader {
                id,
                time: now,
                agreement: agreement.clone(),
                from: own.clone(),
                to: peer.clone(),
                in_reply_to: None,
            },
            body: MessageBody::DirectoryUpdate(req.update.clone()),
        };
        let sub = Submission {
            message: msg,
            signatory: signatory.clone(),
            sources: Vec::new(),
            purpose: None,
        };
        let out = match outbound::submit_blocking(node, sub) {
            Ok(_) => {
                tracing::info!(peer = %peer, id = %id, old = %old, new = %new, "authority change queued");
                ChangeToPeer {
                    peer: peer.clone(),
                    agreement: Some(agreement.clone()),
                    id: Some(id),
                    error: None,
                }
            }
            Err(e) => {
                tracing::warn!(peer = %peer, error = %e, "authority change not queued");
                ChangeToPeer {
                    peer: peer.clone(),
                    agreement: Some(agreement.clone()),
                    id: None,
                    error: Some(e.to_string()),
                }
            }
        };
        peers.push(out);
    }
    // The same signatory for every peer: if it may not sign, say so once, as a problem.
    if !peers.is_empty() && peers.iter().all(|p| p.id.is_none()) {
        if let Some(e) = peers.first().and_then(|p| p.error.clone()) {
            return Err(bad("/update", "not_queued", format!("queued to no peer: {e}")));
        }
    }
    Ok(ChangeQueued {
        change,
        old: old.clone(),
        new: new.clone(),
        peers,
    })
}
