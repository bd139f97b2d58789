//! Agreement profiles and the validation of a message against one.
//!
//! A [`Profile`] describes one bilateral agreement: its parties and their
//! competent authorities (Art. 2), the person categories (Art. 5), personal
//! data fields (Art. 6), message kinds and subjects (Art. 3, 4, 8) it allows,
//! the answer deadline (Art. 10.3), the working language (Art. 14), its
//! version (Art. 16), the dates it is in force (Art. 17), size limits and the
//! default retention per message kind (Art. 11.5).
//!
//! Profiles are TOML files (`deploy/profiles/*.toml`) loaded with
//! [`Profile::from_toml_str`]. [`Profile::validate`] is a pure function of a
//! message and the current time; its errors name field paths and rules and
//! never carry personal data or message text.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use jiff::civil::Date;
use jiff::ToSpan as _;
use serde::Deserialize;

use crate::model::{
    AgreementId, Attachment, AuthorityId, CountryCode, DirectoryChange, InformationItems, Message,
    MessageBody, MessageKind, Name, Outcome, Person, PersonCategory, PersonField, Timestamp, Topic,
};

/// How far a message's `time` may lie after `now` (clock skew between gateways), in seconds.
pub const MAX_CLOCK_SKEW_SECS: i64 = 300;

/// Error loading a profile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    /// The TOML text is malformed, or a key is unknown, missing or of the wrong type.
    #[error("{source_name}:{line}:{column}: {reason}")]
    Syntax {
        /// Name of the source (usually the file path).
        source_name: String,
        /// 1-based line of the error (0 if unknown).
        line: usize,
        /// 1-based column (in characters) of the error (0 if unknown).
        column: usize,
        /// What is wrong.
        reason: String,
    },
    /// The profile parses but is inconsistent (for example two parties with the same country).
    #[error("{source_name}: {key}: {reason}")]
    Invalid {
        /// Name of the source (usually the file path).
        source_name: String,
        /// The offending key, for example `parties[1].authorities[0].id`.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// A competent authority of a party (Art. 2).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Authority {
    /// Id, for example `kz.mvd`.
    pub id: AuthorityId,
    /// Name in Russian (Art. 14).
    pub name: String,
    /// Name in English.
    pub name_en: String,
}

/// A party to the agreement and its competent authorities.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Party {
    /// ISO 3166-1 alpha-3 code of the state, for example `KAZ`.
    pub country: CountryCode,
    /// Name of the state in Russian.
    pub name: String,
    /// The competent authorities (Art. 2).
    pub authorities: Vec<Authority>,
}

/// Size limits applied to every message under a profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Most persons in one message.
    pub max_persons_per_message: usize,
    /// Most attachments (photographs, fingerprint cards, documents) in one message.
    pub max_attachments_per_message: usize,
    /// Largest attachment, in bytes.
    pub max_attachment_bytes: u64,
    /// Longest free-text field, in characters (Unicode scalar values).
    pub max_text_chars: usize,
    /// Longest name, identifier-like value (document number, address line) in characters.
    pub max_short_text_chars: usize,
    /// Most items in any list other than persons and attachments (questions, documents, signatories…).
    pub max_list_items: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionToml {
    default_days: u32,
    #[serde(default)]
    per_kind: BTreeMap<MessageKind, u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowedToml {
    categories: Vec<PersonCategory>,
    person_fields: Vec<PersonField>,
    kinds: Vec<MessageKind>,
    unsolicited_topics: Vec<Topic>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileToml {
    id: AgreementId,
    version: u32,
    title: String,
    working_language: String,
    in_force_from: Date,
    #[serde(default)]
    version_in_force_from: Option<Date>,
    #[serde(default)]
    termination_notice: Option<Date>,
    termination_period_months: u16,
    answer_deadline_days: u16,
    parties: Vec<Party>,
    allowed: AllowedToml,
    limits: Limits,
    retention: RetentionToml,
}

/// One bilateral agreement, as the gateway enforces it. Built only by
/// [`Profile::from_toml_str`], which checks it for consistency.
#[derive(Debug, Clone)]
pub struct Profile {
    /// The agreement id (also [`Profile::id`]).
    pub id: AgreementId,
    version: u32,
    title: String,
    working_language: String,
    in_force_from: Date,
    version_in_force_from: Option<Date>,
    termination_notice: Option<Date>,
    termination_period_months: u16,
    answer_deadline_days: u16,
    parties: Vec<Party>,
    categories: BTreeSet<PersonCategory>,
    person_fields: BTreeSet<PersonField>,
    kinds: BTreeSet<MessageKind>,
    topics: BTreeSet<Topic>,
    limits: Limits,
    retention_default_days: u32,
    retention_per_kind: BTreeMap<MessageKind, u32>,
}

/// The rule a validation error breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ValidationRule {
    /// The message names another agreement than this profile.
    AgreementMismatch,
    /// Art. 17: the agreement is not yet in force at that time.
    NotInForce,
    /// Art. 17: the agreement has terminated (six months after a notice).
    Terminated,
    /// The message's time lies in the future.
    TimeInFuture,
    /// Art. 2: the authority is not a competent authority under this profile.
    UnknownAuthority,
    /// Sender and recipient belong to the same party.
    SameParty,
    /// The profile does not allow this message kind.
    KindNotAllowed,
    /// The profile does not allow this Art. 5 category.
    CategoryNotAllowed,
    /// The profile does not allow this Art. 6 field.
    FieldNotAllowed,
    /// The profile does not allow this Art. 3/4 subject for unsolicited information.
    TopicNotAllowed,
    /// A required element is missing or empty.
    MissingRequired,
    /// A text is longer than the profile allows.
    TooLong,
    /// A list has more elements than the profile allows.
    TooMany,
    /// An attachment is larger than the profile allows.
    TooLarge,
    /// An answer without `in_reply_to`.
    MissingReplyTo,
    /// A message that is not an answer has `in_reply_to`.
    UnexpectedReplyTo,
    /// An attachment is neither sealed (length and SHA-256) nor names a file;
    /// or, for a sealed message, is not sealed.
    AttachmentNotSealed,
    /// A media type is malformed, or not an image where an image is needed.
    BadMediaType,
    /// A Cyrillic name without Cyrillic letters, or a Latin name without Latin letters,
    /// or letters of another script.
    WrongScript,
    /// A value occurs twice where it must be unique.
    Duplicate,
    /// Dates in the wrong order (for example valid until before valid from).
    DateOrder,
    /// A directory update about an authority the sender does not speak for.
    NotOwnAuthority,
}

impl ValidationRule {
    /// Stable snake_case name of the rule, for logs and negative receipts.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::AgreementMismatch => "agreement_mismatch",
            Self::NotInForce => "not_in_force",
            Self::Terminated => "terminated",
            Self::TimeInFuture => "time_in_future",
            Self::UnknownAuthority => "unknown_authority",
            Self::SameParty => "same_party",
            Self::KindNotAllowed => "kind_not_allowed",
            Self::CategoryNotAllowed => "category_not_allowed",
            Self::FieldNotAllowed => "field_not_allowed",
            Self::TopicNotAllowed => "topic_not_allowed",
            Self::MissingRequired => "missing_required",
            Self::TooLong => "too_long",
            Self::TooMany => "too_many",
            Self::TooLarge => "too_large",
            Self::MissingReplyTo => "missing_reply_to",
            Self::UnexpectedReplyTo => "unexpected_reply_to",
            Self::AttachmentNotSealed => "attachment_not_sealed",
            Self::BadMediaType => "bad_media_type",
            Self::WrongScript => "wrong_script",
            Self::Duplicate => "duplicate",
            Self::DateOrder => "date_order",
            Self::NotOwnAuthority => "not_own_authority",
        }
    }
}

