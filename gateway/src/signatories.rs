//! `konvertctl signatory add|revoke|list`: this authority's signatory
//! roster (Art. 9.3, 9.4), kept offline in the gateway directory.
//!
//! | path | mode | what |
//! |---|---|---|
//! | `keys/root.key.pem` (+ `.pub`) | 0600 | the authority root key (made by `init`); its public half is `root_key` on the card |
//! | `keys/roster.cose` | 0644 | the latest roster, signed by the root key (a tagged COSE_Sign1, `docs/PROTOCOL.md` §7) |
//! | `keys/signatories/ID.key.pem` | 0600 | a signatory's key (made by `add` for a new id) |
//!
//! Every change writes a new roster version (the previous version + 1,
//! issued now) and signs it. A running `konvertd` sends the latest version
//! to every peer that has not had it, as a signed `directory_update`, at
//! start and on reload (SIGHUP). Under the packaged systemd unit the keys
//! directory is `${CREDENTIALS_DIRECTORY}`: the commands then take
//! `--keys-dir /etc/konvert/keys` (where the unit's `LoadCredential=` lines
//! read `roster.cose`, `root.key.pem.pub` and `signatories/`), and since
//! systemd copies credentials only when the service starts, a change takes
//! effect with `systemctl restart konvertd`, not with a reload. The first roster replaces the card's list
//! of signatories at the peers: add every signatory who keeps signing.
//! `revoke` takes a signatory off the roster; the key stays in
//! `konvert.toml` until the operator removes it, but peers refuse its
//! signatures made from the new version's time on (`signer_not_authorised`).

use std::path::{Path, PathBuf};

use konvert_envelope::model::{AuthorityId, PublicKeyBytes, Signatory, SignatoryId, Timestamp};
use konvert_envelope::roster::{Roster, SignedRoster};

use crate::config::{Config, SignatoryConfig};
use crate::files;
use crate::offline::{self, Error};

/// The authority root key in the keys directory.
pub const ROOT_KEY_FILE: &str = "root.key.pem";
/// The signed roster in the keys directory.
pub const ROSTER_FILE: &str = "roster.cose";
/// Largest roster file read.
const MAX_ROSTER: u64 = 1024 * 1024;

/// The authority's latest signed roster, verified with its root key; `None`
/// before the first. An empty file is no roster either: the packaged unit
/// loads `roster.cose` as a credential, so `init --systemd` (and the
/// package's tmpfiles.d entry) make it empty until `signatory add` writes one.
pub fn load_roster(keys_dir: &Path) -> Result<Option<SignedRoster>, Error> {
    let path = keys_dir.join(ROSTER_FILE);
    match std::fs::metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Ok(m) if m.len() == 0 => return Ok(None),
        _ => {}
    }
    let root = offline::load_public_key(&offline::pub_path(&keys_dir.join(ROOT_KEY_FILE)))?;
    let bytes = files::read_limited(&path, MAX_ROSTER)?;
    SignedRoster::verify(&bytes, &root)
        .map(Some)
        .map_err(|e| Error::Usage(format!("{}: {e}", path.display())))
}

/// Why a configured signatory may not sign for this authority at a time
/// (checked before sealing, so that the peer's `signer_not_authorised` is
/// never the first to say it). Texts carry ids, versions and times only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAuthorised {
    /// The signatory's key is not on the latest own roster (revoked, or never added).
    #[error(
        "signatory {id} is not on roster version {version} of {authority} (revoked or never added): \
         peers refuse its signatures; sign with a signatory on the roster (`konvertctl signatory list`)"
    )]
    NotOnRoster {
        /// The configured signatory id.
        id: String,
        /// This authority.
        authority: AuthorityId,
        /// The latest roster version.
        version: u64,
    },
    /// On the roster, but its validity begins later.
    #[error("signatory {id} may sign from {from} (roster version {version}), not at {at}")]
    NotYetValid {
        /// The configured signatory id.
        id: String,
        /// Start of its validity.
        from: Timestamp,
        /// The time checked.
        at: Timestamp,
        /// The latest roster version.
        version: u64,
    },
    /// On the roster, but its validity has ended.
    #[error("signatory {id} could sign until {until} (roster version {version}), not at {at}")]
    Expired {
        /// The configured signatory id.
        id: String,
        /// End of its validity.
        until: Timestamp,
        /// The time checked.
        at: Timestamp,
        /// The latest roster version.
        version: u64,
    },
}

