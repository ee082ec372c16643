//! The link's own messages: the `Hello` exchange that proves the network key (DESIGN §3), carried
//! in [`Envelope::Link`](crate::proto::wire::Envelope::Link).

use serde::{Deserialize, Serialize};

/// What the link layer says: the two halves of the handshake, both ways.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkMessage {
    /// First message on every connection, both ways: a fresh nonce to prove the network key on.
    Hello(Hello),
    /// Proof of the network key over both peer ids and both nonces.
    HelloProof(HelloProof),
    /// The accepting side's answer to a `Hello`: its own nonce and its proof over the dialler's,
    /// in one message (a handshake is three messages, not four).
    HelloReply(HelloReply),
}

/// Opens the handshake (DESIGN §3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Fresh random nonce the peer must prove the network key over.
    pub nonce: [u8; 32],
}

/// Closes the handshake: `mac = BLAKE3-keyed(network_key, "ocd hello v1" ‖ prover ‖ verifier ‖
/// verifier_nonce ‖ prover_nonce)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloProof {
    /// The keyed MAC.
    pub mac: [u8; 32],
}

/// The accepting side's `Hello` and `HelloProof` in one: its fresh nonce, and its MAC over the
/// dialler's nonce (computed as in [`HelloProof`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloReply {
    /// Fresh random nonce the dialler must prove the network key over.
    pub nonce: [u8; 32],
    /// The accepting side's proof over the dialler's nonce and this one.
    pub mac: [u8; 32],
}