impl fmt::Display for ValidationRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Art. 17: why an agreement is not in force at a given time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("agreement {agreement} {reason}")]
pub struct NotInForce {
    /// The agreement.
    pub agreement: AgreementId,
    /// Not yet, or no longer.
    pub reason: NotInForceReason,
}

/// Why an agreement is not in force: its dates, nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotInForceReason {
    /// Before the entry into force.
    NotYet {
        /// First day in force.
        from: Date,
    },
    /// The termination period after a notice of termination has ended.
    Terminated {
        /// Date the notice of termination was received.
        notice: Date,
        /// The termination period in months (Art. 17: six).
        months: u16,
        /// First day no longer in force.
        ended: Date,
    },
}

impl fmt::Display for NotInForceReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotYet { from } => write!(f, "is in force only from {from} (Art. 17)"),
            Self::Terminated {
                notice,
                months,
                ended,
            } => write!(
                f,
                "terminated on {ended}, {months} months after the notice of {notice} (Art. 17)"
            ),
        }
    }
}

impl NotInForce {
    /// Whether the agreement has terminated (rather than not yet entered into force).
    pub fn is_terminated(&self) -> bool {
        matches!(self.reason, NotInForceReason::Terminated { .. })
    }
    /// The receipt code for a message refused for this reason:
    /// `agreement_terminated` or `agreement_not_in_force`.
    pub fn reject_code(&self) -> crate::receipt::RejectCode {
        if self.is_terminated() {
            crate::receipt::RejectCode::AgreementTerminated
        } else {
            crate::receipt::RejectCode::AgreementNotInForce
        }
    }
    /// The same, as a validation error at `path`.
    pub fn to_validation_error(&self, path: &str) -> ValidationError {
        let rule = if self.is_terminated() {
            ValidationRule::Terminated
        } else {
            ValidationRule::NotInForce
        };
        ValidationError::new(path, rule, self.to_string())
    }
}

/// One reason a message is refused. Contains field paths, ids, counts and
/// dates of the agreement, never personal data or message text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message} [{rule}]")]
pub struct ValidationError {
    /// Path of the offending element, for example `body.content.persons[0].fingerprint_card`.
    pub path: String,
    /// The rule broken.
    pub rule: ValidationRule,
    /// Explanation for a person, without personal data.
    pub message: String,
}

impl ValidationError {
    fn new(path: impl Into<String>, rule: ValidationRule, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            rule,
            message: message.into(),
        }
    }
}

/// Every reason a message is refused (at least one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationErrors(pub Vec<ValidationError>);

