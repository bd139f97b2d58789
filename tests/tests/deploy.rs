//! Deployment as a ministry installs it (`deploy/`, issue 6):
//!
//! - the systemd unit passes `systemd-analyze verify`, and the check catches
//!   broken copies; the README quotes its `systemd-analyze security` score;
//! - the sysusers.d and tmpfiles.d entries make the konvert user and the
//!   directory layout, in which files `konvertctl init` writes as root are
//!   readable by group konvert and keys are not;
//! - the example configurations of kz.mvd and by.mvd load with the real
//!   parser, and konvertd starts from one of them with its keys passed the
//!   way the unit's `LoadCredential=` lines pass them;
//! - konvertd sends READY=1 (with the API already answering), WATCHDOG=1,
//!   RELOADING=1 and READY=1 around SIGHUP, and STOPPING=1 to NOTIFY_SOCKET;
//! - man pages and shell completions come from konvertctl's own definitions,
//!   and every command's `--help` has an example;
//! - the Debian package metadata names files that exist; where cargo-deb
//!   and dpkg-deb are installed, `deploy/build-deb` builds the package (a
//!   release build: minutes) and its contents and control data are checked;
//! - `konvertctl init --systemd` under a temporary root lays out what the
//!   unit's `LoadCredential=` lines and tmpfiles.d expect, and konvertd
//!   starts from it.
//!
//! Tests that need a systemd tool, cargo-deb or dpkg-deb skip, saying so,
//! only when it is absent.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use konvert_gateway::config::{Config, Loaded};
use konvert_tests::{bin, free_udp_port, http, konvertctl, workspace_root};
use tempfile::TempDir;

const UNIT: &str = "deploy/systemd/konvertd.service";

/// The path of a tool, if it is installed.
fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/bin")])
        .map(|d| d.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn skip(test: &str, why: &str) {
    println!("SKIPPED {test}: {why}");
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(o: Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed with {}:\n{}",
        o.status,
        text(&o)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn read(rel: &str) -> String {
    fs::read_to_string(workspace_root().join(rel)).unwrap()
}

/// The unit as installed, but running the konvertd just built (systemd-analyze
/// checks that ExecStart= names an executable), written as DIR/konvertd.service.
fn unit_copy(dir: &Path, unit_text: &str) -> PathBuf {
    let text = unit_text.replace("/usr/bin/konvertd", bin("konvertd").to_str().unwrap());
    assert_ne!(text, unit_text, "the unit no longer runs /usr/bin/konvertd");
    let p = dir.join("konvertd.service");
    fs::write(&p, text).unwrap();
    p
}

/// Man pages of konvertd and konvertctl under DIR/man{1,8}, for MANPATH.
fn man_tree(dir: &Path) -> PathBuf {
    let root = dir.join("man");
    ok(
        konvertctl(["generate", "man", "--out", root.join("man1").to_str().unwrap()]),
        "konvertctl generate man",
    );
    let out = Command::new(bin("konvertd")).arg("--man").output().unwrap();
    let page = ok(out, "konvertd --man");
    fs::create_dir_all(root.join("man8")).unwrap();
    fs::write(root.join("man8/konvertd.8"), page).unwrap();
    root
}

/// `systemd-analyze verify` of a unit file: `Err(diagnostics)` when it exits
/// non-zero or says anything about the unit (it only warns, exit status 0,
/// about unknown keys and bad values).
fn verify(analyze: &Path, unit: &Path, manpath: &Path) -> Result<(), String> {
    let mut cmd = Command::new(analyze);
    cmd.arg("verify");
    if tool("man").is_some() {
        // Documentation=man:… is checked against the pages generated here.
        cmd.arg("--man=yes").env("MANPATH", manpath);
    } else {
        cmd.arg("--man=no");
    }
    let out = cmd.arg(unit).output().unwrap();
    let said: Vec<String> = text(&out)
        .lines()
        .filter(|l| l.contains("konvertd"))
        .map(str::to_string)
        .collect();
    if out.status.success() && said.is_empty() {
        Ok(())
    } else {
        Err(format!("{}: {}", out.status, said.join("\n")))
    }
}

#[test]
fn unit_passes_systemd_analyze_verify_and_broken_copies_do_not() {
    let Some(analyze) = tool("systemd-analyze") else {
        return skip(
            "unit verify",
            "systemd-analyze is not installed (apt-get install systemd)",
        );
    };
    let tmp = TempDir::new().unwrap();
    let manpath = man_tree(tmp.path());
    let unit = read(UNIT);
    let good = unit_copy(tmp.path(), &unit);
    verify(&analyze, &good, &manpath).unwrap();

    let encrypted = unit.replace(
        "LoadCredential=master.key:/etc/konvert/keys/master.key",
        "LoadCredentialEncrypted=master.key:/etc/credstore.encrypted/konvert-master.key",
    );
    assert_ne!(encrypted, unit);
    let dir = tmp.path().join("encrypted");
    fs::create_dir(&dir).unwrap();
    verify(&analyze, &unit_copy(&dir, &encrypted), &manpath)
        .expect("the LoadCredentialEncrypted= variant of docs/OPERATIONS.md");

    for (i, (from, to)) in [
        ("ProtectSystem=strict", "ProtectSytem=strict"),
        ("ProtectSystem=strict", "ProtectSystem=strictest"),
        (
            "SystemCallFilter=@system-service",
            "SystemCallFilter=@system-servic",
        ),
        ("Type=notify", "Type=notifyy"),
        ("WatchdogSec=30s", "WatchdogSec=thirty"),
        ("konvertd(8)", "konvertd-nonexistent(8)"),
    ]
    .into_iter()
    .enumerate()
    {
        assert!(unit.contains(from), "{from} is no longer in the unit");
        let dir = tmp.path().join(format!("broken{i}"));
        fs::create_dir(&dir).unwrap();
        let broken = unit_copy(&dir, &unit.replacen(from, to, 1));
        if to.contains("nonexistent(8)") && tool("man").is_none() {
            continue;
        }
        assert!(
            verify(&analyze, &broken, &manpath).is_err(),
            "systemd-analyze verify did not catch {to:?}"
        );
    }
    let dir = tmp.path().join("no-binary");
    fs::create_dir(&dir).unwrap();
    let p = dir.join("konvertd.service");
    fs::write(&p, unit.replace("/usr/bin/konvertd", "/nonexistent/konvertd")).unwrap();
    assert!(verify(&analyze, &p, &manpath).is_err());
}

#[test]
fn readme_quotes_the_units_security_exposure() {
    let Some(analyze) = tool("systemd-analyze") else {
        return skip("security score", "systemd-analyze is not installed");
    };
    let tmp = TempDir::new().unwrap();
    let unit = unit_copy(tmp.path(), &read(UNIT));
    let out = Command::new(&analyze)
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let all = text(&out);
    if all.contains("unrecognized option") {
        return skip(
            "security score",
            "this systemd-analyze has no --offline (systemd < 250)",
        );
    }
    let score = all
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for konvertd.service: "))
        .map(|(_, s)| s.split_whitespace().next().unwrap().to_string())
        .unwrap_or_else(|| panic!("no exposure level in:\n{all}"));
    let version = ok(
        Command::new(&analyze).arg("--version").output().unwrap(),
        "version",
    );
    let version = version.split_whitespace().nth(1).unwrap_or("").to_string();
    let quoted = format!("exposure level {score} (systemd {version}");
    let readme = read("README.md");
    if readme.contains(&format!("(systemd {version}")) {
        assert!(
            readme.contains(&quoted),
            "README.md should quote \"{quoted}\" (the score has changed)"
        );
    } else {
        println!("systemd {version} rates the unit {score}; README.md quotes another version's figure");
    }
    let value: f64 = score.parse().unwrap();
    assert!(value <= 2.0, "exposure {value} is above 2.0: hardening was lost");
}

/// Numeric id of `name` in a passwd or group file.
fn id_of(file: &Path, name: &str) -> u32 {
    fs::read_to_string(file)
        .unwrap()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f[0] == name).then(|| f[2].parse().unwrap())
        })
        .unwrap_or_else(|| panic!("{name} not in {}", file.display()))
}

