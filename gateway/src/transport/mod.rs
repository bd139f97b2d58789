//! The QUIC transport between Konvert gateways (`docs/TRANSPORT.md`).
//!
//! - One UDP socket per gateway ([`Endpoint`]): it accepts connections from
//!   peers and dials them.
//! - Mutual TLS 1.3 with pinned public keys ([`tls`]): a peer whose
//!   certificate key is not pinned is refused during the handshake. ALPN
//!   `konvert/1`; no 0-RTT; no session resumption.
//! - One long-lived [`Connection`] per peer (a handshake costs about 1.8 ms of
//!   CPU), one bidirectional stream per envelope ([`framing`]): the sender
//!   writes the length-prefixed envelope, the receiver answers with a
//!   length-prefixed signed receipt.
//!
//! The transport moves bytes; it neither parses envelopes nor signs
//! receipts. The caller decides what a receipt says.
//!
//! ```text
//! sender                                         receiver
//! Connection::send_envelope(len, body) ──────▶   Connection::accept_envelope()
//!                                                  → IncomingEnvelope::read_header()
//!                                                  → EnvelopeStream { peer, declared_len }
//!                                                  → copy_to(writer)   (if within the limit)
//!           receipt bytes  ◀──────────────────   → respond(receipt)
//! ```

pub mod framing;
pub mod tls;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use konvert_envelope::model::AuthorityId;
use quinn::crypto::rustls::{HandshakeData, NoInitialCipherSuite, QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, VarInt};
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tracing::{debug, info};

use self::framing::{FrameError, COPY_CHUNK};
pub use self::tls::{Peer, Pin, PinSet, TlsIdentity, ALPN};

/// Server name given to rustls when dialling. It is not sent (SNI is off)
/// and not checked: the peer is identified by its pin.
const SERVER_NAME: &str = "konvert-peer";

/// Limits and timers of the transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportConfig {
    /// A connection without any packet for this long is dropped (QUIC idle
    /// timeout; the smaller of both sides' values applies). Default 30 s.
    pub idle_timeout: Duration,
    /// Interval of QUIC keep-alive pings, so an idle peer connection stays
    /// up; must be shorter than `idle_timeout`. Default 10 s.
    pub keep_alive: Duration,
    /// Longest time a handshake (outgoing or incoming) may take. Default 10 s.
    pub handshake_timeout: Duration,
    /// Longest time a stream may make no progress (length prefix, body
    /// piece, write of a piece or of the receipt). Default 30 s.
    pub stream_timeout: Duration,
    /// Longest time a sender waits for the receipt after the last envelope
    /// byte (the receiver stores durably before answering). Default 60 s.
    pub receipt_timeout: Duration,
    /// Bidirectional streams (envelopes in flight) a peer may have open on
    /// one connection; uni-directional streams and datagrams are off.
    /// Default 256.
    pub max_concurrent_streams_per_conn: u32,
    /// Connections one peer authority may hold at once, counted apart per
    /// direction: incoming ones over the cap are closed with
    /// [`CloseCode::TooManyConnections`], outgoing ones over the cap are not
    /// dialled ([`ConnectError::TooManyConnections`]). Default 4.
    pub max_connections_per_peer: usize,
    /// Incoming connection attempts (handshakes) waiting at once, all peers
    /// together; more are refused by QUIC. Default 64.
    pub max_incoming_handshakes: usize,
    /// Largest envelope a receiver reads ([`EnvelopeStream::copy_to`]).
    /// Default 64 MiB, the envelope crate's default `max_envelope`.
    pub max_envelope_bytes: u64,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            stream_timeout: Duration::from_secs(30),
            receipt_timeout: Duration::from_secs(60),
            max_concurrent_streams_per_conn: 256,
            max_connections_per_peer: 4,
            max_incoming_handshakes: 64,
            max_envelope_bytes: konvert_envelope::envelope::Limits::default().max_envelope,
        }
    }
}

/// QUIC application close codes (CONNECTION_CLOSE of type 0x1d). Stable:
/// part of the wire protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 0: normal close (shutdown, connection no longer needed).
    Normal = 0,
    /// 1: the peer's certificate key is not (or no longer) pinned.
    UnknownPeer = 1,
    /// 2: the peer already holds `max_connections_per_peer` connections.
    TooManyConnections = 2,
    /// 3: protocol error (wrong or missing ALPN, bad framing).
    ProtocolError = 3,
}

impl CloseCode {
    /// The code on the wire.
    pub fn code(self) -> VarInt {
        VarInt::from_u32(self as u32)
    }

    /// The code for a wire value, if it is one of ours.
    pub fn from_code(code: VarInt) -> Option<Self> {
        [
            Self::Normal,
            Self::UnknownPeer,
            Self::TooManyConnections,
            Self::ProtocolError,
        ]
        .into_iter()
        .find(|c| c.code() == code)
    }

    /// The code with which the peer closed a connection, if it did so with
    /// one of ours.
    pub fn of(err: &ConnectionError) -> Option<Self> {
        match err {
            ConnectionError::ApplicationClosed(close) => Self::from_code(close.error_code),
            _ => None,
        }
    }

    fn reason(self) -> &'static [u8] {
        match self {
            Self::Normal => b"normal close",
            Self::UnknownPeer => b"unknown peer",
            Self::TooManyConnections => b"too many connections",
            Self::ProtocolError => b"protocol error",
        }
    }
}

/// QUIC stream error codes (STOP_SENDING, RESET_STREAM). Stable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamCode {
    /// 1 (receiver → sender, STOP_SENDING): the receiver answers without
    /// reading the rest of the envelope (for example because it is too
    /// large); its receipt follows on the stream.
    BodyNotRead = 1,
    /// 2: framing error (wrong length, trailing bytes).
    ProtocolError = 2,
    /// 3 (sender → receiver, RESET_STREAM): the sender gave up on the
    /// envelope (its local source failed or was short).
    Cancelled = 3,
}

