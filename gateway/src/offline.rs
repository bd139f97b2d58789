//! The offline commands of `konvertctl`: key generation and sealing,
//! opening and inspecting envelopes as files, with no daemon involved.
//!
//! A key directory (`konvertctl keygen --dir DIR`) holds:
//!
//! | file | mode | content |
//! |---|---|---|
//! | `node.key.pem` | 0600 | the gateway's Ed25519 node signing key, PKCS#8 PEM |
//! | `age.key` | 0600 | the gateway's age X25519 identity (`AGE-SECRET-KEY-1…`) |
//! | `card.toml` | 0644 | the public authority card handed to peers |

use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use konvert_envelope::envelope::{self, EnvelopeHeader, Limits, OpenError, PartSink, SealError};
use konvert_envelope::keys::{
    AgeIdentity, AuthorityCard, KeyError, NodeKeys, SigningKey, TrustedSigner, VerifyingKey,
};
use konvert_envelope::model::{AuthorityId, Digest, Id, Message, Timestamp};
use konvert_envelope::profile::{Profile, ProfileError};
use serde::Serialize;

use crate::files::{self, FileError};

/// Node signing key file name in a key directory.
pub const NODE_KEY_FILE: &str = "node.key.pem";
/// age identity file name in a key directory.
pub const AGE_KEY_FILE: &str = "age.key";
/// Public authority card file name in a key directory.
pub const CARD_FILE: &str = "card.toml";

/// Largest key, card or profile file read.
pub const MAX_SMALL_FILE: u64 = 256 * 1024;
/// Largest message JSON read (attachments are separate files).
pub const MAX_MESSAGE_JSON: u64 = 16 * 1024 * 1024;

