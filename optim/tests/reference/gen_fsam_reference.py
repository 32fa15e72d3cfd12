#!/usr/bin/env python3
"""Reference for three Friendly-SAM steps of samlab-optim on ResNet-8 (JAX, f64).

F-SAM is Li, Zhou, He, Cheng, Huang, "Friendly Sharpness-Aware
Minimization", CVPR 2024 (arXiv:2403.12350). Official code: nblt/F-SAM,
utils.py class FriendlySAM and train.py (commit
2e2f9899ab473880430640fa5def4ad8f5aa2401; utils.py last changed in
39e42171c0a5925cd582193b3f6d10048c6523b2, which only added the
`if p.grad is None: continue`).

The paper's update, as secondary sources render it (the paper's text was not
readable here; https://junaidaliop.github.io/zij/math/fsam/ writes it so):
    g_t = grad L_B(w_t);  m_t = lambda m_{t-1} + (1 - lambda) g_t;
    d_t = g_t - sigma m_t;  eps_t = rho d_t / ||d_t||;
    w_{t+1} = w_t - lr grad L_B(w_t + eps_t).

The official code's FriendlySAM.first_step, quoted:

    for p in group["params"]:
        if p.grad is None: continue
        grad = p.grad.clone()
        if not "momentum" in self.state[p]:
            self.state[p]["momentum"] = grad
        else:
            p.grad -= self.state[p]["momentum"] * self.sigma
            self.state[p]["momentum"] = self.state[p]["momentum"] * self.lmbda + grad * (1 - self.lmbda)
    grad_norm = self._grad_norm()
    ...  scale = group["rho"] / (grad_norm + 1e-12)
         e_w = (torch.pow(p, 2) if group["adaptive"] else 1.0) * p.grad * scale.to(p)
         p.add_(e_w)  # climb to the local maximum "w + e(w)"

then train.py runs the second forward-backward with running statistics
disabled (disable_running_stats: BatchNorm momentum 0) and second_step()
restores w and calls the base optimiser (torch.optim.SGD, momentum, weight
decay, nesterov=False) with the gradient at w + e(w). Defaults: the class has
rho=0.05, sigma=1, lmbda=0.9; train.py's argument defaults sigma 1, lmbda
0.95; run.sh (CIFAR-100, ResNet-18) rho 0.2, sigma 1, lmbda 0.6.

The official code and the paper differ in two places; the reference follows
the official code:
  (a) the direction subtracts the average BEFORE it is updated with the
      current gradient: d_t = g_t - sigma m_{t-1}, then
      m_t = lambda m_{t-1} + (1 - lambda) g_t (the paper: d_t = g_t - sigma m_t);
  (b) the first step stores m = g (not (1 - lambda) g from a zero average)
      and perturbs along g itself: the first step is a SAM step.

What is computed (per step t, in this order; m is the kind's state, absent at
the start):
  1. For each m-sharpness chunk c (the whole batch when chunk is null):
     g_c = gradient at w of the chunk's mean loss (training mode; updates
     the running statistics exactly as gen_step_reference.step_grads).
     Decay "Loss": g_c += wd w.
  2. d_c = g_c if m is absent, else g_c - sigma m.
  3. eps_c = rho d_c / (||d_c|| + 1e-12); g_s,c = gradient at w + eps_c
     (training mode, its running statistics dropped). Decay "Loss":
     g_s,c += wd (w + eps_c).
  4. m <- mean_c g_c if m was absent, else lambda m + (1 - lambda) mean_c g_c
     (the average is of the stochastic gradient of the step: without chunks
     the batch gradient, as the official code; with chunks the mean of the
     chunks' gradients, the batch gradient the step saw).
  5. The base optimiser steps with mean_c g_s,c (plus wd w in decay
     "Update"). Two passes per step.
After the last step the JSON gives m ("m": {name: {norm, head}}).

Differences from the paper, deliberate (also in the JSON's "note"): (a) and
(b) above (the official code's order and initialisation); eps has + 1e-12 as
the official code and samlab's SAM; m-sharpness, ghost batches, decay
placement and the Nesterov base optimiser are samlab settings (the official
base optimiser is heavy-ball SGD with the decay in the update).

Checks inside the script: sigma = 0 equals samlab's SAM
(gen_step_reference.step_grads) step for step to 1e-12 of each tensor's
largest entry (plain, m = 4 in ghost batches of 4, decay in the loss); the
SAM loop reproduces step_reference.json's "sam" case after 2 steps; the
(sigma 1, lambda 0.9) case equals a literal transcription of
FriendlySAM.first_step/second_step to 1e-12; sigma = 1 differs from
sigma = 0 by more than 1e-6.

    /work/scratch/venv-jax-looksam/bin/python optim/tests/reference/gen_fsam_reference.py
    (with SAMLAB_REF_F32=1 it runs the cases in f32 and prints how far each lands
    from the f64 JSON, family_common.report_drift; it writes nothing then)
"""
import family_common as fc
from family_common import gsr

