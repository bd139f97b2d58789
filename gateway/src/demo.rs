//! `konvertctl demo`: Konvert's main job on embedded defaults, offline.
//!
//! Three authorities (`kz.mvd`, `by.mvd`, `am.police`) get fresh node keys
//! and signatories in a directory; then a short exchange under the shipped
//! agreement profiles is played through the same file commands an operator
//! uses (`envelope seal`, `envelope open`): a request with a photograph, a
//! clarification asked and answered, an answer, a second request refused in
//! part with grounds (Art. 10.4), and unsolicited information (Art. 8) to
//! Armenia. Every envelope is opened with every check, and the receiver's
//! signed delivery receipt is verified by the sender. The timeline printed
//! shows ids, sizes, kinds and outcomes only.
//!
//! Until the daemon carries envelopes over QUIC, the "network" is the
//! directory: envelopes and receipts are files in it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use konvert_envelope::envelope::Limits;
use konvert_envelope::keys::AuthorityCard;
use konvert_envelope::model::{AuthorityId, Id, Message, Timestamp};
use konvert_envelope::receipt::{Outcome, Receipt};

use crate::files;
use crate::offline::{self, Error};

/// Profiles compiled into the binary, so the demo needs no files.
pub const PROFILES: [(&str, &str); 2] = [
    (
        "kz-by-2019",
        include_str!("../../deploy/profiles/kz-by-2019.toml"),
    ),
    (
        "kz-am-2024",
        include_str!("../../deploy/profiles/kz-am-2024.toml"),
    ),
];

const REQUEST: &str = include_str!("../../docs/examples/request.json");
const CLARIFICATION_REQUEST: &str = include_str!("../../docs/examples/clarification_request.json");
const CLARIFICATION_ANSWER: &str = include_str!("../../docs/examples/clarification_answer.json");
const RESPONSE: &str = include_str!("../../docs/examples/response.json");
const REFUSAL: &str = include_str!("../../docs/examples/response-refused.json");
const UNSOLICITED: &str = include_str!("../../docs/examples/unsolicited_information-kz-am-2024.json");

/// The authorities of the demo.
pub const AUTHORITIES: [&str; 3] = ["kz.mvd", "by.mvd", "am.police"];

/// One step of the exchange: which example, and which earlier step it answers.
struct Step {
    json: &'static str,
    to: &'static str,
    answers: Option<usize>,
    note: &'static str,
}

const STEPS: [Step; 7] = [
    Step {
        json: REQUEST,
        to: "by.mvd",
        answers: None,
        note: "request (Art. 9.2) with a photograph",
    },
    Step {
        json: CLARIFICATION_REQUEST,
        to: "kz.mvd",
        answers: Some(0),
        note: "clarification asked (Art. 10.1)",
    },
    Step {
        json: CLARIFICATION_ANSWER,
        to: "by.mvd",
        answers: Some(1),
        note: "clarification given",
    },
    Step {
        json: RESPONSE,
        to: "kz.mvd",
        answers: Some(0),
        note: "answer: fulfilled (Art. 10.3)",
    },
    Step {
        json: REQUEST,
        to: "by.mvd",
        answers: None,
        note: "second request",
    },
    Step {
        json: REFUSAL,
        to: "kz.mvd",
        answers: Some(4),
        note: "answer: refused in part, with grounds (Art. 10.4)",
    },
    Step {
        json: UNSOLICITED,
        to: "am.police",
        answers: None,
        note: "unsolicited information (Art. 8)",
    },
];

