//! The link's own messages: the `Hello` exchange that proves the network key (DESIGN §3), carried
//! in [`Envelope::Link`](crate::proto::wire::Envelope::Link).

use crate::proto::wire::{Envelope, MAX_FRAME_LEN, append_postcard, encoded_len};
use serde::de::Visitor;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// What the link layer says: the two halves of the handshake, both ways.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LinkMessage {
    /// First message on every connection, both ways: a fresh nonce to prove the network key on.
    Hello(Hello),
    /// Proof of the network key over both peer ids and both nonces.
    HelloProof(HelloProof),
    /// The accepting side's answer to a `Hello`: its own nonce and its proof over the dialler's,
    /// in one message (a handshake is three messages, not four).
    HelloReply(HelloReply),
    /// The dialler's [`HelloProof`] with the first message it queued for the peer, in one frame
    /// (a connection opened for one question costs four messages, not five).
    HelloProofWith(HelloProofWith),
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

/// The dialler's [`HelloProof`] and its first queued message in one frame. The accepting side
/// checks the proof first; only when it verifies is the message processed, as if it had come
/// right behind the proof.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HelloProofWith {
    /// The dialler's proof, as in [`HelloProof`].
    pub mac: [u8; 32],
    /// Its first message.
    pub first: Carried,
}

/// A message carried in a [`HelloProofWith`]: any envelope but a link message, so carrying
/// cannot nest. On the wire it is the postcard encoding of the envelope as a byte string; a
/// decoder refuses a carried link message before decoding it (no recursion), and one that does
/// not decode exactly fails the whole frame.
#[derive(Clone, Debug, PartialEq)]
pub struct Carried(Box<Envelope>);

/// Bytes a [`HelloProofWith`] adds to the message it carries, at most: the version byte, the
/// two variant tags, the MAC and the byte string's length prefix.
const CARRY_OVERHEAD: usize = 1 + 2 + 32 + 5;

impl Carried {
    /// Whether `message` may be carried: not a link message, and small enough that the frame
    /// carrying it stays within [`MAX_FRAME_LEN`].
    pub fn fits(message: &Envelope) -> bool {
        !matches!(message, Envelope::Link(_)) && encoded_len(message).saturating_add(CARRY_OVERHEAD) <= MAX_FRAME_LEN
    }

    /// `message`, carried, if it [`fits`](Carried::fits).
    pub fn new(message: Envelope) -> Option<Self> {
        Self::fits(&message).then(|| Carried(Box::new(message)))
    }

    /// `message`, carried, already known to fit.
    pub(super) fn fitting(message: Envelope) -> Self {
        debug_assert!(Self::fits(&message));
        Carried(Box::new(message))
    }

    /// The carried message.
    pub fn get(&self) -> &Envelope {
        &self.0
    }

    /// The carried message, unwrapped.
    pub fn into_inner(self) -> Envelope {
        *self.0
    }
}

impl Serialize for Carried {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut bytes = Vec::with_capacity(128);
        if !append_postcard(&*self.0, &mut bytes) {
            return Err(serde::ser::Error::custom("carried message did not encode"));
        }
        serializer.serialize_bytes(&bytes)
    }
}

impl<'de> Deserialize<'de> for Carried {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CarriedVisitor;
        impl Visitor<'_> for CarriedVisitor {
            type Value = Carried;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("the bytes of a non-link envelope")
            }

            fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<Carried, E> {
                // Postcard writes an enum's variant index first, as a varint: `Link` is 0. Refused
                // here, before decoding, so that a carried message never carries another.
                match bytes.first() {
                    None => return Err(E::custom("empty carried message")),
                    Some(0) => return Err(E::custom("a link message cannot be carried")),
                    Some(_) => {}
                }
                let (message, rest) = postcard::take_from_bytes::<Envelope>(bytes).map_err(E::custom)?;
                if !rest.is_empty() || matches!(message, Envelope::Link(_)) {
                    return Err(E::custom("carried message has trailing bytes or is a link message"));
                }
                Ok(Carried(Box::new(message)))
            }
        }
        deserializer.deserialize_bytes(CarriedVisitor)
    }
}
