//! `konvertctl demo`: Konvert's main job on embedded defaults.
//!
//! Three gateways (`kz.mvd`, `by.mvd`, `am.police`) are set up in a
//! directory exactly as an operator would (`konvertctl init` and
//! `peer add`, through the same library functions), started as real
//! daemons in this process (QUIC on 127.0.0.1, an API socket each), and
//! a short exchange is played through their local APIs, as ministry
//! applications would: a request with a photograph, a clarification asked
//! and answered, an answer, a second request refused in part with grounds
//! (Art. 10.4), and unsolicited information (Art. 8) to Armenia. Each
//! message is delivered over QUIC, stored durably by the receiver, answered
//! with a signed receipt that the demo verifies with the receiver's card,
//! read from the receiver's inbox and acknowledged. The timeline shows ids,
//! kinds, outcomes, the refusal's grounds (Art. 10.4 codes and the refused
//! fields) and, after each step of a case, the case's state as each of its
//! two gateways sees it (`GET /v1/cases/{id}` on both): nothing personal. The daemons are stopped at the end; with
//! `--keep DIR` the directories stay, ready for `konvertd --config
//! DIR/kz.mvd/konvert.toml` and `konvertctl`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

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

/// What the demo did, for `konvertctl demo` (text by [`demo_text`], or JSON).
/// Ids, kinds, states, grounds and outcomes only: nothing personal.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoReport {
    /// The directory holding the three gateways.
    pub dir: PathBuf,
    /// The gateways started.
    pub gateways: Vec<DemoGateway>,
    /// The exchange, step by step.
    pub steps: Vec<DemoStep>,
    /// Each request case as each of its two gateways sees it at the end.
    pub cases: Vec<DemoCase>,
}

/// One gateway of the demo.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoGateway {
    /// Its authority.
    pub authority: String,
    /// Its QUIC address.
    pub quic: String,
    /// Its TLS pin (on its card).
    pub tls_pin: String,
}

/// One message of the exchange.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoStep {
    /// Its number, from 1.
    pub n: usize,
    /// Sender.
    pub from: String,
    /// Receiver.
    pub to: String,
    /// The message id.
    pub id: Id,
    /// The message kind.
    pub kind: String,
    /// What it is, in words.
    pub note: String,
    /// The receipt's outcome: `accepted` or `rejected`.
    pub receipt: String,
    /// The receipt's signature verified with the receiver's card.
    pub receipt_verified: bool,
    /// The receiving application read it from its inbox and acknowledged it.
    pub read_and_acknowledged: bool,
    /// The request case it belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub case: Option<Id>,
    /// The case's state on each of its two gateways once the step was done.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub case_states: Vec<SideState>,
    /// Art. 10.4 grounds of a refusal, as the message gives them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub grounds: Vec<String>,
    /// Fields refused, for a partial refusal.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refused_fields: Vec<String>,
}

/// A case's state at one gateway.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SideState {
    /// The gateway.
    pub authority: String,
    /// Its side of the case: `requester` or `requested`.
    pub role: String,
    /// The state code (`GET /v1/cases/{id}`).
    pub state: String,
    /// Whether the case still awaits its answer there.
    pub open: bool,
    /// Refusal grounds recorded there.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub grounds: Vec<String>,
}

/// A request case at the end of the demo.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoCase {
    /// The case id (the request's id).
    pub id: Id,
    /// Its state at the requester and at the requested gateway.
    pub states: Vec<SideState>,
}

