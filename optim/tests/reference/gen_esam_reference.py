#!/usr/bin/env python3
"""Reference for three ESAM steps of samlab-optim on ResNet-8 (JAX, f64).

ESAM is Du, Yan, Feng, Zhou, Zhen, Goh, Tan, "Efficient Sharpness-aware
Minimization for Improved Training of Neural Networks", ICLR 2022
(https://openreview.net/forum?id=n0OeTdNRG0Q, arXiv:2110.03141). Official
code: dydjw9/Efficient_SAM, utils/Esam.py, train.py, run.sh (commit
1e06840c466beaebfafb049096d6a1733cb77a8c). The paper's text was not readable
here; its update as secondary sources render it
(https://junaidaliop.github.io/zij/math/esam/):
    eps = (rho / beta) m (.) g / ||g||,  m_i ~ Bernoulli(beta);
    B+ = {i in B : l(w + eps; x_i) - l(w; x_i) > alpha},  |B+| = gamma |B|;
    w <- w - lr grad L_{B+}(w + eps).

The official ESAM.step / first_step / second_step, quoted (abridged):

    logits = model(inputs); loss = loss_fct(logits,targets)     # per-sample
    l_before = loss.clone().detach()
    loss = loss.mean(); defined_backward(loss)
    self.first_step(True)
        # first_step: scale = group["rho"] / (grad_norm + 1e-7) / self.beta
        #   for p: p.requires_grad = True; if p.grad is None: continue
        #          e_w = p.grad * scale; p.add_(e_w); self.state[p]["e_w"] = e_w
    with torch.no_grad():
        l_after = loss_fct(model(inputs),targets)
        instance_sharpness = l_after-l_before
        prob = self.gamma
        if prob >=0.99:
            indices = range(len(targets))
        else:
            position = int(len(targets) * prob)
            cutoff,_ = torch.topk(instance_sharpness,position)
            cutoff = cutoff[-1]
            indices = [instance_sharpness > cutoff]
    loss = loss_fct(model(inputs[indices]), targets[indices])
    loss = loss.mean(); defined_backward(loss)
    self.second_step(True)
        # second_step: for p: p.sub_(self.state[p]["e_w"]); self.state[p]["e_w"] = 0
        #                     if random.random() > self.beta: p.requires_grad = False
        #              self.base_optimizer.step()

(grad_norm is over p.grad of all parameters, the base optimiser
torch.optim.SGD(momentum=0.9, weight_decay=wd), no Nesterov.) So in the
official code:
  * SWP masks whole parameter TENSORS, not entries: after a step, each tensor
    is frozen (requires_grad False) with probability 1 - beta; in the next
    step's first backward a frozen tensor gets no gradient (zero), so its
    perturbation is zero and it is left out of ||g||; first_step unfreezes
    all tensors, so the second pass and the update cover every tensor. The
    mask is drawn at the end of a step for the next one: the first step
    perturbs every tensor. The perturbation is scaled by 1/beta.
  * SDS selects the samples whose loss rises by MORE than the
    floor(gamma n)-th largest rise: floor(gamma n) - 1 samples when no two
    rises tie (n = 8, gamma 0.5: 3 of 8), not gamma n as the paper writes; no
    sample when floor(gamma n) <= 1 (the official code then takes the mean
    over an empty batch); all samples when gamma >= 0.99.
  * the rises come from a forward-only pass at w + eps over the whole batch in
    training mode; the second forward-backward runs on the selected samples
    only, its loss their mean.
  * run.sh's CIFAR-10/100 ResNet-18 lines: --beta 0.6 --gamma 0.5 --rho 0.05
    (the WideResNet lines 0.5/0.5, rho 0.1).
  * under DistributedDataParallel (run.sh uses 2 processes) the first
    backward is not synchronised (require_backward_grad_sync = False): each
    process perturbs and selects on its own part of the batch; the second
    backward is averaged. Python's random is seeded alike on every process
    (initialize(args, seed=42)), so the processes draw the same masks.

What is computed (per step, in this order; c is the kind's own step count,
0 at the start, saved as its state):
  1. SWP mask: trainable tensor i (position in the sorted list of trainable
     parameter names, 0-based) is kept at step c iff c == 0 or beta >= 1 or
     swp_keep(seed, c, i, beta) below (splitmix64). One mask per step, the
     same for every chunk.
  2. For each m-sharpness chunk (the whole batch when chunk is null), of n_c
     samples: first pass at w (training mode; updates the running statistics
     exactly as gen_step_reference.step_grads): per-sample losses l_i and the
     gradient g of their mean. Decay "Loss": g += wd w. g_m = g on kept
     tensors, 0 on the others.
  3. eps = g_m * (rho / (||g_m|| + 1e-12) / beta) (on kept tensors only).
  4. If gamma >= 0.99: B+ = the whole chunk. Else: a forward-only pass at
     w + eps over the chunk in training mode (its statistics dropped) gives
     l'_i; s_i = l'_i - l_i; p = floor(n_c gamma) (must be >= 2);
     cutoff = the p-th largest s_i (counting ties, as torch.topk);
     B+ = {i : s_i > cutoff}, in index order.
  5. g_s = gradient at w + eps of the mean loss over B+ (training mode, BN
     over B+ as one group, statistics dropped). Decay "Loss": g_s += wd (w + eps).
  6. The base optimiser steps with the mean over chunks of g_s (plus wd w in
     decay "Update"); c += 1.
Ghost batches: only bn_batch >= chunk size (each chunk one BatchNorm group,
as the thesis' protocol with m = 4 on ghost batches of 4); a B+ smaller than
bn_batch is one group. Smaller ghost batches are not defined here.

The mask hash (copy this into the Rust side):

    def splitmix64(x):                 # all arithmetic mod 2^64
        z = (x + 0x9E3779B97F4A7C15) & M64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)
    def swp_keep(seed, step, index, beta):
        if beta >= 1.0: return True
        h = splitmix64(splitmix64(splitmix64(seed) ^ step) ^ index)
        return h < int(beta * 2.0 ** 64)  # Rust: (beta * 2f64.powi(64)) as u64

(beta * 2^64 is exact in f64; int() and Rust's `as u64` both truncate.)

passes (SGD units, per step): 1 for the first forward-backward over the batch,
plus sum over chunks of |B+_c| / n for the second forward-backward on the
selected samples. Not counted in "passes", given apart: "selection_forward",
the forward-only pass at w + eps (1, in batch units, when gamma < 0.99, else
0), and "swp_kept_fraction", the fraction of trainable parameter entries
whose first-pass weight gradient was needed (the official code skips the
others' weight gradients; a wall-time saving, not a pass). The official code
counts nothing itself; the paper reports throughput (images per second).

Also in each case: "selected" (per step, per chunk, the indices of B+ within
the chunk), "rises" (per step, per chunk, the s_i; null when gamma >= 0.99),
"selection_margin" (the smallest, over steps and chunks, of the smallest
selected rise minus the cutoff: a run whose rises are within half of it of
these selects the same samples), "swp_kept" (per step, the kept tensor
indices) and "count" (the kind's step count after the last step, its state).

Differences from the official code, deliberate (also in the JSON's "note"):
  1. eps has 1e-12 in its denominator, the official code 1e-7 (so beta =
     gamma = 1 is exactly samlab's SAM);
  2. the mask is the hash above with the run's seed, not Python's random;
  3. BatchNorm running statistics: only the first pass at w updates them; the
     official code also updates them in the forward at w + eps and in the
     second pass (it never disables them);
  4. with gamma >= 0.99 the selection forward is skipped (the official code
     runs it and ignores its result; the numbers do not change);
  5. m-sharpness chunks play the official code's processes; ghost batches,
     decay placement and Nesterov SGD are samlab settings.
Where the paper and the official code differ (per-tensor mask vs the
paper's per-entry m_i; floor(gamma n) - 1 samples vs gamma n), the reference
follows the official code.

Checks inside the script: beta = gamma = 1 equals samlab's SAM
(gen_step_reference.step_grads) step for step to 1e-12 of each tensor's
largest entry (plain, m = 4 in ghost batches of 4, decay in the loss); the SAM
loop reproduces step_reference.json's "sam" case after 2 steps; the (beta 0.6,
gamma 0.5) case equals a transcription of ESAM.step (freezing tensors for the
next step, topk cutoff, strict >) with the deviations 1-3 above; the
(0.6, 0.5) case differs from SAM by more than 1e-6; the mask hash gives the
pinned values printed in the JSON ("hash_check").

    /work/scratch/venv-jax-looksam/bin/python optim/tests/reference/gen_esam_reference.py
    (with SAMLAB_REF_F32=1 it runs the cases in f32 and prints how far each lands
    from the f64 JSON, family_common.report_drift; it writes nothing then)
"""
import family_common as fc
from family_common import gsr, jax, jnp, np

