//! TLS for the QUIC transport: the gateway's TLS identity, public-key pins,
//! the pinning certificate verifiers and the rustls configurations.
//!
//! Trust between gateways is **pinning, not a PKI**: a peer is who its
//! certificate's public key says it is. A [`Pin`] is the SHA-256 of the
//! certificate's SubjectPublicKeyInfo (the form of HPKP and
//! `curl --pinnedpubkey`), and the [`PinSet`] maps pins to authorities.
//! Chain building, names and validity dates are not checked; the TLS 1.3
//! handshake signature is (pinning replaces chain validation, never signature
//! verification). See `docs/TRANSPORT.md`.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, PoisonError, RwLock};

use base64::Engine as _;
use konvert_envelope::model::AuthorityId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, ParsedCertificate};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

/// The ALPN protocol id of Konvert's gateway-to-gateway protocol, version 1.
pub const ALPN: &[u8] = b"konvert/1";

/// Largest certificate PEM file [`TlsIdentity::from_pem`] accepts.
pub const MAX_CERT_PEM_BYTES: usize = 16 * 1024;
/// Largest private-key PEM file [`TlsIdentity::from_pem`] accepts.
pub const MAX_KEY_PEM_BYTES: usize = 16 * 1024;
/// Validity written into generated certificates, in years. Informational
/// only: peers trust the pinned key, not dates (see `docs/TRANSPORT.md`).
pub const CERT_VALIDITY_YEARS: i16 = 10;

/// The crypto provider of the whole transport: rustls's *ring* provider.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// ---------------------------------------------------------------------------
// Identity

/// The gateway's TLS identity: a self-signed certificate and its private key
/// (PKCS#8 DER).
///
/// The key is zeroized on drop and never printed: `Debug` shows the pin only.
/// This key is separate from the node signing key of `PROTOCOL.md` §1: it
/// only authenticates the QUIC connection.
pub struct TlsIdentity {
    cert: CertificateDer<'static>,
    key: Zeroizing<Vec<u8>>,
    pin: Pin,
}

/// Why [`TlsIdentity::generate`] failed.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// Key generation or certificate signing failed in rcgen.
    #[error("cannot generate the TLS certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// The generated certificate could not be read back (a bug).
    #[error("generated TLS identity is unusable: {0}")]
    Unusable(#[from] IdentityError),
}

