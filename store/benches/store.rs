//! Benchmarks of the store against the bare cost of its building blocks,
//! measured in the same run (docs/STORE.md records the figures).
//!
//! - `durable_write`: 1 KiB `put_inbox` with group commit at 1, 16 and 256
//!   concurrent writers, beside: 1 KiB append + fdatasync, sled insert +
//!   flush, and sled insert without any flush at the same concurrency.
//! - `list`: 100 items out of N by state, by peer and by time.
//! - `scale`: opening a store of N records; destroying N expired records.
//!
//! N is 20,000 by default (`KONVERT_BENCH_N` overrides it);
//! `KONVERT_BENCH_FULL=1` adds one-shot timings at 1,000,000 records.
#![allow(missing_docs, clippy::unwrap_used)]

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use konvert_store::*;

const T0: i64 = 1_750_000_000;
const DAY: i64 = 86_400;

fn master() -> MasterKey {
    MasterKey::from_bytes([3u8; 32])
}

fn cfg(dir: &Path, clock: Arc<ManualClock>, mode: SyncMode) -> StoreConfig {
    let mut c = StoreConfig::new(dir, master());
    c.clock = clock;
    c.sync_mode = mode;
    c.retention = RetentionPolicy::default();
    c
}

fn message(i: u64, payload: &[u8]) -> NewMessage {
    let i = i & 0xffff_ffff_ffff;
    let peers = ["by.mvd", "by.gpk", "am.police", "am.mcs"];
    NewMessage {
        id: MessageId::new_v7(T0 as u64 * 1000 + i),
        peer: peers[(i % 4) as usize].into(),
        agreement: "kz-by-2019".into(),
        kind: "request".into(),
        case: None,
        payload: payload.to_vec(),
        digest: None,
    }
}

/// Run `total` operations spread over `threads` threads; returns elapsed time.
fn parallel(threads: usize, total: u64, op: impl Fn(u64) + Sync) -> Duration {
    let per = total.div_ceil(threads as u64);
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads as u64 {
            let op = &op;
            s.spawn(move || {
                for i in 0..per {
                    op(t * per + i);
                }
            });
        }
    });
    start.elapsed()
}

/// `threads` long-lived threads that run `op` on demand, so that thread
/// start-up is not measured.
struct Pool {
    work: Vec<std::sync::mpsc::Sender<u64>>,
    done: std::sync::mpsc::Receiver<()>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.work.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

impl Pool {
    fn new(threads: usize, op: Arc<dyn Fn(u64) + Send + Sync>) -> Pool {
        let (done_tx, done) = std::sync::mpsc::channel();
        let mut work = Vec::new();
        let mut handles = Vec::new();
        for t in 0..threads as u64 {
            let (tx, rx) = std::sync::mpsc::channel::<u64>();
            let op = op.clone();
            let done_tx = done_tx.clone();
            handles.push(std::thread::spawn(move || {
                let mut i = t << 40;
                while let Ok(n) = rx.recv() {
                    for _ in 0..n {
                        op(i);
                        i += 1;
                    }
                    let _ = done_tx.send(());
                }
            }));
            work.push(tx);
        }
        Pool { work, done, handles }
    }

