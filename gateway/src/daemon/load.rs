//! Whether the gateway's CPU, not the latency of each message, sets its
//! rate: the hint behind the two places that wait a little to work in
//! larger groups when busy — the store's group commit
//! (`Store::set_concurrent_writers`) and the signature verifier
//! ([`crate::verifier`]).
//!
//! Waiting for a group to fill costs nothing when the cores are saturated
//! (the time goes to other messages) and saves CPU per message; it costs
//! throughput when they are not (a message that waits holds its place in a
//! bounded window, and the cores idle meanwhile: gathering signatures at 16
//! envelopes in flight cut the rate by 40 %). The node's own count of
//! envelopes in flight does not tell the two apart everywhere: the receiver
//! of 256 envelopes in flight holds fewer at a time than the sender, since
//! it answers each quickly (sampled in the load generator: from 47 to 171,
//! often below 64), yet its cores are as saturated as the sender's.
//! So the node also measures the share of the cores its process used over
//! the last [`WINDOW`] (`CLOCK_PROCESS_CPUTIME_ID` against the wall clock
//! and the cores available to it) and counts as busy from [`BUSY_SHARE`] on,
//! until the share falls below [`IDLE_SHARE`] (a band, so that the saving
//! gathering makes does not switch it off again at once).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often the share is measured (at most; the node measures when its
/// count of envelopes in flight changes).
pub const WINDOW: Duration = Duration::from_millis(20);

/// From this share of the cores on, the node is busy…
pub const BUSY_SHARE: f64 = 0.85;

/// …until its share falls below this one.
pub const IDLE_SHARE: f64 = 0.70;

/// With fewer envelopes than this in flight, nothing waits for a group
/// however busy the cores are (with so few, a group cannot fill).
pub const MIN_IN_FLIGHT: usize = 16;

/// The process's CPU share, measured in windows.
#[derive(Debug)]
pub struct CpuShare {
    cores: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    at: Instant,
    cpu: Duration,
    busy: bool,
}

impl CpuShare {
    /// A meter for the cores this process may use
    /// (`std::thread::available_parallelism`), not busy to begin with.
    pub fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        Self::with_cores(cores)
    }

    fn with_cores(cores: usize) -> Self {
        Self {
            cores: cores.max(1) as f64,
            state: Mutex::new(State {
                at: Instant::now(),
                cpu: process_cpu(),
                busy: false,
            }),
        }
    }

    /// Whether the cores were saturated in the last window (measuring again
    /// if the window is over).
    pub fn busy(&self) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return false;
        };
        let now = Instant::now();
        let wall = now.duration_since(s.at);
        if wall >= WINDOW {
            let cpu = process_cpu();
            let share = cpu.saturating_sub(s.cpu).as_secs_f64() / (wall.as_secs_f64() * self.cores);
            s.busy = next_state(s.busy, share);
            s.at = now;
            s.cpu = cpu;
        }
        s.busy
    }
}

impl Default for CpuShare {
    fn default() -> Self {
        Self::new()
    }
}

/// The busy state after a window in which the process used `share` of its
/// cores.
fn next_state(busy: bool, share: f64) -> bool {
    if busy {
        share >= IDLE_SHARE
    } else {
        share >= BUSY_SHARE
    }
}

/// CPU time of the whole process so far (every thread, user and system);
/// zero if the clock cannot be read (the node then never counts as busy
/// by its CPU).
fn process_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or(Duration::ZERO)
}

/// What the node tells the store and the verifier, given `in_flight`
/// envelopes and whether its cores are saturated: the writers the store
/// should count on (at least `konvert_store::BUSY_WRITERS` when busy), and
/// whether the verifier gathers.
pub fn hints(in_flight: usize, cpu_busy: bool) -> (usize, bool) {
    let busy = in_flight >= crate::verifier::BUSY_LOAD || (in_flight >= MIN_IN_FLIGHT && cpu_busy);
    let writers = if busy {
        in_flight.max(konvert_store::BUSY_WRITERS)
    } else {
        in_flight
    };
    (writers, busy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_from_the_high_share_until_below_the_low_one() {
        assert!(!next_state(false, 0.80));
        assert!(next_state(false, 0.90));
        assert!(next_state(true, 0.75));
        assert!(!next_state(true, 0.60));
    }

    #[test]
    fn hints_count_many_in_flight_or_a_saturated_cpu_with_enough_in_flight() {
        assert_eq!(hints(10, false), (10, false));
        assert_eq!(hints(10, true), (10, false));
        assert_eq!(hints(35, false), (35, false));
        assert_eq!(hints(35, true), (konvert_store::BUSY_WRITERS, true));
        assert_eq!(hints(300, false), (300, true));
    }

    #[test]
    fn the_process_clock_counts_the_work_done() {
        let before = process_cpu();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = std::hint::black_box(x.wrapping_add(i));
        }
        assert!(process_cpu() > before);
        // A fresh meter has measured nothing yet.
        assert!(!CpuShare::new().busy());
    }
}
