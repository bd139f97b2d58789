//! Konvert's envelope: the message model of the migration agreements and the
//! sealed envelope that carries a message between two gateways.
//!
//! This crate is pure: bytes in, bytes out, time passed in as a value. It does
//! no file or network I/O of its own; readers and writers are given to it.
//!
//! - [`model`]: serde types for every message kind (JSON for people, CBOR on the wire).
//! - [`profile`]: agreement profiles (TOML) and validation of a message against one.
//! - [`cbor`]: deterministic CBOR (RFC 8949 §4.2.1) for everything that is signed.
//! - [`keys`]: node keys, signatory keys, authority cards; PEM and age text formats.
//! - [`signed`]: the signatory's COSE_Sign1 over a message.
//! - [`envelope`]: sealing and opening envelopes (node signature, age encryption, attachments).
//! - [`receipt`]: signed delivery receipts.
//! - [`workflow`]: request cases (Art. 8–11): states, transitions, deadlines.
//! - [`roster`]: signatory rosters and directory changes signed by an authority root key (Art. 2, 9.3, 9.4).
//! - [`consent`]: purpose binding and onward transfer consents (Art. 11.2, 11.3).
#![forbid(unsafe_code)]

mod age_x25519;
pub mod batch;
pub mod cbor;
mod cbor_det;
pub mod consent;
pub mod envelope;
pub mod keys;
pub mod model;
pub mod profile;
pub mod receipt;
pub mod roster;
pub mod signed;
pub mod workflow;

pub use model::Message;
