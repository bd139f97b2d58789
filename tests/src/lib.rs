//! Harness for the end-to-end tests in `tests/tests/`: builds the real
//! `konvertctl` and `konvertd` binaries, makes gateway directories with
//! `konvertctl init` / `peer add`, runs `konvertd` processes on loopback,
//! and talks to their local API over its Unix socket with plain HTTP/1.1.
//! For what the sending daemon would refuse to send, envelopes are sealed
//! offline with `konvertctl envelope seal` ([`seal_offline`]) and pushed
//! to the receiving daemon over QUIC with the sender's TLS key
//! ([`push_envelope`]), as a compromised or buggy sending gateway could.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)] // test harness: a panic is the failure report

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The workspace root.
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// `target/<profile>/NAME`, after building the gateway's binaries once per test process.
pub fn bin(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
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
        profile_dir
    });
    dir.join(name)
}

/// Runs `konvertctl ARGS`.
pub fn konvertctl<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(args: I) -> Output {
    Command::new(bin("konvertctl")).args(args).output().unwrap()
}

/// A free UDP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A gateway directory and, while running, its `konvertd` process.
#[derive(Debug)]
pub struct Gateway {
    /// Its authority.
    pub authority: String,
    /// Its directory (from `konvertctl init`).
    pub dir: PathBuf,
    /// Its QUIC port.
    pub port: u16,
    /// Extra environment for `konvertd` (e.g. the test clock's offset file).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Gateway {
    /// `konvertctl init` of `authority` in `parent/authority`.
    pub fn init(parent: &Path, authority: &str) -> Self {
        let port = free_udp_port();
        let dir = parent.join(authority);
        let out = konvertctl([
            "init",
            "--authority",
            authority,
            "--dir",
            dir.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ]);
        assert!(
            out.status.success(),
            "init {authority}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            authority: authority.into(),
            dir,
            port,
            env: Vec::new(),
            child: None,
        }
    }

    /// A gateway directory made earlier (for example by `konvertctl demo --keep`).
    pub fn existing(parent: &Path, authority: &str) -> Self {
        Self {
            authority: authority.into(),
            dir: parent.join(authority),
            port: 0,
            env: Vec::new(),
            child: None,
        }
    }

    /// The configuration file.
    pub fn config(&self) -> PathBuf {
        self.dir.join("konvert.toml")
    }

    /// The public card.
    pub fn card(&self) -> PathBuf {
        self.dir.join("card.toml")
    }

