//! End-to-end tests of the offline `konvertctl` commands (`keygen`,
//! `signatory keygen`, `envelope seal|open|inspect`), running the real binary
//! as an operator would: every test works in its own temporary directory,
//! passes the clock with `--now`, and checks exit codes, files, modes and the
//! JSON printed on stdout. Failure paths must end with one line on stderr,
//! `konvertctl: error: …`, naming the problem and never personal data.
//!
//! The binary belongs to `konvert-gateway`, so cargo does not build it for
//! this crate's tests: [`konvertctl_path`] runs `cargo build -p
//! konvert-gateway --bin konvertctl` once (same profile as this test) and
//! uses `target/<profile>/konvertctl` next to the test executable.
#![allow(clippy::unwrap_used)]

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// The clock every command is run with (the profiles are in force then).
const NOW: &str = "2026-11-22T10:00:00Z";

// ---------------------------------------------------------------------------
// Running the binary

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// `target/<profile>/konvertctl`, built once per test process.
///
/// The test executable is `target/<profile>/deps/cli-<hash>`, so the binary is
/// in its parent's parent. `cargo build` runs every time (a no-op when the
/// binary is fresh) so that a stale binary from an older checkout is never
/// tested; it builds the release profile only if this test was.
fn konvertctl_path() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
        let bin = profile_dir.join(format!("konvertctl{}", std::env::consts::EXE_SUFFIX));
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .current_dir(workspace_root())
            .args(["build", "-p", "konvert-gateway", "--bin", "konvertctl"]);
        if profile_dir.file_name() == Some(OsStr::new("release")) {
            build.arg("--release");
        }
        let out = build.output().unwrap();
        assert!(
            out.status.success(),
            "cargo build -p konvert-gateway --bin konvertctl failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(bin.is_file(), "{} missing after cargo build", bin.display());
        bin
    })
}

/// Runs `konvertctl ARGS` and returns what it did.
fn konvertctl<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(konvertctl_path()).args(args).output().unwrap()
}

/// `konvertctl!(a, b, …)`: runs `konvertctl` with arguments of mixed types (`&str`, `Path`, `PathBuf`).
macro_rules! konvertctl {
    ($($arg:expr),* $(,)?) => {
        konvertctl([$(OsStr::new(&$arg)),*])
    };
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

/// Asserts success and returns stdout.
fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "konvertctl failed ({}):\n{}",
        out.status,
        stderr(out)
    );
    stdout(out)
}

/// Asserts success and parses stdout as JSON.
fn ok_json(out: &Output) -> Value {
    serde_json::from_str(&ok(out)).unwrap()
}

/// Asserts a failure reported as exactly one line `konvertctl: error: …`
/// containing every `needle`, with nothing on stdout; returns the line.
fn one_line_error(out: &Output, needles: &[&str]) -> String {
    let err = stderr(out);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr:\n{err}"
    );
    assert_eq!(out.status.code(), Some(1), "exit code; stderr:\n{err}");
    assert!(out.stdout.is_empty(), "stdout on failure:\n{}", stdout(out));
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "stderr must be one line:\n{err}");
    assert!(lines[0].starts_with("konvertctl: error: "), "stderr: {err}");
    for n in needles {
        assert!(lines[0].contains(n), "stderr does not mention {n:?}: {err}");
    }
    lines[0].to_owned()
}

// ---------------------------------------------------------------------------
// Keys, examples and messages

fn examples_dir() -> PathBuf {
    workspace_root().join("docs/examples")
}

fn profile_path(agreement: &str) -> PathBuf {
    workspace_root().join(format!("deploy/profiles/{agreement}.toml"))
}

/// Node keys of three authorities and two signatories, in one temporary directory.
struct Fixture {
    dir: TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for authority in ["kz.mvd", "by.mvd", "am.mcs"] {
            let d = dir.path().join(authority);
            ok(&konvertctl!("keygen", "--authority", authority, "--dir", d));
        }
        for sig in ["signatory.pem", "other.pem"] {
            ok(&konvertctl!("signatory", "keygen", "--out", dir.path().join(sig)));
        }
        Fixture { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Key directory of an authority.
    fn keys(&self, authority: &str) -> PathBuf {
        self.path(authority)
    }

    fn card(&self, authority: &str) -> PathBuf {
        self.keys(authority).join("card.toml")
    }

    fn signer(&self) -> PathBuf {
        self.path("signatory.pem")
    }

    fn signer_pub(&self) -> PathBuf {
        self.path("signatory.pem.pub")
    }

    /// Seals `msg` from `from` to `to` under `agreement` into `out` (`--json`: the summary).
    fn seal(&self, msg: &Path, from: &str, to: &str, agreement: &str, out: &Path) -> Output {
        konvertctl!(
            "--json",
            "envelope",
            "seal",
            "--keys",
            self.keys(from),
            "--to",
            self.card(to),
            "--signer",
            self.signer(),
            "--profile",
            profile_path(agreement),
            "--in",
            msg,
            "--out",
            out,
            "--now",
            NOW
        )
    }

    /// Opens `env` as `to` (sent by `from`), trusting `signers`, with extra arguments.
    fn open(&self, env: &Path, from: &str, to: &str, signers: &[PathBuf], extra: &[&OsStr]) -> Output {
        self.open_with(env, &self.keys(to), from, signers, "kz-by-2019", extra)
    }

    fn open_with(
        &self,
        env: &Path,
        keys: &Path,
        from: &str,
        signers: &[PathBuf],
        agreement: &str,
        extra: &[&OsStr],
    ) -> Output {
        let mut a: Vec<&OsStr> = vec![
            "--json".as_ref(),
            "envelope".as_ref(),
            "open".as_ref(),
            "--keys".as_ref(),
            keys.as_os_str(),
        ];
        let card = self.card(from);
        let profile = profile_path(agreement);
        a.extend([OsStr::new("--from"), card.as_os_str()]);
        for s in signers {
            a.extend([OsStr::new("--signers"), s.as_os_str()]);
        }
        a.extend([
            OsStr::new("--profile"),
            profile.as_os_str(),
            OsStr::new("--in"),
            env.as_os_str(),
            OsStr::new("--now"),
            OsStr::new(NOW),
        ]);
        a.extend_from_slice(extra);
        konvertctl(a)
    }
}

fn load_example(name: &str) -> Value {
    serde_json::from_slice(&fs::read(examples_dir().join(name)).unwrap()).unwrap()
}

/// Bytes of the `index`th attachment: JPEG-like (SOI/APP0 magic), distinct per
/// index, and large enough for the first to span several 64 KiB body chunks.
fn attachment_bytes(index: usize) -> Vec<u8> {
    let len = if index == 0 { 150_000 } else { 100 + index * 37 };
    let mut b = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0x00];
    b.extend((0..len).map(|i| (i * 31 + index * 7 + i / 251) as u8));
    b.extend([0xFF, 0xD9]);
    b
}

