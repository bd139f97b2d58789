//! Deterministic CBOR written straight from serde, without a value tree.
//!
//! [`crate::cbor::to_deterministic_vec`] used to build a
//! `ciborium::value::Value` of the whole item (an allocation per string,
//! map and array), sort its maps and encode it: about 3 % of the CPU of a
//! 1 KiB message end to end, where a message is encoded deterministically
//! twice (its fingerprint and its signature). This serializer writes each
//! item as serde hands it over; a map (struct) writes its entries into a
//! scratch buffer of its own and copies them out in the order of their
//! encoded keys. Its output is what the value-tree path writes for the same
//! serde data model (tests compare both on generated values and on every
//! message kind); for the few things it does not handle the same way
//! (ciborium's tag wrapper, integers beyond 64 bits, sequences of unknown
//! length or of another length than announced) it gives up with
//! [`Failed::Unsupported`] and the caller falls back to the value-tree path.

use serde::ser::{self, Serialize};

/// Why a value was not written.
#[derive(Debug)]
pub(crate) enum Failed {
    /// Not handled here; the value-tree path decides.
    Unsupported,
    /// A value deterministic CBOR cannot hold (as the value-tree path
    /// refuses it).
    Refused(String),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Unsupported => f.write_str("not handled by the direct encoder"),
            Failed::Refused(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for Failed {}

impl ser::Error for Failed {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Failed::Refused(msg.to_string())
    }
}

/// Writes `value` as deterministic CBOR into `out`.
pub(crate) fn write<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), Failed> {
    value.serialize(Det { out })
}

/// A CBOR head: major type and argument in shortest form.
fn head(out: &mut Vec<u8>, major: u8, arg: u64) {
    let m = major << 5;
    if arg < 24 {
        out.push(m | arg as u8);
    } else if arg <= u64::from(u8::MAX) {
        out.extend_from_slice(&[m | 24, arg as u8]);
    } else if arg <= u64::from(u16::MAX) {
        out.push(m | 25);
        out.extend_from_slice(&(arg as u16).to_be_bytes());
    } else if arg <= u64::from(u32::MAX) {
        out.push(m | 26);
        out.extend_from_slice(&(arg as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&arg.to_be_bytes());
    }
}

fn text(out: &mut Vec<u8>, s: &str) {
    head(out, 3, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn signed(out: &mut Vec<u8>, v: i64) {
    if v >= 0 {
        head(out, 0, v as u64);
    } else {
        // -1 - n is encoded as n.
        head(out, 1, !(v as u64));
    }
}

/// Map entries of one map, written into a buffer of their own and sorted
/// by their encoded keys when the map ends.
struct Entries<'a> {
    out: &'a mut Vec<u8>,
    buf: Vec<u8>,
    /// Per entry: where its key starts, where its key ends (its value
    /// starts), where its value ends.
    spans: Vec<(usize, usize, usize)>,
    /// The entry whose key was written and whose value is due.
    key: Option<(usize, usize)>,
    /// For a struct variant: the variant name, written around the map.
    variant: Option<&'static str>,
}

impl<'a> Entries<'a> {
    fn new(out: &'a mut Vec<u8>, len: usize, variant: Option<&'static str>) -> Self {
        Entries {
            out,
            buf: Vec::with_capacity(len * 24),
            spans: Vec::with_capacity(len),
            key: None,
            variant,
        }
    }

    fn key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Failed> {
        let start = self.buf.len();
        key.serialize(Det { out: &mut self.buf })?;
        self.key = Some((start, self.buf.len()));
        Ok(())
    }

    fn value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Failed> {
        let (start, key_end) = self
            .key
            .take()
            .ok_or_else(|| Failed::Refused("map value without a key".into()))?;
        value.serialize(Det { out: &mut self.buf })?;
        self.spans.push((start, key_end, self.buf.len()));
        Ok(())
    }

    fn field<T: Serialize + ?Sized>(&mut self, name: &'static str, value: &T) -> Result<(), Failed> {
        let start = self.buf.len();
        text(&mut self.buf, name);
        self.key = Some((start, self.buf.len()));
        self.value(value)
    }

    fn end(mut self) -> Result<(), Failed> {
        if self.key.is_some() {
            return Err(Failed::Refused("map key without a value".into()));
        }
        let buf = &self.buf;
        self.spans
            .sort_unstable_by(|a, b| buf[a.0..a.1].cmp(&buf[b.0..b.1]));
        if self
            .spans
            .windows(2)
            .any(|w| buf[w[0].0..w[0].1] == buf[w[1].0..w[1].1])
        {
            return Err(Failed::Refused("duplicate map key".into()));
        }
        if let Some(variant) = self.variant {
            head(self.out, 5, 1);
            text(self.out, variant);
        }
        head(self.out, 5, self.spans.len() as u64);
        self.out.reserve(self.buf.len());
        for &(start, _, end) in &self.spans {
            self.out.extend_from_slice(&buf[start..end]);
        }
        Ok(())
    }
}

/// Elements of an array of known length, written in order.
struct Elements<'a> {
    out: &'a mut Vec<u8>,
    left: usize,
}

impl Elements<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Failed> {
        // (A length that does not hold is left to the value tree, which
        // counts what it gets.)
        self.left = self.left.checked_sub(1).ok_or(Failed::Unsupported)?;
        value.serialize(Det { out: self.out })
    }

    fn end(self) -> Result<(), Failed> {
        if self.left == 0 {
            Ok(())
        } else {
            Err(Failed::Unsupported)
        }
    }
}

