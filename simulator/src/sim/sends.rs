//! The `send` workload and what it measures: application messages handed to the senders' cores
//! ([`Command::Send`]) at Poisson times, followed through the durable stores to the receivers'
//! inboxes, and the report's `sends` section.
//!
//! A message is *delivered* when its receiver's core persists it to the inbox
//! ([`Persist::Inbox`], applied to the peer's store at once, as the daemon commits it before the
//! acknowledgement goes out). The store refuses an id it already holds and counts it: that is a
//! *duplicate*, which must never happen. Nothing here is protocol logic: the workload only picks
//! senders, receivers and payloads, and watches events and persist outputs.

use super::engine::Ev;
use super::{EPOCH_MS, Life, Simulation};
use crate::net::{PeerIx, ms};
use crate::report::{SendClassReport, SendsReport, Stats};
use crate::scenario::{Scenario, ScenarioError, SendBy, SendTo};
use ocd_core::proto::{
    Abandon, AppProtocol, Applied, Command, DeliveryClass, DetRng, InboxEntry, Input, MessageId, NewMessage,
    SendRefusal, Target,
};
use std::collections::BTreeMap;

/// Ids of the `send` workload's commands start here; smaller ids are free for
/// [`Simulation::command`].
pub const WORKLOAD_SEND_BASE: u64 = 1 << 48;
/// Messages accepted within this long before the end (or whose sender or receiver restarted in
/// it) are `pending_at_end`, not `lost`, when undelivered: four retry intervals and a minute to
/// come back.
const SETTLE_MS: u64 = 120_000;
/// Lost messages described in the report.
const LOST_LISTED: usize = 10;

/// One `send` workload, resolved.
struct SendWork {
    from: u64,
    until: u64,
    rate_per_s: f64,
    warmup_ms: u64,
    class: DeliveryClass,
    to: SendTo,
    by: SendBy,
    payload_bytes: usize,
    /// Node-role peers that send.
    senders: Vec<PeerIx>,
    /// Node-role peers that receive.
    receivers: Vec<PeerIx>,
    /// `to = "partners"`: each sender's partners (by sender), drawn from `receivers`.
    partners: BTreeMap<PeerIx, Vec<PeerIx>>,
    /// Messages of this workload so far (picks the protocol in turn).
    count: u64,
}

/// A send command in flight (not yet accepted or refused).
struct PendingSend {
    sender: PeerIx,
    receiver: PeerIx,
    class: DeliveryClass,
}

/// An accepted message, followed to its end.
struct SentMsg {
    cmd: u64,
    sender: PeerIx,
    receiver: PeerIx,
    class: DeliveryClass,
    accepted_at: u64,
    delivered_at: Option<u64>,
    acknowledged: bool,
    abandoned: bool,
    /// A partition separated sender and receiver while it was undelivered.
    partitioned: bool,
    /// The sender crashed or restarted while it was undelivered.
    sender_went_down: bool,
}

/// The scenario's `send` workloads, their messages and counters.
pub(super) struct SendWorkload {
    work: Vec<SendWork>,
    rng: DetRng,
    pending: BTreeMap<u64, PendingSend>,
    msgs: BTreeMap<MessageId, SentMsg>,
    next_id: u64,
    refused: [u64; 2],
    refusals: BTreeMap<String, u64>,
    duplicates: [u64; 2],
    /// The last heal of a partition (absolute).
    last_heal: Option<u64>,
}

fn class_ix(c: DeliveryClass) -> usize {
    usize::from(c != DeliveryClass::Critical)
}

