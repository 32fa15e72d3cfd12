//! Interruptions: SIGTERM (`kill`, Slurm's preemption and its `--signal`
//! before a time limit) and SIGINT (Ctrl-C) ask a running study to stop.
//!
//! The first signal only sets a flag. A Train stage looks at it after every
//! step: it writes a rolling checkpoint there (mid-epoch included), and the
//! run stops with [`crate::ErrorKind::Interrupted`]; the lock of the stage is
//! released as its guard drops, and the binary exits with
//! [`EXIT_INTERRUPTED`]. Other stage kinds run to their end (they keep no
//! checkpoints); no further stage starts. A second signal ends the process
//! at once (exit status 128 + the signal's number), as a second Ctrl-C
//! should: what the cache holds is still complete, since every directory in
//! it appears by rename.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use signal_hook::consts::{SIGINT, SIGTERM};

/// The exit status of a run that stopped on a signal after saving what it
/// had: "interrupted, resumable" (`EX_TEMPFAIL` of sysexits.h). Running the
/// same command again resumes it; the Slurm job script requeues on it.
pub const EXIT_INTERRUPTED: u8 = 75;

static REQUESTED: AtomicBool = AtomicBool::new(false);
static SIGNAL: AtomicUsize = AtomicUsize::new(0);

/// Installs the handlers of SIGTERM and SIGINT for this process (the
/// binary calls it before a study runs; libraries never do).
pub fn install() -> std::io::Result<()> {
    for sig in [SIGTERM, SIGINT] {
        // Registered first, so that it sees the flag as the previous signal
        // left it: armed from the second signal on.
        signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, &REQUESTED)?;
        // SAFETY: the action only stores into atomics (signal safe).
        unsafe {
            signal_hook::low_level::register(sig, move || {
                SIGNAL.store(sig as usize, Ordering::SeqCst);
                REQUESTED.store(true, Ordering::SeqCst);
            })?;
        }
    }
    Ok(())
}

/// The signal that asked this process to stop, if one did.
pub fn requested() -> Option<Signal> {
    REQUESTED
        .load(Ordering::SeqCst)
        .then(|| Signal(SIGNAL.load(Ordering::SeqCst) as i32))
}

/// A signal number, shown by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signal(pub i32);

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            SIGTERM => f.write_str("SIGTERM"),
            SIGINT => f.write_str("SIGINT"),
            n => write!(f, "signal {n}"),
        }
    }
}
