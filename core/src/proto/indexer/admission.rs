//! Indexer-side abuse control: the burst guard, per-peer rate windows, strikes and bans.
//!
//! The seed's `behavior.go` (spec B §9, C §9) protects an indexer with two local mechanisms, both
//! kept here with the seed's constants (all [`Config`] fields):
//!
//! * a [`BurstGuard`] — a sliding log allowing at most `max_conn_per_window` (20) **new** sessions
//!   per `conn_window` (30 s) across all peers, against coordinated registration floods. A
//!   rejected attempt is not recorded, so a flood does not lock honest newcomers out for longer
//!   than the window;
//! * a [`BehaviourTable`] — per peer, sliding windows of `behaviour_window` (60 s) for heartbeats
//!   (5), record publishes (10) and record gets (50). The (max+1)-th event in a window is refused
//!   and costs one strike; a DID change or a bad signature costs two. At `strike_threshold` (3)
//!   strikes the peer is banned for `ban_duration` (10 min), and while banned its requests are
//!   refused without more strikes piling up (the seed pushed the ban out on every strike).
//!
//! Fixes over the seed:
//!
//! * **Strikes decay** (B §13.13, C §18.9): one strike is forgiven per `strike_decay` without a new
//!   strike, and a ban that ends clears the strikes — the ban was the sentence. In the seed strikes
//!   never decayed, so after one ban any single later violation (e.g. an honest node's nudge
//!   burst) banned the peer again.
//! * **The table is bounded** (C §18.8): at most `behaviour_table_max` peers. A new peer evicts the
//!   least recently active peer that is not banned; only when every entry is banned does the ban
//!   that ends first go, so bans survive a Sybil flood as long as possible. Read-only queries
//!   ([`BehaviourTable::is_banned`]) never create entries.
//! * **Bans survive a restart** (issue 15): the indexer persists each ban when it is set, and
//!   [`BehaviourTable::restore_ban`] takes it back, bounded by `ban_duration` from the restart.
//! * **Clean entries are pruned** at GC ([`BehaviourTable::prune`]): peers with no strike, no ban,
//!   no event left in any window and no session. A peer whose window still holds events is kept,
//!   so pruning never resets a rate limit early. GC visits only the entries it has work on (a
//!   list kept in step with them): a session without strike or ban is left alone, as GC would
//!   leave it anyway (issue 13: at 100 k sessions, visiting each was a miss per session).
//!
//! **One entry per peer for its session too** (issue 13): the table also holds the indexer's
//! sessions, each in its peer's entry, so that a heartbeat finds the behaviour record it counts
//! in and the session it refreshes with one probe of one table (one chain of cache misses at
//! 100 k sessions, where two tables cost two). The two parts keep their own lives: an entry is
//! *tracked* while it holds a behaviour record (what `len`, the bound, eviction and pruning see,
//! exactly as when the table held behaviour only), and holds a session while the indexer has one
//! for the peer. A peer with a session whose behaviour record was evicted has an untracked entry
//! (read as no record: no ban, no strike, no DID); a session closed while the record stays (a
//! ban, strikes, open windows) leaves a tracked entry without a session; an entry with neither
//! goes.

use super::Session;
use crate::proto::config::Config;
use crate::proto::identity::{Did, PeerId};
use crate::proto::seeded::{SeededMap, seeded_map};
use crate::proto::time::Timestamp;
use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::time::Duration;

/// The outcome of strikes given to a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Strike {
    /// The peer's strike count after this strike.
    pub strikes: u32,
    /// Set when this strike banned the peer: the end of the ban.
    pub banned_until: Option<Timestamp>,
}

/// Which per-peer rate window an event counts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RateKind {
    /// Heartbeats and probes (`max_hb_per_minute`).
    Heartbeat,
    /// Record publishes (`max_publish_per_minute`).
    Publish,
    /// Record gets and candidate requests (`max_get_per_minute`).
    Get,
}

impl fmt::Display for RateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RateKind::Heartbeat => "heartbeat",
            RateKind::Publish => "publish",
            RateKind::Get => "get",
        })
    }
}

/// Why a peer's request was not admitted.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AdmissionError {
    /// The peer is banned (no strike is added while banned).
    #[error("peer is banned until {until}")]
    Banned {
        /// End of the ban.
        until: Timestamp,
    },
    /// The peer exceeded a rate window and was struck.
    #[error("{kind} volume exceeded ({} strikes)", strike.strikes)]
    RateLimited {
        /// The window that overflowed.
        kind: RateKind,
        /// The strike it cost.
        strike: Strike,
    },
    /// The burst guard is full: too many new sessions lately, retry later.
    #[error("connection rate limit exceeded, retry later")]
    Busy,
    /// The peer claimed a DID other than the first one bound to it. Refused without strikes:
    /// its own key is no theft (a foreign claim, a record for a DID bound to *another* key, is
    /// struck by the record store).
    #[error("peer {peer} is bound to DID {bound}")]
    DidChanged {
        /// The peer.
        peer: PeerId,
        /// The DID bound to it.
        bound: Did,
    },
}

impl AdmissionError {
    /// The strike this refusal cost, if any.
    pub fn strike(&self) -> Option<Strike> {
        match self {
            AdmissionError::RateLimited { strike, .. } => Some(*strike),
            AdmissionError::Banned { .. } | AdmissionError::Busy | AdmissionError::DidChanged { .. } => None,
        }
    }
}

/// Global burst limit on new sessions (B §9.2): a sliding log of admitted session openings.
#[derive(Clone, Debug)]
pub struct BurstGuard {
    log: VecDeque<Timestamp>,
    max: usize,
    window: Duration,
}

impl BurstGuard {
    /// A guard admitting `config.max_conn_per_window` new sessions per `config.conn_window`.
    pub fn new(config: &Config) -> Self {
        BurstGuard { log: VecDeque::new(), max: config.max_conn_per_window, window: config.conn_window }
    }

    fn prune(&mut self, now: Timestamp) {
        // The window is half-open, (now − window, now]: an opening exactly `window` old has left.
        let cutoff = now.saturating_sub(self.window);
        while self.log.front().is_some_and(|t| *t <= cutoff) {
            self.log.pop_front();
        }
    }

    /// Whether a new session may open at `now`, without recording anything.
    pub fn check(&mut self, now: Timestamp) -> Result<(), AdmissionError> {
        self.prune(now);
        if self.log.len() >= self.max { Err(AdmissionError::Busy) } else { Ok(()) }
    }

    /// Records a session opened at `now` (after [`BurstGuard::check`] allowed it).
    pub fn record(&mut self, now: Timestamp) {
        self.prune(now);
        self.log.push_back(now);
    }

    #[cfg(test)]
    /// Checks and records in one step (the seed's `Allow()`); a refused attempt is not recorded.
    pub fn try_admit(&mut self, now: Timestamp) -> Result<(), AdmissionError> {
        self.check(now)?;
        self.log.push_back(now);
        Ok(())
    }