fn mode_uid_gid(p: &Path) -> (u32, u32, u32) {
    let m = fs::metadata(p).unwrap();
    (m.mode() & 0o7777, m.uid(), m.gid())
}

#[test]
fn sysusers_and_tmpfiles_make_the_layout_init_writes_into() {
    let Some(sysusers) = tool("systemd-sysusers") else {
        return skip("sysusers/tmpfiles", "systemd-sysusers is not installed");
    };
    let root = TempDir::new().unwrap();
    let r = root.path();
    fs::create_dir(r.join("etc")).unwrap();
    ok(
        Command::new(sysusers)
            .arg(format!("--root={}", r.display()))
            .arg(workspace_root().join("deploy/sysusers.d/konvert.conf"))
            .output()
            .unwrap(),
        "systemd-sysusers",
    );
    let passwd = fs::read_to_string(r.join("etc/passwd")).unwrap();
    let line = passwd.lines().find(|l| l.starts_with("konvert:")).unwrap();
    assert!(line.ends_with(":/var/lib/konvert:/usr/sbin/nologin"), "{line}");
    let uid = id_of(&r.join("etc/passwd"), "konvert");
    let gid = id_of(&r.join("etc/group"), "konvert");
    assert!(uid < 1000 && gid < 1000, "a system user: {uid}:{gid}");

    let Some(tmpfiles) = tool("systemd-tmpfiles") else {
        return skip("tmpfiles", "systemd-tmpfiles is not installed");
    };
    if !nix::unistd::Uid::effective().is_root() {
        return skip(
            "tmpfiles",
            "setting owners needs root; this test runs as another user",
        );
    }
    ok(
        Command::new(tmpfiles)
            .args(["--create", &format!("--root={}", r.display())])
            .arg(workspace_root().join("deploy/tmpfiles.d/konvert.conf"))
            .output()
            .unwrap(),
        "systemd-tmpfiles --create",
    );
    let etc = r.join("etc/konvert");
    assert_eq!(mode_uid_gid(&etc), (0o2750, 0, gid));
    assert_eq!(mode_uid_gid(&etc.join("profiles")), (0o2750, 0, gid));
    assert_eq!(mode_uid_gid(&etc.join("peers")), (0o2750, 0, gid));
    assert_eq!(mode_uid_gid(&etc.join("keys")), (0o700, 0, 0));
    // The roster credential exists (systemd refuses a missing one), empty.
    assert_eq!(mode_uid_gid(&etc.join("keys/roster.cose")), (0o644, 0, 0));
    assert_eq!(fs::metadata(etc.join("keys/roster.cose")).unwrap().len(), 0);
    assert_eq!(mode_uid_gid(&r.join("var/lib/konvert")), (0o700, uid, gid));

    // The operator's first step (docs/OPERATIONS.md) as root into that layout:
    // the configuration, profiles and peer cards become readable by group
    // konvert; the keys stay root's.
    ok(
        konvertctl([
            "init",
            "--authority",
            "kz.mvd",
            "--dir",
            etc.to_str().unwrap(),
            "--api-socket",
            "/run/konvert/api.sock",
        ]),
        "konvertctl init",
    );
    let (mode, _, g) = mode_uid_gid(&etc.join("konvert.toml"));
    assert_eq!(
        (mode & 0o040, g),
        (0o040, gid),
        "konvert.toml readable by group konvert"
    );
    for p in fs::read_dir(etc.join("profiles")).unwrap() {
        let (mode, _, g) = mode_uid_gid(&p.unwrap().path());
        assert_eq!((mode & 0o040, g), (0o040, gid));
    }
    for k in ["node.key.pem", "age.key", "tls.key.pem", "master.key"] {
        let (mode, u, _) = mode_uid_gid(&etc.join("keys").join(k));
        assert_eq!((mode & 0o077, u), (0, 0), "{k} is root's alone");
    }
    assert_eq!(mode_uid_gid(&etc.join("keys")).0 & 0o077, 0);
}

// ---------------------------------------------------------------------------
// The example configurations, as installed

/// A ministry's installation under a temporary root: `konvertctl init` made
/// ROOT/etc/konvert, the peer's card is in peers/, the example configuration
/// is konvert.toml, and ROOT/credentials holds what the unit's
/// `LoadCredential=` lines would give konvertd.
struct Installed {
    root: TempDir,
    config: PathBuf,
    credentials: PathBuf,
    port: u16,
}

