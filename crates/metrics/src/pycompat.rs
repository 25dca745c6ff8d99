//! Python and NumPy behaviours that pycocoevalcap's results depend on: `str.split()` /
//! `str.rstrip()` white space, and `numpy.mean`'s pairwise summation.

/// Whether Python's `str.isspace()` holds for `c` (what `split()` and `rstrip()` strip).
pub fn is_py_space(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n'
            | '\u{b}'
            | '\u{c}'
            | '\r'
            | '\u{1c}'..='\u{1f}'
            | ' '
            | '\u{85}'
            | '\u{a0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200a}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202f}'
            | '\u{205f}'
            | '\u{3000}'
    )
}

/// Python's `s.split()`: runs of white space separate words; no empty words.
pub fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_space).filter(|w| !w.is_empty())
}

/// Python's `s.rstrip()`.
pub fn py_rstrip(s: &str) -> &str {
    s.trim_end_matches(is_py_space)
}

/// NumPy's pairwise sum of a contiguous float64 array (`numpy.add.reduce`), bit for bit.
pub fn np_sum(a: &[f64]) -> f64 {
    const BLOCK: usize = 128;
    let n = a.len();
    if n < 8 {
        let mut res = 0.0;
        for &x in a {
            res += x;
        }
        res
    } else if n <= BLOCK {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i < n - (n % 8) {
            for j in 0..8 {
                r[j] += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while i < n {
            res += a[i];
            i += 1;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        np_sum(&a[..n2]) + np_sum(&a[n2..])
    }
}

/// `numpy.mean` of a float64 array (NaN for an empty one, as NumPy returns).
pub fn np_mean(a: &[f64]) -> f64 {
    np_sum(a) / a.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_whitespace() {
        assert_eq!(
            py_split(" a\u{a0}b\u{1c}c  d\u{200b}e ").collect::<Vec<_>>(),
            ["a", "b", "c", "d\u{200b}e"]
        );
        assert_eq!(py_rstrip("ab \u{3000}\n"), "ab");
        assert_eq!(py_split("").count(), 0);
    }

    /// Values printed by NumPy 2.4 for `np.add.reduce` / `np.mean` of these arrays.
    #[test]
    fn numpy_pairwise_sum() {
        assert_eq!(np_sum(&[1e16, 1.0, 1.0, 1.0]), 1e16);
        let mut b = vec![1.0];
        b.extend(std::iter::repeat_n(1e-16, 20));
        assert_eq!(np_sum(&b), 1.0000000000000016);
        assert!(np_mean(&[]).is_nan());
        // x_i = ((i * 7919) % 1000) / 7 * 10^((i % 11) - 5), as built in Python.
        for (n, want) in [
            (9, 6366.842855555555),
            (130, 620206.2244001538),
            (300, 709506.7606102),
            (1000, 710732.0971549929),
            (5000, 717190.1580527615),
            (20000, 720337.7513155313),
        ] {
            let x: Vec<f64> = (0..n)
                .map(|i| ((i * 7919) % 1000) as f64 / 7.0 * 10f64.powf((i % 11) as f64 - 5.0))
                .collect();
            assert_eq!(np_mean(&x), want, "n = {n}");
        }
    }
}
