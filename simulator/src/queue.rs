//! The event queue: a calendar queue with 1 ms buckets, ordered exactly like a binary heap on
//! `(time, sequence number)` but with O(1) push and pop.
//!
//! Events less than [`WINDOW_MS`] ahead go straight into the bucket of their millisecond (a ring);
//! later ones wait in a binary heap and move into the ring, in `(time, seq)` order, as soon as
//! their millisecond enters the window — before any event for that millisecond can be pushed
//! directly — so every bucket stays sorted by sequence number.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

/// Width of the ring, in ms (a power of two).
pub const WINDOW_MS: u64 = 1 << 13;
const MASK: u64 = WINDOW_MS - 1;

struct Far<T> {
    at: u64,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Far<T> {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl<T> Eq for Far<T> {}
impl<T> PartialOrd for Far<T> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl<T> Ord for Far<T> {
    /// Reversed: the heap pops the earliest `(at, seq)` first.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// Time-ordered events; ties pop in push order.
pub struct EventQueue<T> {
    now: u64,
    ring: Vec<VecDeque<T>>,
    in_ring: usize,
    far: BinaryHeap<Far<T>>,
    seq: u64,
}

impl<T> EventQueue<T> {
    /// An empty queue whose clock starts at `start` (ms).
    pub fn new(start: u64) -> Self {
        EventQueue {
            now: start,
            ring: (0..WINDOW_MS).map(|_| VecDeque::new()).collect(),
            in_ring: 0,
            far: BinaryHeap::new(),
            seq: 0,
        }
    }

    /// Number of queued events.
    pub fn len(&self) -> usize {
        self.in_ring + self.far.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues `item` at `at` (ms); a time in the past is treated as now.
    pub fn push(&mut self, at: u64, item: T) {
        let at = at.max(self.now);
        self.seq += 1;
        if at - self.now < WINDOW_MS {
            self.ring[(at & MASK) as usize].push_back(item);
            self.in_ring += 1;
        } else {
            self.far.push(Far { at, seq: self.seq, item });
        }
    }

    fn migrate(&mut self) {
        while let Some(top) = self.far.peek() {
            if top.at - self.now >= WINDOW_MS {
                break;
            }
            if let Some(f) = self.far.pop() {
                self.ring[(f.at & MASK) as usize].push_back(f.item);
                self.in_ring += 1;
            }
        }
    }

    /// The earliest event at or before `limit`, with its time; `None` if there is none (the clock
    /// then stops at `limit` or at the next event, whichever is earlier).
    pub fn pop_until(&mut self, limit: u64) -> Option<(u64, T)> {
        loop {
            if let Some(item) = self.ring[(self.now & MASK) as usize].pop_front() {
                self.in_ring -= 1;
                return Some((self.now, item));
            }
            // The current millisecond is exhausted: advance the clock.
            let next = if self.in_ring > 0 {
                self.now + 1
            } else {
                match self.far.peek() {
                    Some(f) => f.at,
                    None => return None,
                }
            };
            if next > limit {
                return None;
            }
            self.now = next;
            self.migrate();
        }
    }
}

/// What [`EventQueue::pop_if`] found.
pub enum PopIf<T> {
    /// The earliest event, which the predicate accepted, with its time.
    Popped(u64, T),
    /// The earliest event is due at this time, but the predicate refused it: it stays queued.
    Refused(u64),
    /// Nothing is due at or before the limit.
    Nothing,
}

impl<T> EventQueue<T> {
    /// Like [`EventQueue::pop_until`], but pops the earliest event only if `accept` says so;
    /// otherwise it stays first in the queue.
    pub fn pop_if(&mut self, limit: u64, accept: impl FnOnce(&T) -> bool) -> PopIf<T> {
        loop {
            let bucket = &mut self.ring[(self.now & MASK) as usize];
            if let Some(item) = bucket.front() {
                if !accept(item) {
                    return PopIf::Refused(self.now);
                }
                let Some(item) = bucket.pop_front() else { return PopIf::Nothing };
                self.in_ring -= 1;
                return PopIf::Popped(self.now, item);
            }
            let next = if self.in_ring > 0 {
                self.now + 1
            } else {
                match self.far.peek() {
                    Some(f) => f.at,
                    None => return PopIf::Nothing,
                }
            };
            if next > limit {
                return PopIf::Nothing;
            }
            self.now = next;
            self.migrate();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ocd_core::proto::DetRng;

    #[test]
    fn pops_in_time_then_push_order_like_a_heap() {
        let mut rng = DetRng::new(3, "queue");
        let mut q = EventQueue::new(1000);
        let mut reference: Vec<(u64, u64)> = Vec::new();
        let mut seq = 0u64;
        let mut now = 1000;
        let mut popped = Vec::new();
        for round in 0..2000 {
            for _ in 0..rng.below(5) {
                // Near and far events, with many ties.
                let delay = match rng.below(4) {
                    0 => 0,
                    1 => rng.below(50),
                    2 => rng.below(3) * 20_000,
                    _ => 60_000 + rng.below(3) * 100_000,
                };
                seq += 1;
                q.push(now + delay, seq);
                reference.push((now + delay, seq));
            }
            let limit = now + if round % 7 == 0 { 200_000 } else { 30 };
            loop {
                match q.pop_until(limit) {
                    Some((at, s)) => {
                        assert!(at >= now);
                        now = at;
                        popped.push((at, s));
                        if rng.below(3) == 0 {
                            break;
                        }
                    }
                    None => {
                        now = limit;
                        break;
                    }
                }
            }
        }
        while let Some((at, s)) = q.pop_until(u64::MAX) {
            popped.push((at, s));
        }
        reference.sort();
        assert_eq!(popped, reference);
        assert!(q.is_empty());
    }

    #[test]
    fn pop_if_leaves_a_refused_event_first() {
        let mut q = EventQueue::new(0);
        q.push(5, 'a');
        q.push(5, 'b');
        q.push(20_000, 'c');
        assert!(matches!(q.pop_if(4, |_| true), PopIf::Nothing));
        assert!(matches!(q.pop_if(10, |c| *c == 'b'), PopIf::Refused(5)));
        assert!(matches!(q.pop_if(10, |c| *c == 'a'), PopIf::Popped(5, 'a')));
        assert!(matches!(q.pop_if(10, |_| true), PopIf::Popped(5, 'b')));
        assert!(matches!(q.pop_if(10, |_| true), PopIf::Nothing));
        assert!(matches!(q.pop_if(30_000, |_| false), PopIf::Refused(20_000)));
        assert_eq!(q.pop_until(30_000), Some((20_000, 'c')));
        assert!(q.is_empty());
    }
}
