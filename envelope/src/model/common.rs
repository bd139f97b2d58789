//! Identifiers, timestamps, digests and attachments shared by every message kind.

use std::fmt;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use super::kinds::MessageBody;

/// Longest identifier (authority, agreement, signatory) accepted anywhere.
pub const MAX_ID_LEN: usize = 64;

/// Error for an identifier or value that does not have the required shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {reason}")]
pub struct ParseIdError {
    /// Which kind of identifier.
    pub what: &'static str,
    /// The offending value (identifiers are never personal data).
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

fn check_ident(what: &'static str, s: &str) -> Result<(), ParseIdError> {
    let err = |reason| {
        Err(ParseIdError {
            what,
            value: s.chars().take(MAX_ID_LEN + 8).collect(),
            reason,
        })
    };
    if s.is_empty() {
        return err("must not be empty");
    }
    if s.len() > MAX_ID_LEN {
        return err("longer than 64 characters");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-' || b == b'_')
    {
        return err("only lowercase ASCII letters, digits, '.', '-' and '_' are allowed");
    }
    if !s.as_bytes()[0].is_ascii_alphanumeric() || !s.as_bytes()[s.len() - 1].is_ascii_alphanumeric() {
        return err("must start and end with a letter or digit");
    }
    Ok(())
}

macro_rules! ident_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Parses and checks an identifier.
            pub fn new(s: impl Into<String>) -> Result<Self, ParseIdError> {
                let s = s.into();
                check_ident($what, &s)?;
                Ok(Self(s))
            }
            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl FromStr for $name {
            type Err = ParseIdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(de::Error::custom)
            }
        }
    };
}

ident_type!(
    /// A competent authority, for example `kz.mvd` or `by.gpk`.
    AuthorityId,
    "authority id"
);
ident_type!(
    /// An agreement, for example `kz-by-2019`.
    AgreementId,
    "agreement id"
);

/// A time-ordered unique identifier (UUIDv7, RFC 9562): of a message, an
/// envelope or a receipt. Text in JSON, a 16-byte string in CBOR.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Id(uuid::Uuid);

impl Id {
    /// A new id whose leading 48 bits are `now` in milliseconds since the Unix epoch.
    pub fn new(now: Timestamp) -> Self {
        let ms = u64::try_from(now.as_millis()).unwrap_or(0);
        let ts = uuid::Timestamp::from_unix(uuid::NoContext, ms / 1000, ((ms % 1000) * 1_000_000) as u32);
        Self(uuid::Uuid::new_v7(ts))
    }
    /// The id from its 16 bytes.
    pub fn from_bytes(b: [u8; 16]) -> Self {
        Self(uuid::Uuid::from_bytes(b))
    }
    /// The 16 bytes of the id; big-endian, so byte order is time order.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
}
impl FromStr for Id {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s).map(Self).map_err(|_| ParseIdError {
            what: "id",
            value: s.chars().take(48).collect(),
            reason: "not a UUID (expected 8-4-4-4-12 hexadecimal digits)",
        })
    }
}
impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}
impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({self})")
    }
}

/// An instant with second precision: RFC 3339 text in JSON (`2026-11-22T10:00:00Z`),
/// an integer count of seconds since the Unix epoch in CBOR.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// From seconds since the Unix epoch.
    pub const fn from_unix(secs: i64) -> Self {
        Self(secs)
    }
    /// Seconds since the Unix epoch.
    pub const fn as_unix(self) -> i64 {
        self.0
    }
    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> i64 {
        self.0.saturating_mul(1000)
    }
    /// The current time of the system clock (for binaries; library code takes time as a value).
    pub fn now() -> Self {
        Self(jiff::Timestamp::now().as_second())
    }
    /// This instant plus a number of seconds (saturating).
    pub const fn plus_secs(self, secs: i64) -> Self {
        Self(self.0.saturating_add(secs))
    }
    /// The calendar date (UTC) of this instant.
    pub fn date_utc(self) -> jiff::civil::Date {
        self.to_jiff().to_zoned(jiff::tz::TimeZone::UTC).date()
    }
    fn to_jiff(self) -> jiff::Timestamp {
        jiff::Timestamp::from_second(self.0).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
    }
}
impl FromStr for Timestamp {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<jiff::Timestamp>()
            .map(|t| Self(t.as_second()))
            .map_err(|_| ParseIdError {
                what: "timestamp",
                value: s.chars().take(40).collect(),
                reason: "not an RFC 3339 time such as 2026-11-22T10:00:00Z",
            })
    }
}
impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.to_jiff(), f)
    }
}
impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({self})")
    }
}
impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_i64(self.0)
        }
    }
}
impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(de::Error::custom)
        } else {
            i64::deserialize(d).map(Self)
        }
    }
}

/// A SHA-256 digest: lowercase hex in JSON, a 32-byte string in CBOR.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// SHA-256 of `data`.
    pub fn of(data: &[u8]) -> Self {
        use sha2::Digest as _;
        Self(sha2::Sha256::digest(data).into())
    }
    /// Whether this is the all-zero value used for "not yet computed".
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 32]
    }
}
impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}
impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}
impl FromStr for Digest {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| ParseIdError {
            what: "SHA-256 digest",
            value: s.chars().take(70).collect(),
            reason: "expected 64 hexadecimal digits",
        })?;
        Ok(Self(out))
    }
}
impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}
impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(de::Error::custom)
        } else {
            let b = serde_bytes::ByteBuf::deserialize(d)?;
            let arr: [u8; 32] = b
                .as_slice()
                .try_into()
                .map_err(|_| de::Error::invalid_length(b.len(), &"32 bytes"))?;
            Ok(Self(arr))
        }
    }
}

