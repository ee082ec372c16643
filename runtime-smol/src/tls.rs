//! Mutual TLS 1.3 authentication for the quinn transport with **raw public keys** (RFC 7250),
//! exactly as iroh does it, so that `ocd-smol` and `ocd` (iroh) can handshake with each other.
//! Every daemon presents its ed25519 public key as a bare `SubjectPublicKeyInfo` (no X.509
//! certificate), and that key *is* the [`PeerId`] (DESIGN §3, "Keys"). The TLS 1.3
//! `CertificateVerify` signature proves that the remote holds the private key, so a connection's
//! peer id is authenticated by the handshake itself and nothing above the transport trusts a
//! self-declared id (seed bug B11).
//!
//! What iroh 1.x expects, and what this module therefore does (iroh `src/tls.rs`,
//! `src/tls/verifier.rs`, `src/tls/resolver.rs`, `src/tls/name.rs`):
//!
//! - TLS 1.3 only, both sides present a raw ed25519 key (`only_raw_public_keys`,
//!   `requires_raw_public_keys`), ed25519 is the only signature scheme, client authentication is
//!   mandatory;
//! - the dialer names the server `<base32-dnssec endpoint id>.iroh.invalid` ([`server_name`]);
//!   iroh's server verifier decodes the expected key from that name and the SNI extension is not
//!   sent. Our client verifier does the same: it accepts exactly the key the name encodes;
//! - the ALPN is [`ALPN`] on both transports.
//!
//! We disable session resumption and 0-RTT so that every connection runs a full, key-authenticated
//! handshake (an iroh client that offers early data to us simply gets a full handshake).

use ocd_core::host::transport::ALPN;
use ocd_core::proto::{Keypair, PeerId};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer, UnixTime, alg_id,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme};
use std::sync::Arc;

/// Why a key could not be encoded or accepted, or a TLS configuration not built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The ed25519 secret could not be encoded as PKCS#8 or loaded by the crypto provider.
    #[error("could not load the ed25519 key: {0}")]
    KeyEncoding(String),
    /// rustls refused the configuration (key or protocol versions).
    #[error("invalid TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The presented key is not the DER `SubjectPublicKeyInfo` of an ed25519 public key.
    #[error("the presented key is not an ed25519 public key")]
    NotEd25519,
    /// The remote sent no key, or more than one.
    #[error("expected exactly one raw public key, got {0}")]
    ChainLength(usize),
    /// The key is another one than the one we dialled.
    #[error("expected peer {expected}, the remote presented {actual}")]
    UnexpectedPeer {
        /// The key we dialled.
        expected: PeerId,
        /// The key the remote presented.
        actual: PeerId,
    },
    /// The server name of a dial is not `<base32 id>.iroh.invalid`.
    #[error("server name {0:?} does not name an ed25519 key")]
    ServerName(String),
    /// A handshake signature used another scheme than ed25519.
    #[error("handshake signed with {0:?}, only ed25519 is accepted")]
    UnsupportedScheme(SignatureScheme),
    /// A TLS 1.2 handshake (never negotiated: both configurations are TLS 1.3 only).
    #[error("TLS 1.2 is not supported")]
    Tls12,
}

/// The signature scheme of every ocd key and handshake.
const SCHEME: SignatureScheme = SignatureScheme::ED25519;

/// Length of the DER `SubjectPublicKeyInfo` of an ed25519 key: 12 bytes of header, 32 of key.
const ED25519_SPKI_LEN: usize = 44;

/// The TLS server name of a dial to `peer`, as iroh spells it: the key in DNSSEC base32 (52
/// characters, one DNS label) under `iroh.invalid`. SNI is not sent; the name only tells our own
/// verifier (and iroh's) which key to expect.
pub fn server_name(peer: PeerId) -> String {
    format!("{}.iroh.invalid", data_encoding::BASE32_DNSSEC.encode(peer.as_bytes()))
}

/// The key a [`server_name`] names, if it is one.
pub fn peer_of_server_name(name: &str) -> Option<PeerId> {
    let mut labels = name.split('.');
    let (Some(id), Some("iroh"), Some("invalid"), None) = (labels.next(), labels.next(), labels.next(), labels.next())
    else {
        return None;
    };
    let bytes = data_encoding::BASE32_DNSSEC.decode(id.as_bytes()).ok()?;
    Some(PeerId(bytes.try_into().ok()?))
}

/// The DER `SubjectPublicKeyInfo` of an ed25519 public key: what goes on the wire in place of a
/// certificate.
pub fn spki_of(peer: PeerId) -> SubjectPublicKeyInfoDer<'static> {
    rustls::sign::public_key_to_spki(&alg_id::ED25519, peer.as_bytes())
}

