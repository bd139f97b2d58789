//! Key material: the master key, data keys, and the keyring file.
//!
//! The keyring holds one data key per expiry hour ("bucket") and one per open
//! request case. It lives outside sled, in one small file sealed as a whole
//! under the master key with XChaCha20-Poly1305, and is rewritten atomically:
//! write a temporary file, fsync it, rename it over the old one, fsync the
//! directory. Destroying a key is rewriting the keyring without it.
//! Rotating the master key is rewriting it, the same way, sealed under the
//! new key ([`rekey_keyring`] offline, `Store::rotate_master_key` online).
//!
//! Message payloads are sealed with AES-256-GCM ([`PayloadSeal`]) under a
//! key derived from their data key (so that no key serves two
//! algorithms), with a random 96-bit nonce: an hour's key seals at most
//! that hour's messages, far below the 2^32 seals per key that random
//! nonces allow. Payloads stored before it came in are XChaCha20-Poly1305
//! under the data key itself, and still open: the record says which. (ring
//! keeps the AES key schedule on the stack of the sealing call and does
//! not wipe it; the derived key bytes are wiped, and the data key itself
//! stays in the keyring, in memory, for its hour anyway.) Receipts, blobs
//! and the keyring stay XChaCha20-Poly1305.
//!
//! Whoever has the keyring open holds an exclusive `flock` on `<keyring>.lock`,
//! so an offline re-key cannot race a running store (whose next rewrite
//! would otherwise undo it, or lose a key it just created). A `<keyring>.tmp`
//! left by an interrupted rewrite is removed at open: the rename never
//! happened, so the keyring in place is the last complete one.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, AeadInPlace, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result};
use crate::ids::CaseId;

const KEYRING_MAGIC: &[u8; 8] = b"KVKEYRG1";
const NONCE_LEN: usize = 24;
/// Poly1305 tag length.
const TAG_LEN: usize = 16;
/// AES-256-GCM nonce length.
const GCM_NONCE_LEN: usize = 12;
/// AES-256-GCM tag length.
const GCM_TAG_LEN: usize = 16;

/// How a message payload is sealed; recorded with it (its byte), so that
/// payloads sealed before a change still open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PayloadSeal {
    /// nonce (24) || ciphertext || tag (16), under the data key.
    XChaCha20Poly1305,
    /// nonce (12) || ciphertext || tag (16), under [`gcm_key`] of the data key.
    Aes256Gcm,
}

impl PayloadSeal {
    /// What new payloads are sealed with.
    pub(crate) const CURRENT: PayloadSeal = PayloadSeal::Aes256Gcm;

    pub(crate) fn byte(self) -> u8 {
        match self {
            PayloadSeal::XChaCha20Poly1305 => 0,
            PayloadSeal::Aes256Gcm => 1,
        }
    }

    pub(crate) fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(PayloadSeal::XChaCha20Poly1305),
            1 => Some(PayloadSeal::Aes256Gcm),
            _ => None,
        }
    }
}
/// Largest keyring file accepted (a bound before allocation).
const KEYRING_MAX: u64 = 64 << 20;

