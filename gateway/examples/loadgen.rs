//! End-to-end load generator: two real gateways (kz.mvd → by.mvd) in this
//! process on 127.0.0.1, set up with `init` and `peer add` in a temporary
//! directory. It measures submit → verified delivery receipt: validation,
//! signing, sealing (age), the durable outbox write (fdatasync), QUIC with
//! pinned mutual TLS, every check at the receiver, its durable inbox write,
//! the signed receipt and its verification. Messages are unsolicited
//! information with one attachment of 1 KiB or 1 MiB, 1 / 16 / 256 in flight.
//!
//! ```text
//! cargo run --release -p konvert-gateway --example loadgen [-- --quick] [--only 1k|1m|256m] [--count N] [--in-flight 1|16|256|N]
//! ```
//!
//! `--only` runs one size, `--in-flight` one concurrency (any number), and `--count` sets the messages of every round
//! (for profiling one case, e.g. `--only 1k --count 5000` under `perf`).
//!
//! Every round is printed beside the same work done bare in the same run:
//! the *cryptographic ceiling* (the public-key operations one message needs
//! across both gateways, measured now, divided into the cores), the share
//! of the CPU per message that is public-key work, and bare quinn
//! request/response on one connection with the same TLS setup and the same
//! message size and concurrency, measured just before the round
//! (`benches/shared/bare_quic.rs`, also used by `cargo bench --bench quic`).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use konvert_envelope::model::{AgreementId, AuthorityId, Id, Message, MessageBody, Timestamp};
use konvert_gateway::daemon::outbound::{self, Submission};
use konvert_gateway::daemon::{self, Control, Node};
use konvert_gateway::init::{self, InitOptions};
use konvert_store::{Direction, MessageId, MessageState};

#[path = "../benches/shared/bare_quic.rs"]
mod bare_quic;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn port() -> Result<u16, Error> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn setup(dir: &Path) -> Result<(std::path::PathBuf, std::path::PathBuf), Error> {
    let mut out = Vec::new();
    for a in ["kz.mvd", "by.mvd"] {
        let r = init::init(&InitOptions {
            authority: AuthorityId::new(a)?,
            dir: dir.join(a),
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], port()?)),
            api_socket: None,
            name: None,
            signatory: "head".into(),
            force: false,
        })?;
        out.push(r);
    }
    let ag = AgreementId::new("kz-by-2019")?;
    let addr = |i: usize| -> Result<String, Error> {
        let cfg = konvert_gateway::config::Config::parse(
            &std::fs::read_to_string(&out[i].config)?,
            &out[i].config,
        )?;
        Ok(cfg.quic.listen.to_string())
    };
    init::peer_add(
        &out[0].config,
        &out[1].card,
        &[addr(1)?],
        std::slice::from_ref(&ag),
    )?;
    init::peer_add(
        &out[1].config,
        &out[0].card,
        &[addr(0)?],
        std::slice::from_ref(&ag),
    )?;
    Ok((out[0].config.clone(), out[1].config.clone()))
}

fn template() -> Result<Message, Error> {
    let mut m: Message =
        serde_json::from_str(include_str!("../../docs/examples/unsolicited_information.json"))?;
    if let MessageBody::UnsolicitedInformation(u) = &mut m.body {
        for p in &mut u.persons {
            p.photographs.clear();
            p.fingerprint_card = None;
        }
        u.attachments = vec![konvert_envelope::model::Attachment {
            media_type: "application/pdf".into(),
            length: 0,
            sha256: Default::default(),
            file: None,
        }];
    }
    Ok(m)
}

async fn delivered(node: &Node, id: Id) -> Result<(), Error> {
    let key = MessageId(*id.as_bytes());
    loop {
        // (As `GET /v1/messages/{id}?wait=N` waits: told when this message
        // settles, not woken by every other delivery.)
        let settled = node.outcomes.watch(&key);
        let meta = node.store.meta(Direction::Outbound, &key)?;
        match meta.state {
            MessageState::Delivered => return Ok(()),
            MessageState::Failed => return Err(format!("message {id} failed").into()),
            _ => {}
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), settled).await;
    }
}

