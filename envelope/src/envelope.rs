//! Sealing and opening envelopes.
//!
//! An envelope is one CBOR array (see `docs/PROTOCOL.md` and `docs/konvert.cddl`):
//!
//! ```text
//! envelope = [
//!   version:     1,
//!   header:      bstr .cbor envelope-header,  ; routing, in clear
//!   attachments: [* bstr],                    ; each an age file (may be chunked, indefinite length)
//!   body:        bstr,                        ; age file of signed-message
//!   node-sig:    bstr .size 64,               ; Ed25519 by the sending gateway
//! ]
//! ```
//!
//! The header holds only routing (envelope id, sender, recipient, agreement,
//! creation time, number of attachments): no message kind, no subject,
//! nothing personal. The node signature covers the header bytes and the
//! SHA-256 of every ciphertext, so the receiver authenticates the sending
//! gateway before it decrypts anything.
//!
//! Attachments come before the body so that sealing is a single pass over
//! each attachment (its plaintext digest goes into the signed message) and
//! neither side holds an attachment in memory: they are streamed in chunks
//! through age. Opening happens in three steps, each its own type:
//! [`receive`] (size limits, structure; attachment ciphertexts go to a
//! [`PartSink`]), [`Received::authenticate`] (node signature), and
//! [`Authenticated::open`] (decryption, signatory signature, routing,
//! message decoding, profile validation); then [`open_attachment`] streams
//! each attachment out and checks it against the signed digest.

use std::io::{self, Read, Write};

use ciborium_ll::{Decoder, Encoder, Header};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::cbor;
use crate::keys::{AuthorityCard, NodeKeys, SigningKey, TrustedSigner};
use crate::model::{AgreementId, Attachment, AuthorityId, Digest, Id, Message, Timestamp};
use crate::profile::{Profile, ValidationErrors};
use crate::signed::{SignatureError, SignedClaims, SignedMessage};

/// The envelope format version this crate writes and reads.
pub const ENVELOPE_VERSION: u64 = 1;
/// Domain separation string at the start of the node signature's input.
pub const NODE_SIG_CONTEXT: &str = "konvert-envelope/1";
/// Size of the chunks attachment ciphertext is written in.
pub const CHUNK_SIZE: usize = 64 * 1024;

/// The cleartext routing header of an envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeHeader {
    /// Unique, time-ordered envelope id.
    pub id: Id,
    /// Sending authority.
    pub from: AuthorityId,
    /// Receiving authority.
    pub to: AuthorityId,
    /// Agreement the message is sent under (checked for being in force on arrival).
    pub agreement: AgreementId,
    /// When the envelope was sealed.
    pub created: Timestamp,
    /// Number of attachment parts.
    pub attachments: u32,
}

/// Size limits checked while reading, before anything is allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Whole envelope, all parts included.
    pub max_envelope: u64,
    /// Encoded routing header.
    pub max_header: usize,
    /// Encrypted body (the signed message; attachments are separate).
    pub max_body: usize,
    /// Number of attachments.
    pub max_attachments: u32,
    /// One chunk of an indefinite-length byte string.
    pub max_chunk: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_envelope: 64 * 1024 * 1024,
            max_header: 1024,
            max_body: 8 * 1024 * 1024,
            max_attachments: 256,
            max_chunk: 1024 * 1024,
        }
    }
}

