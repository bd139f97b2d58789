//! RFC 9457 problem documents: every error of the local API.
//!
//! A problem has a stable `type` URI (one per [`ProblemType`]), the HTTP
//! status, a short `title`, a `detail` sentence and the list of fields at
//! fault. Texts carry field paths, rule names, parameter names and ids only:
//! never personal data or message substance (Art. 11.1).

use std::fmt;

use konvert_envelope::model::redact_serde_message;
use konvert_envelope::profile::{ValidationErrors, ValidationRule};
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// Media type of a problem document.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// Base of every problem type URI.
pub const PROBLEM_BASE: &str = "https://konvert.invalid/problems/";

/// The kinds of problem, each with a stable URI, title and HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProblemType {
    /// 422: the message breaks its agreement profile (field paths and rules in `errors`).
    Validation,
    /// 422: the agreement the message names is not (or no longer) in force (Art. 17).
    NotInForce,
    /// 422: the signatory named by a submission may not sign for this
    /// authority now: not on its latest signatory roster (revoked), or
    /// outside its validity (Art. 9.3, 9.4). The peer would refuse it with
    /// `signer_not_authorised`.
    SignerNotAuthorised,
    /// 422: the submission carries data received from another party
    /// (`sources`) that may not go to this recipient, or be used for this
    /// purpose, without a consent of the providing party, and none is
    /// granted on record (Art. 11.2, 11.3). `errors[0].field` is
    /// `/sources/<i>`; the text names the consent that is missing. The peer
    /// would refuse it with `consent_missing`.
    ConsentMissing,
    /// 400: the request is malformed: bad JSON, a bad parameter, an id of the wrong shape.
    BadRequest,
    /// 403: the connecting process is not on the socket's allow-list.
    UnauthorizedCaller,
    /// 404: no such route, message, receipt, inbox item or attachment.
    NotFound,
    /// 405: the route exists but not for this method (see `Allow`).
    MethodNotAllowed,
    /// 409: the request conflicts with the state (for example, a message id reused for another message).
    Conflict,
    /// 413: the body is larger than the configured limit.
    PayloadTooLarge,
    /// 415: the body's `Content-Type` is missing or not accepted here.
    UnsupportedMediaType,
    /// 503: the gateway cannot take the request now (store unavailable, shutting down); retry later.
    Unavailable,
    /// 500: an unexpected failure; the daemon's log has the details.
    Internal,
}

impl ProblemType {
    /// Every problem type.
    pub const ALL: [ProblemType; 13] = [
        Self::Validation,
        Self::NotInForce,
        Self::SignerNotAuthorised,
        Self::ConsentMissing,
        Self::BadRequest,
        Self::UnauthorizedCaller,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::Conflict,
        Self::PayloadTooLarge,
        Self::UnsupportedMediaType,
        Self::Unavailable,
        Self::Internal,
    ];

    /// The last segment of the type URI.
    pub const fn slug(self) -> &'static str {
        match self {
            Self::Validation => "validation",
            Self::NotInForce => "not-in-force",
            Self::SignerNotAuthorised => "signer-not-authorised",
            Self::ConsentMissing => "consent-missing",
            Self::BadRequest => "bad-request",
            Self::UnauthorizedCaller => "unauthorized-caller",
            Self::NotFound => "not-found",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::Conflict => "conflict",
            Self::PayloadTooLarge => "payload-too-large",
            Self::UnsupportedMediaType => "unsupported-media-type",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }

    /// The HTTP status.
    pub const fn status(self) -> u16 {
        match self {
            Self::Validation | Self::NotInForce | Self::SignerNotAuthorised | Self::ConsentMissing => 422,
            Self::BadRequest => 400,
            Self::UnauthorizedCaller => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::Conflict => 409,
            Self::PayloadTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::Unavailable => 503,
            Self::Internal => 500,
        }
    }

