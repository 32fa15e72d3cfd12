//! This machine's f32 FMA peak: `cargo bench -p samlab-models --bench peak`.
//!
//! The method (independent FMA chains in vector registers, the widest ISA
//! the CPU has, chosen at run time) is described in `common/fma.rs`. Prints
//! `SAMLAB_PEAK_ROUNDS` rounds (default 5) of one measurement each (one
//! thread, then all threads, best of 3 repeats of about 0.2 s each), then
//! the best of the rounds: the figure the step benchmark divides by
//! (docs/cpu-profile.md, "Distance to the peak").

#[path = "common/fma.rs"]
mod fma;

fn main() {
    let rounds = std::env::var("SAMLAB_PEAK_ROUNDS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(5)
        .max(1);
    let mut best: Option<fma::Peak> = None;
    println!("f32 FMA peak, GFLOP/s");
    for r in 0..rounds {
        let p = fma::measure(0.2, 3);
        println!(
            "round {}: {} | 1 thread {:>7.1} | {} threads {:>7.1} ({:.2}x one)",
            r + 1,
            p.isa,
            p.one,
            p.threads,
            p.all,
            p.all / p.one
        );
        best = Some(match best {
            None => p,
            Some(b) => fma::Peak {
                one: b.one.max(p.one),
                all: b.all.max(p.all),
                ..b
            },
        });
    }
    let b = best.expect("at least one round");
    println!(
        "best: {} | 1 thread {:.1} | {} threads {:.1} GFLOP/s{}",
        b.isa,
        b.one,
        b.threads,
        b.all,
        mhz().map_or(String::new(), |m| format!(
            " ({:.1} FLOP per cycle on one thread at the {m:.0} MHz /proc/cpuinfo reports)",
            b.one * 1e3 / m
        ))
    );
}

/// The clock /proc/cpuinfo reports for the first CPU (a VM may report its
/// host's nominal clock), if it can be read.
fn mhz() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("cpu MHz"))?;
    line.split(':').nth(1)?.trim().parse().ok()
}
