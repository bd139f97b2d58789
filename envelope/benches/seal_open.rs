//! Sealing and opening envelopes beside the bare primitives, in one run.
//!
//! For each size (1 KiB, 64 KiB, 4 MiB of attachment data) criterion measures:
//! - `seal`: validate, stream the attachment through age, sign the message
//!   (COSE_Sign1 over its digest), encrypt the body, node-sign the envelope;
//! - `open`: parse, verify the node signature, decrypt, verify the signatory
//!   signature, decode, validate, decrypt and check the attachment;
//! - `bare`: age encryption / decryption of the same bytes to one X25519
//!   recipient, and Ed25519 sign / verify of the same bytes.
//!
//! After criterion, a summary table gives seal / (age encrypt + Ed25519 sign)
//! and open / (age decrypt + Ed25519 verify) as ratios, from medians taken
//! in the same process. `docs/BENCHMARKS.md` records the figures.

use std::hint::black_box;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use ed25519_dalek::{Signer, Verifier};
use konvert_envelope::envelope::{self, Limits};
use konvert_envelope::keys::{NodeKeys, SigningKey, TrustedSigner};
use konvert_envelope::model::{Attachment, AuthorityId, Digest, Id, Message, MessageBody, Timestamp};
use konvert_envelope::profile::Profile;

const SIZES: [(usize, &str); 3] = [(1024, "1KiB"), (64 * 1024, "64KiB"), (4 * 1024 * 1024, "4MiB")];

struct Fixture {
    kz: NodeKeys,
    by: NodeKeys,
    signatory: SigningKey,
    profile: Profile,
    message: Message,
    now: Timestamp,
}

impl Fixture {
    fn new() -> Self {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let profile = Profile::from_toml_str(
            &std::fs::read_to_string(repo.join("deploy/profiles/kz-by-2019.toml")).expect("profile"),
            "kz-by-2019",
        )
        .expect("profile parses");
        let mut message: Message = serde_json::from_str(
            &std::fs::read_to_string(repo.join("docs/examples/unsolicited_information.json"))
                .expect("example"),
        )
        .expect("example parses");
        if let MessageBody::UnsolicitedInformation(u) = &mut message.body {
            u.attachments = vec![Attachment {
                media_type: "application/pdf".into(),
                length: 0,
                sha256: Digest::default(),
                file: None,
            }];
            for p in &mut u.persons {
                p.photographs.clear();
                p.fingerprint_card = None;
            }
        }
        let kz = NodeKeys::generate(message.header.from.clone());
        let by = NodeKeys::generate(message.header.to.clone());
        Self {
            kz,
            by,
            signatory: SigningKey::generate(),
            profile,
            message,
            now: "2026-11-22T10:00:00Z".parse().expect("time"),
        }
    }

    fn seal(&self, data: &[u8]) -> Vec<u8> {
        envelope::seal_to_vec(
            self.message.clone(),
            &[data],
            &envelope::SealParams {
                signatory: &self.signatory,
                node: &self.kz,
                recipient: &self.by.card(None),
                profile: &self.profile,
                envelope_id: Id::new(self.now),
                now: self.now,
            },
        )
        .expect("seal")
        .0
    }

    fn open(&self, env: &[u8]) -> usize {
        let signers = [TrustedSigner {
            authority: self.kz.authority.clone(),
            key: self.signatory.verifying_key(),
            valid_from: None,
            valid_until: None,
        }];
        let (_, plains) = envelope::open_bytes(
            env,
            &Limits::default(),
            &self.kz.card(None),
            &self.by,
            &signers,
            &self.profile,
            self.now,
        )
        .expect("open");
        plains[0].len()
    }
}

struct Bare {
    identity: age::x25519::Identity,
    recipient: age::x25519::Recipient,
    key: ed25519_dalek::SigningKey,
}

impl Bare {
    fn new() -> Self {
        let identity = age::x25519::Identity::generate();
        let recipient = identity.to_public();
        Self {
            identity,
            recipient,
            key: ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng),
        }
    }
    fn age_encrypt(&self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + 1024);
        let mut w = age::Encryptor::with_recipients(std::iter::once(&self.recipient as &dyn age::Recipient))
            .expect("recipients")
            .wrap_output(&mut out)
            .expect("wrap");
        w.write_all(data).expect("write");
        w.finish().expect("finish");
        out
    }
    fn age_decrypt(&self, ct: &[u8]) -> usize {
        let d = age::Decryptor::new_buffered(ct).expect("header");
        let mut r = d
            .decrypt(std::iter::once(&self.identity as &dyn age::Identity))
            .expect("decrypt");
        let mut out = Vec::with_capacity(ct.len());
        r.read_to_end(&mut out).expect("read")
    }
}

