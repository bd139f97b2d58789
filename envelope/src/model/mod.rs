//! The message model of the agreements (see `REQUIREMENTS.md`).
//!
//! Every message has a [`MessageHeader`] (id, time, agreement, sender and
//! recipient authority, and for answers the id it answers) and a
//! [`MessageBody`], one variant per message kind.
//!
//! JSON is the human and integrator form; CBOR (deterministic) is the wire and
//! storage form. Types whose JSON and CBOR forms differ (ids, timestamps,
//! digests) check `Serializer::is_human_readable`.

mod common;
pub mod kinds;
pub mod person;

pub use common::*;
pub use kinds::*;
pub use person::*;
