//! Fixtures shared by the envelope tests: keys for three authorities, the
//! shipped profiles and examples.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use konvert_envelope::envelope::{self, Limits, OpenError, Opened, SealError, Sealed};
use konvert_envelope::keys::{AuthorityCard, NodeKeys, SigningKey, TrustedSigner};
use konvert_envelope::model::{AuthorityId, Id, Message, Timestamp};
use konvert_envelope::profile::Profile;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn profile(id: &str) -> Profile {
    let path = repo().join("deploy/profiles").join(format!("{id}.toml"));
    let text = std::fs::read_to_string(&path).unwrap();
    Profile::from_toml_str(&text, &path.display().to_string()).unwrap()
}

pub fn example(name: &str) -> Message {
    let path = repo().join("docs/examples").join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

pub fn example_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo().join("docs/examples"))
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            (p.extension()? == "json").then(|| p.file_stem().unwrap().to_string_lossy().into_owned())
        })
        .collect();
    names.sort();
    names
}

/// A time inside both shipped profiles' in-force windows, after every example's time.
pub fn now() -> Timestamp {
    "2026-11-22T10:00:00Z".parse().unwrap()
}

pub fn authority(s: &str) -> AuthorityId {
    AuthorityId::new(s).unwrap()
}

pub struct World {
    pub nodes: Vec<NodeKeys>,
    pub signatory: SigningKey,
}

impl World {
    pub fn new() -> Self {
        Self {
            nodes: ["kz.mvd", "kz.mtszn", "by.mvd", "by.gpk", "am.police", "am.mcs"]
                .into_iter()
                .map(|a| NodeKeys::generate(authority(a)))
                .collect(),
            signatory: SigningKey::generate(),
        }
    }
    pub fn node(&self, a: &AuthorityId) -> &NodeKeys {
        self.nodes.iter().find(|n| &n.authority == a).unwrap()
    }
    pub fn card(&self, a: &AuthorityId) -> AuthorityCard {
        self.node(a).card(None)
    }
    pub fn signers(&self, a: &AuthorityId) -> Vec<TrustedSigner> {
        vec![TrustedSigner {
            authority: a.clone(),
            key: self.signatory.verifying_key(),
            valid_from: None,
            valid_until: None,
        }]
    }

    /// Seals `msg` from its sender to its recipient; attachments get `att` bytes each.
    pub fn seal(&self, msg: Message, atts: &[&[u8]]) -> Vec<u8> {
        self.seal_full(msg, atts).unwrap().0
    }

    /// [`World::seal`] with what sealing said.
    pub fn seal_full(&self, msg: Message, atts: &[&[u8]]) -> Result<(Vec<u8>, Sealed), SealError> {
        let mut readers: Vec<&[u8]> = atts.to_vec();
        let mut dyns: Vec<&mut dyn std::io::Read> =
            readers.iter_mut().map(|r| r as &mut dyn std::io::Read).collect();
        let mut out = Vec::new();
        let sealed = self.seal_to(msg, &mut dyns, &[], &mut out)?;
        Ok((out, sealed))
    }

    /// Seals `msg` into `out` by the world's signatory, from the header's
    /// sender to its recipient, under its agreement's profile, now, as a
    /// new envelope (`known`: attachment digests given, see `envelope::seal`).
    pub fn seal_to<W: std::io::Write>(
        &self,
        msg: Message,
        atts: &mut [&mut dyn std::io::Read],
        known: &[Option<konvert_envelope::model::Digest>],
        out: W,
    ) -> Result<Sealed, SealError> {
        let h = msg.header.clone();
        let p = profile(h.agreement.as_str());
        envelope::seal(
            msg,
            atts,
            known,
            &envelope::SealParams {
                signatory: &self.signatory,
                node: self.node(&h.from),
                recipient: &self.card(&h.to),
                profile: &p,
                envelope_id: Id::new(now()),
                now: now(),
            },
            out,
        )
    }

    /// Opens `env` as its header's recipient would, with the sender's card and signers.
    pub fn open(&self, env: &[u8], from: &str, to: &str) -> Result<(Opened, Vec<Vec<u8>>), OpenError> {
        let from = authority(from);
        let msg_profile = profile_of(env);
        envelope::open_bytes(
            env,
            &Limits::default(),
            &self.card(&from),
            self.node(&authority(to)),
            &self.signers(&from),
            &msg_profile,
            now(),
        )
    }
}

/// The profile named by an envelope's header (or kz-by-2019 if it does not parse).
pub fn profile_of(env: &[u8]) -> Profile {
    match envelope::receive(env, &Limits::default(), std::io::sink()) {
        Ok(r)
            if repo()
                .join(format!("deploy/profiles/{}.toml", r.header.agreement))
                .exists() =>
        {
            profile(r.header.agreement.as_str())
        }
        _ => profile("kz-by-2019"),
    }
}

/// Removes the sealed length/digest of every attachment (so any bytes can be given).
pub fn unseal_attachments(msg: &mut Message) -> usize {
    let atts = msg.attachments_mut();
    let n = atts.len();
    for a in atts {
        a.length = 0;
        a.sha256 = Default::default();
        a.file = None;
    }
    n
}
pub mod flow;
