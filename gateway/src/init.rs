//! `konvertctl init` and `konvertctl peer add`: a gateway's directory from
//! nothing, and peers from their cards, with no other editing.
//!
//! `init --authority kz.mvd --dir DIR` makes:
//!
//! | path | mode | what |
//! |---|---|---|
//! | `DIR/konvert.toml` | 0640 | the daemon configuration, ready to start |
//! | `DIR/card.toml` | 0644 | the public authority card: give it to peers |
//! | `DIR/keys/node.key.pem`, `age.key` | 0600 | node signing key, age identity |
//! | `DIR/keys/tls.cert.pem`, `tls.key.pem` | 0644 / 0600 | self-signed QUIC TLS certificate and key |
//! | `DIR/keys/master.key` | 0600 | the store's master key |
//! | `DIR/keys/signatories/ID.key.pem` (+ `.pub`) | 0600 | a first signatory |
//! | `DIR/keys/root.key.pem` (+ `.pub`) | 0600 | the authority root key: signs the signatory roster (`root_key` on the card) |
//! | `DIR/keys/rotation/` | 0700 | a key rotation's statement and old keys (`konvertctl keys rotate`; empty until then) |
//! | `DIR/profiles/*.toml` | 0644 | the shipped agreement profiles |
//! | `DIR/peers/` | 0700 | peer cards, filled by `peer add` |
//! | `DIR/data/` | 0700 | the store |

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use konvert_envelope::keys::{AuthorityCard, CardSignatory};
use konvert_envelope::model::{AgreementId, AuthorityId};

use crate::config::{ApiConfig, Config, Loaded, PeerConfig, QuicConfig, SignatoryConfig, StoreSection};
use crate::files::{self, FileError};
use crate::offline::{self, Error};
use crate::transport::tls::TlsIdentity;

/// TLS certificate file in the keys directory.
pub const TLS_CERT_FILE: &str = "tls.cert.pem";
/// TLS key file in the keys directory.
pub const TLS_KEY_FILE: &str = "tls.key.pem";
/// Store master key file in the keys directory.
pub const MASTER_KEY_FILE: &str = "master.key";
/// Configuration file name.
pub const CONFIG_FILE: &str = "konvert.toml";

/// What `init` is asked to make.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// The authority, e.g. `kz.mvd`.
    pub authority: AuthorityId,
    /// The directory to fill (created; must be empty unless `force`).
    pub dir: PathBuf,
    /// QUIC listen address.
    pub listen: SocketAddr,
    /// Local API socket path (default `DIR/api.sock`).
    pub api_socket: Option<PathBuf>,
    /// Human-readable authority name for the card.
    pub name: Option<String>,
    /// Id of the first signatory.
    pub signatory: String,
    /// Replace existing files.
    pub force: bool,
}

/// Where `init` put things.
#[derive(Debug, serde::Serialize)]
pub struct InitReport {
    /// The configuration file.
    pub config: PathBuf,
    /// The public card.
    pub card: PathBuf,
    /// The card's contents.
    pub card_value: AuthorityCard,
}

fn key_err(path: &Path) -> impl FnOnce(konvert_envelope::keys::KeyError) -> Error + '_ {
    move |source| Error::Key {
        path: path.to_path_buf(),
        source,
    }
}