/// Whether the holder of `key` (configured as signatory `id`) may sign at
/// every time in `at` by this authority's latest `roster`, as a peer judges
/// it: the key is on the roster and each time lies inside the signatory's
/// `valid_from`..`valid_until`.
pub fn check_signer(
    roster: &Roster,
    id: &str,
    key: &konvert_envelope::keys::VerifyingKey,
    at: &[Timestamp],
) -> Result<(), NotAuthorised> {
    let pk = PublicKeyBytes(key.to_bytes());
    let s = roster
        .signatory_by_key(&pk)
        .ok_or_else(|| NotAuthorised::NotOnRoster {
            id: id.to_owned(),
            authority: roster.authority.clone(),
            version: roster.version,
        })?;
    for t in at {
        if *t < s.valid_from {
            return Err(NotAuthorised::NotYetValid {
                id: id.to_owned(),
                from: s.valid_from,
                at: *t,
                version: roster.version,
            });
        }
        if let Some(until) = s.valid_until.filter(|u| t > u) {
            return Err(NotAuthorised::Expired {
                id: id.to_owned(),
                until,
                at: *t,
                version: roster.version,
            });
        }
    }
    Ok(())
}

/// The own roster as the daemon uses it for [`check_signer`]: read from
/// `keys/roster.cose` and verified with the root key, again whenever the
/// file changes (size, modification time or inode), so that a `signatory
/// revoke` takes effect for local submissions at once, before the reload
/// that sends the new version to the peers.
#[derive(Debug, Default)]
pub struct RosterCache {
    cached: std::sync::Mutex<Option<(Option<FileStamp>, Option<SignedRoster>)>>,
}

/// What identifies a version of the roster file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    ino: u64,
}

impl RosterCache {
    /// The latest own roster (`None` before the first one is made).
    pub fn current(&self, keys_dir: &Path) -> Result<Option<SignedRoster>, Error> {
        use std::os::unix::fs::MetadataExt;
        let stamp = match std::fs::metadata(keys_dir.join(ROSTER_FILE)) {
            Ok(m) => Some(FileStamp {
                len: m.len(),
                modified: m.modified().ok(),
                ino: m.ino(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(Error::Usage(format!(
                    "{}: {e}",
                    keys_dir.join(ROSTER_FILE).display()
                )))
            }
        };
        let mut guard = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((s, r)) = guard.as_ref() {
            if *s == stamp {
                return Ok(r.clone());
            }
        }
        let roster = load_roster(keys_dir)?;
        *guard = Some((stamp, roster.clone()));
        Ok(roster)
    }
}

/// One signatory as `signatory list` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SignatoryView {
    /// Its id.
    pub id: String,
    /// Name (from the roster).
    pub name: Option<String>,
    /// Position (from the roster).
    pub position: Option<String>,
    /// Key id (hex).
    pub key_id: String,
    /// On the latest roster.
    pub on_roster: bool,
    /// Its key is configured in konvert.toml (this gateway can sign with it).
    pub configured: bool,
    /// Valid from.
    pub valid_from: Option<Timestamp>,
    /// Valid until.
    pub valid_until: Option<Timestamp>,
}

/// What `signatory list` prints.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RosterView {
    /// The authority.
    pub authority: AuthorityId,
    /// Latest roster version (absent before the first).
    pub version: Option<u64>,
    /// When it was issued.
    pub issued: Option<Timestamp>,
    /// Roster and configured signatories.
    pub signatories: Vec<SignatoryView>,
}

