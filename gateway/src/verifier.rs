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
//! check at once — in the load generator 3–7 signatures on average at 16
//! and 256 envelopes in flight (about 16–24 µs each instead of 30 alone);
//! with one envelope in flight, its own — and nothing waits on a timer for
//! a batch to fill, nor hops to another thread. The caller that verifies
//! goes on until the queue is empty (a check queued meanwhile would
//! otherwise wait for nobody), so under a steady stream it may verify
//! several batches before it returns with its own verdict.

use std::sync::atomic::{AtomicU64, Ordering};
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

/// Checks signatures in batches formed by its callers.
#[derive(Default)]
pub struct Verifier {
    queue: Mutex<Queue>,
    stats: VerifierStats,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("stats", &self.stats).finish()
    }
}

/// Clears `verifying` when the verifying caller is done, also if a batch
/// panicked (its jobs are then dropped: their callers see no verdict and
/// take none as valid).
struct Verifying<'a>(&'a Mutex<Queue>);

impl Drop for Verifying<'_> {
    fn drop(&mut self) {
        let mut q = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        q.verifying = false;
    }
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
        let (done, mut verdict) = oneshot::channel();
        {
            let mut q = self.lock();
            q.signatures += n;
            q.jobs.push(Job { checks, done });
        }
        // The other tasks ready to run queue their checks meanwhile.
        tokio::task::yield_now().await;
        self.verify_queued();
        // Verified by this caller above, or being verified by another that
        // took this job with its batch.
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
        let _verifying = Verifying(&self.queue);
        loop {
            self.verify_batch(batch);
            let mut q = self.lock();
            if q.jobs.is_empty() {
                // (`verifying` is cleared by the guard, under the lock again:
                // a job queued after this look is taken by its own caller.)
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
}