/// The 32-byte master key that seals the keyring. Zeroized on drop; its
/// `Debug` shows nothing of it.
#[derive(Clone)]
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    /// A master key from raw bytes (tests, or a key obtained elsewhere).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        MasterKey(Zeroizing::new(bytes))
    }

    /// A fresh random master key from the OS.
    pub fn generate() -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut k[..]);
        MasterKey(k)
    }

    /// Generate a master key and write it to `path` as hex text, in a new file
    /// created with mode 0600 (an existing file is never overwritten).
    pub fn generate_to_file(path: &Path) -> Result<Self> {
        let key = Self::generate();
        let mut text = Zeroizing::new(hex::encode(&key.0[..]));
        text.push('\n');
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io(path, e))?;
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
        Ok(key)
    }

    /// Read a master key file: 32 raw bytes, or 64 hex characters, or base64 of
    /// 32 bytes (surrounding whitespace ignored). The file must not be readable
    /// or writable by group or others (mode 0600 or stricter), else it is refused.
    pub fn from_file(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(Error::MasterKey {
                path: path.into(),
                reason: "file is accessible by group or others; chmod 0600 it",
            });
        }
        Self::read_key_file(path)
    }

    /// Read the master key from a systemd credential:
    /// `$CREDENTIALS_DIRECTORY/<name>` (set by `LoadCredential=` or
    /// `LoadCredentialEncrypted=`, TPM-backed where the host has one).
    pub fn from_systemd_credential(name: &str) -> Result<Self> {
        let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or(Error::MasterKey {
            path: PathBuf::from(name),
            reason: "CREDENTIALS_DIRECTORY is not set (no systemd credentials for this service)",
        })?;
        if name.is_empty() || name.contains('/') {
            return Err(Error::Invalid("credential name must be a plain file name".into()));
        }
        Self::from_file(&Path::new(&dir).join(name))
    }

    fn read_key_file(path: &Path) -> Result<Self> {
        let raw = Zeroizing::new(std::fs::read(path).map_err(|e| Error::io(path, e))?);
        let bad = |reason| Error::MasterKey {
            path: path.into(),
            reason,
        };
        let mut key = Zeroizing::new([0u8; 32]);
        if raw.len() == 32 {
            key.copy_from_slice(&raw);
            return Ok(MasterKey(key));
        }
        let text = std::str::from_utf8(&raw)
            .map_err(|_| bad("not 32 raw bytes, nor hex or base64 text"))?
            .trim();
        if text.len() == 64 && hex::decode_to_slice(text, &mut key[..]).is_ok() {
            return Ok(MasterKey(key));
        }
        use base64::Engine;
        let decoded = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| bad("not 32 raw bytes, nor 64 hex characters, nor base64"))?,
        );
        if decoded.len() != 32 {
            return Err(bad("key must be exactly 32 bytes"));
        }
        key.copy_from_slice(&decoded);
        Ok(MasterKey(key))
    }
}

/// A 32-byte data key (one per expiry hour or per case). Zeroized on drop; its
/// `Debug` shows nothing of it.
#[derive(Clone)]
pub struct DataKey(Zeroizing<[u8; 32]>);

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

impl DataKey {
    fn generate() -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut k[..]);
        DataKey(k)
    }

    /// The key of a message that belongs to a case: derived from both the
    /// bucket key and the case key, so destroying either destroys it.
    pub(crate) fn derive_with_case(&self, case: &DataKey) -> DataKey {
        let mut h = Sha256::new();
        h.update(b"konvert-store v1 message key\0");
        h.update(&self.0[..]);
        h.update(&case.0[..]);
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(&h.finalize());
        DataKey(out)
    }

    /// Seal `plain` with a random nonce; output is nonce || ciphertext.
    pub(crate) fn seal(&self, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        seal_with(&self.0, aad, plain)
    }

    /// Open what [`DataKey::seal`] produced; `None` if it does not authenticate.
    pub(crate) fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        open_with(&self.0, aad, sealed)
    }

    /// Seal a message payload with [`PayloadSeal::CURRENT`].
    pub(crate) fn seal_payload(&self, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        seal_gcm(&self.0, aad, plain)
    }

    /// Open a payload sealed with `how`; `None` if it does not authenticate.
    pub(crate) fn open_payload(&self, how: PayloadSeal, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        match how {
            PayloadSeal::XChaCha20Poly1305 => open_with(&self.0, aad, sealed),
            PayloadSeal::Aes256Gcm => open_gcm(&self.0, aad, sealed),
        }
    }
}

/// The AES-256-GCM key of a data key: SHA-256 of a label and the data key.
fn gcm_key(key: &[u8; 32]) -> Option<ring::aead::LessSafeKey> {
    let mut h = Sha256::new();
    h.update(b"konvert-store v1 payload aes-256-gcm\0");
    h.update(&key[..]);
    let k = Zeroizing::new(<[u8; 32]>::from(h.finalize()));
    let unbound = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &k[..]).ok()?;
    Some(ring::aead::LessSafeKey::new(unbound))
}

