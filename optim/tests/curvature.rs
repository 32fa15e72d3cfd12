//! Curvature of ResNet-8's loss against JAX's exact second derivatives
//! (reference/gen_curvature_reference.py): the finite-difference
//! Hessian-vector product, Lanczos' top eigenvalues and SAM's first-order
//! sharpness.

use candle_core::{DType, Device, Tensor};
use samlab_models::{Arch, Model, fixtures};
use samlab_optim::curvature::{LanczosConfig, LossSurface, dot, lanczos, norm, sam_sharpness};
use serde_json::Value;

fn resnet8(dtype: DType) -> Model {
    let arch: Arch = "resnet8".parse().unwrap();
    let m = Model::with_dtype(&arch, 10, 0, &Device::Cpu, dtype).unwrap();
    fixtures::set_fixed(&m).unwrap();
    m
}

fn batch(dtype: DType) -> Vec<(Tensor, Tensor)> {
    let y: Vec<u32> = (0..8).map(|i| ((3 * i) % 10) as u32).collect();
    let x = fixtures::images(8, 1000, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    vec![(x, Tensor::from_vec(y, 8, &Device::Cpu).unwrap())]
}

fn reference() -> Value {
    serde_json::from_str(include_str!("reference/curvature_reference.json")).unwrap()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

/// The reference's test vectors: `v_i[k] = hashed(k, 700 + i)`, uniform
/// in [-1, 1).
fn test_vector(dim: usize, i: usize) -> Vec<f64> {
    (0..dim)
        .map(|k| fixtures::hashed(k, 700 + i as u32))
        .collect()
}

fn unit(v: &[f64]) -> Vec<f64> {
    let n = norm(v);
    v.iter().map(|x| x / n).collect()
}

fn sub(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

const LANCZOS: LanczosConfig = LanczosConfig {
    k: 3,
    steps: 40,
    seed: 0,
};

#[test]
fn f64_curvature_matches_jax_exact_second_derivatives() {
    // Pure f64 against JAX's f64: rounding is ~1e-16 relative per
    // operation, so loss and gradient agree to ~1e-14 and the bounds below
    // (1e-10 to 1e-8) would catch any modelling difference (BatchNorm's
    // eps alone is 1e-5). The products at h = 1e-5: the f32 test's model
    // with f64's unit roundoff (2^29 times smaller) puts rounding at
    // ~1e-10 relative, truncation (h^2) lower still, and Lanczos' 40
    // steps converge in exact arithmetic to ~1e-9 (a property of the
    // operator and the seed, not of the machine): 1e-7 leaves 100x.
    // Measurements: docs/numerics.md.
    let r = reference();
    let model = resnet8(DType::F64);
    let s = LossSurface::new(&model, batch(DType::F64), 1e-5).unwrap();
    let at = s.read(true).unwrap();
    assert!(rel(at.loss, f(&r["loss"])) < 1e-10, "loss {}", at.loss);
    assert!(rel(norm(at.grad.as_ref().unwrap()), f(&r["grad_norm"])) < 1e-9);
    let sam = sam_sharpness(&s, f(&r["rho"]), 0).unwrap();
    assert!(
        rel(sam.first_order, f(&r["sam_first_order"])) < 1e-8,
        "SAM sharpness {} vs {}",
        sam.first_order,
        r["sam_first_order"]
    );
    assert_eq!(s.dim() as u64, r["dim"].as_u64().unwrap());
    let mut forms = 0f64;
    for (i, want) in r["quadratic_forms"].as_array().unwrap().iter().enumerate() {
        let v = test_vector(s.dim(), i);
        let hv = s.hvp(&v).unwrap();
        forms = forms.max(rel(dot(&v, &hv), f(want)));
        if i == 0 {
            forms = forms.max(rel(norm(&hv), f(&r["hvp_norm"])));
        }
    }
    let pairs = lanczos(|v| s.hvp(v), s.dim(), &LANCZOS).unwrap();
    let eig: Vec<f64> = pairs
        .iter()
        .zip(r["top_eigenvalues"].as_array().unwrap())
        .map(|(p, want)| rel(p.value, f(want)))
        .collect();
    eprintln!("f64, h 1e-5: quadratic forms {forms:.2e}, eigenvalues {eig:?}");
    assert!(forms < 1e-7, "quadratic forms off by {forms:.2e}");
    for e in &eig {
        assert!(*e < 1e-7, "eigenvalues off by {eig:?}");
    }
}

/// The f32 product at the Sharpness stage's default step for f32, 1e-3
/// (docs/studies.md), within the error model of docs/numerics.md, whose
/// inputs are measured here, on the kernel path this machine takes.
///
/// `hvp(v) = |v| (g(p+) - g(p-)) / (2 h)` with `p± = fl32(w ± h u)`, `u =
/// v / |v|`. Each f32 gradient is `g(w ± h u) + e±`: `e±` holds the f32
/// arithmetic's rounding and the effect `H r±` of rounding the point to
/// f32. So `hvp(v) - H v = |v| (T(u) + (e+ - e-) / (2 h))` with `T` the
/// truncation (`O(h^2)`), which the f64 surface at the same `h` measures
/// (its rounding is 2^29 times smaller): against JAX's exact values, or,
/// where no exact vector is stored, as `(P(2h) - P(h)) / 3` from the f64
/// products `P` at `h`, `2h` and `4h`. Each such measurement is checked
/// to follow the `h^2` law (`T(2h) / T(h)` within 3.5 to 4.5), so that a
/// fault shared by both surfaces (live ReLU masks, whose kinks make the
/// error `O(h)`) cannot pass for truncation.
///
/// The rounding's size comes from one measurement, `e`: the largest `|e|`
/// at `fl32(w ± h u')` for a direction `u'` independent of the test's.
/// Every `|e±|` is taken as at most `C e`, `C = 1.25`: the same kernels
/// round values of the same sizes at every such point, and `|e|` is the
/// norm of hundreds of comparable components (docs/numerics.md counts
/// them), so it varies by a few percent from point to point.
///
/// - `| |hvp(v)| - |H v| | <= |hvp(v) - H v| <= |v| (C e / h + |T(u)|)`:
///   the triangle inequality, rigorous given `C`.
/// - Ritz values: Weyl, `|d lambda| <= |E|` for the error `E` of the
///   operator Lanczos sees, `|E q| <= C e / h + |T(q)|` for unit `q`
///   (each product rounds independently, so a Ritz vector's combination
///   of them is no larger). The truncation's largest `|T(q)|` is taken
///   along the top eigenvector, where the loss departs most from its
///   quadratic model (far more than along a random direction,
///   docs/numerics.md), doubled for the directions between; plus the
///   1e-7 relative within which the f64 test holds the same Lanczos run.
/// - `v^T hvp(v) - v^T H v = |v| v^T (e+ - e-) / (2 h) + |v|^2 u^T T(u)`.
///   Cauchy-Schwarz would bound the first term by `|v|^2 C e / h`, as
///   large as `v_1^T H v_1` itself (docs/numerics.md): no test at all. The
///   rounding is not aligned with `v`, whose components are independent
///   and uniform on [-1, 1) (variance 1/3): `v^T e` has mean 0 and
///   standard deviation `|e| / sqrt(3)` (a sum of 78042 independent
///   terms, Gaussian to high accuracy), so the first term's is at most
///   `sd = |v| sqrt(2) C e / (2 sqrt(3) h)`. The bound is `Z = 5` of them
///   (a Gaussian exceeds 5 with probability 6e-7) plus the f64 form's
///   own error at `h`. This is the error Hutchinson's trace estimates see,
///   on random vectors too.
#[test]
fn f32_curvature_is_within_its_stated_error() {
    const H: f64 = 1e-3;
    const C: f64 = 1.25;
    const Z: f64 = 5.0;
    let r = reference();
    let (m32, m64) = (resnet8(DType::F32), resnet8(DType::F64));
    let s32 = LossSurface::new(&m32, batch(DType::F32), H).unwrap();
    let s64 = LossSurface::new(&m64, batch(DType::F64), H).unwrap();
    let s64_2h = LossSurface::new(&m64, batch(DType::F64), 2.0 * H).unwrap();
    let s64_4h = LossSurface::new(&m64, batch(DType::F64), 4.0 * H).unwrap();
    let dim = s32.dim();
    // The f64 truncation at h, given the errors at h and 2h.
    let h2_law = |what: &str, at_h: f64, at_2h: f64| {
        let ratio = at_2h / at_h;
        eprintln!("  {what}: truncation {at_h:.3e} at h, ratio {ratio:.3} at 2h");
        assert!(
            (3.5..=4.5).contains(&ratio),
            "{what}: truncation {at_h:.3e} at h, {at_2h:.3e} at 2h: not O(h^2)"
        );
        at_h
    };
    assert_eq!(dim as u64, r["dim"].as_u64().unwrap());

    // The f32 gradient's error at two displaced points.
    let u_other = unit(
        &(0..dim)
            .map(|k| fixtures::hashed(k, 900))
            .collect::<Vec<_>>(),
    );
    let mut e = 0f64;
    for t in [H, -H] {
        let g32 = s32.frozen_grad_at(Some(&u_other), t).unwrap();
        let g64 = s64.frozen_grad_at(Some(&u_other), t).unwrap();
        let d = sub(&g32, &g64);
        let components = norm(&d).powi(4) / d.iter().map(|x| x.powi(4)).sum::<f64>();
        eprintln!(
            "f32 gradient error {:.3e} ({components:.0} components)",
            norm(&d)
        );
        e = e.max(norm(&d));
    }
    let rounding = C * e / H;
    eprintln!(
        "f32, h {H:e}: |e| {e:.3e} (|g| {:.3}), C e / h {rounding:.3e}",
        f(&r["grad_norm"])
    );

    let mut worst = 0f64;
    let pairs = lanczos(|v| s32.hvp(v), dim, &LANCZOS).unwrap();
    // |T(v)| by Richardson: P(2h) - P(h) = 3 T(h), P(4h) - P(2h) = 3 T(2h).
    let vector_truncation = |v: &[f64]| {
        let (p1, p2, p4) = (
            s64.hvp(v).unwrap(),
            s64_2h.hvp(v).unwrap(),
            s64_4h.hvp(v).unwrap(),
        );
        h2_law(
            "|T|",
            norm(&sub(&p2, &p1)) / 3.0,
            norm(&sub(&p4, &p2)) / 3.0,
        )
    };
    // along the top Ritz vector, doubled
    let truncation = 2.0 * vector_truncation(&pairs[0].vector);
    let want_eig = r["top_eigenvalues"].as_array().unwrap();
    for (i, (p, want)) in pairs.iter().zip(want_eig).enumerate() {
        let want = f(want);
        let err = (p.value - want).abs();
        let bound = rounding + truncation + 1e-7 * want;
        eprintln!(
            "  lambda_{}: {:.10} vs {want:.10}: rel {:.2e}, bound {:.2e} (truncation x2 {:.2e})",
            i + 1,
            p.value,
            err / want,
            bound / want,
            truncation / want
        );
        worst = worst.max(err / bound);
        assert!(
            err <= bound,
            "lambda_{}: {} vs {want}, bound {bound:.3e}",
            i + 1,
            p.value
        );
    }
    for (i, want) in r["quadratic_forms"].as_array().unwrap().iter().enumerate() {
        let v = test_vector(dim, i);
        let nv = norm(&v);
        let hv = s32.hvp(&v).unwrap();
        let want = f(want);
        let err = (dot(&v, &hv) - want).abs();
        let form_error = |s: &LossSurface| (dot(&v, &s.hvp(&v).unwrap()) - want).abs();
        let truncation = h2_law("v^T T", form_error(&s64), form_error(&s64_2h));
        let sd = nv * 2f64.sqrt() * C * e / (2.0 * 3f64.sqrt() * H);
        let bound = Z * sd + truncation;
        eprintln!(
            "  v_{i}^T H v_{i}: {:.6} vs {want:.6}: rel {:.2e} ({:.2} sd), bound {:.2e} (Cauchy-Schwarz {:.2e}, truncation {:.2e})",
            dot(&v, &hv),
            err / want,
            err / sd,
            bound / want,
            nv * nv * rounding / want,
            truncation / want
        );
        worst = worst.max(err / bound);
        assert!(
            err <= bound,
            "v_{i}^T H v_{i}: off by {err:.3e}, bound {bound:.3e}"
        );
        if i == 0 {
            let want = f(&r["hvp_norm"]);
            let err = (norm(&hv) - want).abs();
            let truncation = vector_truncation(&v);
            let bound = nv * rounding + truncation;
            eprintln!(
                "  |H v_0|: {:.6} vs {want:.6}: rel {:.2e}, bound {:.2e} (truncation {:.2e})",
                norm(&hv),
                err / want,
                bound / want,
                truncation / want
            );
            worst = worst.max(err / bound);
            assert!(err <= bound, "|H v_0|: off by {err:.3e}, bound {bound:.3e}");
        }
    }
    eprintln!("  worst error / bound {worst:.3}");
}

#[test]
fn the_surface_leaves_the_weights_where_they_were() {
    let model = resnet8(DType::F64);
    let weights = || -> Vec<f64> {
        let w = model.params.get("linear.weight").unwrap();
        w.flatten_all().unwrap().to_vec1().unwrap()
    };
    let before = weights();
    {
        let s = LossSurface::new(&model, batch(DType::F64), 1e-5).unwrap();
        let d = vec![1.0; s.dim()];
        s.set(Some(&d), 0.3).unwrap();
        // dropped while moved
    }
    assert_eq!(before, weights());
}
