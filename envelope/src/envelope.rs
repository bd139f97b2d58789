//! Sealing and opening envelopes.
//!
//! An envelope is one CBOR array (see `docs/PROTOCOL.md` and `docs/konvert.cddl`):
//!
//! ```text
//! envelope = [
//!   version:  1,
//!   header:   bstr .cbor envelope-header,  ; routing, in clear
//!   body:     bstr,                        ; one age v1 file (may be chunked, indefinite length)
//!   node-sig: bstr .size 64,               ; Ed25519 by the sending gateway
//! ]
//! body plaintext = a CBOR sequence: * attachment (bstr), signed-message (bstr)
//! ```
//!
//! The header holds only routing (envelope id, sender, recipient, agreement,
//! creation time, number of attachments): no message kind, no subject,
//! nothing personal. The node signature covers the header bytes and the
//! SHA-256 of the body ciphertext, so the receiver authenticates the sending
//! gateway before it decrypts anything.
//!
//! The body is a single age file, so an envelope costs one X25519 operation
//! on each side whatever its number of attachments. Inside it, attachments
//! come before the signed message so that the sealer reads each attachment
//! once, streaming (its plaintext digest goes into the signed message), and
//! neither side holds an attachment in memory.
//!
//! Opening happens in steps, each its own type: [`receive`] (size limits,
//! structure; the body ciphertext goes to a writer the caller chooses),
//! [`Received::authenticate`] (node signature), and [`Authenticated::open`]
//! (agreement in force, decryption, attachments to a [`PartSink`],
//! signatory signature, routing, message decoding, attachment digests,
//! profile validation). Attachment bytes written to the sink are trusted
//! only once `open` has returned `Ok`.

use std::io::{self, BufRead, Read, Write};

use ciborium_ll::{Decoder, Encoder, Header};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::cbor;
use crate::keys::{AgeRecipient, AuthorityCard, NodeKeys, SigningKey, TrustedSigner};
use crate::model::{AgreementId, AuthorityId, Digest, Id, Message, Timestamp};
use crate::profile::{Profile, ValidationErrors};
use crate::roster::RosterAnchor;
use crate::signed::{SignatureError, SignedClaims, SignedMessage};

/// The envelope format version this crate writes and reads.
pub const ENVELOPE_VERSION: u64 = 1;
/// Domain separation string at the start of the node signature's input.
pub const NODE_SIG_CONTEXT: &str = "konvert-envelope/1";
/// Size of the chunks byte strings are streamed in.
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

/// Limits checked while reading (sizes, before anything is allocated) and
/// opening (how late a signature of an ended signatory may arrive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Whole envelope, all parts included.
    pub max_envelope: u64,
    /// Encoded routing header.
    pub max_header: usize,
    /// The signed message inside the body (attachments are counted by `max_envelope` only).
    pub max_message: usize,
    /// Number of attachments.
    pub max_attachments: u32,
    /// One chunk of an indefinite-length byte string.
    pub max_chunk: usize,
    /// Backdating bound (see [`crate::signed::SignedMessage::verify_arriving`]):
    /// a signature by a signatory whose validity has ended by the time of
    /// opening (revoked, expired, dropped from its roster) is accepted only
    /// until this many seconds after that end. `None`: no bound (offline
    /// verification of archived envelopes). Default 24 hours.
    pub ended_signer_grace_secs: Option<u64>,
}

