//! Large parts of a payload (attachments, envelopes) written and read as
//! streams, in bounded memory.
//!
//! A message's payload is sealed in one piece into its hour's segment file
//! ([`crate::segments`]): fine for records and small attachments, not for a
//! 256 MiB one. A *blob* is written through a [`BlobWriter`] in chunks of
//! [`CHUNK`] bytes, each sealed with XChaCha20-Poly1305 in the STREAM
//! construction (`aead::stream`, big-endian 32-bit chunk counter and a
//! last-chunk flag: chunks cannot be reordered, dropped or truncated
//! unnoticed), under a random key of its own. [`BlobWriter::finish`]
//! returns a [`BlobRef`]: the blob's id, length, SHA-256 and key; the file
//! and its directory are `fdatasync`ed by the group commit of the next put
//! group, before its records (so one sync serves many blobs, and a record
//! never reaches the disk before the blob it refers to). The caller puts the `BlobRef` *into the payload of the
//! message* it belongs to, so the blob's key is sealed under that message's
//! data key (its expiry hour's, and its case's): destroying the hour key or
//! the case key makes the blob unreadable at once, exactly like the payload.
//!
//! Files live in `payloads/<hour>.blobs/<id>`, where `<hour>` is the hour
//! after the expiry hour a message written now would get; the directory is
//! removed with the payload files of its hour (a little after the data became
//! unreadable). A blob whose message was never stored (a crash, a refusal)
//! is removed with its directory too, or at once with [`Store::blob_discard`].
//!
//! [`Store::blob_discard`]: crate::Store::blob_discard

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::stream::{DecryptorBE32, EncryptorBE32};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result};

/// Plaintext bytes per sealed chunk.
pub const CHUNK: usize = 64 * 1024;
const TAG: usize = 16;
const MAGIC: &[u8; 16] = b"konvert blob v1\0";
/// STREAM nonce prefix: the XChaCha20 nonce (24 bytes) less the 5-byte counter and flag.
const NONCE_PREFIX: usize = 19;
const HEADER: usize = MAGIC.len() + NONCE_PREFIX;

/// A blob's key. Zeroized on drop; never printed.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlobKey(#[serde(with = "serde_bytes")] [u8; 32]);

impl Drop for BlobKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for BlobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlobKey(<redacted>)")
    }
}

/// What the holder of a blob needs to read it: keep it inside the sealed
/// payload of the message the blob belongs to (it carries the blob's key).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlobRef {
    /// The blob's id (its file name).
    #[serde(with = "serde_bytes")]
    pub id: [u8; 16],
    /// The hour whose payload directory holds the file.
    pub hour: i64,
    /// Plaintext length in bytes.
    pub len: u64,
    /// SHA-256 of the plaintext.
    #[serde(with = "serde_bytes")]
    pub sha256: [u8; 32],
    /// The blob's key.
    pub key: BlobKey,
}

pub(crate) fn dir_name(hour: i64) -> String {
    format!("{hour}.blobs")
}

pub(crate) fn path_of(payloads: &Path, hour: i64, id: &[u8; 16]) -> PathBuf {
    payloads.join(dir_name(hour)).join(hex::encode(id))
}

/// Writes one blob; see the module documentation. Memory: one chunk.
pub struct BlobWriter {
    file: File,
    /// Where `finish` leaves the file to be synced with the next put group
    /// (`None`: the store does not sync, see `SyncMode`).
    syncer: Option<std::sync::Arc<crate::segments::Segments>>,
    path: PathBuf,
    id: [u8; 16],
    hour: i64,
    key: BlobKey,
    enc: Option<EncryptorBE32<XChaCha20Poly1305>>,
    /// Plaintext not yet sealed (at most one chunk is held back: the last
    /// chunk is sealed differently, so a full chunk waits for more data).
    buf: Vec<u8>,
    len: u64,
    sha: Sha256,
    /// A write failed: the blob is unusable.
    broken: bool,
}

impl fmt::Debug for BlobWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobWriter")
            .field("path", &self.path)
            .field("len", &self.len)
            .finish()
    }
}