/// Why a certificate and key do not form a usable [`TlsIdentity`].
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A PEM file is larger than its limit.
    #[error("{what} PEM is {len} bytes, more than the limit of {max}")]
    TooLarge {
        /// `"certificate"` or `"private key"`.
        what: &'static str,
        /// Size given.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// No `CERTIFICATE` block, or one that is not valid PEM/base64.
    #[error("no readable CERTIFICATE block in the certificate PEM: {0}")]
    CertificatePem(rustls::pki_types::pem::Error),
    /// No `PRIVATE KEY` (PKCS#8) block, or one that is not valid PEM/base64.
    /// The error text never contains key material.
    #[error("no readable PRIVATE KEY (PKCS#8) block in the key PEM")]
    KeyPem,
    /// The certificate is not a parsable X.509 certificate.
    #[error("the certificate does not parse: {0}")]
    Certificate(#[source] rustls::Error),
    /// The key is not a key the *ring* provider can sign with.
    #[error("the private key is not usable for TLS signatures: {0}")]
    Key(#[source] rustls::Error),
    /// The key is not the certificate's key.
    #[error("the private key does not belong to the certificate")]
    KeyMismatch,
}

impl TlsIdentity {
    /// Generates a new identity for `authority`: an Ed25519 key and a
    /// self-signed certificate with subject CN and DNS SAN `authority`, valid
    /// from today for [`CERT_VALIDITY_YEARS`] years.
    pub fn generate(authority: &AuthorityId) -> Result<Self, GenerateError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        let mut params = rcgen::CertificateParams::new(vec![authority.to_string()])?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, authority.as_str());
        let today = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC).date();
        let (y, m, d) = (today.year(), today.month(), today.day());
        // Day 28 at most: valid in every month of the expiry year.
        let (m, d) = (m as u8, d.min(28) as u8);
        params.not_before = rcgen::date_time_ymd(i32::from(y), m, d);
        params.not_after = rcgen::date_time_ymd(i32::from(y + CERT_VALIDITY_YEARS), m, d);
        let cert = params.self_signed(&key)?;
        let key_der = Zeroizing::new(key.serialize_der());
        Ok(Self::from_der(cert.der().clone(), key_der)?)
    }

    /// An identity from DER: the certificate and its PKCS#8 private key.
    /// Checks that the key signs with the *ring* provider and matches the
    /// certificate.
    pub fn from_der(
        cert: CertificateDer<'static>,
        key_pkcs8: Zeroizing<Vec<u8>>,
    ) -> Result<Self, IdentityError> {
        let pin = Pin::of_certificate(&cert).map_err(|e| IdentityError::Certificate(e.0))?;
        let id = Self {
            cert,
            key: key_pkcs8,
            pin,
        };
        id.certified_key()?;
        Ok(id)
    }

    /// Reads an identity from PEM: a `CERTIFICATE` block and a PKCS#8
    /// `PRIVATE KEY` block (the first of each is used), each at most 16 KiB.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, IdentityError> {
        if cert_pem.len() > MAX_CERT_PEM_BYTES {
            return Err(IdentityError::TooLarge {
                what: "certificate",
                len: cert_pem.len(),
                max: MAX_CERT_PEM_BYTES,
            });
        }
        if key_pem.len() > MAX_KEY_PEM_BYTES {
            return Err(IdentityError::TooLarge {
                what: "private key",
                len: key_pem.len(),
                max: MAX_KEY_PEM_BYTES,
            });
        }
        let cert = CertificateDer::from_pem_slice(cert_pem).map_err(IdentityError::CertificatePem)?;
        let key = PrivatePkcs8KeyDer::from_pem_slice(key_pem).map_err(|_| IdentityError::KeyPem)?;
        let key = Zeroizing::new(key.secret_pkcs8_der().to_vec());
        Self::from_der(cert, key)
    }

    /// The identity as PEM: `(certificate, private key)`. Write the key with
    /// owner-only permissions (`files::write_secret`).
    pub fn to_pem(&self) -> (String, Zeroizing<String>) {
        (
            pem_encode("CERTIFICATE", &self.cert),
            Zeroizing::new(pem_encode("PRIVATE KEY", &self.key)),
        )
    }

    /// The certificate (DER).
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The pin of this identity: what peers put into their pin set.
    pub fn pin(&self) -> &Pin {
        &self.pin
    }

    /// The certificate and a signing key for rustls.
    pub(crate) fn certified_key(&self) -> Result<Arc<CertifiedKey>, IdentityError> {
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.as_slice()));
        let signer = rustls::crypto::ring::sign::any_supported_type(&der).map_err(IdentityError::Key)?;
        let ck = CertifiedKey::new(vec![self.cert.clone()], signer);
        match ck.keys_match() {
            Ok(()) => Ok(Arc::new(ck)),
            Err(rustls::Error::InconsistentKeys(_)) => Err(IdentityError::KeyMismatch),
            Err(e) => Err(IdentityError::Certificate(e)),
        }
    }
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("pin", &self.pin)
            .field("key", &"<secret>")
            .finish()
    }
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        // Base64 output is ASCII.
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

// ---------------------------------------------------------------------------
// Pins

/// A public-key pin: SHA-256 over the DER SubjectPublicKeyInfo of a
/// certificate. Text form `sha256/<standard base64 with padding>`, as in
/// HPKP (RFC 7469) and `curl --pinnedpubkey`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pin([u8; 32]);

/// A certificate that does not parse, so it has no pin.
#[derive(Debug, thiserror::Error)]
#[error("certificate does not parse: {0}")]
pub struct BadCertificate(#[source] pub rustls::Error);

/// Why a text is not a [`Pin`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParsePinError {
    /// The text does not start with `sha256/`.
    #[error("a pin starts with \"sha256/\"")]
    Prefix,
    /// The rest is not standard base64 (with padding) of 32 bytes.
    #[error("a pin is \"sha256/\" and the base64 of 32 bytes (44 characters)")]
    Digest,
}

impl Pin {
    /// The pin of a DER SubjectPublicKeyInfo.
    pub fn of_spki(spki_der: &[u8]) -> Self {
        Self(Sha256::digest(spki_der).into())
    }

