//! Rotation of the gateway's own keys: the TLS key, the node signing key
//! and the age identity, announced to the peers by a `key_rotation`
//! directory statement signed by the authority root key
//! (`docs/PROTOCOL.md` §7, `docs/OPERATIONS.md` "Rotating keys").
//!
//! Offline ([`rotate`], [`retire`]; `konvertctl keys rotate|retire`):
//! new keys are written where the old ones were, the old TLS key and node
//! key move to `KEYS_DIR/rotation/`, the old age identity stays in
//! `age.key` after the new one (every identity in that file decrypts), the
//! card gets the new keys, and the signed statement goes to
//! `KEYS_DIR/rotation/statement.cose`. With systemd credentials the
//! directory arrives as files `rotation_NAME` ([`rotation_file`]).
//!
//! In konvertd ([`OwnKeys`], [`announce`], [`delivered`], [`apply`]): the
//! statement is sent to every peer at start and on SIGHUP; towards a peer
//! the old node key and TLS client certificate are used until that peer
//! has accepted the statement (its positive receipt), the new ones after;
//! the old TLS server certificate is presented until every peer has
//! accepted it; after the window (`old_until`) only the new keys. Which
//! peers accepted is kept in `DATA_DIR/rotation-peers.toml`.
//!
//! As a receiver, the peers' rotations live in the procedure's
//! [`DirectoryHistory`]: [`apply`] puts their accepted pins into the pin
//! set, [`accepted_node_keys`] gives the keys a node signature or receipt
//! may be made with, and [`sealing_card`] the age recipients to seal to.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use konvert_envelope::keys::{AgeIdentity, AuthorityCard, NodeKeys, SigningKey, VerifyingKey};
use konvert_envelope::model::{
    AuthorityId, Digest, Id, Message, MessageBody, MessageHeader, PublicKeyBytes, RotatedKey, RotatedText,
    Timestamp,
};
use konvert_envelope::receipt::{Receipt, ReceiptError};
use konvert_envelope::roster::{DirectoryHistory, KeyRotation};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::daemon::{Directory, Node};
use crate::files;
use crate::init::{TLS_CERT_FILE, TLS_KEY_FILE};
use crate::offline::{self, Error, AGE_KEY_FILE, CARD_FILE, MAX_SMALL_FILE, NODE_KEY_FILE};
use crate::transport::{Identities, Peer, Pin, TlsIdentity};

/// Where a rotation's files wait until it is retired, in the keys
/// directory: the signed statement and the old TLS key and node key. The
/// packaged unit passes this directory as the credential `rotation`
/// (files `rotation_NAME` in `$CREDENTIALS_DIRECTORY`).
pub const PREVIOUS_DIR: &str = "rotation";
/// The signed statement of the latest rotation, in [`PREVIOUS_DIR`].
pub const ROTATION_FILE: &str = "statement.cose";

/// A rotation file: `KEYS_DIR/rotation/NAME`, or as a systemd credential
/// of the directory `rotation`, `KEYS_DIR/rotation_NAME`.
pub fn rotation_file(keys_dir: &Path, name: &str) -> PathBuf {
    let nested = keys_dir.join(PREVIOUS_DIR).join(name);
    let flat = keys_dir.join(format!("{PREVIOUS_DIR}_{name}"));
    if !nested.exists() && flat.exists() {
        flat
    } else {
        nested
    }
}
/// Which peers were sent and accepted the rotation, in the data directory.
pub const PEERS_FILE: &str = "rotation-peers.toml";
/// Default dual-key window.
pub const DEFAULT_OVERLAP: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// Which keys [`rotate`] replaces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Kinds {
    /// The QUIC TLS key and certificate.
    pub tls: bool,
    /// The node signing key.
    pub node: bool,
    /// The age identity.
    pub age: bool,
}

impl Kinds {
    /// Every key.
    pub const ALL: Kinds = Kinds {
        tls: true,
        node: true,
        age: true,
    };
    fn any(self) -> bool {
        self.tls || self.node || self.age
    }
}

/// What [`rotate`] did (public values only).
#[derive(Debug, Clone, Serialize)]
pub struct Rotated {
    /// The authority.
    pub authority: AuthorityId,
    /// From when the new keys are used.
    pub effective: Timestamp,
    /// Until when the old TLS pin and node key stay accepted.
    pub old_until: Timestamp,
    /// New TLS pin, if rotated.
    pub tls_pin: Option<String>,
    /// Key id of the new node key, if rotated.
    pub node_key_id: Option<String>,
    /// New age recipient, if rotated.
    pub age_recipient: Option<String>,
    /// The statement file.
    pub statement: PathBuf,
    /// The updated card in the keys directory (hand it to new peers;
    /// existing ones learn from the statement); the copy next to the
    /// configuration file, if there is one, is updated too.
    pub card: PathBuf,
}