/// Why a message could not be sealed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The message is not valid under its profile (each error names the field or rule).
    #[error("message is not valid under agreement profile: {0}")]
    Invalid(ValidationErrors),
    /// The message's sender is not this gateway's authority.
    #[error("message is from {message}, but these node keys belong to {node}")]
    WrongSender {
        /// Sender in the message header.
        message: AuthorityId,
        /// The node's authority.
        node: AuthorityId,
    },
    /// The recipient card is for another authority than the message's recipient.
    #[error("message is addressed to {message}, but the recipient card is for {card}")]
    WrongRecipientCard {
        /// Recipient in the message header.
        message: AuthorityId,
        /// Authority of the card.
        card: AuthorityId,
    },
    /// The message profile id differs from the message's agreement.
    #[error("message is under agreement {message}, but the profile is {profile}")]
    WrongProfile {
        /// Agreement in the message header.
        message: AgreementId,
        /// The profile's id.
        profile: AgreementId,
    },
    /// Number of attachment sources differs from the attachments in the message.
    #[error("message has {expected} attachments but {given} sources were given")]
    AttachmentCount {
        /// Attachments in the message.
        expected: usize,
        /// Sources given.
        given: usize,
    },
    /// An attachment's bytes differ from the length or digest stated in the message.
    #[error("attachment {index}: bytes do not match its stated length/sha256")]
    AttachmentMismatch {
        /// Attachment index (message traversal order).
        index: usize,
    },
    /// Signing failed.
    #[error(transparent)]
    Sign(#[from] SignatureError),
    /// age encryption failed.
    #[error("encryption failed: {0}")]
    Encrypt(String),
    /// Reading an attachment or writing the envelope failed.
    #[error("I/O error while sealing: {0}")]
    Io(#[from] io::Error),
}

/// Why an envelope was not opened. Variants are listed in the order the
/// checks run; each maps to a receipt code (see `receipt::RejectCode`).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Larger than a size limit (checked before allocating).
    #[error("envelope exceeds the size limit for {what} ({limit} bytes)")]
    TooLarge {
        /// Which limit.
        what: &'static str,
        /// The limit in bytes (or count).
        limit: u64,
    },
    /// Not a well-formed envelope (garbage, truncated, wrong shape).
    #[error("malformed envelope: {0}")]
    Structure(String),
    /// A version this implementation does not read.
    #[error("unsupported envelope version {0} (this gateway reads version 1)")]
    UnsupportedVersion(u64),
    /// The envelope claims a sender other than the card it is checked against.
    #[error("envelope is from {claimed}, not from the expected sender {expected}")]
    UnknownSender {
        /// Sender in the envelope header.
        claimed: AuthorityId,
        /// Authority of the card used.
        expected: AuthorityId,
    },
    /// The sending gateway's node signature does not verify.
    #[error("node signature of {from} does not verify (envelope altered or not from that gateway)")]
    NodeSignature {
        /// Claimed sender.
        from: AuthorityId,
    },
    /// The envelope is addressed to another authority.
    #[error("envelope is addressed to {to}, not to this gateway ({own})")]
    WrongRecipient {
        /// Recipient in the header.
        to: AuthorityId,
        /// This gateway's authority.
        own: AuthorityId,
    },
    /// The body could not be decrypted with this gateway's age identity.
    #[error("cannot decrypt envelope body: {0}")]
    Decrypt(String),
    /// The signatory signature is missing, unknown, not valid then, or wrong.
    #[error("signatory check failed: {0}")]
    Signature(#[from] SignatureError),
    /// The signed routing differs from the envelope's routing or the message header.
    #[error("signed message was re-addressed: signed {field} differs from the {place}")]
    Readdressed {
        /// Which field differs (`from`, `to`, `agreement`, `id`, `time`).
        field: &'static str,
        /// Where it differs (`envelope header` or `message header`).
        place: &'static str,
    },
    /// The message bytes do not decode into a message.
    #[error("message does not decode: {0}")]
    MessageDecode(String),
    /// The message is not valid under its profile.
    #[error("message is not valid under agreement profile: {0}")]
    Invalid(ValidationErrors),
    /// An attachment does not match its signed length or digest.
    #[error("attachment {index} does not match the signed message: {reason}")]
    AttachmentMismatch {
        /// Attachment index.
        index: usize,
        /// What differs.
        reason: &'static str,
    },
    /// Writing a part to its sink failed.
    #[error("I/O error while storing envelope parts: {0}")]
    Io(io::Error),
}

/// Where received attachment ciphertexts go (memory, temporary files, the store).
pub trait PartSink {
    /// The writer for one part.
    type Writer: Write;
    /// Opens the writer for attachment `index` (0-based).
    fn create(&mut self, index: u32) -> io::Result<Self::Writer>;
    /// Called when attachment `index` has been written completely.
    fn finish(&mut self, index: u32, writer: Self::Writer) -> io::Result<()>;
}

/// A [`PartSink`] that keeps parts in memory (tests, small envelopes).
#[derive(Debug, Default)]
pub struct MemoryParts {
    /// Ciphertext of each part, by index.
    pub parts: Vec<Vec<u8>>,
}

impl PartSink for MemoryParts {
    type Writer = Vec<u8>;
    fn create(&mut self, _index: u32) -> io::Result<Vec<u8>> {
        Ok(Vec::new())
    }
    fn finish(&mut self, _index: u32, writer: Vec<u8>) -> io::Result<()> {
        self.parts.push(writer);
        Ok(())
    }
}

/// What sealing produced.
#[derive(Debug)]
pub struct Sealed {
    /// The envelope header as written.
    pub header: EnvelopeHeader,
    /// SHA-256 of the whole envelope (what the receiver's receipt names).
    pub envelope_sha256: Digest,
    /// Size of the envelope in bytes.
    pub size: u64,
    /// The message as signed (attachment lengths and digests filled in).
    pub message: Message,
}

/// Seals `message` into an envelope written to `out`.
///
/// `attachments` are the attachment bytes in [`Message::attachments`] order;
/// each is read once, in chunks. Lengths and digests in the message are
/// filled in (a stated digest or length must match). The message is validated
/// against `profile` at `now` before anything is written.
#[allow(clippy::too_many_arguments)]
pub fn seal<W: Write>(
    mut message: Message,
    attachments: &mut [&mut dyn Read],
    signatory: &SigningKey,
    node: &NodeKeys,
    recipient: &AuthorityCard,
    profile: &Profile,
    envelope_id: Id,
    now: Timestamp,
    out: W,
) -> Result<Sealed, SealError> {
    let h = &message.header;
    if h.from != node.authority {
        return Err(SealError::WrongSender {
            message: h.from.clone(),
            node: node.authority.clone(),
        });
    }
    if h.to != recipient.authority {
        return Err(SealError::WrongRecipientCard {
            message: h.to.clone(),
            card: recipient.authority.clone(),
        });
    }
    if h.agreement != profile.id {
        return Err(SealError::WrongProfile {
            message: h.agreement.clone(),
            profile: profile.id.clone(),
        });
    }
    let count = message.attachments().len();
    if count != attachments.len() {
        return Err(SealError::AttachmentCount {
            expected: count,
            given: attachments.len(),
        });
    }
    // Everything but the attachment digests can be checked before streaming.
    // Attachment lengths and digests are filled in while streaming, so an
    // attachment that is not sealed yet is not an error here.
    if let Err(errs) = profile.validate_unsealed(&message, now) {
        let rest: Vec<_> = errs
            .0
            .into_iter()
            .filter(|e| e.rule != crate::profile::ValidationRule::AttachmentNotSealed)
            .collect();
        if !rest.is_empty() {
            return Err(SealError::Invalid(ValidationErrors(rest)));
        }
    }

    let header = EnvelopeHeader {
        id: envelope_id,
        from: message.header.from.clone(),
        to: message.header.to.clone(),
        agreement: message.header.agreement.clone(),
        created: now,
        attachments: u32::try_from(count).map_err(|_| SealError::AttachmentCount {
            expected: count,
            given: count,
        })?,
    };
    let header_bytes = cbor::to_deterministic_vec(&header).map_err(|e| SealError::Encrypt(e.to_string()))?;

    let mut out = HashingWriter::new(out);
    let mut enc = Encoder::from(&mut out);
    enc.push(Header::Array(Some(5)))?;
    enc.push(Header::Positive(ENVELOPE_VERSION))?;
    enc.push(Header::Bytes(Some(header_bytes.len())))?;
    ciborium_io::Write::write_all(&mut enc, &header_bytes)?;
    enc.push(Header::Array(Some(count)))?;

    let mut part_digests = Vec::with_capacity(count);
    for (index, (att, src)) in message
        .attachments_mut()
        .into_iter()
        .zip(attachments.iter_mut())
        .enumerate()
    {
        let (len, plain_digest, cipher_digest) = stream_attachment(src, &recipient.age_recipients, &mut out)?;
        if (att.length != 0 && att.length != len) || (!att.sha256.is_zero() && att.sha256 != plain_digest) {
            return Err(SealError::AttachmentMismatch { index });
        }
        att.length = len;
        att.sha256 = plain_digest;
        att.file = None;
        part_digests.push(cipher_digest);
    }
    profile.validate(&message, now).map_err(SealError::Invalid)?;

    let signed = SignedMessage::sign(&message, signatory)?;
    let body = encrypt_to_vec(&signed.to_vec()?, &recipient.age_recipients)?;
    let body_digest = Digest::of(&body);
    let tbs = node_sig_input(&header_bytes, &part_digests, &body_digest)?;
    let sig = node.signing.sign(&tbs);

    let mut enc = Encoder::from(&mut out);
    enc.push(Header::Bytes(Some(body.len())))?;
    ciborium_io::Write::write_all(&mut enc, &body)?;
    enc.push(Header::Bytes(Some(sig.len())))?;
    ciborium_io::Write::write_all(&mut enc, &sig)?;
    out.flush()?;
    let (envelope_sha256, size) = out.finish();
    Ok(Sealed {
        header,
        envelope_sha256,
        size,
        message,
    })
}

/// Seals into a byte vector (convenience for small messages and tests).
#[allow(clippy::too_many_arguments)]
pub fn seal_to_vec(
    message: Message,
    attachments: &[&[u8]],
    signatory: &SigningKey,
    node: &NodeKeys,
    recipient: &AuthorityCard,
    profile: &Profile,
    envelope_id: Id,
    now: Timestamp,
) -> Result<(Vec<u8>, Sealed), SealError> {
    let mut readers: Vec<&[u8]> = attachments.to_vec();
    let mut dyns: Vec<&mut dyn Read> = readers.iter_mut().map(|r| r as &mut dyn Read).collect();
    let mut out = Vec::new();
    let sealed = seal(
        message,
        &mut dyns,
        signatory,
        node,
        recipient,
        profile,
        envelope_id,
        now,
        &mut out,
    )?;
    Ok((out, sealed))
}

/// Builds an envelope without attachments around an already signed message,
/// exactly as given: no validation, no routing checks. Low-level: the
/// gateway seals with [`seal`]; this exists for forwarding tools and for
/// building must-fail test vectors (a re-addressed signed message).
pub fn seal_signed(
    signed: &SignedMessage,
    header: &EnvelopeHeader,
    recipients: &[crate::keys::AgeRecipient],
    node_key: &SigningKey,
) -> Result<Vec<u8>, SealError> {
    let header_bytes = cbor::to_deterministic_vec(header).map_err(|e| SealError::Encrypt(e.to_string()))?;
    let body = encrypt_to_vec(&signed.to_vec()?, recipients)?;
    let tbs = node_sig_input(&header_bytes, &[], &Digest::of(&body))?;
    let sig = node_key.sign(&tbs);
    let mut out = Vec::with_capacity(body.len() + header_bytes.len() + 96);
    let mut enc = Encoder::from(&mut out);
    enc.push(Header::Array(Some(5)))?;
    enc.push(Header::Positive(ENVELOPE_VERSION))?;
    enc.push(Header::Bytes(Some(header_bytes.len())))?;
    ciborium_io::Write::write_all(&mut enc, &header_bytes)?;
    enc.push(Header::Array(Some(0)))?;
    enc.push(Header::Bytes(Some(body.len())))?;
    ciborium_io::Write::write_all(&mut enc, &body)?;
    enc.push(Header::Bytes(Some(sig.len())))?;
    ciborium_io::Write::write_all(&mut enc, &sig)?;
    Ok(out)
}

/// The bytes the node signature is made over: deterministic CBOR of
/// `["konvert-envelope/1", header-bytes, [* attachment-ciphertext-sha256], body-ciphertext-sha256]`.
pub fn node_sig_input(header_bytes: &[u8], parts: &[Digest], body: &Digest) -> Result<Vec<u8>, SealError> {
    use ciborium::value::Value;
    let v = Value::Array(vec![
        Value::Text(NODE_SIG_CONTEXT.into()),
        Value::Bytes(header_bytes.to_vec()),
        Value::Array(parts.iter().map(|d| Value::Bytes(d.0.to_vec())).collect()),
        Value::Bytes(body.0.to_vec()),
    ]);
    cbor::value_to_deterministic_vec(v).map_err(|e| SealError::Encrypt(e.to_string()))
}

fn age_encryptor(recipients: &[crate::keys::AgeRecipient]) -> Result<age::Encryptor, SealError> {
    age::Encryptor::with_recipients(recipients.iter().map(|r| r.inner() as &dyn age::Recipient))
        .map_err(|e| SealError::Encrypt(e.to_string()))
}

fn encrypt_to_vec(plain: &[u8], recipients: &[crate::keys::AgeRecipient]) -> Result<Vec<u8>, SealError> {
    let mut out = Vec::with_capacity(plain.len() + 256 + plain.len() / 4096);
    let mut w = age_encryptor(recipients)?.wrap_output(&mut out)?;
    w.write_all(plain)?;
    w.finish()?;
    Ok(out)
}

/// Streams one attachment: plaintext from `src` through age into chunked
/// CBOR byte strings on `out`. Returns (plaintext length, plaintext SHA-256,
/// ciphertext SHA-256).
fn stream_attachment<W: Write>(
    src: &mut dyn Read,
    recipients: &[crate::keys::AgeRecipient],
    out: &mut W,
) -> Result<(u64, Digest, Digest), SealError> {
    let mut enc = Encoder::from(&mut *out);
    enc.push(Header::Bytes(None))?;
    let chunker = ChunkedBytes {
        out: &mut *out,
        buf: Vec::with_capacity(CHUNK_SIZE),
        hasher: Sha256::new(),
    };
    let mut age_w = age_encryptor(recipients)?.wrap_output(chunker)?;
    let mut plain_hasher = Sha256::new();
    let mut len = 0u64;
    let mut buf = vec![0u8; CHUNK_SIZE];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        plain_hasher.update(&buf[..n]);
        len += n as u64;
        age_w.write_all(&buf[..n])?;
    }
    let chunker = age_w.finish()?;
    let cipher = chunker.finish()?;
    Ok((len, Digest(plain_hasher.finalize().into()), cipher))
}

