//! The shared prefilter: one normalized view of the text and one pass over its words that finds
//! the anchors of every detector, so that most bytes of ordinary text are touched a few times in
//! total instead of once per pattern.
//!
//! - **Normalized view** ([`normalize_padded`]): the text, same length, ASCII lowercased, with
//!   escaped control sequences (`\n`, `\r`, `\t` written as two characters, as they appear in
//!   JSON- or YAML-escaped tool output) replaced by spaces. Offsets into it are offsets into the
//!   text, so spans need no mapping. Cue patterns run on this view, which is why a `\n` written
//!   as two characters still separates words.
//! - **Anchors** ([`Lexicon`]): each detector item (a cue, a secret rule, a PII keyword pattern)
//!   declares lowercase literals, one of which every match must contain. An item whose anchors
//!   are absent is never run, and one that is present runs only in a window around them. Items
//!   without anchors (`&[]`) run on the whole text when their detector needs them.
//!
//! How anchors are found: a literal is reduced to its longest word (letters, digits, `_`), and
//! that word to a *key*: its first five bytes (`"ignore"` → every word starting `ignor`), or
//! the whole word when shorter than five bytes or marked exact with a trailing `$` (`"user"`
//! is the word `user`, not `user_agent`; `"~/.ssh"` → the word `ssh`). One loop over the words
//! of the normalized view looks each word's keys up in a small open-addressing table, so the
//! cost is a byte-class test per byte and one or two probes per word, whatever the number of
//! anchors. Literals
//! without a word of two or more characters (`@`, `://`, `!!`) are searched with `memchr`'s
//! SIMD finders instead. A key is a superset of its literal; the window's pattern decides.

use crate::ScanError;
use wide::u8x16;

use crate::bytemask::{Block, ChunkMasks, TextMasks, eq, ones, range};

/// Which detector an anchor belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owner {
    Injection,
    Poisoning,
    Secret,
    Pii,
}

/// One anchor occurrence: byte position in the text and the item it opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hit {
    pub pos: usize,
    pub owner: Owner,
    pub item: u16,
}

/// Bytes of a word: ASCII letters and digits, `_`, and every non-ASCII byte (so a word in
/// another script is one word, not many).
const WORD: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_lowercase()
            || c.is_ascii_uppercase()
            || c.is_ascii_digit()
            || c == b'_'
            || c >= 0x80;
        b += 1;
    }
    t
};

/// [`WORD`] on a lowercased byte: the definition the word masks follow.
#[cfg(test)]
fn is_word(b: u8) -> bool {
    b.wrapping_sub(b'a') < 26 || b.wrapping_sub(b'0') < 10 || b == b'_' || b >= 0x80
}

/// Bytes of a word that form its prefix key.
const PREFIX: usize = 5;
/// Longest word with an exact key.
const EXACT_MAX: usize = 7;
/// Tag (top byte) of prefix keys; exact keys carry their length (1..=7) there.
const PREFIX_TAG: u64 = 0xFF << 56;

/// The first `n` (≤ 7) bytes of `bytes[at..]` as a little-endian integer, using one unaligned
/// load when eight bytes are available.
#[inline(always)]
fn load(bytes: &[u8], at: usize, n: usize) -> u64 {
    let v = match bytes.get(at..at + 8) {
        Some(b) => u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
        None => {
            let mut buf = [0u8; 8];
            let avail = &bytes[at..(at + n).min(bytes.len())];
            buf[..avail.len()].copy_from_slice(avail);
            u64::from_le_bytes(buf)
        }
    };
    v & ((1u64 << (8 * n)) - 1)
}

/// The exact key of the word `bytes[at..at + len]` (words of up to seven bytes).
#[inline(always)]
fn exact_key(bytes: &[u8], at: usize, len: usize) -> Option<u64> {
    (len <= EXACT_MAX).then(|| load(bytes, at, len) | ((len as u64) << 56))
}

/// The prefix key of a word of at least five bytes: its first five.
#[inline(always)]
fn prefix_key(bytes: &[u8], at: usize, len: usize) -> Option<u64> {
    (len >= PREFIX).then(|| load(bytes, at, PREFIX) | PREFIX_TAG)
}

/// Shortest words whose four- and three-byte prefixes are looked up (provider tokens such as
/// `AKIA…`, `ghp_…`, `eyJ…` start a long word; a `-` inside the token may cut it short).
const LONG_TOKEN4: usize = 8;
const LONG_TOKEN3: usize = 10;

/// The key of the first `n` (3 or 4) bytes of a long token.
#[inline(always)]
fn long_prefix_key(bytes: &[u8], at: usize, n: usize) -> Option<u64> {
    matches!(n, 3 | 4).then(|| load(bytes, at, n) | ((0xF0 | n as u64) << 56))
}

