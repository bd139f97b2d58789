//! End-to-end scenarios of the agreement's procedure (issue 5) over real
//! `konvertd` processes: request cases tracked on both sides with the same
//! state and deadline, clarifications, answers and refusals with grounds,
//! a second final answer refused, consent for onward transfer (Art. 11.3)
//! and for use for another purpose (Art. 11.2), a revoked signatory's
//! request refused (Art. 9.3, 9.4) and its backdated signatures bounded,
//! renamed and replaced authorities (Art. 2), agreements not yet or no
//! longer in force (Art. 17), and overdue cases after the test clock passes
//! 30 days (Art. 10.3). What a sending gateway refuses to send (an answer to
//! an unknown request, a second final answer, an answer from an authority
//! that was not asked, a backdated signature) is sealed offline and pushed
//! over QUIC, so that the receiver's own refusal and its receipt code are
//! what is tested.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use konvert_tests::{example, konvertctl, new_id, push_envelope, seal_offline, submit, Gateway};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// An example made ready to send from `gw` to `to` (see the harness's
/// `message`), its attachments uploaded as a few document bytes.
fn message(gw: &Gateway, name: &str, to: &str, in_reply_to: Option<&str>) -> (String, Value) {
    konvert_tests::message(gw, name, to, in_reply_to, b"document bytes")
}

/// An example as `from` would send it to `to`, without uploading its
/// attachments (for [`seal_offline`], which reads them from files): fresh
/// id, current time, the given reply link.
fn offline_message(from: &str, name: &str, to: &str, in_reply_to: Option<&str>) -> Value {
    let mut m = example(name);
    m["header"]["id"] = json!(new_id());
    m["header"]["time"] = json!(konvert_envelope::model::Timestamp::now().to_string());
    m["header"]["from"] = json!(from);
    m["header"]["to"] = json!(to);
    match in_reply_to {
        Some(r) => m["header"]["in_reply_to"] = json!(r),
        None => {
            m["header"].as_object_mut().unwrap().remove("in_reply_to");
        }
    }
    m
}

