//! The store's error type.
//!
//! Error texts name files, ids, peers and sizes, never payloads or anything
//! personal (REQUIREMENTS.md, Art. 11.1).

use std::path::PathBuf;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Another process holds the lock on the data directory.
    #[error("data directory {dir} is locked: another konvertd may be running on it")]
    Locked {
        /// The data directory.
        dir: PathBuf,
    },

    /// A flush or fsync failed earlier; the store refuses every further write
    /// because it can no longer tell what is on disk. Restart the process.
    #[error(
        "the store is poisoned after a failed flush/fsync; no further writes are accepted, restart konvertd"
    )]
    Poisoned,

    /// An I/O operation on a file of the store failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// sled reported an error.
    #[error("storage engine error: {0}")]
    Sled(#[from] sled::Error),

    /// A record read from disk could not be decoded.
    #[error("corrupt record in the store: {what}")]
    Corrupt {
        /// What could not be decoded (a key kind and id, never content).
        what: String,
    },

    /// The master key file is unusable.
    #[error("master key {path}: {reason}")]
    MasterKey {
        /// The key file.
        path: PathBuf,
        /// Why it was refused.
        reason: &'static str,
    },

    /// The keyring could not be opened with the master key: wrong master key,
    /// or the keyring file was modified.
    #[error("keyring {path} cannot be opened: wrong master key or tampered file")]
    KeyringAuth {
        /// The keyring file.
        path: PathBuf,
    },

    /// A sealed payload did not authenticate under its key.
    #[error("sealed payload of {what} failed authentication")]
    Unseal {
        /// The record (kind and id).
        what: String,
    },

    /// The record does not exist (or has been purged).
    #[error("{what} not found")]
    NotFound {
        /// The record (kind and id).
        what: String,
    },

    /// The record has been destroyed (crypto-shredded); only its metadata is left.
    #[error("{what} has been destroyed")]
    Destroyed {
        /// The record (kind and id).
        what: String,
    },

    /// An argument was refused before anything was written.
    #[error("invalid argument: {0}")]
    Invalid(String),

    /// The audit chain does not verify.
    #[error(transparent)]
    AuditBroken(#[from] crate::audit::AuditBreak),

    /// A state transition that the record's current state does not allow.
    #[error("{what}: cannot go from state {from} to {to}")]
    BadTransition {
        /// The record (kind and id).
        what: String,
        /// Its current state.
        from: &'static str,
        /// The state asked for.
        to: &'static str,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn corrupt(what: impl Into<String>) -> Self {
        Error::Corrupt { what: what.into() }
    }
}

/// The store's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
