//! End-to-end key rotation (issue 6): `konvertctl keys rotate` on one of
//! two real `konvertd`s, the signed rotation announced to the peer, and
//! messages that keep flowing both ways; an envelope the peer sealed to the
//! old age recipient before it learned of the rotation is still delivered
//! and readable; receipts are signed with the new node key once the peer
//! has accepted the rotation.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use konvert_tests::{example, konvertctl, new_id, Gateway};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// A small message outside any request case.
fn note(gw: &Gateway, to: &str) -> (String, Value) {
    let mut m = example("unsolicited_information-kz-am-2024");
    let id = new_id();
    m["header"] = json!({
        "id": id,
        "time": konvert_envelope::model::Timestamp::now().to_string(),
        "agreement": "kz-by-2019",
        "from": gw.authority,
        "to": to,
    });
    m["body"]["content"]
        .as_object_mut()
        .unwrap()
        .remove("attachments");
    (id, json!({ "message": m, "signatory": "head" }))
}

fn send(gw: &Gateway, to: &str) -> String {
    let (id, doc) = note(gw, to);
    let (code, body) = gw.post_json("/v1/messages", &doc);
    assert_eq!(code, 202, "submit: {body}\n{}", gw.log());
    id
}

fn delivered(from: &Gateway, to: &Gateway, id: &str) {
    let st = from.wait_state(id, &["delivered"], WAIT);
    assert_eq!(st["receipt"]["verified"], json!(true), "{st}");
    assert_eq!(st["receipt"]["outcome"]["status"], json!("accepted"), "{st}");
    // Stored and readable on the other side.
    let item = to.get_json(&format!("/v1/inbox/{id}"));
    assert_eq!(item["message"]["header"]["id"], json!(id), "{item}");
}

