//! The trace hash: BLAKE3 over everything that happens in a run, fed through a buffer.
//!
//! Records are appended to a byte buffer that is handed to BLAKE3 in large blocks, so the hasher
//! runs its wide SIMD path instead of compressing a few bytes per call. The digest is exactly
//! BLAKE3 over the concatenation of every record: buffering changes the speed, never the value.

use std::fmt;

/// Bytes gathered before they are hashed (a multiple of BLAKE3's 1 KiB chunk).
const FLUSH_AT: usize = 64 * 1024;

/// A buffered BLAKE3 hasher for the run's trace.
pub struct Trace {
    hasher: blake3::Hasher,
    buf: Vec<u8>,
}

impl Trace {
    /// A trace keyed by `context` (BLAKE3 key derivation).
    pub fn new(context: &str) -> Trace {
        Trace { hasher: blake3::Hasher::new_derive_key(context), buf: Vec::with_capacity(FLUSH_AT + 4096) }
    }

    #[inline]
    fn flush_if_full(&mut self) {
        if self.buf.len() >= FLUSH_AT {
            self.hasher.update(&self.buf);
            self.buf.clear();
        }
    }

    /// Appends raw bytes.
    #[inline]
    pub fn bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
        self.flush_if_full();
    }

    /// Appends a `u64`, little-endian.
    #[inline]
    pub fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }

    /// Appends a `u32`, little-endian.
    #[inline]
    pub fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }

    /// Appends the `Debug` rendering of `v`, without allocating.
    pub fn debug(&mut self, v: &dyn fmt::Debug) {
        let _ = fmt::Write::write_fmt(&mut BufWriter(&mut self.buf), format_args!("{v:?}"));
        self.flush_if_full();
    }

    /// The digest of everything appended so far, in hex.
    pub fn finalize_hex(&mut self) -> String {
        self.hasher.update(&self.buf);
        self.buf.clear();
        self.hasher.finalize().to_hex().to_string()
    }
}

/// `fmt::Write` into the trace buffer.
struct BufWriter<'a>(&'a mut Vec<u8>);

impl fmt::Write for BufWriter<'_> {
    #[inline]
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffered_trace_equals_blake3_of_the_concatenated_records() {
        let mut t = Trace::new("ctx");
        let mut reference = blake3::Hasher::new_derive_key("ctx");
        for i in 0..50_000u64 {
            t.bytes(b"msg");
            t.u64(i);
            t.debug(&(i, "x"));
            reference.update(b"msg");
            reference.update(&i.to_le_bytes());
            reference.update(format!("{:?}", (i, "x")).as_bytes());
        }
        assert_eq!(t.finalize_hex(), reference.finalize().to_hex().to_string());
    }
}