/// A message ready to seal: the JSON file and the bytes of its attachments.
struct Prepared {
    path: PathBuf,
    /// The message as written (attachments with `file`).
    json: Value,
    /// Attachment bytes in the message's attachment order (see [`for_each_attachment`]).
    attachments: Vec<Vec<u8>>,
}

/// Calls `f` on every attachment of a message in the message's attachment
/// order (PROTOCOL.md §3.3): for each person of the body, the photographs and
/// then the fingerprint card; then the body's own `attachments`. (JSON maps
/// here are sorted by key, so document order cannot be used.)
fn for_each_attachment(msg: &mut Value, f: &mut dyn FnMut(&mut serde_json::Map<String, Value>)) {
    let mut objects: Vec<&mut Value> = Vec::new();
    let content = msg["body"]["content"].as_object_mut().unwrap();
    let (mut persons, mut documents) = (None, None);
    for (k, v) in content.iter_mut() {
        match k.as_str() {
            "persons" => persons = Some(v),
            "attachments" => documents = Some(v),
            _ => {}
        }
    }
    for person in persons.and_then(Value::as_array_mut).into_iter().flatten() {
        let person = person.as_object_mut().unwrap();
        let (mut photographs, mut card) = (None, None);
        for (k, v) in person.iter_mut() {
            match k.as_str() {
                "photographs" => photographs = Some(v),
                "fingerprint_card" => card = Some(v),
                _ => {}
            }
        }
        objects.extend(photographs.and_then(Value::as_array_mut).into_iter().flatten());
        objects.extend(card);
    }
    objects.extend(documents.and_then(Value::as_array_mut).into_iter().flatten());
    for o in objects {
        f(o.as_object_mut().unwrap());
    }
}

/// Number of objects with a "media_type" anywhere in `v`: every attachment must be reached.
fn count_media_types(v: &Value) -> usize {
    match v {
        Value::Object(m) => {
            usize::from(m.contains_key("media_type")) + m.values().map(count_media_types).sum::<usize>()
        }
        Value::Array(a) => a.iter().map(count_media_types).sum(),
        _ => 0,
    }
}

/// Writes `msg` into `dir/name` in the integrator form: every attachment
/// loses `length`/`sha256` and names a file written next to the message.
fn prepare(dir: &Path, name: &str, mut msg: Value) -> Prepared {
    fs::create_dir_all(dir).unwrap();
    let mut attachments = Vec::new();
    for_each_attachment(&mut msg, &mut |att| {
        let i = attachments.len();
        let bytes = attachment_bytes(i);
        let file = format!("photo-{i}.jpg");
        fs::write(dir.join(&file), &bytes).unwrap();
        att.remove("length");
        att.remove("sha256");
        att.insert("file".into(), file.into());
        attachments.push(bytes);
    });
    assert_eq!(
        attachments.len(),
        count_media_types(&msg),
        "{name}: attachment not found"
    );
    let path = dir.join(name);
    fs::write(&path, serde_json::to_vec_pretty(&msg).unwrap()).unwrap();
    Prepared {
        path,
        json: msg,
        attachments,
    }
}

/// What the opened message must be: the prepared one with `file` replaced by
/// the attachments' real length and SHA-256.
fn expected_opened(p: &Prepared) -> Value {
    let mut v = p.json.clone();
    let mut i = 0;
    for_each_attachment(&mut v, &mut |att| {
        let bytes = &p.attachments[i];
        att.remove("file");
        att.insert("length".into(), json!(bytes.len()));
        att.insert("sha256".into(), json!(hex::encode(Sha256::digest(bytes))));
        i += 1;
    });
    v
}

fn header_str<'a>(msg: &'a Value, field: &str) -> &'a str {
    msg["header"][field].as_str().unwrap()
}

/// Every surname (Cyrillic and Latin) of the persons in a message.
fn surnames(msg: &Value) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::Object(s)) = m.get("surname") {
                    out.extend(s.values().filter_map(Value::as_str).map(str::to_owned));
                }
                m.values().for_each(|x| walk(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(msg, &mut out);
    out
}

/// Every text of a message body of four characters or more (names, places, substance).
fn body_texts(msg: &Value) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) if s.chars().count() >= 4 => out.push(s.clone()),
            Value::Object(m) => m.values().for_each(|x| walk(x, out)),
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(&msg["body"]["content"], &mut out);
    out
}

