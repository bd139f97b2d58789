//! QUIC request/response on loopback with Konvert's TLS setup (pinned mutual
//! TLS 1.3, ring, ALPN konvert/1): one stream per message, 1 KiB and 1 MiB,
//! 1 / 16 / 256 messages in flight on one connection.
//!
//! - `bare`: quinn streams directly (request, FIN; 64-byte response, FIN):
//!   the floor any delivery path is compared with.
//! - `konvert`: the same through `transport::Connection::send_envelope_bytes` and
//!   `EnvelopeStream::copy_to`/`respond` (framing, limits, timeouts).
//!
//! 1 KiB groups report messages/s, 1 MiB groups bytes/s.
//! Run: `cargo bench -p konvert-gateway --bench quic`.

#[path = "shared/bare_quic.rs"]
mod bare_quic;

use std::net::SocketAddr;
use std::time::Duration;

use bare_quic::{bare_pair, bare_request, identities, run, RESPONSE};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use konvert_gateway::transport::{Connection, Endpoint, PinSet, TransportConfig};
use tokio::runtime::Runtime;

const SIZES: [(usize, &str); 2] = [(1024, "1KiB"), (1024 * 1024, "1MiB")];
const IN_FLIGHT: [usize; 3] = [1, 16, 256];

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

fn bench(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let (_bare_client, bare_conn) = rt.block_on(bare_pair());
    let (_server, _client, konvert_conn) = rt.block_on(konvert_pair());

    for (size, name) in SIZES {
        let body = bytes::Bytes::from(vec![0xa5; size]);
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
                                let receipt = conn.send_envelope_bytes(body).await.expect("send");
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
