//! Message kinds: one body type per kind of message the agreements provide for.
//!
//! In JSON and CBOR a body is adjacently tagged:
//! `{"kind": "request", "content": {…}}`; the `kind` names are the snake_case
//! names of [`MessageKind`]. Every body struct refuses unknown fields.
//!
//! Kinds that answer an earlier message ([`MessageKind::is_answer`]) must name
//! it in the header's `in_reply_to`; all other kinds must not.

use std::fmt;

use jiff::civil::Date;
use serde::{Deserialize, Serialize};

use super::common::{Attachment, AuthorityId, Id, Message, PublicKeyBytes, SignatoryId, Timestamp};
use super::person::{CountryCode, Person, PersonCategory, PersonField};

/// What a message says; one variant per kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "content", rename_all = "snake_case")]
pub enum MessageBody {
    /// Art. 8, 9.2: a request for assistance.
    Request(Request),
    /// Art. 10.3, 10.4, 11.2: the answer to a request.
    Response(Response),
    /// Art. 10.1: the requested party asks for additional information.
    ClarificationRequest(ClarificationRequest),
    /// Art. 10.1: the requester's answer to a clarification request.
    ClarificationAnswer(ClarificationAnswer),
    /// Art. 10.1: obstacles to, or a substantial delay of, execution.
    ProgressNotice(ProgressNotice),
    /// Art. 11.1: the request cannot be executed without breaking confidentiality.
    ConfidentialityNotice(ConfidentialityNotice),
    /// Art. 11.1: the requester's decision after a confidentiality notice.
    ConfidentialityDecision(ConfidentialityDecision),
    /// Art. 9.5: doubt about the authenticity or content of a message.
    AuthenticityQuery(AuthenticityQuery),
    /// Art. 9.5: the answer to an authenticity query.
    AuthenticityConfirmation(AuthenticityConfirmation),
    /// Art. 11.2, 11.3: asks the providing party to consent to another use or to passing data on.
    ConsentRequest(ConsentRequest),
    /// Art. 11.2, 11.3: the providing party's decision on a consent request.
    ConsentDecision(ConsentDecision),
    /// Art. 8: information sent without a request.
    UnsolicitedInformation(UnsolicitedInformation),
    /// Art. 2, 9.3, 9.4: renamed or replaced authorities, signatory rosters.
    DirectoryUpdate(DirectoryUpdate),
}

/// The kind of a message, without its content.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// [`Request`].
    Request,
    /// [`Response`].
    Response,
    /// [`ClarificationRequest`].
    ClarificationRequest,
    /// [`ClarificationAnswer`].
    ClarificationAnswer,
    /// [`ProgressNotice`].
    ProgressNotice,
    /// [`ConfidentialityNotice`].
    ConfidentialityNotice,
    /// [`ConfidentialityDecision`].
    ConfidentialityDecision,
    /// [`AuthenticityQuery`].
    AuthenticityQuery,
    /// [`AuthenticityConfirmation`].
    AuthenticityConfirmation,
    /// [`ConsentRequest`].
    ConsentRequest,
    /// [`ConsentDecision`].
    ConsentDecision,
    /// [`UnsolicitedInformation`].
    UnsolicitedInformation,
    /// [`DirectoryUpdate`].
    DirectoryUpdate,
}

impl MessageKind {
    /// Every kind.
    pub const ALL: [MessageKind; 13] = [
        Self::Request,
        Self::Response,
        Self::ClarificationRequest,
        Self::ClarificationAnswer,
        Self::ProgressNotice,
        Self::ConfidentialityNotice,
        Self::ConfidentialityDecision,
        Self::AuthenticityQuery,
        Self::AuthenticityConfirmation,
        Self::ConsentRequest,
        Self::ConsentDecision,
        Self::UnsolicitedInformation,
        Self::DirectoryUpdate,
    ];

