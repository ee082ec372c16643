//! Hedged reads: when a `FIND_VALUE` is late, and how late is late.
//!
//! A read ([`Goal::Value`](super::Goal): a node's `GetRecord`, a command lookup, a message
//! destination, a DID challenge's spot check) asks **one** peer, the closest known to the key,
//! instead of Kademlia's α at once: the peers nearest a key hold its record, so the first answer
//! almost always carries it and the α − 1 others were wasted, twice (request and answer). A
//! further `FIND_VALUE` goes out only when
//!
//! * an answer came without the value: the read goes on as Kademlia's lookup (α in flight);
//! * a query failed (refused, unreachable, timed out): its place goes to the next candidate;
//! * the queries in flight have all been outstanding for the **hedge delay** (Dean & Barroso,
//!   "The Tail at Scale", 2013): one more peer is asked, up to α in flight. A dead or stalled
//!   first peer thus costs a read one hedge delay, not `kad_rpc_timeout`.
//!
//! Writes, claim checks, takeovers, provider and table lookups keep α in flight: they want the
//! key's whole neighbourhood, not the first answer.
//!
//! ## The hedge delay
//!
//! An answer is *late* once it is later than almost every answer this peer has seen. Storing the
//! round trips to take a percentile would cost memory per peer; TCP's retransmission timer
//! (RFC 6298) answers the same question with two numbers, and so does [`RttEstimator`]: the
//! smoothed round trip `srtt` and its mean deviation `rttvar` (gains 1/8 and 1/4), over the
//! answers to this peer's DHT RPCs (the requests are answered at once by the peer: a round trip is
//! the network's and the peer's queue, which is what a read waits for). The delay is
//!
//! `clamp(max(srtt + 4·rttvar, 2·srtt), HEDGE_MIN, min(HEDGE_MAX, kad_rpc_timeout / 2))`
//!
//! * `srtt + 4·rttvar` is RFC 6298's bound on a round trip: with the deviation measured, only a
//!   few percent of the answers come later (the hedged ones; Dean & Barroso hedge at the 95th
//!   percentile). It adapts: a jittery path hedges later, a fast one sooner.
//! * `2·srtt` is a floor for steady paths, where `rttvar` tends to 0 and `srtt + 4·rttvar` would
//!   hedge every answer a little slower than the average (one peer farther away than the
//!   others, a short queue).
//! * [`HEDGE_MIN`] (50 ms): below it (a LAN, loopback: sub-millisecond round trips) a peer's
//!   answer can still wait behind a few milliseconds of work of its own (a batch of signatures
//!   to check), and hedging that would double the reads of a busy peer to save less time than
//!   any wide-area round trip.
//! * [`HEDGE_MAX`] (1 s), and at most half of `kad_rpc_timeout`: a hedge later than that saves
//!   little over failing the query, and must leave a read's budget (`dht_check_timeout`,
//!   `lookup_timeout`) room for the hedge's own answer.
//! * Before any answer, [`HEDGE_DEFAULT`] (1 s, RFC 6298's initial timeout): nothing says how far
//!   the peers are, and hedging a path slower than guessed would double every read on it.
//!
//! The estimator is one per [`Dht`](super::Dht), not per peer: the DHT's peers are the same
//! federation of indexers, and a read's first peer is a different one for every key. An answer
//! that arrives after its read finished (the hedge's answer came first) is not sampled: the
//! slowest answers are under-represented, which makes the delay a little shorter, never longer
//! (a few more hedges, not a slower tail).

use std::time::Duration;

/// The shortest hedge delay (see the module's documentation).
pub const HEDGE_MIN: Duration = Duration::from_millis(50);
/// The longest hedge delay (and at most half of `kad_rpc_timeout`).
pub const HEDGE_MAX: Duration = Duration::from_secs(1);
/// The hedge delay before any round trip was measured.
pub const HEDGE_DEFAULT: Duration = Duration::from_secs(1);

/// Smoothed round trip and its mean deviation (RFC 6298 §2), in microseconds, integers only
/// (deterministic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RttEstimator {
    /// `(srtt, rttvar)` in µs, once one round trip was measured.
    est: Option<(u64, u64)>,
}

impl RttEstimator {
    /// Takes one measured round trip.
    pub fn sample(&mut self, rtt: Duration) {
        let r = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX / 8);
        let r = r.min(u64::MAX / 8);
        self.est = Some(match self.est {
            None => (r, r / 2),
            Some((srtt, rttvar)) => {
                let rttvar = (3 * rttvar + srtt.abs_diff(r)) / 4;
                let srtt = (7 * srtt + r) / 8;
                (srtt, rttvar)
            }
        });
    }

    /// The smoothed round trip, once measured.
    #[cfg(test)]
    pub fn srtt(&self) -> Option<Duration> {
        self.est.map(|(s, _)| Duration::from_micros(s))
    }

    /// How long the queries of a read may all stay unanswered before it asks one more peer.
    pub fn hedge_delay(&self, rpc_timeout: Duration) -> Duration {
        let max = HEDGE_MAX.min(rpc_timeout / 2).max(Duration::from_millis(1));
        let min = HEDGE_MIN.min(max);
        let raw = match self.est {
            None => HEDGE_DEFAULT,
            Some((srtt, rttvar)) => Duration::from_micros((srtt.saturating_add(4 * rttvar)).max(2 * srtt)),
        };
        raw.clamp(min, max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hedge_delay_follows_measured_round_trips_within_bounds() {
        let timeout = Duration::from_secs(3);
        let mut e = RttEstimator::default();
        assert_eq!(e.hedge_delay(timeout), HEDGE_DEFAULT, "nothing measured yet");
        // Steady 100 ms round trips: rttvar decays, 2·srtt is the floor.
        for _ in 0..100 {
            e.sample(Duration::from_millis(100));
        }
        assert_eq!(e.srtt(), Some(Duration::from_millis(100)));
        assert_eq!(e.hedge_delay(timeout), Duration::from_millis(200));
        // Jittery round trips (40 / 160 ms) hedge later than twice their mean.
        let mut j = RttEstimator::default();
        for i in 0..100 {
            j.sample(Duration::from_millis(if i % 2 == 0 { 40 } else { 160 }));
        }
        let d = j.hedge_delay(timeout);
        assert!(d > Duration::from_millis(250) && d < Duration::from_millis(500), "{d:?}");
        // Loopback: the floor. A slow path: the ceiling, and never past half the RPC timeout.
        let mut fast = RttEstimator::default();
        fast.sample(Duration::from_micros(200));
        assert_eq!(fast.hedge_delay(timeout), HEDGE_MIN);
        let mut slow = RttEstimator::default();
        slow.sample(Duration::from_secs(2));
        assert_eq!(slow.hedge_delay(timeout), HEDGE_MAX);
        assert_eq!(slow.hedge_delay(Duration::from_millis(800)), Duration::from_millis(400));
        assert_eq!(RttEstimator::default().hedge_delay(Duration::from_millis(60)), Duration::from_millis(30));
    }
}