impl BlobWriter {
    pub(crate) fn create(
        payloads: &Path,
        hour: i64,
        syncer: Option<std::sync::Arc<crate::segments::Segments>>,
    ) -> Result<BlobWriter> {
        let dir = payloads.join(dir_name(hour));
        if !dir.exists() {
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => crate::keys::sync_dir(payloads)?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io(&dir, e)),
            }
        }
        let mut id = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut id);
        let mut key = BlobKey([0; 32]);
        rand::thread_rng().fill_bytes(&mut key.0);
        let mut prefix = [0u8; NONCE_PREFIX];
        rand::thread_rng().fill_bytes(&mut prefix);
        let path = dir.join(hex::encode(id));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        file.write_all(MAGIC)
            .and_then(|()| file.write_all(&prefix))
            .map_err(|e| Error::io(&path, e))?;
        let cipher = XChaCha20Poly1305::new((&key.0).into());
        let enc = EncryptorBE32::from_aead(cipher, (&prefix).into());
        Ok(BlobWriter {
            file,
            syncer,
            path,
            id,
            hour,
            key,
            enc: Some(enc),
            buf: Vec::with_capacity(CHUNK + TAG),
            len: 0,
            sha: Sha256::new(),
            broken: false,
        })
    }

    /// Seals the full chunk at the front of `buf` and writes it.
    fn seal_chunk(&mut self) -> io::Result<()> {
        let Some(enc) = self.enc.as_mut() else {
            return Err(io::Error::other("blob already finished"));
        };
        let mut chunk = Zeroizing::new(self.buf.drain(..CHUNK).collect::<Vec<u8>>());
        enc.encrypt_next_in_place(&self.id, &mut *chunk)
            .map_err(|_| io::Error::other("blob chunk not sealed"))?;
        self.file.write_all(&chunk)
    }

    /// Seals the rest as the last chunk, `fdatasync`s the file and its
    /// directory, and returns the blob's reference.
    pub fn finish(mut self) -> Result<BlobRef> {
        if self.broken {
            return Err(Error::Invalid(format!(
                "blob {} was not written completely",
                hex::encode(self.id)
            )));
        }
        let enc = self
            .enc
            .take()
            .ok_or_else(|| Error::Invalid("blob already finished".into()))?;
        let mut last = Zeroizing::new(std::mem::take(&mut self.buf));
        let path = self.path.clone();
        enc.encrypt_last_in_place(&self.id, &mut *last)
            .map_err(|_| Error::io(&path, io::Error::other("last blob chunk not sealed")))?;
        self.file.write_all(&last).map_err(|e| Error::io(&path, e))?;
        // Durable with the group commit of the put that refers to it (its
        // preparer syncs the file and directory before the group's records).
        if let Some(segs) = &self.syncer {
            let f = self.file.try_clone().map_err(|e| Error::io(&path, e))?;
            segs.defer_blob_sync(path.clone(), f);
        }
        let sha256: [u8; 32] = std::mem::take(&mut self.sha).finalize().into();
        Ok(BlobRef {
            id: self.id,
            hour: self.hour,
            len: self.len,
            sha256,
            key: self.key.clone(),
        })
    }
}

impl Write for BlobWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.broken {
            return Err(io::Error::other("an earlier write to this blob failed"));
        }
        let mut rest = data;
        while !rest.is_empty() {
            let take = (CHUNK + 1 - self.buf.len().min(CHUNK)).min(rest.len());
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            // A full chunk is sealed once a byte after it shows it is not the last.
            if self.buf.len() > CHUNK {
                if let Err(e) = self.seal_chunk() {
                    self.broken = true;
                    return Err(e);
                }
            }
        }
        self.sha.update(data);
        self.len += data.len() as u64;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        self.buf.zeroize();
        // Dropped without `finish`: nothing refers to it.
        if self.enc.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Reads a blob back, checking every chunk, the length and the SHA-256.
pub struct BlobReader {
    file: io::BufReader<File>,
    path: PathBuf,
    id: [u8; 16],
    dec: Option<DecryptorBE32<XChaCha20Poly1305>>,
    /// Plaintext chunks still to come (the last one included).
    chunks_left: u64,
    /// Length of the last chunk's plaintext.
    last_len: usize,
    out: Zeroizing<Vec<u8>>,
    pos: usize,
    sha: Sha256,
    expect_sha: [u8; 32],
}