/// The example for `authority` with the installed paths moved under `root`,
/// its QUIC port on loopback and the API open to this test's group.
fn example_under(authority: &str, root: &Path, port: u16) -> String {
    let text = read(&format!("deploy/examples/{authority}/konvert.toml"));
    let r = root.display();
    let gid = nix::unistd::Gid::effective();
    let out = text
        .replace("\"/etc/konvert/", &format!("\"{r}/etc/konvert/"))
        .replace("\"/var/lib/konvert\"", &format!("\"{r}/var/lib/konvert\""))
        .replace("\"/run/konvert/", &format!("\"{r}/run/konvert/"))
        .replace("groups = [\"konvert\"]", &format!("groups = [\"{gid}\"]"))
        .replace(
            "listen = \"0.0.0.0:7443\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        )
        .replace(
            "listen = \"[::]:7443\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        );
    for installed in ["\"/etc/", "\"/var/", "\"/run/"] {
        assert!(!out.contains(installed), "an installed path left in:\n{out}");
    }
    out
}

/// `LoadCredential=ID:PATH` lines of the unit: (id, path).
fn load_credentials(unit: &str) -> Vec<(String, PathBuf)> {
    unit.lines()
        .filter_map(|l| l.strip_prefix("LoadCredential="))
        .map(|v| {
            let (id, path) = v.split_once(':').unwrap();
            (id.to_string(), PathBuf::from(path))
        })
        .collect()
}

/// Copies what systemd would put in $CREDENTIALS_DIRECTORY (files 0400; a
/// directory becomes ID_FILENAME per file) for the keys under `root`.
fn make_credentials(root: &Path, dir: &Path) {
    fs::create_dir(dir).unwrap();
    for (id, path) in load_credentials(&read(UNIT)) {
        let src = root.join(path.strip_prefix("/").unwrap());
        let mut files = Vec::new();
        if src.is_dir() {
            for e in fs::read_dir(&src).unwrap() {
                let e = e.unwrap().path();
                files.push((format!("{id}_{}", e.file_name().unwrap().to_str().unwrap()), e));
            }
        } else {
            files.push((id, src));
        }
        for (name, from) in files {
            let to = dir.join(name);
            fs::copy(&from, &to).unwrap();
            fs::set_permissions(&to, fs::Permissions::from_mode(0o400)).unwrap();
        }
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o500)).unwrap();
}

fn install(authority: &str, peer: &str) -> Installed {
    let root = TempDir::new().unwrap();
    let r = root.path();
    let port = free_udp_port();
    let etc = r.join("etc/konvert");
    for (a, dir) in [(authority, etc.clone()), (peer, r.join("peer"))] {
        ok(
            konvertctl([
                "init",
                "--authority",
                a,
                "--dir",
                dir.to_str().unwrap(),
                "--listen",
                &format!("127.0.0.1:{port}"),
            ]),
            "konvertctl init",
        );
    }
    fs::copy(
        r.join("peer/card.toml"),
        etc.join("peers").join(format!("{peer}.toml")),
    )
    .unwrap();
    fs::create_dir_all(r.join("run/konvert")).unwrap();
    let config = etc.join("konvert.toml");
    fs::write(&config, example_under(authority, r, port)).unwrap();
    // No roster yet: empty, as the package's tmpfiles.d entry makes it.
    fs::write(etc.join("keys/roster.cose"), b"").unwrap();
    let credentials = r.join("credentials");
    make_credentials(r, &credentials);
    Installed {
        root,
        config,
        credentials,
        port,
    }
}

#[test]
fn example_configurations_load_with_the_real_parser() {
    for (authority, peer) in [("kz.mvd", "by.mvd"), ("by.mvd", "kz.mvd")] {
        let i = install(authority, peer);
        // As konvertctl sees it (no credentials): key paths stay, the rest loads.
        let loaded = Loaded::load(&i.config).unwrap_or_else(|e| panic!("{authority}: {e}"));
        assert_eq!(loaded.config.authority.to_string(), authority);
        assert_eq!(
            loaded.cards.keys().map(|a| a.to_string()).collect::<Vec<_>>(),
            [peer]
        );
        assert!(loaded.profiles.keys().any(|a| a.to_string() == "kz-by-2019"));
        assert_eq!(
            loaded.config.unresolved_credentials(),
            ["keys_dir", "signatories[0].key"]
        );
        assert_eq!(
            loaded.config.store.master_key_credential.as_deref(),
            Some("master.key")
        );
        // As konvertd sees it under systemd: the keys are found among the credentials.
        let text = fs::read_to_string(&i.config).unwrap();
        let cfg = Config::parse_with_credentials(&text, &i.config, Some(&i.credentials)).unwrap();
        assert!(cfg.unresolved_credentials().is_empty());
        let keys = konvert_gateway::offline::load_node_keys(&cfg.keys_dir).unwrap();
        assert_eq!(keys.authority.to_string(), authority);
        konvert_gateway::daemon::load_tls(&cfg.keys_dir).unwrap();
        for s in &cfg.signatories {
            konvert_gateway::offline::load_signing_key(&s.key).unwrap();
        }
        assert!(i
            .credentials
            .join(cfg.store.master_key_credential.as_deref().unwrap())
            .is_file());
        assert_eq!(cfg.api.socket, i.root.path().join("run/konvert/api.sock"));
    }
}

#[test]
fn konvertd_refuses_credential_paths_without_credentials() {
    let i = install("kz.mvd", "by.mvd");
    let out = Command::new(bin("konvertd"))
        .arg("--config")
        .arg(&i.config)
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("keys_dir, signatories[0].key refer to ${CREDENTIALS_DIRECTORY}")
            && err.contains("CREDENTIALS_DIRECTORY is not set"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// sd_notify

/// Receives notifications until one has all of `want`'s lines; returns it.
fn expect(sock: &UnixDatagram, want: &[&str], log: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = vec![0u8; 4096];
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if want.iter().all(|w| msg.lines().any(|l| l == *w)) {
                    return msg;
                }
                seen.push(msg);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            // Interrupted, nothing received: with a receive timeout set,
            // Linux fails the call with EINTR when the process was stopped
            // and continued meanwhile, even without signal handlers
            // (signal(7)); a paused CI machine does that.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("{e}"),
        }
    }
    panic!(
        "no notification with {want:?}; got {seen:?}\nkonvertd log:\n{}",
        fs::read_to_string(log).unwrap_or_default()
    );
}

fn signal(child: &std::process::Child, s: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, s).unwrap();
}

