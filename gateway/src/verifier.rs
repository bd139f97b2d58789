//! The signatures of many envelopes and receipts, checked together.
//!
//! A gateway under load checks three Ed25519 signatures per message (the
//! node and signatory signatures of each envelope it receives, the receipt
//! of each envelope it sent), most of them by a few keys: its peers' node
//! keys and signatories. Checked one by one each costs a double scalar
//! multiplication; checked together, as a batch (one multiscalar
//! multiplication; signatures of one key share their key's term), a few
//! dozen cost about a quarter each (`konvert_envelope::batch`, whose rule
//! gives a batch exactly the verdicts of single checks).
//!
//! [`Verifier::verify`] queues the caller's checks and yields to the
//! runtime once, so that the other tasks ready to run get to queue theirs;
//! then one caller (whichever comes first; the others wait for their
//! verdicts) takes everything queued and verifies it as one batch on its
//! own thread. So batches grow with the number of tasks that reach a
//! check at once — in the load generator about 5 signatures at 16
//! envelopes in flight (and 3 at 256 before the busy wait below; about
//! 16–22 µs each instead of 30 alone); with one envelope in flight, its
//! own. No thread hop, and no
//! timer while the node is not busy: at 16 in flight, waiting 1 ms for a
//! batch to fill cut the rate by 40 % (each wait is on the message's path,
//! and 16 messages cannot fill a batch).
//!
//! **Busy** (the node has [`BUSY_LOAD`] or more envelopes in flight, or
//! enough and its cores saturated, [`crate::daemon::load`]; its rate is
//! then set by the CPU, not by the latency of each message), the first caller that finds nobody gathering
//! waits up to [`GATHER_WAIT`] for others to queue theirs, and verifies
//! the batch when the wait is over or as soon as the queue holds
//! [`GATHER`] signatures (the caller that fills it verifies it at once);
//! the callers that arrive meanwhile just wait for their verdicts. At 256
//! in flight this took batches from about 3 signatures to 13–14 and the
//! CPU per 1 KiB message down by 5 % and 2–6 % again (its two steps:
//! docs/BENCHMARKS.md, stop 17, items 3 and 5). A
//! gatherer whose task is cancelled verifies what it gathered as it goes.
//!
//! The caller that verifies goes on until the queue is empty (a check
//! queued meanwhile would otherwise wait for nobody), so under a steady
//! stream it may verify several batches before it returns with its own
//! verdict; it clears its flag under the same lock as its last look at the
//! queue, so that every check queued while it was seen verifying is its to
//! take.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use konvert_envelope::batch::{verify_each, SignatureCheck};
use tokio::sync::oneshot;

/// At most this many signatures in one batch (beyond a few dozen a larger
/// batch saves little, and it holds the runtime thread that verifies it:
/// 64 take about 0.6 ms).
pub const MAX_BATCH: usize = 64;

struct Job {
    checks: Vec<SignatureCheck>,
    done: oneshot::Sender<Vec<bool>>,
}

#[derive(Default)]
struct Queue {
    jobs: Vec<Job>,
    /// Signatures in `jobs`.
    signatures: usize,
    /// A caller is verifying a batch now.
    verifying: bool,
    /// A caller is waiting for the queue to fill ([`GATHER`], [`GATHER_WAIT`]).
    gathering: bool,
}

/// How much the verifier did (for metrics and the load generator).
#[derive(Debug, Default)]
pub struct VerifierStats {
    batches: AtomicU64,
    signatures: AtomicU64,
}

impl VerifierStats {
    /// Batches verified so far.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }
    /// Signatures checked so far (in batches).
    pub fn signatures(&self) -> u64 {
        self.signatures.load(Ordering::Relaxed)
    }
}

/// With at least this many envelopes in flight through the node, it is
/// busy ([`crate::daemon::load::hints`]; also with fewer, from
/// [`crate::daemon::load::MIN_IN_FLIGHT`] on, when its cores are saturated)
/// and a check waits a little for others to join its batch
/// ([`Verifier::set_busy`]).
pub const BUSY_LOAD: usize = 64;

/// A waiting batch is verified once it holds this many signatures…
pub const GATHER: usize = 32;

/// …or once its first check has waited this long.
pub const GATHER_WAIT: std::time::Duration = std::time::Duration::from_millis(1);

