//! End-to-end tests of the gateway daemon: real `konvertd` processes for
//! kz.mvd, by.mvd and am.police on loopback, made with `konvertctl init` and
//! `peer add`, driven through their local API sockets.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use konvert_tests::{example, message, new_id, submit, Gateway};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// A small message outside any request case (Art. 8 information, a
/// summary only, no attachments): for tests of delivery, not of the
/// agreement's procedure, which refuses answers to requests it never saw.
fn note(gw: &Gateway, to: &str) -> (String, Value) {
    let mut m = example("unsolicited_information-kz-am-2024");
    let id = new_id();
    let agreement = if gw.authority == "am.police" || to == "am.police" {
        "kz-am-2024"
    } else {
        "kz-by-2019"
    };
    m["header"] = json!({
        "id": id,
        "time": konvert_envelope::model::Timestamp::now().to_string(),
        "agreement": agreement,
        "from": gw.authority,
        "to": to,
    });
    m["body"]["content"]
        .as_object_mut()
        .unwrap()
        .remove("attachments");
    (id, json!({ "message": m, "signatory": "head" }))
}

fn inbox_ids(gw: &Gateway) -> Vec<String> {
    gw.get_json("/v1/inbox?limit=1000")["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

/// Short timers, so that a peer's restart is noticed in seconds.
fn fast(g: &Gateway) {
    g.edit_config("initial_backoff = \"1s\"", "initial_backoff = \"100ms\"");
    g.edit_config("max_backoff = \"10m\"", "max_backoff = \"1s\"");
    g.edit_config("idle_timeout = \"1m\"", "idle_timeout = \"3s\"");
    g.edit_config("keep_alive = \"15s\"", "keep_alive = \"1s\"");
}

fn pair(t: &std::path::Path) -> (Gateway, Gateway) {
    let kz = Gateway::init(t, "kz.mvd");
    let by = Gateway::init(t, "by.mvd");
    kz.add_peer(&by, "kz-by-2019");
    by.add_peer(&kz, "kz-by-2019");
    for g in [&kz, &by] {
        fast(g);
    }
    (kz, by)
}

#[test]
fn three_gateways_request_answer_receipts_and_acknowledgement() {
    let t = tempfile::tempdir().unwrap();
    let mut kz = Gateway::init(t.path(), "kz.mvd");
    let mut by = Gateway::init(t.path(), "by.mvd");
    let mut am = Gateway::init(t.path(), "am.police");
    kz.add_peer(&by, "kz-by-2019");
    kz.add_peer(&am, "kz-am-2024");
    by.add_peer(&kz, "kz-by-2019");
    am.add_peer(&kz, "kz-am-2024");
    kz.start();
    by.start();
    am.start();

    // A request with a photograph from KZ to BY; the receipt comes back verified.
    let photo: Vec<u8> = (0..150_000u32).map(|i| (i % 253) as u8).collect();
    let (req_id, doc) = message(&kz, "request", "by.mvd", None, &photo);
    assert_eq!(submit(&kz, &doc), req_id);
    // One long poll: the gateway answers when the receipt is in, not before.
    let status = kz.get_json(&format!("/v1/messages/{req_id}?wait=30"));
    assert_eq!(status["state"], json!("delivered"), "{status}");
    assert_eq!(status["receipt"]["verified"], json!(true), "{status}");
    assert_eq!(status["receipt"]["outcome"]["status"], json!("accepted"));
    let raw = kz.request("GET", &format!("/v1/receipts/{req_id}/raw"), None);
    assert_eq!(raw.0, 200);

    // BY's application waits for it, reads it with its attachment.
    let items = by.get_json("/v1/inbox?wait=20");
    assert_eq!(items["items"][0]["id"], json!(req_id), "{items}");
    let got = by.get_json(&format!("/v1/inbox/{req_id}"));
    assert_eq!(got["message"]["body"]["kind"], json!("request"));
    assert!(got["purpose"].as_str().is_some_and(|p| !p.is_empty()));
    let n_att = got["attachments"].as_array().unwrap().len();
    assert!(n_att > 0);
    let (code, bytes) = by.request("GET", &format!("/v1/inbox/{req_id}/attachments/0"), None);
    assert_eq!(code, 200);
    assert_eq!(bytes, photo);

    // BY answers: refused in part, with grounds.
    let (ans_id, doc) = message(&by, "response-refused", "kz.mvd", Some(&req_id), &photo);
    submit(&by, &doc);
    by.wait_state(&ans_id, &["delivered"], WAIT);
    let items = kz.get_json("/v1/inbox?wait=20");
    assert_eq!(items["items"][0]["id"], json!(ans_id));
    assert_eq!(items["items"][0]["in_reply_to"], json!(req_id));

    // Acknowledged items are never shown as new again, also after a restart.
    for (gw, id) in [(&kz, &ans_id), (&by, &req_id)] {
        let (code, _) = gw.request("POST", &format!("/v1/inbox/{id}/ack"), None);
        assert_eq!(code, 200);
        assert!(inbox_ids(gw).is_empty());
    }
    by.stop();
    by.start();
    assert!(inbox_ids(&by).is_empty());

    // KZ to Armenia under the other agreement.
    let (info_id, doc) = message(
        &kz,
        "unsolicited_information-kz-am-2024",
        "am.police",
        None,
        &photo,
    );
    submit(&kz, &doc);
    kz.wait_state(&info_id, &["delivered"], WAIT);
    assert_eq!(inbox_ids(&am), vec![info_id.clone()]);

    // Receipts can be listed by peer: the one by.mvd signed for the request,
    // and the one kz.mvd issued for the answer.
    let receipts = kz.get_json("/v1/receipts?peer=by.mvd");
    assert_eq!(receipts["items"].as_array().unwrap().len(), 2, "{receipts}");
    let receipts = kz.get_json("/v1/receipts?peer=by.mvd&direction=outbound");
    assert_eq!(receipts["items"].as_array().unwrap().len(), 1, "{receipts}");
    assert_eq!(receipts["items"][0]["envelope_id"], json!(req_id));
    for g in [&mut kz, &mut by, &mut am] {
        g.stop();
    }
}

#[test]
fn a_peer_restarted_mid_flight_gets_every_message_exactly_once() {
    let t = tempfile::tempdir().unwrap();
    let (mut kz, mut by) = pair(t.path());
    kz.start();
    // BY is down: messages wait in KZ's outbox.
    let mut ids = Vec::new();
    for _ in 0..10 {
        let (id, doc) = note(&kz, "by.mvd");
        assert_eq!(submit(&kz, &doc), id);
        ids.push(id);
    }
    by.start();
    for id in &ids {
        kz.wait_state(id, &["delivered"], WAIT);
    }
    // More messages, and BY crashes (SIGKILL) while they are in flight.
    for _ in 0..20 {
        let (id, doc) = note(&kz, "by.mvd");
        assert_eq!(submit(&kz, &doc), id);
        ids.push(id);
    }
    by.kill();
    by.start();
    for id in &ids {
        kz.wait_state(id, &["delivered"], WAIT);
    }
    let inbox = inbox_ids(&by);
    let distinct: BTreeSet<_> = inbox.iter().collect();
    assert_eq!(inbox.len(), ids.len(), "each message exactly once");
    assert_eq!(distinct.len(), ids.len());
    assert_eq!(distinct, ids.iter().collect());
    kz.stop();
    by.stop();
}

/// More messages than a peer has delivery slots (64): those that find
/// every slot taken wait in the peer's backlog and are started as slots
/// free, while the peer is down and after it comes up; each reaches the
/// application once.
#[test]
fn more_messages_than_delivery_slots_are_each_delivered_once() {
    let t = tempfile::tempdir().unwrap();
    let (mut kz, mut by) = pair(t.path());
    kz.start();
    let mut ids = Vec::new();
    for _ in 0..90 {
        let (id, doc) = note(&kz, "by.mvd");
        assert_eq!(submit(&kz, &doc), id);
        ids.push(id);
    }
    by.start();
    for _ in 0..40 {
        let (id, doc) = note(&kz, "by.mvd");
        assert_eq!(submit(&kz, &doc), id);
        ids.push(id);
    }
    for id in &ids {
        kz.wait_state(id, &["delivered"], WAIT);
    }
    let inbox = inbox_ids(&by);
    let distinct: BTreeSet<_> = inbox.iter().collect();
    assert_eq!(inbox.len(), ids.len(), "each message exactly once");
    assert_eq!(distinct, ids.iter().collect());
    kz.stop();
    by.stop();
}

#[test]
fn a_gateway_whose_key_is_not_pinned_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let mut kz = Gateway::init(t.path(), "kz.mvd");
    let mut am = Gateway::init(t.path(), "am.police");
    // am.police knows kz.mvd, but kz.mvd has not pinned am.police's key.
    am.add_peer(&kz, "kz-am-2024");
    am.edit_config("max_attempts = 50", "max_attempts = 2");
    fast(&am);
    kz.start();
    am.start();
    let (id, doc) = note(&am, "kz.mvd");
    // clarification_answer is a kz-by-2019 example: use the other agreement.
    let mut doc = doc;
    doc["message"]["header"]["agreement"] = json!("kz-am-2024");
    submit(&am, &doc);
    let status = am.wait_state(&id, &["failed"], WAIT);
    if std::env::var_os("KONVERT_TEST_LOGS").is_some() {
        eprintln!("{}", am.log());
    }
    assert!(
        status["error"]
            .as_str()
            .is_some_and(|e| e.contains("undeliverable")),
        "{status}"
    );
    assert!(inbox_ids(&kz).is_empty());
    assert!(
        kz.log().contains("refused") || kz.log().contains("not pinned"),
        "{}",
        kz.log()
    );
    kz.stop();
    am.stop();
}

#[test]
fn an_oversize_envelope_is_refused_with_a_receipt_code() {
    let t = tempfile::tempdir().unwrap();
    let (mut kz, mut by) = pair(t.path());
    by.edit_config("max_envelope_bytes = 335544320", "max_envelope_bytes = 8192");
    kz.start();
    by.start();
    let big = vec![7u8; 50_000];
    let (id, doc) = message(&kz, "request", "by.mvd", None, &big);
    submit(&kz, &doc);
    let status = kz.wait_state(&id, &["rejected"], WAIT);
    assert_eq!(
        status["receipt"]["outcome"],
        json!({"status": "rejected", "code": "too_large"}),
        "{status}"
    );
    assert!(inbox_ids(&by).is_empty());
    kz.stop();
    by.stop();
}

#[test]
fn a_socket_user_not_on_the_allow_list_is_refused() {
    // Needs root to run a client as another user.
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: not running as root");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (mut kz, _by) = pair(t.path());
    kz.start();
    // Open the directory and socket to everyone so that only SO_PEERCRED decides.
    use std::os::unix::fs::PermissionsExt;
    for p in [t.path().to_path_buf(), kz.dir.clone(), kz.socket()] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "curl",
            "-s",
            "-w",
            "\n%{http_code}",
            "--unix-socket",
        ])
        .arg(kz.socket())
        .arg("http://localhost/v1/health")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.trim_end().ends_with("403"), "{text}");
    assert!(text.contains("unauthorized-caller"), "{text}");
    // The daemon's own user is still served.
    assert_eq!(kz.request("GET", "/v1/health", None).0, 200);
    kz.stop();
}

