//! The QUIC transport over real sockets on 127.0.0.1 (port 0): pinned mutual
//! TLS, envelope streams and receipts, limits, runtime pin changes, shutdown.
//! No test depends on timing; timeouts only turn a hang into a failure.
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::pin::Pin as StdPin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use konvert_envelope::model::AuthorityId;
use konvert_gateway::transport::tls::{self, TlsIdentity};
use konvert_gateway::transport::{
    AcceptError, CloseCode, ConnectError, Connection, Endpoint, IncomingEnvelope, Peer, PinSet, SendError,
    TransportConfig,
};
use quinn::crypto::rustls::QuicClientConfig;
use quinn::ConnectionError;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;

/// Turns a hang into a test failure; never a timing assertion.
async fn within<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(120), fut)
        .await
        .expect("test step hung")
}

fn authority(s: &str) -> AuthorityId {
    AuthorityId::new(s).unwrap()
}

/// An identity and the peer entry others pin it with.
fn identity(name: &str) -> (TlsIdentity, Peer) {
    let id = TlsIdentity::generate(&authority(name)).unwrap();
    let peer = Peer {
        authority: authority(name),
        pin: *id.pin(),
    };
    (id, peer)
}

fn bind(id: TlsIdentity, pins: &[&Peer], cfg: TransportConfig) -> Endpoint {
    let pins = PinSet::new(pins.iter().map(|p| (*p).clone())).unwrap();
    Endpoint::bind("127.0.0.1:0".parse().unwrap(), id, pins, cfg).unwrap()
}

/// What the test server saw.
#[derive(Debug)]
enum Event {
    Established(AuthorityId),
    Refused(AcceptError),
    Ended(AuthorityId),
    Envelope {
        peer: AuthorityId,
        declared: u64,
        within_limit: bool,
    },
}

/// A SHA-256 sink: the receiver's stand-in for the store.
#[derive(Default)]
struct HashWriter(Sha256);

impl AsyncWrite for HashWriter {
    fn poll_write(
        mut self: StdPin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0.update(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: StdPin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: StdPin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The receipt the test server answers an envelope with.
fn accepted_receipt(len: u64, sha: &[u8]) -> Vec<u8> {
    format!("accepted {len} {}", hex::encode(sha)).into_bytes()
}

async fn handle_envelope(incoming: IncomingEnvelope, events: mpsc::UnboundedSender<Event>) {
    let Ok(mut env) = incoming.read_header().await else {
        return;
    };
    let _ = events.send(Event::Envelope {
        peer: env.peer().clone(),
        declared: env.declared_len(),
        within_limit: env.within_limit(),
    });
    if !env.within_limit() {
        let _ = env.respond(b"too_large").await;
        return;
    }
    let mut sink = HashWriter::default();
    let receipt = match env.copy_to(&mut sink).await {
        Ok(n) => accepted_receipt(n, &sink.0.finalize()),
        Err(_) => b"malformed".to_vec(),
    };
    let _ = env.respond(&receipt).await;
}

/// Runs an accept loop on `ep` answering every envelope; returns its events.
fn serve(ep: &Endpoint) -> mpsc::UnboundedReceiver<Event> {
    let (tx, rx) = mpsc::unbounded_channel();
    let ep = ep.clone();
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                match incoming.establish().await {
                    Err(e) => {
                        let _ = tx.send(Event::Refused(e));
                    }
                    Ok(conn) => {
                        let peer = conn.peer().clone();
                        let _ = tx.send(Event::Established(peer.clone()));
                        while let Some(stream) = conn.accept_envelope().await {
                            tokio::spawn(handle_envelope(stream, tx.clone()));
                        }
                        drop(conn);
                        let _ = tx.send(Event::Ended(peer));
                    }
                }
            });
        }
    });
    rx
}

async fn next_event(rx: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    within(rx.recv()).await.expect("server loop ended")
}