impl SendWorkload {
    /// Resolves every `send` workload of `scenario` (`end`: the run's end, absolute).
    pub(super) fn build(scenario: &Scenario, end: u64) -> Result<SendWorkload, ScenarioError> {
        let nodes: Vec<PeerIx> =
            (0..scenario.peer_count()).filter(|p| scenario.roles_of(*p).node).map(|p| p as PeerIx).collect();
        let resolve = |ctx: &str, t: &[String]| -> Result<Vec<PeerIx>, ScenarioError> {
            if t.is_empty() {
                return Ok(nodes.clone());
            }
            let mut v: Vec<PeerIx> = scenario
                .resolve(ctx, t)?
                .into_iter()
                .filter(|p| scenario.roles_of(*p).node)
                .map(|p| p as PeerIx)
                .collect();
            v.sort_unstable();
            v.dedup();
            Ok(v)
        };
        let mut work = Vec::new();
        for (i, w) in scenario.workloads.iter().enumerate() {
            let Some(s) = &w.send else { continue };
            let ctx = format!("workload #{}", i + 1);
            let senders = resolve(&ctx, &s.senders)?;
            let receivers = resolve(&ctx, &s.targets)?;
            let mut partners = BTreeMap::new();
            if s.to == SendTo::Partners {
                for &p in &senders {
                    let mut others: Vec<PeerIx> = receivers.iter().copied().filter(|r| *r != p).collect();
                    let mut r = DetRng::new(scenario.seed, &format!("ocd-sim partners {i} {p}"));
                    r.shuffle(&mut others);
                    others.truncate(s.partners);
                    partners.insert(p, others);
                }
            }
            let until = s.until.map_or(end, |u| (EPOCH_MS + ms(u)).min(end));
            work.push(SendWork {
                from: EPOCH_MS + ms(s.from),
                until,
                rate_per_s: s.rate_per_s,
                warmup_ms: ms(s.warmup),
                class: s.class,
                to: s.to,
                by: s.by,
                payload_bytes: s.payload_bytes,
                senders,
                receivers,
                partners,
                count: 0,
            });
        }
        Ok(SendWorkload {
            work,
            rng: DetRng::new(scenario.seed, "ocd-sim sends"),
            pending: BTreeMap::new(),
            msgs: BTreeMap::new(),
            next_id: WORKLOAD_SEND_BASE,
            refused: [0; 2],
            refusals: BTreeMap::new(),
            duplicates: [0; 2],
            last_heal: None,
        })
    }

    /// Whether the scenario has no `send` workload.
    pub(super) fn is_empty(&self) -> bool {
        self.work.is_empty()
    }

    /// The first tick of each workload (absolute times).
    pub(super) fn first_ticks(&mut self) -> Vec<(u64, u32)> {
        let mut v = Vec::new();
        for i in 0..self.work.len() {
            let at = self.work[i].from + self.gap(i);
            if at <= self.work[i].until {
                v.push((at, i as u32));
            }
        }
        v
    }

    fn gap(&mut self, i: usize) -> u64 {
        super::workloads::poisson_gap(&mut self.rng, self.work[i].rate_per_s)
    }
}

/// The protocol of the `n`-th message of a workload of `class`, in turn.
fn protocol(class: DeliveryClass, n: u64) -> AppProtocol {
    let of: Vec<AppProtocol> = AppProtocol::ALL.into_iter().filter(|p| p.class() == class).collect();
    of[(n % of.len() as u64) as usize]
}

/// The payload of command `cmd`: its id, then filler, `len` bytes in all (at least 8).
fn payload(cmd: u64, len: usize) -> Vec<u8> {
    let mut v = cmd.to_le_bytes().to_vec();
    v.resize(len.max(8), 0x5a);
    v
}

impl Simulation {
    /// Schedules the first tick of every `send` workload.
    pub(super) fn schedule_sends(&mut self) {
        for (at, i) in self.sends.first_ticks() {
            self.schedule(at, Ev::SendTick(i));
        }
    }

    /// Send workload `i` hands a message to a sender, and schedules its next.
    pub(super) fn send_tick(&mut self, i: usize) {
        self.events += 1;
        self.start_workload_send(i);
        let next = self.now + self.sends.gap(i);
        if next <= self.sends.work[i].until {
            self.schedule(next, Ev::SendTick(i as u32));
        }
    }

    /// Whether `q` may send: alive, honest, started `warmup` ago.
    fn send_eligible(&self, q: PeerIx, warmup_ms: u64) -> bool {
        let sp = &self.peers[q as usize];
        sp.honest() && sp.life == Life::Alive && sp.started_at.is_some_and(|t| self.now.saturating_sub(t) >= warmup_ms)
    }

