#![allow(dead_code, clippy::unwrap_used)]
//! What the gateway tests in this directory share: two real gateways made
//! with `init` and `peer add` on 127.0.0.1, and a message to send.

use std::path::{Path, PathBuf};

use konvert_envelope::model::{AgreementId, AuthorityId, Id, Message, MessageBody, Timestamp};
use konvert_gateway::init::{self, InitOptions};

/// A free UDP port on 127.0.0.1.
pub fn port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// kz.mvd and by.mvd, each a peer of the other: their configuration files.
pub fn two_gateways(dir: &Path) -> (PathBuf, PathBuf) {
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
pub fn note() -> Message {
    let mut m: Message = serde_json::from_str(include_str!(
        "../../../docs/examples/unsolicited_information.json"
    ))
    .unwrap();
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
