"""The refiner's training step with its backward pass written out (JAX, TensorFlow) equals
the same refiner differentiated layer by layer, keeps fewer maps, and updates the moving
statistics as Keras' BatchNormalization does."""

import doctest

import keras
import numpy as np
import pytest
from keras import ops

from helpers import gradients, jaxpr_equations, to_numpy
from keras_deepvit.layers import refiner_training
from keras_deepvit.layers.refiner_attention import DistributedLocalAttention

XLA_ONLY = pytest.mark.skipif(
    keras.backend.backend() == "torch",
    reason="XLA backends only: the PyTorch backend keeps its fused BatchNorm, and Keras' "
    "PyTorch custom_gradient takes one output",
)
MAPS_SHAPE = (2, 4, 9, 7)


def random_refiner(seed, dtype=None):
    rng = np.random.default_rng(seed)
    layer = DistributedLocalAttention(expansion_ratio=3, dtype=dtype)
    layer.build(MAPS_SHAPE)
    for variable in layer.weights:
        if "moving_variance" in variable.path or "gamma" in variable.path:
            value = rng.uniform(0.5, 2.0, variable.shape)
        else:
            value = rng.normal(0, 0.5, variable.shape)
        variable.assign(value.astype("float32"))
    return layer


def layer_by_layer(layer):
    """The same layer, differentiated op by op (the path the PyTorch backend takes)."""
    layer.has_written_out_backward = lambda training: False
    return layer


@XLA_ONLY
def test_docstring_examples():
    assert doctest.testmod(refiner_training).failed == 0


@XLA_ONLY
def test_layers_take_the_written_out_path_in_training_only():
    layer = random_refiner(0)
    assert layer.has_written_out_backward(True)
    assert not layer.uses_batch_statistics(False)
    layer.trainable = False
    assert not layer.has_written_out_backward(True)


@XLA_ONLY
@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_written_out_step_equals_the_layer_by_layer_step(policy):
    rng = np.random.default_rng(3)
    maps = keras.Variable(rng.random(MAPS_SHAPE).astype("float32"))
    cotangent = ops.convert_to_tensor(rng.normal(size=MAPS_SHAPE).astype("float32"))
    results = []
    for layer in (random_refiner(1, policy), layer_by_layer(random_refiner(1, policy))):
        variables = [maps] + list(layer.trainable_variables)

        def loss(layer=layer):
            refined = layer(maps.value, training=True)
            assert refined.dtype == layer.compute_dtype
            return ops.sum(ops.cast(refined, "float32") * cotangent)

        results.append(gradients(loss, variables))
    (value, grads), (expected_value, expected_grads) = results
    tolerance = 1e-5 if policy == "float32" else 2e-2
    np.testing.assert_allclose(value, expected_value, rtol=tolerance)
    for grad, expected in zip(grads, expected_grads):
        assert grad.shape == expected.shape
        scale = np.abs(expected).max()
        np.testing.assert_allclose(grad / scale, expected / scale, atol=tolerance)


@XLA_ONLY
def test_written_out_step_updates_the_moving_statistics_as_keras_does():
    maps = np.random.default_rng(4).random(MAPS_SHAPE).astype("float32")
    ours, theirs = random_refiner(2), layer_by_layer(random_refiner(2))
    for layer in (ours, theirs):
        layer(maps, training=True)
    for mine, expected in zip(ours.non_trainable_variables, theirs.non_trainable_variables):
        assert mine.path.split("/", 1)[1] == expected.path.split("/", 1)[1]
        np.testing.assert_allclose(to_numpy(mine.value), to_numpy(expected.value), rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="XLA buffer assignment: JAX only")