fn benches(c: &mut Criterion) {
    let f = Fixture::new();
    let bare = Bare::new();
    for (size, label) in SIZES {
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let env = f.seal(&data);
        let ct = bare.age_encrypt(&data);
        let sig = bare.key.sign(&data);
        let mut g = c.benchmark_group(format!("envelope/{label}"));
        g.throughput(Throughput::Bytes(size as u64));
        if size >= 1024 * 1024 {
            g.sample_size(10).measurement_time(Duration::from_secs(3));
        } else {
            g.sample_size(30).measurement_time(Duration::from_secs(2));
        }
        g.warm_up_time(Duration::from_millis(500));
        g.bench_function(BenchmarkId::new("seal", label), |b| {
            b.iter(|| f.seal(black_box(&data)))
        });
        g.bench_function(BenchmarkId::new("open", label), |b| {
            b.iter(|| f.open(black_box(&env)))
        });
        g.bench_function(BenchmarkId::new("bare_age_encrypt", label), |b| {
            b.iter(|| bare.age_encrypt(black_box(&data)))
        });
        g.bench_function(BenchmarkId::new("bare_age_decrypt", label), |b| {
            b.iter(|| bare.age_decrypt(black_box(&ct)))
        });
        g.bench_function(BenchmarkId::new("bare_ed25519_sign", label), |b| {
            b.iter(|| bare.key.sign(black_box(&data)))
        });
        g.bench_function(BenchmarkId::new("bare_ed25519_verify", label), |b| {
            b.iter(|| {
                bare.key
                    .verifying_key()
                    .verify(black_box(&data), &sig)
                    .expect("verify")
            })
        });
        g.finish();
    }
}

/// Ed25519 verification as the gateways do it — alone, and in the batches
/// they form under load (`konvert_envelope::batch`; signatures from two
/// keys, as a receiver's are) — beside bare ed25519-dalek verifying alone.
/// Throughput is signatures.
fn signature_benches(c: &mut Criterion) {
    use konvert_envelope::batch::{verify_each, SignatureCheck};
    let keys = [SigningKey::generate(), SigningKey::generate()];
    let signed: Vec<_> = (0..64usize)
        .map(|i| {
            let k = &keys[i % 2];
            let msg = [i as u8; 64];
            (k.verifying_key(), msg, k.sign(&msg))
        })
        .collect();
    let bare = ed25519_dalek::VerifyingKey::from_bytes(&signed[0].0.to_bytes()).expect("key");
    let bare_sig = ed25519_dalek::Signature::from_bytes(&signed[0].2);
    let mut g = c.benchmark_group("signatures");
    g.sample_size(30).measurement_time(Duration::from_secs(2));
    g.throughput(Throughput::Elements(1));
    g.bench_function("bare_ed25519_verify_strict", |b| {
        b.iter(|| {
            bare.verify_strict(black_box(&signed[0].1), &bare_sig)
                .expect("verify")
        })
    });
    g.bench_function("verify_alone", |b| {
        b.iter(|| assert!(signed[0].0.verify(black_box(&signed[0].1), &signed[0].2)))
    });
    for n in [4usize, 16, 64] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("verify_batch", n), |b| {
            b.iter(|| {
                let checks: Vec<SignatureCheck> = signed[..n]
                    .iter()
                    .map(|(k, m, sig)| SignatureCheck::new(std::slice::from_ref(k), m, sig))
                    .collect();
                black_box(verify_each(&checks))
            })
        });
    }
    g.finish();
}

/// Median time of `f` over enough runs to fill about `budget`.
fn median(budget: Duration, mut f: impl FnMut()) -> Duration {
    f();
    let start = Instant::now();
    let mut times = Vec::new();
    while start.elapsed() < budget || times.len() < 5 {
        let t = Instant::now();
        f();
        times.push(t.elapsed());
    }
    times.sort();
    times[times.len() / 2]
}

fn ratio_table() {
    let f = Fixture::new();
    let bare = Bare::new();
    println!("\n| size | seal | age enc + Ed25519 sign | ratio | open | age dec + Ed25519 verify | ratio |");
    println!("|---|---|---|---|---|---|---|");
    for (size, label) in SIZES {
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let env = f.seal(&data);
        let ct = bare.age_encrypt(&data);
        let sig = bare.key.sign(&data);
        let budget = Duration::from_millis(if size > 1024 * 1024 { 1500 } else { 600 });
        let seal = median(budget, || {
            black_box(f.seal(&data));
        });
        let open = median(budget, || {
            black_box(f.open(&env));
        });
        let enc = median(budget, || {
            black_box(bare.age_encrypt(&data));
        });
        let sign = median(budget, || {
            black_box(bare.key.sign(&data));
        });
        let dec = median(budget, || {
            black_box(bare.age_decrypt(&ct));
        });
        let verify = median(budget, || {
            bare.key.verifying_key().verify(&data, &sig).expect("verify");
        });
        let us = |d: Duration| format!("{:.0} µs", d.as_secs_f64() * 1e6);
        println!(
            "| {label} | {} | {} | {:.2} | {} | {} | {:.2} |",
            us(seal),
            us(enc + sign),
            seal.as_secs_f64() / (enc + sign).as_secs_f64(),
            us(open),
            us(dec + verify),
            open.as_secs_f64() / (dec + verify).as_secs_f64(),
        );
    }
}

fn main() {
    // `cargo test --benches` runs this binary with --bench absent: keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let mut c = Criterion::default().configure_from_args();
    if quick {
        c = c
            .sample_size(10)
            .measurement_time(Duration::from_millis(100))
            .warm_up_time(Duration::from_millis(10));
    }
    benches(&mut c);
    signature_benches(&mut c);
    c.final_summary();
    if !quick {
        ratio_table();
    }
    let _ = AuthorityId::new("kz.mvd");
}
