#![allow(clippy::unwrap_used)]
//! Blobs: large payload parts written and read as streams, sealed chunk by
//! chunk, checked on the way back, removed with their hour.

mod common;

use std::io::{Read, Write};
use std::sync::Arc;

use common::*;
use konvert_store::*;

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

fn write_blob(s: &Store, bytes: &[u8], piece: usize) -> BlobRef {
    let mut w = s.blob_writer("kz-by-2019", Some("request")).unwrap();
    for p in bytes.chunks(piece.max(1)) {
        w.write_all(p).unwrap();
    }
    w.finish().unwrap()
}

fn read_blob(s: &Store, r: &BlobRef) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    s.blob_reader(r).unwrap().read_to_end(&mut out)?;
    Ok(out)
}

fn blob_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    all_files(dir)
        .into_iter()
        .filter(|p| {
            p.parent()
                .is_some_and(|d| d.to_string_lossy().ends_with(".blobs"))
        })
        .collect()
}

#[test]
fn blobs_of_every_length_come_back_whole_and_are_sealed_on_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path(), Arc::new(ManualClock::new(T0)));
    for (len, piece) in [
        (0, 1),
        (1, 1),
        (BLOB_CHUNK - 1, 1000),
        (BLOB_CHUNK, BLOB_CHUNK),
        (BLOB_CHUNK + 1, 4096),
        (3 * BLOB_CHUNK, 100_000),
        (1_000_003, 65_537),
    ] {
        let bytes = data(len);
        let r = write_blob(&s, &bytes, piece);
        assert_eq!(r.len, len as u64);
        assert_eq!(read_blob(&s, &r).unwrap(), bytes, "length {len}");
    }
    // Nothing of the plaintext is on disk.
    let needle = &data(BLOB_CHUNK + 64)[1000..1064];
    for f in blob_files(tmp.path()) {
        assert!(!contains(&std::fs::read(&f).unwrap(), needle), "{f:?}");
    }
    // Small reads come back whole too.
    let bytes = data(200_000);
    let r = write_blob(&s, &bytes, 7777);
    let mut rd = s.blob_reader(&r).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 333];
    loop {
        let n = rd.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    assert_eq!(out, bytes);
    // The reference prints no key.
    assert!(format!("{r:?}").contains("key: BlobKey(<redacted>)"));
}

#[test]
fn a_changed_truncated_or_misattributed_blob_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let s = open(tmp.path(), Arc::new(ManualClock::new(T0)));
    let bytes = data(3 * BLOB_CHUNK + 10);
    let r = write_blob(&s, &bytes, 50_000);
    let file = blob_files(tmp.path()).pop().unwrap();
    let original = std::fs::read(&file).unwrap();

    // A flipped bit in the second chunk: the read fails there.
    let mut changed = original.clone();
    changed[35 + BLOB_CHUNK + 16 + 100] ^= 1;
    std::fs::write(&file, &changed).unwrap();
    let e = read_blob(&s, &r).unwrap_err();
    assert!(e.to_string().contains("does not authenticate"), "{e}");

    // Cut short: refused at open, by its length.
    std::fs::write(&file, &original[..original.len() - 1]).unwrap();
    assert!(matches!(s.blob_reader(&r), Err(Error::Corrupt { .. })));

    // Chunks swapped: the counter in every nonce tells.
    let mut swapped = original.clone();
    let c = BLOB_CHUNK + 16;
    let (a, b) = (35, 35 + c);
    let first: Vec<u8> = swapped[a..a + c].to_vec();
    swapped.copy_within(b..b + c, a);
    swapped[b..b + c].copy_from_slice(&first);
    std::fs::write(&file, &swapped).unwrap();
    assert!(read_blob(&s, &r).is_err());

    // The right file under another reference (another id or length) fails too.
    std::fs::write(&file, &original).unwrap();
    assert_eq!(read_blob(&s, &r).unwrap(), bytes);
    let mut wrong = r.clone();
    wrong.sha256[0] ^= 1;
    let e = read_blob(&s, &wrong).unwrap_err();
    assert!(e.to_string().contains("SHA-256"), "{e}");
    let other = write_blob(&s, &bytes, 50_000);
    let mut mixed = other.clone();
    mixed.key = r.key.clone();
    assert!(read_blob(&s, &mixed).is_err());
}

#[test]
fn unfinished_and_discarded_blobs_leave_nothing_and_expired_hours_are_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let s = open(tmp.path(), clock.clone());
    {
        let mut w = s.blob_writer("kz-by-2019", Some("request")).unwrap();
        w.write_all(&data(BLOB_CHUNK * 2)).unwrap();
        // Dropped without finish (a refused or failed upload).
    }
    assert!(blob_files(tmp.path()).is_empty());
    let r = write_blob(&s, &data(10), 10);
    s.blob_discard(&r).unwrap();
    s.blob_discard(&r).unwrap();
    assert!(matches!(s.blob_reader(&r), Err(Error::Destroyed { .. })));

    // A blob lives as long as a message of its agreement and kind written
    // at the same time, and goes a little after it.
    let r = write_blob(&s, &data(1000), 1000);
    let m = msg(ms(T0), "by.mvd", "request", b"payload");
    let put = s.put_inbox(&m).unwrap();
    let expires = put.meta.expires_at;
    clock.set(expires + 3600);
    while s.sweep(1000).unwrap().remaining {}
    assert!(matches!(s.inbox_get(&m.id), Err(Error::Destroyed { .. })));
    assert_eq!(read_blob(&s, &r).unwrap(), data(1000));
    clock.set(expires + 3 * 3600);
    while s.sweep(1000).unwrap().remaining {}
    assert!(matches!(s.blob_reader(&r), Err(Error::Destroyed { .. })));
    assert!(blob_files(tmp.path()).is_empty());
}

fn ms(t: i64) -> u64 {
    (t as u64) * 1000
}