/// Makes a gateway directory (see the module documentation).
pub fn init(o: &InitOptions) -> Result<InitReport, Error> {
    let dir = &o.dir;
    if !o.force && dir.join(CONFIG_FILE).exists() {
        return Err(FileError::Exists(dir.join(CONFIG_FILE)).into());
    }
    files::create_private_dir(dir)?;
    let keys = dir.join("keys");
    offline::keygen(&o.authority, &keys, o.name.clone(), o.force)?;

    let tls = TlsIdentity::generate(&o.authority)
        .map_err(|e| Error::Usage(format!("cannot make a TLS certificate: {e}")))?;
    let (cert_pem, key_pem) = tls.to_pem();
    files::write_atomic(&keys.join(TLS_CERT_FILE), cert_pem.as_bytes(), 0o644, o.force)?;
    files::write_atomic(&keys.join(TLS_KEY_FILE), key_pem.as_bytes(), 0o600, o.force)?;

    let master = keys.join(MASTER_KEY_FILE);
    if o.force && master.exists() {
        // Never replace a master key silently: it would make the store unreadable.
        return Err(Error::Usage(format!(
            "{} exists; move it away yourself if you really mean to start a new store",
            master.display()
        )));
    }
    konvert_store::MasterKey::generate_to_file(&master)
        .map_err(|e| Error::Usage(format!("{}: {e}", master.display())))?;

    let sig_dir = keys.join("signatories");
    files::create_private_dir(&sig_dir)?;
    // Where a key rotation keeps its statement and old keys (`konvertctl keys rotate`).
    files::create_private_dir(&keys.join(crate::rotation::PREVIOUS_DIR))?;
    let sig_path = sig_dir.join(format!("{}.key.pem", o.signatory));
    let sig_pub = offline::signatory_keygen(&sig_path, o.force)?;
    let root_pub = offline::signatory_keygen(&keys.join(crate::signatories::ROOT_KEY_FILE), o.force)?;

    let profiles_dir = dir.join("profiles");
    files::create_private_dir(&profiles_dir)?;
    let mut profiles = Vec::new();
    for (id, text) in crate::demo::PROFILES {
        let p = profiles_dir.join(format!("{id}.toml"));
        files::write_atomic(&p, text.as_bytes(), 0o644, o.force)?;
        profiles.push(PathBuf::from("profiles").join(format!("{id}.toml")));
    }
    files::create_private_dir(&dir.join("peers"))?;

    // The public card: node keys from keygen, plus the TLS pin and the signatory.
    let card_path = keys.join(offline::CARD_FILE);
    let mut card = offline::load_card(&card_path)?;
    card.tls_pin = Some(tls.pin().to_string());
    card.root_key = Some(root_pub);
    card.signatories = vec![CardSignatory {
        id: o.signatory.clone(),
        key: sig_pub,
        valid_from: None,
        valid_until: None,
    }];
    let card_text = format!(
        "# Konvert authority card of {}: give this file to peer gateways (`konvertctl peer add --card`).\n\
         # It holds only public keys.\n{}",
        o.authority,
        card.to_toml_string().map_err(key_err(&card_path))?
    );
    files::write_atomic(&card_path, card_text.as_bytes(), 0o644, true)?;
    let public_card = dir.join(offline::CARD_FILE);
    files::write_atomic(&public_card, card_text.as_bytes(), 0o644, o.force)?;

    let config = Config {
        authority: o.authority.clone(),
        keys_dir: PathBuf::from("keys"),
        data_dir: PathBuf::from("data"),
        profiles,
        quic: QuicConfig {
            listen: o.listen,
            max_envelope_bytes: 320 * 1024 * 1024,
            idle_timeout: crate::config::Span(std::time::Duration::from_secs(60)),
            keep_alive: crate::config::Span(std::time::Duration::from_secs(15)),
            max_streams_per_connection: 256,
            max_connections_per_peer: 4,
        },
        api: ApiConfig {
            socket: o.api_socket.clone().unwrap_or_else(|| PathBuf::from("api.sock")),
            users: Vec::new(),
            groups: Vec::new(),
            max_json_bytes: 16 * 1024 * 1024,
            max_upload_bytes: 256 * 1024 * 1024,
            upload_max_age: crate::config::Span(std::time::Duration::from_secs(24 * 3600)),
        },
        store: StoreSection {
            master_key_file: Some(PathBuf::from("keys").join(MASTER_KEY_FILE)),
            ..StoreSection::default()
        },
        outbox: Default::default(),
        log: Default::default(),
        health: Default::default(),
        metrics: crate::config::MetricsConfig::default(),
        signatures: crate::config::SignaturesConfig::default(),
        signatories: vec![SignatoryConfig {
            id: o.signatory.clone(),
            key: PathBuf::from("keys/signatories").join(format!("{}.key.pem", o.signatory)),
        }],
        peers: Vec::new(),
    };
    let text = format!(
        "# Konvert gateway of {} — made by `konvertctl init`.\n\
         # Add peers with `konvertctl peer add --config {} --card PEER_CARD --address HOST:PORT --agreement ID`.\n\
         # Relative paths are relative to this file. The API socket admits this daemon's own user;\n\
         # list application users or groups under [api].\n\n{}",
        o.authority,
        dir.join(CONFIG_FILE).display(),
        config.to_toml().map_err(|e| Error::Usage(e.to_string()))?
    );
    let cfg_path = dir.join(CONFIG_FILE);
    files::write_atomic(&cfg_path, text.as_bytes(), 0o640, o.force)?;
    // What init wrote must load.
    Loaded::load(&cfg_path).map_err(|e| Error::Usage(e.to_string()))?;
    Ok(InitReport {
        config: cfg_path,
        card: public_card,
        card_value: card,
    })
}