#[test]
fn konvertd_notifies_ready_watchdog_reload_and_stop() {
    let i = install("kz.mvd", "by.mvd");
    let notify = i.root.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let log = i.root.path().join("konvertd.log");
    let mut child = Command::new(bin("konvertd"))
        .arg("--config")
        .arg(&i.config)
        .env("CREDENTIALS_DIRECTORY", &i.credentials)
        .env("NOTIFY_SOCKET", &notify)
        // WatchdogSec=400ms: a ping is due every 200 ms.
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .env("KONVERT_LOG", "info")
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();

    let ready = expect(&sock, &["READY=1"], &log);
    assert!(ready.lines().any(|l| l.starts_with("STATUS=")), "{ready}");
    // READY=1 means the API socket accepts and the QUIC port is bound.
    let socket = i.root.path().join("run/konvert/api.sock");
    let (code, body) = http(&socket, "GET", "/v1/health", None).unwrap();
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    assert!(
        std::net::UdpSocket::bind(("127.0.0.1", i.port)).is_err(),
        "the QUIC port is bound"
    );

    for _ in 0..3 {
        expect(&sock, &["WATCHDOG=1"], &log);
    }

    signal(&child, nix::sys::signal::Signal::SIGHUP);
    let reloading = expect(&sock, &["RELOADING=1"], &log);
    assert!(
        reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{reloading}"
    );
    expect(&sock, &["READY=1"], &log);

    signal(&child, nix::sys::signal::Signal::SIGTERM);
    expect(&sock, &["STOPPING=1"], &log);
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "konvertd stopped with {status}:\n{}",
        fs::read_to_string(&log).unwrap_or_default()
    );
}

#[test]
fn no_watchdog_pings_without_watchdog_usec() {
    let i = install("by.mvd", "kz.mvd");
    let notify = i.root.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let log = i.root.path().join("konvertd.log");
    let mut child = Command::new(bin("konvertd"))
        .arg("--config")
        .arg(&i.config)
        .env("CREDENTIALS_DIRECTORY", &i.credentials)
        .env("NOTIFY_SOCKET", &notify)
        .env_remove("WATCHDOG_USEC")
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    expect(&sock, &["READY=1"], &log);
    let mut buf = [0u8; 4096];
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        if let Ok(n) = sock.recv(&mut buf) {
            panic!("unexpected: {}", String::from_utf8_lossy(&buf[..n]));
        }
    }
    signal(&child, nix::sys::signal::Signal::SIGTERM);
    expect(&sock, &["STOPPING=1"], &log);
    assert!(child.wait().unwrap().success());
}

// ---------------------------------------------------------------------------
// Man pages, completions, --help