/// The receipt's reject code (`None`: accepted).
fn reject_code(receipt: &Value) -> Option<&str> {
    match receipt["outcome"]["status"].as_str() {
        Some("accepted") => None,
        Some("rejected") => receipt["outcome"]["code"].as_str(),
        _ => panic!("not a receipt: {receipt}"),
    }
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
    let (refusal, doc) = message(&by, "response-refused", "kz.mvd", Some(&req));
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

    // Art. 11.5: KZ closes the ended case on its side (a local step) ...
    let sock = kz.socket();
    let sock = sock.to_str().unwrap();
    let out = konvertctl(["--socket", sock, "--json", "requests", "close", &req]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let closed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(closed["state"], json!("closed"), "{closed}");
    assert_eq!(closed["grounds"], json!(["contradicts_national_law"]), "{closed}");
    let at = closed["closed_at"].clone();
    assert!(at.is_string(), "{closed}");
    // ... again: nothing changes; BY's case is its own.
    let (code, again) = kz.post_json(&format!("/v1/cases/{req}/close"), &json!({}));
    assert_eq!(code, 200, "{again}");
    assert_eq!(again["closed_at"], at);
    assert_eq!(case(&by, &req)["state"], json!("partially_refused"));
    // A closed case takes no more messages (refused before sealing).
    let (_q, doc) = message(&kz, "authenticity_query", "by.mvd", None);
    let mut doc = doc;
    doc["message"]["body"]["content"]["message"] = json!(req);
    let (code, p) = kz.post_json("/v1/messages", &doc);
    assert_eq!(code, 422, "{p}");
    assert_eq!(p["errors"][0]["rule"], json!("case_closed"), "{p}");
    // A case that has not ended cannot be closed; an unknown one is not found.
    let (open, doc) = message(&kz, "request", "by.mvd", None);
    send(&kz, &doc);
    wait_case(&by, &open, "received");
    let (code, body) = by.request("POST", &format!("/v1/cases/{open}/close"), None);
    let p: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(code, 409, "{p}");
    assert_eq!(
        p["type"],
        json!("https://konvert.invalid/problems/conflict"),
        "{p}"
    );
    assert_eq!(p["errors"][0]["field"], json!("id"), "{p}");
    assert_eq!(p["errors"][0]["rule"], json!("wrong_state"), "{p}");
    assert!(p["detail"].as_str().unwrap().contains("received"), "{p}");
    assert_eq!(case(&by, &open)["state"], json!("received"));
    let out = konvertctl(["--socket", sock, "requests", "close", &new_id()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no request case"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The closed case's store record follows, so it can be destroyed early:
    // its messages go, the open case's stay.
    let out = konvertctl(["--socket", sock, "--json", "retention", "purge", "--case", &req]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let purged: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(purged["destroyed"].as_u64().unwrap() >= 2, "{purged}");
    assert_ne!(kz.request("GET", &format!("/v1/inbox/{refusal}"), None).0, 200);
    assert_eq!(kz.request("GET", &format!("/v1/messages/{open}"), None).0, 200);
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

/// Polls `GET /v1/directory` until `authority`'s latest roster is `version`.
fn wait_roster(gw: &Gateway, authority: &str, version: u64) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let d = gw.get_json("/v1/directory");
        let found = d["rosters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["authority"] == json!(authority) && r["version"] == json!(version));
        if found {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "roster {version} of {authority} never applied: {d}\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Directory updates are the gateway's own business: each was stored and
/// receipted (`accepted`), and is acknowledged by the gateway, so the
/// application inbox never lists one. Returns how many were received.
fn assert_directory_updates_kept_out_of_the_inbox(gw: &Gateway) -> usize {
    let inbox = gw.get_json("/v1/inbox?limit=1000");
    assert!(
        !inbox["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["kind"] == json!("directory_update")),
        "a directory update is listed for applications: {inbox}"
    );
    let receipts = gw.get_json("/v1/receipts?direction=inbound&limit=1000");
    let mut n = 0;
    for r in receipts["items"].as_array().unwrap() {
        let id = r["message_id"].as_str().unwrap();
        let got = gw.get_json(&format!("/v1/inbox/{id}"));
        if got["item"]["kind"] == json!("directory_update") {
            assert_eq!(r["outcome"]["status"], json!("accepted"), "{r}");
            assert_eq!(got["acknowledged"], json!(true), "{got}");
            n += 1;
        }
    }
    n
}

/// Two signatories for KZ's roster: its head and a deputy.
const HEAD_AND_PETROV: &[(&str, &str, &str)] = &[
    ("head", "Иванов Иван Иванович", "Министр"),
    ("petrov", "Петров Пётр Петрович", "Заместитель министра"),
];

/// `konvertctl signatory add` for each (id, name, position): a new roster
/// version each, signed with the authority's root key.
fn add_signatories(cfg: &str, list: &[(&str, &str, &str)]) {
    for (id, name, position) in list {
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
}

#[test]
fn a_revoked_signatory_is_refused_before_sealing_and_by_the_peer_and_rosters_stay_out_of_the_inbox() {
    let t = tempfile::tempdir().unwrap();
    let (mut kz, mut by) = pair(t.path());
    let cfg = kz.config();
    let cfg = cfg.to_str().unwrap();
    add_signatories(cfg, HEAD_AND_PETROV);
    let out = konvertctl(["--json", "signatory", "list", "--config", cfg]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["version"], json!(2), "{list}");
    let roster_file = kz.dir.join("keys/roster.cose");
    let v2 = std::fs::read(&roster_file).unwrap();
    kz.start();
    by.start();
    // KZ sends its roster to BY at start; BY verifies it with KZ's root key
    // and shows it (ids and validity, no names) in its directory.
    let d = wait_roster(&by, "kz.mvd", 2);
    assert!(!d.to_string().contains("Петров"), "{d}");

    // A request signed by petrov, on the roster: accepted.
    let (_ok, mut doc) = message(&kz, "request", "by.mvd", None);
    doc["signatory"] = json!("petrov");
    send(&kz, &doc);

    // petrov is revoked: KZ refuses his next request at once, before
    // sealing (no reload needed), naming the signatory; nothing is queued.
    let out = konvertctl(["signatory", "revoke", "--config", cfg, "--id", "petrov"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (refused, mut doc) = message(&kz, "request", "by.mvd", None);
    doc["signatory"] = json!("petrov");
    let (code, p) = kz.post_json("/v1/messages", &doc);
    assert_eq!(code, 422, "{p}");
    assert_eq!(
        p["type"],
        json!("https://konvert.invalid/problems/signer-not-authorised"),
        "{p}"
    );
    assert_eq!(p["errors"][0]["field"], json!("/signatory"), "{p}");
    assert_eq!(p["errors"][0]["rule"], json!("signer_not_authorised"), "{p}");
    let why = p["errors"][0]["message"].as_str().unwrap();
    assert!(why.contains("petrov") && why.contains("version 3"), "{why}");
    assert!(!p.to_string().contains("Петров"), "{p}");
    assert_eq!(kz.request("GET", &format!("/v1/messages/{refused}"), None).0, 404);
    // The CLI says the same and fails.
    let file = t.path().join("petrov-request.json");
    std::fs::write(&file, serde_json::to_vec(&doc).unwrap()).unwrap();
    let sock = kz.socket();
    let out = konvertctl(["--socket", sock.to_str().unwrap(), "send", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("petrov") && err.contains("roster version 3"),
        "{err}"
    );

    // The new roster goes to BY on reload.
    kz.reload();
    wait_roster(&by, "kz.mvd", 3);

    // The peer refuses too: with a stale roster file put back on KZ (an
    // operator's mistake), petrov passes KZ's check, and BY rejects it.
    let v3 = std::fs::read(&roster_file).unwrap();
    std::fs::write(&roster_file, &v2).unwrap();
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
    std::fs::write(&roster_file, &v3).unwrap();
    // No case was opened for it on either side.
    assert_eq!(kz.request("GET", &format!("/v1/cases/{bad}"), None).0, 404);
    assert_eq!(by.request("GET", &format!("/v1/cases/{bad}"), None).0, 404);
    let (_good, doc) = message(&kz, "request", "by.mvd", None);
    send(&kz, &doc);

    // Both rosters were stored and receipted at BY, and never listed in its inbox.
    assert_eq!(assert_directory_updates_kept_out_of_the_inbox(&by), 2);
}

#[test]
fn a_first_roster_without_the_card_signatory_reaches_the_peer_signed_by_a_signatory_on_it() {
    let t = tempfile::tempdir().unwrap();
    let (mut kz, mut by) = pair(t.path());
    // KZ's card lists `head`; its first roster lists only ivanov, so
    // konvertd can sign the announcement only with ivanov, whom BY does not
    // know yet: BY accepts it because KZ's root key (on KZ's card) signed
    // the roster it carries.
    let cfg = kz.config();
    add_signatories(
        cfg.to_str().unwrap(),
        &[("ivanov", "Иванов Иван Иванович", "Заместитель министра")],
    );
    kz.start();
    by.start();
    let d = wait_roster(&by, "kz.mvd", 1);
    assert!(!d.to_string().contains("Иванов"), "{d}");

    // A request signed by ivanov: accepted.
    let (ok, mut doc) = message(&kz, "request", "by.mvd", None);
    doc["signatory"] = json!("ivanov");
    send(&kz, &doc);
    wait_case(&by, &ok, "received");

    // One signed by head, off the roster (KZ would refuse it before
    // sealing, so it is sealed offline): BY refuses it, and no case opens.
    let m = offline_message("kz.mvd", "request", "by.mvd", None);
    let head = m["header"]["id"].as_str().unwrap().to_owned();
    let r = push_envelope(&kz, &by, &seal_offline(&kz, &by, "head", &m, None));
    assert_eq!(reject_code(&r), Some("signer_not_authorised"), "{r}");
    assert_eq!(by.request("GET", &format!("/v1/cases/{head}"), None).0, 404);

    // The roster was stored and receipted at BY, not listed in its inbox.
    assert_eq!(assert_directory_updates_kept_out_of_the_inbox(&by), 1);
}

/// `konvertctl --json authority rename|replace` of KZ's own authority,
/// signed with its root key, effective at `effective`.
fn authority_change(kz: &Gateway, verb: &str, old: &str, new: &str, name: &str, effective: &str) -> Output {
    let cfg = kz.config();
    konvertctl([
        "--json",
        "authority",
        verb,
        "--config",
        cfg.to_str().unwrap(),
        "--old",
        old,
        "--new",
        new,
        "--name",
        name,
        "--name-en",
        "Ministry of Internal Affairs",
        "--effective",
        effective,
    ])
}

/// After konvertctl accepted KZ's renaming or replacement of kz.mvd by
/// kz.mia (`change`: `renamed` or `replaced`, in `out`): konvertd sent one
/// directory_update to BY, which verified it with KZ's root key and applied
/// it — its directory has the change, the open case `req` now names the new
/// id, its inbox stays clear — and the old id stays resolvable: BY answers
/// the case addressed to kz.mvd and both sides apply the answer.
fn assert_authority_change_applied(
    kz: &Gateway,
    by: &Gateway,
    req: &str,
    out: &Output,
    change: &str,
    effective: &str,
) {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let q: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(q["change"], json!(change), "{q}");
    assert_eq!(q["peers"][0]["peer"], json!("by.mvd"), "{q}");
    let id = q["peers"][0]["id"].as_str().unwrap().to_string();
    kz.wait_state(&id, &["delivered"], WAIT);

    let d = by.get_json("/v1/directory");
    let c = &d["changes"][0];
    assert_eq!(c["change"], json!(change), "{d}");
    assert_eq!(c["old"], json!("kz.mvd"), "{d}");
    assert_eq!(c["new"], json!("kz.mia"), "{d}");
    assert_eq!(c["notified_by"], json!("kz.mvd"), "{d}");
    assert_eq!(c["effective"], json!(effective), "{d}");
    assert_eq!(case(by, req)["requester"], json!("kz.mia"));
    assert_eq!(assert_directory_updates_kept_out_of_the_inbox(by), 1);
    let sock = by.socket();
    let out = konvertctl(["--socket", sock.to_str().unwrap(), "authority", "list"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains(&format!("kz.mvd {change} to kz.mia")), "{text}");

    let (_resp, doc) = message(by, "response", "kz.mvd", Some(req));
    send(by, &doc);
    wait_case(kz, req, "answered");
    wait_case(by, req, "answered");
}

#[test]
fn an_authority_renaming_is_signed_by_the_root_key_sent_to_the_peer_and_applied_there() {
    let t = tempfile::tempdir().unwrap();
    let (mut kz, mut by) = pair(t.path());
    kz.start();
    by.start();
    // A case open before the renaming.
    let (req, doc) = message(&kz, "request", "by.mvd", None);
    send(&kz, &doc);
    wait_case(&by, &req, "received");
    assert_eq!(case(&by, &req)["requester"], json!("kz.mvd"));

    // Refused before anything is signed or sent: the same id twice, an empty name.
    let effective = konvert_envelope::model::Timestamp::now().to_string();
    let out = authority_change(
        &kz,
        "rename",
        "kz.mvd",
        "kz.mvd",
        "Министерство внутренних дел",
        &effective,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--new"));
    let out = authority_change(&kz, "rename", "kz.mvd", "kz.mia", " ", &effective);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--name"));

    // KZ renames itself: konvertctl signs with the root key, konvertd
    // queues one directory_update per peer; BY applies it.
    let out = authority_change(
        &kz,
        "rename",
        "kz.mvd",
        "kz.mia",
        "Министерство внутренних дел Республики Казахстан",
        &effective,
    );
    assert_authority_change_applied(&kz, &by, &req, &out, "renamed", &effective);

    // The API refuses a change that does not match its signature, and a roster.
    let mut update = example("directory_update-authority_renamed")["body"]["content"].clone();
    update["change"]["authority_renamed"]["old"] = json!("kz.mvd");
    let (code, p) = kz.post_json("/v1/directory/changes", &json!({ "update": update }));
    assert_eq!(code, 422, "{p}");
    assert_eq!(p["errors"][0]["field"], json!("/update/attestation"), "{p}");
    let roster = example("directory_update")["body"]["content"].clone();
    let (code, p) = kz.post_json("/v1/directory/changes", &json!({ "update": roster }));
    assert_eq!(code, 422, "{p}");
    assert_eq!(p["errors"][0]["rule"], json!("wrong_change"), "{p}");
}

/// Sets a termination notice in a gateway's copy of the kz-by-2019 profile.
fn give_notice(g: &Gateway, notice: &str) {
    let path = g.dir.join("profiles/kz-by-2019.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let from = "# termination_notice = \"YYYY-MM-DD\"";
    assert!(text.contains(from), "{}", path.display());
    std::fs::write(
        &path,
        text.replacen(from, &format!("termination_notice = \"{notice}\""), 1),
    )
    .unwrap();
}

#[test]
fn after_the_termination_period_the_sender_refuses_locally_and_the_receiver_rejects_agreement_terminated() {
    let t = tempfile::tempdir().unwrap();
    let (mut kz, mut by) = pair(t.path());
    // Art. 17: notice of termination was received 30 days ago; the agreement
    // ends six months after it.
    let notice = konvert_envelope::model::Timestamp::now()
        .plus_secs(-30 * 86_400)
        .date_utc()
        .to_string();
    for g in [&kz, &by] {
        give_notice(g, &notice);
    }
    kz.start();
    by.start();
    // Still in force: a request goes through.
    let (req, doc) = message(&kz, "request", "by.mvd", None);
    send(&kz, &doc);
    wait_case(&by, &req, "received");

    // 200 days later by BY's clock, the period has ended there: KZ (still
    // within it by its own clock) sends, BY rejects on arrival.
    shift_clock(t.path(), &by, "200d");
    std::thread::sleep(Duration::from_millis(500));
    let (late, doc) = message(&kz, "request", "by.mvd", None);
    submit(&kz, &doc);
    let s = kz.wait_state(&late, &["rejected", "delivered"], WAIT);
    assert_eq!(s["state"], json!("rejected"), "{s}");
    assert_eq!(
        s["receipt"]["outcome"]["code"],
        json!("agreement_terminated"),
        "{s}"
    );
    assert_eq!(by.request("GET", &format!("/v1/cases/{late}"), None).0, 404);

    // By KZ's clock too: KZ refuses before sealing, naming Art. 17's code.
    shift_clock(t.path(), &kz, "200d");
    std::thread::sleep(Duration::from_millis(500));
    let (refused, doc) = message(&kz, "request", "by.mvd", None);
    let (code, p) = kz.post_json("/v1/messages", &doc);
    assert_eq!(code, 422, "{p}");
    assert_eq!(
        p["type"],
        json!("https://konvert.invalid/problems/not-in-force"),
        "{p}"
    );
    assert_eq!(p["errors"][0]["field"], json!("/message/header/agreement"), "{p}");
    assert_eq!(p["errors"][0]["rule"], json!("agreement_terminated"), "{p}");
    assert!(p["detail"].as_str().unwrap().contains(&notice), "{p}");
    assert_eq!(kz.request("GET", &format!("/v1/messages/{refused}"), None).0, 404);
    // An answer in the open case is refused as well (no case outlives the agreement here).
    let (_a, doc) = message(&by, "response", "kz.mvd", Some(&req));
    let (code, p) = by.post_json("/v1/messages", &doc);
    assert_eq!(code, 422, "{p}");
    assert_eq!(p["errors"][0]["rule"], json!("agreement_terminated"), "{p}");
}

/// Waits until `g` has logged `n` configuration reloads.
fn wait_reloaded(g: &Gateway, n: usize) {
    let deadline = Instant::now() + WAIT;
    while g.log().matches("configuration reloaded").count() < n {
        assert!(Instant::now() < deadline, "no reload:\n{}", g.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn unix(v: &Value) -> i64 {
    v.as_str()
        .unwrap()
        .parse::<konvert_envelope::model::Timestamp>()
        .unwrap()
        .as_unix()
}

#[test]
fn a_case_keeps_the_profile_version_it_was_opened_under_after_an_amendment() {
    let t = tempfile::tempdir().unwrap();
    let (mut kz, mut by) = pair(t.path());
    kz.start();
    by.start();
    let (old, doc) = message(&kz, "request", "by.mvd", None);
    send(&kz, &doc);
    wait_case(&kz, &old, "received");
    wait_case(&by, &old, "received");
    let before = assert_same_case(&kz, &by, &old);
    assert_eq!(before["profile_version"], json!(1));

    // Art. 16: an amending protocol, version 2, applies from today and
    // shortens the deadline to 20 days; both gateways load it next to
    // version 1 (SIGHUP).
    let today = konvert_envelope::model::Timestamp::now().date_utc().to_string();
    for g in [&kz, &by] {
        let v1 = std::fs::read_to_string(g.dir.join("profiles/kz-by-2019.toml")).unwrap();
        let v2 = v1
            .replacen("version = 1", "version = 2", 1)
            .replacen(
                "# version_in_force_from = \"YYYY-MM-DD\"",
                &format!("version_in_force_from = \"{today}\""),
                1,
            )
            .replacen("answer_deadline_days = 30", "answer_deadline_days = 20", 1);
        assert!(v2.contains("answer_deadline_days = 20") && v2.contains("version = 2"));
        std::fs::write(g.dir.join("profiles/kz-by-2019-v2.toml"), v2).unwrap();
        g.edit_config(
            "\"profiles/kz-by-2019.toml\"",
            "\"profiles/kz-by-2019.toml\", \"profiles/kz-by-2019-v2.toml\"",
        );
        g.reload();
    }
    for g in [&kz, &by] {
        wait_reloaded(g, 1);
    }

    // A new request opens under version 2 on both sides, with its deadline.
    let (new, doc) = message(&kz, "request", "by.mvd", None);
    send(&kz, &doc);
    wait_case(&kz, &new, "received");
    wait_case(&by, &new, "received");
    let after = assert_same_case(&kz, &by, &new);
    assert_eq!(after["profile_version"], json!(2), "{after}");
    let days = |c: &Value| (unix(&c["deadline"]) - unix(&c["received_at"])) / 86_400;
    assert_eq!(days(&after), 20, "{after}");
    assert_eq!(days(&before), 30, "{before}");

    // The earlier case keeps version 1 and its deadline, and its answer,
    // judged by version 1, closes it on both sides.
    let (_resp, doc) = message(&by, "response", "kz.mvd", Some(&old));
    send(&by, &doc);
    wait_case(&kz, &old, "answered");
    let answered = assert_same_case(&kz, &by, &old);
    assert_eq!(answered["profile_version"], json!(1));
    assert_eq!(answered["deadline"], before["deadline"]);

    // A profile file listed twice with the same version is refused on reload
    // (the running configuration stays).
    kz.edit_config(
        "\"profiles/kz-by-2019-v2.toml\"",
        "\"profiles/kz-by-2019-v2.toml\", \"profiles/kz-by-2019-v2.toml\"",
    );
    kz.reload();
    let deadline = Instant::now() + WAIT;
    while !kz.log().contains("reload refused") {
        assert!(Instant::now() < deadline, "{}", kz.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(kz.log().contains("loaded twice"), "{}", kz.log());
}

#[test]
fn the_receiver_rejects_messages_that_do_not_fit_its_case_with_the_receipt_code() {
    let t = tempfile::tempdir().unwrap();
    let (mut kz, mut by) = pair(t.path());
    // by.gpk, another Belarusian authority: a peer of KZ that runs no
    // daemon here; its keys seal, its TLS key pushes.
    let gpk = Gateway::init(t.path(), "by.gpk");
    kz.add_peer(&gpk, "kz-by-2019");
    gpk.add_peer(&kz, "kz-by-2019");
    kz.start();
    by.start();

    // KZ asks BY, BY answers: the case is answered on both sides.
    let (req, doc) = message(&kz, "request", "by.mvd", None);
    send(&kz, &doc);
    wait_case(&by, &req, "received");
    let (_resp, doc) = message(&by, "response", "kz.mvd", Some(&req));
    send(&by, &doc);
    wait_case(&kz, &req, "answered");
    let answered = case(&kz, &req);

    // An answer to a request KZ never made: BY's gateway would refuse it
    // before sealing, so it is sealed offline with BY's keys and pushed.
    let stray = offline_message("by.mvd", "response", "kz.mvd", Some(&new_id()));
    let r = push_envelope(&by, &kz, &seal_offline(&by, &kz, "head", &stray, None));
    assert_eq!(reject_code(&r), Some("unknown_case"), "{r}");
    assert_eq!(r["receiver"], json!("kz.mvd"), "{r}");
    assert_eq!(r["sender"], json!("by.mvd"), "{r}");

    // A second final answer to the answered request.
    let second = offline_message("by.mvd", "response-refused", "kz.mvd", Some(&req));
    let r = push_envelope(&by, &kz, &seal_offline(&by, &kz, "head", &second, None));
    assert_eq!(reject_code(&r), Some("already_answered"), "{r}");
    assert_eq!(case(&kz, &req)["history"], answered["history"]);
    assert_eq!(case(&kz, &req)["state"], json!("answered"));

    // An answer from an authority that was not asked: KZ asked by.mvd,
    // by.gpk answers.
    let (open, doc) = message(&kz, "request", "by.mvd", None);
    send(&kz, &doc);
    wait_case(&kz, &open, "received");
    let intruder = offline_message("by.gpk", "response", "kz.mvd", Some(&open));
    let r = push_envelope(&gpk, &kz, &seal_offline(&gpk, &kz, "head", &intruder, None));
    assert_eq!(reject_code(&r), Some("not_addressee"), "{r}");
    assert_eq!(r["sender"], json!("by.gpk"), "{r}");
    assert_eq!(case(&kz, &open)["state"], json!("received"));

    // None of them reached KZ's inbox; the receipts are on record.
    let inbox = kz.get_json("/v1/inbox?limit=1000");
    for m in [&stray, &second, &intruder] {
        let id = m["header"]["id"].as_str().unwrap();
        assert!(!inbox.to_string().contains(id), "{id} in the inbox: {inbox}");
    }
    // The same pushed envelope again gets the same answer (nothing was stored).
    let r = push_envelope(&by, &kz, &seal_offline(&by, &kz, "head", &second, None));
    assert_eq!(reject_code(&r), Some("already_answered"), "{r}");
    // A well-formed answer from the right authority still goes through.
    let (_ok, doc) = message(&by, "response", "kz.mvd", Some(&open));
    send(&by, &doc);
    wait_case(&kz, &open, "answered");
}

#[test]
fn use_of_received_data_for_another_purpose_needs_the_providers_consent() {
    let t = tempfile::tempdir().unwrap();
    let (mut kz, mut by) = pair(t.path());
    kz.start();
    by.start();

    // KZ asks BY; BY's answer provides data for the request's purpose.
    let (req, doc) = message(&kz, "request", "by.mvd", None);
    send(&kz, &doc);
    wait_case(&by, &req, "received");
    let (resp, doc) = message(&by, "response", "kz.mvd", Some(&req));
    send(&by, &doc);
    wait_case(&kz, &req, "answered");
    let provided = example("response")["body"]["content"]["purpose"].clone();

    // KZ uses that data in a new request for another purpose (Art. 11.2):
    // refused before sealing, naming the consent that is missing.
    let other = "Розыск лица, уклоняющегося от исполнения решения о выдворении.";
    let (refused, mut again) = message(&kz, "request", "by.mvd", None);
    again["message"]["body"]["content"]["purpose"] = json!(other);
    again["sources"] = json!([resp]);
    let (code, p) = kz.post_json("/v1/messages", &again);
    assert_eq!(code, 422, "{p}");
    assert_eq!(
        p["type"],
        json!("https://konvert.invalid/problems/consent-missing"),
        "{p}"
    );
    assert_eq!(p["errors"][0]["field"], json!("/sources/0"), "{p}");
    assert_eq!(p["errors"][0]["rule"], json!("consent_missing"), "{p}");
    let why = p["errors"][0]["message"].as_str().unwrap();
    for part in [
        "by.mvd",
        resp.as_str(),
        "Art. 11.2",
        "no consent request has been made",
    ] {
        assert!(why.contains(part), "{part} not in {why}");
    }
    assert!(
        !p.to_string().contains("Розыск"),
        "no purpose text in problems: {p}"
    );
    assert_eq!(kz.request("GET", &format!("/v1/messages/{refused}"), None).0, 404);

    // The purpose it was provided for needs no consent.
    let (_same, mut same) = message(&kz, "request", "by.mvd", None);
    same["message"]["body"]["content"]["purpose"] = provided;
    same["sources"] = json!([resp]);
    send(&kz, &same);

    // KZ asks BY for consent to the other purpose; pending, still refused.
    let (creq, mut doc) = message(&kz, "consent_request", "by.mvd", None);
    doc["message"]["body"]["content"]["message"] = json!(resp);
    doc["message"]["body"]["content"]["scope"] = json!({"other_purpose": {"purpose": other}});
    send(&kz, &doc);
    wait_inbox_kind(&by, "consent_request", 1);
    let (code, p) = kz.post_json("/v1/messages", &again);
    assert_eq!(code, 422, "{p}");
    let why = p["errors"][0]["message"].as_str().unwrap();
    assert!(
        why.contains("awaits its decision") && why.contains(&creq),
        "{why}"
    );

    // BY grants it: the request for the other purpose goes through.
    let (_dec, doc) = message(&by, "consent_decision", "kz.mvd", Some(&creq));
    send(&by, &doc);
    wait_inbox_kind(&kz, "consent_decision", 1);
    let id = send(&kz, &again);
    assert_eq!(id, refused);
    wait_case(&by, &id, "received");
    // A consent to the other purpose is not one to pass the data to a third
    // party: it is still checked per recipient (Art. 11.3, see the AM test).
}

#[test]
fn an_agreement_not_yet_in_force_is_refused_by_the_receiver_and_before_sealing() {
    let t = tempfile::tempdir().unwrap();
    let (mut kz, mut by) = pair(t.path());
    // Art. 17: in BY's copy of the profile the agreement enters into force
    // in 30 days (an amendment of the dates not yet applied at KZ).
    let later = konvert_envelope::model::Timestamp::now()
        .plus_secs(30 * 86_400)
        .date_utc()
        .to_string();
    let enter_later = |g: &Gateway| {
        let path = g.dir.join("profiles/kz-by-2019.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let from = "in_force_from = \"2020-12-03\"";
        assert!(text.contains(from), "{}", path.display());
        std::fs::write(
            &path,
            text.replacen(from, &format!("in_force_from = \"{later}\""), 1),
        )
        .unwrap();
    };
    enter_later(&by);
    kz.start();
    by.start();

    // KZ sends; BY rejects it on arrival.
    let (req, doc) = message(&kz, "request", "by.mvd", None);
    submit(&kz, &doc);
    let s = kz.wait_state(&req, &["rejected", "delivered"], WAIT);
    assert_eq!(s["state"], json!("rejected"), "{s}");
    assert_eq!(
        s["receipt"]["outcome"]["code"],
        json!("agreement_not_in_force"),
        "{s}"
    );
    assert_eq!(by.request("GET", &format!("/v1/cases/{req}"), None).0, 404);
    assert!(by.get_json("/v1/inbox?limit=1000")["items"]
        .as_array()
        .unwrap()
        .is_empty());

    // With the same dates at KZ, KZ refuses before sealing.
    enter_later(&kz);
    kz.reload();
    wait_reloaded(&kz, 1);
    let (refused, doc) = message(&kz, "request", "by.mvd", None);
    let (code, p) = kz.post_json("/v1/messages", &doc);
    assert_eq!(code, 422, "{p}");
    assert_eq!(
        p["type"],
        json!("https://konvert.invalid/problems/not-in-force"),
        "{p}"
    );
    assert_eq!(p["errors"][0]["field"], json!("/message/header/agreement"), "{p}");
    assert_eq!(p["errors"][0]["rule"], json!("agreement_not_in_force"), "{p}");
    assert!(p["detail"].as_str().unwrap().contains(&later), "{p}");
    assert_eq!(kz.request("GET", &format!("/v1/messages/{refused}"), None).0, 404);
}

#[test]
fn an_authority_replacement_is_sent_to_the_peer_and_its_cases_follow() {
    let t = tempfile::tempdir().unwrap();
    let (mut kz, mut by) = pair(t.path());
    kz.start();
    by.start();
    let (req, doc) = message(&kz, "request", "by.mvd", None);
    send(&kz, &doc);
    wait_case(&by, &req, "received");

    // Art. 2: another body takes over kz.mvd's tasks; KZ signs the
    // replacement with its root key and konvertd sends it to BY, which
    // records a replacement (not a renaming) and whose case follows.
    let effective = konvert_envelope::model::Timestamp::now().to_string();
    let name = "Министерство внутренних дел Республики Казахстан";
    let out = authority_change(&kz, "replace", "kz.mvd", "kz.mia", name, &effective);
    assert_authority_change_applied(&kz, &by, &req, &out, "replaced", &effective);

    // The same replacement again changes nothing at BY.
    let out = authority_change(&kz, "replace", "kz.mvd", "kz.mia", name, &effective);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let q: Value = serde_json::from_slice(&out.stdout).unwrap();
    kz.wait_state(q["peers"][0]["id"].as_str().unwrap(), &["delivered"], WAIT);
    assert_eq!(
        by.get_json("/v1/directory")["changes"].as_array().unwrap().len(),
        1
    );
}

#[test]
fn a_revoked_signatorys_backdated_signature_is_refused_after_the_grace_period() {
    let t = tempfile::tempdir().unwrap();
    let (mut kz, mut by) = pair(t.path());
    // BY accepts signatures of an ended signatory for 5 minutes after the end.
    let text = std::fs::read_to_string(by.config()).unwrap();
    std::fs::write(
        by.config(),
        format!("{text}\n[signatures]\nended_signer_grace = \"5m\"\n"),
    )
    .unwrap();
    let cfg = kz.config();
    let cfg = cfg.to_str().unwrap();
    add_signatories(cfg, HEAD_AND_PETROV);
    kz.start();
    by.start();
    wait_roster(&by, "kz.mvd", 2);

    // Requests signed while petrov may sign (queued at KZ, say), and one by head.
    let signed_then = |signatory: &str| {
        let m = offline_message("kz.mvd", "request", "by.mvd", None);
        (
            m["header"]["id"].as_str().unwrap().to_owned(),
            seal_offline(&kz, &by, signatory, &m, None),
        )
    };
    let (late, late_env) = signed_then("petrov");
    let (stale, stale_env) = signed_then("petrov");
    let (queued, queued_env) = signed_then("head");
    std::thread::sleep(Duration::from_millis(1100));

    // petrov is revoked and BY applies roster 3.
    let out = konvertctl(["signatory", "revoke", "--config", cfg, "--id", "petrov"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    kz.reload();
    wait_roster(&by, "kz.mvd", 3);

    // Within the grace period, a message petrov signed while valid is a
    // late delivery: accepted.
    let r = push_envelope(&kz, &by, &late_env);
    assert_eq!(reject_code(&r), None, "{r}");
    wait_case(&by, &late, "received");

    // An hour later by BY's clock the same kind of message could be
    // backdated: refused with its own code, and no case opens.
    shift_clock(t.path(), &by, "1h");
    wait_reloaded(&by, 1);
    let r = push_envelope(&kz, &by, &stale_env);
    assert_eq!(reject_code(&r), Some("signer_no_longer_valid"), "{r}");
    assert_eq!(by.request("GET", &format!("/v1/cases/{stale}"), None).0, 404);
    // A message of a signatory still valid is not bounded, however long it
    // waited (delivery after a long outage).
    let r = push_envelope(&kz, &by, &queued_env);
    assert_eq!(reject_code(&r), None, "{r}");
    wait_case(&by, &queued, "received");
}
