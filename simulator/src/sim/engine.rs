//! The event loop: queued events, handing inputs to peers, and executing their outputs on the
//! simulated network.

use super::{EPOCH_MS, Life, Simulation};
use crate::net::{ConnectOutcome, PeerIx, SendOutcome};
use ocd_core::proto::wire::{self, Envelope, WireError};
use ocd_core::proto::{CloseReason, Input, Output, Peer, PeerAddr, PeerId, Persist, Timestamp};

/// A queued event. Kept at 24 bytes: message bytes wait in [`InFlight`], rare payloads are boxed.
#[derive(Debug)]
pub(super) enum Ev {
    Start(PeerIx),
    Wake {
        peer: PeerIx,
        generation: u64,
    },
    /// The encoded message is `in_flight[slot]`.
    Deliver {
        from: PeerIx,
        to: PeerIx,
        epoch: u64,
        slot: u32,
    },
    Establish {
        a: PeerIx,
        b: PeerIx,
        epoch: u64,
    },
    ConnectFailed {
        a: PeerIx,
        b: PeerIx,
        epoch: u64,
    },
    ConnectFailedUnknown {
        peer: PeerIx,
        target: Box<PeerId>,
    },
    Down {
        peer: PeerIx,
        other: PeerIx,
        epoch: u64,
    },
    /// `(a, b, epoch, partition generation)`.
    CutExpired(Box<(PeerIx, PeerIx, u64, u64)>),
    Fault(usize),
    Sample,
    FloodTick(PeerIx),
    /// The `lookup` workload `i` (in the order of the scenario's lookup workloads) starts a lookup.
    LookupTick(u32),
    /// The peer-id lookup that follows a finished DID lookup.
    LookupFollow {
        asker: PeerIx,
        target: PeerIx,
    },
    /// The `search` workload `i` (in the order of the scenario's search workloads) starts a search.
    SearchTick(u32),
    /// The `send` workload `i` (in the order of the scenario's send workloads) sends a message.
    SendTick(u32),
    /// The `resource_search` workload `i` starts a search.
    ResourceTick(u32),
}

/// Messages on their way, in reusable slots, so queue entries stay small: each with its encoding
/// (what the trace hashes and the byte counts measure) and the message itself.
///
/// The receiver is handed the sender's message rather than a decoding of its bytes: the wire
/// codec round-trips every envelope exactly (plain derived serde, floats as raw bits; checked on
/// every delivery in debug builds, and by the codec's own tests and fuzzers), so the receiver gets
/// the same value and the run the same trace, without a decode per message. A frame too large
/// for the wire is still decoded, to fail as it would on a real link.
///
/// A slot keeps its buffer when its message is delivered: the next message put there is encoded
/// into it, so the run stops allocating once it has as many buffers as messages in flight at its
/// busiest.
#[derive(Default)]
pub(super) struct InFlight {
    slots: Vec<(Vec<u8>, Option<Envelope>)>,
    free: Vec<u32>,
}

impl InFlight {
    /// Encodes `message` into a free slot, and keeps it there.
    fn put(&mut self, message: Envelope) -> u32 {
        let slot = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push((Vec::with_capacity(128), None));
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        if let Some((buf, kept)) = self.slots.get_mut(slot as usize) {
            wire::encode_into(&message, buf);
            *kept = Some(message);
        }
        slot
    }

    /// The bytes and the message in `slot`; hand the buffer back with [`InFlight::release`].
    pub(super) fn take(&mut self, slot: u32) -> (Vec<u8>, Option<Envelope>) {
        self.slots.get_mut(slot as usize).map(|(b, m)| (std::mem::take(b), m.take())).unwrap_or_default()
    }

    /// Whether `slot` holds its message, and its encoding fits the wire (the receiver is then
    /// handed the message as is; see [`received`]).
    pub(super) fn carries_whole(&self, slot: u32) -> bool {
        self.slots.get(slot as usize).is_some_and(|(b, m)| m.is_some() && b.len() <= wire::MAX_FRAME_LEN)
    }

    /// Frees `slot`, keeping `buf` (taken from it) for the next message.
    pub(super) fn release(&mut self, slot: u32, buf: Vec<u8>) {
        if let Some(s) = self.slots.get_mut(slot as usize) {
            s.0 = buf;
            self.free.push(slot);
        }
    }
}

