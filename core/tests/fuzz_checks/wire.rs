//! `frame_decoder`: bytes through [`FrameDecoder`] (in chunk splits drawn from the input) and
//! through [`decode`] as one payload.

use ocd_core::proto::wire::{FrameDecoder, MAX_FRAME_LEN, WireError, decode, encode, encode_frame};

/// The input is `[seed_lo, seed_hi, stream…]`: the seed draws the chunk sizes the stream is fed
/// in. The whole input is also decoded as one frame payload.
pub fn frame_decoder(data: &[u8]) {
    envelope(data);
    let (seed, stream) = match data {
        [a, b, rest @ ..] => (u16::from_le_bytes([*a, *b]), rest),
        _ => (0, data),
    };
    let whole = stream_items(stream, &mut std::iter::repeat(stream.len().max(1)));
    let chunked = stream_items(stream, &mut chunk_sizes(seed));
    assert_eq!(whole, chunked, "the same stream decodes the same whatever its chunking");
    let bytewise = stream_items(stream, &mut std::iter::repeat(1));
    assert_eq!(whole, bytewise, "the same stream decodes the same byte by byte");
}

/// One frame payload: a decoded envelope survives a round trip, its kind has a name, and its
/// frame decodes through a [`FrameDecoder`] to the same bytes.
pub fn envelope(payload: &[u8]) {
    let Ok(m) = decode(payload) else { return };
    let _ = m.kind();
    let enc = encode(&m);
    assert!(enc.len() <= payload.len(), "re-encoding never grows a message ({} > {})", enc.len(), payload.len());
    let again = match decode(&enc) {
        Ok(m2) => m2,
        Err(e) => panic!("a re-encoded {} does not decode: {e}", m.kind()),
    };
    assert_eq!(encode(&again), enc, "a re-encoded {} re-encodes differently", m.kind());
    if same_as_itself(&m) {
        assert_eq!(again, m, "a re-encoded message decodes to another value");
    }
    let mut d = FrameDecoder::new();
    d.extend(&encode_frame(&m));
    match d.next_message() {
        Ok(Some(m3)) => assert_eq!(encode(&m3), enc, "the frame of a message decodes to it"),
        other => panic!("the frame of a {} does not decode: {other:?}", m.kind()),
    }
    assert_eq!(d.buffered(), 0);
}

/// Whether `x == x` (false with a NaN inside).
#[allow(clippy::eq_op)]
fn same_as_itself<T: PartialEq>(x: &T) -> bool {
    x == x
}

/// What a stream decodes to: each message re-encoded, then the terminal error if any.
#[derive(Debug, PartialEq)]
enum Item {
    Message(Vec<u8>),
    Error(WireError),
}

fn stream_items(stream: &[u8], sizes: &mut dyn Iterator<Item = usize>) -> Vec<Item> {
    let mut d = FrameDecoder::new();
    let mut items = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(1).clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        d.extend(chunk);
        loop {
            match d.next_message() {
                Ok(Some(m)) => items.push(Item::Message(encode(&m))),
                Ok(None) => break,
                Err(e) => {
                    // Poisoned: the same error for ever, nothing buffered.
                    d.extend(b"\0\0\0\x01\x05");
                    assert_eq!(d.next_message(), Err(e.clone()), "a decoder stays poisoned");
                    assert_eq!(d.next_frame_len(), Err(e.clone()), "a decoder stays poisoned");
                    assert_eq!(d.buffered(), 0, "a poisoned decoder holds nothing");
                    items.push(Item::Error(e));
                    return items;
                }
            }
        }
        assert!(d.buffered() < 4 + MAX_FRAME_LEN, "at most one partial frame is buffered ({})", d.buffered());
    }
    items
}

/// Chunk sizes from a seed: a small linear congruential sequence, up to `1 + seed % 256` bytes.
fn chunk_sizes(seed: u16) -> impl Iterator<Item = usize> {
    let max = 1 + usize::from(seed & 0xff);
    let mut state = u32::from(seed).wrapping_mul(2_654_435_761).wrapping_add(1);
    std::iter::from_fn(move || {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        Some(1 + (state >> 16) as usize % max)
    })
}