/// Skips envelope events; returns the next connection event.
async fn next_conn_event(rx: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    loop {
        match next_event(rx).await {
            Event::Envelope { .. } => continue,
            e => return e,
        }
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

async fn send_ok(conn: &Connection, data: &[u8]) {
    let receipt = within(conn.send_envelope(data.len() as u64, data)).await.unwrap();
    assert_eq!(
        receipt,
        accepted_receipt(data.len() as u64, &Sha256::digest(data))
    );
}

/// Two gateways pinning each other: (server endpoint, its peer entry, its
/// events, client endpoint, client's peer entry).
struct Pair {
    server: Endpoint,
    server_peer: Peer,
    events: mpsc::UnboundedReceiver<Event>,
    client: Endpoint,
    client_peer: Peer,
}

fn pair(server_cfg: TransportConfig) -> Pair {
    let (sid, server_peer) = identity("by.mvd");
    let (cid, client_peer) = identity("kz.mvd");
    let server = bind(sid, &[&client_peer], server_cfg);
    let client = bind(cid, &[&server_peer], TransportConfig::default());
    let events = serve(&server);
    Pair {
        server,
        server_peer,
        events,
        client,
        client_peer,
    }
}

impl Pair {
    async fn connect(&self) -> Result<Connection, ConnectError> {
        within(
            self.client
                .connect(self.server.local_addr().unwrap(), &self.server_peer),
        )
        .await
    }
}

/// The connection error with which a refused client learns its refusal:
/// from `connect` or, since TLS 1.3 completes on the client first, from the
/// first stream.
async fn refusal(attempt: Result<Connection, ConnectError>) -> ConnectionError {
    match attempt {
        Err(ConnectError::Handshake(e)) => e,
        Err(e) => panic!("unexpected connect error: {e}"),
        Ok(conn) => {
            let err = within(conn.send_envelope(3, &b"abc"[..])).await.unwrap_err();
            err.connection_error()
                .unwrap_or_else(|| panic!("not a connection error: {err}"))
        }
    }
}

#[tokio::test]
async fn envelopes_of_1_kib_and_20_mib_with_receipts() {
    let mut p = pair(TransportConfig::default());
    let conn = p.connect().await.unwrap();
    assert_eq!(conn.peer(), &p.server_peer.authority);
    assert!(
        matches!(next_conn_event(&mut p.events).await, Event::Established(a) if a == p.client_peer.authority)
    );

    send_ok(&conn, &pattern(1024, 1)).await;
    send_ok(&conn, &pattern(20 * 1024 * 1024, 2)).await;
    send_ok(&conn, &[]).await;

    let mut seen = Vec::new();
    for _ in 0..3 {
        match next_event(&mut p.events).await {
            Event::Envelope {
                peer,
                declared,
                within_limit,
            } => {
                assert_eq!(peer, p.client_peer.authority);
                assert!(within_limit);
                seen.push(declared);
            }
            e => panic!("unexpected {e:?}"),
        }
    }
    seen.sort_unstable();
    assert_eq!(seen, [0, 1024, 20 * 1024 * 1024]);
}

#[tokio::test]
async fn sixty_four_concurrent_streams_on_one_connection() {
    let p = pair(TransportConfig::default());
    let conn = p.connect().await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..64u8 {
        let conn = conn.clone();
        tasks.spawn(async move {
            let data = pattern(4096 + usize::from(i) * 100, i);
            send_ok(&conn, &data).await;
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    assert_eq!(p.client.open_connections(), 1);
}

#[tokio::test]
async fn sender_source_must_match_declared_length() {
    let p = pair(TransportConfig::default());
    let conn = p.connect().await.unwrap();
    let short = within(conn.send_envelope(10, &b"12345"[..])).await.unwrap_err();
    assert!(
        matches!(short, SendError::SourceShort { expected: 10, got: 5 }),
        "{short}"
    );
    let long = within(conn.send_envelope(3, &b"12345"[..])).await.unwrap_err();
    assert!(matches!(long, SendError::SourceLong { expected: 3 }), "{long}");
    // The connection is still fine.
    send_ok(&conn, b"after").await;
}

#[tokio::test]
async fn client_not_pinned_is_refused_in_the_handshake() {
    let (sid, server_peer) = identity("by.mvd");
    let (_, other) = identity("am.police");
    let server = bind(sid, &[&other], TransportConfig::default());
    let mut events = serve(&server);
    let (cid, _) = identity("kz.mvd");
    let client = bind(cid, &[&server_peer], TransportConfig::default());

    let attempt = within(client.connect(server.local_addr().unwrap(), &server_peer)).await;
    let err = refusal(attempt).await;
    assert!(
        matches!(
            err,
            ConnectionError::ConnectionClosed(_) | ConnectionError::TransportError(_)
        ),
        "{err:?}"
    );
    match next_conn_event(&mut events).await {
        Event::Refused(AcceptError::Handshake(_)) => {}
        e => panic!("unexpected {e:?}"),
    }
}

#[tokio::test]
async fn server_with_another_pin_is_refused_by_the_client() {
    let p = pair(TransportConfig::default());
    let (_, impostor) = identity("by.mvd");
    let expected = Peer {
        authority: p.server_peer.authority.clone(),
        pin: impostor.pin,
    };
    let err = within(p.client.connect(p.server.local_addr().unwrap(), &expected))
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::Handshake(_)), "{err}");
}

/// A raw quinn client with Konvert's TLS client configuration, modified by `tweak`.
fn raw_client(
    id: &TlsIdentity,
    server_pin: tls::Pin,
    tweak: impl FnOnce(&mut rustls::ClientConfig),
) -> (quinn::Endpoint, quinn::ClientConfig) {
    let mut crypto = tls::client_config(id, &[server_pin]).unwrap();
    tweak(&mut crypto);
    let cfg = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(crypto).unwrap()));
    (
        quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap(),
        cfg,
    )
}

#[tokio::test]
async fn alpn_other_than_konvert_1_is_refused() {
    let (sid, server_peer) = identity("by.mvd");
    let (cid, client_peer) = identity("kz.mvd");
    let server = bind(sid, &[&client_peer], TransportConfig::default());
    let mut events = serve(&server);
    let addr = server.local_addr().unwrap();

    // A different protocol: rustls ends the handshake (no_application_protocol).
    let (ep, cfg) = raw_client(&cid, server_peer.pin, |c| {
        c.alpn_protocols = vec![b"konvert/2".to_vec()]
    });
    let r = within(ep.connect_with(cfg, addr, "x").unwrap()).await;
    assert!(r.is_err(), "handshake with ALPN konvert/2 succeeded");
    assert!(matches!(
        next_conn_event(&mut events).await,
        Event::Refused(AcceptError::Handshake(_))
    ));

    // No ALPN at all: refused in the handshake as well (QUIC requires ALPN).
    let (ep, cfg) = raw_client(&cid, server_peer.pin, |c| c.alpn_protocols.clear());
    let reason = match within(ep.connect_with(cfg, addr, "x").unwrap()).await {
        Ok(conn) => within(conn.closed()).await,
        Err(e) => e,
    };
    assert!(
        matches!(
            reason,
            ConnectionError::ConnectionClosed(_) | ConnectionError::TransportError(_)
        ),
        "{reason:?}"
    );
    assert!(matches!(
        next_conn_event(&mut events).await,
        Event::Refused(AcceptError::Handshake(_))
    ));
}

#[tokio::test]
async fn zero_rtt_is_never_offered() {
    let (sid, server_peer) = identity("by.mvd");
    let (cid, client_peer) = identity("kz.mvd");
    let pins = PinSet::new([client_peer.clone()]).unwrap();
    assert_eq!(tls::server_config(&sid, pins).unwrap().max_early_data_size, 0);
    let client_tls = tls::client_config(&cid, &[server_peer.pin]).unwrap();
    assert!(!client_tls.enable_early_data);

    let server = bind(sid, &[&client_peer], TransportConfig::default());
    let _events = serve(&server);
    let addr = server.local_addr().unwrap();
    // The same client configuration twice: a session cache, if there were
    // one, would hold a ticket for the second attempt.
    let (ep, cfg) = raw_client(&cid, server_peer.pin, |_| {});
    let first = within(ep.connect_with(cfg.clone(), addr, "x").unwrap())
        .await
        .unwrap();
    first.close(0u32.into(), b"");
    let second = ep.connect_with(cfg, addr, "x").unwrap();
    let connecting = match second.into_0rtt() {
        Ok(_) => panic!("0-RTT was offered"),
        Err(connecting) => connecting,
    };
    within(connecting).await.unwrap();
}

#[tokio::test]
async fn length_above_limit_is_seen_before_the_body_and_answered() {
    let cfg = TransportConfig {
        max_envelope_bytes: 1024,
        ..TransportConfig::default()
    };
    let mut p = pair(cfg);
    let conn = p.connect().await.unwrap();
    // A body that never yields a byte: the receipt can only come back if
    // the receiver answered on the declared length alone.
    let (never, _keep_open) = tokio::io::duplex(16);
    let receipt = within(conn.send_envelope(1024 * 1024, never)).await.unwrap();
    assert_eq!(receipt, b"too_large");
    loop {
        match next_event(&mut p.events).await {
            Event::Established(_) => continue,
            Event::Envelope {
                declared,
                within_limit,
                ..
            } => {
                assert_eq!(declared, 1024 * 1024);
                assert!(!within_limit);
                break;
            }
            e => panic!("unexpected {e:?}"),
        }
    }
    // Exactly at the limit is accepted; the connection is unaffected.
    send_ok(&conn, &pattern(1024, 9)).await;
}

#[tokio::test]
async fn envelopes_held_in_memory_are_sent_as_they_are_and_refused_above_the_limit() {
    let cfg = TransportConfig {
        max_envelope_bytes: 512 * 1024,
        ..TransportConfig::default()
    };
    let mut p = pair(cfg);
    let conn = p.connect().await.unwrap();
    // Empty, under one piece, several pieces with a short last one.
    for (len, seed) in [(0usize, 3u8), (1000, 4), (300 * 1024 + 7, 5)] {
        let data = pattern(len, seed);
        let receipt = within(conn.send_envelope_bytes(bytes::Bytes::from(data.clone())))
            .await
            .unwrap();
        assert_eq!(
            receipt,
            accepted_receipt(len as u64, &Sha256::digest(&data)),
            "{len} bytes"
        );
    }
    // Above the limit the receiver answers on the length alone and stops
    // the stream; the sender stops writing and returns that receipt.
    let receipt = within(conn.send_envelope_bytes(bytes::Bytes::from(pattern(2 << 20, 6))))
        .await
        .unwrap();
    assert_eq!(receipt, b"too_large");
    let mut refused = false;
    while !refused {
        if let Event::Envelope { within_limit, .. } = next_event(&mut p.events).await {
            refused = !within_limit;
        }
    }
    send_ok(&conn, b"after").await;
}

#[tokio::test]
async fn connections_per_peer_are_capped() {
    let cfg = TransportConfig {
        max_connections_per_peer: 2,
        ..TransportConfig::default()
    };
    let mut p = pair(cfg);
    let a = p.connect().await.unwrap();
    let b = p.connect().await.unwrap();
    for _ in 0..2 {
        assert!(matches!(
            next_conn_event(&mut p.events).await,
            Event::Established(_)
        ));
    }
    let c = p.connect().await.unwrap();
    let reason = within(c.closed()).await;
    assert_eq!(
        CloseCode::of(&reason),
        Some(CloseCode::TooManyConnections),
        "{reason:?}"
    );
    assert!(matches!(
        next_conn_event(&mut p.events).await,
        Event::Refused(AcceptError::TooManyConnections { max: 2, .. })
    ));
    send_ok(&a, b"still up").await;
    send_ok(&b, b"still up").await;

    // Closing one frees its slot once the server has released it.
    a.close(CloseCode::Normal);
    drop(a);
    assert!(
        matches!(next_conn_event(&mut p.events).await, Event::Ended(who) if who == p.client_peer.authority)
    );
    let mut admitted = None;
    for _ in 0..20 {
        let d = p.connect().await.unwrap();
        match next_conn_event(&mut p.events).await {
            Event::Established(_) => {
                admitted = Some(d);
                break;
            }
            Event::Refused(AcceptError::TooManyConnections { .. }) => continue,
            e => panic!("unexpected {e:?}"),
        }
    }
    send_ok(&admitted.expect("slot never freed"), b"new").await;
}

#[tokio::test]
async fn pin_set_replaced_at_runtime() {
    let (sid, server_peer) = identity("by.mvd");
    let (aid, a_peer) = identity("kz.mvd");
    let (bid, b_peer) = identity("kz.mtszn");
    let server = bind(sid, &[&a_peer], TransportConfig::default());
    let mut events = serve(&server);
    let addr = server.local_addr().unwrap();
    let a = bind(aid, &[&server_peer], TransportConfig::default());
    let b = bind(bid, &[&server_peer], TransportConfig::default());

    let a_conn = within(a.connect(addr, &server_peer)).await.unwrap();
    send_ok(&a_conn, b"from a").await;
    refusal(within(b.connect(addr, &server_peer)).await).await;

    // Reload: b in, a out.
    server.pins().replace([b_peer.clone()]).unwrap();
    let b_conn = within(b.connect(addr, &server_peer)).await.unwrap();
    send_ok(&b_conn, b"from b").await;
    // a's established connection stays up; its next connection is refused.
    send_ok(&a_conn, b"still a").await;
    refusal(within(a.connect(addr, &server_peer)).await).await;

    let mut established = Vec::new();
    let mut refused = 0;
    while established.len() < 2 || refused < 2 {
        match next_conn_event(&mut events).await {
            Event::Established(who) => established.push(who),
            Event::Refused(AcceptError::Handshake(_)) => refused += 1,
            e => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(established, [a_peer.authority, b_peer.authority]);
}

#[tokio::test]
async fn graceful_close() {
    let mut p = pair(TransportConfig::default());
    let conn = p.connect().await.unwrap();
    send_ok(&conn, b"before shutdown").await;

    // Step 1: no new connections; the established one keeps working.
    p.server.refuse_new_connections();
    let refused = within(p.client.connect(p.server.local_addr().unwrap(), &p.server_peer)).await;
    assert!(
        refused.is_err(),
        "a new connection was accepted after refuse_new_connections"
    );
    send_ok(&conn, b"during shutdown").await;

    // Step 2: close with code 0 and wait until the peer was told.
    p.server.close();
    within(p.server.wait_idle()).await;
    let reason = within(conn.closed()).await;
    assert_eq!(CloseCode::of(&reason), Some(CloseCode::Normal), "{reason:?}");
    assert!(within(p.server.accept()).await.is_none());
    let err = within(conn.send_envelope(1, &b"x"[..])).await.unwrap_err();
    assert!(err.connection_error().is_some(), "{err}");
    while let Ok(e) = p.events.try_recv() {
        assert!(!matches!(e, Event::Refused(_)), "unexpected {e:?}");
    }
}
