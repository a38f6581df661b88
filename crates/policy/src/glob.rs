//! Case-sensitive globs over names: `*` matches any run of characters (including none), `?`
//! exactly one character; everything else matches itself, byte for byte. No case folding, no
//! Unicode normalization: `Time__x` or a homoglyph of `time__x` does not match `time__*`.

/// A compiled glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: String,
    /// No `*` or `?`: compared with `==`.
    literal: bool,
}

impl Glob {
    /// Compiles a pattern; every string is a valid pattern.
    pub fn new(pattern: &str) -> Glob {
        Glob {
            pattern: pattern.to_owned(),
            literal: !pattern.contains(['*', '?']),
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Is this pattern a plain name?
    pub fn is_literal(&self) -> bool {
        self.literal
    }

    /// The text before the first wildcard.
    pub fn literal_prefix(&self) -> &str {
        match self.pattern.find(['*', '?']) {
            Some(i) => &self.pattern[..i],
            None => &self.pattern,
        }
    }

    /// Does `text` match the whole pattern?
    pub fn matches(&self, text: &str) -> bool {
        if self.literal {
            return self.pattern == text;
        }
        if !self.pattern.contains('?') {
            // Only `*`: matching bytes is exact (UTF-8 is self-synchronizing) and allocates
            // nothing.
            return wildcard(self.pattern.as_bytes(), text.as_bytes(), 0);
        }
        // `?` is one character, not one byte.
        wildcard(
            &self.pattern.chars().collect::<Vec<_>>(),
            &text.chars().collect::<Vec<_>>(),
            '?',
        )
    }
}

/// Iterative wildcard matching with single-star backtracking (linear in practice, never
/// exponential). `any_one` is the single-unit wildcard (`?`), or a value that never occurs.
fn wildcard<T: PartialEq + Copy + From<u8>>(pattern: &[T], text: &[T], any_one: T) -> bool {
    let star = T::from(b'*');
    let any_one = (any_one != T::from(0)).then_some(any_one);
    let (mut p, mut t) = (0usize, 0usize);
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(c) if *c == star => {
                backtrack = Some((p, t));
                p += 1;
            }
            Some(c) if Some(*c) == any_one => {
                p += 1;
                t += 1;
            }
            Some(c) if *c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match backtrack {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    backtrack = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|c| *c == star)
}

#[cfg(test)]
mod tests {
    use super::Glob;

    #[test]
    fn globs() {
        for (pattern, text, expected) in [
            ("time__*", "time__now", true),
            ("time__*", "time__", true),
            ("time__*", "Time__now", false),
            ("time__*", "tіme__now", false), // Cyrillic і
            ("time__*", "time_now", false),
            ("*", "", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("billing__refund", "billing__refund", true),
            ("billing__refund", "billing__refund ", false),
            ("*__delete*", "fs__delete_file", true),
        ] {
            assert_eq!(
                Glob::new(pattern).matches(text),
                expected,
                "{pattern} vs {text}"
            );
        }
        assert_eq!(Glob::new("time__*").literal_prefix(), "time__");
    }
}
