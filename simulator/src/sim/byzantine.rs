//! Byzantine behaviours: filters on a misbehaving peer's outputs and inputs, forged records and
//! traffic injected on its behalf. The core itself always stays honest.

use super::engine::Ev;
use super::{Life, Simulation};
use crate::net::PeerIx;
use crate::report::ForgedSent;
use crate::scenario::{Behaviour, Forgery};
use ocd_core::proto::wire::{
    Carried, DhtMessage, Envelope, Heartbeat, HeartbeatKind, HelloProof, HelloProofWith, IndexerMessage, LinkMessage,
    SearchMessage, WireError,
};
use ocd_core::proto::{PeerRecord, RequestId};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// A flooding node sends its extra heartbeats this often.
const FLOOD_EVERY_MS: u64 = 1_000;
/// Request ids of injected flood heartbeats are `FLOOD_REQ_BASE + n`, `n` counting from 1 per
/// flooding peer and never reset (not even by a restart): unique per sender. The indexer keeps no
/// state per request id, it only echoes it in its answer, which comes back in the `Indexer`
/// envelope variant and so reaches only the flooding peer's node role (never its DHT, whose
/// replies travel in the `Dht` variant). The node role's ids count up from 1 and never reach
/// `1 << 62`, so a flood answer matches none of its requests and is dropped.
const FLOOD_REQ_BASE: u64 = 1 << 62;
/// `flap_born_at` moves `born_at` back by this much on every other response.
const FLAP_OFFSET: Duration = Duration::from_secs(3600);
/// The address an `impersonate` forgery points the victim's record to.
const FORGER_ADDR: &str = "/ip4/203.0.113.66/udp/4242/quic-v1";

/// What one misbehaving peer achieved, for its [`crate::report::ByzantineReport`].
pub(super) struct ByzTrack {
    pub(super) peer: PeerIx,
    pub(super) behaviour: Behaviour,
    pub(super) since: u64,
    /// Indexer behaviours: honest node → (measured from, evicted at).
    pub(super) nodes: BTreeMap<PeerIx, (u64, Option<u64>)>,
    /// Indexer behaviours: why those nodes evicted it (first eviction each).
    pub(super) reasons: BTreeMap<String, usize>,
    /// Indexer behaviours: honest nodes that counted it live after the start → whether their first
    /// eviction after that was for cause (not a refusal, seed return or migration).
    pub(super) live_nodes: BTreeMap<PeerIx, Option<bool>>,
    /// Node behaviours: indexers reached, and when each banned it.
    pub(super) reached: BTreeSet<PeerIx>,
    pub(super) banned: BTreeMap<PeerIx, u64>,
    /// Record behaviours: records of this peer accepted after `since` with a foreign DID or a bad
    /// signature.
    pub(super) records_accepted: u64,
    /// `claim_foreign_did`: the victim.
    pub(super) victim: Option<PeerIx>,
    /// `withhold_records`: counted workload lookups issued since `since`, and the successful ones.
    pub(super) lookups: (u64, u64),
    /// `forge_search_hits`: forged records sent in `Found` and in `Hits`.
    pub(super) forged: ForgedSent,
    /// `forge_search_hits`: `ForgedHitDropped` events naming it, and forged hits of it delivered.
    pub(super) forged_dropped: u64,
    pub(super) forged_delivered: u64,
    /// `forge_search_hits`: honest nodes that dropped a forged hit it relayed → when they
    /// evicted it for `ForgedHits`.
    pub(super) exposed: BTreeMap<PeerIx, Option<u64>>,
}

impl ByzTrack {
    fn new(peer: PeerIx, behaviour: Behaviour, since: u64, victim: Option<PeerIx>) -> ByzTrack {
        ByzTrack {
            peer,
            behaviour,
            since,
            nodes: BTreeMap::new(),
            reasons: BTreeMap::new(),
            live_nodes: BTreeMap::new(),
            reached: BTreeSet::new(),
            banned: BTreeMap::new(),
            records_accepted: 0,
            victim,
            lookups: (0, 0),
            forged: ForgedSent::default(),
            forged_dropped: 0,
            forged_delivered: 0,
            exposed: BTreeMap::new(),
        }
    }
}