/// The key of an anchor word: exact for words shorter than five bytes or marked with a
/// trailing `$` (and short enough), else its five-byte prefix.
fn literal_key(word: &[u8], exact: bool) -> Option<u64> {
    if exact || word.len() < PREFIX {
        exact_key(word, 0, word.len()).or_else(|| prefix_key(word, 0, word.len()))
    } else {
        prefix_key(word, 0, word.len())
    }
}

/// Anchor literals of several detectors, found in one pass over the words.
#[derive(Debug)]
pub(crate) struct Lexicon {
    /// Open-addressing table: `(key, targets index)`, `key == 0` is empty.
    table: Vec<(u64, u32)>,
    shift: u32,
    /// Bloom filter over the first three bytes of every key (two for a two-byte word): most
    /// words fail this one test and cost no table probe.
    first_three: Vec<u64>,
    /// Bloom filter over the *shapes* a word can match a key by (see [`shape_bits`]): a word
    /// failing it cannot hit any key, which the word pass tests for every word without a branch.
    shapes: Box<[u8; SHAPES]>,
    /// Whether some key starts with a digit; if none does, words starting with one (numbers,
    /// a large share of the words of tool results) are not looked up.
    digit_keys: bool,
    /// Literals without a usable word, searched as bytes.
    symbols: Vec<(Vec<u8>, u32)>,
    /// The distinct first bytes of the symbols.
    symbol_firsts: SymbolFirsts,
    /// For each key or symbol, the items it opens.
    targets: Vec<Vec<(Owner, u16)>>,
}

/// The word a literal is found by: the literal itself when it is one word of two or more
/// bytes, else its longest word of three or more bytes (`None`: search the literal as bytes).
fn anchor_word(lit: &[u8]) -> Option<&[u8]> {
    if lit.len() >= 2 && lit.iter().all(|&b| WORD[usize::from(b)]) {
        return Some(lit);
    }
    lit.split(|&b| !WORD[usize::from(b)])
        .filter(|w| w.len() >= 3)
        .max_by_key(|w| w.len())
}

