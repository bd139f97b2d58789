//! Retry timing for the outbox: exponential backoff with jitter.
//!
//! The n-th retry of a delivery waits a random time in
//! `[d/2, d]` where `d = min(initial * 2^(n-1), max)` ("equal jitter"): the
//! delay grows quickly while a peer is down, never exceeds `max`, and the
//! randomness keeps many queued messages from retrying in lockstep when the
//! peer comes back. After `max_attempts` failed attempts a message is marked
//! failed and shown to operators.

use std::time::Duration;

use rand::Rng;

/// When to try again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry (before jitter).
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
    /// Attempts before giving up.
    pub max_attempts: u32,
}

/// What to do after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Next {
    /// Try again after this delay.
    RetryAfter(Duration),
    /// Stop: the message has failed.
    GiveUp,
}

impl Backoff {
    /// The upper bound of the delay after `attempts` failed attempts (1-based), before jitter.
    pub fn ceiling(&self, attempts: u32) -> Duration {
        let exp = attempts.saturating_sub(1).min(32);
        self.initial.saturating_mul(1u32 << exp.min(31)).min(self.max)
    }

    /// The decision after `attempts` failed attempts, with jitter from `rng`.
    pub fn next<R: Rng + ?Sized>(&self, attempts: u32, rng: &mut R) -> Next {
        if attempts >= self.max_attempts {
            return Next::GiveUp;
        }
        let d = self.ceiling(attempts);
        let half = d / 2;
        let jitter = if half.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_nanos(rng.gen_range(0..=u64::try_from(half.as_nanos()).unwrap_or(u64::MAX)))
        };
        Next::RetryAfter(half + jitter)
    }
}

/// Addresses of a peer, tried in turn: after a failure the next one is used.
#[derive(Clone, Debug)]
pub struct AddressRotation {
    addresses: Vec<String>,
    current: usize,
}

impl AddressRotation {
    /// Rotation over `addresses` (must not be empty; configuration ensures it).
    pub fn new(addresses: Vec<String>) -> Self {
        Self {
            addresses,
            current: 0,
        }
    }
    /// The address to try now.
    pub fn current(&self) -> Option<&str> {
        self.addresses.get(self.current).map(String::as_str)
    }
    /// Moves to the next address (wrapping around).
    pub fn advance(&mut self) {
        if !self.addresses.is_empty() {
            self.current = (self.current + 1) % self.addresses.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn delays_grow_within_bounds_and_stop_after_the_limit() {
        let b = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            max_attempts: 10,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut last_ceiling = Duration::ZERO;
        for attempt in 1..10 {
            let ceiling = b.ceiling(attempt);
            assert!(ceiling >= last_ceiling);
            assert!(ceiling <= b.max);
            last_ceiling = ceiling;
            for _ in 0..100 {
                match b.next(attempt, &mut rng) {
                    Next::RetryAfter(d) => assert!(d >= ceiling / 2 && d <= ceiling, "{attempt}: {d:?}"),
                    Next::GiveUp => panic!("gave up early at {attempt}"),
                }
            }
        }
        assert_eq!(b.ceiling(1), Duration::from_secs(1));
        assert_eq!(b.ceiling(4), Duration::from_secs(8));
        assert_eq!(b.ceiling(40), Duration::from_secs(60));
        assert_eq!(b.next(10, &mut rng), Next::GiveUp);
    }

    #[test]
    fn jitter_spreads_retries() {
        let b = Backoff {
            initial: Duration::from_secs(8),
            max: Duration::from_secs(600),
            max_attempts: 5,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let delays: std::collections::BTreeSet<_> = (0..50).map(|_| b.next(2, &mut rng)).collect();
        assert!(delays.len() > 40, "retries are not spread: {delays:?}");
    }

    #[test]
    fn addresses_rotate() {
        let mut r = AddressRotation::new(vec!["a:1".into(), "b:2".into()]);
        assert_eq!(r.current(), Some("a:1"));
        r.advance();
        assert_eq!(r.current(), Some("b:2"));
        r.advance();
        assert_eq!(r.current(), Some("a:1"));
    }
}