    /// The pin of a DER X.509 certificate (of its SubjectPublicKeyInfo).
    pub fn of_certificate(cert: &CertificateDer<'_>) -> Result<Self, BadCertificate> {
        let parsed = ParsedCertificate::try_from(cert).map_err(BadCertificate)?;
        Ok(Self::of_spki(parsed.subject_public_key_info().as_ref()))
    }

    /// The 32 digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sha256/{}",
            base64::engine::general_purpose::STANDARD.encode(self.0)
        )
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pin({self})")
    }
}

impl FromStr for Pin {
    type Err = ParsePinError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b64 = s.strip_prefix("sha256/").ok_or(ParsePinError::Prefix)?;
        if b64.len() != 44 {
            return Err(ParsePinError::Digest);
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| ParsePinError::Digest)?;
        <[u8; 32]>::try_from(bytes.as_slice())
            .map(Self)
            .map_err(|_| ParsePinError::Digest)
    }
}

/// A pinned peer: its authority and the pin of its TLS certificate.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    /// The peer's authority.
    pub authority: AuthorityId,
    /// The pin of the peer's TLS certificate.
    pub pin: Pin,
}

/// A pin listed twice for different authorities.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("pin {pin} is given for two authorities, {first} and {second}")]
pub struct PinConflict {
    /// The pin.
    pub pin: Pin,
    /// One authority.
    pub first: AuthorityId,
    /// The other authority.
    pub second: AuthorityId,
}

/// The pinned peers: pin → authority. An authority may have several pins
/// (key rollover); a pin names exactly one authority.
///
/// Cloning shares the set: [`PinSet::replace`] (on a configuration reload)
/// changes it for every endpoint and verifier holding a clone, at once.
/// Established connections are not touched; new handshakes see the new set.
#[derive(Clone, Default)]
pub struct PinSet {
    inner: Arc<RwLock<Arc<HashMap<Pin, AuthorityId>>>>,
}

impl PinSet {
    /// A set of the given peers.
    pub fn new(peers: impl IntoIterator<Item = Peer>) -> Result<Self, PinConflict> {
        Ok(Self {
            inner: Arc::new(RwLock::new(Arc::new(build_map(peers)?))),
        })
    }

    /// Replaces the whole set (all clones see the change). On a conflict
    /// the set is left as it was.
    pub fn replace(&self, peers: impl IntoIterator<Item = Peer>) -> Result<(), PinConflict> {
        let map = Arc::new(build_map(peers)?);
        *self.inner.write().unwrap_or_else(PoisonError::into_inner) = map;
        Ok(())
    }

    /// The authority a pin belongs to.
    pub fn authority_of(&self, pin: &Pin) -> Option<AuthorityId> {
        self.snapshot().get(pin).cloned()
    }

    /// Number of pins.
    pub fn len(&self) -> usize {
        self.snapshot().len()
    }

    /// Whether no pin is set.
    pub fn is_empty(&self) -> bool {
        self.snapshot().is_empty()
    }

    fn snapshot(&self) -> Arc<HashMap<Pin, AuthorityId>> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl fmt::Debug for PinSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.snapshot().iter()).finish()
    }
}

fn build_map(peers: impl IntoIterator<Item = Peer>) -> Result<HashMap<Pin, AuthorityId>, PinConflict> {
    let mut map = HashMap::new();
    for Peer { authority, pin } in peers {
        if let Some(first) = map.get(&pin) {
            if *first != authority {
                return Err(PinConflict {
                    pin,
                    first: AuthorityId::clone(first),
                    second: authority,
                });
            }
        }
        map.insert(pin, authority);
    }
    Ok(map)
}

// ---------------------------------------------------------------------------
// Verifiers

fn pin_of_end_entity(end_entity: &CertificateDer<'_>) -> Result<Pin, rustls::Error> {
    Pin::of_certificate(end_entity).map_err(|e| e.0)
}

fn tls12_refused() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::PeerIncompatible(
        rustls::PeerIncompatible::Tls13RequiredForQuic,
    ))
}

