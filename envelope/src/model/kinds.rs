//! Message kinds. (Being written: see the model helper's work.)
use serde::{Deserialize, Serialize};

use super::{Attachment, Message};

/// What a message says; one variant per kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "content", rename_all = "snake_case")]
pub enum MessageBody {
    /// Unsolicited information.
    UnsolicitedInformation {
        /// Text.
        summary: String,
        /// Documents.
        #[serde(default)]
        attachments: Vec<Attachment>,
    },
}

impl Message {
    /// Every attachment in canonical order.
    pub fn attachments(&self) -> Vec<&Attachment> {
        match &self.body {
            MessageBody::UnsolicitedInformation { attachments, .. } => attachments.iter().collect(),
        }
    }
    /// Every attachment in canonical order, mutable.
    pub fn attachments_mut(&mut self) -> Vec<&mut Attachment> {
        match &mut self.body {
            MessageBody::UnsolicitedInformation { attachments, .. } => attachments.iter_mut().collect(),
        }
    }
}