impl Simulation {
    /// Makes `p` misbehave from now on, and starts measuring how the others cope (`forge`: the
    /// forgeries of `forge_search_hits`).
    pub(super) fn make_byzantine(
        &mut self,
        p: PeerIx,
        behaviour: Behaviour,
        victim: Option<PeerIx>,
        forge: &[Forgery],
    ) {
        let now = self.now;
        let sp = &mut self.peers[p as usize];
        sp.byz = Some((behaviour, now));
        self.eligible_since[p as usize] = u64::MAX;
        sp.forge = forge.to_vec();
        let victim = if behaviour == Behaviour::ClaimForeignDid { victim.filter(|v| *v != p) } else { None };
        sp.victim = victim;
        if !behaviour.is_simulated() {
            return;
        }
        let fits = if behaviour.is_indexer_behaviour() { sp.roles.indexer } else { sp.roles.node };
        if !fits {
            return;
        }
        let ti = self.byz.len();
        sp.byz_track = Some(ti);
        let mut track = ByzTrack::new(p, behaviour, now, victim);
        if behaviour.is_indexer_behaviour() {
            for (n, sp) in self.peers.iter().enumerate() {
                if sp.is_node() && sp.honest() && sp.life == Life::Alive && sp.members.iter().any(|(m, _)| *m == p) {
                    track.nodes.insert(n as PeerIx, (now, None));
                    if sp.counts_live(&self.ids[p as usize]) {
                        track.live_nodes.insert(n as PeerIx, None);
                    }
                }
            }
        } else if behaviour == Behaviour::HeartbeatFlood {
            self.schedule(now + FLOOD_EVERY_MS, Ev::FloodTick(p));
        }
        self.byz.push(track);
    }

    /// What misbehaving peer `p` sends instead of `message` (`None`: nothing).
    pub(super) fn byzantine_filter(&mut self, p: PeerIx, message: Envelope) -> Option<Envelope> {
        let sp = &mut self.peers[p as usize];
        let Some((behaviour, _)) = sp.byz else { return Some(message) };
        let applies = if behaviour.is_indexer_behaviour() { sp.roles.indexer } else { sp.roles.node };
        if !applies {
            return Some(message);
        }
        match (behaviour, message) {
            // What a proof carries is what the peer says.
            (_, Envelope::Link(LinkMessage::HelloProofWith(HelloProofWith { mac, first }))) => {
                match self.byzantine_filter(p, first.into_inner()).and_then(Carried::new) {
                    Some(first) => Some(HelloProofWith { mac, first }.into()),
                    None => Some(HelloProof { mac }.into()),
                }
            }
            (Behaviour::LieChallenges, Envelope::Indexer(IndexerMessage::HeartbeatResponse(mut r))) => {
                for c in &mut r.challenges {
                    c.found = false;
                    c.last_seen = None;
                }
                Some(Envelope::Indexer(IndexerMessage::HeartbeatResponse(r)))
            }
            (Behaviour::FakeFill, Envelope::Indexer(IndexerMessage::HeartbeatResponse(mut r))) => {
                r.fill_rate = 0.02;
                Some(Envelope::Indexer(IndexerMessage::HeartbeatResponse(r)))
            }
            (Behaviour::FlapBornAt, Envelope::Indexer(IndexerMessage::HeartbeatResponse(mut r))) => {
                sp.flap = !sp.flap;
                if !sp.flap {
                    r.born_at = r.born_at.saturating_sub(FLAP_OFFSET);
                }
                Some(Envelope::Indexer(IndexerMessage::HeartbeatResponse(r)))
            }
            (
                Behaviour::DropResponses,
                Envelope::Indexer(IndexerMessage::HeartbeatResponse(_))
                | Envelope::Indexer(IndexerMessage::Refused(_))
                | Envelope::Indexer(IndexerMessage::CandidatesResponse(_)),
            ) => None,
            (Behaviour::WithholdRecords, Envelope::Dht(DhtMessage::Value(mut v))) => {
                v.record = None;
                Some(Envelope::Dht(DhtMessage::Value(v)))
            }
            (Behaviour::WithholdRecords, Envelope::Indexer(IndexerMessage::RecordReply(mut r))) => {
                r.record = None;
                Some(Envelope::Indexer(IndexerMessage::RecordReply(r)))
            }
            (Behaviour::ForgeSearchHits, Envelope::Search(SearchMessage::Found(mut f))) => {
                if let Some(forged) = self.forge_hit(p, &f.records) {
                    f.records.insert(0, forged);
                    self.count_forged(p, true);
                }
                Some(Envelope::Search(SearchMessage::Found(f)))
            }
            (Behaviour::ForgeSearchHits, Envelope::Search(SearchMessage::Hits(mut h))) => {
                if let Some(forged) = self.forge_hit(p, &h.records) {
                    h.records.insert(0, forged);
                    self.count_forged(p, false);
                }
                Some(Envelope::Search(SearchMessage::Hits(h)))
            }
            (
                Behaviour::ClaimForeignDid | Behaviour::BadSignature,
                Envelope::Indexer(IndexerMessage::Heartbeat(mut hb)),
            ) => {
                if let Some(r) = hb.record.take() {
                    hb.record = Some(self.forge_record(p, behaviour, r));
                }
                if behaviour == Behaviour::ClaimForeignDid
                    && hb.did.is_some()
                    && let Some(v) = self.peers[p as usize].victim
                {
                    hb.did = Some(self.peers[v as usize].setup.did.clone());
                }
                Some(Envelope::Indexer(IndexerMessage::Heartbeat(hb)))
            }
            (
                Behaviour::ClaimForeignDid | Behaviour::BadSignature,
                Envelope::Indexer(IndexerMessage::Publish(mut pb)),
            ) => {
                pb.record = self.forge_record(p, behaviour, pb.record);
                Some(Envelope::Indexer(IndexerMessage::Publish(pb)))
            }
            (_, m) => Some(m),
        }
    }