/// Default of [`Limits::ended_signer_grace_secs`]: 24 hours.
pub const DEFAULT_ENDED_SIGNER_GRACE_SECS: u64 = 24 * 3600;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_envelope: 320 * 1024 * 1024,
            max_header: 1024,
            max_message: 8 * 1024 * 1024,
            max_attachments: 256,
            max_chunk: 1024 * 1024,
            ended_signer_grace_secs: Some(DEFAULT_ENDED_SIGNER_GRACE_SECS),
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
    /// Encoding failed (should not happen).
    #[error("cannot encode: {0}")]
    Encode(String),
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
    /// The agreement is not the one this profile is for, or not in force.
    #[error("agreement {agreement} is not in force here: {reason}")]
    AgreementNotInForce {
        /// The agreement named by the envelope.
        agreement: AgreementId,
        /// Why (dates of the agreement, never message content).
        reason: String,
    },
    /// Art. 17: the agreement's termination period has ended.
    #[error("agreement {agreement} is no longer in force: {reason}")]
    AgreementTerminated {
        /// The agreement named by the envelope.
        agreement: AgreementId,
        /// When it ended (dates of the agreement only).
        reason: String,
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

/// Where the attachments of an opened envelope go (memory, temporary files, the store).
pub trait PartSink {
    /// The writer for one attachment.
    type Writer: Write;
    /// Opens the writer for attachment `index` (0-based, message attachment order).
    fn create(&mut self, index: u32) -> io::Result<Self::Writer>;
    /// Called when attachment `index` has been written completely.
    fn finish(&mut self, index: u32, writer: Self::Writer) -> io::Result<()>;
}

/// A [`PartSink`] that keeps attachments in memory (tests, small envelopes).
#[derive(Debug, Default)]
pub struct MemoryParts {
    /// Plaintext of each attachment, by index.
    pub parts: Vec<Vec<u8>>,
    /// Bytes the attachments may take in all (an upper bound, such as the
    /// envelope's size), of which the next part reserves what is left.
    room: usize,
}

impl MemoryParts {
    /// Parts that take at most `bytes` in all: each is written into a
    /// buffer reserved for what is left of them, so that a large one does
    /// not grow (and copy) through every power of two up to its size.
    pub fn with_room(bytes: usize) -> Self {
        MemoryParts {
            parts: Vec::new(),
            room: bytes,
        }
    }
}

impl PartSink for MemoryParts {
    type Writer = Vec<u8>;
    fn create(&mut self, _index: u32) -> io::Result<Vec<u8>> {
        Ok(Vec::with_capacity(self.room))
    }
    fn finish(&mut self, _index: u32, mut writer: Vec<u8>) -> io::Result<()> {
        self.room = self.room.saturating_sub(writer.len());
        // A small part that reserved the room of all gives it back, so
        // that no more than one such reservation is held at a time.
        if writer.capacity() > 2 * writer.len() + 4096 {
            writer.shrink_to_fit();
        }
        self.parts.push(writer);
        Ok(())
    }
}

/// What sealing produced.
#[derive(Debug)]
pub struct Sealed {
    /// The envelope header as written.
    pub header: EnvelopeHeader,
    /// The envelope digest (what the receiver's receipt names; see [`Received::envelope_digest`]).
    pub envelope_digest: Digest,
    /// Size of the envelope in bytes.
    pub size: u64,
    /// The message as signed (attachment lengths and digests filled in).
    pub message: Message,
    /// `message` in deterministic CBOR: the bytes the signatory signed.
    pub message_cbor: Vec<u8>,
}

/// Who seals a message, for whom, under which profile and when:
/// everything [`seal`] needs besides the message, its attachments and
/// where the envelope goes.
#[derive(Clone, Copy)]
pub struct SealParams<'a> {
    /// The signatory whose signature the message carries.
    pub signatory: &'a SigningKey,
    /// The sending node's keys (its authority and node signing key).
    pub node: &'a NodeKeys,
    /// The receiving authority's card (its age recipients).
    pub recipient: &'a AuthorityCard,
    /// The agreement's profile the message is validated against.
    pub profile: &'a Profile,
    /// The envelope's id.
    pub envelope_id: Id,
    /// The time of sealing.
    pub now: Timestamp,
}

impl std::fmt::Debug for SealParams<'_> {
    // (No keys: the signatory and the node are named by their public parts.)
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealParams")
            .field("node", &self.node.authority)
            .field("recipient", &self.recipient.authority)
            .field("profile", &self.profile.id)
            .field("envelope_id", &self.envelope_id)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

/// Seals `message` into an envelope written to `out`.
///
/// `attachments` are the attachment bytes in [`Message::attachments`] order;
/// each is read once, in chunks. Lengths and digests in the message are
/// filled in (a stated digest or length must match). The message is
/// validated against the profile at `now` before anything is written.
///
/// `known[i]`, when given, is taken as the SHA-256 of attachment `i`
/// instead of hashing its bytes again as they are sealed (pass `&[]` to
/// hash them all). Only for a digest computed over exactly the bytes
/// `attachments[i]` reads (an upload held unchanged in memory since it was
/// hashed): the digest goes into the signed message, and a wrong one makes
/// the receiver refuse the envelope. (The length is counted as always.)
pub fn seal<W: Write>(
    mut message: Message,
    attachments: &mut [&mut dyn Read],
    known: &[Option<Digest>],
    params: &SealParams<'_>,
    out: W,
) -> Result<Sealed, SealError> {
    let SealParams {
        signatory,
        node,
        recipient,
        profile,
        envelope_id,
        now,
    } = *params;
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
    let mut sealer = BodySealer::start(&header, &recipient.age_recipients, out)?;
    for (index, (att, src)) in message
        .attachments_mut()
        .into_iter()
        .zip(attachments.iter_mut())
        .enumerate()
    {
        let (len, digest) = sealer.attachment(src, known.get(index).copied().flatten())?;
        if (att.length != 0 && att.length != len) || (!att.sha256.is_zero() && att.sha256 != digest) {
            return Err(SealError::AttachmentMismatch { index });
        }
        att.length = len;
        att.sha256 = digest;
        att.file = None;
    }
    profile.validate(&message, now).map_err(SealError::Invalid)?;
    let signed = SignedMessage::sign(&message, signatory)?;
    let (envelope_digest, size) = sealer.finish(&signed, &node.signing)?;
    Ok(Sealed {
        header,
        envelope_digest,
        size,
        message,
        message_cbor: signed.message,
    })
}

