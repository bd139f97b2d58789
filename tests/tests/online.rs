//! End-to-end tests of the online `konvertctl` commands against real
//! daemons: two gateways (kz.mvd and by.mvd) made with `konvertctl init`,
//! introduced with `konvertctl peer add`, run as `konvertd` child processes
//! on loopback QUIC, and driven through their API sockets with the CLI an
//! operator or integrator uses (`send`, `status`, `receipts`, `inbox`).
//!
//! Every test has its own temporary directory and ports, so tests run in
//! parallel. Waiting is bounded polling (100 ms steps); nothing asserts a
//! wall-clock time. The binaries are built once per test process with
//! `cargo build -p konvert-gateway --bins` (as in `cli.rs`).
#![allow(clippy::unwrap_used)]

use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{json, Value};
use tempfile::TempDir;

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// `target/<profile>/`, with `konvertctl` and `konvertd` built once per test process.
fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .current_dir(workspace_root())
            .args(["build", "-p", "konvert-gateway", "--bins"]);
        if profile_dir.file_name() == Some(OsStr::new("release")) {
            build.arg("--release");
        }
        let out = build.output().unwrap();
        assert!(
            out.status.success(),
            "cargo build -p konvert-gateway --bins failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for b in ["konvertctl", "konvertd"] {
            let p = profile_dir.join(format!("{b}{}", std::env::consts::EXE_SUFFIX));
            assert!(p.is_file(), "{} missing after cargo build", p.display());
        }
        profile_dir
    })
}

fn bin(name: &str) -> PathBuf {
    bin_dir().join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// Runs `konvertctl ARGS` (with KONVERT_SOCKET unset) and returns what it did.
fn konvertctl<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(bin("konvertctl"))
        .args(args)
        .env_remove("KONVERT_SOCKET")
        .output()
        .unwrap()
}

/// `konvertctl!(a, b, …)`: arguments of mixed types (`&str`, `Path`, `PathBuf`, `String`).
macro_rules! konvertctl {
    ($($arg:expr),* $(,)?) => {
        konvertctl([$(OsStr::new(&$arg)),*])
    };
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts success and returns stdout.
fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "konvertctl failed ({}):\n{}",
        out.status,
        stderr(out)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn ok_json(out: &Output) -> Value {
    serde_json::from_str(&ok(out)).unwrap()
}

/// Asserts exit code 1 with exactly one line `konvertctl: error: …` containing every needle.
fn one_line_error(out: &Output, needles: &[&str]) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "exit code; stderr:\n{err}");
    assert!(out.stdout.is_empty(), "stdout on failure");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "stderr must be one line:\n{err}");
    assert!(lines[0].starts_with("konvertctl: error: "), "stderr: {err}");
    for n in needles {
        assert!(lines[0].contains(n), "stderr does not mention {n:?}: {err}");
    }
    lines[0].to_owned()
}