#[test]
fn man_pages_and_completions_cover_every_command() {
    let tmp = TempDir::new().unwrap();
    let man = man_tree(tmp.path());
    let pages: BTreeSet<String> = fs::read_dir(man.join("man1"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    for must in [
        "konvertctl.1",
        "konvertctl-init.1",
        "konvertctl-peer.1",
        "konvertctl-peer-add.1",
        "konvertctl-envelope-seal.1",
        "konvertctl-receipts-verify.1",
        "konvertctl-inbox-ack.1",
        "konvertctl-health.1",
    ] {
        assert!(pages.contains(must), "{must} missing from {pages:?}");
    }
    assert!(!pages.iter().any(|p| p.contains("generate")), "hidden: {pages:?}");
    let top = fs::read_to_string(man.join("man1/konvertctl.1")).unwrap();
    assert!(top.contains(".TH konvertctl 1"), "{top}");
    assert!(top.contains("Exit status"), "exit codes in konvertctl(1)");
    for page in &pages {
        let words: Vec<&str> = page.trim_end_matches(".1").split('-').skip(1).collect();
        if let [first] = words.as_slice() {
            assert!(top.contains(first), "konvertctl(1) does not mention {first}");
        }
        let roff = fs::read_to_string(man.join("man1").join(page)).unwrap();
        assert!(roff.contains("Example"), "{page} has no example");
        // The same text as --help.
        let help = ok(
            konvertctl(words.iter().copied().chain(["--help"])),
            &format!("konvertctl {} --help", words.join(" ")),
        );
        assert!(
            help.contains("Example"),
            "konvertctl {words:?} --help has no example:\n{help}"
        );
    }
    let top_help = ok(konvertctl(["--help"]), "konvertctl --help");
    for line in [
        "0  success",
        "1  the command failed",
        "2  the arguments are wrong",
    ] {
        assert!(top_help.contains(line), "--help lacks {line:?}:\n{top_help}");
    }
    let konvertd = fs::read_to_string(man.join("man8/konvertd.8")).unwrap();
    assert!(konvertd.contains(".TH konvertd 8"), "{konvertd}");
    assert!(konvertd.contains("READY=1") && konvertd.contains("CREDENTIALS_DIRECTORY"));

    let comp = tmp.path().join("completions");
    let listed = ok(
        konvertctl(["generate", "completions", "--out", comp.to_str().unwrap()]),
        "generate completions",
    );
    assert_eq!(listed.lines().count(), 3, "{listed}");
    for (file, marker) in [
        ("konvertctl", "complete -F"),
        ("_konvertctl", "#compdef konvertctl"),
        ("konvertctl.fish", "complete -c konvertctl"),
    ] {
        let s = fs::read_to_string(comp.join(file)).unwrap();
        assert!(s.contains(marker), "{file}");
        assert!(
            s.contains("receipts") && s.contains("envelope"),
            "{file} lacks commands"
        );
    }
    // A wrong argument exits 2, as documented.
    assert_eq!(konvertctl(["--no-such-flag"]).status.code(), Some(2));
}

// ---------------------------------------------------------------------------
// Debian package metadata

#[test]
fn debian_package_assets_exist() {
    let manifest: toml::Value = read("gateway/Cargo.toml").parse().unwrap();
    let deb = &manifest["package"]["metadata"]["deb"];
    let assets = deb["assets"].as_array().unwrap();
    let mut targets = BTreeSet::new();
    for a in assets {
        let a = a.as_array().unwrap();
        let (src, dest) = (a[0].as_str().unwrap(), a[1].as_str().unwrap());
        targets.insert(dest.to_string());
        if src.starts_with("target/") {
            continue; // built by deploy/build-deb before cargo deb runs
        }
        let path = workspace_root().join("gateway").join(src);
        let found = if src.contains('*') {
            fs::read_dir(path.parent().unwrap()).is_ok_and(|mut d| d.next().is_some())
        } else {
            path.is_file()
        };
        assert!(found, "asset {src} does not exist");
    }
    for dest in [
        "usr/bin/",
        "usr/lib/systemd/system/konvertd.service",
        "usr/lib/sysusers.d/konvert.conf",
        "usr/lib/tmpfiles.d/konvert.conf",
        "usr/share/man/man1/",
        "usr/share/man/man8/konvertd.8.gz",
        "usr/share/bash-completion/completions/konvertctl",
    ] {
        assert!(
            targets.contains(dest),
            "no asset installed to {dest}: {targets:?}"
        );
    }
    for script in ["postinst", "prerm", "postrm"] {
        let p = workspace_root().join("deploy/debian").join(script);
        let m = fs::metadata(&p).unwrap_or_else(|_| panic!("{}", p.display()));
        assert!(m.permissions().mode() & 0o111 != 0, "{script} is executable");
        let out = Command::new("sh").arg("-n").arg(&p).output().unwrap();
        ok(out, &format!("sh -n {script}"));
    }
}

// ---------------------------------------------------------------------------
// `konvertctl init --systemd`

#[test]
fn init_systemd_lays_out_what_the_unit_and_tmpfiles_expect_and_konvertd_starts_from_it() {
    let root = TempDir::new().unwrap();
    let r = root.path();
    let port = free_udp_port();
    // As root, owners are set: to `daemon` here (the package's `konvert`
    // does not exist on a build host). Otherwise only modes.
    let as_root = nix::unistd::geteuid().is_root();
    let user = if as_root { "daemon" } else { "konvert" };
    let out = konvertctl([
        "--json",
        "init",
        "--systemd",
        "--root",
        r.to_str().unwrap(),
        "--authority",
        "kz.mvd",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--service-user",
        user,
    ]);
    let report: serde_json::Value = serde_json::from_str(&ok(out, "init --systemd")).unwrap();
    assert_eq!(report["owners_set"], serde_json::json!(as_root), "{report}");
    let etc = r.join("etc/konvert");
    let keys = etc.join("keys");
    let data = r.join("var/lib/konvert");
    let (svc_uid, svc_gid) = if as_root {
        let u = nix::unistd::User::from_name(user).unwrap().unwrap();
        let g = nix::unistd::Group::from_name(user).unwrap().unwrap();
        (u.uid.as_raw(), g.gid.as_raw())
    } else {
        (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw())
    };
    let me = nix::unistd::geteuid().as_raw();
    // (path, mode, uid, gid) as deploy/tmpfiles.d/konvert.conf and the unit expect.
    let expected: Vec<(PathBuf, u32, u32, u32)> = vec![
        (etc.clone(), 0o2750, me, svc_gid),
        (etc.join("profiles"), 0o2750, me, svc_gid),
        (etc.join("peers"), 0o2750, me, svc_gid),
        (etc.join("konvert.toml"), 0o640, me, svc_gid),
        (etc.join("profiles/kz-by-2019.toml"), 0o640, me, svc_gid),
        (etc.join("card.toml"), 0o644, me, svc_gid),
        (keys.clone(), 0o700, me, if as_root { 0 } else { svc_gid }),
        (data.clone(), 0o700, svc_uid, svc_gid),
    ];
    for (p, mode, uid, gid) in &expected {
        assert_eq!(mode_uid_gid(p), (*mode, *uid, *gid), "{}", p.display());
    }
    for f in [
        "node.key.pem",
        "age.key",
        "tls.key.pem",
        "master.key",
        "root.key.pem",
        "signatories/head.key.pem",
    ] {
        assert_eq!(mode_uid_gid(&keys.join(f)).0, 0o600, "{f}");
    }
    // Every credential the unit loads exists where it points (systemd
    // refuses to start the service otherwise): the root key's public half,
    // and the roster, empty until the first `signatory add`.
    for (id, path) in load_credentials(&read(UNIT)) {
        let p = r.join(path.strip_prefix("/").unwrap());
        assert!(p.exists(), "credential {id}: {} missing", p.display());
    }
    assert!(load_credentials(&read(UNIT))
        .iter()
        .any(|(id, _)| id == "roster.cose"));
    assert_eq!(fs::metadata(keys.join("roster.cose")).unwrap().len(), 0);
    assert!(keys.join("root.key.pem.pub").is_file());
    // The configuration names the installed paths and the credentials.
    let text = fs::read_to_string(etc.join("konvert.toml")).unwrap();
    for want in [
        "keys_dir = \"${CREDENTIALS_DIRECTORY}\"",
        "data_dir = \"/var/lib/konvert\"",
        "socket = \"/run/konvert/api.sock\"",
        "master_key_credential = \"master.key\"",
        "key = \"${CREDENTIALS_DIRECTORY}/signatory_head.key.pem\"",
        "\"/etc/konvert/profiles/kz-by-2019.toml\"",
    ] {
        assert!(text.contains(want), "{want} not in:\n{text}");
    }
    // A second run is refused and changes nothing.
    let again = konvertctl([
        "init",
        "--systemd",
        "--root",
        r.to_str().unwrap(),
        "--authority",
        "kz.mvd",
        "--service-user",
        user,
    ]);
    assert!(!again.status.success());
    assert_eq!(fs::read_to_string(etc.join("konvert.toml")).unwrap(), text);
    // --dir and --systemd exclude each other.
    assert!(
        !konvertctl(["init", "--systemd", "--dir", "x", "--authority", "kz.mvd"])
            .status
            .success()
    );

    // konvertd starts from this layout with the credentials the unit would pass.
    let gid = nix::unistd::Gid::effective();
    let moved = text
        .replace("\"/etc/konvert/", &format!("\"{}/etc/konvert/", r.display()))
        .replace(
            "\"/var/lib/konvert\"",
            &format!("\"{}/var/lib/konvert\"", r.display()),
        )
        .replace("\"/run/konvert/", &format!("\"{}/run/konvert/", r.display()))
        .replace(
            &format!("groups = [\"{user}\"]"),
            &format!("groups = [\"{gid}\"]"),
        );
    let config = r.join("konvert-test.toml");
    fs::write(&config, moved).unwrap();
    fs::create_dir_all(r.join("run/konvert")).unwrap();
    let credentials = r.join("credentials");
    make_credentials(r, &credentials);
    let log = r.join("konvertd.log");
    let mut child = Command::new(bin("konvertd"))
        .arg("--config")
        .arg(&config)
        .env("CREDENTIALS_DIRECTORY", &credentials)
        .env("KONVERT_LOG", "info")
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let socket = r.join("run/konvert/api.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok((200, _)) = http(&socket, "GET", "/v1/health", None) {
            break;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "konvertd exited with {st}:\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "konvertd did not come up:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(&child, nix::sys::signal::Signal::SIGTERM);
    assert!(child.wait().unwrap().success());
}

// ---------------------------------------------------------------------------
// The Debian package itself (only where cargo-deb is installed)

/// Builds the package with `deploy/build-deb` (a release build: minutes)
/// and checks its contents and control data against the repository's
/// unit, sysusers/tmpfiles entries, man pages and binaries. Skipped with a
/// printed reason when `cargo deb` or `dpkg-deb` is missing (CI does not
/// install them: `cargo install cargo-deb --locked`).
#[test]
fn debian_package_builds_and_holds_what_the_unit_needs() {
    let name = "debian_package_builds_and_holds_what_the_unit_needs";
    let has_cargo_deb = Command::new(env!("CARGO"))
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_cargo_deb {
        return skip(
            name,
            "cargo-deb is not installed (cargo install cargo-deb --locked)",
        );
    }
    let Some(dpkg_deb) = tool("dpkg-deb") else {
        return skip(name, "dpkg-deb is not installed");
    };
    let out_dir = TempDir::new().unwrap();
    let deb = out_dir.path().join("konvert.deb");
    let build = Command::new("sh")
        .arg(workspace_root().join("deploy/build-deb"))
        .arg("--output")
        .arg(&deb)
        .env("CARGO", env!("CARGO"))
        .output()
        .unwrap();
    ok(build, "deploy/build-deb");
    let info = ok(
        Command::new(&dpkg_deb).arg("-I").arg(&deb).output().unwrap(),
        "dpkg-deb -I",
    );
    for want in [
        "Package: konvert",
        "Depends:",
        "systemd (>= 250)",
        " postinst",
        " prerm",
        " postrm",
    ] {
        assert!(info.contains(want), "{want:?} not in dpkg-deb -I:\n{info}");
    }
    let list = ok(
        Command::new(&dpkg_deb).arg("-c").arg(&deb).output().unwrap(),
        "dpkg-deb -c",
    );
    let entries: Vec<(String, String)> = list
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((
                f.first()?.to_string(),
                f.last()?.trim_start_matches('.').to_string(),
            ))
        })
        .collect();
    let has = |path: &str, perms: &str| entries.iter().any(|(p, f)| f == path && p.ends_with(perms));
    for (path, perms) in [
        ("/usr/bin/konvertd", "rwxr-xr-x"),
        ("/usr/bin/konvertctl", "rwxr-xr-x"),
        ("/usr/lib/systemd/system/konvertd.service", "rw-r--r--"),
        ("/usr/lib/sysusers.d/konvert.conf", "rw-r--r--"),
        ("/usr/lib/tmpfiles.d/konvert.conf", "rw-r--r--"),
        ("/usr/share/man/man8/konvertd.8.gz", "rw-r--r--"),
        ("/usr/share/man/man1/konvertctl.1.gz", "rw-r--r--"),
        ("/usr/share/man/man1/konvertctl-keys-rotate.1.gz", "rw-r--r--"),
        ("/usr/share/bash-completion/completions/konvertctl", "rw-r--r--"),
        ("/usr/share/zsh/vendor-completions/_konvertctl", "rw-r--r--"),
        (
            "/usr/share/fish/vendor_completions.d/konvertctl.fish",
            "rw-r--r--",
        ),
        ("/usr/share/konvert/profiles/kz-by-2019.toml", "rw-r--r--"),
        ("/usr/share/doc/konvert/examples/kz.mvd/konvert.toml", "rw-r--r--"),
        ("/usr/share/doc/konvert/OPERATIONS.md", "rw-r--r--"),
        ("/usr/share/doc/konvert/THREAT-MODEL.md", "rw-r--r--"),
    ] {
        assert!(has(path, perms), "{path} ({perms}) not in the package:\n{list}");
    }
    // Stripped binaries (the release profile keeps line tables: ~100 MB each).
    let size_of = |path: &str| {
        list.lines()
            .find(|l| l.ends_with(&format!(".{path}")))
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap()
    };
    for b in ["/usr/bin/konvertd", "/usr/bin/konvertctl"] {
        assert!(size_of(b) < 40 << 20, "{b} is {} bytes: not stripped", size_of(b));
    }
    // The packaged unit and entries are the repository's, byte for byte.
    for (inside, repo) in [
        ("./usr/lib/systemd/system/konvertd.service", UNIT),
        (
            "./usr/lib/sysusers.d/konvert.conf",
            "deploy/sysusers.d/konvert.conf",
        ),
        (
            "./usr/lib/tmpfiles.d/konvert.conf",
            "deploy/tmpfiles.d/konvert.conf",
        ),
    ] {
        let x = TempDir::new().unwrap();
        ok(
            Command::new(&dpkg_deb)
                .arg("-x")
                .arg(&deb)
                .arg(x.path())
                .output()
                .unwrap(),
            "dpkg-deb -x",
        );
        let got = fs::read_to_string(x.path().join(inside)).unwrap();
        assert_eq!(got, read(repo), "{inside} differs from {repo}");
        // The packaged binary runs and knows the commands the docs name.
        if inside.ends_with("konvertd.service") {
            let help = ok(
                Command::new(x.path().join("usr/bin/konvertctl"))
                    .args(["keys", "rotate", "--help"])
                    .output()
                    .unwrap(),
                "packaged konvertctl keys rotate --help",
            );
            assert!(help.contains("--overlap"), "{help}");
        }
    }
}

// ---------------------------------------------------------------------------
// Signatory rosters and authority changes under the packaged layout

/// `konvertctl init --systemd` under `r` for `authority`, QUIC on `port`;
/// returns the service user used.
fn init_systemd_under(r: &Path, authority: &str, port: u16) -> String {
    let user = if nix::unistd::geteuid().is_root() {
        "daemon"
    } else {
        "konvert"
    };
    ok(
        konvertctl([
            "init",
            "--systemd",
            "--root",
            r.to_str().unwrap(),
            "--authority",
            authority,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--service-user",
            user,
        ]),
        "init --systemd",
    );
    user.to_string()
}

/// The packaged konvert.toml with its installed paths moved under `r` and
/// the API open to this test's group, as `r/konvert-test.toml`.
fn moved_config(r: &Path, user: &str) -> PathBuf {
    let text = fs::read_to_string(r.join("etc/konvert/konvert.toml")).unwrap();
    let gid = nix::unistd::Gid::effective();
    let moved = text
        .replace("\"/etc/konvert/", &format!("\"{}/etc/konvert/", r.display()))
        .replace(
            "\"/var/lib/konvert\"",
            &format!("\"{}/var/lib/konvert\"", r.display()),
        )
        .replace("\"/run/konvert/", &format!("\"{}/run/konvert/", r.display()))
        .replace(
            &format!("groups = [\"{user}\"]"),
            &format!("groups = [\"{gid}\"]"),
        );
    let config = r.join("konvert-test.toml");
    fs::write(&config, moved).unwrap();
    fs::create_dir_all(r.join("run/konvert")).unwrap();
    config
}

/// Starts konvertd on `config` with `credentials` as $CREDENTIALS_DIRECTORY
/// and waits until its API answers on `socket`.
fn start_with_credentials(
    config: &Path,
    credentials: &Path,
    socket: &Path,
    log: &Path,
) -> std::process::Child {
    let mut child = Command::new(bin("konvertd"))
        .arg("--config")
        .arg(config)
        .env("CREDENTIALS_DIRECTORY", credentials)
        .env("KONVERT_LOG", "info")
        .stdout(Stdio::null())
        .stderr(fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok((200, _)) = http(socket, "GET", "/v1/health", None) {
            return child;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "konvertd exited with {st}:\n{}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "konvertd did not come up:\n{}",
            fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn get_json(socket: &Path, path: &str) -> serde_json::Value {
    let (code, body) = http(socket, "GET", path, None).unwrap();
    assert_eq!(code, 200, "{path}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

/// Polls `what` until it returns `Some`.
fn eventually<T>(what: &str, logs: &[&Path], mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not happen; logs:\n{}",
            logs.iter()
                .map(|l| fs::read_to_string(l).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n----\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Art. 9.3, Art. 2 under `konvertctl init --systemd`: `signatory add
/// --keys-dir` writes the roster and the new signatory's key where the
/// unit's `LoadCredential=` lines read them, names the key as a credential
/// in konvert.toml, and konvertd started from the credentials the unit
/// would pass announces the roster to its peer and enforces it locally;
/// `authority rename --keys-dir` is signed with the root key and accepted
/// by konvertd (which verifies it with the `root.key.pem.pub` credential).
#[test]
fn under_systemd_signatory_add_with_keys_dir_reaches_konvertd_through_credentials() {
    let root = TempDir::new().unwrap();
    let r = root.path().join("kz");
    fs::create_dir(&r).unwrap();
    let port = free_udp_port();
    let user = init_systemd_under(&r, "kz.mvd", port);
    let etc_config = r.join("etc/konvert/konvert.toml");
    let keys = r.join("etc/konvert/keys");

    // Without --keys-dir the command says which directory to give.
    let out = konvertctl([
        "signatory",
        "add",
        "--config",
        etc_config.to_str().unwrap(),
        "--id",
        "petrov",
        "--name",
        "Петров Пётр Петрович",
        "--position",
        "Заместитель министра",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("--keys-dir /etc/konvert/keys"),
        "{}",
        text(&out)
    );
    assert_eq!(
        fs::metadata(keys.join("roster.cose")).unwrap().len(),
        0,
        "no roster yet"
    );

    // The first roster replaces the card's signatories at the peers: head,
    // who signs the announcement, goes on it too.
    let add = |id: &str, name: &str, position: &str| {
        ok(
            konvertctl([
                "--json",
                "signatory",
                "add",
                "--config",
                etc_config.to_str().unwrap(),
                "--keys-dir",
                keys.to_str().unwrap(),
                "--id",
                id,
                "--name",
                name,
                "--position",
                position,
            ]),
            "signatory add --keys-dir",
        )
    };
    add("head", "Иванов Иван Иванович", "Министр");
    let out = add("petrov", "Петров Пётр Петрович", "Заместитель министра");
    let changed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(changed["version"], 2, "{changed}");
    assert_eq!(changed["takes_effect"], "restart", "{changed}");
    assert!(keys.join("roster.cose").is_file());
    assert_eq!(mode_uid_gid(&keys.join("signatories/petrov.key.pem")).0, 0o600);
    let text_cfg = fs::read_to_string(&etc_config).unwrap();
    assert!(
        text_cfg.contains("key = \"${CREDENTIALS_DIRECTORY}/signatory_petrov.key.pem\""),
        "{text_cfg}"
    );
    let list: serde_json::Value = serde_json::from_str(&ok(
        konvertctl([
            "--json",
            "signatory",
            "list",
            "--config",
            etc_config.to_str().unwrap(),
            "--keys-dir",
            keys.to_str().unwrap(),
        ]),
        "signatory list --keys-dir",
    ))
    .unwrap();
    let on: Vec<(&str, bool)> = list["signatories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["id"].as_str().unwrap(), s["on_roster"].as_bool().unwrap()))
        .collect();
    assert_eq!(on, [("head", true), ("petrov", true)], "{list}");

    // A peer, by.mvd, started by hand; each knows the other.
    let peer_dir = root.path().join("by.mvd");
    let by_port = free_udp_port();
    ok(
        konvertctl([
            "init",
            "--authority",
            "by.mvd",
            "--dir",
            peer_dir.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{by_port}"),
        ]),
        "init by.mvd",
    );
    let config = moved_config(&r, &user);
    for (cfg, card, addr) in [
        (config.clone(), peer_dir.join("card.toml"), by_port),
        (
            peer_dir.join("konvert.toml"),
            r.join("etc/konvert/card.toml"),
            port,
        ),
    ] {
        ok(
            konvertctl([
                "peer",
                "add",
                "--config",
                cfg.to_str().unwrap(),
                "--card",
                card.to_str().unwrap(),
                "--address",
                &format!("127.0.0.1:{addr}"),
                "--agreement",
                "kz-by-2019",
            ]),
            "peer add",
        );
    }
    let by_log = root.path().join("by.log");
    let by_socket = peer_dir.join("api.sock");
    let mut by = Command::new(bin("konvertd"))
        .arg("--config")
        .arg(peer_dir.join("konvert.toml"))
        .env_remove("CREDENTIALS_DIRECTORY")
        .env("KONVERT_LOG", "info")
        .stdout(Stdio::null())
        .stderr(fs::File::create(&by_log).unwrap())
        .spawn()
        .unwrap();

    // kz.mvd from the credentials the unit would pass (roster.cose and
    // root.key.pem.pub among them).
    let credentials = r.join("credentials");
    make_credentials(&r, &credentials);
    assert!(fs::metadata(credentials.join("roster.cose")).unwrap().len() > 0);
    assert!(credentials.join("signatory_petrov.key.pem").is_file());
    let log = r.join("konvertd.log");
    let socket = r.join("run/konvert/api.sock");
    let mut kz = start_with_credentials(&config, &credentials, &socket, &log);
    let _ = eventually("by.mvd up", &[&by_log], || {
        http(&by_socket, "GET", "/v1/health", None).ok()
    });

    // Announced: by.mvd has kz.mvd's roster version 2.
    let roster_at_by = |version: u64, logs: &[&Path]| -> Vec<String> {
        let d = eventually(&format!("roster {version} reaching by.mvd"), logs, || {
            let d = get_json(&by_socket, "/v1/directory");
            let found = d["rosters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["authority"] == "kz.mvd" && x["version"] == version)
                .cloned();
            found
        });
        d["signatories"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(roster_at_by(2, &[&log, &by_log]), ["head", "petrov"]);

    let submit = |signatory: &str| {
        let mut m: serde_json::Value = serde_json::from_str(&read("docs/examples/request.json")).unwrap();
        let now = konvert_envelope::model::Timestamp::now();
        m["header"]["id"] = serde_json::json!(konvert_envelope::model::Id::new(now).to_string());
        m["header"]["time"] = serde_json::json!(now.to_string());
        m["body"]["content"]["attachments"] = serde_json::json!([]);
        let doc = serde_json::json!({ "message": m, "signatory": signatory });
        let body = serde_json::to_vec(&doc).unwrap();
        let (code, body) = http(&socket, "POST", "/v1/messages", Some(("application/json", &body))).unwrap();
        (code, serde_json::from_slice::<serde_json::Value>(&body).unwrap())
    };
    let delivered = |id: &str, log: &Path| {
        eventually(&format!("{id} delivered"), &[log, &by_log], || {
            let s = get_json(&socket, &format!("/v1/messages/{id}"));
            (s["state"] == "delivered").then_some(())
        })
    };
    // petrov, on the roster, signs a request that by.mvd accepts.
    let (code, p) = submit("petrov");
    assert_eq!(code, 202, "{p}\n{}", fs::read_to_string(&log).unwrap_or_default());
    delivered(p["id"].as_str().unwrap(), &log);

    // petrov is revoked; the credentials are copied at start, so the change
    // takes effect with a restart (`systemctl restart konvertd`).
    let out = ok(
        konvertctl([
            "--json",
            "signatory",
            "revoke",
            "--config",
            etc_config.to_str().unwrap(),
            "--keys-dir",
            keys.to_str().unwrap(),
            "--id",
            "petrov",
        ]),
        "signatory revoke --keys-dir",
    );
    let changed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (changed["version"].as_u64(), changed["takes_effect"].as_str()),
        (Some(3), Some("restart"))
    );
    signal(&kz, nix::sys::signal::Signal::SIGTERM);
    assert!(kz.wait().unwrap().success());
    let credentials = r.join("credentials-2");
    make_credentials(&r, &credentials);
    let log = r.join("konvertd-2.log");
    let mut kz = start_with_credentials(&config, &credentials, &socket, &log);
    assert_eq!(roster_at_by(3, &[&log, &by_log]), ["head"]);
    // Enforced locally now: petrov is refused before sealing, head is not.
    let (code, p) = submit("petrov");
    assert_eq!(code, 422, "{p}");
    assert_eq!(p["errors"][0]["rule"], "signer_not_authorised", "{p}");
    assert!(
        p["errors"][0]["message"].as_str().unwrap().contains("version 3"),
        "{p}"
    );
    let (code, p) = submit("head");
    assert_eq!(code, 202, "{p}");
    delivered(p["id"].as_str().unwrap(), &log);

    // A renaming signed with the root key from the keys directory, sent
    // through konvertd, which checks it with the root.key.pem.pub credential.
    let out = ok(
        konvertctl([
            "--json",
            "authority",
            "rename",
            "--config",
            config.to_str().unwrap(),
            "--keys-dir",
            keys.to_str().unwrap(),
            "--old",
            "kz.mvd",
            "--new",
            "kz.mia",
            "--name",
            "Министерство внутренних дел Республики Казахстан",
            "--effective",
            "2027-01-01T00:00:00Z",
        ]),
        "authority rename --keys-dir",
    );
    let q: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(q["peers"][0]["id"].is_string(), "{q}");
    eventually("the renaming reaching by.mvd", &[&log, &by_log], || {
        let d = get_json(&by_socket, "/v1/directory");
        d["changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c.to_string().contains("kz.mia"))
            .then_some(())
    });

    signal(&kz, nix::sys::signal::Signal::SIGTERM);
    assert!(kz.wait().unwrap().success());
    signal(&by, nix::sys::signal::Signal::SIGTERM);
    assert!(by.wait().unwrap().success());
}