struct Dir {
    config_path: PathBuf,
    text: String,
    config: Config,
    /// The configuration names the keys by `${CREDENTIALS_DIRECTORY}` (the
    /// packaged service): new keys are named that way too.
    credentials: bool,
}

/// Reads the configuration. With `keys_dir` (`--keys-dir`), the keys are
/// taken from there: the directory the unit's `LoadCredential=` lines load
/// them from when konvert.toml names them by `${CREDENTIALS_DIRECTORY}`
/// (signatory keys `${CREDENTIALS_DIRECTORY}/signatory_FILE` from
/// `KEYS_DIR/signatories/FILE`); without it such a configuration is refused.
fn open(config_path: &Path, keys_dir: Option<&Path>) -> Result<Dir, Error> {
    let text = files::read_text(config_path, crate::config::MAX_CONFIG)?;
    let mut config = Config::parse(&text, config_path).map_err(|e| Error::Usage(e.to_string()))?;
    let credentials = crate::config::is_credential_path(&config.keys_dir);
    match keys_dir {
        Some(k) => {
            config.keys_dir = k.to_path_buf();
            for s in &mut config.signatories {
                s.key = crate::config::credential_source(&s.key, k);
            }
        }
        None if credentials => {
            return Err(Error::Usage(format!(
                "{} names the keys by {}: give the directory they come from, as in the unit's \
                 LoadCredential= lines: --keys-dir /etc/konvert/keys",
                config_path.display(),
                crate::config::CREDENTIALS_PLACEHOLDER
            )))
        }
        None => {}
    }
    Ok(Dir {
        config_path: config_path.to_path_buf(),
        text,
        config,
        credentials,
    })
}

fn root_key(d: &Dir) -> Result<konvert_envelope::keys::SigningKey, Error> {
    let p = d.config.keys_dir.join(ROOT_KEY_FILE);
    if !p.exists() {
        return Err(Error::Usage(format!(
            "{} does not exist: this gateway has no authority root key. Make one with \
             `konvertctl signatory keygen --out {}`, put the public half (.pub) on card.toml as root_key \
             and hand the card to the peers again",
            p.display(),
            p.display()
        )));
    }
    offline::load_signing_key(&p)
}

fn write_roster(d: &Dir, roster: &Roster) -> Result<SignedRoster, Error> {
    let root = root_key(d)?;
    let signed = roster
        .sign(&root)
        .map_err(|e| Error::Usage(format!("roster not signed: {e}")))?;
    files::write_atomic(
        &d.config.keys_dir.join(ROSTER_FILE),
        signed.as_bytes(),
        0o644,
        true,
    )?;
    Ok(signed)
}

fn next_roster(d: &Dir, now: Timestamp) -> Result<Roster, Error> {
    let current = load_roster(&d.config.keys_dir)?;
    let (version, signatories, issued) = match &current {
        Some(r) => (
            r.roster().version + 1,
            r.roster().signatories.clone(),
            now.max(r.roster().issued),
        ),
        None => (1, Vec::new(), now),
    };
    Ok(Roster {
        authority: d.config.authority.clone(),
        version,
        issued,
        signatories,
    })
}