/// Writes bytes as the chunks of an indefinite-length CBOR byte string.
struct ChunkedBytes<'a, W: Write> {
    out: &'a mut W,
    buf: Vec<u8>,
    hasher: Sha256,
}

impl<W: Write> ChunkedBytes<'_, W> {
    fn emit(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let mut enc = Encoder::from(&mut *self.out);
        enc.push(Header::Bytes(Some(self.buf.len())))?;
        self.out.write_all(&self.buf)?;
        self.hasher.update(&self.buf);
        self.buf.clear();
        Ok(())
    }
    fn finish(mut self) -> io::Result<Digest> {
        self.emit()?;
        let mut enc = Encoder::from(&mut *self.out);
        enc.push(Header::Break)?;
        Ok(Digest(self.hasher.finalize().into()))
    }
}

impl<W: Write> Write for ChunkedBytes<'_, W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK_SIZE - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK_SIZE {
            self.emit()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Counts and hashes everything written through it.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }
    fn finish(self) -> (Digest, u64) {
        (Digest(self.hasher.finalize().into()), self.count)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.hasher.update(&data[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Marker inside the `io::Error` raised when the envelope size limit is passed.
#[derive(Debug)]
struct LimitExceeded;
impl std::fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("envelope size limit exceeded")
    }
}
impl std::error::Error for LimitExceeded {}

/// Counts, limits and hashes everything read through it.
struct LimitedReader<R: Read> {
    inner: R,
    hasher: Sha256,
    count: u64,
    limit: u64,
}

impl<R: Read> Read for LimitedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.count >= self.limit {
            // Allow detecting a clean end exactly at the limit.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::other(LimitExceeded)),
            };
        }
        let room = usize::try_from(self.limit - self.count).unwrap_or(usize::MAX);
        let want = buf.len().min(room);
        let n = self.inner.read(&mut buf[..want])?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// An envelope whose structure and sizes have been checked, not yet authenticated.
