//! Retention configuration (REQUIREMENTS.md, Art. 11.5).

use std::collections::BTreeMap;
use std::time::Duration;

/// How long data is kept. Expiry is computed once, when a record is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Retention of a message whose (agreement, kind) has no entry below.
    pub default: Duration,
    /// Retention per (agreement, message kind). The kind `"*"` matches every
    /// kind of that agreement; the kind `"case"` sets how long a request case
    /// and its key live at least.
    pub per_agreement_kind: BTreeMap<(String, String), Duration>,
    /// How long what is left after destruction (metadata without personal
    /// data), delivery receipts and the audit trail are kept. Should be longer
    /// than every message retention.
    pub audit_retention: Duration,
}

impl Default for RetentionPolicy {
    /// 30 days for messages, 5 years for metadata, receipts and audit.
    fn default() -> Self {
        RetentionPolicy {
            default: Duration::from_secs(30 * 86_400),
            per_agreement_kind: BTreeMap::new(),
            audit_retention: Duration::from_secs(5 * 365 * 86_400),
        }
    }
}

impl RetentionPolicy {
    /// The retention of a message of `kind` under `agreement`.
    pub fn retention(&self, agreement: &str, kind: &str) -> Duration {
        let key = (agreement.to_owned(), kind.to_owned());
        if let Some(d) = self.per_agreement_kind.get(&key) {
            return *d;
        }
        let any = (agreement.to_owned(), "*".to_owned());
        self.per_agreement_kind.get(&any).copied().unwrap_or(self.default)
    }

    /// Set the retention for (agreement, kind); builder style.
    pub fn with(mut self, agreement: &str, kind: &str, d: Duration) -> Self {
        self.per_agreement_kind
            .insert((agreement.to_owned(), kind.to_owned()), d);
        self
    }

    /// The longest retention of any message kind under `agreement`.
    pub fn longest(&self, agreement: &str) -> Duration {
        self.per_agreement_kind
            .iter()
            .filter(|((a, k), _)| a == agreement && k != "case")
            .map(|(_, d)| *d)
            .fold(self.retention(agreement, "*"), Duration::max)
    }

    pub(crate) fn expiry(&self, now: i64, agreement: &str, kind: &str) -> i64 {
        add_secs(now, self.retention(agreement, kind))
    }

    pub(crate) fn audit_expiry(&self, now: i64) -> i64 {
        add_secs(now, self.audit_retention)
    }
}

pub(crate) fn add_secs(now: i64, d: Duration) -> i64 {
    now.saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The key bucket (hour) of an expiry time.
pub(crate) fn hour_of(t: i64) -> i64 {
    t.div_euclid(3600)
}