impl ValidationErrors {
    /// The single error of a message under agreement `message` checked against profile `profile`.
    pub fn agreement_mismatch(message: &AgreementId, profile: &AgreementId) -> Self {
        Self(vec![ValidationError::new(
            "header.agreement",
            ValidationRule::AgreementMismatch,
            format!("message is under agreement {message}, this profile is {profile}"),
        )])
    }
    /// The errors.
    pub fn errors(&self) -> &[ValidationError] {
        &self.0
    }
    /// Whether some error breaks `rule`.
    pub fn has(&self, rule: ValidationRule) -> bool {
        self.0.iter().any(|e| e.rule == rule)
    }
    /// Whether some error breaks `rule` at exactly `path`.
    pub fn has_at(&self, rule: ValidationRule, path: &str) -> bool {
        self.0.iter().any(|e| e.rule == rule && e.path == path)
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "message refused, {} error(s):", self.0.len())?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

impl Profile {
    /// Parses and checks a profile. `source_name` (usually the file path) is
    /// only used in error messages.
    pub fn from_toml_str(text: &str, source_name: &str) -> Result<Profile, ProfileError> {
        let raw: ProfileToml = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((0, 0), |s| line_col(text, s.start));
            ProfileError::Syntax {
                source_name: source_name.to_owned(),
                line,
                column,
                reason: e.message().to_owned(),
            }
        })?;
        let invalid = |key: &str, reason: String| ProfileError::Invalid {
            source_name: source_name.to_owned(),
            key: key.to_owned(),
            reason,
        };
        if raw.title.trim().is_empty() {
            return Err(invalid("title", "must not be empty".into()));
        }
        if raw.working_language.trim().is_empty() {
            return Err(invalid("working_language", "must not be empty".into()));
        }
        if raw.parties.len() != 2 {
            return Err(invalid(
                "parties",
                format!("a bilateral agreement has 2 parties, found {}", raw.parties.len()),
            ));
        }
        if raw.parties[0].country == raw.parties[1].country {
            return Err(invalid(
                "parties[1].country",
                "both parties name the same country".into(),
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, p) in raw.parties.iter().enumerate() {
            if p.authorities.is_empty() {
                return Err(invalid(
                    &format!("parties[{i}].authorities"),
                    "a party needs at least one authority".into(),
                ));
            }
            for (j, a) in p.authorities.iter().enumerate() {
                if !seen.insert(a.id.clone()) {
                    return Err(invalid(
                        &format!("parties[{i}].authorities[{j}].id"),
                        format!("authority {} is listed twice", a.id),
                    ));
                }
                if a.name.trim().is_empty() {
                    return Err(invalid(
                        &format!("parties[{i}].authorities[{j}].name"),
                        "must not be empty".into(),
                    ));
                }
            }
        }
        if raw.answer_deadline_days == 0 {
            return Err(invalid("answer_deadline_days", "must be at least 1".into()));
        }
        if let Some(n) = raw.termination_notice {
            if n < raw.in_force_from {
                return Err(invalid(
                    "termination_notice",
                    format!("{n} is before the entry into force on {}", raw.in_force_from),
                ));
            }
        }
        if let Some(v) = raw.version_in_force_from {
            if v < raw.in_force_from {
                return Err(invalid(
                    "version_in_force_from",
                    format!("{v} is before the entry into force on {}", raw.in_force_from),
                ));
            }
        }
        let l = &raw.limits;
        for (key, v) in [
            ("limits.max_persons_per_message", l.max_persons_per_message as u64),
            (
                "limits.max_attachments_per_message",
                l.max_attachments_per_message as u64,
            ),
            ("limits.max_attachment_bytes", l.max_attachment_bytes),
            ("limits.max_text_chars", l.max_text_chars as u64),
            ("limits.max_short_text_chars", l.max_short_text_chars as u64),
            ("limits.max_list_items", l.max_list_items as u64),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be at least 1".into()));
            }
        }
        if raw.allowed.kinds.is_empty() {
            return Err(invalid("allowed.kinds", "no message kind is allowed".into()));
        }
        if raw.retention.default_days == 0 {
            return Err(invalid("retention.default_days", "must be at least 1".into()));
        }
        if let Some((k, _)) = raw.retention.per_kind.iter().find(|(_, d)| **d == 0) {
            return Err(invalid(
                &format!("retention.per_kind.{k}"),
                "must be at least 1".into(),
            ));
        }
        Ok(Profile {
            id: raw.id,
            version: raw.version,
            title: raw.title,
            working_language: raw.working_language,
            in_force_from: raw.in_force_from,
            version_in_force_from: raw.version_in_force_from,
            termination_notice: raw.termination_notice,
            termination_period_months: raw.termination_period_months,
            answer_deadline_days: raw.answer_deadline_days,
            parties: raw.parties,
            categories: raw.allowed.categories.into_iter().collect(),
            person_fields: raw.allowed.person_fields.into_iter().collect(),
            kinds: raw.allowed.kinds.into_iter().collect(),
            topics: raw.allowed.unsolicited_topics.into_iter().collect(),
            limits: raw.limits,
            retention_default_days: raw.retention.default_days,
            retention_per_kind: raw.retention.per_kind,
        })
    }

    /// The agreement id, for example `kz-by-2019`.
    pub fn id(&self) -> &AgreementId {
        &self.id
    }
    /// Version of the profile: 1 for the agreement as signed, raised with each protocol (Art. 16).
    pub fn version(&self) -> u32 {
        self.version
    }
    /// Title of the agreement, in Russian.
    pub fn title(&self) -> &str {
        &self.title
    }
    /// Working language (Art. 14), as a BCP 47 tag: `ru`.
    pub fn working_language(&self) -> &str {
        &self.working_language
    }
    /// The parties and their authorities.
    pub fn parties(&self) -> &[Party] {
        &self.parties
    }
    /// Date of entry into force (Art. 17).
    pub fn in_force_from(&self) -> Date {
        self.in_force_from
    }
    /// Date a notice of termination was received, if one was (Art. 17).
    pub fn termination_notice(&self) -> Option<Date> {
        self.termination_notice
    }
    /// First day the agreement is no longer in force: the notice date plus
    /// `termination_period_months` (Art. 17: six months), if a notice was received.
    pub fn terminated_on(&self) -> Option<Date> {
        let n = self.termination_notice?;
        n.checked_add(i64::from(self.termination_period_months).months())
            .ok()
    }
    /// Days allowed to answer a request (Art. 10.3: 30 calendar days).
    pub fn answer_deadline_days(&self) -> u16 {
        self.answer_deadline_days
    }
    /// The size limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }
    /// Whether the profile allows an Art. 5 category.
    pub fn allows_category(&self, c: PersonCategory) -> bool {
        self.categories.contains(&c)
    }
    /// Whether the profile allows an Art. 6 field.
    pub fn allows_field(&self, f: PersonField) -> bool {
        self.person_fields.contains(&f)
    }
    /// Whether the profile allows a message kind.
    pub fn allows_kind(&self, k: MessageKind) -> bool {
        self.kinds.contains(&k)
    }
    /// Whether the profile allows an unsolicited-information subject.
    pub fn allows_topic(&self, t: Topic) -> bool {
        self.topics.contains(&t)
    }
    /// Default retention of a message of this kind, in days (Art. 11.5); the
    /// store may shorten it per party by configuration.
    pub fn retention_days(&self, kind: MessageKind) -> u32 {
        self.retention_per_kind
            .get(&kind)
            .copied()
            .unwrap_or(self.retention_default_days)
    }

    /// Whether the agreement is in force on the (UTC) date of `t` (Art. 17):
    /// from `in_force_from` inclusive until [`Profile::terminated_on`] exclusive.
    /// The error says which of the two it is, with the agreement's dates only.
    pub fn in_force_at(&self, t: Timestamp) -> Result<(), NotInForce> {
        let d = t.date_utc();
        if d < self.in_force_from {
            return Err(NotInForce {
                agreement: self.id.clone(),
                reason: NotInForceReason::NotYet {
                    from: self.in_force_from,
                },
            });
        }
        if let (Some(notice), Some(end)) = (self.termination_notice, self.terminated_on()) {
            if d >= end {
                return Err(NotInForce {
                    agreement: self.id.clone(),
                    reason: NotInForceReason::Terminated {
                        notice,
                        months: self.termination_period_months,
                        ended: end,
                    },
                });
            }
        }
        Ok(())
    }