/// Human text for [`Rotated`].
pub fn rotated_text(r: &Rotated) -> String {
    let mut s = format!(
        "keys of {} rotated: new keys used from {}, old ones accepted by peers until {}\n",
        r.authority, r.effective, r.old_until
    );
    if let Some(p) = &r.tls_pin {
        s.push_str(&format!("  TLS pin:        {p}\n"));
    }
    if let Some(k) = &r.node_key_id {
        s.push_str(&format!("  node key id:    {k}\n"));
    }
    if let Some(a) = &r.age_recipient {
        s.push_str(&format!("  age recipient:  {a}\n"));
    }
    s.push_str(&format!(
        "  statement:      {}\n  card:           {}\nNext: reload konvertd (systemctl reload konvertd); it announces the rotation to every peer.\n\
         After {}: konvertctl keys retire --config FILE\n",
        r.statement.display(),
        r.card.display(),
        r.old_until
    ));
    s
}

fn usage(s: impl Into<String>) -> Error {
    Error::Usage(s.into())
}

fn load_config(config_path: &Path, keys_dir: Option<&Path>) -> Result<Config, Error> {
    let text = files::read_text(config_path, crate::config::MAX_CONFIG)?;
    let mut cfg = Config::parse(&text, config_path).map_err(|e| usage(e.to_string()))?;
    if let Some(k) = keys_dir {
        cfg.keys_dir = k.to_path_buf();
    } else if cfg.keys_dir.starts_with(crate::config::CREDENTIALS_PLACEHOLDER) {
        return Err(usage(format!(
            "{} names the keys by {}: give the directory they come from, as in the unit's \
             LoadCredential= lines: --keys-dir /etc/konvert/keys",
            config_path.display(),
            crate::config::CREDENTIALS_PLACEHOLDER
        )));
    }
    Ok(cfg)
}