    /// Run `total` operations spread over the threads; the elapsed time.
    fn run(&self, total: u64) -> Duration {
        let n = self.work.len() as u64;
        let per = total.div_ceil(n);
        let start = Instant::now();
        for w in &self.work {
            w.send(per).unwrap();
        }
        for _ in 0..n {
            self.done.recv().unwrap();
        }
        start.elapsed()
    }
}

fn durable_write(c: &mut Criterion) {
    let payload = vec![0x5au8; 1024];
    let mut g = c.benchmark_group("durable_write");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));

    // Bare: 1 KiB append + fdatasync, one writer.
    {
        let tmp = tempfile::tempdir().unwrap();
        let mut f = std::fs::File::create(tmp.path().join("f")).unwrap();
        g.bench_function("bare_append_fdatasync/1", |b| {
            b.iter(|| {
                f.write_all(&payload).unwrap();
                f.sync_data().unwrap();
            })
        });
    }
    // Bare: sled insert + flush (sync_file_range), one writer.
    {
        let tmp = tempfile::tempdir().unwrap();
        let db = sled::open(tmp.path()).unwrap();
        let mut i = 0u64;
        g.bench_function("bare_sled_insert_flush/1", |b| {
            b.iter(|| {
                i += 1;
                db.insert(MessageId::new_v7(i).0, payload.as_slice()).unwrap();
                db.flush().unwrap();
            })
        });
    }
    for threads in [1usize, 16, 256] {
        // Bare: sled insert without any flush, same concurrency.
        {
            let tmp = tempfile::tempdir().unwrap();
            let db = sled::open(tmp.path()).unwrap();
            let p = payload.clone();
            let dbc = db.clone();
            let pool = Pool::new(
                threads,
                Arc::new(move |i| {
                    dbc.insert(
                        MessageId::new_v7(T0 as u64 * 1000 + (i & 0xffff_ffff)).0,
                        p.as_slice(),
                    )
                    .unwrap();
                }),
            );
            g.bench_with_input(
                BenchmarkId::new("bare_sled_insert_noflush", threads),
                &threads,
                |b, _| b.iter_custom(|iters| pool.run(iters)),
            );
            // sled's lock for batches is process-wide: let this database's
            // background writes finish before the next measurement.
            drop(pool);
            db.flush().unwrap();
            drop(db);
        }
        // The store: sealed, indexed, audited; fdatasync group commit, and the
        // same without any sync (its CPU cost alone).
        for (mode, name) in [
            (SyncMode::Fdatasync, "store_put_fdatasync"),
            (SyncMode::DangerousNoSync, "store_put_nosync"),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let store = Arc::new(Store::open(cfg(tmp.path(), Arc::new(ManualClock::new(T0)), mode)).unwrap());
            let before = store.stats();
            let (st, p) = (store.clone(), payload.clone());
            let pool = Pool::new(
                threads,
                Arc::new(move |i| {
                    st.put_inbox(&message(i, &p)).unwrap();
                }),
            );
            g.bench_with_input(BenchmarkId::new(name, threads), &threads, |b, _| {
                b.iter_custom(|iters| pool.run(iters))
            });
            drop(pool);
            store.sync().unwrap();
            let after = store.stats();
            let acked = after.acked_writes - before.acked_writes;
            let syncs = (after.syncs - before.syncs).max(1);
            println!(
                "{name}/{threads}: {acked} acknowledged writes, {syncs} fdatasyncs, {:.1} writes per sync, mean sync {:.0} µs",
                acked as f64 / syncs as f64,
                (after.sync_micros - before.sync_micros) as f64 / syncs as f64
            );
        }
        // The same through the async API: `threads` tasks on a two-thread
        // tokio runtime (how the gateway writes), the group commit's service
        // threads taking its roles.
        {
            let tmp = tempfile::tempdir().unwrap();
            let store = Arc::new(
                Store::open(cfg(
                    tmp.path(),
                    Arc::new(ManualClock::new(T0)),
                    SyncMode::Fdatasync,
                ))
                .unwrap(),
            );
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .build()
                .unwrap();
            let before = store.stats();
            let next = Arc::new(std::sync::atomic::AtomicU64::new(1 << 40));
            let name = "store_put_async_fdatasync";
            g.bench_with_input(BenchmarkId::new(name, threads), &threads, |b, _| {
                b.iter_custom(|iters| {
                    let per = iters.div_ceil(threads as u64);
                    let start = Instant::now();
                    rt.block_on(async {
                        let mut tasks = tokio::task::JoinSet::new();
                        for _ in 0..threads {
                            let (st, p, next) = (store.clone(), payload.clone(), next.clone());
                            tasks.spawn(async move {
                                for _ in 0..per {
                                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                    st.put_inbox_async(&message(i, &p)).await.unwrap();
                                }
                            });
                        }
                        while let Some(r) = tasks.join_next().await {
                            r.unwrap();
                        }
                    });
                    start.elapsed()
                })
            });
            let after = store.stats();
            let acked = after.acked_writes - before.acked_writes;
            let syncs = (after.syncs - before.syncs).max(1);
            println!(
                "{name}/{threads}: {acked} acknowledged writes, {syncs} fdatasyncs, {:.1} writes per sync, mean sync {:.0} µs",
                acked as f64 / syncs as f64,
                (after.sync_micros - before.sync_micros) as f64 / syncs as f64
            );
        }
    }
    g.finish();
}

/// Fill a store with `n` 1 KiB inbound messages, without syncing each.
fn fill(dir: &Path, n: u64) {
    let store = Store::open(cfg(
        dir,
        Arc::new(ManualClock::new(T0)),
        SyncMode::DangerousNoSync,
    ))
    .unwrap();
    let payload = vec![0x33u8; 1024];
    parallel(4, n, |i| {
        store.put_inbox(&message(i, &payload)).unwrap();
    });
    store.sync().unwrap();
}

