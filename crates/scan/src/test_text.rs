//! Random texts for the scanner's tests: pieces of an alphabet joined in a reproducible order
//! (xorshift64, no dependency), so that each fast path can be checked against its byte-by-byte
//! definition on many inputs.

/// A xorshift64 generator; the seed fixes the sequence.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    /// The next value.
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// The next value below `n`.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// `len` pieces of `alphabet`, chosen by `rng`, joined.
pub(crate) fn random<P: AsRef<[u8]>>(rng: &mut Rng, alphabet: &[P], len: usize) -> Vec<u8> {
    let mut text = Vec::new();
    for _ in 0..len {
        text.extend_from_slice(alphabet[rng.below(alphabet.len())].as_ref());
    }
    text
}

/// [`random`] with `str` pieces, as a `String`.
pub(crate) fn random_string(rng: &mut Rng, alphabet: &[&str], len: usize) -> String {
    let mut text = String::new();
    for _ in 0..len {
        text.push_str(alphabet[rng.below(alphabet.len())]);
    }
    text
}
