//! This machine's f32 FMA peak, measured: the ceiling of the roofline model
//! (Williams, Waterman and Patterson, "Roofline: an insightful visual
//! performance model for multicore architectures", CACM 52(4), 2009), the
//! way peak-FLOP microbenchmarks measure it (e.g. the Empirical Roofline
//! Toolkit's compute kernel): a loop of fused multiply-adds on vector
//! registers, in enough independent dependency chains that the FMA units
//! never wait on a result. An FMA's result is ready after its latency `L`
//! cycles and the core starts `T` per cycle, so `L * T` chains keep every
//! unit busy (Little's law); Agner Fog's instruction tables give `L = 4`,
//! `T = 2` for 256-bit `VFMADD` on AMD Zen 3 and Intel Skylake-X alike
//! (8 chains), so the AVX2 loop runs 12 and the AVX-512 one 24 (of 16 and
//! 32 vector registers). The chains iterate `a = a * b + c` with `b` just
//! below 1, whose values settle at `c / (1 - b)`: no overflow, no
//! subnormals. The widest ISA the CPU has is taken at run time.
//!
//! One core: the loop on the calling thread. All cores: the same loop on
//! `available_parallelism()` threads started together, total FLOPs over
//! the wall time until the last finishes. The best of several repeats is
//! the reading (a peak is a ceiling; a slower repeat means something else
//! ran on that core).

use std::sync::Barrier;
use std::time::Instant;

/// A measured peak.
#[derive(Clone, Copy, Debug)]
pub struct Peak {
    /// The registers the loop ran on: "avx512f", "avx2+fma" or "scalar".
    pub isa: &'static str,
    /// GFLOP/s on one thread.
    pub one: f64,
    /// GFLOP/s on `threads` threads together.
    pub all: f64,
    pub threads: usize,
}

/// FLOPs one call of [`kernel`] does per iteration, and the call itself.
fn kernel() -> (&'static str, u64, fn(u64) -> f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY (both closures): the feature was detected just above.
            return ("avx512f", 24 * 16 * 2, |n| unsafe { x86::chains_avx512(n) });
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return ("avx2+fma", 12 * 8 * 2, |n| unsafe { x86::chains_avx2(n) });
        }
    }
    ("scalar", 8 * 2, chains_scalar)
}

/// The portable fallback: 8 scalar chains (`mul_add` is an FMA where the
/// target has one, a libm call otherwise).
fn chains_scalar(n: u64) -> f32 {
    let (b, c) = std::hint::black_box((0.999_999f32, 1e-6f32));
    let mut a = std::hint::black_box([1.0f32; 8]);
    for _ in 0..n {
        for v in a.iter_mut() {
            *v = v.mul_add(b, c);
        }
    }
    a.iter().sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// 12 independent chains of 8-lane FMAs, `n` rounds.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn chains_avx2(n: u64) -> f32 {
        let (b, c) = std::hint::black_box((0.999_999f32, 1e-6f32));
        let (b, c) = (_mm256_set1_ps(b), _mm256_set1_ps(c));
        let mut a = [_mm256_set1_ps(std::hint::black_box(1.0)); 12];
        for _ in 0..n {
            // Unrolled by the compiler: 12 FMAs, each on its own register.
            for v in a.iter_mut() {
                *v = _mm256_fmadd_ps(*v, b, c);
            }
        }
        let mut s = _mm256_setzero_ps();
        for v in a {
            s = _mm256_add_ps(s, v);
        }
        let mut out = [0f32; 8];
        // SAFETY: 8 floats into an 8-float array.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
        out.iter().sum()
    }

    /// 24 independent chains of 16-lane FMAs, `n` rounds.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn chains_avx512(n: u64) -> f32 {
        let (b, c) = std::hint::black_box((0.999_999f32, 1e-6f32));
        let (b, c) = (_mm512_set1_ps(b), _mm512_set1_ps(c));
        let mut a = [_mm512_set1_ps(std::hint::black_box(1.0)); 24];
        for _ in 0..n {
            for v in a.iter_mut() {
                *v = _mm512_fmadd_ps(*v, b, c);
            }
        }
        let mut s = _mm512_setzero_ps();
        for v in a {
            s = _mm512_add_ps(s, v);
        }
        _mm512_reduce_add_ps(s)
    }
}

/// Rounds of the loop that take about `secs` on one thread.
fn calibrate(f: fn(u64) -> f32, secs: f64) -> u64 {
    let mut n = 1 << 16;
    loop {
        let t = Instant::now();
        std::hint::black_box(f(std::hint::black_box(n)));
        let dt = t.elapsed().as_secs_f64();
        if dt > 0.02 || n > 1 << 40 {
            return ((n as f64 * secs / dt) as u64).max(1);
        }
        n *= 4;
    }
}

/// Measures the peak: `repeats` times the loop for about `secs` on one
/// thread, then on all, alternating; the best of each.
pub fn measure(secs: f64, repeats: usize) -> Peak {
    let (isa, flops_per_round, f) = kernel();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let n = calibrate(f, secs);
    let flops = (n * flops_per_round) as f64;
    let (mut one, mut all) = (0f64, 0f64);
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        std::hint::black_box(f(std::hint::black_box(n)));
        one = one.max(flops / t.elapsed().as_secs_f64() / 1e9);
        let start = Barrier::new(threads + 1);
        let t = std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    start.wait();
                    std::hint::black_box(f(std::hint::black_box(n)));
                });
            }
            start.wait();
            Instant::now()
        });
        all = all.max(threads as f64 * flops / t.elapsed().as_secs_f64() / 1e9);
    }
    Peak {
        isa,
        one,
        all,
        threads,
    }
}