impl Lexicon {
    /// Build from `(owner, item, literals)`; literals are lowercased and deduplicated.
    pub fn new<'a>(
        items: impl IntoIterator<Item = (Owner, u16, &'a [&'a str])>,
    ) -> Result<Self, ScanError> {
        let mut keys: Vec<u64> = Vec::new();
        let mut symbols: Vec<Vec<u8>> = Vec::new();
        // Target lists: keys first, then symbols (re-indexed below).
        let mut key_targets: Vec<Vec<(Owner, u16)>> = Vec::new();
        let mut symbol_targets: Vec<Vec<(Owner, u16)>> = Vec::new();
        for (owner, item, lits) in items {
            for lit in lits {
                let lit = lit.trim().to_ascii_lowercase();
                let key = if let Some(p) = lit.strip_suffix('*') {
                    long_prefix_key(p.as_bytes(), 0, p.len())
                        .filter(|_| p.bytes().all(|b| WORD[usize::from(b)]))
                } else {
                    let (word, exact) = match lit.strip_suffix('$') {
                        Some(l) => (l, true),
                        None => (lit.as_str(), false),
                    };
                    anchor_word(word.as_bytes()).and_then(|w| literal_key(w, exact))
                };
                let lit = lit.trim_end_matches(['*', '$']).to_string();
                let list = match key {
                    Some(k) => {
                        let i = keys.iter().position(|&x| x == k).unwrap_or_else(|| {
                            keys.push(k);
                            key_targets.push(Vec::new());
                            keys.len() - 1
                        });
                        &mut key_targets[i]
                    }
                    None => {
                        if lit.is_empty() {
                            return Err(ScanError::Gate);
                        }
                        let b = lit.into_bytes();
                        let i = symbols.iter().position(|x| *x == b).unwrap_or_else(|| {
                            symbols.push(b);
                            symbol_targets.push(Vec::new());
                            symbols.len() - 1
                        });
                        &mut symbol_targets[i]
                    }
                };
                if !list.contains(&(owner, item)) {
                    list.push((owner, item));
                }
            }
        }
        let bits = (keys.len() * 4)
            .next_power_of_two()
            .max(16)
            .trailing_zeros();
        let mut table = vec![(0u64, 0u32); 1 << bits];
        let shift = 64 - bits;
        for (i, &k) in keys.iter().enumerate() {
            let mut slot = slot_of(k, shift);
            while table[slot].0 != 0 {
                slot = (slot + 1) & (table.len() - 1);
            }
            table[slot] = (k, u32::try_from(i).map_err(|_| ScanError::Gate)?);
        }
        let mut first_three = vec![0u64; BLOOM_BITS / 64];
        let mut shapes = Box::new([0u8; SHAPES]);
        let digit_keys = keys.iter().any(|k| ((k & 0xFF) as u8).is_ascii_digit());
        for &k in &keys {
            let b = bloom_bit((k & 0xFF_FFFF) as u32);
            first_three[b >> 6] |= 1 << (b & 63);
            let bytes = k & ((1 << 56) - 1);
            let shape = match k >> 56 {
                // Exact keys: a word of that length, seen by its first five bytes at most.
                len @ 1..=7 => shape_exact(bytes, (len as usize).min(PREFIX)),
                0xFF => shape_exact(bytes, PREFIX),
                // Long-token prefixes of three or four bytes: by their first three.
                _ => shape_long(bytes),
            };
            shapes[shape] = 1;
        }
        let base = key_targets.len();
        let symbols = symbols
            .into_iter()
            .enumerate()
            .map(|(i, b)| Ok((b, u32::try_from(base + i).map_err(|_| ScanError::Gate)?)))
            .collect::<Result<Vec<_>, ScanError>>()?;
        let mut firsts: Vec<u8> = symbols.iter().map(|(b, _)| b[0]).collect();
        firsts.sort_unstable();
        firsts.dedup();
        let symbol_firsts = SymbolFirsts::new(&firsts);
        let mut targets = key_targets;
        targets.extend(symbol_targets);
        Ok(Lexicon {
            table,
            first_three,
            shapes,
            digit_keys,
            shift,
            symbols,
            symbol_firsts,
            targets,
        })
    }

    #[inline(always)]
    fn lookup(&self, key: u64) -> Option<u32> {
        let mask = self.table.len() - 1;
        let mut slot = slot_of(key, self.shift);
        loop {
            let (k, t) = self.table[slot];
            if k == key {
                return Some(t);
            }
            if k == 0 {
                return None;
            }
            slot = (slot + 1) & mask;
        }
    }

    /// Every anchor occurrence in `lower` (the normalized view), in text order, for the owners
    /// `want` selects.
    pub fn find(&self, text: &[u8], view: &View, want: impl Fn(Owner) -> bool, out: &mut Vec<Hit>) {
        let lower = view.lower();
        let padded = view.padded();
        let first = out.len();
        let targets = &self.targets;
        // `part`: the hit is a part of an identifier, which only secret rules look for
        // (`DB_PASSWORD`), not cues (`user_agent` says nothing about a user).
        let push = |pos: usize, t: u32, part: bool, out: &mut Vec<Hit>| {
            for &(owner, item) in &targets[t as usize] {
                if want(owner) && (!part || owner == Owner::Secret) {
                    out.push(Hit { pos, owner, item });
                }
            }
        };
        let n = lower.len();
        // 64 bytes at a time: bit masks of word bytes, `_`, uppercase letters (of the original
        // text) and symbol starts, then two phases: a branch-free shape test of every word, and
        // the full lookup only for the few words that pass it, hold identifier parts, or run
        // past the chunk.
        let mut pos = 0; // bytes before `pos` belong to words already handled
        let mut base = 0;
        let mut symbol_hits = false;
        let mut k = 0; // the chunk at `base`
        while base < n {
            // The masks of the text and of the view were taken when the view was written
            // (for this lexicon's symbols).
            let c = classes(view.masks.chunk(k));
            k += 1;
            let mut m = c.word;
            if pos > base {
                m &= (!0u64).checked_shl((pos - base) as u32).unwrap_or(0);
            }
            let starts = m & !(m << 1);
            // The last word reaches the chunk's end: it may go on in the next chunk.
            let edge = if m >> 63 != 0 {
                1u64 << (63 - starts.leading_zeros())
            } else {
                0
            };
            // Words of two or more bytes, not starting with a digit unless a key does.
            let mut words = starts & (m >> 1) & !edge;
            if !self.digit_keys {
                words &= !c.digit;
            }
            let mut cand = edge | self.shape_pass(padded, base, m, words);
            cand |= with_parts(m, starts, c.under, c.upper) & !edge;
            // Phase 2: the full lookup of each candidate word.
            while cand != 0 {
                let j = cand.trailing_zeros() as usize;
                cand &= cand - 1;
                let s = base + j;
                let mut len = (!(m >> j)).trailing_zeros() as usize;
                if j + len >= 64 {
                    // On through the word masks of the next chunks (zero past the text).
                    let mut next = k;
                    loop {
                        let more = view.masks.chunk(next).word.trailing_ones() as usize;
                        len += more;
                        next += 1;
                        if more < 64 {
                            break;
                        }
                    }
                    pos = s + len;
                }
                if len < 2 {
                    continue;
                }
                let (under, humps) = if j + len <= 64 {
                    (
                        c.under >> j & ones(len) != 0,
                        len >= 8 && c.upper >> (j + 1) & ones(len - 1) != 0,
                    )
                } else {
                    // A word holds no escape, so its uppercase letters are where it differs
                    // from the text.
                    (
                        view.masks.any(|m| m.under, s, s + len),
                        len >= 8 && view.masks.any(|m| m.upper, s + 1, s + len),
                    )
                };
                self.word(text, lower, (s, len), (under, humps), &mut |p, t, part| {
                    push(p, t, part, out)
                });
            }
            // Symbols (`@`, `<|`, `!!`): a prefix test where their first byte occurs.
            let mut sym = c.symbol;
            while sym != 0 {
                let p = base + sym.trailing_zeros() as usize;
                sym &= sym - 1;
                let first = lower[p];
                for (symbol, t) in &self.symbols {
                    // The first byte decides most (and needs no call to `memcmp`).
                    if symbol.first() == Some(&first)
                        && lower
                            .get(p..p + symbol.len())
                            .is_some_and(|w| w.iter().zip(symbol).all(|(a, b)| a == b))
                    {
                        push(p, *t, false, out);
                        symbol_hits = true;
                    }
                }
            }
            base += 64;
        }
        if symbol_hits {
            out[first..].sort_by_key(|h| h.pos);
        }
    }

    /// Phase 1 of the word pass: of the words starting at the bits of `words` (each of two or
    /// more bytes, ending inside the chunk at `base` of the padded view, whose word mask is
    /// `m`), those that may hit a key, as bits of their first byte. Words are grouped by the
    /// shape they are tested for (their length up to five, and eight or more for long-token
    /// prefixes) with a few mask operations, so that each group's loop has no length to find
    /// and no data-dependent branch.
    #[inline(always)]
    fn shape_pass(&self, padded: &[u8], base: usize, m: u64, words: u64) -> u64 {
        let ge3 = words & (m >> 2);
        let ge4 = ge3 & (m >> 3);
        let ge5 = ge4 & (m >> 4);
        let ge8 = ge5 & (m >> 5) & (m >> 6) & (m >> 7);
        // In bounds: the padding covers a chunk and eight bytes more.
        let window: &[u8; 72] = match padded.get(base..base + 72).map(<&[u8; 72]>::try_from) {
            Some(Ok(w)) => w,
            _ => &[0; 72],
        };
        let first8 = |j: usize| {
            let j = j & 63;
            let mut b = [0u8; 8];
            b.copy_from_slice(&window[j..j + 8]);
            u64::from_le_bytes(b)
        };
        let group = |mut bits: u64, shape: &dyn Fn(u64) -> usize| {
            let mut pass = 0u64;
            while bits != 0 {
                let j = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                pass |= u64::from(self.shapes[shape(first8(j))]) << j;
            }
            pass
        };
        group(words & !ge3, &|w| shape_exact(w, 2))
            | group(ge3 & !ge4, &|w| shape_exact(w, 3))
            | group(ge4 & !ge5, &|w| shape_exact(w, 4))
            | group(ge5, &|w| shape_exact(w, PREFIX))
            | group(ge8, &shape_long)
    }

    /// Look up the word `lower[s..s + len]`: its exact and prefix keys, a long token's short
    /// prefixes, and the parts of an identifier (`db_password`, `dbPassword` → `password`).
    #[inline(always)]
    fn word(
        &self,
        text: &[u8],
        lower: &[u8],
        (s, len): (usize, usize),
        (under, humps): (bool, bool),
        hit: &mut impl FnMut(usize, u32, bool),
    ) {
        if self.starts_a_key(lower, s, len) {
            self.probe(lower, s, len, &mut |p, t| hit(p, t, false));
            for (n, min) in [(4, LONG_TOKEN4), (3, LONG_TOKEN3)] {
                if len >= min
                    && let Some(t) = long_prefix_key(lower, s, n).and_then(|k| self.lookup(k))
                {
                    hit(s, t, false);
                }
            }
        }
        if !(under || humps) || len < 5 {
            return;
        }
        // Parts: split at `_` and where a lowercase letter meets an uppercase one.
        let word = &lower[s..s + len];
        let orig = text.get(s..s + len).unwrap_or(word);
        let mut part = 0;
        for i in 1..=len {
            let boundary = i == len
                || word[i] == b'_'
                || (humps && orig[i].is_ascii_uppercase() && orig[i - 1].is_ascii_lowercase());
            if boundary {
                let p = if word[part] == b'_' { part + 1 } else { part };
                if i > p + 1 && (p, i) != (0, len) && self.starts_a_key(lower, s + p, i - p) {
                    self.probe(lower, s + p, i - p, &mut |q, t| hit(q, t, true));
                }
                part = i;
            }
        }
    }

    /// Whether some key may start like the word at `s` (of `len` ≥ 2 bytes).
    #[inline(always)]
    fn starts_a_key(&self, lower: &[u8], s: usize, len: usize) -> bool {
        let b = bloom_bit(load(lower, s, len.min(3)) as u32);
        self.first_three[b >> 6] & (1 << (b & 63)) != 0
    }

    /// Exact and prefix keys of one word.
    #[inline(always)]
    fn probe(&self, lower: &[u8], s: usize, len: usize, hit: &mut impl FnMut(usize, u32)) {
        if let Some(t) = exact_key(lower, s, len).and_then(|k| self.lookup(k)) {
            hit(s, t);
        }
        if let Some(t) = prefix_key(lower, s, len).and_then(|k| self.lookup(k)) {
            hit(s, t);
        }
    }

    /// Number of distinct keys and symbols.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.targets.len()
    }
}

