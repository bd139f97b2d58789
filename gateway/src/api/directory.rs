//! `GET /v1/directory` and `POST /v1/directory/changes`: the verified
//! directory of the peers (signatory rosters, Art. 9.3, 9.4; renamings and
//! replacements of authorities, Art. 2) and the sending of this
//! authority's own renaming or replacement to every peer.
//!
//! Rosters are shown by signatory id and validity only: the names and
//! positions on them stay out of API documents and logs.

use konvert_envelope::model::{AgreementId, AuthorityId, DirectoryUpdate, Id, SignatoryId, Timestamp};
use serde::{Deserialize, Serialize};

/// What this gateway has verified and applied of its peers' directory updates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryView {
    /// The latest signatory roster of each authority, by authority id.
    pub rosters: Vec<RosterSummary>,
    /// Every renaming and replacement, by effective time.
    pub changes: Vec<AuthorityChangeView>,
}

/// The latest roster of an authority (older versions are kept, to judge old signatures).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RosterSummary {
    /// The authority.
    pub authority: AuthorityId,
    /// Its latest roster version.
    pub version: u64,
    /// When that version was issued (it applies from then on).
    pub issued: Timestamp,
    /// How many versions are on record.
    pub versions: u32,
    /// The signatories on the latest version (ids and validity only).
    pub signatories: Vec<RosterEntryView>,
}

/// One signatory on a roster, without name or position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RosterEntryView {
    /// The signatory id.
    pub id: SignatoryId,
    /// Valid from.
    pub valid_from: Timestamp,
    /// Valid until (open-ended if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<Timestamp>,
}

/// A recorded renaming or replacement (Art. 2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorityChangeView {
    /// `renamed` (same body, new id and name) or `replaced` (another body takes over).
    pub change: ChangeKind,
    /// The id until `effective` (it stays resolvable for older messages).
    pub old: AuthorityId,
    /// The id from `effective` on.
    pub new: AuthorityId,
    /// The new name, in Russian (an institution's name).
    pub name: String,
    /// The new name in English, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_en: Option<String>,
    /// When it takes effect.
    pub effective: Timestamp,
    /// The authority whose root key signed it.
    pub notified_by: AuthorityId,
}

/// Renamed or replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// Art. 2: the authority changes its name (and id).
    Renamed,
    /// Art. 2: another body becomes the competent authority.
    Replaced,
}

/// `POST /v1/directory/changes`: a renaming or replacement of this
/// authority, signed by its root key (made by `konvertctl authority
/// rename|replace`), to be sent to every peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeRequest {
    /// The `directory_update` body: `change` (`authority_renamed` or
    /// `authority_replaced`), optional `note`, and the root-key
    /// `attestation` over the same change.
    pub update: DirectoryUpdate,
    /// The signatory who signs the messages [default: the first configured
    /// signatory on the own roster who may sign now].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signatory: Option<SignatoryId>,
}

/// What `POST /v1/directory/changes` queued.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeQueued {
    /// `renamed` or `replaced`.
    pub change: ChangeKind,
    /// The old id.
    pub old: AuthorityId,
    /// The new id.
    pub new: AuthorityId,
    /// One entry per peer: the message queued to it, or why none was.
    pub peers: Vec<ChangeToPeer>,
}

/// The directory update to one peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeToPeer {
    /// The peer.
    pub peer: AuthorityId,
    /// The agreement the message is sent under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agreement: Option<AgreementId>,
    /// The queued message (follow it with `GET /v1/messages/{id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Id>,
    /// Why it was not queued (ids and rules only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `konvertctl authority list` as text.
pub fn directory_text(v: &DirectoryView) -> String {
    let mut out = String::new();
    if v.rosters.is_empty() {
        out.push_str("no signatory roster received from a peer yet\n");
    }
    for r in &v.rosters {
        out.push_str(&format!(
            "{}: roster version {} issued {} ({} on record)\n",
            r.authority, r.version, r.issued, r.versions
        ));
        for s in &r.signatories {
            let until = s.valid_until.map_or_else(|| "open".to_owned(), |u| u.to_string());
            out.push_str(&format!("  {}  valid {} .. {until}\n", s.id, s.valid_from));
        }
    }
    if v.changes.is_empty() {
        out.push_str("no authority renamed or replaced\n");
    }
    for c in &v.changes {
        let kind = match c.change {
            ChangeKind::Renamed => "renamed",
            ChangeKind::Replaced => "replaced",
        };
        out.push_str(&format!(
            "{} {kind} to {} ({}) from {}, notified by {}\n",
            c.old, c.new, c.name, c.effective, c.notified_by
        ));
    }
    out
}

/// `konvertctl authority rename|replace` as text.
pub fn queued_text(q: &ChangeQueued) -> String {
    let kind = match q.change {
        ChangeKind::Renamed => "renaming",
        ChangeKind::Replaced => "replacement",
    };
    let mut out = format!("{kind} of {} by {}:\n", q.old, q.new);
    for p in &q.peers {
        match (&p.id, &p.error) {
            (Some(id), _) => out.push_str(&format!("  {}: queued {id}\n", p.peer)),
            (None, Some(e)) => out.push_str(&format!("  {}: NOT queued: {e}\n", p.peer)),
            (None, None) => out.push_str(&format!("  {}: NOT queued\n", p.peer)),
        }
    }
    out
}