/// Submits `count` messages with `in_flight` outstanding; returns latencies.
async fn round(
    node: &Arc<Node>,
    size: usize,
    count: usize,
    in_flight: usize,
) -> Result<Vec<Duration>, Error> {
    let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let sem = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..count {
        let permit = Arc::clone(&sem).acquire_owned().await?;
        // Each message carries its own upload, as an application would send it.
        let id = Id::new(Timestamp::now());
        // (What `POST /v1/uploads` does with the body: small uploads are held in memory.)
        let upload = node.uploads.receive(&data[..], Some(size as u64)).await?.id;
        let mut m = template()?;
        m.header.id = id;
        m.header.time = Timestamp::now();
        for a in m.attachments_mut() {
            a.file = Some(format!("upload:{upload}"));
        }
        let node = Arc::clone(node);
        tasks.spawn(async move {
            let start = Instant::now();
            let r = outbound::submit(
                &node,
                Submission {
                    message: m,
                    signatory: "head".into(),
                    sources: Vec::new(),
                    purpose: None,
                },
            )
            .await;
            let r = match r {
                Ok(_) => delivered(&node, id).await.map(|()| start.elapsed()),
                Err(e) => Err(e.to_string().into()),
            };
            drop(permit);
            r
        });
    }
    let mut lat = Vec::with_capacity(count);
    while let Some(r) = tasks.join_next().await {
        lat.push(r??);
    }
    lat.sort();
    Ok(lat)
}

/// The process's peak resident memory so far (`VmHWM`), in KiB.
fn peak_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// One message of `size` bytes through both gateways (this process holds
/// both): submit to verified receipt, and how much the process's peak
/// memory grew meanwhile. The upload is written in 1 MiB pieces, so the
/// figure is the gateways' own.
async fn large_round(node: &Arc<Node>, size: usize) -> Result<(), Error> {
    use std::io::Write;
    let upload = Id::new(Timestamp::now());
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(
            node.uploads.dir().join(upload.to_string()),
        )?);
        let piece: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        for _ in 0..size >> 20 {
            f.write_all(&piece)?;
        }
        f.flush()?;
    }
    let before = peak_kib();
    let id = Id::new(Timestamp::now());
    let mut m = template()?;
    m.header.id = id;
    m.header.time = Timestamp::now();
    for a in m.attachments_mut() {
        a.file = Some(format!("upload:{upload}"));
    }
    let start = Instant::now();
    outbound::submit(
        node,
        Submission {
            message: m,
            signatory: "head".into(),
            sources: Vec::new(),
            purpose: None,
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    delivered(node, id).await?;
    let secs = start.elapsed().as_secs_f64();
    let growth = peak_kib().saturating_sub(before);
    println!(
        "\n{} MiB message, submit to verified receipt: {:.1} s ({:.0} MB/s); peak memory of both gateways grew by {} MiB",
        size >> 20,
        secs,
        size as f64 / secs / 1e6,
        growth >> 10
    );
    Ok(())
}

/// CPU time this process has used so far (user + system, all threads),
/// from `/proc/self/stat` (clock ticks of 10 ms; rounds are long enough).
fn cpu_time() -> Duration {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name, which is in parentheses.
            let rest = s.rsplit_once(')')?.1.to_owned();
            let f: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of the whole line.
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// Median of `f` over `n` runs.
fn median(n: usize, mut f: impl FnMut()) -> Duration {
    let mut t: Vec<Duration> = (0..n)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed()
        })
        .collect();
    t.sort();
    t[n / 2]
}

/// The median bare cost of one age encryption and one decryption of
/// `size` bytes to one X25519 recipient, over `runs` runs each.
fn bare_age(size: usize, runs: usize) -> (Duration, Duration) {
    use std::io::{Read, Write};
    let id = age::x25519::Identity::generate();
    let rcpt = id.to_public();
    let data = vec![7u8; size];
    let encrypt = || -> Vec<u8> {
        let mut out = Vec::with_capacity(size + 4096);
        if let Ok(e) = age::Encryptor::with_recipients(std::iter::once(&rcpt as &dyn age::Recipient)) {
            if let Ok(mut w) = e.wrap_output(&mut out) {
                let _ = w.write_all(&data);
                let _ = w.finish();
            }
        }
        out
    };
    let ct = encrypt();
    let enc = median(runs, || {
        std::hint::black_box(encrypt());
    });
    let dec = median(runs, || {
        if let Ok(d) = age::Decryptor::new_buffered(ct.as_slice()) {
            if let Ok(mut r) = d.decrypt(std::iter::once(&id as &dyn age::Identity)) {
                let mut v = Vec::with_capacity(size);
                let _ = r.read_to_end(&mut v);
                std::hint::black_box(v);
            }
        }
    });
    (enc, dec)
}

