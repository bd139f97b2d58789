//! Sealing and opening stream attachments in bounded memory: a 128 MiB
//! attachment passes through `seal` and `open` while the process's peak
//! resident memory grows by far less than the attachment.
//!
//! Peak memory is the kernel's VmHWM for this process, reset before the
//! work through /proc/self/clear_refs. This file holds a single test so no
//! other test's memory is counted.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};

use common::*;
use konvert_envelope::envelope::{self, Limits, PartSink};
use konvert_envelope::model::{Attachment, Digest, MessageBody};
use sha2::{Digest as _, Sha256};

const SIZE: u64 = 128 * 1024 * 1024;

/// Produces `SIZE` pseudo-random bytes without holding them.
struct Generator {
    left: u64,
    state: u64,
}

impl Read for Generator {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        for b in &mut buf[..n] {
            self.state = self.state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            *b = (self.state >> 56) as u8;
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Hashes attachments instead of keeping them.
#[derive(Default)]
struct HashParts(Vec<Digest>);

struct HashWriter(Sha256, u64);

impl Write for HashWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.update(b);
        self.1 += b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl PartSink for HashParts {
    type Writer = HashWriter;
    fn create(&mut self, _index: u32) -> io::Result<HashWriter> {
        Ok(HashWriter(Sha256::new(), 0))
    }
    fn finish(&mut self, _index: u32, w: HashWriter) -> io::Result<()> {
        self.0.push(Digest(w.0.finalize().into()));
        Ok(())
    }
}

fn peak_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn current_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_128_mib_attachment_passes_through_seal_and_open_in_bounded_memory() {
    let w = World::new();
    let mut msg = example("unsolicited_information");
    if let MessageBody::UnsolicitedInformation(u) = &mut msg.body {
        for p in &mut u.persons {
            p.photographs.clear();
            p.fingerprint_card = None;
        }
        u.attachments = vec![Attachment {
            media_type: "text/csv".into(),
            length: 0,
            sha256: Digest::default(),
            file: None,
        }];
    }
    let h = msg.header.clone();
    let p = profile(h.agreement.as_str());
    let limits = Limits {
        max_envelope: 2 * SIZE,
        ..Limits::default()
    };
    let dir = tempfile::tempdir().unwrap();

    // Reset the high-water mark to the current resident size.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let base = current_kib();

    let mut env = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(dir.path().join("big.env"))
        .unwrap();
    let mut src = Generator { left: SIZE, state: 7 };
    let sealed = w
        .seal_to(
            msg,
            &mut [&mut src as &mut dyn Read],
            &[],
            BufWriter::new(&mut env),
        )
        .unwrap();
    assert_eq!(sealed.message.attachments()[0].length, SIZE);
    assert!(sealed.size > SIZE);

    env.seek(SeekFrom::Start(0)).unwrap();
    let mut body = tempfile::tempfile().unwrap();
    let received = envelope::receive(BufReader::new(&env), &limits, BufWriter::new(&mut body)).unwrap();
    let auth = received.authenticate(&w.card(&h.from)).unwrap();
    body.seek(SeekFrom::Start(0)).unwrap();
    let mut parts = HashParts::default();
    let opened = auth
        .open(
            std::io::BufReader::with_capacity(64 << 10, &body),
            w.node(&h.to),
            &w.signers(&h.from),
            &p,
            now(),
            &limits,
            &mut parts,
        )
        .unwrap();
    assert_eq!(parts.0, vec![opened.message.attachments()[0].sha256]);
    assert_eq!(
        opened.message.attachments()[0].sha256,
        sealed.message.attachments()[0].sha256
    );

    let grown_mib = peak_kib().saturating_sub(base) / 1024;
    println!("peak resident memory grew by {grown_mib} MiB for a 128 MiB attachment");
    assert!(grown_mib < 24, "peak memory grew by {grown_mib} MiB");
}
