//! The store itself: layout in sled, writes, reads, destruction.
//!
//! Metadata, the index and the audit trail live in sled's default tree under
//! one-byte key prefixes. Sealed payloads live outside sled, in one
//! append-only file per key hour (`segments.rs`). A group of puts is written
//! as: group marker `G`, expiry lists, per put the record (compare-and-swap)
//! and its one index entry, then the group's audit block; `repair_group`
//! completes a group cut short at open. Other changes (state transitions,
//! cases, sweeps) are applied atomically through an intent record (`wal.rs`).
//!
//! | key | value |
//! |---|---|
//! | `O`/`I` id | message record (metadata and where its sealed payload is) |
//! | `S` dir state len peer id | (the index: by state, merged across peers; by peer, merged across states) |
//! | `X` hour class id | expiry work: messages of a key hour, purge, receipt, case |
//! | `c` case dir id | (messages of a case) |
//! | `R` id | delivery receipt (sealed) |
//! | `r` len peer id | (receipts by peer) |
//! | `C` case | case record |
//! | `D` deadline case | (cases by deadline) |
//! | `A` seq | audit block (the events of one atomic group) |
//! | `W` seq | intent record (a group being applied) |
//! | `G` | group marker: the new records of the last put group |
//! | `M` | store format version |

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};

use crate::audit::{
    self, AuditBreak, AuditEntry, AuditEvent, AuditHead, AuditKind, BreakKind, VerifiedChain,
};
use crate::blobs::{BlobReader, BlobRef, BlobWriter};
use crate::error::{Error, Result};
use crate::ids::{CaseId, Clock, MessageId};
use crate::keys::{DataKey, Keyring, KeyringSummary, MasterKey, PayloadSeal};
use crate::model::*;
use crate::retention::{hour_of, RetentionPolicy};
use crate::segments::Segments;
use crate::sync::{GroupCommit, Served, SyncMode};
use crate::wal::{self, Batch};

const EMPTY: &[u8] = &[];

pub(crate) const P_AUDIT: u8 = b'A';
const P_STATE: u8 = b'S';
const P_EXP: u8 = b'X';
const P_CASEMSG: u8 = b'c';
const P_RECEIPT: u8 = b'R';
const P_RECEIPT_PEER: u8 = b'r';
/// Receipts this gateway issued for received messages, and their peer index.
const P_ISSUED: u8 = b'Q';
const P_ISSUED_PEER: u8 = b'q';
const P_CASE: u8 = b'C';
const P_DEADLINE: u8 = b'D';
const P_META: u8 = b'M';
/// The group marker: which new records the last fast-path put group writes.
const P_GROUP: u8 = b'G';
/// The application's own records ([`Store::records_apply`]).
const P_RECORD: u8 = b'P';
/// The intent record of a group of application record changes (`V seq`).
const P_RECORD_INTENT: u8 = b'V';

/// Longest key of an application record.
pub const MAX_RECORD_KEY: usize = 255;
/// Largest value of an application record. sled rewrites a leaf holding a
/// value this large as a blob file on every change to the leaf: keep
/// records small (a few KiB) and give rarely changed large ones keys that
/// sort apart from often changed ones.
pub const MAX_RECORD_VALUE: usize = 1 << 20;
/// Most changes in one [`Store::records_apply`] call.
pub const MAX_RECORD_OPS: usize = 4096;

/// A change to an application record: set the key to a value, or remove it (`None`).
pub type RecordOp = (Vec<u8>, Option<Vec<u8>>);

// Expiry work classes.
const X_PURGE_MANY: u8 = 2;
const X_PURGE_RECEIPT: u8 = 4;
const X_CASE_EXPIRE: u8 = 5;
const X_CASE_PURGE: u8 = 6;
/// The index "state" of destroyed messages (not a [`MessageState`]).
const S_DESTROYED: u8 = 0xfe;
/// The messages of one put group whose key hour this is (destroyed with it).
const X_HOUR_MSGS: u8 = 7;
/// An issued receipt whose audit retention ends in that hour.
const X_PURGE_ISSUED: u8 = 8;
/// The delivery receipts stored by one group whose audit retention ends in
/// that hour (16-byte message ids): one entry per group, not one per receipt.
const X_PURGE_RECEIPTS: u8 = 9;
/// The same for the receipts a group issued.
const X_PURGE_ISSUED_MANY: u8 = 10;

const FORMAT_VERSION: &[u8] = b"konvert-store/3";
/// The format before payloads were sealed with AES-256-GCM: everything in
/// it reads the same in `/3` (records without a seal byte are
/// XChaCha20-Poly1305), so it is taken and marked `/3` at open. A release
/// that knows only `/2` then refuses the store at start, instead of
/// failing to open each payload written since.
const FORMAT_VERSION_2: &[u8] = b"konvert-store/2";
const MAX_NAME: usize = 128;
/// Most events per audit block. sled 0.34 keeps 16 entries per leaf and
/// writes a leaf larger than 128 KiB as a blob file (created, and fsynced by
/// the group commit) every time it rewrites it: values must stay well under
/// 8 KiB.
const AUDIT_BLOCK_MAX: usize = 32;
/// Records handled per sweep step (one sled batch, writers wait at most this long).
/// Service threads of the group commit (for async writers). One thread
/// takes the three roles in turn (prepare, apply, sync): on 2 cores, three
/// threads running them at once on consecutive groups cost more in
/// wake-ups than the overlap saved. Measured in the same runs (store bench,
/// async 1 KiB puts): 16 writers 8.4k / 10.7k per s with one thread against
/// 7.2k / 7.8k with three, 256 writers the same (20k); end to end (1 KiB, 16
/// in flight) a third fewer context switches and fdatasyncs, 10-15 % less
/// CPU per message. Blocking writers still take roles themselves.
const COMMIT_THREADS: usize = 1;

const SWEEP_CHUNK: usize = 512;

/// From this many concurrent writers on ([`Store::set_concurrent_writers`])
/// a sync gathers up to 64 writes or 4 ms instead of 16 or 1.5 ms.
pub const BUSY_WRITERS: usize = crate::sync::BUSY_WRITERS as usize;

/// How to open a store.
#[derive(Debug)]
pub struct StoreConfig {
    /// The data directory (created if missing, mode 0700).
    pub dir: PathBuf,
    /// The keyring file; `DATA_DIR/keyring` if `None`.
    pub keyring: Option<PathBuf>,
    /// The master key that seals the keyring.
    pub master_key: MasterKey,
    /// Retention of messages, metadata and audit.
    pub retention: RetentionPolicy,
    /// When a write counts as durable.
    pub sync_mode: SyncMode,
    /// The clock (inject a [`crate::ManualClock`] in tests).
    pub clock: Arc<dyn Clock>,
    /// sled's page cache size in bytes.
    pub cache_bytes: u64,
    /// An append-only file to which the store appends the head of the audit
    /// chain (one JSON line: `{"seq":..,"hash":"<hex>","at":..}`) whenever
    /// it has made a newer head durable in the calls that publish it
    /// ([`Store::sweep`], [`Store::audit_append`], [`Store::audit_head`],
    /// [`Store::rotate_master_key`]); each line is fdatasynced before that
    /// call returns. Keep it off the data directory's disk or ship it away
    /// (see docs/STORE.md for what it does and does not guarantee).
    /// `None` (the default): no head log.
    pub audit_head_log: Option<PathBuf>,
}

impl StoreConfig {
    /// A configuration with the defaults: keyring in the data directory,
    /// default retention, [`SyncMode::Fdatasync`], the system clock, 256 MiB cache.
    pub fn new(dir: impl Into<PathBuf>, master_key: MasterKey) -> Self {
        StoreConfig {
            dir: dir.into(),
            keyring: None,
            master_key,
            retention: RetentionPolicy::default(),
            sync_mode: SyncMode::Fdatasync,
            clock: Arc::new(crate::ids::SystemClock),
            cache_bytes: 256 << 20,
            audit_head_log: None,
        }
    }
}

struct Head {
    next_seq: u64,
    prev: [u8; 32],
    /// Sequence number of the next intent record.
    next_intent: u64,
}

/// One put of a group as applied: its result and, if it created a record,
/// its audit event.
struct Applied {
    ticket: u64,
    result: Result<Put>,
    event: Option<(i64, AuditEvent)>,
}

/// A put sealed and encoded by its writer, waiting for the group-commit leader.
pub(crate) struct PreparedPut {
    dir: Direction,
    id: MessageId,
    value: Vec<u8>,
    rec: MsgRec,
    digest: [u8; 32],
    now: i64,
    /// The receipt issued for an inbound message, written with it.
    issued: Option<PreparedReceipt>,
}

/// A change queued to the group commit, applied by its applier with the
/// others of its group under one lock and made durable by one sync.
pub(crate) enum Job {
    /// A new message (its payload already in its hour's file).
    Put(Box<PreparedPut>),
    /// An outgoing message's delivery receipt: `queued`/`sent`/`failed` →
    /// `delivered`, with the receipt.
    Delivered(PreparedDelivered),
}

#[cfg(test)]
impl Job {
    /// A queued job that is never applied (for tests of the group commit's
    /// bookkeeping).
    pub(crate) fn for_tests() -> Job {
        Job::Delivered(PreparedDelivered {
            id: MessageId([0; 16]),
            receipt: SealedReceipt {
                outcome: String::new(),
                digest: [0; 32],
                expires_at: 0,
                key_hour: 0,
                sealed: Vec::new(),
            },
            now: 0,
        })
    }
}

/// A delivered transition prepared by its writer: the receipt sealed
/// outside the store's locks.
pub(crate) struct PreparedDelivered {
    id: MessageId,
    receipt: SealedReceipt,
    now: i64,
}

/// A delivery receipt sealed for the store (kept for the audit retention).
struct SealedReceipt {
    outcome: String,
    /// SHA-256 of the receipt as received (audited).
    digest: [u8; 32],
    expires_at: i64,
    key_hour: i64,
    sealed: Vec<u8>,
}

/// An issued receipt sealed by its writer, written in the same group as its message.
struct PreparedReceipt {
    rec: ReceiptRec,
    digest: [u8; 32],
}

/// The store. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Store {
    dir: PathBuf,
    db: sled::Db,
    /// Sealed payloads, in one append-only file per key hour.
    segs: Arc<Segments>,
    keyring: RwLock<Keyring>,
    head: Mutex<Head>,
    /// Serializes application record groups (`records_apply`); holds the
    /// sequence number of their next intent record (`V` seq).
    records: Mutex<u64>,
    gc: GroupCommit,
    retention: RetentionPolicy,
    clock: Arc<dyn Clock>,
    destroyed: AtomicU64,
    purged: AtomicU64,
    keys_destroyed: AtomicU64,
    /// Where durable audit heads are published, if configured.
    audit_log: Option<audit::HeadLog>,
    /// The group commit's service threads, started by the first async put.
    servers: std::sync::OnceLock<()>,
    _lock: File,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).finish()
    }
}

// ---- key building ----

fn sortable(v: i64) -> [u8; 8] {
    ((v as u64) ^ (1u64 << 63)).to_be_bytes()
}
fn msg_key(dir: Direction, id: &MessageId) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(dir.byte());
    k.extend_from_slice(&id.0);
    k
}
/// The one index entry of a message: `S dir state len peer id`. A range
/// over `S dir state` merged across peers lists by state; a range over each
/// `S dir state len peer` merged across states lists by peer.
fn state_prefix(dir: Direction, st: u8, peer: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(20 + peer.len());
    k.extend_from_slice(&[P_STATE, dir.byte(), st]);
    k.push(peer.len() as u8);
    k.extend_from_slice(peer.as_bytes());
    k
}
fn index_key(dir: Direction, st: u8, peer: &str, id: &MessageId) -> Vec<u8> {
    let mut k = state_prefix(dir, st, peer);
    k.extend_from_slice(&id.0);
    k
}
/// The index entry of a message in `st`.
fn state_key(dir: Direction, st: MessageState, peer: &str, id: &MessageId) -> Vec<u8> {
    index_key(dir, st.byte(), peer, id)
}
/// The index entry of a destroyed message (listed by peer until purged).
/// The value of a state index entry: the key hour of its message, so that
/// lists skip the messages of a destroyed hour without loading their records
/// (the sweeper moves their entries to "destroyed" later, in bounded steps).
/// Since format 2.1 the entry also holds its message's creation time
/// (seconds), so that queues can be counted and aged from the index alone;
/// entries written before have the hour only.
fn hour_value(hour: i64, created: i64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&hour.to_be_bytes());
    v[8..].copy_from_slice(&created.to_be_bytes());
    v
}

/// The key hour and the creation time in a state index entry's value.
fn parse_index_value(v: &[u8]) -> (Option<i64>, Option<i64>) {
    let hour = v
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(i64::from_be_bytes);
    let created = v
        .get(8..16)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(i64::from_be_bytes);
    (hour, created)
}

/// An index entry found by a merge: the id, the prefix it was under (which
/// names its peer) and its message's creation time if recorded.
type IndexHit = (MessageId, Vec<u8>, Option<i64>);

/// Which index entries a list wants, by the key hour in their value.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HourFilter {
    /// All of them.
    Any,
    /// Those whose key hour is still held (entries without an hour count as
    /// live: their records say, when loaded).
    Live,
}

fn destroyed_key(dir: Direction, peer: &str, id: &MessageId) -> Vec<u8> {
    index_key(dir, S_DESTROYED, peer, id)
}
fn peer_prefix(p: u8, dir: Option<Direction>, peer: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(19 + peer.len());
    k.push(p);
    if let Some(d) = dir {
        k.push(d.byte());
    }
    k.push(peer.len() as u8);
    k.extend_from_slice(peer.as_bytes());
    k
}
fn exp_key(hour: i64, class: u8, id: &[u8; 16]) -> Vec<u8> {
    let mut k = Vec::with_capacity(26);
    k.push(P_EXP);
    k.extend_from_slice(&sortable(hour));
    k.push(class);
    k.extend_from_slice(id);
    k
}
fn case_msg_key(case: &CaseId, dir: Direction, id: &MessageId) -> Vec<u8> {
    let mut k = Vec::with_capacity(34);
    k.push(P_CASEMSG);
    k.extend_from_slice(&case.0);
    k.push(dir.byte());
    k.extend_from_slice(&id.0);
    k
}
fn receipt_key(id: &MessageId) -> Vec<u8> {
    let mut k = vec![P_RECEIPT];
    k.extend_from_slice(&id.0);
    k
}
fn case_key(id: &CaseId) -> Vec<u8> {
    let mut k = vec![P_CASE];
    k.extend_from_slice(&id.0);
    k
}
fn deadline_key(deadline: i64, id: &CaseId) -> Vec<u8> {
    let mut k = vec![P_DEADLINE];
    k.extend_from_slice(&sortable(deadline));
    k.extend_from_slice(&id.0);
    k
}
fn id16(b: &[u8]) -> Option<[u8; 16]> {
    b.try_into().ok()
}
fn payload_aad(dir: Direction, id: &MessageId, key_hour: i64, case: Option<&CaseId>) -> Vec<u8> {
    let mut a = Vec::with_capacity(48);
    a.extend_from_slice(b"konvert-store v1 payload");
    a.push(dir.byte());
    a.extend_from_slice(&id.0);
    a.extend_from_slice(&key_hour.to_be_bytes());
    if let Some(c) = case {
        a.extend_from_slice(&c.0);
    }
    a
}
fn issued_key(id: &MessageId) -> Vec<u8> {
    let mut k = vec![P_ISSUED];
    k.extend_from_slice(&id.0);
    k
}

/// A receipt's keys and AAD by direction: the receipts of outbound messages
/// (signed by the peer) and those issued for inbound ones (signed here).
fn receipt_keys(dir: Direction) -> (u8, u8, &'static [u8]) {
    match dir {
        Direction::Outbound => (P_RECEIPT, P_RECEIPT_PEER, b"konvert-store v1 receipt"),
        Direction::Inbound => (P_ISSUED, P_ISSUED_PEER, b"konvert-store v1 issued receipt"),
    }
}

fn receipt_aad_dir(dir: Direction, id: &MessageId, key_hour: i64) -> Vec<u8> {
    let mut a = Vec::with_capacity(56);
    a.extend_from_slice(receipt_keys(dir).2);
    a.extend_from_slice(&id.0);
    a.extend_from_slice(&key_hour.to_be_bytes());
    a
}

