//! The core's only source of randomness: a seeded, deterministic stream.
//!
//! Built on BLAKE3's extendable output (a cryptographic PRF), so values are unpredictable to
//! anyone who does not know the seed — good enough for handshake nonces — yet the same seed always
//! yields the same sequence, which is what makes simulator runs reproducible byte for byte.

/// Deterministic random number generator owned by a state machine.
#[derive(Clone)]
pub struct DetRng {
    reader: blake3::OutputReader,
    buf: [u8; 64],
    pos: usize,
}

impl std::fmt::Debug for DetRng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DetRng")
    }
}

impl DetRng {
    /// A generator for `seed`, separated by `domain` so that sub-machines seeded from one peer seed
    /// draw independent streams.
    pub fn new(seed: u64, domain: &str) -> Self {
        let mut h = blake3::Hasher::new_derive_key("ocd-core DetRng v1");
        h.update(&seed.to_le_bytes());
        h.update(domain.as_bytes());
        DetRng { reader: h.finalize_xof(), buf: [0; 64], pos: 64 }
    }

    /// Derives an independent child generator (for a sub-machine).
    pub fn fork(&mut self, domain: &str) -> DetRng {
        let s = self.next_u64();
        DetRng::new(s, domain)
    }

    /// Fills `out` with random bytes.
    pub fn fill(&mut self, out: &mut [u8]) {
        for b in out {
            if self.pos == self.buf.len() {
                self.reader.fill(&mut self.buf);
                self.pos = 0;
            }
            *b = self.buf[self.pos];
            self.pos += 1;
        }
    }

    /// A uniformly random `u64`.
    pub fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill(&mut b);
        u64::from_le_bytes(b)
    }

    /// A uniformly random value in `0..n` (`0` when `n == 0`), without modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        if n <= 1 {
            return 0;
        }
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let v = self.next_u64();
            if v < zone {
                return v % n;
            }
        }
    }

    /// A uniformly random value in `lo..=hi` (`lo` when `hi <= lo`).
    pub fn range_inclusive(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.below(hi - lo + 1)
    }

    /// A uniformly random `f64` in `[0, 1)`.
    pub fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `true` with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit_f64() < p
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_different_domain_different_stream() {
        let mut a = DetRng::new(7, "pool");
        let mut b = DetRng::new(7, "pool");
        let mut c = DetRng::new(7, "indexer");
        let xa: Vec<u64> = (0..32).map(|_| a.next_u64()).collect();
        let xb: Vec<u64> = (0..32).map(|_| b.next_u64()).collect();
        let xc: Vec<u64> = (0..32).map(|_| c.next_u64()).collect();
        assert_eq!(xa, xb);
        assert_ne!(xa, xc);
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut r = DetRng::new(1, "t");
        let mut seen = [false; 10];
        for _ in 0..1000 {
            let v = r.below(10) as usize;
            seen[v] = true;
        }
        assert!(seen.iter().all(|s| *s));
        assert_eq!(r.below(0), 0);
        assert_eq!(r.range_inclusive(5, 5), 5);
    }
}
