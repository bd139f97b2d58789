//! Konvert gateway library: what `konvertd` and `konvertctl` share.
//!
//! - [`files`]: size-limited reads, atomic writes, owner-only secrets.
//! - [`config`]: `konvert.toml`, the daemon configuration.
//! - [`daemon`]: `konvertd`: the node, inbound and outbound delivery, the API service.
//! - [`docgen`]: man pages and shell completions from the clap definitions.
//! - [`demo`]: `konvertctl demo`, the exchange a newcomer runs first.
//! - [`retry`]: outbox retry timing (exponential backoff with jitter).
//! - [`init`]: `konvertctl init` (also `--systemd`, the packaged service's layout) and `peer add`.
//! - [`signatories`]: `konvertctl signatory add|revoke|list`: the signed signatory roster.
//! - [`offline`]: the offline commands (key generation; seal, open, inspect envelope files).
//! - [`systemd`]: readiness, reload, stop and watchdog notifications to systemd (`Type=notify`).
//! - [`client`]: the local API client behind `konvertctl`'s online commands (send, status, receipts, inbox, peers, health).
//! - [`metrics`]: the Prometheus metrics endpoint on loopback (`[metrics] listen`).
//! - [`rekey`]: `konvertctl store rekey`, the offline re-key of the store's master key.
//! - [`rotation`]: `konvertctl keys rotate|retire` and konvertd's side of a rotation of the
//!   node's own keys (announced by a signed directory statement) and of its peers' rotations.
//! - [`alloc`]: the allocator (mimalloc) and its tuning, the crate's one `unsafe` call.
#![deny(unsafe_code)]

pub mod alloc;
pub mod api;
pub mod client;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod docgen;
pub mod files;
pub mod init;
pub mod metrics;
pub mod offline;
mod reader_body;
pub mod rekey;
pub mod retry;
pub mod rotation;
pub mod signatories;
pub mod systemd;
pub mod transport;
pub mod verifier;
