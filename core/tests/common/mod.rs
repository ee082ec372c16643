//! A minimal in-test network of whole peers, for flow tests: 5 ms links, connections set up on
//! `Connect`, a durable store per peer (persist outputs applied in order, handed back as
//! `Input::Restored` after a restart), crashes and restarts. Multi-peer behaviour at scale is the
//! simulator's job; this checks flows end to end.

#![allow(dead_code)]

use ocd_core::proto::{Event, Input, MemoryStore, Output, Peer, PeerId, PeerSetup, Timestamp};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

pub const LINK_MS: u64 = 5;

pub struct Net {
    pub peers: Vec<Peer>,
    pub setups: Vec<PeerSetup>,
    pub up: Vec<bool>,
    pub stores: Vec<MemoryStore>,
    queue: BTreeMap<(Timestamp, u64), (usize, u64, Input)>,
    /// Each peer's life number: inputs for an earlier life are dropped.
    lives: Vec<u64>,
    seq: u64,
    pub now: Timestamp,
    connected: BTreeSet<(usize, usize)>,
    pub events: Vec<(Timestamp, usize, Event)>,
    /// A journal of one peer's inputs and outputs (`ocd run --journal` in miniature): its index,
    /// the recorder, and the bytes.
    pub journal: Option<(usize, ocd_core::journal::Recorder, Vec<u8>)>,
}

impl Net {
    pub fn new(setups: Vec<PeerSetup>, now: Timestamp) -> Net {
        let peers = setups.iter().map(|s| Peer::new(s.clone(), now)).collect::<Vec<_>>();
        let n = peers.len();
        Net {
            peers,
            setups,
            up: vec![true; n],
            stores: vec![MemoryStore::new(); n],
            queue: BTreeMap::new(),
            lives: vec![0; n],
            seq: 0,
            now,
            connected: BTreeSet::new(),
            events: Vec::new(),
            journal: None,
        }
    }

    pub fn index(&self, id: &PeerId) -> Option<usize> {
        self.peers.iter().position(|p| p.id() == *id)
    }

    fn push(&mut self, at: Timestamp, to: usize, input: Input) {
        self.seq += 1;
        self.queue.insert((at, self.seq), (to, self.lives[to], input));
    }

    /// Hands `input` to peer `i` at `t`, journaling it if that peer is journaled.
    fn feed(&mut self, i: usize, input: Input, t: Timestamp) {
        if let Some((j, rec, bytes)) = &mut self.journal
            && *j == i
        {
            bytes.extend(rec.step(t, &input));
        }
        self.peers[i].handle(input, t);
    }

    fn outputs(&mut self, i: usize) {
        while let Some(o) = self.peers[i].poll_output() {
            if let Some((j, rec, _)) = &mut self.journal
                && *j == i
            {
                rec.output(&o);
            }
            let at = self.now + Duration::from_millis(LINK_MS);
            match o {
                Output::Connect { peer } => {
                    let Some(j) = self.index(&peer.id) else { continue };
                    if !self.up[j] {
                        self.push(at, i, Input::ConnectFailed { peer: peer.id });
                        continue;
                    }
                    self.connected.insert((i.min(j), i.max(j)));
                    let me = self.peers[i].id();
                    self.push(at, i, Input::ConnectionUp { peer: peer.id, addr: None, outbound: true });
                    self.push(at, j, Input::ConnectionUp { peer: me, addr: None, outbound: false });
                }
                Output::Send { to, message } => {
                    let Some(j) = self.index(&to) else { continue };
                    if self.up[j] && self.connected.contains(&(i.min(j), i.max(j))) {
                        let from = self.peers[i].id();
                        self.push(at, j, Input::Received { from, message });
                    }
                }
                Output::Close { peer, .. } => {
                    let Some(j) = self.index(&peer) else { continue };
                    if self.connected.remove(&(i.min(j), i.max(j))) {
                        let me = self.peers[i].id();
                        self.push(at, j, Input::ConnectionDown { peer: me });
                    }
                }
                Output::Event(e) => self.events.push((self.now, i, e)),
                // Committed at once, before the outputs that follow are executed.
                Output::Persist(p) => {
                    self.stores[i].apply(p);
                }
                Output::Forget(f) => self.stores[i].forget(f),
            }
        }
    }

    /// Runs until `until`, handing each peer its inputs and timeouts in time order.
    pub fn run_until(&mut self, until: Timestamp) {
        loop {
            let next_input = self.queue.keys().next().map(|(t, _)| *t);
            let next_timer = (0..self.peers.len())
                .filter(|i| self.up[*i])
                .filter_map(|i| self.peers[i].poll_timeout().map(|t| (t.max(self.now), i)))
                .min();
            let t = match (next_input, next_timer) {
                (Some(a), Some((b, _))) => a.min(b),
                (Some(a), None) => a,
                (None, Some((b, _))) => b,
                (None, None) => break,
            };
            if t > until {
                break;
            }
            self.now = t;
            if next_input == Some(t) {
                let Some((_, (i, life, input))) = self.queue.pop_first() else { break };
                if self.up[i] && life == self.lives[i] {
                    self.feed(i, input, t);
                    self.outputs(i);
                }
            } else if let Some((_, i)) = next_timer {
                self.feed(i, Input::Timeout, t);
                self.outputs(i);
            }
        }
        self.now = until;
    }

    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    pub fn input(&mut self, i: usize, input: Input) {
        let now = self.now;
        self.feed(i, input, now);
        self.outputs(i);
    }

    /// The peer stops at once (kill -9): its connections drop, its store stays.
    pub fn crash(&mut self, i: usize) {
        self.up[i] = false;
        self.lives[i] += 1;
        let gone: Vec<(usize, usize)> = self.connected.iter().filter(|(a, b)| *a == i || *b == i).copied().collect();
        let at = self.now + Duration::from_millis(LINK_MS);
        for (a, b) in gone {
            self.connected.remove(&(a, b));
            let other = if a == i { b } else { a };
            let me = self.peers[i].id();
            self.push(at, other, Input::ConnectionDown { peer: me });
        }
    }

    /// The peer starts again on its store.
    pub fn restart(&mut self, i: usize) {
        let now = self.now;
        let mut setup = self.setups[i].clone();
        setup.rng_seed = setup.rng_seed.wrapping_add(self.lives[i]);
        self.peers[i] = Peer::new(setup, now);
        self.up[i] = true;
        let restored = self.stores[i].restored(self.now);
        self.input(i, Input::Restored(restored));
    }
}
