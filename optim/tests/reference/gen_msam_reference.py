#!/usr/bin/env python3
"""Reference for three Momentum-SAM steps of samlab-optim on ResNet-8 (JAX, f64).

MSAM is Becker, Altrock, Risse, "Momentum-SAM: Sharpness Aware Minimization
without Computational Overhead", arXiv:2401.12033 (2024). Official code:
MarlonBecker/MSAM, optimizer/msam.py and main.py (commit
780fa4f623fe0c99760fd7cfb1a94d14f00179ee, the repository's only commit).

The official optimiser keeps the model's weights at the perturbed point
between steps; the gradient of the ordinary training pass is taken there.
Its step(), quoted (loop over parameters; rho, lr, momentum, weight_decay from
the group; the momentum buffers start at zero and inverse_norm_buffer at 0):

    d_p = d_p_list[i]
    if weight_decay != 0:
        d_p.add_(param, alpha=weight_decay)
    buf = momentum_buffer_list[i]
    param.add_(buf, alpha = rho*group["inverse_norm_buffer"])
    ...  buf.mul_(momentum).add_(d_p)
    param.add_(buf, alpha = -lr)
    ...
    ascent_norm = torch.norm(torch.stack([buf.norm(p=2) for buf in momentum_buffer_list]), p=2)
    group["inverse_norm_buffer"] = 1/(ascent_norm+1e-12)
    ...
    param.sub_(momentum_buffer_list[i], alpha = rho*group["inverse_norm_buffer"])

with its own comments "p_{t+1}' = p_t + rho*v_t/||v_t|| <- normal p (no
descent)", "v_{t+1} = mu * v_t + g", "p_{t+1}'' = p_{t+1}' + -lr v_{t+1}
<- SGD step", "p_{t+1} = p_{t+1}'' - rho*v_{t+1}/||v_{t+1}|| <- ascending
again". So, with w_t the unperturbed weights and v_t the momentum buffer:
the gradient is taken at w~_t = w_t - rho v_t/(||v_t|| + 1e-12) (along the
NEGATIVE momentum direction, normalised over all parameters), the weight decay
is added at w~_t (d_p = g + wd w~_t), v_{t+1} = mu v_t + d_p (heavy ball; the
optimiser ignores nesterov) and w_{t+1} = w_t - lr v_{t+1}. At the first step
v_0 = 0 and inverse_norm_buffer = 0: no perturbation, a plain SGD step. One
forward-backward pass per step; it runs in training mode at w~_t with
BatchNorm tracking on (main.py calls optimizer.step() after the ordinary
loss.backward()), so the running statistics come from the pass at w~_t;
main.py moves the weights back (move_back_from_momentumAscent) before each
evaluation and re-estimates the statistics with a forward-only epoch at the
end of training.

What is computed (per step t, in this order; v is the base optimiser's
momentum buffer, absent before the first step):
  1. w~ = w - rho v / (||v|| + 1e-12) if v exists, else w~ = w.
  2. g = gradient at w~ of the batch's mean loss, training mode; this pass
     updates the BatchNorm running statistics (in ghost batches: the mean of
     the slices' updates). Decay "Loss": g += wd w~.
  3. The base optimiser steps from w with g (decay "Update": with g + wd w,
     at the unperturbed weights); Nesterov or heavy ball as the case says.
The recorded loss is the pass's loss at w~ (MSAM has no pass at w).

Differences from the official code, deliberate (also in the JSON's "note"):
  1. samlab keeps w and perturbs for the pass; the official code keeps w~ and
     moves back inside the step. Same arithmetic up to rounding (checked).
  2. With the Nesterov base optimiser (samlab's default) the perturbation is
     along the base optimiser's momentum buffer v (PyTorch semantics,
     v = mu v + d), as the official code perturbs along its buffer; the
     official code itself only has heavy ball. The "official" case
     (nesterov false, decay "Loss") is the official optimiser exactly: its
     decay wd w~ at the perturbed weights is what samlab's "Loss" placement
     computes; in decay "Update" the decay is wd w at the unperturbed weights.
  3. m-sharpness does not apply (the perturbation does not depend on the
     batch): chunk is null in every case.
  4. The official code's rhoScheduler sets group["rho"] between steps, so a
     changing rho moves back by a different rho than it moved up; with a
     constant rho (all cases here) this does not arise.

Checks inside the script: rho = 0 equals SGD (gen_step_reference.step_grads
"sgd") step for step to 1e-12 (Nesterov, decay Update) and the SGD loop
reproduces step_reference.json's "sgd" case after 2 steps; the "official"
case equals a literal transcription of MSAM.step() (weights stored at the
perturbed point, updated in place, moved back at the end) to 1e-12; rho = 0.3
differs from rho = 0 by more than 1e-6.

    /work/scratch/venv-jax-looksam/bin/python optim/tests/reference/gen_msam_reference.py
    (with SAMLAB_REF_F32=1 it runs the cases in f32 and prints how far each lands
    from the f64 JSON, family_common.report_drift; it writes nothing then)
"""
import family_common as fc
from family_common import gsr