fn bench_n() -> u64 {
    std::env::var("KONVERT_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

fn list(c: &mut Criterion) {
    let n = bench_n();
    let tmp = tempfile::tempdir().unwrap();
    fill(tmp.path(), n);
    let store = Store::open(cfg(
        tmp.path(),
        Arc::new(ManualClock::new(T0)),
        SyncMode::Fdatasync,
    ))
    .unwrap();
    let mid = store
        .inbox_list(None, (n / 2) as usize)
        .unwrap()
        .last()
        .map(|m| m.id);
    let mut g = c.benchmark_group("list");
    g.sample_size(20).measurement_time(Duration::from_secs(2));
    g.bench_function(format!("inbox_new_100_of_{n}"), |b| {
        b.iter(|| assert_eq!(store.inbox_list(mid.as_ref(), 100).unwrap().len(), 100))
    });
    g.bench_function(format!("by_peer_100_of_{n}"), |b| {
        b.iter(|| {
            assert_eq!(
                store
                    .list_by_peer(Direction::Inbound, "am.police", mid.as_ref(), 100)
                    .unwrap()
                    .len(),
                100
            )
        })
    });
    let from = mid.map(|m| m.unix_ms()).unwrap_or(0);
    g.bench_function(format!("by_time_100_of_{n}"), |b| {
        b.iter(|| {
            assert_eq!(
                store
                    .list_between(Direction::Inbound, from, u64::MAX >> 16, 100)
                    .unwrap()
                    .len(),
                100
            )
        })
    });
    g.finish();
}

/// Destroy every record of a filled store (their retention over): the time
/// until all of them are destroyed (key gone, payload file unlinked, no
/// longer listed, unreadable) and the time the sweeper then takes to move
/// their index entries to "destroyed" (bookkeeping, in bounded steps).
struct Destroyed {
    destroyed: Duration,
    tidied: Duration,
    count: u64,
}

fn destroy_all(dir: &Path) -> Destroyed {
    let clock = Arc::new(ManualClock::new(T0));
    let store = Store::open(cfg(dir, clock.clone(), SyncMode::Fdatasync)).unwrap();
    assert!(!store.inbox_list(None, 1).unwrap().is_empty());
    clock.set(T0 + 40 * DAY);
    let start = Instant::now();
    let first = store.sweep(1).unwrap();
    let destroyed = start.elapsed();
    assert!(first.keys_destroyed > 0);
    assert!(store.inbox_list(None, 1).unwrap().is_empty());
    let mut count = first.destroyed;
    let mut more = first.remaining;
    while more {
        let r = store.sweep(100_000).unwrap();
        count += r.destroyed;
        more = r.remaining;
    }
    Destroyed {
        destroyed,
        tidied: start.elapsed(),
        count,
    }
}

fn scale(c: &mut Criterion) {
    let n = bench_n();
    let mut g = c.benchmark_group("scale");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(1));
    {
        let tmp = tempfile::tempdir().unwrap();
        fill(tmp.path(), n);
        g.bench_function(format!("open_{n}"), |b| {
            b.iter(|| {
                let s = Store::open(cfg(
                    tmp.path(),
                    Arc::new(ManualClock::new(T0)),
                    SyncMode::Fdatasync,
                ))
                .unwrap();
                drop(s);
            })
        });
    }
    let mut tidy = Vec::new();
    g.bench_function(format!("destroy_expired_{n}"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let tmp = tempfile::tempdir().unwrap();
                fill(tmp.path(), n);
                let d = destroy_all(tmp.path());
                assert_eq!(d.count, n);
                total += d.destroyed;
                tidy.push(d.tidied.as_secs_f64());
            }
            total
        })
    });
    if !tidy.is_empty() {
        println!(
            "scale/destroy_expired_{n}: index entries moved to \"destroyed\" after {:.3} s (mean of {})",
            tidy.iter().sum::<f64>() / tidy.len() as f64,
            tidy.len()
        );
    }
    g.finish();
}

/// One-shot timings at 1,000,000 records (KONVERT_BENCH_FULL=1).
fn full() {
    const N: u64 = 1_000_000;
    let tmp = tempfile::tempdir().unwrap();
    let t = Instant::now();
    fill(tmp.path(), N);
    println!("full: filled {N} records in {:.1} s", t.elapsed().as_secs_f64());
    let mut opens = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let s = Store::open(cfg(
            tmp.path(),
            Arc::new(ManualClock::new(T0)),
            SyncMode::Fdatasync,
        ))
        .unwrap();
        opens.push(t.elapsed().as_secs_f64());
        if opens.len() == 3 {
            let mid = s.inbox_list(None, (N / 2) as usize).unwrap().last().map(|m| m.id);
            let t = Instant::now();
            for _ in 0..100 {
                assert_eq!(s.inbox_list(mid.as_ref(), 100).unwrap().len(), 100);
            }
            println!(
                "full: inbox_list 100 of {N}: {:.0} µs",
                t.elapsed().as_secs_f64() * 1e6 / 100.0
            );
            let t = Instant::now();
            for _ in 0..100 {
                assert_eq!(
                    s.list_by_peer(Direction::Inbound, "am.police", mid.as_ref(), 100)
                        .unwrap()
                        .len(),
                    100
                );
            }
            println!(
                "full: list_by_peer 100 of {N}: {:.0} µs",
                t.elapsed().as_secs_f64() * 1e6 / 100.0
            );
        }
    }
    println!("full: open store of {N} records: {:?} s", opens);
    let d = destroy_all(tmp.path());
    println!(
        "full: destroyed {} expired records in {:.3} s (unreadable, unlisted, keys and payload files gone); index entries moved to \"destroyed\" after {:.1} s",
        d.count,
        d.destroyed.as_secs_f64(),
        d.tidied.as_secs_f64()
    );
}

criterion_group!(benches, durable_write, list, scale);

fn main() {
    benches();
    if std::env::var("KONVERT_BENCH_FULL").as_deref() == Ok("1") {
        full();
    }
    Criterion::default().configure_from_args().final_summary();
}
