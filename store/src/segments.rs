//! Sealed payloads in append-only files, one per key hour.
//!
//! `DATA_DIR/payloads/<hour>.seg` holds the sealed payloads whose data key is
//! that hour's, back to back; a message record in sled refers to its payload
//! by (offset, length). Keeping payloads out of sled keeps sled's values
//! small: sled 0.34 rewrites whole leaf nodes (16 entries) on splits and
//! consolidations, so 1 KiB values cost it several KiB of log each, which is
//! CPU on every write and log to replay at open. Destroying an hour is one
//! `unlink` (after its key is gone).
//!
//! Writers reserve a range with an atomic add and `pwrite` into it in
//! parallel. A file grows by zero-filled steps of [`GROW`] written (in
//! [`ZERO_CHUNK`] writes) and `fdatasync`ed ahead of the appends (by the
//! writer that first needs the room): a payload then lands in blocks that already exist inside the
//! file's size, so its own `fdatasync` flushes data only, with no journal
//! commit for a new size or new extents (measured on this disk: about 40 %
//! less CPU and wall time per 1 KiB append + fdatasync than growing the
//! file with every append). Payloads of [`DIRECT`] or more extend the file
//! themselves: their `fdatasync` is mostly their data, and zero-filling
//! ahead of them would double what they write.
//!
//! **Large payloads are not kept in the page cache.** A payload of
//! [`DIRECT`] or more is written once and read at most a few times (the
//! delivery attempt, an application's fetch), so its pages are dropped
//! (`posix_fadvise(DONTNEED)`) once they are durable and after every
//! read (the gateway hands a new envelope to its first delivery attempt in
//! memory, and reads it back only for a retry): the cache keeps what
//! is read again and again (sled's files, small payloads) instead of
//! growing by every megabyte that passes through, and the kernel writes
//! new payloads into pages it just freed instead of taking new ones. On
//! this kind of machine (a VM) that is most of the cost of a large write:
//! memory the guest has not touched before costs about 3 ms per MiB to
//! fill, against 0.2–0.3 ms for pages it reuses (docs/STORE.md).
//!
//! Durability: the group commit (its preparer stage) `fdatasync`s
//! every file written since the last time *before* the group's records are
//! written to sled, so a record never reaches the disk before its payload
//! (also not through sled's own background flush). Bytes after the last record a file
//! had at a crash are unreferenced (an unacknowledged put); new appends go
//! after them.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::error::{Error, Result};

/// How far ahead of the appends a payload file is zero-filled.
pub(crate) const GROW: u64 = 4 << 20;

/// Appends of at least this many bytes extend the file themselves.
pub(crate) const DIRECT: u64 = 64 << 10;

/// Appends of [`DIRECT`] or more start at a multiple of this and take
/// whole multiples of it (the rest is a hole: no disk blocks). The kernel
/// caches a large write in folios of up to 2 MiB, and advice to drop a
/// range leaves every folio that reaches past it; aligned, a large payload
/// shares none with its neighbours, so all of it leaves the cache.
pub(crate) const BIG_ALIGN: u64 = 2 << 20;

/// The zero-fill is written in writes of this size. One write of the whole
/// [`GROW`] step made the kernel (Linux 6.18, ext4) cache it in large folios
/// of up to 2 MiB, and every later small append into such a folio walks
/// all its block buffers, in the write and again in the writeback: a 1 KiB
/// append (with a sixth of an `fdatasync`) took 12.6–14.0 µs of CPU against
/// 7.2–9.2 µs after a zero-fill in 4–256 KiB writes, on this machine.
const ZERO_CHUNK: usize = 64 << 10;

struct Seg {
    file: File,
    /// Where the next append goes (bytes reserved so far).
    len: AtomicU64,
    /// Bytes of the file that exist and are durable (zero-filled or
    /// written): appends ending at or below this need no growth.
    allocated: AtomicU64,
    /// Held by the writer growing the file.
    grow: Mutex<()>,
}

impl Seg {
    fn new(file: File, len: u64) -> Self {
        // Reads are of exact payloads: no readahead into the neighbours
        // (which would also bring back pages just dropped).
        advise(&file, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_RANDOM);
        Seg {
            file,
            len: AtomicU64::new(len),
            allocated: AtomicU64::new(len),
            grow: Mutex::new(()),
        }
    }