#[derive(Debug)]
pub struct Received {
    /// The routing header (not yet authenticated).
    pub header: EnvelopeHeader,
    /// SHA-256 of the envelope bytes as received.
    pub envelope_sha256: Digest,
    /// Size of the envelope in bytes.
    pub size: u64,
    header_bytes: Vec<u8>,
    body: Vec<u8>,
    part_digests: Vec<Digest>,
    node_sig: Vec<u8>,
}

/// An envelope whose node signature has been verified.
#[derive(Debug)]
pub struct Authenticated {
    received: Received,
}

/// An opened envelope: every check has passed.
#[derive(Debug)]
pub struct Opened {
    /// The decoded, validated message.
    pub message: Message,
    /// The signatory's signed claims (key id, routing).
    pub claims: SignedClaims,
    /// The signed message exactly as received (for non-repudiation and storage).
    pub signed: SignedMessage,
}

fn structure(msg: impl Into<String>) -> OpenError {
    OpenError::Structure(msg.into())
}

fn map_ll(e: ciborium_ll::Error<io::Error>) -> OpenError {
    match e {
        ciborium_ll::Error::Io(e) => map_io(e),
        ciborium_ll::Error::Syntax(off) => structure(format!("invalid CBOR at byte {off}")),
    }
}

fn map_io(e: io::Error) -> OpenError {
    if e.get_ref().is_some_and(|inner| inner.is::<LimitExceeded>()) {
        OpenError::TooLarge {
            what: "the whole envelope",
            limit: 0,
        }
    } else if e.kind() == io::ErrorKind::UnexpectedEof {
        structure("truncated: input ends inside the envelope")
    } else {
        OpenError::Io(e)
    }
}