/// Bits of the first-bytes Bloom filter.
const BLOOM_BITS: usize = 8192;

/// Entries of the word-shape Bloom filter, one byte each (a byte load needs no shift).
const SHAPES: usize = 16384;

#[inline(always)]
fn shape_hash(key: u64) -> usize {
    (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SHAPES.trailing_zeros())) as usize
}

/// The low `n` bytes of a `u64`, for `n` in `0..=5`.
const LOW_BYTES: [u64; 6] = [0, 0xFF, 0xFFFF, 0xFF_FFFF, 0xFFFF_FFFF, 0xFF_FFFF_FFFF];

/// The shape of a word whose first `n` (≤ 5) bytes are `bytes`: how an exact key (words of up
/// to four bytes) or a five-byte prefix key (longer words; exact keys of five to seven bytes
/// also start so) is found.
#[inline(always)]
fn shape_exact(bytes: u64, n: usize) -> usize {
    shape_hash((bytes & LOW_BYTES[n.min(PREFIX)]) | ((n as u64) << 48))
}

/// The shape of a long token's three- or four-byte prefix key: its first three bytes (a word
/// is tested for it only when long enough for the four-byte keys, the shorter minimum).
#[inline(always)]
fn shape_long(bytes: u64) -> usize {
    shape_hash((bytes & 0xFF_FFFF) | (0x13 << 48))
}