    /// The short title (the same for every occurrence, RFC 9457 §3.1.3).
    pub const fn title(self) -> &'static str {
        match self {
            Self::Validation => "The message is not valid under its agreement",
            Self::NotInForce => "The agreement is not in force",
            Self::SignerNotAuthorised => "The signatory may not sign for this authority now",
            Self::ConsentMissing => "The consent of the party that provided the data is missing",
            Self::BadRequest => "The request is malformed",
            Self::UnauthorizedCaller => "The calling process is not allowed to use this socket",
            Self::NotFound => "Not found",
            Self::MethodNotAllowed => "Method not allowed",
            Self::Conflict => "The request conflicts with the current state",
            Self::PayloadTooLarge => "The request body is too large",
            Self::UnsupportedMediaType => "Unsupported media type",
            Self::Unavailable => "The gateway is unavailable; retry later",
            Self::Internal => "Internal error",
        }
    }

    /// The full type URI, e.g. `https://konvert.invalid/problems/validation`.
    pub fn uri(self) -> String {
        format!("{PROBLEM_BASE}{}", self.slug())
    }

    /// The type for a URI.
    pub fn from_uri(uri: &str) -> Option<Self> {
        let slug = uri.strip_prefix(PROBLEM_BASE)?;
        Self::ALL.into_iter().find(|t| t.slug() == slug)
    }
}

impl fmt::Display for ProblemType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.slug())
    }
}

impl Serialize for ProblemType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.uri())
    }
}

impl<'de> Deserialize<'de> for ProblemType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::from_uri(&s).ok_or_else(|| de::Error::custom("unknown problem type"))
    }
}

/// One field at fault.
///
/// `field` is a JSON Pointer (RFC 6901) into the request body when it starts
/// with `/` (`/message/body/content/persons/0/fingerprint_card`); otherwise
/// the name of a query parameter (`limit`), a path parameter (`id`, `n`) or a
/// header (`content-type`); empty for the body as a whole.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldError {
    /// Where.
    pub field: String,
    /// The rule broken: a profile rule (`field_not_allowed`, ...) or one of the
    /// API's own (`invalid_format`, `out_of_range`, `unknown_parameter`, ...).
    pub rule: String,
    /// Explanation without personal data.
    pub message: String,
}

impl FieldError {
    /// A field error.
    pub fn new(field: impl Into<String>, rule: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            rule: rule.into(),
            message: message.into(),
        }
    }
}

