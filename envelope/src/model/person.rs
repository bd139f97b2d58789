//! The person record of Art. 6 and the person categories of Art. 5.
//!
//! [`Person`] holds exactly the personal data fields that Art. 6 allows and
//! nothing more: it is `deny_unknown_fields`, so a field outside Art. 6 (say
//! `religion`) is refused while parsing, with serde's message naming the field.
//! Which of these fields a given agreement allows is decided by its profile
//! ([`crate::profile::Profile::validate`]), using [`Person::fields_present`].

use std::fmt;
use std::str::FromStr;

use jiff::civil::Date;
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use super::common::{Attachment, ParseIdError};

/// Art. 5: the categories of persons about whom data may be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PersonCategory {
    /// Art. 5(1): temporarily staying in the territory of a party.
    TemporarilyStaying,
    /// Art. 5(2): holding a temporary or permanent residence permit.
    ResidencePermitHolder,
    /// Art. 5(3): admitted to or restored in the citizenship of the other party,
    /// and information on citizenship affiliation.
    CitizenshipAdmittedOrRestored,
    /// Art. 5(4): subject to an entry ban or an exit restriction.
    EntryBanOrExitRestriction,
    /// Art. 5(5): expelled from the territory of a party.
    Expelled,
}

impl PersonCategory {
    /// Every category, in the order of Art. 5.
    pub const ALL: [PersonCategory; 5] = [
        Self::TemporarilyStaying,
        Self::ResidencePermitHolder,
        Self::CitizenshipAdmittedOrRestored,
        Self::EntryBanOrExitRestriction,
        Self::Expelled,
    ];

    /// The snake_case name used in JSON, CBOR and profiles.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::TemporarilyStaying => "temporarily_staying",
            Self::ResidencePermitHolder => "residence_permit_holder",
            Self::CitizenshipAdmittedOrRestored => "citizenship_admitted_or_restored",
            Self::EntryBanOrExitRestriction => "entry_ban_or_exit_restriction",
            Self::Expelled => "expelled",
        }
    }
}

impl fmt::Display for PersonCategory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Art. 6: every personal data field, named as the field of [`Person`] that carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PersonField {
    /// Surname, in Cyrillic and Latin spelling.
    Surname,
    /// Given name, in Cyrillic and Latin spelling.
    GivenName,
    /// Patronymic (if any), in Cyrillic and Latin spelling.
    Patronymic,
    /// Sex.
    Sex,
    /// Date of birth.
    DateOfBirth,
    /// Place of birth.
    PlaceOfBirth,
    /// Citizenship.
    Citizenship,
    /// Travel or identity documents: series, number, date of issue, issuing authority.
    Documents,
    /// Administrative liability.
    AdministrativeLiability,
    /// Criminal liability.
    CriminalLiability,
    /// Place of residence in the territory of a party.
    Residence,
    /// Temporary or permanent residence permit.
    ResidencePermit,
    /// Decisions banning entry.
    EntryBans,
    /// Decisions restricting exit.
    ExitRestrictions,
    /// Photographs.
    Photographs,
    /// Fingerprint card (if any).
    FingerprintCard,
}

impl PersonField {
    /// Every Art. 6 field, in the order of Art. 6.
    pub const ALL: [PersonField; 16] = [
        Self::Surname,
        Self::GivenName,
        Self::Patronymic,
        Self::Sex,
        Self::DateOfBirth,
        Self::PlaceOfBirth,
        Self::Citizenship,
        Self::Documents,
        Self::AdministrativeLiability,
        Self::CriminalLiability,
        Self::Residence,
        Self::ResidencePermit,
        Self::EntryBans,
        Self::ExitRestrictions,
        Self::Photographs,
        Self::FingerprintCard,
    ];

    /// The snake_case name: the JSON field of [`Person`] and the name used in profiles.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Surname => "surname",
            Self::GivenName => "given_name",
            Self::Patronymic => "patronymic",
            Self::Sex => "sex",
            Self::DateOfBirth => "date_of_birth",
            Self::PlaceOfBirth => "place_of_birth",
            Self::Citizenship => "citizenship",
            Self::Documents => "documents",
            Self::AdministrativeLiability => "administrative_liability",
            Self::CriminalLiability => "criminal_liability",
            Self::Residence => "residence",
            Self::ResidencePermit => "residence_permit",
            Self::EntryBans => "entry_bans",
            Self::ExitRestrictions => "exit_restrictions",
            Self::Photographs => "photographs",
            Self::FingerprintCard => "fingerprint_card",
        }
    }
}

