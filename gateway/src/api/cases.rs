//! `GET /v1/cases` and `GET /v1/cases/{id}`: request cases (Art. 10.3
//! deadlines, states, history) as documents. A case holds ids, kinds,
//! times, states and Art. 10.4 grounds only — no personal data and no
//! message text — so these documents hold none either.

use konvert_envelope::model::{AgreementId, AuthorityId, Id, RefusalGround, Timestamp};
use konvert_envelope::workflow::{CaseEntry, CaseState, ProgressRecord, Side};
use serde::{Deserialize, Serialize};

/// Which cases `GET /v1/cases` lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaseSelection {
    /// Every case, earliest deadline first.
    All,
    /// Open cases whose deadline has passed (`overdue=true`).
    Overdue,
    /// Open cases due within this many seconds from now (`due_within=7d`).
    DueWithin(i64),
}

/// The parsed query of `GET /v1/cases`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaseFilter {
    /// Which cases.
    pub selection: CaseSelection,
    /// At most this many.
    pub limit: u32,
}

/// A request case as seen from this gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseView {
    /// The case id (= the request's message id).
    pub id: Id,
    /// The agreement.
    pub agreement: AgreementId,
    /// The profile version the case was opened under (Art. 16).
    pub profile_version: u32,
    /// The requesting authority.
    pub requester: AuthorityId,
    /// The requested authority.
    pub requested: AuthorityId,
    /// This gateway's side: `requester` or `requested`.
    pub role: Side,
    /// The state code: `received`, `in_progress`, `clarification_requested`,
    /// `clarified`, `postponed`, `confidentiality_notified`, `answered`,
    /// `partially_answered`, `refused`, `partially_refused`, `withdrawn`, `closed`.
    pub state: String,
    /// Whether the request still awaits its answer (the deadline runs).
    pub open: bool,
    /// Art. 10.4 grounds of a refusal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grounds: Vec<RefusalGround>,
    /// Header time of the request.
    pub requested_at: Timestamp,
    /// When the requested gateway received it (its receipt time).
    pub received_at: Timestamp,
    /// The answer deadline (Art. 10.3).
    pub deadline: Timestamp,
    /// Open and past its deadline now.
    pub overdue: bool,
    /// When it was closed locally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<Timestamp>,
    /// Clarification requests not yet answered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub open_clarifications: Vec<Id>,
    /// Progress notices (Art. 10.1).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub progress: Vec<ProgressRecord>,
    /// Every message of the case in the order applied (in `GET /v1/cases/{id}` only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<CaseEntry>,
}

/// The refusal grounds of a state, if it is a refusal (or a closed refusal).
pub fn grounds_of(s: &CaseState) -> Vec<RefusalGround> {
    match s {
        CaseState::Refused { grounds, .. } => grounds.clone(),
        CaseState::Closed {
            ending: konvert_envelope::workflow::Ending::Refused { grounds, .. },
        } => grounds.clone(),
        _ => Vec::new(),
    }
}

/// The cases table (`konvertctl requests`).
pub fn cases_table(items: &[CaseView]) -> String {
    let mut t = crate::client::Table::new(&[
        "CASE",
        "ROLE",
        "PEER",
        "AGREEMENT",
        "STATE",
        "RECEIVED",
        "DEADLINE",
        "OVERDUE",
    ]);
    for c in items {
        let peer = match c.role {
            Side::Requester => &c.requested,
            Side::Requested => &c.requester,
        };
        t.row(vec![
            c.id.to_string(),
            c.role.to_string(),
            peer.to_string(),
            c.agreement.to_string(),
            c.state.clone(),
            c.received_at.to_string(),
            c.deadline.to_string(),
            if c.overdue { "yes" } else { "no" }.into(),
        ]);
    }
    t.render()
}

/// One case in detail (`konvertctl requests show ID`).
pub fn case_text(c: &CaseView) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "case         {}", c.id);
    let _ = writeln!(
        s,
        "agreement    {} (profile version {})",
        c.agreement, c.profile_version
    );
    let _ = writeln!(s, "requester    {}", c.requester);
    let _ = writeln!(s, "requested    {}", c.requested);
    let _ = writeln!(s, "this side    {}", c.role);
    let _ = writeln!(s, "state        {}", c.state);
    if !c.grounds.is_empty() {
        let g: Vec<String> = c
            .grounds
            .iter()
            .map(|g| {
                serde_json::to_value(g)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            })
            .collect();
        let _ = writeln!(s, "grounds      {}", g.join(", "));
    }
    let _ = writeln!(s, "received     {}", c.received_at);
    let _ = writeln!(
        s,
        "deadline     {}{}",
        c.deadline,
        if c.overdue { " (overdue)" } else { "" }
    );
    if let Some(t) = c.closed_at {
        let _ = writeln!(s, "closed       {t}");
    }
    let _ = writeln!(s, "history:");
    let mut t = crate::client::Table::new(&["TIME", "MESSAGE", "KIND", "BY", "STATE AFTER"]);
    for e in &c.history {
        t.row(vec![
            e.time.to_string(),
            e.message.to_string(),
            e.kind.as_str().to_owned(),
            e.by.to_string(),
            e.state.clone(),
        ]);
    }
    s.push_str(&t.render());
    s
}