/// Seals into a byte vector (convenience for small messages and tests).
pub fn seal_to_vec(
    message: Message,
    attachments: &[&[u8]],
    params: &SealParams<'_>,
) -> Result<(Vec<u8>, Sealed), SealError> {
    let mut readers: Vec<&[u8]> = attachments.to_vec();
    let mut dyns: Vec<&mut dyn Read> = readers.iter_mut().map(|r| r as &mut dyn Read).collect();
    let mut out = Vec::new();
    let sealed = seal(message, &mut dyns, &[], params, &mut out)?;
    Ok((out, sealed))
}

/// Builds an envelope around an already signed message and the given
/// attachment bytes, exactly as given: no validation, no routing or digest
/// checks. Low-level: the gateway seals with [`seal`]; this exists for
/// forwarding tools and for building must-fail test vectors (a re-addressed
/// signed message, attachments that differ from their signed digests).
pub fn seal_signed(
    signed: &SignedMessage,
    header: &EnvelopeHeader,
    attachments: &[&[u8]],
    recipients: &[AgeRecipient],
    node_key: &SigningKey,
) -> Result<Vec<u8>, SealError> {
    let mut out = Vec::new();
    let mut sealer = BodySealer::start(header, recipients, &mut out)?;
    for a in attachments {
        let mut r: &[u8] = a;
        sealer.attachment(&mut r, None)?;
    }
    sealer.finish(signed, node_key)?;
    Ok(out)
}

/// The bytes the node signature is made over: deterministic CBOR of
/// `["konvert-envelope/1", header-bytes, body-ciphertext-sha256]`.
pub fn node_sig_input(header_bytes: &[u8], body: &Digest) -> Result<Vec<u8>, SealError> {
    use ciborium::value::Value;
    let v = Value::Array(vec![
        Value::Text(NODE_SIG_CONTEXT.into()),
        Value::Bytes(header_bytes.to_vec()),
        Value::Bytes(body.0.to_vec()),
    ]);
    cbor::value_to_deterministic_vec(v).map_err(|e| SealError::Encode(e.to_string()))
}

/// Writes an envelope: the header, then the body as one age stream of
/// attachments followed by the signed message, then the node signature.
struct BodySealer<W: Write> {
    header_bytes: Vec<u8>,
    age: age::stream::StreamWriter<ChunkedBytes<CountingWriter<W>>>,
    buf: Vec<u8>,
}

impl<W: Write> BodySealer<W> {
    fn start(header: &EnvelopeHeader, recipients: &[AgeRecipient], out: W) -> Result<Self, SealError> {
        let header_bytes =
            cbor::to_deterministic_vec(header).map_err(|e| SealError::Encode(e.to_string()))?;
        let mut out = CountingWriter { inner: out, count: 0 };
        let mut enc = Encoder::from(&mut out);
        enc.push(Header::Array(Some(4)))?;
        enc.push(Header::Positive(ENVELOPE_VERSION))?;
        enc.push(Header::Bytes(Some(header_bytes.len())))?;
        ciborium_io::Write::write_all(&mut enc, &header_bytes)?;
        enc.push(Header::Bytes(None))?;
        let chunker = ChunkedBytes {
            out,
            buf: Vec::with_capacity(CHUNK_SIZE),
            hasher: Sha256::new(),
        };
        let age =
            age::Encryptor::with_recipients(recipients.iter().map(|r| r.inner() as &dyn age::Recipient))
                .map_err(|e| SealError::Encrypt(e.to_string()))?
                .wrap_output(chunker)?;
        Ok(Self {
            header_bytes,
            age,
            buf: vec![0u8; CHUNK_SIZE],
        })
    }

