//! Node-side indexer scoring: what a node can *verify* about each indexer in its pool.
//!
//! The seed scores every indexer from its own observations only (spec A §5): how much of the time
//! since it first contacted the indexer the indexer answered ([`UptimeTracker`], gap-aware), whether
//! the indexer tells the truth about the node's own session (challenges), its latency, how loaded
//! it says it is, whether that load agrees with its own peer count, whether other nodes (witnesses)
//! see the same indexer, and whether it can find the node's DID. The seven factors are combined
//! with fixed weights into a score in `[0, 100]` ([`IndexerScore::compute`], A §5.3), multiplied by a
//! penalty for unexplained `born_at` changes.
//!
//! Differences from the seed, on purpose:
//!
//! * the counters live in the pool entry and are mutated in place — the seed mutated a copy and
//!   lost every counter but the uptime tracker (B1);
//! * the fill score is clamped to `[0, 1]`, and NaN fill rates count as a full indexer (B19);
//! * `uptime_ratio` is 1.0 at age 0 (no evidence yet is not evidence of downtime);
//! * [`quick_score`] gives 0 to a refused or timed-out probe, so a full or banning indexer is never
//!   admitted as a candidate (B §13.4: the seed scored such refusals ≈ 49, above the floor of 20).

use crate::proto::config::Config;
use crate::proto::time::Timestamp;
use crate::proto::wire::HeartbeatResponse;
use std::time::Duration;

/// Weight of the uptime ratio in the node-side score (A §5.3).
pub const WEIGHT_UPTIME: f64 = 0.20;
/// Weight of the own-id challenge accuracy (A §5.3).
pub const WEIGHT_CHALLENGE: f64 = 0.20;
/// Weight of the latency score (A §5.3).
pub const WEIGHT_LATENCY: f64 = 0.15;
/// Weight of the fill score `1 − fill_rate` (A §5.3).
pub const WEIGHT_FILL: f64 = 0.10;
/// Weight of the fill-rate self-consistency (A §5.3).
pub const WEIGHT_FILL_CONSISTENCY: f64 = 0.10;
/// Weight of the witness consistency (A §5.3).
pub const WEIGHT_WITNESS: f64 = 0.15;
/// Weight of the DID challenge success rate (the seed's "DHT success rate", A §5.3).
pub const WEIGHT_DID: f64 = 0.10;

/// Maps a number reported by a peer to `[0, 1]`; NaN becomes `nan_as`.
pub fn sanitize_unit(x: f64, nan_as: f64) -> f64 {
    if x.is_nan() { nan_as } else { x.clamp(0.0, 1.0) }
}

/// `num / den`, or 1.0 when nothing was checked yet (the seed's "no evidence, full marks").
fn ratio(num: u32, den: u32) -> f64 {
    if den == 0 { 1.0 } else { (f64::from(num) / f64::from(den)).min(1.0) }
}

/// How long an indexer has been answering since the node first contacted it (A §5.1).
///
/// Gaps between two answers count as online time only when they are at most `max_gap` long
/// (twice the seed's `RecommendedHeartbeatInterval`), so an indexer that vanished for an hour does
/// not get the hour credited when it comes back.
#[derive(Clone, Debug, PartialEq)]
pub struct UptimeTracker {
    /// When the node first contacted the indexer (the entry's creation).
    pub first_seen: Timestamp,
    /// When the indexer last answered; `None` until its first answer.
    pub last_seen: Option<Timestamp>,
    /// Sum of the answered gaps of at most `max_gap`.
    pub total_online: Duration,
    /// Heartbeat failures since the last answer.
    pub consecutive_fails: u32,
}

impl UptimeTracker {
    /// A tracker for an indexer first contacted at `now`.
    pub fn new(now: Timestamp) -> Self {
        UptimeTracker { first_seen: now, last_seen: None, total_online: Duration::ZERO, consecutive_fails: 0 }
    }

    /// The indexer answered at `now`: credit the gap since its previous answer if it is at most
    /// `max_gap`, and reset the failure count.
    pub fn record_heartbeat(&mut self, now: Timestamp, max_gap: Duration) {
        if let Some(last) = self.last_seen {
            let gap = now.since(last);
            if gap <= max_gap {
                self.total_online = self.total_online.saturating_add(gap);
            }
        }
        if self.last_seen.is_none_or(|last| now > last) {
            self.last_seen = Some(now);
        }
        self.consecutive_fails = 0;
    }

