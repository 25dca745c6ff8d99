//! Summary statistics of measurements (the benchmarks' timings).

/// The upper median of the samples: the middle value of an odd count, the upper of the two
/// middle values of an even count. NaNs sort as [`f64::total_cmp`] orders them (after every
/// number for positive NaN).
///
/// # Panics
/// When `v` is empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_element() {
        assert_eq!(median(vec![2.5]), 2.5);
    }

    #[test]
    fn odd_count_is_the_middle_value() {
        assert_eq!(median(vec![9.0, 1.0, 5.0]), 5.0);
        assert_eq!(median(vec![3.0, -1.0, 10.0, 2.0, 7.0]), 3.0);
    }

    #[test]
    fn even_count_is_the_upper_middle_value() {
        assert_eq!(median(vec![4.0, 1.0]), 4.0);
        assert_eq!(median(vec![8.0, 2.0, 6.0, 4.0]), 6.0);
    }

    #[test]
    #[should_panic]
    fn empty_panics() {
        median(Vec::new());
    }
}