fn seal_gcm(key: &[u8; 32], aad: &[u8], plain: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; GCM_NONCE_LEN];
    rand::thread_rng().fill_bytes(&mut nonce);
    // In place in the one output buffer, sized so that it never
    // reallocates (which would leave a copy of the plaintext behind).
    let mut out = Vec::with_capacity(GCM_NONCE_LEN + plain.len() + GCM_TAG_LEN);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plain);
    let sealed = gcm_key(key).and_then(|k| {
        k.seal_in_place_separate_tag(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            ring::aead::Aad::from(aad),
            &mut out[GCM_NONCE_LEN..],
        )
        .ok()
    });
    match sealed {
        Some(tag) => out.extend_from_slice(tag.as_ref()),
        // (Only a text beyond GCM's 64 GiB limit fails.)
        None => {
            out.zeroize();
            out.clear();
        }
    }
    out
}

fn open_gcm(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < GCM_NONCE_LEN + GCM_TAG_LEN {
        return None;
    }
    let (nonce, ct) = sealed.split_at(GCM_NONCE_LEN);
    let nonce = ring::aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
    // Wiped if it does not authenticate (ring leaves what it decrypted
    // in the buffer then).
    let mut buf = Zeroizing::new(ct.to_vec());
    let len = gcm_key(key)?
        .open_in_place(nonce, ring::aead::Aad::from(aad), &mut buf)
        .ok()?
        .len();
    let mut out = std::mem::take(&mut *buf);
    out.truncate(len);
    Some(out)
}

fn seal_with(key: &[u8; 32], aad: &[u8], plain: &[u8]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(key.into());
    let mut nonce = [0u8; NONCE_LEN];
    rand::thread_rng().fill_bytes(&mut nonce);
    // Encrypted in place in the one output buffer (sized for nonce, text
    // and tag, so it never reallocates and leaves no copy of the plaintext
    // behind): for a 1 MiB payload, one allocation and one copy fewer than
    // `Aead::encrypt` and appending its result.
    let mut out = Vec::with_capacity(NONCE_LEN + plain.len() + TAG_LEN);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plain);
    // Encryption with a valid key and in-memory buffers cannot fail (only
    // a text beyond XChaCha20's 256 GiB limit would).
    match cipher.encrypt_in_place_detached(XNonce::from_slice(&nonce), aad, &mut out[NONCE_LEN..]) {
        Ok(tag) => out.extend_from_slice(&tag),
        Err(_) => {
            out.zeroize();
            out.clear();
        }
    }
    out
}

fn open_with(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return None;
    }
    let cipher = XChaCha20Poly1305::new(key.into());
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    cipher
        .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
        .ok()
}

/// What the keyring file holds, in the clear only in memory.
#[derive(Serialize, Deserialize, Default)]
struct KeyringFile {
    generation: u64,
    buckets: Vec<(i64, serde_bytes::ByteBuf)>,
    cases: Vec<(serde_bytes::ByteBuf, serde_bytes::ByteBuf)>,
}

impl Drop for KeyringFile {
    fn drop(&mut self) {
        for (_, k) in &mut self.buckets {
            k.zeroize();
        }
        for (_, k) in &mut self.cases {
            k.zeroize();
        }
    }
}

/// Which key buckets and case keys a keyring holds (no key material).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyringSummary {
    /// How many times the keyring has been rewritten.
    pub generation: u64,
    /// Expiry hours (unix seconds / 3600) that have a data key.
    pub bucket_hours: Vec<i64>,
    /// Cases that have a key.
    pub cases: Vec<CaseId>,
}

/// The keyring in memory, bound to its file.
pub(crate) struct Keyring {
    path: PathBuf,
    master: MasterKey,
    generation: u64,
    pub(crate) buckets: BTreeMap<i64, DataKey>,
    pub(crate) cases: BTreeMap<CaseId, DataKey>,
    /// The exclusive lock on `<keyring>.lock`, held while the keyring is open.
    _lock: File,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("path", &self.path)
            .field("generation", &self.generation)
            .field("buckets", &self.buckets.len())
            .field("cases", &self.cases.len())
            .finish()
    }
}

impl Keyring {
    /// Open the keyring at `path`, or start an empty one (written at once) if
    /// there is no file.
    pub(crate) fn open(path: &Path, master: MasterKey) -> Result<Self> {
        Self::load(path, master, true)
    }