#[test]
fn a_peer_added_on_sighup_is_served_without_a_restart() {
    let t = tempfile::tempdir().unwrap();
    let mut kz = Gateway::init(t.path(), "kz.mvd");
    let mut by = Gateway::init(t.path(), "by.mvd");
    // kz.mvd knows by.mvd; by.mvd does not know kz.mvd yet and refuses it.
    kz.add_peer(&by, "kz-by-2019");
    fast(&kz);
    kz.start();
    by.start();
    let (id, doc) = note(&kz, "by.mvd");
    submit(&kz, &doc);
    // Refused while unknown: the message stays queued at kz.mvd.
    let st = kz.wait_state(&id, &["queued"], WAIT);
    assert_eq!(st["state"], json!("queued"));
    assert!(inbox_ids(&by).is_empty());
    by.add_peer(&kz, "kz-by-2019");
    by.reload();
    kz.wait_state(&id, &["delivered"], WAIT);
    assert_eq!(inbox_ids(&by), vec![id.clone()]);
    // The same envelope again would get the same receipt: resubmitting the
    // same message id is idempotent at the sender.
    let (code, body) = kz.post_json("/v1/messages", &doc);
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["state"], json!("delivered"));
    assert_eq!(inbox_ids(&by).len(), 1);
    // A different message under the same id is refused.
    let mut other = doc.clone();
    other["message"]["body"]["content"]["summary"] = json!("другой текст");
    let (code, body) = kz.post_json("/v1/messages", &other);
    assert_eq!(code, 409, "{body}");
    assert!(by.log().contains("configuration reloaded"), "{}", by.log());
    kz.stop();
    by.stop();
}

