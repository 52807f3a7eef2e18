//! A seeded pseudo-random permutation of `0..len` evaluated one position at a time, in constant
//! memory: the data order of a training set too large to shuffle in memory (600M examples
//! would take 4.8 GB of indices, rebuilt for every epoch).
//!
//! A balanced Feistel network over the smallest even power of two at least `len`, with
//! cycle-walking back into `0..len`: every round is invertible, so the network is a bijection of
//! its power-of-two domain, and walking from a position until the value falls inside `0..len`
//! restricts it to a bijection of `0..len` (Black and Rogaway, "Ciphers with arbitrary finite
//! domains", 2002). The domain is under 4 `len`, so a position takes under 4 walks on average.

/// Data sets up to this many examples are shuffled in memory (Fisher-Yates over at most 8 MB of
/// indices: the order they have always had); larger ones are ordered by a [`Permutation`].
pub const SHUFFLED_IN_MEMORY_MAX: usize = 1 << 20;

/// Feistel rounds: 4 make a pseudo-random permutation from pseudo-random round functions
/// (Luby-Rackoff); 6 leave a margin for the simple mixing function below.
const ROUNDS: u64 = 6;

/// The permutation of `0..len` keyed by `key`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permutation {
    len: u64,
    half_bits: u32,
    key: u64,
}

impl Permutation {
    /// The permutation of `0..len` drawn by `key`. Panics for `len == 0`.
    pub fn new(len: u64, key: u64) -> Self {
        assert!(len > 0, "a permutation of nothing");
        let bits = 64 - (len - 1).leading_zeros();
        Permutation {
            len,
            half_bits: bits.div_ceil(2).max(1),
            key,
        }
    }

    /// How many positions it permutes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it permutes nothing (never: [`Permutation::new`] refuses an empty one).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The value at `position` (`< len`).
    pub fn at(&self, position: u64) -> u64 {
        assert!(position < self.len, "position {position} of {}", self.len);
        let mut x = position;
        loop {
            x = self.network(x);
            if x < self.len {
                return x;
            }
        }
    }

    fn network(&self, x: u64) -> u64 {
        let mask = (1u64 << self.half_bits) - 1;
        let (mut left, mut right) = (x >> self.half_bits, x & mask);
        for round in 0..ROUNDS {
            let next = left ^ (mix(self.key ^ mix(round ^ (right << 8))) & mask);
            left = right;
            right = next;
        }
        (left << self.half_bits) | right
    }
}

/// SplitMix64's finaliser: a bijective mix of 64 bits.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: u64, key: u64) -> Vec<u64> {
        let p = Permutation::new(len, key);
        (0..len).map(|i| p.at(i)).collect()
    }

    #[test]
    fn every_length_is_permuted_exactly() {
        for len in [1, 2, 3, 4, 5, 7, 8, 9, 63, 64, 65, 1000, 4097] {
            let mut v = values(len, 42);
            v.sort_unstable();
            assert_eq!(v, (0..len).collect::<Vec<_>>(), "len {len}");
        }
    }

    #[test]
    fn keys_give_different_orders_and_the_same_key_the_same() {
        assert_eq!(values(1000, 7), values(1000, 7));
        assert_ne!(values(1000, 7), values(1000, 8));
    }

    /// Far from the identity or a shift: few fixed points, and position and value uncorrelated.
    #[test]
    fn the_order_looks_shuffled() {
        let len = 100_003u64;
        let v = values(len, 3);
        let fixed = v
            .iter()
            .enumerate()
            .filter(|&(i, &x)| i as u64 == x)
            .count();
        assert!(fixed < 10, "{fixed} fixed points");
        let mean = (len - 1) as f64 / 2.0;
        let (mut cov, mut var) = (0.0, 0.0);
        for (i, &x) in v.iter().enumerate() {
            cov += (i as f64 - mean) * (x as f64 - mean);
            var += (i as f64 - mean).powi(2);
        }
        let rank_correlation = cov / var;
        assert!(rank_correlation.abs() < 0.02, "{rank_correlation}");
        let ascending = v.windows(2).filter(|w| w[1] > w[0]).count() as f64 / len as f64;
        assert!((ascending - 0.5).abs() < 0.01, "{ascending} of steps go up");
    }

    #[test]
    fn large_lengths_stay_in_range_without_memory() {
        let p = Permutation::new(600_000_000, 1);
        for i in (0..600_000_000).step_by(9_999_991) {
            assert!(p.at(i) < 600_000_000);
        }
        assert_ne!(p.at(0), p.at(1));
    }
}
