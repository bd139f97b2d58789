//! The examples in `docs/examples/` are test vectors: each one parses, is
//! valid under the profile it names (loaded from `deploy/profiles/`), and
//! survives JSON -> CBOR -> struct -> JSON unchanged. Every message kind has
//! at least one example.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use konvert_envelope::model::{Message, MessageKind};
use konvert_envelope::profile::Profile;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn load_profile(id: &str) -> Profile {
    let path = repo().join("deploy/profiles").join(format!("{id}.toml"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Profile::from_toml_str(&text, &path.display().to_string()).unwrap_or_else(|e| panic!("{e}"))
}

fn examples() -> Vec<(String, String)> {
    let dir = repo().join("docs/examples");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let name = p.file_name().expect("file name").to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).expect("read example"))
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no examples in {}", dir.display());
    out
}

fn parse(name: &str, text: &str) -> Message {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn profiles_load() {
    for id in ["kz-by-2019", "kz-am-2024"] {
        let p = load_profile(id);
        assert_eq!(p.id().as_str(), id);
        assert_eq!(p.answer_deadline_days(), 30);
        assert_eq!(p.working_language(), "ru");
        for kind in MessageKind::ALL {
            assert!(p.allows_kind(kind), "{id} does not allow {kind}");
        }
    }
}

#[test]
fn every_example_is_valid_under_its_profile() {
    for (name, text) in examples() {
        let msg = parse(&name, &text);
        let profile = load_profile(msg.header.agreement.as_str());
        let now = msg.header.time.plus_secs(60);
        if let Err(e) = profile.validate(&msg, now) {
            panic!("{name}: {e}");
        }
        for a in msg.attachments() {
            assert!(
                !a.sha256.is_zero() && a.length > 0 && a.file.is_none(),
                "{name}: unsealed attachment"
            );
        }
    }
}

#[test]
fn every_example_round_trips_through_cbor() {
    for (name, text) in examples() {
        let msg = parse(&name, &text);
        let mut cbor = Vec::new();
        ciborium::into_writer(&msg, &mut cbor).unwrap_or_else(|e| panic!("{name}: {e}"));
        let back: Message = ciborium::from_reader(cbor.as_slice()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(back, msg, "{name}: CBOR round trip");
        let json_again: serde_json::Value = serde_json::to_value(&back).expect("to JSON");
        let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(json_again, json, "{name}: JSON -> CBOR -> JSON");
    }
}

#[test]
fn every_kind_has_an_example() {
    let kinds: BTreeSet<MessageKind> = examples().iter().map(|(n, t)| parse(n, t).kind()).collect();
    for kind in MessageKind::ALL {
        assert!(kinds.contains(&kind), "no example of {kind} in docs/examples/");
    }
}

#[test]
fn example_file_names_start_with_their_kind() {
    for (name, text) in examples() {
        let kind = parse(&name, &text).kind();
        assert!(
            name == format!("{kind}.json") || name.starts_with(&format!("{kind}-")),
            "{name} holds a {kind}"
        );
    }
}

#[test]
fn kind_names_equal_serde_tags() {
    for kind in MessageKind::ALL {
        let tag = serde_json::to_value(kind).expect("kind to JSON");
        assert_eq!(tag, serde_json::Value::String(kind.as_str().to_owned()));
    }
}