/// Reads an envelope from `input`, checking sizes and structure; attachment
/// ciphertexts are streamed into `parts`, the body is kept in memory
/// (bounded by `limits.max_body`). Nothing is decrypted and nothing is
/// trusted yet: call [`Received::authenticate`] next.
pub fn receive<R: Read, P: PartSink>(
    input: R,
    limits: &Limits,
    parts: &mut P,
) -> Result<Received, OpenError> {
    let mut reader = LimitedReader {
        inner: input,
        hasher: Sha256::new(),
        count: 0,
        limit: limits.max_envelope,
    };
    let fix_limit = |e: OpenError| match e {
        OpenError::TooLarge { what, .. } if what == "the whole envelope" => OpenError::TooLarge {
            what,
            limit: limits.max_envelope,
        },
        e => e,
    };
    let r = receive_inner(&mut reader, limits, parts).map_err(fix_limit)?;
    // Nothing may follow the envelope.
    let mut probe = [0u8; 1];
    match reader.read(&mut probe) {
        Ok(0) => {}
        Ok(_) => return Err(structure("bytes follow the end of the envelope")),
        Err(e) => return Err(fix_limit(map_io(e))),
    }
    let (header, header_bytes, body, part_digests, node_sig) = r;
    Ok(Received {
        header,
        envelope_sha256: Digest(reader.hasher.finalize().into()),
        size: reader.count,
        header_bytes,
        body,
        part_digests,
        node_sig,
    })
}

