//! The gateway's clock: the system clock, optionally shifted for tests.
//!
//! Deadlines (30 days) and retention (months) cannot be tested by waiting,
//! and the end-to-end tests run real `konvertd` processes. So the daemon
//! reads one clock everywhere (the store's retention and sweeper, case
//! deadlines, receipt times), and a test may shift it: when the environment
//! variable `KONVERT_TEST_CLOCK_FILE` names a file, the file holds an offset
//! (a duration such as `31d`, or `0`) added to the system time; it is read at
//! start and on every reload (SIGHUP). The daemon logs a warning at start
//! when the variable is set. Production units never set it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};

use konvert_envelope::model::Timestamp;

/// The environment variable naming the offset file.
pub const CLOCK_FILE_ENV: &str = "KONVERT_TEST_CLOCK_FILE";

/// Longest offset file read (a duration is a few bytes).
const MAX_OFFSET_FILE: u64 = 64;

/// The system clock plus an offset in seconds.
#[derive(Debug, Default)]
pub struct NodeClock {
    offset: AtomicI64,
    file: Option<PathBuf>,
}

/// A bad offset file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct ClockError {
    path: PathBuf,
    reason: String,
}

impl NodeClock {
    /// The system clock, unshifted.
    pub fn system() -> Self {
        Self::default()
    }

    /// The system clock, shifted by the offset in the file that
    /// `KONVERT_TEST_CLOCK_FILE` names, if it is set.
    pub fn from_env() -> Result<Self, ClockError> {
        match std::env::var_os(CLOCK_FILE_ENV) {
            None => Ok(Self::system()),
            Some(p) => {
                let c = NodeClock {
                    offset: AtomicI64::new(0),
                    file: Some(PathBuf::from(p)),
                };
                c.reload()?;
                Ok(c)
            }
        }
    }

    /// Re-read the offset file (no-op without one).
    pub fn reload(&self) -> Result<(), ClockError> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let secs = read_offset(path)?;
        let old = self.offset.swap(secs, Ordering::SeqCst);
        if old != secs {
            tracing::warn!(offset_secs = secs, "test clock offset changed ({CLOCK_FILE_ENV})");
        }
        Ok(())
    }

    /// Whether the clock may be shifted (a test set the variable).
    pub fn is_shifted(&self) -> bool {
        self.file.is_some()
    }

    /// The offset now in force, in seconds.
    pub fn offset_secs(&self) -> i64 {
        self.offset.load(Ordering::SeqCst)
    }

    /// Now.
    pub fn now(&self) -> Timestamp {
        Timestamp::now().plus_secs(self.offset_secs())
    }
}

impl konvert_store::Clock for NodeClock {
    fn now(&self) -> i64 {
        NodeClock::now(self).as_unix()
    }
}

fn read_offset(path: &Path) -> Result<i64, ClockError> {
    let err = |reason: String| ClockError {
        path: path.to_path_buf(),
        reason,
    };
    let text = crate::files::read_limited(path, MAX_OFFSET_FILE)
        .map_err(|e| err(e.to_string()))
        .and_then(|b| String::from_utf8(b).map_err(|_| err("not UTF-8".into())))?;
    let text = text.trim();
    if text == "0" {
        return Ok(0);
    }
    let span =
        crate::config::parse_span(text).map_err(|e| err(format!("not a duration such as 31d or 0: {e}")))?;
    i64::try_from(span.as_secs()).map_err(|_| err("offset too large".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_file_is_read_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("offset");
        std::fs::write(&f, "31d\n").unwrap();
        let c = NodeClock {
            offset: AtomicI64::new(0),
            file: Some(f.clone()),
        };
        c.reload().unwrap();
        assert_eq!(c.offset_secs(), 31 * 86_400);
        let shifted = c.now().as_unix() - Timestamp::now().as_unix();
        assert!((31 * 86_400 - 5..=31 * 86_400 + 5).contains(&shifted));
        std::fs::write(&f, "0").unwrap();
        c.reload().unwrap();
        assert_eq!(c.offset_secs(), 0);
        std::fs::write(&f, "soon").unwrap();
        let e = c.reload().unwrap_err().to_string();
        assert!(e.contains("not a duration"), "{e}");
        // A bad file keeps the previous offset.
        assert_eq!(c.offset_secs(), 0);
        assert!(!NodeClock::system().is_shifted());
    }
}