    /// Make sure the file has durable room up to `end` before bytes are
    /// written below it: zero-fill it up to the next multiple of [`GROW`]
    /// past `end` and `fdatasync` that (size and extents), or, for an
    /// append of [`DIRECT`] or more, let the append itself extend the file.
    fn reserve_room(&self, end: u64, append_len: u64, path: &Path) -> Result<()> {
        if end <= self.allocated.load(Ordering::Acquire) {
            return Ok(());
        }
        let _g = self.grow.lock().unwrap_or_else(|p| p.into_inner());
        let from = self.allocated.load(Ordering::Acquire);
        if end <= from {
            return Ok(());
        }
        if append_len >= DIRECT {
            // Writers below `end` write into the gap; the group commit's
            // fdatasync of this file makes their blocks and the size durable.
            self.allocated.store(end, Ordering::Release);
            return Ok(());
        }
        let to = end.div_ceil(GROW) * GROW;
        let zeros = vec![0u8; ZERO_CHUNK];
        let mut at = from;
        while at < to {
            let n = (to - at).min(ZERO_CHUNK as u64) as usize;
            self.file
                .write_all_at(&zeros[..n], at)
                .map_err(|e| Error::io(path, e))?;
            at += n as u64;
        }
        self.file.sync_data().map_err(|e| Error::io(path, e))?;
        self.allocated.store(to, Ordering::Release);
        Ok(())
    }
}

/// The payload files of a store.
pub(crate) struct Segments {
    dir: PathBuf,
    files: RwLock<BTreeMap<i64, Arc<Seg>>>,
    /// Hours written since their last fdatasync.
    dirty: Mutex<HashSet<i64>>,
    /// Finished blob files (and their directories) to `fdatasync` with the
    /// next group, before the records that refer to them.
    blobs: Mutex<Vec<(PathBuf, File)>>,
    /// Large appends (hour, offset, length) whose pages leave the page
    /// cache once the next sync has made them durable.
    uncache: Mutex<Vec<(i64, u64, u64)>>,
}

