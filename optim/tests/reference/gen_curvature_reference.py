#!/usr/bin/env python3
"""Reference curvature of samlab's ResNet-8 loss (JAX, exact second derivatives).

The JAX ResNet-8 of models/tests/reference/gen_resnet_reference.py with its
fixed weights (same names, same integer hash), BatchNorm in evaluation mode
(running statistics constant, as PyHessian's model.eval()), the mean
cross-entropy of the 8 images of gen_step_reference.py's batch(0), no weight
decay. Hessian-vector products are exact: jax.jvp of jax.grad (forward-over-
reverse; ReLU's second derivative is taken as 0, as in PyTorch's double
backward). Computed in f64 from f32 weights and inputs. Records:

  loss, grad_norm        at the fixed weights
  top_eigenvalues        the 3 algebraically largest eigenvalues of the
                         Hessian, by 120 Lanczos steps with full
                         re-orthogonalisation (converged: their residuals
                         are recorded too)
  quadratic_forms        v^T H v for 3 fixed vectors v_i = hashed(dim, 700+i)
                         laid out in sorted-name order of the parameters
  hvp_norm, hvp_head     |H v_0| and its first 8 values
  sam_first_order        L(w + rho g/|g|) - L(w) at rho = 0.05

    pip install "jax[cpu]==0.10.2" numpy
    python3 optim/tests/reference/gen_curvature_reference.py
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "models", "tests", "reference"))
import gen_resnet_reference as ref  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_enable_x64", True)

STAGES = [(16, 1), (32, 1), (64, 1)]
RHO = 0.05


def main():
    sh = ref.shapes(16, STAGES, 10)
    names = sorted(sh)
    tensors = {k: jnp.asarray(ref.value(k, sh[k], p).astype(np.float64)) for p, k in enumerate(names)}
    pnames = [k for k in names if not k.endswith(("running_mean", "running_var"))]
    buffers = {k: v for k, v in tensors.items() if k not in pnames}
    sizes = [int(np.prod(sh[k])) for k in pnames]
    x = jnp.asarray(ref.hashed(8 * 3 * 32 * 32, 1000).astype(np.float32).astype(np.float64).reshape(8, 3, 32, 32))
    y = jnp.asarray(np.array([(3 * i) % 10 for i in range(8)], dtype=np.int32))

    def unflat(v):
        out, at = {}, 0
        for k, n in zip(pnames, sizes):
            out[k] = v[at:at + n].reshape(sh[k])
            at += n
        return out

    w = jnp.concatenate([tensors[k].reshape(-1) for k in pnames])
    dim = int(w.shape[0])

    def loss(flat):
        return ref.loss_fn(unflat(flat), buffers, x, y, STAGES, False)[0]

    grad = jax.jit(jax.grad(loss))
    hvp = jax.jit(lambda v: jax.jvp(grad, (w,), (v,))[1])

    # Lanczos, full re-orthogonalisation
    steps = 120
    rng = np.random.default_rng(0)
    q = rng.standard_normal(dim)
    q /= np.linalg.norm(q)
    basis, alpha, beta = [], [], []
    for j in range(steps):
        r = np.asarray(hvp(jnp.asarray(q)))
        alpha.append(float(q @ r))
        basis.append(q)
        B = np.array(basis)
        for _ in range(2):
            r = r - B.T @ (B @ r)
        b = np.linalg.norm(r)
        if j + 1 == steps:
            break
        beta.append(b)
        q = r / b
    T = np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)
    vals, vecs = np.linalg.eigh(T)
    order = np.argsort(vals)[::-1][:3]
    top, residuals = [], []
    B = np.array(basis)
    for i in order:
        v = B.T @ vecs[:, i]
        v /= np.linalg.norm(v)
        hv = np.asarray(hvp(jnp.asarray(v)))
        top.append(float(vals[i]))
        residuals.append(float(np.linalg.norm(hv - vals[i] * v)))

    forms = []
    for i in range(3):
        v = ref.hashed(dim, 700 + i)
        hv = np.asarray(hvp(jnp.asarray(v)))
        forms.append(float(v @ hv))
        if i == 0:
            hv0 = hv
    g = np.asarray(grad(w))
    l0 = float(loss(w))
    e = RHO * g / np.linalg.norm(g)
    out = {
        "generator": "gen_curvature_reference.py",
        "jax": jax.__version__,
        "dtype": "f64",
        "images": 8,
        "dim": dim,
        "loss": l0,
        "grad_norm": float(np.linalg.norm(g)),
        "top_eigenvalues": top,
        "top_residuals": residuals,
        "quadratic_forms": forms,
        "hvp_norm": float(np.linalg.norm(hv0)),
        "hvp_head": hv0[:8].tolist(),
        "rho": RHO,
        "sam_first_order": float(loss(w + e)) - l0,
    }
    path = os.path.join(HERE, "curvature_reference.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print("wrote", path, json.dumps({k: out[k] for k in ("loss", "top_eigenvalues", "top_residuals", "quadratic_forms", "sam_first_order")}))


if __name__ == "__main__":
    main()
