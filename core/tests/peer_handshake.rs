//! The `Hello` exchange seen through a whole `Peer`: a peer that proves the network key gets its
//! requests answered; a peer with the wrong key, or one that skips the handshake, gets nothing
//! processed and is disconnected.

use ocd_core::proto::hello_mac;
use ocd_core::proto::wire::{
    Envelope, Hello, HelloProof, HelloReply, LinkMessage, NodeMessage, RequestId, WitnessQuery,
};
use ocd_core::proto::{CloseReason, Event, Input, Keypair, Output, Peer, PeerSetup, Roles, Timestamp};

const KEY: [u8; 32] = [42; 32];

fn drain(p: &mut Peer) -> Vec<Output> {
    std::iter::from_fn(|| p.poll_output()).collect()
}

/// Plays a remote peer `me` against `target` by hand; returns the target's outputs after the
/// query and whether the target authenticated us.
fn run(our_key: [u8; 32], skip_handshake: bool) -> (Vec<Output>, bool, Peer) {
    let now = Timestamp(1_000_000);
    let target_keys = Keypair::derive(5, "target");
    let mut target = Peer::new(PeerSetup::new(target_keys.clone(), KEY, Roles::NODE), now);
    let me = Keypair::derive(5, "remote").peer_id();
    let our_nonce = [9u8; 32];

    target.handle(Input::ConnectionUp { peer: me, addr: None, outbound: false }, now);
    let out = drain(&mut target);
    assert!(
        !out.iter().any(|o| matches!(o, Output::Send { message: Envelope::Link(_), .. })),
        "the accepting side waits for our Hello"
    );

    let mut authenticated = false;
    if !skip_handshake {
        target.handle(Input::Received { from: me, message: Envelope::from(Hello { nonce: our_nonce }) }, now);
        let out = drain(&mut target);
        // The target answers with its nonce and its proof of the key over ours, in one message.
        let (their_nonce, proof) =
            out.iter()
                .find_map(|o| match o {
                    Output::Send {
                        to,
                        message: Envelope::Link(LinkMessage::HelloReply(HelloReply { nonce, mac })),
                    } if *to == me => Some((*nonce, *mac)),
                    _ => None,
                })
                .expect("target replies with HelloReply");
        assert_eq!(proof, hello_mac(&KEY, &target_keys.peer_id(), &me, &our_nonce, &their_nonce));
        let mac = hello_mac(&our_key, &me, &target_keys.peer_id(), &their_nonce, &our_nonce);
        target.handle(Input::Received { from: me, message: Envelope::from(HelloProof { mac }) }, now);
        authenticated = drain(&mut target)
            .iter()
            .any(|o| matches!(o, Output::Event(Event::PeerAuthenticated { peer }) if *peer == me));
    }
    let q = Envelope::from(WitnessQuery { req: RequestId(7), indexer: me });
    target.handle(Input::Received { from: me, message: q }, now);
    (drain(&mut target), authenticated, target)
}

#[test]
fn peer_with_the_network_key_is_authenticated_and_answered() {
    let (out, authenticated, _) = run(KEY, false);
    assert!(authenticated);
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Send { message: Envelope::Node(NodeMessage::WitnessReport(r)), .. } if r.req == RequestId(7))),
        "query answered: {out:?}"
    );
}

#[test]
fn peer_with_the_wrong_network_key_gets_nothing_processed() {
    let (out, authenticated, _) = run([1; 32], false);
    assert!(!authenticated);
    assert!(
        !out.iter().any(|o| matches!(o, Output::Send { message: Envelope::Node(NodeMessage::WitnessReport(_)), .. })),
        "nothing answered: {out:?}"
    );
}

#[test]
fn peer_that_skips_the_handshake_gets_nothing_processed() {
    let (out, authenticated, mut target) = run(KEY, true);
    assert!(!authenticated);
    assert!(
        !out.iter().any(|o| matches!(o, Output::Send { message: Envelope::Node(NodeMessage::WitnessReport(_)), .. }))
    );
    // The query is held, never processed; the handshake timeout then closes the connection.
    let mut later = Vec::new();
    let mut wakes = 0;
    while let Some(t) = target.poll_timeout() {
        wakes += 1;
        assert!(wakes < 100, "handshake timeout must fire");
        target.handle(Input::Timeout, t);
        later.extend(drain(&mut target));
        if later.iter().any(|o| matches!(o, Output::Close { .. })) {
            break;
        }
    }
    assert!(later.iter().any(|o| matches!(o, Output::Close { reason: CloseReason::HandshakeTimeout, .. })));
    assert!(
        !later.iter().any(|o| matches!(o, Output::Send { message: Envelope::Node(NodeMessage::WitnessReport(_)), .. }))
    );
}