fn wait_log(gw: &Gateway, needle: &str, count: usize) {
    let deadline = Instant::now() + WAIT;
    while gw.log().matches(needle).count() < count {
        assert!(
            Instant::now() < deadline,
            "{needle:?} not logged {count} times by {}:\n{}",
            gw.authority,
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn fast(g: &Gateway) {
    g.edit_config("initial_backoff = \"1s\"", "initial_backoff = \"100ms\"");
    g.edit_config("max_backoff = \"10m\"", "max_backoff = \"1s\"");
    g.edit_config("idle_timeout = \"1m\"", "idle_timeout = \"3s\"");
    g.edit_config("keep_alive = \"15s\"", "keep_alive = \"1s\"");
}

fn run(args: &[&str]) -> String {
    let out = konvertctl(args);
    assert!(
        out.status.success(),
        "konvertctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// The receipt `gw` holds for message `id`, checked offline against `card`.
fn receipt_verifies(gw: &Gateway, id: &str, card: &Path, dir: &Path) -> bool {
    let (code, raw) = gw.request("GET", &format!("/v1/receipts/{id}/raw"), None);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&raw));
    let f = dir.join(format!("{id}.receipt"));
    std::fs::write(&f, raw).unwrap();
    konvertctl([
        "receipts",
        "verify",
        f.to_str().unwrap(),
        "--card",
        card.to_str().unwrap(),
    ])
    .status
    .success()
}

#[test]
fn keys_rotate_while_messages_keep_flowing_both_ways() {
    let t = tempfile::tempdir().unwrap();
    let mut kz = Gateway::init(t.path(), "kz.mvd");
    let mut by = Gateway::init(t.path(), "by.mvd");
    kz.add_peer(&by, "kz-by-2019");
    by.add_peer(&kz, "kz-by-2019");
    fast(&kz);
    fast(&by);
    kz.start();
    by.start();
    let id = send(&kz, "by.mvd");
    delivered(&kz, &by, &id);
    let id = send(&by, "kz.mvd");
    delivered(&by, &kz, &id);
    let card0 = t.path().join("kz-card-0.toml");
    std::fs::copy(kz.card(), &card0).unwrap();
    assert!(receipt_verifies(&by, &id, &card0, t.path()));

    // kz.mvd is down; by.mvd queues a message sealed to kz's current (soon old) age recipient.
    kz.stop();
    let sealed_to_old = send(&by, "kz.mvd");
    std::thread::sleep(Duration::from_millis(300));
    assert_ne!(
        by.get_json(&format!("/v1/messages/{sealed_to_old}"))["state"],
        json!("delivered")
    );

    // Nothing to rotate is refused; then every key is rotated.
    let cfg = kz.config();
    let cfg = cfg.to_str().unwrap();
    let out = konvertctl(["keys", "rotate", "--config", cfg]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--all"));
    let out = konvertctl(["keys", "rotate", "--config", cfg, "--all", "--overlap", "10s"]);
    assert!(!out.status.success(), "an overlap under a minute is refused");
    let r: Value = serde_json::from_str(&run(&[
        "--json",
        "keys",
        "rotate",
        "--config",
        cfg,
        "--all",
        "--overlap",
        "1h",
    ]))
    .unwrap();
    assert!(r["tls_pin"].as_str().unwrap().starts_with("sha256/"), "{r}");
    // Key files: new ones in place, old ones in rotation/, all secrets 0600.
    let keys = kz.dir.join("keys");
    for f in [
        "node.key.pem",
        "tls.key.pem",
        "age.key",
        "rotation/node.key.pem",
        "rotation/tls.key.pem",
    ] {
        assert_eq!(mode(&keys.join(f)), 0o600, "{f}");
    }
    let age = std::fs::read_to_string(keys.join("age.key")).unwrap();
    assert_eq!(
        age.matches("AGE-SECRET-KEY-1").count(),
        2,
        "new and kept old identity"
    );
    let card1 = std::fs::read_to_string(kz.card()).unwrap();
    assert_ne!(card1, std::fs::read_to_string(&card0).unwrap());
    assert!(card1.contains(r["age_recipient"].as_str().unwrap()));
    assert!(card1.contains(r["tls_pin"].as_str().unwrap()));
    // A second rotation before the first is retired is refused.
    let out = konvertctl(["keys", "rotate", "--config", cfg, "--tls"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("retire"));

    // kz.mvd starts with the new keys: it announces the rotation; by.mvd
    // delivers the message sealed to the old recipient, which still opens.
    kz.start();
    by.wait_state(&sealed_to_old, &["delivered"], WAIT);
    delivered(&by, &kz, &sealed_to_old);
    wait_log(&kz, "peer accepted the key rotation", 1);
    wait_log(&by, "peer's key rotation recorded", 1);

    // Both ways with the new keys.
    let a = send(&kz, "by.mvd");
    delivered(&kz, &by, &a);
    let b = send(&by, "kz.mvd");
    delivered(&by, &kz, &b);
    // kz.mvd signed its receipt with the new node key: it verifies with the
    // new card, not with the old one.
    assert!(receipt_verifies(&by, &b, &kz.card(), t.path()));
    assert!(!receipt_verifies(&by, &b, &card0, t.path()));
    // And the new TLS certificate is presented once the only peer accepted.
    assert!(kz.log().contains("TLS server identity replaced"), "{}", kz.log());

    // Retiring inside the window is refused without --force.
    let out = konvertctl(["keys", "retire", "--config", cfg]);
    assert!(!out.status.success());
    run(&["keys", "retire", "--config", cfg, "--force"]);
    assert_eq!(std::fs::read_dir(keys.join("rotation")).unwrap().count(), 0);
    let age = std::fs::read_to_string(keys.join("age.key")).unwrap();
    assert_eq!(age.matches("AGE-SECRET-KEY-1").count(), 1);
    kz.reload();

    // A second rotation while kz.mvd runs, picked up on SIGHUP.
    let card1_path = t.path().join("kz-card-1.toml");
    std::fs::copy(kz.card(), &card1_path).unwrap();
    run(&[
        "keys",
        "rotate",
        "--config",
        cfg,
        "--tls",
        "--node",
        "--overlap",
        "1h",
    ]);
    kz.reload();
    wait_log(&kz, "peer accepted the key rotation", 2);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push((send(&kz, "by.mvd"), true));
        ids.push((send(&by, "kz.mvd"), false));
    }
    for (id, from_kz) in &ids {
        if *from_kz {
            delivered(&kz, &by, id);
        } else {
            delivered(&by, &kz, id);
        }
    }
    let last = &ids.last().unwrap().0;
    assert!(receipt_verifies(&by, last, &kz.card(), t.path()));
    assert!(!receipt_verifies(&by, last, &card1_path, t.path()));
    kz.stop();
    by.stop();
}