/// An RFC 9457 problem document (`application/problem+json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Stable type URI.
    #[serde(rename = "type")]
    pub type_: ProblemType,
    /// Title of the type.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// What went wrong in this occurrence.
    pub detail: String,
    /// The request path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The fields at fault.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl Problem {
    /// A problem of a type, with a detail sentence (no personal data!).
    pub fn new(type_: ProblemType, detail: impl Into<String>) -> Self {
        Self {
            type_,
            title: type_.title().to_owned(),
            status: type_.status(),
            detail: detail.into(),
            instance: None,
            errors: Vec::new(),
        }
    }
    /// Adds a field at fault.
    pub fn with_error(
        mut self,
        field: impl Into<String>,
        rule: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        self.errors.push(FieldError::new(field, rule, message));
        self
    }
    /// 400 naming one parameter or field.
    pub fn bad_param(field: &str, rule: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self::new(
            ProblemType::BadRequest,
            format!("invalid parameter {field}: {message}"),
        )
        .with_error(field, rule, message)
    }
    /// 404 for a thing of a kind (`message`, `receipt`, `inbox item`, `attachment`, `route`).
    pub fn not_found(what: &str) -> Self {
        Self::new(ProblemType::NotFound, format!("no such {what}"))
    }
    /// 409.
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(ProblemType::Conflict, detail)
    }
    /// 503.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(ProblemType::Unavailable, detail)
    }
    /// 500; the detail is fixed, the cause belongs in the log.
    pub fn internal() -> Self {
        Self::new(ProblemType::Internal, "unexpected failure; see the gateway log")
    }

    /// The validation errors of a message at `pointer` in the request body
    /// (`/message` for `POST /v1/messages`). Not-in-force and terminated
    /// agreements make a `not-in-force` problem, everything else `validation`.
    pub fn from_validation(errors: &ValidationErrors, pointer: &str) -> Self {
        let not_in_force = errors
            .errors()
            .iter()
            .any(|e| matches!(e.rule, ValidationRule::NotInForce | ValidationRule::Terminated));
        let type_ = if not_in_force {
            ProblemType::NotInForce
        } else {
            ProblemType::Validation
        };
        let n = errors.errors().len();
        let mut p = Self::new(type_, format!("message refused, {n} error(s)"));
        for e in errors.errors() {
            p.errors.push(FieldError::new(
                model_path_to_pointer(pointer, &e.path),
                e.rule.as_str(),
                e.message.clone(),
            ));
        }
        p
    }

    /// A JSON body that does not decode: syntax errors are `bad-request`,
    /// well-formed JSON of the wrong shape (unknown field, missing field,
    /// wrong type) is `validation` with rule `schema`. `field` points at the
    /// place of the error; serde's message is redacted of values.
    pub fn from_json_error(err: &serde_json::Error, body: &[u8]) -> Self {
        let raw = err.to_string();
        let mut message = redact_serde_message(&raw);
        let mut field = super::json_pointer::pointer_at(body, err.line(), err.column());
        // Inside a tagged enum (a message body) serde reports the end of the
        // enum; an unknown field is then found by its name below that place.
        if let Some(name) = raw
            .strip_prefix("unknown field `")
            .and_then(|r| r.split_once('`'))
            .map(|(n, _)| n)
        {
            if !super::json_pointer::is_plain_key(name) {
                // A key that is not a field name may be data: not repeated.
                message = message.replacen(&format!("`{name}`"), "`*`", 1);
            }
            if !field.ends_with(&format!("/{}", super::json_pointer::escape(name))) {
                if let Some(sub) = super::json_pointer::find_key(body, &field, name) {
                    field.push_str(&sub);
                }
            }
        }
        match err.classify() {
            serde_json::error::Category::Data => {
                Self::new(ProblemType::Validation, "the JSON body does not match the schema")
                    .with_error(field, "schema", message)
            }
            _ => Self::new(ProblemType::BadRequest, "the body is not valid JSON").with_error(
                field,
                "invalid_json",
                message,
            ),
        }
    }

    /// The HTTP status code.
    pub fn status_code(&self) -> hyper::StatusCode {
        hyper::StatusCode::from_u16(self.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl From<ValidationErrors> for Problem {
    /// Validation errors of the message of a `POST /v1/messages` body (pointers start with `/message`).
    fn from(errors: ValidationErrors) -> Self {
        Self::from_validation(&errors, "/message")
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.type_, self.status, self.detail)
    }
}

impl std::error::Error for Problem {}

/// `body.content.persons[0].surname` under `/message` → `/message/body/content/persons/0/surname`.
pub fn model_path_to_pointer(prefix: &str, path: &str) -> String {
    let mut out = prefix.trim_end_matches('/').to_owned();
    for segment in path.split('.').filter(|s| !s.is_empty()) {
        let mut rest = segment;
        let name_end = rest.find('[').unwrap_or(rest.len());
        let (name, indexes) = rest.split_at(name_end);
        if !name.is_empty() {
            out.push('/');
            out.push_str(&super::json_pointer::escape(name));
        }
        rest = indexes;
        while let Some(stripped) = rest.strip_prefix('[') {
            let end = stripped.find(']').unwrap_or(stripped.len());
            out.push('/');
            out.push_str(&super::json_pointer::escape(&stripped[..end]));
            rest = stripped.get(end + 1..).unwrap_or("");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_paths_become_pointers() {
        assert_eq!(
            model_path_to_pointer("/message", "body.content.persons[0].fingerprint_card"),
            "/message/body/content/persons/0/fingerprint_card"
        );
        assert_eq!(
            model_path_to_pointer("/message", "header.agreement"),
            "/message/header/agreement"
        );
        assert_eq!(model_path_to_pointer("/message", ""), "/message");
        assert_eq!(model_path_to_pointer("", "a[1][2].b"), "/a/1/2/b");
    }

    #[test]
    fn types_round_trip_their_uris() {
        for t in ProblemType::ALL {
            assert_eq!(ProblemType::from_uri(&t.uri()), Some(t));
        }
        let p = Problem::new(ProblemType::NotFound, "no such message");
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["type"], "https://konvert.invalid/problems/not-found");
        assert_eq!(json["status"], 404);
    }
}