    /// Open the keyring at `path`: take its lock, remove a temporary file
    /// left by an interrupted rewrite, read it; if there is no file, start an
    /// empty one when `create`, else fail.
    fn load(path: &Path, master: MasterKey, create: bool) -> Result<Self> {
        let lock = lock_keyring(path)?;
        remove_leftover_tmp(path)?;
        let mut kr = Keyring {
            path: path.into(),
            master,
            generation: 0,
            buckets: BTreeMap::new(),
            cases: BTreeMap::new(),
            _lock: lock,
        };
        match File::open(path) {
            Ok(_) => {
                let file = read_keyring_file(path, &kr.master)?;
                kr.generation = file.generation;
                for (h, k) in &file.buckets {
                    kr.buckets.insert(*h, key_from(k, path)?);
                }
                for (c, k) in &file.cases {
                    let id: [u8; 16] = c
                        .as_slice()
                        .try_into()
                        .map_err(|_| Error::corrupt(format!("keyring {}: case id length", path.display())))?;
                    kr.cases.insert(CaseId(id), key_from(k, path)?);
                }
            }
            Err(e) if create && e.kind() == std::io::ErrorKind::NotFound => kr.persist()?,
            Err(e) => return Err(Error::io(path, e)),
        }
        Ok(kr)
    }

    /// Re-seal the keyring under `new` (atomic rewrite: temporary file,
    /// fsync, rename, fsync of the directory). The data keys are unchanged.
    /// On failure the keyring keeps whichever master key seals the file on
    /// disk now (the rename may have happened before the failure).
    pub(crate) fn rekey(&mut self, new: MasterKey) -> Result<()> {
        let old = std::mem::replace(&mut self.master, new);
        if let Err(e) = self.persist() {
            if read_keyring_file(&self.path, &self.master).is_err() {
                self.master = old;
            }
            return Err(e);
        }
        Ok(())
    }

    /// How many times the keyring has been rewritten.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    pub(crate) fn summary(&self) -> KeyringSummary {
        KeyringSummary {
            generation: self.generation,
            bucket_hours: self.buckets.keys().copied().collect(),
            cases: self.cases.keys().copied().collect(),
        }
    }

    /// Add a fresh bucket key (not yet persisted).
    pub(crate) fn new_bucket(&mut self, hour: i64) -> DataKey {
        self.buckets.entry(hour).or_insert_with(DataKey::generate).clone()
    }

    /// Add a fresh case key (not yet persisted).
    pub(crate) fn new_case(&mut self, case: CaseId) -> DataKey {
        self.cases.entry(case).or_insert_with(DataKey::generate).clone()
    }

    /// Rewrite the keyring file atomically: temp file, fsync, rename, fsync dir.
    pub(crate) fn persist(&mut self) -> Result<()> {
        self.generation += 1;
        let mut file = KeyringFile {
            generation: self.generation,
            buckets: Vec::new(),
            cases: Vec::new(),
        };
        for (h, k) in &self.buckets {
            file.buckets.push((*h, serde_bytes::ByteBuf::from(k.0.to_vec())));
        }
        for (c, k) in &self.cases {
            file.cases.push((
                serde_bytes::ByteBuf::from(c.0.to_vec()),
                serde_bytes::ByteBuf::from(k.0.to_vec()),
            ));
        }
        let mut plain = Zeroizing::new(Vec::new());
        ciborium::into_writer(&file, &mut *plain).map_err(|_| Error::corrupt("keyring encoding"))?;
        let sealed = seal_with(&self.master.0, KEYRING_MAGIC, &plain);
        let mut bytes = Vec::with_capacity(KEYRING_MAGIC.len() + sealed.len());
        bytes.extend_from_slice(KEYRING_MAGIC);
        bytes.extend_from_slice(&sealed);
        write_atomic(&self.path, &bytes)
    }
}

fn key_from(bytes: &[u8], path: &Path) -> Result<DataKey> {
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| Error::corrupt(format!("keyring {}: key length", path.display())))?;
    Ok(DataKey(Zeroizing::new(arr)))
}

