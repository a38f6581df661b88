//! Bit masks of byte classes over blocks of 64 bytes: bit `i` of a mask says whether byte `i`
//! of the block is in the class. The scans of this crate find words, digits and symbols from
//! these masks instead of testing one byte at a time.
//!
//! The masks are computed 16 bytes at a time with the `wide` crate's portable vectors (SSE2 on
//! x86-64, NEON on aarch64, plain arrays elsewhere), which keeps `unsafe` out of this crate:
//! one compare and one `movemask` per 16 bytes and class, where a byte loop would need a
//! multiply per 8 bytes to gather its flags.
//!
//! [`TextMasks`] holds the masks of every chunk of a text that the scans after the word pass
//! need (digits, number characters, letters, `:`, …, and the word and symbol masks of its
//! normalized view). They are taken in the one pass that writes the normalized view
//! (`prefilter::View`), which has each chunk in registers anyway, so that the word pass, the
//! number and IBAN scan (`pii/stretches.rs`), the IPv6 scan and the encoded-payload scan do
//! not each load the text again and set up their own chunk loop.

use wide::u8x16;

/// 64 bytes as four vectors.
#[derive(Clone, Copy)]
pub(crate) struct Block([u8x16; 4]);

impl Block {
    #[inline(always)]
    pub fn new(bytes: &[u8; 64]) -> Self {
        let lane = |k: usize| {
            let mut a = [0u8; 16];
            a.copy_from_slice(&bytes[16 * k..16 * k + 16]);
            u8x16::new(a)
        };
        Block([lane(0), lane(1), lane(2), lane(3)])
    }

    /// The four vectors.
    #[inline(always)]
    pub fn lanes(&self) -> &[u8x16; 4] {
        &self.0
    }

    /// `f` applied to each vector.
    #[inline(always)]
    pub fn map(&self, f: impl Fn(u8x16) -> u8x16) -> Self {
        Block([f(self.0[0]), f(self.0[1]), f(self.0[2]), f(self.0[3])])
    }

    /// The 64 bytes.
    #[inline(always)]
    pub fn bytes(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        for (k, v) in self.0.iter().enumerate() {
            out[16 * k..16 * k + 16].copy_from_slice(&v.to_array());
        }
        out
    }

    /// The mask of the bytes for which `class` (per 16-byte vector, all ones or all zeros per
    /// byte; only the high bit counts) is set.
    #[inline(always)]
    pub fn mask(&self, class: impl Fn(u8x16) -> u8x16) -> u64 {
        let mut m = 0u64;
        for (k, v) in self.0.iter().enumerate() {
            m |= u64::from(class(*v).move_mask() as u16) << (16 * k);
        }
        m
    }
}

/// Class masks of one 64-byte chunk of a text (and of its normalized view), for the word pass
/// and the scans that follow it.
#[derive(Clone, Copy, Default)]
pub(crate) struct ChunkMasks {
    /// ASCII digits.
    pub digit: u64,
    /// ASCII uppercase letters.
    pub upper: u64,
    /// Bytes a numeric run can hold (digits, space, `. - ( ) +`, `x`, `e`, `t`); only
    /// computed for chunks holding a digit (zero otherwise).
    pub number: u64,
    /// ASCII letters.
    pub letter: u64,
    /// `:`.
    pub colon: u64,
    /// Word bytes of the normalized view (`prefilter::View`): ASCII letters and digits, `_`,
    /// non-ASCII bytes.
    pub word: u64,
    /// `_`.
    pub under: u64,
    /// First bytes of the symbols of the lexicon the view was written for (in the view).
    pub symbol: u64,
}

/// The [`ChunkMasks`] of every chunk of a text (chunk `k` is bytes `64k..64k + 64`; the last
/// one read zero-padded), its `%` count and whether it may hold a base64 run long enough to
/// decode. Filled while the normalized view is written (`prefilter::View`).
#[derive(Default)]
pub(crate) struct TextMasks {
    pub chunks: Vec<ChunkMasks>,
    /// `%` bytes counted per byte position of the 16-byte vectors, saturating at 255.
    percent_lanes: u8x16,
    /// Whether [`LONG_RUN`] consecutive bytes lie in `+`..=`z`, the range of the base64
    /// alphabets (standard and URL-safe, with padding): false means no base64 run is long
    /// enough to decode.
    pub long_run: bool,
    /// Bytes in that range at the end of the chunks so far.
    run_tail: usize,
}