/// What `init --systemd` is asked to make.
#[derive(Debug, Clone)]
pub struct SystemdOptions {
    /// The authority, e.g. `kz.mvd`.
    pub authority: AuthorityId,
    /// Root of the file system to lay out (`/` on a real host; a temporary
    /// directory in tests). Paths inside the written configuration are
    /// the ones the service sees (`/etc/konvert/…`), without this prefix.
    pub root: PathBuf,
    /// QUIC listen address.
    pub listen: SocketAddr,
    /// Human-readable authority name for the card.
    pub name: Option<String>,
    /// Id of the first signatory.
    pub signatory: String,
    /// The service's user and group (the package's sysusers entry: `konvert`).
    pub service_user: String,
}

/// Where `init --systemd` put things, and whether it set owners.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SystemdReport {
    /// `ROOT/etc/konvert/konvert.toml`.
    pub config: PathBuf,
    /// `ROOT/etc/konvert/card.toml`: give it to peers.
    pub card: PathBuf,
    /// `ROOT/etc/konvert/keys`: the unit's `LoadCredential=` sources.
    pub keys: PathBuf,
    /// `ROOT/var/lib/konvert`: the store.
    pub data: PathBuf,
    /// Owners set (root:USER for the configuration, USER for the store);
    /// `false` when not running as root (modes are set either way).
    pub owners_set: bool,
}

/// The packaged service's configuration directory.
pub const SYSTEMD_CONFIG_DIR: &str = "etc/konvert";
/// The packaged service's state directory (`StateDirectory=konvert`).
pub const SYSTEMD_DATA_DIR: &str = "var/lib/konvert";
/// The packaged service's API socket (`RuntimeDirectory=konvert`).
pub const SYSTEMD_SOCKET: &str = "/run/konvert/api.sock";

