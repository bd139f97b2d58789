//! Uploads: attachments an application hands over (`POST /v1/uploads`)
//! before the message that names them (`"file": "upload:<id>"`).
//!
//! An upload of at most [`MEM_UPLOAD_MAX`] bytes is kept in memory (zeroized
//! when dropped) while all in-memory uploads together stay within
//! [`MEM_UPLOADS_BUDGET`]; larger ones, and any beyond the budget, are
//! written to `DATA_DIR/uploads/` (0600, `fdatasync`ed, renamed into place).
//! A small upload thus costs no file creation, write, fsync, open and
//! unlink per message (in a profile of 1 KiB messages, creating and
//! removing upload files was about 8 % of the gateway's CPU, most of it
//! ext4 allocating inodes), and its personal data never touches the disk
//! in the clear.
//!
//! An upload is not an accepted message: the gateway takes responsibility
//! for data only when a submission that names it has been sealed and queued
//! durably. An upload held in memory is gone after a restart; a submission
//! naming it is refused (`upload … does not exist (or has expired)`) and
//! the application uploads again. Unused uploads of either kind expire
//! after `api.upload_max_age` ([`Uploads::sweep`]).
//!
//! A submission [claims](Uploads::claim) each upload it names before it
//! reads it: while it seals, another submission naming the same upload is
//! refused (the upload is in use), and the sweep leaves it alone. Queued,
//! the submission [spends](Claim::spend) it (it is removed); refused, it
//! lets the claim go and the upload waits for the next submission.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use konvert_envelope::model::{Id, Timestamp};
use sha2::Digest as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use zeroize::Zeroizing;

/// Largest upload kept in memory (the size up to which a message is sealed
/// in memory as well).
pub const MEM_UPLOAD_MAX: usize = 1 << 20;

/// Most bytes all in-memory uploads may hold together; uploads beyond it
/// go to files.
pub const MEM_UPLOADS_BUDGET: usize = 64 << 20;

/// Why an upload was not stored.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The body could not be read to its end (over the size limit, or cut off).
    #[error("the upload is larger than allowed or was cut off")]
    Body,
    /// The upload file could not be written.
    #[error("cannot store the upload")]
    Storage,
}

/// A stored upload.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Its id (named by attachments as `upload:<id>`).
    pub id: Id,
    /// Its length in bytes.
    pub len: u64,
    /// SHA-256 of its bytes.
    pub sha256: [u8; 32],
}

struct MemUpload {
    data: Arc<Zeroizing<Vec<u8>>>,
    /// SHA-256 of `data`, which never changes.
    sha256: [u8; 32],
    at: SystemTime,
}

#[derive(Default)]
struct Mem {
    items: HashMap<Id, MemUpload>,
    bytes: usize,
    /// Uploads (of either kind) a submission is sealing now.
    claimed: HashSet<Id>,
}

struct Shared {
    dir: PathBuf,
    mem: Mutex<Mem>,
}

impl Shared {
    fn mem(&self) -> std::sync::MutexGuard<'_, Mem> {
        self.mem.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, id: &Id) -> PathBuf {
        self.dir.join(id.to_string())
    }
}

/// The uploads waiting for a submission.
pub struct Uploads {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Uploads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uploads").field("dir", &self.shared.dir).finish()
    }
}

/// Why an upload could not be claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// Never uploaded, spent, expired, or held in memory before a restart.
    #[error("does not exist (or has expired)")]
    Missing,
    /// Another submission is sealing it now.
    #[error("is being used by another submission")]
    InUse,
}

/// A submission's hold on an upload: nobody else may use it, and the sweep
/// leaves it alone, until it is [spent](Claim::spend) or dropped (released,
/// the upload stays).
pub struct Claim {
    shared: Arc<Shared>,
    id: Id,
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim").field("id", &self.id).finish()
    }
}

impl Claim {
    /// The upload's id.
    pub fn id(&self) -> Id {
        self.id
    }

    /// Open the upload for reading, with its length (`None` if its file
    /// has gone meanwhile, removed by hand).
    pub fn open(&self) -> Option<(Source, u64)> {
        self.open_with_digest().map(|(s, len, _)| (s, len))
    }