type Parsed = (EnvelopeHeader, Vec<u8>, Vec<u8>, Vec<Digest>, Vec<u8>);

fn receive_inner<R: Read, P: PartSink>(
    reader: &mut R,
    limits: &Limits,
    parts: &mut P,
) -> Result<Parsed, OpenError> {
    let mut dec = Decoder::from(&mut *reader);
    match dec.pull().map_err(map_ll)? {
        Header::Array(Some(5)) => {}
        Header::Tag(_) => return Err(structure("expected the envelope array, found a tagged item")),
        _ => return Err(structure("expected an array of 5 items")),
    }
    match dec.pull().map_err(map_ll)? {
        Header::Positive(ENVELOPE_VERSION) => {}
        Header::Positive(v) => return Err(OpenError::UnsupportedVersion(v)),
        _ => return Err(structure("version is not an unsigned integer")),
    }
    let header_bytes = read_definite_bytes(&mut dec, limits.max_header, "the routing header")?;
    let header: EnvelopeHeader = cbor::from_deterministic_slice(&header_bytes, limits.max_header)
        .map_err(|e| structure(format!("routing header: {e}")))?;
    let n = match dec.pull().map_err(map_ll)? {
        Header::Array(Some(n)) => n,
        _ => return Err(structure("attachments is not a definite-length array")),
    };
    if n as u64 > u64::from(limits.max_attachments) {
        return Err(OpenError::TooLarge {
            what: "the number of attachments",
            limit: u64::from(limits.max_attachments),
        });
    }
    if n as u64 != u64::from(header.attachments) {
        return Err(structure(format!(
            "header announces {} attachments but the envelope carries {n}",
            header.attachments
        )));
    }
    let mut part_digests = Vec::with_capacity(n);
    let mut buf = Vec::new();
    for index in 0..header.attachments {
        let mut w = parts.create(index).map_err(OpenError::Io)?;
        let mut hasher = Sha256::new();
        let mut write_chunk =
            |dec: &mut Decoder<&mut R>, len: usize, w: &mut P::Writer| -> Result<(), OpenError> {
                if len > limits.max_chunk {
                    return Err(OpenError::TooLarge {
                        what: "an attachment chunk",
                        limit: limits.max_chunk as u64,
                    });
                }
                buf.resize(len, 0);
                ciborium_io::Read::read_exact(dec, &mut buf).map_err(map_io)?;
                hasher.update(&buf);
                w.write_all(&buf).map_err(OpenError::Io)
            };
        match dec.pull().map_err(map_ll)? {
            Header::Bytes(Some(len)) => {
                // A definite-length part: read it in bounded chunks.
                let mut left = len;
                while left > 0 {
                    let take = left.min(CHUNK_SIZE);
                    write_chunk(&mut dec, take, &mut w)?;
                    left -= take;
                }
            }
            Header::Bytes(None) => loop {
                match dec.pull().map_err(map_ll)? {
                    Header::Bytes(Some(len)) => write_chunk(&mut dec, len, &mut w)?,
                    Header::Break => break,
                    _ => return Err(structure("attachment chunk is not a byte string")),
                }
            },
            _ => return Err(structure("attachment is not a byte string")),
        }
        parts.finish(index, w).map_err(OpenError::Io)?;
        part_digests.push(Digest(hasher.finalize().into()));
    }
    let body = read_definite_bytes(&mut dec, limits.max_body, "the body")?;
    let node_sig = read_definite_bytes(&mut dec, 64, "the node signature")?;
    if node_sig.len() != 64 {
        return Err(structure("node signature is not 64 bytes"));
    }
    Ok((header, header_bytes, body, part_digests, node_sig))
}

