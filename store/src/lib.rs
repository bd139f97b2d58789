//! Konvert's store: the embedded sled store in which a gateway keeps what it
//! sends and receives, encrypted at rest, durable once acknowledged, for
//! exactly as long as its agreement allows, then destroyed by destroying
//! its keys (REQUIREMENTS.md, Art. 11.4 and 11.5; design in docs/STORE.md).
//!
//! No other crate touches sled: the workspace sees [`Store`] and its typed
//! records. Payloads are opaque bytes sealed with XChaCha20-Poly1305 under a
//! data key per expiry hour (and per case); metadata in the clear is ids,
//! times, peers, agreements, kinds, states, sizes and digests, never
//! personal data.
//!
//! ```no_run
//! use konvert_store::{MasterKey, NewMessage, MessageId, Store, StoreConfig};
//! # fn main() -> konvert_store::Result<()> {
//! let key = MasterKey::from_file("/etc/konvert/master.key".as_ref())?;
//! let store = Store::open(StoreConfig::new("/var/lib/konvert", key))?;
//! let put = store.put_inbox(&NewMessage {
//!     id: MessageId::new_v7(1_700_000_000_000),
//!     peer: "by.mvd".into(),
//!     agreement: "kz-by-2019".into(),
//!     kind: "request".into(),
//!     case: None,
//!     payload: b"sealed envelope bytes".to_vec(),
//!     digest: None, // SHA-256 of the payload
//! })?;
//! // put_inbox returned: the envelope is durable; a receipt may be sent.
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod audit;
mod blobs;
mod error;
mod ids;
mod keys;
mod model;
mod retention;
mod segments;
mod store;
mod sync;
mod wal;

pub use audit::{
    destroyed_digest, destroyed_list, last_audit_head, AuditAnchor, AuditBreak, AuditEntry, AuditEvent,
    AuditHead, AuditKind, BreakKind, VerifiedChain, MAX_EVENT_IDS,
};
pub use blobs::{BlobKey, BlobReader, BlobRef, BlobWriter, CHUNK as BLOB_CHUNK};
pub use error::{Error, Result};
pub use ids::{CaseId, Clock, ManualClock, MessageId, SystemClock};
pub use keys::{read_keyring_summary, rekey_keyring, KeyringSummary, MasterKey};
pub use model::{
    CaseInfo, Direction, IndexEntry, Message, MessageMeta, MessageState, NewCase, NewMessage, NewReceipt,
    Put, Receipt, StoreStats, SweepReport,
};
pub use retention::RetentionPolicy;
pub use store::{
    RecordOp, Store, StoreConfig, BUSY_WRITERS, MAX_RECORD_KEY, MAX_RECORD_OPS, MAX_RECORD_VALUE,
};
pub use sync::SyncMode;