impl fmt::Debug for BlobReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobReader").field("path", &self.path).finish()
    }
}

fn bad(path: &Path, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("blob {}: {what}", path.display()),
    )
}

impl BlobReader {
    pub(crate) fn open(payloads: &Path, r: &BlobRef) -> Result<BlobReader> {
        let path = path_of(payloads, r.hour, &r.id);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::Destroyed {
                    what: format!("blob {}", hex::encode(r.id)),
                })
            }
            Err(e) => return Err(Error::io(&path, e)),
        };
        let chunks = if r.len == 0 {
            1
        } else {
            r.len.div_ceil(CHUNK as u64)
        };
        let expected = HEADER as u64 + r.len + chunks * TAG as u64;
        let actual = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        if actual != expected {
            return Err(Error::corrupt(format!(
                "blob {}: {actual} bytes on disk, {expected} expected",
                hex::encode(r.id)
            )));
        }
        let mut file = io::BufReader::with_capacity(CHUNK + TAG, file);
        let mut head = [0u8; HEADER];
        file.read_exact(&mut head).map_err(|e| Error::io(&path, e))?;
        if &head[..MAGIC.len()] != MAGIC {
            return Err(Error::corrupt(format!(
                "blob {}: not a blob file",
                hex::encode(r.id)
            )));
        }
        let prefix: [u8; NONCE_PREFIX] = head[MAGIC.len()..]
            .try_into()
            .map_err(|_| Error::corrupt("blob header"))?;
        let cipher = XChaCha20Poly1305::new((&r.key.0).into());
        Ok(BlobReader {
            file,
            path,
            id: r.id,
            dec: Some(DecryptorBE32::from_aead(cipher, (&prefix).into())),
            chunks_left: chunks,
            last_len: (r.len - (chunks - 1) * CHUNK as u64) as usize,
            out: Zeroizing::new(Vec::with_capacity(CHUNK + TAG)),
            pos: 0,
            sha: Sha256::new(),
            expect_sha: r.sha256,
        })
    }

    /// Reads and opens the next chunk into `out`.
    fn next_chunk(&mut self) -> io::Result<()> {
        let last = self.chunks_left == 1;
        let len = if last { self.last_len } else { CHUNK } + TAG;
        self.out.clear();
        self.out.resize(len, 0);
        self.file.read_exact(&mut self.out)?;
        let ok = if last {
            let dec = self
                .dec
                .take()
                .ok_or_else(|| bad(&self.path, "read past its end"))?;
            dec.decrypt_last_in_place(&self.id, &mut *self.out).is_ok()
        } else {
            let dec = self
                .dec
                .as_mut()
                .ok_or_else(|| bad(&self.path, "read past its end"))?;
            dec.decrypt_next_in_place(&self.id, &mut *self.out).is_ok()
        };
        if !ok {
            return Err(bad(&self.path, "a chunk does not authenticate"));
        }
        self.chunks_left -= 1;
        self.sha.update(&self.out[..]);
        if last && <[u8; 32]>::from(std::mem::take(&mut self.sha).finalize()) != self.expect_sha {
            return Err(bad(&self.path, "SHA-256 differs from its reference"));
        }
        self.pos = 0;
        Ok(())
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.out.len() {
            if self.chunks_left == 0 {
                return Ok(0);
            }
            self.next_chunk()?;
        }
        let n = buf.len().min(self.out.len() - self.pos);
        buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Removes the blob directories of every hour before `hour`; returns how many.
pub(crate) fn remove_before(payloads: &Path, hour: i64) -> Result<usize> {
    let rd = match std::fs::read_dir(payloads) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io(payloads, e)),
    };
    let mut n = 0;
    for ent in rd {
        let ent = ent.map_err(|e| Error::io(payloads, e))?;
        let Some(h) = ent
            .file_name()
            .to_str()
            .and_then(|s| s.strip_suffix(".blobs"))
            .and_then(|s| s.parse::<i64>().ok())
        else {
            continue;
        };
        if h < hour {
            let p = ent.path();
            match std::fs::remove_dir_all(&p) {
                Ok(()) => n += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&p, e)),
            }
        }
    }
    if n > 0 {
        crate::keys::sync_dir(payloads)?;
    }
    Ok(n)
}
