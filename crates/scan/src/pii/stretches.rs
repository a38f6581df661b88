//! Where numbers can be: one pass over the class masks of the text (taken when its normalized
//! view was written, 64 bytes a chunk), giving
//!
//! - the **stretches** worth matching: maximal runs of number characters (digits, space,
//!   `. - ( ) +` and the `x` / `ext` of an extension; every numeric-run match lies inside one)
//!   holding at least 7 digits, or 4 digits and 3 dots (an IPv4 address);
//! - the **IBAN candidates**: two ASCII letters after a non-word byte, followed by two digits.
//!
//! The digit mask of a chunk finds where runs of digits start; chunks without digits cost a
//! test of that mask only. Where digits are, the masks of number characters and letters give
//! the IBAN candidates and the stretches that can be long enough (seven number bytes in a
//! row), with their bounds and digit counts; a stretch crossing a chunk boundary is finished
//! byte by byte.

use crate::bytemask::{TextMasks, ones};

/// Fewest digits in a stretch that may hold a phone, card, SSN or IBAN number.
const MIN_DIGITS: usize = 7;

/// Bytes the numeric-run pattern can match.
const NUMBER: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_digit()
            || matches!(
                c,
                b' ' | b'.' | b'-' | b'(' | b')' | b'+' | b'x' | b'e' | b't'
            );
        b += 1;
    }
    t
};

/// Whether a stretch holds enough digits (and dots) for a number worth classifying.
fn worth_matching(stretch: &[u8]) -> bool {
    let digits = stretch.iter().filter(|b| b.is_ascii_digit()).count();
    digits >= MIN_DIGITS || (digits >= 4 && dots(stretch) >= 3)
}

#[inline(always)]
fn word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Call `stretch(start, end)` for every stretch worth matching and `iban(start)` for every
/// IBAN candidate, each in text order; `masks` are those of `bytes`.
pub(crate) fn scan(
    bytes: &[u8],
    masks: &TextMasks,
    mut stretch: impl FnMut(usize, usize),
    mut iban: impl FnMut(usize),
) {
    let n = bytes.len();
    let mut covered: usize = 0; // the stretch of every digit before here is known
    let mut digit_before = 0u64; // whether the byte before the chunk is a digit
    for (k, m) in masks.chunks.iter().enumerate() {
        let base = 64 * k;
        let digit = m.digit;
        let mut run_starts = digit & !((digit << 1) | digit_before);
        digit_before = digit >> 63;
        if run_starts == 0 {
            continue;
        }
        let number = m.number;
        // IBAN candidates: mask tests for runs starting at bits 3..=62 (every byte they look
        // at is in the chunk), byte tests at the edges.
        let mut ibans = run_starts
            & INNER
            & (m.letter << 1)
            & (m.letter << 2)
            & (digit >> 1)
            & !((m.letter | digit | m.under) << 3);
        let mut edges = run_starts & !INNER;
        while edges != 0 {
            let j = edges.trailing_zeros() as usize;
            edges &= edges - 1;
            let d = base + j;
            // Two letters after a non-word byte, then two digits.
            if d >= 2
                && bytes[d - 1].is_ascii_alphabetic()
                && bytes[d - 2].is_ascii_alphabetic()
                && bytes.get(d + 1).is_some_and(u8::is_ascii_digit)
                && (d == 2 || !word_byte(bytes[d - 3]))
            {
                ibans |= 1 << j;
            }
        }
        while ibans != 0 {
            let j = ibans.trailing_zeros() as usize;
            ibans &= ibans - 1;
            iban(base + j - 2);
        }
        // Stretches: maximal runs of number bytes holding a run of digits that starts here
        // and that no earlier stretch covers. Only those with seven bytes in the chunk, or
        // reaching either end of it (they may go on), can be long enough to match; each is
        // found from one of its bits.
        run_starts &= !ones(covered.saturating_sub(base));
        let seven = number
            & (number >> 1)
            & (number >> 2)
            & (number >> 3)
            & (number >> 4)
            & (number >> 5)
            & (number >> 6);
        let mut marks = (seven | (number & EDGES)) & !ones(covered.saturating_sub(base));
        while marks != 0 {
            let j = marks.trailing_zeros() as usize;
            // The stretch's bounds: back to its start, on to its end.
            let below = !number & ones(j);
            let s = if below != 0 {
                base + 64 - below.leading_zeros() as usize
            } else {
                let mut s = base;
                while s > covered && NUMBER[usize::from(bytes[s - 1])] {
                    s -= 1;
                }
                s
            };
            let above = !number & !ones(j);
            let e = if above != 0 {
                base + above.trailing_zeros() as usize
            } else {
                let mut e = base + 64;
                while e < n && NUMBER[usize::from(bytes[e])] {
                    e += 1;
                }
                e
            };
            let mine = ones(e - base) & !ones(s.saturating_sub(base));
            marks &= !ones(e - base);
            // Without a run of digits starting in this chunk, the stretch belongs to another
            // chunk (or holds no digit).
            if run_starts & mine == 0 {
                continue;
            }
            covered = e;
            // Seven digits, or four digits and three dots, need seven bytes: shorter
            // stretches (most ids, prices and times) are not even counted.
            if e - s < 7 {
                continue;
            }
            let worth = if s >= base && e <= base + 64 {
                let digits = (digit & mine).count_ones();
                digits >= MIN_DIGITS as u32 || (digits >= 4 && dots(&bytes[s..e]) >= 3)
            } else {
                worth_matching(&bytes[s..e])
            };
            if worth {
                stretch(s, e);
            }
        }
    }
}