fn check_name(what: &str, s: &str) -> Result<()> {
    if s.is_empty() || s.len() > MAX_NAME || s.chars().any(|c| c.is_control()) {
        return Err(Error::Invalid(format!(
            "{what} must be 1..={MAX_NAME} bytes without control characters"
        )));
    }
    Ok(())
}

fn what_msg(dir: Direction, id: &MessageId) -> String {
    match dir {
        Direction::Outbound => format!("outbound message {id}"),
        Direction::Inbound => format!("inbound message {id}"),
    }
}

impl Store {
    /// Open (or create) the store in `config.dir`: take the lock file, open
    /// the keyring and sled, and destroy at once the keys of every expiry
    /// hour that passed while the store was closed (their records are removed
    /// by the next [`Store::sweep`] calls).
    pub fn open(config: StoreConfig) -> Result<Self> {
        let dir = config.dir.clone();
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|e| Error::io(&dir, e))?;
        }
        let lock_path = dir.join("LOCK");
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?;
        // A store of this process that was just dropped may still be closing
        // in one of its commit threads: wait a little before refusing.
        let mut tries = 0;
        while fs2::FileExt::try_lock_exclusive(&lock).is_err() {
            tries += 1;
            if tries > 50 {
                return Err(Error::Locked { dir: dir.clone() });
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }

        let keyring_path = config.keyring.clone().unwrap_or_else(|| dir.join("keyring"));
        let keyring = Keyring::open(&keyring_path, config.master_key.clone())?;

        let sled_dir = dir.join("sled");
        let sled_config = sled::Config::new()
            .path(&sled_dir)
            .cache_capacity(config.cache_bytes)
            .flush_every_ms(Some(500));
        // We hold DATA_DIR/LOCK, so sled's own lock can only be held by a
        // store of this process that was just dropped and whose sled threads
        // are still finishing: wait for them a little.
        let mut tries = 0;
        let db = loop {
            match sled_config.open() {
                Err(sled::Error::Io(e))
                    if tries < 100 && e.to_string().contains("could not acquire lock") =>
                {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    tracing::debug!(error = %e, "sled still locked by a closing store; retrying");
                }
                r => break r?,
            }
        };
        // Make sled's files and our own durable as directory entries.
        crate::keys::sync_dir(&sled_dir)?;
        crate::keys::sync_dir(&dir)?;

        match db.get([P_META])? {
            Some(v) if v.as_ref() == FORMAT_VERSION => {}
            Some(v) if v.as_ref() == FORMAT_VERSION_2 => {
                db.insert([P_META], FORMAT_VERSION)?;
                db.flush()?;
            }
            Some(_) => {
                return Err(Error::corrupt("unknown store format version"));
            }
            None => {
                db.insert([P_META], FORMAT_VERSION)?;
            }
        }

        let next_intent = replay_intents(&db, &sled_dir)?;
        replay_record_intents(&db, &sled_dir)?;
        let mut head = match db.scan_prefix([P_AUDIT]).next_back() {
            None => Head {
                next_seq: 0,
                prev: [0u8; 32],
                next_intent: 0,
            },
            Some(r) => {
                let (_, v) = r?;
                let b = audit::decode_block(&v).ok_or_else(|| Error::corrupt("last audit block"))?;
                Head {
                    next_seq: b.end(),
                    prev: b.hash,
                    next_intent: 0,
                }
            }
        };
        let next_intent = repair_group(&db, &sled_dir, &mut head, next_intent)?;
        head.next_intent = next_intent;
        let gc = GroupCommit::new(config.sync_mode, &sled_dir)?;
        let segs = Arc::new(Segments::open(dir.join("payloads"))?);
        let store = Store {
            dir,
            db,
            segs,
            keyring: RwLock::new(keyring),
            head: Mutex::new(head),
            records: Mutex::new(0),
            gc,
            retention: config.retention,
            clock: config.clock,
            destroyed: AtomicU64::new(0),
            purged: AtomicU64::new(0),
            keys_destroyed: AtomicU64::new(0),
            audit_log: match &config.audit_head_log {
                Some(p) => Some(audit::HeadLog::open(p)?),
                None => None,
            },
            servers: std::sync::OnceLock::new(),
            _lock: lock,
        };
        let now = store.clock.now();
        store.destroy_expired_keys(now)?;
        store.segs.remove_before(hour_of(now))?;
        crate::blobs::remove_before(store.segs.dir(), hour_of(now))?;
        Ok(store)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn head(&self) -> MutexGuard<'_, Head> {
        self.head.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn kr_read(&self) -> std::sync::RwLockReadGuard<'_, Keyring> {
        self.keyring.read().unwrap_or_else(|p| p.into_inner())
    }

    fn kr_write(&self) -> std::sync::RwLockWriteGuard<'_, Keyring> {
        self.keyring.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Apply `batch` plus audit entries for `events` atomically; the caller
    /// holds the head lock. Returns the first audit sequence number used.
    fn apply(&self, head: &mut Head, batch: Batch, events: &[AuditEvent], now: i64) -> Result<u64> {
        let timed: Vec<(i64, &AuditEvent)> = events.iter().map(|e| (now, e)).collect();
        self.apply_timed(head, batch, &timed)
    }

    fn apply_timed(&self, head: &mut Head, mut batch: Batch, events: &[(i64, &AuditEvent)]) -> Result<u64> {
        let first = head.next_seq;
        let (blocks, next_seq, prev) =
            self.audit_blocks(head, events.iter().map(|(at, e)| (*at, (*e).clone())).collect());
        for (k, v) in blocks {
            batch.insert(k, v);
        }
        let wseq = head.next_intent;
        // The intent record goes as soon as its changes are applied: sled
        // recovers a prefix, so if its removal is recovered, so is every
        // change before it; if not, the intent is replayed at open. (Kept
        // until the next sync, intents piled up in one sled leaf, which sled
        // then rewrote as a blob file on every change.)
        let res = self
            .db
            .insert(wal::intent_key(wseq), wal::encode(&batch.ops))
            .map_err(Error::from)
            .and_then(|_| wal::apply_ops(&self.db, batch.ops))
            .and_then(|_| self.db.remove(wal::intent_key(wseq)).map_err(Error::from));
        if let Err(e) = res {
            // We can no longer tell what reached the disk.
            self.gc.poison();
            return Err(e);
        }
        head.next_intent = wseq + 1;
        head.next_seq = next_seq;
        head.prev = prev;
        Ok(first)
    }

    /// The audit blocks of `events` (one per atomic group, split every
    /// [`AUDIT_BLOCK_MAX`] events), chained to the head: the (key, value)
    /// writes and the head after them. The caller writes them in order.
    #[allow(clippy::type_complexity)]
    fn audit_blocks(
        &self,
        head: &Head,
        events: Vec<(i64, AuditEvent)>,
    ) -> (Vec<(Vec<u8>, Vec<u8>)>, u64, [u8; 32]) {
        audit_blocks_from(head.next_seq, head.prev, events)
    }

    /// Wait until everything applied so far is durable (group commit; this
    /// writer may lead and apply the queued puts of others).
    fn commit(&self) -> Result<()> {
        self.gc
            .commit_with(&self.db, None, &|| self.segs.sync_dirty(), &|jobs| {
                self.apply_puts(jobs)
            })
            .map(|_| ())
    }

    fn bucket_key(&self, hour: i64) -> Result<DataKey> {
        if let Some(k) = self.kr_read().buckets.get(&hour) {
            return Ok(k.clone());
        }
        let key = {
            let mut kr = self.kr_write();
            if let Some(k) = kr.buckets.get(&hour) {
                return Ok(k.clone());
            }
            let k = kr.new_bucket(hour);
            if let Err(e) = kr.persist() {
                kr.buckets.remove(&hour);
                return Err(e);
            }
            k
        };
        let now = self.clock.now();
        self.write_events(
            &[AuditEvent::new(AuditKind::KeyCreated)
                .detail("expiry-bucket")
                .count(hour as u64)],
            now,
        )?;
        Ok(key)
    }

    fn case_data_key(&self, case: &CaseId) -> Result<DataKey> {
        self.kr_read()
            .cases
            .get(case)
            .cloned()
            .ok_or_else(|| Error::Destroyed {
                what: format!("case {case}"),
            })
    }

    fn write_events(&self, events: &[AuditEvent], now: i64) -> Result<u64> {
        self.gc.check()?;
        let seq = {
            let mut head = self.head();
            self.apply(&mut head, Batch::default(), events, now)?
        };
        self.commit()?;
        Ok(seq)
    }

    // ---- messages ----

    /// Accept a message from a local application into the outbox (state
    /// `queued`). Returns once the write is durable. A second put of the same
    /// id stores nothing and returns the existing record.
    pub fn put_outbox(&self, msg: &NewMessage) -> Result<Put> {
        self.put_message(Direction::Outbound, msg)
    }

    /// Store a message received from a peer (state `new`). Returns once the
    /// write is durable: only then may the gateway send its delivery receipt.
    /// Idempotent on the envelope id: a second put of the same id stores
    /// nothing and returns the existing record with `created == false`.
    pub fn put_inbox(&self, msg: &NewMessage) -> Result<Put> {
        self.put_message(Direction::Inbound, msg)
    }

    /// [`Store::put_inbox`] and [`Store::put_issued_receipt`] in one
    /// durable write: the message and the receipt issued for it are
    /// stored together (one sync instead of two), so a receipt is never on
    /// record without its message. For a duplicate nothing is written and
    /// the receipt on record stays.
    pub fn put_inbox_with_receipt(&self, msg: &NewMessage, receipt: &NewReceipt) -> Result<Put> {
        let mut job = self.prepare_put(Direction::Inbound, msg)?;
        job.issued = Some(self.prepare_issued(&msg.id, &msg.peer, receipt)?);
        self.commit_put(Job::Put(Box::new(job)))
    }

    /// [`Store::put_outbox`] for async callers: the same durability, but
    /// the caller's task waits without blocking its thread (the group
    /// commit's service threads sync and apply).
    pub async fn put_outbox_async(self: &Arc<Self>, msg: &NewMessage) -> Result<Put> {
        self.put_message_async(Direction::Outbound, msg).await
    }

    /// [`Store::put_inbox`] for async callers (see [`Store::put_outbox_async`]).
    pub async fn put_inbox_async(self: &Arc<Self>, msg: &NewMessage) -> Result<Put> {
        self.put_message_async(Direction::Inbound, msg).await
    }

    /// [`Store::put_inbox_with_receipt`] for async callers (see
    /// [`Store::put_outbox_async`]): the message and the receipt issued for
    /// it in one durable write, awaited without blocking the task's thread.
    pub async fn put_inbox_with_receipt_async(
        self: &Arc<Self>,
        msg: &NewMessage,
        receipt: &NewReceipt,
    ) -> Result<Put> {
        let mut job = self.prepare_put(Direction::Inbound, msg)?;
        job.issued = Some(self.prepare_issued(&msg.id, &msg.peer, receipt)?);
        self.commit_job_async(Job::Put(Box::new(job))).await
    }

    async fn put_message_async(self: &Arc<Self>, dir: Direction, msg: &NewMessage) -> Result<Put> {
        let job = self.prepare_put(dir, msg)?;
        self.commit_job_async(Job::Put(Box::new(job))).await
    }

    async fn commit_job_async(self: &Arc<Self>, job: Job) -> Result<Put> {
        self.ensure_servers();
        match self.gc.commit_async(job).await {
            Ok(Ok(Some(p))) => Ok(p),
            Ok(Ok(None)) | Err(_) => Err(Error::Poisoned),
            Ok(Err(e)) => Err(e),
        }
    }

    /// Start the group commit's service threads (once; [`COMMIT_THREADS`]): they take its
    /// roles for async writers. They hold only a weak reference and end
    /// when the store is dropped.
    fn ensure_servers(self: &Arc<Self>) {
        self.servers.get_or_init(|| {
            for i in 0..COMMIT_THREADS {
                let weak = Arc::downgrade(self);
                let spawned = std::thread::Builder::new()
                    .name(format!("konvert-store-commit-{i}"))
                    .spawn(move || serve(weak));
                if let Err(e) = spawned {
                    tracing::error!(error = %e, "cannot start a store commit thread");
                }
            }
        });
    }

    fn put_message(&self, dir: Direction, msg: &NewMessage) -> Result<Put> {
        let job = self.prepare_put(dir, msg)?;
        self.commit_put(Job::Put(Box::new(job)))
    }

    fn commit_put(&self, job: Job) -> Result<Put> {
        match self
            .gc
            .commit_with(&self.db, Some(job), &|| self.segs.sync_dirty(), &|jobs| {
                self.apply_puts(jobs)
            })? {
            Some(p) => Ok(p),
            None => Err(Error::Poisoned),
        }
    }

    /// Seal a put's payload into its hour's file and encode its record: the
    /// writer's own share of the work, done in parallel with other writers.
    fn prepare_put(&self, dir: Direction, msg: &NewMessage) -> Result<PreparedPut> {
        self.gc.check()?;
        check_name("peer", &msg.peer)?;
        check_name("agreement", &msg.agreement)?;
        check_name("kind", &msg.kind)?;
        let now = self.clock.now();
        let expires_at = self.retention.expiry(now, &msg.agreement, &msg.kind);
        let key_hour = hour_of(expires_at);
        let mut key = self.bucket_key(key_hour)?;
        if let Some(case) = &msg.case {
            key = key.derive_with_case(&self.case_data_key(case)?);
        }
        let aad = payload_aad(dir, &msg.id, key_hour, msg.case.as_ref());
        let tag: u32 = rand::random();
        // The sealed payload goes into its hour's file by this writer, in
        // parallel with others; the group commit fdatasyncs it before
        // the record goes to sled.
        let sealed = key.seal_payload(&aad, &msg.payload);
        let len = u32::try_from(sealed.len()).map_err(|_| Error::Invalid("payload too large".into()))?;
        let off = match self.segs.append(key_hour, &sealed) {
            Ok(o) => o,
            Err(e) => {
                self.gc.poison();
                return Err(e);
            }
        };
        let digest: [u8; 32] = msg.digest.unwrap_or_else(|| Sha256::digest(&msg.payload).into());
        let state = match dir {
            Direction::Outbound => MessageState::Queued,
            Direction::Inbound => MessageState::New,
        };
        let rec = MsgRec {
            peer: msg.peer.clone(),
            agreement: msg.agreement.clone(),
            kind: msg.kind.clone(),
            state: state.byte(),
            case: msg.case,
            created_at: now,
            updated_at: now,
            expires_at,
            key_hour,
            payload_len: msg.payload.len() as u64,
            payload_sha256: ByteBuf::from(digest.to_vec()),
            tag,
            destroyed_at: None,
            outcome: None,
            attempts: 0,
            sent_at: None,
            delivered_at: None,
            acknowledged_at: None,
            last_attempt_at: None,
            seg: Some(SegRef {
                off,
                len,
                seal: PayloadSeal::CURRENT.byte(),
            }),
        };
        Ok(PreparedPut {
            dir,
            id: msg.id,
            value: encode(&rec),
            rec,
            digest,
            now,
            issued: None,
        })
    }

    /// Seal an issued receipt under the key of its audit-retention hour.
    fn prepare_issued(&self, id: &MessageId, peer: &str, receipt: &NewReceipt) -> Result<PreparedReceipt> {
        check_name("outcome", &receipt.outcome)?;
        let now = self.clock.now();
        let expires_at = self.retention.audit_expiry(now);
        let key_hour = hour_of(expires_at);
        let key = self.bucket_key(key_hour)?;
        let sealed = key.seal(&receipt_aad_dir(Direction::Inbound, id, key_hour), &receipt.bytes);
        Ok(PreparedReceipt {
            rec: ReceiptRec {
                peer: peer.to_owned(),
                outcome: receipt.outcome.clone(),
                at: now,
                expires_at,
                key_hour,
                sealed: ByteBuf::from(sealed),
            },
            digest: Sha256::digest(&receipt.bytes).into(),
        })
    }

    /// The group-commit leader applies the queued puts. Puts into a case
    /// change the case's record too and go through an intent record
    /// ([`Store::apply_case_puts`]); all others take the fast path: the group
    /// marker `G` (which new records the group writes), the expiry lists of
    /// their key hours, then per put the record (one compare-and-swap:
    /// absent → record, which is also the duplicate check) and its index
    /// entry, and last the group's audit block. sled recovers a prefix of
    /// this, and `repair_group` at open completes the index entries and the
    /// audit block of a group cut short (docs/STORE.md). An error here is a
    /// sled failure and poisons the store; per-put refusals are in the results.
    fn apply_puts(&self, jobs: Vec<(u64, Job)>) -> Result<Vec<(u64, Result<Put>)>> {
        // (In `Fdatasync` mode the group commit has made the group's payloads
        // durable before handing it over: no record reaches sled before its
        // payload is on disk.)
        let mut head = self.head();
        let mut delivered = Vec::new();
        let mut case_jobs = Vec::new();
        let mut plain = Vec::with_capacity(jobs.len());
        for (ticket, job) in jobs {
            match job {
                Job::Delivered(d) => delivered.push((ticket, d)),
                Job::Put(p) if p.rec.case.is_some() || p.issued.is_some() => case_jobs.push((ticket, *p)),
                Job::Put(p) => plain.push((ticket, *p)),
            }
        }
        let mut results = if case_jobs.is_empty() {
            Vec::with_capacity(plain.len() + delivered.len())
        } else {
            self.apply_case_puts(&mut head, case_jobs)?
        };
        if !plain.is_empty() {
            if let Err(e) = self.apply_plain_puts(&mut head, plain, &mut results) {
                // We can no longer tell what reached the disk.
                self.gc.poison();
                return Err(e);
            }
        }
        // Deliveries last: the messages they move were stored long before
        // (their intent, numbered after this group's marker, is replayed at
        // open if a crash cuts it short).
        if !delivered.is_empty() {
            results.extend(self.apply_delivered_group(&mut head, delivered)?);
        }
        Ok(results)
    }

    /// The delivered transitions of a group, as one atomic write: one
    /// intent record and one audit block for all of them (instead of one
    /// each, on the writer's thread under the head lock, as
    /// [`Store::transition`] does). A transition that is refused (unknown,
    /// destroyed or in another state) gets its error and changes nothing.
    fn apply_delivered_group(
        &self,
        head: &mut Head,
        jobs: Vec<(u64, PreparedDelivered)>,
    ) -> Result<Vec<(u64, Result<Put>)>> {
        let dir = Direction::Outbound;
        let mut batch = Batch::default();
        let mut events: Vec<(i64, AuditEvent)> = Vec::with_capacity(jobs.len() * 2);
        // Records as this group leaves them (a receipt may come twice).
        let mut recs: HashMap<MessageId, MsgRec> = HashMap::new();
        let mut purge = PurgeLists::default();
        let mut results = Vec::with_capacity(jobs.len());
        for (ticket, job) in jobs {
            let id = job.id;
            let mut rec = match recs.get(&id) {
                Some(r) => r.clone(),
                None => match self.load(dir, &id) {
                    Ok(r) => r,
                    Err(e) => {
                        results.push((ticket, Err(e)));
                        continue;
                    }
                },
            };
            let change = Change {
                from: DELIVERED_FROM,
                to: MessageState::Delivered,
                kind: AuditKind::Delivered,
                outcome: None,
                receipt: Some(&job.receipt),
                now: job.now,
            };
            let r = transition_changes(dir, &id, &mut rec, &change, &mut batch, &mut events, &mut purge)
                .and_then(|_| rec.meta(dir, id));
            if r.is_ok() {
                recs.insert(id, rec);
            }
            results.push((ticket, r.map(|meta| Put { meta, created: true })));
        }
        if !batch.ops.is_empty() {
            purge.write(&mut batch, X_PURGE_RECEIPTS);
            let timed: Vec<(i64, &AuditEvent)> = events.iter().map(|(t, e)| (*t, e)).collect();
            self.apply_timed(head, batch, &timed)?;
        }
        Ok(results)
    }

    fn apply_plain_puts(
        &self,
        head: &mut Head,
        jobs: Vec<(u64, PreparedPut)>,
        results: &mut Vec<(u64, Result<Put>)>,
    ) -> Result<()> {
        let gseq = head.next_intent;
        let marker: Vec<(Direction, MessageId, u32)> =
            jobs.iter().map(|(_, j)| (j.dir, j.id, j.rec.tag)).collect();
        self.db
            .insert([P_GROUP], encode_group(gseq, head.next_seq, &marker))?;
        head.next_intent = gseq + 1;
        let mut by_hour: std::collections::BTreeMap<i64, Vec<(Direction, MessageId)>> = Default::default();
        for (_, j) in &jobs {
            by_hour.entry(j.rec.key_hour).or_default().push((j.dir, j.id));
        }
        for (hour, ids) in &mut by_hour {
            ids.sort_by_key(|(d, id)| (*id, d.byte()));
            self.db.insert(
                exp_key(*hour, X_HOUR_MSGS, &list_id(&ids[0].1, gseq)),
                purge_list(ids),
            )?;
        }
        // The first put of an id in the group writes; later ones of the same
        // id get its result.
        let mut first: HashMap<(Direction, MessageId), u64> = HashMap::new();
        let mut unique = Vec::with_capacity(jobs.len());
        let mut repeats = Vec::new();
        for (ticket, job) in jobs {
            match first.get(&(job.dir, job.id)) {
                Some(t) => repeats.push((ticket, *t)),
                None => {
                    first.insert((job.dir, job.id), ticket);
                    unique.push((ticket, job));
                }
            }
        }
        // (Writing them from several threads was measured: slower on 2 cores,
        // see docs/STORE.md.)
        let outs = [self.apply_put_chunk(unique)];
        let mut applied = Vec::new();
        for o in outs {
            applied.extend(o?);
        }
        applied.sort_by_key(|a| a.ticket);
        let mut events: Vec<(i64, AuditEvent)> = Vec::with_capacity(applied.len());
        let mut by_ticket: HashMap<u64, Result<Put>> = HashMap::with_capacity(repeats.len());
        for a in applied {
            if let Some(ev) = a.event {
                events.push(ev);
            }
            if !repeats.is_empty() {
                let again = match &a.result {
                    Ok(p) => Ok(Put {
                        meta: p.meta.clone(),
                        created: false,
                    }),
                    Err(_) => Err(Error::Invalid("duplicate put in a failed group".into())),
                };
                by_ticket.insert(a.ticket, again);
            }
            results.push((a.ticket, a.result));
        }
        for (ticket, of) in repeats {
            let r = by_ticket
                .get(&of)
                .map(|r| match r {
                    Ok(p) => Ok(p.clone()),
                    Err(_) => Err(Error::Invalid("duplicate put in a failed group".into())),
                })
                .unwrap_or(Err(Error::Poisoned));
            results.push((ticket, r));
        }
        let (blocks, next_seq, prev) = self.audit_blocks(head, events);
        for (k, v) in blocks {
            self.db.insert(k, v)?;
        }
        head.next_seq = next_seq;
        head.prev = prev;
        Ok(())
    }

    /// Write the records of `jobs` (compare-and-swap: absent → record, which
    /// is also the duplicate check) and their index entries.
    fn apply_put_chunk(&self, jobs: Vec<(u64, PreparedPut)>) -> Result<Vec<Applied>> {
        let mut out = Vec::with_capacity(jobs.len());
        for (ticket, job) in jobs {
            // (Puts with an issued receipt take the intent path.)
            let PreparedPut {
                dir,
                id,
                value,
                rec,
                digest,
                now,
                issued: _,
            } = job;
            let meta = match rec.meta(dir, id) {
                Ok(m) => m,
                Err(e) => {
                    out.push(Applied {
                        ticket,
                        result: Err(e),
                        event: None,
                    });
                    continue;
                }
            };
            let mkey = msg_key(dir, &id);
            if let Err(cas) = self.db.compare_and_swap(&mkey, None::<&[u8]>, Some(value))? {
                let result = match cas.current {
                    Some(existing) => decode::<MsgRec>(&existing, || what_msg(dir, &id))
                        .and_then(|old| old.meta(dir, id))
                        .map(|meta| Put { meta, created: false }),
                    None => Err(Error::corrupt(what_msg(dir, &id))),
                };
                out.push(Applied {
                    ticket,
                    result,
                    event: None,
                });
                continue;
            }
            self.db.insert(
                state_key(dir, rec.state(&id)?, &rec.peer, &id),
                &hour_value(rec.key_hour, rec.created_at)[..],
            )?;
            out.push(Applied {
                ticket,
                result: Ok(Put { meta, created: true }),
                event: Some((now, put_event(dir, &id, &rec, digest))),
            });
        }
        Ok(out)
    }

    /// Puts into cases, applied atomically with their cases' records through
    /// an intent record.
    fn apply_case_puts(
        &self,
        head: &mut Head,
        jobs: Vec<(u64, PreparedPut)>,
    ) -> Result<Vec<(u64, Result<Put>)>> {
        let mut batch = Batch::default();
        let mut events: Vec<(i64, AuditEvent)> = Vec::with_capacity(jobs.len());
        let mut in_batch: HashMap<(Direction, MessageId), MessageMeta> = HashMap::new();
        // case -> (retain_until before this batch, record as updated)
        let mut cases: HashMap<CaseId, (i64, CaseInfo)> = HashMap::new();
        let mut results = Vec::with_capacity(jobs.len());
        // The group's new messages by key hour: one expiry list per hour
        // (as the fast path writes them), not one per message.
        let mut by_hour: std::collections::BTreeMap<i64, Vec<(Direction, MessageId)>> = Default::default();
        let mut issued_purge = PurgeLists::default();
        for (ticket, job) in jobs {
            let PreparedPut {
                dir,
                id,
                value,
                rec,
                digest,
                now,
                issued,
            } = job;
            if let Some(m) = in_batch.get(&(dir, id)) {
                results.push((
                    ticket,
                    Ok(Put {
                        meta: m.clone(),
                        created: false,
                    }),
                ));
                continue;
            }
            let mkey = msg_key(dir, &id);
            if let Some(existing) = self.db.get(&mkey)? {
                let r = decode::<MsgRec>(&existing, || what_msg(dir, &id))
                    .and_then(|old| old.meta(dir, id))
                    .map(|meta| Put { meta, created: false });
                results.push((ticket, r));
                continue;
            }
            let meta = match rec.meta(dir, id) {
                Ok(m) => m,
                Err(e) => {
                    results.push((ticket, Err(e)));
                    continue;
                }
            };
            if let Some(case) = &rec.case {
                if !cases.contains_key(case) {
                    match self.case_get(case) {
                        Ok(ci) => {
                            cases.insert(*case, (ci.retain_until, ci));
                        }
                        Err(e) => {
                            results.push((ticket, Err(e)));
                            continue;
                        }
                    }
                }
                if let Some((_, ci)) = cases.get_mut(case) {
                    if ci.destroyed_at.is_some() {
                        results.push((
                            ticket,
                            Err(Error::Destroyed {
                                what: format!("case {case}"),
                            }),
                        ));
                        continue;
                    }
                    ci.retain_until = ci.retain_until.max(rec.expires_at);
                }
                batch.insert(case_msg_key(case, dir, &id), EMPTY);
            }
            by_hour.entry(rec.key_hour).or_default().push((dir, id));
            batch.insert(mkey, value);
            batch.insert(
                state_key(dir, rec.state(&id)?, &rec.peer, &id),
                hour_value(rec.key_hour, rec.created_at),
            );
            events.push((now, put_event(dir, &id, &rec, digest)));
            if let Some(r) = issued {
                let ev = issued_ops(&mut batch, &id, &r.rec, r.digest, Some(&mut issued_purge));
                events.push((now, ev));
            }
            in_batch.insert((dir, id), meta.clone());
            results.push((ticket, Ok(Put { meta, created: true })));
        }
        for (hour, ids) in &mut by_hour {
            ids.sort_by_key(|(d, id)| (*id, d.byte()));
            batch.insert(
                exp_key(*hour, X_HOUR_MSGS, &list_id(&ids[0].1, rand::random())),
                purge_list(ids),
            );
        }
        issued_purge.write(&mut batch, X_PURGE_ISSUED_MANY);
        for (case, (before, ci)) in &cases {
            if ci.retain_until != *before {
                batch.remove(exp_key(hour_of(*before), X_CASE_EXPIRE, &case.0));
                batch.insert(exp_key(hour_of(ci.retain_until), X_CASE_EXPIRE, &case.0), EMPTY);
                batch.insert(case_key(case), encode(ci));
            }
        }
        let timed: Vec<(i64, &AuditEvent)> = events.iter().map(|(t, e)| (*t, e)).collect();
        self.apply_timed(head, batch, &timed)?;
        Ok(results)
    }

    fn load(&self, dir: Direction, id: &MessageId) -> Result<MsgRec> {
        let raw = self.db.get(msg_key(dir, id))?.ok_or_else(|| Error::NotFound {
            what: what_msg(dir, id),
        })?;
        let mut rec = decode(&raw, || what_msg(dir, id))?;
        self.settle(&mut rec);
        Ok(rec)
    }

    /// A record whose hour key is gone was destroyed with it: the sweeper
    /// does not rewrite expired records (that would cost a sled write each);
    /// it removes their payload file and moves their index entry. Their
    /// `destroyed_at` is the end of the key hour, when the key was due.
    fn settle(&self, rec: &mut MsgRec) {
        if rec.destroyed_at.is_none() && !self.kr_read().buckets.contains_key(&rec.key_hour) {
            rec.destroyed_at = Some(rec.key_hour.saturating_add(1).saturating_mul(3600));
            rec.seg = None;
        }
    }

    /// A message's metadata (also after its payload was destroyed).
    pub fn meta(&self, dir: Direction, id: &MessageId) -> Result<MessageMeta> {
        self.load(dir, id)?.meta(dir, *id)
    }

    /// A message with its payload. `Error::Destroyed` once its key or payload
    /// has been destroyed.
    pub fn get(&self, dir: Direction, id: &MessageId) -> Result<Message> {
        let rec = self.load(dir, id)?;
        let destroyed = || Error::Destroyed {
            what: what_msg(dir, id),
        };
        if rec.destroyed_at.is_some() {
            return Err(destroyed());
        }
        let mut key = self
            .kr_read()
            .buckets
            .get(&rec.key_hour)
            .cloned()
            .ok_or_else(destroyed)?;
        if let Some(case) = &rec.case {
            let ck = self.kr_read().cases.get(case).cloned().ok_or_else(destroyed)?;
            key = key.derive_with_case(&ck);
        }
        let seg = rec.seg.ok_or_else(destroyed)?;
        let sealed = self
            .segs
            .read(rec.key_hour, seg.off, seg.len)?
            .ok_or_else(destroyed)?;
        let aad = payload_aad(dir, id, rec.key_hour, rec.case.as_ref());
        let how = PayloadSeal::from_byte(seg.seal).ok_or_else(|| Error::corrupt(what_msg(dir, id)))?;
        let payload = key
            .open_payload(how, &aad, &sealed)
            .ok_or_else(|| Error::Unseal {
                what: what_msg(dir, id),
            })?;
        Ok(Message {
            meta: rec.meta(dir, *id)?,
            payload,
        })
    }

    /// An outbound message with its payload.
    pub fn outbox_get(&self, id: &MessageId) -> Result<Message> {
        self.get(Direction::Outbound, id)
    }

    /// A received message with its payload. Fetching does not acknowledge:
    /// the message stays listed as new until [`Store::inbox_ack`].
    pub fn inbox_get(&self, id: &MessageId) -> Result<Message> {
        self.get(Direction::Inbound, id)
    }

    /// Received messages not yet acknowledged, oldest first, after the
    /// cursor `after` (exclusive), at most `limit`.
    pub fn inbox_list(&self, after: Option<&MessageId>, limit: usize) -> Result<Vec<MessageMeta>> {
        self.list_by_state(Direction::Inbound, MessageState::New, after, limit)
    }

    /// Outbound messages waiting to be sent, oldest first.
    pub fn outbox_pending(&self, after: Option<&MessageId>, limit: usize) -> Result<Vec<MessageMeta>> {
        self.list_by_state(Direction::Outbound, MessageState::Queued, after, limit)
    }

    /// The ids under the index prefixes `prefixes` (each followed by ids),
    /// merged in id order, after the cursor, at most `limit`: a k-way merge of
    /// lazy range scans, reading about `limit + k` index entries.
    fn merge_index(
        &self,
        prefixes: Vec<(Vec<u8>, HourFilter)>,
        after: Option<&MessageId>,
        limit: usize,
    ) -> Result<Vec<MessageId>> {
        Ok(self
            .merge_index_with_prefix(prefixes, after, limit)?
            .into_iter()
            .map(|(id, _, _)| id)
            .collect())
    }

    /// [`Store::merge_index`], with the prefix each id was found under.
    fn merge_index_with_prefix(
        &self,
        prefixes: Vec<(Vec<u8>, HourFilter)>,
        after: Option<&MessageId>,
        limit: usize,
    ) -> Result<Vec<IndexHit>> {
        use std::cmp::Reverse;
        let live: std::collections::BTreeSet<i64> = if prefixes.iter().any(|(_, f)| *f != HourFilter::Any) {
            self.kr_read().buckets.keys().copied().collect()
        } else {
            Default::default()
        };
        let wanted = |filter: HourFilter, v: &[u8]| -> bool {
            let (hour, _) = parse_index_value(v);
            match (filter, hour) {
                (HourFilter::Any, _) => true,
                (HourFilter::Live, None) => true,
                (HourFilter::Live, Some(h)) => live.contains(&h),
            }
        };
        // The next wanted id of a scan.
        type Next = Option<([u8; 16], Option<i64>)>;
        let next = |plen: usize, filter: HourFilter, it: &mut sled::Iter| -> Result<Next> {
            for r in it.by_ref() {
                let (k, v) = r?;
                if wanted(filter, &v) {
                    return Ok(k
                        .get(plen..)
                        .and_then(id16)
                        .map(|id| (id, parse_index_value(&v).1)));
                }
            }
            Ok(None)
        };
        let mut iters = Vec::with_capacity(prefixes.len());
        let mut heap = std::collections::BinaryHeap::new();
        for (p, filter) in prefixes {
            let mut start = p.clone();
            if let Some(a) = after {
                start.extend_from_slice(&a.0);
                start.push(0); // strictly after
            }
            let mut end = p.clone();
            end.extend_from_slice(&[0xff; 17]);
            let mut it = self.db.range(start..end);
            if let Some((id, created)) = next(p.len(), filter, &mut it)? {
                heap.push(Reverse((id, iters.len(), created)));
            }
            iters.push((p, filter, it));
        }
        let mut out = Vec::with_capacity(limit.min(1024));
        while out.len() < limit {
            let Some(Reverse((id, i, created))) = heap.pop() else {
                break;
            };
            let (p, filter, it) = &mut iters[i];
            out.push((MessageId(id), p.clone(), created));
            let plen = &p.len();
            if let Some((id, created)) = next(*plen, *filter, it)? {
                heap.push(Reverse((id, i, created)));
            }
        }
        Ok(out)
    }

    /// The metadata of `ids`, skipping those purged in the meantime and those
    /// `filter` rejects.
    fn metas(
        &self,
        dir: Direction,
        ids: Vec<MessageId>,
        filter: impl Fn(&MessageMeta) -> bool,
    ) -> Result<Vec<MessageMeta>> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            match self.load(dir, &id) {
                Ok(rec) => {
                    let m = rec.meta(dir, id)?;
                    if filter(&m) {
                        out.push(m);
                    }
                }
                // Purged between index read and record read.
                Err(Error::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// The index prefixes `S dir st len peer` present, one seek per peer.
    fn peers_in(&self, dir: Direction, st: u8) -> Result<Vec<Vec<u8>>> {
        let base = [P_STATE, dir.byte(), st];
        let end = vec![P_STATE, dir.byte(), st + 1];
        let mut out = Vec::new();
        let mut start = base.to_vec();
        while let Some(r) = self.db.range(start..end.clone()).next() {
            let (k, _) = r?;
            let plen = usize::from(*k.get(3).ok_or_else(|| Error::corrupt("state index"))?);
            let prefix = k
                .get(..4 + plen)
                .ok_or_else(|| Error::corrupt("state index"))?
                .to_vec();
            start = prefix.clone();
            start.extend_from_slice(&[0xff; 17]);
            out.push(prefix);
        }
        Ok(out)
    }

    /// Messages in `state`, oldest first, after the cursor, at most `limit`
    /// (range scans over the index, merged across peers).
    pub fn list_by_state(
        &self,
        dir: Direction,
        state: MessageState,
        after: Option<&MessageId>,
        limit: usize,
    ) -> Result<Vec<MessageMeta>> {
        // Entries whose key hour is gone are skipped without loading their
        // records (destroyed; the sweeper moves them to "destroyed" later).
        let prefixes = self
            .peers_in(dir, state.byte())?
            .into_iter()
            .map(|p| (p, HourFilter::Live))
            .collect();
        let ids = self.merge_index(prefixes, after, limit)?;
        self.metas(dir, ids, |m| m.state == state && m.destroyed_at.is_none())
    }

    /// The ids and peers of the messages in `state`, oldest first, after the
    /// cursor, at most `limit`: the index alone, no record reads (for a
    /// dispatcher that scans its queue often). Messages of a destroyed hour
    /// are skipped.
    pub fn list_ids_by_state(
        &self,
        dir: Direction,
        state: MessageState,
        after: Option<&MessageId>,
        limit: usize,
    ) -> Result<Vec<(MessageId, String)>> {
        Ok(self
            .list_index_by_state(dir, state, after, limit)?
            .into_iter()
            .map(|e| (e.id, e.peer))
            .collect())
    }

    /// [`Store::list_ids_by_state`] with each message's creation time (for
    /// counting and ageing queues without reading records; `None` for
    /// entries written by a store before format 2.1).
    pub fn list_index_by_state(
        &self,
        dir: Direction,
        state: MessageState,
        after: Option<&MessageId>,
        limit: usize,
    ) -> Result<Vec<IndexEntry>> {
        let prefixes: Vec<(Vec<u8>, HourFilter)> = self
            .peers_in(dir, state.byte())?
            .into_iter()
            .map(|p| (p, HourFilter::Live))
            .collect();
        let peers: HashMap<Vec<u8>, String> = prefixes
            .iter()
            .map(|(p, _)| {
                (
                    p.clone(),
                    String::from_utf8_lossy(p.get(4..).unwrap_or_default()).into_owned(),
                )
            })
            .collect();
        let ids = self.merge_index_with_prefix(prefixes, after, limit)?;
        Ok(ids
            .into_iter()
            .map(|(id, prefix, created_at)| IndexEntry {
                id,
                peer: peers.get(&prefix).cloned().unwrap_or_default(),
                created_at,
            })
            .collect())
    }

    /// Messages exchanged with `peer`, oldest first (metadata, including
    /// destroyed ones until purged): range scans over the index, merged
    /// across states.
    pub fn list_by_peer(
        &self,
        dir: Direction,
        peer: &str,
        after: Option<&MessageId>,
        limit: usize,
    ) -> Result<Vec<MessageMeta>> {
        check_name("peer", peer)?;
        let states = match dir {
            Direction::Outbound => [
                MessageState::Queued,
                MessageState::Sent,
                MessageState::Delivered,
                MessageState::Failed,
            ]
            .iter()
            .map(|s| s.byte())
            .collect::<Vec<_>>(),
            Direction::Inbound => vec![MessageState::New.byte(), MessageState::Acknowledged.byte()],
        };
        let prefixes = states
            .into_iter()
            .chain([S_DESTROYED])
            .map(|st| (state_prefix(dir, st, peer), HourFilter::Any))
            .collect();
        let ids = self.merge_index(prefixes, after, limit)?;
        self.metas(dir, ids, |_| true)
    }

    /// Messages whose id time lies in `[from_ms, to_ms)` (unix milliseconds),
    /// oldest first, at most `limit`.
    pub fn list_between(
        &self,
        dir: Direction,
        from_ms: u64,
        to_ms: u64,
        limit: usize,
    ) -> Result<Vec<MessageMeta>> {
        let start = msg_key(dir, &MessageId::min_at(from_ms));
        let end = msg_key(dir, &MessageId::min_at(to_ms));
        let mut out = Vec::new();
        for r in self.db.range(start..end).take(limit) {
            let (k, v) = r?;
            let id = MessageId(
                k.get(1..)
                    .and_then(id16)
                    .ok_or_else(|| Error::corrupt("message key"))?,
            );
            let mut rec: MsgRec = decode(&v, || what_msg(dir, &id))?;
            self.settle(&mut rec);
            out.push(rec.meta(dir, id)?);
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn transition(
        &self,
        dir: Direction,
        id: &MessageId,
        from: &[MessageState],
        to: MessageState,
        kind: AuditKind,
        outcome: Option<&str>,
        receipt: Option<&NewReceipt>,
    ) -> Result<MessageMeta> {
        let meta = self.transition_apply(dir, id, from, to, kind, outcome, receipt)?;
        self.commit()?;
        Ok(meta)
    }

    /// [`Store::transition`] without waiting for durability: applied to
    /// sled, durable with the next commit or sync that follows.
    #[allow(clippy::too_many_arguments)]
    fn transition_apply(
        &self,
        dir: Direction,
        id: &MessageId,
        from: &[MessageState],
        to: MessageState,
        kind: AuditKind,
        outcome: Option<&str>,
        receipt: Option<&NewReceipt>,
    ) -> Result<MessageMeta> {
        self.gc.check()?;
        if let Some(o) = outcome {
            check_name("outcome", o)?;
        }
        let now = self.clock.now();
        // Seal the receipt (kept for the audit retention) outside the lock.
        let sealed = match receipt {
            Some(r) => Some(self.seal_receipt(id, r, now)?),
            None => None,
        };
        let mut head = self.head();
        let mut rec = self.load(dir, id)?;
        let change = Change {
            from,
            to,
            kind,
            outcome,
            receipt: sealed.as_ref(),
            now,
        };
        let mut batch = Batch::default();
        let mut events = Vec::with_capacity(2);
        let mut purge = PurgeLists::default();
        if transition_changes(dir, id, &mut rec, &change, &mut batch, &mut events, &mut purge)? {
            purge.write(&mut batch, X_PURGE_RECEIPTS);
            let timed: Vec<(i64, &AuditEvent)> = events.iter().map(|(t, e)| (*t, e)).collect();
            self.apply_timed(&mut head, batch, &timed)?;
        }
        rec.meta(dir, *id)
    }

    /// Seal a delivery receipt of outgoing message `id` for the store (under
    /// the key of the hour its audit retention ends in).
    fn seal_receipt(&self, id: &MessageId, r: &NewReceipt, now: i64) -> Result<SealedReceipt> {
        check_name("outcome", &r.outcome)?;
        let expires_at = self.retention.audit_expiry(now);
        let key_hour = hour_of(expires_at);
        let key = self.bucket_key(key_hour)?;
        Ok(SealedReceipt {
            outcome: r.outcome.clone(),
            digest: Sha256::digest(&r.bytes).into(),
            expires_at,
            key_hour,
            sealed: key.seal(&receipt_aad_dir(Direction::Outbound, id, key_hour), &r.bytes),
        })
    }

    /// Outbound: the message was sealed for its peer (audit only; the state
    /// stays `queued`).
    pub fn mark_sealed(&self, id: &MessageId) -> Result<()> {
        let m = self.meta(Direction::Outbound, id)?;
        let ev = AuditEvent::new(AuditKind::Sealed).message(*id).peer(&m.peer);
        self.write_events(&[ev], self.clock.now()).map(|_| ())
    }

    /// Outbound: the message was sent (`queued`/`failed` → `sent`).
    pub fn mark_sent(&self, id: &MessageId) -> Result<MessageMeta> {
        self.transition(
            Direction::Outbound,
            id,
            &[MessageState::Queued, MessageState::Failed],
            MessageState::Sent,
            AuditKind::Sent,
            None,
            None,
        )
    }

    /// Outbound: the peer's signed delivery receipt arrived (`queued`/`sent`
    /// /`failed` → `delivered`); the receipt is stored in the same atomic
    /// write. Queued to the group commit and applied with the other
    /// deliveries of its group (one intent record, one audit block).
    pub fn mark_delivered(&self, id: &MessageId, receipt: &NewReceipt) -> Result<MessageMeta> {
        let job = self.prepare_delivered(id, receipt)?;
        self.commit_put(job).map(|p| p.meta)
    }

    /// [`Store::mark_delivered`] for async callers: the receipt is sealed on
    /// the caller's task, the change queued to the group commit's service
    /// threads, and its durability awaited without blocking the thread.
    pub async fn mark_delivered_async(
        self: &Arc<Self>,
        id: &MessageId,
        receipt: &NewReceipt,
    ) -> Result<MessageMeta> {
        let job = self.prepare_delivered(id, receipt)?;
        self.commit_job_async(job).await.map(|p| p.meta)
    }

    /// The writer's share of a delivered transition: the receipt checked and
    /// sealed. The transition itself is applied by the group commit's
    /// applier, with the others of its group.
    fn prepare_delivered(&self, id: &MessageId, receipt: &NewReceipt) -> Result<Job> {
        self.gc.check()?;
        let now = self.clock.now();
        Ok(Job::Delivered(PreparedDelivered {
            id: *id,
            receipt: self.seal_receipt(id, receipt, now)?,
            now,
        }))
    }

    /// Outbound: an attempt to send was made and did not get the message to
    /// the peer (connection refused, stream reset, ...): count it, with its
    /// outcome code (no personal data); the state stays. Not audited (the
    /// final outcome is).
    pub fn mark_attempt(&self, id: &MessageId, outcome: &str) -> Result<MessageMeta> {
        self.gc.check()?;
        check_name("outcome", outcome)?;
        let now = self.clock.now();
        let meta = {
            let _head = self.head();
            let mut rec = self.load(Direction::Outbound, id)?;
            if rec.destroyed_at.is_some() {
                return Err(Error::Destroyed {
                    what: what_msg(Direction::Outbound, id),
                });
            }
            rec.attempts = rec.attempts.saturating_add(1);
            rec.last_attempt_at = Some(now);
            rec.outcome = Some(outcome.to_owned());
            // One sled write of the record: atomic by itself, no intent needed.
            if let Err(e) = self.db.insert(msg_key(Direction::Outbound, id), encode(&rec)) {
                self.gc.poison();
                return Err(e.into());
            }
            rec.meta(Direction::Outbound, *id)?
        };
        self.commit()?;
        Ok(meta)
    }

    /// Outbound: delivery failed for good (`queued`/`sent` → `failed`), with
    /// an outcome code (no personal data).
    pub fn mark_failed(&self, id: &MessageId, outcome: &str) -> Result<MessageMeta> {
        self.transition(
            Direction::Outbound,
            id,
            &[MessageState::Queued, MessageState::Sent],
            MessageState::Failed,
            AuditKind::Failed,
            Some(outcome),
            None,
        )
    }

    /// Inbound: the application acknowledged the message (`new` →
    /// `acknowledged`); it is never listed as new again. Acknowledging twice
    /// is not an error.
    pub fn inbox_ack(&self, id: &MessageId) -> Result<MessageMeta> {
        self.transition(
            Direction::Inbound,
            id,
            &[MessageState::New],
            MessageState::Acknowledged,
            AuditKind::Acknowledged,
            None,
            None,
        )
    }

    // ---- receipts ----

    fn decode_receipt_dir(&self, dir: Direction, id: &MessageId, raw: &[u8]) -> Result<Receipt> {
        let what = || format!("receipt of {id}");
        let rr: ReceiptRec = decode(raw, what)?;
        let key = self
            .kr_read()
            .buckets
            .get(&rr.key_hour)
            .cloned()
            .ok_or_else(|| Error::Destroyed { what: what() })?;
        let bytes = key
            .open(&receipt_aad_dir(dir, id, rr.key_hour), &rr.sealed)
            .ok_or_else(|| Error::Unseal { what: what() })?;
        Ok(Receipt {
            message: *id,
            peer: rr.peer,
            outcome: rr.outcome,
            at: rr.at,
            expires_at: rr.expires_at,
            bytes,
        })
    }

    /// The delivery receipt of an outbound message.
    pub fn receipt(&self, message: &MessageId) -> Result<Receipt> {
        self.receipt_dir(Direction::Outbound, message)
    }

    /// Receipts from `peer`, by message id (time) order, after the cursor.
    pub fn receipts_by_peer(
        &self,
        peer: &str,
        after: Option<&MessageId>,
        limit: usize,
    ) -> Result<Vec<Receipt>> {
        self.receipts_by_peer_dir(Direction::Outbound, peer, after, limit)
    }

    /// Receipts of messages whose id time is in `[from_ms, to_ms)`.
    pub fn receipts_between(&self, from_ms: u64, to_ms: u64, limit: usize) -> Result<Vec<Receipt>> {
        self.receipts_between_dir(Direction::Outbound, from_ms, to_ms, None, limit)
    }

    /// Inbound: keep the delivery receipt this gateway signed and sent back
    /// for a received message, sealed, for the audit retention (like the
    /// receipts of outbound messages; it outlives the message's payload).
    /// Idempotent: if one is kept already, it stays and is returned (a
    /// duplicate envelope gets the same receipt again).
    pub fn put_issued_receipt(&self, id: &MessageId, receipt: &NewReceipt) -> Result<Receipt> {
        self.gc.check()?;
        {
            let peer = self.load(Direction::Inbound, id)?.peer;
            let prepared = self.prepare_issued(id, &peer, receipt)?;
            let mut head = self.head();
            if let Some(raw) = self.db.get(issued_key(id))? {
                drop(head);
                return self.decode_receipt_dir(Direction::Inbound, id, &raw);
            }
            let mut batch = Batch::default();
            let ev = issued_ops(&mut batch, id, &prepared.rec, prepared.digest, None);
            self.apply(&mut head, batch, &[ev], prepared.rec.at)?;
        }
        self.commit()?;
        self.issued_receipt(id)
    }

    /// The receipt this gateway issued for a received message.
    pub fn issued_receipt(&self, message: &MessageId) -> Result<Receipt> {
        self.receipt_dir(Direction::Inbound, message)
    }

    /// The receipt of a message of either direction: the peer's for an
    /// outbound message, ours for an inbound one.
    pub fn receipt_dir(&self, dir: Direction, message: &MessageId) -> Result<Receipt> {
        let mut key = vec![receipt_keys(dir).0];
        key.extend_from_slice(&message.0);
        let raw = self.db.get(key)?.ok_or_else(|| Error::NotFound {
            what: format!("receipt of {message}"),
        })?;
        self.decode_receipt_dir(dir, message, &raw)
    }

    /// Receipts of one direction exchanged with `peer`, by message id
    /// (time) order, after the cursor (exclusive), at most `limit`.
    pub fn receipts_by_peer_dir(
        &self,
        dir: Direction,
        peer: &str,
        after: Option<&MessageId>,
        limit: usize,
    ) -> Result<Vec<Receipt>> {
        check_name("peer", peer)?;
        let prefix = peer_prefix(receipt_keys(dir).1, None, peer);
        let mut start = prefix.clone();
        if let Some(a) = after {
            start.extend_from_slice(&a.0);
            start.push(0);
        }
        let mut end = prefix.clone();
        end.extend_from_slice(&[0xff; 17]);
        let mut out = Vec::new();
        for r in self.db.range(start..end).take(limit) {
            let (k, _) = r?;
            let id = MessageId(
                k.get(prefix.len()..)
                    .and_then(id16)
                    .ok_or_else(|| Error::corrupt("receipt index"))?,
            );
            out.push(self.receipt_dir(dir, &id)?);
        }
        Ok(out)
    }

    /// Receipts of one direction whose message id time is in
    /// `[from_ms, to_ms)`, after the cursor `after` (exclusive), at most `limit`.
    pub fn receipts_between_dir(
        &self,
        dir: Direction,
        from_ms: u64,
        to_ms: u64,
        after: Option<&MessageId>,
        limit: usize,
    ) -> Result<Vec<Receipt>> {
        let p = receipt_keys(dir).0;
        let mut start = vec![p];
        match after {
            Some(a) if a.0 >= MessageId::min_at(from_ms).0 => {
                start.extend_from_slice(&a.0);
                start.push(0);
            }
            _ => start.extend_from_slice(&MessageId::min_at(from_ms).0),
        }
        let mut end = vec![p];
        end.extend_from_slice(&MessageId::min_at(to_ms).0);
        if start >= end {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for r in self.db.range(start..end).take(limit) {
            let (k, v) = r?;
            let id = MessageId(
                k.get(1..)
                    .and_then(id16)
                    .ok_or_else(|| Error::corrupt("receipt key"))?,
            );
            out.push(self.decode_receipt_dir(dir, &id, &v)?);
        }
        Ok(out)
    }

    // ---- cases ----

    /// Open a request case and create its key. Returns the existing case if
    /// the id is already open.
    pub fn case_open(&self, case: &NewCase) -> Result<CaseInfo> {
        let info = self.case_open_deferred(case)?;
        self.commit()?;
        Ok(info)
    }

    /// [`Store::case_open`] without waiting for durability: the case is
    /// applied now and becomes durable with the next write that is
    /// committed (for the case of a message whose own put follows: one
    /// sync for both).
    pub fn case_open_deferred(&self, case: &NewCase) -> Result<CaseInfo> {
        self.gc.check()?;
        check_name("peer", &case.peer)?;
        check_name("agreement", &case.agreement)?;
        check_name("case state", &case.state)?;
        if let Some(existing) = self.db.get(case_key(&case.id))? {
            return decode(&existing, || format!("case {}", case.id));
        }
        {
            let mut kr = self.kr_write();
            if !kr.cases.contains_key(&case.id) {
                kr.new_case(case.id);
                if let Err(e) = kr.persist() {
                    kr.cases.remove(&case.id);
                    return Err(e);
                }
            }
        }
        let now = self.clock.now();
        let retain_until = self.retention.expiry(now, &case.agreement, "case");
        let info = CaseInfo {
            id: case.id,
            peer: case.peer.clone(),
            agreement: case.agreement.clone(),
            state: case.state.clone(),
            deadline: case.deadline,
            opened_at: now,
            updated_at: now,
            retain_until,
            destroyed_at: None,
        };
        {
            let mut head = self.head();
            let mut batch = Batch::default();
            batch.insert(case_key(&case.id), encode(&info));
            if let Some(d) = case.deadline {
                batch.insert(deadline_key(d, &case.id), EMPTY);
            }
            batch.insert(exp_key(hour_of(retain_until), X_CASE_EXPIRE, &case.id.0), EMPTY);
            let ev = AuditEvent::new(AuditKind::CaseOpened)
                .case(case.id)
                .peer(&case.peer)
                .detail(&case.state);
            self.apply(&mut head, batch, &[ev], now)?;
        }
        Ok(info)
    }

    /// A case's record.
    pub fn case_get(&self, id: &CaseId) -> Result<CaseInfo> {
        let raw = self.db.get(case_key(id))?.ok_or_else(|| Error::NotFound {
            what: format!("case {id}"),
        })?;
        decode(&raw, || format!("case {id}"))
    }

    /// Change a case's state code and deadline (`None`: no longer tracked,
    /// e.g. answered or closed).
    pub fn case_update(&self, id: &CaseId, state: &str, deadline: Option<i64>) -> Result<CaseInfo> {
        let info = self.case_update_deferred(id, state, deadline)?;
        self.commit()?;
        Ok(info)
    }

    /// [`Store::case_update`] without waiting for durability (see
    /// [`Store::case_open_deferred`]).
    pub fn case_update_deferred(&self, id: &CaseId, state: &str, deadline: Option<i64>) -> Result<CaseInfo> {
        self.gc.check()?;
        check_name("case state", state)?;
        let now = self.clock.now();
        let info = {
            let mut head = self.head();
            let mut info = self.case_get(id)?;
            if info.destroyed_at.is_some() {
                return Err(Error::Destroyed {
                    what: format!("case {id}"),
                });
            }
            let mut batch = Batch::default();
            if let Some(d) = info.deadline {
                batch.remove(deadline_key(d, id));
            }
            if let Some(d) = deadline {
                batch.insert(deadline_key(d, id), EMPTY);
            }
            info.state = state.to_owned();
            info.deadline = deadline;
            info.updated_at = now;
            batch.insert(case_key(id), encode(&info));
            let ev = AuditEvent::new(AuditKind::CaseStateChanged)
                .case(*id)
                .peer(&info.peer)
                .detail(state);
            self.apply(&mut head, batch, &[ev], now)?;
            info
        };
        Ok(info)
    }

    fn cases_in(&self, from: i64, to: i64, limit: usize) -> Result<Vec<CaseInfo>> {
        let mut start = vec![P_DEADLINE];
        start.extend_from_slice(&sortable(from));
        let mut end = vec![P_DEADLINE];
        end.extend_from_slice(&sortable(to));
        let mut out = Vec::new();
        for r in self.db.range(start..end).take(limit) {
            let (k, _) = r?;
            let id = CaseId(
                k.get(9..)
                    .and_then(id16)
                    .ok_or_else(|| Error::corrupt("deadline index"))?,
            );
            out.push(self.case_get(&id)?);
        }
        Ok(out)
    }

    /// Cases whose deadline has passed (deadline < now), earliest first.
    pub fn cases_overdue(&self, limit: usize) -> Result<Vec<CaseInfo>> {
        self.cases_in(i64::MIN, self.clock.now(), limit)
    }

    /// Cases due within `secs` from now (now <= deadline < now + secs),
    /// earliest first.
    pub fn cases_due_within(&self, secs: i64, limit: usize) -> Result<Vec<CaseInfo>> {
        let now = self.clock.now();
        self.cases_in(now, now.saturating_add(secs), limit)
    }

    /// Destroy a case early (case closed, purpose fulfilled): its key is
    /// destroyed first (the keyring is rewritten durably), so every message
    /// of the case is unreadable at once; then their records are marked
    /// destroyed and an audit entry is written. Returns the number of messages destroyed.
    pub fn destroy_case(&self, id: &CaseId) -> Result<u64> {
        self.gc.check()?;
        let now = self.clock.now();
        self.destroy_case_at(id, now, "early")
    }

    fn destroy_case_at(&self, id: &CaseId, now: i64, reason: &str) -> Result<u64> {
        let info = self.case_get(id)?;
        if info.destroyed_at.is_some() {
            return Ok(0);
        }
        let key_existed = {
            let mut kr = self.kr_write();
            let existed = kr.cases.remove(id);
            if existed.is_some() {
                if let Err(e) = kr.persist() {
                    if let Some(k) = existed {
                        kr.cases.insert(*id, k);
                    }
                    return Err(e);
                }
                self.keys_destroyed.fetch_add(1, Ordering::Relaxed);
                true
            } else {
                false
            }
        };
        // Mark the case destroyed first: from here on no put joins it.
        {
            let mut head = self.head();
            let mut info = self.case_get(id)?;
            let mut batch = Batch::default();
            if let Some(d) = info.deadline {
                batch.remove(deadline_key(d, id));
            }
            batch.remove(exp_key(hour_of(info.retain_until), X_CASE_EXPIRE, &id.0));
            batch.insert(
                exp_key(hour_of(self.retention.audit_expiry(now)), X_CASE_PURGE, &id.0),
                EMPTY,
            );
            info.deadline = None;
            info.destroyed_at = Some(now);
            info.updated_at = now;
            batch.insert(case_key(id), encode(&info));
            let mut events = Vec::new();
            if key_existed {
                events.push(
                    AuditEvent::new(AuditKind::KeyDestroyed)
                        .case(*id)
                        .detail("case-key"),
                );
            }
            self.apply(&mut head, batch, &events, now)?;
        }
        let mut prefix = vec![P_CASEMSG];
        prefix.extend_from_slice(&id.0);
        let mut members = Vec::new();
        for r in self.db.scan_prefix(&prefix) {
            let (k, _) = r?;
            let dir = k.get(17).copied().and_then(Direction::from_byte);
            let mid = k.get(18..).and_then(id16);
            if let (Some(d), Some(m)) = (dir, mid) {
                members.push((d, MessageId(m)));
            }
        }
        let mut destroyed = 0u64;
        for chunk in members.chunks(SWEEP_CHUNK) {
            let mut head = self.head();
            let mut batch = Batch::default();
            let mut ids = Vec::new();
            for (d, m) in chunk {
                if self.tombstone(&mut batch, *d, m, now)? {
                    ids.push((*d, *m));
                }
            }
            let mut events = Vec::new();
            if !ids.is_empty() {
                batch.insert(
                    exp_key(
                        hour_of(self.retention.audit_expiry(now)),
                        X_PURGE_MANY,
                        &rand_id(),
                    ),
                    purge_list(&ids),
                );
                // Counts and ids (never content), in events of bounded size.
                events.extend(
                    AuditEvent::new(AuditKind::Destroyed)
                        .case(*id)
                        .peer(&info.peer)
                        .detail(reason)
                        .destroyed_events(&ids),
                );
            }
            destroyed += ids.len() as u64;
            self.apply(&mut head, batch, &events, now)?;
        }
        self.commit()?;
        self.destroyed.fetch_add(destroyed, Ordering::Relaxed);
        Ok(destroyed)
    }

    /// Put into `batch` the replacement of one message by its metadata
    /// (its payload bytes stay in their hour's file, unreadable without the
    /// key, until that file is removed at the hour's end); `false` if there
    /// was nothing to destroy. Caller holds the head lock.
    fn tombstone(&self, batch: &mut Batch, dir: Direction, id: &MessageId, now: i64) -> Result<bool> {
        let raw = match self.db.get(msg_key(dir, id))? {
            Some(r) => r,
            None => return Ok(false),
        };
        let rec: MsgRec = decode(&raw, || what_msg(dir, id))?;
        if rec.destroyed_at.is_some() {
            return Ok(false);
        }
        self.tombstone_rec(batch, dir, id, rec, now)?;
        Ok(true)
    }

    fn tombstone_rec(
        &self,
        batch: &mut Batch,
        dir: Direction,
        id: &MessageId,
        mut rec: MsgRec,
        now: i64,
    ) -> Result<()> {
        let st = rec.state(id)?;
        rec.destroyed_at = Some(now);
        rec.seg = None;
        batch.remove(state_key(dir, st, &rec.peer, id));
        batch.insert(destroyed_key(dir, &rec.peer, id), EMPTY);
        batch.insert(msg_key(dir, id), encode(&rec));
        Ok(())
    }

    // ---- sweeping ----

    fn destroy_expired_keys(&self, now: i64) -> Result<u64> {
        let cur = hour_of(now);
        let gone: Vec<i64> = {
            let mut kr = self.kr_write();
            let expired: Vec<i64> = kr.buckets.range(..cur).map(|(h, _)| *h).collect();
            if expired.is_empty() {
                return Ok(0);
            }
            let mut removed = Vec::new();
            for h in &expired {
                if let Some(k) = kr.buckets.remove(h) {
                    removed.push((*h, k));
                }
            }
            if let Err(e) = kr.persist() {
                for (h, k) in removed {
                    kr.buckets.insert(h, k);
                }
                return Err(e);
            }
            expired
        };
        let n = gone.len() as u64;
        self.keys_destroyed.fetch_add(n, Ordering::Relaxed);
        let events: Vec<AuditEvent> = gone
            .iter()
            .map(|h| {
                AuditEvent::new(AuditKind::KeyDestroyed)
                    .detail("expiry-bucket")
                    .count(*h as u64)
            })
            .collect();
        self.write_events(&events, now)?;
        tracing::info!(buckets = n, "destroyed expired data keys");
        Ok(n)
    }

    /// Destroy what has expired, doing at most `budget` records of work:
    /// first the keys of every expired hour (one keyring rewrite) and their
    /// payload files, then the index entries of their records (moved to
    /// "destroyed"), in steps of a few hundred records so that writers are
    /// never held up for long; then metadata past the audit retention. Each
    /// step leaves an audit entry; the end is synced. Call it periodically;
    /// `remaining` says whether to call again soon.
    pub fn sweep(&self, budget: usize) -> Result<SweepReport> {
        self.gc.check()?;
        let now = self.clock.now();
        let cur = hour_of(now);
        let mut report = SweepReport {
            keys_destroyed: self.destroy_expired_keys(now)?,
            ..Default::default()
        };
        let mut done = 0usize;
        // 1. The payload files of expired hours (their keys are gone).
        self.segs.remove_before(cur)?;
        crate::blobs::remove_before(self.segs.dir(), cur)?;
        // 2. Records to mark destroyed, metadata, receipts and cases past their time.
        let mut end = vec![P_EXP];
        end.extend_from_slice(&sortable(cur));
        // Each step goes on after the last key the previous one removed:
        // starting from the front every time would walk sled's emptied
        // leaves again and again (quadratic over a large sweep).
        let mut from = vec![P_EXP];
        while done < budget {
            let take = SWEEP_CHUNK.min(budget - done);
            // Up to `take` records of work (a list of an hour's messages counts
            // each of its messages).
            let mut items: Vec<(Vec<u8>, sled::IVec)> = Vec::new();
            let mut work = 0usize;
            for r in self.db.range(from.clone()..end.clone()) {
                if work >= take {
                    break;
                }
                let (k, v) = r?;
                work += match k.get(9) {
                    Some(&X_HOUR_MSGS) => (v.len() / 17).max(1),
                    Some(&X_PURGE_RECEIPTS | &X_PURGE_ISSUED_MANY) => (v.len() / 16).max(1),
                    _ => 1,
                };
                items.push((k.to_vec(), v));
            }
            let Some((last, _)) = items.last() else {
                break;
            };
            from = last.clone();
            from.push(0);
            done += work;
            // Case keys first (keyring lock before head lock).
            for (k, _) in &items {
                if k.get(9) == Some(&X_CASE_EXPIRE) {
                    if let Some(c) = k.get(10..).and_then(id16) {
                        let case = CaseId(c);
                        match self.case_get(&case) {
                            Ok(info)
                                if info.destroyed_at.is_none()
                                    && exp_key(hour_of(info.retain_until), X_CASE_EXPIRE, &c) == *k =>
                            {
                                report.destroyed += self.destroy_case_at(&case, now, "expired")?;
                                report.keys_destroyed += 1;
                            }
                            _ => {}
                        }
                    }
                }
            }
            let mut head = self.head();
            let mut batch = Batch::default();
            let mut purged = 0u64;
            let mut destroyed_ids = Vec::new();
            for (k, v) in &items {
                let class = k.get(9).copied();
                let id = k.get(10..).and_then(id16);
                let (Some(class), Some(id)) = (class, id) else {
                    batch.remove(k.as_slice());
                    continue;
                };
                match class {
                    X_HOUR_MSGS => {
                        let hour = k
                            .get(1..9)
                            .and_then(|b| b.try_into().ok())
                            .map(|b| (u64::from_be_bytes(b) ^ (1u64 << 63)) as i64);
                        for chunk in v.chunks(17) {
                            let dir = chunk.first().copied().and_then(Direction::from_byte);
                            let mid = chunk.get(1..).and_then(id16);
                            let (Some(d), Some(m)) = (dir, mid) else { continue };
                            let m = MessageId(m);
                            let Some(raw) = self.db.get(msg_key(d, &m))? else {
                                continue;
                            };
                            let rec: MsgRec = decode(&raw, || what_msg(d, &m))?;
                            if rec.destroyed_at.is_none() && Some(rec.key_hour) == hour {
                                // The record stays as it is (see `settle`);
                                // its index entry moves to "destroyed".
                                let st = rec.state(&m)?;
                                batch.remove(state_key(d, st, &rec.peer, &m));
                                batch.insert(destroyed_key(d, &rec.peer, &m), EMPTY);
                                destroyed_ids.push((d, m));
                            }
                        }
                    }
                    X_PURGE_MANY => {
                        for chunk in v.chunks(17) {
                            let dir = chunk.first().copied().and_then(Direction::from_byte);
                            let mid = chunk.get(1..).and_then(id16);
                            if let (Some(d), Some(m)) = (dir, mid) {
                                if self.purge_message(&mut batch, d, &MessageId(m))? {
                                    purged += 1;
                                    report.purged_messages.push((d, MessageId(m)));
                                }
                            }
                        }
                    }
                    X_PURGE_RECEIPT => {
                        purged += self.purge_receipt(&mut batch, Direction::Outbound, &MessageId(id))?;
                    }
                    X_PURGE_ISSUED => {
                        purged += self.purge_receipt(&mut batch, Direction::Inbound, &MessageId(id))?;
                    }
                    X_PURGE_RECEIPTS | X_PURGE_ISSUED_MANY => {
                        let dir = if class == X_PURGE_RECEIPTS {
                            Direction::Outbound
                        } else {
                            Direction::Inbound
                        };
                        for chunk in v.chunks(16) {
                            if let Some(m) = id16(chunk) {
                                purged += self.purge_receipt(&mut batch, dir, &MessageId(m))?;
                            }
                        }
                    }
                    X_CASE_PURGE => {
                        batch.remove(case_key(&CaseId(id)));
                        purged += 1;
                        report.purged_cases.push(CaseId(id));
                    }
                    _ => {}
                }
                batch.remove(k.as_slice());
            }
            let mut events = Vec::new();
            if !destroyed_ids.is_empty() {
                batch.insert(
                    exp_key(
                        hour_of(self.retention.audit_expiry(now)),
                        X_PURGE_MANY,
                        &rand_id(),
                    ),
                    purge_list(&destroyed_ids),
                );
                events.extend(
                    AuditEvent::new(AuditKind::Destroyed)
                        .detail("expired")
                        .destroyed_events(&destroyed_ids),
                );
            }
            if purged > 0 {
                events.push(AuditEvent::new(AuditKind::Purged).count(purged));
            }
            self.apply(&mut head, batch, &events, now)?;
            drop(head);
            report.purged += purged;
            report.destroyed += destroyed_ids.len() as u64;
        }
        report.remaining = self.db.range(vec![P_EXP]..end).next().is_some();
        // 3. Audit blocks past the audit retention, with what is left of the budget.
        let (audit_pruned, more) = self.audit_prune(now, budget.saturating_sub(done))?;
        report.audit_pruned = audit_pruned;
        report.remaining |= more;
        self.audit_publish_head();
        self.commit()?;
        self.destroyed.fetch_add(report.destroyed, Ordering::Relaxed);
        self.purged.fetch_add(report.purged, Ordering::Relaxed);
        if report.destroyed + report.purged + report.keys_destroyed > 0 {
            tracing::info!(
                destroyed = report.destroyed,
                purged = report.purged,
                keys = report.keys_destroyed,
                remaining = report.remaining,
                "retention sweep"
            );
        }
        Ok(report)
    }

    /// Adds the removal of the receipt of message `id` (`Outbound`: the
    /// peer's delivery receipt; `Inbound`: the one this gateway issued) and
    /// of its peer index entry to `batch`; 1 if there was one.
    fn purge_receipt(&self, batch: &mut Batch, dir: Direction, id: &MessageId) -> Result<u64> {
        let (key, index) = match dir {
            Direction::Outbound => (receipt_key(id), P_RECEIPT_PEER),
            Direction::Inbound => (issued_key(id), P_ISSUED_PEER),
        };
        let Some(raw) = self.db.get(&key)? else {
            return Ok(0);
        };
        if let Ok(rr) = decode::<ReceiptRec>(&raw, String::new) {
            let mut pk = peer_prefix(index, None, &rr.peer);
            pk.extend_from_slice(&id.0);
            batch.remove(pk);
        }
        batch.remove(key);
        Ok(1)
    }

    fn purge_message(&self, batch: &mut Batch, dir: Direction, id: &MessageId) -> Result<bool> {
        let Some(raw) = self.db.get(msg_key(dir, id))? else {
            return Ok(false);
        };
        let rec: MsgRec = decode(&raw, || what_msg(dir, id))?;
        batch.remove(destroyed_key(dir, &rec.peer, id));
        if let Some(c) = &rec.case {
            batch.remove(case_msg_key(c, dir, id));
        }
        if let Ok(st) = rec.state(id) {
            batch.remove(state_key(dir, st, &rec.peer, id));
        }
        batch.remove(msg_key(dir, id));
        Ok(true)
    }

    // ---- audit ----

    /// Append an event to the audit trail (for events outside the store:
    /// configuration changed, envelope sealed, ...). Returns its sequence
    /// number once durable.
    /// Events of kind [`AuditKind::AuditPruned`] are refused: the store
    /// writes them itself, and verification relies on that.
    pub fn audit_append(&self, event: &AuditEvent) -> Result<u64> {
        if let Some(d) = &event.detail {
            check_name("audit detail", d)?;
        }
        if event.kind == AuditKind::AuditPruned {
            return Err(Error::Invalid(
                "AuditPruned events are written by the store only".into(),
            ));
        }
        let seq = self.write_events(std::slice::from_ref(event), self.clock.now())?;
        self.audit_publish_head();
        Ok(seq)
    }

    /// Audit entries from sequence number `from`, at most `limit`.
    pub fn audit_list(&self, from: u64, limit: usize) -> Result<Vec<AuditEntry>> {
        let mut out = Vec::new();
        // The block holding `from` starts at or before it.
        let start = match self
            .db
            .range(vec![P_AUDIT]..=audit::audit_key(from).to_vec())
            .next_back()
        {
            Some(r) => r?.0.to_vec(),
            None => vec![P_AUDIT],
        };
        for r in self.db.range(start..vec![P_AUDIT + 1]) {
            if out.len() >= limit {
                break;
            }
            let (_, v) = r?;
            let b = audit::decode_block(&v).ok_or_else(|| Error::corrupt("audit block"))?;
            out.extend(b.entries().filter(|e| e.seq >= from).take(limit - out.len()));
        }
        Ok(out)
    }

    /// Verify the whole audit chain: every block's hash, sequence and link to
    /// the previous one. `Error::AuditBroken` says where and how it is broken.
    ///
    /// After pruning, the chain is verified from its anchor (the last pruned
    /// block's sequence number and hash): the first block kept must link to
    /// it, and the newest [`AuditKind::AuditPruned`] event in the chain must
    /// carry the anchor's digest ([`crate::AuditAnchor::digest`]).
    /// [`VerifiedChain::first`] and [`VerifiedChain::anchor`] say where it
    /// started. Truncation of the tail is not visible here; see
    /// [`Store::audit_verify_against`].
    pub fn audit_verify(&self) -> Result<VerifiedChain> {
        // A pruning between reading the anchor and walking the chain would
        // look like a break: walk again if the anchor moved meanwhile.
        let mut tries = 0;
        loop {
            let anchor = audit::read_anchor(&self.db)?;
            let res = self.audit_walk(anchor);
            match res {
                Err(Error::AuditBroken(_)) if tries < 3 && audit::read_anchor(&self.db)? != anchor => {
                    tries += 1;
                }
                r => return r,
            }
        }
    }

    fn audit_walk(&self, anchor: Option<audit::AuditAnchor>) -> Result<VerifiedChain> {
        let mut walk = audit::ChainWalk::new(anchor);
        for r in self.db.scan_prefix([P_AUDIT]) {
            let (k, v) = r?;
            walk.push(audit::key_seq(&k), &v)?;
        }
        Ok(walk.finish()?)
    }

    /// The head of the audit chain (sequence number after its last entry,
    /// hash and time of its newest block), once durable: keep it elsewhere
    /// (with an operator, a peer, a log host) and check the store against it
    /// later with [`Store::audit_verify_against`] — removing the newest
    /// blocks is not visible from the store alone. Also appended to the head
    /// log if one is configured.
    pub fn audit_head(&self) -> Result<AuditHead> {
        let head = self.audit_read_head()?;
        self.sync()?;
        self.audit_log_head(&head);
        Ok(head)
    }

    /// [`Store::audit_verify`], and check that the chain still holds a head
    /// saved earlier: `BreakKind::Truncated` if the chain ends before it;
    /// `BreakKind::Modified` if the block that ended at `saved.seq` is not
    /// the one saved (the tail was rewritten since); `BreakKind::Anchor` if
    /// pruning moved past the saved head although its audit retention has
    /// not ended. A saved head whose block was pruned after its retention
    /// cannot be checked any more (accepted; [`VerifiedChain::first`] is past
    /// it): check against a recent head.
    pub fn audit_verify_against(&self, saved: &AuditHead) -> Result<VerifiedChain> {
        let chain = self.audit_verify()?;
        if saved.seq > chain.end {
            return Err(Error::AuditBroken(AuditBreak {
                index: chain.end,
                kind: BreakKind::Truncated,
            }));
        }
        self.audit_check_head(saved)?;
        Ok(chain)
    }

    /// [`Store::audit_verify_against`] the last head of the configured head
    /// log ([`StoreConfig::audit_head_log`], read from the file); just
    /// [`Store::audit_verify`] if the log has no head yet.
    /// `Error::Invalid` if no head log is configured.
    pub fn audit_verify_against_log(&self) -> Result<VerifiedChain> {
        let log = self
            .audit_log
            .as_ref()
            .ok_or_else(|| Error::Invalid("no audit head log is configured".into()))?;
        match audit::last_audit_head(log.path())? {
            Some(h) => self.audit_verify_against(&h),
            None => self.audit_verify(),
        }
    }

    /// The head as it is in sled now (its block may not be durable yet).
    fn audit_read_head(&self) -> Result<AuditHead> {
        let _head = self.head();
        match self.db.scan_prefix([P_AUDIT]).next_back() {
            Some(r) => {
                let (_, v) = r?;
                let b = audit::decode_block(&v).ok_or_else(|| Error::corrupt("last audit block"))?;
                Ok(AuditHead {
                    seq: b.end(),
                    hash: b.hash,
                    at: b.newest(),
                })
            }
            None => Ok(match audit::read_anchor(&self.db)? {
                Some(a) => AuditHead {
                    seq: a.next_seq,
                    hash: a.hash,
                    at: a.last_at,
                },
                None => AuditHead {
                    seq: 0,
                    hash: [0u8; 32],
                    at: 0,
                },
            }),
        }
    }

    /// Whether the chain in sled still holds `saved`: the block ending at
    /// `saved.seq` has its hash (or the anchor does, or it was pruned after
    /// its retention). Only that block is read; [`Store::audit_verify_against`]
    /// verifies the chain first.
    fn audit_check_head(&self, saved: &AuditHead) -> Result<()> {
        let brk = |index, kind| Err(Error::AuditBroken(AuditBreak { index, kind }));
        if saved.seq == 0 {
            if saved.hash != [0u8; 32] {
                return Err(Error::Invalid(
                    "an audit head at sequence 0 has an all-zero hash".into(),
                ));
            }
            return Ok(());
        }
        let anchor = audit::read_anchor(&self.db)?;
        if let Some(a) = &anchor {
            if saved.seq < a.next_seq {
                // Its block was pruned: only legitimate once its retention ended.
                if self.retention.audit_expiry(saved.at) > self.clock.now() {
                    return brk(a.next_seq, BreakKind::Anchor);
                }
                return Ok(());
            }
            if saved.seq == a.next_seq {
                return if saved.hash == a.hash {
                    Ok(())
                } else {
                    brk(a.next_seq, BreakKind::Anchor)
                };
            }
        }
        // The block holding entry `saved.seq - 1`.
        let found = self
            .db
            .range(vec![P_AUDIT]..=audit::audit_key(saved.seq - 1).to_vec())
            .next_back();
        let Some(r) = found else {
            return brk(anchor.map_or(0, |a| a.next_seq), BreakKind::Truncated);
        };
        let (k, v) = r?;
        let Some(b) = audit::decode_block(&v) else {
            return brk(audit::key_seq(&k), BreakKind::Modified);
        };
        if b.end() < saved.seq {
            return brk(b.end(), BreakKind::Truncated);
        }
        if b.end() != saved.seq || b.hash != saved.hash {
            return brk(b.seq, BreakKind::Modified);
        }
        Ok(())
    }

    /// Append `head` (durable) to the head log, if one is configured and it
    /// is newer than the last line — and only if the chain still holds the
    /// last line's head: after a truncation the log stays at the last good
    /// head, as evidence. Failures are logged, not returned: publishing must
    /// not stop the sweeper or the caller.
    fn audit_log_head(&self, head: &AuditHead) {
        let Some(log) = &self.audit_log else { return };
        match log.append(head, |last| self.audit_check_head(last)) {
            Ok(true) => tracing::info!(
                seq = head.seq,
                hash = %hex::encode(head.hash),
                at = head.at,
                "audit head published"
            ),
            Ok(false) => {}
            Err(Error::AuditBroken(b)) => tracing::error!(
                index = b.index,
                kind = ?b.kind,
                "the audit chain no longer holds the last head of the head log \
                 (truncated or rewritten); head not published"
            ),
            Err(e) => tracing::error!(error = %e, "cannot append to the audit head log"),
        }
    }

    /// Make the current head durable and publish it to the head log, if
    /// one is configured and the head moved since the last line.
    fn audit_publish_head(&self) {
        let Some(log) = &self.audit_log else { return };
        let head = match self.audit_read_head() {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the audit head to publish it");
                return;
            }
        };
        if log.last().is_some_and(|l| l.seq >= head.seq) {
            return;
        }
        if let Err(e) = self.sync() {
            tracing::error!(error = %e, "audit head not published: sync failed");
            return;
        }
        self.audit_log_head(&head);
    }

    /// Prune audit blocks past the audit retention from the front of the
    /// chain, at most `budget` blocks, in steps of at most [`SWEEP_CHUNK`]
    /// (writers wait at most one step). Each step removes its blocks, writes
    /// the new anchor and an [`AuditKind::AuditPruned`] event in one intent
    /// record. The blocks of the last put group are kept (the group repair
    /// at open reads them), and a chain that does not verify where it would
    /// be pruned is left alone. Returns the entries pruned and whether more
    /// are due.
    fn audit_prune(&self, now: i64, budget: usize) -> Result<(u64, bool)> {
        // Blocks from the last put group's sequence number on stay.
        let limit = match self.db.get([P_GROUP])? {
            Some(v) => decode_group(&v)?.1,
            None => u64::MAX,
        };
        let expired = |at: i64| self.retention.audit_expiry(at) <= now;
        let mut pruned = 0u64;
        let mut left = budget;
        loop {
            let anchor = audit::read_anchor(&self.db)?;
            let planned = audit::plan_prune(&self.db, anchor, expired, limit, left.min(SWEEP_CHUNK), now);
            let (plan, more) = match planned {
                Ok(p) => p,
                Err(Error::AuditBroken(b)) => {
                    tracing::error!(
                        index = b.index,
                        kind = ?b.kind,
                        "the audit chain does not verify where it is due for pruning; not pruned"
                    );
                    return Ok((pruned, false));
                }
                Err(e) => return Err(e),
            };
            let Some(plan) = plan else {
                return Ok((pruned, more));
            };
            let mut head = self.head();
            if audit::read_anchor(&self.db)? != anchor {
                return Ok((pruned, true)); // another sweep pruned meanwhile
            }
            let mut batch = Batch::default();
            for k in &plan.keys {
                batch.remove(k);
            }
            batch.insert(audit::ANCHOR_KEY, plan.anchor.encode());
            let event = AuditEvent::new(AuditKind::AuditPruned)
                .detail("audit")
                .count(plan.anchor.pruned)
                .digest(plan.anchor.digest());
            self.apply(&mut head, batch, &[event], now)?;
            drop(head);
            pruned += plan.anchor.pruned;
            left -= plan.keys.len();
            tracing::info!(
                entries = plan.anchor.pruned,
                next_seq = plan.anchor.next_seq,
                "pruned audit entries past the audit retention"
            );
            if !more || left == 0 {
                return Ok((pruned, more));
            }
        }
    }

    // ---- master key ----

    /// Re-seal the keyring under a new master key, online: the keyring is
    /// rewritten atomically (temporary file, fsync, rename, fsync of the
    /// directory) under the keyring lock, then a
    /// [`AuditKind::MasterKeyRotated`] event is written (no key material).
    /// The data keys do not change, so every message stays readable; from
    /// now on only `new` opens the keyring. Point the configuration at the
    /// new key before the next start. A crash before the rename leaves the
    /// keyring under the old key, after it under the new one: keep both
    /// until this has returned. See [`crate::rekey_keyring`] for the offline
    /// form.
    pub fn rotate_master_key(&self, new: MasterKey) -> Result<()> {
        self.gc.check()?;
        let generation = {
            let mut kr = self.kr_write();
            kr.rekey(new)?;
            kr.generation()
        };
        tracing::info!(generation, "keyring re-sealed under a new master key");
        self.write_events(
            &[AuditEvent::new(AuditKind::MasterKeyRotated)
                .detail("keyring")
                .count(generation)],
            self.clock.now(),
        )?;
        self.audit_publish_head();
        Ok(())
    }

    // ---- misc ----

    /// Tells the group commit how many writers the caller has at once (a
    /// gateway: the messages it has in flight). With 64 or more, a sync
    /// waits for up to 64 writes or 4 ms instead of 16 or 1.5 ms: their
    /// latency is queueing for the CPU then, and fewer syncs leave more of
    /// it to them. A hint only: what is durable, and when a write returns
    /// (after its sync), does not change.
    ///
    /// A caller that knows its writers queue for the CPU (it is saturated)
    /// may announce at least [`BUSY_WRITERS`] to get the longer gathering.
    pub fn set_concurrent_writers(&self, n: usize) {
        self.gc.set_writers(n as u64);
    }

    /// Counters since open.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            syncs: self.gc.counters.syncs.load(Ordering::Relaxed),
            payload_syncs: self.gc.counters.payload_syncs.load(Ordering::Relaxed),
            acked_writes: self.gc.counters.acked.load(Ordering::Relaxed),
            sync_micros: self.gc.counters.sync_nanos.load(Ordering::Relaxed) / 1000,
            destroyed: self.destroyed.load(Ordering::Relaxed),
            purged: self.purged.load(Ordering::Relaxed),
            keys_destroyed: self.keys_destroyed.load(Ordering::Relaxed),
            poisoned: self.gc.is_poisoned(),
        }
    }

    /// Which keys the keyring holds now (no key material).
    pub fn keyring_summary(&self) -> KeyringSummary {
        self.kr_read().summary()
    }

    /// Make everything written so far durable (one group-commit sync).
    pub fn sync(&self) -> Result<()> {
        self.gc.check()?;
        self.commit()
    }

    /// [`Store::sync`] for async callers: waits, without blocking the
    /// task's thread, until everything applied so far is durable (group
    /// commit: one sync serves every writer waiting).
    pub async fn sync_async(self: &Arc<Self>) -> Result<()> {
        self.ensure_servers();
        match self.gc.sync_async().await {
            Ok(r) => r,
            Err(_) => Err(Error::Poisoned),
        }
    }

    // ---- blobs ----

    /// A writer for a large part of the payload of a message under
    /// `agreement` and `kind` that will be stored soon (see
    /// [`crate::BlobWriter`]): streamed, sealed chunk by chunk, in bounded
    /// memory. Put the [`BlobRef`] that [`BlobWriter::finish`] returns into
    /// the message's payload; its file is removed a little after the
    /// message's expiry hour (or by [`Store::blob_discard`]).
    /// With `kind` `None` (not known yet), the longest retention of the
    /// agreement's kinds counts.
    pub fn blob_writer(&self, agreement: &str, kind: Option<&str>) -> Result<BlobWriter> {
        self.gc.check()?;
        check_name("agreement", agreement)?;
        let retention = match kind {
            Some(k) => {
                check_name("kind", k)?;
                self.retention.retention(agreement, k)
            }
            None => self.retention.longest(agreement),
        };
        let expires = crate::retention::add_secs(self.clock.now(), retention);
        // The hour after the message's: the message is stored after the
        // blob, within the hour, so its expiry hour is at most this one.
        let syncer = (self.gc.mode() == SyncMode::Fdatasync).then(|| Arc::clone(&self.segs));
        BlobWriter::create(self.segs.dir(), hour_of(expires) + 1, syncer)
    }

    /// Reads a blob back (every chunk authenticated; length and SHA-256
    /// checked at the end). [`Error::Destroyed`] once its file is gone.
    pub fn blob_reader(&self, blob: &BlobRef) -> Result<BlobReader> {
        BlobReader::open(self.segs.dir(), blob)
    }

    /// Removes a blob no message refers to (its message was refused or
    /// not stored). Removing one that is gone already is not an error.
    pub fn blob_discard(&self, blob: &BlobRef) -> Result<()> {
        let p = crate::blobs::path_of(self.segs.dir(), blob.hour, &blob.id);
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&p, e)),
        }
    }

    // ---- application records ----

    /// Applies changes to the application's own small records (the
    /// gateway keeps its procedure state here: cases, consents, the peers'
    /// directory) as one atomic group: after a crash either all of them or
    /// none are there. They are visible to [`Store::records`] at once and
    /// durable once a later [`Store::sync`] or [`Store::sync_async`]
    /// returns; a caller that needs its changes in order applies them
    /// under its own lock and syncs outside it (many writers then share one
    /// sync). Records are not encrypted and not audited: keep ids, states
    /// and digests in them, no message content.
    pub fn records_apply(&self, ops: Vec<RecordOp>) -> Result<()> {
        self.gc.check()?;
        if ops.len() > MAX_RECORD_OPS {
            return Err(Error::Invalid(format!(
                "{} record changes in one group; at most {MAX_RECORD_OPS}",
                ops.len()
            )));
        }
        let mut batch = Batch::default();
        for (key, value) in ops {
            if key.is_empty() || key.len() > MAX_RECORD_KEY {
                return Err(Error::Invalid(format!(
                    "record key of {} bytes; must be 1..={MAX_RECORD_KEY}",
                    key.len()
                )));
            }
            let mut k = Vec::with_capacity(1 + key.len());
            k.push(P_RECORD);
            k.extend_from_slice(&key);
            match value {
                Some(v) if v.len() > MAX_RECORD_VALUE => {
                    return Err(Error::Invalid(format!(
                        "record value of {} bytes; at most {MAX_RECORD_VALUE}",
                        v.len()
                    )))
                }
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        if batch.ops.is_empty() {
            return Ok(());
        }
        // Records are written by this function only, one group at a time
        // under their own lock (not the head's, which the group commit
        // holds while it applies a group of puts): a group of more than one
        // change goes through its own intent record, `V seq`, written
        // before the changes and removed after them. sled recovers a
        // prefix, so after a crash at most the last group's intent is left,
        // and no later record change exists: replaying it at open is safe.
        let mut seq = self.records.lock().unwrap_or_else(|p| p.into_inner());
        let res = if let [(k, v)] = &batch.ops[..] {
            // One change is atomic by itself.
            match v {
                Some(v) => self.db.insert(k, v.as_slice()).map(|_| ()),
                None => self.db.remove(k).map(|_| ()),
            }
            .map_err(Error::from)
        } else {
            let key = record_intent_key(*seq);
            self.db
                .insert(key, wal::encode(&batch.ops))
                .map_err(Error::from)
                .and_then(|_| wal::apply_ops(&self.db, batch.ops))
                .and_then(|_| self.db.remove(key).map(|_| ()).map_err(Error::from))
        };
        if let Err(e) = res {
            // We can no longer tell what reached the disk.
            self.gc.poison();
            return Err(e);
        }
        *seq += 1;
        Ok(())
    }

    /// The application records whose keys start with `prefix`, in key order.
    pub fn records(&self, prefix: &[u8]) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + '_ {
        let mut p = Vec::with_capacity(1 + prefix.len());
        p.push(P_RECORD);
        p.extend_from_slice(prefix);
        self.db.scan_prefix(p).map(|r| {
            let (k, v) = r?;
            Ok((k[1..].to_vec(), v.to_vec()))
        })
    }

    /// Fault injection for tests: the next sync fails, which poisons the store.
    #[doc(hidden)]
    pub fn fail_next_sync_for_tests(&self) {
        self.gc.fail_next_sync();
    }
}

