//! Konvert gateway library: what `konvertd` and `konvertctl` share.
//!
//! - [`files`]: size-limited reads, atomic writes, owner-only secrets.
//! - [`offline`]: the offline commands (key generation; seal, open, inspect envelope files).
#![forbid(unsafe_code)]

pub mod files;
pub mod offline;