/// Checks signatures in batches formed by its callers.
#[derive(Default)]
pub struct Verifier {
    queue: Mutex<Queue>,
    stats: VerifierStats,
    /// The node is busy ([`Verifier::set_busy`]).
    busy: AtomicBool,
    /// Wakes the caller gathering a batch when the batch is full.
    full: tokio::sync::Notify,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("stats", &self.stats).finish()
    }
}

/// Ends a caller's gathering, also if its task is cancelled while it waits:
/// clears `gathering` and verifies what is queued.
struct Gathering<'a>(&'a Verifier);

impl Drop for Gathering<'_> {
    fn drop(&mut self) {
        self.0.lock().gathering = false;
        self.0.verify_queued();
    }
}

/// Clears `verifying` if a batch panicked (its jobs are then dropped: their
/// callers see no verdict and take none as valid); disarmed (`.1 = false`)
/// when the verifying caller clears it itself.
struct Verifying<'a>(&'a Mutex<Queue>, bool);

impl Drop for Verifying<'_> {
    fn drop(&mut self) {
        if self.1 {
            let mut q = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            q.verifying = false;
        }
    }
}

/// How a caller of [`Verifier::verify`] gets its batch verified.
enum Mode {
    /// Not busy: yield once (the tasks ready to run queue theirs), verify.
    Yield,
    /// The queue holds a full batch: verify it now.
    Now,
    /// Another caller gathers or verifies: wait for the verdict.
    Wait,
    /// Busy and nobody gathers: wait for a full batch or [`GATHER_WAIT`],
    /// then verify.
    Gather,
}

impl Verifier {
    /// A verifier with nothing queued.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether each of `checks` is valid (`result[i]` for `checks[i]`, as
    /// many verdicts as checks), checked in a batch with whatever else is
    /// queued.
    pub async fn verify(&self, checks: Vec<SignatureCheck>) -> Vec<bool> {
        let n = checks.len();
        if n == 0 {
            return Vec::new();
        }
        let (done, verdict) = oneshot::channel();
        let busy = self.busy.load(Ordering::Relaxed);
        let mode = {
            let mut q = self.lock();
            q.signatures += n;
            q.jobs.push(Job { checks, done });
            if !busy {
                Mode::Yield
            } else if q.signatures >= GATHER {
                if q.gathering {
                    self.full.notify_one();
                }
                Mode::Now
            } else if q.gathering || q.verifying {
                // Taken by the caller gathering, or by the one verifying
                // (which goes on until the queue is empty).
                Mode::Wait
            } else {
                q.gathering = true;
                Mode::Gather
            }
        };
        match mode {
            Mode::Yield => {
                // The other tasks ready to run queue their checks meanwhile.
                tokio::task::yield_now().await;
                self.verify_queued();
            }
            Mode::Now => self.verify_queued(),
            Mode::Wait => {}
            Mode::Gather => {
                let _gathering = Gathering(self);
                let _ = tokio::time::timeout(GATHER_WAIT, self.full.notified()).await;
            }
        }
        self.verdict(verdict, n).await
    }

    /// Tells the verifier whether its node is busy (its rate set by the
    /// CPU, not by each message's latency: [`crate::daemon::load`]): then a
    /// check waits up to [`GATHER_WAIT`] for others to join its batch.
    pub fn set_busy(&self, busy: bool) {
        self.busy.store(busy, Ordering::Relaxed);
    }

    async fn verdict(&self, mut verdict: oneshot::Receiver<Vec<bool>>, n: usize) -> Vec<bool> {
        // Verified by this caller, or being verified by another that took
        // this job with its batch.
        match verdict.try_recv() {
            Ok(v) => v,
            Err(oneshot::error::TryRecvError::Empty) => {
                (&mut verdict).await.unwrap_or_else(|_| vec![false; n])
            }
            Err(oneshot::error::TryRecvError::Closed) => vec![false; n],
        }
    }

    /// Unless another caller is verifying, verifies everything queued, in
    /// batches of up to [`MAX_BATCH`] signatures, until the queue is empty.
    fn verify_queued(&self) {
        let mut batch = {
            let mut q = self.lock();
            if q.verifying || q.jobs.is_empty() {
                return;
            }
            q.verifying = true;
            take_batch(&mut q)
        };
        let mut verifying = Verifying(&self.queue, true);
        loop {
            self.verify_batch(batch);
            let mut q = self.lock();
            if q.jobs.is_empty() {
                // Cleared under the same lock as this look: a job queued
                // while `verifying` was seen set is taken by this loop, and
                // one queued after it is cleared is its caller's to verify
                // (or to gather).
                q.verifying = false;
                verifying.1 = false;
                return;
            }
            batch = take_batch(&mut q);
        }
    }