    /// Time since the first contact (the seed's `Uptime()`, which is an age).
    pub fn age(&self, now: Timestamp) -> Duration {
        now.since(self.first_seen)
    }

    /// `total_online / age`, at most 1; 1.0 when the age is 0.
    pub fn uptime_ratio(&self, now: Timestamp) -> f64 {
        let age = self.age(now);
        if age.is_zero() {
            return 1.0;
        }
        (self.total_online.as_secs_f64() / age.as_secs_f64()).clamp(0.0, 1.0)
    }
}

/// The seven factors of the node-side score and the `born_at` penalty, each in `[0, 1]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScoreFactors {
    /// Gap-aware online time over the time since the indexer joined the pool.
    pub uptime: f64,
    /// Own-id challenges answered correctly / challenges sent.
    pub challenge_accuracy: f64,
    /// Latency score of the last matched round trip: `clamp(1 − rtt / max_rtt, 0, 1)`.
    pub latency: f64,
    /// `1 − fill_rate` of the last answer, clamped.
    pub fill: f64,
    /// Consistent fill reports / fill reports checked.
    pub fill_consistency: f64,
    /// Consistent witness reports / conclusive witness reports.
    pub witness_consistency: f64,
    /// DID challenges found / DID challenges answered.
    pub did_success: f64,
    /// `max(0, 1 − born_at_penalty · unexplained born_at changes)`.
    pub born_at_penalty: f64,
}

impl ScoreFactors {
    /// The factors of an indexer that has not answered yet: all zero (it scores 0).
    pub const UNPROVEN: ScoreFactors = ScoreFactors {
        uptime: 0.0,
        challenge_accuracy: 0.0,
        latency: 0.0,
        fill: 0.0,
        fill_consistency: 0.0,
        witness_consistency: 0.0,
        did_success: 0.0,
        born_at_penalty: 0.0,
    };

    /// The weighted sum ×100, before the `born_at` penalty.
    pub fn base(&self) -> f64 {
        (WEIGHT_UPTIME * self.uptime
            + WEIGHT_CHALLENGE * self.challenge_accuracy
            + WEIGHT_LATENCY * self.latency
            + WEIGHT_FILL * self.fill
            + WEIGHT_FILL_CONSISTENCY * self.fill_consistency
            + WEIGHT_WITNESS * self.witness_consistency
            + WEIGHT_DID * self.did_success)
            * 100.0
    }

    /// The score in `[0, 100]`: [`ScoreFactors::base`] × the `born_at` penalty.
    pub fn score(&self) -> f64 {
        (self.base() * self.born_at_penalty).clamp(0.0, 100.0)
    }
}

/// Everything a node counts about one indexer (A §5.2), kept in the pool entry for the entry's
/// whole life and mutated in place (B1 fixed).
#[derive(Clone, Debug, PartialEq)]
pub struct IndexerScore {
    /// Gap-aware uptime.
    pub uptime: UptimeTracker,
    /// The fill rate of the last answer, sanitised to `[0, 1]` (NaN counts as full).
    pub last_fill_rate: f64,
    /// The `born_at` of the last answer.
    pub last_born_at: Option<Timestamp>,
    /// Heartbeats sent since the last challenge batch.
    pub hb_count: u32,
    /// A challenge batch goes out when `hb_count` reaches this.
    pub next_challenge: u32,
    /// Own-id challenges sent (counted when sent: an unanswered one is a failed one).
    pub challenge_total: u32,
    /// Own-id challenges whose heartbeat was answered (the evidence gate's denominator: a lost or
    /// refused heartbeat is a failure, not a lie).
    pub challenge_answered: u32,
    /// Own-id challenges answered with `found` and a recent `last_seen`.
    pub challenge_correct: u32,
    /// The indexer's clock minus ours (ms), as its last plausible own-session answer showed it:
    /// `last_seen` is read against this offset, not against our clock, so honest daemons whose
    /// clocks differ (within [`MAX_CLOCK_SKEW`](crate::proto::record::MAX_CLOCK_SKEW), as records
    /// allow) are not taken for liars.
    pub clock_offset_ms: Option<i64>,
    /// Fill reports checked against `peer_count / max_nodes`.
    pub fill_checked: u32,
    /// Fill reports within `fill_tolerance` of `peer_count / max_nodes`.
    pub fill_consistent: u32,
    /// Unexplained `born_at` changes.
    pub born_at_changes: u32,
    /// DID challenges answered.
    pub did_checked: u32,
    /// DID challenges answered with `did_found == Some(true)`.
    pub did_success: u32,
    /// Challenge batches sent; every `did_challenge_every`-th carries the DID.
    pub did_batch_counter: u32,
    /// Conclusive witness reports (a timed-out or unreachable witness is not one).
    pub witness_checked: u32,
    /// Conclusive witness reports that agree with the indexer.
    pub witness_consistent: u32,
}

