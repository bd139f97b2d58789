#![allow(dead_code, clippy::unwrap_used)]
//! Helpers shared by the store's integration tests.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use konvert_store::*;

pub const T0: i64 = 1_750_000_000; // a fixed "now"
pub const HOUR: i64 = 3600;
pub const DAY: i64 = 86_400;

pub fn master() -> MasterKey {
    MasterKey::from_bytes([7u8; 32])
}

pub fn policy() -> RetentionPolicy {
    RetentionPolicy {
        default: Duration::from_secs(30 * DAY as u64),
        per_agreement_kind: Default::default(),
        audit_retention: Duration::from_secs(365 * DAY as u64),
    }
    .with("kz-by-2019", "notice", Duration::from_secs(2 * DAY as u64))
}

pub fn config(dir: &Path, clock: Arc<ManualClock>) -> StoreConfig {
    let mut c = StoreConfig::new(dir, master());
    c.retention = policy();
    c.clock = clock;
    c.cache_bytes = 16 << 20;
    c
}

pub fn open(dir: &Path, clock: Arc<ManualClock>) -> Store {
    Store::open(config(dir, clock)).unwrap()
}

pub fn msg(ms: u64, peer: &str, kind: &str, payload: &[u8]) -> NewMessage {
    NewMessage {
        id: MessageId::new_v7(ms),
        peer: peer.into(),
        agreement: "kz-by-2019".into(),
        kind: kind.into(),
        case: None,
        payload: payload.to_vec(),
        digest: None,
    }
}

/// Every file under `dir`, recursively.
pub fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