    /// First day this version (Art. 16: an amendment protocol) applies:
    /// `version_in_force_from`, or the agreement's `in_force_from` if not given.
    pub fn version_in_force_from(&self) -> Date {
        self.version_in_force_from.unwrap_or(self.in_force_from)
    }

    /// The authority with this id, if it is a competent authority under this profile.
    pub fn authority(&self, id: &AuthorityId) -> Option<&Authority> {
        self.parties
            .iter()
            .flat_map(|p| p.authorities.iter())
            .find(|a| &a.id == id)
    }

    /// The party an authority belongs to.
    pub fn party_of(&self, id: &AuthorityId) -> Option<&Party> {
        self.parties
            .iter()
            .find(|p| p.authorities.iter().any(|a| &a.id == id))
    }

    /// The answer deadline of a request received at `received` (Art. 10.3).
    ///
    /// Counted in calendar days in UTC: the day of receipt is day 0, and the
    /// answer is due by the end of day `answer_deadline_days` (30), that is
    /// `23:59:59 UTC` of the receipt date plus 30 days. A request received on
    /// 2026-11-02 at any time is due by 2026-12-02T23:59:59Z; an answer sent
    /// after that instant is overdue.
    pub fn answer_deadline(&self, received: Timestamp) -> Timestamp {
        let due = received
            .date_utc()
            .checked_add(i64::from(self.answer_deadline_days).days())
            .unwrap_or(jiff::civil::Date::MAX);
        let end = due
            .to_zoned(jiff::tz::TimeZone::UTC)
            .map(|z| z.timestamp().as_second() + 86_399)
            .unwrap_or(i64::MAX);
        Timestamp::from_unix(end)
    }

    /// Checks a message against this profile at time `now`: agreement, dates
    /// in force, authorities, kind, reply linkage, and every element of the
    /// body. Every attachment must be sealed (length and SHA-256 set, no
    /// `file`): this is the check for a message as signed, sent and received.
    /// Returns every error found, not just the first.
    pub fn validate(&self, msg: &Message, now: Timestamp) -> Result<(), ValidationErrors> {
        self.validate_inner(msg, now, true)
    }

    /// Like [`Profile::validate`], but an attachment may instead name a `file`
    /// whose bytes the sealer will read: the check of an integrator's message
    /// before sealing.
    pub fn validate_unsealed(&self, msg: &Message, now: Timestamp) -> Result<(), ValidationErrors> {
        self.validate_inner(msg, now, false)
    }

    fn validate_inner(&self, msg: &Message, now: Timestamp, sealed: bool) -> Result<(), ValidationErrors> {
        let mut c = Checker {
            p: self,
            errs: Vec::new(),
            sealed,
            attachments: 0,
        };
        c.header(msg, now);
        c.body(msg);
        if c.errs.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(c.errs))
        }
    }
}

/// Why a profile version could not be added to or found in [`ProfileVersions`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileVersionError {
    /// The same agreement and version were added twice.
    #[error("profile {agreement} version {version} is loaded twice")]
    DuplicateVersion {
        /// The agreement.
        agreement: AgreementId,
        /// The version.
        version: u32,
    },
    /// No profile of this agreement is loaded.
    #[error("no profile of agreement {0} is loaded")]
    UnknownAgreement(AgreementId),
    /// No version of the agreement applies yet at that time.
    #[error("agreement {agreement}: no version applies before {first}")]
    NoVersionYet {
        /// The agreement.
        agreement: AgreementId,
        /// First day of the earliest version.
        first: Date,
    },
    /// The agreement is not in force at that time (Art. 17).
    #[error(transparent)]
    NotInForce(#[from] NotInForce),
}

impl ProfileVersionError {
    /// The receipt code for a message refused for this reason.
    pub fn reject_code(&self) -> crate::receipt::RejectCode {
        match self {
            Self::NotInForce(e) => e.reject_code(),
            _ => crate::receipt::RejectCode::AgreementNotInForce,
        }
    }
}

/// Every loaded version of every agreement (Art. 16: amendments come as
/// protocols, each a new profile version with the date it applies from).
///
/// [`ProfileVersions::at`] answers which version governs a message at a
/// given time and whether the agreement is in force then; a case keeps the
/// version it was opened under and finds it again with
/// [`ProfileVersions::get`]. The dates in force (entry into force,
/// termination notice) are those of the highest loaded version, the one
/// that reflects the latest notifications.
#[derive(Debug, Clone, Default)]
pub struct ProfileVersions {
    by_agreement: BTreeMap<AgreementId, BTreeMap<u32, Profile>>,
}

impl ProfileVersions {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a profile version; the same agreement and version twice is an error.
    pub fn insert(&mut self, profile: Profile) -> Result<(), ProfileVersionError> {
        let versions = self.by_agreement.entry(profile.id.clone()).or_default();
        if versions.contains_key(&profile.version) {
            return Err(ProfileVersionError::DuplicateVersion {
                agreement: profile.id.clone(),
                version: profile.version,
            });
        }
        versions.insert(profile.version, profile);
        Ok(())
    }

    /// One exact version (the one a case was opened under).
    pub fn get(&self, agreement: &AgreementId, version: u32) -> Option<&Profile> {
        self.by_agreement.get(agreement)?.get(&version)
    }

    /// The highest loaded version of an agreement.
    pub fn latest(&self, agreement: &AgreementId) -> Option<&Profile> {
        self.by_agreement.get(agreement)?.values().next_back()
    }