/// Per chunk of 64 bytes, one bit per byte.
struct Classes {
    /// Word bytes of the normalized view ([`is_word`]).
    word: u64,
    /// `_`.
    under: u64,
    /// ASCII uppercase letters of the original text.
    upper: u64,
    /// First bytes of symbols.
    symbol: u64,
    /// ASCII digits.
    digit: u64,
}

/// The distinct first bytes of a lexicon's symbols: compared one by one when there are few
/// (the comparisons vectorize), looked up in a table otherwise.
#[derive(Debug)]
enum SymbolFirsts {
    Few(Vec<u8>),
    Many(Box<[bool; 256]>),
}

impl SymbolFirsts {
    fn new(firsts: &[u8]) -> Self {
        if firsts.len() <= 6 {
            SymbolFirsts::Few(firsts.to_vec())
        } else {
            let mut t = Box::new([false; 256]);
            for &b in firsts {
                t[usize::from(b)] = true;
            }
            SymbolFirsts::Many(t)
        }
    }
}

/// The view's classes of one chunk `l` of the normalized view, into `m`.
fn view_classes(l: &Block, firsts: &SymbolFirsts, m: &mut ChunkMasks) {
    m.under = l.mask(|v| eq(v, b'_'));
    m.word = l.mask(|v| range(v, b'a', 26) | range(v, b'0', 10) | eq(v, b'_') | v);
    m.symbol = symbol_starts(l, firsts);
}

/// The symbol starts (`firsts`) in one chunk `l` of the normalized view.
#[inline(always)]
fn symbol_starts(l: &Block, firsts: &SymbolFirsts) -> u64 {
    match firsts {
        SymbolFirsts::Few(f) => l.mask(|v| f.iter().fold(u8x16::splat(0), |m, &c| m | eq(v, c))),
        SymbolFirsts::Many(t) => l
            .bytes()
            .iter()
            .enumerate()
            .fold(0, |m, (i, &b)| m | (u64::from(t[usize::from(b)]) << i)),
    }
}