/// Lays out keys and configuration for the packaged systemd service
/// (`deploy/systemd/konvertd.service`, `deploy/tmpfiles.d/konvert.conf`):
///
/// | path (under `root`) | mode, owner | what |
/// |---|---|---|
/// | `/etc/konvert/` | 2750 root:konvert | `konvert.toml` (0640), `card.toml` (0644), `profiles/` and `peers/` (2750, files 0640) |
/// | `/etc/konvert/keys/` | 0700 root:root | node, age, TLS, master, root and signatory keys (0600; public halves 0644): read by systemd as credentials |
/// | `/var/lib/konvert/` | 0700 konvert:konvert | the store |
///
/// The configuration names the keys by `${CREDENTIALS_DIRECTORY}` (as
/// the unit's `LoadCredential=` lines pass them), `data_dir =
/// "/var/lib/konvert"`, the socket `/run/konvert/api.sock` for group
/// `konvert`, and `master_key_credential = "master.key"`. Owners are set
/// when running as root (the user must exist: the package's sysusers entry
/// makes it); otherwise only modes. Refused if `konvert.toml` exists.
pub fn init_systemd(o: &SystemdOptions) -> Result<SystemdReport, Error> {
    use std::os::unix::fs::PermissionsExt;
    let etc = o.root.join(SYSTEMD_CONFIG_DIR);
    let data = o.root.join(SYSTEMD_DATA_DIR);
    let is_root = nix::unistd::geteuid().is_root();
    let owner = if is_root {
        let user = nix::unistd::User::from_name(&o.service_user)
            .map_err(|e| Error::Usage(format!("cannot look up user {}: {e}", o.service_user)))?
            .ok_or_else(|| {
                Error::Usage(format!(
                    "user {} does not exist: install the package (its sysusers.d entry makes it) or run                      `systemd-sysusers` first",
                    o.service_user
                ))
            })?;
        let group = nix::unistd::Group::from_name(&o.service_user)
            .map_err(|e| Error::Usage(format!("cannot look up group {}: {e}", o.service_user)))?
            .ok_or_else(|| Error::Usage(format!("group {} does not exist", o.service_user)))?;
        Some((user.uid, group.gid))
    } else {
        None
    };
    if etc.join(CONFIG_FILE).exists() {
        return Err(FileError::Exists(etc.join(CONFIG_FILE)).into());
    }
    let report = init(&InitOptions {
        authority: o.authority.clone(),
        dir: etc.clone(),
        listen: o.listen,
        api_socket: Some(PathBuf::from(SYSTEMD_SOCKET)),
        name: o.name.clone(),
        signatory: o.signatory.clone(),
        force: false,
    })?;
    let cfg_path = report.config.clone();
    let cred = |name: &str| PathBuf::from(format!("{}/{name}", crate::config::CREDENTIALS_PLACEHOLDER));
    let text = files::read_text(&cfg_path, crate::config::MAX_CONFIG)?;
    let mut config = Config::parse(&text, &cfg_path).map_err(|e| Error::Usage(e.to_string()))?;
    let service_etc = Path::new("/").join(SYSTEMD_CONFIG_DIR);
    config.keys_dir = PathBuf::from(crate::config::CREDENTIALS_PLACEHOLDER);
    config.data_dir = Path::new("/").join(SYSTEMD_DATA_DIR);
    config.profiles = crate::demo::PROFILES
        .iter()
        .map(|(id, _)| service_etc.join("profiles").join(format!("{id}.toml")))
        .collect();
    config.api.socket = PathBuf::from(SYSTEMD_SOCKET);
    config.api.groups = vec![o.service_user.clone()];
    config.store.master_key_file = None;
    config.store.master_key_credential = Some(MASTER_KEY_FILE.to_string());
    for s in &mut config.signatories {
        s.key = cred(&format!("signatory_{}.key.pem", s.id));
    }
    let text = format!(
        "# Konvert gateway of {} for the packaged service (konvertd.service), made by\n\
         # `konvertctl init --systemd`. Keys reach konvertd as systemd credentials\n\
         # (LoadCredential= from /etc/konvert/keys). Add peers with\n\
         # `konvertctl peer add --config /etc/konvert/konvert.toml --card PEER_CARD --address HOST:PORT --agreement ID`,\n\
         # then `systemctl reload konvertd`.\n\n{}",
        o.authority,
        config.to_toml().map_err(|e| Error::Usage(e.to_string()))?
    );
    Config::parse(&text, &cfg_path).map_err(|e| Error::Usage(format!("{}: {e}", cfg_path.display())))?;
    files::write_atomic(&cfg_path, text.as_bytes(), 0o640, true)?;

    let keys = etc.join("keys");
    files::create_private_dir(&data)?;
    let set_mode = |p: &Path, mode: u32| -> Result<(), Error> {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::Usage(format!("cannot set the mode of {}: {e}", p.display())))
    };
    let chown =
        |p: &Path, uid: Option<nix::unistd::Uid>, gid: Option<nix::unistd::Gid>| -> Result<(), Error> {
            if owner.is_some() {
                nix::unistd::chown(p, uid, gid)
                    .map_err(|e| Error::Usage(format!("cannot set the owner of {}: {e}", p.display())))?;
            }
            Ok(())
        };
    let root_uid = Some(nix::unistd::Uid::from_raw(0));
    let root_gid = Some(nix::unistd::Gid::from_raw(0));
    let (svc_uid, svc_gid) = match owner {
        Some((u, g)) => (Some(u), Some(g)),
        None => (None, None),
    };
    // Configuration: root-owned, readable by the service's group (set-group-id dirs).
    for d in [etc.clone(), etc.join("profiles"), etc.join("peers")] {
        chown(&d, root_uid, svc_gid)?;
        set_mode(&d, 0o2750)?;
    }
    for entry in std::fs::read_dir(etc.join("profiles"))
        .map_err(|e| Error::Usage(format!("cannot list {}: {e}", etc.join("profiles").display())))?
    {
        let p = entry
            .map_err(|e| Error::Usage(format!("cannot list {}: {e}", etc.join("profiles").display())))?
            .path();
        chown(&p, root_uid, svc_gid)?;
        set_mode(&p, 0o640)?;
    }
    chown(&cfg_path, root_uid, svc_gid)?;
    set_mode(&cfg_path, 0o640)?;
    chown(&report.card, root_uid, svc_gid)?;
    set_mode(&report.card, 0o644)?;
    // Keys: root only; systemd reads them as credentials. The unit loads
    // the roster too, so it must exist: empty, "no roster yet", until
    // `konvertctl signatory add` writes the first one.
    let roster = keys.join(crate::signatories::ROSTER_FILE);
    if !roster.exists() {
        files::write_atomic(&roster, b"", 0o644, true)?;
    }
    chown(&keys, root_uid, root_gid)?;
    set_mode(&keys, 0o700)?;
    // The store: the service's own.
    chown(&data, svc_uid, svc_gid)?;
    set_mode(&data, 0o700)?;
    files::sync_dir(&etc)?;
    Ok(SystemdReport {
        config: cfg_path,
        card: report.card,
        keys,
        data,
        owners_set: owner.is_some(),
    })
}

