//! Hand-written matchers for the two PII patterns that run most often, each giving exactly the
//! match the `regex` crate gives for its pattern (leftmost start, then leftmost-first preference)
//! without a regex call per candidate. Both patterns are simple enough that their backtracking
//! choices reduce to deterministic rules; the reasoning is written next to each step, and the
//! tests compare every matcher with the compiled pattern on random inputs.

/// The numeric-run pattern: digit groups joined by one space, dot, dash or parentheses, with an
/// optional leading `+` and an optional `x` / `ext` extension.
#[cfg(test)]
pub(crate) const NUMERIC_PATTERN: &str = r"(?:\+ ?)?(?:\(\d{1,5}\) ?)?\d+(?:(?:[ .\-]|\) ?| ?\(|[ .\-]\()\d+\)?)*(?: ?(?:x|ext\.?) ?\d{1,5}\b)?";

/// The email pattern (ASCII, case-sensitive classes).
#[cfg(test)]
pub(crate) const EMAIL_PATTERN: &str =
    r"[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9\-]{1,63}(?:\.[A-Za-z0-9\-]{1,63})*\.[A-Za-z]{2,24}\b";

/// A word byte for `\b` with `unicode(false)`.
#[inline(always)]
fn word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Length of the run of ASCII digits at `bytes[i..]`.
#[inline(always)]
fn digit_run(bytes: &[u8], i: usize) -> usize {
    bytes
        .get(i..)
        .map_or(0, |t| t.iter().take_while(|b| b.is_ascii_digit()).count())
}

#[inline(always)]
fn digit_at(bytes: &[u8], i: usize) -> bool {
    bytes.get(i).is_some_and(u8::is_ascii_digit)
}

/// The end of `NUMERIC_PATTERN` matched at exactly `p`, if it matches there.
///
/// Why it is deterministic: `\d+` is always followed by something that is not a digit, so it
/// takes the whole digit run; each optional part tried greedily either fits or, when it does
/// not, the shorter choice fails too (a space left unconsumed is not a digit); and everything
/// after the repeated group is optional, so once the group stops the match succeeds and no
/// earlier choice is revisited.
pub(crate) fn numeric_at(bytes: &[u8], p: usize) -> Option<usize> {
    let at = |i: usize| bytes.get(i).copied().unwrap_or(0);
    let mut i = p;
    if at(i) == b'+' {
        i += 1;
        if at(i) == b' ' {
            i += 1;
        }
    }
    if at(i) == b'(' {
        // `\(\d{1,5}\) ?` must be followed by a digit; skipping it leaves `(`, not a digit.
        let d = digit_run(bytes, i + 1);
        if !((1..=5).contains(&d) && at(i + 1 + d) == b')') {
            return None;
        }
        let k = i + 2 + d;
        i = if at(k) == b' ' && digit_at(bytes, k + 1) {
            k + 1
        } else if digit_at(bytes, k) {
            k
        } else {
            return None;
        };
    }
    let d = digit_run(bytes, i);
    if d == 0 {
        return None;
    }
    i += d;
    loop {
        let c = at(i);
        let sep = matches!(c, b' ' | b'.' | b'-');
        // Alternatives in order: `[ .\-]`, `\) ?`, ` ?\(`, `[ .\-]\(`, each followed by `\d+`.
        let next = if sep && digit_at(bytes, i + 1) {
            Some(i + 1)
        } else if c == b')' {
            if at(i + 1) == b' ' {
                digit_at(bytes, i + 2).then_some(i + 2)
            } else {
                digit_at(bytes, i + 1).then_some(i + 1)
            }
        } else if c == b'(' && digit_at(bytes, i + 1) {
            Some(i + 1)
        } else if sep && at(i + 1) == b'(' && digit_at(bytes, i + 2) {
            Some(i + 2)
        } else {
            None
        };
        let Some(j) = next else { break };
        i = j + digit_run(bytes, j);
        if at(i) == b')' {
            i += 1;
        }
    }
    // ` ?(?:x|ext\.?) ?\d{1,5}\b`, all or nothing.
    let mut k = i;
    if at(k) == b' ' {
        k += 1;
    }
    let after_word = if at(k) == b'x' {
        Some(k + 1)
    } else if bytes.get(k..k + 3) == Some(b"ext") {
        Some(if at(k + 3) == b'.' { k + 4 } else { k + 3 })
    } else {
        None
    };
    if let Some(mut k) = after_word {
        if at(k) == b' ' {
            k += 1;
        }
        let d = digit_run(bytes, k);
        if (1..=5).contains(&d) && !word_byte(at(k + d)) {
            i = k + d;
        }
    }
    Some(i)
}

/// The leftmost match of `NUMERIC_PATTERN` in `bytes` starting in `[from, to)`.
pub(crate) fn numeric_find(bytes: &[u8], from: usize, to: usize) -> Option<(usize, usize)> {
    let to = to.min(bytes.len());
    (from..to).find_map(|p| match bytes[p] {
        b'0'..=b'9' | b'+' | b'(' => numeric_at(bytes, p).map(|e| (p, e)),
        _ => None,
    })
}