/// Adds a signatory to the roster (or updates the name, position and
/// validity of one already on it) and signs a new version. A configured
/// signatory keeps its key; a new id gets a key in
/// `keys/signatories/ID.key.pem` and a `[[signatories]]` entry in
/// konvert.toml.
pub fn add(
    config_path: &Path,
    keys_dir: Option<&Path>,
    id: &str,
    name: &str,
    position: &str,
    valid_until: Option<Timestamp>,
    now: Timestamp,
) -> Result<SignedRoster, Error> {
    let sid = SignatoryId::new(id).map_err(|e| Error::Usage(format!("signatory id {id:?}: {}", e.reason)))?;
    if name.trim().is_empty() || position.trim().is_empty() {
        return Err(Error::Usage("--name and --position must not be empty".into()));
    }
    let d = open(config_path, keys_dir)?;
    root_key(&d)?;
    let mut roster = next_roster(&d, now)?;
    let key = match d.config.signatories.iter().find(|s| s.id == id) {
        Some(s) => offline::load_signing_key(&s.key)?.verifying_key(),
        None => {
            let dir = d.config.keys_dir.join("signatories");
            files::create_private_dir(&dir)?;
            let path = dir.join(format!("{id}.key.pem"));
            let key = offline::signatory_keygen(&path, false)?;
            let rel = if d.credentials {
                // As the unit passes keys/signatories/: the credential signatory_FILE.
                PathBuf::from(format!(
                    "{}/signatory_{id}.key.pem",
                    crate::config::CREDENTIALS_PLACEHOLDER
                ))
            } else {
                let base = files::parent_dir(&d.config_path);
                path.strip_prefix(&base).map(Path::to_path_buf).unwrap_or(path)
            };
            #[derive(serde::Serialize)]
            struct One<'a> {
                signatories: [&'a SignatoryConfig; 1],
            }
            let entry = SignatoryConfig {
                id: id.to_owned(),
                key: rel,
            };
            let table = toml::to_string(&One {
                signatories: [&entry],
            })
            .map_err(|e| Error::Usage(e.to_string()))?;
            let new_text = format!("{}\n\n{table}", d.text.trim_end());
            Config::parse(&new_text, &d.config_path).map_err(|e| Error::Usage(e.to_string()))?;
            files::write_atomic(&d.config_path, new_text.as_bytes(), 0o640, true)?;
            key
        }
    };
    let entry = Signatory {
        id: sid.clone(),
        name: name.trim().to_owned(),
        position: position.trim().to_owned(),
        public_key: PublicKeyBytes(key.to_bytes()),
        valid_from: now,
        valid_until,
    };
    match roster.signatories.iter_mut().find(|s| s.id == sid) {
        Some(s) => {
            let from = s.valid_from;
            *s = entry;
            s.valid_from = from;
        }
        None => roster.signatories.push(entry),
    }
    write_roster(&d, &roster)
}

/// Takes a signatory off the roster (Art. 9.4) and signs a new version.
pub fn revoke(
    config_path: &Path,
    keys_dir: Option<&Path>,
    id: &str,
    now: Timestamp,
) -> Result<SignedRoster, Error> {
    let d = open(config_path, keys_dir)?;
    let mut roster = next_roster(&d, now)?;
    let before = roster.signatories.len();
    roster.signatories.retain(|s| s.id.as_str() != id);
    if roster.signatories.len() == before {
        return Err(Error::Usage(format!(
            "{id} is not on the roster of {}",
            d.config.authority
        )));
    }
    write_roster(&d, &roster)
}

/// A renaming or replacement of an authority of this party (Art. 2), as
/// `konvertctl authority rename|replace` gives it.
#[derive(Debug, Clone)]
pub struct AuthorityChangeArgs {
    /// Replaced by another body (`true`) or renamed (`false`).
    pub replaced: bool,
    /// The id until `effective`.
    pub old: AuthorityId,
    /// The id from `effective` on.
    pub new: AuthorityId,
    /// The new name, in Russian.
    pub name: String,
    /// The new name in English.
    pub name_en: Option<String>,
    /// When it takes effect.
    pub effective: Timestamp,
    /// A note to the peers.
    pub note: Option<String>,
}