/// Human text for [`SystemdReport`].
pub fn systemd_text(r: &SystemdReport) -> String {
    format!(
        "configuration: {}\ncard (give it to peers): {}\nkeys (credentials of konvertd.service): {}\nstore: {}\n{}\
         Next: konvertctl peer add --config /etc/konvert/konvert.toml ...; systemctl enable --now konvertd\n",
        r.config.display(),
        r.card.display(),
        r.keys.display(),
        r.data.display(),
        if r.owners_set {
            ""
        } else {
            "owners not set (not running as root): run as root on the target host, or chown as the unit expects
"
        }
    )
}

/// Adds a peer from its card to the configuration at `config_path`.
///
/// The card is copied to `peers/AUTHORITY.toml` beside the configuration and
/// a `[[peers]]` table is appended; the result is loaded and checked before
/// it replaces the configuration, so a bad card or address changes nothing.
pub fn peer_add(
    config_path: &Path,
    card_path: &Path,
    addresses: &[String],
    agreements: &[AgreementId],
) -> Result<AuthorityCard, Error> {
    let card = offline::load_card(card_path)?;
    if card.tls_pin.is_none() {
        return Err(Error::Usage(format!(
            "{}: the card has no tls_pin; peers need a card made by `konvertctl init`",
            card_path.display()
        )));
    }
    let text = files::read_text(config_path, crate::config::MAX_CONFIG)?;
    let current = Config::parse(&text, config_path).map_err(|e| Error::Usage(e.to_string()))?;
    if current.peers.iter().any(|p| p.authority == card.authority) {
        return Err(Error::Usage(format!(
            "{} is already a peer in {}",
            card.authority,
            config_path.display()
        )));
    }
    let base = files::parent_dir(config_path);
    let peers_dir = base.join("peers");
    files::create_private_dir(&peers_dir)?;
    let stored = peers_dir.join(format!("{}.toml", card.authority));
    let peer = PeerConfig {
        authority: card.authority.clone(),
        addresses: addresses.to_vec(),
        agreements: agreements.to_vec(),
        card: PathBuf::from("peers").join(format!("{}.toml", card.authority)),
    };
    #[derive(serde::Serialize)]
    struct One<'a> {
        peers: [&'a PeerConfig; 1],
    }
    let table = toml::to_string(&One { peers: [&peer] }).map_err(|e| Error::Usage(e.to_string()))?;
    let new_text = format!("{}\n\n{table}", text.trim_end());
    // Check the result before anything is replaced.
    let card_text = files::read_text(card_path, offline::MAX_SMALL_FILE)?;
    Config::parse(&new_text, config_path).map_err(|e| Error::Usage(e.to_string()))?;
    let loaded = Loaded::load(config_path).map_err(|e| Error::Usage(e.to_string()))?;
    if let Some(a) = agreements.iter().find(|a| !loaded.profiles.contains_key(*a)) {
        return Err(Error::Usage(format!(
            "no profile for agreement {a} is configured in {}",
            config_path.display()
        )));
    }
    files::write_atomic(&stored, card_text.as_bytes(), 0o644, true)?;
    files::write_atomic(config_path, new_text.as_bytes(), 0o640, true)?;
    Loaded::load(config_path).map_err(|e| Error::Usage(e.to_string()))?;
    Ok(card)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(a: &str, dir: &Path, port: u16) -> InitOptions {
        InitOptions {
            authority: AuthorityId::new(a).unwrap(),
            dir: dir.to_path_buf(),
            listen: format!("127.0.0.1:{port}").parse().unwrap(),
            api_socket: None,
            name: None,
            signatory: "head".into(),
            force: false,
        }
    }

    #[test]
    fn two_gateways_init_and_add_each_other() {
        let t = tempfile::tempdir().unwrap();
        let kz = init(&opts("kz.mvd", &t.path().join("kz"), 7443)).unwrap();
        let by = init(&opts("by.mvd", &t.path().join("by"), 7444)).unwrap();
        assert!(kz.card_value.tls_pin.as_deref().unwrap().starts_with("sha256/"));
        let agreement = AgreementId::new("kz-by-2019").unwrap();
        peer_add(
            &kz.config,
            &by.card,
            &["127.0.0.1:7444".into()],
            std::slice::from_ref(&agreement),
        )
        .unwrap();
        peer_add(
            &by.config,
            &kz.card,
            &["127.0.0.1:7443".into()],
            std::slice::from_ref(&agreement),
        )
        .unwrap();
        let loaded = Loaded::load(&kz.config).unwrap();
        assert_eq!(loaded.config.peers.len(), 1);
        assert_eq!(loaded.cards[&AuthorityId::new("by.mvd").unwrap()], by.card_value);
        // Adding the same peer twice, or with an unknown agreement, changes nothing.
        assert!(peer_add(&kz.config, &by.card, &["127.0.0.1:7444".into()], &[agreement]).is_err());
        let unknown = AgreementId::new("kz-xx-2030").unwrap();
        let am = init(&opts("am.police", &t.path().join("am"), 7445)).unwrap();
        assert!(peer_add(&kz.config, &am.card, &["127.0.0.1:7445".into()], &[unknown]).is_err());
        assert_eq!(Loaded::load(&kz.config).unwrap().config.peers.len(), 1);
        // A second init into the same directory is refused.
        assert!(init(&opts("kz.mvd", &t.path().join("kz"), 7443)).is_err());
    }
}