/// A free UDP port on loopback (bound, then released).
fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Bounded polling: calls `f` every 100 ms, at most ~15 s, until it returns `Some`.
fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..150 {
        if let Some(v) = f() {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

// ---------------------------------------------------------------------------
// Gateways

/// A running `konvertd`, stopped with SIGTERM (then waited for) on drop.
struct Daemon {
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One gateway directory made by `konvertctl init`.
struct Gateway {
    dir: PathBuf,
    port: u16,
}

impl Gateway {
    fn init(root: &Path, authority: &str) -> Self {
        let dir = root.join(authority.split('.').next().unwrap());
        let port = free_port();
        ok(&konvertctl!(
            "init",
            "--authority",
            authority,
            "--dir",
            dir,
            "--listen",
            format!("127.0.0.1:{port}")
        ));
        Self { dir, port }
    }
    fn config(&self) -> PathBuf {
        self.dir.join("konvert.toml")
    }
    fn card(&self) -> PathBuf {
        self.dir.join("card.toml")
    }
    fn socket(&self) -> PathBuf {
        self.dir.join("api.sock")
    }
    fn add_peer(&self, peer: &Gateway) {
        ok(&konvertctl!(
            "peer",
            "add",
            "--config",
            self.config(),
            "--card",
            peer.card(),
            "--address",
            format!("127.0.0.1:{}", peer.port),
            "--agreement",
            "kz-by-2019"
        ));
    }
    /// Starts `konvertd` (log in DIR/konvertd.log) and waits until `health` answers.
    fn start(&self) -> Daemon {
        let log = fs::File::create(self.dir.join("konvertd.log")).unwrap();
        let child = Command::new(bin("konvertd"))
            .arg("--config")
            .arg(self.config())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut d = Daemon { child };
        let sock = self.socket();
        poll("konvertd to answer health", || {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!(
                    "konvertd exited ({status}):\n{}",
                    fs::read_to_string(self.dir.join("konvertd.log")).unwrap_or_default()
                );
            }
            konvertctl!("--socket", sock, "health")
                .status
                .success()
                .then_some(())
        });
        d
    }
    /// `konvertctl --socket DIR/api.sock ARGS…`
    fn ctl(&self, args: &[&OsStr]) -> Output {
        let mut all = vec![OsString::from("--socket"), self.socket().into_os_string()];
        all.extend(args.iter().map(|a| a.to_os_string()));
        konvertctl(all)
    }
}

macro_rules! ctl {
    ($gw:expr, $($arg:expr),* $(,)?) => {
        $gw.ctl(&[$(OsStr::new(&$arg)),*])
    };
}

/// kz.mvd and by.mvd, peers of each other under kz-by-2019, both running.
struct Pair {
    _dir: TempDir,
    kz: Gateway,
    by: Gateway,
    _daemons: Vec<Daemon>,
}

impl Pair {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let kz = Gateway::init(dir.path(), "kz.mvd");
        let by = Gateway::init(dir.path(), "by.mvd");
        kz.add_peer(&by);
        by.add_peer(&kz);
        let daemons = vec![kz.start(), by.start()];
        Self {
            _dir: dir,
            kz,
            by,
            _daemons: daemons,
        }
    }
}

/// Sends FILE from `gw` and returns the message id.
fn send(gw: &Gateway, file: &Path) -> String {
    let v = ok_json(&ctl!(gw, "--json", "send", file));
    assert_eq!(v["state"], "queued", "{v}");
    v["id"].as_str().unwrap().to_owned()
}

/// Asks `status --wait 20 ID` on `gw` (the daemon answers when the receipt
/// is in) until the message is delivered.
fn wait_delivered(gw: &Gateway, id: &str) -> Value {
    poll("the message to be delivered", || {
        let v = ok_json(&ctl!(gw, "--json", "status", "--wait", "20", id));
        match v["state"].as_str().unwrap() {
            "delivered" => Some(v),
            "rejected" | "failed" => panic!("message not delivered: {v}"),
            _ => None,
        }
    })
}

/// A message outside any request case (Art. 8 information from kz.mvd to
/// by.mvd, a summary only), written to `dir/note.json`: the agreement's
/// procedure refuses answers to requests the gateways never saw.
fn note_file(dir: &Path) -> PathBuf {
    let mut m: Value = serde_json::from_str(
        &fs::read_to_string(example("unsolicited_information-kz-am-2024.json")).unwrap(),
    )
    .unwrap();
    m["header"]["agreement"] = json!("kz-by-2019");
    m["header"]["to"] = json!("by.mvd");
    m["header"]["id"] =
        json!(konvert_envelope::model::Id::new(konvert_envelope::model::Timestamp::now()).to_string());
    m["header"]["time"] = json!(konvert_envelope::model::Timestamp::now().to_string());
    m["body"]["content"]
        .as_object_mut()
        .unwrap()
        .remove("attachments");
    let f = dir.join("note.json");
    fs::write(&f, serde_json::to_vec(&m).unwrap()).unwrap();
    f
}

fn example(name: &str) -> PathBuf {
    workspace_root().join("docs/examples").join(name)
}

// ---------------------------------------------------------------------------
// Tests

#[test]
fn message_is_delivered_with_a_receipt_and_handed_to_the_inbox() {
    let p = Pair::start();
    let id = send(&p.kz, &note_file(&p.kz.dir));
    let status = wait_delivered(&p.kz, &id);
    assert_eq!(status["direction"], "outbound");
    assert_eq!(status["peer"], "by.mvd");
    assert_eq!(status["receipt"]["outcome"]["status"], "accepted");

    // The human-readable status names the state.
    let text = ok(&ctl!(p.kz, "status", id));
    assert!(text.contains("delivered"), "{text}");

    // Receipts: listed, shown, exported and verified offline with by.mvd's card only.
    let list = ok_json(&ctl!(p.kz, "receipts", "--peer", "by.mvd", "--json"));
    assert!(list["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["envelope_id"] == id.as_str()));
    let table = ok(&ctl!(p.kz, "receipts"));
    assert!(table.starts_with("ENVELOPE"), "{table}");
    assert!(table.contains(&id), "{table}");
    let shown = ok_json(&ctl!(p.kz, "--json", "receipts", "show", id));
    assert_eq!(shown["receiver"], "by.mvd");
    let r = p.kz.dir.join("receipt.cose");
    ok(&ctl!(p.kz, "receipts", "export", id, "--out", r));
    let verified = ok(&konvertctl!("receipts", "verify", r, "--card", p.by.card()));
    for needle in [id.as_str(), "kz.mvd", "by.mvd", "accepted"] {
        assert!(verified.contains(needle), "{needle} missing:\n{verified}");
    }
    let wrong = konvertctl!("receipts", "verify", r, "--card", p.kz.card());
    one_line_error(&wrong, &["does not verify", "kz.mvd"]);

    // by.mvd: listed in the inbox, shown decrypted, acknowledged, gone.
    let inbox = ok_json(&ctl!(p.by, "inbox", "--json"));
    let items = inbox["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{inbox}");
    assert_eq!(items[0]["id"], id.as_str());
    assert_eq!(items[0]["from"], "kz.mvd");
    let table = ok(&ctl!(p.by, "inbox"));
    assert!(
        table.contains(&id) && table.contains("unsolicited_information"),
        "{table}"
    );
    let msg: Value = serde_json::from_str(&ok(&ctl!(p.by, "inbox", "show", id))).unwrap();
    assert_eq!(msg["body"]["kind"], "unsolicited_information");
    assert_eq!(msg["header"]["id"], id.as_str());
    let acked = ok_json(&ctl!(p.by, "--json", "inbox", "ack", id));
    assert_eq!(acked["state"], "acknowledged");
    let inbox = ok_json(&ctl!(p.by, "inbox", "--json"));
    assert_eq!(inbox["items"], json!([]), "{inbox}");

    // Peers and health.
    let peers = ok_json(&ctl!(p.kz, "--json", "peers"));
    assert_eq!(peers[0]["authority"], "by.mvd");
    let health = ok_json(&ctl!(p.by, "--json", "health"));
    assert_eq!(health["status"], "ok");
    let text = ok(&konvertctl!("--config", p.kz.config(), "health"));
    assert!(text.contains("status:"), "{text}");
}

#[test]
fn attachments_are_uploaded_and_downloaded_unchanged() {
    let p = Pair::start();
    let dir = p.kz.dir.join("outgoing");
    fs::create_dir(&dir).unwrap();
    let mut msg: Value = serde_json::from_str(&fs::read_to_string(example("request.json")).unwrap()).unwrap();
    // Every attachment of the example, in the message's attachment order
    // (persons' photographs and fingerprint cards, then documents), gets a file.
    let mut originals = Vec::new();
    let content = &mut msg["body"]["content"];
    let mut slots: Vec<&mut Value> = Vec::new();
    let (persons, documents) = {
        let obj = content.as_object_mut().unwrap();
        let mut persons = None;
        let mut documents = None;
        for (k, v) in obj.iter_mut() {
            match k.as_str() {
                "persons" => persons = Some(v),
                "attachments" => documents = Some(v),
                _ => {}
            }
        }
        (persons, documents)
    };
    for person in persons.and_then(Value::as_array_mut).into_iter().flatten() {
        let obj = person.as_object_mut().unwrap();
        let mut photos = None;
        let mut card = None;
        for (k, v) in obj.iter_mut() {
            match k.as_str() {
                "photographs" => photos = Some(v),
                "fingerprint_card" => card = Some(v),
                _ => {}
            }
        }
        slots.extend(photos.and_then(Value::as_array_mut).into_iter().flatten());
        slots.extend(card);
    }
    slots.extend(documents.and_then(Value::as_array_mut).into_iter().flatten());
    assert!(!slots.is_empty(), "request.json has attachments");
    for (i, a) in slots.into_iter().enumerate() {
        // Bigger than one 64 KiB piece, different per attachment.
        let bytes: Vec<u8> = (0..150_000u32)
            .map(|n| (n.wrapping_mul(31).wrapping_add(i as u32 * 7) % 251) as u8)
            .collect();
        let name = format!("part-{i}.bin");
        fs::write(dir.join(&name), &bytes).unwrap();
        let obj = a.as_object_mut().unwrap();
        obj.remove("length");
        obj.remove("sha256");
        obj.insert("file".into(), json!(name));
        originals.push(bytes);
    }
    let file = dir.join("request.json");
    fs::write(&file, serde_json::to_vec_pretty(&msg).unwrap()).unwrap();

    let id = send(&p.kz, &file);
    wait_delivered(&p.kz, &id);

    let out_dir = p.by.dir.join("incoming");
    let shown = ok_json(&ctl!(
        p.by,
        "--json",
        "inbox",
        "show",
        id,
        "--attachments-dir",
        out_dir
    ));
    assert_eq!(shown["message"]["body"]["kind"], "request");
    let views = shown["attachments"].as_array().unwrap();
    assert_eq!(views.len(), originals.len());
    let mut written: Vec<PathBuf> = fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    written.sort();
    assert_eq!(written.len(), originals.len(), "{written:?}");
    for (i, bytes) in originals.iter().enumerate() {
        let f = written
            .iter()
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .starts_with(&format!("attachment-{i}."))
            })
            .unwrap();
        assert_eq!(&fs::read(f).unwrap(), bytes, "attachment {i}");
        assert_eq!(views[i]["length"], bytes.len());
    }
}

#[test]
fn errors_are_one_line_and_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let kz = Gateway::init(dir.path(), "kz.mvd");
    let by = Gateway::init(dir.path(), "by.mvd");
    kz.add_peer(&by);
    let _kz = kz.start();

    // A person field outside Art. 6 of kz-by-2019: refused, the field named, the value not.
    let mut msg: Value =
        serde_json::from_str(&fs::read_to_string(example("clarification_answer.json")).unwrap()).unwrap();
    msg["body"]["content"]["persons"][0]["religion"] = json!("православие");
    let file = dir.path().join("bad.json");
    fs::write(&file, serde_json::to_vec(&msg).unwrap()).unwrap();
    let line = one_line_error(&ctl!(kz, "send", file), &["religion"]);
    assert!(!line.contains("православие"), "{line}");

    // Unknown ids: not found.
    let unknown = "019ec9a6-9c80-7137-be01-be76fa861153";
    one_line_error(&ctl!(kz, "status", unknown), &["Not found"]);
    one_line_error(&ctl!(kz, "inbox", "show", unknown), &["Not found"]);
    one_line_error(&ctl!(kz, "receipts", "show", unknown), &["Not found"]);

    // A bad parameter is named.
    one_line_error(&ctl!(kz, "inbox", "--wait", "999"), &["wait"]);

    // No daemon on this socket: the error names the path and suggests --socket.
    let missing = dir.path().join("nowhere.sock");
    let line = one_line_error(&konvertctl!("--socket", missing, "peers"), &["--socket"]);
    assert!(line.contains(missing.to_str().unwrap()), "{line}");
}
