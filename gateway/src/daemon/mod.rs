//! `konvertd`: the gateway daemon.
//!
//! One [`Node`] joins the pieces: the configuration ([`crate::config`]), the
//! node keys and signatories, the agreement profiles, the store
//! (`konvert-store`), the QUIC endpoint ([`crate::transport`]) and the local
//! API ([`crate::api`]). Its tasks:
//!
//! - [`outbound`]: submissions from applications are validated, signed,
//!   sealed and queued durably; a dispatcher delivers the queue to each
//!   peer over one long-lived connection per peer, one stream per envelope,
//!   with retries (exponential backoff, jitter, address rotation) and a
//!   limit after which a message is marked failed;
//! - [`inbound`]: envelopes from peers are checked, stored durably and only
//!   then answered with a signed receipt; a duplicate gets the same receipt;
//! - [`service`]: the local API's operations on top of the store.
//!
//! Shutdown (SIGTERM/SIGINT): stop accepting API requests and QUIC
//! connections, let in-flight work finish, sync the store, close QUIC
//! cleanly. SIGHUP reloads peers and profiles without dropping connections
//! or queued messages.

pub mod cases;
pub mod inbound;
pub mod load;
pub mod local;
pub mod operator;
pub mod outbound;
pub mod retention;
pub mod service;
pub mod uploads;
pub mod versions;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use konvert_envelope::envelope::Limits;
use konvert_envelope::keys::{AuthorityCard, NodeKeys, SigningKey};
use konvert_envelope::model::{AgreementId, AuthorityId, Timestamp};
use konvert_envelope::profile::Profile;
use konvert_store::{MasterKey, RetentionPolicy, Store, StoreConfig};
use tokio::sync::Notify;

use crate::config::{Config, Loaded};
use crate::files;
use crate::offline;
use crate::retry::Backoff;
use crate::transport::{self, Endpoint, Peer, Pin, PinSet, TlsIdentity, TransportConfig};

/// What the daemon's supervisor (signals, or the demo) asks of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Reload peers and profiles (SIGHUP).
    Reload,
    /// Stop gracefully (SIGTERM, SIGINT).
    Stop,
}