fn assert_no_personal_data(text: &str, msg: &Value) {
    let names = surnames(msg);
    assert!(!names.is_empty(), "example without surnames");
    for n in names {
        assert!(!text.contains(&n), "output contains the surname {n:?}:\n{text}");
        assert!(
            !text.to_lowercase().contains(&n.to_lowercase()),
            "output contains the surname {n:?} (case-insensitive):\n{text}"
        );
    }
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// `request.json` (kz.mvd → by.mvd, one attachment) prepared and sealed; returns (fixture, message, envelope).
fn sealed_request() -> (Fixture, Prepared, PathBuf) {
    let fx = Fixture::new();
    let p = prepare(&fx.path("msg"), "request.json", load_example("request.json"));
    let env = fx.path("request.env");
    ok(&fx.seal(&p.path, "kz.mvd", "by.mvd", "kz-by-2019", &env));
    (fx, p, env)
}

// ---------------------------------------------------------------------------
// Help

#[test]
fn help_texts_exit_zero_and_show_an_example() {
    for a in [
        &["--help"][..],
        &["keygen", "--help"],
        &["envelope", "seal", "--help"],
        &["envelope", "open", "--help"],
        &["envelope", "inspect", "--help"],
        &["signatory", "keygen", "--help"],
    ] {
        let out = konvertctl(a);
        let text = ok(&out);
        if a.len() > 1 {
            assert!(
                text.contains("Example"),
                "konvertctl {a:?} has no example:\n{text}"
            );
        }
        assert!(text.contains("Usage"), "{a:?}:\n{text}");
    }
    // The top-level help lists the commands; its subcommands carry the examples.
    let top = ok(&konvertctl(["--help"]));
    for c in ["keygen", "signatory", "envelope"] {
        assert!(top.contains(c), "--help does not list {c}:\n{top}");
    }
}

#[test]
fn top_level_help_contains_example() {
    let top = ok(&konvertctl(["--help"]));
    assert!(
        top.contains("Example"),
        "konvertctl --help has no example:\n{top}"
    );
}

// ---------------------------------------------------------------------------
// keygen

#[test]
fn keygen_writes_secret_keys_0600_and_public_card_0644() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("kz");
    let out = ok(&konvertctl!("keygen", "--authority", "kz.mvd", "--dir", dir));
    assert!(out.contains("kz.mvd"), "{out}");
    assert_eq!(mode(&dir), 0o700, "key directory mode");
    assert_eq!(mode(&dir.join("node.key.pem")), 0o600);
    assert_eq!(mode(&dir.join("age.key")), 0o600);
    assert_eq!(mode(&dir.join("card.toml")), 0o644);

    let node = fs::read_to_string(dir.join("node.key.pem")).unwrap();
    assert!(node.starts_with("-----BEGIN PRIVATE KEY-----"), "{node}");
    let age = fs::read_to_string(dir.join("age.key")).unwrap();
    assert!(age.contains("AGE-SECRET-KEY-1"), "age.key is not an age identity");
    let card = fs::read_to_string(dir.join("card.toml")).unwrap();
    assert!(card.contains("authority = \"kz.mvd\""), "{card}");
    assert!(card.contains("age1"), "{card}");
    assert!(card.contains("-----BEGIN PUBLIC KEY-----"), "{card}");
    assert!(
        !card.contains("PRIVATE") && !card.contains("AGE-SECRET-KEY"),
        "secret in card:\n{card}"
    );
    // The printed age recipient is the one in the card.
    let recipient = out.split_whitespace().find(|w| w.starts_with("age1")).unwrap();
    assert!(card.contains(recipient), "{out}\n{card}");
}

#[test]
fn keygen_refuses_to_overwrite_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("by");
    let keygen = |force: bool| {
        let mut a = vec![
            OsStr::new("keygen"),
            "--authority".as_ref(),
            "by.mvd".as_ref(),
            "--dir".as_ref(),
            dir.as_os_str(),
        ];
        if force {
            a.push("--force".as_ref());
        }
        konvertctl(a)
    };
    ok(&keygen(false));
    let files = ["node.key.pem", "age.key", "card.toml"];
    let before: Vec<Vec<u8>> = files.iter().map(|f| fs::read(dir.join(f)).unwrap()).collect();

    let out = keygen(false);
    let line = one_line_error(&out, &["already exists"]);
    assert!(line.contains(&*dir.to_string_lossy()), "{line}");
    let after: Vec<Vec<u8>> = files.iter().map(|f| fs::read(dir.join(f)).unwrap()).collect();
    assert_eq!(before, after, "a refused keygen changed the keys");

    ok(&keygen(true));
    for (f, old) in files.iter().zip(&before) {
        assert_ne!(
            &fs::read(dir.join(f)).unwrap(),
            old,
            "--force did not replace {f}"
        );
    }
    assert_eq!(mode(&dir.join("node.key.pem")), 0o600);
    assert_eq!(mode(&dir.join("age.key")), 0o600);
    assert_eq!(mode(&dir.join("card.toml")), 0o644);
}

