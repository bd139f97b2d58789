#![allow(clippy::unwrap_used)]
//! A receiver checks the signatures of envelopes arriving together in
//! batches (gateway/src/verifier.rs), and each envelope still gets exactly
//! the answer it would get with its signatures checked one by one: two real
//! gateways in this process on 127.0.0.1; envelopes made by hand with the
//! sender's keys (good ones, a flipped node signature, a bad signatory
//! signature, both), all sent at once on one QUIC connection.

mod common;

use std::sync::Arc;

use common::{note, two_gateways};
use konvert_envelope::envelope::{seal_signed, EnvelopeHeader};
use konvert_envelope::model::{AgreementId, AuthorityId, Id, Timestamp};
use konvert_envelope::receipt::{Outcome, Receipt, RejectCode};
use konvert_envelope::signed::SignedMessage;
use konvert_gateway::daemon::{self, Node};
use konvert_store::MessageId;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    None,
    NodeSignature,
    SignatorySignature,
    Both,
}

impl Fault {
    /// The answer the receiver owes an envelope with this fault.
    fn expected(self) -> Outcome {
        match self {
            Fault::None => Outcome::Accepted,
            // The node signature is checked first, as when checked alone.
            Fault::NodeSignature | Fault::Both => Outcome::Rejected {
                code: RejectCode::BadNodeSignature,
            },
            Fault::SignatorySignature => Outcome::Rejected {
                code: RejectCode::BadSignature,
            },
        }
    }
}

/// An envelope from `kz` to `by` with `fault`; its message id.
fn envelope(kz: &Node, by_card: &konvert_envelope::keys::AuthorityCard, fault: Fault) -> (Vec<u8>, Id) {
    let m = note();
    let id = m.header.id;
    let mut signed = SignedMessage::sign(&m, &kz.signatories["head"]).unwrap();
    if matches!(fault, Fault::SignatorySignature | Fault::Both) {
        // The COSE_Sign1 ends with its signature; flip a bit of its last byte.
        let last = signed.cose.len() - 1;
        signed.cose[last] ^= 0x01;
    }
    let header = EnvelopeHeader {
        id,
        from: AuthorityId::new("kz.mvd").unwrap(),
        to: AuthorityId::new("by.mvd").unwrap(),
        agreement: AgreementId::new("kz-by-2019").unwrap(),
        created: Timestamp::now(),
        attachments: 0,
    };
    let mut env = seal_signed(&signed, &header, &[], &by_card.age_recipients, &kz.keys.signing).unwrap();
    if matches!(fault, Fault::NodeSignature | Fault::Both) {
        // The envelope ends with the node signature.
        let last = env.len() - 1;
        env[last] ^= 0x01;
    }
    (env, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_checked_together_get_the_answers_each_would_get_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let (kz_cfg, by_cfg) = two_gateways(tmp.path());
    let kz = Node::start(&kz_cfg).unwrap();
    let by = Node::start(&by_cfg).unwrap();
    let (_by_stop, by_rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(daemon::run(Arc::clone(&by), by_rx));

    let dir = kz.directory();
    let by_id = AuthorityId::new("by.mvd").unwrap();
    let entry = dir.peers.get(&by_id).unwrap();
    let by_node_key = by.keys.signing.verifying_key();
    let faults = [
        Fault::None,
        Fault::NodeSignature,
        Fault::None,
        Fault::SignatorySignature,
        Fault::None,
        Fault::Both,
    ];
    let sent: Vec<(Vec<u8>, Id, Fault)> = (0..60)
        .map(|i| {
            let f = faults[i % faults.len()];
            let (env, id) = envelope(&kz, &entry.card, f);
            (env, id, f)
        })
        .collect();
    let addr = entry.addresses[0].parse().unwrap();
    let pins = konvert_gateway::rotation::dial_pins(&kz, &entry.card, entry.pin);
    let conn = Arc::new(kz.endpoint.connect_any(addr, &by_id, &pins).await.unwrap());

    // All at once, so that their checks share batches.
    let mut tasks = tokio::task::JoinSet::new();
    for (env, id, fault) in sent.iter().cloned() {
        let conn = Arc::clone(&conn);
        tasks.spawn(async move {
            let r = conn
                .send_envelope(env.len() as u64, env.as_slice())
                .await
                .unwrap();
            (id, fault, r)
        });
    }
    let mut receipts = std::collections::HashMap::new();
    while let Some(r) = tasks.join_next().await {
        let (id, fault, bytes) = r.unwrap();
        let receipt = Receipt::verify(&bytes, &by_node_key).unwrap();
        assert_eq!(receipt.outcome, fault.expected(), "{fault:?}");
        assert_eq!(receipt.envelope_id, id);
        receipts.insert(id, bytes);
    }

    // Every node signature went through the batches, and the signatory
    // signature of each envelope whose node signature verified (the body
    // of the others was never decrypted); the good ones, and only those,
    // are in the inbox.
    let stats = by.verifier.stats();
    let node_bad = sent
        .iter()
        .filter(|s| matches!(s.2, Fault::NodeSignature | Fault::Both))
        .count();
    assert_eq!(stats.signatures(), (2 * sent.len() - node_bad) as u64);
    assert!(stats.batches() <= 2 * sent.len() as u64);
    let inbox: Vec<MessageId> = by
        .store
        .inbox_list(None, 1000)
        .unwrap()
        .iter()
        .map(|i| i.id)
        .collect();
    for (_, id, fault) in &sent {
        let key = MessageId(*id.as_bytes());
        assert_eq!(inbox.contains(&key), *fault == Fault::None, "{fault:?}");
    }
    assert_eq!(inbox.len(), sent.iter().filter(|s| s.2 == Fault::None).count());

    // A stored envelope again gets its receipt again; a copy of it with a
    // flipped node signature does not get that receipt but a refusal.
    let (env, id, _) = &sent[0];
    let again = conn
        .send_envelope(env.len() as u64, env.as_slice())
        .await
        .unwrap();
    assert_eq!(&again, &receipts[id]);
    let mut forged = env.clone();
    let last = forged.len() - 1;
    forged[last] ^= 0x01;
    let refused = conn
        .send_envelope(forged.len() as u64, forged.as_slice())
        .await
        .unwrap();
    assert_eq!(
        Receipt::verify(&refused, &by_node_key).unwrap().outcome,
        Fault::NodeSignature.expected()
    );
}