    /// Streams one attachment into the body as an indefinite-length byte
    /// string; returns its plaintext length and SHA-256 (`known`, if given,
    /// instead of hashing it).
    fn attachment(&mut self, src: &mut dyn Read, known: Option<Digest>) -> Result<(u64, Digest), SealError> {
        let mut hasher = known.is_none().then(Sha256::new);
        let mut len = 0u64;
        Encoder::from(&mut self.age).push(Header::Bytes(None))?;
        loop {
            let n = match src.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if let Some(h) = hasher.as_mut() {
                h.update(&self.buf[..n]);
            }
            len += n as u64;
            Encoder::from(&mut self.age).push(Header::Bytes(Some(n)))?;
            self.age.write_all(&self.buf[..n])?;
        }
        Encoder::from(&mut self.age).push(Header::Break)?;
        // (No hasher exactly when a digest is known.)
        let digest = match hasher {
            Some(h) => Digest(h.finalize().into()),
            None => known.unwrap_or_default(),
        };
        Ok((len, digest))
    }

    /// Appends the signed message, closes the body and writes the node
    /// signature. Returns the envelope digest and size.
    fn finish(mut self, signed: &SignedMessage, node_key: &SigningKey) -> Result<(Digest, u64), SealError> {
        let bytes = signed.to_vec()?;
        Encoder::from(&mut self.age).push(Header::Bytes(Some(bytes.len())))?;
        self.age.write_all(&bytes)?;
        let chunker = self.age.finish()?;
        let (mut out, body_digest) = chunker.finish()?;
        let tbs = node_sig_input(&self.header_bytes, &body_digest)?;
        let sig = node_key.sign(&tbs);
        let mut enc = Encoder::from(&mut out);
        enc.push(Header::Bytes(Some(sig.len())))?;
        ciborium_io::Write::write_all(&mut enc, &sig)?;
        out.flush()?;
        Ok((Digest::of(&tbs), out.count))
    }
}

/// Writes bytes as the chunks of an indefinite-length CBOR byte string,
/// hashing them.
struct ChunkedBytes<W: Write> {
    out: W,
    buf: Vec<u8>,
    hasher: Sha256,
}

impl<W: Write> ChunkedBytes<W> {
    fn emit(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        Encoder::from(&mut self.out).push(Header::Bytes(Some(self.buf.len())))?;
        self.out.write_all(&self.buf)?;
        self.hasher.update(&self.buf);
        self.buf.clear();
        Ok(())
    }
    fn finish(mut self) -> io::Result<(W, Digest)> {
        self.emit()?;
        Encoder::from(&mut self.out).push(Header::Break)?;
        Ok((self.out, Digest(self.hasher.finalize().into())))
    }
}

impl<W: Write> Write for ChunkedBytes<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.is_empty() && data.len() >= CHUNK_SIZE {
            // Large writes go straight out as one chunk.
            let n = data.len().min(CHUNK_SIZE);
            Encoder::from(&mut self.out).push(Header::Bytes(Some(n)))?;
            self.out.write_all(&data[..n])?;
            self.hasher.update(&data[..n]);
            return Ok(n);
        }
        let n = (CHUNK_SIZE - self.buf.len()).min(data.len());
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

/// Counts what is written through it.
struct CountingWriter<W: Write> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Marker inside the `io::Error` raised when a size limit is passed.
#[derive(Debug)]
struct LimitExceeded;
impl std::fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("size limit exceeded")
    }
}
impl std::error::Error for LimitExceeded {}

/// Counts and limits everything read through it.
struct LimitedReader<R: Read> {
    inner: R,
    count: u64,
    limit: u64,
}

impl<R: Read> Read for LimitedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.count >= self.limit {
            // Allow a clean end exactly at the limit.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::other(LimitExceeded)),
            };
        }
        let room = usize::try_from(self.limit - self.count).unwrap_or(usize::MAX);
        let want = buf.len().min(room);
        let n = self.inner.read(&mut buf[..want])?;
        self.count += n as u64;
        Ok(n)
    }
}

/// An envelope whose structure and sizes have been checked, not yet authenticated.
#[derive(Debug)]
pub struct Received {
    /// The routing header (not yet authenticated).
    pub header: EnvelopeHeader,
    /// Size of the envelope in bytes.
    pub size: u64,
    /// Size of the body ciphertext in bytes.
    pub body_size: u64,
    header_bytes: Vec<u8>,
    body_digest: Digest,
    node_sig: Vec<u8>,
}