#[test]
fn keygen_rejects_bad_authority_id() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("keys");
    let out = konvertctl!("keygen", "--authority", "KZ MVD", "--dir", dir);
    assert!(!out.status.success());
    assert_ne!(out.status.code(), Some(0));
    let err = stderr(&out);
    // clap reports argument errors itself: one error line, then a hint to --help.
    let errors: Vec<&str> = err
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("For more information"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line expected:\n{err}");
    assert!(errors[0].contains("error"), "{err}");
    assert!(errors[0].contains("invalid authority id"), "{err}");
    assert!(errors[0].contains("KZ MVD"), "{err}");
    assert!(
        errors[0].contains("lowercase"),
        "does not say what is allowed: {err}"
    );
    assert!(!dir.exists(), "keys written for an invalid authority id");
}

// ---------------------------------------------------------------------------
// signatory keygen

#[test]
fn signatory_keygen_writes_pkcs8_and_spki_pem() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("ivanov.key.pem");
    let pubkey = tmp.path().join("ivanov.key.pem.pub");
    let out = ok(&konvertctl!("signatory", "keygen", "--out", key));
    assert!(out.contains("key id"), "{out}");
    assert_eq!(mode(&key), 0o600);
    let pem = fs::read_to_string(&key).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
    assert!(pem.trim_end().ends_with("-----END PRIVATE KEY-----"), "{pem}");
    let pub_pem = fs::read_to_string(&pubkey).unwrap();
    assert!(pub_pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pub_pem}");
    assert!(
        pub_pem.trim_end().ends_with("-----END PUBLIC KEY-----"),
        "{pub_pem}"
    );

    // A second run refuses to overwrite either file.
    let again = konvertctl!("signatory", "keygen", "--out", key);
    one_line_error(&again, &["already exists"]);
    assert_eq!(fs::read_to_string(&key).unwrap(), pem);

    // OpenSSL reads the public key (the private key: see the ignored test below).
    if let Some(out) = openssl_pkey(&["-pubin", "-noout", "-text"], &pubkey) {
        assert!(
            out.status.success(),
            "openssl pkey -pubin -in {}: {}",
            pubkey.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("ED25519"));
    }
}

/// Runs `openssl pkey ARGS -in FILE`; `None` (with a note) if openssl is not on PATH.
fn openssl_pkey(args: &[&str], file: &Path) -> Option<Output> {
    match Command::new("openssl")
        .args(["pkey", "-in"])
        .arg(file)
        .args(args)
        .output()
    {
        Ok(out) => Some(out),
        Err(_) => {
            eprintln!(
                "note: openssl not on PATH; skipping the OpenSSL check of {}",
                file.display()
            );
            None
        }
    }
}