    /// The version that governs a message made at `t`: the highest version
    /// whose [`Profile::version_in_force_from`] is on or before the date of
    /// `t`, provided the agreement is in force at `t` (Art. 17, by the dates
    /// of the highest version).
    pub fn at(&self, agreement: &AgreementId, t: Timestamp) -> Result<&Profile, ProfileVersionError> {
        let versions = self
            .by_agreement
            .get(agreement)
            .ok_or_else(|| ProfileVersionError::UnknownAgreement(agreement.clone()))?;
        let latest = versions
            .values()
            .next_back()
            .ok_or_else(|| ProfileVersionError::UnknownAgreement(agreement.clone()))?;
        latest.in_force_at(t)?;
        let d = t.date_utc();
        versions
            .values()
            .rev()
            .find(|p| p.version_in_force_from() <= d)
            .ok_or_else(|| ProfileVersionError::NoVersionYet {
                agreement: agreement.clone(),
                first: versions
                    .values()
                    .map(Profile::version_in_force_from)
                    .min()
                    .unwrap_or(latest.in_force_from),
            })
    }

    /// Every loaded agreement id.
    pub fn agreements(&self) -> impl Iterator<Item = &AgreementId> {
        self.by_agreement.keys()
    }
}

/// Walks a message and collects errors.
struct Checker<'a> {
    p: &'a Profile,
    errs: Vec<ValidationError>,
    sealed: bool,
    attachments: usize,
}

fn is_cyrillic(c: char) -> bool {
    matches!(c, '\u{0400}'..='\u{052F}' | '\u{1C80}'..='\u{1C8F}' | '\u{2DE0}'..='\u{2DFF}' | '\u{A640}'..='\u{A69F}')
}

fn is_latin(c: char) -> bool {
    let extended =
        matches!(c, '\u{00C0}'..='\u{024F}' | '\u{1E00}'..='\u{1EFF}') && c != '\u{00D7}' && c != '\u{00F7}';
    c.is_ascii_alphabetic() || extended
}

/// Characters a name may hold besides letters of its script.
fn is_name_punct(c: char) -> bool {
    matches!(c, ' ' | '-' | '\'' | '’' | '.' | '\u{2010}')
}

fn is_media_type(s: &str) -> bool {
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    let essence = s.split(';').next().unwrap_or("").trim();
    match essence.split_once('/') {
        Some((t, sub)) => s.len() <= crate::model::MAX_MEDIA_TYPE_LEN && token(t) && token(sub),
        None => false,
    }
}

