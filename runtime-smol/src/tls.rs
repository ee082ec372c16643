//! Mutual TLS 1.3 authentication for the quinn transport: every daemon presents a self-signed
//! X.509 certificate made from its ed25519 key, and the key inside the certificate *is* the
//! [`PeerId`] (DESIGN §3, "Keys"). There is no certificate authority: the TLS 1.3 `CertificateVerify`
//! signature proves that the remote holds the certificate's private key, so a connection's peer id
//! is authenticated by the handshake itself and nothing above the transport trusts a self-declared
//! id (seed bug B11).
//!
//! - The **dialer** builds a client configuration per dial ([`TlsIdentity::client_config`]) whose
//!   verifier accepts exactly one end-entity certificate, an ed25519 one for the key it dialled.
//! - The **acceptor** ([`TlsIdentity::server_config`]) *requires* a client certificate and accepts
//!   any well-formed self-signed ed25519 one: whoever connects is identified by its key, and the
//!   core's `Hello` then checks the network key.
//!
//! Both verifiers check the handshake signature with the ring provider's algorithms, advertise
//! ed25519 as the only signature scheme, ignore validity dates and server names (the key is the
//! identity, and clocks of peers disagree), and disable session resumption and 0-RTT so that every
//! connection runs a full, certificate-authenticated handshake.

use ocd_core::host::transport::ALPN;
use ocd_core::proto::{IdentityError, Keypair, PeerId, Signature};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme};
use std::sync::Arc;
use x509_parser::oid_registry::OID_SIG_ED25519;

/// Why a certificate could not be made, parsed or accepted, or a TLS configuration not built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The ed25519 secret could not be encoded as PKCS#8.
    #[error("could not encode the ed25519 key as PKCS#8: {0}")]
    KeyEncoding(String),
    /// rcgen could not load the key or build the certificate.
    #[error("could not build the certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused the configuration (key, certificate or protocol versions).
    #[error("invalid TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The certificate is not valid DER X.509.
    #[error("malformed certificate: {0}")]
    Malformed(String),
    /// The certificate's subject key is not an ed25519 public key.
    #[error("certificate key is not an ed25519 public key")]
    NotEd25519,
    /// The certificate is not signed with ed25519 by its own key.
    #[error("certificate is not self-signed with ed25519 by its own key")]
    NotSelfSigned,
    /// The remote sent no certificate, or more than the single end-entity certificate.
    #[error("expected exactly one certificate, got {0}")]
    ChainLength(usize),
    /// The certificate is for another key than the one we dialled.
    #[error("expected peer {expected}, the certificate is for {actual}")]
    UnexpectedPeer {
        /// The key we dialled.
        expected: PeerId,
        /// The key in the certificate.
        actual: PeerId,
    },
    /// A handshake signature used another scheme than ed25519.
    #[error("handshake signed with {0:?}, only ed25519 is accepted")]
    UnsupportedScheme(SignatureScheme),
    /// A TLS 1.2 handshake (never negotiated: both configurations are TLS 1.3 only).
    #[error("TLS 1.2 is not supported")]
    Tls12,
}

/// The signature scheme of every ocd certificate and handshake.
const SCHEME: SignatureScheme = SignatureScheme::ED25519;

/// A daemon's TLS identity: its self-signed ed25519 certificate and the matching PKCS#8 key.
pub struct TlsIdentity {
    peer_id: PeerId,
    certificate: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity").field("peer_id", &self.peer_id).finish_non_exhaustive()
    }
}

impl TlsIdentity {
    /// Makes the self-signed certificate for `keypair`. Its subject common name is the hex peer id
    /// and its one DNS name `<short id>.ocd.invalid`, both for humans only (nothing checks them);
    /// its validity is rcgen's default, 1975 to 4096, since dates are not checked either.
    pub fn new(keypair: &Keypair) -> Result<Self, TlsError> {
        use ed25519_dalek::pkcs8::EncodePrivateKey;

        let signing = ed25519_dalek::SigningKey::from_bytes(&keypair.secret_bytes());
        let document = signing.to_pkcs8_der().map_err(|e| TlsError::KeyEncoding(e.to_string()))?;
        let key = PrivatePkcs8KeyDer::from(document.as_bytes().to_vec());
        let rcgen_key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&key, &rcgen::PKCS_ED25519)?;