struct Det<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> ser::Serializer for Det<'a> {
    type Ok = ();
    type Error = Failed;
    type SerializeSeq = Elements<'a>;
    type SerializeTuple = Elements<'a>;
    type SerializeTupleStruct = Elements<'a>;
    type SerializeTupleVariant = Elements<'a>;
    type SerializeMap = Entries<'a>;
    type SerializeStruct = Entries<'a>;
    type SerializeStructVariant = Entries<'a>;

    fn is_human_readable(&self) -> bool {
        false
    }

    fn serialize_bool(self, v: bool) -> Result<(), Failed> {
        self.out.push(if v { 0xf5 } else { 0xf4 });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), Failed> {
        self.serialize_i64(v.into())
    }
    fn serialize_i16(self, v: i16) -> Result<(), Failed> {
        self.serialize_i64(v.into())
    }
    fn serialize_i32(self, v: i32) -> Result<(), Failed> {
        self.serialize_i64(v.into())
    }
    fn serialize_i64(self, v: i64) -> Result<(), Failed> {
        signed(self.out, v);
        Ok(())
    }
    fn serialize_i128(self, v: i128) -> Result<(), Failed> {
        match i64::try_from(v) {
            Ok(v) => self.serialize_i64(v),
            Err(_) => match u64::try_from(v) {
                Ok(v) => self.serialize_u64(v),
                Err(_) => Err(Failed::Unsupported),
            },
        }
    }
    fn serialize_u8(self, v: u8) -> Result<(), Failed> {
        self.serialize_u64(v.into())
    }
    fn serialize_u16(self, v: u16) -> Result<(), Failed> {
        self.serialize_u64(v.into())
    }
    fn serialize_u32(self, v: u32) -> Result<(), Failed> {
        self.serialize_u64(v.into())
    }
    fn serialize_u64(self, v: u64) -> Result<(), Failed> {
        head(self.out, 0, v);
        Ok(())
    }
    fn serialize_u128(self, v: u128) -> Result<(), Failed> {
        u64::try_from(v).map_or(Err(Failed::Unsupported), |v| self.serialize_u64(v))
    }
    fn serialize_f32(self, _: f32) -> Result<(), Failed> {
        Err(Failed::Unsupported)
    }
    fn serialize_f64(self, _: f64) -> Result<(), Failed> {
        Err(Failed::Unsupported)
    }
    fn serialize_char(self, v: char) -> Result<(), Failed> {
        text(self.out, v.encode_utf8(&mut [0u8; 4]));
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), Failed> {
        text(self.out, v);
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), Failed> {
        head(self.out, 2, v.len() as u64);
        self.out.extend_from_slice(v);
        Ok(())
    }
    fn serialize_none(self) -> Result<(), Failed> {
        self.out.push(0xf6);
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Failed> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Failed> {
        self.serialize_none()
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Failed> {
        self.serialize_none()
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), Failed> {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), Failed> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Failed> {
        if name == "@@TAG@@" {
            return Err(Failed::Unsupported);
        }
        head(self.out, 5, 1);
        text(self.out, variant);
        value.serialize(self)
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Elements<'a>, Failed> {
        let left = len.ok_or(Failed::Unsupported)?;
        head(self.out, 4, left as u64);
        Ok(Elements { out: self.out, left })
    }
    fn serialize_tuple(self, len: usize) -> Result<Elements<'a>, Failed> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<Elements<'a>, Failed> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Elements<'a>, Failed> {
        if name == "@@TAG@@" {
            return Err(Failed::Unsupported);
        }
        head(self.out, 5, 1);
        text(self.out, variant);
        self.serialize_seq(Some(len))
    }
    fn serialize_map(self, len: Option<usize>) -> Result<Entries<'a>, Failed> {
        Ok(Entries::new(self.out, len.unwrap_or(4), None))
    }
    fn serialize_struct(self, _name: &'static str, len: usize) -> Result<Entries<'a>, Failed> {
        Ok(Entries::new(self.out, len, None))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Entries<'a>, Failed> {
        Ok(Entries::new(self.out, len, Some(variant)))
    }
}

impl ser::SerializeSeq for Elements<'_> {
    type Ok = ();
    type Error = Failed;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Failed> {
        self.element(value)
    }
    fn end(self) -> Result<(), Failed> {
        Elements::end(self)
    }
}

impl ser::SerializeTuple for Elements<'_> {
    type Ok = ();
    type Error = Failed;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Failed> {
        self.element(value)
    }
    fn end(self) -> Result<(), Failed> {
        Elements::end(self)
    }
}

impl ser::SerializeTupleStruct for Elements<'_> {
    type Ok = ();
    type Error = Failed;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Failed> {
        self.element(value)
    }
    fn end(self) -> Result<(), Failed> {
        Elements::end(self)
    }
}

impl ser::SerializeTupleVariant for Elements<'_> {
    type Ok = ();
    type Error = Failed;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Failed> {
        self.element(value)
    }
    fn end(self) -> Result<(), Failed> {
        Elements::end(self)
    }
}

impl ser::SerializeMap for Entries<'_> {
    type Ok = ();
    type Error = Failed;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Failed> {
        self.key(key)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Failed> {
        self.value(value)
    }
    fn end(self) -> Result<(), Failed> {
        Entries::end(self)
    }
}

impl ser::SerializeStruct for Entries<'_> {
    type Ok = ();
    type Error = Failed;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        name: &'static str,
        value: &T,
    ) -> Result<(), Failed> {
        self.field(name, value)
    }
    fn end(self) -> Result<(), Failed> {
        Entries::end(self)
    }
}

impl ser::SerializeStructVariant for Entries<'_> {
    type Ok = ();
    type Error = Failed;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        name: &'static str,
        value: &T,
    ) -> Result<(), Failed> {
        self.field(name, value)
    }
    fn end(self) -> Result<(), Failed> {
        Entries::end(self)
    }
}