/// What the receiver of `bytes` decodes: `sent`, the message they encode, unless the frame is too
/// large for the wire (then the decoder's error). Debug builds decode and compare every message.
pub(super) fn received(bytes: &[u8], sent: Option<Envelope>) -> Result<Envelope, WireError> {
    match sent {
        Some(m) if bytes.len() <= wire::MAX_FRAME_LEN => {
            debug_assert_eq!(wire::decode(bytes).as_ref(), Ok(&m), "the wire codec must round-trip every message");
            Ok(m)
        }
        _ => wire::decode(bytes),
    }
}

/// Hands `input` to `peer` at its local time `local` and collects its outputs into `buf`; returns
/// its next deadline in simulated time (`skew`: its clock's offset). The only part of an event
/// that touches nothing but the peer itself, so the parallel loop runs it on any thread.
pub(super) fn run_peer(
    peer: &mut Peer,
    input: Input,
    local: Timestamp,
    skew: i64,
    buf: &mut Vec<Output>,
) -> Option<u64> {
    peer.handle(input, local);
    while let Some(o) = peer.poll_output() {
        buf.push(o);
    }
    peer.poll_timeout().map(|t| t.0.saturating_add_signed(-skew))
}

/// What re-arming a peer's wake-up does.
pub(super) struct Rearm {
    /// The deadline was already due right after a timeout was handled: it is pushed one ms
    /// forward (and counted), or the peer would spin.
    pub(super) spun: bool,
    /// The new wake-up time when it changes (its generation then moves on; `Some(None)`: none).
    pub(super) set: Option<Option<u64>>,
}

/// Re-arming a wake-up armed at `wake_at` for the deadline `next`, after an input handled at
/// `now` (`is_timeout`: the input was the wake-up itself).
pub(super) fn plan_rearm(wake_at: Option<u64>, next: Option<u64>, now: u64, is_timeout: bool) -> Rearm {
    match next {
        Some(t) => {
            let spun = t <= now && is_timeout;
            let t = if spun { now + 1 } else { t }.max(now);
            Rearm { spun, set: (wake_at != Some(t)).then_some(Some(t)) }
        }
        None => Rearm { spun: false, set: Some(None) },
    }
}

impl Simulation {
    pub(super) fn schedule(&mut self, at: u64, ev: Ev) {
        match self.window.as_mut() {
            // Due inside the window being replayed: run in place, in order (see `parallel`).
            Some(w) if at < w.end => w.defer(at, ev),
            _ => self.queue.push(at, ev),
        }
    }

    /// Runs one popped event (`self.now` is already its time).
    pub(super) fn step(&mut self, ev: Ev) {
        match ev {
            Ev::Start(p) => {
                if self.peers[p as usize].life == Life::NotStarted {
                    self.events += 1;
                    self.start_peer(p);
                }
            }
            Ev::Wake { peer, generation } => self.wake(peer, generation),
            Ev::Deliver { from, to, epoch, slot } => self.arrive(from, to, epoch, slot),
            Ev::Establish { a, b, epoch } => self.establish(a, b, epoch),
            Ev::ConnectFailed { a, b, epoch } => self.connect_failed(a, b, epoch),
            Ev::ConnectFailedUnknown { peer, target } => {
                if self.alive(peer) {
                    self.events += 1;
                    self.netr.connect_failed += 1;
                    self.handle(peer, Input::ConnectFailed { peer: *target }, false);
                }
            }
            Ev::Down { peer, other, epoch } => {
                if self.net.end_down(peer, other, epoch) && self.alive(peer) {
                    self.events += 1;
                    let oid = self.ids[other as usize];
                    self.handle(peer, Input::ConnectionDown { peer: oid }, false);
                }
            }
            Ev::CutExpired(cut) => self.cut_expired(*cut),
            Ev::Fault(i) => {
                self.events += 1;
                self.fire_fault(i);
            }
            Ev::Sample => {
                self.events += 1;
                self.sample();
            }
            Ev::FloodTick(p) => self.flood_tick(p),
            Ev::LookupTick(i) => self.lookup_tick(i as usize),
            Ev::LookupFollow { asker, target } => self.lookup_follow(asker, target),
            Ev::SearchTick(i) => self.search_tick(i as usize),
            Ev::SendTick(i) => self.send_tick(i as usize),
            Ev::ResourceTick(i) => self.resource_tick(i as usize),
        }
    }

    /// A peer's wake-up, unless a later one replaced it.
    /// Peer `p`'s own time: simulated time shifted by its clock skew.
    pub(super) fn peer_now(&self, p: PeerIx) -> Timestamp {
        Timestamp(self.now.saturating_add_signed(self.peers[p as usize].skew_ms))
    }