    #[cfg(test)]
    /// Openings currently in the window (as of the last call).
    pub fn in_window(&self) -> usize {
        self.log.len()
    }
}

/// The limits a [`BehaviourTable`] applies, copied from [`Config`].
#[derive(Clone, Debug)]
struct Limits {
    window: Duration,
    max_hb: usize,
    max_publish: usize,
    max_get: usize,
    strike_threshold: u32,
    ban_duration: Duration,
    strike_decay: Duration,
    max_entries: usize,
}

/// Events a rate window holds in the peer's entry itself; beyond, it moves to the heap.
const WINDOW_INLINE: usize = 5;

/// The times of the events in one rate window, oldest first. Up to [`WINDOW_INLINE`] of them are
/// held in the entry: a heartbeat's window (at most `max_hb_per_minute`, 5 by default) then
/// costs no allocation of its own, and counting a heartbeat reads no other cache line than the
/// entry's (issue 13). A window that grows beyond (a higher limit, or a burst of gets) spills to
/// a `VecDeque` and stays there.
#[derive(Clone, Debug)]
enum Window {
    /// `at[..len]`, oldest first.
    Inline { at: [Timestamp; WINDOW_INLINE], len: u8 },
    /// Spilled.
    Heap(VecDeque<Timestamp>),
}

impl Default for Window {
    fn default() -> Self {
        Window::Inline { at: [Timestamp::ZERO; WINDOW_INLINE], len: 0 }
    }
}