/// Advise the kernel that the pages of `file` in `off..off + len` are not
/// needed: clean ones leave the page cache (partial pages at either end
/// stay). Advice only — a failure changes nothing but the cache.
pub(crate) fn uncache(file: &File, off: u64, len: u64) {
    advise(
        file,
        off,
        len,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
}

/// `posix_fadvise` (advice only: a failure is logged at debug and changes
/// nothing but the cache).
fn advise(file: &File, off: u64, len: u64, advice: nix::fcntl::PosixFadviseAdvice) {
    use std::os::fd::AsRawFd;
    let (Ok(off), Ok(len)) = (i64::try_from(off), i64::try_from(len)) else {
        return;
    };
    if let Err(e) = nix::fcntl::posix_fadvise(file.as_raw_fd(), off, len, advice) {
        tracing::debug!(error = %e, ?advice, "posix_fadvise refused");
    }
}

fn file_name(hour: i64) -> String {
    format!("{hour}.seg")
}

impl Segments {
    /// Open the payload directory (created, mode 0700, if missing).
    pub(crate) fn open(dir: PathBuf) -> Result<Self> {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|e| Error::io(&dir, e))?;
            if let Some(parent) = dir.parent() {
                crate::keys::sync_dir(parent)?;
            }
        }
        let mut files = BTreeMap::new();
        for ent in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let ent = ent.map_err(|e| Error::io(&dir, e))?;
            let name = ent.file_name();
            let Some(hour) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|h| h.parse::<i64>().ok())
            else {
                continue;
            };
            let path = ent.path();
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| Error::io(&path, e))?;
            let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
            // (A zero-filled tail left by the last run is skipped: new
            // appends go after it.)
            files.insert(hour, Arc::new(Seg::new(file, len)));
        }
        Ok(Segments {
            dir,
            files: RwLock::new(files),
            dirty: Mutex::new(HashSet::new()),
            blobs: Mutex::new(Vec::new()),
            uncache: Mutex::new(Vec::new()),
        })
    }

    fn seg(&self, hour: i64) -> Option<Arc<Seg>> {
        self.files
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&hour)
            .cloned()
    }

    fn seg_or_create(&self, hour: i64) -> Result<Arc<Seg>> {
        if let Some(s) = self.seg(hour) {
            return Ok(s);
        }
        let mut files = self.files.write().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = files.get(&hour) {
            return Ok(s.clone());
        }
        let path = self.dir.join(file_name(hour));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        // The new file's directory entry is durable before anything refers to it.
        crate::keys::sync_dir(&self.dir)?;
        let s = Arc::new(Seg::new(file, len));
        files.insert(hour, s.clone());
        Ok(s)
    }

    /// Append `bytes` to the file of `hour`; returns their offset. An
    /// append of [`DIRECT`] or more leaves the page cache once it is durable.
    pub(crate) fn append(&self, hour: i64, bytes: &[u8]) -> Result<u64> {
        let s = self.seg_or_create(hour)?;
        let n = bytes.len() as u64;
        let (off, end) = if n >= DIRECT {
            let mut cur = s.len.load(Ordering::SeqCst);
            loop {
                let off = cur.next_multiple_of(BIG_ALIGN);
                let end = (off + n).next_multiple_of(BIG_ALIGN);
                match s
                    .len
                    .compare_exchange(cur, end, Ordering::SeqCst, Ordering::SeqCst)
                {
                    Ok(_) => break (off, end),
                    Err(now) => cur = now,
                }
            }
        } else {
            let off = s.len.fetch_add(n, Ordering::SeqCst);
            (off, off + n)
        };
        let path = || self.dir.join(file_name(hour));
        s.reserve_room(end, n, &path())?;
        s.file
            .write_all_at(bytes, off)
            .map_err(|e| Error::io(path(), e))?;
        self.dirty.lock().unwrap_or_else(|p| p.into_inner()).insert(hour);
        if n >= DIRECT {
            // (After the hour is marked: see `sync_dirty`.)
            self.uncache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((hour, off, end - off));
        }
        Ok(off)
    }

    /// The `len` bytes at `off` in the file of `hour`; `None` once that file
    /// has been destroyed.
    pub(crate) fn read(&self, hour: i64, off: u64, len: u32) -> Result<Option<Vec<u8>>> {
        let Some(s) = self.seg(hour) else {
            return Ok(None);
        };
        let mut buf = vec![0u8; len as usize];
        match s.file.read_exact_at(&mut buf, off) {
            Ok(()) => {
                if u64::from(len) >= DIRECT {
                    // With its padding (older files: maybe a neighbour's
                    // first pages too, which then come from the disk).
                    let end = (off + u64::from(len)).next_multiple_of(BIG_ALIGN);
                    uncache(&s.file, off, end - off);
                }
                Ok(Some(buf))
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Err(Error::corrupt(format!("payload file {}", file_name(hour))))
            }
            Err(e) => Err(Error::io(self.dir.join(file_name(hour)), e)),
        }
    }

    /// Has a finished blob file made durable by the next [`Segments::sync_dirty`].
    pub(crate) fn defer_blob_sync(&self, path: PathBuf, file: File) {
        self.blobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((path, file));
    }

    /// `fdatasync` every file written since its last sync (payload files,
    /// then finished blobs and their directories).
    pub(crate) fn sync_dirty(&self) -> Result<()> {
        let blobs = std::mem::take(&mut *self.blobs.lock().unwrap_or_else(|p| p.into_inner()));
        let mut dirs = std::collections::BTreeSet::new();
        for (path, file) in &blobs {
            file.sync_data().map_err(|e| Error::io(path, e))?;
            if let Some(d) = path.parent() {
                dirs.insert(d.to_path_buf());
            }
        }
        for d in dirs {
            // Gone with its hour meanwhile (its blobs were discarded).
            if d.exists() {
                crate::keys::sync_dir(&d)?;
            }
        }
        // Taken before the hours: a range is listed after its hour was
        // marked dirty, so its bytes are synced below or were by an earlier
        // sync. (Advice on bytes not yet synced would only start their
        // writeback; they would stay cached.)
        let uncache_now = std::mem::take(&mut *self.uncache.lock().unwrap_or_else(|p| p.into_inner()));
        let hours: Vec<i64> = self
            .dirty
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        for h in hours {
            if let Some(s) = self.seg(h) {
                if let Err(e) = s.file.sync_data() {
                    // Mark it again: the failure poisons the store anyway.
                    self.dirty.lock().unwrap_or_else(|p| p.into_inner()).insert(h);
                    return Err(Error::io(self.dir.join(file_name(h)), e));
                }
            }
        }
        for (h, off, len) in uncache_now {
            if let Some(s) = self.seg(h) {
                uncache(&s.file, off, len);
            }
        }
        Ok(())
    }

    /// Remove the files of every hour before `hour` (their keys are gone);
    /// returns how many.
    pub(crate) fn remove_before(&self, hour: i64) -> Result<usize> {
        let gone: Vec<i64> = {
            let mut files = self.files.write().unwrap_or_else(|p| p.into_inner());
            let keep = files.split_off(&hour);
            let gone = std::mem::replace(&mut *files, keep);
            gone.into_keys().collect()
        };
        for h in &gone {
            let p = self.dir.join(file_name(*h));
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&p, e)),
            }
        }
        if !gone.is_empty() {
            crate::keys::sync_dir(&self.dir)?;
        }
        Ok(gone.len())
    }

    /// The payload directory.
    #[allow(dead_code)]
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_land_in_zero_filled_room_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let segs = Segments::open(dir.path().join("p")).unwrap();
        let mut at = Vec::new();
        for i in 0..100u32 {
            let bytes = vec![(i % 251) as u8 + 1; 1000 + i as usize];
            at.push((segs.append(7, &bytes).unwrap(), bytes));
        }
        let path = dir.path().join("p").join(file_name(7));
        // Grown once, by a zero-filled step; the appends are inside it.
        assert_eq!(std::fs::metadata(&path).unwrap().len(), GROW);
        for (off, bytes) in &at {
            let got = segs.read(7, *off, bytes.len() as u32).unwrap().unwrap();
            assert_eq!(&got, bytes);
        }
        // A payload of DIRECT or more beyond the room extends the file itself.
        let big = vec![9u8; GROW as usize];
        let big_off = segs.append(7, &big).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), big_off + GROW);
        segs.sync_dirty().unwrap();
        drop(segs);

        let segs = Segments::open(dir.path().join("p")).unwrap();
        for (off, bytes) in &at {
            assert_eq!(&segs.read(7, *off, bytes.len() as u32).unwrap().unwrap(), bytes);
        }
        assert_eq!(segs.read(7, big_off, GROW as u32).unwrap().unwrap(), big);
        // New appends go after everything the file holds.
        let off = segs.append(7, b"after a reopen").unwrap();
        assert_eq!(off, big_off + GROW);
        assert_eq!(segs.read(7, off, 14).unwrap().unwrap(), b"after a reopen");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 2 * GROW);
    }

    /// Bytes of `path` in the page cache, by util-linux's `fincore`.
    fn cached(path: &Path) -> u64 {
        let out = std::process::Command::new("fincore")
            .args(["--bytes", "--noheadings", "--output", "RES"])
            .arg(path)
            .output()
            .expect("fincore (util-linux) runs");
        assert!(
            out.status.success(),
            "fincore: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }

    #[test]
    fn large_payloads_leave_the_page_cache_once_durable_or_read() {
        // (The page cache of a real file system: tmpfs keeps its pages.)
        let dir = tempfile::tempdir().unwrap();
        let segs = Segments::open(dir.path().join("p")).unwrap();
        let path = dir.path().join("p").join(file_name(3));
        let mib = 1usize << 20;
        let a: Vec<u8> = (0..mib + 28).map(|i| (i % 253) as u8).collect();
        let b: Vec<u8> = (0..mib + 28).map(|i| (i % 241) as u8).collect();
        // Cached while written, dropped once durable.
        let a_off = segs.append(3, &a).unwrap();
        let b_off = segs.append(3, &b).unwrap();
        assert!(b_off.is_multiple_of(BIG_ALIGN));
        assert!(cached(&path) >= 2 * mib as u64, "written, not yet synced");
        segs.sync_dirty().unwrap();
        let after = cached(&path);
        assert!(after < 64 << 10, "{after} bytes still cached after the sync");
        // Read back from the disk: the same bytes, and dropped again.
        assert_eq!(segs.read(3, b_off, b.len() as u32).unwrap().unwrap(), b);
        let after_b = cached(&path);
        assert!(after_b < 64 << 10, "{after_b} bytes still cached after the read");
        assert_eq!(segs.read(3, a_off, a.len() as u32).unwrap().unwrap(), a);
        let again = cached(&path);
        assert!(
            again < 128 << 10,
            "{again} bytes still cached after reading it again"
        );
        // Small payloads are left to the kernel (they share pages).
        let small_off = segs.append(3, &[5u8; 1000]).unwrap();
        segs.sync_dirty().unwrap();
        assert_eq!(segs.read(3, small_off, 1000).unwrap().unwrap(), vec![5u8; 1000]);
        assert!(cached(&path) >= 4096, "a small payload's page stays cached");
    }
}