/// The latest rotation statement of this gateway, verified with the root
/// key on its card (`root_key`); `None` if there is none.
pub fn load_statement(keys_dir: &Path) -> Result<Option<KeyRotation>, Error> {
    let path = rotation_file(keys_dir, ROTATION_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let card_path = keys_dir.join(CARD_FILE);
    let root = offline::load_card(&card_path)?.root_key.ok_or_else(|| {
        usage(format!(
            "{} has no root_key: the rotation in {} cannot be verified",
            card_path.display(),
            path.display()
        ))
    })?;
    let bytes = files::read_limited(&path, MAX_SMALL_FILE)?;
    KeyRotation::verify(&bytes, &root)
        .map(Some)
        .map_err(|e| usage(format!("{}: {e}", path.display())))
}

/// Rotates the keys named by `kinds` of the gateway configured in
/// `config_path` (konvertd may run: it picks them up on reload). The new
/// keys are used from `now`; the old TLS pin and node key stay accepted by
/// the peers for `overlap`. Refused while an earlier rotation's old keys
/// are not retired.
pub fn rotate(
    config_path: &Path,
    keys_dir: Option<&Path>,
    kinds: Kinds,
    overlap: std::time::Duration,
    now: Timestamp,
) -> Result<Rotated, Error> {
    if !kinds.any() {
        return Err(usage("name the keys to rotate: --tls, --node, --age or --all"));
    }
    let overlap_secs = i64::try_from(overlap.as_secs()).unwrap_or(i64::MAX);
    if overlap_secs > konvert_envelope::roster::MAX_ROTATION_WINDOW_SECS {
        return Err(usage("--overlap is longer than 366 days"));
    }
    if overlap_secs < 60 {
        return Err(usage(
            "--overlap is shorter than a minute: the peers need time to learn the new keys",
        ));
    }
    let cfg = load_config(config_path, keys_dir)?;
    let dir = &cfg.keys_dir;
    let previous = dir.join(PREVIOUS_DIR);
    if let Some(r) = load_statement(dir)? {
        return Err(usage(format!(
            "a key rotation made at {} is not retired yet (old keys accepted until {}): run \
             `konvertctl keys retire --config {}` after that time first",
            r.issued,
            r.old_until,
            config_path.display()
        )));
    }
    if previous.exists()
        && std::fs::read_dir(&previous)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(usage(format!(
            "{} still holds old keys: run `konvertctl keys retire --config {}` first",
            previous.display(),
            config_path.display()
        )));
    }
    let root_path = dir.join(crate::signatories::ROOT_KEY_FILE);
    if !root_path.exists() {
        return Err(usage(format!(
            "{} does not exist: a key rotation is signed by the authority root key, which peers know from the card",
            root_path.display()
        )));
    }
    let root = offline::load_signing_key(&root_path)?;
    let card_path = dir.join(CARD_FILE);
    let mut card = offline::load_card(&card_path)?;
    if card.root_key != Some(root.verifying_key()) {
        return Err(usage(format!(
            "the root_key on {} is not the public half of {}: peers could not verify the rotation",
            card_path.display(),
            root_path.display()
        )));
    }
    let keys = offline::load_node_keys(dir)?;
    let age_path = dir.join(AGE_KEY_FILE);
    let age_text = files::read_secret(&age_path, MAX_SMALL_FILE)?;
    let node_pem = files::read_secret(&dir.join(NODE_KEY_FILE), MAX_SMALL_FILE)?;
    let tls_cert = files::read_limited(&dir.join(TLS_CERT_FILE), 64 * 1024)?;
    let tls_key = files::read_secret(&dir.join(TLS_KEY_FILE), 64 * 1024)?;
    let old_tls = TlsIdentity::from_pem(&tls_cert, tls_key.as_bytes())
        .map_err(|e| usage(format!("TLS identity in {}: {e}", dir.display())))?;
    let old_pin = old_tls.pin().to_string();
    if card.tls_pin.as_deref() != Some(old_pin.as_str()) {
        return Err(usage(format!(
            "the tls_pin on {} is not the pin of {}: fix the card before rotating",
            card_path.display(),
            dir.join(TLS_CERT_FILE).display()
        )));
    }

    let new_tls = if kinds.tls {
        Some(
            TlsIdentity::generate(&keys.authority)
                .map_err(|e| usage(format!("cannot make a TLS key: {e}")))?,
        )
    } else {
        None
    };
    let new_node = kinds.node.then(SigningKey::generate);
    let new_age = kinds.age.then(AgeIdentity::generate);
    let effective = now;
    let rotation = KeyRotation {
        authority: keys.authority.clone(),
        issued: now,
        effective,
        old_until: now.plus_secs(overlap_secs),
        tls_pin: new_tls.as_ref().map(|t| RotatedText {
            old: old_pin.clone(),
            new: t.pin().to_string(),
        }),
        node_key: new_node.as_ref().map(|k| RotatedKey {
            old: PublicKeyBytes(keys.signing.verifying_key().to_bytes()),
            new: PublicKeyBytes(k.verifying_key().to_bytes()),
        }),
        age_recipient: new_age.as_ref().map(|a| RotatedText {
            old: keys.age.recipient().to_string(),
            new: a.recipient().to_string(),
        }),
        cose: Vec::new(),
    }
    .sign(&root)
    .map_err(|e| usage(format!("rotation not signed: {e}")))?;

    // The old keys first (a crash later leaves them where `retire` and
    // the daemon find them), then the new keys, the statement, the card.
    files::create_private_dir(&previous)?;
    if kinds.node {
        files::write_atomic(&previous.join(NODE_KEY_FILE), node_pem.as_bytes(), 0o600, true)?;
    }
    if kinds.tls {
        files::write_atomic(&previous.join(TLS_CERT_FILE), &tls_cert, 0o644, true)?;
        files::write_atomic(&previous.join(TLS_KEY_FILE), tls_key.as_bytes(), 0o600, true)?;
    }
    if let Some(k) = &new_node {
        let pem = k
            .to_pkcs8_pem()
            .map_err(|e| usage(format!("cannot encode the node key: {e}")))?;
        files::write_atomic(&dir.join(NODE_KEY_FILE), pem.as_bytes(), 0o600, true)?;
        card.node_key = k.verifying_key();
    }
    if let Some(t) = &new_tls {
        let (cert, key) = t.to_pem();
        files::write_atomic(&dir.join(TLS_KEY_FILE), key.as_bytes(), 0o600, true)?;
        files::write_atomic(&dir.join(TLS_CERT_FILE), cert.as_bytes(), 0o644, true)?;
        card.tls_pin = Some(t.pin().to_string());
    }
    if let Some(a) = &new_age {
        // The new identity first (it is the current one), every earlier one after it.
        let mut text = zeroize::Zeroizing::new(format!(
            "# age identities of {}: the first is current; the ones after it are kept from key rotations\n",
            keys.authority
        ));
        text.push_str(a.to_text().as_str());
        text.push_str(age_text.as_str());
        files::write_atomic(&age_path, text.as_bytes(), 0o600, true)?;
        card.age_recipients = vec![a.recipient()];
    }
    let statement = previous.join(ROTATION_FILE);
    files::write_atomic(&statement, &rotation.cose, 0o644, true)?;
    let card_text = format!(
        "# Konvert authority card of {}: give this file to peer gateways (`konvertctl peer add --card`).\n\
         # It holds only public keys. Keys rotated at {now}.\n{}",
        keys.authority,
        card.to_toml_string()
            .map_err(|e| usage(format!("cannot write the card: {e}")))?
    );
    files::write_atomic(&card_path, card_text.as_bytes(), 0o644, true)?;
    // The published copy `konvertctl init` puts next to konvert.toml, if it is this gateway's.
    let public_card = files::parent_dir(config_path).join(CARD_FILE);
    if public_card != card_path
        && offline::load_card(&public_card).is_ok_and(|c| c.authority == keys.authority)
    {
        files::write_atomic(&public_card, card_text.as_bytes(), 0o644, true)?;
    }
    Ok(Rotated {
        authority: keys.authority,
        effective,
        old_until: rotation.old_until,
        tls_pin: new_tls.map(|t| t.pin().to_string()),
        node_key_id: new_node.map(|k| k.verifying_key().key_id().to_string()),
        age_recipient: new_age.map(|a| a.recipient().to_string()),
        statement,
        card: card_path,
    })
}