    pub(super) fn wake(&mut self, peer: PeerIx, generation: u64) {
        if self.window.is_some() && self.replay_own_wake(peer, generation) {
            return;
        }
        let sp = &mut self.peers[peer as usize];
        if sp.life == Life::Alive && sp.wake_gen == generation {
            self.events += 1;
            sp.wake_at = None;
            self.handle(peer, Input::Timeout, true);
        }
    }

    /// A message reaches the end of its link, unless the link closed meanwhile.
    pub(super) fn arrive(&mut self, from: PeerIx, to: PeerIx, epoch: u64, slot: u32) {
        let (bytes, sent) = self.in_flight.take(slot);
        if self.net.is_open(to, from, epoch) {
            self.events += 1;
            self.deliver(from, to, &bytes, sent);
        }
        self.in_flight.release(slot, bytes);
    }

    /// A dial completes: both ends learn of the connection, the dialer first.
    fn establish(&mut self, a: PeerIx, b: PeerIx, epoch: u64) {
        let alive = self.alive(a) && self.alive(b);
        match self.net.establish(self.now, a, b, epoch, alive) {
            Ok(dialer) => {
                self.events += 1;
                let other = if dialer == a { b } else { a };
                let (did, oid) = (self.ids[dialer as usize], self.ids[other as usize]);
                self.handle(dialer, Input::ConnectionUp { peer: oid, addr: None, outbound: true }, false);
                self.handle(other, Input::ConnectionUp { peer: did, addr: None, outbound: false }, false);
            }
            Err(Some(fail_at)) => self.schedule(fail_at, Ev::ConnectFailed { a, b, epoch }),
            Err(None) => {}
        }
    }

    fn connect_failed(&mut self, a: PeerIx, b: PeerIx, epoch: u64) {
        if let Some(dialer) = self.net.fail(a, b, epoch) {
            self.events += 1;
            self.netr.connect_failed += 1;
            let other = if dialer == a { b } else { a };
            if self.alive(dialer) {
                let oid = self.ids[other as usize];
                self.handle(dialer, Input::ConnectFailed { peer: oid }, false);
            }
        }
    }

    /// A link cut by a partition times out: its alive ends see it go down.
    fn cut_expired(&mut self, (a, b, epoch, generation): (PeerIx, PeerIx, u64, u64)) {
        for p in self.net.cut_expired(a, b, epoch, generation) {
            if self.alive(p) {
                self.events += 1;
                let q = if p == a { b } else { a };
                let qid = self.ids[q as usize];
                self.handle(p, Input::ConnectionDown { peer: qid }, false);
            }
        }
    }

    pub(super) fn alive(&self, p: PeerIx) -> bool {
        self.peers[p as usize].life == Life::Alive
    }

    pub(super) fn start_peer(&mut self, p: PeerIx) {
        let now = self.now;
        let local = self.peer_now(p);
        let sp = &mut self.peers[p as usize];
        sp.peer = Some(Box::new(Peer::new(sp.setup.clone(), local)));
        if let Some(d) = self.dump.as_mut() {
            d.start(p, sp, local.0);
        }
        sp.life = Life::Alive;
        sp.started_at = Some(now);
        sp.members.clear();
        self.eligible_since[p as usize] = sp.eligible_since();
        // As the daemon: what the store holds comes back before anything else.
        let restored = (!sp.store.is_empty()).then(|| sp.store.restored(local));
        self.trace.bytes(b"start");
        self.trace.u64(now);
        self.trace.u32(p);
        self.trace.bytes(self.ids[p as usize].as_bytes());
        if let Some(r) = restored {
            self.trace.bytes(b"restored");
            self.trace.u64(r.queue.len() as u64);
            self.trace.u64(r.received.len() as u64);
            self.handle(p, Input::Restored(r), false);
        }
        self.handle(p, Input::Timeout, true);
    }

    /// Hands a delivered message to `to` (through the byzantine input filters): `sent`, what the
    /// bytes decode to (see [`InFlight`]).
    pub(super) fn deliver(&mut self, from: PeerIx, to: PeerIx, bytes: &[u8], sent: Option<Envelope>) {
        let decoded = received(bytes, sent);
        self.count_arrival(from, to, bytes, decoded.as_ref().ok().map(Envelope::kind_index));
        self.note_reached(from, to, &decoded);
        match decoded.map(|m| self.withhold(to, m)) {
            Ok(None) => self.netr.dropped_byzantine += 1,
            Ok(Some(message)) => {
                let fid = self.ids[from as usize];
                self.handle(to, Input::Received { from: fid, message }, false);
            }
            Err(e) => {
                let msg = format!(
                    "{}: undecodable message from {}: {e}",
                    self.peers[to as usize].name, self.peers[from as usize].name
                );
                self.violation(msg);
                self.close_link(to, from);
            }
        }
    }

