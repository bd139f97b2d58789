//! Deterministic CBOR (RFC 8949 §4.2.1, "core deterministic encoding").
//!
//! Everything Konvert signs is encoded with [`to_deterministic_vec`]:
//! preferred (shortest) argument encoding, definite lengths only, and map
//! keys sorted by the bytewise lexicographic order of their own encodings.
//! ciborium already writes shortest arguments and definite lengths for serde
//! types; this module sorts the maps.
//!
//! Decoding ([`from_slice`]) is strict: one item, no trailing bytes, and a
//! size limit checked before any allocation.

use std::cmp::Ordering;

use ciborium::value::Value;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why a value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CborError {
    /// The input is larger than the limit for this kind of item.
    #[error("CBOR item of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Input length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The bytes are not well-formed CBOR or do not have the expected shape.
    #[error("malformed CBOR: {0}")]
    Malformed(String),
    /// Bytes follow the single expected item.
    #[error("{0} unexpected bytes after the CBOR item")]
    TrailingBytes(usize),
    /// The value cannot be represented (should not happen for Konvert's types).
    #[error("cannot encode value as CBOR: {0}")]
    Encode(String),
    /// The encoding is well-formed but not deterministic where it must be.
    #[error("CBOR encoding is not deterministic (RFC 8949 §4.2.1)")]
    NotDeterministic,
}

/// Encodes `value` as deterministic CBOR.
pub fn to_deterministic_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CborError> {
    let v = Value::serialized(value).map_err(|e| CborError::Encode(e.to_string()))?;
    value_to_deterministic_vec(v)
}

/// Encodes an already built CBOR value deterministically.
pub fn value_to_deterministic_vec(mut v: Value) -> Result<Vec<u8>, CborError> {
    canonicalize(&mut v)?;
    let mut out = Vec::with_capacity(256);
    ciborium::into_writer(&v, &mut out).map_err(|e| CborError::Encode(e.to_string()))?;
    Ok(out)
}

/// Sorts every map in `v` (recursively) into deterministic key order.
pub fn canonicalize(v: &mut Value) -> Result<(), CborError> {
    match v {
        Value::Array(items) => {
            for i in items {
                canonicalize(i)?;
            }
        }
        Value::Map(entries) => {
            let mut keyed = Vec::with_capacity(entries.len());
            for (mut k, mut val) in std::mem::take(entries) {
                canonicalize(&mut k)?;
                canonicalize(&mut val)?;
                let mut kb = Vec::new();
                ciborium::into_writer(&k, &mut kb).map_err(|e| CborError::Encode(e.to_string()))?;
                keyed.push((kb, k, val));
            }
            keyed.sort_by(|a, b| a.0.cmp(&b.0));
            if keyed.windows(2).any(|w| w[0].0.cmp(&w[1].0) == Ordering::Equal) {
                return Err(CborError::Encode("duplicate map key".into()));
            }
            *entries = keyed.into_iter().map(|(_, k, v)| (k, v)).collect();
        }
        Value::Tag(_, inner) => canonicalize(inner)?,
        Value::Float(_) => {
            return Err(CborError::Encode(
                "floating-point values are not used in Konvert".into(),
            ))
        }
        _ => {}
    }
    Ok(())
}

/// Decodes exactly one CBOR item of at most `limit` bytes into `T`.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, CborError> {
    if bytes.len() > limit {
        return Err(CborError::TooLarge {
            len: bytes.len(),
            limit,
        });
    }
    let mut cursor = std::io::Cursor::new(bytes);
    let value: T = ciborium::de::from_reader_with_recursion_limit(&mut cursor, 64)
        .map_err(|e| CborError::Malformed(describe_de_error(&e)))?;
    let used = usize::try_from(cursor.position()).unwrap_or(usize::MAX);
    if used != bytes.len() {
        return Err(CborError::TrailingBytes(bytes.len().saturating_sub(used)));
    }
    Ok(value)
}

/// Decodes like [`from_slice`] and also requires the bytes to be deterministic.
pub fn from_deterministic_slice<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, CborError> {
    let value: Value = from_slice(bytes, limit)?;
    if value_to_deterministic_vec(value)? != bytes {
        return Err(CborError::NotDeterministic);
    }
    from_slice(bytes, limit)
}

/// A deserialisation error, described without echoing input values.
///
/// serde's messages name fields and expected types, which is what an
/// integrator needs; values they quote are redacted.
fn describe_de_error<E: std::fmt::Debug>(e: &ciborium::de::Error<E>) -> String {
    match e {
        ciborium::de::Error::Io(_) => "input ends early or cannot be read".into(),
        ciborium::de::Error::Syntax(off) => format!("syntax error at byte {off}"),
        ciborium::de::Error::Semantic(off, msg) => {
            let msg = crate::model::redact_serde_message(msg);
            match off {
                Some(o) => format!("{msg} (at byte {o})"),
                None => msg,
            }
        }
        ciborium::de::Error::RecursionLimitExceeded => "nested too deeply".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        hex::encode(b)
    }

    #[test]
    fn map_keys_are_sorted_bytewise() {
        // Keys of different lengths and types: ints before text, shorter text first.
        let v = Value::Map(vec![
            (Value::Text("bb".into()), Value::Integer(1.into())),
            (Value::Text("a".into()), Value::Integer(2.into())),
            (Value::Integer((-1).into()), Value::Integer(3.into())),
            (Value::Integer(24.into()), Value::Integer(4.into())),
            (Value::Integer(1.into()), Value::Integer(5.into())),
        ]);
        let out = value_to_deterministic_vec(v).unwrap();
        // a5 01 05 | 18 18 04 | 20 03 | 61 61 02 | 62 62 62 01
        assert_eq!(hex(&out), "a501051818042003616102626262".to_owned() + "01");
    }

    #[test]
    fn trailing_bytes_and_limits_are_refused() {
        let mut b = to_deterministic_vec(&7u32).unwrap();
        b.push(0);
        assert!(matches!(
            from_slice::<u32>(&b, 100),
            Err(CborError::TrailingBytes(1))
        ));
        assert!(matches!(
            from_slice::<u32>(&b, 1),
            Err(CborError::TooLarge { .. })
        ));
    }

    #[test]
    fn non_deterministic_input_is_detected() {
        // {"b": 1, "a": 2} in the wrong order.
        let bytes = [0xa2, 0x61, b'b', 0x01, 0x61, b'a', 0x02];
        assert!(matches!(
            from_deterministic_slice::<Value>(&bytes, 100),
            Err(CborError::NotDeterministic)
        ));
    }
}