/// The class masks of one chunk, as taken when the view was written (normalizing changes no
/// digit and no uppercase letter of the text).
#[inline(always)]
fn classes(m: ChunkMasks) -> Classes {
    Classes {
        word: m.word,
        under: m.under,
        upper: m.upper,
        symbol: m.symbol,
        digit: m.digit,
    }
}

/// Words (bits of their first byte) that the full lookup splits into identifier parts: five or
/// more bytes holding `_`, or eight or more with an uppercase letter after the first byte.
/// Such marks are rare, so this loops over them, one word at a time.
#[inline(always)]
fn with_parts(m: u64, starts: u64, under: u64, upper: u64) -> u64 {
    let mut marks = (under | (upper & !starts)) & m;
    let mut out = 0;
    if marks == 0 {
        return 0;
    }
    let ends = m & !(m >> 1);
    while marks != 0 {
        let k = marks.trailing_zeros() as usize;
        let end = k + (ends >> k).trailing_zeros() as usize; // the word's last byte
        let before = starts & ones(k + 1);
        if before != 0 {
            let j = 63 - before.leading_zeros() as usize;
            let len = end + 1 - j;
            let word = ones(len) << j;
            if (len >= 5 && under & word != 0) || (len >= 8 && upper & word & !(1 << j) != 0) {
                out |= 1 << j;
            }
        }
        marks &= !ones(end + 1);
    }
    out
}

#[inline(always)]
fn bloom_bit(first3: u32) -> usize {
    (first3.wrapping_mul(0x9E37_79B1) >> (32 - BLOOM_BITS.trailing_zeros())) as usize
}

#[inline(always)]
fn slot_of(key: u64, shift: u32) -> usize {
    (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> shift) as usize
}

/// Zero bytes after a [`View`] in its buffer: a whole chunk past the last one holding text,
/// and eight bytes more for a word's first bytes.
const PADDING: usize = 64 + 8;

/// The normalized view of a text ([`normalize_padded`]), kept in a buffer with [`PADDING`] zero
/// bytes after it (so that the word pass reads a word's first bytes without a bounds test),
/// and the class masks of the text and of the view, taken in the same pass.
#[derive(Default)]
pub(crate) struct View {
    buf: Vec<u8>,
    len: usize,
    /// The class masks of the original text, taken while writing the view.
    masks: TextMasks,
    /// Whether the text is all ASCII (then it holds no invisible or homoglyph characters).
    ascii: bool,
}

impl View {
    /// A view of `text`, for a word pass of `lexicon`.
    pub fn of(text: &str, lexicon: &Lexicon) -> Self {
        let mut v = View::default();
        v.fill(text, lexicon);
        v
    }

    /// Make this the view of `text` for a word pass of `lexicon`, reusing the buffers.
    pub fn fill(&mut self, text: &str, lexicon: &Lexicon) {
        self.ascii = normalize_padded(text, &mut self.buf, &mut self.masks, &lexicon.symbol_firsts);
        self.len = text.len();
    }

    /// The class masks of the original text.
    pub fn masks(&self) -> &TextMasks {
        &self.masks
    }

    /// Whether the text is all ASCII.
    pub fn is_ascii(&self) -> bool {
        self.ascii
    }