    /// Counts and traces the arrival of `bytes` from `from` at `to` (`kind`: the message's kind,
    /// when it decodes).
    pub(super) fn count_arrival(&mut self, from: PeerIx, to: PeerIx, bytes: &[u8], kind: Option<usize>) {
        self.messages += 1;
        self.netr.bytes += bytes.len() as u64;
        self.trace.bytes(b"msg");
        self.trace.u64(self.now);
        self.trace.u32(from);
        self.trace.u32(to);
        self.trace.u64(bytes.len() as u64);
        self.trace.bytes(bytes);
        if let Some(k) = kind {
            self.delivered_bytes_by_kind[k] += bytes.len() as u64;
            self.count_delivered(k);
        }
    }

    /// Hands `input` to peer `p`, executes its outputs and re-arms its wake-up.
    pub(super) fn handle(&mut self, p: PeerIx, input: Input, is_timeout: bool) {
        let now = self.now;
        let skew = self.peers[p as usize].skew_ms;
        let local = self.peer_now(p);
        if !self.watch_log.is_empty() && self.watch_log.contains(&p) {
            self.log_input(p, &input);
        }
        if let Some(d) = self.dump.as_mut().filter(|_| self.peers[p as usize].peer.is_some()) {
            d.input(p, local.0, &input);
        }
        self.check_not_ahead(p);
        let mut buf = std::mem::take(&mut self.out_buf);
        let next = {
            let Some(peer) = self.peers[p as usize].peer.as_mut() else {
                self.out_buf = buf;
                return;
            };
            run_peer(peer, input, local, skew, &mut buf)
        };
        self.after_handle(p, &mut buf, next, now, is_timeout);
        self.out_buf = buf;
    }

    /// What follows a peer's handling of an input: its outputs are executed in order, its wake-up
    /// re-armed at `next`, and the fault trackers watching it updated.
    pub(super) fn after_handle(
        &mut self,
        p: PeerIx,
        buf: &mut Vec<Output>,
        next: Option<u64>,
        now: u64,
        is_timeout: bool,
    ) {
        for o in buf.drain(..) {
            self.execute(p, o);
        }
        self.rearm(p, next, now, is_timeout);
        if !self.peers[p as usize].watch.is_empty() {
            self.update_watch(p);
        }
    }

    /// Re-arms `p`'s wake-up at its deadline `next` (see [`plan_rearm`]).
    fn rearm(&mut self, p: PeerIx, next: Option<u64>, now: u64, is_timeout: bool) {
        let sp = &mut self.peers[p as usize];
        if sp.life != Life::Alive {
            return;
        }
        let plan = plan_rearm(sp.wake_at, next, now, is_timeout);
        self.spins += u64::from(plan.spun);
        if let Some(at) = plan.set {
            sp.wake_gen += 1;
            sp.wake_at = at;
            let generation = sp.wake_gen;
            if let Some(t) = at {
                self.schedule(t, Ev::Wake { peer: p, generation });
            }
        }
    }

    fn execute(&mut self, p: PeerIx, o: Output) {
        if !self.watch_log.is_empty() && self.watch_log.contains(&p) {
            self.log_output(p, &o);
        }
        match o {
            Output::Send { to, message } => self.execute_send(p, to, message),
            Output::Connect { peer } => self.execute_connect(p, peer),
            Output::Close { peer, reason } => self.execute_close(p, peer, reason),
            Output::Event(e) => self.on_event(p, e),
            Output::Persist(item) => self.persist(p, item),
            Output::Forget(item) => {
                self.trace.bytes(b"forget");
                self.trace.debug(&item);
                self.peers[p as usize].store.forget(item);
            }
        }
    }

    /// Commits `item` to `p`'s store at once (the daemon commits it before it executes the
    /// outputs that follow, so a crash never loses what another peer was told).
    fn persist(&mut self, p: PeerIx, item: Persist) {
        self.trace.bytes(b"persist");
        self.trace.u32(p);
        let inbox = match &item {
            Persist::Inbox { entry, .. } => {
                self.trace.bytes(entry.id.to_string().as_bytes());
                Some(entry.clone())
            }
            other => {
                self.trace.debug(other);
                None
            }
        };
        let applied = self.peers[p as usize].store.apply(item);
        if let Some(entry) = inbox {
            self.on_resource_answer(p, &entry);
            self.on_inbox(p, &entry, applied);
        }
    }