/// Runs the demo in `dir` (which must be empty or absent) and returns the timeline.
pub fn run(dir: &Path, now: Timestamp) -> Result<String, Error> {
    if dir.exists() && dir.read_dir().map(|mut d| d.next().is_some()).unwrap_or(false) {
        return Err(Error::Usage(format!(
            "{} is not empty; the demo needs an empty directory",
            dir.display()
        )));
    }
    files::create_private_dir(dir)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Konvert demo: three gateways exchange sealed envelopes (files in {})\n",
        dir.display()
    );

    // Profiles and keys.
    let profiles_dir = dir.join("profiles");
    files::create_private_dir(&profiles_dir)?;
    for (id, text) in PROFILES {
        files::write_atomic(
            &profiles_dir.join(format!("{id}.toml")),
            text.as_bytes(),
            0o644,
            false,
        )?;
    }
    for a in AUTHORITIES {
        let id = AuthorityId::new(a).map_err(|e| Error::Usage(e.to_string()))?;
        let card = offline::keygen(&id, &dir.join(a), None, false)?;
        offline::signatory_keygen(&dir.join(a).join("signatory.key.pem"), false)?;
        let _ = writeln!(
            out,
            "  {a:<10} node key {}  age {}…",
            card.node_key.key_id(),
            &card.age_recipients[0].to_string()[..16]
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "  #  from       to         envelope                                   size  receipt     what"
    );

    let msgs = dir.join("messages");
    let envs = dir.join("envelopes");
    let receipts = dir.join("receipts");
    for d in [&msgs, &envs, &receipts] {
        files::create_private_dir(d)?;
    }
    // A synthetic "photograph" for the request's attachments.
    let photo: Vec<u8> = b"\xff\xd8\xff\xe0 Konvert demo photograph (synthetic)"
        .iter()
        .copied()
        .chain((0..20_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8))
        .collect();
    files::write_atomic(&msgs.join("photo.jpg"), &photo, 0o600, false)?;

    let mut ids: Vec<Id> = Vec::new();
    for (n, step) in STEPS.iter().enumerate() {
        let t = now.plus_secs(60 * n as i64);
        let mut m: Message =
            serde_json::from_str(step.json).map_err(|e| Error::Usage(format!("embedded example: {e}")))?;
        m.header.id = Id::new(t);
        m.header.time = t;
        m.header.to = AuthorityId::new(step.to).map_err(|e| Error::Usage(e.to_string()))?;
        m.header.in_reply_to = step.answers.map(|i| ids[i]);
        for a in m.attachments_mut() {
            a.length = 0;
            a.sha256 = Default::default();
            a.file = Some("photo.jpg".into());
        }
        ids.push(m.header.id);
        let from = m.header.from.to_string();
        let kind = m.kind().as_str();
        let msg_path = msgs.join(format!("{:02}-{kind}.json", n + 1));
        let json = serde_json::to_vec_pretty(&m).map_err(|e| Error::Usage(e.to_string()))?;
        files::write_atomic(&msg_path, &json, 0o600, false)?;
        let profile = profiles_dir.join(format!("{}.toml", m.header.agreement));
        let env_path = envs.join(format!("{:02}-{from}-to-{}.env", n + 1, step.to));

        // The sender seals.
        let sealed = offline::seal_file(
            &dir.join(&from),
            &dir.join(step.to).join(offline::CARD_FILE),
            &dir.join(&from).join("signatory.key.pem"),
            &profile,
            &msg_path,
            &env_path,
            t,
            false,
        )?;
        // The receiver opens with every check and answers with a signed receipt.
        let signers = [offline::pub_path(&dir.join(&from).join("signatory.key.pem"))];
        let opened = offline::open_file(
            &dir.join(step.to),
            &dir.join(&from).join(offline::CARD_FILE),
            &signers,
            &profile,
            &env_path,
            None,
            t,
            &Limits::default(),
        )?;
        let receiver = offline::load_node_keys(&dir.join(step.to))?;
        let receipt = Receipt {
            envelope_id: opened.envelope.id,
            envelope_digest: opened.digest,
            time: t,
            receiver: receiver.authority.clone(),
            sender: opened.envelope.from.clone(),
            outcome: Outcome::Accepted,
        };
        let signed = receipt
            .sign(&receiver.signing)
            .map_err(|e| Error::Usage(e.to_string()))?;
        let receipt_path = receipts.join(format!("{:02}-{}.receipt", n + 1, opened.envelope.id));
        files::write_atomic(&receipt_path, &signed, 0o644, false)?;
        // The sender verifies the receipt with the receiver's card alone.
        let card: AuthorityCard = offline::load_card(&dir.join(step.to).join(offline::CARD_FILE))?;
        let verified = Receipt::verify(&signed, &card.node_key).map_err(|e| Error::Usage(e.to_string()))?;
        let ok = verified.envelope_digest == sealed.digest && verified.outcome == Outcome::Accepted;
        let _ = writeln!(
            out,
            "  {:<2} {from:<10} {:<10} {}  {:>9}  {:<10}  {kind}: {}",
            n + 1,
            step.to,
            sealed.header.id,
            human_size(sealed.size),
            if ok { "verified" } else { "MISMATCH" },
            step.note,
        );
        if !ok {
            return Err(Error::Usage(format!(
                "receipt for step {} does not match the envelope sent",
                n + 1
            )));
        }
    }
    let _ = writeln!(
        out,
        "\nEvery envelope passed: size limits, structure, node signature, decryption, signatory\n\
         signature, signed routing, decoding, attachment digests and the agreement profile.\n\
         Each receipt is signed by the receiving gateway and was verified with its card."
    );
    Ok(out)
}

/// A directory for the demo: `keep`, or a fresh temporary one removed when dropped.
pub fn workdir(keep: Option<PathBuf>) -> Result<(PathBuf, Option<tempfile::TempDir>), Error> {
    match keep {
        Some(d) => Ok((d, None)),
        None => {
            let t = tempfile::Builder::new()
                .prefix("konvert-demo-")
                .tempdir()
                .map_err(|e| Error::Usage(format!("cannot create a temporary directory: {e}")))?;
            Ok((t.path().join("demo"), Some(t)))
        }
    }
}

fn human_size(n: u64) -> String {
    if n >= 1024 * 1024 {
        format!("{:.1} MiB", n as f64 / 1024.0 / 1024.0)
    } else if n >= 1024 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_runs_and_every_receipt_verifies() {
        let (dir, _guard) = workdir(None).unwrap();
        let now: Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
        let out = run(&dir, now).unwrap();
        assert_eq!(out.matches("verified").count(), STEPS.len() + 1, "{out}");
        assert!(!out.contains("MISMATCH"));
        // Nothing personal in the timeline.
        assert!(!out.contains("Сейткали") && !out.contains("SEITKALI"), "{out}");
        assert_eq!(
            std::fs::read_dir(dir.join("receipts")).unwrap().count(),
            STEPS.len()
        );
        // A second run into the same directory is refused.
        assert!(run(&dir, now).is_err());
    }
}