    /// The record a misbehaving node sends instead of its own: re-signed by its own key with the
    /// victim's DID (`claim_foreign_did`), or with one signature byte flipped (`bad_signature`).
    pub(super) fn forge_record(&self, p: PeerIx, behaviour: Behaviour, record: PeerRecord) -> PeerRecord {
        let sp = &self.peers[p as usize];
        match behaviour {
            Behaviour::ClaimForeignDid => {
                let Some(v) = sp.victim else { return record };
                let mut body = (*record.body).clone();
                body.did = self.peers[v as usize].setup.did.clone();
                PeerRecord::sign(body, &sp.setup.keypair).unwrap_or(record)
            }
            Behaviour::BadSignature => {
                let mut r = record;
                r.signature.0[0] ^= 0x01;
                r
            }
            _ => record,
        }
    }

    /// The forged record a `forge_search_hits` indexer `p` adds to a search answer carrying
    /// `genuine` (its configured forgeries in turn; see [`Forgery`]). The first genuine record is
    /// the one altered, impersonated or claimed; the forger's own record stands in when there is
    /// none (the core never sends an empty answer, so that does not happen).
    pub(super) fn forge_hit(&mut self, p: PeerIx, genuine: &[PeerRecord]) -> Option<PeerRecord> {
        let sp = &mut self.peers[p as usize];
        let kind = if sp.forge.is_empty() {
            Forgery::DEFAULT[(sp.forged % Forgery::DEFAULT.len() as u64) as usize]
        } else {
            sp.forge[(sp.forged % sp.forge.len() as u64) as usize]
        };
        sp.forged += 1;
        let sp = &self.peers[p as usize];
        let own = sp.peer.as_ref().and_then(|q| q.record()).cloned();
        let base = genuine.first().cloned().or_else(|| own.clone())?;
        Some(match kind {
            Forgery::Altered => {
                let mut r = base;
                let body = std::sync::Arc::make_mut(&mut r.body);
                body.name = format!("!{}", body.name);
                r
            }
            Forgery::Impersonate => {
                let mut body = (*base.body).clone();
                body.addrs = vec![FORGER_ADDR.to_string()];
                let signature = sp.setup.keypair.sign(&body.signing_bytes());
                PeerRecord { body: std::sync::Arc::new(body), signature }
            }
            Forgery::Unrelated => own.unwrap_or(base),
            Forgery::ClaimDid => {
                let own = own?;
                let mut body = (*own.body).clone();
                body.did = base.body.did.clone();
                body.name = base.body.name.clone();
                PeerRecord::sign(body, &sp.setup.keypair).unwrap_or(own)
            }
        })
    }