    /// [`Claim::open`], and for an upload held in memory the SHA-256 of
    /// exactly the bytes the source reads (computed when it arrived; the
    /// bytes cannot change). A file's digest is not kept: it could be
    /// changed on disk.
    pub fn open_with_digest(&self) -> Option<(Source, u64, Option<[u8; 32]>)> {
        if let Some(m) = self.shared.mem().items.get(&self.id) {
            let len = m.data.len() as u64;
            return Some((
                Source::Mem(std::io::Cursor::new(Arc::clone(&m.data))),
                len,
                Some(m.sha256),
            ));
        }
        let f = std::fs::File::open(self.shared.path(&self.id)).ok()?;
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        // Read in pieces of at most CHUNK_SIZE; a small upload needs no
        // buffer larger than itself.
        let cap = usize::try_from(len)
            .unwrap_or(konvert_envelope::envelope::CHUNK_SIZE)
            .clamp(1, konvert_envelope::envelope::CHUNK_SIZE);
        Some((Source::File(std::io::BufReader::with_capacity(cap, f)), len, None))
    }

    /// The upload is spent (its message is queued): remove it.
    pub fn spend(self) {
        let gone = {
            let mut mem = self.shared.mem();
            let gone = mem.items.remove(&self.id);
            if let Some(g) = &gone {
                mem.bytes -= g.data.len();
            }
            gone
        };
        if gone.is_none() {
            let _ = std::fs::remove_file(self.shared.path(&self.id));
        }
        // Drop releases the claim.
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.shared.mem().claimed.remove(&self.id);
    }
}

/// How many uploads wait for a submission, and what they hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UploadCounts {
    /// Uploads held in memory.
    pub in_memory: u64,
    /// Bytes they hold.
    pub in_memory_bytes: u64,
    /// Uploads in files (`DATA_DIR/uploads`; interrupted ones not counted).
    pub files: u64,
    /// Bytes the files hold.
    pub file_bytes: u64,
    /// The directory had more entries than were read: `files` and
    /// `file_bytes` are lower bounds.
    pub truncated: bool,
}

/// An upload opened for reading by a submission.
pub enum Source {
    /// Held in memory.
    Mem(std::io::Cursor<Arc<Zeroizing<Vec<u8>>>>),
    /// In its file.
    File(std::io::BufReader<std::fs::File>),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::Mem(_) => "Source::Mem",
            Source::File(_) => "Source::File",
        })
    }
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Source::Mem(c) => {
                let data: &[u8] = c.get_ref();
                let pos = usize::try_from(c.position())
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                let n = (data.len() - pos).min(buf.len());
                buf[..n].copy_from_slice(&data[pos..pos + n]);
                c.set_position((pos + n) as u64);
                Ok(n)
            }
            Source::File(f) => f.read(buf),
        }
    }
}

impl Uploads {
    /// Uploads whose files live in `dir` (which must exist, mode 0700).
    pub fn new(dir: PathBuf) -> Self {
        Uploads {
            shared: Arc::new(Shared {
                dir,
                mem: Mutex::new(Mem::default()),
            }),
        }
    }

