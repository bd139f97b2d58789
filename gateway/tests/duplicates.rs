#![allow(clippy::unwrap_used)]
//! An envelope sent twice is stored once and answered with the same signed
//! receipt (PROTOCOL.md: delivery is idempotent on the envelope id): two
//! real gateways in this process on 127.0.0.1, made with `init` and `peer
//! add`; the sender's outbox envelope is sent again on a fresh stream after
//! its delivery.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{note, two_gateways};
use konvert_envelope::model::AuthorityId;
use konvert_gateway::daemon::outbound::{OutboxRecord, Submission};
use konvert_gateway::daemon::{self, outbound, Node};
use konvert_store::{Direction, MessageId, MessageState};

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
