//! Small statistics shared by the tables, the plots and the claims: mean
//! and standard deviation, Student-t quantiles and tail probabilities
//! (statrs), two one-sided tests of equivalence (TOST) and Holm's
//! step-down correction.

use statrs::distribution::{ContinuousCDF, StudentsT};

/// Mean and sample standard deviation (0 for one value).
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 {
        xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

fn student(df: f64) -> StudentsT {
    StudentsT::new(0.0, 1.0, df).expect("callers pass df > 0")
}

/// The `p` quantile of Student's t with `df` (> 0, finite) degrees of
/// freedom, `0 < p < 1`.
pub fn t_quantile(p: f64, df: f64) -> f64 {
    student(df).inverse_cdf(p)
}

/// P(T > t) for Student's t with `df` degrees of freedom.
pub fn t_upper(t: f64, df: f64) -> f64 {
    student(df).sf(t)
}

/// An estimated mean difference with its standard error and the degrees
/// of freedom of its t statistic (a paired difference over n seeds: the
/// mean of the differences, sd / sqrt(n), n - 1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    pub mean: f64,
    pub se: f64,
    pub df: f64,
}

impl Estimate {
    /// P(T > (mean - null) / se) under mean = `null`: the p-value of the
    /// one-sided test of "at most `null`". A zero standard error gives 0
    /// when the mean lies strictly above `null`, else 1.
    pub fn p_above(&self, null: f64) -> f64 {
        if self.se == 0.0 {
            return if self.mean > null { 0.0 } else { 1.0 };
        }
        t_upper((self.mean - null) / self.se, self.df)
    }

    /// The one-sided p-value of "at least `null`".
    pub fn p_below(&self, null: f64) -> f64 {
        Estimate {
            mean: -self.mean,
            ..*self
        }
        .p_above(-null)
    }

    /// The two-sided p-value of "the mean is 0": below `alpha` exactly
    /// when the `1 - alpha` interval [`Estimate::interval`] excludes 0.
    pub fn p_two_sided(&self) -> f64 {
        (2.0 * self.p_above(0.0).min(self.p_below(0.0))).min(1.0)
    }

    /// The two-sided `level` interval, mean ± t(df, (1 + level) / 2) se.
    pub fn interval(&self, level: f64) -> (f64, f64) {
        let h = if self.se == 0.0 {
            0.0
        } else {
            t_quantile(0.5 + level / 2.0, self.df) * self.se
        };
        (self.mean - h, self.mean + h)
    }

    /// Two one-sided tests of equivalence within ±`margin` at `alpha`.
    pub fn tost(&self, margin: f64, alpha: f64) -> Tost {
        let p_lower = self.p_above(-margin);
        let p_upper = self.p_below(margin);
        let p = p_lower.max(p_upper);
        let (lo, hi) = self.interval(1.0 - 2.0 * alpha);
        Tost {
            p_lower,
            p_upper,
            p,
            lo,
            hi,
            equivalent: p < alpha,
        }
    }
}

/// Two one-sided tests (Schuirmann 1987) of H0: mean <= -margin and H0:
/// mean >= +margin, each at `alpha`. Equivalence is shown when both are
/// rejected, i.e. when `p` = max of the two p-values is below alpha; this
/// is the same decision as "the 1 - 2 alpha interval [lo, hi] lies inside
/// (-margin, +margin)" (a test checks the two agree).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tost {
    /// p-value of H0: mean <= -margin.
    pub p_lower: f64,
    /// p-value of H0: mean >= +margin.
    pub p_upper: f64,
    /// The larger: the equivalence test's p-value.
    pub p: f64,
    /// The 1 - 2 alpha interval.
    pub lo: f64,
    pub hi: f64,
    pub equivalent: bool,
}