NOTE = (
    "Momentum-SAM (Becker et al. 2024) as the official code computes it (MarlonBecker/MSAM optimizer/msam.py, "
    "commit 780fa4f623fe0c99760fd7cfb1a94d14f00179ee): one forward-backward pass per step, at w~ = w - rho v/(||v|| "
    "+ 1e-12), v the base optimiser's momentum buffer after the previous step (negative momentum direction, "
    "normalised over all trainable parameters, summed in f64); the first step has no buffer and takes the "
    "gradient at w (the official buffers start at zero with inverse norm 0: a plain SGD step). The base optimiser "
    "then steps from w with that gradient. The pass at w~ is the only pass and updates the BatchNorm running "
    "statistics (as the official code, whose training pass runs at the perturbed weights). Deliberate "
    "differences: (1) samlab keeps w and perturbs for the pass, the official code stores w~ between steps (same "
    "arithmetic up to rounding, checked); (2) the Nesterov base optimiser (samlab's default) is not in the "
    "official code, which is heavy ball only; the buffer v is PyTorch's in both; (3) decay Update adds wd w at "
    "the unperturbed weights in the base optimiser, decay Loss adds wd w~ to the gradient at w~ (the official "
    "placement); the case with nesterov false and decay Loss is the official optimiser exactly; (4) m-sharpness "
    "does not apply (chunk null). rho = 0 is exactly SGD (checked). passes: 1 per step. lr 0.1, momentum 0.9, "
    "wd 5e-4."
)


def msam(rho, wd_loss=False, nesterov=True, bn=None, steps=fc.STEPS):
    params, buffers = fc.initial()
    mom, losses, passes, pnorms, states = {}, [], [], [], []
    for t in range(steps):
        x, y = gsr.batch(t)
        if mom:
            vn = fc.norm(mom)
            pw = {k: params[k] - rho * mom[k] / (vn + fc.PERTURB_EPS) for k in params}
        else:
            pw = params
        loss, g, buffers = gsr.ghost_grads(pw, buffers, x, y, bn)  # the only pass: updates running statistics
        if wd_loss:
            g = {k: g[k] + fc.WD * pw[k] for k in g}
        pnorms.append(float(fc.norm({k: pw[k] - params[k] for k in params})))
        losses.append(loss)
        passes.append(1)
        params, mom = fc.base_step(params, mom, g, wd_loss, nesterov)
        states.append((params, mom, buffers))
    case = {
        "method": "msam", "rho": rho, "chunk": None, "adaptive": False, "bn_batch": bn,
        "decay": "Loss" if wd_loss else "Update", "nesterov": nesterov,
        "losses": losses, "passes": passes, "perturbation_norm": pnorms,
        **fc.summary(mom, params, buffers),
    }
    return case, losses, states


def official_msam(rho, steps=fc.STEPS):
    """MSAM.step() of optimizer/msam.py transcribed: the model's weights P are the
    perturbed point; buffers start at zero, inverse_norm_buffer at 0."""
    lr, momentum, weight_decay = fc.LR, fc.MU, fc.WD
    P, buffers = fc.initial()
    buf = {k: 0.0 * v for k, v in P.items()}
    inverse_norm_buffer = 0.0
    losses, states = [], []
    for t in range(steps):
        x, y = gsr.batch(t)
        loss, grad, buffers = gsr.grads(P, buffers, x, y)  # predictions = model(inputs); loss.backward()
        for k in sorted(P):
            d_p = grad[k] + P[k] * weight_decay
            P[k] = P[k] + buf[k] * (rho * inverse_norm_buffer)
            buf[k] = buf[k] * momentum + d_p
            P[k] = P[k] + buf[k] * (-lr)
        ascent_norm = fc.norm(buf)
        inverse_norm_buffer = 1 / (ascent_norm + 1e-12)
        for k in sorted(P):
            P[k] = P[k] - buf[k] * (rho * inverse_norm_buffer)
        w = {k: P[k] + buf[k] * (rho * inverse_norm_buffer) for k in P}  # move_back_from_momentumAscent
        losses.append(loss)
        states.append((w, dict(buf), buffers))
    return losses, states


def main():
    cases, runs = [], {}
    for label, args in [("0.3", dict(rho=0.3)), ("0.05", dict(rho=0.05)), ("3", dict(rho=3.0)),
                        ("official", dict(rho=0.3, wd_loss=True, nesterov=False)),
                        ("0.3 bn4", dict(rho=0.3, bn=4)), ("0", dict(rho=0.0))]:
        case, losses, states = msam(**args)
        cases.append(case)
        runs[label] = (losses, states)
        print("case", label, "losses", losses, "perturbation norms", case["perturbation_norm"])
    if fc.F32:  # the f32 sensitivity run (family_common): print, write nothing
        return fc.report_drift("msam_reference.json", cases)
    sgd_losses, sgd_states = fc.sgd_run()
    fc.check_step_reference(sgd_states, "sgd", 0.0)
    fc.check_same(*runs["0"], sgd_losses, sgd_states, "rho = 0 and SGD")
    fc.check_same(*runs["official"], *official_msam(0.3), "the official case and MSAM.step() transcribed")
    fc.check_differs(runs["0"][1], runs["0.3"][1], "rho = 0.3 against rho = 0")
    fc.write("msam_reference.json", "gen_msam_reference.py", NOTE, cases)


if __name__ == "__main__":
    main()