/// The bare cost of the public-key work one 1 KiB message needs across both
/// gateways, measured now: one age encryption and one decryption (X25519),
/// three Ed25519 signatures (signatory, sender node, receipt) and three
/// verifications. Divided into the machine's cores, it is the most messages
/// per second any design with these operations could reach, each checked
/// alone. Also returns the cost of one verification, and of the
/// base-point multiplication age's X25519 identity makes in every
/// decryption to derive its own public key (which this design does once,
/// `konvert_envelope::age_x25519`).
fn crypto_ceiling() -> Result<(Duration, Duration, Duration, f64), Error> {
    use ed25519_dalek::{Signer, Verifier};
    let (enc, dec) = bare_age(1024, 200);
    let id = age::x25519::Identity::generate();
    let derive = median(500, || {
        std::hint::black_box(id.to_public());
    });
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let digest = [9u8; 64];
    let sig = key.sign(&digest);
    let sign = median(500, || {
        std::hint::black_box(key.sign(&digest));
    });
    let verify = median(500, || {
        let _ = std::hint::black_box(key.verifying_key().verify(&digest, &sig));
    });
    let per_message = enc + dec + sign * 3 + verify * 3;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    Ok((per_message, verify, derive, cores / per_message.as_secs_f64()))
}

/// The bare cost per signature of checking `n` Ed25519 signatures together
/// (the gateway's batches, `konvert_envelope::batch`), from two keys as a
/// receiver's are (the peer's node key and a signatory), hashing included.
fn bare_batch_verify(n: usize) -> Duration {
    use konvert_envelope::batch::{verify_each, SignatureCheck};
    use konvert_envelope::keys::SigningKey;
    let keys = [SigningKey::generate(), SigningKey::generate()];
    let signed: Vec<_> = (0..n.max(1))
        .map(|i| {
            let k = &keys[i % 2];
            let msg = [i as u8; 64];
            (k.verifying_key(), msg, k.sign(&msg))
        })
        .collect();
    let check = |(k, m, s): &(konvert_envelope::keys::VerifyingKey, [u8; 64], [u8; 64])| {
        SignatureCheck::new(std::slice::from_ref(k), m, s)
    };
    let runs = (4000 / signed.len()).clamp(20, 500);
    median(runs, || {
        let checks: Vec<SignatureCheck> = signed.iter().map(check).collect();
        std::hint::black_box(verify_each(&checks));
    }) / signed.len() as u32
}

/// The bare cost of the passes over the data that one message of `size`
/// bytes needs across both gateways whatever the implementation, measured
/// now: one age encryption and one decryption (ChaCha20-Poly1305), four
/// SHA-256 passes (the upload's digest; the envelope digest the sender
/// signs and the receiver checks; the attachment's digest after opening)
/// and two AES-256-GCM seals (each store's at-rest seal). Writing to disk,
/// copies and framing are not counted, so a design floor built on it is
/// optimistic.
fn data_passes(size: usize) -> Result<Passes, Error> {
    use sha2::Digest as _;
    let data = vec![7u8; size];
    let runs = 15;
    let (enc, dec) = bare_age(size, runs);
    let sha = median(runs, || {
        std::hint::black_box(sha2::Sha256::digest(&data));
    });
    let key = ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &[5u8; 32]).map_err(|_| "AES key")?,
    );
    let mut buf = data.clone();
    let aes = median(runs, || {
        let nonce = ring::aead::Nonce::assume_unique_for_key([1u8; 12]);
        std::hint::black_box(
            key.seal_in_place_separate_tag(nonce, ring::aead::Aad::empty(), &mut buf)
                .ok(),
        );
    });
    Ok(Passes { enc, dec, sha, aes })
}

/// [`data_passes`]: the bare cost of each pass.
struct Passes {
    enc: Duration,
    dec: Duration,
    sha: Duration,
    aes: Duration,
}

impl Passes {
    fn total(&self) -> Duration {
        self.enc + self.dec + self.sha * 4 + self.aes * 2
    }
    fn describe(&self) -> String {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        format!(
            "age encrypt {:.0} µs, decrypt {:.0} µs, SHA-256 {:.0} µs, AES-256-GCM {:.0} µs",
            us(self.enc),
            us(self.dec),
            us(self.sha),
            us(self.aes)
        )
    }
}