/// flush + fdatasync of sled's log (used at open, before the group commit exists).
fn sync_log(db: &sled::Db, sled_dir: &Path) -> Result<()> {
    db.flush()?;
    let log = sled_dir.join("db");
    File::open(&log)
        .and_then(|f| f.sync_data())
        .map_err(|e| Error::io(&log, e))
}

/// Apply again the intent records a crash left behind, make that durable,
/// remove them. Intent records numbered below the group marker's were fully
/// applied before the marker was written (sled recovers a prefix), so they
/// are only removed. Returns the next intent sequence number.
fn replay_intents(db: &sled::Db, sled_dir: &Path) -> Result<u64> {
    let group_seq = match db.get([P_GROUP])? {
        Some(v) => Some(decode_group(&v)?.0),
        None => None,
    };
    let mut keys = Vec::new();
    let mut next = group_seq.map_or(0, |g| g + 1);
    let mut replayed = 0usize;
    for r in db.scan_prefix([wal::P_INTENT]) {
        let (k, v) = r?;
        let seq = k
            .get(1..9)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| Error::corrupt("intent key"))?;
        if group_seq.is_none_or(|g| seq > g) {
            wal::apply_ops(db, wal::decode(&v)?)?;
            replayed += 1;
        }
        next = next.max(seq + 1);
        keys.push(k);
    }
    if keys.is_empty() {
        return Ok(next);
    }
    if replayed > 0 {
        tracing::info!(intents = replayed, "replayed intent records after a crash");
    }
    sync_log(db, sled_dir)?;
    for k in keys {
        db.remove(k)?;
    }
    sync_log(db, sled_dir)?;
    Ok(next)
}