/// Signs a renaming or replacement with this authority's root key (issued
/// `now`) and returns the `directory_update` body that konvertd sends to
/// every peer (`POST /v1/directory/changes`), and the API socket of the
/// gateway's configuration. Checks what a peer would refuse: empty names,
/// the same old and new id.
pub fn authority_change(
    config_path: &Path,
    keys_dir: Option<&Path>,
    a: &AuthorityChangeArgs,
    now: Timestamp,
) -> Result<(konvert_envelope::model::DirectoryUpdate, PathBuf), Error> {
    if a.old == a.new {
        return Err(Error::Usage(format!(
            "--old and --new are both {}: give the new id",
            a.old
        )));
    }
    if a.name.trim().is_empty() || a.name_en.as_deref().is_some_and(|n| n.trim().is_empty()) {
        return Err(Error::Usage("--name and --name-en must not be empty".into()));
    }
    let d = open(config_path, keys_dir)?;
    let root = root_key(&d)?;
    let (old, new, new_name, new_name_en, effective) = (
        a.old.clone(),
        a.new.clone(),
        a.name.trim().to_owned(),
        a.name_en.as_deref().map(|n| n.trim().to_owned()),
        a.effective,
    );
    let change = if a.replaced {
        konvert_envelope::model::DirectoryChange::AuthorityReplaced {
            old,
            new,
            new_name,
            new_name_en,
            effective,
        }
    } else {
        konvert_envelope::model::DirectoryChange::AuthorityRenamed {
            old,
            new,
            new_name,
            new_name_en,
            effective,
        }
    };
    let update = konvert_envelope::roster::authority_change_update(
        &d.config.authority,
        now,
        change,
        a.note.clone(),
        &root,
    )
    .map_err(|e| Error::Usage(format!("authority change not signed: {e}")))?;
    Ok((update, d.config.api.socket.clone()))
}

/// The roster and the configured signatories.
pub fn list(config_path: &Path, keys_dir: Option<&Path>) -> Result<RosterView, Error> {
    let d = open(config_path, keys_dir)?;
    let roster = load_roster(&d.config.keys_dir)?;
    let mut out = Vec::new();
    if let Some(r) = &roster {
        for s in &r.roster().signatories {
            let key_id = konvert_envelope::keys::VerifyingKey::from_bytes(s.public_key.as_bytes())
                .map(|k| k.key_id().to_string())
                .unwrap_or_default();
            out.push(SignatoryView {
                id: s.id.to_string(),
                name: Some(s.name.clone()),
                position: Some(s.position.clone()),
                key_id,
                on_roster: true,
                configured: d.config.signatories.iter().any(|c| c.id == s.id.as_str()),
                valid_from: Some(s.valid_from),
                valid_until: s.valid_until,
            });
        }
    }
    for c in &d.config.signatories {
        if out.iter().any(|v| v.id == c.id) {
            continue;
        }
        let key_id = offline::load_signing_key(&c.key)
            .map(|k| k.verifying_key().key_id().to_string())
            .unwrap_or_default();
        out.push(SignatoryView {
            id: c.id.clone(),
            name: None,
            position: None,
            key_id,
            on_roster: false,
            configured: true,
            valid_from: None,
            valid_until: None,
        });
    }
    Ok(RosterView {
        authority: d.config.authority.clone(),
        version: roster.as_ref().map(|r| r.roster().version),
        issued: roster.as_ref().map(|r| r.roster().issued),
        signatories: out,
    })
}

/// What `signatory add|revoke` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RosterChanged {
    /// The signatory added (or updated) or revoked.
    pub signatory: String,
    /// `added` or `revoked`.
    pub change: &'static str,
    /// This authority.
    pub authority: AuthorityId,
    /// The new roster version.
    pub version: u64,
    /// When it was issued.
    pub issued: Timestamp,
    /// The signatories on it.
    pub on_roster: Vec<String>,
    /// How a running konvertd picks it up: `reload` (SIGHUP; the keys are
    /// read from the configuration's keys directory) or `restart` (the
    /// packaged unit: credentials are copied when the service starts).
    pub takes_effect: &'static str,
}