/// Shortest base64 (or hex) run worth decoding.
pub(crate) const LONG_RUN: usize = 24;

impl TextMasks {
    /// Masks of `bytes`, computed on their own.
    #[cfg(test)]
    pub fn of(bytes: &[u8]) -> Self {
        let mut m = TextMasks::default();
        m.fill(bytes);
        m
    }

    /// Make these the masks of `bytes`, reusing the buffer.
    #[cfg(test)]
    pub fn fill(&mut self, bytes: &[u8]) {
        self.clear();
        let mut tail = [0u8; 64];
        for chunk in bytes.chunks(64) {
            let block = match <&[u8; 64]>::try_from(chunk) {
                Ok(c) => Block::new(c),
                Err(_) => {
                    tail[..chunk.len()].copy_from_slice(chunk);
                    Block::new(&tail)
                }
            };
            self.push(&block);
        }
    }

    /// Forget every chunk.
    pub fn clear(&mut self) {
        self.chunks.clear();
        self.percent_lanes = u8x16::splat(0);
        self.long_run = false;
        self.run_tail = 0;
    }

    /// Append the masks of the next chunk, `block` of the original text.
    #[inline(always)]
    pub fn push(&mut self, block: &Block) {
        let digit = block.mask(|v| range(v, b'0', 10));
        let upper = block.mask(|v| range(v, b'A', 26));
        let letter = block.mask(|v| range(v | u8x16::splat(0x20), b'a', 26));
        let under = block.mask(|v| eq(v, b'_'));
        let high = block.mask(|v| v);
        let number = if digit != 0 {
            block.mask(|v| {
                range(v, b'(', 2)
                    | range(v, b'-', 2)
                    | eq(v, b' ')
                    | eq(v, b'+')
                    | eq(v, b'x')
                    | eq(v, b'e')
                    | eq(v, b't')
            }) | digit
        } else {
            0
        };
        // Runs of LONG_RUN (24) bytes in `+`..=`z`: doubling, bit `i` of `x` says that 2, 4,
        // 8, 16, then 24 bytes from `i` on are in the range; then a run going on from the
        // chunks before.
        let wide_run = block.mask(|v| range(v, b'+', b'z' - b'+' + 1));
        let x = wide_run & (wide_run >> 1);
        let x = x & (x >> 2);
        let x = x & (x >> 4);
        let x = x & (x >> 8);
        let x = x & (x >> 8);
        let from_before = self.run_tail + wide_run.trailing_ones() as usize;
        self.long_run |= x != 0 || from_before >= LONG_RUN;
        self.run_tail = if wide_run == !0 {
            from_before
        } else {
            wide_run.leading_ones() as usize
        };
        let colon = block.mask(|v| eq(v, b':'));
        for &v in block.lanes() {
            self.percent_lanes = self
                .percent_lanes
                .saturating_add(eq(v, b'%') & u8x16::splat(1));
        }
        self.chunks.push(ChunkMasks {
            digit,
            upper,
            number,
            letter,
            colon,
            // Lowercasing keeps every byte in or out of these classes; only escapes turned
            // into spaces change them (`prefilter::View` takes them again then).
            word: letter | digit | under | high,
            under,
            symbol: 0,
        });
    }

    /// The number of `%` bytes, or some number of 255 or more when they are more than that.
    pub fn percents(&self) -> u32 {
        self.percent_lanes
            .to_array()
            .iter()
            .map(|&n| u32::from(n))
            .sum()
    }

    /// Whether the mask `class` of the chunks has a bit set in `from..to`.
    #[inline(always)]
    pub fn any(&self, class: impl Fn(&ChunkMasks) -> u64, from: usize, to: usize) -> bool {
        (from / 64..to.div_ceil(64)).any(|k| {
            let low = from.saturating_sub(64 * k);
            let high = (to - 64 * k).min(64);
            class(&self.chunk(k)) & ones(high) & !ones(low) != 0
        })
    }

    /// The masks of chunk `k` (all zero past the end).
    #[inline(always)]
    pub fn chunk(&self, k: usize) -> ChunkMasks {
        self.chunks.get(k).copied().unwrap_or_default()
    }
}

/// The low `n` bits set.
#[inline(always)]
pub(crate) fn ones(n: usize) -> u64 {
    if n >= 64 { !0 } else { (1u64 << n) - 1 }
}

/// All ones in the bytes of `v` equal to `c`.
#[inline(always)]
pub(crate) fn eq(v: u8x16, c: u8) -> u8x16 {
    v.cmp_eq(u8x16::splat(c))
}

