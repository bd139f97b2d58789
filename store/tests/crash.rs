#![allow(clippy::unwrap_used)]
//! Crash test: a child process (this test binary, re-invoked) writes as fast
//! as it can from several threads and async tasks (puts, sent and delivered
//! transitions) and prints every id the store acknowledged;
//! it is SIGKILLed at a random moment, 20 times over the same data directory.
//! After each kill the parent reopens the store: every acknowledged write must
//! be there and intact, every record present must be whole, and the audit
//! chain must verify.

mod common;

use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use konvert_store::*;
use rand::Rng;

const CHILD_ENV: &str = "KONVERT_STORE_CRASH_CHILD";

/// How many concurrent writers the child announces (every other round
/// many, so that the busy group commit, which holds new puts while it
/// gathers, is killed mid-way too).
const WRITERS_ENV: &str = "KONVERT_STORE_CRASH_WRITERS";

/// 1 KiB, and for about one id in 32 a large payload (64–240 KiB: the
/// payload files' aligned appends, which leave the page cache once durable).
fn payload_for(id: &MessageId) -> Vec<u8> {
    let len = if id.0[15].is_multiple_of(32) {
        (64 << 10) + usize::from(id.0[14]) * 700
    } else {
        1024
    };
    id.0.iter().cycle().take(len).copied().collect()
}

/// The child's body; a no-op unless started by `crash_many_times`.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    let s = Arc::new(open(dir.as_ref(), Arc::new(ManualClock::new(T0))));
    if let Some(n) = std::env::var(WRITERS_ENV).ok().and_then(|v| v.parse().ok()) {
        s.set_concurrent_writers(n);
    }
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let s = s.clone();
            let out = out.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                loop {
                    let mut m = msg(1_000_000 + n, "by.mvd", "request", &[]);
                    m.id = MessageId::new_v7((T0 as u64) * 1000 + n);
                    m.payload = payload_for(&m.id);
                    let dir = if t % 2 == 0 { "O" } else { "I" };
                    let r = if t % 2 == 0 {
                        s.put_outbox(&m)
                    } else {
                        s.put_inbox(&m)
                    };
                    if let Err(e) = r {
                        writeln!(out.lock().unwrap(), "FAIL {e}").unwrap();
                        return;
                    }
                    if n.is_multiple_of(5) && t % 2 == 0 {
                        if let Err(e) = s.mark_sent(&m.id) {
                            writeln!(out.lock().unwrap(), "FAIL {e}").unwrap();
                            return;
                        }
                        writeln!(out.lock().unwrap(), "SENT {}", m.id).unwrap();
                    }
                    writeln!(out.lock().unwrap(), "ACK {dir} {}", m.id).unwrap();
                    n += 1;
                }
            })
        })
        .collect();
    // And 32 async writers on a tokio runtime (the gateway's way).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..32u64 {
            let (s, out) = (s.clone(), out.clone());
            tasks.spawn(async move {
                for n in 0u64.. {
                    let mut m = msg(0, "am.police", "request", &[]);
                    m.id = MessageId::new_v7((T0 as u64) * 1000 + 500_000_000 + t * 10_000_000 + n);
                    m.payload = payload_for(&m.id);
                    let (dir, r) = if t % 2 == 0 {
                        ("O", s.put_outbox_async(&m).await)
                    } else {
                        ("I", s.put_inbox_async(&m).await)
                    };
                    match r {
                        Ok(_) => writeln!(out.lock().unwrap(), "ACK {dir} {}", m.id).unwrap(),
                        Err(e) => {
                            writeln!(out.lock().unwrap(), "FAIL {e}").unwrap();
                            return;
                        }
                    }
                    // Every third outgoing one gets its delivery receipt
                    // (applied in groups by the service thread).
                    if t % 2 == 0 && n % 3 == 0 {
                        let receipt = NewReceipt {
                            outcome: "accepted".into(),
                            bytes: m.id.0.to_vec(),
                        };
                        match s.mark_delivered_async(&m.id, &receipt).await {
                            Ok(_) => writeln!(out.lock().unwrap(), "DELIVERED {}", m.id).unwrap(),
                            Err(e) => {
                                writeln!(out.lock().unwrap(), "FAIL {e}").unwrap();
                                return;
                            }
                        }
                    }
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
    });
    for t in threads {
        t.join().unwrap();
    }
}

fn parse_id(s: &str) -> MessageId {
    let mut b = [0u8; 16];
    for (i, chunk) in b.iter_mut().enumerate() {
        *chunk = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    MessageId(b)
}

#[test]
fn crash_many_times() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::thread_rng();
    let mut acked: Vec<(Direction, MessageId)> = Vec::new();
    let mut sent: Vec<MessageId> = Vec::new();
    let mut delivered: Vec<MessageId> = Vec::new();
    for round in 0..20 {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, tmp.path())
            .env(WRITERS_ENV, if round % 2 == 0 { "40" } else { "256" })
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            std::io::BufReader::new(stdout)
                .lines()
                .map_while(|l| l.ok())
                .collect::<Vec<String>>()
        });
        std::thread::sleep(Duration::from_millis(rng.gen_range(20..150)));
        child.kill().unwrap();
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        let before = acked.len();
        for l in lines {
            let parts: Vec<&str> = l.split_whitespace().collect();
            match parts.as_slice() {
                ["ACK", "O", id] => acked.push((Direction::Outbound, parse_id(id))),
                ["ACK", "I", id] => acked.push((Direction::Inbound, parse_id(id))),
                ["SENT", id] => sent.push(parse_id(id)),
                ["DELIVERED", id] => delivered.push(parse_id(id)),
                ["FAIL", ..] => panic!("round {round}: the child's write failed: {l}"),
                _ => {}
            }
        }

        // Reopen after the kill and check.
        let s = open(tmp.path(), Arc::new(ManualClock::new(T0)));
        for (dir, id) in &acked {
            let m = s
                .get(*dir, id)
                .unwrap_or_else(|e| panic!("round {round}: acknowledged {id} lost: {e}"));
            assert_eq!(m.payload, payload_for(id), "round {round}: {id} damaged");
        }
        for id in &sent {
            assert_eq!(s.meta(Direction::Outbound, id).unwrap().state, MessageState::Sent);
        }
        for id in &delivered {
            assert_eq!(
                s.meta(Direction::Outbound, id).unwrap().state,
                MessageState::Delivered,
                "round {round}: delivery of {id} lost"
            );
            assert_eq!(
                s.receipt(id).unwrap().bytes,
                id.0.to_vec(),
                "round {round}: receipt of {id}"
            );
        }
        // Nothing half-written: every record present opens and matches its
        // digest (SHA-256 of the payload: the test gives none).
        for dir in [Direction::Outbound, Direction::Inbound] {
            for meta in s.list_between(dir, 0, u64::MAX >> 16, usize::MAX).unwrap() {
                let m = s.get(dir, &meta.id).unwrap();
                use sha2::Digest;
                assert_eq!(<[u8; 32]>::from(sha2::Sha256::digest(&m.payload)), meta.digest);
            }
        }
        s.audit_verify().unwrap_or_else(|e| panic!("round {round}: {e}"));
        eprintln!(
            "round {round}: {} acknowledged writes so far (+{})",
            acked.len(),
            acked.len() - before
        );
    }
    assert!(
        acked.len() > 100 && delivered.len() > 10,
        "the child acknowledged too few writes ({}) or deliveries ({}) to mean anything",
        acked.len(),
        delivered.len()
    );
}