/// Holm's (1979) step-down adjusted p-values, in the order given: sort
/// ascending, multiply the i-th smallest (from 0) by m - i, carry the
/// running maximum, cap at 1. Rejecting where the adjusted p-value is
/// below alpha controls the chance of any false rejection in the family
/// at alpha, whatever the dependence between the tests.
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut out = vec![0.0; m];
    let mut running = 0f64;
    for (i, &k) in order.iter().enumerate() {
        running = running.max(((m - i) as f64 * p[k]).min(1.0));
        out[k] = running;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Student's t with 2 degrees of freedom has a closed form:
    /// F(t) = 1/2 + t / (2 sqrt(2 + t^2)) and the quantile
    /// t_p = (2p - 1) / sqrt(2 p (1 - p)); the values below are those
    /// (tests/reference/tost_holm.py prints them, with an independent
    /// numerical integration for other df). Tolerance 1e-9: statrs'
    /// incomplete-beta routines are accurate to about 1e-12 here.
    fn f2(t: f64) -> f64 {
        0.5 + t / (2.0 * (2.0 + t * t).sqrt())
    }

    #[test]
    fn t_functions_match_the_closed_form_at_two_degrees_of_freedom() {
        for p in [0.9f64, 0.95, 0.975] {
            let closed = (2.0 * p - 1.0) / (2.0 * p * (1.0 - p)).sqrt();
            assert!((t_quantile(p, 2.0) - closed).abs() < 1e-9, "{p}");
        }
        for t in [-5.0, -1.0, 0.0, 0.5, 3.0, 12.0] {
            assert!((t_upper(t, 2.0) - (1.0 - f2(t))).abs() < 1e-9, "{t}");
        }
        // t(0.95, 2) = 2.919986, t(0.975, 2) = 4.302653.
        assert!((t_quantile(0.95, 2.0) - 2.919986).abs() < 1e-6);
        assert!((t_quantile(0.975, 2.0) - 4.302653).abs() < 1e-6);
    }

    /// Differences 0.1, 0.3, 0.2 (three seeds): mean 0.2, sd 0.1, se
    /// 0.1 / sqrt(3), df 2. Margin 0.5, alpha 0.05: the t statistics are
    /// (0.2 + 0.5) / se = sqrt(147) and (0.2 - 0.5) / se = -sqrt(27), so
    /// p_lower = 1/2 - sqrt(147) / (2 sqrt(149)) = 0.0033670 and p_upper =
    /// 1/2 - sqrt(27) / (2 sqrt(29)) = 0.0175494: equivalent. The 90%
    /// interval, 0.2 ± 2.919986 se = [0.031415, 0.368585], lies inside ±0.5;
    /// the 95% one, 0.2 ± 4.302653 se, holds 0 (two-sided p = 2 (1/2 -
    /// sqrt(12) / (2 sqrt(14))) = 0.0741799). Margin 0.3: p_upper = 1/2 -
    /// sqrt(3) / (2 sqrt(5)) = 0.1127017, not equivalent.
    #[test]
    fn tost_matches_the_hand_computation() {
        let e = Estimate {
            mean: 0.2,
            se: 0.1 / 3f64.sqrt(),
            df: 2.0,
        };
        let t = e.tost(0.5, 0.05);
        let half = |sq_t: f64, sq_t2: f64| 0.5 - sq_t.sqrt() / (2.0 * sq_t2.sqrt());
        assert!((t.p_lower - half(147.0, 149.0)).abs() < 1e-9, "{t:?}");
        assert!((t.p_upper - half(27.0, 29.0)).abs() < 1e-9, "{t:?}");
        // The printed 7-digit values (tests/reference/tost_holm.py).
        assert!((t.p_lower - 0.0033670).abs() < 1e-7 && (t.p_upper - 0.0175494).abs() < 1e-7);
        assert_eq!(t.p, t.p_upper);
        assert!(t.equivalent);
        assert!(
            (t.lo - 0.031415).abs() < 1e-6 && (t.hi - 0.368585).abs() < 1e-6,
            "{t:?}"
        );
        assert!((e.p_two_sided() - 2.0 * half(12.0, 14.0)).abs() < 1e-9);
        assert!((e.p_two_sided() - 0.0741799).abs() < 1e-7);
        let (lo, hi) = e.interval(0.95);
        assert!(lo < 0.0 && hi > 0.0);
        let t = e.tost(0.3, 0.05);
        assert!((t.p - half(3.0, 5.0)).abs() < 1e-9 && (t.p - 0.1127017).abs() < 1e-7);
        assert!(!t.equivalent);
    }

    /// The p-value decision and the interval decision are the same one,
    /// on a grid of means, spreads, margins and levels.
    #[test]
    fn tost_p_value_and_interval_agree() {
        for df in [1.0, 2.0, 4.0, 9.0] {
            for mean in [-1.0, -0.3, 0.0, 0.05, 0.4, 0.9] {
                for se in [0.01, 0.1, 0.3] {
                    for margin in [0.1, 0.5, 1.0] {
                        for alpha in [0.01, 0.05, 0.1] {
                            let e = Estimate { mean, se, df };
                            let t = e.tost(margin, alpha);
                            let inside = t.lo > -margin && t.hi < margin;
                            assert_eq!(t.equivalent, inside, "{e:?} {margin} {alpha} {t:?}");
                            let (lo, hi) = e.interval(1.0 - alpha);
                            let excludes = lo > 0.0 || hi < 0.0;
                            assert_eq!(e.p_two_sided() < alpha, excludes, "{e:?} {alpha}");
                        }
                    }
                }
            }
        }
    }

    /// A zero standard error (identical differences): decided by the mean.
    #[test]
    fn zero_spread_is_decided_by_the_mean() {
        let e = Estimate {
            mean: 0.2,
            se: 0.0,
            df: 2.0,
        };
        assert!(e.tost(0.5, 0.05).equivalent && !e.tost(0.1, 0.05).equivalent);
        assert_eq!(e.p_two_sided(), 0.0);
        assert_eq!(e.interval(0.95), (0.2, 0.2));
        let z = Estimate { mean: 0.0, ..e };
        assert_eq!(z.p_two_sided(), 1.0);
    }

    /// Holm by hand: p = 0.01, 0.04, 0.03, 0.005 (m = 4). Sorted: 0.005 x 4
    /// = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> 0.06
    /// (running maximum). Adjusted, in the order given: 0.03, 0.06, 0.06,
    /// 0.02; at alpha 0.05 the first and last are rejected, where
    /// uncorrected all four would be.
    #[test]
    fn holm_matches_the_hand_computation() {
        let adj = holm(&[0.01, 0.04, 0.03, 0.005]);
        let want = [0.03, 0.06, 0.06, 0.02];
        for (a, w) in adj.iter().zip(want) {
            assert!((a - w).abs() < 1e-15, "{adj:?}");
        }
        // Capped at 1; one test is its own correction; none is nothing.
        assert_eq!(holm(&[0.6, 0.7]), vec![1.0, 1.0]);
        assert_eq!(holm(&[0.04]), vec![0.04]);
        assert!(holm(&[]).is_empty());
        // Ties share the adjusted value.
        assert_eq!(holm(&[0.02, 0.02]), vec![0.04, 0.04]);
    }
}