impl fmt::Display for PersonField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name in both spellings Art. 6 requires.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Name {
    /// Cyrillic (Russian) spelling, for example `Иванов`.
    pub cyrillic: String,
    /// Latin spelling, as in the travel document, for example `IVANOV`.
    pub latin: String,
}

/// Sex, as recorded in the identity document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sex {
    /// Male.
    Male,
    /// Female.
    Female,
}

/// An ISO 3166-1 alpha-3 country code, for example `KAZ`, `BLR`, `ARM`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CountryCode([u8; 3]);

impl CountryCode {
    /// Parses a code of three uppercase ASCII letters.
    pub fn new(s: &str) -> Result<Self, ParseIdError> {
        match s.as_bytes() {
            [a, b, c] if [a, b, c].iter().all(|x| x.is_ascii_uppercase()) => Ok(Self([*a, *b, *c])),
            _ => Err(ParseIdError {
                what: "country code",
                value: s.chars().take(8).collect(),
                reason: "expected an ISO 3166-1 alpha-3 code of three uppercase letters, such as KAZ",
            }),
        }
    }
    /// The code as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII uppercase letters are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}
impl FromStr for CountryCode {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}
impl fmt::Display for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
impl fmt::Debug for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CountryCode({})", self.as_str())
    }
}
impl Serialize for CountryCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}
impl<'de> Deserialize<'de> for CountryCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(de::Error::custom)
    }
}

/// A citizenship affiliation (Art. 5(3), Art. 6). A person may have several.
///
/// JSON: `{"country": "KAZ"}`, `"stateless"`, or `{"other": "…"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Citizenship {
    /// Citizen of the state with this ISO 3166-1 alpha-3 code.
    Country(CountryCode),
    /// Stateless person.
    Stateless,
    /// Citizenship described in text (undetermined, disputed, a former state…).
    Other(String),
}

/// Kind of a travel or identity document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocumentKind {
    /// Passport (travel document).
    Passport,
    /// National identity card.
    IdentityCard,
    /// Residence permit card (вид на жительство).
    ResidencePermitCard,
    /// Another travel or identity document.
    Other,
}

/// Art. 6: a travel document or identity document: series, number, date of issue, issuing authority.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityDocument {
    /// What kind of document.
    pub kind: DocumentKind,
    /// Series, where the document has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub series: Option<String>,
    /// Document number.
    pub number: String,
    /// Date of issue, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued: Option<Date>,
    /// Issuing authority, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
}

/// Art. 6: one record of administrative or criminal liability.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiabilityRecord {
    /// Date of the decision.
    pub date: Date,
    /// Article of the code, or a description of the offence.
    pub article: String,
    /// The decision taken (penalty, sentence, its authority).
    pub decision: String,
}

/// Art. 6: place of residence in the territory of a party.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Residence {
    /// Address as text.
    pub address: String,
    /// Region (oblast, city of republican significance), if given separately.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Registered at this address since, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Date>,
}

/// Temporary or permanent residence permit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PermitKind {
    /// Temporary residence permit.
    Temporary,
    /// Permanent residence permit.
    Permanent,
}

/// Art. 6: a temporary or permanent residence permit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResidencePermit {
    /// Temporary or permanent.
    pub kind: PermitKind,
    /// Number of the permit (or of the decision granting it).
    pub number: String,
    /// Date of issue.
    pub issued: Date,
    /// Last day of validity; absent for permits without a term.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<Date>,
}

/// Art. 6: a decision banning entry or restricting exit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestrictionDecision {
    /// Date of the decision.
    pub decision_date: Date,
    /// Authority that took the decision.
    pub authority: String,
    /// Last day the ban or restriction applies; absent if without a term.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<Date>,
    /// Legal basis (article of the law, grounds).
    pub basis: String,
}