    /// The normalized text (same length and offsets as the text).
    pub fn lower(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// The normalized text and the zero padding after it.
    fn padded(&self) -> &[u8] {
        &self.buf
    }

    /// Empty the view and keep no more than `bytes` of buffer (and of masks).
    pub fn shrink_to(&mut self, bytes: usize) {
        self.buf.clear();
        self.buf.shrink_to(bytes);
        self.len = 0;
        self.masks.clear();
        self.masks
            .chunks
            .shrink_to(bytes / std::mem::size_of::<ChunkMasks>());
        self.ascii = true;
    }

    /// Bytes held by the view's buffer (its masks hold as many again: 64 bytes per chunk).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

/// [`normalize_padded`] without the padding.
#[cfg(test)]
pub(crate) fn normalize_into(text: &str, buf: &mut Vec<u8>) -> bool {
    let ascii = normalize_padded(
        text,
        buf,
        &mut TextMasks::default(),
        &SymbolFirsts::new(&[]),
    );
    buf.truncate(text.len());
    ascii
}

/// Write the normalized view of `text` into `buf` (cleared first), followed by [`PADDING`]
/// zero bytes: same length, ASCII lowercased, escaped `\n`, `\r`, `\t` (backslash + letter)
/// turned into two spaces; and the class masks of `text` and of the view (with the symbol
/// starts of `firsts`) into `masks`. Returns whether the text is all ASCII.
fn normalize_padded(
    text: &str,
    buf: &mut Vec<u8>,
    masks: &mut TextMasks,
    firsts: &SymbolFirsts,
) -> bool {
    let n = text.len();
    buf.clear();
    buf.reserve(n + PADDING);
    buf.extend_from_slice(text.as_bytes());
    buf.resize(n + PADDING, 0);
    masks.clear();
    masks.chunks.reserve(n.div_ceil(64));
    // One pass, 64 bytes at a time, over whole chunks (the last one reaches into the padding,
    // whose zero bytes stay zero and are in no class): the masks, lowercase, and note
    // non-ASCII bytes and backslashes.
    let (mut high, mut backslash) = (u8x16::splat(0), u8x16::splat(0));
    for chunk in buf[..n.div_ceil(64) * 64].chunks_exact_mut(64) {
        let Ok(chunk) = <&mut [u8; 64]>::try_from(chunk) else {
            continue;
        };
        let block = Block::new(chunk);
        masks.push(&block);
        for &v in block.lanes() {
            high |= v;
            backslash |= eq(v, b'\\');
        }
        let lower = block.map(|v| v | (range(v, b'A', 26) & u8x16::splat(0x20)));
        if let Some(m) = masks.chunks.last_mut() {
            m.symbol = symbol_starts(&lower, firsts);
        }
        *chunk = lower.bytes();
    }
    if backslash.any() {
        let view = &mut buf[..n];
        let mut from = 0;
        let mut escapes = false;
        while let Some(i) = memchr::memchr(b'\\', &view[from..]) {
            let i = from + i;
            if i + 1 < view.len() && matches!(view[i + 1], b'n' | b'r' | b't') {
                view[i] = b' ';
                view[i + 1] = b' ';
                from = i + 2;
                escapes = true;
            } else {
                from = i + 1;
            }
        }
        // The view's classes changed where escapes turned into spaces: take them again.
        if escapes {
            let chunks = buf[..n.div_ceil(64) * 64].chunks_exact(64);
            for (chunk, m) in chunks.zip(masks.chunks.iter_mut()) {
                if let Ok(chunk) = <&[u8; 64]>::try_from(chunk) {
                    view_classes(&Block::new(chunk), firsts, m);
                }
            }
        }
    }
    high.move_mask() == 0
}

/// A window of `text` around an anchor at `pos`: `before` bytes back and `after` bytes on,
/// clamped and widened to char boundaries.
pub(crate) fn window(text: &str, pos: usize, before: usize, after: usize) -> (usize, usize) {
    crate::char_span(text, pos.saturating_sub(before), pos.saturating_add(after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalized_view_keeps_offsets() {
        let t = "Line one.\\n\\nIGNORE the rest\\\\x é";
        let mut buf = Vec::new();
        normalize_into(t, &mut buf);
        assert_eq!(buf.len(), t.len());
        let s = String::from_utf8(buf).unwrap();
        assert_eq!(s, "line one.    ignore the rest\\\\x é");
    }

    #[test]
    fn normalized_view_matches_its_definition() {
        let symbols = Lexicon::new([(Owner::Pii, 0, &["@", "q~", "<"][..])]).unwrap();
        let pieces = [
            "AbC",
            "\\n",
            "\\",
            "N",
            "t",
            " ",
            "é",
            "Ž",
            "x\\T",
            "QRSTUVWXYZ@[`{",
            "7:_q<",
        ];
        let mut rng = crate::test_text::Rng(0x2545_F491_4F6C_DD1D);
        for round in 0..2000 {
            let text = crate::test_text::random_string(&mut rng, &pieces, round % 40);
            // One byte at a time: lowercase, then each backslash before n/r/t (and that
            // letter) becomes a space, left to right.
            let mut want = text.as_bytes().to_ascii_lowercase();
            let mut i = 0;
            while i + 1 < want.len() {
                if want[i] == b'\\' && matches!(want[i + 1], b'n' | b'r' | b't') {
                    want[i] = b' ';
                    want[i + 1] = b' ';
                    i += 2;
                } else {
                    i += 1;
                }
            }
            let view = View::of(&text, &symbols);
            assert_eq!(view.lower(), &want[..], "{text:?}");
            // The masks: of the text, and of the view after its escapes.
            let bytes = text.as_bytes();
            assert_eq!(view.masks().chunks.len(), bytes.len().div_ceil(64));
            for (k, m) in view.masks().chunks.iter().enumerate() {
                let bits = |f: &dyn Fn(usize) -> bool| {
                    (0..64).fold(0u64, |m, j| m | (u64::from(f(64 * k + j)) << j))
                };
                let view_bits =
                    |f: &dyn Fn(u8) -> bool| bits(&|i| want.get(i).is_some_and(|&b| f(b)));
                let text_bits =
                    |f: &dyn Fn(u8) -> bool| bits(&|i| bytes.get(i).is_some_and(|&b| f(b)));
                assert_eq!(m.word, view_bits(&is_word), "{text:?}");
                assert_eq!(m.under, view_bits(&|b| b == b'_'), "{text:?}");
                assert_eq!(m.symbol, view_bits(&|b| b"@<q".contains(&b)), "{text:?}");
                assert_eq!(m.upper, text_bits(&|b| b.is_ascii_uppercase()), "{text:?}");
                assert_eq!(m.digit, text_bits(&|b| b.is_ascii_digit()), "{text:?}");
                assert_eq!(m.colon, text_bits(&|b| b == b':'), "{text:?}");
            }
            assert_eq!(view.is_ascii(), text.is_ascii(), "{text:?}");
            assert!(view.padded()[want.len()..].iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn anchors_map_to_items() {
        let lex = Lexicon::new([
            (Owner::Injection, 0, &["ignore", "disregard"][..]),
            (Owner::Secret, 3, &["ignore"][..]),
        ])
        .unwrap();
        assert_eq!(lex.len(), 2);
        let mut hits = Vec::new();
        let text = "please ignore it";
        lex.find(text.as_bytes(), &View::of(text, &lex), |_| true, &mut hits);
        assert_eq!(hits.len(), 2);
        assert!(hits.iter().all(|h| h.pos == 7));
        // A key is a word prefix (or a whole short word), symbols are bytes.
        let words =
            Lexicon::new([(Owner::Pii, 1, &["~/.ssh", "ignore", "://", "hi "][..])]).unwrap();
        let mut found = Vec::new();
        let text = "hi, ignored ssh://x this ~/.ssh";
        words.find(
            text.as_bytes(),
            &View::of(text, &words),
            |_| true,
            &mut found,
        );
        let pos: Vec<usize> = found.iter().map(|h| h.pos).collect();
        assert_eq!(pos, vec![0, 4, 12, 15, 28]);
        hits.clear();
        let text = "please ignore it";
        lex.find(
            text.as_bytes(),
            &View::of(text, &lex),
            |o| o == Owner::Secret,
            &mut hits,
        );
        assert_eq!(
            hits,
            vec![Hit {
                pos: 7,
                owner: Owner::Secret,
                item: 3
            }]
        );
    }

    #[test]
    fn class_masks_match_byte_tests() {
        let mut lo = [0u8; 64];
        let mut up = [0u8; 64];
        for round in 0..64u32 {
            for (j, (l, u)) in lo.iter_mut().zip(up.iter_mut()).enumerate() {
                *l = (round.wrapping_mul(97).wrapping_add(j as u32 * 31) % 256) as u8;
                *u = (round.wrapping_mul(13).wrapping_add(j as u32 * 57) % 256) as u8;
            }
            let bits =
                |f: &dyn Fn(usize) -> bool| (0..64).fold(0u64, |m, j| m | (u64::from(f(j)) << j));
            for firsts in [vec![b'@', b'<'], (0..=255).step_by(3).collect::<Vec<u8>>()] {
                let mut masks = TextMasks::of(&up).chunk(0);
                view_classes(&Block::new(&lo), &SymbolFirsts::new(&firsts), &mut masks);
                let c = classes(masks);
                assert_eq!(c.word, bits(&|j| is_word(lo[j])), "round {round}");
                assert_eq!(c.under, bits(&|j| lo[j] == b'_'), "round {round}");
                assert_eq!(
                    c.upper,
                    bits(&|j| up[j].is_ascii_uppercase()),
                    "round {round}"
                );
                assert_eq!(
                    c.symbol,
                    bits(&|j| firsts.contains(&lo[j])),
                    "round {round}"
                );
                assert_eq!(c.digit, bits(&|j| up[j].is_ascii_digit()), "round {round}");
            }
        }
    }

    #[test]
    fn identifier_parts_and_token_prefixes() {
        let lex = Lexicon::new([
            (Owner::Secret, 0, &["password"][..]),
            (Owner::Secret, 1, &["akia*"][..]),
        ])
        .unwrap();
        let text = "DB_PASSWORD=x dbPassword=y AKIAZ3MN7QW2ERTY5UIO akia";
        let mut hits = Vec::new();
        lex.find(text.as_bytes(), &View::of(text, &lex), |_| true, &mut hits);
        let got: Vec<(usize, u16)> = hits.iter().map(|h| (h.pos, h.item)).collect();
        assert_eq!(got, vec![(3, 0), (16, 0), (27, 1)]);
    }
}