    /// The snake_case name, equal to the `kind` tag in JSON and CBOR.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::Response => "response",
            Self::ClarificationRequest => "clarification_request",
            Self::ClarificationAnswer => "clarification_answer",
            Self::ProgressNotice => "progress_notice",
            Self::ConfidentialityNotice => "confidentiality_notice",
            Self::ConfidentialityDecision => "confidentiality_decision",
            Self::AuthenticityQuery => "authenticity_query",
            Self::AuthenticityConfirmation => "authenticity_confirmation",
            Self::ConsentRequest => "consent_request",
            Self::ConsentDecision => "consent_decision",
            Self::UnsolicitedInformation => "unsolicited_information",
            Self::DirectoryUpdate => "directory_update",
        }
    }

    /// Whether this kind answers an earlier message and so needs the header's `in_reply_to`:
    ///
    /// - answers to a request: `response`, `clarification_request`,
    ///   `progress_notice`, `confidentiality_notice`;
    /// - answers to those: `clarification_answer` (to a clarification request),
    ///   `confidentiality_decision` (to a confidentiality notice),
    ///   `authenticity_confirmation` (to an authenticity query),
    ///   `consent_decision` (to a consent request).
    ///
    /// `request`, `unsolicited_information`, `authenticity_query`,
    /// `consent_request` and `directory_update` start a new exchange;
    /// an authenticity query and a consent request name the message they
    /// concern in their body instead.
    pub const fn is_answer(self) -> bool {
        matches!(
            self,
            Self::Response
                | Self::ClarificationRequest
                | Self::ClarificationAnswer
                | Self::ProgressNotice
                | Self::ConfidentialityNotice
                | Self::ConfidentialityDecision
                | Self::AuthenticityConfirmation
                | Self::ConsentDecision
        )
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of information items: Art. 6 fields and/or a free-text description.
/// Used for what a request asks for, what a response lacks, what is refused.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InformationItems {
    /// Art. 6 personal data fields.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<PersonField>,
    /// Other information, described in Russian.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl InformationItems {
    /// Whether neither a field nor a text is given.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.text.as_deref().is_none_or(|t| t.trim().is_empty())
    }
}

/// Art. 9.2: a request. The requesting and requested authorities are the
/// header's `from` and `to`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Short statement of the substance of the request.
    pub substance: String,
    /// Purpose of the request; the answer may be used for this purpose only (Art. 11.2).
    pub purpose: String,
    /// Justification of the request.
    pub justification: String,
    /// Art. 5 categories of the persons concerned; at least one.
    pub categories: Vec<PersonCategory>,
    /// Persons the request is about, with what the requester already knows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub persons: Vec<Person>,
    /// What is asked for: Art. 6 fields and/or a description.
    pub requested: InformationItems,
    /// Any other information useful for executing the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_information: Option<String>,
    /// Accompanying documents and bulk lists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
}

/// Art. 10.4: a ground for refusing a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalGround {
    /// Execution could harm sovereignty.
    Sovereignty,
    /// Execution could harm security.
    Security,
    /// Execution could harm public order.
    PublicOrder,
    /// Execution could harm other essential interests.
    OtherEssentialInterests,
    /// Execution contradicts the law of the requested state.
    ContradictsNationalLaw,
    /// Execution contradicts the international obligations of the requested state.
    ContradictsInternationalObligations,
}

/// The outcome of a request. JSON: `"fulfilled"` or `{"refused": {…}}` and so on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Outcome {
    /// Art. 10.1: executed fully.
    Fulfilled,
    /// Executed in part; the rest is not available.
    PartiallyFulfilled {
        /// What could not be provided.
        missing: InformationItems,
    },
    /// Art. 10.4: refused fully or in part, with grounds and reasons.
    Refused {
        /// The Art. 10.4 grounds; at least one.
        grounds: Vec<RefusalGround>,
        /// Reasons for the refusal, in Russian (Art. 10.4 second paragraph).
        reason: String,
        /// For a partial refusal: what is refused. Absent: refused fully.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        partial: Option<InformationItems>,
    },
    /// Art. 10.2: execution postponed, or made subject to conditions, because it
    /// could hinder a criminal prosecution or other proceedings.
    Postponed {
        /// Why execution is postponed.
        reason: String,
        /// Conditions on which the request will be executed, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conditions: Option<String>,
    },
}

/// Art. 10.3, 10.4, 11.2: the answer to a request (`in_reply_to` = the request).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    /// The purpose the information was requested and is provided for (Art. 11.2).
    pub purpose: String,
    /// Fulfilled, partially fulfilled, refused or postponed.
    pub outcome: Outcome,
    /// Persons with the information provided about them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub persons: Vec<Person>,
    /// Information provided as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub information: Option<String>,
    /// Documents and bulk lists provided.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
}

/// Art. 10.1: the requested party asks for additional information (`in_reply_to` = the request).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClarificationRequest {
    /// The questions; at least one.
    pub questions: Vec<String>,
}

/// Art. 10.1: additional information for a request (`in_reply_to` = the clarification request).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClarificationAnswer {
    /// Answers, in the order of the questions.
    pub answers: Vec<String>,
    /// Additional data about the persons of the request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub persons: Vec<Person>,
    /// Additional documents.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
}

