//! A large message passes through two real gateways in bounded memory:
//! sealed into a store blob at the sender, streamed over QUIC, checked as it
//! arrives, its attachment written into a blob at the receiver and streamed
//! out to the application. The daemons' peak resident memory (`VmHWM`) may
//! not grow by anything near the message's size.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use konvert_tests::{message, submit, Gateway};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The attachment: above the streaming threshold (1 MiB) many times over,
/// and well above the daemons' fixed buffers (quinn's send window, the
/// sealing and store pipes, mimalloc's per-thread pages, which it keeps
/// for 10 s after they are freed and grows in 4 MiB segments: 4-16 MiB in
/// all, measured). (`loadgen --only 256m` measures a 256 MiB message in a
/// release build.)
const SIZE: usize = 64 << 20;
/// What either daemon's peak memory may grow by while it passes through:
/// half the message. Held in memory anywhere, it would be all of it.
const GROWTH_LIMIT_KB: u64 = 32 << 10;

fn bytes(len: usize, seed: u64) -> Vec<u8> {
    // xorshift: incompressible, reproducible.
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn deliver(kz: &Gateway, attachment: &[u8]) -> String {
    let (id, doc) = message(kz, "request", "by.mvd", None, attachment);
    submit(kz, &doc);
    kz.wait_state(&id, &["delivered"], Duration::from_secs(300));
    id
}

fn fetch_attachment(by: &Gateway, id: &str) -> Vec<u8> {
    let (code, body) = by.request("GET", &format!("/v1/inbox/{id}/attachments/0"), None);
    assert_eq!(
        code,
        200,
        "{}",
        String::from_utf8_lossy(&body[..body.len().min(400)])
    );
    body
}

#[test]
fn a_large_message_passes_through_both_gateways_in_bounded_memory() {
    let t = tempfile::tempdir().unwrap();
    let mut kz = Gateway::init(t.path(), "kz.mvd");
    let mut by = Gateway::init(t.path(), "by.mvd");
    kz.add_peer(&by, "kz-by-2019");
    by.add_peer(&kz, "kz-by-2019");
    kz.start();
    by.start();

    // A first streamed message warms both up (connections, thread pools,
    // the store's caches), and must arrive intact too.
    let small = bytes(3 << 20, 1);
    let id = deliver(&kz, &small);
    assert_eq!(fetch_attachment(&by, &id), small);

    let peak = |g: &Gateway| g.proc_status_kb("VmHWM");
    let before = (peak(&kz), peak(&by));
    let big = bytes(SIZE, 2);
    let id = deliver(&kz, &big);
    let item: Value = by.get_json(&format!("/v1/inbox/{id}"));
    assert_eq!(item["attachments"].as_array().map(Vec::len), Some(1), "{item}");
    let got = fetch_attachment(&by, &id);
    assert_eq!(got.len(), SIZE);
    assert!(
        Sha256::digest(&got) == Sha256::digest(&big),
        "the attachment arrived changed"
    );
    let after = (peak(&kz), peak(&by));
    // (VmHWM is read from approximate per-CPU counters: with no growth it
    // can read a few pages lower than before.)
    let growth = (after.0.saturating_sub(before.0), after.1.saturating_sub(before.1));
    eprintln!(
        "peak memory growth for a {} MiB message: sender {} KiB, receiver {} KiB",
        SIZE >> 20,
        growth.0,
        growth.1
    );
    assert!(
        growth.0 < GROWTH_LIMIT_KB && growth.1 < GROWTH_LIMIT_KB,
        "peak memory grew by {growth:?} KiB for a {} MiB message",
        SIZE >> 20
    );
    // Nothing of it is left in the spool, and the upload is spent.
    for g in [&kz, &by] {
        let spool = g.dir.join("data/spool");
        if spool.exists() {
            assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 0);
        }
    }
    kz.stop();
    by.stop();
}
