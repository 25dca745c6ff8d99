//! SplitMix64 (Steele, Lea & Flood 2014, as in Vigna's `splitmix64.c`): a small, fast, seedable
//! pseudo-random generator. Used where results must be reproducible from a seed on every machine:
//! the k-means sampling of the datastore, the benchmarks' synthetic data, test data, and the
//! seed mixing of the training generator.

/// SplitMix64 (Steele, Lea & Flood 2014): a small, fast, seedable pseudo-random generator.
///
/// The field is the generator's state; `SplitMix64(seed)` starts the stream of `seed`.
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, 1)`.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Uniform in `0..n` (`n > 0`; Lemire's multiply-shift, bias below 2^-32 for n < 2^32).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let u2 = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first(seed: u64, n: usize) -> Vec<u64> {
        let mut rng = SplitMix64(seed);
        (0..n).map(|_| rng.next_u64()).collect()
    }

    /// The reference outputs of `splitmix64.c` (worked out from the algorithm: x += 0x9E37…7C15;
    /// z = (x ^ x>>30)·0xBF58…E5B9; z = (z ^ z>>27)·0x94D0…11EB; z ^ z>>31).
    #[test]
    fn reference_outputs() {
        assert_eq!(
            first(0, 5),
            [
                0xE220_A839_7B1D_CDAF,
                0x6E78_9E6A_A1B9_65F4,
                0x06C4_5D18_8009_454F,
                0xF88B_B8A8_724C_81EC,
                0x1B39_896A_51A8_749B,
            ]
        );
        assert_eq!(
            first(1_234_567, 5),
            [
                6_457_827_717_110_365_317,
                3_203_168_211_198_807_973,
                9_817_491_932_198_370_423,
                4_593_380_528_125_082_431,
                16_408_922_859_458_223_821,
            ]
        );
    }

    #[test]
    fn state_is_the_seed_plus_one_increment_per_draw() {
        let mut rng = SplitMix64(5);
        rng.next_u64();
        rng.next_u64();
        assert_eq!(
            rng.0,
            5u64.wrapping_add(2u64.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        );
    }

    #[test]
    fn derived_draws_are_built_from_next_u64() {
        let (mut a, mut b) = (SplitMix64(42), SplitMix64(42));
        for _ in 0..100 {
            let f = a.next_f32();
            assert_eq!(f, (b.next_u64() >> 40) as f32 / 16_777_216.0);
            assert!((0.0..1.0).contains(&f));
        }
        for n in [1usize, 2, 7, 1000, usize::MAX] {
            let x = a.below(n);
            assert_eq!(x as u128, (b.next_u64() as u128 * n as u128) >> 64);
            assert!(x < n);
        }
        // First draw of seed 0 through `below`: the high bits of 0xE220A8397B1DCDAF.
        assert_eq!(SplitMix64(0).below(16), 0xE);
        let z = SplitMix64(3).normal();
        assert!(z.is_finite());
        let mut c = SplitMix64(3);
        let u1 = ((c.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let u2 = (c.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        assert_eq!(
            z,
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        );
    }
}