    fn start_workload_send(&mut self, i: usize) {
        let w = &self.sends.work[i];
        let senders: Vec<PeerIx> = w.senders.iter().copied().filter(|q| self.send_eligible(*q, w.warmup_ms)).collect();
        if senders.is_empty() {
            return;
        }
        let sender = senders[self.sends.rng.below(senders.len() as u64) as usize];
        let w = &self.sends.work[i];
        let pool = match w.to {
            SendTo::Any => &w.receivers,
            SendTo::Partners => w.partners.get(&sender).unwrap_or(&w.receivers),
        };
        // Receivers may be down or partitioned; only honest ones, never the sender.
        let receivers: Vec<PeerIx> =
            pool.iter().copied().filter(|r| *r != sender && self.peers[*r as usize].honest()).collect();
        if receivers.is_empty() {
            return;
        }
        let receiver = receivers[self.sends.rng.below(receivers.len() as u64) as usize];
        let w = &mut self.sends.work[i];
        let (class, n, len, by) = (w.class, w.count, w.payload_bytes, w.by);
        w.count += 1;
        let cmd = self.sends.next_id;
        self.sends.next_id += 1;
        let to = match by {
            SendBy::Peer => Target::Peer(self.ids[receiver as usize]),
            SendBy::Did => Target::Did(self.peers[receiver as usize].setup.did.clone()),
        };
        let message = NewMessage {
            to,
            protocol: protocol(class, n),
            datatype: None,
            user: "sim".into(),
            payload: payload(cmd, len),
        };
        self.sends.pending.insert(cmd, PendingSend { sender, receiver, class });
        self.trace.bytes(b"send");
        self.trace.u64(self.now);
        self.trace.u32(sender);
        self.trace.u32(receiver);
        self.trace.u64(cmd);
        self.handle(sender, Input::Command(Command::Send { id: cmd, message }), false);
    }

    // ---- what the cores tell ----

    pub(super) fn on_app_accepted(&mut self, p: PeerIx, cmd: u64, message: MessageId) {
        let Some(s) = self.sends.pending.remove(&cmd) else { return };
        if s.sender != p {
            self.violation(format!("{}: accepted a send command given to {}", self.name(p), self.name(s.sender)));
            return;
        }
        let partitioned = !self.net.reachable(s.sender, s.receiver);
        self.sends.msgs.insert(
            message,
            SentMsg {
                cmd,
                sender: s.sender,
                receiver: s.receiver,
                class: s.class,
                accepted_at: self.now,
                delivered_at: None,
                acknowledged: false,
                abandoned: false,
                partitioned,
                sender_went_down: false,
            },
        );
    }

    pub(super) fn on_app_refused(&mut self, cmd: u64, reason: SendRefusal) {
        let Some(s) = self.sends.pending.remove(&cmd) else { return };
        self.sends.refused[class_ix(s.class)] += 1;
        *self.sends.refusals.entry(format!("{reason:?}")).or_default() += 1;
    }

    pub(super) fn on_app_delivered(&mut self, p: PeerIx, message: MessageId) {
        if let Some(m) = self.sends.msgs.get_mut(&message)
            && m.sender == p
        {
            m.acknowledged = true;
        }
    }

    pub(super) fn on_app_abandoned(&mut self, message: MessageId, reason: Abandon) {
        if let Some(m) = self.sends.msgs.get_mut(&message) {
            m.abandoned = true;
            if m.class == DeliveryClass::Critical && matches!(reason, Abandon::Retries) {
                let msg = format!("critical message {message} abandoned after retries");
                self.violation(msg);
            }
        }
    }

    /// Peer `p` appended `entry` to its inbox (`applied`: what its store did with it).
    pub(super) fn on_inbox(&mut self, p: PeerIx, entry: &InboxEntry, applied: Applied) {
        let now = self.now;
        let Some(m) = self.sends.msgs.get_mut(&entry.id) else { return };
        let ci = class_ix(m.class);
        if applied == Applied::DuplicateInbox {
            self.sends.duplicates[ci] += 1;
            let msg = format!("{}: message {} appended to the inbox twice", self.peers[p as usize].name, entry.id);
            self.violation(msg);
            return;
        }
        let intact = entry.payload.get(..8) == Some(&m.cmd.to_le_bytes()[..]) && entry.protocol.class() == m.class;
        let (receiver, cmd) = (m.receiver, m.cmd);
        if m.delivered_at.is_none() {
            m.delivered_at = Some(now);
        }
        if receiver != p || !intact {
            let msg = format!(
                "{}: message {} (command {cmd}) delivered to the wrong peer or altered",
                self.peers[p as usize].name, entry.id
            );
            self.violation(msg);
        }
    }