/// An envelope whose node signature has been verified.
#[derive(Debug)]
pub struct Authenticated {
    received: Received,
    envelope_digest: Digest,
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

/// Reads an envelope from `input`, checking sizes and structure; the body
/// ciphertext (a standard age file) is streamed to `body` and hashed.
/// Nothing is decrypted and nothing is trusted yet: call
/// [`Received::authenticate`] next.
pub fn receive<R: Read, W: Write>(input: R, limits: &Limits, mut body: W) -> Result<Received, OpenError> {
    let mut reader = LimitedReader {
        inner: input,
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
    let (header, header_bytes, body_digest, body_size, node_sig) =
        receive_inner(&mut reader, limits, &mut body).map_err(fix_limit)?;
    body.flush().map_err(OpenError::Io)?;
    // Nothing may follow the envelope.
    let mut probe = [0u8; 1];
    match reader.read(&mut probe) {
        Ok(0) => {}
        Ok(_) => return Err(structure("bytes follow the end of the envelope")),
        Err(e) => return Err(fix_limit(map_io(e))),
    }
    Ok(Received {
        header,
        size: reader.count,
        body_size,
        header_bytes,
        body_digest,
        node_sig,
    })
}

type Parsed = (EnvelopeHeader, Vec<u8>, Digest, u64, Vec<u8>);

fn receive_inner<R: Read, W: Write>(
    reader: &mut R,
    limits: &Limits,
    body: &mut W,
) -> Result<Parsed, OpenError> {
    let mut dec = Decoder::from(&mut *reader);
    match dec.pull().map_err(map_ll)? {
        Header::Array(Some(4)) => {}
        Header::Tag(_) => return Err(structure("expected the envelope array, found a tagged item")),
        _ => return Err(structure("expected an array of 4 items")),
    }
    match dec.pull().map_err(map_ll)? {
        Header::Positive(ENVELOPE_VERSION) => {}
        Header::Positive(v) => return Err(OpenError::UnsupportedVersion(v)),
        _ => return Err(structure("version is not an unsigned integer")),
    }
    let header_bytes = read_definite_bytes(&mut dec, limits.max_header, "the routing header")?;
    let header: EnvelopeHeader = cbor::from_deterministic_slice(&header_bytes, limits.max_header)
        .map_err(|e| structure(format!("routing header: {e}")))?;
    if header.attachments > limits.max_attachments {
        return Err(OpenError::TooLarge {
            what: "the number of attachments",
            limit: u64::from(limits.max_attachments),
        });
    }
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = Vec::new();
    let mut copy = |dec: &mut Decoder<&mut R>, len: usize| -> Result<(), OpenError> {
        let mut left = len;
        while left > 0 {
            let take = left.min(CHUNK_SIZE);
            buf.resize(take, 0);
            ciborium_io::Read::read_exact(dec, &mut buf).map_err(map_io)?;
            hasher.update(&buf);
            body.write_all(&buf).map_err(OpenError::Io)?;
            left -= take;
        }
        size += len as u64;
        Ok(())
    };
    match dec.pull().map_err(map_ll)? {
        Header::Bytes(Some(len)) => copy(&mut dec, len)?,
        Header::Bytes(None) => loop {
            match dec.pull().map_err(map_ll)? {
                Header::Bytes(Some(len)) if len > limits.max_chunk => {
                    return Err(OpenError::TooLarge {
                        what: "a body chunk",
                        limit: limits.max_chunk as u64,
                    })
                }
                Header::Bytes(Some(len)) => copy(&mut dec, len)?,
                Header::Break => break,
                _ => return Err(structure("body chunk is not a byte string")),
            }
        },
        _ => return Err(structure("body is not a byte string")),
    }
    let node_sig = read_definite_bytes(&mut dec, 64, "the node signature")?;
    if node_sig.len() != 64 {
        return Err(structure("node signature is not 64 bytes"));
    }
    Ok((
        header,
        header_bytes,
        Digest(hasher.finalize().into()),
        size,
        node_sig,
    ))
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
        let key = sender.node_key;
        self.authenticate_any(&sender.authority, &[key])
    }

    /// Verifies the node signature with any of `keys`, the node keys of
    /// `sender` accepted now (during a key rotation's dual-key window, the
    /// old and the new one: `roster::DirectoryHistory::accepted_node_keys`).
    pub fn authenticate_any(
        self,
        sender: &AuthorityId,
        keys: &[crate::keys::VerifyingKey],
    ) -> Result<Authenticated, OpenError> {
        self.authenticate_any_by(sender, keys, &mut crate::batch::Now)
    }

    /// [`Received::authenticate_any`] with the node signature checked by
    /// `verifier` (which may defer it: [`crate::batch::Deferred`]; the
    /// envelope is then authenticated only once that check verifies).
    pub fn authenticate_any_by(
        self,
        sender: &AuthorityId,
        keys: &[crate::keys::VerifyingKey],
        verifier: &mut dyn crate::batch::SignatureVerifier,
    ) -> Result<Authenticated, OpenError> {
        if &self.header.from != sender {
            return Err(OpenError::UnknownSender {
                claimed: self.header.from.clone(),
                expected: sender.clone(),
            });
        }
        let tbs =
            node_sig_input(&self.header_bytes, &self.body_digest).map_err(|e| structure(e.to_string()))?;
        if !verifier.check_any(keys, &tbs, &self.node_sig) {
            return Err(OpenError::NodeSignature {
                from: self.header.from.clone(),
            });
        }
        Ok(Authenticated {
            envelope_digest: Digest::of(&tbs),
            received: self,
        })
    }

    /// The envelope digest: SHA-256 of the node signature input, which
    /// commits to the header bytes and to the SHA-256 of the body
    /// ciphertext, i.e. to every byte of the envelope but its framing and
    /// the signature. Receipts name envelopes by it.
    pub fn envelope_digest(&self) -> Digest {
        node_sig_input(&self.header_bytes, &self.body_digest)
            .map(|tbs| Digest::of(&tbs))
            .unwrap_or_default()
    }
}

impl Authenticated {
    /// The authenticated routing header.
    pub fn header(&self) -> &EnvelopeHeader {
        &self.received.header
    }
    /// The envelope digest (see [`Received::envelope_digest`]).
    pub fn envelope_digest(&self) -> Digest {
        self.envelope_digest
    }
    /// Size of the envelope in bytes.
    pub fn size(&self) -> u64 {
        self.received.size
    }