fn read_definite_bytes<R: Read>(
    dec: &mut Decoder<R>,
    limit: usize,
    what: &'static str,
) -> Result<Vec<u8>, OpenError> {
    match dec.pull().map_err(map_ll)? {
        Header::Bytes(Some(len)) => {
            if len > limit {
                return Err(OpenError::TooLarge {
                    what,
                    limit: limit as u64,
                });
            }
            let mut v = vec![0u8; len];
            ciborium_io::Read::read_exact(dec, &mut v).map_err(map_io)?;
            Ok(v)
        }
        _ => Err(structure(format!("{what} is not a definite-length byte string"))),
    }
}

impl Received {
    /// Verifies the node signature with the sender's card.
    pub fn authenticate(self, sender: &AuthorityCard) -> Result<Authenticated, OpenError> {
        if self.header.from != sender.authority {
            return Err(OpenError::UnknownSender {
                claimed: self.header.from.clone(),
                expected: sender.authority.clone(),
            });
        }
        let tbs = node_sig_input(&self.header_bytes, &self.part_digests, &Digest::of(&self.body))
            .map_err(|e| structure(e.to_string()))?;
        if !sender.node_key.verify(&tbs, &self.node_sig) {
            return Err(OpenError::NodeSignature {
                from: self.header.from.clone(),
            });
        }
        Ok(Authenticated { received: self })
    }
}

impl Authenticated {
    /// The authenticated routing header.
    pub fn header(&self) -> &EnvelopeHeader {
        &self.received.header
    }
    /// SHA-256 of the envelope bytes as received.
    pub fn envelope_sha256(&self) -> Digest {
        self.received.envelope_sha256
    }
    /// Size of the envelope in bytes.
    pub fn size(&self) -> u64 {
        self.received.size
    }

    /// Decrypts and checks the message: decryption with `keys`, the
    /// signatory signature against `signers` (valid at signing time), the
    /// signed routing against the envelope, decoding, and `profile` at `now`.
    pub fn open(
        &self,
        keys: &NodeKeys,
        signers: &[TrustedSigner],
        profile: &Profile,
        now: Timestamp,
        limits: &Limits,
    ) -> Result<Opened, OpenError> {
        let header = &self.received.header;
        if header.to != keys.authority {
            return Err(OpenError::WrongRecipient {
                to: header.to.clone(),
                own: keys.authority.clone(),
            });
        }
        let plain = decrypt_body(&self.received.body, keys, limits.max_body)?;
        let signed: SignedMessage = cbor::from_slice(&plain, limits.max_body)
            .map_err(|e| OpenError::Decrypt(format!("decrypted body is not a signed message: {e}")))?;
        let claims = signed.verify(signers)?;
        check_routing(&claims, header)?;
        let message: Message = cbor::from_deterministic_slice(&signed.message, limits.max_body)
            .map_err(|e| OpenError::MessageDecode(e.to_string()))?;
        check_message_header(&claims, &message)?;
        if message.attachments().len() != header.attachments as usize {
            return Err(OpenError::AttachmentMismatch {
                index: message.attachments().len(),
                reason: "the number of attachments differs from the envelope",
            });
        }
        if profile.id != header.agreement {
            return Err(OpenError::Invalid(ValidationErrors::agreement_mismatch(
                &header.agreement,
                &profile.id,
            )));
        }
        profile.validate(&message, now).map_err(OpenError::Invalid)?;
        Ok(Opened {
            message,
            claims,
            signed,
        })
    }
}