impl StreamCode {
    /// The code on the wire.
    pub fn code(self) -> VarInt {
        VarInt::from_u32(self as u32)
    }
}

// ---------------------------------------------------------------------------
// Errors

/// Why [`Endpoint::bind`] failed.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// A value of the [`TransportConfig`] is unusable.
    #[error("invalid transport configuration: {0}")]
    Config(&'static str),
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] tls::TlsConfigError),
    /// The crypto provider lacks QUIC's initial cipher suite.
    #[error("TLS provider unusable for QUIC: {0}")]
    Quic(#[from] NoInitialCipherSuite),
    /// The UDP socket could not be bound.
    #[error("cannot bind the QUIC socket: {0}")]
    Io(#[from] io::Error),
}

/// Why [`Endpoint::connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] tls::TlsConfigError),
    /// The crypto provider lacks QUIC's initial cipher suite.
    #[error("TLS provider unusable for QUIC: {0}")]
    Quic(#[from] NoInitialCipherSuite),
    /// quinn refused to start the connection (endpoint closed, bad address).
    #[error("cannot start a QUIC connection: {0}")]
    Start(#[from] quinn::ConnectError),
    /// The handshake failed: among others, the server's pin is not the
    /// expected one, or the server refused our certificate.
    #[error("QUIC handshake failed: {0}")]
    Handshake(#[source] ConnectionError),
    /// The handshake took longer than `handshake_timeout`.
    #[error("QUIC handshake did not finish within {0:?}")]
    Timeout(Duration),
    /// The server did not select ALPN `konvert/1`.
    #[error("the peer did not agree on ALPN konvert/1")]
    Alpn,
    /// No pin was given for the peer.
    #[error("no TLS pin is known for the peer")]
    NoPin,
    /// This endpoint already holds `max_connections_per_peer` outgoing
    /// connections to the peer; none was dialled.
    #[error("already {max} outgoing connections to {peer}")]
    TooManyConnections {
        /// The peer.
        peer: AuthorityId,
        /// The limit.
        max: usize,
    },
}

/// Why an incoming connection was not established ([`Incoming::establish`]).
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The handshake failed (among others: client certificate not pinned,
    /// ALPN mismatch).
    #[error("QUIC handshake failed: {0}")]
    Handshake(#[source] ConnectionError),
    /// The handshake took longer than `handshake_timeout`.
    #[error("QUIC handshake did not finish within {0:?}")]
    Timeout(Duration),
    /// The client did not negotiate ALPN `konvert/1`; closed with
    /// [`CloseCode::ProtocolError`].
    #[error("the client did not negotiate ALPN konvert/1")]
    Alpn,
    /// No parsable client certificate after the handshake (cannot happen
    /// with the pinning verifier); closed with [`CloseCode::ProtocolError`].
    #[error("the client presented no usable certificate")]
    NoCertificate,
    /// The client's pin was removed from the pin set during the handshake;
    /// closed with [`CloseCode::UnknownPeer`].
    #[error("client certificate {0} is not pinned")]
    UnknownPeer(Pin),
    /// The peer already holds the allowed number of connections; closed
    /// with [`CloseCode::TooManyConnections`].
    #[error("peer {peer} already holds {max} connections")]
    TooManyConnections {
        /// The peer.
        peer: AuthorityId,
        /// The limit.
        max: usize,
    },
}

/// Why [`Connection::send_envelope`] failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No stream could be opened: the connection is closed.
    #[error("cannot open a stream: {0}")]
    Open(#[source] ConnectionError),
    /// Writing to the stream failed (connection lost).
    #[error("sending the envelope failed: {0}")]
    Write(#[source] quinn::WriteError),
    /// The peer granted no flow-control credit for `stream_timeout`.
    #[error("the peer accepted no envelope bytes for {0:?}")]
    Timeout(Duration),
    /// Reading the local envelope source failed.
    #[error("reading the envelope to send failed: {0}")]
    Source(#[source] io::Error),
    /// The local source ended before the declared length.
    #[error("the envelope source ended after {got} of {expected} bytes")]
    SourceShort {
        /// Declared length.
        expected: u64,
        /// Bytes the source had.
        got: u64,
    },
    /// The local source has more bytes than the declared length.
    #[error("the envelope source is longer than the declared {expected} bytes")]
    SourceLong {
        /// Declared length.
        expected: u64,
    },
    /// No valid receipt came back (peer reset, closed, timed out, or a
    /// malformed receipt frame).
    #[error("no receipt: {0}")]
    Receipt(#[source] FrameError),
}

impl SendError {
    /// The connection error behind this failure, if the connection was
    /// closed (use [`CloseCode::of`] on it to learn why).
    pub fn connection_error(&self) -> Option<ConnectionError> {
        match self {
            Self::Open(e) => Some(e.clone()),
            Self::Write(quinn::WriteError::ConnectionLost(e)) => Some(e.clone()),
            Self::Receipt(FrameError::Read(io)) => match io.get_ref()?.downcast_ref::<quinn::ReadError>()? {
                quinn::ReadError::ConnectionLost(e) => Some(e.clone()),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Why [`IncomingEnvelope::read_header`] or [`EnvelopeStream::copy_to`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The length prefix could not be read.
    #[error("envelope length prefix: {0}")]
    Header(#[source] FrameError),
    /// `copy_to` on an envelope above `max_envelope_bytes`.
    #[error("envelope of {declared} bytes declared, the limit is {max}")]
    TooLarge {
        /// Declared length.
        declared: u64,
        /// Limit.
        max: u64,
    },
    /// `copy_to` called a second time.
    #[error("the envelope body was already read")]
    AlreadyRead,
    /// The body did not arrive as declared (short, long, reset, timeout),
    /// or writing it out failed.
    #[error("envelope body: {0}")]
    Body(#[source] FrameError),
}

/// Why [`EnvelopeStream::respond`] failed.
#[derive(Debug, thiserror::Error)]
pub enum RespondError {
    /// The receipt is larger than 4 KiB, or writing it failed.
    #[error("sending the receipt failed: {0}")]
    Frame(#[source] FrameError),
    /// The receipt could not be written within `stream_timeout`.
    #[error("the receipt could not be sent within {0:?}")]
    Timeout(Duration),
}

// ---------------------------------------------------------------------------
// Endpoint

struct Shared {
    quinn: quinn::Endpoint,
    /// The TLS identities in use (replaced by [`Endpoint::set_identities`]).
    identities: RwLock<Arc<Identities>>,
    pins: PinSet,
    cfg: TransportConfig,
    transport: Arc<quinn::TransportConfig>,
    /// Incoming connections per peer.
    slots: Arc<Mutex<HashMap<AuthorityId, usize>>>,
    /// Outgoing handshakes under way per peer (they count against the cap).
    dialling: Mutex<HashMap<AuthorityId, usize>>,
    /// Every established connection, by peer (closed ones are pruned).
    live: Mutex<HashMap<AuthorityId, Vec<Weak<ConnInner>>>>,
    draining: AtomicBool,
}

impl Shared {
    fn register(&self, conn: &Connection) {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        let list = live.entry(conn.inner.peer.clone()).or_default();
        list.retain(|w| w.strong_count() > 0);
        list.push(Arc::downgrade(&conn.inner));
    }

    /// Open (not closed) connections with `peer` in `direction` (`None`: both).
    fn open_with(&self, peer: &AuthorityId, direction: Option<&str>) -> usize {
        let live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        live.get(peer).map_or(0, |l| {
            l.iter()
                .filter_map(Weak::upgrade)
                .filter(|c| direction.is_none_or(|d| c.direction == d))
                .filter(|c| c.quinn.close_reason().is_none())
                .count()
        })
    }

    /// Reserves an outgoing connection to `peer` if fewer than the cap are
    /// open or being dialled.
    fn reserve_dial(self: &Arc<Self>, peer: &AuthorityId) -> Option<Dialling> {
        let mut d = self.dialling.lock().unwrap_or_else(PoisonError::into_inner);
        let under_way = d.get(peer).copied().unwrap_or(0);
        if self.open_with(peer, Some(OUTGOING)) + under_way >= self.cfg.max_connections_per_peer {
            return None;
        }
        *d.entry(peer.clone()).or_insert(0) += 1;
        Some(Dialling {
            shared: Arc::clone(self),
            peer: peer.clone(),
        })
    }
}

const OUTGOING: &str = "outgoing";
const INCOMING: &str = "incoming";

/// An outgoing handshake under way; its reservation ends on drop (after
/// the connection, if any, was registered).
struct Dialling {
    shared: Arc<Shared>,
    peer: AuthorityId,
}

impl Drop for Dialling {
    fn drop(&mut self) {
        let mut d = self
            .shared
            .dialling
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = d.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                d.remove(&self.peer);
            }
        }
    }
}

/// The TLS identities of an endpoint (see [`Endpoint::set_identities`]).
#[derive(Debug)]
pub struct Identities {
    /// Presented to connecting peers.
    pub server: Arc<TlsIdentity>,
    /// Presented when dialling a peer not in `client_for`.
    pub client: Arc<TlsIdentity>,
    /// Presented when dialling these peers.
    pub client_for: HashMap<AuthorityId, Arc<TlsIdentity>>,
}

/// The gateway's QUIC endpoint: one UDP socket, server and client.
///
/// Cloning shares the endpoint.
#[derive(Clone)]
pub struct Endpoint {
    shared: Arc<Shared>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("local_addr", &self.shared.quinn.local_addr().ok())
            .field("identity", &self.identity())
            .field("pins", &self.shared.pins.len())
            .finish()
    }
}

fn quinn_transport(cfg: &TransportConfig) -> Result<quinn::TransportConfig, BindError> {
    if cfg.keep_alive >= cfg.idle_timeout {
        return Err(BindError::Config("keep_alive must be shorter than idle_timeout"));
    }
    if cfg.max_connections_per_peer == 0 || cfg.max_concurrent_streams_per_conn == 0 {
        return Err(BindError::Config(
            "connection and stream limits must be at least 1",
        ));
    }
    let idle = quinn::IdleTimeout::try_from(cfg.idle_timeout)
        .map_err(|_| BindError::Config("idle_timeout is too large"))?;
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(cfg.max_concurrent_streams_per_conn))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(cfg.keep_alive))
        .datagram_receive_buffer_size(None);
    Ok(t)
}

impl Endpoint {
    /// Binds the UDP socket `listen` (port 0: any free port) and starts
    /// accepting connections from the peers in `pins`. Must run inside a
    /// tokio runtime.
    pub fn bind(
        listen: SocketAddr,
        identity: TlsIdentity,
        pins: PinSet,
        cfg: TransportConfig,
    ) -> Result<Self, BindError> {
        let transport = Arc::new(quinn_transport(&cfg)?);
        let crypto = QuicServerConfig::try_from(tls::server_config(&identity, pins.clone())?)?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server
            .transport_config(transport.clone())
            .max_incoming(cfg.max_incoming_handshakes);
        let quinn = quinn::Endpoint::server(server, listen)?;
        info!(
            local = %quinn.local_addr().map_or_else(|_| listen.to_string(), |a| a.to_string()),
            pin = %identity.pin(),
            peers = pins.len(),
            "QUIC endpoint bound"
        );
        let identity = Arc::new(identity);
        Ok(Self {
            shared: Arc::new(Shared {
                quinn,
                identities: RwLock::new(Arc::new(Identities {
                    server: Arc::clone(&identity),
                    client: identity,
                    client_for: HashMap::new(),
                })),
                pins,
                cfg,
                transport,
                slots: Arc::default(),
                dialling: Mutex::default(),
                live: Mutex::default(),
                draining: AtomicBool::new(false),
            }),
        })
    }

    /// The local socket address (with the real port after binding port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.shared.quinn.local_addr()
    }

    /// The pin set; [`PinSet::replace`] on it changes the peers for new
    /// handshakes without touching established connections.
    pub fn pins(&self) -> &PinSet {
        &self.shared.pins
    }

    /// The endpoint's own TLS identity: the one it presents as server.
    pub fn identity(&self) -> Arc<TlsIdentity> {
        Arc::clone(&self.identities().server)
    }

    fn identities(&self) -> Arc<Identities> {
        Arc::clone(
            &self
                .shared
                .identities
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Replaces the TLS identities for new handshakes (a key rotation):
    /// `server` is presented to connecting peers, `client` when dialling,
    /// except towards the peers in `client_for`, which get their own (the
    /// old key, until they have accepted the rotation). Established
    /// connections stay.
    pub fn set_identities(&self, ids: Identities) -> Result<(), BindError> {
        let current = self.identities();
        if !Arc::ptr_eq(&current.server, &ids.server) && current.server.pin() != ids.server.pin() {
            let crypto =
                QuicServerConfig::try_from(tls::server_config(&ids.server, self.shared.pins.clone())?)?;
            let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
            server
                .transport_config(self.shared.transport.clone())
                .max_incoming(self.shared.cfg.max_incoming_handshakes);
            self.shared.quinn.set_server_config(Some(server));
            info!(pin = %ids.server.pin(), "TLS server identity replaced");
        }
        *self
            .shared
            .identities
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(ids);
        Ok(())
    }

    /// The transport configuration.
    pub fn config(&self) -> &TransportConfig {
        &self.shared.cfg
    }

    /// Dials `expected` at `addr`. The handshake succeeds only if the
    /// server's certificate has `expected.pin`. The server checks our
    /// certificate at the end of the handshake: a refusal may show only on
    /// the first stream (TLS 1.3 completes on the client first).
    ///
    /// At most `max_connections_per_peer` outgoing connections to one peer
    /// are open or being dialled at a time (a connection counts until it is
    /// closed); beyond that, [`ConnectError::TooManyConnections`] without
    /// dialling.
    pub async fn connect(&self, addr: SocketAddr, expected: &Peer) -> Result<Connection, ConnectError> {
        self.connect_any(addr, &expected.authority, &[expected.pin]).await
    }

    /// Dials `authority` at `addr` and accepts a server certificate with
    /// any of `pins` (during a peer's key rotation: its old and new pin).
    /// Otherwise as [`Endpoint::connect`].
    pub async fn connect_any(
        &self,
        addr: SocketAddr,
        authority: &AuthorityId,
        pins: &[Pin],
    ) -> Result<Connection, ConnectError> {
        let expected = Peer {
            authority: authority.clone(),
            pin: *pins.first().ok_or(ConnectError::NoPin)?,
        };
        let reservation = self.shared.reserve_dial(&expected.authority).ok_or_else(|| {
            ConnectError::TooManyConnections {
                peer: expected.authority.clone(),
                max: self.shared.cfg.max_connections_per_peer,
            }
        })?;
        let ids = self.identities();
        let own = ids.client_for.get(authority).unwrap_or(&ids.client);
        let crypto = QuicClientConfig::try_from(tls::client_config(own, pins)?)?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(self.shared.transport.clone());
        let connecting = self.shared.quinn.connect_with(client, addr, SERVER_NAME)?;
        let limit = self.shared.cfg.handshake_timeout;
        let conn = match tokio::time::timeout(limit, connecting).await {
            Err(_) => return Err(ConnectError::Timeout(limit)),
            Ok(Err(e)) => {
                info!(peer = %expected.authority, remote = %addr, error = %e, "outgoing QUIC handshake failed");
                return Err(ConnectError::Handshake(e));
            }
            Ok(Ok(c)) => c,
        };
        if !alpn_ok(&conn) {
            conn.close(CloseCode::ProtocolError.code(), CloseCode::ProtocolError.reason());
            return Err(ConnectError::Alpn);
        }
        info!(peer = %expected.authority, remote = %addr, "QUIC connection established (outgoing)");
        let c = Connection::new(conn, expected.authority.clone(), &self.shared, None, OUTGOING);
        self.shared.register(&c);
        drop(reservation);
        Ok(c)
    }

    /// Closes every open connection with `peer`, both directions, with
    /// `code` (streams in flight are aborted); returns how many. Used when a
    /// peer is removed from the configuration: its pin is already gone, so
    /// it cannot connect again.
    pub fn close_peer(&self, peer: &AuthorityId, code: CloseCode) -> usize {
        let conns = {
            let mut live = self.shared.live.lock().unwrap_or_else(PoisonError::into_inner);
            live.remove(peer).unwrap_or_default()
        };
        let mut n = 0;
        for c in conns.iter().filter_map(Weak::upgrade) {
            if c.quinn.close_reason().is_none() {
                c.quinn.close(code.code(), code.reason());
                n += 1;
            }
        }
        if n > 0 {
            info!(%peer, connections = n, "QUIC connections to a removed peer closed");
        }
        n
    }

    /// Open connections with `peer` (both directions).
    pub fn peer_connections(&self, peer: &AuthorityId) -> usize {
        self.shared.open_with(peer, None)
    }

    /// Open, authenticated connections with any peer (both directions).
    pub fn peer_connections_total(&self) -> usize {
        let live = self.shared.live.lock().unwrap_or_else(PoisonError::into_inner);
        live.values()
            .flatten()
            .filter_map(Weak::upgrade)
            .filter(|c| c.quinn.close_reason().is_none())
            .count()
    }

    /// The next incoming connection attempt, or `None` once the endpoint is
    /// closed. Establish it with [`Incoming::establish`], best in a task of
    /// its own so that a slow handshake does not hold up the others.
    ///
    /// After [`Endpoint::refuse_new_connections`], attempts are refused here
    /// (QUIC CONNECTION_REFUSED) and not returned.
    pub async fn accept(&self) -> Option<Incoming> {
        loop {
            let inner = self.shared.quinn.accept().await?;
            if self.shared.draining.load(Ordering::Acquire) {
                debug!(remote = %inner.remote_address(), "connection attempt refused: shutting down");
                inner.refuse();
                continue;
            }
            return Some(Incoming {
                inner,
                shared: self.shared.clone(),
            });
        }
    }

    /// Refuses new connections from now on (keep calling [`Endpoint::accept`]
    /// so that attempts are answered at once); established connections keep
    /// working. The first step of a graceful shutdown.
    pub fn refuse_new_connections(&self) {
        info!("QUIC endpoint refuses new connections");
        self.shared.draining.store(true, Ordering::Release);
    }

    /// Closes every connection with [`CloseCode::Normal`]; streams in flight
    /// are aborted. Follow with [`Endpoint::wait_idle`].
    pub fn close(&self) {
        info!("QUIC endpoint closing");
        self.shared
            .quinn
            .close(CloseCode::Normal.code(), CloseCode::Normal.reason());
    }

    /// Waits until every connection is closed and the peers were told so.
    pub async fn wait_idle(&self) {
        self.shared.quinn.wait_idle().await;
    }

    /// Number of connections (in both directions) currently open.
    pub fn open_connections(&self) -> usize {
        self.shared.quinn.open_connections()
    }
}

fn alpn_ok(conn: &quinn::Connection) -> bool {
    conn.handshake_data()
        .and_then(|d| d.downcast::<HandshakeData>().ok())
        .and_then(|d| d.protocol)
        .is_some_and(|p| p == ALPN)
}

fn peer_pin(conn: &quinn::Connection) -> Option<Pin> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    Pin::of_certificate(certs.first()?).ok()
}

/// An incoming connection attempt, not yet authenticated.
pub struct Incoming {
    inner: quinn::Incoming,
    shared: Arc<Shared>,
}

impl fmt::Debug for Incoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming")
            .field("remote", &self.inner.remote_address())
            .finish()
    }
}

impl Incoming {
    /// The address the attempt comes from (not yet authenticated).
    pub fn remote_address(&self) -> SocketAddr {
        self.inner.remote_address()
    }

    /// Runs the handshake (at most `handshake_timeout`) and returns the
    /// connection with its authenticated peer authority. Refuses a client
    /// whose certificate is not pinned (in the handshake), one without ALPN
    /// `konvert/1`, and one over `max_connections_per_peer`.
    pub async fn establish(self) -> Result<Connection, AcceptError> {
        let remote = self.inner.remote_address();
        let shared = self.shared;
        let limit = shared.cfg.handshake_timeout;
        let connecting = self.inner.accept().map_err(AcceptError::Handshake)?;
        let conn = match tokio::time::timeout(limit, connecting).await {
            Err(_) => return Err(AcceptError::Timeout(limit)),
            Ok(Err(e)) => {
                info!(%remote, error = %e, "incoming QUIC handshake failed");
                return Err(AcceptError::Handshake(e));
            }
            Ok(Ok(c)) => c,
        };
        let refuse = |code: CloseCode, err: AcceptError| {
            info!(%remote, error = %err, "incoming QUIC connection refused");
            conn.close(code.code(), code.reason());
            Err(err)
        };
        if !alpn_ok(&conn) {
            return refuse(CloseCode::ProtocolError, AcceptError::Alpn);
        }
        // The verifier accepted the pin; the set may have changed since.
        let Some(pin) = peer_pin(&conn) else {
            return refuse(CloseCode::ProtocolError, AcceptError::NoCertificate);
        };
        let Some(peer) = shared.pins.authority_of(&pin) else {
            return refuse(CloseCode::UnknownPeer, AcceptError::UnknownPeer(pin));
        };
        let max = shared.cfg.max_connections_per_peer;
        let Some(slot) = PeerSlot::acquire(&shared.slots, &peer, max) else {
            return refuse(
                CloseCode::TooManyConnections,
                AcceptError::TooManyConnections { peer, max },
            );
        };
        info!(%peer, %remote, "QUIC connection established (incoming)");
        let c = Connection::new(conn, peer, &shared, Some(slot), INCOMING);
        shared.register(&c);
        Ok(c)
    }
}

/// One of a peer's incoming connection slots; freed on drop.
struct PeerSlot {
    slots: Arc<Mutex<HashMap<AuthorityId, usize>>>,
    peer: AuthorityId,
}

impl PeerSlot {
    fn acquire(
        slots: &Arc<Mutex<HashMap<AuthorityId, usize>>>,
        peer: &AuthorityId,
        max: usize,
    ) -> Option<Self> {
        let mut map = slots.lock().unwrap_or_else(PoisonError::into_inner);
        let n = map.entry(peer.clone()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Self {
            slots: slots.clone(),
            peer: peer.clone(),
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.peer);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Connection

struct ConnInner {
    quinn: quinn::Connection,
    peer: AuthorityId,
    direction: &'static str,
    stream_timeout: Duration,
    receipt_timeout: Duration,
    max_envelope_bytes: u64,
    _slot: Option<PeerSlot>,
}

impl Drop for ConnInner {
    fn drop(&mut self) {
        // The last handle is gone: quinn closes the connection (code 0) and
        // the peer's connection slot is freed.
        info!(
            peer = %self.peer,
            remote = %self.quinn.remote_address(),
            direction = self.direction,
            reason = %self.quinn.close_reason().map_or_else(|| "released".to_owned(), |e| e.to_string()),
            "QUIC connection closed"
        );
    }
}

/// An established, authenticated connection to a peer gateway. Cheap to
/// clone; clones share the connection, which closes when the last clone is
/// dropped (or on [`Connection::close`]).
#[derive(Clone)]
pub struct Connection {
    inner: Arc<ConnInner>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.inner.peer)
            .field("remote", &self.inner.quinn.remote_address())
            .field("direction", &self.inner.direction)
            .finish()
    }
}

impl Connection {
    fn new(
        quinn: quinn::Connection,
        peer: AuthorityId,
        shared: &Shared,
        slot: Option<PeerSlot>,
        direction: &'static str,
    ) -> Self {
        Self {
            inner: Arc::new(ConnInner {
                quinn,
                peer,
                direction,
                stream_timeout: shared.cfg.stream_timeout,
                receipt_timeout: shared.cfg.receipt_timeout,
                max_envelope_bytes: shared.cfg.max_envelope_bytes,
                _slot: slot,
            }),
        }
    }

    /// The authenticated peer authority.
    pub fn peer(&self) -> &AuthorityId {
        &self.inner.peer
    }

    /// The peer's current address.
    pub fn remote_address(&self) -> SocketAddr {
        self.inner.quinn.remote_address()
    }

    /// Closes the connection with `code`; streams in flight are aborted.
    pub fn close(&self, code: CloseCode) {
        self.inner.quinn.close(code.code(), code.reason());
    }

    /// Waits until the connection is closed and returns why.
    pub async fn closed(&self) -> ConnectionError {
        self.inner.quinn.closed().await
    }

    /// Why the connection is closed, if it is.
    pub fn close_reason(&self) -> Option<ConnectionError> {
        self.inner.quinn.close_reason()
    }

    /// The underlying quinn connection (statistics, RTT).
    pub fn quinn(&self) -> &quinn::Connection {
        &self.inner.quinn
    }

    /// Sends one envelope of `len` bytes read from `body` on a new stream
    /// and returns the receipt bytes (unverified: checking the signature is
    /// the caller's job).
    ///
    /// `body` must yield exactly `len` bytes and then end (EOF). If the receiver answers
    /// without reading the body (STOP_SENDING [`StreamCode::BodyNotRead`],
    /// for example for a too-large envelope), sending stops and its receipt
    /// is returned.
    pub async fn send_envelope<R: AsyncRead + Unpin>(&self, len: u64, body: R) -> Result<Vec<u8>, SendError> {
        self.send(len, Body::Reader(body)).await
    }

    /// [`Connection::send_envelope`] of an envelope held in memory: its
    /// pieces are handed to quinn as they are (reference-counted), not
    /// copied through a buffer into quinn's own (two copies of every byte,
    /// and a fresh allocation per piece).
    pub async fn send_envelope_bytes(&self, body: bytes::Bytes) -> Result<Vec<u8>, SendError> {
        self.send(body.len() as u64, Body::<&[u8]>::Memory(body)).await
    }

    async fn send<R: AsyncRead + Unpin>(&self, len: u64, mut body: Body<R>) -> Result<Vec<u8>, SendError> {
        let started = Instant::now();
        let idle = self.inner.stream_timeout;
        let (mut send, mut recv) = self.inner.quinn.open_bi().await.map_err(SendError::Open)?;
        let stream = send.id();
        let stopped = send.stopped();
        tokio::pin!(stopped);

        let mut peer_stopped = write_or_stopped(&mut send, &len.to_be_bytes(), idle).await?;
        let mut buf = match body {
            Body::Reader(_) => vec![0u8; COPY_CHUNK.min(usize::try_from(len).unwrap_or(COPY_CHUNK)).max(1)],
            Body::Memory(_) => Vec::new(),
        };
        let mut sent = 0u64;
        while sent < len && !peer_stopped {
            let want = usize::try_from(len - sent).unwrap_or(usize::MAX).min(COPY_CHUNK);
            let reader = match &mut body {
                Body::Memory(bytes) => {
                    // Pieces of COPY_CHUNK, each within the idle timeout
                    // (a slow peer that keeps reading is not cut off).
                    let from = usize::try_from(sent).unwrap_or(usize::MAX);
                    let piece = bytes.slice(from..from + want);
                    peer_stopped = chunk_or_stopped(&mut send, piece, idle).await?;
                    sent += want as u64;
                    continue;
                }
                Body::Reader(r) => r,
            };
            let n = tokio::select! {
                biased;
                _ = &mut stopped => { peer_stopped = true; break; }
                r = reader.read(&mut buf[..want]) => r,
            };
            let n = match n {
                Ok(0) => {
                    let _ = send.reset(StreamCode::Cancelled.code());
                    return Err(SendError::SourceShort {
                        expected: len,
                        got: sent,
                    });
                }
                Ok(n) => n,
                Err(e) => {
                    let _ = send.reset(StreamCode::Cancelled.code());
                    return Err(SendError::Source(e));
                }
            };
            peer_stopped = write_or_stopped(&mut send, &buf[..n], idle).await?;
            sent += n as u64;
        }
        if let (false, Body::Reader(reader)) = (peer_stopped, &mut body) {
            let mut probe = [0u8; 1];
            match reader.read(&mut probe).await {
                Ok(0) => {}
                Ok(_) => {
                    let _ = send.reset(StreamCode::Cancelled.code());
                    return Err(SendError::SourceLong { expected: len });
                }
                Err(e) => {
                    let _ = send.reset(StreamCode::Cancelled.code());
                    return Err(SendError::Source(e));
                }
            }
        }
        if !peer_stopped {
            // Fails only if the peer stopped the stream meanwhile; its
            // receipt is read below either way.
            let _ = send.finish();
        }
        let receipt = framing::read_receipt(&mut recv, self.inner.receipt_timeout)
            .await
            .map_err(SendError::Receipt)?;
        debug!(
            peer = %self.inner.peer,
            stream = %stream,
            len,
            sent,
            body_read_by_peer = !peer_stopped,
            receipt_len = receipt.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "envelope sent"
        );
        Ok(receipt)
    }

    /// The next envelope stream the peer opened, or `None` once the
    /// connection is closed. Read its header with
    /// [`IncomingEnvelope::read_header`], best in a task per stream.
    pub async fn accept_envelope(&self) -> Option<IncomingEnvelope> {
        match self.inner.quinn.accept_bi().await {
            Ok((send, recv)) => Some(IncomingEnvelope {
                send,
                recv,
                conn: self.inner.clone(),
                started: Instant::now(),
            }),
            Err(e) => {
                debug!(peer = %self.inner.peer, reason = %e, "no more envelope streams");
                None
            }
        }
    }
}

/// Writes `data`; `Ok(true)` if the peer stopped the stream instead.
async fn write_or_stopped(
    send: &mut quinn::SendStream,
    data: &[u8],
    idle: Duration,
) -> Result<bool, SendError> {
    let written = tokio::time::timeout(idle, send.write_all(data)).await;
    stopped_or(send, written, idle)
}

/// Hands `piece` to quinn; `Ok(true)` if the peer stopped the stream instead.
async fn chunk_or_stopped(
    send: &mut quinn::SendStream,
    piece: bytes::Bytes,
    idle: Duration,
) -> Result<bool, SendError> {
    let written = tokio::time::timeout(idle, send.write_chunk(piece)).await;
    stopped_or(send, written, idle)
}

/// What a write within the idle timeout came to: `Ok(true)` if the peer
/// stopped the stream; a timeout resets it.
fn stopped_or(
    send: &mut quinn::SendStream,
    written: Result<Result<(), quinn::WriteError>, tokio::time::error::Elapsed>,
    idle: Duration,
) -> Result<bool, SendError> {
    match written {
        Err(_) => {
            let _ = send.reset(StreamCode::Cancelled.code());
            Err(SendError::Timeout(idle))
        }
        Ok(Ok(())) => Ok(false),
        Ok(Err(quinn::WriteError::Stopped(_))) => Ok(true),
        Ok(Err(e)) => Err(SendError::Write(e)),
    }
}

/// What [`Connection::send`] sends: read from a source, or held in memory.
enum Body<R> {
    Reader(R),
    Memory(bytes::Bytes),
}

/// A stream a peer opened for an envelope, before its length is known.
pub struct IncomingEnvelope {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    conn: Arc<ConnInner>,
    started: Instant,
}

impl fmt::Debug for IncomingEnvelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncomingEnvelope")
            .field("peer", &self.conn.peer)
            .field("stream", &self.recv.id())
            .finish()
    }
}

impl IncomingEnvelope {
    /// Reads the length prefix (within `stream_timeout`). On failure the
    /// stream is stopped with [`StreamCode::ProtocolError`].
    pub async fn read_header(mut self) -> Result<EnvelopeStream, ReceiveError> {
        match framing::read_envelope_len(&mut self.recv, self.conn.stream_timeout).await {
            Ok(len) => {
                debug!(
                    peer = %self.conn.peer,
                    stream = %self.recv.id(),
                    len,
                    within_limit = len <= self.conn.max_envelope_bytes,
                    "envelope stream opened"
                );
                Ok(EnvelopeStream {
                    send: self.send,
                    recv: self.recv,
                    conn: self.conn,
                    len,
                    body_read: false,
                    started: self.started,
                })
            }
            Err(e) => {
                let _ = self.recv.stop(StreamCode::ProtocolError.code());
                let _ = self.send.reset(StreamCode::ProtocolError.code());
                Err(ReceiveError::Header(e))
            }
        }
    }
}

/// An envelope arriving on its stream: the declared length is known, the
/// body not yet read. Check [`EnvelopeStream::within_limit`], then either
/// [`copy_to`](EnvelopeStream::copy_to) the body out, or not; finally
/// [`respond`](EnvelopeStream::respond) with a receipt.
pub struct EnvelopeStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    conn: Arc<ConnInner>,
    len: u64,
    body_read: bool,
    started: Instant,
}

impl fmt::Debug for EnvelopeStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvelopeStream")
            .field("peer", &self.conn.peer)
            .field("stream", &self.recv.id())
            .field("len", &self.len)
            .field("body_read", &self.body_read)
            .finish()
    }
}

impl EnvelopeStream {
    /// The authenticated peer that sent it.
    pub fn peer(&self) -> &AuthorityId {
        &self.conn.peer
    }

    /// The length the sender declared, before any body byte is read.
    pub fn declared_len(&self) -> u64 {
        self.len
    }

    /// The receiver's limit (`max_envelope_bytes`).
    pub fn limit(&self) -> u64 {
        self.conn.max_envelope_bytes
    }

    /// Whether the declared length is within the limit; if not, answer with
    /// a `too_large` receipt without reading.
    pub fn within_limit(&self) -> bool {
        self.len <= self.conn.max_envelope_bytes
    }

    /// Streams exactly the declared number of bytes to `out` in 64 KiB
    /// pieces and checks that the sender finished there. Refuses an
    /// envelope above the limit without reading it. Each piece must arrive
    /// within `stream_timeout`.
    pub async fn copy_to<W: AsyncWrite + Unpin>(&mut self, out: &mut W) -> Result<u64, ReceiveError> {
        if !self.within_limit() {
            return Err(ReceiveError::TooLarge {
                declared: self.len,
                max: self.conn.max_envelope_bytes,
            });
        }
        if self.body_read {
            return Err(ReceiveError::AlreadyRead);
        }
        self.body_read = true;
        let result = framing::copy_exact(&mut self.recv, out, self.len, self.conn.stream_timeout).await;
        match result {
            Ok(n) => Ok(n),
            Err(e) => {
                if matches!(e, FrameError::TrailingData { .. } | FrameError::Truncated { .. }) {
                    let _ = self.recv.stop(StreamCode::ProtocolError.code());
                }
                Err(ReceiveError::Body(e))
            }
        }
    }

    /// Sends the receipt (at most 4 KiB) and ends the stream. If the body
    /// was not read, the sender is first told to stop sending
    /// ([`StreamCode::BodyNotRead`]).
    pub async fn respond(mut self, receipt: &[u8]) -> Result<(), RespondError> {
        if !self.body_read {
            let _ = self.recv.stop(StreamCode::BodyNotRead.code());
        }
        let idle = self.conn.stream_timeout;
        match tokio::time::timeout(idle, framing::write_receipt(&mut self.send, receipt)).await {
            Err(_) => return Err(RespondError::Timeout(idle)),
            Ok(r) => r.map_err(RespondError::Frame)?,
        }
        // Fails only if the sender already reset the stream.
        let _ = self.send.finish();
        debug!(
            peer = %self.conn.peer,
            stream = %self.send.id(),
            len = self.len,
            body_read = self.body_read,
            receipt_len = receipt.len(),
            elapsed_ms = self.started.elapsed().as_millis() as u64,
            "envelope answered"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn authority(s: &str) -> AuthorityId {
        AuthorityId::new(s).unwrap()
    }

    fn endpoint(name: &str, pins: Vec<Peer>, max: usize) -> (Endpoint, Peer) {
        let id = TlsIdentity::generate(&authority(name)).unwrap();
        let me = Peer {
            authority: authority(name),
            pin: *id.pin(),
        };
        let cfg = TransportConfig {
            max_connections_per_peer: max,
            ..TransportConfig::default()
        };
        let ep = Endpoint::bind(
            "127.0.0.1:0".parse().unwrap(),
            id,
            PinSet::new(pins).unwrap(),
            cfg,
        )
        .unwrap();
        (ep, me)
    }

    /// Accepts and keeps connections until the endpoint closes.
    fn serve(ep: &Endpoint) -> tokio::task::JoinHandle<()> {
        let ep = ep.clone();
        tokio::spawn(async move {
            while let Some(inc) = ep.accept().await {
                tokio::spawn(async move {
                    if let Ok(c) = inc.establish().await {
                        let _ = c.closed().await;
                    }
                });
            }
        })
    }

    async fn within<T>(fut: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(60), fut)
            .await
            .expect("hung")
    }

    #[tokio::test]
    async fn outgoing_connections_per_peer_are_capped() {
        let id_a = TlsIdentity::generate(&authority("kz.mvd")).unwrap();
        let a_peer = Peer {
            authority: authority("kz.mvd"),
            pin: *id_a.pin(),
        };
        let (b, b_peer) = endpoint("by.mvd", vec![a_peer.clone()], 8);
        let a = Endpoint::bind(
            "127.0.0.1:0".parse().unwrap(),
            id_a,
            PinSet::new(vec![b_peer.clone()]).unwrap(),
            TransportConfig {
                max_connections_per_peer: 2,
                ..TransportConfig::default()
            },
        )
        .unwrap();
        let _server = serve(&b);
        let addr = b.local_addr().unwrap();
        let c1 = within(a.connect(addr, &b_peer)).await.unwrap();
        let c2 = within(a.connect(addr, &b_peer)).await.unwrap();
        match within(a.connect(addr, &b_peer)).await {
            Err(ConnectError::TooManyConnections { peer, max }) => {
                assert_eq!(peer, b_peer.authority);
                assert_eq!(max, 2);
            }
            other => panic!("a third connection was allowed: {other:?}"),
        }
        assert_eq!(a.peer_connections(&b_peer.authority), 2);
        // A clone keeps the connection open and counted; closing it frees
        // its place even while handles remain.
        let c1b = c1.clone();
        drop(c1);
        assert!(matches!(
            within(a.connect(addr, &b_peer)).await,
            Err(ConnectError::TooManyConnections { .. })
        ));
        c1b.close(CloseCode::Normal);
        let c3 = within(a.connect(addr, &b_peer)).await.unwrap();
        assert_eq!(a.peer_connections(&b_peer.authority), 2);
        assert_eq!(a.peer_connections_total(), 2);
        drop((c1b, c2, c3));
    }

    #[tokio::test]
    async fn close_peer_closes_both_directions() {
        let id_a = TlsIdentity::generate(&authority("kz.mvd")).unwrap();
        let a_peer = Peer {
            authority: authority("kz.mvd"),
            pin: *id_a.pin(),
        };
        let (b, b_peer) = endpoint("by.mvd", vec![a_peer.clone()], 4);
        let a = Endpoint::bind(
            "127.0.0.1:0".parse().unwrap(),
            id_a,
            PinSet::new(vec![b_peer.clone()]).unwrap(),
            TransportConfig::default(),
        )
        .unwrap();
        let _sa = serve(&a);
        // b keeps what it accepts, to see it closed from a's side.
        let b2 = b.clone();
        let accepted = tokio::spawn(async move { b2.accept().await.unwrap().establish().await.unwrap() });
        let out = within(a.connect(b.local_addr().unwrap(), &b_peer)).await.unwrap();
        let at_b = within(accepted).await.unwrap();
        // b dials a as well: an incoming connection at a.
        let back = within(b.connect(a.local_addr().unwrap(), &a_peer)).await.unwrap();
        // Wait (bounded) until a has registered the incoming one.
        within(async {
            while a.peer_connections(&b_peer.authority) < 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert_eq!(a.close_peer(&b_peer.authority, CloseCode::UnknownPeer), 2);
        assert!(out.close_reason().is_some());
        assert_eq!(
            CloseCode::of(&within(at_b.closed()).await),
            Some(CloseCode::UnknownPeer)
        );
        assert_eq!(
            CloseCode::of(&within(back.closed()).await),
            Some(CloseCode::UnknownPeer)
        );
        assert_eq!(a.peer_connections(&b_peer.authority), 0);
        assert_eq!(a.peer_connections_total(), 0);
        assert_eq!(a.close_peer(&b_peer.authority, CloseCode::UnknownPeer), 0);
    }
}
