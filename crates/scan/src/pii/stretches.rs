//! Where numbers can be: one pass over the text, 64 bytes at a time, giving
//!
//! - the **stretches** worth matching: maximal runs of number characters (digits, space,
//!   `. - ( ) +` and the `x` / `ext` of an extension; every numeric-run match lies inside one)
//!   holding at least 7 digits, or 4 digits and 3 dots (an IPv4 address);
//! - the **IBAN candidates**: two ASCII letters after a non-word byte, followed by two digits.
//!
//! A bit mask of digits per 64 bytes finds where runs of digits start; chunks without digits
//! cost that mask only. Where digits are, masks of number characters and dots give each
//! stretch's bounds and counts (a stretch crossing a chunk boundary is finished byte by byte).

use crate::bytemask::{Block, eq, range};

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
    let dots = stretch.iter().filter(|&&b| b == b'.').count();
    digits >= MIN_DIGITS || (digits >= 4 && dots >= 3)
}

/// The low `n` bits set.
#[inline(always)]
fn ones(n: usize) -> u64 {
    if n >= 64 { !0 } else { (1u64 << n) - 1 }
}

#[inline(always)]
fn word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Call `stretch(start, end)` for every stretch worth matching and `iban(start)` for every
/// IBAN candidate, each in text order.
pub(crate) fn scan(
    bytes: &[u8],
    mut stretch: impl FnMut(usize, usize),
    mut iban: impl FnMut(usize),
) {
    let n = bytes.len();
    let mut covered = 0; // the stretch of every digit before here is known
    let mut digit_before = 0u64; // whether the byte before the chunk is a digit
    let mut tail = [0u8; 64];
    let mut base = 0;
    while base < n {
        let chunk: &[u8; 64] = match bytes.get(base..base + 64).map(<&[u8; 64]>::try_from) {
            Some(Ok(c)) => c,
            _ => {
                // The last chunk, zero-padded: a zero byte is in no class.
                let rest = &bytes[base..];
                tail[..rest.len()].copy_from_slice(rest);
                &tail
            }
        };
        let block = Block::new(chunk);
        let digit = block.mask(|v| range(v, b'0', 10));
        let mut run_starts = digit & !((digit << 1) | digit_before);
        digit_before = digit >> 63;
        if run_starts == 0 {
            base += 64;
            continue;
        }
        let number = block.mask(|v| {
            range(v, b'0', 10)
                | range(v, b'(', 2)
                | range(v, b'-', 2)
                | eq(v, b' ')
                | eq(v, b'+')
                | eq(v, b'x')
                | eq(v, b'e')
                | eq(v, b't')
        });
        while run_starts != 0 {
            let j = run_starts.trailing_zeros() as usize;
            run_starts &= run_starts - 1;
            let d = base + j;
            // Two letters after a non-word byte, then two digits.
            if d >= 2
                && bytes[d - 1].is_ascii_alphabetic()
                && bytes[d - 2].is_ascii_alphabetic()
                && bytes.get(d + 1).is_some_and(u8::is_ascii_digit)
                && (d == 2 || !word_byte(bytes[d - 3]))
            {
                iban(d - 2);
            }
            if d < covered {
                continue;
            }
            // The stretch's bounds: back to its start (no digit lies there: that digit's
            // stretch would have covered this run), on to its end.
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
            covered = e;
            // Seven digits, or four digits and three dots, need seven bytes: shorter
            // stretches (most ids, prices and times) are not even counted.
            if e - s >= 7 && worth_matching(&bytes[s..e]) {
                stretch(s, e);
            }
        }
        base += 64;
    }
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
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for round in 0..20_000 {
            let mut text = Vec::new();
            for _ in 0..(round % 90) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                text.extend_from_slice(alphabet[(state % alphabet.len() as u64) as usize]);
            }
            let (mut s, mut i) = (Vec::new(), Vec::new());
            scan(&text, |a, b| s.push((a, b)), |c| i.push(c));
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
                    scan(&text, |a, b| s.push((a, b)), |c| i.push(c));
                    let text = String::from_utf8_lossy(&text);
                    assert_eq!((s, i), reference(text.as_bytes()), "{text:?}");
                }
            }
        }
    }
}