def test_written_out_step_keeps_two_expanded_maps_per_refiner():
    # Differentiated layer by layer, XLA kept each refiner's expanded maps more than
    # five times over until the backward pass; the written-out form keeps the
    # expansion's and the depthwise convolution's outputs (expanded), the projection's
    # output and the refiner's input. Per refiner: the growth of the temporaries from
    # a stack of 2 to a stack of 6 (the backward pass's own scratch cancels out).
    import jax

    maps = jax.ShapeDtypeStruct((2, 12, 65, 65), "float32")
    maps_bytes = 4 * int(np.prod(maps.shape))

    def temp_bytes(written_out, depth):
        stack = [DistributedLocalAttention(expansion_ratio=3) for _ in range(depth)]
        for layer in stack:
            layer.build(maps.shape)
            if not written_out:
                layer_by_layer(layer)
        variables = [v for layer in stack for v in layer.weights]

        def loss(values, x):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                for layer in stack:
                    x = layer(x, training=True)
                return ops.sum(x)

        step = jax.jit(jax.grad(loss))
        compiled = step.lower([v.value for v in variables], maps).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    def per_refiner(written_out):
        return (temp_bytes(written_out, 6) - temp_bytes(written_out, 2)) / 4

    written_out, by_layer = per_refiner(True), per_refiner(False)
    assert written_out <= 1.1 * (2 * 3 * maps_bytes + 2 * maps_bytes), (written_out, maps_bytes)
    assert written_out < 0.6 * by_layer, (written_out, by_layer)


def jax_training_gradient_jaxpr(seed):
    """The jaxpr of a random refiner's training-step gradient (skips off JAX)."""
    if keras.backend.backend() != "jax":
        pytest.skip("the JAX form of the written-out backward pass")
    import jax

    layer = random_refiner(seed)
    variables = layer.weights
    maps = np.random.default_rng(seed + 1).random(MAPS_SHAPE).astype("float32")

    def loss(values, x):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return ops.sum(layer(x, training=True) ** 2)

    return jax.make_jaxpr(jax.grad(loss))([v.value for v in variables], maps).jaxpr


def test_jax_backward_sums_each_batch_norm_gradient_pair_in_one_reduction():
    # `d_beta` and `d_gamma` of each of the refiner's three BatchNorms are one variadic
    # reduction over the maps on JAX, not two passes that each recompute their inputs.
    jaxpr = jax_training_gradient_jaxpr(seed=7)
    pairs = [e for e in jaxpr_equations(jaxpr) if e.primitive.name == "reduce" and len(e.outvars) == 2]
    assert len(pairs) == 3, [e.primitive.name for e in jaxpr_equations(jaxpr)]
    assert all(e.params["dimensions"] == (0, 2, 3) for e in pairs)



@pytest.mark.parametrize("channels", [(3, 5), (5, 3)])
def test_summed_channel_products_equal_the_batch_summed_product_in_either_order(channels):
    rng = np.random.default_rng(9)
    left = rng.normal(size=(2, channels[0], 63)).astype("float32")
    right = rng.normal(size=(2, channels[1], 63)).astype("float32")
    result = to_numpy(refiner_training._summed_channel_products(left, right))
    assert result.shape == channels
    np.testing.assert_allclose(result, np.einsum("bmk,bnk->mn", left, right), rtol=1e-5, atol=1e-5)


def test_jax_kernel_gradients_put_the_operand_of_more_channels_on_the_left():
    # Both 1x1 convolutions' kernel gradients contract the `rows * cols` axis of a
    # 4-channel and a 12-channel operand; the 12-channel one goes on the left.
    jaxpr = jax_training_gradient_jaxpr(seed=10)
    pixels = MAPS_SHAPE[2] * MAPS_SHAPE[3]

    def kept(shape, contracted):
        return [size for axis, size in enumerate(shape) if axis not in (0, *contracted)]

    kernel_products = []  # (left channels, right channels) of the products over the pixels
    for equation in jaxpr_equations(jaxpr):
        if equation.primitive.name != "dot_general":
            continue
        (lhs_contracted, rhs_contracted), _ = equation.params["dimension_numbers"]
        lhs, rhs = (v.aval.shape for v in equation.invars)
        if [lhs[axis] for axis in lhs_contracted] == [pixels]:
            kernel_products.append((kept(lhs, lhs_contracted), kept(rhs, rhs_contracted)))
    assert kernel_products == [([12], [4])] * 2, kernel_products