/// Private keys (signatory and node) are PKCS#8 that OpenSSL reads, and the
/// public key OpenSSL derives is the one written beside it.
#[test]
fn openssl_reads_the_private_keys() {
    let fx = Fixture::new();
    for key in [fx.signer(), fx.keys("kz.mvd").join("node.key.pem")] {
        let Some(out) = openssl_pkey(&["-noout"], &key) else {
            return;
        };
        assert!(
            out.status.success(),
            "openssl pkey -in {}: {}",
            key.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let derived = openssl_pkey(&["-pubout"], &fx.signer()).unwrap();
    assert!(derived.status.success());
    assert_eq!(
        String::from_utf8(derived.stdout).unwrap(),
        fs::read_to_string(fx.signer_pub()).unwrap()
    );
}

// ---------------------------------------------------------------------------
// seal and open

#[test]
fn seal_prints_summary_and_open_returns_the_message() {
    let fx = Fixture::new();
    let example = load_example("request.json");
    let p = prepare(&fx.path("msg"), "request.json", example.clone());
    let env = fx.path("request.env");
    let summary = ok_json(&fx.seal(&p.path, "kz.mvd", "by.mvd", "kz-by-2019", &env));

    let size = fs::metadata(&env).unwrap().len();
    assert_eq!(summary["size"], json!(size));
    assert_eq!(summary["message_id"], example["header"]["id"]);
    assert_eq!(summary["header"]["from"], "kz.mvd");
    assert_eq!(summary["header"]["to"], "by.mvd");
    assert_eq!(summary["header"]["agreement"], "kz-by-2019");
    assert_eq!(summary["header"]["created"], NOW);
    assert_eq!(summary["header"]["attachments"], 1);
    let digest = summary["digest"].as_str().unwrap();
    assert_eq!(digest.len(), 64, "{summary}");
    assert!(digest.bytes().all(|b| b.is_ascii_hexdigit()), "{summary}");
    // Sealed means encrypted: no cleartext name or substance in the file.
    let bytes = fs::read(&env).unwrap();
    for t in body_texts(&example) {
        assert!(
            !bytes.windows(t.len()).any(|w| w == t.as_bytes()),
            "envelope holds cleartext {t:?}"
        );
    }

    let opened = ok_json(&fx.open(&env, "kz.mvd", "by.mvd", &[fx.signer_pub()], &[]));
    assert_eq!(opened["envelope"], summary["header"]);
    assert_eq!(opened["digest"], summary["digest"]);
    assert_eq!(opened["message"]["header"]["id"], example["header"]["id"]);
    assert_eq!(opened["message"]["header"], example["header"]);
    assert_eq!(opened["message"], expected_opened(&p));
    assert!(opened.get("attachment_files").is_none(), "{opened}");

    // Sealing again over the same output is refused.
    let again = fx.seal(&p.path, "kz.mvd", "by.mvd", "kz-by-2019", &env);
    one_line_error(&again, &["already exists"]);
    assert_eq!(fs::read(&env).unwrap(), bytes);
}

/// Every shipped example seals from its `from` to its `to` under its
/// agreement and opens to the same message.
#[test]
fn every_example_round_trips() {
    let fx = Fixture::new();
    let mut names: Vec<String> = fs::read_dir(examples_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    assert!(names.len() >= 10, "examples missing: {names:?}");
    for name in &names {
        let example = load_example(name);
        let (from, to, agreement) = (
            header_str(&example, "from"),
            header_str(&example, "to"),
            header_str(&example, "agreement"),
        );
        let p = prepare(&fx.path(&format!("msg-{name}")), name, example.clone());
        let env = fx.path(&format!("{name}.env"));
        let summary = ok_json(&fx.seal(&p.path, from, to, agreement, &env));
        assert_eq!(
            summary["header"]["attachments"],
            json!(p.attachments.len()),
            "{name}"
        );
        // Two trusted signers, comma-separated: the right one is among them.
        let signers = format!(
            "{},{}",
            fx.path("other.pem.pub").display(),
            fx.signer_pub().display()
        );
        let out = fx.open_with(
            &env,
            &fx.keys(to),
            from,
            &[PathBuf::from(signers)],
            agreement,
            &[],
        );
        let opened = ok_json(&out);
        assert_eq!(opened["message"], expected_opened(&p), "{name}");
        assert_eq!(opened["digest"], summary["digest"], "{name}");
    }
}

#[test]
fn open_writes_attachments_with_identical_bytes() {
    let fx = Fixture::new();
    // response.json (by.mvd → kz.mvd): a photograph, a fingerprint card, a document.
    let example = load_example("response.json");
    let p = prepare(&fx.path("msg"), "response.json", example);
    assert_eq!(p.attachments.len(), 3);
    let env = fx.path("response.env");
    ok(&fx.seal(&p.path, "by.mvd", "kz.mvd", "kz-by-2019", &env));

    let out_dir = fx.path("out");
    let opened = ok_json(&fx.open(
        &env,
        "by.mvd",
        "kz.mvd",
        &[fx.signer_pub()],
        &["--attachments-dir".as_ref(), out_dir.as_os_str()],
    ));
    let expected_files: Vec<PathBuf> = ["attachment-0.jpg", "attachment-1.png", "attachment-2.pdf"]
        .iter()
        .map(|f| out_dir.join(f))
        .collect();
    let listed: Vec<PathBuf> = opened["attachment_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| PathBuf::from(v.as_str().unwrap()))
        .collect();
    assert_eq!(listed, expected_files);
    for (f, bytes) in expected_files.iter().zip(&p.attachments) {
        assert_eq!(&fs::read(f).unwrap(), bytes, "{}", f.display());
    }
    let mut entries: Vec<_> = fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    assert_eq!(entries, expected_files, "no temporary files left behind");
    assert_eq!(opened["message"], expected_opened(&p));
}

#[test]
fn open_keeps_no_attachment_when_a_check_fails() {
    let (fx, _p, env) = sealed_request();
    let out_dir = fx.path("out");
    let out = fx.open(
        &env,
        "kz.mvd",
        "by.mvd",
        &[fx.path("other.pem.pub")],
        &["--attachments-dir".as_ref(), out_dir.as_os_str()],
    );
    one_line_error(&out, &["signatory"]);
    if out_dir.exists() {
        let left: Vec<_> = fs::read_dir(&out_dir).unwrap().collect();
        assert!(left.is_empty(), "attachments kept after a failed open: {left:?}");
    }
}

#[test]
fn seal_reads_attachment_files_relative_to_the_message() {
    let fx = Fixture::new();
    let p = prepare(&fx.path("msg"), "request.json", load_example("request.json"));
    // A missing attachment file is named, with its index.
    fs::remove_file(fx.path("msg/photo-0.jpg")).unwrap();
    let env = fx.path("request.env");
    let out = fx.seal(&p.path, "kz.mvd", "by.mvd", "kz-by-2019", &env);
    one_line_error(&out, &["attachment 0", "photo-0.jpg"]);
    assert!(!env.exists());

    // The shipped example is in sealed form: attachments without "file".
    let shipped = examples_dir().join("request.json");
    let out = fx.seal(&shipped, "kz.mvd", "by.mvd", "kz-by-2019", &env);
    one_line_error(&out, &["attachment 0", "\"file\""]);
    assert!(!env.exists());
}

// ---------------------------------------------------------------------------
// inspect

#[test]
fn inspect_shows_only_the_routing_header_and_extracts_the_age_body() {
    let (fx, p, env) = sealed_request();
    let body = fx.path("body.age");
    let out = konvertctl!("--json", "envelope", "inspect", "--in", env, "--age-body", body);
    let text = ok(&out);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["version"], 1);
    let h = &v["header"];
    assert!(h["id"].is_string(), "{v}");
    assert_eq!(h["from"], "kz.mvd");
    assert_eq!(h["to"], "by.mvd");
    assert_eq!(h["agreement"], "kz-by-2019");
    assert_eq!(h["created"], NOW);
    assert_eq!(h["attachments"], 1);
    let mut keys: Vec<&str> = h.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["agreement", "attachments", "created", "from", "id", "to"]);
    let size = fs::metadata(&env).unwrap().len();
    assert_eq!(v["size"], json!(size));
    let body_len = fs::metadata(&body).unwrap().len();
    assert_eq!(v["body_size"], json!(body_len));
    assert!(body_len < size);
    assert_eq!(v["digest"].as_str().unwrap().len(), 64);

    // Nothing of the message in the cleartext view.
    assert_no_personal_data(&text, &p.json);
    for t in body_texts(&p.json) {
        assert!(!text.contains(&t), "inspect shows message text {t:?}:\n{text}");
    }
    assert!(
        !text.contains("request"),
        "inspect shows the message kind:\n{text}"
    );

    // The digest is the one `open` reports.
    let opened = ok_json(&fx.open(&env, "kz.mvd", "by.mvd", &[fx.signer_pub()], &[]));
    assert_eq!(opened["digest"], v["digest"]);

    // --age-body is not overwritten without --force.
    let again = konvertctl!("envelope", "inspect", "--in", env, "--age-body", body);
    one_line_error(&again, &["already exists"]);

    // Any age implementation decrypts the body with the recipient's identity.
    let age_available = Command::new("age").arg("--version").output().is_ok();
    if !age_available {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "the age command-line tool must be installed on CI (Debian package `age`)"
        );
        eprintln!("note: `age` not on PATH; skipping decryption of the body with age");
        return;
    }
    let dec = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(fx.keys("by.mvd").join("age.key"))
        .arg(&body)
        .output()
        .unwrap();
    assert!(
        dec.status.success(),
        "age -d: {}",
        String::from_utf8_lossy(&dec.stderr)
    );
    let items = cbor_byte_string_sequence(&dec.stdout);
    assert_eq!(
        items.len(),
        p.attachments.len() + 1,
        "attachments, then the signed message"
    );
    for (got, want) in items.iter().zip(&p.attachments) {
        assert_eq!(got.0, *want, "attachment plaintext");
        assert!(
            got.1,
            "attachments are streamed as indefinite-length byte strings"
        );
    }
    let (signed, indefinite) = items.last().unwrap();
    assert!(!indefinite, "the signed message is a definite-length byte string");
    assert_eq!(signed[0], 0x82, "signed-message is a CBOR array of two");
    let surname = p.json["body"]["content"]["persons"][0]["surname"]["cyrillic"]
        .as_str()
        .unwrap();
    assert!(
        signed.windows(surname.len()).any(|w| w == surname.as_bytes()),
        "the signed message does not hold the person's surname"
    );
    // The other identity cannot decrypt it.
    let wrong = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(fx.keys("kz.mvd").join("age.key"))
        .arg(&body)
        .output()
        .unwrap();
    assert!(!wrong.status.success());
}

/// Parses a CBOR sequence of byte strings (RFC 8742, RFC 8949 major type 2,
/// definite or indefinite length) that must fill `b` exactly; returns each
/// string's content and whether it was indefinite.
fn cbor_byte_string_sequence(mut b: &[u8]) -> Vec<(Vec<u8>, bool)> {
    fn head(b: &mut &[u8]) -> (u8, Option<u64>) {
        let first = b[0];
        *b = &b[1..];
        let (major, info) = (first >> 5, first & 0x1f);
        let n = match info {
            0..=23 => 1,
            24 => 1,
            25 => 2,
            26 => 4,
            27 => 8,
            31 => return (major, None),
            _ => panic!("reserved additional info {info}"),
        };
        if info < 24 {
            return (major, Some(u64::from(info)));
        }
        let len = b[..n].iter().fold(0u64, |acc, &x| acc << 8 | u64::from(x));
        *b = &b[n..];
        (major, Some(len))
    }
    fn take(b: &mut &[u8], len: u64) -> Vec<u8> {
        let len = usize::try_from(len).unwrap();
        let v = b[..len].to_vec();
        *b = &b[len..];
        v
    }
    let mut items = Vec::new();
    while !b.is_empty() {
        match head(&mut b) {
            (2, Some(len)) => items.push((take(&mut b, len), false)),
            (2, None) => {
                let mut content = Vec::new();
                while b[0] != 0xff {
                    let (major, len) = head(&mut b);
                    assert_eq!(major, 2, "chunk of an indefinite byte string");
                    content.extend(take(&mut b, len.unwrap()));
                }
                b = &b[1..];
                items.push((content, true));
            }
            (major, _) => panic!("body plaintext item of major type {major}, not a byte string"),
        }
    }
    items
}

// ---------------------------------------------------------------------------
// Failure paths: one line, the problem named, no personal data

#[test]
fn open_with_the_wrong_recipients_keys_says_addressed_to() {
    let (fx, p, env) = sealed_request();
    let out = fx.open_with(
        &env,
        &fx.keys("am.mcs"),
        "kz.mvd",
        &[fx.signer_pub()],
        "kz-by-2019",
        &[],
    );
    let line = one_line_error(&out, &["addressed to", "by.mvd", "am.mcs"]);
    assert_no_personal_data(&line, &p.json);
}

#[test]
fn open_with_an_untrusted_signatory_says_signatory() {
    let (fx, p, env) = sealed_request();
    let out = fx.open(&env, "kz.mvd", "by.mvd", &[fx.path("other.pem.pub")], &[]);
    let line = one_line_error(&out, &["signatory"]);
    assert_no_personal_data(&line, &p.json);
}

#[test]
fn open_of_a_tampered_envelope_says_node_signature() {
    let (fx, p, env) = sealed_request();
    let mut bytes = fs::read(&env).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    let tampered = fx.path("tampered.env");
    fs::write(&tampered, &bytes).unwrap();
    let out = fx.open(&tampered, "kz.mvd", "by.mvd", &[fx.signer_pub()], &[]);
    let line = one_line_error(&out, &["node signature"]);
    assert_no_personal_data(&line, &p.json);
}

#[test]
fn open_of_a_truncated_envelope_says_truncated() {
    let (fx, p, env) = sealed_request();
    let bytes = fs::read(&env).unwrap();
    for (i, cut) in [bytes.len() / 2, bytes.len() - 1, 10].into_iter().enumerate() {
        let truncated = fx.path(&format!("truncated-{i}.env"));
        fs::write(&truncated, &bytes[..cut]).unwrap();
        let out = fx.open(&truncated, "kz.mvd", "by.mvd", &[fx.signer_pub()], &[]);
        let line = one_line_error(&out, &[]);
        assert!(line.contains("truncated") || line.contains("malformed"), "{line}");
        assert_no_personal_data(&line, &p.json);
    }
}

#[test]
fn open_over_max_size_names_the_limit() {
    let (fx, p, env) = sealed_request();
    let out = fx.open(
        &env,
        "kz.mvd",
        "by.mvd",
        &[fx.signer_pub()],
        &["--max-size".as_ref(), "1000".as_ref()],
    );
    let line = one_line_error(&out, &["size limit", "1000"]);
    assert_no_personal_data(&line, &p.json);
}

#[test]
fn seal_refuses_a_person_field_outside_art_6() {
    let fx = Fixture::new();
    let mut msg = load_example("request.json");
    msg["body"]["content"]["persons"][0]["religion"] = json!("православие");
    let p = prepare(&fx.path("msg"), "request.json", msg);
    let env = fx.path("out.env");
    let out = fx.seal(&p.path, "kz.mvd", "by.mvd", "kz-by-2019", &env);
    let line = one_line_error(&out, &["religion", "request.json"]);
    assert!(!line.contains("православие"), "{line}");
    assert_no_personal_data(&line, &p.json);
    assert!(!env.exists());
}

#[test]
fn seal_refuses_a_category_outside_art_5() {
    let fx = Fixture::new();
    let mut msg = load_example("request.json");
    msg["body"]["content"]["categories"] = json!(["temporarily_staying", "tourist"]);
    let p = prepare(&fx.path("msg"), "request.json", msg);
    let env = fx.path("out.env");
    let out = fx.seal(&p.path, "kz.mvd", "by.mvd", "kz-by-2019", &env);
    let line = one_line_error(
        &out,
        &[
            "not a valid message",
            "unknown variant",
            "temporarily_staying",
            "at line",
        ],
    );
    assert_no_personal_data(&line, &p.json);
    assert!(!env.exists());
}

#[test]
fn secret_key_files_readable_by_others_are_refused() {
    let (fx, p, env) = sealed_request();
    let chmod = |f: &Path, m: u32| fs::set_permissions(f, fs::Permissions::from_mode(m)).unwrap();

    // The signatory's key.
    chmod(&fx.signer(), 0o644);
    let out = fx.seal(&p.path, "kz.mvd", "by.mvd", "kz-by-2019", &fx.path("a.env"));
    one_line_error(&out, &["signatory.pem", "chmod 600"]);
    chmod(&fx.signer(), 0o600);

    // The receiving node's age identity and the sending node's signing key.
    let age_key = fx.keys("by.mvd").join("age.key");
    chmod(&age_key, 0o644);
    let out = fx.open(&env, "kz.mvd", "by.mvd", &[fx.signer_pub()], &[]);
    one_line_error(&out, &["age.key", "chmod 600"]);
    let node_key = fx.keys("kz.mvd").join("node.key.pem");
    chmod(&node_key, 0o640);
    let out = fx.seal(&p.path, "kz.mvd", "by.mvd", "kz-by-2019", &fx.path("b.env"));
    one_line_error(&out, &["node.key.pem", "chmod 600"]);
    assert!(!fx.path("a.env").exists() && !fx.path("b.env").exists());
}

#[test]
fn missing_input_files_are_named() {
    let (fx, _p, env) = sealed_request();
    let missing = fx.path("no-such.env");
    let out = fx.open(&missing, "kz.mvd", "by.mvd", &[fx.signer_pub()], &[]);
    one_line_error(&out, &[&missing.to_string_lossy()]);

    let out = konvertctl!("envelope", "inspect", "--in", missing);
    one_line_error(&out, &[&missing.to_string_lossy()]);

    let missing_msg = fx.path("no-such.json");
    let out = fx.seal(&missing_msg, "kz.mvd", "by.mvd", "kz-by-2019", &fx.path("x.env"));
    one_line_error(&out, &[&missing_msg.to_string_lossy()]);

    let missing_pub = fx.path("no-such.pem.pub");
    let out = fx.open(&env, "kz.mvd", "by.mvd", std::slice::from_ref(&missing_pub), &[]);
    one_line_error(&out, &[&missing_pub.to_string_lossy()]);
}

/// Messages that do not parse must not have their values echoed in the
/// error: serde's "invalid type"/"unknown variant" texts quote the offending
/// value, which here is a person's surname.
#[test]
fn malformed_message_errors_never_quote_personal_data() {
    let fx = Fixture::new();
    let example = load_example("request.json");
    let surname = example["body"]["content"]["persons"][0]["surname"].clone();
    let cases: [(&str, Value); 3] = [
        ("surname", surname["cyrillic"].clone()),
        ("sex", surname["cyrillic"].clone()),
        ("date_of_birth", surname["latin"].clone()),
    ];
    for (field, value) in cases {
        let mut msg = example.clone();
        msg["body"]["content"]["persons"][0][field] = value;
        let p = prepare(&fx.path(&format!("msg-{field}")), "request.json", msg);
        let out = fx.seal(&p.path, "kz.mvd", "by.mvd", "kz-by-2019", &fx.path("x.env"));
        let line = one_line_error(&out, &["not a valid message"]);
        assert_no_personal_data(&line, &example);
    }
}

// ---------------------------------------------------------------------------
// --json on every offline command

/// Each offline command prints one JSON document with `--json` and a human
/// form (not JSON alone) without it. (`store rekey` needs a store and is
/// checked in tests/operator.rs; `receipts verify` below its receipt tests.)
#[test]
fn every_offline_command_prints_json_with_json_and_text_without() {
    let t = tempfile::tempdir().unwrap();
    let p = |s: String| t.path().join(s);
    let profile = profile_path("kz-by-2019");
    let mut request = load_example("request.json");
    request["body"]["content"]["attachments"] = serde_json::json!([]);
    let msg = p("request.json".into());
    fs::write(&msg, serde_json::to_vec(&request).unwrap()).unwrap();
    for (n, json) in [(0, true), (1, false)] {
        let run = |what: &str, args: &[&OsStr]| {
            let mut a: Vec<&OsStr> = Vec::new();
            if json {
                a.push(OsStr::new("--json"));
            }
            a.extend_from_slice(args);
            let out = ok(&konvertctl(a));
            let parsed = serde_json::from_str::<Value>(&out);
            if json {
                let v = parsed.unwrap_or_else(|e| panic!("{what} --json: {e}:\n{out}"));
                assert!(v.is_object(), "{what} --json: {out}");
            } else {
                assert!(
                    parsed.is_err() && !out.trim().is_empty(),
                    "{what} without --json prints JSON only:\n{out}"
                );
            }
            out
        };
        let gw = p(format!("kz{n}"));
        let peer = p(format!("by{n}"));
        let cfg = gw.join("konvert.toml");
        let (kzk, byk) = (p(format!("kzk{n}")), p(format!("byk{n}")));
        let sig = p(format!("sig{n}.pem"));
        let env = p(format!("request{n}.env"));
        let os = |s: &Path| s.as_os_str().to_owned();
        macro_rules! a {
            ($($x:expr),*) => { &[$(OsStr::new(&$x)),*] };
        }
        run(
            "init",
            a![
                "init",
                "--authority",
                "kz.mvd",
                "--dir",
                os(&gw),
                "--listen",
                "127.0.0.1:7443"
            ],
        );
        ok(&konvertctl!(
            "init",
            "--authority",
            "by.mvd",
            "--dir",
            peer,
            "--listen",
            "127.0.0.1:7444"
        ));
        run(
            "peer add",
            a![
                "peer",
                "add",
                "--config",
                os(&cfg),
                "--card",
                os(&peer.join("card.toml")),
                "--address",
                "127.0.0.1:7444",
                "--agreement",
                "kz-by-2019"
            ],
        );
        run("keygen", a!["keygen", "--authority", "kz.mvd", "--dir", os(&kzk)]);
        ok(&konvertctl!("keygen", "--authority", "by.mvd", "--dir", byk));
        run("signatory keygen", a!["signatory", "keygen", "--out", os(&sig)]);
        run(
            "signatory add",
            a![
                "signatory",
                "add",
                "--config",
                os(&cfg),
                "--id",
                "petrov",
                "--name",
                "Петров Пётр Петрович",
                "--position",
                "Заместитель министра"
            ],
        );
        run("signatory list", a!["signatory", "list", "--config", os(&cfg)]);
        run(
            "signatory revoke",
            a!["signatory", "revoke", "--config", os(&cfg), "--id", "petrov"],
        );
        run(
            "keys rotate",
            a!["keys", "rotate", "--config", os(&cfg), "--node"],
        );
        run(
            "keys retire",
            a!["keys", "retire", "--config", os(&cfg), "--force"],
        );
        run(
            "envelope seal",
            a![
                "envelope",
                "seal",
                "--keys",
                os(&kzk),
                "--to",
                os(&byk.join("card.toml")),
                "--signer",
                os(&sig),
                "--profile",
                os(&profile),
                "--in",
                os(&msg),
                "--out",
                os(&env),
                "--now",
                NOW
            ],
        );
        let opened = run(
            "envelope open",
            a![
                "envelope",
                "open",
                "--keys",
                os(&byk),
                "--from",
                os(&kzk.join("card.toml")),
                "--signers",
                os(&sig.with_extension("pem.pub")),
                "--profile",
                os(&profile),
                "--in",
                os(&env),
                "--now",
                NOW
            ],
        );
        if !json {
            assert!(
                opened.contains("checks passed") && opened.contains("message:"),
                "{opened}"
            );
        }
        run("envelope inspect", a!["envelope", "inspect", "--in", os(&env)]);
        run(
            "generate man",
            a!["generate", "man", "--out", os(&p(format!("man{n}")))],
        );
        run(
            "generate completions",
            a![
                "generate",
                "completions",
                "--out",
                os(&p(format!("completions{n}")))
            ],
        );
        let demo = run("demo", a!["demo"]);
        if json {
            let v: Value = serde_json::from_str(&demo).unwrap();
            assert_eq!(v["steps"].as_array().unwrap().len(), 7, "{v}");
            assert_eq!(v["kept"], false, "{v}");
        } else {
            assert!(demo.contains("grounds (Art. 10.4)"), "{demo}");
        }
    }
}
