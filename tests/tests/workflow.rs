//! End-to-end scenarios of the agreement's procedure (issue 5) over real
//! `konvertd` processes: request cases tracked on both sides with the same
//! state and deadline, clarifications, answers and refusals with grounds,
//! a second final answer refused, consent for onward transfer (Art. 11.3),
//! a revoked signatory's request refused (Art. 9.3, 9.4), and overdue cases
//! after the test clock passes 30 days (Art. 10.3).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use konvert_tests::{example, konvertctl, new_id, Gateway};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// Replaces every attachment of `v` by an upload to `gw`.
fn upload_attachments(gw: &Gateway, v: &mut Value) {
    match v {
        Value::Object(map) => {
            if map.contains_key("media_type") && map.contains_key("sha256") {
                let mt = map["media_type"].as_str().unwrap().to_string();
                let (code, body) = gw.request("POST", "/v1/uploads", Some((&mt, b"document bytes")));
                assert_eq!(code, 201, "upload: {}", String::from_utf8_lossy(&body));
                let up: Value = serde_json::from_slice(&body).unwrap();
                *v = json!({ "media_type": mt, "file": format!("upload:{}", up["id"].as_str().unwrap()) });
                return;
            }
            for (_, x) in map.iter_mut() {
                upload_attachments(gw, x);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| upload_attachments(gw, x)),
        _ => {}
    }
}

/// An example made ready to send from `gw` to `to`: fresh id, current time,
/// the reply link, attachments uploaded; signed by `head`.
fn message(gw: &Gateway, name: &str, to: &str, in_reply_to: Option<&str>) -> (String, Value) {
    let mut m = example(name);
    let id = new_id();
    m["header"]["id"] = json!(id);
    m["header"]["time"] = json!(konvert_envelope::model::Timestamp::now().to_string());
    m["header"]["from"] = json!(gw.authority);
    m["header"]["to"] = json!(to);
    match in_reply_to {
        Some(r) => m["header"]["in_reply_to"] = json!(r),
        None => {
            m["header"].as_object_mut().unwrap().remove("in_reply_to");
        }
    }
    upload_attachments(gw, &mut m);
    (id, json!({ "message": m, "signatory": "head" }))
}

fn submit(gw: &Gateway, doc: &Value) -> String {
    let (code, body) = gw.post_json("/v1/messages", doc);
    assert_eq!(code, 202, "submit: {body}\n{}", gw.log());
    body["id"].as_str().unwrap().to_string()
}

/// Submits and waits until the peer's receipt accepted it.
fn send(gw: &Gateway, doc: &Value) -> String {
    let id = submit(gw, doc);
    let s = gw.wait_state(&id, &["delivered", "rejected", "failed"], WAIT);
    assert_eq!(s["state"], json!("delivered"), "{s}\n{}", gw.log());
    id
}

fn case(gw: &Gateway, id: &str) -> Value {
    gw.get_json(&format!("/v1/cases/{id}"))
}

/// Polls `GET /v1/cases/{id}` until its state is `state`.
fn wait_case(gw: &Gateway, id: &str, state: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (code, body) = gw.request("GET", &format!("/v1/cases/{id}"), None);
        if code == 200 {
            let v: Value = serde_json::from_slice(&body).unwrap();
            if v["state"] == json!(state) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "case {id} stayed {}:\n{}",
                v["state"],
                gw.log()
            );
        } else {
            assert!(Instant::now() < deadline, "case {id}: HTTP {code}\n{}", gw.log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls the inbox until `n` items of `kind` are listed; returns their ids.
fn wait_inbox_kind(gw: &Gateway, kind: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let items = gw.get_json("/v1/inbox?limit=1000")["items"]
            .as_array()
            .unwrap()
            .clone();
        let ids: Vec<String> = items
            .iter()
            .filter(|i| i["kind"] == json!(kind))
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect();
        if ids.len() >= n {
            return ids;
        }
        assert!(
            Instant::now() < deadline,
            "{kind} x{n} never arrived:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Short timers, so that a peer's restart is noticed in seconds.
fn fast(g: &Gateway) {
    g.edit_config("initial_backoff = \"1s\"", "initial_backoff = \"100ms\"");
    g.edit_config("max_backoff = \"10m\"", "max_backoff = \"1s\"");
    g.edit_config("idle_timeout = \"1m\"", "idle_timeout = \"3s\"");
    g.edit_config("keep_alive = \"15s\"", "keep_alive = \"1s\"");
}

/// KZ and BY, peers under kz-by-2019, each with a test clock file (offset 0).
fn pair(t: &Path) -> (Gateway, Gateway) {
    let mut kz = Gateway::init(t, "kz.mvd");
    let mut by = Gateway::init(t, "by.mvd");
    kz.add_peer(&by, "kz-by-2019");
    by.add_peer(&kz, "kz-by-2019");
    for g in [&mut kz, &mut by] {
        fast(g);
        let clock = t.join(format!("{}.clock", g.authority));
        std::fs::write(&clock, "0").unwrap();
        g.env
            .push(("KONVERT_TEST_CLOCK_FILE".into(), clock.to_str().unwrap().into()));
    }
    (kz, by)
}

fn shift_clock(t: &Path, g: &Gateway, offset: &str) {
    std::fs::write(t.join(format!("{}.clock", g.authority)), offset).unwrap();
    g.reload();
}

/// The same case on both sides: same state, deadline and message history.
fn assert_same_case(kz: &Gateway, by: &Gateway, id: &str) -> Value {
    let a = case(kz, id);
    let b = case(by, id);
    for k in [
        "state",
        "deadline",
        "received_at",
        "requester",
        "requested",
        "grounds",
        "history",
    ] {
        assert_eq!(a[k], b[k], "{k} differs:\nkz {a}\nby {b}");
    }
    assert_eq!(a["role"], json!("requester"));
    assert_eq!(b["role"], json!("requested"));
    a
}

#[test]
fn request_clarification_answer_then_a_second_answer_is_refused_and_cases_survive_a_crash() {
    let t = tempfile::tempdir().unwrap();
    let (mut kz, mut by) = pair(t.path());
    kz.start();
    by.start();

    // KZ asks BY: a case opens on both sides with the same deadline.
    let (req, doc) = message(&kz, "request", "by.mvd", None);
    send(&kz, &doc);
    wait_case(&kz, &req, "received");
    wait_case(&by, &req, "received");
    let c = assert_same_case(&kz, &by, &req);
    assert_eq!(c["open"], json!(true));
    assert_eq!(c["overdue"], json!(false));
    // BY's inbox shows the purpose and the running deadline with the item.
    let items = by.get_json("/v1/inbox?limit=1000");
    let item = items["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == json!(req))
        .unwrap()
        .clone();
    assert_eq!(item["purpose"], example("request")["body"]["content"]["purpose"]);
    assert_eq!(item["due"], c["deadline"]);

    // BY asks for clarification.
    let (clar, doc) = message(&by, "clarification_request", "kz.mvd", Some(&req));
    send(&by, &doc);
    wait_case(&kz, &req, "clarification_requested");
    wait_case(&by, &req, "clarification_requested");

    // KZ's inbox shows the clarification request with its case's purpose.
    let got = kz.get_json(&format!("/v1/inbox/{clar}"));
    assert_eq!(
        got["purpose"],
        example("request")["body"]["content"]["purpose"],
        "{got}"
    );

    // KZ clarifies.
    let (ans, doc) = message(&kz, "clarification_answer", "by.mvd", Some(&clar));
    send(&kz, &doc);
    let items = by.get_json("/v1/inbox?limit=1000");
    let item = items["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == json!(ans))
        .unwrap()
        .clone();
    assert_eq!(item["purpose"], example("request")["body"]["content"]["purpose"]);
    wait_case(&by, &req, "clarified");
    wait_case(&kz, &req, "clarified");

    // BY answers within the deadline: answered on both sides.
    let (resp, doc) = message(&by, "response", "kz.mvd", Some(&req));
    send(&by, &doc);
    wait_case(&kz, &req, "answered");
    let c = assert_same_case(&kz, &by, &req);
    assert_eq!(c["open"], json!(false));
    let kinds: Vec<&str> = c["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "request",
            "clarification_request",
            "clarification_answer",
            "response"
        ]
    );
    // KZ's inbox shows the purpose the answer was provided for.
    let got = kz.get_json(&format!("/v1/inbox/{resp}"));
    assert_eq!(got["purpose"], example("response")["body"]["content"]["purpose"]);
    assert_eq!(got["item"]["purpose"], got["purpose"]);
    // The case found by any of its messages; no personal data in the document.
    let by_msg = case(&by, &resp);
    assert_eq!(by_msg["id"], json!(req));
    let text = by_msg.to_string();
    assert!(!text.contains("Сейткали") && !text.contains("SEITKALI"), "{text}");

    // A second final answer is refused before sealing, naming the code.
    let (_again, doc) = message(&by, "response-refused", "kz.mvd", Some(&req));
    let (code, p) = by.post_json("/v1/messages", &doc);
    assert_eq!(code, 422, "{p}");
    assert_eq!(p["errors"][0]["rule"], json!("already_answered"), "{p}");

    // A crash (SIGKILL) loses no applied transition.
    by.kill();
    by.start();
    let after = case(&by, &req);
    assert_eq!(after["state"], json!("answered"));
    assert_eq!(after["history"], c["history"]);
}

#[test]
fn a_refusal_with_grounds_is_the_same_on_both_sides_and_an_answer_to_no_request_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let (mut kz, mut by) = pair(t.path());
    kz.start();
    by.start();
    let (req, doc) = message(&kz, "request", "by.mvd", None);
    send(&kz, &doc);
    wait_case(&by, &req, "received");
    let (_r, doc) = message(&by, "response-refused", "kz.mvd", Some(&req));
    send(&by, &doc);
    wait_case(&kz, &req, "partially_refused");
    let c = assert_same_case(&kz, &by, &req);
    assert_eq!(c["grounds"], json!(["contradicts_national_law"]));

    // An answer to a request nobody made is refused locally (unknown_case).
    let (_x, doc) = message(&by, "response", "kz.mvd", Some(&new_id()));
    let (code, p) = by.post_json("/v1/messages", &doc);
    assert_eq!(code, 422, "{p}");
    assert_eq!(p["errors"][0]["rule"], json!("unknown_case"), "{p}");
    // Neither side has an overdue case; the refused one is not due.
    for g in [&kz, &by] {
        assert_eq!(g.get_json("/v1/cases?overdue=true")["items"], json!([]));
        assert_eq!(g.get_json("/v1/cases?due_within=40d")["items"], json!([]));
    }
}

#[test]
fn an_open_request_is_overdue_after_thirty_days_on_both_sides() {
    let t = tempfile::tempdir().unwrap();
    let (mut kz, mut by) = pair(t.path());
    kz.start();
    by.start();
    let (req, doc) = message(&kz, "request", "by.mvd", None);
    send(&kz, &doc);
    wait_case(&kz, &req, "received");
    wait_case(&by, &req, "received");
    for g in [&kz, &by] {
        assert_eq!(g.get_json("/v1/cases?overdue=true")["items"], json!([]));
        assert_eq!(g.get_json("/v1/cases?due_within=7d")["items"], json!([]));
        let soon = g.get_json("/v1/cases?due_within=32d");
        assert_eq!(soon["items"][0]["id"], json!(req), "{soon}");
    }
    // 32 days later by the test clock (the deadline is the end of the day
    // of receipt + 30 days): overdue on both sides.
    for g in [&kz, &by] {
        shift_clock(t.path(), g, "32d");
    }
    for g in [&kz, &by] {
        let deadline = Instant::now() + WAIT;
        loop {
            let items = g.get_json("/v1/cases?overdue=true")["items"].clone();
            if items[0]["id"] == json!(req) {
                assert_eq!(items[0]["overdue"], json!(true));
                break;
            }
            assert!(Instant::now() < deadline, "not overdue: {items}\n{}", g.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        // The CLI lists it too, as JSON and as a table.
        let sock = g.socket();
        let out = konvertctl([
            "--socket",
            sock.to_str().unwrap(),
            "--json",
            "requests",
            "--overdue",
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["items"][0]["id"], json!(req));
        let out = konvertctl(["--socket", sock.to_str().unwrap(), "requests", "--overdue"]);
        let table = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(table.contains(&req) && table.contains("yes"), "{table}");
        let out = konvertctl(["--socket", sock.to_str().unwrap(), "requests", "show", &req]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(text.contains("(overdue)") && text.contains("request"), "{text}");
        let out = konvertctl([
            "--socket",
            sock.to_str().unwrap(),
            "requests",
            "--due-within",
            "7d",
        ]);
        assert!(!String::from_utf8_lossy(&out.stdout).contains(&req));
    }
}

#[test]
fn onward_transfer_of_armenian_data_to_belarus_needs_armenias_consent() {
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
    am.start();

    // AM provides information to KZ.
    let (am_info, doc) = message(&am, "unsolicited_information-kz-am-2024", "kz.mvd", None);
    send(&am, &doc);
    wait_inbox_kind(&kz, "unsolicited_information", 1);

    // KZ passes it on to BY: refused, naming the missing consent.
    let purpose = "Проверка законности пребывания лица на территории Республики Беларусь.";
    let (_fwd, mut onward) = message(&kz, "unsolicited_information", "by.mvd", None);
    onward["sources"] = json!([am_info]);
    onward["purpose"] = json!(purpose);
    let (code, p) = kz.post_json("/v1/messages", &onward);
    assert_eq!(code, 422, "{p}");
    assert_eq!(p["errors"][0]["field"], json!("/sources/0"), "{p}");
    assert_eq!(p["errors"][0]["rule"], json!("consent_missing"), "{p}");
    let detail = p["errors"][0]["message"].as_str().unwrap();
    assert!(
        detail.contains("am.police") && detail.contains(&am_info) && detail.contains("by.mvd"),
        "{detail}"
    );

    // KZ asks AM for consent to pass it to by.mvd for that purpose; while
    // it is pending the transfer is still refused.
    let (creq, mut doc) = message(&kz, "consent_request", "am.police", None);
    doc["message"]["header"]["agreement"] = json!("kz-am-2024");
    doc["message"]["body"]["content"]["message"] = json!(am_info);
    doc["message"]["body"]["content"]["scope"] =
        json!({"third_party": {"country": "BLR", "recipient": "by.mvd", "purpose": purpose}});
    send(&kz, &doc);
    let (_, onward) = message(&kz, "unsolicited_information", "by.mvd", None);
    let mut pending = onward.clone();
    pending["sources"] = json!([am_info]);
    pending["purpose"] = json!(purpose);
    let (code, p) = kz.post_json("/v1/messages", &pending);
    assert_eq!(code, 422, "{p}");
    assert!(
        p["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("awaits its decision"),
        "{p}"
    );

    // AM grants it; now the transfer goes through.
    let (_dec, mut doc) = message(&am, "consent_decision", "kz.mvd", Some(&creq));
    doc["message"]["header"]["agreement"] = json!("kz-am-2024");
    send(&am, &doc);
    wait_inbox_kind(&kz, "consent_decision", 1);
    let id = send(&kz, &pending);
    wait_inbox_kind(&by, "unsolicited_information", 1);
    assert!(by.get_json(&format!("/v1/inbox/{id}"))["message"].is_object());
}

#[test]
fn a_revoked_signatorys_request_is_rejected_signer_not_authorised() {
    let t = tempfile::tempdir().unwrap();
    let (mut kz, mut by) = pair(t.path());
    let cfg = kz.config();
    let cfg = cfg.to_str().unwrap();
    for (id, name, position) in [
        ("head", "Иванов Иван Иванович", "Министр"),
        ("petrov", "Петров Пётр Петрович", "Заместитель министра"),
    ] {
        let out = konvertctl([
            "signatory",
            "add",
            "--config",
            cfg,
            "--id",
            id,
            "--name",
            name,
            "--position",
            position,
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let out = konvertctl(["--json", "signatory", "list", "--config", cfg]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["version"], json!(2), "{list}");
    kz.start();
    by.start();
    // KZ sends its roster to BY at start; BY verifies it with KZ's root key.
    wait_inbox_kind(&by, "directory_update", 1);

    // A request signed by petrov, on the roster: accepted.
    let (_ok, mut doc) = message(&kz, "request", "by.mvd", None);
    doc["signatory"] = json!("petrov");
    send(&kz, &doc);

    // petrov is revoked; the new roster goes to BY on reload.
    let out = konvertctl(["signatory", "revoke", "--config", cfg, "--id", "petrov"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    kz.reload();
    wait_inbox_kind(&by, "directory_update", 2);

    // petrov's next request is rejected by BY; head's is accepted.
    let (bad, mut doc) = message(&kz, "request", "by.mvd", None);
    doc["signatory"] = json!("petrov");
    submit(&kz, &doc);
    let s = kz.wait_state(&bad, &["rejected", "delivered"], WAIT);
    assert_eq!(s["state"], json!("rejected"), "{s}");
    assert_eq!(
        s["receipt"]["outcome"]["code"],
        json!("signer_not_authorised"),
        "{s}"
    );
    // No case was opened for it on either side.
    assert_eq!(kz.request("GET", &format!("/v1/cases/{bad}"), None).0, 404);
    assert_eq!(by.request("GET", &format!("/v1/cases/{bad}"), None).0, 404);
    let (_good, doc) = message(&kz, "request", "by.mvd", None);
    send(&kz, &doc);
}
