//! Ids, time and the injectable clock.

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub [u8; 16]);

        impl $name {
            /// The unix time in milliseconds in the first 48 bits (UUIDv7 layout).
            pub fn unix_ms(&self) -> u64 {
                let mut b = [0u8; 8];
                b[2..].copy_from_slice(&self.0[..6]);
                u64::from_be_bytes(b)
            }

            /// A fresh time-ordered id (UUIDv7 layout: 48 bits unix ms, then
            /// version, then random bits). Ids made in the same millisecond are
            /// ordered at random.
            pub fn new_v7(unix_ms: u64) -> Self {
                let mut b = [0u8; 16];
                rand::Rng::fill(&mut rand::thread_rng(), &mut b[6..]);
                b[..6].copy_from_slice(&unix_ms.to_be_bytes()[2..]);
                b[6] = 0x70 | (b[6] & 0x0f);
                b[8] = 0x80 | (b[8] & 0x3f);
                $name(b)
            }

            /// The smallest id of the given millisecond (a range bound).
            pub fn min_at(unix_ms: u64) -> Self {
                let mut b = [0u8; 16];
                b[..6].copy_from_slice(&unix_ms.to_be_bytes()[2..]);
                $name(b)
            }

            /// The bytes as lowercase hex.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), hex::encode(self.0))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }
    };
}

id_type!(
    /// A message (envelope) id: 16 bytes, UUIDv7 layout, so byte order is time order.
    MessageId
);
id_type!(
    /// A request case id: 16 bytes, UUIDv7 layout.
    CaseId
);

/// A source of the current time in unix seconds. The store never reads the
/// system clock itself; tests inject a [`ManualClock`].
pub trait Clock: Send + Sync + fmt::Debug {
    /// Now, in unix seconds.
    fn now(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(_) => 0,
        }
    }
}

/// A clock that only moves when told to (tests, simulations).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A clock standing at `now` (unix seconds).
    pub fn new(now: i64) -> Self {
        ManualClock(AtomicI64::new(now))
    }
    /// Set the time.
    pub fn set(&self, now: i64) {
        self.0.store(now, Ordering::SeqCst);
    }
    /// Move the time forward by `secs`.
    pub fn advance(&self, secs: i64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}