NOTE = (
    "Friendly-SAM (Li et al., CVPR 2024) as the official code computes it (nblt/F-SAM utils.py FriendlySAM, commit "
    "2e2f9899ab473880430640fa5def4ad8f5aa2401): state m (the moving average of the stochastic gradient, factor "
    "lambda); the perturbation direction is d = g - sigma m with the average from the previous step, and only "
    "then m <- lambda m + (1 - lambda) g; the first step stores m = g and perturbs along g (a SAM step). eps = rho "
    "d/(||d|| + 1e-12), g_s = grad at w + eps, the base optimiser steps with g_s. Differences from the paper "
    "(which writes m_t = lambda m_{t-1} + (1 - lambda) g_t, d_t = g_t - sigma m_t), deliberate: the official "
    "code's order and first-step initialisation above. Norms over all trainable parameters (names not ending in "
    "running_mean/running_var), summed in f64. Only the first pass at w updates the BatchNorm running "
    "statistics; the pass at w + eps runs in training mode and its statistics are dropped (the official "
    "disable_running_stats). With m-sharpness chunks each chunk perturbs along g_c - sigma m and m averages the "
    "mean of the chunks' g_c. m-sharpness, ghost batches, decay placement (Update: g + wd w in the base "
    "optimiser; Loss: wd w added to g, so to d and m, and wd (w + eps) to g_s) and Nesterov SGD (PyTorch "
    "semantics, momentum 0.9, wd 5e-4, lr 0.1) are samlab settings; the official base optimiser is heavy ball "
    "with the decay in the update. sigma = 0 is exactly SAM (checked). passes: 2 per step."
)


def fsam(sigma, lmbda, rho, chunk=None, bn=None, wd_loss=False, steps=fc.STEPS):
    params, buffers = fc.initial()
    mom, m, losses, passes, dnorms, states = {}, None, [], [], [], []
    for t in range(steps):
        x, y = gsr.batch(t)
        firsts, buffers = fc.first_passes(params, buffers, x, y, chunk, bn)
        gs_all, g_all, step_losses, step_dn = [], [], [], []
        for xc, yc, loss, g in firsts:
            if wd_loss:
                g = {k: g[k] + fc.WD * params[k] for k in g}
            d = g if m is None else {k: g[k] - m[k] * sigma for k in g}
            dn = fc.norm(d)
            pw = {k: params[k] + rho * d[k] / (dn + fc.PERTURB_EPS) for k in params}
            _, gs = fc.perturbed_grad(pw, buffers, xc, yc, bn, wd_loss)
            gs_all.append(gs)
            g_all.append(g)
            step_losses.append(loss)
            step_dn.append(float(dn))
        gbar = gsr.mean_trees(g_all)
        m = gbar if m is None else {k: m[k] * lmbda + gbar[k] * (1 - lmbda) for k in gbar}
        losses.append(float(sum(step_losses) / len(step_losses)))
        passes.append(2)
        dnorms.append(step_dn)
        params, mom = fc.base_step(params, mom, gsr.mean_trees(gs_all), wd_loss)
        states.append((params, mom, buffers))
    case = {
        "method": "fsam", "rho": rho, "chunk": chunk, "adaptive": False, "bn_batch": bn,
        "decay": "Loss" if wd_loss else "Update", "nesterov": True,
        "sigma": sigma, "lambda": lmbda,
        "losses": losses, "passes": passes, "direction_norm": dnorms,
        **fc.summary(mom, params, buffers),
        "m": fc.tensor_stats(m),
    }
    return case, losses, states, m