    fn execute_send(&mut self, p: PeerIx, to: PeerId, message: Envelope) {
        let message = if self.peers[p as usize].byz.is_none() {
            message
        } else {
            let Some(message) = self.byzantine_filter(p, message) else {
                self.netr.dropped_byzantine += 1;
                return;
            };
            message
        };
        match self.index.get(&to).copied() {
            Some(q) => self.send(p, q, message),
            None => {
                self.netr.sent += 1;
                self.netr.dropped_no_link += 1;
            }
        }
    }

    fn execute_connect(&mut self, p: PeerIx, peer: PeerAddr) {
        self.netr.connects += 1;
        self.trace.bytes(b"dial");
        self.trace.u64(self.now);
        self.trace.u32(p);
        self.trace.bytes(peer.id.as_bytes());
        match self.index.get(&peer.id).copied() {
            Some(q) => {
                let alive = self.alive(q);
                match self.net.connect(self.now, p, q, alive) {
                    ConnectOutcome::AlreadyLinked => {}
                    ConnectOutcome::Establish { at, epoch } => self.schedule(at, Ev::Establish { a: p, b: q, epoch }),
                    ConnectOutcome::Fail { at, epoch } => self.schedule(at, Ev::ConnectFailed { a: p, b: q, epoch }),
                }
            }
            None => {
                let at = self.now + self.net.connect_timeout_ms;
                self.schedule(at, Ev::ConnectFailedUnknown { peer: p, target: Box::new(peer.id) });
            }
        }
    }

    fn execute_close(&mut self, p: PeerIx, peer: PeerId, reason: CloseReason) {
        self.trace.bytes(b"close");
        self.trace.u64(self.now);
        self.trace.u32(p);
        self.trace.bytes(peer.as_bytes());
        self.trace.debug(&reason);
        if let Some(q) = self.index.get(&peer).copied() {
            self.close_link(p, q);
        }
    }

    pub(super) fn send(&mut self, from: PeerIx, to: PeerIx, message: Envelope) {
        self.netr.sent += 1;
        self.count_sent(&message);
        match self.net.send(self.now, from, to) {
            SendOutcome::Deliver { at, epoch } => {
                let slot = self.in_flight.put(message);
                self.schedule(at, Ev::Deliver { from, to, epoch, slot });
            }
            SendOutcome::NoLink => self.netr.dropped_no_link += 1,
            SendOutcome::Partitioned => self.netr.dropped_partition += 1,
            SendOutcome::Lost => self.netr.dropped_loss += 1,
        }
    }

    fn close_link(&mut self, from: PeerIx, to: PeerIx) {
        if let Some((at, epoch)) = self.net.close(self.now, from, to) {
            self.schedule(at, Ev::Down { peer: to, other: from, epoch });
        }
    }

    // ---- `--trace` logging ----

    fn log(&self, p: PeerIx, what: std::fmt::Arguments<'_>) {
        if self.watch_log.contains(&p) {
            eprintln!("{:>10.3}s {:<10} {what}", (self.now - EPOCH_MS) as f64 / 1000.0, self.peers[p as usize].name);
        }
    }

    fn log_input(&self, p: PeerIx, input: &Input) {
        match input {
            Input::Received { from, message } => {
                let f = self.index.get(from).map(|x| self.name(*x)).unwrap_or("?");
                self.log(p, format_args!("<- {f:<10} {message:?}"));
            }
            Input::Timeout => {}
            other => self.log(p, format_args!("input {other:?}")),
        }
    }

    fn log_output(&self, p: PeerIx, o: &Output) {
        match o {
            Output::Send { to, message } => {
                let t = self.index.get(to).map(|x| self.name(*x)).unwrap_or("?");
                self.log(p, format_args!("-> {t:<10} {message:?}"));
            }
            other => self.log(p, format_args!("output {other:?}")),
        }
    }

    /// Test hook: makes `a` dial `b` as if its core had asked to.
    #[cfg(test)]
    pub(super) fn dial(&mut self, a: PeerIx, b: PeerIx) {
        let id = self.ids[b as usize];
        self.execute(a, Output::Connect { peer: PeerAddr::id_only(id) });
    }
}
