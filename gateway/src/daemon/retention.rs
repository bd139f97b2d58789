//! The retention sweeper: destroys what has expired (Art. 11.5).
//!
//! Every `store.sweep_interval` (default 1 minute) the sweeper calls
//! [`konvert_store::Store::sweep`] on a blocking thread: the keys and payload
//! files of every expired hour go first (from then on the data is
//! unreadable), then the index bookkeeping, purges past the audit retention
//! and audit pruning, in steps of [`SWEEP_BUDGET`] records (the procedure
//! records of purged messages and cases go with them); while the store
//! reports more to do, steps follow each other without waiting for the next
//! tick (each is short, so writers are never held up for long). Totals are
//! logged (counts only) and kept for the API's retention report.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use konvert_envelope::model::Timestamp;

use super::Node;

/// Records of work per sweep step.
pub const SWEEP_BUDGET: usize = 20_000;

/// The default interval between sweeps.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

/// What the sweeper has done since the daemon started.
#[derive(Debug, Default)]
pub struct SweepTotals {
    /// Sweeps run (ticks, not steps).
    pub sweeps: AtomicU64,
    /// Messages destroyed.
    pub destroyed: AtomicU64,
    /// Metadata records purged after the audit retention.
    pub purged: AtomicU64,
    /// Data keys destroyed.
    pub keys_destroyed: AtomicU64,
    /// Audit blocks pruned.
    pub audit_pruned: AtomicU64,
    /// Unix time of the last finished sweep (0: none yet).
    pub last_sweep: AtomicU64,
    /// Sweeps that failed.
    pub failures: AtomicU64,
}

/// Run sweeps until `stop` turns true.
pub async fn sweeper(node: Arc<Node>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let every = node.config.store.sweep_interval.map_or(DEFAULT_INTERVAL, |s| s.0);
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        sweep_once(&node, &stop).await;
    }
}

/// One sweep: steps until the store has nothing left or the daemon stops.
pub async fn sweep_once(node: &Arc<Node>, stop: &tokio::sync::watch::Receiver<bool>) {
    let totals = &node.sweeps;
    totals.sweeps.fetch_add(1, Ordering::Relaxed);
    let (mut destroyed, mut purged, mut keys, mut pruned) = (0u64, 0u64, 0u64, 0u64);
    loop {
        let n = Arc::clone(node);
        let step = tokio::task::spawn_blocking(move || {
            let report = n.store.sweep(SWEEP_BUDGET)?;
            forget_purged(&n, &report);
            Ok::<_, konvert_store::Error>(report)
        })
        .await;
        let report = match step {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                totals.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "retention sweep failed");
                return;
            }
            Err(e) => {
                totals.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "retention sweep task failed");
                return;
            }
        };
        destroyed += report.destroyed;
        purged += report.purged;
        keys += report.keys_destroyed;
        pruned += report.audit_pruned;
        if !report.remaining || *stop.borrow() {
            break;
        }
        tokio::task::yield_now().await;
    }
    totals.destroyed.fetch_add(destroyed, Ordering::Relaxed);
    totals.purged.fetch_add(purged, Ordering::Relaxed);
    totals.keys_destroyed.fetch_add(keys, Ordering::Relaxed);
    totals.audit_pruned.fetch_add(pruned, Ordering::Relaxed);
    totals.last_sweep.store(
        u64::try_from(node.now().as_unix()).unwrap_or(0),
        Ordering::Relaxed,
    );
    if destroyed + purged + keys + pruned > 0 {
        tracing::info!(
            destroyed,
            purged,
            keys_destroyed = keys,
            audit_blocks_pruned = pruned,
            "retention sweep"
        );
    }
}

/// The procedure records of what the sweep purged go too (the case book
/// and the consent ledger would otherwise keep every message ever
/// exchanged). A failure is logged: the records stay, nothing else is lost.
fn forget_purged(node: &Node, report: &konvert_store::SweepReport) {
    use konvert_envelope::model::Id;
    let messages: Vec<Id> = report
        .purged_messages
        .iter()
        .map(|(_, m)| Id::from_bytes(m.0))
        .collect();
    let cases: Vec<Id> = report.purged_cases.iter().map(|c| Id::from_bytes(c.0)).collect();
    match node
        .cases
        .forget(&messages, &cases)
        .and_then(|n| node.store.sync().map(|()| n).map_err(Into::into))
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            records = n,
            "procedure records of purged messages and cases removed"
        ),
        Err(e) => tracing::warn!(error = %e, "procedure records of purged messages not removed"),
    }
}

/// The time of the last sweep, if any.
pub fn last_sweep(totals: &SweepTotals) -> Option<Timestamp> {
    match totals.last_sweep.load(Ordering::Relaxed) {
        0 => None,
        t => i64::try_from(t).ok().map(Timestamp::from_unix),
    }
}