    /// Counts a forged record of `p` (`found`: in a responder's `Found`, else in an emitter's
    /// `Hits`).
    fn count_forged(&mut self, p: PeerIx, found: bool) {
        if let Some(t) = self.peers[p as usize].byz_track {
            let f = &mut self.byz[t].forged;
            if found {
                f.found += 1;
            } else {
                f.hits += 1;
            }
        }
    }

    /// Counts indexer `to` as reached by misbehaving node `from`: a record forger once it handed
    /// it a (forged) record, other misbehaving nodes with any message.
    pub(super) fn note_reached(&mut self, from: PeerIx, to: PeerIx, decoded: &Result<Envelope, WireError>) {
        let Some(t) = self.peers[from as usize].byz_track else { return };
        if !self.peers[to as usize].roles.indexer {
            return;
        }
        let decoded = decoded.as_ref().map(Envelope::carried);
        let counts = match self.byz[t].behaviour {
            Behaviour::ClaimForeignDid | Behaviour::BadSignature => match decoded {
                Ok(Envelope::Indexer(IndexerMessage::Heartbeat(hb))) => hb.record.is_some(),
                Ok(Envelope::Indexer(IndexerMessage::Publish(_))) => true,
                _ => false,
            },
            // Every `Found` it sends carries a forgery.
            Behaviour::ForgeSearchHits => matches!(decoded, Ok(Envelope::Search(SearchMessage::Found(_)))),
            _ => true,
        };
        if counts {
            self.byz[t].reached.insert(to);
        }
    }

    /// What `to` processes of `message` (`None`: nothing): a withholding indexer drops unseen what
    /// it is asked to store, and answers nothing for it (a proof carrying a write is kept, bare).
    pub(super) fn withhold(&self, to: PeerIx, message: Envelope) -> Option<Envelope> {
        let sp = &self.peers[to as usize];
        let withholds = matches!(message.carried(), Envelope::Dht(DhtMessage::Store(_) | DhtMessage::StoreBatch(_)))
            && matches!(sp.byz, Some((Behaviour::WithholdRecords, _)))
            && sp.roles.indexer;
        match message {
            _ if !withholds => Some(message),
            Envelope::Link(LinkMessage::HelloProofWith(HelloProofWith { mac, .. })) => Some(HelloProof { mac }.into()),
            _ => None,
        }
    }

    /// A flooding node's tick: its extra heartbeats if it is alive, and the next tick.
    pub(super) fn flood_tick(&mut self, p: PeerIx) {
        if self.alive(p) {
            self.events += 1;
            self.flood(p);
        }
        self.schedule(self.now + FLOOD_EVERY_MS, Ev::FloodTick(p));
    }

    /// One extra heartbeat from `p` to every indexer it has a live link to.
    fn flood(&mut self, p: PeerIx) {
        let sp = &self.peers[p as usize];
        let Some(peer) = sp.peer.as_ref() else { return };
        let (did, name) = (peer.did().clone(), sp.name.clone());
        let targets: Vec<PeerIx> = self
            .net
            .partners(p)
            .into_iter()
            .filter(|q| self.peers[*q as usize].roles.indexer && self.net.is_up_at(p, *q))
            .collect();
        for q in targets {
            let sp = &mut self.peers[p as usize];
            sp.flood_req += 1;
            let hb = Envelope::from(Heartbeat {
                did: Some(did.clone()),
                name: Some(name.clone()),
                ..Heartbeat::bare(RequestId(FLOOD_REQ_BASE + sp.flood_req), HeartbeatKind::Regular)
            });
            self.send(p, q, hb);
        }
    }
}
