//! `konvertctl store rekey`: re-seal the store's keyring under a new master
//! key, offline (konvertd stopped), with `konvert_store::rekey_keyring`.
//!
//! The data keys do not change, so every message stays readable; from then
//! on only the new master key opens the keyring. The keyring's lock makes
//! it refuse to run beside a running konvertd. Running it again after a
//! crash is safe (a keyring already sealed under the new key is left as it
//! is). It does not edit the configuration: point `store.master_key_file`
//! (or the credential) at the new key before the next start, then remove
//! the old key (see docs/OPERATIONS.md, "Re-keying the store").

use std::path::{Path, PathBuf};

use konvert_store::{KeyringSummary, MasterKey};

use crate::config::{Config, ConfigError};
use crate::files;

/// Why a re-key failed; `Display` says what to do.
#[derive(Debug, thiserror::Error)]
pub enum RekeyError {
    /// The configuration cannot be read.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The old or the new master key cannot be read.
    #[error("{which} master key {}: {source}", path.display())]
    Key {
        /// `current` or `new`.
        which: &'static str,
        /// Where it was read from.
        path: PathBuf,
        /// The store's error (no key material).
        source: konvert_store::Error,
    },
    /// The new key is the file the configuration already uses.
    #[error("{} is the master key the configuration already uses; give a new key file (konvertctl store rekey --help)", .0.display())]
    SameKey(PathBuf),
    /// The keyring could not be re-sealed.
    #[error("keyring {}: {source}", path.display())]
    Keyring {
        /// The keyring.
        path: PathBuf,
        /// The store's error: `Locked` when konvertd runs, `KeyringAuth` when
        /// neither key opens it.
        source: konvert_store::Error,
    },
}

/// What was re-keyed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rekeyed {
    /// The keyring file.
    pub keyring: PathBuf,
    /// Its generation after the rewrite.
    pub generation: u64,
    /// Expiry-hour keys in it.
    pub hour_keys: usize,
    /// Case keys in it.
    pub case_keys: usize,
    /// The new master key file, to put into the configuration.
    pub new_master_key: PathBuf,
}

/// The keyring of the store a configuration names (`DATA_DIR/store/keyring`).
pub fn keyring_path(cfg: &Config) -> PathBuf {
    cfg.data_dir.join("store").join("keyring")
}

/// Re-seals the keyring of the store `config` names under the master key in
/// `new_key` (32 raw bytes, 64 hex characters or base64; mode 0600 or
/// stricter). konvertd must be stopped.
pub fn rekey(config: &Path, new_key: &Path) -> Result<Rekeyed, RekeyError> {
    let text = files::read_text(config, 1 << 20).map_err(ConfigError::from)?;
    let cfg = Config::parse(&text, config)?;
    let (old, old_path) = match (&cfg.store.master_key_file, &cfg.store.master_key_credential) {
        (Some(f), _) => (MasterKey::from_file(f), f.clone()),
        (None, Some(name)) => (
            MasterKey::from_systemd_credential(name),
            PathBuf::from(format!("$CREDENTIALS_DIRECTORY/{name}")),
        ),
        (None, None) => unreachable_checked(),
    };
    let old = old.map_err(|source| RekeyError::Key {
        which: "current",
        path: old_path.clone(),
        source,
    })?;
    if same_file(&old_path, new_key) {
        return Err(RekeyError::SameKey(new_key.to_path_buf()));
    }
    let new = MasterKey::from_file(new_key).map_err(|source| RekeyError::Key {
        which: "new",
        path: new_key.to_path_buf(),
        source,
    })?;
    let keyring = keyring_path(&cfg);
    let summary: KeyringSummary =
        konvert_store::rekey_keyring(&keyring, &old, &new).map_err(|source| RekeyError::Keyring {
            path: keyring.clone(),
            source,
        })?;
    Ok(Rekeyed {
        keyring,
        generation: summary.generation,
        hour_keys: summary.bucket_hours.len(),
        case_keys: summary.cases.len(),
        new_master_key: new_key.to_path_buf(),
    })
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

fn unreachable_checked() -> (Result<MasterKey, konvert_store::Error>, PathBuf) {
    // Config::parse refuses a configuration without a master key source.
    (
        Err(konvert_store::Error::Invalid("no master key configured".into())),
        PathBuf::new(),
    )
}

/// What `konvertctl store rekey` prints.
pub fn rekeyed_text(r: &Rekeyed) -> String {
    format!(
        "keyring {} re-sealed under the new master key (generation {}, {} hour keys, {} case keys).\n\
         Before starting konvertd: set store.master_key_file = \"{}\" in the configuration\n\
         (or replace the credential), then remove the old master key.\n",
        r.keyring.display(),
        r.generation,
        r.hour_keys,
        r.case_keys,
        r.new_master_key.display()
    )
}