fn read_keyring_file(path: &Path, master: &MasterKey) -> Result<KeyringFile> {
    let len = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
    if len > KEYRING_MAX {
        return Err(Error::corrupt(format!("keyring {} too large", path.display())));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let body = bytes
        .strip_prefix(KEYRING_MAGIC.as_slice())
        .ok_or_else(|| Error::corrupt(format!("keyring {}: not a keyring file", path.display())))?;
    let plain = Zeroizing::new(
        open_with(&master.0, KEYRING_MAGIC, body).ok_or_else(|| Error::KeyringAuth { path: path.into() })?,
    );
    ciborium::from_reader(plain.as_slice())
        .map_err(|_| Error::corrupt(format!("keyring {}: contents", path.display())))
}

/// Read which keys a keyring file holds (for operators and tests), without
/// opening a store.
pub fn read_keyring_summary(path: &Path, master: &MasterKey) -> Result<KeyringSummary> {
    let file = read_keyring_file(path, master)?;
    let mut cases = Vec::new();
    for (c, _) in &file.cases {
        let id: [u8; 16] = c
            .as_slice()
            .try_into()
            .map_err(|_| Error::corrupt("keyring case id length"))?;
        cases.push(CaseId(id));
    }
    Ok(KeyringSummary {
        generation: file.generation,
        bucket_hours: file.buckets.iter().map(|(h, _)| *h).collect(),
        cases,
    })
}

/// Re-seal the keyring file at `path` under the master key `new`, offline
/// (the store that uses it must be closed: the keyring's lock is taken, and
/// `Error::Locked` returned if a running store holds it). The data keys are
/// unchanged, so every message stays readable with the new key; the old key
/// no longer opens the keyring (`Error::KeyringAuth`).
///
/// The rewrite is atomic: a crash leaves the keyring under the old key or
/// under the new one, never neither, and a temporary file left behind is
/// removed at the next open. Running it again after a crash is safe: a
/// keyring that `old` does not open but `new` does is already re-keyed and
/// is left as it is. A keyring that neither opens is `Error::KeyringAuth`;
/// a missing one is `Error::Io` (this never creates a keyring).
pub fn rekey_keyring(path: &Path, old: &MasterKey, new: &MasterKey) -> Result<KeyringSummary> {
    std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let mut kr = match Keyring::load(path, old.clone(), false) {
        Ok(kr) => kr,
        Err(Error::KeyringAuth { path: p }) => {
            return match Keyring::load(path, new.clone(), false) {
                Ok(kr) => {
                    tracing::info!(keyring = %path.display(), "keyring is already sealed under the new master key");
                    Ok(kr.summary())
                }
                Err(_) => Err(Error::KeyringAuth { path: p }),
            };
        }
        Err(e) => return Err(e),
    };
    kr.rekey(new.clone())?;
    tracing::info!(keyring = %path.display(), generation = kr.generation, "keyring re-sealed under a new master key");
    Ok(kr.summary())
}

/// `<path><suffix>`.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// Take the exclusive lock of the keyring at `path` (`<path>.lock`, created
/// mode 0600); `Error::Locked` if another open keyring holds it.
fn lock_keyring(path: &Path) -> Result<File> {
    let lock_path = with_suffix(path, ".lock");
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|e| Error::io(&lock_path, e))?;
    // A store of this process that was just dropped may still be closing in
    // one of its commit threads: wait a little before refusing.
    let mut tries = 0;
    while fs2::FileExt::try_lock_exclusive(&lock).is_err() {
        tries += 1;
        if tries > 50 {
            return Err(Error::Locked { dir: lock_path });
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(lock)
}

/// Remove `<path>.tmp` left by a rewrite that a crash interrupted before its
/// rename: the keyring in place is the last complete one. (It is sealed, so
/// its blocks hold nothing readable without the master key it was sealed
/// under.)
fn remove_leftover_tmp(path: &Path) -> Result<()> {
    let tmp = with_suffix(path, ".tmp");
    match std::fs::remove_file(&tmp) {
        Ok(()) => {
            tracing::info!(file = %tmp.display(), "removed a keyring rewrite interrupted by a crash");
            sync_dir(parent_dir(path))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(&tmp, e)),
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Write `bytes` to `path` atomically and durably: write `path.tmp`, fsync,
/// rename over `path`, fsync the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = with_suffix(path, ".tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    sync_dir(parent_dir(path))
}

/// fsync a directory (makes renames and new files in it durable).
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sealed_payloads_keep_their_format_and_open_only_unchanged() {
        let key = [9u8; 32];
        let plain = vec![0x5a_u8; 70_000];
        let sealed = seal_with(&key, b"aad", &plain);
        assert_eq!(sealed.len(), NONCE_LEN + plain.len() + TAG_LEN);
        assert_eq!(open_with(&key, b"aad", &sealed).unwrap(), plain);
        // The layout is nonce || ciphertext || tag, as `Aead::encrypt`
        // makes it: what earlier versions stored opens the same way.
        let cipher = XChaCha20Poly1305::new((&key).into());
        let (nonce, _) = sealed.split_at(NONCE_LEN);
        let earlier = cipher
            .encrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: &plain,
                    aad: b"aad",
                },
            )
            .unwrap();
        assert_eq!(&sealed[NONCE_LEN..], &earlier[..]);
        // Another AAD, key, or a flipped bit: nothing.
        assert!(open_with(&key, b"other", &sealed).is_none());
        assert!(open_with(&[8u8; 32], b"aad", &sealed).is_none());
        for at in [0, NONCE_LEN, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[at] ^= 1;
            assert!(open_with(&key, b"aad", &bad).is_none(), "{at}");
        }
        assert!(open_with(&key, b"aad", &sealed[..NONCE_LEN + TAG_LEN - 1]).is_none());
        // The empty text seals too.
        assert_eq!(open_with(&key, b"", &seal_with(&key, b"", b"")).unwrap(), b"");
    }

    #[test]
    fn payloads_seal_with_aes_gcm_and_older_ones_still_open() {
        let k = DataKey::generate();
        let plain = vec![0xa5_u8; 300_000];
        let sealed = k.seal_payload(b"aad", &plain);
        assert_eq!(sealed.len(), GCM_NONCE_LEN + plain.len() + GCM_TAG_LEN);
        assert_ne!(&sealed[GCM_NONCE_LEN..GCM_NONCE_LEN + 64], &plain[..64]);
        assert_eq!(
            k.open_payload(PayloadSeal::Aes256Gcm, b"aad", &sealed).unwrap(),
            plain
        );
        // Fresh nonces: the same text seals differently each time.
        assert_ne!(k.seal_payload(b"aad", &plain), sealed);
        // Not under the data key itself: the GCM key is derived from it.
        let raw = ring::aead::LessSafeKey::new(
            ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &k.0[..]).unwrap(),
        );
        let mut ct = sealed[GCM_NONCE_LEN..].to_vec();
        let nonce = ring::aead::Nonce::try_assume_unique_for_key(&sealed[..GCM_NONCE_LEN]).unwrap();
        assert!(raw
            .open_in_place(nonce, ring::aead::Aad::from(b"aad"), &mut ct)
            .is_err());
        // Another AAD, another key, the other algorithm, a flipped bit, a cut: nothing.
        assert!(k
            .open_payload(PayloadSeal::Aes256Gcm, b"other", &sealed)
            .is_none());
        assert!(DataKey::generate()
            .open_payload(PayloadSeal::Aes256Gcm, b"aad", &sealed)
            .is_none());
        assert!(k
            .open_payload(PayloadSeal::XChaCha20Poly1305, b"aad", &sealed)
            .is_none());
        for at in [0, GCM_NONCE_LEN, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[at] ^= 1;
            assert!(
                k.open_payload(PayloadSeal::Aes256Gcm, b"aad", &bad).is_none(),
                "{at}"
            );
        }
        assert!(k
            .open_payload(
                PayloadSeal::Aes256Gcm,
                b"aad",
                &sealed[..GCM_NONCE_LEN + GCM_TAG_LEN - 1]
            )
            .is_none());
        // A payload sealed the earlier way opens as such.
        let older = k.seal(b"aad", b"stored last year");
        assert_eq!(
            k.open_payload(PayloadSeal::XChaCha20Poly1305, b"aad", &older)
                .unwrap(),
            b"stored last year"
        );
        assert!(k.open_payload(PayloadSeal::Aes256Gcm, b"aad", &older).is_none());
        // Bytes: 0 for what records without one mean, 1 for AES-GCM, nothing else.
        for how in [PayloadSeal::XChaCha20Poly1305, PayloadSeal::Aes256Gcm] {
            assert_eq!(PayloadSeal::from_byte(how.byte()), Some(how));
        }
        assert_eq!(PayloadSeal::XChaCha20Poly1305.byte(), 0);
        assert_eq!(PayloadSeal::from_byte(2), None);
    }
}