/// `V seq`: the intent record of a group of application record changes.
fn record_intent_key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = P_RECORD_INTENT;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// At open: the intent record of a group of application record changes
/// left by a crash (at most one: groups are written one at a time) is
/// applied again and removed. Its changes are puts and deletes of fixed
/// values, and no record change came after it.
fn replay_record_intents(db: &sled::Db, sled_dir: &Path) -> Result<()> {
    let mut keys = Vec::new();
    for r in db.scan_prefix([P_RECORD_INTENT]) {
        let (k, v) = r?;
        wal::apply_ops(db, wal::decode(&v)?)?;
        keys.push(k);
    }
    if keys.is_empty() {
        return Ok(());
    }
    tracing::info!(
        intents = keys.len(),
        "replayed application record changes after a crash"
    );
    sync_log(db, sled_dir)?;
    for k in keys {
        db.remove(k)?;
    }
    sync_log(db, sled_dir)
}

/// Where a delivery receipt may take an outgoing message from.
const DELIVERED_FROM: &[MessageState] = &[MessageState::Queued, MessageState::Sent, MessageState::Failed];

/// A state change of one message record, as [`transition_changes`] applies it.
struct Change<'a> {
    from: &'a [MessageState],
    to: MessageState,
    kind: AuditKind,
    /// Outcome code recorded with it (no personal data).
    outcome: Option<&'a str>,
    /// The delivery receipt stored with it (outbound `delivered`).
    receipt: Option<&'a SealedReceipt>,
    now: i64,
}