/// Art. 6: the personal data of one person, and only the fields Art. 6 allows.
///
/// Surname and given name are required; every other field is optional and
/// left out of JSON and CBOR when empty. Unknown fields are refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Person {
    /// Surname in Cyrillic and Latin spelling.
    pub surname: Name,
    /// Given name in Cyrillic and Latin spelling.
    pub given_name: Name,
    /// Patronymic (if any) in Cyrillic and Latin spelling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patronymic: Option<Name>,
    /// Sex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sex: Option<Sex>,
    /// Date of birth, `YYYY-MM-DD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date_of_birth: Option<Date>,
    /// Place of birth as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub place_of_birth: Option<String>,
    /// Citizenship(s); several for a person of dual citizenship.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub citizenship: Vec<Citizenship>,
    /// Travel and identity documents.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub documents: Vec<IdentityDocument>,
    /// Records of administrative liability.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub administrative_liability: Vec<LiabilityRecord>,
    /// Records of criminal liability.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub criminal_liability: Vec<LiabilityRecord>,
    /// Place of residence in the territory of a party.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub residence: Option<Residence>,
    /// Temporary or permanent residence permit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub residence_permit: Option<ResidencePermit>,
    /// Decisions banning entry to the territory of a party.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entry_bans: Vec<RestrictionDecision>,
    /// Decisions restricting exit from the territory of a party.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exit_restrictions: Vec<RestrictionDecision>,
    /// Photographs (attachments, typically `image/jpeg`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub photographs: Vec<Attachment>,
    /// Fingerprint card, if any (attachment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint_card: Option<Attachment>,
}

impl Person {
    /// A person with only the two required names set.
    pub fn new(surname: Name, given_name: Name) -> Self {
        Self {
            surname,
            given_name,
            patronymic: None,
            sex: None,
            date_of_birth: None,
            place_of_birth: None,
            citizenship: Vec::new(),
            documents: Vec::new(),
            administrative_liability: Vec::new(),
            criminal_liability: Vec::new(),
            residence: None,
            residence_permit: None,
            entry_bans: Vec::new(),
            exit_restrictions: Vec::new(),
            photographs: Vec::new(),
            fingerprint_card: None,
        }
    }

    /// The Art. 6 fields this record has set (non-empty), in the order of [`PersonField::ALL`].
    pub fn fields_present(&self) -> Vec<PersonField> {
        let Self {
            surname: _,
            given_name: _,
            patronymic,
            sex,
            date_of_birth,
            place_of_birth,
            citizenship,
            documents,
            administrative_liability,
            criminal_liability,
            residence,
            residence_permit,
            entry_bans,
            exit_restrictions,
            photographs,
            fingerprint_card,
        } = self;
        let flags = [
            (PersonField::Surname, true),
            (PersonField::GivenName, true),
            (PersonField::Patronymic, patronymic.is_some()),
            (PersonField::Sex, sex.is_some()),
            (PersonField::DateOfBirth, date_of_birth.is_some()),
            (PersonField::PlaceOfBirth, place_of_birth.is_some()),
            (PersonField::Citizenship, !citizenship.is_empty()),
            (PersonField::Documents, !documents.is_empty()),
            (
                PersonField::AdministrativeLiability,
                !administrative_liability.is_empty(),
            ),
            (PersonField::CriminalLiability, !criminal_liability.is_empty()),
            (PersonField::Residence, residence.is_some()),
            (PersonField::ResidencePermit, residence_permit.is_some()),
            (PersonField::EntryBans, !entry_bans.is_empty()),
            (PersonField::ExitRestrictions, !exit_restrictions.is_empty()),
            (PersonField::Photographs, !photographs.is_empty()),
            (PersonField::FingerprintCard, fingerprint_card.is_some()),
        ];
        flags.into_iter().filter(|(_, on)| *on).map(|(f, _)| f).collect()
    }

    /// This person's attachments: photographs in order, then the fingerprint card.
    pub fn attachments(&self) -> impl Iterator<Item = &Attachment> {
        self.photographs.iter().chain(self.fingerprint_card.iter())
    }

    /// This person's attachments, mutable, in the order of [`Person::attachments`].
    pub fn attachments_mut(&mut self) -> impl Iterator<Item = &mut Attachment> {
        self.photographs
            .iter_mut()
            .chain(self.fingerprint_card.iter_mut())
    }
}