/// A byte of an email's local part.
#[inline(always)]
fn local_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
}

/// A byte of a domain label.
#[inline(always)]
fn label_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-'
}

/// The end of the domain part of `EMAIL_PATTERN` for the `@` at `at`, in `hay`.
///
/// Labels are whole runs of label bytes (a label cut short would be followed by a label byte,
/// where the pattern needs a dot). The repetition is greedy: it takes every label of 1–63
/// bytes followed by a dot, then gives them back one at a time until the final `\.[A-Za-z]{2,24}\b`
/// fits after one of those dots.
fn email_domain_end(hay: &[u8], at: usize) -> Option<usize> {
    let label_end = |from: usize| {
        from + hay[from.min(hay.len())..]
            .iter()
            .take_while(|&&b| label_byte(b))
            .count()
    };
    let first = label_end(at + 1);
    if !(1..=63).contains(&(first - at - 1)) || hay.get(first) != Some(&b'.') {
        return None;
    }
    let tld_end = |dot: usize| {
        let letters = hay[dot + 1..]
            .iter()
            .take_while(|b| b.is_ascii_alphabetic())
            .count();
        let end = dot + 1 + letters;
        ((2..=24).contains(&letters) && hay.get(end).is_none_or(|&b| !word_byte(b))).then_some(end)
    };
    // Walk the dots after consumable labels; the last one the final part fits after wins.
    let mut best = None;
    let mut dot = first;
    loop {
        best = tld_end(dot).or(best);
        let end = label_end(dot + 1);
        if (1..=63).contains(&(end - dot - 1)) && hay.get(end) == Some(&b'.') {
            dot = end;
        } else {
            return best;
        }
    }
}

/// The leftmost match of `EMAIL_PATTERN` in `hay` starting at or after `from`.
///
/// The local part cannot hold `@`, so every match ends its local part at the first `@` after
/// its start; for each `@` in order the leftmost start is the furthest-back byte of the run of
/// local bytes before it, no more than 64 back and not before `from`.
pub(crate) fn email_find(hay: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut search = from;
    while let Some(off) = hay.get(search..).and_then(|t| memchr::memchr(b'@', t)) {
        let at = search + off;
        search = at + 1;
        let floor = from.max(at.saturating_sub(64));
        let mut start = at;
        while start > floor && local_byte(hay[start - 1]) {
            start -= 1;
        }
        if start == at {
            continue;
        }
        if let Some(end) = email_domain_end(hay, at) {
            return Some((start, end));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_text::{Rng, random};

    #[test]
    fn numeric_matcher_agrees_with_the_pattern() {
        let re = crate::bytes_regex("test", NUMERIC_PATTERN).unwrap();
        let alphabet: &[&[u8]] = &[
            b"0",
            b"1",
            b"7",
            b"9",
            b"12",
            b"123456",
            b" ",
            b" ",
            b".",
            b"-",
            b"(",
            b")",
            b"+",
            b"x",
            b"e",
            b"t",
            b"ext",
            b"ext.",
            b"a",
            b"_",
            b"\xc3\xa9",
            b"\n",
        ];
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        for round in 0..60_000 {
            let hay = random(&mut rng, alphabet, 1 + round % 24);
            for from in 0..hay.len() {
                let want = re
                    .find_at(&hay, from)
                    .map(|m| (m.start(), m.end()))
                    .filter(|m| m.0 < hay.len());
                let got = numeric_find(&hay, from, hay.len());
                assert_eq!(got, want, "{:?} from {from}", String::from_utf8_lossy(&hay));
            }
        }
    }

    #[test]
    fn email_matcher_agrees_with_the_pattern() {
        let re = crate::bytes_regex("test", EMAIL_PATTERN).unwrap();
        let alphabet: &[&[u8]] = &[
            b"a",
            b"Z",
            b"com",
            b"org",
            b"x1",
            b"0",
            b".",
            b".",
            b"@",
            b"@",
            b"-",
            b"_",
            b"%",
            b"+",
            b" ",
            b"\xc3\xa9",
            b"abcdefghijklmnopqrstuvwxyzabcdefghij",
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklm",
            b"..",
            b"9",
        ];
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for round in 0..60_000 {
            let hay = random(&mut rng, alphabet, 1 + round % 20);
            for from in (0..hay.len()).step_by(1 + round % 3) {
                let want = re.find_at(&hay, from).map(|m| (m.start(), m.end()));
                let got = email_find(&hay, from);
                assert_eq!(got, want, "{:?} from {from}", String::from_utf8_lossy(&hay));
            }
        }
    }

    #[test]
    fn email_with_many_labels() {
        let hay = b"me@a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r.s.t.uk, then";
        let re = crate::bytes_regex("test", EMAIL_PATTERN).unwrap();
        let want = re.find(hay).map(|m| (m.start(), m.end()));
        assert_eq!(email_find(hay, 0), want);
        assert_eq!(want, Some((0, 45)));
    }
}