#[test]
fn a_peers_addresses_are_tried_in_turn() {
    let t = tempfile::tempdir().unwrap();
    let (mut kz, mut by) = pair(t.path());
    // The first address has nobody listening.
    let dead = konvert_tests::free_udp_port();
    kz.edit_config(
        &format!("addresses = [\"127.0.0.1:{}\"]", by.port),
        &format!("addresses = [\"127.0.0.1:{dead}\", \"127.0.0.1:{}\"]", by.port),
    );
    kz.start();
    by.start();
    let (id, doc) = note(&kz, "by.mvd");
    submit(&kz, &doc);
    kz.wait_state(&id, &["delivered"], WAIT);
    assert_eq!(inbox_ids(&by), vec![id]);
    kz.stop();
    by.stop();
}

#[test]
fn the_newcomer_demo_runs_and_keeps_working_directories() {
    let t = tempfile::tempdir().unwrap();
    let keep = t.path().join("demo");
    let out = konvert_tests::konvertctl(["demo", "--keep", keep.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.matches("accepted, verified").count(), 7, "{text}");
    // The refusal's grounds, and each case's state at both of its gateways
    // after each of its steps and at the end.
    assert!(
        text.contains(
            "grounds (Art. 10.4): contradicts_national_law; fields refused: administrative_liability"
        ),
        "{text}"
    );
    let case_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("case "))
        .collect();
    assert_eq!(
        case_lines.len(),
        6,
        "a case line per step of the two cases:\n{text}"
    );
    assert!(
        case_lines
            .iter()
            .all(|l| l.contains("kz.mvd ") && l.contains("by.mvd ")),
        "{text}"
    );
    assert!(
        text.contains("Cases as each gateway sees them at the end:"),
        "{text}"
    );
    for a in ["kz.mvd", "by.mvd", "am.police"] {
        assert!(keep.join(a).join("konvert.toml").exists());
    }
    // The kept directory is a working configuration.
    let mut kz = Gateway::existing(&keep, "kz.mvd");
    kz.start();
    let peers = kz.get_json("/v1/peers");
    assert_eq!(peers["items"].as_array().unwrap().len(), 2, "{peers}");
    kz.stop();
}