/// What a progress notice reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProgressKind {
    /// Circumstances that prevent execution.
    Obstacle,
    /// Circumstances that substantially delay execution.
    Delay,
}

/// Art. 10.1: obstacles or a substantial delay (`in_reply_to` = the request).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgressNotice {
    /// Obstacle or delay.
    pub progress: ProgressKind,
    /// The circumstances, in Russian.
    pub circumstances: String,
    /// When the results are expected, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_by: Option<Date>,
}

/// Art. 11.1: the request cannot be executed while keeping it confidential
/// (`in_reply_to` = the request).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfidentialityNotice {
    /// Why, and what would become known to whom.
    pub explanation: String,
}

/// The requester's choice after a confidentiality notice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfidentialityChoice {
    /// Execute the request on those terms.
    Proceed,
    /// Withdraw the request.
    Withdraw,
}

/// Art. 11.1: the requester decides whether the request is executed on those
/// terms (`in_reply_to` = the confidentiality notice).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfidentialityDecision {
    /// Proceed or withdraw.
    pub decision: ConfidentialityChoice,
    /// Comment, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// Art. 9.5: doubt about a received message. Not an answer: the message in
/// doubt is named in `message`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthenticityQuery {
    /// Id of the message whose authenticity or content is in doubt.
    pub message: Id,
    /// What is in doubt, in Russian.
    pub doubt: String,
}

/// Art. 9.5: the answer to an authenticity query (`in_reply_to` = the query).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthenticityConfirmation {
    /// Whether the message is confirmed as authentic and its content as intended.
    pub confirmed: bool,
    /// Details, corrections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
}

/// What a consent is asked for. JSON: `{"other_purpose": {…}}` or `{"third_party": {…}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ConsentScope {
    /// Art. 11.2: use for another purpose than the one requested and provided for.
    OtherPurpose {
        /// The other purpose.
        purpose: String,
    },
    /// Art. 11.3: passing the information to a third party.
    ThirdParty {
        /// State of the recipient, if it is a state body.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        country: Option<CountryCode>,
        /// The recipient (authority, organisation).
        recipient: String,
        /// Purpose of the recipient's use.
        purpose: String,
    },
}

/// Art. 11.2, 11.3: asks the party that provided information for consent.
/// Not an answer: the message that carried the information is named in `message`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentRequest {
    /// Id of the earlier message whose information is concerned.
    pub message: Id,
    /// Another purpose, or a third party.
    pub scope: ConsentScope,
    /// Why the consent is needed.
    pub justification: String,
}

/// Art. 11.2, 11.3: the decision on a consent request (`in_reply_to` = the consent request).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentDecision {
    /// Whether consent is granted.
    pub granted: bool,
    /// Conditions of the consent, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<String>,
    /// Reason; required when consent is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Art. 3 and 4: subjects of information exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Topic {
    /// Art. 3.1(1): statistical, legal and scientific-methodological information.
    StatisticalLegalMethodological,
    /// Art. 3.1(2): citizens of one party staying in the territory of the other.
    CitizensStaying,
    /// Art. 4: detected violations of migration law and illegal-migration channels.
    ViolationsAndChannels,
    /// Art. 4: legal and natural persons involved in organising illegal migration.
    IllegalMigrationOrganisers,
    /// Art. 4: ways of obtaining visas and other documents for illegal migration.
    DocumentFraudMethods,
    /// Art. 4: migration legislation and changes to it.
    MigrationLegislation,
    /// Art. 4: practice and measures preventing illegal migration.
    PreventionPractice,
    /// Art. 4: methods of regulating external migration.
    ExternalMigrationRegulation,
}

impl Topic {
    /// Every topic.
    pub const ALL: [Topic; 8] = [
        Self::StatisticalLegalMethodological,
        Self::CitizensStaying,
        Self::ViolationsAndChannels,
        Self::IllegalMigrationOrganisers,
        Self::DocumentFraudMethods,
        Self::MigrationLegislation,
        Self::PreventionPractice,
        Self::ExternalMigrationRegulation,
    ];

    /// The snake_case name used in JSON, CBOR and profiles.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::StatisticalLegalMethodological => "statistical_legal_methodological",
            Self::CitizensStaying => "citizens_staying",
            Self::ViolationsAndChannels => "violations_and_channels",
            Self::IllegalMigrationOrganisers => "illegal_migration_organisers",
            Self::DocumentFraudMethods => "document_fraud_methods",
            Self::MigrationLegislation => "migration_legislation",
            Self::PreventionPractice => "prevention_practice",
            Self::ExternalMigrationRegulation => "external_migration_regulation",
        }
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Art. 8: information sent without a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnsolicitedInformation {
    /// Art. 3/4 subject.
    pub topic: Topic,
    /// The information, or a summary of the attached documents, in Russian.
    pub summary: String,
    /// Art. 5 categories of the persons included; required when `persons` is not empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<PersonCategory>,
    /// Persons concerned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub persons: Vec<Person>,
    /// Documents and bulk lists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
}

