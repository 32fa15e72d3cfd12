//! Optimisers for sharpness-aware training: Nesterov SGD, SAM with
//! m-sharpness, and the SGD/SAM step schedules (switch, PSAM).
//!
//! Filled in by the optimizer issue; this crate is a compiling skeleton for now.