impl Window {
    fn len(&self) -> usize {
        match self {
            Window::Inline { len, .. } => usize::from(*len),
            Window::Heap(w) => w.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The oldest event.
    fn front(&self) -> Option<Timestamp> {
        match self {
            Window::Inline { at, len } => at.get(..usize::from(*len)).and_then(|a| a.first()).copied(),
            Window::Heap(w) => w.front().copied(),
        }
    }

    fn pop_front(&mut self) {
        match self {
            Window::Inline { at, len } => {
                if *len > 0 {
                    at.copy_within(1..usize::from(*len), 0);
                    *len -= 1;
                }
            }
            Window::Heap(w) => {
                w.pop_front();
            }
        }
    }

    fn push_back(&mut self, t: Timestamp) {
        match self {
            Window::Inline { at, len } => match at.get_mut(usize::from(*len)) {
                Some(slot) => {
                    *slot = t;
                    *len += 1;
                }
                None => {
                    let mut w: VecDeque<Timestamp> = at.iter().copied().collect();
                    w.push_back(t);
                    *self = Window::Heap(w);
                }
            },
            Window::Heap(w) => w.push_back(t),
        }
    }
}

/// What the table knows of one peer.
#[derive(Clone, Debug)]
struct Behaviour {
    /// The first DID this peer claimed.
    did: Option<Did>,
    heartbeats: Window,
    publishes: Window,
    gets: Window,
    strikes: u32,
    /// Last strike, or last forgiveness: decay counts from here.
    decay_from: Timestamp,
    banned_until: Option<Timestamp>,
    last_active: Timestamp,
    /// While not banned: the `last_active` under which the entry sits in `BehaviourTable::idle`,
    /// at most `last_active` (the index is renewed lazily, see [`BehaviourTable`]).
    indexed: Timestamp,
}

impl Behaviour {
    fn new(now: Timestamp) -> Self {
        Behaviour {
            did: None,
            heartbeats: Window::default(),
            publishes: Window::default(),
            gets: Window::default(),
            strikes: 0,
            decay_from: now,
            banned_until: None,
            last_active: now,
            indexed: now,
        }
    }

    /// Applies what time did since the last update: an ended ban clears the strikes, and one
    /// strike is forgiven per `strike_decay` without a new one. Strikes are frozen during a ban.
    fn refresh(&mut self, limits: &Limits, now: Timestamp) {
        if let Some(until) = self.banned_until {
            if until > now {
                return;
            }
            self.banned_until = None;
            self.strikes = 0;
            self.decay_from = now;
        }
        if self.strikes == 0 {
            self.decay_from = now;
            return;
        }
        let step = u128::from(crate::proto::time::duration_ms(limits.strike_decay));
        if step == 0 {
            self.strikes = 0;
            self.decay_from = now;
            return;
        }
        let elapsed = u128::from(now.0.saturating_sub(self.decay_from.0));
        let forgiven = elapsed / step;
        if forgiven > 0 {
            let forgiven_u32 = u32::try_from(forgiven).unwrap_or(u32::MAX);
            self.strikes = self.strikes.saturating_sub(forgiven_u32);
            let advanced = u64::try_from(forgiven * step).unwrap_or(u64::MAX);
            self.decay_from = Timestamp(self.decay_from.0.saturating_add(advanced));
            if self.strikes == 0 {
                self.decay_from = now;
            }
        }
    }

    fn banned_at(&self, now: Timestamp) -> Option<Timestamp> {
        self.banned_until.filter(|u| *u > now)
    }

    fn strike(&mut self, n: u32, limits: &Limits, now: Timestamp) -> Strike {
        self.strikes = self.strikes.saturating_add(n);
        self.decay_from = now;
        let mut banned_until = None;
        if self.strikes >= limits.strike_threshold {
            let until = now + limits.ban_duration;
            self.banned_until = Some(until);
            banned_until = Some(until);
        }
        Strike { strikes: self.strikes, banned_until }
    }

    fn window_mut(&mut self, kind: RateKind) -> &mut Window {
        match kind {
            RateKind::Heartbeat => &mut self.heartbeats,
            RateKind::Publish => &mut self.publishes,
            RateKind::Get => &mut self.gets,
        }
    }

    fn prune_windows(&mut self, limits: &Limits, now: Timestamp) {
        // Half-open, (now − window, now]: with the seed's closed window a node heartbeating exactly
        // every 20 s would hold 4 regular heartbeats in 60 s, leaving no room for a probe and a
        // nudge that `Config::validate` promises.
        let cutoff = now.saturating_sub(limits.window);
        for w in [&mut self.heartbeats, &mut self.publishes, &mut self.gets] {
            while w.front().is_some_and(|t| t <= cutoff) {
                w.pop_front();
            }
        }
    }

    fn is_clean(&self) -> bool {
        self.strikes == 0
            && self.banned_until.is_none()
            && self.heartbeats.is_empty()
            && self.publishes.is_empty()
            && self.gets.is_empty()
    }
}

/// One peer's entry: its behaviour record while tracked, its session while it has one (see the
/// module doc).
#[derive(Clone, Debug)]
pub(super) struct Entry {
    /// The behaviour record is in the table (counted, bounded, indexed in `idle` or `bans`).
    /// Untracked, `behaviour` is a blank record that nothing reads.
    tracked: bool,
    /// The peer is listed in `BehaviourTable::gc` (see [`Entry::needs_gc`]).
    in_gc: bool,
    behaviour: Behaviour,
    session: Option<Session>,
}

impl Entry {
    /// A new entry, not yet listed for GC (see [`BehaviourTable::sync_gc`]).
    fn new(tracked: bool, behaviour: Behaviour, session: Option<Session>) -> Self {
        Entry { tracked, in_gc: false, behaviour, session }
    }

    /// Whether GC ([`BehaviourTable::prune`]) has anything to do with this entry: a tracked
    /// behaviour record, unless it holds a session and has neither strike nor ban. For such an
    /// entry GC would only move `decay_from` (read only while strikes > 0, and reset by the
    /// strike that makes them so) and drop window events that have left their window (dropped
    /// anyway before the window is next counted), and it would keep the entry: nothing anyone
    /// reads. Skipping it spares GC a visit to every steady session each `gc_interval` — at
    /// 100 k sessions, a cache and TLB miss per session (issue 13).
    fn needs_gc(&self) -> bool {
        self.tracked
            && !(self.session.is_some() && self.behaviour.strikes == 0 && self.behaviour.banned_until.is_none())
    }

    /// Whether the peer is banned at `now`.
    pub(super) fn banned_at(&self, now: Timestamp) -> bool {
        self.tracked && self.behaviour.banned_at(now).is_some()
    }

    /// The peer's session.
    pub(super) fn session(&self) -> Option<&Session> {
        self.session.as_ref()
    }
}

/// How an entry is held in the table's buckets.
type Slot = Box<Entry>;

fn slot(e: Entry) -> Slot {
    Box::new(e)
}

/// A blank behaviour record, for an entry that holds only a session.
fn blank() -> Behaviour {
    Behaviour::new(Timestamp::ZERO)
}

/// Per-peer behaviour tracking (B §9.3–9.4, C §9.2): rate windows, strikes, bans, DID binding;
/// and the indexer's sessions, in the same entries (see the module doc).
///
/// Every mutating call takes `now`; decay and ban expiry are applied lazily on the peer's next
/// call and at [`BehaviourTable::prune`].
///
/// The eviction index (`idle`, by last activity) is renewed lazily too: a request leaves the
/// peer's entry where it is, so an entry's key may be earlier than its real last activity, never
/// later. Eviction pops the earliest key and, when that entry was active since, puts it back
/// under its real activity and looks again: the victim is the least recently active entry, as
/// with an exact index, and each request costs no index update.
#[derive(Clone, Debug)]
pub struct BehaviourTable {
    limits: Limits,
    /// Entries by peer: a hash table (about one cache miss per lookup in a large table); its order
    /// is never an output. Boxed: a table's spare buckets then cost a pointer each, not an entry.
    entries: SeededMap<PeerId, Slot>,
    /// Tracked entries (behaviour records): what the bound `max_entries` counts.
    tracked: usize,
    /// Entries holding a session.
    sessions: usize,
    /// `(indexed, peer)` of the entries not banned (as of their last update): eviction order,
    /// lazily renewed (see above).
    idle: BTreeSet<(Timestamp, PeerId)>,
    /// Banned entries, by ban end.
    bans: BTreeSet<(Timestamp, PeerId)>,
    /// The peers whose entry GC must visit ([`Entry::needs_gc`]), kept in step with their
    /// entries by [`BehaviourTable::sync_gc`]: GC visits these, not every entry. In steady state
    /// (sessions without strikes) it is empty.
    gc: BTreeSet<PeerId>,
}

impl BehaviourTable {
    /// An empty table with the limits of `config`; `key` keys its hash table (draw it from the
    /// owner's seeded RNG, see [`SeededState`](crate::proto::seeded::SeededState)).
    pub fn new(config: &Config, key: u64) -> Self {
        BehaviourTable {
            limits: Limits {
                window: config.behaviour_window,
                max_hb: config.max_hb_per_minute,
                max_publish: config.max_publish_per_minute,
                max_get: config.max_get_per_minute,
                strike_threshold: config.strike_threshold.max(1),
                ban_duration: config.ban_duration,
                strike_decay: config.strike_decay,
                max_entries: config.behaviour_table_max.max(1),
            },
            entries: seeded_map(key),
            tracked: 0,
            sessions: 0,
            idle: BTreeSet::new(),
            bans: BTreeSet::new(),
            gc: BTreeSet::new(),
        }
    }

    /// Peers tracked (behaviour records; sessions are not counted, see the module doc).
    pub fn len(&self) -> usize {
        self.tracked
    }

    /// `peer`'s behaviour record, if tracked.
    fn get(&self, peer: &PeerId) -> Option<&Behaviour> {
        self.entries.get(peer).filter(|e| e.tracked).map(|e| &e.behaviour)
    }

    #[cfg(test)]
    /// Whether `peer` is tracked.
    pub fn contains(&self, peer: &PeerId) -> bool {
        self.get(peer).is_some()
    }

    /// When `peer`'s ban ends, if it is banned at `now`. Never creates an entry.
    pub fn banned_until(&self, peer: &PeerId, now: Timestamp) -> Option<Timestamp> {
        self.get(peer).and_then(|e| e.banned_at(now))
    }

    /// Whether `peer` is banned at `now`. Never creates an entry.
    pub fn is_banned(&self, peer: &PeerId, now: Timestamp) -> bool {
        self.banned_until(peer, now).is_some()
    }

    /// `peer`'s strikes as of its last update (decay is applied on its next request and at GC).
    pub fn strikes(&self, peer: &PeerId) -> u32 {
        self.get(peer).map_or(0, |e| e.strikes)
    }

    #[cfg(test)]
    /// The first DID `peer` claimed, if any.
    pub fn bound_did(&self, peer: &PeerId) -> Option<&Did> {
        self.get(peer).and_then(|e| e.did.as_ref())
    }

    /// `peer`'s entry, if any: one probe of the table, which finds both its behaviour record and
    /// its session (a heartbeat's first lookup, see
    /// [`IndexerService::on_heartbeat`](super::IndexerService::on_heartbeat)).
    pub(super) fn entry(&self, peer: &PeerId) -> Option<&Entry> {
        self.entries.get(peer).map(|e| &**e)
    }

    /// `peer`'s session and its strikes (0 untracked), in one probe.
    pub(super) fn session_and_strikes(&self, peer: &PeerId) -> Option<(&PeerId, &Session, u32)> {
        let (p, e) = self.entries.get_key_value(peer)?;
        let strikes = if e.tracked { e.behaviour.strikes } else { 0 };
        e.session.as_ref().map(|s| (p, s, strikes))
    }

    /// `peer`'s session.
    pub(super) fn session(&self, peer: &PeerId) -> Option<&Session> {
        self.entries.get(peer).and_then(|e| e.session.as_ref())
    }

    /// `peer`'s session, to update.
    pub(super) fn session_mut(&mut self, peer: &PeerId) -> Option<&mut Session> {
        self.entries.get_mut(peer).and_then(|e| e.session.as_mut())
    }

    /// Whether `peer` has a session.
    pub(super) fn has_session(&self, peer: &PeerId) -> bool {
        self.session(peer).is_some()
    }

    /// Sessions held.
    pub(super) fn session_count(&self) -> usize {
        self.sessions
    }

    /// Every session, in the table's order (never an output: sort what is shown).
    pub(super) fn sessions(&self) -> impl Iterator<Item = (&PeerId, &Session)> + '_ {
        self.entries.iter().filter_map(|(p, e)| e.session.as_ref().map(|s| (p, s)))
    }

    /// Gives `peer` a session (it had none): in its entry, or in a new untracked one. Sessions are
    /// bounded by the indexer's capacity, not by `max_entries`, and evict nothing.
    pub(super) fn insert_session(&mut self, peer: PeerId, session: Session) {
        match self.entries.get_mut(&peer) {
            Some(e) => {
                if e.session.replace(session).is_none() {
                    self.sessions += 1;
                }
                Self::sync_gc(&mut self.gc, &peer, e);
            }
            None => {
                self.entries.insert(peer, slot(Entry::new(false, blank(), Some(session))));
                self.sessions += 1;
            }
        }
    }

    /// Takes `peer`'s session out; its entry goes unless its behaviour record is tracked.
    pub(super) fn remove_session(&mut self, peer: &PeerId) -> Option<Session> {
        let e = self.entries.get_mut(peer)?;
        let session = e.session.take()?;
        self.sessions -= 1;
        if e.tracked {
            Self::sync_gc(&mut self.gc, peer, e);
        } else {
            // An untracked entry is never listed for GC.
            self.entries.remove(peer);
        }
        Some(session)
    }

    #[cfg(test)]
    /// Counts a heartbeat or probe in `peer`'s window: `Banned`, or `RateLimited` (one strike) for
    /// the `(max_hb_per_minute + 1)`-th within `behaviour_window`.
    pub fn record_heartbeat(&mut self, peer: PeerId, now: Timestamp) -> Result<(), AdmissionError> {
        self.record(peer, RateKind::Heartbeat, now)
    }

    #[cfg(test)]
    /// Counts a record get (or candidates request) in `peer`'s window (limit `max_get_per_minute`).
    pub fn record_get(&mut self, peer: PeerId, now: Timestamp) -> Result<(), AdmissionError> {
        self.record(peer, RateKind::Get, now)
    }

    /// Counts an event of `kind` in `peer`'s window.
    pub fn record(&mut self, peer: PeerId, kind: RateKind, now: Timestamp) -> Result<(), AdmissionError> {
        let max = match kind {
            RateKind::Heartbeat => self.limits.max_hb,
            RateKind::Publish => self.limits.max_publish,
            RateKind::Get => self.limits.max_get,
        };
        self.with_entry(peer, now, |e, limits| {
            if let Some(until) = e.banned_at(now) {
                return Err(AdmissionError::Banned { until });
            }
            e.prune_windows(limits, now);
            let window = e.window_mut(kind);
            if window.len() >= max {
                // The refused event is not recorded.
                let strike = e.strike(1, limits, now);
                return Err(AdmissionError::RateLimited { kind, strike });
            }
            window.push_back(now);
            Ok(())
        })
    }

    /// Binds `did` to `peer` on first sight; a different DID later fails (the seed struck it
    /// twice, B §9.4, which banned an honest node whose `did` file was lost). A banned peer is
    /// refused.
    pub fn check_identity(&mut self, peer: PeerId, did: &Did, now: Timestamp) -> Result<(), AdmissionError> {
        self.with_entry(peer, now, |e, limits| {
            if let Some(until) = e.banned_at(now) {
                return Err(AdmissionError::Banned { until });
            }
            match &e.did {
                None => {
                    e.did = Some(did.clone());
                    Ok(())
                }
                Some(bound) if bound == did => Ok(()),
                Some(bound) => {
                    let _ = limits;
                    Err(AdmissionError::DidChanged { peer, bound: bound.clone() })
                }
            }
        })
    }

    /// Restores a ban persisted before a restart: `peer` is banned until `until` (an ended ban
    /// is ignored). No ban lasts longer than `ban_duration` from `now` — a longer one was written
    /// under a clock that has since gone back, or the store is damaged. The peer's strikes are at
    /// the threshold, as when it was banned (cleared when the ban ends). A ban already in force
    /// keeps the later end. The table's bound holds as for any new entry.
    pub fn restore_ban(&mut self, peer: PeerId, until: Timestamp, now: Timestamp) {
        if until <= now {
            return;
        }
        let until = until.min(now + self.limits.ban_duration);
        self.with_entry(peer, now, |e, limits| {
            e.strikes = e.strikes.max(limits.strike_threshold);
            e.decay_from = now;
            e.banned_until = Some(e.banned_at(now).map_or(until, |u| u.max(until)));
        });
    }

    /// A record signed badly by `peer`: two strikes (B §9.4: "near-immediate ban"). A banned peer
    /// gets no more strikes.
    pub fn record_bad_signature(&mut self, peer: PeerId, now: Timestamp) -> Strike {
        self.with_entry(peer, now, |e, limits| {
            if e.banned_at(now).is_some() {
                return Strike { strikes: e.strikes, banned_until: None };
            }
            e.strike(2, limits, now)
        })
    }

    /// GC (C §18.8): applies decay and ban expiry to every tracked entry, then drops the clean
    /// ones (no strike, no ban, empty windows) without a session. Returns how many went.
    pub fn prune(&mut self, now: Timestamp) -> usize {
        let BehaviourTable { limits, entries, tracked, idle, bans, gc, .. } = self;
        let before = *tracked;
        // Each entry is decided on its own, so the order does not matter; the indices follow the
        // entries that leave or whose ban ended. Only the entries listed in `gc` are visited: the
        // others are untracked (a session only: left as it is) or sessions without strike or ban,
        // which GC would leave as they are (see `Entry::needs_gc`).
        gc.retain(|peer| {
            let Some(entry) = entries.get_mut(peer) else {
                // Cannot happen: an entry leaves `gc` when it goes.
                return false;
            };
            if !entry.tracked {
                entry.in_gc = false;
                return false;
            }
            let has_session = entry.session.is_some();
            let e = &mut entry.behaviour;
            let banned = e.banned_until;
            e.refresh(limits, now);
            e.prune_windows(limits, now);
            let keep = !e.is_clean() || has_session;
            match (banned, e.banned_until) {
                (Some(until), None) => {
                    bans.remove(&(until, *peer));
                    if keep {
                        e.indexed = e.last_active;
                        idle.insert((e.indexed, *peer));
                    }
                }
                (Some(until), Some(_)) if !keep => {
                    bans.remove(&(until, *peer));
                }
                (None, _) if !keep => {
                    idle.remove(&(e.indexed, *peer));
                }
                _ => {}
            }
            if !keep {
                // Without a session (it would have been kept): the whole entry goes.
                *tracked -= 1;
                entries.remove(peer);
                return false;
            }
            entry.in_gc = entry.needs_gc();
            entry.in_gc
        });
        before - *tracked
    }

    /// Frees one slot: lapsed bans become ordinary entries, then the least recently active
    /// unbanned entry goes; only if every entry is banned does the ban that ends first go.
    fn make_room(&mut self, now: Timestamp) {
        while let Some(&(until, peer)) = self.bans.first() {
            if until > now {
                break;
            }
            self.bans.pop_first();
            if let Some(entry) = self.entries.get_mut(&peer).filter(|e| e.tracked) {
                let e = &mut entry.behaviour;
                e.refresh(&self.limits, now);
                e.indexed = e.last_active;
                self.idle.insert((e.indexed, peer));
                Self::sync_gc(&mut self.gc, &peer, entry);
            }
        }
        // The earliest key whose entry was not active since is the least recently active entry:
        // every other key is at or after it, and every entry is at or after its key.
        let victim = loop {
            match self.idle.pop_first() {
                Some((indexed, peer)) => {
                    match self.entries.get_mut(&peer).filter(|e| e.tracked).map(|e| &mut e.behaviour) {
                        Some(e) if e.last_active > indexed => {
                            e.indexed = e.last_active;
                            self.idle.insert((e.indexed, peer));
                        }
                        Some(_) => break Some(peer),
                        None => {}
                    }
                }
                None => break self.bans.pop_first().map(|(_, peer)| peer),
            }
        };
        if let Some(peer) = victim {
            self.untrack(&peer);
        }
    }

    /// Drops `peer`'s behaviour record (already out of the indices): its entry goes, or stays
    /// untracked with a blank record while it holds a session.
    fn untrack(&mut self, peer: &PeerId) {
        let Some(e) = self.entries.get_mut(peer).filter(|e| e.tracked) else {
            return;
        };
        self.tracked -= 1;
        if e.in_gc {
            e.in_gc = false;
            self.gc.remove(peer);
        }
        if e.session.is_some() {
            e.tracked = false;
            e.behaviour = blank();
        } else {
            self.entries.remove(peer);
        }
    }

    fn with_entry<R>(&mut self, peer: PeerId, now: Timestamp, f: impl FnOnce(&mut Behaviour, &Limits) -> R) -> R {
        // Hot path (every heartbeat): update in place. The index moves only when the ban state
        // changed, or when the clock went back before the entry's key (which must stay at or
        // before its last activity); a later activity is caught up with lazily.
        if let Some(entry) = self.entries.get_mut(&peer).filter(|e| e.tracked) {
            let e = &mut entry.behaviour;
            let (old_ban, old_indexed) = (e.banned_until, e.indexed);
            e.refresh(&self.limits, now);
            e.last_active = now;
            let r = f(e, &self.limits);
            let moved = match (old_ban, e.banned_until) {
                (Some(a), Some(b)) => a != b,
                (None, None) => e.last_active < old_indexed,
                _ => true,
            };
            if moved {
                unindex(&mut self.idle, &mut self.bans, &peer, old_ban, old_indexed);
                index(&mut self.idle, &mut self.bans, &peer, e);
            }
            Self::sync_gc(&mut self.gc, &peer, entry);
            return r;
        }
        // A new behaviour record (the peer may have an entry already, for its session).
        while self.tracked >= self.limits.max_entries {
            let len = self.tracked;
            self.make_room(now);
            if self.tracked == len {
                break;
            }
        }
        let mut e = Behaviour::new(now);
        e.refresh(&self.limits, now);
        e.last_active = now;
        let r = f(&mut e, &self.limits);
        index(&mut self.idle, &mut self.bans, &peer, &mut e);
        self.tracked += 1;
        let entry = self.entries.entry(peer).or_insert_with(|| slot(Entry::new(false, blank(), None)));
        entry.tracked = true;
        entry.behaviour = e;
        Self::sync_gc(&mut self.gc, &peer, entry);
        r
    }

    /// Lists `peer` in `gc`, or takes it out, as its entry `e` now needs (see
    /// [`Entry::needs_gc`]). Called after every change to what that depends on; in steady state
    /// nothing changes and `gc` is not touched.
    fn sync_gc(gc: &mut BTreeSet<PeerId>, peer: &PeerId, e: &mut Entry) {
        let want = e.needs_gc();
        if want != e.in_gc {
            e.in_gc = want;
            if want {
                gc.insert(*peer);
            } else {
                gc.remove(peer);
            }
        }
    }
}

/// Puts `peer`'s entry in its index: `bans` while banned, else `idle` under its last activity.
fn index(
    idle: &mut BTreeSet<(Timestamp, PeerId)>,
    bans: &mut BTreeSet<(Timestamp, PeerId)>,
    peer: &PeerId,
    e: &mut Behaviour,
) {
    match e.banned_until {
        Some(until) => bans.insert((until, *peer)),
        None => {
            e.indexed = e.last_active;
            idle.insert((e.indexed, *peer))
        }
    };
}

/// Takes `peer`'s entry out of its index, as it was indexed: by `banned_until`, else `indexed`.
fn unindex(
    idle: &mut BTreeSet<(Timestamp, PeerId)>,
    bans: &mut BTreeSet<(Timestamp, PeerId)>,
    peer: &PeerId,
    banned_until: Option<Timestamp>,
    indexed: Timestamp,
) {
    match banned_until {
        Some(until) => bans.remove(&(until, *peer)),
        None => idle.remove(&(indexed, *peer)),
    };
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::proto::identity::{Keypair, PeerAddr};

    fn peer(i: u64) -> PeerId {
        Keypair::derive(i, "admission").peer_id()
    }

    fn at(secs: u64) -> Timestamp {
        Timestamp(1_000_000 + secs * 1000)
    }

    #[test]
    fn a_window_keeps_its_events_in_order_inline_and_spilled() {
        let mut w = Window::default();
        assert!(w.is_empty() && w.front().is_none());
        for i in 0..WINDOW_INLINE as u64 {
            w.push_back(at(i));
        }
        assert!(matches!(w, Window::Inline { .. }), "up to {WINDOW_INLINE} events stay inline");
        w.pop_front();
        w.push_back(at(10));
        assert!(matches!(w, Window::Inline { .. }));
        w.push_back(at(11));
        assert!(matches!(w, Window::Heap(_)), "one more spills");
        let mut seen = Vec::new();
        while let Some(t) = w.front() {
            seen.push(t);
            w.pop_front();
        }
        let want: Vec<Timestamp> = (1..WINDOW_INLINE as u64).map(at).chain([at(10), at(11)]).collect();
        assert_eq!(seen, want);
        w.pop_front();
        assert!(w.is_empty());
    }

    #[test]
    fn a_get_limit_above_the_inline_window_still_counts_every_get() {
        let c = Config::default();
        assert!(c.max_get_per_minute > WINDOW_INLINE);
        let mut t = BehaviourTable::new(&c, 0);
        let p = peer(1);
        for i in 0..c.max_get_per_minute {
            assert_eq!(t.record_get(p, at(0) + Duration::from_millis(i as u64)), Ok(()), "get {i}");
        }
        assert!(matches!(t.record_get(p, at(1)), Err(AdmissionError::RateLimited { kind: RateKind::Get, .. })));
        // The window slides: a minute later there is room again.
        assert_eq!(t.record_get(p, at(61)), Ok(()));
    }

    #[test]
    fn flood_over_limit_strikes_and_third_strike_bans() {
        let c = Config::default();
        let mut t = BehaviourTable::new(&c, 0);
        let p = peer(1);
        for i in 0..5 {
            assert_eq!(t.record_heartbeat(p, at(i)), Ok(()), "heartbeat {i} is within the limit");
        }
        let e = t.record_heartbeat(p, at(5)).unwrap_err();
        assert_eq!(
            e,
            AdmissionError::RateLimited {
                kind: RateKind::Heartbeat,
                strike: Strike { strikes: 1, banned_until: None }
            }
        );
        assert_eq!(t.record_heartbeat(p, at(6)).unwrap_err().strike().map(|s| s.strikes), Some(2));
        let third = t.record_heartbeat(p, at(7)).unwrap_err();
        assert_eq!(third.strike(), Some(Strike { strikes: 3, banned_until: Some(at(7) + c.ban_duration) }));
        assert!(t.is_banned(&p, at(8)));
        // While banned, requests are refused without more strikes piling up or the ban moving.
        for i in 8..20 {
            assert_eq!(t.record_heartbeat(p, at(i)), Err(AdmissionError::Banned { until: at(7) + c.ban_duration }));
            assert_eq!(t.record_bad_signature(p, at(i)).banned_until, None);
        }
        assert_eq!(t.strikes(&p), 3);
        // Other windows of the same peer are refused too; other peers are unaffected.
        assert!(matches!(t.record_get(p, at(21)), Err(AdmissionError::Banned { .. })));
        assert_eq!(t.record_heartbeat(peer(2), at(21)), Ok(()));
    }

    #[test]
    fn window_slides_so_a_steady_node_is_never_struck() {
        let c = Config::default();
        let mut t = BehaviourTable::new(&c, 0);
        let p = peer(1);
        // Every 20 s plus a probe and an immediate extra heartbeat now and then.
        for i in 0..1000u64 {
            assert_eq!(t.record_heartbeat(p, at(i * 20)), Ok(()));
            if i % 10 == 0 {
                assert_eq!(t.record_heartbeat(p, at(i * 20 + 1)), Ok(()));
                assert_eq!(t.record_heartbeat(p, at(i * 20 + 2)), Ok(()));
            }
        }
        assert_eq!(t.strikes(&p), 0);
    }

    #[test]
    fn strikes_decay_over_time() {
        let c = Config::default();
        let mut t = BehaviourTable::new(&c, 0);
        let p = peer(1);
        assert_eq!(t.record_bad_signature(p, at(0)), Strike { strikes: 2, banned_until: None });
        // Just before one decay period: still 2; a period later one is forgiven, then the other.
        assert_eq!(t.record_get(p, at(599)), Ok(()));
        assert_eq!(t.strikes(&p), 2);
        assert_eq!(t.record_get(p, at(600)), Ok(()));
        assert_eq!(t.strikes(&p), 1);
        assert_eq!(t.record_get(p, at(1200)), Ok(()));
        assert_eq!(t.strikes(&p), 0);
        // A new strike restarts the decay clock: two more strikes just under one decay period
        // later find nothing forgiven, and ban.
        assert_eq!(t.record_bad_signature(p, at(2000)).strikes, 2);
        assert_eq!(t.record_bad_signature(p, at(2000 + 599)).banned_until, Some(at(2599) + c.ban_duration));
        // Strikes also decay at GC, without any request from the peer.
        let q = peer(2);
        t.record_bad_signature(q, at(3000));
        t.prune(at(3000 + 1200));
        assert_eq!(t.strikes(&q), 0);
        assert!(!t.contains(&q), "a fully forgiven peer without a session is pruned");
    }

    #[test]
    fn ban_expires() {
        let c = Config::default();
        let mut t = BehaviourTable::new(&c, 0);
        let p = peer(1);
        t.record_bad_signature(p, at(0));
        let s = t.record_bad_signature(p, at(1));
        let until = s.banned_until.unwrap();
        assert_eq!(until, at(1) + c.ban_duration);
        assert!(t.is_banned(&p, Timestamp(until.0 - 1)));
        assert!(!t.is_banned(&p, until));
        assert_eq!(t.record_heartbeat(p, until), Ok(()));
        // The ban's end does not leave the strikes at the threshold: one more strike is no ban.
        assert_eq!(t.strikes(&p), 0);
        assert_eq!(t.record_bad_signature(p, until).banned_until, None);
    }

    #[test]
    fn burst_guard_admits_twenty_per_thirty_seconds() {
        let c = Config::default();
        let mut g = BurstGuard::new(&c);
        for i in 0..20 {
            assert_eq!(g.try_admit(Timestamp(1_000 + i * 100)), Ok(()), "opening {i}");
        }
        // Refused attempts are not recorded, however many.
        for i in 0..100 {
            assert_eq!(g.try_admit(Timestamp(5_000 + i)), Err(AdmissionError::Busy));
        }
        // The first opening (t = 1000) leaves the window exactly 30 s later, the second 100 ms after.
        assert_eq!(g.try_admit(Timestamp(30_999)), Err(AdmissionError::Busy));
        assert_eq!(g.try_admit(Timestamp(31_000)), Ok(()));
        assert_eq!(g.try_admit(Timestamp(31_050)), Err(AdmissionError::Busy));
        assert_eq!(g.in_window(), 20);
        // `check` alone records nothing.
        let mut g = BurstGuard::new(&c);
        for _ in 0..50 {
            assert_eq!(g.check(Timestamp(0)), Ok(()));
        }
        assert_eq!(g.in_window(), 0);
    }

    #[test]
    fn table_stays_bounded_and_keeps_bans() {
        let c = Config { behaviour_table_max: 8, ..Config::default() };
        let mut t = BehaviourTable::new(&c, 0);
        // Three banned peers.
        for i in 0..3 {
            t.record_bad_signature(peer(i), at(i));
            t.record_bad_signature(peer(i), at(i));
            assert!(t.is_banned(&peer(i), at(10)));
        }
        // A Sybil flood of fresh peers.
        for i in 100..1100 {
            let _ = t.record_heartbeat(peer(i), Timestamp(at(10).0 + i));
            assert!(t.len() <= 8);
        }
        for i in 0..3 {
            assert!(t.is_banned(&peer(i), at(20)), "ban of peer {i} survives the flood");
        }
        // The most recently active unbanned peers are the ones kept.
        assert!(t.contains(&peer(1099)));
        assert!(t.is_banned(&peer(0), at(599)) && !t.is_banned(&peer(0), at(600)));
        assert!(!t.contains(&peer(100)));

        // When every entry is banned, the ban that ends first goes.
        let c = Config { behaviour_table_max: 2, ..Config::default() };
        let mut t = BehaviourTable::new(&c, 0);
        for (i, s) in [(0, 0), (1, 5)] {
            t.record_bad_signature(peer(i), at(s));
            t.record_bad_signature(peer(i), at(s));
        }
        let _ = t.record_heartbeat(peer(9), at(6));
        assert!(!t.contains(&peer(0)));
        assert!(t.is_banned(&peer(1), at(7)));
        // Read-only queries never create entries.
        assert!(!t.is_banned(&peer(42), at(7)));
        assert!(!t.contains(&peer(42)));
    }

    #[test]
    fn prune_keeps_sessions_strikes_bans_and_open_windows() {
        let c = Config::default();
        let mut t = BehaviourTable::new(&c, 0);
        let (with_session, struck, recent, stale) = (peer(1), peer(2), peer(3), peer(4));
        for p in [with_session, stale] {
            t.record_heartbeat(p, at(0)).unwrap();
        }
        t.insert_session(with_session, Session::new(PeerAddr { id: with_session, addrs: Vec::new() }, at(0)));
        t.record_bad_signature(struck, at(50));
        t.record_heartbeat(recent, at(50)).unwrap();
        let pruned = t.prune(at(61));
        assert_eq!(pruned, 1);
        assert!(!t.contains(&stale));
        for p in [with_session, struck, recent] {
            assert!(t.contains(&p));
        }
    }

    #[test]
    fn first_did_is_bound_and_a_different_one_is_refused_without_strikes() {
        let c = Config::default();
        let mut t = BehaviourTable::new(&c, 0);
        let p = peer(1);
        let d1 = Did::new("did:one").unwrap();
        let d2 = Did::new("did:two").unwrap();
        assert_eq!(t.check_identity(p, &d1, at(0)), Ok(()));
        assert_eq!(t.check_identity(p, &d1, at(1)), Ok(()));
        for i in 2..10 {
            assert_eq!(t.check_identity(p, &d2, at(i)), Err(AdmissionError::DidChanged { peer: p, bound: d1.clone() }));
        }
        assert_eq!(t.bound_did(&p), Some(&d1));
        assert_eq!(t.check_identity(p, &d1, at(11)), Ok(()), "never banned: the old DID still works");
        let _ = c;
    }

    #[test]
    fn a_restored_ban_holds_until_it_ends_and_never_longer_than_a_ban() {
        let c = Config::default();
        let mut t = BehaviourTable::new(&c, 0);
        let p = peer(1);
        t.restore_ban(p, at(300), at(0));
        assert_eq!(t.banned_until(&p, at(0)), Some(at(300)));
        assert_eq!(t.record_heartbeat(p, at(299)), Err(AdmissionError::Banned { until: at(300) }));
        // Strikes at the threshold while banned, cleared when the ban ends.
        assert_eq!(t.strikes(&p), c.strike_threshold);
        assert_eq!(t.record_heartbeat(p, at(300)), Ok(()));
        assert_eq!(t.strikes(&p), 0);
        // An ended ban is ignored; one beyond `ban_duration` from now is brought back to it.
        let q = peer(2);
        t.restore_ban(q, at(10), at(10));
        assert!(!t.contains(&q));
        t.restore_ban(q, at(100_000), at(10));
        assert_eq!(t.banned_until(&q, at(10)), Some(at(10) + c.ban_duration));
        // A ban in force keeps the later end.
        t.restore_ban(q, at(20), at(11));
        assert_eq!(t.banned_until(&q, at(11)), Some(at(10) + c.ban_duration));
        // The table's bound holds.
        let c = Config { behaviour_table_max: 4, ..Config::default() };
        let mut t = BehaviourTable::new(&c, 0);
        for i in 0..10 {
            t.restore_ban(peer(i), at(100 + i), at(0));
            assert!(t.len() <= 4);
        }
        assert!(t.is_banned(&peer(9), at(1)), "the bans that end last are kept");
    }

    #[test]
    fn eviction_takes_the_least_recently_active_although_the_index_is_lazy() {
        let c = Config { behaviour_table_max: 4, ..Config::default() };
        let mut t = BehaviourTable::new(&c, 9);
        for i in 1..=4 {
            t.record_heartbeat(peer(i), at(i)).unwrap();
        }
        // Peer 1 is active again: its index entry still says t = 1.
        t.record_heartbeat(peer(1), at(10)).unwrap();
        t.record_heartbeat(peer(5), at(11)).unwrap();
        assert!(t.contains(&peer(1)), "the entry active since was renewed, not evicted");
        assert!(!t.contains(&peer(2)), "the least recently active went");
        // Peers 3 and 4 active again, in reverse order: 5 is now the least recently active after 1.
        t.record_heartbeat(peer(4), at(12)).unwrap();
        t.record_heartbeat(peer(3), at(13)).unwrap();
        t.record_heartbeat(peer(6), at(14)).unwrap();
        assert!(!t.contains(&peer(1)));
        t.record_heartbeat(peer(7), at(15)).unwrap();
        assert!(!t.contains(&peer(5)));
        for p in [3, 4, 6, 7] {
            assert!(t.contains(&peer(p)), "peer {p} kept");
        }
        // The indices hold one entry per peer.
        assert_eq!(t.idle.len() + t.bans.len(), t.len());
        t.prune(at(14 + 61));
        assert_eq!(t.len(), 0);
        assert!(t.idle.is_empty() && t.bans.is_empty(), "pruned entries leave the indices");
    }

    /// The GC list is exactly the entries GC has work on, through every change.
    fn gc_list_consistent(t: &BehaviourTable) {
        for (p, e) in &t.entries {
            assert_eq!(e.in_gc, e.needs_gc(), "{p:?}: listed iff GC has work on it");
            assert_eq!(t.gc.contains(p), e.in_gc, "{p:?}: flag and list agree");
        }
        assert!(t.gc.iter().all(|p| t.entries.contains_key(p)), "no listed peer without an entry");
    }

    #[test]
    fn gc_visits_only_entries_with_something_to_do_and_they_end_as_when_it_visited_all() {
        let c = Config::default();
        let mut t = BehaviourTable::new(&c, 5);
        let s = |p: PeerId| Session::new(PeerAddr { id: p, addrs: Vec::new() }, at(0));
        let (clean, struck, banned, alone) = (peer(1), peer(2), peer(3), peer(4));
        for p in [clean, struck, banned] {
            t.insert_session(p, s(p));
            t.record_heartbeat(p, at(0)).unwrap();
        }
        t.record_heartbeat(alone, at(0)).unwrap();
        gc_list_consistent(&t);
        // Sessions without strikes are not listed; a record without a session is.
        assert_eq!(t.gc.iter().copied().collect::<Vec<_>>(), vec![alone]);
        // A strike lists its peer; a ban too.
        t.record_bad_signature(struck, at(1));
        t.restore_ban(banned, at(100), at(1));
        gc_list_consistent(&t);
        assert!(t.gc.contains(&struck) && t.gc.contains(&banned) && !t.gc.contains(&clean));
        // GC: the clean sessionless record goes, the others stay listed while GC has work on them.
        assert_eq!(t.prune(at(61)), 1);
        assert!(!t.contains(&alone));
        gc_list_consistent(&t);
        assert_eq!(t.strikes(&struck), 2, "no decay yet");
        // The ban ends at GC: strikes cleared, the peer leaves the list; decay forgives strikes at
        // GC, so the struck peer leaves once it has none.
        let later = at(1) + c.strike_decay * 2;
        t.prune(later);
        gc_list_consistent(&t);
        assert_eq!((t.strikes(&banned), t.banned_until(&banned, later)), (0, None));
        assert_eq!(t.strikes(&struck), 0, "two strikes forgiven by GC");
        assert!(t.gc.is_empty(), "only sessions without strikes are left");
        // A session that closes leaves a record GC must look at again, and prune then drops it.
        t.remove_session(&clean).unwrap();
        gc_list_consistent(&t);
        assert!(t.gc.contains(&clean));
        assert_eq!(t.prune(later + c.behaviour_window), 1);
        assert!(!t.contains(&clean) && t.entry(&clean).is_none());
        // Evicting a listed record takes it off the list, even when its session stays.
        let c1 = Config { behaviour_table_max: 1, ..Config::default() };
        let mut t = BehaviourTable::new(&c1, 6);
        t.insert_session(struck, s(struck));
        t.record_bad_signature(struck, at(0));
        assert!(t.gc.contains(&struck));
        t.record_heartbeat(alone, at(1)).unwrap();
        gc_list_consistent(&t);
        assert!(!t.contains(&struck) && t.has_session(&struck) && !t.gc.contains(&struck));
    }

    /// What GC does to sessions changes no admission outcome: a table pruned every third step
    /// (visiting only the listed entries) and one never pruned count, refuse and ban alike.
    #[test]
    fn gc_changes_no_admission_outcome_for_sessions() {
        let c = Config::default();
        let mut pruned = BehaviourTable::new(&c, 7);
        let mut never = BehaviourTable::new(&c, 7);
        let peers: Vec<PeerId> = (0..6).map(peer).collect();
        let s = |p: PeerId| Session::new(PeerAddr { id: p, addrs: Vec::new() }, at(0));
        for t in [&mut pruned, &mut never] {
            for p in &peers {
                t.insert_session(*p, s(*p));
            }
        }
        for step in 0..400u64 {
            let now = at(step * 7);
            let p = peers[(step % 6) as usize];
            let a = pruned.record_heartbeat(p, now);
            let b = never.record_heartbeat(p, now);
            assert_eq!(a, b, "step {step}");
            // Every other peer's heartbeats come in bursts now and then (strikes, a ban).
            if step % 50 == 0 {
                for _ in 0..6 {
                    assert_eq!(pruned.record_heartbeat(peers[1], now), never.record_heartbeat(peers[1], now));
                }
            }
            if step % 3 == 0 {
                pruned.prune(now);
                gc_list_consistent(&pruned);
            }
            for q in &peers {
                assert_eq!(pruned.banned_until(q, now), never.banned_until(q, now));
            }
        }
    }

    #[test]
    fn an_entry_holds_a_session_a_behaviour_record_or_both() {
        let c = Config { behaviour_table_max: 1, ..Config::default() };
        let mut t = BehaviourTable::new(&c, 3);
        let (a, b) = (peer(1), peer(2));
        let s = |p: PeerId| Session::new(PeerAddr { id: p, addrs: Vec::new() }, at(0));
        // A session alone: no behaviour record.
        t.insert_session(a, s(a));
        assert!(t.has_session(&a) && !t.contains(&a));
        assert_eq!((t.len(), t.session_count(), t.entries.len()), (0, 1, 1));
        // A record for it: the same entry holds both.
        t.record_heartbeat(a, at(1)).unwrap();
        assert!(t.contains(&a) && t.has_session(&a));
        assert_eq!((t.len(), t.session_count(), t.entries.len()), (1, 1, 1));
        // b's record evicts a's (bound 1): a keeps its session, read as no record.
        t.record_heartbeat(b, at(2)).unwrap();
        assert!(!t.contains(&a) && t.has_session(&a) && t.contains(&b));
        assert_eq!((t.len(), t.session_count(), t.entries.len()), (1, 1, 2));
        assert!(t.entry(&a).is_some_and(|e| !e.banned_at(at(2)) && e.session().is_some()));
        assert_eq!(t.session_and_strikes(&a).map(|(_, _, k)| k), Some(0));
        // Its session closes: a's entry goes; b's (a record only) stays.
        assert!(t.remove_session(&a).is_some());
        assert!(t.remove_session(&a).is_none());
        assert_eq!((t.len(), t.session_count(), t.entries.len()), (1, 0, 1));
        // A ban outlives the session it came with.
        t.insert_session(b, s(b));
        t.record_bad_signature(b, at(3));
        assert_eq!(t.record_bad_signature(b, at(3)).banned_until, Some(at(3) + c.ban_duration));
        assert!(t.remove_session(&b).is_some());
        assert!(t.is_banned(&b, at(4)) && !t.has_session(&b));
        assert_eq!((t.len(), t.session_count(), t.entries.len()), (1, 0, 1));
        // Pruning leaves an entry holding only a session alone and drops a clean record without
        // one (b's, its ban over).
        t.insert_session(a, s(a));
        assert_eq!(t.prune(at(3) + c.ban_duration + Duration::from_secs(61)), 1);
        assert!(t.has_session(&a) && !t.contains(&a) && !t.contains(&b));
        assert_eq!((t.len(), t.session_count(), t.entries.len()), (0, 1, 1));
        assert!(t.idle.is_empty() && t.bans.is_empty());
        assert_eq!(t.sessions().map(|(p, _)| *p).collect::<Vec<_>>(), vec![a]);
    }
}