/// An authorised signatory of requests (Art. 9.3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signatory {
    /// Stable id of the signatory within the roster.
    pub id: SignatoryId,
    /// Full name, in Russian.
    pub name: String,
    /// Position (head, deputy head, authorised officer…), in Russian.
    pub position: String,
    /// Ed25519 public key: base64 in JSON, 32-byte string in CBOR.
    pub public_key: PublicKeyBytes,
    /// From when the signatory may sign.
    pub valid_from: Timestamp,
    /// Until when the signatory may sign; absent: until the next roster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<Timestamp>,
}

/// A change to the directory of authorities and signatories.
/// JSON: `{"authority_renamed": {…}}`, `{"authority_replaced": {…}}`,
/// `{"signatory_roster": {…}}` or `{"key_rotation": {…}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum DirectoryChange {
    /// Art. 2: an authority changes its name (and id); the old id stays resolvable.
    AuthorityRenamed {
        /// The id until now.
        old: AuthorityId,
        /// The id from `effective` on.
        new: AuthorityId,
        /// The new name, in Russian.
        new_name: String,
        /// The new name, in English, if given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        new_name_en: Option<String>,
        /// When the new name takes effect.
        effective: Timestamp,
    },
    /// Art. 2: a state body is replaced by another as competent authority.
    AuthorityReplaced {
        /// The authority that ceases to be competent.
        old: AuthorityId,
        /// The authority that takes over.
        new: AuthorityId,
        /// Name of the new authority, in Russian.
        new_name: String,
        /// Name of the new authority, in English, if given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        new_name_en: Option<String>,
        /// When the replacement takes effect.
        effective: Timestamp,
    },
    /// Art. 9.3, 9.4: the complete current list of an authority's authorised signatories.
    SignatoryRoster {
        /// The authority whose roster this is (must be the sender).
        authority: AuthorityId,
        /// Roster version; each roster replaces every lower version.
        version: u64,
        /// The signatories.
        signatories: Vec<Signatory>,
    },
    /// Operations: the sender rotates its own gateway keys. From `effective`
    /// it uses the new TLS key, node signing key and/or age recipient; the
    /// receiver accepts the new TLS pin and node key as soon as it has
    /// recorded the change, seals to the new age recipient from
    /// `effective`, and keeps accepting the old TLS pin and node key until
    /// `old_until` (the dual-key window). At least one key is named.
    KeyRotation {
        /// The authority whose keys change (must be the sender).
        authority: AuthorityId,
        /// From when the new keys are used.
        effective: Timestamp,
        /// Until when the old TLS pin and node key stay accepted (not before `effective`).
        old_until: Timestamp,
        /// The TLS key pin (`sha256/<base64 of SHA-256(SPKI)>`), old and new.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tls_pin: Option<RotatedText>,
        /// The node signing key (raw Ed25519), old and new.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node_key: Option<RotatedKey>,
        /// The age recipient (`age1…`), old and new.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        age_recipient: Option<RotatedText>,
    },
}

/// A rotated public key in a [`DirectoryChange::KeyRotation`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotatedKey {
    /// The key used until the rotation.
    pub old: PublicKeyBytes,
    /// The key used from the rotation's `effective` time.
    pub new: PublicKeyBytes,
}

/// A rotated key in text form (TLS pin, age recipient) in a
/// [`DirectoryChange::KeyRotation`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotatedText {
    /// The value used until the rotation.
    pub old: String,
    /// The value used from the rotation's `effective` time.
    pub new: String,
}

/// Art. 2, 9.3, 9.4: a notified change to the directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryUpdate {
    /// The change.
    pub change: DirectoryChange,
    /// Accompanying note, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The change signed by the sending authority's root key (a tagged
    /// COSE_Sign1 over a directory statement, see `crate::roster`): what a
    /// receiver verifies before it applies the change. Base64 in JSON, a
    /// byte string in CBOR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<Attestation>,
}

/// Largest attestation accepted (a roster of 1000 signatories is about 200 KiB).
pub const MAX_ATTESTATION_LEN: usize = 1024 * 1024;

/// Bytes of a root-key signature over a directory statement: standard base64
/// (with padding) in JSON, a byte string in CBOR.
#[derive(Clone, PartialEq, Eq)]
pub struct Attestation(pub Vec<u8>);