/// Moves `rec` (message `id`, as on record) to `change.to`: updates it and
/// adds the writes (index entry moved, record, receipt and its index entry)
/// to `batch`, the audit events to `events` and the receipt to `purge` (the
/// caller writes its purge list). Returns
/// `false`, changing nothing, when the record is in that state already; a
/// destroyed record or a state outside `change.from` is an error, and
/// nothing is changed or added either.
fn transition_changes(
    dir: Direction,
    id: &MessageId,
    rec: &mut MsgRec,
    change: &Change<'_>,
    batch: &mut Batch,
    events: &mut Vec<(i64, AuditEvent)>,
    purge: &mut PurgeLists,
) -> Result<bool> {
    let (to, now) = (change.to, change.now);
    if rec.destroyed_at.is_some() {
        return Err(Error::Destroyed {
            what: what_msg(dir, id),
        });
    }
    let cur = rec.state(id)?;
    if cur == to {
        return Ok(false);
    }
    if !change.from.contains(&cur) {
        return Err(Error::BadTransition {
            what: what_msg(dir, id),
            from: cur.as_str(),
            to: to.as_str(),
        });
    }
    rec.state = to.byte();
    rec.updated_at = now;
    if let Some(o) = change.outcome {
        rec.outcome = Some(o.to_owned());
    }
    // Delivered straight from queued: it was sent too (one atomic write
    // for both, each audited).
    let sent_too = to == MessageState::Delivered && cur == MessageState::Queued;
    if sent_too {
        rec.attempts = rec.attempts.saturating_add(1);
        rec.sent_at = Some(now);
        rec.last_attempt_at = Some(now);
    }
    match to {
        MessageState::Sent => {
            rec.attempts = rec.attempts.saturating_add(1);
            rec.sent_at = Some(now);
            rec.last_attempt_at = Some(now);
        }
        MessageState::Delivered => rec.delivered_at = Some(now),
        MessageState::Acknowledged => rec.acknowledged_at = Some(now),
        _ => {}
    }
    batch.remove(state_key(dir, cur, &rec.peer, id));
    batch.insert(
        state_key(dir, to, &rec.peer, id),
        hour_value(rec.key_hour, rec.created_at),
    );
    batch.insert(msg_key(dir, id), encode(&*rec));
    let mut ev = AuditEvent::new(change.kind).message(*id).peer(&rec.peer);
    if let Some(o) = change.outcome {
        ev = ev.detail(o);
    }
    if let Some(r) = change.receipt {
        let rr = ReceiptRec {
            peer: rec.peer.clone(),
            outcome: r.outcome.clone(),
            at: now,
            expires_at: r.expires_at,
            key_hour: r.key_hour,
            sealed: ByteBuf::from(r.sealed.clone()),
        };
        batch.insert(receipt_key(id), encode(&rr));
        let mut pk = peer_prefix(P_RECEIPT_PEER, None, &rec.peer);
        pk.extend_from_slice(&id.0);
        batch.insert(pk, EMPTY);
        purge.add(r.key_hour, *id);
        ev = ev.detail(&r.outcome).digest(r.digest);
    }
    if sent_too {
        events.push((now, AuditEvent::new(AuditKind::Sent).message(*id).peer(&rec.peer)));
    }
    events.push((now, ev));
    Ok(true)
}

