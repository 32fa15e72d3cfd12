//! Length-matched SGD: a control, not a SAM variant. SGD's direction at
//! SAM's length: the step's gradient is the clean (SGD) gradient of the
//! batch, rescaled to the norm of SAM's gradient at `w + eps` on the same
//! batch, with SAM's settings (rho, m-sharpness chunks, ghost batches,
//! adaptive scaling, scope).
//!
//! Why: SAM's gradient at the perturbed point is usually longer than the
//! clean one near a minimum, so a SAM step is a longer step. Whether SAM
//! leaves a minimum faster (the thesis' Table 5.1) because of its
//! direction or only because its steps are longer is what this kind
//! separates: it takes SAM's step length and SGD's direction (issue 28:
//! "escape in one step at rho >= 0.5 may be a large step, not SAM").
//!
//! A step: SAM's chunk loop (module docs of `sam`) keeping each chunk's
//! clean gradient `g` beside its perturbed one `g2`; with `G` and `G2`
//! their means over the chunks, the update direction is
//! `G * ||G2|| / ||G||` (norms over every parameter's gradient, summed in
//! f64 in name order; with the decay term in both where the weight decay
//! is in the loss). The base optimiser then steps as SGD's does. With
//! rho = 0, `G2 = G` and the step is an SGD step up to the rounding of the
//! ratio (bit for bit where `||G2|| = ||G||` as computed: tested). With
//! m-sharpness chunks `G` is the chunks' mean: SGD's gradient with ghost
//! batches of the chunk's size (chunk = bn_batch, the thesis' setting). The
//! running statistics are what SAM's first passes leave. Cost: two passes a
//! step, as SAM. Settings: none of its own. State: none.

use super::{Method, NoSettings, StepCtx, StepKind, StepOutput, dot};
use crate::error::{ErrorKind, Result};
use crate::sam::perturbation;

#[derive(Debug, Default)]
pub struct LengthMatched;

impl StepKind for LengthMatched {
    type Settings = NoSettings;
    const USES_SAM: bool = true;

    fn cost(_: &NoSettings) -> f64 {
        2.0
    }

    fn step(&mut self, _: &NoSettings, c: StepCtx<'_>) -> Result<StepOutput> {
        let sam = c.settings.sam;
        // SAM's chunk loop with the chunks' clean gradients as the
        // direction and their perturbed ones kept beside it; the direction
        // is then rescaled to the perturbed gradient's norm.
        let (out, ()) = c.sam_update(
            Method::LengthMatchedSgd,
            |params, g| perturbation(params, g, sam),
            |g, g2| Ok((g, Some(g2))),
            |r| {
                let g2 = r.kept.as_ref().expect("kept");
                let (n2, n) = (dot(g2, g2)?.sqrt(), dot(&r.perturbed, &r.perturbed)?.sqrt());
                if !(n2.is_finite() && n.is_finite()) {
                    // A diverged step, as a non-finite loss is (the
                    // trainer fills in the step).
                    return Err(ErrorKind::NonFinite {
                        step: 0,
                        loss: if n2.is_finite() { n } else { n2 },
                    }
                    .into());
                }
                // A zero clean gradient has no direction to rescale: the
                // step is SGD's (a zero step), as SAM's perturbation is
                // zero there.
                let scale = if n > 0.0 { n2 / n } else { 1.0 };
                if scale != 1.0 {
                    for t in r.perturbed.values_mut() {
                        *t = t.affine(scale, 0.0)?;
                    }
                }
                Ok(())
            },
        )?;
        Ok(out)
    }
}
