//! QUIC request/response on loopback with Konvert's TLS setup (pinned mutual
//! TLS 1.3, ring, ALPN konvert/1): one stream per message, 1 KiB and 1 MiB,
//! 1 / 16 / 256 messages in flight on one connection.
//!
//! - `bare`: quinn streams directly (request, FIN; 64-byte response, FIN):
//!   the floor any delivery path is compared with.
//! - `konvert`: the same through `transport::Connection::send_envelope` and
//!   `EnvelopeStream::copy_to`/`respond` (framing, limits, timeouts).
//!
//! 1 KiB groups report messages/s, 1 MiB groups bytes/s.
//! Run: `cargo bench -p konvert-gateway --bench quic`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use konvert_envelope::model::AuthorityId;
use konvert_gateway::transport::tls::{self, TlsIdentity};
use konvert_gateway::transport::{Connection, Endpoint, Peer, PinSet, TransportConfig};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use tokio::runtime::Runtime;

const RESPONSE: [u8; 64] = [0x5a; 64];
const SIZES: [(usize, &str); 2] = [(1024, "1KiB"), (1024 * 1024, "1MiB")];
const IN_FLIGHT: [usize; 3] = [1, 16, 256];

fn authority(s: &str) -> AuthorityId {
    AuthorityId::new(s).expect("valid authority id")
}

fn identities() -> (TlsIdentity, Peer, TlsIdentity, Peer) {
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

fn quinn_transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(256));
    Arc::new(t)
}

/// A bare quinn server and a connected client with Konvert's TLS configs.
async fn bare_pair() -> (quinn::Endpoint, quinn::Connection) {
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

async fn bare_request(conn: &quinn::Connection, body: &[u8]) {
    let (mut send, mut recv) = conn.open_bi().await.expect("open");
    send.write_all(body).await.expect("write");
    send.finish().expect("finish");
    let resp = recv.read_to_end(4096).await.expect("response");
    assert_eq!(resp.len(), RESPONSE.len());
}

/// Two Konvert endpoints; returns the sender's connection.
async fn konvert_pair() -> (Endpoint, Endpoint, Connection) {
    let (sid, sp, cid, cp) = identities();
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let server = Endpoint::bind(
        any,
        sid,
        PinSet::new([cp]).expect("pins"),
        TransportConfig::default(),
    )
    .expect("bind");
    let client = Endpoint::bind(
        any,
        cid,
        PinSet::new([sp.clone()]).expect("pins"),
        TransportConfig::default(),
    )
    .expect("bind");
    let accept = server.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accept.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.establish().await else {
                    return;
                };
                while let Some(stream) = conn.accept_envelope().await {
                    tokio::spawn(async move {
                        let Ok(mut env) = stream.read_header().await else {
                            return;
                        };
                        if env.copy_to(&mut tokio::io::sink()).await.is_ok() {
                            let _ = env.respond(&RESPONSE).await;
                        }
                    });
                }
            });
        }
    });
    let conn = client
        .connect(server.local_addr().expect("addr"), &sp)
        .await
        .expect("connect");
    (server, client, conn)
}

/// Runs `iters` requests with `in_flight` workers; returns the elapsed time.
async fn run<F, Fut>(iters: u64, in_flight: usize, one: F) -> Duration
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

fn bench(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let (_bare_client, bare_conn) = rt.block_on(bare_pair());
    let (_server, _client, konvert_conn) = rt.block_on(konvert_pair());

    for (size, name) in SIZES {
        let body: Arc<[u8]> = vec![0xa5; size].into();
        let mut group = c.benchmark_group(format!("quic_{name}"));
        group.throughput(if size <= 1024 {
            Throughput::Elements(1)
        } else {
            Throughput::Bytes(size as u64)
        });
        group.warm_up_time(Duration::from_secs(1));
        group.measurement_time(Duration::from_secs(3));
        group.sample_size(if size <= 1024 { 30 } else { 10 });
        for in_flight in IN_FLIGHT {
            group.bench_with_input(
                BenchmarkId::new("bare", in_flight),
                &in_flight,
                |b, &in_flight| {
                    b.iter_custom(|iters| {
                        let (conn, body) = (bare_conn.clone(), body.clone());
                        rt.block_on(run(iters, in_flight, move || {
                            let (conn, body) = (conn.clone(), body.clone());
                            async move { bare_request(&conn, &body).await }
                        }))
                    });
                },
            );
            group.bench_with_input(
                BenchmarkId::new("konvert", in_flight),
                &in_flight,
                |b, &in_flight| {
                    b.iter_custom(|iters| {
                        let (conn, body) = (konvert_conn.clone(), body.clone());
                        rt.block_on(run(iters, in_flight, move || {
                            let (conn, body) = (conn.clone(), body.clone());
                            async move {
                                let receipt = conn
                                    .send_envelope(body.len() as u64, &body[..])
                                    .await
                                    .expect("send");
                                assert_eq!(receipt.len(), RESPONSE.len());
                            }
                        }))
                    });
                },
            );
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