    /// The API socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("api.sock")
    }

    /// Makes `other` a peer of this gateway under `agreement`.
    pub fn add_peer(&self, other: &Gateway, agreement: &str) {
        let out = konvertctl([
            "peer",
            "add",
            "--config",
            self.config().to_str().unwrap(),
            "--card",
            other.card().to_str().unwrap(),
            "--address",
            &format!("127.0.0.1:{}", other.port),
            "--agreement",
            agreement,
        ]);
        assert!(
            out.status.success(),
            "peer add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Replaces `from` by `to` in the configuration file (for limits in tests).
    pub fn edit_config(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(self.config()).unwrap();
        assert!(text.contains(from), "{from:?} not in the configuration:\n{text}");
        std::fs::write(self.config(), text.replacen(from, to, 1)).unwrap();
    }

    /// Starts `konvertd` and waits until its API answers.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.authority);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("konvertd.log"))
            .unwrap();
        let child = Command::new(bin("konvertd"))
            .arg("--config")
            .arg(self.config())
            .env("KONVERT_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!(
                        "konvertd of {} exited with {status}:\n{}",
                        self.authority,
                        self.log()
                    );
                }
            }
            if let Ok((200, _)) = self.try_request("GET", "/v1/health", None) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "konvertd of {} did not come up:\n{}",
                self.authority,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("konvertd.log")).unwrap_or_default()
    }

    /// Stops the daemon gracefully (SIGTERM) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id()).unwrap());
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let status = c.wait().unwrap();
            assert!(
                status.success(),
                "konvertd of {} stopped with {status}:\n{}",
                self.authority,
                self.log()
            );
        }
    }

    /// Asks the daemon to reload its configuration (SIGHUP).
    pub fn reload(&self) {
        let c = self.child.as_ref().expect("daemon not running");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    }

    /// Kills the daemon (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// One HTTP/1.1 request to the local API; returns status and body.
    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
    ) -> std::io::Result<(u16, Vec<u8>)> {
        http(&self.socket(), method, path, body)
    }

    /// The process id of its running `konvertd`.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A value in kB from the `konvertd` process's `/proc/PID/status`, e.g.
    /// `VmHWM` (the peak resident memory so far).
    pub fn proc_status_kb(&self, field: &str) -> u64 {
        let pid = self.pid().expect("konvertd is not running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
    }

    /// Like [`Gateway::try_request`], panicking on I/O errors.
    pub fn request(&self, method: &str, path: &str, body: Option<(&str, &[u8])>) -> (u16, Vec<u8>) {
        self.try_request(method, path, body).unwrap()
    }

    /// GET returning JSON; panics unless 200.
    pub fn get_json(&self, path: &str) -> Value {
        let (status, body) = self.request("GET", path, None);
        assert_eq!(status, 200, "GET {path}: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }

    /// POST a JSON document; returns status and parsed body.
    pub fn post_json(&self, path: &str, doc: &Value) -> (u16, Value) {
        let bytes = serde_json::to_vec(doc).unwrap();
        let (status, body) = self.request("POST", path, Some(("application/json", &bytes)));
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// Polls `GET /v1/messages/{id}?wait=N` (the gateway holds the request
    /// until an outgoing message's receipt arrives, or N seconds pass)
    /// until its state is one of `states`; returns the status document.
    pub fn wait_state(&self, id: &str, states: &[&str], within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .as_secs()
                .clamp(1, 30);
            let (code, body) = self.request("GET", &format!("/v1/messages/{id}?wait={left}"), None);
            if code == 200 {
                let v: Value = serde_json::from_slice(&body).unwrap();
                if states.contains(&v["state"].as_str().unwrap_or("")) {
                    return v;
                }
                if Instant::now() > deadline {
                    panic!("message {id} stayed {}:\n{}", v["state"], self.log());
                }
            } else if Instant::now() > deadline {
                panic!("message {id}: HTTP {code}: {}", String::from_utf8_lossy(&body));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A minimal HTTP/1.1 client over a Unix socket (one request per connection).
pub fn http(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(90)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some((ct, b)) = body {
        req.push_str(&format!("Content-Type: {ct}\r\nContent-Length: {}\r\n", b.len()));
    } else if method == "POST" {
        req.push_str("Content-Length: 0\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    if let Some((_, b)) = body {
        s.write_all(b)?;
    }
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("no HTTP status"))?;
    let mut body = raw[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Ok((status, body))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = eol + 2;
        out.extend_from_slice(&b[start..start + size]);
        b = &b[start + size + 2..];
    }
    out
}

/// An example message from `docs/examples/NAME.json`.
pub fn example(name: &str) -> Value {
    let text = std::fs::read_to_string(
        workspace_root()
            .join("docs/examples")
            .join(format!("{name}.json")),
    )
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A fresh message id (UUIDv7 text).
pub fn new_id() -> String {
    konvert_envelope::model::Id::new(konvert_envelope::model::Timestamp::now()).to_string()
}

/// Replaces every attachment of `v` (objects with a `media_type` and a
/// `sha256`) by an upload to `gw` of `bytes`; returns how many.
pub fn upload_attachments(gw: &Gateway, v: &mut Value, bytes: &[u8]) -> usize {
    let mut n = 0;
    match v {
        Value::Object(map) => {
            if map.contains_key("media_type") && map.contains_key("sha256") {
                let mt = map["media_type"].as_str().unwrap().to_string();
                let (code, body) = gw.request("POST", "/v1/uploads", Some((&mt, bytes)));
                assert_eq!(code, 201, "upload: {}", String::from_utf8_lossy(&body));
                let up: Value = serde_json::from_slice(&body).unwrap();
                *v = json!({ "media_type": mt, "file": format!("upload:{}", up["id"].as_str().unwrap()) });
                return 1;
            }
            for (_, x) in map.iter_mut() {
                n += upload_attachments(gw, x, bytes);
            }
        }
        Value::Array(a) => {
            for x in a {
                n += upload_attachments(gw, x, bytes);
            }
        }
        _ => {}
    }
    n
}

/// An example made ready to send from `gw` to `to`: fresh id, current
/// time, the given reply link, attachments uploaded.
pub fn message(
    gw: &Gateway,
    name: &str,
    to: &str,
    in_reply_to: Option<&str>,
    attachment: &[u8],
) -> (String, Value) {
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
    upload_attachments(gw, &mut m, attachment);
    (id, json!({ "message": m, "signatory": "head" }))
}

/// Submits `doc` (`POST /v1/messages`); returns the message id. Panics unless 202.
pub fn submit(gw: &Gateway, doc: &Value) -> String {
    let (code, body) = gw.post_json("/v1/messages", doc);
    assert_eq!(code, 202, "submit: {body}\n{}", gw.log());
    body["id"].as_str().unwrap().to_string()
}

/// Seals `message` (the JSON form of docs/MODEL.md) offline with
/// `konvertctl envelope seal`: signed by `from`'s signatory `signatory`
/// (`keys/signatories/ID.key.pem`), sealed with `from`'s node keys to
/// `to`'s card, validated against `from`'s copy of the agreement's
/// profile at `now` (the message's own time when `None`). The gateway's
/// procedure checks (cases, consents, its own roster) do not run: that is
/// the point. Every attachment is replaced by a few document bytes.
/// Returns the envelope bytes.
pub fn seal_offline(
    from: &Gateway,
    to: &Gateway,
    signatory: &str,
    message: &Value,
    now: Option<&str>,
) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let mut m = message.clone();
    with_attachment_files(&mut m, dir.path(), b"document bytes");
    let agreement = m["header"]["agreement"].as_str().unwrap().to_owned();
    let input = dir.path().join("message.json");
    std::fs::write(&input, serde_json::to_vec(&m).unwrap()).unwrap();
    let out = dir.path().join("message.env");
    let profile = from.dir.join("profiles").join(format!("{agreement}.toml"));
    let signer = from
        .dir
        .join("keys/signatories")
        .join(format!("{signatory}.key.pem"));
    let mut args: Vec<std::ffi::OsString> = vec![
        "envelope".into(),
        "seal".into(),
        "--keys".into(),
        from.dir.join("keys").into(),
        "--to".into(),
        to.card().into(),
        "--signer".into(),
        signer.into(),
        "--profile".into(),
        profile.into(),
        "--in".into(),
        input.into(),
        "--out".into(),
        out.clone().into(),
    ];
    let time = now.map_or_else(|| m["header"]["time"].as_str().unwrap().to_owned(), str::to_owned);
    args.extend(["--now".into(), time.into()]);
    let o = konvertctl(&args);
    assert!(
        o.status.success(),
        "envelope seal: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::read(out).unwrap()
}

/// Replaces every attachment of `v` by `{"media_type", "file"}` naming a
/// file in `dir` that holds `bytes` (for `konvertctl envelope seal`).
fn with_attachment_files(v: &mut Value, dir: &Path, bytes: &[u8]) {
    match v {
        Value::Object(map) => {
            if map.contains_key("media_type") && map.contains_key("sha256") {
                let mt = map["media_type"].as_str().unwrap().to_string();
                let name = format!("attachment-{}.bin", new_id());
                std::fs::write(dir.join(&name), bytes).unwrap();
                *v = json!({ "media_type": mt, "file": name });
                return;
            }
            for (_, x) in map.iter_mut() {
                with_attachment_files(x, dir, bytes);
            }
        }
        Value::Array(a) => {
            for x in a {
                with_attachment_files(x, dir, bytes);
            }
        }
        _ => {}
    }
}

/// Sends `envelope` to `to`'s running konvertd over QUIC, as `from`'s
/// gateway would: mutual TLS with `from`'s TLS key (`keys/tls.*.pem`),
/// `to` pinned by its card. Returns the receipt, verified with `to`'s
/// node key, in its JSON form (`outcome.code` on a rejection).
pub fn push_envelope(from: &Gateway, to: &Gateway, envelope: &[u8]) -> Value {
    use konvert_gateway::transport::{CloseCode, Endpoint, Peer, PinSet, TransportConfig};
    let card =
        konvert_envelope::keys::AuthorityCard::from_toml_str(&std::fs::read_to_string(to.card()).unwrap())
            .unwrap();
    let pin = card
        .tls_pin
        .as_deref()
        .expect("the card has no TLS pin")
        .parse()
        .unwrap();
    let peer = Peer {
        authority: card.authority.clone(),
        pin,
    };
    let tls = konvert_gateway::daemon::load_tls(&from.dir.join("keys")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let receipt = rt.block_on(async {
        let ep = Endpoint::bind(
            "127.0.0.1:0".parse().unwrap(),
            tls,
            PinSet::new([peer.clone()]).unwrap(),
            TransportConfig::default(),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", to.port).parse().unwrap();
        let conn = ep.connect(addr, &peer).await.unwrap();
        let receipt = conn.send_envelope(envelope.len() as u64, envelope).await.unwrap();
        conn.close(CloseCode::Normal);
        ep.close();
        ep.wait_idle().await;
        receipt
    });
    let r = konvert_envelope::receipt::Receipt::verify(&receipt, &card.node_key).unwrap();
    serde_json::to_value(r).unwrap()
}