    /// The directory of upload files.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    fn mem(&self) -> std::sync::MutexGuard<'_, Mem> {
        self.shared.mem()
    }

    /// Store the upload read from `body` (which enforces the size limit by
    /// failing): in memory if it is small and the budget allows, else in a
    /// file made durable before this returns. `expected_len` is the length
    /// the client announced (`Content-Length`), if any: a small upload of
    /// that length is read into one buffer of its size.
    pub async fn receive<R: AsyncRead + Unpin>(
        &self,
        mut body: R,
        expected_len: Option<u64>,
    ) -> Result<Stored, UploadError> {
        let id = Id::new(Timestamp::now());
        let mut hasher = sha2::Sha256::new();
        // Read up to one byte more than fits in memory.
        let head = read_head(&mut body, MEM_UPLOAD_MAX + 1, expected_len).await?;
        hasher.update(&head[..]);
        if head.len() <= MEM_UPLOAD_MAX {
            let len = head.len();
            let mut mem = self.mem();
            if mem.bytes + len <= MEM_UPLOADS_BUDGET {
                mem.bytes += len;
                let sha256: [u8; 32] = hasher.finalize().into();
                mem.items.insert(
                    id,
                    MemUpload {
                        data: Arc::new(head),
                        sha256,
                        at: SystemTime::now(),
                    },
                );
                return Ok(Stored {
                    id,
                    len: len as u64,
                    sha256,
                });
            }
        }
        self.receive_file(id, &head, body, hasher).await
    }

    async fn receive_file<R: AsyncRead + Unpin>(
        &self,
        id: Id,
        head: &[u8],
        mut body: R,
        mut hasher: sha2::Sha256,
    ) -> Result<Stored, UploadError> {
        let path = self.shared.path(&id);
        let tmp = self.shared.dir.join(format!(".{id}.part"));
        let mut f = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .await
            .map_err(|_| UploadError::Storage)?;
        let fail = |e: UploadError| async {
            let _ = tokio::fs::remove_file(&tmp).await;
            e
        };
        if f.write_all(head).await.is_err() {
            return Err(fail(UploadError::Storage).await);
        }
        let mut len = head.len() as u64;
        let mut buf = Zeroizing::new(vec![0u8; 64 * 1024]);
        loop {
            let n = match body.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(_) => return Err(fail(UploadError::Body).await),
            };
            hasher.update(&buf[..n]);
            len += n as u64;
            if f.write_all(&buf[..n]).await.is_err() {
                return Err(fail(UploadError::Storage).await);
            }
        }
        if f.sync_all().await.is_err() {
            return Err(fail(UploadError::Storage).await);
        }
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|_| UploadError::Storage)?;
        Ok(Stored {
            id,
            len,
            sha256: hasher.finalize().into(),
        })
    }

    /// The length of upload `id`, if it exists.
    pub fn len(&self, id: &Id) -> Option<u64> {
        if let Some(m) = self.mem().items.get(id) {
            return Some(m.data.len() as u64);
        }
        std::fs::metadata(self.shared.path(id)).ok().map(|m| m.len())
    }

    /// Claim upload `id` for a submission (see [`Claim`]).
    pub fn claim(&self, id: &Id) -> Result<Claim, ClaimError> {
        let mut mem = self.mem();
        if mem.claimed.contains(id) {
            return Err(ClaimError::InUse);
        }
        // (A file upload is renamed into place only when complete, so a
        // file that exists is whole; checked under the lock, so that the
        // sweep cannot remove it between the check and the claim.)
        if !mem.items.contains_key(id) && !self.shared.path(id).is_file() {
            return Err(ClaimError::Missing);
        }
        mem.claimed.insert(*id);
        Ok(Claim {
            shared: Arc::clone(&self.shared),
            id: *id,
        })
    }

    /// What waits now: in memory, and in files (counted by reading the
    /// directory, at most `max_files` entries; `truncated` if there are more).
    pub fn counts(&self, max_files: usize) -> UploadCounts {
        let mut c = {
            let mem = self.mem();
            UploadCounts {
                in_memory: mem.items.len() as u64,
                in_memory_bytes: mem.bytes as u64,
                ..UploadCounts::default()
            }
        };
        if let Ok(entries) = std::fs::read_dir(&self.shared.dir) {
            let mut entries = entries.flatten();
            for entry in entries.by_ref().take(max_files) {
                if entry.file_name().to_string_lossy().starts_with('.') {
                    continue;
                }
                if let Ok(meta) = entry.metadata() {
                    if meta.is_file() {
                        c.files += 1;
                        c.file_bytes += meta.len();
                    }
                }
            }
            c.truncated = entries.next().is_some();
        }
        c
    }

    /// Bytes held by in-memory uploads now.
    pub fn mem_bytes(&self) -> usize {
        self.mem().bytes
    }

    /// Remove uploads (and interrupted upload files) older than `max_age`
    /// at `now`; returns how many.
    /// Claimed uploads are left alone (their submission is sealing them).
    pub fn sweep(&self, max_age: Duration, now: SystemTime) -> std::io::Result<usize> {
        let expired = |at: SystemTime| now.duration_since(at).is_ok_and(|age| age > max_age);
        let mut removed = {
            let mut mem = self.mem();
            let old: Vec<Id> = mem
                .items
                .iter()
                .filter(|(id, m)| expired(m.at) && !mem.claimed.contains(id))
                .map(|(id, _)| *id)
                .collect();
            for id in &old {
                if let Some(g) = mem.items.remove(id) {
                    mem.bytes -= g.data.len();
                }
            }
            old.len()
        };
        for entry in std::fs::read_dir(&self.shared.dir)? {
            let entry = entry?;
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let Ok(modified) = meta.modified() else { continue };
            if !expired(modified) {
                continue;
            }
            // The sweep claims the file while it removes it (without
            // holding the lock across the removal): a submission naming it
            // meanwhile is told it is in use, then that it is gone. Files
            // not named by an upload id (interrupted uploads) cannot be claimed.
            let id = entry.file_name().to_str().and_then(|n| n.parse::<Id>().ok());
            if let Some(id) = id {
                let mut mem = self.mem();
                if !mem.claimed.insert(id) {
                    continue;
                }
            }
            let r = std::fs::remove_file(entry.path());
            if let Some(id) = id {
                self.mem().claimed.remove(&id);
            }
            match r {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(removed)
    }
}

/// Up to `limit` bytes of `body`, in a buffer of exactly their length.
/// Every buffer it grows through is zeroized when left behind (a
/// `Vec`'s own growth would free copies of the bytes unwiped). With the
/// body's length announced (`hint`), the first buffer has that size: a
/// body of that length is then neither copied nor grown (it took five
/// buffers, from 64 KiB, and a final copy for 1 MiB: a few per cent of the
/// CPU of a 1 MiB message end to end).
async fn read_head<R: AsyncRead + Unpin>(
    body: &mut R,
    limit: usize,
    hint: Option<u64>,
) -> Result<Zeroizing<Vec<u8>>, UploadError> {
    let first = hint.map_or(64 * 1024, |h| usize::try_from(h).unwrap_or(usize::MAX));
    let mut buf = Zeroizing::new(vec![0u8; first.min(limit)]);
    let mut len = 0;
    while len < limit {
        if len == buf.len() {
            // Full: does the body go on?
            let mut probe = Zeroizing::new([0u8; 1]);
            if body.read(&mut probe[..]).await.map_err(|_| UploadError::Body)? == 0 {
                break;
            }
            let mut bigger = Zeroizing::new(vec![0u8; (buf.len() * 2).max(64 * 1024).min(limit)]);
            bigger[..len].copy_from_slice(&buf[..len]);
            bigger[len] = probe[0];
            len += 1;
            buf = bigger;
            continue;
        }
        let n = body.read(&mut buf[len..]).await.map_err(|_| UploadError::Body)?;
        if n == 0 {
            break;
        }
        len += n;
    }
    if len == buf.len() {
        return Ok(buf);
    }
    Ok(Zeroizing::new(buf[..len].to_vec()))
}

/// How often the upload sweep runs for a maximum age: a quarter of it,
/// between 1 s and 10 minutes.
pub fn sweep_interval(max_age: Duration) -> Duration {
    (max_age / 4).clamp(Duration::from_secs(1), Duration::from_secs(600))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn read_all(u: &Uploads, id: &Id) -> Vec<u8> {
        let claim = u.claim(id).unwrap();
        let (mut src, len) = claim.open().unwrap();
        let mut out = Vec::new();
        src.read_to_end(&mut out).unwrap();
        assert_eq!(out.len() as u64, len);
        out
    }

    #[tokio::test]
    async fn small_uploads_stay_in_memory_large_ones_go_to_files() {
        let dir = tempfile::tempdir().unwrap();
        let u = Uploads::new(dir.path().to_path_buf());
        let small = u.receive(&b"%PDF-1.7 small"[..], None).await.unwrap();
        assert_eq!(small.len, 14);
        assert_eq!(
            small.sha256,
            <[u8; 32]>::from(sha2::Sha256::digest(b"%PDF-1.7 small"))
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "no file for a small upload"
        );
        assert_eq!(u.mem_bytes(), 14);
        assert_eq!(read_all(&u, &small.id), b"%PDF-1.7 small");

        let big_bytes: Vec<u8> = (0..MEM_UPLOAD_MAX + 10).map(|i| (i % 251) as u8).collect();
        let big = u.receive(&big_bytes[..], None).await.unwrap();
        assert_eq!(big.len, big_bytes.len() as u64);
        assert_eq!(big.sha256, <[u8; 32]>::from(sha2::Sha256::digest(&big_bytes)));
        let file = dir.path().join(big.id.to_string());
        assert_eq!(std::fs::read(&file).unwrap(), big_bytes);
        assert_eq!(read_all(&u, &big.id), big_bytes);
        assert_eq!(u.len(&big.id), Some(big_bytes.len() as u64));

        assert_eq!(
            u.counts(100),
            UploadCounts {
                in_memory: 1,
                in_memory_bytes: 14,
                files: 1,
                file_bytes: big_bytes.len() as u64,
                truncated: false,
            }
        );
        // One file, none read: a lower bound, and said so.
        let none = u.counts(0);
        assert!(none.truncated && none.files == 0 && none.in_memory == 1);

        u.claim(&small.id).unwrap().spend();
        u.claim(&big.id).unwrap().spend();
        assert_eq!(u.claim(&small.id).unwrap_err(), ClaimError::Missing);
        assert_eq!(u.claim(&big.id).unwrap_err(), ClaimError::Missing);
        assert!(!file.exists());
        assert_eq!(u.mem_bytes(), 0);
        assert_eq!(u.counts(100), UploadCounts::default());
    }

    #[tokio::test]
    async fn a_claimed_upload_is_refused_to_others_and_kept_when_released() {
        let dir = tempfile::tempdir().unwrap();
        let u = Uploads::new(dir.path().to_path_buf());
        let small = u.receive(&b"small"[..], None).await.unwrap();
        let big_bytes = vec![3u8; MEM_UPLOAD_MAX + 1];
        let big = u.receive(&big_bytes[..], None).await.unwrap();
        for id in [small.id, big.id] {
            let first = u.claim(&id).unwrap();
            assert_eq!(u.claim(&id).unwrap_err(), ClaimError::InUse);
            // The holder may open it more than once (two attachments naming it).
            assert!(first.open().is_some() && first.open().is_some());
            // The digest comes with an upload held in memory only.
            let (_, _, digest) = first.open_with_digest().unwrap();
            assert_eq!(digest.is_some(), id == small.id);
            if let Some(d) = digest {
                assert_eq!(d, small.sha256);
            }
            // Released (the submission was refused): it waits for the next one.
            drop(first);
            let second = u.claim(&id).unwrap();
            second.spend();
            assert_eq!(u.claim(&id).unwrap_err(), ClaimError::Missing);
        }
        assert_eq!(u.counts(100), UploadCounts::default());
    }

    #[tokio::test]
    async fn uploads_beyond_the_memory_budget_go_to_files() {
        let dir = tempfile::tempdir().unwrap();
        let u = Uploads::new(dir.path().to_path_buf());
        let chunk = vec![7u8; MEM_UPLOAD_MAX];
        let fit = MEM_UPLOADS_BUDGET / MEM_UPLOAD_MAX;
        for _ in 0..fit {
            u.receive(&chunk[..], None).await.unwrap();
        }
        assert_eq!(u.mem_bytes(), MEM_UPLOADS_BUDGET);
        let over = u.receive(&b"one more"[..], None).await.unwrap();
        assert!(dir.path().join(over.id.to_string()).exists());
        assert_eq!(read_all(&u, &over.id), b"one more");
    }

    #[tokio::test]
    async fn an_announced_length_that_is_right_wrong_or_absent_reads_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let u = Uploads::new(dir.path().to_path_buf());
        for len in [
            0usize,
            1,
            1000,
            64 * 1024,
            64 * 1024 + 1,
            MEM_UPLOAD_MAX,
            MEM_UPLOAD_MAX + 1,
            3 << 20,
        ] {
            let body: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            for hint in [
                None,
                Some(len as u64),
                Some(0),
                Some(len as u64 / 2),
                Some(len as u64 * 2 + 7),
            ] {
                let stored = u.receive(&body[..], hint).await.unwrap();
                assert_eq!(stored.len, len as u64, "len {len} hint {hint:?}");
                assert_eq!(stored.sha256, <[u8; 32]>::from(sha2::Sha256::digest(&body)));
                // In memory up to the limit, in a file beyond it, whatever was announced.
                let in_file = dir.path().join(stored.id.to_string()).exists();
                assert_eq!(in_file, len > MEM_UPLOAD_MAX, "len {len} hint {hint:?}");
                assert_eq!(read_all(&u, &stored.id), body, "len {len} hint {hint:?}");
                u.claim(&stored.id).unwrap().spend();
            }
        }
        assert_eq!(u.mem_bytes(), 0);
    }

    #[tokio::test]
    async fn a_body_that_fails_leaves_nothing_behind() {
        struct Failing(usize);
        impl AsyncRead for Failing {
            fn poll_read(
                mut self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                if self.0 == 0 {
                    return std::task::Poll::Ready(Err(std::io::Error::other("too large")));
                }
                let n = self.0.min(buf.remaining()).min(64 * 1024);
                buf.put_slice(&vec![1u8; n]);
                self.0 -= n;
                std::task::Poll::Ready(Ok(()))
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let u = Uploads::new(dir.path().to_path_buf());
        assert!(matches!(
            u.receive(Failing(10), None).await,
            Err(UploadError::Body)
        ));
        assert!(matches!(
            u.receive(Failing(MEM_UPLOAD_MAX + 100), None).await,
            Err(UploadError::Body)
        ));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert_eq!(u.mem_bytes(), 0);
    }

    #[tokio::test]
    async fn sweep_removes_only_uploads_older_than_the_maximum_age() {
        let dir = tempfile::tempdir().unwrap();
        let u = Uploads::new(dir.path().to_path_buf());
        let old = dir.path().join("019ec9a6-9a00-7000-8000-0000000000b4");
        let part = dir.path().join(".019ec9a6-9a00-7000-8000-0000000000b5.part");
        std::fs::write(&old, b"pdf").unwrap();
        std::fs::write(&part, b"half").unwrap();
        std::fs::create_dir(dir.path().join("subdir")).unwrap();
        let claimed_file = dir.path().join("019ec9a6-9a00-7000-8000-0000000000b6");
        std::fs::write(&claimed_file, b"being sealed").unwrap();
        let in_mem = u.receive(&b"small"[..], None).await.unwrap();
        let claimed_mem = u.receive(&b"being sealed"[..], None).await.unwrap();
        let written = std::fs::metadata(&old).unwrap().modified().unwrap();
        let hour = Duration::from_secs(3600);
        // The clock is passed in: an hour after writing nothing is older than two hours.
        assert_eq!(u.sweep(2 * hour, written + hour).unwrap(), 0);
        assert!(old.exists() && part.exists() && u.len(&in_mem.id).is_some());
        // Three hours after: the file, the interrupted one and the in-memory
        // one go; the two a submission holds stay.
        let holds = [
            u.claim(&"019ec9a6-9a00-7000-8000-0000000000b6".parse().unwrap())
                .unwrap(),
            u.claim(&claimed_mem.id).unwrap(),
        ];
        assert_eq!(u.sweep(2 * hour, written + 3 * hour).unwrap(), 3);
        assert!(!old.exists() && !part.exists() && u.len(&in_mem.id).is_none());
        assert!(claimed_file.exists() && u.len(&claimed_mem.id).is_some());
        // Released, they expire too.
        drop(holds);
        assert_eq!(u.sweep(2 * hour, written + 3 * hour).unwrap(), 2);
        assert!(dir.path().join("subdir").is_dir());
        assert_eq!(u.mem_bytes(), 0);
        // A clock before the files' time removes nothing.
        std::fs::write(&old, b"again").unwrap();
        assert_eq!(u.sweep(hour, written - hour).unwrap(), 0);
    }

    #[test]
    fn sweep_interval_follows_the_maximum_age() {
        assert_eq!(
            sweep_interval(Duration::from_secs(86_400)),
            Duration::from_secs(600)
        );
        assert_eq!(sweep_interval(Duration::from_secs(8)), Duration::from_secs(2));
        assert_eq!(sweep_interval(Duration::from_secs(1)), Duration::from_secs(1));
    }
}