/// Whether the configuration names its keys by `${CREDENTIALS_DIRECTORY}`
/// (the packaged systemd service); `false` if it cannot be read.
pub fn credentials_layout(config_path: &Path) -> bool {
    files::read_text(config_path, crate::config::MAX_CONFIG)
        .ok()
        .and_then(|t| Config::parse(&t, config_path).ok())
        .is_some_and(|c| crate::config::is_credential_path(&c.keys_dir))
}

/// The report of a roster change; `systemd`: the keys reach konvertd as credentials.
pub fn changed(r: &SignedRoster, id: &str, added: bool, systemd: bool) -> RosterChanged {
    RosterChanged {
        signatory: id.to_owned(),
        change: if added { "added" } else { "revoked" },
        authority: r.roster().authority.clone(),
        version: r.roster().version,
        issued: r.roster().issued,
        on_roster: r.roster().signatories.iter().map(|s| s.id.to_string()).collect(),
        takes_effect: if systemd { "restart" } else { "reload" },
    }
}

/// [`RosterChanged`] for a person.
pub fn changed_text(c: &RosterChanged) -> String {
    let how = match c.takes_effect {
        "restart" => {
            "systemctl restart konvertd to use it and send it to the peers (credentials are copied at start)"
        }
        _ => "reload konvertd (SIGHUP, systemctl reload) to send it to the peers",
    };
    let mut t = format!(
        "{} is {} roster version {} of {} (on it: {}); {how}\n",
        c.signatory,
        if c.change == "added" { "on" } else { "off" },
        c.version,
        c.authority,
        if c.on_roster.is_empty() {
            "nobody".to_string()
        } else {
            c.on_roster.join(", ")
        },
    );
    if c.change == "revoked" {
        t.push_str("its key stays in the configuration until you remove it\n");
    }
    t
}