/// What [`retire`] removed.
#[derive(Debug, Clone, Serialize)]
pub struct Retired {
    /// Files removed.
    pub removed: Vec<PathBuf>,
    /// Old age identities dropped from `age.key`.
    pub age_identities_dropped: usize,
}

/// Human text for [`Retired`].
pub fn retired_text(r: &Retired) -> String {
    let mut s = String::from("old keys retired:\n");
    for f in &r.removed {
        s.push_str(&format!("  removed {}\n", f.display()));
    }
    s.push_str(&format!(
        "  {} old age identities dropped from age.key\nReload konvertd (systemctl reload konvertd).\n",
        r.age_identities_dropped
    ));
    s
}

/// Removes the old keys of the last rotation once its window has ended
/// (`force`: before; peers then refuse anything still signed or sealed
/// with them): the files in `rotation/` (statement, old TLS and node
/// keys; the empty directory stays) and the old age identities in `age.key`. Unlinking does not erase the bytes from an SSD or a backup
/// (see `docs/THREAT-MODEL.md`).
pub fn retire(
    config_path: &Path,
    keys_dir: Option<&Path>,
    now: Timestamp,
    force: bool,
) -> Result<Retired, Error> {
    let cfg = load_config(config_path, keys_dir)?;
    let dir = &cfg.keys_dir;
    let previous = dir.join(PREVIOUS_DIR);
    let rotation = load_statement(dir)?;
    let empty = std::fs::read_dir(&previous).map_or(true, |mut d| d.next().is_none());
    if rotation.is_none() && empty {
        return Err(usage(format!(
            "no key rotation to retire in {} (no {ROTATION_FILE}, no {PREVIOUS_DIR}/)",
            dir.display()
        )));
    }
    if let Some(r) = &rotation {
        if now <= r.old_until && !force {
            return Err(usage(format!(
                "the old keys are accepted by peers until {}, and envelopes sealed to the old age \
                 recipient may still arrive: retire after that time (or --force)",
                r.old_until
            )));
        }
    }
    let mut removed = Vec::new();
    for name in [NODE_KEY_FILE, TLS_KEY_FILE, TLS_CERT_FILE, ROTATION_FILE] {
        let p = previous.join(name);
        if p.exists() {
            std::fs::remove_file(&p).map_err(|e| usage(format!("cannot remove {}: {e}", p.display())))?;
            removed.push(p);
        }
    }
    // The directory itself stays (empty): the packaged unit loads it as a credential.
    let age_path = dir.join(AGE_KEY_FILE);
    let all =
        AgeIdentity::all_from_text(&files::read_secret(&age_path, MAX_SMALL_FILE)?).map_err(|source| {
            Error::Key {
                path: age_path.clone(),
                source,
            }
        })?;
    let dropped = all.len().saturating_sub(1);
    if dropped > 0 {
        if let Some(current) = all.first() {
            files::write_atomic(&age_path, current.to_text().as_bytes(), 0o600, true)?;
        }
    }
    if previous.exists() {
        files::sync_dir(&previous)?;
    }
    files::sync_dir(dir)?;
    Ok(Retired {
        removed,
        age_identities_dropped: dropped,
    })
}

// ---------------------------------------------------------------------------
// In konvertd: the own keys

/// The own keys loaded from the keys directory.
struct KeySet {
    current: Arc<NodeKeys>,
    /// The node keys with the old signing key, while a window is open.
    previous: Option<Arc<NodeKeys>>,
    tls: Arc<TlsIdentity>,
    previous_tls: Option<Arc<TlsIdentity>>,
    rotation: Option<KeyRotation>,
}

/// Which peers were sent the rotation and which accepted it (persisted).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PeerState {
    /// SHA-256 of the statement these entries are about.
    rotation: String,
    /// The announcement's message id per peer.
    #[serde(default)]
    queued: BTreeMap<AuthorityId, String>,
    /// Peers whose positive receipt for the announcement arrived.
    #[serde(default)]
    accepted: BTreeSet<AuthorityId>,
}

/// The gateway's own keys with an ongoing rotation (see the module documentation).
pub struct OwnKeys {
    set: RwLock<Arc<KeySet>>,
    peers: Mutex<PeerState>,
    peers_file: PathBuf,
}

impl std::fmt::Debug for OwnKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.set();
        f.debug_struct("OwnKeys")
            .field("current", &s.current)
            .field("tls", &s.tls)
            .field("rotation", &s.rotation.as_ref().map(|r| r.old_until))
            .finish()
    }
}