/// The [`PeerId`] a presented raw public key authenticates: it must be exactly the DER
/// `SubjectPublicKeyInfo` of an ed25519 key (the encoding iroh and rustls produce), and a valid
/// curve point. The handshake signature, checked by rustls with the same key, proves possession.
pub fn peer_id_from_spki(spki: &[u8]) -> Result<PeerId, TlsError> {
    if spki.len() != ED25519_SPKI_LEN {
        return Err(TlsError::NotEd25519);
    }
    let key: [u8; 32] = spki[ED25519_SPKI_LEN - 32..].try_into().map_err(|_| TlsError::NotEd25519)?;
    let peer = PeerId(key);
    if spki_of(peer).as_ref() != spki {
        return Err(TlsError::NotEd25519);
    }
    ed25519_dalek::VerifyingKey::from_bytes(&key).map_err(|_| TlsError::NotEd25519)?;
    Ok(peer)
}

/// A daemon's TLS identity: its ed25519 key as a rustls raw-public-key [`CertifiedKey`].
pub struct TlsIdentity {
    peer_id: PeerId,
    key: Arc<CertifiedKey>,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity").field("peer_id", &self.peer_id).finish_non_exhaustive()
    }
}

impl TlsIdentity {
    /// Loads `keypair` into rustls (ring provider) as a raw public key.
    pub fn new(keypair: &Keypair) -> Result<Self, TlsError> {
        use ed25519_dalek::pkcs8::EncodePrivateKey;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let signing = ed25519_dalek::SigningKey::from_bytes(&keypair.secret_bytes());
        let document = signing.to_pkcs8_der().map_err(|e| TlsError::KeyEncoding(e.to_string()))?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(document.as_bytes().to_vec()));
        let signer = provider.key_provider.load_private_key(der).map_err(|e| TlsError::KeyEncoding(e.to_string()))?;
        let peer_id = keypair.peer_id();
        let spki = spki_of(peer_id);
        let key = Arc::new(CertifiedKey::new(vec![CertificateDer::from(spki.as_ref().to_vec())], signer));
        Ok(TlsIdentity { peer_id, key, provider })
    }

    /// The peer id this identity proves.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The client configuration: TLS 1.3, [`ALPN`], our raw key as client credential, no SNI, no
    /// resumption, and a verifier that accepts only the key the dial's [`server_name`] encodes.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let verifier = NamedPeerVerifier { algorithms: algorithms(&self.provider) };
        let resolver = rustls::client::AlwaysResolvesClientRawPublicKeys::new(self.key.clone());
        let mut config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(Arc::new(resolver));
        config.alpn_protocols = vec![ALPN.to_vec()];
        config.enable_sni = false;
        config.resumption = rustls::client::Resumption::disabled();
        config.enable_early_data = false;
        Ok(config)
    }

    /// The server configuration: TLS 1.3, [`ALPN`], our raw key, a mandatory raw client key (any
    /// ed25519 one), no session tickets and no 0-RTT.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let verifier = AnyPeerVerifier { algorithms: algorithms(&self.provider) };
        let resolver = rustls::server::AlwaysResolvesServerRawPublicKeys::new(self.key.clone());
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_cert_resolver(Arc::new(resolver));
        config.alpn_protocols = vec![ALPN.to_vec()];
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        config.max_early_data_size = 0;
        Ok(config)
    }
}

/// The provider's signature verification algorithms; [`verify_handshake_signature`] lets only
/// ed25519 through to them.
fn algorithms(provider: &CryptoProvider) -> WebPkiSupportedAlgorithms {
    provider.signature_verification_algorithms
}