fn decrypt_body(body: &[u8], keys: &NodeKeys, max: usize) -> Result<Vec<u8>, OpenError> {
    let dec = age::Decryptor::new_buffered(body).map_err(|e| OpenError::Decrypt(e.to_string()))?;
    let mut r = dec
        .decrypt(std::iter::once(keys.age.inner() as &dyn age::Identity))
        .map_err(|e| OpenError::Decrypt(e.to_string()))?;
    let mut out = Vec::with_capacity(body.len());
    let n = (&mut r)
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| OpenError::Decrypt(e.to_string()))?;
    if n > max {
        return Err(OpenError::TooLarge {
            what: "the decrypted body",
            limit: max as u64,
        });
    }
    Ok(out)
}

fn check_routing(c: &SignedClaims, h: &EnvelopeHeader) -> Result<(), OpenError> {
    let place = "envelope header";
    if c.from != h.from {
        return Err(OpenError::Readdressed { field: "from", place });
    }
    if c.to != h.to {
        return Err(OpenError::Readdressed { field: "to", place });
    }
    if c.agreement != h.agreement {
        return Err(OpenError::Readdressed {
            field: "agreement",
            place,
        });
    }
    Ok(())
}

fn check_message_header(c: &SignedClaims, m: &Message) -> Result<(), OpenError> {
    let place = "message header";
    let h = &m.header;
    let field = if c.from != h.from {
        "from"
    } else if c.to != h.to {
        "to"
    } else if c.agreement != h.agreement {
        "agreement"
    } else if c.id != h.id {
        "id"
    } else if c.time != h.time {
        "time"
    } else {
        return Ok(());
    };
    Err(OpenError::Readdressed { field, place })
}

/// Decrypts attachment ciphertext from `ciphertext` into `out`, checking it
/// against `expected` (length and SHA-256 from the signed message).
///
/// Bytes reach `out` before the final digest check: write to a temporary
/// place and keep the result only if this returns `Ok`.
pub fn open_attachment<R: Read, W: Write>(
    keys: &NodeKeys,
    index: usize,
    expected: &Attachment,
    ciphertext: R,
    mut out: W,
) -> Result<(), OpenError> {
    let dec = age::Decryptor::new(ciphertext)
        .map_err(|e| OpenError::Decrypt(format!("attachment {index}: {e}")))?;
    let mut r = dec
        .decrypt(std::iter::once(keys.age.inner() as &dyn age::Identity))
        .map_err(|e| OpenError::Decrypt(format!("attachment {index}: {e}")))?;
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    let mut buf = vec![0u8; CHUNK_SIZE];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(OpenError::Decrypt(format!("attachment {index}: {e}"))),
        };
        len += n as u64;
        if len > expected.length {
            return Err(OpenError::AttachmentMismatch {
                index,
                reason: "longer than the signed length",
            });
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(OpenError::Io)?;
    }
    if len != expected.length {
        return Err(OpenError::AttachmentMismatch {
            index,
            reason: "shorter than the signed length",
        });
    }
    if Digest(hasher.finalize().into()) != expected.sha256 {
        return Err(OpenError::AttachmentMismatch {
            index,
            reason: "SHA-256 differs from the signed digest",
        });
    }
    Ok(())
}

/// Opens a whole envelope held in memory, attachments included (tests, CLI,
/// small messages). Returns the opened message and the attachment plaintexts.
pub fn open_bytes(
    envelope: &[u8],
    limits: &Limits,
    sender: &AuthorityCard,
    keys: &NodeKeys,
    signers: &[TrustedSigner],
    profile: &Profile,
    now: Timestamp,
) -> Result<(Opened, Vec<Vec<u8>>), OpenError> {
    let mut parts = MemoryParts::default();
    let received = receive(envelope, limits, &mut parts)?;
    let auth = received.authenticate(sender)?;
    let opened = auth.open(keys, signers, profile, now, limits)?;
    let mut plains = Vec::with_capacity(parts.parts.len());
    for (i, (att, ct)) in opened
        .message
        .attachments()
        .into_iter()
        .zip(&parts.parts)
        .enumerate()
    {
        let mut plain = Vec::new();
        open_attachment(keys, i, att, ct.as_slice(), &mut plain)?;
        plains.push(plain);
    }
    Ok((opened, plains))
}

impl Received {
    /// The encrypted body: a standard age v1 file (its plaintext is the signed message).
    pub fn body_ciphertext(&self) -> &[u8] {
        &self.body
    }
}