impl IndexerScore {
    /// Whether `last_seen` (the indexer's clock) says our session is current: the indexer's clock
    /// is within [`MAX_CLOCK_SKEW`](crate::proto::record::MAX_CLOCK_SKEW) of ours, and its offset
    /// moved less than two liveness intervals since the last answer (a session the indexer stopped
    /// updating drifts by a heartbeat interval per heartbeat). The first answer only sets the
    /// offset; a clock step on either side costs one challenge, then the new offset holds.
    pub fn own_session_recent(&mut self, last_seen: Timestamp, now: Timestamp, cfg: &Config) -> bool {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let offset = i64::try_from(i128::from(last_seen.0) - i128::from(now.0)).unwrap_or(i64::MAX);
        if offset.unsigned_abs() > crate::proto::record::MAX_CLOCK_SKEW.as_millis() as u64 {
            return false;
        }
        let recent = ms(cfg.liveness_interval.saturating_mul(2));
        let steady = self.clock_offset_ms.is_none_or(|prev| offset.saturating_sub(prev).unsigned_abs() < recent as u64);
        self.clock_offset_ms = Some(offset);
        steady
    }

    /// A fresh record for an indexer first contacted at `now`; the first challenge batch goes out
    /// on the `next_challenge`-th heartbeat.
    pub fn new(now: Timestamp, next_challenge: u32) -> Self {
        IndexerScore {
            uptime: UptimeTracker::new(now),
            last_fill_rate: 0.0,
            last_born_at: None,
            hb_count: 0,
            next_challenge,
            challenge_total: 0,
            challenge_answered: 0,
            challenge_correct: 0,
            clock_offset_ms: None,
            fill_checked: 0,
            fill_consistent: 0,
            born_at_changes: 0,
            did_checked: 0,
            did_success: 0,
            did_batch_counter: 0,
            witness_checked: 0,
            witness_consistent: 0,
        }
    }

    /// Own-id challenge accuracy (1.0 before any challenge).
    pub fn challenge_accuracy(&self) -> f64 {
        ratio(self.challenge_correct, self.challenge_total)
    }

    /// Fill-rate self-consistency (1.0 before any check).
    pub fn fill_consistency(&self) -> f64 {
        ratio(self.fill_consistent, self.fill_checked)
    }

    /// Witness consistency (1.0 before any conclusive report).
    pub fn witness_consistency(&self) -> f64 {
        ratio(self.witness_consistent, self.witness_checked)
    }

    /// DID challenge success rate (1.0 before any DID challenge).
    pub fn did_success_rate(&self) -> f64 {
        ratio(self.did_success, self.did_checked)
    }

    /// `max(0, 1 − penalty_per_change · born_at_changes)`.
    pub fn born_at_penalty(&self, penalty_per_change: f64) -> f64 {
        let p = sanitize_unit(penalty_per_change, 1.0);
        (1.0 - p * f64::from(self.born_at_changes)).max(0.0)
    }

    /// The factors at `now`, given the latency score of the last round trip.
    pub fn factors(&self, latency_score: f64, now: Timestamp, config: &Config) -> ScoreFactors {
        ScoreFactors {
            uptime: self.uptime.uptime_ratio(now),
            challenge_accuracy: self.challenge_accuracy(),
            latency: sanitize_unit(latency_score, 0.0),
            fill: 1.0 - sanitize_unit(self.last_fill_rate, 1.0),
            fill_consistency: self.fill_consistency(),
            witness_consistency: self.witness_consistency(),
            did_success: self.did_success_rate(),
            born_at_penalty: self.born_at_penalty(config.born_at_penalty),
        }
    }