M64 = (1 << 64) - 1
SEED = 7
NOTE = (
    "ESAM (Du et al., ICLR 2022) as the official code computes it (dydjw9/Efficient_SAM utils/Esam.py, commit "
    "1e06840c466beaebfafb049096d6a1733cb77a8c), step by step: (1) SWP mask over whole parameter tensors: tensor i "
    "(0-based position in the sorted trainable names) is kept at the kind's step c iff c == 0 or beta >= 1 or "
    "splitmix64(splitmix64(splitmix64(seed) ^ c) ^ i) < int(beta * 2^64) (the official code freezes each tensor "
    "with probability 1 - beta at the end of a step for the next one, so its first step keeps all); (2) per "
    "chunk, first pass at w: per-sample losses l and gradient g of their mean (decay Loss: + wd w); g_m = g on kept "
    "tensors, 0 elsewhere; (3) eps = g_m * (rho/(||g_m|| + 1e-12)/beta); (4) gamma >= 0.99: all samples; else a "
    "forward-only pass at w + eps in training mode gives l', s = l' - l, p = floor(n_c gamma) (>= 2), B+ = {i : s_i "
    "> the p-th largest s} (official: strict >, so p - 1 samples without ties; the paper says gamma n); (5) g_s = "
    "gradient at w + eps of the mean loss over B+ (decay Loss: + wd (w + eps)); (6) the base optimiser steps with "
    "the mean over chunks of g_s. Norms over the trainable parameters (names not ending in running_mean/"
    "running_var), summed in f64. passes = 1 + sum_c |B+_c|/n (forward-backward passes in batch units); "
    "selection_forward (1 if gamma < 0.99) and swp_kept_fraction (kept entries / all entries) given apart. "
    "Deliberate differences from the official code: eps denominator 1e-12 (official 1e-7) so beta = gamma = 1 is "
    "exactly SAM (checked); the mask from the hash and the run's seed instead of Python's random; only the first "
    "pass at w updates the BatchNorm running statistics (the official code also updates them in the selection "
    "forward and the second pass); the selection forward skipped when gamma >= 0.99; chunks play the official "
    "code's DDP processes (same mask for all); ghost batches only with bn_batch >= chunk (each chunk one group); "
    "decay placement and Nesterov SGD (PyTorch semantics, momentum 0.9, wd 5e-4, lr 0.1) are samlab settings."
)