/// Runs a started node: the local API, the QUIC accept loop and the outbox
/// dispatcher, until [`Control::Stop`] arrives (or the channel closes);
/// then shuts down gracefully: the API stops accepting and finishes
/// in-flight requests, the dispatcher stops, envelopes being received
/// finish and get their receipts, QUIC closes cleanly, the store syncs.
pub async fn run(
    node: Arc<Node>,
    mut control: tokio::sync::mpsc::Receiver<Control>,
) -> Result<(), StartError> {
    use crate::api::{AccessPolicy, ApiLimits, ApiServer};
    let api_err = |reason: String| StartError::Api {
        path: node.config.api.socket.clone(),
        reason,
    };
    let policy = AccessPolicy::from_names(&node.config.api.users, &node.config.api.groups)
        .map_err(|e| api_err(e.to_string()))?;
    let limits = ApiLimits {
        max_json_body: node.config.api.max_json_bytes,
        max_upload: node.config.api.max_upload_bytes,
        ..ApiLimits::default()
    };
    // The metrics endpoint (off by default) is bound first: a taken port
    // stops the start before anything else listens.
    let metrics_listener = match node.config.metrics.listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| StartError::Bind {
                    addr: format!("{addr} (metrics)"),
                    reason: e.to_string(),
                })?;
            tracing::info!(metrics = %addr, "metrics endpoint listening");
            Some(l)
        }
        None => None,
    };
    let api = ApiServer::bind(
        &node.config.api.socket,
        0o660,
        policy,
        Arc::new(service::Service(Arc::clone(&node))),
        limits,
    )
    .map_err(|e| api_err(e.to_string()))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut api_stop = stop_rx.clone();
    let api_task = tokio::spawn(api.serve(async move {
        let _ = api_stop.wait_for(|s| *s).await;
    }));
    let metrics_task =
        metrics_listener.map(|l| tokio::spawn(crate::metrics::serve(l, Arc::clone(&node), stop_rx.clone())));
    let accept_task = tokio::spawn(inbound::accept_loop(Arc::clone(&node)));
    let sweep_task = tokio::spawn(retention::sweeper(Arc::clone(&node), stop_rx.clone()));
    let dispatch_task = tokio::spawn(outbound::dispatch(Arc::clone(&node), stop_rx.clone()));
    tracing::info!(
        authority = %node.keys.authority,
        quic = %node.endpoint.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        api = %node.config.api.socket.display(),
        "konvertd ready"
    );
    crate::systemd::ready("QUIC endpoint and API socket up");
    announce_roster(&node);
    announce_rotation(&node);
    let rotation_task = tokio::spawn(crate::rotation::watch(Arc::clone(&node), stop_rx.clone()));
    let _watchdog = crate::systemd::Watchdog::spawn({
        let node = Arc::clone(&node);
        let tasks = [&api_task, &accept_task, &dispatch_task, &sweep_task].map(|t| t.abort_handle());
        move || {
            if tasks.iter().any(|t| t.is_finished()) {
                Err("a daemon task (API, QUIC accept, dispatcher or retention sweeper) has stopped")
            } else if node.store.stats().poisoned {
                Err("the store is poisoned after a failed sync")
            } else {
                Ok(())
            }
        }
    });
    while let Some(c) = control.recv().await {
        match c {
            Control::Reload => {
                crate::systemd::reloading();
                if let Err(e) = node.reload() {
                    tracing::error!(error = %e, "reload refused; keeping the previous configuration");
                }
                announce_roster(&node);
                announce_rotation(&node);
                crate::systemd::ready("QUIC endpoint and API socket up");
            }
            Control::Stop => break,
        }
    }
    crate::systemd::stopping();
    tracing::info!("shutting down: finishing in-flight work");
    let _ = stop_tx.send(true);
    node.endpoint.refuse_new_connections();
    let _ = api_task.await;
    let _ = dispatch_task.await;
    let _ = sweep_task.await;
    let _ = rotation_task.await;
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    // Let envelopes being received finish and their receipts go out.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while node.inbound_in_flight.load(std::sync::atomic::Ordering::Acquire) > 0
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    node.endpoint.close();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), node.endpoint.wait_idle()).await;
    accept_task.abort();
    if let Err(e) = node.store.sync() {
        tracing::error!(error = %e, "final store sync failed");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Sends a changed own signatory roster to the peers, off the async threads.
fn announce_roster(node: &Arc<Node>) {
    let node = Arc::clone(node);
    tokio::task::spawn_blocking(move || cases::announce_roster(&node));
}

/// Sends an ongoing rotation of the own keys to the peers that have not
/// been sent it, off the async threads.
fn announce_rotation(node: &Arc<Node>) {
    let node = Arc::clone(node);
    tokio::task::spawn_blocking(move || crate::rotation::announce(&node));
}

/// Why the daemon cannot start or reload.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration or a file it names is not usable.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A key file is not usable.
    #[error(transparent)]
    Keys(#[from] offline::Error),
    /// The TLS identity is not usable.
    #[error("TLS identity in {path}: {reason}")]
    Tls {
        /// The keys directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The store cannot be opened.
    #[error("store in {path}: {source}")]
    Store {
        /// The data directory.
        path: PathBuf,
        /// The store's error.
        source: konvert_store::Error,
    },
    /// The QUIC endpoint cannot be bound.
    #[error("QUIC endpoint on {addr}: {reason}")]
    Bind {
        /// The address.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// The API socket cannot be created.
    #[error("API socket {path}: {reason}")]
    Api {
        /// The socket path.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The test clock offset file is not usable.
    #[error("test clock offset file {0}")]
    Clock(String),
    /// The procedure state (cases, rosters, consents) cannot be loaded.
    #[error(transparent)]
    Cases(#[from] cases::CasesError),
}

/// What changes on SIGHUP: peers, their cards and the profiles.
#[derive(Debug)]
pub struct Directory {
    /// The highest loaded profile version of each agreement (its dates in
    /// force are the agreement's).
    pub profiles: BTreeMap<AgreementId, Profile>,
    /// Every loaded version (Art. 16): which one governs a message is
    /// [`versions::governing`].
    pub versions: konvert_envelope::profile::ProfileVersions,
    /// Peers by authority.
    pub peers: BTreeMap<AuthorityId, PeerEntry>,
}

/// A configured peer.
#[derive(Debug, Clone)]
pub struct PeerEntry {
    /// Its card (keys, TLS pin, signatories).
    pub card: AuthorityCard,
    /// Addresses, tried in turn.
    pub addresses: Vec<String>,
    /// Agreements exchanged with it.
    pub agreements: Vec<AgreementId>,
    /// Pin of its TLS key.
    pub pin: Pin,
}

impl Directory {
    fn from_loaded(l: &Loaded) -> Result<Self, StartError> {
        let mut peers = BTreeMap::new();
        for p in &l.config.peers {
            let card = l.cards[&p.authority].clone();
            let pin_text = card.tls_pin.clone().unwrap_or_default();
            let pin: Pin = pin_text
                .parse()
                .map_err(|e| crate::config::ConfigError::Invalid {
                    path: l.path.clone(),
                    key: format!("peers ({}).card.tls_pin", p.authority),
                    reason: format!("{e}"),
                })?;
            peers.insert(
                p.authority.clone(),
                PeerEntry {
                    card,
                    addresses: p.addresses.clone(),
                    agreements: p.agreements.clone(),
                    pin,
                },
            );
        }
        Ok(Self {
            profiles: l.profiles.clone(),
            versions: l.versions.clone(),
            peers,
        })
    }

    fn pins(&self) -> Vec<Peer> {
        self.peers
            .iter()
            .map(|(a, p)| Peer {
                authority: a.clone(),
                pin: p.pin,
            })
            .collect()
    }
}

/// The running gateway's shared state.
#[derive(Debug)]
pub struct Node {
    /// The configuration file.
    pub config_path: PathBuf,
    /// The configuration as loaded at start (paths resolved).
    pub config: Config,
    /// This gateway's node keys as loaded at start: its authority. Sealing,
    /// signing receipts and opening go through `own`, which follows key
    /// rotations (reloaded on SIGHUP).
    pub keys: NodeKeys,
    /// The own keys with an ongoing rotation ([`crate::rotation`]).
    pub own: crate::rotation::OwnKeys,
    /// Signatories by id.
    pub signatories: HashMap<String, SigningKey>,
    /// Peers and profiles (replaced on SIGHUP).
    pub directory: RwLock<Arc<Directory>>,
    /// The store.
    pub store: Arc<Store>,
    /// The QUIC endpoint.
    pub endpoint: Endpoint,
    /// Envelope limits for opening.
    pub limits: Limits,
    /// Retry timing.
    pub backoff: Backoff,
    /// Wakes the outbox dispatcher.
    pub outbox_wake: Notify,
    /// Signals new inbox items.
    pub inbox_wake: Notify,
    /// Tasks waiting for outbound messages to settle (receipt, or failed).
    pub outcomes: outbound::Outcomes,
    /// Per-peer connection and delivery state.
    pub links: outbound::Links,
    /// The uploads waiting until a submission uses them.
    pub uploads: uploads::Uploads,
    /// When the daemon started.
    pub started: Instant,
    /// Envelopes being received now (shutdown waits for them).
    pub inbound_in_flight: std::sync::atomic::AtomicUsize,
    /// Outbound envelopes being delivered now (attempts in progress).
    pub outbound_in_flight: std::sync::atomic::AtomicUsize,
    /// The clock of deadlines, retention and receipts.
    pub clock: Arc<crate::clock::NodeClock>,
    /// What the retention sweeper has done.
    pub sweeps: retention::SweepTotals,
    /// Request cases, peers' rosters and consents ([`cases`]).
    pub cases: cases::Cases,
    /// This authority's own signatory roster (`keys/roster.cose`), re-read
    /// when the file changes: who may sign submissions.
    pub own_roster: crate::signatories::RosterCache,
    /// Checks the signatures of received envelopes and of receipts in
    /// batches ([`crate::verifier`]).
    pub verifier: crate::verifier::Verifier,
    /// Whether its cores are saturated ([`load`]).
    pub cpu: load::CpuShare,
}

impl Node {
    /// Tells the store how many envelopes are in flight through this
    /// gateway (being delivered, and being received), and the verifier
    /// whether the node is busy: with many in flight, or with enough and
    /// its cores saturated ([`load`]), its group commit gathers longer
    /// before a sync (`Store::set_concurrent_writers`) and its signature
    /// checks wait a little for others to join their batch.
    pub(crate) fn note_in_flight(&self) {
        use std::sync::atomic::Ordering;
        let n =
            self.outbound_in_flight.load(Ordering::Relaxed) + self.inbound_in_flight.load(Ordering::Relaxed);
        let (writers, busy) = load::hints(n, self.cpu.busy());
        self.store.set_concurrent_writers(writers);
        self.verifier.set_busy(busy);
    }

    /// Loads everything the configuration names, opens the store and binds
    /// the QUIC endpoint. Must run inside a tokio runtime.
    pub fn start(config_path: &Path) -> Result<Arc<Node>, StartError> {
        crate::alloc::tune();
        let loaded = Loaded::load(config_path)?;
        let cfg = &loaded.config;
        let keys = offline::load_node_keys(&cfg.keys_dir)?;
        if keys.authority != cfg.authority {
            return Err(StartError::Keys(offline::Error::Usage(format!(
                "the keys in {} are for {}, the configuration is for {}",
                cfg.keys_dir.display(),
                keys.authority,
                cfg.authority
            ))));
        }
        let mut signatories = HashMap::new();
        for s in &cfg.signatories {
            signatories.insert(s.id.clone(), offline::load_signing_key(&s.key)?);
        }
        let tls = load_tls(&cfg.keys_dir)?;
        let directory = Directory::from_loaded(&loaded)?;
        files::create_private_dir(&cfg.data_dir).map_err(offline::Error::from)?;
        let own = crate::rotation::OwnKeys::load(&cfg.keys_dir, &cfg.data_dir)?;

        let master = match (&cfg.store.master_key_file, &cfg.store.master_key_credential) {
            (Some(f), _) => MasterKey::from_file(f),
            (None, Some(name)) => MasterKey::from_systemd_credential(name),
            (None, None) => unreachable_config(),
        }
        .map_err(|source| StartError::Store {
            path: cfg.data_dir.clone(),
            source,
        })?;
        files::create_private_dir(&cfg.data_dir).map_err(offline::Error::from)?;
        let clock =
            Arc::new(crate::clock::NodeClock::from_env().map_err(|e| StartError::Clock(e.to_string()))?);
        if clock.is_shifted() {
            tracing::warn!(
                offset_secs = clock.offset_secs(),
                "the clock is shifted for tests ({}); never set it in production",
                crate::clock::CLOCK_FILE_ENV
            );
        }
        let mut store_cfg = StoreConfig::new(cfg.data_dir.join("store"), master);
        store_cfg.retention = retention(cfg);
        store_cfg.clock = clock.clone();
        store_cfg.audit_head_log = cfg.store.audit_head_log.clone();
        let store = Store::open(store_cfg).map_err(|source| StartError::Store {
            path: cfg.data_dir.clone(),
            source,
        })?;
        let uploads_dir = cfg.data_dir.join("uploads");
        files::create_private_dir(&uploads_dir).map_err(offline::Error::from)?;
        // Bodies of large envelopes while they are checked (unlinked files).
        files::create_private_dir(&cfg.data_dir.join("spool")).map_err(offline::Error::from)?;

        let tcfg = TransportConfig {
            idle_timeout: cfg.quic.idle_timeout.0,
            keep_alive: cfg.quic.keep_alive.0,
            max_concurrent_streams_per_conn: cfg.quic.max_streams_per_connection,
            max_connections_per_peer: cfg.quic.max_connections_per_peer as usize,
            max_envelope_bytes: cfg.quic.max_envelope_bytes,
            ..TransportConfig::default()
        };
        let pins = PinSet::new(directory.pins()).map_err(|e| StartError::Tls {
            path: cfg.keys_dir.clone(),
            reason: e.to_string(),
        })?;
        let endpoint = Endpoint::bind(cfg.quic.listen, tls, pins, tcfg).map_err(|e| StartError::Bind {
            addr: cfg.quic.listen.to_string(),
            reason: e.to_string(),
        })?;
        let limits = Limits {
            max_envelope: cfg.quic.max_envelope_bytes,
            ended_signer_grace_secs: Some(cfg.signatures.ended_signer_grace.0.as_secs()),
            ..Limits::default()
        };
        let backoff = Backoff {
            initial: cfg.outbox.initial_backoff.0,
            max: cfg.outbox.max_backoff.0,
            max_attempts: cfg.outbox.max_attempts,
        };
        let links = outbound::Links::new(
            &directory,
            usize::try_from(cfg.quic.max_streams_per_connection).unwrap_or(usize::MAX),
        );
        let store = Arc::new(store);
        let cases = cases::Cases::load(Arc::clone(&store), &cfg.data_dir)?;
        let node = Arc::new(Node {
            config_path: config_path.to_path_buf(),
            config: loaded.config.clone(),
            keys,
            own,
            signatories,
            directory: RwLock::new(Arc::new(directory)),
            store,
            endpoint,
            limits,
            backoff,
            outbox_wake: Notify::new(),
            inbox_wake: Notify::new(),
            outcomes: outbound::Outcomes::default(),
            links,
            uploads: uploads::Uploads::new(uploads_dir),
            started: Instant::now(),
            inbound_in_flight: std::sync::atomic::AtomicUsize::new(0),
            outbound_in_flight: std::sync::atomic::AtomicUsize::new(0),
            clock,
            sweeps: retention::SweepTotals::default(),
            cases,
            own_roster: crate::signatories::RosterCache::default(),
            verifier: crate::verifier::Verifier::new(),
            cpu: load::CpuShare::new(),
        });
        outbound::restore_in_flight(&node);
        // The peers' recorded key rotations and the own one, if any.
        crate::rotation::apply(&node);
        Ok(node)
    }

    /// The current peers and profiles.
    pub fn directory(&self) -> Arc<Directory> {
        self.directory
            .read()
            .map(|d| Arc::clone(&d))
            .unwrap_or_else(|poisoned| Arc::clone(&poisoned.into_inner()))
    }

    /// Reloads peers and profiles from the configuration file (SIGHUP).
    /// Connections and queued messages stay; removed peers' pins stop
    /// admitting new connections.
    pub fn reload(&self) -> Result<(), StartError> {
        let loaded = Loaded::load(&self.config_path)?;
        let dir = Directory::from_loaded(&loaded)?;
        self.clock
            .reload()
            .map_err(|e| StartError::Clock(e.to_string()))?;
        // Own keys after `konvertctl keys rotate|retire`; checked before anything changes.
        self.own.reload(&self.config.keys_dir)?;
        let now = self.now();
        let pins = self
            .cases
            .with(|p| crate::rotation::peer_pins(&p.directory, &dir, now));
        self.endpoint.pins().replace(pins).map_err(|e| StartError::Tls {
            path: self.config.keys_dir.clone(),
            reason: e.to_string(),
        })?;
        self.links.update(&dir, &self.endpoint);
        if let Ok(mut d) = self.directory.write() {
            *d = Arc::new(dir);
        }
        crate::rotation::apply(self);
        self.outbox_wake.notify_one();
        tracing::info!(
            peers = loaded.config.peers.len(),
            profiles = loaded.profiles.len(),
            "configuration reloaded"
        );
        Ok(())
    }

    /// The current time (the node's clock: see [`crate::clock`]).
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }
}

fn unreachable_config() -> Result<MasterKey, konvert_store::Error> {
    // Config::check refuses a configuration without a master key source.
    Err(konvert_store::Error::Invalid("no master key configured".into()))
}

fn retention(cfg: &Config) -> RetentionPolicy {
    let mut r = RetentionPolicy::default();
    if let Some(d) = cfg.store.retention_default {
        r.default = d.0;
    }
    if let Some(d) = cfg.store.audit_retention {
        r.audit_retention = d.0;
    }
    for (agreement, kinds) in &cfg.store.retention {
        for (kind, d) in kinds {
            r.per_agreement_kind
                .insert((agreement.clone(), kind.clone()), d.0);
        }
    }
    r
}

/// Loads `tls.cert.pem` and `tls.key.pem` from the keys directory.
pub fn load_tls(keys_dir: &Path) -> Result<TlsIdentity, StartError> {
    let cert = files::read_limited(&keys_dir.join(crate::init::TLS_CERT_FILE), 64 * 1024)
        .map_err(offline::Error::from)?;
    let key = files::read_secret(&keys_dir.join(crate::init::TLS_KEY_FILE), 64 * 1024)
        .map_err(offline::Error::from)?;
    transport::TlsIdentity::from_pem(&cert, key.as_bytes()).map_err(|e| StartError::Tls {
        path: keys_dir.to_path_buf(),
        reason: e.to_string(),
    })
}