    #[cfg(test)]
    /// The seed's `ComputeNodeSideScore` (A §5.3), in `[0, 100]`.
    pub fn compute(&self, latency_score: f64, now: Timestamp, config: &Config) -> f64 {
        self.factors(latency_score, now, config).score()
    }
}

/// `clamp(1 − rtt / max_rtt, 0, 1)` with `max_rtt = base_round_trip × 10` (A §6.6).
pub fn latency_score(rtt: Duration, config: &Config) -> f64 {
    let max = config.max_rtt();
    if max.is_zero() {
        return if rtt.is_zero() { 1.0 } else { 0.0 };
    }
    (1.0 - rtt.as_secs_f64() / max.as_secs_f64()).clamp(0.0, 1.0)
}

/// Candidate score from one probe (B §3.4): `(0.5·latency + 0.5·(1 − fill)) × 100`, fill clamped.
/// A refused or unanswered probe (`None`) scores 0, so it is never admitted (fix of B §13.4).
pub fn quick_score(resp: Option<&HeartbeatResponse>, rtt: Duration, config: &Config) -> f64 {
    let Some(resp) = resp else {
        return 0.0;
    };
    let fill = 1.0 - sanitize_unit(resp.fill_rate, 1.0);
    (0.5 * latency_score(rtt, config) + 0.5 * fill) * 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_session_answers_are_read_against_the_indexers_clock_offset() {
        let cfg = Config::default();
        let t0 = Timestamp(1_700_000_000_000);
        let hb = cfg.liveness_interval;
        // An honest indexer whose clock is 2 min behind ours: every answer is consistent.
        let mut s = IndexerScore::new(t0, 1);
        for i in 0..5u32 {
            let now = t0 + hb * i;
            assert!(s.own_session_recent(Timestamp(now.0 - 120_000 + 40), now, &cfg), "answer {i}");
        }
        // A clock beyond the skew records allow is not plausible.
        let mut far = IndexerScore::new(t0, 1);
        assert!(!far.own_session_recent(Timestamp(t0.0 + 301_000), t0, &cfg));
        // A session the indexer stopped updating drifts a heartbeat interval per heartbeat.
        let mut stale = IndexerScore::new(t0, 1);
        assert!(stale.own_session_recent(t0, t0, &cfg));
        let frozen = t0;
        assert!(stale.own_session_recent(frozen, t0 + hb, &cfg), "one interval: within two");
        assert!(!stale.own_session_recent(frozen, t0 + hb * 4, &cfg), "three more intervals behind");
        // A clock step (ours jumps 3 min ahead) costs one answer, then the new offset holds.
        let mut step = IndexerScore::new(t0, 1);
        assert!(step.own_session_recent(t0, t0, &cfg));
        let jumped = |t: Timestamp| Timestamp(t.0 + 180_000);
        assert!(!step.own_session_recent(t0 + hb, jumped(t0 + hb), &cfg));
        assert!(step.own_session_recent(t0 + hb * 2, jumped(t0 + hb * 2), &cfg));
    }
    use crate::proto::wire::RequestId;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    fn resp(fill_rate: f64) -> HeartbeatResponse {
        HeartbeatResponse {
            req: RequestId(1),
            fill_rate,
            peer_count: 0,
            max_nodes: 0,
            born_at: Timestamp(1),
            challenges: vec![],
            did_found: None,
            did_record: None,
            record_expires: None,
            witnesses: vec![],
            suggestions: vec![],
            suggest_migrate: false,
        }
    }

    #[test]
    fn uptime_counts_only_short_gaps_and_is_full_at_age_zero() {
        let max_gap = Duration::from_secs(120);
        let mut u = UptimeTracker::new(Timestamp(0));
        assert_eq!(u.uptime_ratio(Timestamp(0)), 1.0);
        u.record_heartbeat(Timestamp(20_000), max_gap); // first answer only sets last_seen
        assert_eq!(u.total_online, Duration::ZERO);
        u.record_heartbeat(Timestamp(40_000), max_gap);
        u.record_heartbeat(Timestamp(160_000), max_gap); // 120 s gap: counts
        u.record_heartbeat(Timestamp(400_000), max_gap); // 240 s gap: does not
        assert_eq!(u.total_online, Duration::from_secs(140));
        assert!(close(u.uptime_ratio(Timestamp(400_000)), 140.0 / 400.0));
        u.consecutive_fails = 2;
        u.record_heartbeat(Timestamp(410_000), max_gap);
        assert_eq!(u.consecutive_fails, 0);
    }

    #[test]
    fn seven_factor_score_matches_the_seed_formula_exactly() {
        let cfg = Config::default();
        let mut s = IndexerScore::new(Timestamp(0), 3);
        s.uptime.last_seen = Some(Timestamp(100_000));
        s.uptime.total_online = Duration::from_secs(100);
        s.challenge_total = 4;
        s.challenge_correct = 3;
        s.last_fill_rate = 0.2;
        s.fill_checked = 2;
        s.fill_consistent = 1;
        s.witness_checked = 3;
        s.witness_consistent = 2;
        s.did_checked = 1;
        s.did_success = 1;
        let lat = latency_score(Duration::from_secs(1), &cfg);
        assert!(close(lat, 0.75));
        let f = s.factors(lat, Timestamp(100_000), &cfg);
        assert!(close(f.uptime, 1.0));
        // .2·1 + .2·.75 + .15·.75 + .1·.8 + .1·.5 + .15·(2/3) + .1·1 = .7925
        assert!(close(s.compute(lat, Timestamp(100_000), &cfg), 79.25));
        s.born_at_changes = 1;
        assert!(close(s.compute(lat, Timestamp(100_000), &cfg), 79.25 * 0.7));
        s.born_at_changes = 4;
        assert_eq!(s.compute(lat, Timestamp(100_000), &cfg), 0.0);
    }

    #[test]
    fn fresh_score_has_full_marks_except_latency_and_fill() {
        let cfg = Config::default();
        let s = IndexerScore::new(Timestamp(5), 1);
        // uptime 1 (age 0), accuracy/consistencies 1, latency 0, fill 1 − 0 = 1 → 85.
        assert!(close(s.compute(0.0, Timestamp(5), &cfg), 85.0));
    }

    #[test]
    fn fill_score_is_clamped_and_nan_counts_as_full() {
        let cfg = Config::default();
        let mut s = IndexerScore::new(Timestamp(0), 1);
        s.last_fill_rate = 7.0;
        assert_eq!(s.factors(1.0, Timestamp(0), &cfg).fill, 0.0);
        s.last_fill_rate = -3.0;
        assert_eq!(s.factors(1.0, Timestamp(0), &cfg).fill, 1.0);
        s.last_fill_rate = f64::NAN;
        assert_eq!(s.factors(1.0, Timestamp(0), &cfg).fill, 0.0);
        assert_eq!(s.factors(f64::NAN, Timestamp(0), &cfg).latency, 0.0);
    }

    #[test]
    fn latency_score_falls_linearly_to_zero_at_ten_base_round_trips() {
        let cfg = Config::default();
        assert_eq!(latency_score(Duration::ZERO, &cfg), 1.0);
        assert!(close(latency_score(Duration::from_millis(400), &cfg), 0.9));
        assert!(close(latency_score(Duration::from_secs(2), &cfg), 0.5));
        assert_eq!(latency_score(Duration::from_secs(4), &cfg), 0.0);
        assert_eq!(latency_score(Duration::from_secs(60), &cfg), 0.0);
    }

    #[test]
    fn quick_score_gives_zero_to_refusals_and_clamps_fill() {
        let cfg = Config::default();
        assert_eq!(quick_score(None, Duration::from_millis(10), &cfg), 0.0);
        // rtt 400 ms → latency .9; fill .2 → .8; (.45 + .4)·100 = 85.
        assert!(close(quick_score(Some(&resp(0.2)), Duration::from_millis(400), &cfg), 85.0));
        assert!(close(quick_score(Some(&resp(3.0)), Duration::from_secs(2), &cfg), 25.0));
        assert!(close(quick_score(Some(&resp(f64::NAN)), Duration::ZERO, &cfg), 50.0));
        assert!(close(quick_score(Some(&resp(-1.0)), Duration::from_secs(9), &cfg), 50.0));
    }
}