/// The first and last bit of a chunk: stretches holding them may go on in the next chunk or
/// begin in the previous one.
const EDGES: u64 = 1 | (1 << 63);

/// Bits 3..=62 of a chunk: run starts whose IBAN test reads only bytes of the chunk.
const INNER: u64 = !0b111 & !(1 << 63);

/// Number of `.` bytes.
fn dots(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'.').count()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte-at-a-time definition the masks must reproduce.
    fn reference(bytes: &[u8]) -> (Vec<(usize, usize)>, Vec<usize>) {
        let number = |b: u8| {
            matches!(
                b,
                b'0'..=b'9' | b' ' | b'.' | b'-' | b'(' | b')' | b'+' | b'x' | b'e' | b't'
            )
        };
        let mut stretches = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if !number(bytes[i]) {
                i += 1;
                continue;
            }
            let s = i;
            while i < bytes.len() && number(bytes[i]) {
                i += 1;
            }
            let run = &bytes[s..i];
            let d = run.iter().filter(|b| b.is_ascii_digit()).count();
            let dots = run.iter().filter(|&&b| b == b'.').count();
            if d >= 7 || (d >= 4 && dots >= 3) {
                stretches.push((s, i));
            }
        }
        let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        let ibans = (2..bytes.len())
            .filter(|&e| {
                bytes[e].is_ascii_digit()
                    && bytes.get(e + 1).is_some_and(u8::is_ascii_digit)
                    && bytes[e - 1].is_ascii_alphabetic()
                    && bytes[e - 2].is_ascii_alphabetic()
                    && (e == 2 || !word(bytes[e - 3]))
            })
            .map(|e| e - 2)
            .collect();
        (stretches, ibans)
    }

    #[test]
    fn scan_agrees_with_the_byte_definition() {
        let alphabet: &[&[u8]] = &[
            b"0",
            b"12",
            b"345",
            b" ",
            b".",
            b"-",
            b"(",
            b")",
            b"+",
            b"x",
            b"e",
            b"t",
            b"DE",
            b"gb",
            b"a",
            b"_",
            b",",
            b"\xc3\xa9",
            b"1.2.3.4",
            b"   ",
        ];
        let mut rng = crate::test_text::Rng(0x9E37_79B9_7F4A_7C15);
        for round in 0..20_000 {
            let text = crate::test_text::random(&mut rng, alphabet, round % 90);
            let (mut s, mut i) = (Vec::new(), Vec::new());
            scan(
                &text,
                &TextMasks::of(&text),
                |a, b| s.push((a, b)),
                |c| i.push(c),
            );
            assert_eq!(
                (s, i),
                reference(&text),
                "{:?}",
                String::from_utf8_lossy(&text)
            );
        }
        // Stretches crossing chunk boundaries in both directions.
        for lead in 0..70 {
            for body in [&b"1 "[..], b" .", b"12.", b"e t "] {
                for reps in [1, 5, 40, 90] {
                    let mut text = b"ab ".repeat(lead / 3);
                    text.extend_from_slice(&b"x ".repeat(lead % 7));
                    for _ in 0..reps {
                        text.extend_from_slice(body);
                    }
                    text.extend_from_slice(b"9 DE89 3704 tail");
                    let (mut s, mut i) = (Vec::new(), Vec::new());
                    scan(
                        &text,
                        &TextMasks::of(&text),
                        |a, b| s.push((a, b)),
                        |c| i.push(c),
                    );
                    let text = String::from_utf8_lossy(&text);
                    assert_eq!((s, i), reference(text.as_bytes()), "{text:?}");
                }
            }
        }
    }
}