    /// Checks the agreement and the recipient, decrypts `body` (the body
    /// ciphertext that [`receive`] wrote; buffered — a slice, a cursor, or a
    /// `BufReader` of 64 KiB for a file), streams the attachments into
    /// `parts`, and checks the signed message: the signatory signature
    /// against `signers` (valid at signing time), the signed routing against
    /// the envelope, decoding, the attachments' lengths and digests, and
    /// `profile` at `now`.
    #[allow(clippy::too_many_arguments)]
    pub fn open<R: BufRead, P: PartSink>(
        &self,
        body: R,
        keys: &NodeKeys,
        signers: &[TrustedSigner],
        profile: &Profile,
        now: Timestamp,
        limits: &Limits,
        parts: &mut P,
    ) -> Result<Opened, OpenError> {
        self.open_with(body, keys, signers, profile, now, limits, parts, |_| Ok(profile))
    }

    /// [`Authenticated::open`] for an agreement with several
    /// profile versions (Art. 16): `profile` (the highest version, whose
    /// dates in force are the agreement's) is checked before decrypting;
    /// the decoded message is then validated against the version `version`
    /// picks for it (the one its case was opened under, or the one in force
    /// at its time).
    #[allow(clippy::too_many_arguments)]
    pub fn open_with<'p, R: BufRead, P: PartSink>(
        &self,
        body: R,
        keys: &NodeKeys,
        signers: &[TrustedSigner],
        profile: &Profile,
        now: Timestamp,
        limits: &Limits,
        parts: &mut P,
        version: impl FnOnce(&Message) -> Result<&'p Profile, OpenError>,
    ) -> Result<Opened, OpenError> {
        self.open_with_roster(
            body,
            keys,
            signers,
            None,
            profile,
            now,
            limits,
            parts,
            version,
            &mut crate::batch::Now,
        )
    }