/// Why an offline command failed; `Display` is one sentence for a person.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error(transparent)]
    File(#[from] FileError),
    /// A key or card file is not valid.
    #[error("{path}: {source}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: KeyError,
    },
    /// A profile is not valid.
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// The message JSON does not parse.
    #[error("{path}: not a valid message: {reason}")]
    MessageJson {
        /// The file.
        path: PathBuf,
        /// serde's description: field names and positions; values redacted.
        reason: String,
    },
    /// An attachment named in the message cannot be used.
    #[error("attachment {index} of the message: {reason}")]
    Attachment {
        /// Index in the message's attachment order.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// Sealing failed.
    #[error("cannot seal: {0}")]
    Seal(#[from] SealError),
    /// Opening failed (the first check that failed).
    #[error("cannot open envelope: {0}")]
    Open(#[from] OpenError),
    /// An argument is not valid.
    #[error("{0}")]
    Usage(String),
}

fn key_err(path: &Path) -> impl FnOnce(KeyError) -> Error + '_ {
    move |source| Error::Key {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates node keys and a card for `authority` in `dir`.
pub fn keygen(
    authority: &AuthorityId,
    dir: &Path,
    name: Option<String>,
    force: bool,
) -> Result<AuthorityCard, Error> {
    files::create_private_dir(dir)?;
    let keys = NodeKeys::generate(authority.clone());
    let card = keys.card(name);
    let card_text = card.to_toml_string().map_err(key_err(&dir.join(CARD_FILE)))?;
    // Refuse before writing anything if a key exists.
    for f in [NODE_KEY_FILE, AGE_KEY_FILE, CARD_FILE] {
        let p = dir.join(f);
        if !force && p.exists() {
            return Err(FileError::Exists(p).into());
        }
    }
    let pem = keys
        .signing
        .to_pkcs8_pem()
        .map_err(key_err(&dir.join(NODE_KEY_FILE)))?;
    files::write_atomic(&dir.join(NODE_KEY_FILE), pem.as_bytes(), 0o600, force)?;
    files::write_atomic(
        &dir.join(AGE_KEY_FILE),
        keys.age.to_text().as_bytes(),
        0o600,
        force,
    )?;
    let header = format!(
        "# Konvert authority card of {authority}: hand this file to peer gateways.\n\
         # It holds only public keys.\n"
    );
    files::write_atomic(
        &dir.join(CARD_FILE),
        format!("{header}{card_text}").as_bytes(),
        0o644,
        force,
    )?;
    Ok(card)
}

/// Loads the node keys of a key directory (the authority comes from its card).
pub fn load_node_keys(dir: &Path) -> Result<NodeKeys, Error> {
    let card = load_card(&dir.join(CARD_FILE))?;
    let node_path = dir.join(NODE_KEY_FILE);
    let signing = SigningKey::from_pkcs8_pem(&files::read_secret(&node_path, MAX_SMALL_FILE)?)
        .map_err(key_err(&node_path))?;
    let age_path = dir.join(AGE_KEY_FILE);
    // The first identity is the current one; the ones after it are kept
    // from earlier key rotations (envelopes sealed to them still open).
    let mut ages = AgeIdentity::all_from_text(&files::read_secret(&age_path, MAX_SMALL_FILE)?)
        .map_err(key_err(&age_path))?
        .into_iter();
    let age = ages
        .next()
        .ok_or_else(|| Error::Usage(format!("{}: no age identity", age_path.display())))?;
    let previous_age: Vec<AgeIdentity> = ages.collect();
    if signing.verifying_key() != card.node_key {
        return Err(Error::Usage(format!(
            "{} does not match the node key in {}",
            node_path.display(),
            dir.join(CARD_FILE).display()
        )));
    }
    Ok(NodeKeys {
        authority: card.authority,
        signing,
        age,
        previous_age,
    })
}

/// Loads an authority card.
pub fn load_card(path: &Path) -> Result<AuthorityCard, Error> {
    AuthorityCard::from_toml_str(&files::read_text(path, MAX_SMALL_FILE)?).map_err(key_err(path))
}

/// Loads an agreement profile.
pub fn load_profile(path: &Path) -> Result<Profile, Error> {
    let text = files::read_text(path, MAX_SMALL_FILE)?;
    Ok(Profile::from_toml_str(&text, &path.display().to_string())?)
}

/// Loads a signatory private key (PKCS#8 PEM, mode 0600).
pub fn load_signing_key(path: &Path) -> Result<SigningKey, Error> {
    SigningKey::from_pkcs8_pem(&files::read_secret(path, MAX_SMALL_FILE)?).map_err(key_err(path))
}

/// Loads an Ed25519 public key (SPKI PEM).
pub fn load_public_key(path: &Path) -> Result<VerifyingKey, Error> {
    VerifyingKey::from_public_key_pem(&files::read_text(path, MAX_SMALL_FILE)?).map_err(key_err(path))
}

/// The public key file written beside a signatory key: `FILE.pub`.
pub fn pub_path(key: &Path) -> PathBuf {
    let mut s = key.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

/// Creates a signatory key in `out` (0600) and its public key in `out.pub`.
pub fn signatory_keygen(out: &Path, force: bool) -> Result<VerifyingKey, Error> {
    let key = SigningKey::generate();
    let pub_key = key.verifying_key();
    let pem = key.to_pkcs8_pem().map_err(key_err(out))?;
    let pub_pem = pub_key.to_public_key_pem().map_err(key_err(out))?;
    let pubp = pub_path(out);
    if !force && (out.exists() || pubp.exists()) {
        return Err(FileError::Exists(if out.exists() { out.to_path_buf() } else { pubp }).into());
    }
    files::write_atomic(out, pem.as_bytes(), 0o600, force)?;
    files::write_atomic(&pubp, pub_pem.as_bytes(), 0o644, force)?;
    Ok(pub_key)
}

/// Reads a message JSON file.
pub fn load_message(path: &Path) -> Result<Message, Error> {
    let bytes = files::read_limited(path, MAX_MESSAGE_JSON)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::MessageJson {
        path: path.to_path_buf(),
        reason: konvert_envelope::model::redact_serde_message(&e.to_string()),
    })
}

/// Summary of a sealed envelope, printed by `envelope seal`.
#[derive(Debug, Serialize)]
pub struct SealSummary {
    /// The envelope header.
    pub header: EnvelopeHeader,
    /// Message id.
    pub message_id: Id,
    /// Envelope size in bytes.
    pub size: u64,
    /// Envelope digest (the receiver's receipt names it).
    pub digest: Digest,
}

/// Seals the message in `input` (JSON) into the envelope file `out`.
///
/// Attachments whose `file` is set are read from that path, relative to the
/// directory of `input`; attachments without `file` are an error.
#[allow(clippy::too_many_arguments)]
pub fn seal_file(
    keys_dir: &Path,
    to_card: &Path,
    signer: &Path,
    profile: &Path,
    input: &Path,
    out: &Path,
    now: Timestamp,
    force: bool,
) -> Result<SealSummary, Error> {
    let keys = load_node_keys(keys_dir)?;
    let card = load_card(to_card)?;
    let signer = load_signing_key(signer)?;
    let profile = load_profile(profile)?;
    let message = load_message(input)?;
    let base = files::parent_dir(input);
    let mut sources = Vec::new();
    for (index, att) in message.attachments().into_iter().enumerate() {
        let Some(f) = &att.file else {
            return Err(Error::Attachment {
                index,
                reason: "has no \"file\" naming where its bytes are".into(),
            });
        };
        let p = base.join(f);
        let file = File::open(&p).map_err(|e| Error::Attachment {
            index,
            reason: format!("cannot open {}: {e}", p.display()),
        })?;
        sources.push(io::BufReader::with_capacity(envelope::CHUNK_SIZE, file));
    }
    let mut dyns: Vec<&mut dyn io::Read> = sources.iter_mut().map(|s| s as &mut dyn io::Read).collect();
    if !force && out.exists() {
        return Err(FileError::Exists(out.to_path_buf()).into());
    }
    let dir = files::parent_dir(out);
    let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(|source| FileError::Io {
        action: "cannot create a temporary file in",
        path: dir.clone(),
        source,
    })?;
    let sealed = {
        let w = BufWriter::with_capacity(envelope::CHUNK_SIZE, tmp.as_file_mut());
        envelope::seal(
            message,
            &mut dyns,
            &[],
            &envelope::SealParams {
                signatory: &signer,
                node: &keys,
                recipient: &card,
                profile: &profile,
                envelope_id: Id::new(now),
                now,
            },
            w,
        )?
    };
    tmp.as_file().sync_all().map_err(|source| FileError::Io {
        action: "cannot sync",
        path: tmp.path().to_path_buf(),
        source,
    })?;
    tmp.persist(out).map_err(|e| FileError::Io {
        action: "cannot write",
        path: out.to_path_buf(),
        source: e.error,
    })?;
    Ok(SealSummary {
        message_id: sealed.message.header.id,
        header: sealed.header,
        size: sealed.size,
        digest: sealed.envelope_digest,
    })
}

/// Attachments written to temporary files in a directory, kept only after every check passed.
#[derive(Debug)]
struct DirParts {
    dir: PathBuf,
    files: Vec<tempfile::NamedTempFile>,
}

impl PartSink for DirParts {
    type Writer = BufWriter<File>;
    fn create(&mut self, _index: u32) -> io::Result<Self::Writer> {
        let tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        let f = tmp.reopen()?;
        self.files.push(tmp);
        Ok(BufWriter::with_capacity(envelope::CHUNK_SIZE, f))
    }
    fn finish(&mut self, _index: u32, writer: Self::Writer) -> io::Result<()> {
        let f = writer.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()
    }
}

/// A part sink that discards attachments after they were hashed.
struct DiscardParts;

impl PartSink for DiscardParts {
    type Writer = io::Sink;
    fn create(&mut self, _index: u32) -> io::Result<io::Sink> {
        Ok(io::sink())
    }
    fn finish(&mut self, _index: u32, _w: io::Sink) -> io::Result<()> {
        Ok(())
    }
}

/// Result of `envelope open`.
#[derive(Debug, Serialize)]
pub struct OpenSummary {
    /// The envelope header.
    pub envelope: EnvelopeHeader,
    /// Envelope digest.
    pub digest: Digest,
    /// The opened message.
    pub message: Message,
    /// Files the attachments were written to (if asked).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attachment_files: Vec<PathBuf>,
}

fn open_input(input: &Path) -> Result<File, Error> {
    File::open(input).map_err(|source| {
        FileError::Io {
            action: "cannot open",
            path: input.to_path_buf(),
            source,
        }
        .into()
    })
}

/// Opens the envelope file `input` and checks everything. The body is
/// spooled to an anonymous temporary file, so memory use does not grow with
/// the envelope; attachments are written to `attachments_dir` (or only
/// checked) and kept only if every check passes.
#[allow(clippy::too_many_arguments)]
pub fn open_file(
    keys_dir: &Path,
    from_card: &Path,
    signer_pubs: &[PathBuf],
    profile: &Path,
    input: &Path,
    attachments_dir: Option<&Path>,
    now: Timestamp,
    limits: &Limits,
) -> Result<OpenSummary, Error> {
    let keys = load_node_keys(keys_dir)?;
    let card = load_card(from_card)?;
    let profile = load_profile(profile)?;
    let mut signers = Vec::new();
    for p in signer_pubs {
        signers.push(TrustedSigner {
            authority: card.authority.clone(),
            key: load_public_key(p)?,
            valid_from: None,
            valid_until: None,
        });
    }
    let file = open_input(input)?;
    let spool_err = |source| FileError::Io {
        action: "cannot spool the envelope body to a temporary file for",
        path: input.to_path_buf(),
        source,
    };
    let mut spool = tempfile::tempfile().map_err(spool_err)?;
    let received = envelope::receive(
        io::BufReader::with_capacity(envelope::CHUNK_SIZE, file),
        limits,
        BufWriter::with_capacity(envelope::CHUNK_SIZE, &mut spool),
    )?;
    let auth = received.authenticate(&card)?;
    spool.seek(SeekFrom::Start(0)).map_err(spool_err)?;
    let body = std::io::BufReader::with_capacity(envelope::CHUNK_SIZE, &spool);
    let (opened, written) = match attachments_dir {
        Some(dir) => {
            files::create_private_dir(dir)?;
            let mut parts = DirParts {
                dir: dir.to_path_buf(),
                files: Vec::new(),
            };
            let opened = auth.open(body, &keys, &signers, &profile, now, limits, &mut parts)?;
            let mut written = Vec::new();
            for (i, (att, tmp)) in opened
                .message
                .attachments()
                .into_iter()
                .zip(parts.files)
                .enumerate()
            {
                let target = dir.join(format!("attachment-{i}{}", extension_for(&att.media_type)));
                tmp.persist(&target).map_err(|e| FileError::Io {
                    action: "cannot write",
                    path: target.clone(),
                    source: e.error,
                })?;
                written.push(target);
            }
            files::sync_dir(dir)?;
            (opened, written)
        }
        None => (
            auth.open(body, &keys, &signers, &profile, now, limits, &mut DiscardParts)?,
            Vec::new(),
        ),
    };
    Ok(OpenSummary {
        envelope: auth.header().clone(),
        digest: auth.envelope_digest(),
        message: opened.message,
        attachment_files: written,
    })
}

fn extension_for(media_type: &str) -> &'static str {
    match media_type {
        "image/jpeg" => ".jpg",
        "image/png" => ".png",
        "application/pdf" => ".pdf",
        "text/csv" => ".csv",
        "application/json" => ".json",
        _ => ".bin",
    }
}

/// What `envelope inspect` shows: the cleartext of an envelope.
#[derive(Debug, Serialize)]
pub struct InspectSummary {
    /// Format version.
    pub version: u64,
    /// The routing header (not authenticated: inspect checks no signature).
    pub header: EnvelopeHeader,
    /// Envelope size in bytes.
    pub size: u64,
    /// Size of the encrypted body.
    pub body_size: u64,
    /// Envelope digest (as a receipt would name it).
    pub digest: Digest,
}

/// Shows the cleartext header of an envelope; optionally writes its body as a standalone age file.
pub fn inspect_file(
    input: &Path,
    age_body: Option<&Path>,
    limits: &Limits,
    force: bool,
) -> Result<InspectSummary, Error> {
    let file = open_input(input)?;
    let reader = io::BufReader::with_capacity(envelope::CHUNK_SIZE, file);
    let received = match age_body {
        Some(p) => {
            if !force && p.exists() {
                return Err(FileError::Exists(p.to_path_buf()).into());
            }
            let dir = files::parent_dir(p);
            let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(|source| FileError::Io {
                action: "cannot create a temporary file in",
                path: dir.clone(),
                source,
            })?;
            let r = envelope::receive(reader, limits, BufWriter::new(tmp.as_file_mut()))?;
            tmp.persist(p).map_err(|e| FileError::Io {
                action: "cannot write",
                path: p.to_path_buf(),
                source: e.error,
            })?;
            r
        }
        None => envelope::receive(reader, limits, io::sink())?,
    };
    Ok(InspectSummary {
        version: envelope::ENVELOPE_VERSION,
        header: received.header.clone(),
        size: received.size,
        body_size: received.body_size,
        digest: received.envelope_digest(),
    })
}

fn header_lines(h: &EnvelopeHeader) -> String {
    format!(
        "  id:          {}\n  from:        {}\n  to:          {}\n  agreement:   {}\n  sealed at:   {}\n  attachments: {}\n",
        h.id, h.from, h.to, h.agreement, h.created, h.attachments
    )
}

/// `envelope seal` for a person (`--json` prints the [`SealSummary`]).
pub fn seal_text(s: &SealSummary) -> String {
    format!(
        "sealed message {} into an envelope of {} bytes\n{}  digest:      {} (the receiver's receipt names it)\n",
        s.message_id,
        s.size,
        header_lines(&s.header),
        s.digest
    )
}

/// `envelope open` for a person: the checks passed, the routing, then the
/// message itself as JSON (`--json` prints the whole [`OpenSummary`]).
pub fn open_text(s: &OpenSummary) -> String {
    let mut t = format!(
        "opened envelope {}: size, structure, node signature, decryption, signatory signature, \
         signed routing, message and profile checks passed\n{}  digest:      {}\n  kind:        {}\n",
        s.envelope.id,
        header_lines(&s.envelope),
        s.digest,
        s.message.kind().as_str()
    );
    for f in &s.attachment_files {
        t.push_str(&format!("  attachment:  {}\n", f.display()));
    }
    t.push_str("message:\n");
    t.push_str(&serde_json::to_string_pretty(&s.message).unwrap_or_default());
    t.push('\n');
    t
}

/// `envelope inspect` for a person (`--json` prints the [`InspectSummary`]).
pub fn inspect_text(s: &InspectSummary) -> String {
    format!(
        "envelope format version {}, {} bytes ({} of them the encrypted body); no signature checked\n{}  digest:      {}\n",
        s.version,
        s.size,
        s.body_size,
        header_lines(&s.header),
        s.digest
    )
}