impl fmt::Debug for Attestation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Attestation({} bytes)", self.0.len())
    }
}

impl Serialize for Attestation {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine as _;
        if s.is_human_readable() {
            s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Attestation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use base64::Engine as _;
        use serde::de::Error as _;
        let bytes = if d.is_human_readable() {
            let s = String::deserialize(d)?;
            if s.len() > MAX_ATTESTATION_LEN / 3 * 4 + 4 {
                return Err(D::Error::custom("attestation longer than 1 MiB"));
            }
            base64::engine::general_purpose::STANDARD
                .decode(s.as_bytes())
                .map_err(|_| D::Error::custom("attestation is not standard base64"))?
        } else {
            serde_bytes::ByteBuf::deserialize(d)?.into_vec()
        };
        if bytes.len() > MAX_ATTESTATION_LEN {
            return Err(D::Error::custom("attestation longer than 1 MiB"));
        }
        Ok(Self(bytes))
    }
}

impl MessageBody {
    /// The kind of this body.
    pub fn kind(&self) -> MessageKind {
        match self {
            Self::Request(_) => MessageKind::Request,
            Self::Response(_) => MessageKind::Response,
            Self::ClarificationRequest(_) => MessageKind::ClarificationRequest,
            Self::ClarificationAnswer(_) => MessageKind::ClarificationAnswer,
            Self::ProgressNotice(_) => MessageKind::ProgressNotice,
            Self::ConfidentialityNotice(_) => MessageKind::ConfidentialityNotice,
            Self::ConfidentialityDecision(_) => MessageKind::ConfidentialityDecision,
            Self::AuthenticityQuery(_) => MessageKind::AuthenticityQuery,
            Self::AuthenticityConfirmation(_) => MessageKind::AuthenticityConfirmation,
            Self::ConsentRequest(_) => MessageKind::ConsentRequest,
            Self::ConsentDecision(_) => MessageKind::ConsentDecision,
            Self::UnsolicitedInformation(_) => MessageKind::UnsolicitedInformation,
            Self::DirectoryUpdate(_) => MessageKind::DirectoryUpdate,
        }
    }

    /// The persons this body carries personal data about (empty for kinds without persons).
    pub fn persons(&self) -> &[Person] {
        match self {
            Self::Request(b) => &b.persons,
            Self::Response(b) => &b.persons,
            Self::ClarificationAnswer(b) => &b.persons,
            Self::UnsolicitedInformation(b) => &b.persons,
            _ => &[],
        }
    }

    /// The message's own documents (not the persons' photographs and fingerprint cards).
    pub fn documents(&self) -> &[Attachment] {
        match self {
            Self::Request(b) => &b.attachments,
            Self::Response(b) => &b.attachments,
            Self::ClarificationAnswer(b) => &b.attachments,
            Self::UnsolicitedInformation(b) => &b.attachments,
            _ => &[],
        }
    }

    fn persons_and_documents_mut(&mut self) -> (&mut [Person], &mut [Attachment]) {
        match self {
            Self::Request(b) => (&mut b.persons, &mut b.attachments),
            Self::Response(b) => (&mut b.persons, &mut b.attachments),
            Self::ClarificationAnswer(b) => (&mut b.persons, &mut b.attachments),
            Self::UnsolicitedInformation(b) => (&mut b.persons, &mut b.attachments),
            _ => (&mut [], &mut []),
        }
    }
}

impl Message {
    /// The kind of the message.
    pub fn kind(&self) -> MessageKind {
        self.body.kind()
    }

    /// Every attachment of the message, in the canonical order:
    ///
    /// 1. for each person of the body in order: that person's `photographs` in
    ///    order, then that person's `fingerprint_card`;
    /// 2. then the body's own `attachments` (documents) in order.
    ///
    /// The order is the order of the fields in the serialised message, and is
    /// the numbering of the attachment streams in an envelope.
    pub fn attachments(&self) -> Vec<&Attachment> {
        let mut out: Vec<&Attachment> = Vec::new();
        for p in self.body.persons() {
            out.extend(p.attachments());
        }
        out.extend(self.body.documents());
        out
    }

    /// Every attachment, mutable, in the order of [`Message::attachments`].
    pub fn attachments_mut(&mut self) -> Vec<&mut Attachment> {
        let (persons, documents) = self.body.persons_and_documents_mut();
        let mut out: Vec<&mut Attachment> = Vec::new();
        for p in persons.iter_mut() {
            out.extend(p.attachments_mut());
        }
        out.extend(documents.iter_mut());
        out
    }
}