    fn verify_batch(&self, jobs: Vec<Job>) {
        let all: Vec<SignatureCheck> = jobs.iter().flat_map(|j| j.checks.iter().cloned()).collect();
        let verdicts = verify_each(&all);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats
            .signatures
            .fetch_add(all.len() as u64, Ordering::Relaxed);
        let mut rest = verdicts.as_slice();
        for j in jobs {
            let (mine, others) = rest.split_at(j.checks.len().min(rest.len()));
            rest = others;
            // A caller that went away (its task was cancelled) needs no answer.
            let _ = j.done.send(mine.to_vec());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What the verifier did so far.
    pub fn stats(&self) -> &VerifierStats {
        &self.stats
    }
}

/// The queued jobs, oldest first, up to [`MAX_BATCH`] signatures (at
/// least one job).
fn take_batch(q: &mut Queue) -> Vec<Job> {
    if q.signatures <= MAX_BATCH {
        q.signatures = 0;
        return std::mem::take(&mut q.jobs);
    }
    let mut n = 0;
    let mut count = 0;
    for j in &q.jobs {
        if count > 0 && n + j.checks.len() > MAX_BATCH {
            break;
        }
        n += j.checks.len();
        count += 1;
    }
    q.signatures -= n;
    q.jobs.drain(..count).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use konvert_envelope::keys::SigningKey;
    use std::sync::Arc;

    fn check(key: &SigningKey, msg: &[u8], good: bool) -> SignatureCheck {
        let mut sig = key.sign(msg);
        if !good {
            sig[0] ^= 1;
        }
        SignatureCheck::new(&[key.verifying_key()], msg, &sig)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_get_their_own_verdicts_and_share_batches() {
        let verifier = Arc::new(Verifier::new());
        let keys: Vec<SigningKey> = (0..3).map(|_| SigningKey::generate()).collect();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..300usize {
            let v = Arc::clone(&verifier);
            let k = &keys[i % 3];
            // Every seventh caller has a bad second signature.
            let bad = i % 7 == 0;
            let checks = vec![
                check(k, format!("node {i}").as_bytes(), true),
                check(k, format!("signatory {i}").as_bytes(), !bad),
            ];
            tasks.spawn(async move { (i, v.verify(checks).await) });
        }
        while let Some(r) = tasks.join_next().await {
            let (i, verdicts) = r.expect("task");
            assert_eq!(verdicts, vec![true, i % 7 != 0], "caller {i}");
        }
        let s = verifier.stats();
        assert_eq!(s.signatures(), 600);
        assert!(s.batches() >= 600 / MAX_BATCH as u64);
        // Tasks spawned together share batches.
        assert!(s.batches() < 300, "{} batches", s.batches());
        assert!(verifier.verify(Vec::new()).await.is_empty());
        assert!(verifier.lock().jobs.is_empty() && !verifier.lock().verifying);
    }

    #[tokio::test]
    async fn a_batch_takes_at_most_its_limit_and_every_job_is_answered() {
        let verifier = Verifier::new();
        let k = SigningKey::generate();
        let big: Vec<SignatureCheck> = (0..MAX_BATCH + 5).map(|i| check(&k, &[i as u8], true)).collect();
        let small: Vec<SignatureCheck> = (0..5).map(|i| check(&k, &[i as u8], i != 2)).collect();
        let (a, b, c) = tokio::join!(
            verifier.verify(small.clone()),
            verifier.verify(big),
            verifier.verify(vec![check(&k, b"x", false)])
        );
        assert_eq!(a, vec![true, true, false, true, true]);
        assert_eq!(a.len(), 5);
        assert_eq!(b.len(), MAX_BATCH + 5);
        assert!(b.iter().all(|ok| *ok));
        assert_eq!(c, vec![false]);
        // The small job and the big one do not fit one batch: three batches
        // (small; big alone, over the limit; the last one).
        assert_eq!(verifier.stats().batches(), 3);
    }

    #[test]
    fn a_batch_is_cut_at_the_limit_between_jobs() {
        let k = SigningKey::generate();
        let mut q = Queue::default();
        for n in [40, 30, 10] {
            let (done, _) = oneshot::channel();
            q.jobs.push(Job {
                checks: (0..n).map(|i| check(&k, &[i as u8], true)).collect(),
                done,
            });
            q.signatures += n;
        }
        assert_eq!(take_batch(&mut q).len(), 1); // 40 (40 + 30 > 64)
        assert_eq!(take_batch(&mut q).len(), 2); // 30 + 10
        assert_eq!((q.jobs.len(), q.signatures), (0, 0));
    }

    /// Eight callers 100 µs apart (paused time), each to be checked once
    /// the ones before it had their turn; returns the batches they took.
    async fn spaced_callers(busy: bool) -> u64 {
        let verifier = Arc::new(Verifier::new());
        verifier.set_busy(busy);
        let k = SigningKey::generate();
        let checks: Vec<SignatureCheck> = (0..8u8).map(|i| check(&k, &[i], i != 4)).collect();
        let mut tasks = tokio::task::JoinSet::new();
        for (i, c) in (0..8u8).zip(checks) {
            let v = Arc::clone(&verifier);
            tasks.spawn(async move { (i, v.verify(vec![c]).await) });
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
            tokio::time::advance(std::time::Duration::from_micros(100)).await;
        }
        while let Some(r) = tasks.join_next().await {
            let (i, v) = r.expect("task");
            assert_eq!(v, vec![i != 4], "caller {i}");
        }
        assert_eq!(verifier.stats().signatures(), 8);
        let q = verifier.lock();
        assert!(q.jobs.is_empty() && !q.verifying && !q.gathering);
        verifier.stats().batches()
    }

    #[tokio::test(start_paused = true)]
    async fn under_load_checks_arriving_within_the_wait_share_one_batch() {
        // 800 µs < GATHER_WAIT: the first caller gathers the other seven.
        assert_eq!(spaced_callers(true).await, 1);
        // Not busy: each is checked on its own turn.
        assert_eq!(spaced_callers(false).await, 8);
    }

    /// One caller with one check, on a task of its own.
    fn spawn_one(v: &Arc<Verifier>, c: SignatureCheck) -> tokio::task::JoinHandle<Vec<bool>> {
        let v = Arc::clone(v);
        tokio::spawn(async move { v.verify(vec![c]).await })
    }

    #[tokio::test]
    async fn a_full_batch_is_verified_at_once_and_a_cancelled_gatherer_strands_nobody() {
        let verifier = Arc::new(Verifier::new());
        verifier.set_busy(true);
        let k = SigningKey::generate();
        // A gatherer whose task goes away while it waits: what it gathered
        // is verified when it goes (here nothing else was queued).
        let gatherer = spawn_one(&verifier, check(&k, b"gone", true));
        tokio::task::yield_now().await;
        assert!(verifier.lock().gathering);
        let waiting = spawn_one(&verifier, check(&k, b"waits", true));
        tokio::task::yield_now().await;
        gatherer.abort();
        assert!(gatherer.await.is_err());
        // (Bounded: if the cancelled gatherer stranded it, this fails
        // instead of waiting forever.)
        let waited = tokio::time::timeout(std::time::Duration::from_secs(30), waiting).await;
        assert_eq!(
            waited.expect("verified after the gatherer went").expect("task"),
            vec![true]
        );
        assert!(!verifier.lock().gathering);
        // A job that fills the batch a caller gathers is verified at once,
        // with the gathered one, in one batch.
        let gathering = spawn_one(&verifier, check(&k, b"gathered", false));
        tokio::task::yield_now().await;
        assert!(verifier.lock().gathering);
        let (batches, signatures) = (verifier.stats().batches(), verifier.stats().signatures());
        let full: Vec<SignatureCheck> = (0..GATHER).map(|i| check(&k, &[i as u8], true)).collect();
        assert!(verifier.verify(full).await.iter().all(|ok| *ok));
        assert_eq!(verifier.stats().batches(), batches + 1);
        assert_eq!(verifier.stats().signatures(), signatures + GATHER as u64 + 1);
        assert_eq!(gathering.await.expect("task"), vec![false]);
        // Below the load, no caller gathers.
        verifier.set_busy(false);
        assert_eq!(verifier.verify(vec![check(&k, b"x", false)]).await, vec![false]);
        assert!(!verifier.lock().gathering);
    }
}
