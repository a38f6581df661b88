//! Where numbers can be: one pass over the text, 64 bytes at a time, with bit masks of digits,
//! number characters and letters, giving
//!
//! - the **stretches** worth matching: maximal runs of number characters (digits, space,
//!   `. - ( ) +` and the `x` / `ext` of an extension; every numeric-run match lies inside one)
//!   holding at least 7 digits, or 4 digits and 3 dots (an IPv4 address);
//! - the **IBAN candidates**: two ASCII letters after a non-word byte, followed by two digits.
//!
//! Text without digits costs the mask computation only; runs without digits are never visited.

/// Fewest digits in a stretch that may hold a phone, card, SSN or IBAN number.
const MIN_DIGITS: u32 = 7;

/// The low `n` bits set.
#[inline(always)]
fn ones(n: usize) -> u64 {
    if n >= 64 { !0 } else { (1u64 << n) - 1 }
}

/// Per chunk, one bit per byte.
struct Masks {
    digit: u64,
    number: u64,
    dot: u64,
    letter: u64,
    word: u64,
}

/// The 64 flags (`0x80` or 0) as bits.
#[inline(always)]
fn pack(flags: &[u8; 64]) -> u64 {
    let mut m = 0u64;
    for (k, c) in flags.chunks_exact(8).enumerate() {
        let v = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        m |= (((v >> 7) & 0x0101_0101_0101_0101).wrapping_mul(0x0102_0408_1020_4080) >> 56)
            << (8 * k);
    }
    m
}

#[inline(always)]
fn masks(chunk: &[u8; 64]) -> Masks {
    let mut digit = [0u8; 64];
    let mut number = [0u8; 64];
    let mut dot = [0u8; 64];
    let mut letter = [0u8; 64];
    let mut word = [0u8; 64];
    for i in 0..64 {
        let b = chunk[i];
        let d = b.wrapping_sub(b'0') < 10;
        let l = (b | 0x20).wrapping_sub(b'a') < 26;
        let n = d
            | (b == b' ')
            | (b == b'.')
            | (b == b'-')
            | (b == b'(')
            | (b == b')')
            | (b == b'+')
            | (b == b'x')
            | (b == b'e')
            | (b == b't');
        digit[i] = 0x80 * u8::from(d);
        number[i] = 0x80 * u8::from(n);
        dot[i] = 0x80 * u8::from(b == b'.');
        letter[i] = 0x80 * u8::from(l);
        word[i] = 0x80 * u8::from(d | l | (b == b'_'));
    }
    Masks {
        digit: pack(&digit),
        number: pack(&number),
        dot: pack(&dot),
        letter: pack(&letter),
        word: pack(&word),
    }
}

/// A run of number characters that reached the end of the previous chunk.
#[derive(Clone, Copy)]
struct Open {
    start: usize,
    digits: u32,
    dots: u32,
}

/// Call `stretch(start, end)` for every stretch worth matching and `iban(start)` for every
/// IBAN candidate, each in text order.
pub(crate) fn scan(
    bytes: &[u8],
    mut stretch: impl FnMut(usize, usize),
    mut iban: impl FnMut(usize),
) {
    let n = bytes.len();
    let mut finish = |run: Open, end: usize| {
        if run.digits >= MIN_DIGITS || (run.digits >= 4 && run.dots >= 3) {
            stretch(run.start, end);
        }
    };
    let mut open: Option<Open> = None;
    // Letters and word bytes at the end of the previous chunk (for the IBAN test).
    let (mut prev_letter, mut prev_word) = (0u64, 0u64);
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
        let m = masks(chunk);
        let count = |bits: u64| (m.digit & bits).count_ones();
        let dots = |bits: u64| (m.dot & bits).count_ones();

        // IBAN candidates: digit `e` and `e + 1`, letters at `e - 1` and `e - 2`, no word byte
        // at `e - 3`.
        let next_digit = u64::from(bytes.get(base + 64).is_some_and(u8::is_ascii_digit)) << 63;
        let mut ibans = m.digit
            & ((m.digit >> 1) | next_digit)
            & ((m.letter << 1) | (prev_letter >> 63))
            & ((m.letter << 2) | (prev_letter >> 62))
            & !((m.word << 3) | (prev_word >> 61));
        while ibans != 0 {
            let e = base + ibans.trailing_zeros() as usize;
            ibans &= ibans - 1;
            iban(e - 2);
        }
        prev_letter = m.letter;
        prev_word = m.word;

        // A run carried over from the previous chunk goes on through the leading number bytes.
        let mut done = 0u64; // bits of runs already handled
        if let Some(mut run) = open.take() {
            let len = (!m.number).trailing_zeros() as usize;
            let seg = ones(len);
            run.digits += count(seg);
            run.dots += dots(seg);
            if len == 64 {
                open = Some(run);
                base += 64;
                continue;
            }
            finish(run, base + len);
            done = seg;
        }
        // Runs holding a digit, one per digit not yet covered.
        let mut digits = m.digit & !done;
        while digits != 0 {
            let k = digits.trailing_zeros() as usize;
            let zeros_below = !m.number & ones(k);
            let j = if zeros_below == 0 {
                0
            } else {
                64 - zeros_below.leading_zeros() as usize
            };
            let len = (!(m.number >> j)).trailing_zeros() as usize;
            let seg = ones(len) << j;
            let run = Open {
                start: base + j,
                digits: count(seg),
                dots: dots(seg),
            };
            if j + len >= 64 {
                open = Some(run);
                break;
            }
            finish(run, base + j + len);
            digits &= !seg;
        }
        // A run without digits (so far) that reaches the chunk's end may get them next.
        if open.is_none() && m.number >> 63 != 0 {
            let zeros = !m.number;
            let j = 64 - zeros.leading_zeros() as usize;
            let seg = !ones(j);
            open = Some(Open {
                start: base + j,
                digits: count(seg),
                dots: dots(seg),
            });
        }
        base += 64;
    }
    if let Some(run) = open {
        finish(run, n);
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
    fn masks_agree_with_the_byte_definition() {
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
    }
}
