//! The one change samlab's copy of candle-core makes to its backward pass
//! (vendor/README.md): the first gradient a tensor receives is stored as
//! the op computed it (made contiguous), not added to a tensor of zeros;
//! later ones are added to it, as before.

use candle_core::{Device, Tensor, Var};
use samlab_models::fixtures;

fn var(v: &[f32]) -> Var {
    Var::from_tensor(&Tensor::new(v, &Device::Cpu).unwrap()).unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    fixtures::bits(t).unwrap()
}

/// A tensor read by two ops gets the sum of their gradients.
#[test]
fn a_tensor_used_twice_gets_the_sum_of_both_gradients() {
    let x = var(&[1.5, -2.0, 0.25]);
    let a = Tensor::new(&[0.1f32, 0.2, 0.3], &Device::Cpu).unwrap();
    let b = Tensor::new(&[10f32, 20., 30.], &Device::Cpu).unwrap();
    let loss = ((x.as_tensor() * &a).unwrap().sum_all().unwrap()
        + (x.as_tensor() * &b).unwrap().sum_all().unwrap())
    .unwrap();
    let grads = loss.backward().unwrap();
    let g = grads.get(x.as_tensor()).unwrap();
    // Summed in the order the backward pass meets the two products, each
    // product's gradient exactly a and b: a + b or b + a, equal in f32.
    assert_eq!(bits(g), bits(&(&a + &b).unwrap()));
}

/// The first gradient keeps the op's bits, the sign of a zero included:
/// `0 + (-0)` would have made it `+0`, the bit the unpatched candle stored.
#[test]
fn the_first_gradient_is_stored_as_the_op_computed_it() {
    let x = var(&[3.0, 4.0]);
    let c = Tensor::new(&[-0.0f32, 2.0], &Device::Cpu).unwrap();
    let grads = (x.as_tensor() * &c)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g = grads.get(x.as_tensor()).unwrap();
    assert_eq!(bits(g), vec![(-0.0f32).to_bits(), 2.0f32.to_bits()]);
}

/// Where an op's gradient is a view (a transpose, a broadcast), the stored
/// gradient is a contiguous tensor, as the sum with zeros made it.
#[test]
fn a_gradient_that_is_a_view_is_stored_contiguous() {
    let x = Var::from_tensor(&Tensor::new(&[[1f32, 2., 3.], [4., 5., 6.]], &Device::Cpu).unwrap())
        .unwrap();
    let w = Tensor::new(&[[1f32, 0.], [0., 2.], [3., 0.]], &Device::Cpu).unwrap();
    let t = x.as_tensor().t().unwrap();
    let grads = (t * &w).unwrap().sum_all().unwrap().backward().unwrap();
    let g = grads.get(x.as_tensor()).unwrap();
    assert!(g.is_contiguous());
    assert_eq!(
        g.to_vec2::<f32>().unwrap(),
        vec![vec![1., 0., 3.], vec![0., 2., 0.]]
    );

    let y = var(&[1.0, 2.0]);
    let b = y
        .as_tensor()
        .unsqueeze(0)
        .unwrap()
        .broadcast_as((3, 2))
        .unwrap();
    let grads = b.sum_all().unwrap().backward().unwrap();
    let g = grads.get(y.as_tensor()).unwrap();
    assert!(g.is_contiguous());
    assert_eq!(g.to_vec1::<f32>().unwrap(), vec![3., 3.]);
}

/// A first gradient of another shape than its tensor is refused, as the
/// sum with zeros refused it: a custom op whose backward returns a wrong
/// shape.
#[test]
fn a_first_gradient_of_the_wrong_shape_is_refused() {
    struct Wrong;
    impl candle_core::CustomOp1 for Wrong {
        fn name(&self) -> &'static str {
            "wrong-gradient"
        }
        fn cpu_fwd(
            &self,
            s: &candle_core::CpuStorage,
            l: &candle_core::Layout,
        ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
            Ok((s.clone(), l.shape().clone()))
        }
        fn bwd(
            &self,
            _arg: &Tensor,
            _res: &Tensor,
            grad: &Tensor,
        ) -> candle_core::Result<Option<Tensor>> {
            Ok(Some(Tensor::cat(&[grad, grad], 0)?))
        }
    }
    let x = var(&[1.0, 2.0]);
    let y = x.as_tensor().apply_op1(Wrong).unwrap();
    let err = y.sum_all().unwrap().backward().unwrap_err().to_string();
    assert!(err.contains("shape mismatch"), "{err}");
}
