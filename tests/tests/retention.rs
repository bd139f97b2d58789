//! Retention end to end: a real `konvertd` destroys a received message when
//! its retention period ends, by itself (its sweeper), and says so.
//! Time is shifted through the test clock (`KONVERT_TEST_CLOCK_FILE`).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use konvert_tests::{example, new_id, Gateway};
use serde_json::json;

#[test]
fn the_sweeper_destroys_a_received_message_when_its_retention_ends() {
    let tmp = tempfile::tempdir().unwrap();
    let mut kz = Gateway::init(tmp.path(), "kz.mvd");
    let mut by = Gateway::init(tmp.path(), "by.mvd");
    kz.add_peer(&by, "kz-by-2019");
    by.add_peer(&kz, "kz-by-2019");
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

    let mut m = example("request");
    let id = new_id();
    m["header"]["id"] = json!(id);
    m["header"]["time"] = json!(konvert_envelope::model::Timestamp::now().to_string());
    m["header"]["from"] = json!("kz.mvd");
    m["header"]["to"] = json!("by.mvd");
    m["header"].as_object_mut().unwrap().remove("in_reply_to");
    strip_attachments(&mut m);
    let (code, body) = kz.post_json("/v1/messages", &json!({ "message": m, "signatory": "head" }));
    assert_eq!(code, 202, "{body}");
    kz.wait_state(&id, &["delivered"], Duration::from_secs(30));
    let (code, _) = by.request("GET", &format!("/v1/inbox/{id}"), None);
    assert_eq!(code, 200);

    // Two days later (the test clock), the sweeper destroys it unprompted.
    std::fs::write(&clock, "2d").unwrap();
    by.reload();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = by.request("GET", &format!("/v1/inbox/{id}"), None);
        if code != 200 {
            let text = String::from_utf8_lossy(&body);
            assert_eq!(code, 404, "{text}");
            assert!(text.contains("destroyed"), "{text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not destroyed by the sweeper:\n{}",
            by.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The receipt by.mvd signed for it outlives the message (audit
    // retention) and still verifies.
    let receipts = by.get_json("/v1/receipts?direction=inbound&limit=100");
    let ours = receipts["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["message_id"] == json!(id))
        .unwrap_or_else(|| panic!("no receipt of {id}: {receipts}"));
    assert_eq!(ours["verified"], json!(true), "{ours}");
    assert_eq!(ours["outcome"]["status"], json!("accepted"), "{ours}");
    let (code, raw) = by.request("GET", &format!("/v1/receipts/{id}/raw"), None);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&raw));
    assert!(!raw.is_empty());
    let listed = by.get_json("/v1/inbox?limit=100");
    assert!(
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["id"] != json!(id)),
        "{listed}"
    );
    // The sweep logs its counts when it has finished all its steps, a moment
    // after the first step made the message unreadable.
    let deadline = Instant::now() + Duration::from_secs(30);
    let log = loop {
        let log = by.log();
        if log.contains("retention sweep") {
            break log;
        }
        assert!(Instant::now() < deadline, "no sweep logged:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        log.contains("test clock"),
        "the shifted clock is announced:\n{log}"
    );

    // Past the audit retention (5 years by default) its metadata and its
    // case's go too, and with them the agreement procedure's records of
    // them: the state does not keep every message ever exchanged.
    std::fs::write(&clock, "1900d").unwrap();
    by.reload();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, _) = by.request("GET", &format!("/v1/messages/{id}"), None);
        let log = by.log();
        if code == 404 && log.contains("procedure records of purged messages and cases removed") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metadata or procedure records not purged (HTTP {code}):\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    by.stop();
    kz.stop();
}

/// The request example without its attachments (uploads are not needed here).
fn strip_attachments(v: &mut serde_json::Value) {
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
