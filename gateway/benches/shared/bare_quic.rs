//! Bare quinn request/response with Konvert's TLS setup (pinned mutual
//! TLS 1.3, ring): the floor every delivery path is compared with. Shared
//! by the `quic` bench and the end-to-end `loadgen` example (which
//! includes this file with `#[path]`), so that both measure the same bare
//! work in their own runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use konvert_envelope::model::AuthorityId;
use konvert_gateway::transport::tls::{self, TlsIdentity};
use konvert_gateway::transport::{Peer, PinSet};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

pub const RESPONSE: [u8; 64] = [0x5a; 64];

pub fn authority(s: &str) -> AuthorityId {
    AuthorityId::new(s).expect("valid authority id")
}

pub fn identities() -> (TlsIdentity, Peer, TlsIdentity, Peer) {
    let server = TlsIdentity::generate(&authority("by.mvd")).expect("server identity");
    let client = TlsIdentity::generate(&authority("kz.mvd")).expect("client identity");
    let sp = Peer {
        authority: authority("by.mvd"),
        pin: *server.pin(),
    };
    let cp = Peer {
        authority: authority("kz.mvd"),
        pin: *client.pin(),
    };
    (server, sp, client, cp)
}

pub fn quinn_transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(256));
    Arc::new(t)
}

/// A bare quinn server and a connected client with Konvert's TLS configs.
pub async fn bare_pair() -> (quinn::Endpoint, quinn::Connection) {
    let (sid, sp, cid, cp) = identities();
    let pins = PinSet::new([cp]).expect("pins");
    let server_tls =
        QuicServerConfig::try_from(tls::server_config(&sid, pins).expect("server tls")).expect("quic");
    let mut server_cfg = quinn::ServerConfig::with_crypto(Arc::new(server_tls));
    server_cfg.transport_config(quinn_transport());
    let server = quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse().expect("addr")).expect("bind");
    let addr = server.local_addr().expect("addr");
    let accept = server.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accept.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        if recv.read_to_end(2 * 1024 * 1024).await.is_ok()
                            && send.write_all(&RESPONSE).await.is_ok()
                        {
                            let _ = send.finish();
                        }
                    });
                }
            });
        }
    });
    let client_tls =
        QuicClientConfig::try_from(tls::client_config(&cid, &[sp.pin]).expect("client tls")).expect("quic");
    let mut client_cfg = quinn::ClientConfig::new(Arc::new(client_tls));
    client_cfg.transport_config(quinn_transport());
    let client = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let conn = client
        .connect_with(client_cfg, addr, "x")
        .expect("connect")
        .await
        .expect("handshake");
    (client, conn)
}

/// One request: `body` handed to quinn as it is (reference-counted, as
/// konvertd sends the envelopes it holds in memory), a 64-byte answer.
pub async fn bare_request(conn: &quinn::Connection, body: &bytes::Bytes) {
    let (mut send, mut recv) = conn.open_bi().await.expect("open");
    send.write_chunk(body.clone()).await.expect("write");
    send.finish().expect("finish");
    let resp = recv.read_to_end(4096).await.expect("response");
    assert_eq!(resp.len(), RESPONSE.len());
}

/// Runs `iters` requests with `in_flight` workers; returns the elapsed time.
pub async fn run<F, Fut>(iters: u64, in_flight: usize, one: F) -> Duration
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let start = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..in_flight as u64 {
        let n = iters / in_flight as u64 + u64::from(w < iters % in_flight as u64);
        let one = one.clone();
        workers.spawn(async move {
            for _ in 0..n {
                one().await;
            }
        });
    }
    while let Some(r) = workers.join_next().await {
        r.expect("worker");
    }
    start.elapsed()
}
