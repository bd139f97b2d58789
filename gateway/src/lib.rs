//! Konvert gateway library: what `konvertd` and `konvertctl` share.
//!
//! - [`files`]: size-limited reads, atomic writes, owner-only secrets.
//! - [`config`]: `konvert.toml`, the daemon configuration.
//! - [`demo`]: `konvertctl demo`, the exchange a newcomer runs first.
//! - [`offline`]: the offline commands (key generation; seal, open, inspect envelope files).
#![forbid(unsafe_code)]

pub mod config;
pub mod demo;
pub mod files;
pub mod offline;