/// All ones in the bytes of `v` in `lo..lo + n` (`n` ≥ 1).
#[inline(always)]
pub(crate) fn range(v: u8x16, lo: u8, n: u8) -> u8x16 {
    let d = v - u8x16::splat(lo);
    d.min(u8x16::splat(n - 1)).cmp_eq(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_match_byte_tests() {
        let mut bytes = [0u8; 64];
        for round in 0..256u32 {
            for (j, b) in bytes.iter_mut().enumerate() {
                *b = (round.wrapping_mul(97).wrapping_add(j as u32 * 31) % 256) as u8;
            }
            let block = Block::new(&bytes);
            let bits = |f: &dyn Fn(u8) -> bool| {
                bytes
                    .iter()
                    .enumerate()
                    .fold(0u64, |m, (j, &b)| m | (u64::from(f(b)) << j))
            };
            assert_eq!(block.mask(|v| eq(v, b'_')), bits(&|b| b == b'_'));
            assert_eq!(
                block.mask(|v| range(v, b'a', 26)),
                bits(&|b| b.is_ascii_lowercase())
            );
            assert_eq!(
                block.mask(|v| range(v, b'0', 10)),
                bits(&|b| b.is_ascii_digit())
            );
            assert_eq!(block.mask(|v| v), bits(&|b| b >= 0x80));
            assert_eq!(block.mask(|v| range(v, 0xF0, 16)), bits(&|b| b >= 0xF0));
        }
    }

    #[test]
    fn text_masks_match_their_definitions() {
        let pieces: &[&[u8]] = &[
            b"a",
            b"Z",
            b"0",
            b"7",
            b" ",
            b".",
            b"-",
            b"(",
            b")",
            b"+",
            b"x",
            b"e",
            b"t",
            b"X",
            b"_",
            b":",
            b"%",
            b"/",
            b"=",
            b",",
            b"\"",
            b"\xc3\xa9",
            b"~",
            b"{",
            b"\n",
            b"aGVsbG8gd29ybGQ",
            b"%%%%%%%%%%",
        ];
        let mut rng = crate::test_text::Rng(0x9E37_79B9_7F4A_7C15);
        for round in 0..4000 {
            let text = crate::test_text::random(&mut rng, pieces, round % 120);
            let masks = TextMasks::of(&text);
            assert_eq!(masks.chunks.len(), text.len().div_ceil(64));
            for (k, m) in masks.chunks.iter().enumerate() {
                let bits = |f: &dyn Fn(u8) -> bool| {
                    (0..64).fold(0u64, |acc, j| {
                        let hit = text.get(64 * k + j).is_some_and(|&b| f(b));
                        acc | (u64::from(hit) << j)
                    })
                };
                let digit = bits(&|b| b.is_ascii_digit());
                assert_eq!(m.digit, digit);
                assert_eq!(m.upper, bits(&|b| b.is_ascii_uppercase()));
                assert_eq!(m.letter, bits(&|b| b.is_ascii_alphabetic()));
                assert_eq!(m.under, bits(&|b| b == b'_'));
                assert_eq!(m.colon, bits(&|b| b == b':'));
                assert_eq!(
                    m.word,
                    bits(&|b| b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80)
                );
                let number = bits(&|b| b.is_ascii_digit() || b" .-()+xet".contains(&b));
                assert_eq!(m.number, if digit != 0 { number } else { 0 });
                assert_eq!(m.symbol, 0);
            }
            let percents = text.iter().filter(|&&b| b == b'%').count();
            assert_eq!(masks.percents() >= 4, percents >= 4, "{round}");
            let long_run = text
                .split(|&b| !(b'+'..=b'z').contains(&b))
                .any(|run| run.len() >= LONG_RUN);
            assert_eq!(masks.long_run, long_run, "{round}");
        }
        // More `%` than a lane counts.
        let many = vec![b'%'; 64 * 300];
        assert!(TextMasks::of(&many).percents() >= 4);
    }

    #[test]
    fn bits_in_a_range_of_chunks() {
        let mut text = vec![b'a'; 300];
        text[70] = b'_';
        text[200] = b'_';
        let masks = TextMasks::of(&text);
        let under = |from, to| masks.any(|m| m.under, from, to);
        assert!(under(0, 71) && under(70, 71) && under(60, 201) && under(200, 300));
        assert!(!under(0, 70) && !under(71, 200) && !under(201, 300) && !under(250, 400));
    }
}