/// Longest media type accepted (RFC 6838 allows 127 + '/' + 127).
pub const MAX_MEDIA_TYPE_LEN: usize = 255;

/// A typed binary attachment (photograph, fingerprint card, document, bulk list).
///
/// The bytes travel beside the message as their own age stream in the
/// envelope; the signed message holds only the media type, the length and the
/// SHA-256 of the plaintext, so a signature covers the attachment without the
/// signer ever holding it in memory.
///
/// In the JSON handed to the sealer, `file` names where the bytes are (a path,
/// resolved by the caller) and `length`/`sha256` may be left out: sealing
/// fills them in and removes `file`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    /// Media type, for example `image/jpeg` or `application/pdf`.
    pub media_type: String,
    /// Length of the plaintext in bytes (0 until sealed).
    #[serde(default)]
    pub length: u64,
    /// SHA-256 of the plaintext (all zero until sealed).
    #[serde(default, skip_serializing_if = "Digest::is_zero")]
    pub sha256: Digest,
    /// Integrator-side source of the bytes (a path); never part of a sealed message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// Fields common to every message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageHeader {
    /// Unique, time-ordered message id.
    pub id: Id,
    /// When the message was made.
    pub time: Timestamp,
    /// The agreement (profile id) the message is sent under.
    pub agreement: AgreementId,
    /// Sending authority.
    pub from: AuthorityId,
    /// Receiving authority.
    pub to: AuthorityId,
    /// For answers: the message this one answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_reply_to: Option<Id>,
}

/// A complete message: header and one body of a given kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    /// Id, time, agreement, routing.
    pub header: MessageHeader,
    /// What the message says.
    pub body: MessageBody,
}

ident_type!(
    /// An authorised signatory of an authority (Art. 9.3), for example `kz.mvd.ivanov-a`.
    SignatoryId,
    "signatory id"
);

/// A raw 32-byte Ed25519 public key (RFC 8032): standard base64 (with
/// padding) in JSON, a 32-byte string in CBOR.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKeyBytes(pub [u8; 32]);

impl PublicKeyBytes {
    /// The 32 key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}
impl fmt::Display for PublicKeyBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use base64::Engine as _;
        f.write_str(&base64::engine::general_purpose::STANDARD.encode(self.0))
    }
}
impl fmt::Debug for PublicKeyBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKeyBytes({self})")
    }
}
impl FromStr for PublicKeyBytes {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        use base64::Engine as _;
        let err = || ParseIdError {
            what: "Ed25519 public key",
            value: s.chars().take(60).collect(),
            reason: "expected 32 bytes in standard base64 (44 characters)",
        };
        let v = base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|_| err())?;
        let arr: [u8; 32] = v.as_slice().try_into().map_err(|_| err())?;
        Ok(Self(arr))
    }
}
impl Serialize for PublicKeyBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}
impl<'de> Deserialize<'de> for PublicKeyBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(de::Error::custom)
        } else {
            let b = serde_bytes::ByteBuf::deserialize(d)?;
            let arr: [u8; 32] = b
                .as_slice()
                .try_into()
                .map_err(|_| de::Error::invalid_length(b.len(), &"32 bytes"))?;
            Ok(Self(arr))
        }
    }
}

/// Makes a serde error message safe to show or log: quoted values (`"…"`)
/// and the value in "unknown variant `…`" are replaced by `…`, so that a
/// decoding error never repeats personal data from the input. Field names
/// (in "unknown field `x`", "missing field `x`" and the lists of expected
/// names) are kept: they are what an integrator needs to fix the input.
pub fn redact_serde_message(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len().min(512));
    let mut rest = msg;
    while let Some(i) = rest.find(['"', '`']) {
        let (before, tail) = rest.split_at(i);
        out.push_str(before);
        let quote = tail.as_bytes()[0] as char;
        let Some(end) = tail[1..].find(quote) else {
            out.push_str(&tail[..1]);
            out.push('…');
            rest = "";
            break;
        };
        let inner = &tail[1..1 + end];
        let value = quote == '"' || out.ends_with("unknown variant ");
        out.push(quote);
        out.push_str(if value { "…" } else { inner });
        out.push(quote);
        rest = &tail[end + 2..];
    }
    out.push_str(rest);
    if out.chars().count() > 400 {
        out = out.chars().take(400).collect::<String>() + "…";
    }
    out
}

#[cfg(test)]
mod redact_tests {
    use super::redact_serde_message as r;

    #[test]
    fn values_are_redacted_and_field_names_kept() {
        assert_eq!(
            r("invalid type: string \"Сейткали\", expected struct Name at line 57 column 3"),
            "invalid type: string \"…\", expected struct Name at line 57 column 3"
        );
        assert_eq!(
            r("unknown variant `Сейткали`, expected `male` or `female`"),
            "unknown variant `…`, expected `male` or `female`"
        );
        assert_eq!(
            r("unknown field `religion`, expected one of `surname`, `given_name`"),
            "unknown field `religion`, expected one of `surname`, `given_name`"
        );
        assert_eq!(r("broken \"tail"), "broken \"…");
    }
}