/// `gseq u64 | audit seq u64 | (dir u8, id 16, tag u32)*`
fn encode_group(gseq: u64, audit_seq: u64, puts: &[(Direction, MessageId, u32)]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + 21 * puts.len());
    v.extend_from_slice(&gseq.to_be_bytes());
    v.extend_from_slice(&audit_seq.to_be_bytes());
    for (d, id, tag) in puts {
        v.push(d.byte());
        v.extend_from_slice(&id.0);
        v.extend_from_slice(&tag.to_be_bytes());
    }
    v
}

type GroupMarker = (u64, u64, Vec<(Direction, MessageId, u32)>);

fn decode_group(v: &[u8]) -> Result<GroupMarker> {
    let bad = || Error::corrupt("group marker");
    let u64_at = |i: usize| -> Result<u64> {
        v.get(i..i + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .ok_or_else(bad)
    };
    let (gseq, aseq) = (u64_at(0)?, u64_at(8)?);
    let rest = v.get(16..).ok_or_else(bad)?;
    if rest.len() % 21 != 0 {
        return Err(bad());
    }
    let mut puts = Vec::with_capacity(rest.len() / 21);
    for c in rest.chunks(21) {
        let d = Direction::from_byte(c[0]).ok_or_else(bad)?;
        let id = id16(&c[1..17]).ok_or_else(bad)?;
        let tag = u32::from_be_bytes(c[17..21].try_into().map_err(|_| bad())?);
        puts.push((d, MessageId(id), tag));
    }
    Ok((gseq, aseq, puts))
}

/// The receipts a group stores, by the hour their audit retention ends:
/// written as one purge list per hour ([`X_PURGE_RECEIPTS`],
/// [`X_PURGE_ISSUED_MANY`]) instead of one purge entry per receipt.
#[derive(Default)]
struct PurgeLists(std::collections::BTreeMap<i64, Vec<MessageId>>);

impl PurgeLists {
    fn add(&mut self, hour: i64, id: MessageId) {
        self.0.entry(hour).or_default().push(id);
    }

    /// Adds the lists to `batch` under `class`.
    fn write(self, batch: &mut Batch, class: u8) {
        for (hour, mut ids) in self.0 {
            ids.sort();
            ids.dedup();
            let mut v = Vec::with_capacity(ids.len() * 16);
            for id in &ids {
                v.extend_from_slice(&id.0);
            }
            batch.insert(exp_key(hour, class, &list_id(&ids[0], rand::random())), v);
        }
    }
}

/// The writes and the audit event of an issued receipt: its record, its
/// peer index entry and its purge entry at the end of its audit retention.
fn issued_ops(
    batch: &mut Batch,
    id: &MessageId,
    rr: &ReceiptRec,
    digest: [u8; 32],
    purge: Option<&mut PurgeLists>,
) -> AuditEvent {
    let mut pk = peer_prefix(P_ISSUED_PEER, None, &rr.peer);
    pk.extend_from_slice(&id.0);
    batch.insert(issued_key(id), encode(rr));
    batch.insert(pk, EMPTY);
    match purge {
        Some(lists) => lists.add(rr.key_hour, *id),
        None => batch.insert(exp_key(rr.key_hour, X_PURGE_ISSUED, &id.0), EMPTY),
    }
    AuditEvent::new(AuditKind::ReceiptIssued)
        .message(*id)
        .peer(&rr.peer)
        .detail(&rr.outcome)
        .digest(digest)
}

fn put_event(dir: Direction, id: &MessageId, rec: &MsgRec, digest: [u8; 32]) -> AuditEvent {
    let kind = match dir {
        Direction::Outbound => AuditKind::Accepted,
        Direction::Inbound => AuditKind::Received,
    };
    let mut ev = AuditEvent::new(kind)
        .message(*id)
        .peer(&rec.peer)
        .count(rec.payload_len)
        .digest(digest);
    if dir == Direction::Outbound {
        // The outbox takes only envelopes already signed and sealed to the
        // peer: accepting and sealing are one step, one event.
        ev = ev.detail("sealed");
    }
    ev.case = rec.case;
    ev
}

/// Complete the last fast-path put group if a crash cut it short: its audit
/// block (written last) is missing. Every record of the group that reached
/// sled (same id and tag) gets its index entries and its audit event, in a
/// block at the sequence number the group had reserved. Returns the next
/// intent sequence number.
fn repair_group(db: &sled::Db, sled_dir: &Path, head: &mut Head, next_intent: u64) -> Result<u64> {
    let Some(v) = db.get([P_GROUP])? else {
        return Ok(next_intent);
    };
    let (gseq, aseq, puts) = decode_group(&v)?;
    let next_intent = next_intent.max(gseq + 1);
    if head.next_seq < aseq {
        return Err(Error::corrupt("group marker is ahead of the audit trail"));
    }
    // Events of the group already in the trail: its blocks come first from
    // `aseq` on, in order (at most one event per put); a crash may have cut
    // the last ones.
    let end = aseq + puts.len() as u64;
    let mut audited = std::collections::HashSet::new();
    for r in db.range(audit::audit_key(aseq).to_vec()..audit::audit_key(end).to_vec()) {
        let (_, v) = r?;
        let b = audit::decode_block(&v).ok_or_else(|| Error::corrupt("audit block"))?;
        audited.extend(
            b.entries()
                .filter(|e| e.seq < end)
                .filter_map(|e| e.event.message),
        );
    }
    let mut missing = Vec::new();
    for (dir, id, tag) in puts {
        let Some(raw) = db.get(msg_key(dir, &id))? else {
            continue;
        };
        let rec: MsgRec = decode(&raw, || what_msg(dir, &id))?;
        if rec.tag != tag || rec.destroyed_at.is_some() || audited.contains(&id) {
            continue; // a record stored before (a duplicate put), or complete
        }
        missing.push((dir, id, rec));
    }
    if missing.is_empty() {
        return Ok(next_intent); // the group is complete
    }
    // Cut short: nothing was written after it, so the records are as the
    // group wrote them.
    let mut events = Vec::new();
    for (dir, id, rec) in missing {
        db.insert(
            state_key(dir, rec.state(&id)?, &rec.peer, &id),
            &hour_value(rec.key_hour, rec.created_at)[..],
        )?;
        let digest: [u8; 32] = rec
            .payload_sha256
            .as_slice()
            .try_into()
            .map_err(|_| Error::corrupt(what_msg(dir, &id)))?;
        events.push((rec.created_at, put_event(dir, &id, &rec, digest)));
    }
    if !events.is_empty() {
        let n = events.len();
        let (blocks, next_seq, prev) = audit_blocks_from(head.next_seq, head.prev, events);
        for (k, v) in blocks {
            db.insert(k, v)?;
        }
        head.next_seq = next_seq;
        head.prev = prev;
        tracing::info!(records = n, "completed a put group cut short by a crash");
    }
    sync_log(db, sled_dir)?;
    Ok(next_intent)
}

#[allow(clippy::type_complexity)]
fn audit_blocks_from(
    mut seq: u64,
    mut prev: [u8; 32],
    events: Vec<(i64, AuditEvent)>,
) -> (Vec<(Vec<u8>, Vec<u8>)>, u64, [u8; 32]) {
    let mut out = Vec::with_capacity(events.len().div_ceil(AUDIT_BLOCK_MAX));
    let mut events = events.into_iter().peekable();
    while events.peek().is_some() {
        let chunk: Vec<audit::TimedEvent> = events
            .by_ref()
            .take(AUDIT_BLOCK_MAX)
            .map(|(at, event)| audit::TimedEvent { at, event })
            .collect();
        let n = chunk.len() as u64;
        let (v, h) = audit::encode_block(seq, prev, chunk);
        out.push((audit::audit_key(seq).to_vec(), v));
        seq += n;
        prev = h;
    }
    (out, seq, prev)
}

/// The id of an expiry list: the time part of its first message id (so that
/// a sweep visits records and index entries in id order, not at random: 2x
/// faster at 1,000,000 records), then a number unique to the list.
/// A group-commit service thread: takes roles while the store lives.
fn serve(weak: std::sync::Weak<Store>) {
    loop {
        let Some(store) = weak.upgrade() else {
            return;
        };
        let served = store
            .gc
            .serve_once(&store.db, &|| store.segs.sync_dirty(), &|jobs| {
                store.apply_puts(jobs)
            });
        match served {
            Served::Worked => {}
            Served::Idle(due) => {
                drop(store);
                // Unparked when work arrives, or when a deferred sync is
                // due; the timeout notices a dropped store.
                let idle = std::time::Duration::from_millis(200);
                std::thread::park_timeout(due.map_or(idle, |d| d.min(idle)));
            }
            Served::Stop => {
                store.gc.servers_gone();
                return;
            }
        }
    }
}

fn list_id(first: &MessageId, unique: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&first.0[..8]);
    b[8..].copy_from_slice(&unique.to_be_bytes());
    b
}