    /// [`Authenticated::open_with`] that also lets a `directory_update`
    /// carrying the sender's new signatory roster be signed by a signatory
    /// on that roster (Art. 9.4; `docs/PROTOCOL.md` §7): when the message's
    /// signatory is not among `signers` (or not valid there at the signing
    /// time), and `anchor` (the root key on the sender's card and its latest
    /// roster on record) finds a newer roster attested by that root key in
    /// the message ([`RosterAnchor::carried_signers`]), the signature is
    /// checked again against `signers` and that roster's signatories. The
    /// COSE signature, the routing and everything else are checked as
    /// always; the receiver still applies the roster with its own checks.
    /// `anchor = None` is [`Authenticated::open_with`].
    ///
    /// The signatory signature is checked by `verifier`
    /// ([`crate::batch::Now`]: at once; [`crate::batch::Deferred`]: the
    /// result holds only once that check verified).
    #[allow(clippy::too_many_arguments)]
    pub fn open_with_roster<'p, R: BufRead, P: PartSink>(
        &self,
        body: R,
        keys: &NodeKeys,
        signers: &[TrustedSigner],
        anchor: Option<RosterAnchor<'_>>,
        profile: &Profile,
        now: Timestamp,
        limits: &Limits,
        parts: &mut P,
        version: impl FnOnce(&Message) -> Result<&'p Profile, OpenError>,
        verifier: &mut dyn crate::batch::SignatureVerifier,
    ) -> Result<Opened, OpenError> {
        let header = &self.received.header;
        if header.to != keys.authority {
            return Err(OpenError::WrongRecipient {
                to: header.to.clone(),
                own: keys.authority.clone(),
            });
        }
        if profile.id != header.agreement {
            return Err(OpenError::AgreementNotInForce {
                agreement: header.agreement.clone(),
                reason: format!("it is checked against the profile of {}", profile.id),
            });
        }
        profile.in_force_at(now).map_err(|e| {
            if e.is_terminated() {
                OpenError::AgreementTerminated {
                    agreement: header.agreement.clone(),
                    reason: e.reason.to_string(),
                }
            } else {
                OpenError::AgreementNotInForce {
                    agreement: header.agreement.clone(),
                    reason: e.reason.to_string(),
                }
            }
        })?;
        // (Buffered by the caller: a body in memory is read in place, not
        // copied through another buffer.)
        let decryptor = age::Decryptor::new_buffered(body).map_err(decrypt_err)?;
        let mut plain = decryptor
            .decrypt(
                std::iter::once(&keys.age)
                    .chain(&keys.previous_age)
                    .map(|i| i.opener()),
            )
            .map_err(decrypt_err)?;
        let mut found = Vec::with_capacity(header.attachments as usize);
        let signed_bytes = {
            let mut dec = Decoder::from(&mut plain);
            for index in 0..header.attachments {
                found.push(read_attachment(&mut dec, index, parts, limits)?);
            }
            read_plain_bytes(&mut dec, limits.max_message)?
        };
        let mut probe = [0u8; 1];
        if plain.read(&mut probe).map_err(decrypt_io)? != 0 {
            return Err(OpenError::Decrypt(
                "body plaintext continues after the signed message".into(),
            ));
        }
        let signed: SignedMessage = cbor::from_slice(&signed_bytes, limits.max_message).map_err(|e| {
            OpenError::Decrypt(format!("decrypted body does not end with a signed message: {e}"))
        })?;
        let grace = limits.ended_signer_grace_secs;
        let claims = match (signed.verify_arriving_by(signers, now, grace, verifier), anchor) {
            (
                Err(
                    e @ (SignatureError::UnknownSigner { .. }
                    | SignatureError::SignerNotValid { .. }
                    | SignatureError::SignerNoLongerValid { .. }),
                ),
                Some(anchor),
            ) => {
                // Decoded before the signature is checked only to find the
                // root-signed roster; the envelope is the pinned peer's.
                let carried = cbor::from_deterministic_slice::<Message>(&signed.message, limits.max_message)
                    .ok()
                    .and_then(|m| anchor.carried_signers(&m));
                match carried {
                    Some(extra) => {
                        let all: Vec<TrustedSigner> = signers.iter().cloned().chain(extra).collect();
                        signed.verify_arriving_by(&all, now, grace, verifier)?
                    }
                    None => return Err(e.into()),
                }
            }
            (r, _) => r?,
        };
        check_routing(&claims, header)?;
        let message: Message = cbor::from_deterministic_slice(&signed.message, limits.max_message)
            .map_err(|e| OpenError::MessageDecode(e.to_string()))?;
        check_message_header(&claims, &message)?;
        let atts = message.attachments();
        if atts.len() != found.len() {
            return Err(OpenError::AttachmentMismatch {
                index: atts.len().min(found.len()),
                reason: "the number of attachments differs from the envelope",
            });
        }
        for (index, (a, (len, digest))) in atts.iter().zip(&found).enumerate() {
            if a.length != *len {
                return Err(OpenError::AttachmentMismatch {
                    index,
                    reason: "length differs from the signed length",
                });
            }
            if a.sha256 != *digest {
                return Err(OpenError::AttachmentMismatch {
                    index,
                    reason: "SHA-256 differs from the signed digest",
                });
            }
        }
        let governing = version(&message)?;
        if governing.id != header.agreement {
            return Err(OpenError::AgreementNotInForce {
                agreement: header.agreement.clone(),
                reason: format!("it is checked against the profile of {}", governing.id),
            });
        }
        governing.validate(&message, now).map_err(OpenError::Invalid)?;
        Ok(Opened {
            message,
            claims,
            signed,
        })
    }
}

