//! Sending (spec D §5.6, §7): ids from a durable sequence, the DNT queue per destination, one
//! attempt pipeline per destination (resolve through the DHT, send, wait for acknowledgements),
//! retries every `dnt_retry_interval`, and the end of each message — delivered or abandoned.

use super::PeerBook;
use super::messages::{AppMessage, AppRefusal, Deliver};
use super::{
    Abandon, AppOut, DeliveryClass, MessageId, NewMessage, QueueView, QueuedMessage, SendRefusal, Target, emit,
};
use crate::proto::config::Config;
use crate::proto::durable::{Forget, Persist};
use crate::proto::identity::{PeerAddr, PeerId};
use crate::proto::record::PeerRecord;
use crate::proto::time::Timestamp;
use crate::proto::{Action, Event};
use std::collections::{BTreeMap, BTreeSet};

/// Sequence numbers reserved (persisted) at a time.
const SEQ_BLOCK: u64 = 1024;
/// Delay before resolving again when no indexer could be asked.
const NO_INDEXER_RETRY: std::time::Duration = std::time::Duration::from_secs(1);
/// Messages of one destination waiting for their acknowledgement at once.
const WINDOW: usize = 16;

#[derive(Debug)]
struct Outgoing {
    msg: QueuedMessage,
    class: DeliveryClass,
    /// The application's id for it (0 for restored messages).
    cmd: u64,
    /// Attempts that failed.
    failures: u32,
    /// Sent to this peer, acknowledgement due by then.
    pending_ack: Option<(PeerId, Timestamp)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DestState {
    /// Waiting for `next_at`.
    Idle,
    /// The destination is being resolved.
    Resolving(u64),
    /// Messages go to this peer.
    Sending(PeerId),
}

#[derive(Debug)]
struct Dest {
    queued: BTreeSet<u64>,
    next_at: Timestamp,
    /// When the current (or last) attempt started: the next one starts `dnt_retry_interval`
    /// after it, however long this one took to fail (a connect or acknowledgement timeout), so
    /// attempts are 15 s apart start to start, as the seed's ticker.
    attempt_at: Timestamp,
    /// Attempts in a row that failed.
    failures: u32,
    state: DestState,
}

#[derive(Debug)]
pub(super) struct Outbox {
    me: PeerId,
    epoch: u64,
    next_seq: u64,
    reserved: u64,
    record: Option<PeerRecord>,
    msgs: BTreeMap<u64, Outgoing>,
    dests: BTreeMap<Target, Dest>,
    tokens: BTreeMap<u64, Target>,
    next_token: u64,
}

impl Outbox {
    pub(super) fn new(me: PeerId, epoch: u64) -> Outbox {
        Outbox {
            me,
            epoch,
            next_seq: 1,
            reserved: 1,
            record: None,
            msgs: BTreeMap::new(),
            dests: BTreeMap::new(),
            tokens: BTreeMap::new(),
            next_token: 0,
        }
    }

    pub(super) fn set_record(&mut self, record: PeerRecord) {
        self.record = Some(record);
    }

    pub(super) fn restore(
        &mut self,
        sequence: Option<(u64, u64)>,
        queue: Vec<super::QueuedMessage>,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        // A store handed back after messages were already numbered (a host bug) keeps our epoch.
        if let Some((epoch, reserved)) = sequence
            && self.next_seq == 1
        {
            self.epoch = epoch;
            self.next_seq = reserved.max(1);
            self.reserved = self.next_seq;
        }
        for msg in queue {
            let seq = msg.id.seq;
            if msg.id.sender != self.me || self.msgs.contains_key(&seq) {
                continue;
            }
            let class = msg.protocol.class();
            let dest = self.dests.entry(msg.to.clone()).or_insert_with(|| Dest::new(now));
            dest.queued.insert(seq);
            self.msgs.insert(seq, Outgoing { msg, class, cmd: 0, failures: 0, pending_ack: None });
        }
        let _ = out;
    }

    /// The lowest unsettled sequence of our epoch (every one below is acknowledged or abandoned).
    fn floor(&self) -> u64 {
        self.msgs.iter().find(|(_, m)| m.msg.id.epoch == self.epoch).map_or(self.next_seq, |(s, _)| *s)
    }