fn rand_id() -> [u8; 16] {
    let mut b = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut b);
    b
}

fn purge_list(ids: &[(Direction, MessageId)]) -> Vec<u8> {
    let mut v = Vec::with_capacity(ids.len() * 17);
    for (d, m) in ids {
        v.push(d.byte());
        v.extend_from_slice(&m.0);
    }
    v
}

use std::os::unix::fs::DirBuilderExt;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ManualClock;

    fn open(dir: &Path) -> Store {
        let mut c = StoreConfig::new(dir, MasterKey::from_bytes([1u8; 32]));
        c.clock = Arc::new(ManualClock::new(1_750_000_000));
        c.cache_bytes = 8 << 20;
        Store::open(c).unwrap()
    }

    #[test]
    fn a_record_group_cut_short_by_a_crash_is_completed_at_open() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let s = open(tmp.path());
            s.records_apply(vec![(b"case/1".to_vec(), Some(b"opened".to_vec()))])
                .unwrap();
            s.records_apply(vec![
                (b"case/2".to_vec(), Some(b"opened".to_vec())),
                (b"ledger".to_vec(), Some(b"v1".to_vec())),
            ])
            .unwrap();
            // Groups leave no intent behind.
            assert!(s.db.scan_prefix([P_RECORD_INTENT]).next().is_none());
            // As if the process died after the intent of the next group
            // and its first change.
            let mut b = Batch::default();
            b.insert([&[P_RECORD][..], b"case/1"].concat(), b"answered");
            b.remove([&[P_RECORD][..], b"case/2"].concat());
            b.insert([&[P_RECORD][..], b"ledger"].concat(), b"v2");
            s.db.insert(record_intent_key(7), wal::encode(&b.ops)).unwrap();
            s.db.insert([&[P_RECORD][..], b"case/1"].concat(), &b"answered"[..])
                .unwrap();
            s.db.flush().unwrap();
        }
        let s = open(tmp.path());
        let all: Vec<(Vec<u8>, Vec<u8>)> = s.records(b"").map(|r| r.unwrap()).collect();
        assert_eq!(
            all,
            vec![
                (b"case/1".to_vec(), b"answered".to_vec()),
                (b"ledger".to_vec(), b"v2".to_vec()),
            ]
        );
        assert!(s.db.scan_prefix([P_RECORD_INTENT]).next().is_none());
        // Later groups go on as before.
        s.records_apply(vec![
            (b"case/1".to_vec(), None),
            (b"ledger".to_vec(), Some(b"v3".to_vec())),
        ])
        .unwrap();
        s.sync().unwrap();
        drop(s);
        let s = open(tmp.path());
        let all: Vec<(Vec<u8>, Vec<u8>)> = s.records(b"").map(|r| r.unwrap()).collect();
        assert_eq!(all, vec![(b"ledger".to_vec(), b"v3".to_vec())]);
    }

    #[test]
    fn intent_records_left_by_a_crash_are_replayed_at_open() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let s = open(tmp.path());
            s.db.insert(b"Zgone", b"old").unwrap();
            // As if the process died after writing the intent record and
            // before applying it.
            let mut b = Batch::default();
            b.insert(b"Zkey", b"value");
            b.remove(b"Zgone");
            s.db.insert(wal::intent_key(41), wal::encode(&b.ops)).unwrap();
            s.db.flush().unwrap();
        }
        let s = open(tmp.path());
        assert_eq!(s.db.get(b"Zkey").unwrap().unwrap().as_ref(), b"value");
        assert!(s.db.get(b"Zgone").unwrap().is_none());
        assert!(s.db.scan_prefix([wal::P_INTENT]).next().is_none());
        // New groups continue after the replayed one, and are cleaned up.
        s.audit_append(&AuditEvent::new(AuditKind::ConfigChanged))
            .unwrap();
        s.sync().unwrap();
        assert!(s.db.scan_prefix([wal::P_INTENT]).next().is_none());
        s.audit_verify().unwrap();
    }

    #[test]
    fn a_put_group_cut_short_is_completed_at_open() {
        let tmp = tempfile::tempdir().unwrap();
        let msg = |ms: u64| NewMessage {
            id: MessageId::new_v7(ms),
            peer: "by.mvd".into(),
            agreement: "kz-by-2019".into(),
            kind: "request".into(),
            case: None,
            payload: vec![7u8; 100],
            digest: None,
        };
        let (a, b) = (msg(1_750_000_000_001), msg(1_750_000_000_002));
        let entries = {
            let s = open(tmp.path());
            s.put_inbox(&a).unwrap();
            s.put_inbox(&b).unwrap();
            let chain = s.audit_verify().unwrap();
            // As if the process died after b's record was written and before
            // its index entries and its group's audit block were.
            let last = s.db.scan_prefix([P_AUDIT]).next_back().unwrap().unwrap().0;
            s.db.remove(last).unwrap();
            s.db.remove(state_key(Direction::Inbound, MessageState::New, "by.mvd", &b.id))
                .unwrap();
            s.db.flush().unwrap();
            chain.entries
        };
        let s = open(tmp.path());
        assert_eq!(s.audit_verify().unwrap().entries, entries);
        let listed: Vec<MessageId> = s.inbox_list(None, 10).unwrap().iter().map(|m| m.id).collect();
        assert_eq!(listed, vec![a.id, b.id]);
        assert_eq!(
            s.list_by_peer(Direction::Inbound, "by.mvd", None, 10)
                .unwrap()
                .len(),
            2
        );
        let last = s.audit_list(entries - 1, 10).unwrap();
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].event.message, Some(b.id));
        assert_eq!(s.get(Direction::Inbound, &b.id).unwrap().payload, b.payload);
    }

    #[test]
    fn audit_blocks_of_several_events_verify_and_break() {
        let tmp = tempfile::tempdir().unwrap();
        let s = open(tmp.path());
        s.audit_append(&AuditEvent::new(AuditKind::ConfigChanged))
            .unwrap();
        let events: Vec<AuditEvent> = (0..3)
            .map(|i| AuditEvent::new(AuditKind::ConfigChanged).count(i))
            .collect();
        {
            let mut head = s.head();
            assert_eq!(s.apply(&mut head, Batch::default(), &events, 1).unwrap(), 1);
        }
        s.audit_append(&AuditEvent::new(AuditKind::ConfigChanged))
            .unwrap();
        assert_eq!(s.audit_verify().unwrap().entries, 5);
        let listed = s.audit_list(2, 10).unwrap();
        let seqs: Vec<u64> = listed.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![2, 3, 4]);
        assert_eq!(listed[0].event.count, Some(1));
        assert_eq!(listed[0].hash, listed[1].hash); // one block
                                                    // Tampering with the block of events 1..=3 is found at event 1.
        let key = audit::audit_key(1);
        let orig = s.db.get(key).unwrap().unwrap();
        let mut v = orig.to_vec();
        let last = v.len() - 1;
        v[last] ^= 1;
        s.db.insert(key, v).unwrap();
        assert!(matches!(
            s.audit_verify(),
            Err(Error::AuditBroken(audit::AuditBreak {
                index: 1,
                kind: audit::BreakKind::Modified
            }))
        ));
        s.db.remove(key).unwrap();
        assert!(matches!(
            s.audit_verify(),
            Err(Error::AuditBroken(audit::AuditBreak {
                index: 1,
                kind: audit::BreakKind::Deleted
            }))
        ));
        s.db.insert(key, orig).unwrap();
        assert_eq!(s.audit_verify().unwrap().entries, 5);
    }

    #[test]
    fn intent_encoding_round_trips_and_rejects_garbage() {
        let ops = vec![
            (b"a".to_vec(), Some(b"1".to_vec())),
            (b"bb".to_vec(), None),
            (Vec::new(), Some(Vec::new())),
        ];
        assert_eq!(wal::decode(&wal::encode(&ops)).unwrap(), ops);
        assert!(wal::decode(&[0, 0, 0, 9, 1]).is_err());
        assert!(wal::decode(&[0, 0, 0, 0, 7]).is_err());
    }
}