/// Polls `f` until it returns `Some`, for at most [`WAIT`] (a hang guard, not a timing assertion).
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "{what} did not happen");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn reason_codes(health: &Value) -> Vec<String> {
    health["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap().to_string())
        .collect()
}

fn receipt_page(gw: &Gateway, query: &str) -> (Vec<Value>, Option<String>) {
    let v = gw.get_json(&format!("/v1/receipts?{query}"));
    let items = v["items"].as_array().unwrap().clone();
    (items, v["next"].as_str().map(str::to_string))
}

/// Every receipt, page by page, following `next`.
fn all_receipts(gw: &Gateway, query: &str, limit: u32) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..100 {
        let mut q = vec![format!("limit={limit}")];
        if !query.is_empty() {
            q.push(query.to_string());
        }
        if let Some(a) = &after {
            q.push(format!("after={a}"));
        }
        let q = q.join("&");
        let (items, next) = receipt_page(gw, &q);
        assert!(items.len() <= limit as usize);
        out.extend(items);
        match next {
            Some(n) => after = Some(n),
            None => return out,
        }
    }
    panic!("the receipt list never ended");
}

fn envelope_ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|r| r["envelope_id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn receipts_of_both_directions_are_listed_paged_and_never_dropped() {
    let t = tempfile::tempdir().unwrap();
    let (mut kz, mut by) = pair(t.path());
    kz.start();
    by.start();
    let mut sent = Vec::new();
    for _ in 0..3 {
        let (id, doc) = note(&kz, "by.mvd");
        submit(&kz, &doc);
        sent.push(id);
    }
    let mut received = Vec::new();
    for _ in 0..2 {
        let (id, doc) = note(&by, "kz.mvd");
        submit(&by, &doc);
        received.push(id);
    }
    for id in &sent {
        kz.wait_state(id, &["delivered"], WAIT);
    }
    for id in &received {
        by.wait_state(id, &["delivered"], WAIT);
    }

    // Both directions, verified, in one order with and without a peer filter.
    let (all, next) = receipt_page(&kz, "limit=100");
    assert!(next.is_none());
    assert_eq!(all.len(), 5, "{all:?}");
    assert!(all.iter().all(|r| r["verified"] == json!(true)), "{all:?}");
    let ids = envelope_ids(&all);
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "ordered by envelope id (time, then id)");
    assert_eq!(envelope_ids(&receipt_page(&kz, "peer=by.mvd").0), ids);
    let inbound = receipt_page(&kz, "direction=inbound").0;
    let mut expect = received.clone();
    expect.sort();
    assert_eq!(envelope_ids(&inbound), expect);
    for r in &inbound {
        assert_eq!(r["receiver"], json!("kz.mvd"));
        assert_eq!(r["sender"], json!("by.mvd"));
        assert_eq!(r["outcome"]["status"], json!("accepted"));
    }
    assert_eq!(receipt_page(&kz, "direction=outbound").0.len(), 3);
    assert!(receipt_page(&kz, "direction=inbound&state=rejected").0.is_empty());

    // Pages of two, following `next`, give the same list; with a peer too.
    assert_eq!(envelope_ids(&all_receipts(&kz, "", 2)), ids);
    assert_eq!(envelope_ids(&all_receipts(&kz, "peer=by.mvd", 2)), ids);
    let (page, next) = receipt_page(&kz, "limit=2");
    assert_eq!(page.len(), 2);
    let next = next.unwrap();
    let (rest, _) = receipt_page(&kz, &format!("limit=100&after={next}"));
    assert_eq!(envelope_ids(&rest), ids[2..].to_vec());
    // A cursor this gateway did not make is refused.
    let (code, body) = kz.request("GET", "/v1/receipts?after=nonsense", None);
    assert_eq!(code, 400, "{}", String::from_utf8_lossy(&body));

    // One inbound receipt: shown and exported like an outbound one.
    let one = kz.get_json(&format!("/v1/receipts/{}", received[0]));
    assert_eq!(one["direction"], json!("inbound"));
    assert_eq!(one["verified"], json!(true));
    let (code, raw) = kz.request("GET", &format!("/v1/receipts/{}/raw", received[0]), None);
    assert_eq!(code, 200);
    assert!(!raw.is_empty());
    let st = kz.get_json(&format!("/v1/messages/{}", received[0]));
    assert_eq!(st["receipt"]["direction"], json!("inbound"));

    // konvertctl follows the pages.
    let out = konvert_tests::konvertctl([
        "--config",
        kz.config().to_str().unwrap(),
        "--json",
        "receipts",
        "--limit",
        "2",
        "--all",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(envelope_ids(v["items"].as_array().unwrap()), ids);

    // by.mvd removed from the configuration: its receipts stay listed,
    // unverified, with the reason; the ones kz.mvd issued stay verified.
    let cfg = std::fs::read_to_string(kz.config()).unwrap();
    let cut = cfg.find("\n[[peers]]").unwrap();
    std::fs::write(kz.config(), &cfg[..cut]).unwrap();
    kz.reload();
    let all = eventually("reload", || {
        let (all, _) = receipt_page(&kz, "limit=100");
        all.iter().any(|r| r["verified"] == json!(false)).then_some(all)
    });
    assert_eq!(envelope_ids(&all), ids, "nothing dropped");
    for r in &all {
        if r["direction"] == json!("outbound") {
            assert_eq!(r["verified"], json!(false), "{r}");
            assert_eq!(r["unverified_reason"], json!("peer_not_configured"), "{r}");
            assert_eq!(r["outcome"]["status"], json!("accepted"));
            assert!(r["envelope_digest"].as_str().is_some(), "{r}");
        } else {
            assert_eq!(r["verified"], json!(true), "{r}");
        }
    }
    kz.stop();
    by.stop();
}

#[test]
fn a_peer_removed_on_sighup_is_disconnected_and_its_queue_waits_until_it_is_back() {
    let t = tempfile::tempdir().unwrap();
    let mut kz = Gateway::init(t.path(), "kz.mvd");
    let mut by = Gateway::init(t.path(), "by.mvd");
    let mut am = Gateway::init(t.path(), "am.police");
    kz.add_peer(&by, "kz-by-2019");
    kz.add_peer(&am, "kz-am-2024");
    by.add_peer(&kz, "kz-by-2019");
    am.add_peer(&kz, "kz-am-2024");
    for g in [&kz, &by, &am] {
        fast(g);
    }
    kz.start();
    by.start();
    // Connections both ways between kz.mvd and by.mvd.
    let (id, doc) = note(&kz, "by.mvd");
    submit(&kz, &doc);
    kz.wait_state(&id, &["delivered"], WAIT);
    let (id, doc) = note(&by, "kz.mvd");
    submit(&by, &doc);
    by.wait_state(&id, &["delivered"], WAIT);
    assert!(kz.get_json("/v1/health")["connections"].as_u64().unwrap() >= 1);
    // am.police is down: two messages wait in kz.mvd's outbox.
    let mut queued = Vec::new();
    for _ in 0..2 {
        let (id, mut doc) = note(&kz, "am.police");
        doc["message"]["header"]["agreement"] = json!("kz-am-2024");
        submit(&kz, &doc);
        queued.push(id);
    }

    // Both peers removed; SIGHUP.
    let full = std::fs::read_to_string(kz.config()).unwrap();
    let cut = full.find("\n[[peers]]").unwrap();
    std::fs::write(kz.config(), &full[..cut]).unwrap();
    kz.reload();
    // Its connections are closed (by.mvd sees its end too) ...
    eventually("connections to the removed peer closed", || {
        (kz.get_json("/v1/health")["connections"] == json!(0)).then_some(())
    });
    eventually("by.mvd sees the connection closed", || {
        by.log().contains("peer connection closed").then_some(())
    });
    assert!(kz.get_json("/v1/peers")["items"].as_array().unwrap().is_empty());
    // ... and the queue stays, reported as paused.
    for id in &queued {
        let st = kz.get_json(&format!("/v1/messages/{id}"));
        assert!(
            ["queued", "sent"].contains(&st["state"].as_str().unwrap()),
            "{st}"
        );
        assert_eq!(st["paused"], json!("peer_not_configured"), "{st}");
    }
    let health = kz.get_json("/v1/health");
    assert_eq!(health["status"], json!("degraded"), "{health}");
    let paused = health["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["code"] == json!("messages_paused"))
        .unwrap_or_else(|| panic!("{health}"));
    assert_eq!(paused["peer"], json!("am.police"));
    assert_eq!(paused["count"], json!(2));

    // am.police comes up and both peers are added again: the queue is delivered.
    am.start();
    std::fs::write(kz.config(), &full).unwrap();
    kz.reload();
    for id in &queued {
        let st = kz.wait_state(id, &["delivered"], WAIT);
        assert!(st.get("paused").is_none(), "{st}");
        assert!(st["attempts"].as_u64().unwrap() >= 1, "{st}");
        assert!(st["times"]["sent"].as_str().is_some(), "{st}");
        assert!(st["times"]["delivered"].as_str().is_some(), "{st}");
    }
    let mut got = inbox_ids(&am);
    got.sort();
    queued.sort();
    assert_eq!(got, queued, "each queued message exactly once");
    let (id, doc) = note(&kz, "by.mvd");
    submit(&kz, &doc);
    kz.wait_state(&id, &["delivered"], WAIT);
    for g in [&mut kz, &mut by, &mut am] {
        g.stop();
    }
}

#[test]
fn health_is_degraded_with_machine_readable_reasons() {
    let t = tempfile::tempdir().unwrap();
    let (mut kz, by) = pair(t.path());
    kz.edit_config("max_undelivered_age = \"1h\"", "max_undelivered_age = \"1s\"");
    kz.edit_config(
        "min_free_bytes = 1073741824",
        "min_free_bytes = 9223372036854775807",
    );
    kz.start();
    // Nothing to deliver yet: only the disk (whose threshold is above any real disk).
    let h = kz.get_json("/v1/health");
    assert_eq!(h["status"], json!("degraded"), "{h}");
    assert_eq!(reason_codes(&h), vec!["disk_space_low".to_string()], "{h}");
    // by.mvd never starts: the message is retried, the peer becomes unreachable,
    // and the message grows older than its threshold.
    let (id, doc) = note(&kz, "by.mvd");
    submit(&kz, &doc);
    let h = eventually("peer_unreachable and undelivered_too_old", || {
        let h = kz.get_json("/v1/health");
        let codes = reason_codes(&h);
        (codes.contains(&"peer_unreachable".to_string())
            && codes.contains(&"undelivered_too_old".to_string()))
        .then_some(h)
    });
    let r = h["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["code"] == json!("peer_unreachable"))
        .unwrap();
    assert_eq!(r["peer"], json!(by.authority));
    assert!(r["count"].as_u64().unwrap() >= 3, "{r}");
    let st = kz.get_json(&format!("/v1/messages/{id}"));
    assert!(st["attempts"].as_u64().unwrap() >= 3, "{st}");
    // konvertctl shows the reasons; degraded is still exit status 0.
    let out = konvert_tests::konvertctl(["--config", kz.config().to_str().unwrap(), "health"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("peer_unreachable"));

    // Two attempts at most: the attempts before the restart count (the
    // store keeps them), so the message fails at its first attempt after it.
    kz.stop();
    let retries = |g: &Gateway| g.log().matches("delivery failed; will retry").count();
    let before = retries(&kz);
    kz.edit_config("max_attempts = 50", "max_attempts = 2");
    kz.start();
    let st = kz.wait_state(&id, &["failed"], WAIT);
    assert!(st["attempts"].as_u64().unwrap() >= 4, "{st}");
    assert_eq!(retries(&kz), before, "no retry after the restart");
    let h = kz.get_json("/v1/health");
    let failed = h["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["code"] == json!("failed_messages"))
        .unwrap_or_else(|| panic!("{h}"));
    assert_eq!(failed["count"], json!(1));
    kz.stop();
}

#[test]
fn unused_uploads_expire() {
    let t = tempfile::tempdir().unwrap();
    let (mut kz, _by) = pair(t.path());
    kz.edit_config("upload_max_age = \"24h\"", "upload_max_age = \"2s\"");
    kz.start();
    let (code, body) = kz.request("POST", "/v1/uploads", Some(("application/pdf", b"%PDF-1.7")));
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
    let up: Value = serde_json::from_slice(&body).unwrap();
    assert!(up["expires"].as_str().is_some(), "{up}");
    // A small upload is held in memory: its bytes never reach the disk.
    let uploads = kz.dir.join("data/uploads");
    assert!(!uploads.join(up["id"].as_str().unwrap()).exists());
    // One over 1 MiB is written to a file.
    let big_body = vec![b'x'; (1 << 20) + 1];
    let (code, body) = kz.request("POST", "/v1/uploads", Some(("application/pdf", &big_body)));
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
    let big: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(big["length"], json!(big_body.len()));
    let file = uploads.join(big["id"].as_str().unwrap());
    assert!(file.exists());
    eventually("the unused uploads are swept", || (!file.exists()).then_some(()));
    // A message naming it is refused, naming the attachment.
    let mut m = example("unsolicited_information");
    m["header"]["id"] = json!(new_id());
    m["header"]["time"] = json!(konvert_envelope::model::Timestamp::now().to_string());
    let n = upload_ref_all(&mut m, &format!("upload:{}", up["id"].as_str().unwrap()));
    assert!(n > 0);
    let (code, body) = kz.post_json("/v1/messages", &json!({"message": m, "signatory": "head"}));
    assert_eq!(code, 422, "{body}");
    assert!(body.to_string().contains("expired"), "{body}");
    assert!(kz.log().contains("expired uploads removed"), "{}", kz.log());
    kz.stop();
}

#[test]
fn an_upload_held_in_memory_is_gone_after_a_restart_and_a_file_upload_is_not() {
    let t = tempfile::tempdir().unwrap();
    let (mut kz, _by) = pair(t.path());
    kz.start();
    let upload = |kz: &Gateway, bytes: &[u8]| -> String {
        let (code, body) = kz.request("POST", "/v1/uploads", Some(("application/pdf", bytes)));
        assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
        let up: Value = serde_json::from_slice(&body).unwrap();
        up["id"].as_str().unwrap().to_string()
    };
    let small = upload(&kz, b"%PDF-1.7 small");
    let large = upload(&kz, &vec![b'y'; (1 << 20) + 1]);
    // A crash before the submission: the upload is not a message yet.
    kz.kill();
    kz.start();
    let submit_naming = |kz: &Gateway, up: &str| {
        let mut m = example("unsolicited_information");
        m["header"]["id"] = json!(new_id());
        m["header"]["time"] = json!(konvert_envelope::model::Timestamp::now().to_string());
        assert!(upload_ref_all(&mut m, &format!("upload:{up}")) > 0);
        kz.post_json("/v1/messages", &json!({"message": m, "signatory": "head"}))
    };
    let (code, body) = submit_naming(&kz, &small);
    assert_eq!(code, 422, "{body}");
    assert!(body.to_string().contains("does not exist"), "{body}");
    // The one in a file (over 1 MiB) survived and is sealed as usual.
    let (code, body) = submit_naming(&kz, &large);
    assert_eq!(code, 202, "{body}");
    kz.stop();
}

#[test]
fn an_upload_two_submissions_name_at_once_goes_into_one_message() {
    let t = tempfile::tempdir().unwrap();
    let (mut kz, _by) = pair(t.path());
    kz.start();
    // Large enough (a file, sealed in a stream) that the two overlap.
    let bytes = vec![b'z'; 8 << 20];
    let (code, body) = kz.request("POST", "/v1/uploads", Some(("application/pdf", &bytes)));
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
    let up: Value = serde_json::from_slice(&body).unwrap();
    let file = format!("upload:{}", up["id"].as_str().unwrap());
    let answers: Vec<(u16, Value)> = std::thread::scope(|s| {
        let tasks: Vec<_> = (0..2)
            .map(|_| {
                let mut m = example("unsolicited_information");
                m["header"]["id"] = json!(new_id());
                m["header"]["time"] = json!(konvert_envelope::model::Timestamp::now().to_string());
                assert!(upload_ref_all(&mut m, &file) > 0);
                let kz = &kz;
                s.spawn(move || kz.post_json("/v1/messages", &json!({"message": m, "signatory": "head"})))
            })
            .collect();
        tasks.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let accepted = answers.iter().filter(|(code, _)| *code == 202).count();
    assert_eq!(accepted, 1, "{answers:?}");
    // The other is refused: the upload is in use, or already spent.
    let (code, refused) = answers.iter().find(|(code, _)| *code != 202).unwrap();
    assert_eq!(*code, 422, "{refused}");
    let text = refused.to_string();
    assert!(
        text.contains("is being used by another submission") || text.contains("does not exist"),
        "{refused}"
    );
    kz.stop();
}

/// Points every attachment of `v` at `file`; returns how many.
fn upload_ref_all(v: &mut Value, file: &str) -> usize {
    match v {
        Value::Object(map) if map.contains_key("media_type") && map.contains_key("sha256") => {
            let mt = map["media_type"].clone();
            *v = json!({ "media_type": mt, "file": file });
            1
        }
        Value::Object(map) => map.values_mut().map(|x| upload_ref_all(x, file)).sum(),
        Value::Array(a) => a.iter_mut().map(|x| upload_ref_all(x, file)).sum(),
        _ => 0,
    }
}

#[test]
fn the_attempt_limit_counts_attempts_made_before_a_restart() {
    let t = tempfile::tempdir().unwrap();
    let (mut kz, by) = pair(t.path());
    // by.mvd never runs: every attempt fails.
    kz.edit_config("max_attempts = 50", "max_attempts = 4");
    kz.edit_config("initial_backoff = \"100ms\"", "initial_backoff = \"1s\"");
    kz.start();
    let (id, doc) = note(&kz, "by.mvd");
    submit(&kz, &doc);
    let retries = |g: &Gateway| g.log().matches("delivery failed; will retry").count();
    eventually("two failed attempts", || (retries(&kz) >= 2).then_some(()));
    kz.stop();
    let before = retries(&kz);
    kz.start();
    let status = kz.wait_state(&id, &["failed"], WAIT);
    assert!(
        status["error"]
            .as_str()
            .is_some_and(|e| e.contains("undeliverable after 4 attempts")),
        "{status}"
    );
    // Four attempts in all: those before the restart counted (the store
    // keeps them), so the restarted daemon needed only the rest.
    let after = retries(&kz) - before;
    assert_eq!(
        before + after,
        3,
        "retries before/after the restart: {before}/{after}\n{}",
        kz.log()
    );
    drop(by);
}
