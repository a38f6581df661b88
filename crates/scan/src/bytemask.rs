//! Bit masks of byte classes over blocks of 64 bytes: bit `i` of a mask says whether byte `i`
//! of the block is in the class. The scans of this crate find words, digits and symbols from
//! these masks instead of testing one byte at a time.
//!
//! The masks are computed 16 bytes at a time with the `wide` crate's portable vectors (SSE2 on
//! x86-64, NEON on aarch64, plain arrays elsewhere), which keeps `unsafe` out of this crate:
//! one compare and one `movemask` per 16 bytes and class, where a byte loop would need a
//! multiply per 8 bytes to gather its flags.

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
}