fn decrypt_err(e: age::DecryptError) -> OpenError {
    OpenError::Decrypt(e.to_string())
}

fn decrypt_io(e: io::Error) -> OpenError {
    OpenError::Decrypt(format!("body ciphertext: {e}"))
}

fn map_plain(e: ciborium_ll::Error<io::Error>) -> OpenError {
    match e {
        ciborium_ll::Error::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            OpenError::Decrypt("body plaintext ends early".into())
        }
        ciborium_ll::Error::Io(e) => decrypt_io(e),
        ciborium_ll::Error::Syntax(off) => {
            OpenError::Decrypt(format!("body plaintext is not CBOR at byte {off}"))
        }
    }
}

/// Streams one attachment from the decrypted body into `parts`; returns its length and SHA-256.
fn read_attachment<R: Read, P: PartSink>(
    dec: &mut Decoder<R>,
    index: u32,
    parts: &mut P,
    limits: &Limits,
) -> Result<(u64, Digest), OpenError> {
    let mut w = parts.create(index).map_err(OpenError::Io)?;
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    let mut buf = Vec::new();
    let mut copy = |dec: &mut Decoder<R>, n: usize, w: &mut P::Writer| -> Result<(), OpenError> {
        if n > limits.max_chunk {
            return Err(OpenError::TooLarge {
                what: "an attachment chunk",
                limit: limits.max_chunk as u64,
            });
        }
        buf.resize(n, 0);
        ciborium_io::Read::read_exact(dec, &mut buf).map_err(|e| map_plain(ciborium_ll::Error::Io(e)))?;
        hasher.update(&buf);
        len += n as u64;
        w.write_all(&buf).map_err(OpenError::Io)
    };
    match dec.pull().map_err(map_plain)? {
        Header::Bytes(Some(n)) => {
            let mut left = n;
            while left > 0 {
                let take = left.min(CHUNK_SIZE);
                copy(dec, take, &mut w)?;
                left -= take;
            }
        }
        Header::Bytes(None) => loop {
            match dec.pull().map_err(map_plain)? {
                Header::Bytes(Some(n)) => copy(dec, n, &mut w)?,
                Header::Break => break,
                _ => {
                    return Err(OpenError::Decrypt(format!(
                        "attachment {index} chunk is not a byte string"
                    )))
                }
            }
        },
        _ => {
            return Err(OpenError::Decrypt(format!(
                "attachment {index} is not a byte string"
            )))
        }
    }
    parts.finish(index, w).map_err(OpenError::Io)?;
    Ok((len, Digest(hasher.finalize().into())))
}

fn read_plain_bytes<R: Read>(dec: &mut Decoder<R>, limit: usize) -> Result<Vec<u8>, OpenError> {
    match dec.pull().map_err(map_plain)? {
        Header::Bytes(Some(len)) => {
            if len > limit {
                return Err(OpenError::TooLarge {
                    what: "the signed message",
                    limit: limit as u64,
                });
            }
            let mut v = vec![0u8; len];
            ciborium_io::Read::read_exact(dec, &mut v).map_err(|e| map_plain(ciborium_ll::Error::Io(e)))?;
            Ok(v)
        }
        _ => Err(OpenError::Decrypt(
            "signed message is not a definite-length byte string".into(),
        )),
    }
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
    let mut body = Vec::with_capacity(envelope.len());
    let received = receive(envelope, limits, &mut body)?;
    let auth = received.authenticate(sender)?;
    let mut parts = MemoryParts::default();
    let opened = auth.open(body.as_slice(), keys, signers, profile, now, limits, &mut parts)?;
    Ok((opened, parts.parts))
}
