#![allow(clippy::unwrap_used)]
//! An envelope sent twice is stored once and answered with the same signed
//! receipt (PROTOCOL.md: delivery is idempotent on the envelope id): two
//! real gateways in this process on 127.0.0.1, made with `init` and `peer
//! add`; the sender's outbox envelope is sent again on a fresh stream after
//! its delivery.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use konvert_envelope::model::{AgreementId, AuthorityId, Id, Message, MessageBody, Timestamp};
use konvert_gateway::daemon::outbound::{OutboxRecord, Submission};
use konvert_gateway::daemon::{self, outbound, Node};
use konvert_gateway::init::{self, InitOptions};
use konvert_store::{Direction, MessageId, MessageState};

fn port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// kz.mvd and by.mvd, each a peer of the other: their configuration files.
fn two_gateways(dir: &Path) -> (PathBuf, PathBuf) {
    let made: Vec<_> = ["kz.mvd", "by.mvd"]
        .into_iter()
        .map(|a| {
            init::init(&InitOptions {
                authority: AuthorityId::new(a).unwrap(),
                dir: dir.join(a),
                listen: std::net::SocketAddr::from(([127, 0, 0, 1], port())),
                api_socket: None,
                name: None,
                signatory: "head".into(),
                force: false,
            })
            .unwrap()
        })
        .collect();
    let listen = |i: usize| {
        let text = std::fs::read_to_string(&made[i].config).unwrap();
        let cfg = konvert_gateway::config::Config::parse(&text, &made[i].config).unwrap();
        cfg.quic.listen.to_string()
    };
    let ag = AgreementId::new("kz-by-2019").unwrap();
    init::peer_add(
        &made[0].config,
        &made[1].card,
        &[listen(1)],
        std::slice::from_ref(&ag),
    )
    .unwrap();
    init::peer_add(
        &made[1].config,
        &made[0].card,
        &[listen(0)],
        std::slice::from_ref(&ag),
    )
    .unwrap();
    (made[0].config.clone(), made[1].config.clone())
}

/// Unsolicited information without attachments.
fn note() -> Message {
    let mut m: Message =
        serde_json::from_str(include_str!("../../docs/examples/unsolicited_information.json")).unwrap();
    if let MessageBody::UnsolicitedInformation(u) = &mut m.body {
        for p in &mut u.persons {
            p.photographs.clear();
            p.fingerprint_card = None;
        }
        u.attachments.clear();
    }
    m.header.id = Id::new(Timestamp::now());
    m.header.time = Timestamp::now();
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_sent_twice_is_stored_once_and_gets_the_same_receipt() {
    let tmp = tempfile::tempdir().unwrap();
    let (kz_cfg, by_cfg) = two_gateways(tmp.path());
    let kz = Node::start(&kz_cfg).unwrap();
    let by = Node::start(&by_cfg).unwrap();
    let (_kz_stop, kz_rx) = tokio::sync::mpsc::channel(1);
    let (_by_stop, by_rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(daemon::run(Arc::clone(&kz), kz_rx));
    tokio::spawn(daemon::run(Arc::clone(&by), by_rx));

    let m = note();
    let key = MessageId(*m.header.id.as_bytes());
    let settled = kz.outcomes.watch(&key);
    outbound::submit(
        &kz,
        Submission {
            message: m,
            signatory: "head".into(),
            sources: Vec::new(),
            purpose: None,
        },
    )
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(30), settled)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        kz.store.meta(Direction::Outbound, &key).unwrap().state,
        MessageState::Delivered
    );
    let first = kz.store.receipt(&key).unwrap().bytes;
    let audit_before = by.store.audit_list(0, 10_000).unwrap().len();

    // The same envelope bytes again, on a new stream of a new connection.
    let record = OutboxRecord::from_slice(&kz.store.outbox_get(&key).unwrap().payload).unwrap();
    let dir = kz.directory();
    let by_id = AuthorityId::new("by.mvd").unwrap();
    let entry = dir.peers.get(&by_id).unwrap();
    let addr = entry.addresses[0].parse().unwrap();
    let pins = konvert_gateway::rotation::dial_pins(&kz, &entry.card, entry.pin);
    let conn = kz.endpoint.connect_any(addr, &by_id, &pins).await.unwrap();
    for _ in 0..2 {
        let again = conn
            .send_envelope(record.envelope.len() as u64, record.envelope.as_slice())
            .await
            .unwrap();
        assert_eq!(
            again, first,
            "the receipt of a duplicate is the stored one, byte for byte"
        );
    }

    // Stored once: one inbox record, nothing new in the receiver's audit trail.
    let inbox = by.store.inbox_list(None, 100).unwrap();
    assert_eq!(inbox.iter().filter(|i| i.id == key).count(), 1);
    assert_eq!(by.store.audit_list(0, 10_000).unwrap().len(), audit_before);
    by.store.audit_verify().unwrap();
}