        let peer_id = keypair.peer_id();
        let mut params = rcgen::CertificateParams::new(vec![format!("{}.ocd.invalid", peer_id.short())])?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, peer_id.to_string());
        let certificate = params.self_signed(&rcgen_key)?.der().clone();

        Ok(TlsIdentity { peer_id, certificate, key, provider: Arc::new(rustls::crypto::ring::default_provider()) })
    }

    /// The peer id this identity proves.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Our certificate (DER).
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.certificate
    }

    /// A client configuration for one dial: TLS 1.3, [`ALPN`], our certificate as client
    /// certificate, no SNI, no resumption, and a verifier that accepts only `expected`'s key.
    pub fn client_config(&self, expected: PeerId) -> Result<rustls::ClientConfig, TlsError> {
        let verifier = ExpectedPeerVerifier { expected, provider: self.provider.clone() };
        let mut config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(vec![self.certificate.clone()], PrivateKeyDer::Pkcs8(self.key.clone_key()))?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        config.enable_sni = false;
        config.enable_early_data = false;
        Ok(config)
    }

    /// The server configuration: TLS 1.3, [`ALPN`], our certificate, a mandatory client
    /// certificate (any self-signed ed25519 one), no session tickets and no 0-RTT.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let verifier = AnyPeerVerifier { provider: self.provider.clone() };
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_single_cert(vec![self.certificate.clone()], PrivateKeyDer::Pkcs8(self.key.clone_key()))?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        config.max_early_data_size = 0;
        Ok(config)
    }
}

/// The [`PeerId`] a certificate authenticates: its subject key, provided the certificate is
/// well-formed DER X.509 (no trailing bytes), the key is ed25519, and the certificate is
/// self-signed with ed25519 by that key. Used by both verifiers and on the certificate a finished
/// handshake reports.
pub fn peer_id_from_certificate(certificate: &CertificateDer<'_>) -> Result<PeerId, TlsError> {
    let (rest, cert) =
        x509_parser::parse_x509_certificate(certificate.as_ref()).map_err(|e| TlsError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(TlsError::Malformed(format!("{} trailing bytes", rest.len())));
    }

    let spki = &cert.tbs_certificate.subject_pki;
    if spki.algorithm.algorithm != OID_SIG_ED25519
        || spki.algorithm.parameters.is_some()
        || spki.subject_public_key.unused_bits != 0
    {
        return Err(TlsError::NotEd25519);
    }
    let key: [u8; 32] = spki.subject_public_key.data.as_ref().try_into().map_err(|_| TlsError::NotEd25519)?;
    let peer = PeerId(key);

    let algorithm = &cert.signature_algorithm;
    if algorithm.algorithm != OID_SIG_ED25519
        || algorithm.parameters.is_some()
        || cert.tbs_certificate.signature != *algorithm
        || cert.signature_value.unused_bits != 0
    {
        return Err(TlsError::NotSelfSigned);
    }
    let signature: [u8; 64] = cert.signature_value.data.as_ref().try_into().map_err(|_| TlsError::NotSelfSigned)?;
    peer.verify(cert.tbs_certificate.as_ref(), &Signature(signature)).map_err(|e| match e {
        IdentityError::BadPublicKey => TlsError::NotEd25519,
        _ => TlsError::NotSelfSigned,
    })?;
    Ok(peer)
}