impl Checker<'_> {
    fn err(&mut self, path: impl Into<String>, rule: ValidationRule, message: impl Into<String>) {
        self.errs.push(ValidationError::new(path, rule, message));
    }

    fn header(&mut self, msg: &Message, now: Timestamp) {
        let h = &msg.header;
        let p = self.p;
        if h.agreement != p.id {
            self.err(
                "header.agreement",
                ValidationRule::AgreementMismatch,
                format!(
                    "message is under agreement {}, this profile is {}",
                    h.agreement, p.id
                ),
            );
        }
        if let Err(e) = p.in_force_at(h.time) {
            self.errs.push(e.to_validation_error("header.time"));
        } else if let Err(e) = p.in_force_at(now) {
            let mut e = e.to_validation_error("header");
            e.message = format!("not at the time of processing: {}", e.message);
            self.errs.push(e);
        }
        if h.time > now.plus_secs(MAX_CLOCK_SKEW_SECS) {
            self.err(
                "header.time",
                ValidationRule::TimeInFuture,
                format!("message time {} is after the current time {now}", h.time),
            );
        }
        let from = p.party_of(&h.from);
        let to = p.party_of(&h.to);
        if from.is_none() {
            self.err(
                "header.from",
                ValidationRule::UnknownAuthority,
                format!("{} is not a competent authority under {}", h.from, p.id),
            );
        }
        if to.is_none() {
            self.err(
                "header.to",
                ValidationRule::UnknownAuthority,
                format!("{} is not a competent authority under {}", h.to, p.id),
            );
        }
        if let (Some(a), Some(b)) = (from, to) {
            if a.country == b.country {
                self.err(
                    "header.to",
                    ValidationRule::SameParty,
                    format!(
                        "{} and {} are authorities of the same party {}",
                        h.from, h.to, a.country
                    ),
                );
            }
        }
        let kind = msg.kind();
        if !p.allows_kind(kind) {
            self.err(
                "body.kind",
                ValidationRule::KindNotAllowed,
                format!("kind {kind} is not allowed by {}", p.id),
            );
        }
        match (kind.is_answer(), h.in_reply_to.is_some()) {
            (true, false) => self.err(
                "header.in_reply_to",
                ValidationRule::MissingReplyTo,
                format!("a {kind} answers an earlier message and must name it"),
            ),
            (false, true) => self.err(
                "header.in_reply_to",
                ValidationRule::UnexpectedReplyTo,
                format!("a {kind} is not an answer and must not have in_reply_to"),
            ),
            _ => {}
        }
    }

    fn body(&mut self, msg: &Message) {
        const B: &str = "body.content";
        match &msg.body {
            MessageBody::Request(r) => {
                self.text(&format!("{B}.substance"), &r.substance);
                self.text(&format!("{B}.purpose"), &r.purpose);
                self.text(&format!("{B}.justification"), &r.justification);
                self.categories(&format!("{B}.categories"), &r.categories, true);
                self.persons(&format!("{B}.persons"), &r.persons);
                if r.requested.is_empty() {
                    self.err(
                        format!("{B}.requested"),
                        ValidationRule::MissingRequired,
                        "a request must say what is asked: fields and/or text",
                    );
                }
                self.items(&format!("{B}.requested"), &r.requested);
                self.opt_text(&format!("{B}.other_information"), r.other_information.as_deref());
                self.documents(&format!("{B}.attachments"), &r.attachments);
            }
            MessageBody::Response(r) => {
                self.text(&format!("{B}.purpose"), &r.purpose);
                let o = format!("{B}.outcome");
                match &r.outcome {
                    Outcome::Fulfilled => {}
                    Outcome::PartiallyFulfilled { missing } => {
                        if missing.is_empty() {
                            self.err(
                                format!("{o}.partially_fulfilled.missing"),
                                ValidationRule::MissingRequired,
                                "a partial answer must say what is missing",
                            );
                        }
                        self.items(&format!("{o}.partially_fulfilled.missing"), missing);
                    }
                    Outcome::Refused {
                        grounds,
                        reason,
                        partial,
                    } => {
                        if grounds.is_empty() {
                            self.err(
                                format!("{o}.refused.grounds"),
                                ValidationRule::MissingRequired,
                                "a refusal must name at least one Art. 10.4 ground",
                            );
                        }
                        self.list_len(&format!("{o}.refused.grounds"), grounds.len());
                        self.text(&format!("{o}.refused.reason"), reason);
                        if let Some(pr) = partial {
                            if pr.is_empty() {
                                self.err(
                                    format!("{o}.refused.partial"),
                                    ValidationRule::MissingRequired,
                                    "a partial refusal must say what is refused",
                                );
                            }
                            self.items(&format!("{o}.refused.partial"), pr);
                        }
                    }
                    Outcome::Postponed { reason, conditions } => {
                        self.text(&format!("{o}.postponed.reason"), reason);
                        self.opt_text(&format!("{o}.postponed.conditions"), conditions.as_deref());
                    }
                }
                self.persons(&format!("{B}.persons"), &r.persons);
                self.opt_text(&format!("{B}.information"), r.information.as_deref());
                self.documents(&format!("{B}.attachments"), &r.attachments);
            }
            MessageBody::ClarificationRequest(r) => {
                if r.questions.is_empty() {
                    self.err(
                        format!("{B}.questions"),
                        ValidationRule::MissingRequired,
                        "at least one question",
                    );
                }
                self.texts(&format!("{B}.questions"), &r.questions);
            }
            MessageBody::ClarificationAnswer(r) => {
                if r.answers.is_empty() && r.persons.is_empty() && r.attachments.is_empty() {
                    self.err(
                        format!("{B}.answers"),
                        ValidationRule::MissingRequired,
                        "a clarification answer needs answers, persons or attachments",
                    );
                }
                self.texts(&format!("{B}.answers"), &r.answers);
                self.persons(&format!("{B}.persons"), &r.persons);
                self.documents(&format!("{B}.attachments"), &r.attachments);
            }
            MessageBody::ProgressNotice(r) => {
                self.text(&format!("{B}.circumstances"), &r.circumstances);
            }
            MessageBody::ConfidentialityNotice(r) => {
                self.text(&format!("{B}.explanation"), &r.explanation);
            }
            MessageBody::ConfidentialityDecision(r) => {
                self.opt_text(&format!("{B}.comment"), r.comment.as_deref());
            }
            MessageBody::AuthenticityQuery(r) => {
                self.text(&format!("{B}.doubt"), &r.doubt);
            }
            MessageBody::AuthenticityConfirmation(r) => {
                if !r.confirmed && r.details.as_deref().is_none_or(|d| d.trim().is_empty()) {
                    self.err(
                        format!("{B}.details"),
                        ValidationRule::MissingRequired,
                        "details are required when authenticity is not confirmed",
                    );
                }
                self.opt_text(&format!("{B}.details"), r.details.as_deref());
            }
            MessageBody::ConsentRequest(r) => {
                match &r.scope {
                    crate::model::ConsentScope::OtherPurpose { purpose } => {
                        self.text(&format!("{B}.scope.other_purpose.purpose"), purpose);
                    }
                    crate::model::ConsentScope::ThirdParty {
                        recipient, purpose, ..
                    } => {
                        self.short_text(&format!("{B}.scope.third_party.recipient"), recipient, true);
                        self.text(&format!("{B}.scope.third_party.purpose"), purpose);
                    }
                }
                self.text(&format!("{B}.justification"), &r.justification);
            }
            MessageBody::ConsentDecision(r) => {
                if !r.granted && r.reason.as_deref().is_none_or(|d| d.trim().is_empty()) {
                    self.err(
                        format!("{B}.reason"),
                        ValidationRule::MissingRequired,
                        "a reason is required when consent is refused",
                    );
                }
                self.opt_text(&format!("{B}.conditions"), r.conditions.as_deref());
                self.opt_text(&format!("{B}.reason"), r.reason.as_deref());
            }
            MessageBody::UnsolicitedInformation(r) => {
                if !self.p.allows_topic(r.topic) {
                    self.err(
                        format!("{B}.topic"),
                        ValidationRule::TopicNotAllowed,
                        format!("topic {} is not allowed by {}", r.topic, self.p.id),
                    );
                }
                self.text(&format!("{B}.summary"), &r.summary);
                self.categories(&format!("{B}.categories"), &r.categories, !r.persons.is_empty());
                self.persons(&format!("{B}.persons"), &r.persons);
                self.documents(&format!("{B}.attachments"), &r.attachments);
            }
            MessageBody::DirectoryUpdate(r) => {
                self.directory(msg, &r.change);
                self.opt_text(&format!("{B}.note"), r.note.as_deref());
            }
        }
        let limit = self.p.limits.max_attachments_per_message;
        if self.attachments > limit {
            self.err(
                "body.content",
                ValidationRule::TooMany,
                format!(
                    "{} attachments; the profile allows at most {limit} per message",
                    self.attachments
                ),
            );
        }
    }

    fn directory(&mut self, msg: &Message, change: &DirectoryChange) {
        const C: &str = "body.content.change";
        let from = &msg.header.from;
        let own_party = self.p.party_of(from).map(|p| p.country);
        match change {
            DirectoryChange::AuthorityRenamed {
                old,
                new,
                new_name,
                new_name_en,
                ..
            } => {
                self.own_authority(&format!("{C}.authority_renamed.old"), old, own_party);
                if old == new {
                    self.err(
                        format!("{C}.authority_renamed.new"),
                        ValidationRule::Duplicate,
                        "new id equals old id",
                    );
                }
                self.short_text(&format!("{C}.authority_renamed.new_name"), new_name, true);
                if let Some(n) = new_name_en {
                    self.short_text(&format!("{C}.authority_renamed.new_name_en"), n, true);
                }
            }
            DirectoryChange::AuthorityReplaced {
                old,
                new,
                new_name,
                new_name_en,
                ..
            } => {
                self.own_authority(&format!("{C}.authority_replaced.old"), old, own_party);
                if old == new {
                    self.err(
                        format!("{C}.authority_replaced.new"),
                        ValidationRule::Duplicate,
                        "new id equals old id",
                    );
                }
                self.short_text(&format!("{C}.authority_replaced.new_name"), new_name, true);
                if let Some(n) = new_name_en {
                    self.short_text(&format!("{C}.authority_replaced.new_name_en"), n, true);
                }
            }
            DirectoryChange::SignatoryRoster {
                authority,
                signatories,
                ..
            } => {
                let path = format!("{C}.signatory_roster");
                if authority != from {
                    self.err(
                        format!("{path}.authority"),
                        ValidationRule::NotOwnAuthority,
                        format!("{from} may publish only its own signatory roster, not that of {authority}"),
                    );
                }
                self.list_len(&format!("{path}.signatories"), signatories.len());
                let mut ids = BTreeSet::new();
                let mut keys = BTreeSet::new();
                for (i, s) in signatories.iter().enumerate() {
                    let sp = format!("{path}.signatories[{i}]");
                    if !ids.insert(&s.id) {
                        self.err(
                            format!("{sp}.id"),
                            ValidationRule::Duplicate,
                            format!("signatory {} listed twice", s.id),
                        );
                    }
                    if !keys.insert(s.public_key) {
                        self.err(
                            format!("{sp}.public_key"),
                            ValidationRule::Duplicate,
                            "public key listed twice",
                        );
                    }
                    self.short_text(&format!("{sp}.name"), &s.name, true);
                    self.short_text(&format!("{sp}.position"), &s.position, true);
                    if s.valid_until.is_some_and(|u| u <= s.valid_from) {
                        self.err(
                            format!("{sp}.valid_until"),
                            ValidationRule::DateOrder,
                            "valid_until is not after valid_from",
                        );
                    }
                }
            }
            DirectoryChange::KeyRotation {
                authority,
                effective,
                old_until,
                tls_pin,
                node_key,
                age_recipient,
            } => {
                let path = format!("{C}.key_rotation");
                if authority != from {
                    self.err(
                        format!("{path}.authority"),
                        ValidationRule::NotOwnAuthority,
                        format!("{from} may rotate only its own keys, not those of {authority}"),
                    );
                }
                if tls_pin.is_none() && node_key.is_none() && age_recipient.is_none() {
                    self.err(
                        path.clone(),
                        ValidationRule::MissingRequired,
                        "names no key (tls_pin, node_key or age_recipient)",
                    );
                }
                if old_until < effective {
                    self.err(
                        format!("{path}.old_until"),
                        ValidationRule::DateOrder,
                        "old_until is before effective",
                    );
                }
                for (name, t) in [("tls_pin", tls_pin), ("age_recipient", age_recipient)] {
                    if let Some(t) = t {
                        self.short_text(&format!("{path}.{name}.old"), &t.old, true);
                        self.short_text(&format!("{path}.{name}.new"), &t.new, true);
                    }
                }
            }
        }
    }

    fn own_authority(&mut self, path: &str, id: &AuthorityId, own: Option<CountryCode>) {
        match self.p.party_of(id) {
            None => self.err(
                path,
                ValidationRule::UnknownAuthority,
                format!("{id} is not a competent authority under {}", self.p.id),
            ),
            Some(p) if Some(p.country) != own => self.err(
                path,
                ValidationRule::NotOwnAuthority,
                format!("{id} belongs to party {}, not to the sender's party", p.country),
            ),
            Some(_) => {}
        }
    }

    fn too_long(&mut self, path: &str, s: &str, limit: usize) {
        let n = s.chars().count();
        if n > limit {
            self.err(
                path,
                ValidationRule::TooLong,
                format!("{n} characters; the profile allows at most {limit}"),
            );
        }
    }

    /// A required free text.
    fn text(&mut self, path: &str, s: &str) {
        if s.trim().is_empty() {
            self.err(path, ValidationRule::MissingRequired, "must not be empty");
        }
        self.too_long(path, s, self.p.limits.max_text_chars);
    }

    /// An optional free text: if present, not blank.
    fn opt_text(&mut self, path: &str, s: Option<&str>) {
        if let Some(s) = s {
            self.text(path, s);
        }
    }

    fn texts(&mut self, path: &str, list: &[String]) {
        self.list_len(path, list.len());
        for (i, s) in list.iter().enumerate() {
            self.text(&format!("{path}[{i}]"), s);
        }
    }

    /// A name-like or identifier-like text.
    fn short_text(&mut self, path: &str, s: &str, required: bool) {
        if required && s.trim().is_empty() {
            self.err(path, ValidationRule::MissingRequired, "must not be empty");
        }
        self.too_long(path, s, self.p.limits.max_short_text_chars);
    }

    fn list_len(&mut self, path: &str, n: usize) {
        let limit = self.p.limits.max_list_items;
        if n > limit {
            self.err(
                path,
                ValidationRule::TooMany,
                format!("{n} items; the profile allows at most {limit}"),
            );
        }
    }

    fn categories(&mut self, path: &str, cats: &[PersonCategory], required: bool) {
        if required && cats.is_empty() {
            self.err(
                path,
                ValidationRule::MissingRequired,
                "at least one Art. 5 category is required",
            );
        }
        self.list_len(path, cats.len());
        let mut seen = BTreeSet::new();
        for (i, c) in cats.iter().enumerate() {
            if !self.p.allows_category(*c) {
                self.err(
                    format!("{path}[{i}]"),
                    ValidationRule::CategoryNotAllowed,
                    format!("category {c} is not allowed by {}", self.p.id),
                );
            }
            if !seen.insert(*c) {
                self.err(
                    format!("{path}[{i}]"),
                    ValidationRule::Duplicate,
                    format!("category {c} listed twice"),
                );
            }
        }
    }

    fn items(&mut self, path: &str, items: &InformationItems) {
        self.list_len(&format!("{path}.fields"), items.fields.len());
        for (i, f) in items.fields.iter().enumerate() {
            if !self.p.allows_field(*f) {
                self.err(
                    format!("{path}.fields[{i}]"),
                    ValidationRule::FieldNotAllowed,
                    format!("field {f} is not allowed by {}", self.p.id),
                );
            }
        }
        self.opt_text(&format!("{path}.text"), items.text.as_deref());
    }

    fn persons(&mut self, path: &str, persons: &[Person]) {
        let limit = self.p.limits.max_persons_per_message;
        if persons.len() > limit {
            self.err(
                path,
                ValidationRule::TooMany,
                format!("{} persons; the profile allows at most {limit}", persons.len()),
            );
        }
        for (i, person) in persons.iter().enumerate() {
            self.person(&format!("{path}[{i}]"), person);
        }
    }

    fn person(&mut self, path: &str, p: &Person) {
        for f in p.fields_present() {
            if !self.p.allows_field(f) {
                self.err(
                    format!("{path}.{f}"),
                    ValidationRule::FieldNotAllowed,
                    format!("field {f} is not allowed by {}", self.p.id),
                );
            }
        }
        self.name(&format!("{path}.surname"), &p.surname);
        self.name(&format!("{path}.given_name"), &p.given_name);
        if let Some(n) = &p.patronymic {
            self.name(&format!("{path}.patronymic"), n);
        }
        if let Some(s) = &p.place_of_birth {
            self.short_text(&format!("{path}.place_of_birth"), s, true);
        }
        self.list_len(&format!("{path}.citizenship"), p.citizenship.len());
        for (i, c) in p.citizenship.iter().enumerate() {
            if let crate::model::Citizenship::Other(t) = c {
                self.short_text(&format!("{path}.citizenship[{i}].other"), t, true);
            }
        }
        self.list_len(&format!("{path}.documents"), p.documents.len());
        for (i, d) in p.documents.iter().enumerate() {
            let dp = format!("{path}.documents[{i}]");
            if let Some(s) = &d.series {
                self.short_text(&format!("{dp}.series"), s, true);
            }
            self.short_text(&format!("{dp}.number"), &d.number, true);
            if let Some(s) = &d.issuer {
                self.short_text(&format!("{dp}.issuer"), s, true);
            }
        }
        for (name, list) in [
            ("administrative_liability", &p.administrative_liability),
            ("criminal_liability", &p.criminal_liability),
        ] {
            let lp = format!("{path}.{name}");
            self.list_len(&lp, list.len());
            for (i, r) in list.iter().enumerate() {
                self.text(&format!("{lp}[{i}].article"), &r.article);
                self.text(&format!("{lp}[{i}].decision"), &r.decision);
            }
        }
        if let Some(r) = &p.residence {
            self.text(&format!("{path}.residence.address"), &r.address);
            if let Some(s) = &r.region {
                self.short_text(&format!("{path}.residence.region"), s, true);
            }
        }
        if let Some(r) = &p.residence_permit {
            self.short_text(&format!("{path}.residence_permit.number"), &r.number, true);
            if r.valid_until.is_some_and(|u| u < r.issued) {
                self.err(
                    format!("{path}.residence_permit.valid_until"),
                    ValidationRule::DateOrder,
                    "valid_until is before issued",
                );
            }
        }
        for (name, list) in [
            ("entry_bans", &p.entry_bans),
            ("exit_restrictions", &p.exit_restrictions),
        ] {
            let lp = format!("{path}.{name}");
            self.list_len(&lp, list.len());
            for (i, r) in list.iter().enumerate() {
                self.short_text(&format!("{lp}[{i}].authority"), &r.authority, true);
                self.text(&format!("{lp}[{i}].basis"), &r.basis);
                if r.valid_until.is_some_and(|u| u < r.decision_date) {
                    self.err(
                        format!("{lp}[{i}].valid_until"),
                        ValidationRule::DateOrder,
                        "valid_until is before decision_date",
                    );
                }
            }
        }
        for (i, a) in p.photographs.iter().enumerate() {
            let ap = format!("{path}.photographs[{i}]");
            self.attachment(&ap, a);
            if is_media_type(&a.media_type) && !a.media_type.to_ascii_lowercase().starts_with("image/") {
                self.err(
                    format!("{ap}.media_type"),
                    ValidationRule::BadMediaType,
                    "a photograph must be an image/* type",
                );
            }
        }
        if let Some(a) = &p.fingerprint_card {
            self.attachment(&format!("{path}.fingerprint_card"), a);
        }
    }

    fn name(&mut self, path: &str, n: &Name) {
        let max = self.p.limits.max_short_text_chars;
        for (part, s, script, is_script) in [
            (
                "cyrillic",
                &n.cyrillic,
                "Cyrillic",
                is_cyrillic as fn(char) -> bool,
            ),
            ("latin", &n.latin, "Latin", is_latin as fn(char) -> bool),
        ] {
            let fp = format!("{path}.{part}");
            if s.trim().is_empty() {
                self.err(fp, ValidationRule::MissingRequired, "must not be empty");
                continue;
            }
            self.too_long(&fp, s, max);
            let ok_chars = s.chars().all(|c| is_script(c) || is_name_punct(c));
            let has_letter = s.chars().any(is_script);
            if !ok_chars || !has_letter {
                self.err(
                    fp,
                    ValidationRule::WrongScript,
                    format!("must consist of {script} letters (with space, hyphen, apostrophe or period)"),
                );
            }
        }
    }

    fn documents(&mut self, path: &str, list: &[Attachment]) {
        for (i, a) in list.iter().enumerate() {
            self.attachment(&format!("{path}[{i}]"), a);
        }
    }

    fn attachment(&mut self, path: &str, a: &Attachment) {
        self.attachments += 1;
        if !is_media_type(&a.media_type) {
            self.err(
                format!("{path}.media_type"),
                ValidationRule::BadMediaType,
                "not a media type of the form type/subtype",
            );
        }
        let is_sealed = !a.sha256.is_zero();
        if self.sealed && (!is_sealed || a.file.is_some()) {
            self.err(
                path,
                ValidationRule::AttachmentNotSealed,
                "attachment must carry length and sha256 and no file",
            );
        } else if !is_sealed && a.file.as_deref().is_none_or(|f| f.is_empty()) {
            self.err(
                path,
                ValidationRule::AttachmentNotSealed,
                "attachment has neither sha256 (sealed) nor a file",
            );
        }
        let limit = self.p.limits.max_attachment_bytes;
        if a.length > limit {
            self.err(
                format!("{path}.length"),
                ValidationRule::TooLarge,
                format!("{} bytes; the profile allows at most {limit}", a.length),
            );
        }
    }
}
