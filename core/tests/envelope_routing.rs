//! Replies find their machine through the envelope, never through bits of a request id: a node
//! plays against a scripted indexer, and a refusal carrying the id of its pending heartbeat only
//! touches the heartbeat when it comes back in the heartbeat's own (`Indexer`) variant. A peer
//! without a role refuses that role's requests in the request's own variant.

use ocd_core::proto::hello_mac;
use ocd_core::proto::wire::{
    DhtMessage, Envelope, FindNode, Hello, HelloProof, IndexerMessage, Key, LinkMessage, RefuseReason, Refused,
    RequestId,
};
use ocd_core::proto::{Event, Input, Keypair, Output, Peer, PeerAddr, PeerId, PeerSetup, Roles, Timestamp};

const KEY: [u8; 32] = [42; 32];

fn drain(p: &mut Peer) -> Vec<Output> {
    std::iter::from_fn(|| p.poll_output()).collect()
}

/// Completes the `Hello` exchange between `peer` and the scripted remote `remote`.
fn authenticate(peer: &mut Peer, remote: PeerId, now: Timestamp) {
    peer.handle(Input::ConnectionUp { peer: remote, addr: None, outbound: true }, now);
    let their_nonce = drain(peer)
        .iter()
        .find_map(|o| match o {
            Output::Send { message: Envelope::Link(LinkMessage::Hello(Hello { nonce })), .. } => Some(*nonce),
            _ => None,
        })
        .expect("the peer opens with Hello");
    let ours = [3u8; 32];
    peer.handle(Input::Received { from: remote, message: Envelope::from(Hello { nonce: ours }) }, now);
    let mac = hello_mac(&KEY, &remote, &peer.id(), &their_nonce, &ours);
    peer.handle(Input::Received { from: remote, message: Envelope::from(HelloProof { mac }) }, now);
}

/// A node with one seed indexer, authenticated, with its first heartbeat sent: returns the node,
/// the indexer's id, the heartbeat's request id and the time.
fn node_with_pending_heartbeat() -> (Peer, PeerId, RequestId, Timestamp) {
    let now = Timestamp(1_000_000);
    let indexer = Keypair::derive(9, "indexer").peer_id();
    let mut setup = PeerSetup::new(Keypair::derive(9, "node"), KEY, Roles::NODE);
    setup.seeds = vec![PeerAddr::id_only(indexer)];
    let mut node = Peer::new(setup, now);
    node.handle(Input::Timeout, now);
    drain(&mut node);
    authenticate(&mut node, indexer, now);
    let req = drain(&mut node)
        .iter()
        .find_map(|o| match o {
            Output::Send { to, message: Envelope::Indexer(IndexerMessage::Heartbeat(hb)) } if *to == indexer => {
                Some(hb.req)
            }
            _ => None,
        })
        .expect("the queued heartbeat goes out once the link is up");
    (node, indexer, req, now)
}

fn refused(req: RequestId) -> Refused {
    Refused { req, reason: RefuseReason::Busy, suggestions: Vec::new() }
}

fn heartbeat_refusals(out: &[Output]) -> usize {
    out.iter().filter(|o| matches!(o, Output::Event(Event::HeartbeatRefused { .. }))).count()
}

#[test]
fn a_dht_refusal_with_a_heartbeat_id_never_reaches_the_pool() {
    let (mut node, indexer, req, now) = node_with_pending_heartbeat();
    let stray = Envelope::from(DhtMessage::Refused(refused(req)));
    node.handle(Input::Received { from: indexer, message: stray }, now);
    assert_eq!(heartbeat_refusals(&drain(&mut node)), 0, "a DHT refusal is the DHT's business");

    // The same id in the heartbeat's own variant is the heartbeat's refusal.
    let genuine = Envelope::from(IndexerMessage::Refused(refused(req)));
    node.handle(Input::Received { from: indexer, message: genuine }, now);
    assert_eq!(heartbeat_refusals(&drain(&mut node)), 1);
}

#[test]
fn a_peer_without_a_role_refuses_its_requests_in_their_own_variant() {
    let (mut node, indexer, _, now) = node_with_pending_heartbeat();
    let find = Envelope::from(FindNode { req: RequestId(77), target: Key([1; 32]), server: true });
    node.handle(Input::Received { from: indexer, message: find }, now);
    let out = drain(&mut node);
    let answer = out.iter().find_map(|o| match o {
        Output::Send { to, message } if *to == indexer => Some(message.clone()),
        _ => None,
    });
    match answer {
        Some(Envelope::Dht(DhtMessage::Refused(r))) => {
            assert_eq!((r.req, r.reason), (RequestId(77), RefuseReason::NotServed));
        }
        other => panic!("expected a DHT refusal, got {other:?}"),
    }
}