fn load_set(keys_dir: &Path) -> Result<KeySet, Error> {
    let current = offline::load_node_keys(keys_dir)?;
    let tls = crate::daemon::load_tls(keys_dir).map_err(|e| usage(e.to_string()))?;
    let rotation = load_statement(keys_dir)?;
    let (previous, previous_tls) = match &rotation {
        None => (None, None),
        Some(r) => {
            let node_path = if r.node_key.is_some() {
                rotation_file(keys_dir, NODE_KEY_FILE)
            } else {
                keys_dir.join(NODE_KEY_FILE)
            };
            let signing = offline::load_signing_key(&node_path)?;
            if let Some(k) = &r.node_key {
                if signing.verifying_key().to_bytes() != k.old.0 {
                    return Err(usage(format!(
                        "{} is not the old node key named by {}",
                        node_path.display(),
                        rotation_file(keys_dir, ROTATION_FILE).display()
                    )));
                }
            }
            let age_path = keys_dir.join(AGE_KEY_FILE);
            let age = AgeIdentity::all_from_text(&files::read_secret(&age_path, MAX_SMALL_FILE)?)
                .map_err(|source| Error::Key {
                    path: age_path.clone(),
                    source,
                })?
                .into_iter()
                .next()
                .ok_or_else(|| usage(format!("{}: no age identity", age_path.display())))?;
            let prev = NodeKeys {
                authority: current.authority.clone(),
                signing,
                age,
                previous_age: Vec::new(),
            };
            let prev_tls = if r.tls_pin.is_some() {
                let cert = files::read_limited(&rotation_file(keys_dir, TLS_CERT_FILE), 64 * 1024)?;
                let key = files::read_secret(&rotation_file(keys_dir, TLS_KEY_FILE), 64 * 1024)?;
                let tls = TlsIdentity::from_pem(&cert, key.as_bytes())
                    .map_err(|e| usage(format!("the old TLS identity of the rotation: {e}")))?;
                Some(Arc::new(tls))
            } else {
                None
            };
            (Some(Arc::new(prev)), prev_tls)
        }
    };
    Ok(KeySet {
        current: Arc::new(current),
        previous,
        tls: Arc::new(tls),
        previous_tls,
        rotation,
    })
}

fn digest_text(r: &KeyRotation) -> String {
    hex::encode(Digest::of(&r.cose).0)
}

impl OwnKeys {
    /// Loads the keys and the rotation (if any) from `keys_dir`, and which
    /// peers accepted it from `data_dir`.
    pub fn load(keys_dir: &Path, data_dir: &Path) -> Result<OwnKeys, Error> {
        let set = load_set(keys_dir)?;
        let peers_file = data_dir.join(PEERS_FILE);
        let own = OwnKeys {
            set: RwLock::new(Arc::new(set)),
            peers: Mutex::new(PeerState::default()),
            peers_file,
        };
        own.load_peers()?;
        Ok(own)
    }

    /// Loads the keys again (SIGHUP after `konvertctl keys rotate`).
    pub fn reload(&self, keys_dir: &Path) -> Result<(), Error> {
        let set = load_set(keys_dir)?;
        *self.set.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(set);
        self.load_peers()
    }