def official_fsam(sigma, lmbda, rho, steps=fc.STEPS):
    """FriendlySAM.first_step / second_step (utils.py) transcribed, with the
    base optimiser of samlab (Nesterov, decay in the update) in place of
    torch.optim.SGD(nesterov=False) so it can be compared with the cases."""
    params, buffers = fc.initial()
    state, mom, losses, states = {}, {}, [], []
    for t in range(steps):
        x, y = gsr.batch(t)
        loss, grads, buffers = gsr.grads(params, buffers, x, y)  # enable_running_stats; first forward-backward
        pgrad = dict(grads)
        for k in sorted(params):
            grad = pgrad[k]
            if "momentum" not in state.get(k, {}):
                state[k] = {"momentum": grad}
            else:
                pgrad[k] = pgrad[k] - state[k]["momentum"] * sigma
                state[k]["momentum"] = state[k]["momentum"] * lmbda + grad * (1 - lmbda)
        grad_norm = fc.norm(pgrad)
        scale = rho / (grad_norm + 1e-12)
        pw = {k: params[k] + pgrad[k] * scale for k in params}
        _, g2, _ = gsr.grads(pw, buffers, x, y)  # disable_running_stats; second forward-backward
        params, mom = fc.base_step(params, mom, g2, False)
        losses.append(loss)
        states.append((params, mom, buffers))
    return losses, states, {k: s["momentum"] for k, s in state.items()}


def main():
    cases, runs = [], {}
    for label, args in [("1 0.9", dict(sigma=1.0, lmbda=0.9, rho=0.05)),
                        ("1 0.6 run.sh", dict(sigma=1.0, lmbda=0.6, rho=0.2)),
                        ("0", dict(sigma=0.0, lmbda=0.9, rho=0.05)),
                        ("1 0.9 m4 bn4", dict(sigma=1.0, lmbda=0.9, rho=0.05, chunk=4, bn=4)),
                        ("0.5 0.95 loss", dict(sigma=0.5, lmbda=0.95, rho=0.05, wd_loss=True))]:
        case, losses, states, m = fsam(**args)
        cases.append(case)
        runs[label] = (losses, states, m)
        print("case", label, "losses", losses, "||d||", case["direction_norm"])
    if fc.F32:  # the f32 sensitivity run (family_common): print, write nothing
        return fc.report_drift("fsam_reference.json", cases)
    sam_losses, sam_states = fc.sam_run(0.05)
    fc.check_step_reference(sam_states, "sam", 0.05)
    fc.check_same(*runs["0"][:2], sam_losses, sam_states, "sigma = 0 and SAM (plain)")
    off_losses, off_states, off_m = official_fsam(1.0, 0.9, 0.05)
    fc.check_same(*runs["1 0.9"][:2], off_losses, off_states, "sigma 1, lambda 0.9 and FriendlySAM transcribed")
    d = fc.rel_diff(runs["1 0.9"][2], off_m)
    assert d <= 1e-12, d
    print(f"its state m equals the transcription's to {d:.3e}")
    fc.check_differs(runs["0"][1], runs["1 0.9"][1], "sigma = 1 against sigma = 0")
    for label, extra in [("m = 4, ghost batches of 4", dict(chunk=4, bn=4)), ("decay in the loss", dict(wd_loss=True))]:
        _, losses, states, _ = fsam(0.0, 0.9, 0.05, **extra)
        fc.check_same(losses, states, *fc.sam_run(0.05, **extra), f"sigma = 0 and SAM ({label})")
    fc.write("fsam_reference.json", "gen_fsam_reference.py", NOTE, cases)


if __name__ == "__main__":
    main()
