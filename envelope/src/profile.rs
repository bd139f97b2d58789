//! Agreement profiles. (Being written.)
use crate::model::{AgreementId, Message, Timestamp};

/// An agreement profile.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Id.
    pub id: AgreementId,
}

/// Validation failure.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid")]
pub struct ValidationErrors;

impl Profile {
    /// Validates.
    pub fn validate(&self, _m: &Message, _now: Timestamp) -> Result<(), ValidationErrors> {
        Ok(())
    }
}