    fn set(&self) -> Arc<KeySet> {
        Arc::clone(&self.set.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn load_peers(&self) -> Result<(), Error> {
        let set = self.set();
        let want = set.rotation.as_ref().map(digest_text).unwrap_or_default();
        let mut state = if self.peers_file.exists() {
            let text = files::read_text(&self.peers_file, MAX_SMALL_FILE)?;
            toml::from_str::<PeerState>(&text)
                .map_err(|e| usage(format!("{}: {e}", self.peers_file.display())))?
        } else {
            PeerState::default()
        };
        if state.rotation != want {
            state = PeerState {
                rotation: want,
                ..PeerState::default()
            };
        }
        *self.peers.lock().unwrap_or_else(PoisonError::into_inner) = state;
        Ok(())
    }

    fn save_peers(&self, state: &PeerState) -> Result<(), Error> {
        let text = toml::to_string(state).map_err(|e| usage(format!("cannot encode peer state: {e}")))?;
        files::write_atomic(&self.peers_file, text.as_bytes(), 0o600, true)?;
        Ok(())
    }

    /// The current keys: they open envelopes (every age identity kept).
    pub fn current(&self) -> Arc<NodeKeys> {
        Arc::clone(&self.set().current)
    }

    /// The rotation under way (window open at `now`), if any.
    pub fn rotation(&self, now: Timestamp) -> Option<KeyRotation> {
        self.set().rotation.clone().filter(|r| now <= r.old_until)
    }

    fn window_open(set: &KeySet, now: Timestamp) -> bool {
        set.rotation.as_ref().is_some_and(|r| now <= r.old_until)
    }

    fn accepted_by(&self, peer: &AuthorityId) -> bool {
        self.peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .accepted
            .contains(peer)
    }

    /// The keys to seal and sign with towards `peer` at `now`: the old node
    /// key until the peer accepted the rotation (inside the window), else the current.
    pub fn for_peer(&self, peer: &AuthorityId, now: Timestamp) -> Arc<NodeKeys> {
        let set = self.set();
        match &set.previous {
            Some(prev) if Self::window_open(&set, now) && !self.accepted_by(peer) => Arc::clone(prev),
            _ => Arc::clone(&set.current),
        }
    }

    /// Every own node public key a receipt this gateway issued may be
    /// signed with now (current, and the old one inside the window).
    pub fn own_node_keys(&self) -> Vec<VerifyingKey> {
        let set = self.set();
        let mut v = vec![set.current.signing.verifying_key()];
        if let Some(p) = &set.previous {
            let k = p.signing.verifying_key();
            if !v.contains(&k) {
                v.push(k);
            }
        }
        v
    }

    /// The TLS identities for the endpoint at `now` with these peers.
    pub fn identities<'a>(&self, peers: impl Iterator<Item = &'a AuthorityId>, now: Timestamp) -> Identities {
        let set = self.set();
        let mut client_for = HashMap::new();
        let mut all_accepted = true;
        if let (Some(prev), true) = (&set.previous_tls, Self::window_open(&set, now)) {
            for p in peers {
                if !self.accepted_by(p) {
                    all_accepted = false;
                    client_for.insert(p.clone(), Arc::clone(prev));
                }
            }
        }
        let server = match &set.previous_tls {
            Some(prev) if Self::window_open(&set, now) && !all_accepted => Arc::clone(prev),
            _ => Arc::clone(&set.tls),
        };
        Identities {
            server,
            client: Arc::clone(&set.tls),
            client_for,
        }
    }
}

// ---------------------------------------------------------------------------
// In konvertd: peers

/// The pins accepted now for every configured peer: each card's pin and the
/// pins of the peer's recorded rotations inside their window.
pub fn peer_pins(history: &DirectoryHistory, dir: &Directory, now: Timestamp) -> Vec<Peer> {
    let mut out = Vec::new();
    for (a, p) in &dir.peers {
        let pins = history.accepted_tls_pins(&p.card, now);
        let mut any = false;
        for pin in pins.iter().filter_map(|t| t.parse::<Pin>().ok()) {
            any = true;
            out.push(Peer {
                authority: a.clone(),
                pin,
            });
        }
        if !any {
            out.push(Peer {
                authority: a.clone(),
                pin: p.pin,
            });
        }
    }
    out
}

/// The pins a dialled peer's server certificate may have now.
pub fn dial_pins(node: &Node, card: &AuthorityCard, fallback: Pin) -> Vec<Pin> {
    let now = node.now();
    let mut pins: Vec<Pin> = node.cases.with(|p| {
        p.directory
            .accepted_tls_pins(card, now)
            .iter()
            .filter_map(|t| t.parse().ok())
            .collect()
    });
    if pins.is_empty() {
        pins.push(fallback);
    }
    pins
}

/// The node keys of the peer with `card` accepted now (card key and
/// recorded rotations, old ones until their window ends).
pub fn accepted_node_keys(node: &Node, card: &AuthorityCard) -> Vec<VerifyingKey> {
    let now = node.now();
    node.cases.with(|p| p.directory.accepted_node_keys(card, now))
}

/// Every node key ever known for the peer with `card` (card and every
/// recorded rotation): to show stored receipts as verified after a rotation.
pub fn known_node_keys(node: &Node, card: &AuthorityCard) -> Vec<VerifyingKey> {
    let mut keys = vec![card.node_key];
    node.cases.with(|p| {
        for r in p.directory.rotations(&card.authority) {
            if let Some(k) = &r.node_key {
                for b in [k.old, k.new] {
                    if let Ok(v) = VerifyingKey::from_bytes(b.as_bytes()) {
                        if !keys.contains(&v) {
                            keys.push(v);
                        }
                    }
                }
            }
        }
    });
    keys
}

/// Verifies a receipt with any of `keys`.
pub fn verify_receipt(bytes: &[u8], keys: &[VerifyingKey]) -> Result<Receipt, ReceiptError> {
    let mut last = None;
    for k in keys {
        match Receipt::verify(bytes, k) {
            Ok(r) => return Ok(r),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or(ReceiptError::TooLarge(bytes.len())))
}

/// [`verify_receipt`] with the signature checked in a batch with others
/// (`node.verifier`); if it does not verify, the receipt is checked again
/// at once, for the exact error.
pub async fn verify_receipt_batched(
    node: &Node,
    bytes: &[u8],
    keys: &[VerifyingKey],
) -> Result<Receipt, ReceiptError> {
    let mut deferred = konvert_envelope::batch::Deferred::new();
    // (A receipt names its key: only the key it names reaches the signature.)
    let found = keys
        .iter()
        .find_map(|k| Receipt::verify_by(bytes, k, &mut deferred).ok());
    match found {
        Some(r)
            if node
                .verifier
                .verify(deferred.into_checks())
                .await
                .iter()
                .all(|ok| *ok) =>
        {
            Ok(r)
        }
        _ => verify_receipt(bytes, keys),
    }
}

/// The peer's card as it applies to sealing now: the age recipients of its
/// latest effective rotation.
pub fn sealing_card(node: &Node, card: &AuthorityCard) -> AuthorityCard {
    let now = node.now();
    node.cases.with(|p| p.directory.effective_card(card, now))
}

/// Puts the current pins and own TLS identities into the endpoint: after
/// start and reload, when a peer's rotation was recorded or a peer
/// accepted ours, and periodically (windows end).
pub fn apply(node: &Node) {
    let now = node.now();
    let dir = node.directory();
    let pins = node.cases.with(|p| peer_pins(&p.directory, &dir, now));
    if let Err(e) = node.endpoint.pins().replace(pins) {
        tracing::error!(error = %e, "peer pins not updated");
    }
    let ids = node.own.identities(dir.peers.keys(), now);
    if let Err(e) = node.endpoint.set_identities(ids) {
        tracing::error!(error = %e, "own TLS identities not updated");
    }
}

/// Runs [`apply`] every 30 s until `stop`.
pub async fn watch(node: Arc<Node>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(30)) => apply(&node),
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Sends the rotation statement (window open) as a `directory_update` to
/// every peer it was not sent to yet. Runs at start and on every reload.
/// The message is signed by a configured signatory (one on the own roster,
/// if there is one).
pub fn announce(node: &Arc<Node>) {
    let now = node.now();
    let Some(rotation) = node.own.rotation(now) else {
        return;
    };
    let roster = crate::signatories::load_roster(&node.config.keys_dir)
        .ok()
        .flatten();
    let signer = node.config.signatories.iter().find(|s| {
        let Some(k) = node.signatories.get(&s.id) else {
            return false;
        };
        match &roster {
            None => true,
            Some(r) => {
                let pk = PublicKeyBytes(k.verifying_key().to_bytes());
                r.roster()
                    .signatory_by_key(&pk)
                    .is_some_and(|x| x.valid_from <= now && x.valid_until.is_none_or(|u| u >= now))
            }
        }
    });
    let Some(signer) = signer else {
        tracing::error!("no configured signatory may sign the key rotation; not announced");
        return;
    };
    let dir = node.directory();
    for (peer, entry) in &dir.peers {
        let due = {
            let st = node.own.peers.lock().unwrap_or_else(PoisonError::into_inner);
            !st.queued.contains_key(peer) && !st.accepted.contains(peer)
        };
        if !due {
            continue;
        }
        let Some(agreement) = entry.agreements.first() else {
            continue;
        };
        let id = Id::new(now);
        let msg = Message {
            header: MessageHeader {
                id,
                time: now,
                agreement: agreement.clone(),
                from: node.keys.authority.clone(),
                to: peer.clone(),
                in_reply_to: None,
            },
            body: MessageBody::DirectoryUpdate(rotation.to_directory_update(None)),
        };
        let sub = crate::daemon::outbound::Submission {
            message: msg,
            signatory: signer.id.clone(),
            sources: Vec::new(),
            purpose: None,
        };
        match crate::daemon::outbound::submit_blocking(node, sub) {
            Ok(_) => {
                let mut st = node.own.peers.lock().unwrap_or_else(PoisonError::into_inner);
                st.queued.insert(peer.clone(), id.to_string());
                if let Err(e) = node.own.save_peers(&st) {
                    tracing::error!(error = %e, "key rotation queued but not recorded");
                }
                tracing::info!(peer = %peer, id = %id, old_until = %rotation.old_until, "key rotation queued");
            }
            Err(e) => tracing::error!(peer = %peer, error = %e, "key rotation not queued"),
        }
    }
}

/// The dispatcher's hook for a receipt from `peer` for message `id`: if it
/// is that peer's rotation announcement, the peer now knows the new keys
/// (accepted) or will not learn them (rejected: logged).
pub fn delivered(node: &Node, peer: &AuthorityId, id: &Id, accepted: bool) {
    let text = id.to_string();
    let mut st = node.own.peers.lock().unwrap_or_else(PoisonError::into_inner);
    if st.queued.get(peer) != Some(&text) {
        return;
    }
    if !accepted {
        tracing::error!(peer = %peer, id = %id, "the peer refused the key rotation: it keeps getting the old keys until the window ends, then cannot talk to this gateway; check its card (root_key)");
        return;
    }
    if st.accepted.insert(peer.clone()) {
        if let Err(e) = node.own.save_peers(&st) {
            tracing::error!(error = %e, "peer's acceptance of the key rotation not recorded");
        }
        drop(st);
        tracing::info!(peer = %peer, "peer accepted the key rotation; new keys used towards it");
        apply(node);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn kinds_and_defaults() {
        assert!(!Kinds::default().any());
        assert!(Kinds::ALL.any());
        assert_eq!(DEFAULT_OVERLAP.as_secs(), 7 * 24 * 3600);
    }

    #[test]
    fn rotate_keep_the_old_keys_for_the_window_and_retire_after_it() {
        use std::time::Duration;
        let t = tempfile::tempdir().unwrap();
        let made = crate::init::init(&crate::init::InitOptions {
            authority: AuthorityId::new("kz.mvd").unwrap(),
            dir: t.path().join("kz"),
            listen: "127.0.0.1:7443".parse().unwrap(),
            api_socket: None,
            name: None,
            signatory: "head".into(),
            force: false,
        })
        .unwrap();
        let cfg = &made.config;
        let keys_dir = t.path().join("kz/keys");
        let data_dir = t.path().join("kz/data");
        files::create_private_dir(&data_dir).unwrap();
        let now = Timestamp::from_unix(1_800_000_000);
        let before = offline::load_node_keys(&keys_dir).unwrap();
        // Bad requests change nothing.
        assert!(rotate(cfg, None, Kinds::default(), DEFAULT_OVERLAP, now).is_err());
        assert!(rotate(cfg, None, Kinds::ALL, Duration::from_secs(10), now).is_err());
        assert!(rotate(cfg, None, Kinds::ALL, Duration::from_secs(400 * 86_400), now).is_err());
        assert!(load_statement(&keys_dir).unwrap().is_none());

        let kinds = Kinds {
            tls: false,
            node: true,
            age: true,
        };
        let done = rotate(cfg, None, kinds, Duration::from_secs(3600), now).unwrap();
        assert!(done.tls_pin.is_none() && done.node_key_id.is_some() && done.age_recipient.is_some());
        let st = load_statement(&keys_dir).unwrap().unwrap();
        assert_eq!((st.effective, st.old_until), (now, now.plus_secs(3600)));
        assert_eq!(
            st.node_key.as_ref().unwrap().old.0,
            before.signing.verifying_key().to_bytes()
        );
        assert!(st.tls_pin.is_none());
        // A second rotation waits for retirement.
        let e = rotate(cfg, None, Kinds::ALL, DEFAULT_OVERLAP, now).unwrap_err();
        assert!(e.to_string().contains("retire"), "{e}");

        // konvertd's view: the old node key towards a peer that has not
        // accepted, inside the window; the new one after it; every age identity opens.
        let own = OwnKeys::load(&keys_dir, &data_dir).unwrap();
        let by = AuthorityId::new("by.mvd").unwrap();
        let old = before.signing.verifying_key();
        assert_eq!(own.for_peer(&by, now).signing.verifying_key(), old);
        let new = own.current().signing.verifying_key();
        assert_ne!(new, old);
        assert_eq!(
            own.for_peer(&by, now.plus_secs(3601)).signing.verifying_key(),
            new
        );
        assert_eq!(own.current().previous_age.len(), 1);
        assert_eq!(own.current().previous_age[0].recipient(), before.age.recipient());
        assert_eq!(own.own_node_keys().len(), 2);
        // No TLS rotation: the same identity everywhere.
        let ids = own.identities([&by].into_iter(), now);
        assert!(ids.client_for.is_empty());
        assert_eq!(ids.server.pin(), ids.client.pin());

        // Retire: refused inside the window, done after it.
        assert!(retire(cfg, None, now, false).is_err());
        let r = retire(cfg, None, now.plus_secs(3601), false).unwrap();
        assert_eq!(r.age_identities_dropped, 1);
        assert!(load_statement(&keys_dir).unwrap().is_none());
        assert!(
            retire(cfg, None, now.plus_secs(3601), false).is_err(),
            "nothing left"
        );
        let own = OwnKeys::load(&keys_dir, &data_dir).unwrap();
        assert!(own.current().previous_age.is_empty());
        assert_eq!(own.for_peer(&by, now).signing.verifying_key(), new);

        // Keys named by ${CREDENTIALS_DIRECTORY}: the keys directory must be given.
        let text = std::fs::read_to_string(cfg).unwrap();
        let cred = text.replace("keys_dir = \"keys\"", "keys_dir = \"${CREDENTIALS_DIRECTORY}\"");
        assert_ne!(cred, text);
        std::fs::write(cfg, cred).unwrap();
        let e = rotate(cfg, None, Kinds::ALL, DEFAULT_OVERLAP, now).unwrap_err();
        assert!(e.to_string().contains("--keys-dir"), "{e}");
        rotate(cfg, Some(&keys_dir), Kinds::ALL, DEFAULT_OVERLAP, now).unwrap();
        // As systemd passes the directory: files rotation_NAME.
        let flat = t.path().join("credentials");
        std::fs::create_dir(&flat).unwrap();
        for e in std::fs::read_dir(&keys_dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                std::fs::copy(&p, flat.join(p.file_name().unwrap())).unwrap();
            }
        }
        for e in std::fs::read_dir(keys_dir.join(PREVIOUS_DIR)).unwrap() {
            let p = e.unwrap().path();
            let name = format!("{PREVIOUS_DIR}_{}", p.file_name().unwrap().to_str().unwrap());
            std::fs::copy(&p, flat.join(name)).unwrap();
        }
        let own = OwnKeys::load(&flat, &data_dir).unwrap();
        assert!(own.rotation(now).is_some());
        let ids = own.identities([&by].into_iter(), now);
        assert_eq!(ids.client_for.len(), 1, "old TLS client identity towards by.mvd");
        assert_ne!(
            ids.server.pin(),
            ids.client.pin(),
            "old server identity until by.mvd accepts"
        );
    }
}
