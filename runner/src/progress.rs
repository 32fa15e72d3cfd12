//! Progress: bars with rate and ETA on a terminal, plain lines otherwise.

use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    multi: Option<MultiProgress>,
    overall: ProgressBar,
    /// Plain lines (one per epoch) when not drawing bars.
    lines: bool,
}

impl Progress {
    /// Bars when stderr is a terminal, plain lines otherwise; `quiet` shows neither.
    pub fn new(total_cost: u64, quiet: bool) -> Progress {
        let tty = std::io::stderr().is_terminal() && !quiet;
        if tty {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let overall = multi.add(ProgressBar::new(total_cost));
            overall.set_style(
                ProgressStyle::with_template(
                    "overall {bar:30} {pos}/{len} SGD-step equivalents, {per_sec}, ETA {eta}",
                )
                .expect("valid template"),
            );
            Progress {
                multi: Some(multi),
                overall,
                lines: false,
            }
        } else {
            Progress {
                multi: None,
                overall: ProgressBar::hidden(),
                lines: !quiet,
            }
        }
    }

    /// A message above the bars (or on its own line).
    pub fn note(&self, msg: &str) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(msg);
            }
            None if self.lines => eprintln!("{msg}"),
            None => {}
        }
    }

    /// A bar over a stage's `len` steps, starting at `pos`.
    pub fn stage_bar(&self, stage: &str, len: u64, pos: u64) -> ProgressBar {
        let bar = match &self.multi {
            Some(m) => m.add(ProgressBar::new(len)),
            None => ProgressBar::hidden(),
        };
        bar.set_length(len);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} {bar:30} {pos}/{len} steps, {per_sec}, ETA {eta} {msg}",
            )
            .expect("valid template"),
        );
        bar.set_prefix(stage.to_string());
        bar.set_position(pos);
        bar.reset_eta();
        bar
    }

    /// Counts passes (SGD-step equivalents) towards the overall bar.
    pub fn advance(&self, passes: u64) {
        self.overall.inc(passes);
    }

    pub fn epoch_line(
        &self,
        stage: &str,
        epoch: u64,
        epochs: u64,
        loss: f64,
        acc: f64,
        bar: &ProgressBar,
    ) {
        let msg = format!("epoch {epoch}/{epochs} loss {loss:.4} acc {acc:.4}");
        if self.lines {
            eprintln!(
                "{stage}: {msg} ({:.2} steps/s, ETA {}s)",
                bar.per_sec(),
                bar.eta().as_secs()
            );
        } else {
            bar.set_message(msg);
        }
    }

    pub fn finish(&self) {
        self.overall.finish_and_clear();
    }
}