/// Checks the presented chain is exactly one raw ed25519 key and returns it.
fn identity_of_chain(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Result<PeerId, TlsError> {
    if !intermediates.is_empty() {
        return Err(TlsError::ChainLength(intermediates.len().saturating_add(1)));
    }
    peer_id_from_spki(end_entity.as_ref())
}

/// Wraps a [`TlsError`] as the certificate error rustls reports (and alerts the remote with).
fn rejected(error: TlsError) -> rustls::Error {
    let certificate_error = match error {
        TlsError::NotEd25519 | TlsError::ChainLength(_) => CertificateError::BadEncoding,
        TlsError::ServerName(_) => CertificateError::NotValidForName,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(certificate_error)
}

/// Verifies a TLS 1.3 handshake signature made with a raw ed25519 key.
fn verify_handshake_signature(
    algorithms: &WebPkiSupportedAlgorithms,
    message: &[u8],
    key: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    if dss.scheme != SCHEME {
        return Err(rustls::Error::General(TlsError::UnsupportedScheme(dss.scheme).to_string()));
    }
    rustls::crypto::verify_tls13_signature_with_raw_key(
        message,
        &SubjectPublicKeyInfoDer::from(key.as_ref()),
        dss,
        algorithms,
    )
}

/// The dialer's verifier: the server must present the key its [`server_name`] encodes.
#[derive(Debug)]
struct NamedPeerVerifier {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NamedPeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = match server_name {
            ServerName::DnsName(name) => name.as_ref().to_string(),
            other => return Err(rejected(TlsError::ServerName(format!("{other:?}")))),
        };
        let expected = peer_of_server_name(&name).ok_or_else(|| rejected(TlsError::ServerName(name)))?;
        let actual = identity_of_chain(end_entity, intermediates).map_err(rejected)?;
        if actual != expected {
            return Err(rejected(TlsError::UnexpectedPeer { expected, actual }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(TlsError::Tls12.to_string()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_handshake_signature(&self.algorithms, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SCHEME]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// The acceptor's verifier: a raw client key is mandatory; any ed25519 key is accepted (whoever
/// connects is identified by its key, and the core's `Hello` then checks the network key).
#[derive(Debug)]
struct AnyPeerVerifier {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyPeerVerifier {
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
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        identity_of_chain(end_entity, intermediates).map_err(rejected)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(TlsError::Tls12.to_string()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_handshake_signature(&self.algorithms, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SCHEME]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(label: &str) -> TlsIdentity {
        TlsIdentity::new(&Keypair::derive(7, label)).expect("identity")
    }

    fn now() -> UnixTime {
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_700_000_000))
    }

    fn verifier() -> NamedPeerVerifier {
        NamedPeerVerifier { algorithms: algorithms(&rustls::crypto::ring::default_provider()) }
    }

    #[test]
    fn server_name_is_irohs_and_round_trips() {
        // iroh's own snapshot (iroh 1.4.1 src/tls/name.rs, test_snapshot): the key of secret [0; 32].
        let zero = Keypair::from_secret_bytes([0; 32]).peer_id();
        assert_eq!(server_name(zero), "7dl2ff6emqi2qol3l382krodedij45bn3nh479hqo14a32qpr8kg.iroh.invalid");
        let a = identity("a").peer_id();
        assert_eq!(peer_of_server_name(&server_name(a)), Some(a));
        assert_eq!(peer_of_server_name("ocd"), None);
        assert_eq!(peer_of_server_name("abc.iroh.invalid"), None);
        assert_eq!(peer_of_server_name(&format!("{}.x", server_name(a))), None);
    }

    #[test]
    fn presented_key_is_the_spki_of_our_peer_id() {
        let a = identity("a");
        let key = &a.key.cert[0];
        assert_eq!(key.as_ref().len(), ED25519_SPKI_LEN);
        assert_eq!(peer_id_from_spki(key.as_ref()).expect("parses"), a.peer_id());
    }

    #[test]
    fn malformed_keys_are_rejected() {
        let good = spki_of(identity("a").peer_id()).as_ref().to_vec();
        let mut wrong_oid = good.clone();
        wrong_oid[8] ^= 1;
        assert!(matches!(peer_id_from_spki(&wrong_oid), Err(TlsError::NotEd25519)));
        assert!(matches!(peer_id_from_spki(&good[..40]), Err(TlsError::NotEd25519)));
        let mut trailing = good;
        trailing.push(0);
        assert!(matches!(peer_id_from_spki(&trailing), Err(TlsError::NotEd25519)));
        // A 32-byte string that is not a curve point (about half of all are not).
        let not_a_point = (0u8..=255)
            .map(|b| [b; 32])
            .find(|k| ed25519_dalek::VerifyingKey::from_bytes(k).is_err())
            .expect("some 32-byte string is not a point");
        let spki = rustls::sign::public_key_to_spki(&alg_id::ED25519, not_a_point);
        assert!(matches!(peer_id_from_spki(spki.as_ref()), Err(TlsError::NotEd25519)));
    }

    #[test]
    fn key_of_a_does_not_pass_a_dial_naming_b() {
        let (a, b) = (identity("a"), identity("b"));
        let key_a = a.key.cert[0].clone();
        let key_b = b.key.cert[0].clone();
        let name_b = ServerName::try_from(server_name(b.peer_id())).expect("name");
        let err = verifier().verify_server_cert(&key_a, &[], &name_b, &[], now()).expect_err("must reject");
        assert!(matches!(err, rustls::Error::InvalidCertificate(CertificateError::Other(_))), "{err:?}");
        assert!(verifier().verify_server_cert(&key_b, &[], &name_b, &[], now()).is_ok());
        // More than one key is refused even when the first is right.
        assert!(verifier().verify_server_cert(&key_b, std::slice::from_ref(&key_a), &name_b, &[], now()).is_err());
        // A name that encodes no key is refused.
        let bad = ServerName::try_from("ocd").expect("name");
        assert!(verifier().verify_server_cert(&key_b, &[], &bad, &[], now()).is_err());

        let server = AnyPeerVerifier { algorithms: algorithms(&rustls::crypto::ring::default_provider()) };
        assert!(server.verify_client_cert(&key_a, &[], now()).is_ok());
        assert!(server.verify_client_cert(&CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01]), &[], now()).is_err());
    }

    #[test]
    fn configs_build_for_quic_with_raw_keys_only() {
        let a = identity("a");
        let client = a.client_config().expect("client config");
        let server = a.server_config().expect("server config");
        assert_eq!(client.alpn_protocols, vec![ALPN.to_vec()]);
        assert_eq!(server.alpn_protocols, vec![ALPN.to_vec()]);
        assert!(!client.enable_sni);
        assert!(verifier().requires_raw_public_keys());
    }
}