/// Checks the presented chain is exactly one valid ocd certificate and returns its key.
fn identity_of_chain(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Result<PeerId, TlsError> {
    if !intermediates.is_empty() {
        return Err(TlsError::ChainLength(intermediates.len().saturating_add(1)));
    }
    peer_id_from_certificate(end_entity)
}

/// Wraps a [`TlsError`] as the certificate error rustls reports (and alerts the remote with).
fn rejected(error: TlsError) -> rustls::Error {
    let certificate_error = match error {
        TlsError::Malformed(_) | TlsError::ChainLength(_) => CertificateError::BadEncoding,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(certificate_error)
}

/// Verifies a TLS 1.3 handshake signature: ed25519 only, with the provider's algorithms.
fn verify_handshake_signature(
    provider: &CryptoProvider,
    message: &[u8],
    certificate: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    if dss.scheme != SCHEME {
        return Err(rustls::Error::General(TlsError::UnsupportedScheme(dss.scheme).to_string()));
    }
    rustls::crypto::verify_tls13_signature(message, certificate, dss, &provider.signature_verification_algorithms)
}

/// The dialer's verifier: the server must be the key we dialled.
#[derive(Debug)]
struct ExpectedPeerVerifier {
    expected: PeerId,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ExpectedPeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let actual = identity_of_chain(end_entity, intermediates).map_err(rejected)?;
        if actual != self.expected {
            return Err(rejected(TlsError::UnexpectedPeer { expected: self.expected, actual }));
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
        verify_handshake_signature(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SCHEME]
    }
}

/// The acceptor's verifier: a client certificate is mandatory; any ocd certificate is accepted.
#[derive(Debug)]
struct AnyPeerVerifier {
    provider: Arc<CryptoProvider>,
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
        verify_handshake_signature(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SCHEME]
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

    #[test]
    fn certificate_round_trip_gives_our_peer_id() {
        let keypair = Keypair::derive(7, "a");
        let id = TlsIdentity::new(&keypair).expect("identity");
        assert_eq!(id.peer_id(), keypair.peer_id());
        assert_eq!(peer_id_from_certificate(id.certificate()).expect("parses"), keypair.peer_id());
    }

    #[test]
    fn non_ed25519_certificate_is_rejected() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("p256 key");
        let params = rcgen::CertificateParams::new(vec!["ocd".to_string()]).expect("params");
        let cert = params.self_signed(&key).expect("cert").der().clone();
        assert!(matches!(peer_id_from_certificate(&cert), Err(TlsError::NotEd25519)));

        let server = AnyPeerVerifier { provider: Arc::new(rustls::crypto::ring::default_provider()) };
        assert!(server.verify_client_cert(&cert, &[], now()).is_err());
    }

    #[test]
    fn garbage_and_tampered_certificates_are_rejected() {
        assert!(matches!(
            peer_id_from_certificate(&CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01])),
            Err(TlsError::Malformed(_))
        ));

        let cert = identity("a").certificate().to_vec();
        let mut trailing = cert.clone();
        trailing.push(0);
        assert!(matches!(peer_id_from_certificate(&CertificateDer::from(trailing)), Err(TlsError::Malformed(_))));

        // Flip one bit of the signature: still parses, no longer self-signed.
        let mut tampered = cert;
        if let Some(last) = tampered.last_mut() {
            *last ^= 1;
        }
        assert!(matches!(peer_id_from_certificate(&CertificateDer::from(tampered)), Err(TlsError::NotSelfSigned)));
    }

    #[test]
    fn certificate_for_a_does_not_pass_a_verifier_expecting_b() {
        let a = identity("a");
        let b = identity("b");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let name = ServerName::try_from("ocd").expect("name");

        let expecting_b = ExpectedPeerVerifier { expected: b.peer_id(), provider: provider.clone() };
        let err = expecting_b.verify_server_cert(a.certificate(), &[], &name, &[], now()).expect_err("must reject");
        assert!(matches!(err, rustls::Error::InvalidCertificate(CertificateError::Other(_))), "{err:?}");
        assert!(expecting_b.verify_server_cert(b.certificate(), &[], &name, &[], now()).is_ok());

        // A chain of more than one certificate is refused even when the leaf is right.
        let chain = [a.certificate().clone()];
        assert!(expecting_b.verify_server_cert(b.certificate(), &chain, &name, &[], now()).is_err());
    }

    #[test]
    fn configs_build_for_quic() {
        let a = identity("a");
        let client = a.client_config(identity("b").peer_id()).expect("client config");
        let server = a.server_config().expect("server config");
        assert_eq!(client.alpn_protocols, vec![ALPN.to_vec()]);
        assert_eq!(server.alpn_protocols, vec![ALPN.to_vec()]);
    }
}