    pub(super) fn send(
        &mut self,
        config: &Config,
        book: &PeerBook,
        cmd: u64,
        m: NewMessage,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let per_dest = self.dests.get(&m.to).map_or(0, |d| d.queued.len());
        let refusal = if m.payload.len().saturating_add(m.user.len()) > config.app_max_payload {
            Some(SendRefusal::TooLarge)
        } else if matches!(&m.to, Target::Peer(p) if *p == self.me || book.is_blocked(p)) {
            Some(SendRefusal::BadDestination)
        } else if self.msgs.len() >= config.dnt_queue_max {
            Some(SendRefusal::QueueFull)
        } else if per_dest >= config.dnt_queue_max_per_destination {
            Some(SendRefusal::DestinationFull)
        } else {
            None
        };
        if let Some(reason) = refusal {
            emit(out, AppOut::Event(Event::AppSendRefused { id: cmd, reason }));
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.next_seq > self.reserved {
            self.reserved = self.next_seq + SEQ_BLOCK;
            emit(out, AppOut::Persist(Persist::Sequence { epoch: self.epoch, reserved: self.reserved }));
        }
        let id = MessageId { sender: self.me, epoch: self.epoch, seq };
        let class = m.protocol.class();
        let msg = QueuedMessage {
            id,
            to: m.to,
            protocol: m.protocol,
            datatype: m.datatype,
            user: m.user,
            payload: m.payload,
            accepted_at: now,
        };
        if class == DeliveryClass::Critical {
            emit(out, AppOut::Persist(Persist::Queued(msg.clone())));
        }
        emit(out, AppOut::Event(Event::AppAccepted { id: cmd, message: id, class }));
        let to = msg.to.clone();
        let dest = self.dests.entry(to.clone()).or_insert_with(|| Dest::new(now));
        dest.queued.insert(seq);
        self.msgs.insert(seq, Outgoing { msg, class, cmd, failures: 0, pending_ack: None });
        self.kick(config, &to, now, out);
    }

    /// Moves a destination's pipeline on: resolve when due, or send what the window allows.
    fn kick(&mut self, config: &Config, to: &Target, now: Timestamp, out: &mut Vec<Action>) {
        let Some(dest) = self.dests.get_mut(to) else { return };
        match dest.state {
            DestState::Idle if dest.next_at <= now && !dest.queued.is_empty() => {
                self.next_token += 1;
                let token = self.next_token;
                dest.state = DestState::Resolving(token);
                dest.attempt_at = now;
                self.tokens.insert(token, to.clone());
                emit(out, AppOut::Resolve { token, key: to.key() });
            }
            DestState::Sending(peer) => self.fill_window(config, to, peer, now, out),
            _ => {}
        }
    }

    fn fill_window(&mut self, config: &Config, to: &Target, peer: PeerId, now: Timestamp, out: &mut Vec<Action>) {
        let Some(dest) = self.dests.get(to) else { return };
        // After a failure only the oldest goes (a probe); the rest follow its acknowledgement.
        let window = if dest.failures > 0 { 1 } else { WINDOW };
        let in_flight =
            dest.queued.iter().filter(|s| self.msgs.get(s).is_some_and(|m| m.pending_ack.is_some())).count();
        let next: Vec<u64> = dest
            .queued
            .iter()
            .filter(|s| self.msgs.get(s).is_some_and(|m| m.pending_ack.is_none()))
            .take(window.saturating_sub(in_flight))
            .copied()
            .collect();
        let floor = self.floor();
        for seq in next {
            let Some(m) = self.msgs.get_mut(&seq) else { continue };
            m.pending_ack = Some((peer, now + config.app_ack_timeout));
            if m.failures > 0 {
                emit(out, AppOut::Event(Event::AppRetry { message: m.msg.id, attempt: m.failures + 1 }));
            }
            let deliver = Deliver {
                id: m.msg.id,
                floor,
                protocol: m.msg.protocol,
                datatype: m.msg.datatype,
                user: m.msg.user.clone(),
                payload: m.msg.payload.clone(),
                record: self.record.clone(),
            };
            emit(out, AppOut::Send { to: peer, message: AppMessage::Deliver(Box::new(deliver)).into() });
        }
    }

    pub(super) fn on_resolved(
        &mut self,
        config: &Config,
        token: u64,
        (record, asked): (Option<PeerRecord>, bool),
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let Some(to) = self.tokens.remove(&token) else { return };
        let Some(dest) = self.dests.get_mut(&to) else { return };
        if dest.state != DestState::Resolving(token) {
            return;
        }
        if !asked {
            // No live indexer yet (just started): not the destination's failure; soon again.
            dest.state = DestState::Idle;
            dest.next_at = now + NO_INDEXER_RETRY;
            return;
        }
        match record.filter(|r| to.matches(r) && r.body.peer_id != self.me) {
            Some(r) => {
                let peer = r.body.peer_id;
                dest.state = DestState::Sending(peer);
                emit(out, AppOut::Learn(PeerAddr { id: peer, addrs: r.body.addrs.clone() }));
                self.fill_window(config, &to, peer, now, out);
            }
            None => self.fail(config, &to, false, now, out),
        }
    }

    pub(super) fn on_ack(
        &mut self,
        config: &Config,
        from: PeerId,
        id: MessageId,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let _ = config;
        if id.sender != self.me
            || !self.msgs.get(&id.seq).is_some_and(|m| m.msg.id == id && m.pending_ack.is_some_and(|(p, _)| p == from))
        {
            return;
        }
        let Some(m) = self.msgs.remove(&id.seq) else { return };
        if m.class == DeliveryClass::Critical {
            emit(out, AppOut::Forget(Forget::Queued(id)));
        }
        emit(
            out,
            AppOut::Event(Event::AppDelivered {
                message: id,
                to: from,
                attempts: m.failures + 1,
                accepted_at: m.msg.accepted_at,
            }),
        );
        let to = m.msg.to;
        if let Some(dest) = self.dests.get_mut(&to) {
            dest.queued.remove(&id.seq);
            dest.failures = 0;
            if dest.queued.is_empty() {
                self.dests.remove(&to);
                return;
            }
        }
        self.kick(config, &to, now, out);
    }

    pub(super) fn on_refused(
        &mut self,
        config: &Config,
        from: PeerId,
        id: MessageId,
        reason: AppRefusal,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let Some(m) = self.msgs.get(&id.seq) else { return };
        if m.msg.id != id || m.pending_ack.is_none_or(|(p, _)| p != from) {
            return;
        }
        let to = m.msg.to.clone();
        match reason {
            // Final: it will never be accepted as it is.
            AppRefusal::Blocked | AppRefusal::TooLarge | AppRefusal::NotServed => {
                self.abandon_msg(id.seq, Abandon::Refused(reason), out);
                if let Some(dest) = self.dests.get_mut(&to) {
                    dest.queued.remove(&id.seq);
                    if dest.queued.is_empty() {
                        self.dests.remove(&to);
                        return;
                    }
                }
                self.kick(config, &to, now, out);
            }
            // Perhaps later (it may learn who we are, or have room).
            AppRefusal::Unknown | AppRefusal::Busy => self.fail(config, &to, false, now, out),
        }
    }

    pub(super) fn on_unreachable(&mut self, config: &Config, peer: PeerId, now: Timestamp, out: &mut Vec<Action>) {
        let hit: Vec<Target> =
            self.dests.iter().filter(|(_, d)| d.state == DestState::Sending(peer)).map(|(t, _)| t.clone()).collect();
        for t in hit {
            self.fail(config, &t, true, now, out);
        }
    }

    /// The attempt to `to` failed (not resolved, unreachable, not acknowledged in time): every
    /// message queued for it counts a failure — the destination could not take any of them —
    /// moderate ones give up after `dnt_moderate_retries`, `search` at once; the rest wait for the
    /// retry.
    ///
    /// `link_lost`: the connection went down (or the dial failed) under the attempt. A message
    /// sent once (`search`) gets one more attempt, at once, the first time: the peer may have
    /// closed an idle connection just as we sent on it, which is no attempt at all (the receiver
    /// drops a second copy of one it got).
    fn fail(&mut self, config: &Config, to: &Target, link_lost: bool, now: Timestamp, out: &mut Vec<Action>) {
        let Some(dest) = self.dests.get_mut(to) else { return };
        dest.failures = dest.failures.saturating_add(1);
        dest.state = DestState::Idle;
        dest.next_at = (dest.attempt_at + config.dnt_retry_interval).max(now);
        let queued: Vec<u64> = dest.queued.iter().copied().collect();
        let mut gone = Vec::new();
        let mut again_now = false;
        for seq in queued {
            let Some(m) = self.msgs.get_mut(&seq) else { continue };
            m.pending_ack = None;
            m.failures = m.failures.saturating_add(1);
            let give_up = match m.class {
                DeliveryClass::Critical => false,
                DeliveryClass::Moderate => m.failures > config.dnt_moderate_retries,
                DeliveryClass::None => {
                    let retry = link_lost && m.failures == 1;
                    again_now |= retry;
                    !retry
                }
            };
            if give_up {
                gone.push(seq);
            }
        }
        if again_now {
            dest.next_at = now;
        }
        for seq in &gone {
            dest.queued.remove(seq);
        }
        if dest.queued.is_empty() {
            self.dests.remove(to);
        }
        for seq in gone {
            self.abandon_msg(seq, Abandon::Retries, out);
        }
        // The retry is already due when the attempt began a retry interval ago or more (a
        // destination sent to for long, or a clock that jumped): it goes now, not at a deadline
        // left at `now` for another round. An attempt begun at this instant waits its interval.
        // A message sent once whose link was lost retries at once (only once: it cannot loop).
        if self.dests.get(to).is_some_and(|d| d.next_at <= now && (d.attempt_at < now || again_now)) {
            self.kick(config, to, now, out);
        }
    }

    fn abandon_msg(&mut self, seq: u64, reason: Abandon, out: &mut Vec<Action>) {
        let Some(m) = self.msgs.remove(&seq) else { return };
        if m.class == DeliveryClass::Critical {
            emit(out, AppOut::Forget(Forget::Queued(m.msg.id)));
        }
        let _ = m.cmd;
        emit(out, AppOut::Event(Event::AppAbandoned { message: m.msg.id, reason }));
    }

    pub(super) fn poll_timeout(&self) -> Option<Timestamp> {
        let dest =
            self.dests.values().filter(|d| d.state == DestState::Idle && !d.queued.is_empty()).map(|d| d.next_at);
        let acks = self.msgs.values().filter_map(|m| m.pending_ack.map(|(_, t)| t));
        dest.chain(acks).min()
    }

    pub(super) fn handle_timeout(&mut self, config: &Config, now: Timestamp, out: &mut Vec<Action>) {
        let late: BTreeSet<Target> = self
            .msgs
            .values()
            .filter(|m| m.pending_ack.is_some_and(|(_, t)| t <= now))
            .map(|m| m.msg.to.clone())
            .collect();
        for t in late {
            self.fail(config, &t, false, now, out);
        }
        let due: Vec<Target> = self
            .dests
            .iter()
            .filter(|(_, d)| d.state == DestState::Idle && d.next_at <= now && !d.queued.is_empty())
            .map(|(t, _)| t.clone())
            .collect();
        for t in due {
            self.kick(config, &t, now, out);
        }
    }

    pub(super) fn view(&self) -> QueueView {
        let mut classes = Vec::new();
        for class in [DeliveryClass::Critical, DeliveryClass::Moderate, DeliveryClass::None] {
            let of: Vec<&Outgoing> = self.msgs.values().filter(|m| m.class == class).collect();
            let oldest = of.iter().map(|m| m.msg.accepted_at).min();
            classes.push((class, of.len(), oldest));
        }
        let destinations = self
            .dests
            .iter()
            .map(|(t, d)| {
                let next = (d.state == DestState::Idle).then_some(d.next_at);
                (t.clone(), d.queued.len(), next, d.failures)
            })
            .collect();
        QueueView { classes, destinations, epoch: self.epoch, next_seq: self.next_seq }
    }
}

impl Dest {
    fn new(now: Timestamp) -> Dest {
        Dest { queued: BTreeSet::new(), next_at: now, attempt_at: now, failures: 0, state: DestState::Idle }
    }
}