def splitmix64(x):
    z = (x + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def swp_keep(seed, step, index, beta):
    if beta >= 1.0:
        return True
    h = splitmix64(splitmix64(splitmix64(seed) ^ step) ^ index)
    return h < int(beta * 2.0 ** 64)


def kept_tensors(names, count, beta, seed):
    return [n for i, n in enumerate(names) if count == 0 or swp_keep(seed, count, i, beta)]


def per_sample(params, buffers, x, y):
    logits, new = fc.ref.forward({**params, **buffers}, x, gsr.STAGES, True)
    logp = jax.nn.log_softmax(logits)
    return -logp[jnp.arange(x.shape[0]), y], new


def first_pass(params, buffers, x, y):
    """Training-mode pass at w: mean loss, per-sample losses, gradient of the
    mean, updated running statistics."""
    def f(p):
        losses, new = per_sample(p, buffers, x, y)
        return jnp.mean(losses), (losses, new)
    (loss, (losses, new)), g = jax.value_and_grad(f, has_aux=True)(params)
    return float(loss), np.asarray(losses), g, {**buffers, **new}


def select(s, gamma):
    """The official SDS rule on the rises s of one chunk (index order)."""
    n = len(s)
    if gamma >= 0.99:
        return list(range(n))
    position = int(n * gamma)
    assert position >= 2, f"floor({n} * {gamma}) = {position} selects no sample"
    cutoff = np.sort(s)[::-1][position - 1]
    return [i for i in range(n) if s[i] > cutoff]


def esam(beta, gamma, rho, chunk=None, bn=None, wd_loss=False, seed=SEED, steps=fc.STEPS):
    params, buffers = fc.initial()
    names = sorted(params)
    total = sum(int(np.prod(params[k].shape)) for k in names)
    mom, count, losses, passes, sel_fwd, kept_frac, kept_idx, selected, states = {}, 0, [], [], [], [], [], [], []
    all_rises, margins = [], []
    for t in range(steps):
        x, y = gsr.batch(t)
        n = x.shape[0]
        m = chunk or n
        assert n % m == 0 and (bn is None or bn >= m), "ghost batches only with bn_batch >= chunk"
        keep = kept_tensors(names, count, beta, seed)
        start, running, step_losses, gs_all, step_sel, n_sel, step_rises = buffers, [], [], [], [], 0, []
        for c in range(n // m):
            xc, yc = x[c * m:(c + 1) * m], y[c * m:(c + 1) * m]
            loss, l_before, g, new = first_pass(params, start if bn is not None else buffers, xc, yc)
            if bn is None:
                buffers = new  # chunks update the statistics in turn
            else:
                running.append(new)  # every chunk from the step's statistics, the mean kept
            if wd_loss:
                g = {k: g[k] + fc.WD * params[k] for k in g}
            gm = {k: (g[k] if k in keep else 0.0 * g[k]) for k in g}
            scale = rho / (fc.norm(gm) + fc.PERTURB_EPS) / beta
            pw = {k: params[k] + gm[k] * scale for k in params}
            if gamma >= 0.99:
                idx = list(range(m))
                step_rises.append(None)
            else:
                l_after, _ = per_sample(pw, buffers, xc, yc)  # forward only, statistics dropped
                rises = np.asarray(l_after) - l_before
                idx = select(rises, gamma)
                step_rises.append(rises.tolist())
                srt = np.sort(rises)[::-1]
                p = int(m * gamma)
                margins.append(srt[p - 2] - srt[p - 1])  # smallest selected rise minus the cutoff
            sel = jnp.asarray(idx)
            _, gs = fc.perturbed_grad(pw, buffers, xc[sel], yc[sel], None, wd_loss)  # B+ is one BN group
            gs_all.append(gs)
            step_losses.append(loss)
            step_sel.append(idx)
            n_sel += len(idx)
        if bn is not None:
            buffers = gsr.mean_trees(running)
        count += 1
        losses.append(float(sum(step_losses) / len(step_losses)))
        passes.append(1 + n_sel / n)
        sel_fwd.append(1 if gamma < 0.99 else 0)
        kept_frac.append(sum(int(np.prod(params[k].shape)) for k in keep) / total)
        kept_idx.append([names.index(k) for k in keep])
        selected.append(step_sel)
        all_rises.append(step_rises)
        params, mom = fc.base_step(params, mom, gsr.mean_trees(gs_all), wd_loss)
        states.append((params, mom, buffers))
    case = {
        "method": "esam", "rho": rho, "chunk": chunk, "adaptive": False, "bn_batch": bn,
        "decay": "Loss" if wd_loss else "Update", "nesterov": True,
        "beta": beta, "gamma": gamma, "seed": seed,
        "losses": losses, "passes": passes, "selection_forward": sel_fwd, "swp_kept_fraction": kept_frac,
        "swp_kept": kept_idx, "selected": selected, "rises": all_rises,
        "selection_margin": float(min(margins)) if margins else None,
        **fc.summary(mom, params, buffers),
        "count": count,
    }
    return case, losses, states


def official_esam(beta, gamma, rho, seed=SEED, steps=fc.STEPS):
    """ESAM.step / first_step / second_step transcribed (one process, no chunks),
    with the deviations of the note: 1e-12 for 1e-7, the hash for
    random.random(), running statistics only from the first pass, samlab's base
    optimiser (Nesterov, decay in the update)."""
    params, buffers = fc.initial()
    names = sorted(params)
    requires_grad = {k: True for k in names}
    mom, losses, states = {}, [], []
    for t in range(steps):
        x, y = gsr.batch(t)
        loss, l_before, grad, buffers = first_pass(params, buffers, x, y)
        p_grad = {k: (grad[k] if requires_grad[k] else 0.0 * grad[k]) for k in names}  # frozen: no gradient
        grad_norm = fc.norm(p_grad)
        scale = rho / (grad_norm + 1e-12) / beta
        e_w = {}
        for k in names:
            requires_grad[k] = True
            e_w[k] = p_grad[k] * scale
        pw = {k: params[k] + e_w[k] for k in names}
        l_after, _ = per_sample(pw, buffers, x, y)
        instance_sharpness = np.asarray(l_after) - l_before
        if gamma >= 0.99:
            indices = np.arange(len(y))
        else:
            position = int(len(y) * gamma)
            cutoff = np.sort(instance_sharpness)[::-1][:position][-1]
            indices = np.nonzero(instance_sharpness > cutoff)[0]
        _, g2, _ = gsr.grads(pw, buffers, x[jnp.asarray(indices)], y[jnp.asarray(indices)])
        for i, k in enumerate(names):  # second_step: back to w, freeze for the next step
            if not swp_keep(seed, t + 1, i, beta):
                requires_grad[k] = False
        params, mom = fc.base_step(params, mom, g2, False)
        losses.append(loss)
        states.append((params, mom, buffers))
    return losses, states


def main():
    hash_check = {"splitmix64(0)": splitmix64(0), "splitmix64(1)": splitmix64(1),
                  "swp_keep(7, 1, i, 0.6) for i < 29": [swp_keep(SEED, 1, i, 0.6) for i in range(29)]}
    assert splitmix64(0) == 0xE220A8397B1DCDAF  # the published first output of splitmix64 seeded with 0
    names = sorted(fc.initial()[0])
    print(len(names), "trainable tensors; kept at step 1 (beta 0.6):", kept_tensors(names, 1, 0.6, SEED))
    cases, runs = [], {}
    for label, args in [("0.6 0.5", dict(beta=0.6, gamma=0.5, rho=0.05)),
                        ("1 1", dict(beta=1.0, gamma=1.0, rho=0.05)),
                        ("0.5 1", dict(beta=0.5, gamma=1.0, rho=0.1)),
                        ("1 0.5", dict(beta=1.0, gamma=0.5, rho=0.05)),
                        ("0.6 0.75 m4 bn4", dict(beta=0.6, gamma=0.75, rho=0.05, chunk=4, bn=4))]:
        case, losses, states = esam(**args)
        cases.append(case)
        runs[label] = (losses, states)
        print("case", label, "losses", losses, "passes", case["passes"], "kept", case["swp_kept_fraction"],
              "selected", case["selected"])
    if fc.F32:  # the f32 sensitivity run (family_common): print, write nothing
        return fc.report_drift("esam_reference.json", cases)
    sam_losses, sam_states = fc.sam_run(0.05)
    fc.check_step_reference(sam_states, "sam", 0.05)
    fc.check_same(*runs["1 1"], sam_losses, sam_states, "beta = gamma = 1 and SAM (plain)")
    fc.check_same(*runs["0.6 0.5"], *official_esam(0.6, 0.5, 0.05), "beta 0.6, gamma 0.5 and ESAM.step transcribed")
    fc.check_differs(runs["1 1"][1], runs["0.6 0.5"][1], "beta 0.6, gamma 0.5 against SAM")
    fc.check_differs(runs["1 1"][1], runs["1 0.5"][1], "gamma 0.5 alone against SAM")
    for label, extra in [("m = 4, ghost batches of 4", dict(chunk=4, bn=4)), ("decay in the loss", dict(wd_loss=True))]:
        _, losses, states = esam(1.0, 1.0, 0.05, **extra)
        fc.check_same(losses, states, *fc.sam_run(0.05, **extra), f"beta = gamma = 1 and SAM ({label})")
    fc.write("esam_reference.json", "gen_esam_reference.py", NOTE, cases, {"hash_check": hash_check})


if __name__ == "__main__":
    main()