/// `signatory list` as a table.
pub fn list_table(v: &RosterView) -> String {
    let mut t = crate::client::Table::new(&["ID", "NAME", "POSITION", "KEY ID", "ON ROSTER", "CONFIGURED"]);
    for s in &v.signatories {
        t.row(vec![
            s.id.clone(),
            s.name.clone().unwrap_or_else(|| "-".into()),
            s.position.clone().unwrap_or_else(|| "-".into()),
            s.key_id.clone(),
            if s.on_roster { "yes" } else { "no" }.into(),
            if s.configured { "yes" } else { "no" }.into(),
        ]);
    }
    let head = match (v.version, v.issued) {
        (Some(n), Some(t)) => format!("{}: roster version {n}, issued {t}\n", v.authority),
        _ => format!(
            "{}: no roster yet (peers trust the signatories on the card)\n",
            v.authority
        ),
    };
    format!("{head}{}", t.render())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn add_and_revoke_sign_new_versions_that_verify_with_the_card_root_key() {
        let t = tempfile::tempdir().unwrap();
        let r = crate::init::init(&crate::init::InitOptions {
            authority: AuthorityId::new("kz.mvd").unwrap(),
            dir: t.path().join("kz"),
            listen: "127.0.0.1:7443".parse().unwrap(),
            api_socket: None,
            name: None,
            signatory: "head".into(),
            force: false,
        })
        .unwrap();
        let root = r.card_value.root_key.unwrap();
        let now: Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
        let v1 = add(&r.config, None, "head", "Иванов И. И.", "Министр", None, now).unwrap();
        assert_eq!(v1.roster().version, 1);
        let v2 = add(
            &r.config,
            None,
            "petrov",
            "Петров П. П.",
            "Заместитель министра",
            None,
            now.plus_secs(5),
        )
        .unwrap();
        assert_eq!(v2.roster().signatories.len(), 2);
        // The new signatory's key is configured, so the daemon can sign with it.
        let loaded = crate::config::Loaded::load(&r.config).unwrap();
        assert!(loaded.config.signatories.iter().any(|s| s.id == "petrov"));
        let v3 = revoke(&r.config, None, "petrov", now.plus_secs(10)).unwrap();
        assert_eq!(v3.roster().version, 3);
        let keys = t.path().join("kz/keys");
        let on_disk = load_roster(&keys).unwrap().unwrap();
        assert_eq!(on_disk, SignedRoster::verify(on_disk.as_bytes(), &root).unwrap());
        assert_eq!(on_disk.roster().signatories.len(), 1);
        assert!(revoke(&r.config, None, "petrov", now.plus_secs(11)).is_err());
        let view = list(&r.config, None).unwrap();
        assert_eq!(view.version, Some(3));
        let petrov = view.signatories.iter().find(|s| s.id == "petrov").unwrap();
        assert!(!petrov.on_roster && petrov.configured);
    }

    #[test]
    fn a_revoked_or_expired_signatory_may_not_sign_and_the_cache_sees_each_new_version() {
        let t = tempfile::tempdir().unwrap();
        let r = crate::init::init(&crate::init::InitOptions {
            authority: AuthorityId::new("kz.mvd").unwrap(),
            dir: t.path().join("kz"),
            listen: "127.0.0.1:7443".parse().unwrap(),
            api_socket: None,
            name: None,
            signatory: "head".into(),
            force: false,
        })
        .unwrap();
        let keys = t.path().join("kz/keys");
        let cache = RosterCache::default();
        // No roster yet: nothing to check against.
        assert!(cache.current(&keys).unwrap().is_none());
        let now: Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
        let until = now.plus_secs(3600);
        add(&r.config, None, "head", "Иванов И. И.", "Министр", None, now).unwrap();
        add(
            &r.config,
            None,
            "petrov",
            "Петров П. П.",
            "Заместитель",
            Some(until),
            now,
        )
        .unwrap();
        let cfg = crate::config::Loaded::load(&r.config).unwrap().config;
        let key_of = |id: &str| {
            let c = cfg.signatories.iter().find(|s| s.id == id).unwrap();
            offline::load_signing_key(&c.key).unwrap().verifying_key()
        };
        let (head, petrov) = (key_of("head"), key_of("petrov"));
        let v2 = cache.current(&keys).unwrap().unwrap();
        assert_eq!(v2.roster().version, 2);
        check_signer(v2.roster(), "petrov", &petrov, &[now, now.plus_secs(60)]).unwrap();
        // Before its validity, and after it.
        assert!(matches!(
            check_signer(v2.roster(), "petrov", &petrov, &[now.plus_secs(-1)]),
            Err(NotAuthorised::NotYetValid { .. })
        ));
        let e = check_signer(v2.roster(), "petrov", &petrov, &[now, until.plus_secs(1)]).unwrap_err();
        assert!(matches!(e, NotAuthorised::Expired { .. }), "{e}");
        assert!(
            e.to_string().contains("petrov") && !e.to_string().contains("Петров"),
            "{e}"
        );
        // Revoked: the cache reads the new file at once.
        revoke(&r.config, None, "petrov", now.plus_secs(10)).unwrap();
        let v3 = cache.current(&keys).unwrap().unwrap();
        assert_eq!(v3.roster().version, 3);
        let e = check_signer(v3.roster(), "petrov", &petrov, &[now.plus_secs(20)]).unwrap_err();
        assert_eq!(
            e,
            NotAuthorised::NotOnRoster {
                id: "petrov".into(),
                authority: AuthorityId::new("kz.mvd").unwrap(),
                version: 3
            }
        );
        check_signer(v3.roster(), "head", &head, &[now.plus_secs(20)]).unwrap();
        // A roster file that does not verify is an error, not "no roster".
        std::fs::write(keys.join(ROSTER_FILE), b"not a roster").unwrap();
        assert!(cache.current(&keys).is_err());
    }
}
