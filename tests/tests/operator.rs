//! The operator's tools end to end, on real daemons through `konvertctl`:
//! `audit list/verify`, `story`, `status`, `retention` (and `purge`), the
//! metrics endpoint, and `store rekey`. Time is shifted through the test
//! clock (`KONVERT_TEST_CLOCK_FILE`), never waited for.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use konvert_tests::{example, konvertctl, new_id, Gateway};
use serde_json::{json, Value};

fn ctl(g: &Gateway, args: &[&str]) -> Output {
    let config = g.config();
    let mut all = vec!["--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    konvertctl(all)
}

fn ctl_json(g: &Gateway, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = ctl(g, &all);
    assert!(
        out.status.success(),
        "konvertctl {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        g.log()
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn ctl_text(g: &Gateway, args: &[&str]) -> String {
    let out = ctl(g, args);
    assert!(
        out.status.success(),
        "konvertctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET /metrics` over plain TCP; returns status line and body.
fn scrape(port: u16) -> (String, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let (head, body) = buf.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// Sends a request (without attachments) from `from` to `to`; returns its id once delivered.
fn send(from: &Gateway, to: &str) -> String {
    let mut m = example("request");
    let id = new_id();
    m["header"]["id"] = json!(id);
    m["header"]["time"] = json!(konvert_envelope::model::Timestamp::now().to_string());
    m["header"]["from"] = json!(from.authority);
    m["header"]["to"] = json!(to);
    m["header"].as_object_mut().unwrap().remove("in_reply_to");
    strip_attachments(&mut m);
    let (code, body) = from.post_json("/v1/messages", &json!({ "message": m, "signatory": "head" }));
    assert_eq!(code, 202, "{body}");
    from.wait_state(&id, &["delivered"], Duration::from_secs(30));
    id
}

fn steps(story: &Value) -> Vec<(String, String)> {
    story["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["step"].as_str().unwrap().to_owned(),
                s["link"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn has_step(story: &Value, step: &str, link: &str) -> bool {
    steps(story).iter().any(|(s, l)| s == step && l == link)
}

/// The first step of `story` named `step`.
fn step<'a>(story: &'a Value, step: &str) -> &'a Value {
    story["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == step)
        .unwrap_or_else(|| panic!("no {step} step: {story}"))
}

fn write_key(path: &Path, byte: u8) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(hex::encode([byte; 32]).as_bytes()).unwrap();
}

#[test]
fn audit_story_status_metrics_retention_and_rekey() {
    let tmp = tempfile::tempdir().unwrap();
    let mut kz = Gateway::init(tmp.path(), "kz.mvd");
    let mut by = Gateway::init(tmp.path(), "by.mvd");
    kz.add_peer(&by, "kz-by-2019");
    by.add_peer(&kz, "kz-by-2019");
    let port = free_tcp_port();
    kz.edit_config(
        "master_key_file = \"keys/master.key\"",
        &format!("master_key_file = \"keys/master.key\"\n\n[metrics]\nlisten = \"127.0.0.1:{port}\""),
    );
    // by.mvd keeps messages for one day and sweeps every second.
    by.edit_config(
        "master_key_file = \"keys/master.key\"",
        "master_key_file = \"keys/master.key\"\nretention_default = \"1d\"\nsweep_interval = \"1s\"",
    );
    let clock = tmp.path().join("by-clock");
    std::fs::write(&clock, "0").unwrap();
    by.env
        .push(("KONVERT_TEST_CLOCK_FILE".into(), clock.to_str().unwrap().into()));
    kz.start();
    by.start();
    let id = send(&kz, "by.mvd");

    // The audit trail verifies and lists the message's events.
    let v = ctl_json(&kz, &["audit", "verify"]);
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["entries"].as_u64().unwrap() >= 3, "{v}");
    assert!(v.get("head_log").is_none(), "no head log configured: {v}");
    let text = ctl_text(&kz, &["audit", "verify"]);
    assert!(text.contains("intact"), "{text}");
    let list = ctl_json(&kz, &["audit", "list", "--limit", "1000"]);
    let mine: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["message"] == json!(id))
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(
        mine.contains(&"accepted") && mine.contains(&"delivered"),
        "{list}"
    );
    let page = ctl_json(&kz, &["audit", "list", "--from", "1", "--limit", "2"]);
    assert_eq!(page["items"][0]["seq"], 1, "{page}");
    assert_eq!(page["next"], "3", "{page}");

    // The sender's story: accepted, sent, delivered, each tied to the message.
    let story = ctl_json(&kz, &["story", &id]);
    for step in ["accepted", "sent", "delivered"] {
        assert!(has_step(&story, step, "message"), "{step}: {story}");
    }
    assert_eq!(story["complete"], true, "{story}");
    assert_eq!(story["direction"], "outbound");
    // Accepted into the outbox already signed and sealed: one event that says so.
    let accepted = step(&story, "accepted");
    assert_eq!(accepted["detail"], "sealed", "{story}");
    // It names the envelope by the digest its receipt commits to.
    let receipt = &ctl_json(&kz, &["status", &id])["receipt"];
    assert!(accepted["digest"].is_string(), "{story}");
    assert_eq!(
        accepted["digest"], receipt["envelope_digest"],
        "{story} {receipt}"
    );
    let text = ctl_text(&kz, &["story", &id]);
    assert!(
        text.contains("delivered") && text.contains("audit events read"),
        "{text}"
    );

    // The receiver's story: received, its receipt issued, then acknowledged.
    let (code, _) = by.request("POST", &format!("/v1/inbox/{id}/ack"), None);
    assert_eq!(code, 200);
    let story = ctl_json(&by, &["story", &id]);
    for step in ["received", "acknowledged"] {
        assert!(has_step(&story, step, "message"), "{step}: {story}");
    }
    assert_eq!(story["direction"], "inbound");
    let received = step(&story, "received");
    assert_eq!(received["digest"], receipt["envelope_digest"], "{story}");
    let out = ctl(&by, &["story", &new_id()]);
    assert!(!out.status.success());

    // Two uploads no message uses yet: one held in memory, one in a file.
    for len in [1000, (1 << 20) + 1] {
        let (code, body) = kz.request("POST", "/v1/uploads", Some(("application/pdf", &vec![b'%'; len])));
        assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
    }

    // Status: peers, queues, keys, certificate, uploads; text and JSON.
    let st = ctl_json(&kz, &["status"]);
    assert_eq!(
        st["uploads"],
        serde_json::json!({"in_memory": 1, "in_memory_bytes": 1000,
            "files": 1, "file_bytes": (1 << 20) + 1}),
        "{st}"
    );
    assert_eq!(st["authority"], "kz.mvd");
    assert_eq!(st["peers"][0]["authority"], "by.mvd", "{st}");
    assert_eq!(st["peers"][0]["queue_depth"], 0, "{st}");
    assert_eq!(st["outbox_undelivered"], 0, "{st}");
    assert!(st["store_bytes"].as_u64().unwrap() > 0, "{st}");
    let keys = st["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 4, "{st}");
    assert!(keys.iter().all(|k| k.get("error").is_none()), "{st}");
    let cert = keys.iter().find(|k| k["what"] == "tls_certificate").unwrap();
    assert!(cert["not_after"].as_str().unwrap() > "2027", "{st}");
    let text = ctl_text(&kz, &["status"]);
    assert!(
        text.contains("Peers:") && text.contains("by.mvd") && text.contains("tls_certificate"),
        "{text}"
    );
    assert!(
        text.contains("1 in memory (1000 B), 1 in files (1.0 MiB)"),
        "{text}"
    );
    // With an id, the message's status as before.
    let s = ctl_json(&kz, &["status", &id]);
    assert_eq!(s["state"], "delivered");

    // Metrics on loopback: the same figures, no message ids.
    let (status, body) = scrape(port);
    assert!(status.contains("200"), "{status}");
    assert!(body.contains("konvert_up 1\n"), "{body}");
    assert!(
        body.contains("konvert_peer_queue_depth{peer=\"by.mvd\"} 0\n"),
        "{body}"
    );
    assert!(body.contains("konvert_outbox_undelivered 0\n"), "{body}");
    assert!(
        body.contains("konvert_uploads_waiting{held=\"memory\"} 1\n")
            && body.contains("konvert_uploads_waiting{held=\"file\"} 1\n"),
        "{body}"
    );
    assert!(
        body.contains("konvert_tls_certificate_expiry_timestamp_seconds "),
        "{body}"
    );
    assert!(body.contains("# TYPE konvert_sweeps_total counter"), "{body}");
    assert!(!body.contains(&id), "no message ids in metrics");

    // Retention before expiry: the received message is counted for its day.
    let r = ctl_json(&by, &["retention", "--by", "day"]);
    let inbound: u64 = r["upcoming"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["inbound"].as_u64().unwrap())
        .sum();
    assert_eq!(inbound, 1, "{r}");
    assert_eq!(r["period"], "day");
    // Purging a case that does not exist is refused.
    let out = ctl(&by, &["retention", "purge", "--case", &new_id()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no such case"), "{err}");

    // Re-key by.mvd's store offline: refused while konvertd runs, then done;
    // the received message stays readable under the new master key.
    let new_key = by.dir.join("keys/master.key.new");
    write_key(&new_key, 0x5a);
    let out = ctl(
        &by,
        &[
            "store",
            "rekey",
            "--config",
            by.config().to_str().unwrap(),
            "--new-master-key",
            new_key.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success(), "re-key beside a running daemon");
    by.stop();
    let text = ctl_text(
        &by,
        &[
            "store",
            "rekey",
            "--config",
            by.config().to_str().unwrap(),
            "--new-master-key",
            new_key.to_str().unwrap(),
        ],
    );
    assert!(text.contains("re-sealed"), "{text}");
    // The old key no longer opens the store.
    by.edit_config(
        "master_key_file = \"keys/master.key\"",
        "master_key_file = \"keys/master.key.new\"",
    );
    by.start();
    let (code, _) = by.request("GET", &format!("/v1/inbox/{id}"), None);
    assert_eq!(code, 200, "readable after the re-key");

    // Two days later the sweeper destroys it; retention and story say so.
    std::fs::write(&clock, "2d").unwrap();
    by.reload();
    let deadline = Instant::now() + Duration::from_secs(30);
    let report = loop {
        let r = ctl_json(&by, &["retention"]);
        if r["sweeper"]["destroyed"].as_u64().unwrap() >= 1 {
            break r;
        }
        assert!(Instant::now() < deadline, "not destroyed: {r}\n{}", by.log());
        std::thread::sleep(Duration::from_millis(200));
    };
    let expired: Vec<&Value> = report["destroyed"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["reason"] == "expired")
        .collect();
    assert!(!expired.is_empty(), "{report}");
    assert!(expired[0]["count"].as_u64().unwrap() >= 1, "{report}");
    assert_eq!(expired[0]["ids_digest"].as_str().unwrap().len(), 64, "{report}");
    let text = ctl_text(&by, &["retention"]);
    assert!(
        text.contains("expired") && text.contains("Sweeper since start"),
        "{text}"
    );
    let story = ctl_json(&by, &["story", &id]);
    assert!(story["destroyed"].is_string(), "{story}");
    assert!(has_step(&story, "key_destroyed", "key_hour"), "{story}");
    assert!(has_step(&story, "received", "message"), "{story}");
    let v = ctl_json(&by, &["audit", "verify"]);
    assert_eq!(v["ok"], true, "{v}");

    by.stop();
    kz.stop();
}

#[test]
fn audit_verify_finds_a_truncation_against_the_head_log() {
    let tmp = tempfile::tempdir().unwrap();
    let mut kz = Gateway::init(tmp.path(), "kz.mvd");
    let log = tmp.path().join("kz-audit-heads.log");
    kz.edit_config(
        "master_key_file = \"keys/master.key\"",
        &format!(
            "master_key_file = \"keys/master.key\"\nsweep_interval = \"1s\"\naudit_head_log = \"{}\"",
            log.display()
        ),
    );
    kz.start();
    // The sweeper publishes heads; wait for one.
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(&log).unwrap_or_default().is_empty() {
        assert!(Instant::now() < deadline, "no head published:\n{}", kz.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let v = ctl_json(&kz, &["audit", "verify"]);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["head_log"]["ok"], true, "{v}");
    let end = v["end"].as_u64().unwrap();

    // A head from after the chain's end: the newest entries were removed.
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    writeln!(
        f,
        "{{\"seq\":{},\"hash\":\"{}\",\"at\":1781622000}}",
        end + 50,
        "ab".repeat(32)
    )
    .unwrap();
    drop(f);
    let out = ctl(&kz, &["--json", "audit", "verify"]);
    assert!(!out.status.success(), "exit status 1 when broken");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false, "{v}");
    assert!(v.get("broken").is_none(), "the chain itself is intact: {v}");
    assert_eq!(v["head_log"]["broken"]["kind"], "truncated", "{v}");
    let out = ctl(&kz, &["audit", "verify"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("truncated") && text.contains("FAILED"), "{text}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not verify"));
    kz.stop();
}

#[test]
fn a_metrics_address_off_loopback_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let kz = Gateway::init(tmp.path(), "kz.mvd");
    kz.edit_config(
        "master_key_file = \"keys/master.key\"",
        "master_key_file = \"keys/master.key\"\n\n[metrics]\nlisten = \"0.0.0.0:9464\"",
    );
    let out = std::process::Command::new(konvert_tests::bin("konvertd"))
        .arg("--config")
        .arg(kz.config())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("metrics.listen") && err.contains("loopback"),
        "{err}"
    );
}

#[test]
fn every_operator_command_has_help_with_an_example() {
    for cmd in [
        &["audit", "--help"][..],
        &["audit", "list", "--help"],
        &["audit", "verify", "--help"],
        &["story", "--help"],
        &["retention", "--help"],
        &["retention", "purge", "--help"],
        &["status", "--help"],
        &["store", "rekey", "--help"],
    ] {
        let out = konvertctl(cmd);
        assert!(out.status.success(), "{cmd:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Example:\n  konvertctl") || text.contains("Example:\n  systemctl"),
            "{cmd:?}: {text}"
        );
    }
}

/// The request example without its attachments (uploads are not needed here).
fn strip_attachments(v: &mut Value) {
    if let Some(map) = v.as_object_mut() {
        map.retain(|k, _| k != "attachments" && k != "photo");
        for (_, x) in map.iter_mut() {
            strip_attachments(x);
        }
    } else if let Some(a) = v.as_array_mut() {
        a.retain(|x| !(x.get("media_type").is_some() && x.get("sha256").is_some()));
        for x in a {
            strip_attachments(x);
        }
    }
}

/// The store's sled database under a gateway directory (its data directory).
fn sled_dir(g: &Gateway) -> std::path::PathBuf {
    fn find(d: &Path) -> Option<std::path::PathBuf> {
        for e in std::fs::read_dir(d).ok()? {
            let p = e.ok()?.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n == "sled") {
                    return Some(p);
                }
                if let Some(f) = find(&p) {
                    return Some(f);
                }
            }
        }
        None
    }
    find(&g.dir).expect("no sled directory under the gateway")
}

/// `konvertctl audit verify` on a chain altered on disk while konvertd was
/// stopped: exit status 1, and the position (entry) and kind of the break.
#[test]
fn audit_verify_says_where_a_chain_altered_on_disk_breaks() {
    let tmp = tempfile::tempdir().unwrap();
    let mut kz = Gateway::init(tmp.path(), "kz.mvd");
    let mut by = Gateway::init(tmp.path(), "by.mvd");
    kz.add_peer(&by, "kz-by-2019");
    by.add_peer(&kz, "kz-by-2019");
    kz.start();
    by.start();
    send(&kz, "by.mvd");
    send(&kz, "by.mvd");
    let before = ctl_json(&kz, &["audit", "verify"]);
    assert_eq!(before["ok"], true, "{before}");
    kz.stop();
    by.stop();

    // An insider with the disk changes one byte of a block in the middle of
    // the chain (not the newest one, which the store reads at start).
    let db = sled::open(sled_dir(&kz)).unwrap();
    let blocks: Vec<(sled::IVec, sled::IVec)> = db.scan_prefix(b"A").map(|r| r.unwrap()).collect();
    assert!(blocks.len() >= 4, "{} audit blocks", blocks.len());
    let (key, value) = &blocks[blocks.len() / 2];
    let seq = u64::from_be_bytes(key[1..9].try_into().unwrap());
    let mut altered = value.to_vec();
    let last = altered.len() - 1;
    altered[last] ^= 0x01;
    db.insert(key, altered).unwrap();
    db.flush().unwrap();
    drop(db);

    kz.start();
    let out = ctl(&kz, &["--json", "audit", "verify"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["broken"]["seq"], json!(seq), "{v}");
    assert_eq!(v["broken"]["kind"], "modified", "{v}");
    let out = ctl(&kz, &["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("BROKEN at entry {seq}: modified")) && text.contains("FAILED"),
        "{text}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not verify"));
    kz.stop();
}

/// `konvertctl status --json`: each peer's connection, last delivery,
/// queue and oldest undelivered message, the inbox size and the overdue
/// cases, with the values the exchange made.
#[test]
fn status_json_reports_peers_queues_inbox_and_overdue_cases() {
    let tmp = tempfile::tempdir().unwrap();
    let mut kz = Gateway::init(tmp.path(), "kz.mvd");
    let mut by = Gateway::init(tmp.path(), "by.mvd");
    kz.add_peer(&by, "kz-by-2019");
    by.add_peer(&kz, "kz-by-2019");
    let clock = tmp.path().join("kz-clock");
    std::fs::write(&clock, "0").unwrap();
    kz.env
        .push(("KONVERT_TEST_CLOCK_FILE".into(), clock.to_str().unwrap().into()));
    kz.start();
    by.start();
    let started = konvert_envelope::model::Timestamp::now().plus_secs(-1);
    let st = ctl_json(&kz, &["status"]);
    assert_eq!(st["peers"][0]["last_delivery"], Value::Null, "{st}");
    assert_eq!(st["cases_overdue"], 0, "{st}");
    let id1 = send(&kz, "by.mvd");

    let st = ctl_json(&kz, &["status"]);
    let peer = &st["peers"][0];
    assert_eq!(peer["authority"], "by.mvd", "{st}");
    assert_eq!(peer["connected"], true, "{st}");
    let last: konvert_envelope::model::Timestamp = peer["last_delivery"].as_str().unwrap().parse().unwrap();
    assert!(last >= started, "{st}");
    assert_eq!(peer["queue_depth"], 0, "{st}");
    assert_eq!(peer["oldest_undelivered"], Value::Null, "{st}");
    assert_eq!(st["outbox_undelivered"], 0, "{st}");
    // At by.mvd the request waits in the inbox for its application.
    let bst = ctl_json(&by, &["status"]);
    assert_eq!(bst["inbox_unacknowledged"], 1, "{bst}");

    // by.mvd goes down: the next request waits in kz.mvd's queue.
    by.stop();
    let mut m = example("request");
    let id2 = new_id();
    m["header"]["id"] = json!(id2);
    m["header"]["time"] = json!(konvert_envelope::model::Timestamp::now().to_string());
    m["header"].as_object_mut().unwrap().remove("in_reply_to");
    strip_attachments(&mut m);
    let queued_at = konvert_envelope::model::Timestamp::now().plus_secs(-1);
    let (code, body) = kz.post_json("/v1/messages", &json!({ "message": m, "signatory": "head" }));
    assert_eq!(code, 202, "{body}");
    let st = ctl_json(&kz, &["status"]);
    let peer = &st["peers"][0];
    assert_eq!(peer["queue_depth"], 1, "{st}");
    let oldest: konvert_envelope::model::Timestamp =
        peer["oldest_undelivered"].as_str().unwrap().parse().unwrap();
    assert!(oldest >= queued_at, "{st}");
    assert_eq!(
        peer["last_delivery"]
            .as_str()
            .unwrap()
            .parse::<konvert_envelope::model::Timestamp>()
            .unwrap(),
        last
    );
    assert_eq!(st["outbox_undelivered"], 1, "{st}");

    // 31 days on (Art. 10.3: 30 from the peer's receipt), the delivered
    // request's case is overdue at kz.mvd (the queued one opened none yet).
    std::fs::write(&clock, "31d").unwrap();
    kz.reload();
    let deadline = Instant::now() + Duration::from_secs(20);
    let st = loop {
        let st = ctl_json(&kz, &["status"]);
        if st["cases_overdue"].as_u64().unwrap() >= 1 {
            break st;
        }
        assert!(Instant::now() < deadline, "no overdue case: {st}\n{}", kz.log());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(st["cases_overdue"], 1, "{st}");
    assert_eq!(st["overdue"][0]["case"], json!(id1), "{st}");
    let text = ctl_text(&kz, &["status"]);
    assert!(text.contains("by.mvd"), "{text}");
    kz.stop();
}

/// Retention names ids, never content: each upcoming bucket's messages
/// (`retention --ids`, `retention show TIME`), and after a case purge the
/// destruction with its count and digest.
#[test]
fn retention_lists_the_ids_of_an_upcoming_bucket() {
    let tmp = tempfile::tempdir().unwrap();
    let mut kz = Gateway::init(tmp.path(), "kz.mvd");
    let mut by = Gateway::init(tmp.path(), "by.mvd");
    kz.add_peer(&by, "kz-by-2019");
    by.add_peer(&kz, "kz-by-2019");
    kz.start();
    by.start();
    let a = send(&kz, "by.mvd");
    let b = send(&kz, "by.mvd");

    let r = ctl_json(&by, &["retention", "--ids"]);
    let listed: Vec<(String, String, String)> = r["upcoming"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|bk| {
            let from = bk["from"].as_str().unwrap().to_string();
            assert_eq!(bk["ids_complete"], true, "{r}");
            bk["ids"].as_array().unwrap().iter().map(move |m| {
                (
                    from.clone(),
                    m["direction"].as_str().unwrap().to_string(),
                    m["id"].as_str().unwrap().to_string(),
                )
            })
        })
        .collect();
    for id in [&a, &b] {
        assert!(
            listed.iter().any(|(_, d, i)| d == "inbound" && i == id),
            "{id} not listed: {r}"
        );
    }
    // Without --ids: counts only.
    let plain = ctl_json(&by, &["retention"]);
    assert!(plain["upcoming"][0].get("ids").is_none(), "{plain}");
    // One bucket: `retention show TIME` lists that hour's messages only.
    let (from, _, _) = listed.iter().find(|(_, _, i)| *i == a).unwrap().clone();
    let shown = ctl_json(&by, &["retention", "show", &from]);
    let buckets = shown["upcoming"].as_array().unwrap();
    assert_eq!(buckets.len(), 1, "{shown}");
    assert_eq!(buckets[0]["from"], json!(from), "{shown}");
    assert!(shown.to_string().contains(&a), "{shown}");
    let text = ctl_text(&by, &["retention", "show", &from]);
    assert!(text.contains(&format!("inbound {a}")), "{text}");
    assert!(!text.contains("Сейткали") && !shown.to_string().contains("Сейткали"));

    // Early destruction of a's case: counted, with the ids' digest, and a
    // is no longer among what will be destroyed.
    let purged = ctl_json(&by, &["retention", "purge", "--case", &a]);
    assert_eq!(purged["destroyed"], 1, "{purged}");
    let r = ctl_json(&by, &["retention", "--ids"]);
    let early: Vec<&Value> = r["destroyed"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["reason"] == "early" && d["case"] == json!(a))
        .collect();
    assert_eq!(early.len(), 1, "{r}");
    assert_eq!(early[0]["count"], 1, "{r}");
    assert_eq!(early[0]["ids_digest"].as_str().unwrap().len(), 64, "{r}");
    let upcoming = r["upcoming"].to_string();
    assert!(!upcoming.contains(&a) && upcoming.contains(&b), "{r}");
    by.stop();
    kz.stop();
}

/// The destruction events name the destroyed ids (at most 512 each;
/// `AuditEvent::destroyed_events` in `Store::destroy_case_at` and
/// `Store::sweep`).
#[test]
fn retention_lists_the_ids_each_destruction_destroyed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut kz = Gateway::init(tmp.path(), "kz.mvd");
    let mut by = Gateway::init(tmp.path(), "by.mvd");
    kz.add_peer(&by, "kz-by-2019");
    by.add_peer(&kz, "kz-by-2019");
    by.edit_config(
        "master_key_file = \"keys/master.key\"",
        "master_key_file = \"keys/master.key\"\nretention_default = \"1d\"\nsweep_interval = \"1s\"",
    );
    let clock = tmp.path().join("by-clock");
    std::fs::write(&clock, "0").unwrap();
    by.env
        .push(("KONVERT_TEST_CLOCK_FILE".into(), clock.to_str().unwrap().into()));
    kz.start();
    by.start();
    let a = send(&kz, "by.mvd");
    let b = send(&kz, "by.mvd");
    ctl_json(&by, &["retention", "purge", "--case", &a]);
    std::fs::write(&clock, "2d").unwrap();
    by.reload();
    let deadline = Instant::now() + Duration::from_secs(30);
    let r = loop {
        let r = ctl_json(&by, &["retention", "--ids"]);
        if r["destroyed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["reason"] == "expired")
        {
            break r;
        }
        assert!(Instant::now() < deadline, "not destroyed: {r}\n{}", by.log());
        std::thread::sleep(Duration::from_millis(200));
    };
    let ids_of = |reason: &str| -> Vec<String> {
        r["destroyed"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["reason"] == reason)
            .flat_map(|d| {
                assert_eq!(d["ids_recorded"], true, "{d}");
                d["ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m["id"].as_str().unwrap().to_string())
            })
            .collect()
    };
    assert_eq!(ids_of("early"), std::slice::from_ref(&a), "{r}");
    assert!(ids_of("expired").contains(&b), "{r}");
    let text = ctl_text(&by, &["retention", "--ids"]);
    assert!(
        text.contains(&format!("inbound {a}")) && text.contains(&format!("inbound {b}")),
        "{text}"
    );
    let v = ctl_json(&by, &["audit", "verify"]);
    assert_eq!(v["ok"], true, "{v}");
    by.stop();
    kz.stop();
}