fn pct(v: &[Duration], p: f64) -> Duration {
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    // The gateways' logs on stderr, at the level RUST_LOG names (default:
    // warnings only, so that logging does not weigh on the figures).
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let only = arg("--only");
    let count_override: Option<usize> = arg("--count").and_then(|c| c.parse().ok());
    let in_flight_only: Option<usize> = arg("--in-flight").and_then(|c| c.parse().ok());
    let dir = tempfile::tempdir()?;
    let (kz_cfg, by_cfg) = setup(dir.path())?;
    let kz = Node::start(&kz_cfg)?;
    let by = Node::start(&by_cfg)?;
    let (kz_tx, kz_rx) = tokio::sync::mpsc::channel(1);
    let (by_tx, by_rx) = tokio::sync::mpsc::channel(1);
    let kz_task = tokio::spawn(daemon::run(Arc::clone(&kz), kz_rx));
    let by_task = tokio::spawn(daemon::run(Arc::clone(&by), by_rx));
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Warm up: connection established, caches filled.
    round(&kz, 1024, 20, 4).await?;

    let (per_message, verify_alone, derive, ceiling) = crypto_ceiling()?;
    println!(
        "crypto ceiling (1 KiB): {:.0} µs of public-key work per message -> {:.0} msg/s on {} cores\n",
        per_message.as_secs_f64() * 1e6,
        ceiling,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    // Bare quinn request/response on one connection with the same TLS
    // setup, measured just before each end-to-end round.
    let (_bare_client, bare_conn) = bare_quic::bare_pair().await;
    println!(
        "| size | in flight | messages | msg/s | MB/s | p50 | p99 | of ceiling | CPU per message | of it public-key work | durable writes per sync | signatures per batch | bare quinn msg/s | of bare quinn |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    // The 1 KiB rounds against the ceiling of this design, whose
    // verifications are batched: (in flight, signatures per batch, rate).
    let mut batched: Vec<(usize, f64, f64)> = Vec::new();
    let mut floors: Vec<String> = Vec::new();
    let mut last_passes = String::new();
    // Messages per round: several waves of the in-flight count, so that a
    // round's figures are not mostly its start (64 messages of 1 MiB at 16
    // in flight read 15 % more CPU per message than 200 in the same minute).
    for (size, label, counts) in [
        (1024, "1 KiB", [200usize, 3000, 4000]),
        (1024 * 1024, "1 MiB", [40, 200, 768]),
    ] {
        let short = if size == 1024 { "1k" } else { "1m" };
        if only.as_deref().is_some_and(|o| o != short) {
            continue;
        }
        if size > 1024 && !quick {
            // Warm up at this size: the allocator's heap grows to the size's
            // working set once (first-touch page faults, each zeroing a huge
            // page, are not what a running gateway pays per message).
            round(&kz, size, 32, 16).await?;
        }
        // The three standard levels, or the one `--in-flight` names (any
        // number: e.g. 1024, to see whether more concurrency still raises
        // the rate), with as many messages as the 256 round.
        let mut levels: Vec<(usize, usize)> = [1usize, 16, 256].into_iter().zip(counts).collect();
        if let Some(n) = in_flight_only.filter(|n| ![1, 16, 256].contains(n)) {
            levels = vec![(n, counts[2])];
        }
        for (in_flight, count) in levels {
            if in_flight_only.is_some_and(|n| n != in_flight) {
                continue;
            }
            let count = count_override.unwrap_or(if quick { count.min(40) } else { count });
            let bare_count = if size == 1024 {
                (count * 4).max(2000)
            } else {
                count.max(64)
            };
            let body = bytes::Bytes::from(vec![0xa5; size]);
            let conn = bare_conn.clone();
            let bare_cpu0 = cpu_time();
            let bare = bare_quic::run(bare_count as u64, in_flight, move || {
                let (conn, body) = (conn.clone(), body.clone());
                async move { bare_quic::bare_request(&conn, &body).await }
            })
            .await;
            let bare_cpu = (cpu_time() - bare_cpu0).as_secs_f64() / bare_count as f64;
            let bare_rate = bare_count as f64 / bare.as_secs_f64();
            // Group commit across both gateways: acknowledged durable
            // writes (three per message) per flush + fdatasync.
            let commits = || {
                let (a, b) = (kz.store.stats(), by.store.stats());
                (a.acked_writes + b.acked_writes, a.syncs + b.syncs)
            };
            // Signature checks across both gateways: (batches, signatures).
            let checks = || {
                let (a, b) = (kz.verifier.stats(), by.verifier.stats());
                (a.batches() + b.batches(), a.signatures() + b.signatures())
            };
            let commits0 = commits();
            let checks0 = checks();
            let start = Instant::now();
            let cpu0 = cpu_time();
            let lat = round(&kz, size, count, in_flight).await?;
            let secs = start.elapsed().as_secs_f64();
            let cpu = (cpu_time() - cpu0).as_secs_f64() / count as f64;
            let commits1 = commits();
            let per_sync = (commits1.0 - commits0.0) as f64 / (commits1.1 - commits0.1).max(1) as f64;
            let checks1 = checks();
            let per_batch = (checks1.1 - checks0.1) as f64 / (checks1.0 - checks0.0).max(1) as f64;
            let rate = count as f64 / secs;
            if size == 1024 {
                batched.push((in_flight, per_batch, rate));
            }
            let (share, crypto_share) = if size == 1024 {
                (
                    format!("{:.0} %", 100.0 * rate / ceiling),
                    format!("{:.0} %", 100.0 * per_message.as_secs_f64() / cpu.max(1e-9)),
                )
            } else {
                ("-".into(), "-".into())
            };
            if size > 1024 {
                // The most any implementation of this protocol could reach
                // beside this bare quinn run: the transport's own CPU per
                // message plus the data passes, divided into the cores.
                let p = data_passes(size)?;
                let passes = p.total().as_secs_f64();
                last_passes = p.describe();
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
                let best = (cores / (bare_cpu + passes)).min(bare_rate);
                floors.push(format!(
                    "| {label} | {in_flight} | {bare_rate:.0} | {:.0} µs | {:.0} µs | {best:.0} | {:.0} % | {:.0} % |",
                    bare_cpu * 1e6,
                    passes * 1e6,
                    100.0 * best / bare_rate,
                    100.0 * rate / bare_rate,
                ));
            }
            println!(
                "| {label} | {in_flight} | {count} | {rate:.0} | {:.1} | {:.1} ms | {:.1} ms | {share} | {:.0} µs | {crypto_share} | {per_sync:.1} | {per_batch:.1} | {bare_rate:.0} ({:.0} MB/s) | {:.0} % |",
                (count * size) as f64 / secs / 1e6,
                pct(&lat, 0.5).as_secs_f64() * 1e3,
                pct(&lat, 0.99).as_secs_f64() * 1e3,
                cpu * 1e6,
                bare_rate * size as f64 / 1e6,
                100.0 * rate / bare_rate,
            );
        }
    }
    if !batched.is_empty() {
        // The design checks its verifications in batches: the ceiling of
        // its own public-key work, with each verification at the bare cost
        // of a batch of the size the round had.
        println!(
            "\nThe 1 KiB rounds against this design's own ceiling: its three verifications per message are\n\
             checked in batches (konvert_envelope::batch); each at the bare cost of a batch of the size the\n\
             round had, hashing included, measured now. The ceiling above counts them one by one. And its\n\
             decryption does not derive the identity's public key again ({:.0} µs, measured now: one\n\
             base-point multiplication, which age's own decryption makes every time).\n",
            derive.as_secs_f64() * 1e6
        );
        println!("| in flight | signatures per batch | bare verification alone | in such batches, per signature | public-key work per message | ceiling, batched | of it |");
        println!("|---|---|---|---|---|---|---|");
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        for (in_flight, per_batch, rate) in batched {
            let together = bare_batch_verify(per_batch.round().max(1.0) as usize);
            let work = per_message.saturating_sub(verify_alone * 3 + derive) + together * 3;
            let ceiling = cores / work.as_secs_f64();
            println!(
                "| {in_flight} | {per_batch:.1} | {:.0} µs | {:.0} µs | {:.0} µs | {ceiling:.0} msg/s | {:.0} % |",
                us(verify_alone),
                us(together),
                us(work),
                100.0 * rate / ceiling,
            );
        }
    }
    if !floors.is_empty() {
        println!(
            "\nDesign floor at 1 MiB: bare quinn's CPU per message plus the data passes the protocol needs\n\
             (age both ways, 4 x SHA-256, 2 x AES-256-GCM), measured now; disk writes and copies not counted.\n\
             Last measured: {last_passes}.\n"
        );
        println!("| size | in flight | bare quinn msg/s | its CPU per message | data passes | best possible msg/s | of bare quinn | measured, of bare quinn |");
        println!("|---|---|---|---|---|---|---|---|");
        for f in &floors {
            println!("{f}");
        }
    }
    if only.as_deref().is_none_or(|o| o == "256m") && !quick {
        large_round(&kz, 256 << 20).await?;
    }
    kz_tx.send(Control::Stop).await?;
    by_tx.send(Control::Stop).await?;
    kz_task.await??;
    by_task.await??;
    Ok(())
}