/// Client side: accepts the server only if its end-entity certificate has
/// the expected pin (the peer being dialled). Names, dates and chains are
/// not checked; the TLS 1.3 handshake signature is.
#[derive(Debug)]
struct PinnedServerVerifier {
    expected: Vec<Pin>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.expected.contains(&pin_of_end_entity(end_entity)?) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Server side: requires a client certificate and accepts it only if its
/// pin is in the [`PinSet`] at the time of the handshake.
#[derive(Debug)]
struct PinnedClientVerifier {
    pins: PinSet,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for PinnedClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let pin = pin_of_end_entity(end_entity)?;
        if self.pins.authority_of(&pin).is_some() {
            Ok(ClientCertVerified::assertion())
        } else {
            tracing::info!(%pin, "TLS client refused: certificate key not pinned");
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

// ---------------------------------------------------------------------------
// Configurations

/// Why a rustls configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// The identity's key is unusable.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// rustls refused the configuration (TLS 1.3 unsupported by the provider).
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The server-side rustls configuration: TLS 1.3 only, *ring*, ALPN
/// `konvert/1`, mandatory client certificate checked against `pins`, no
/// 0-RTT (`max_early_data_size = 0`), no session tickets or session cache
/// (every connection runs a full handshake, so every client certificate is
/// checked against the current pins).
pub fn server_config(identity: &TlsIdentity, pins: PinSet) -> Result<rustls::ServerConfig, TlsConfigError> {
    let provider = provider();
    let verifier = Arc::new(PinnedClientVerifier {
        pins,
        algorithms: provider.signature_verification_algorithms,
    });
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(identity.certified_key()?)));
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    cfg.max_early_data_size = 0;
    cfg.send_tls13_tickets = 0;
    cfg.session_storage = Arc::new(NoServerSessionStorage {});
    Ok(cfg)
}

/// The client-side rustls configuration for dialling the peer whose
/// certificate has one of the pins `expected` (more than one during the
/// peer's key rotation): TLS 1.3 only, *ring*, ALPN `konvert/1`,
/// our certificate as client certificate, no SNI (the name would be
/// cleartext and is not used), no resumption and no early data.
pub fn client_config(
    identity: &TlsIdentity,
    expected: &[Pin],
) -> Result<rustls::ClientConfig, TlsConfigError> {
    let provider = provider();
    let verifier = Arc::new(PinnedServerVerifier {
        expected: expected.to_vec(),
        algorithms: provider.signature_verification_algorithms,
    });
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(identity.certified_key()?)));
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    cfg.enable_sni = false;
    cfg.enable_early_data = false;
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn authority(s: &str) -> AuthorityId {
        AuthorityId::new(s).unwrap()
    }

    #[test]
    fn pin_text_round_trip() {
        let pin = Pin::of_spki(b"spki");
        let text = pin.to_string();
        assert!(text.starts_with("sha256/") && text.len() == 51, "{text}");
        assert_eq!(text.parse::<Pin>().unwrap(), pin);
        assert_eq!("sha1/abc".parse::<Pin>(), Err(ParsePinError::Prefix));
        assert_eq!("sha256/AAAA".parse::<Pin>(), Err(ParsePinError::Digest));
    }

    #[test]
    fn identity_pem_round_trip_and_mismatch() {
        let a = TlsIdentity::generate(&authority("kz.mvd")).unwrap();
        let b = TlsIdentity::generate(&authority("by.mvd")).unwrap();
        let (cert, key) = a.to_pem();
        let a2 = TlsIdentity::from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
        assert_eq!(a2.pin(), a.pin());
        assert_ne!(a.pin(), b.pin());
        let (_, key_b) = b.to_pem();
        assert!(matches!(
            TlsIdentity::from_pem(cert.as_bytes(), key_b.as_bytes()),
            Err(IdentityError::KeyMismatch)
        ));
        assert!(!format!("{a:?}").contains(key.as_str()));
        let big = vec![b'a'; MAX_CERT_PEM_BYTES + 1];
        assert!(matches!(
            TlsIdentity::from_pem(&big, key.as_bytes()),
            Err(IdentityError::TooLarge { .. })
        ));
    }

    #[test]
    fn pin_set_conflict_and_replace() {
        let p = Pin::of_spki(b"one");
        assert!(PinSet::new([
            Peer {
                authority: authority("kz.mvd"),
                pin: p
            },
            Peer {
                authority: authority("by.mvd"),
                pin: p
            },
        ])
        .is_err());
        let set = PinSet::new([Peer {
            authority: authority("kz.mvd"),
            pin: p,
        }])
        .unwrap();
        let shared = set.clone();
        shared.replace([]).unwrap();
        assert!(set.authority_of(&p).is_none());
    }
}