/// The timeline as text.
pub fn demo_text(r: &DemoReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Konvert demo: three gateways on 127.0.0.1 exchange messages (directories in {})\n",
        r.dir.display()
    );
    for g in &r.gateways {
        let _ = writeln!(
            out,
            "  {:<10} QUIC {:<15}  TLS pin {}",
            g.authority, g.quic, g.tls_pin
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "  #  from       to         message id                            receipt                    application  what"
    );
    let states = |v: &[SideState]| {
        v.iter()
            .map(|s| format!("{} {}", s.authority, s.state))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for s in &r.steps {
        let verdict = match (s.receipt.as_str(), s.receipt_verified) {
            ("accepted", true) => "accepted, verified",
            ("accepted", false) => "accepted, NOT VERIFIED",
            _ => "REJECTED",
        };
        let _ = writeln!(
            out,
            "  {:<2} {:<10} {:<10} {}  {verdict:<25}  {:<11}  {}: {}",
            s.n,
            s.from,
            s.to,
            s.id,
            if s.read_and_acknowledged {
                "read, acked"
            } else {
                "MISMATCH"
            },
            s.kind,
            s.note,
        );
        if !s.grounds.is_empty() {
            let fields = if s.refused_fields.is_empty() {
                String::new()
            } else {
                format!("; fields refused: {}", s.refused_fields.join(", "))
            };
            let _ = writeln!(
                out,
                "       grounds (Art. 10.4): {}{fields}",
                s.grounds.join(", ")
            );
        }
        if let Some(c) = &s.case {
            let _ = writeln!(out, "       case {c}: {}", states(&s.case_states));
        }
    }
    if !r.cases.is_empty() {
        let _ = writeln!(out, "\nCases as each gateway sees them at the end:");
        for c in &r.cases {
            let _ = writeln!(out, "  {}", c.id);
            for s in &c.states {
                let grounds = if s.grounds.is_empty() {
                    String::new()
                } else {
                    format!(", grounds {}", s.grounds.join(", "))
                };
                let _ = writeln!(
                    out,
                    "    {:<10} {:<9}  {}{}{grounds}",
                    s.authority,
                    s.role,
                    s.state,
                    if s.open { " (open)" } else { "" }
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "\nEach message went application → local API → seal (signatory COSE signature, age) →\n\
         QUIC with pinned mutual TLS → every check at the receiver → durable store → signed\n\
         receipt (verified here with the receiver's card) → receiver's inbox → acknowledged."
    );
    out
}

/// Runs the demo in `dir` (which must be empty or absent) and returns what happened.
pub fn run(dir: &Path) -> Result<DemoReport, Error> {
    if dir.exists() && dir.read_dir().map(|mut d| d.next().is_some()).unwrap_or(false) {
        return Err(Error::Usage(format!(
            "{} is not empty; the demo needs an empty directory",
            dir.display()
        )));
    }
    files::create_private_dir(dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Usage(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(run_async(dir))
}

struct Running {
    authority: &'static str,
    control: tokio::sync::mpsc::Sender<crate::daemon::Control>,
    task: tokio::task::JoinHandle<Result<(), crate::daemon::StartError>>,
}

fn free_port() -> Result<u16, Error> {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::Usage(format!("no free UDP port on 127.0.0.1: {e}")))
}

async fn run_async(dir: &Path) -> Result<DemoReport, Error> {
    let mut report = DemoReport {
        dir: dir.to_path_buf(),
        gateways: Vec::new(),
        steps: Vec::new(),
        cases: Vec::new(),
    };
    // Set up as an operator would: init on each side, then peer add.
    let mut cfgs = Vec::new();
    for a in AUTHORITIES {
        let port = free_port()?;
        let r = crate::init::init(&crate::init::InitOptions {
            authority: AuthorityId::new(a).map_err(|e| Error::Usage(e.to_string()))?,
            dir: dir.join(a),
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            api_socket: None,
            name: None,
            signatory: "head".into(),
            force: false,
        })?;
        report.gateways.push(DemoGateway {
            authority: a.to_string(),
            quic: format!("127.0.0.1:{port}"),
            tls_pin: r.card_value.tls_pin.clone().unwrap_or_default(),
        });
        cfgs.push((a, r, port));
    }
    let link = |x: usize, y: usize, agreement: &str| -> Result<(), Error> {
        let agreement =
            konvert_envelope::model::AgreementId::new(agreement).map_err(|e| Error::Usage(e.to_string()))?;
        crate::init::peer_add(
            &cfgs[x].1.config,
            &cfgs[y].1.card,
            &[format!("127.0.0.1:{}", cfgs[y].2)],
            std::slice::from_ref(&agreement),
        )?;
        Ok(())
    };
    link(0, 1, "kz-by-2019")?;
    link(1, 0, "kz-by-2019")?;
    link(0, 2, "kz-am-2024")?;
    link(2, 0, "kz-am-2024")?;

    // Start the three daemons.
    let mut running = Vec::new();
    for (a, r, _) in &cfgs {
        let node = crate::daemon::Node::start(&r.config).map_err(|e| Error::Usage(format!("{a}: {e}")))?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let task = tokio::spawn(crate::daemon::run(node, rx));
        running.push(Running {
            authority: a,
            control: tx,
            task,
        });
    }
    let result = exchange(dir, &mut report).await;
    for r in &running {
        let _ = r.control.send(crate::daemon::Control::Stop).await;
    }
    for r in running {
        match r.task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Error::Usage(format!("{}: {e}", r.authority))),
            Err(e) => return Err(Error::Usage(format!("{}: {e}", r.authority))),
        }
    }
    result?;
    Ok(report)
}

fn client_of(dir: &Path, authority: &str) -> crate::client::Client {
    crate::client::Client::new(dir.join(authority).join("api.sock"))
}

fn client_err(e: crate::client::ClientError) -> Error {
    Error::Usage(e.to_string())
}

fn code<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

/// The case `id` as the gateways of `parties` see it (a gateway that does
/// not know it is left out).
async fn case_states(dir: &Path, id: Id, parties: [&str; 2]) -> Vec<SideState> {
    let mut out = Vec::new();
    for a in parties {
        if let Ok(c) = client_of(dir, a).case(id).await {
            out.push(SideState {
                authority: a.to_string(),
                role: code(&c.role),
                state: c.state.clone(),
                open: c.open,
                grounds: c.grounds.iter().map(code).collect(),
            });
        }
    }
    out
}

/// The grounds and refused fields of a refusal (empty for any other message).
fn refusal_of(m: &Message) -> (Vec<String>, Vec<String>) {
    let Ok(v) = serde_json::to_value(&m.body) else {
        return (Vec::new(), Vec::new());
    };
    let refused = &v["content"]["outcome"]["refused"];
    let list = |p: &serde_json::Value| -> Vec<String> {
        p.as_array()
            .map(|a| a.iter().filter_map(|g| g.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    };
    (list(&refused["grounds"]), list(&refused["partial"]["fields"]))
}

async fn exchange(dir: &Path, report: &mut DemoReport) -> Result<(), Error> {
    // The APIs answer once the daemons run.
    for a in AUTHORITIES {
        let c = client_of(dir, a);
        let mut tries = 0;
        while c.health().await.is_err() {
            tries += 1;
            if tries > 200 {
                return Err(Error::Usage(format!("the daemon of {a} did not come up")));
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }
    let msgs = dir.join("messages");
    files::create_private_dir(&msgs)?;
    // A synthetic "photograph" for the request's attachments.
    let photo: Vec<u8> = b"\xff\xd8\xff\xe0 Konvert demo photograph (synthetic)"
        .iter()
        .copied()
        .chain((0..20_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8))
        .collect();
    files::write_atomic(&msgs.join("photo.jpg"), &photo, 0o600, false)?;
    let mut ids: Vec<Id> = Vec::new();
    // The case of each step (the id of the request that opened it) and its two gateways.
    let mut cases: Vec<Option<(Id, [&'static str; 2])>> = Vec::new();
    for (n, step) in STEPS.iter().enumerate() {
        let now = Timestamp::now();
        let mut m: Message =
            serde_json::from_str(step.json).map_err(|e| Error::Usage(format!("embedded example: {e}")))?;
        m.header.id = Id::new(now);
        m.header.time = now;
        m.header.to = AuthorityId::new(step.to).map_err(|e| Error::Usage(e.to_string()))?;
        m.header.in_reply_to = step.answers.map(|i| ids[i]);
        for a in m.attachments_mut() {
            a.length = 0;
            a.sha256 = Default::default();
            a.file = Some("photo.jpg".into());
        }
        let id = m.header.id;
        ids.push(id);
        let from = m.header.from.to_string();
        let kind = m.kind().as_str();
        let case = match step.answers {
            Some(i) => cases[i],
            None if kind == "request" => {
                let from_static = AUTHORITIES
                    .iter()
                    .copied()
                    .find(|a| *a == from)
                    .unwrap_or("kz.mvd");
                Some((id, [from_static, step.to]))
            }
            None => None,
        };
        cases.push(case);
        let (grounds, refused_fields) = refusal_of(&m);
        let msg_path = msgs.join(format!("{:02}-{kind}.json", n + 1));
        let json = serde_json::to_vec_pretty(&m).map_err(|e| Error::Usage(e.to_string()))?;
        files::write_atomic(&msg_path, &json, 0o600, false)?;

        // The sender's application hands it to its gateway.
        let sender = client_of(dir, &from);
        sender
            .send_file(&msg_path, Some("head"))
            .await
            .map_err(client_err)?;
        // Delivery over QUIC; the receipt comes back signed.
        let mut status = sender.status(id).await.map_err(client_err)?;
        let mut tries = 0;
        while !matches!(
            status.state,
            crate::api::types::MessageState::Delivered
                | crate::api::types::MessageState::Rejected
                | crate::api::types::MessageState::Failed
        ) {
            tries += 1;
            if tries > 600 {
                return Err(Error::Usage(format!("message {id} was not delivered in time")));
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
            status = sender.status(id).await.map_err(client_err)?;
        }
        let raw = sender.receipt_raw(id).await.map_err(client_err)?;
        let card: AuthorityCard = offline::load_card(&dir.join(step.to).join(offline::CARD_FILE))?;
        let receipt = Receipt::verify(&raw, &card.node_key).map_err(|e| Error::Usage(e.to_string()))?;
        // The receiving application reads it and acknowledges it.
        let receiver = client_of(dir, step.to);
        let got = receiver.inbox_get(id).await.map_err(client_err)?;
        let same = got.message.header.id == id && got.message.kind().as_str() == kind;
        receiver.inbox_ack(id).await.map_err(client_err)?;
        let case_states = match case {
            Some((c, parties)) => case_states(dir, c, parties).await,
            None => Vec::new(),
        };
        let accepted = receipt.outcome == Outcome::Accepted;
        report.steps.push(DemoStep {
            n: n + 1,
            from,
            to: step.to.to_string(),
            id,
            kind: kind.to_string(),
            note: step.note.to_string(),
            receipt: if accepted { "accepted" } else { "rejected" }.to_string(),
            receipt_verified: true,
            read_and_acknowledged: same,
            case: case.map(|(c, _)| c),
            case_states,
            grounds,
            refused_fields,
        });
        if !same || !accepted {
            return Err(Error::Usage(format!("step {} did not go through", n + 1)));
        }
    }
    let mut seen = Vec::new();
    for (c, parties) in cases.into_iter().flatten() {
        if !seen.contains(&c) {
            seen.push(c);
            report.cases.push(DemoCase {
                id: c,
                states: case_states(dir, c, parties).await,
            });
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_runs_three_daemons_and_every_receipt_verifies() {
        let (dir, _guard) = workdir(None).unwrap();
        let report = run(&dir).unwrap();
        let out = demo_text(&report);
        assert_eq!(out.matches("accepted, verified").count(), STEPS.len(), "{out}");
        // The refusal's grounds, and both cases as both gateways see them.
        let refusal = &report.steps[5];
        assert_eq!(refusal.grounds, ["contradicts_national_law"], "{out}");
        assert!(
            out.contains("grounds (Art. 10.4): contradicts_national_law"),
            "{out}"
        );
        assert_eq!(report.cases.len(), 2, "{out}");
        for c in &report.cases {
            let at: Vec<&str> = c.states.iter().map(|s| s.authority.as_str()).collect();
            assert_eq!(at, ["kz.mvd", "by.mvd"], "{out}");
        }
        let second = &report.cases[1];
        assert!(
            second
                .states
                .iter()
                .all(|s| s.state.contains("refused") && s.grounds == ["contradicts_national_law"]),
            "{out}"
        );
        assert!(
            refusal.case_states.iter().all(|s| s.state.contains("refused")),
            "{out}"
        );
        assert_eq!(out.matches("read, acked").count(), STEPS.len(), "{out}");
        assert!(!out.contains("MISMATCH"));
        // Nothing personal in the timeline.
        assert!(!out.contains("Сейткали") && !out.contains("SEITKALI"), "{out}");
        // A second run into the same directory is refused.
        assert!(run(&dir).is_err());
    }
}