    /// Peer `p` crashed or restarted: its undelivered moderate messages are gone (they are not
    /// durable), and every undelivered message it sent waited for it.
    pub(super) fn on_sender_down(&mut self, p: PeerIx) {
        for m in self.sends.msgs.values_mut() {
            if m.sender == p && m.delivered_at.is_none() {
                m.sender_went_down = true;
            }
        }
    }

    /// A partition cut the network: undelivered messages across it waited for the heal.
    pub(super) fn on_partition(&mut self) {
        let net = &self.net;
        for m in self.sends.msgs.values_mut() {
            if m.delivered_at.is_none() && !net.reachable(m.sender, m.receiver) {
                m.partitioned = true;
            }
        }
    }

    /// Every partition healed.
    pub(super) fn on_heal(&mut self) {
        self.sends.last_heal = Some(self.now);
    }

    // ---- the report ----

    pub(super) fn sends_report(&mut self) -> SendsReport {
        let end = self.now;
        let mut classes = [SendClassReport::default(), SendClassReport::default()];
        let mut lat: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
        let mut ret: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
        let mut heal: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
        for (id, m) in &self.sends.msgs {
            let ci = class_ix(m.class);
            let c = &mut classes[ci];
            c.sent += 1;
            c.acknowledged += u64::from(m.acknowledged);
            let (sp, rp) = (&self.peers[m.sender as usize], &self.peers[m.receiver as usize]);
            if let Some(at) = m.delivered_at {
                c.delivered += 1;
                lat[ci].push(at - m.accepted_at);
                // When the path returned: the later restart of either end, or the heal.
                let restart = [rp.started_at, sp.started_at]
                    .into_iter()
                    .flatten()
                    .filter(|t| *t > m.accepted_at && *t <= at)
                    .max();
                let healed = self.sends.last_heal.filter(|h| m.partitioned && *h > m.accepted_at && *h <= at);
                match (restart, healed) {
                    (Some(r), h) if h.is_none_or(|h| r >= h) => ret[ci].push(at - r),
                    (_, Some(h)) => heal[ci].push(at - h),
                    _ => {}
                }
                continue;
            }
            if m.abandoned {
                c.abandoned += 1;
                continue;
            }
            if m.class != DeliveryClass::Critical && m.sender_went_down {
                c.dropped_by_crash += 1;
                continue;
            }
            let alive = sp.life == Life::Alive && rp.life == Life::Alive;
            let settle_from = end.saturating_sub(SETTLE_MS);
            let recent = m.accepted_at >= settle_from
                || sp.started_at.is_some_and(|t| t >= settle_from)
                || rp.started_at.is_some_and(|t| t >= settle_from)
                || (m.partitioned && self.sends.last_heal.is_none_or(|h| h >= settle_from));
            if !alive || recent {
                c.pending_at_end += 1;
                continue;
            }
            c.lost += 1;
            if c.lost_examples.len() < LOST_LISTED {
                let queued = sp.peer.as_ref().and_then(|q| q.app_queue());
                let dests = queued.map_or(0, |q| q.destinations.len());
                c.lost_examples.push(format!(
                    "{id} {} → {}, accepted at {} s, acknowledged {}, sender queue destinations {dests}",
                    sp.name,
                    rp.name,
                    (m.accepted_at - EPOCH_MS) / 1000,
                    m.acknowledged
                ));
            }
        }
        for ci in 0..2 {
            classes[ci].refused = self.sends.refused[ci];
            classes[ci].duplicates = self.sends.duplicates[ci];
            classes[ci].latency_ms = Stats::of(&mut lat[ci]);
            classes[ci].after_return_count = ret[ci].len() as u64;
            classes[ci].after_return_ms = Stats::of(&mut ret[ci]);
            classes[ci].after_heal_count = heal[ci].len() as u64;
            classes[ci].after_heal_ms = Stats::of(&mut heal[ci]);
        }
        let [critical, moderate] = classes;
        SendsReport {
            critical,
            moderate,
            refusals: std::mem::take(&mut self.sends.refusals),
            settle_ms: SETTLE_MS,
            queued_at_end: self.peers.iter().map(|p| p.store.queued() as u64).sum(),
        }
    }
}
