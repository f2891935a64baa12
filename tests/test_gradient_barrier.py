"""`gradient_barrier`: the identity whose gradient JAX's CPU compiler computes once per block.

The values and gradients are those of the plain identity, bit for bit, on every
backend (in XLA-compiled TensorFlow functions too); it is active only under JAX on
a CPU, where the compiled backward pass keeps each barrier's division once, so the
residual gradient is one buffer that its consumers read; and a block's gradients
are the same with and without it.
"""

import doctest
import re

import keras
import numpy as np
import pytest
from keras import ops

from helpers import asked_while_tracing_for_xla, to_numpy, xla_compiled_on_tensorflow
from keras_deepvit.layers import gradient_barrier
from keras_deepvit.layers.blocks import TransformerBlock

BACKEND = keras.backend.backend()


def _residual_stack(x, weights, barrier):
    """Pre-norm residual blocks `x + tanh(LN(x) @ w)`: each block's input gradient has
    several consumers, the situation the barrier is for."""
    for w in weights:
        if barrier:
            x = gradient_barrier.materialized_gradient(x)
        mean = ops.mean(x, axis=-1, keepdims=True)
        normed = (x - mean) * ops.rsqrt(ops.var(x, axis=-1, keepdims=True) + 1e-6)
        x = x + ops.tanh(ops.matmul(normed, w))
    return x


def _input_gradient(fn, x):
    """`d sum(fn(x)**2) / dx` as numpy, compiled on JAX and by XLA on TensorFlow."""
    if BACKEND == "jax":
        import jax

        return to_numpy(jax.jit(jax.grad(lambda t: (fn(t) ** 2).sum()))(x))
    if BACKEND == "tensorflow":
        import tensorflow as tf

        def grad(t):
            with tf.GradientTape() as tape:
                tape.watch(t)
                loss = tf.reduce_sum(fn(t) ** 2)
            return tape.gradient(loss, t)

        return to_numpy(xla_compiled_on_tensorflow(grad)(tf.constant(x)))
    import torch

    t = torch.tensor(x, requires_grad=True)
    (fn(t) ** 2).sum().backward()
    return t.grad.numpy()


def _stack_inputs(blocks=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, 5, 8)).astype("float32")
    weights = [rng.normal(size=(8, 8)).astype("float32") * 0.5 for _ in range(blocks)]
    return x, weights


def test_values_and_gradients_equal_the_identity_bit_for_bit():
    x, weights = _stack_inputs()
    with_barrier = _input_gradient(lambda t: _residual_stack(t, weights, True), x)
    plain = _input_gradient(lambda t: _residual_stack(t, weights, False), x)
    assert np.abs(plain).max() > 0
    np.testing.assert_array_equal(with_barrier, plain)
    forward = xla_compiled_on_tensorflow(lambda t: gradient_barrier.materialized_gradient(t))
    np.testing.assert_array_equal(to_numpy(forward(x)), x)


def test_active_only_under_jax_on_a_cpu():
    expected = BACKEND == "jax"
    assert gradient_barrier.applies_here() is expected
    assert asked_while_tracing_for_xla(gradient_barrier.applies_here) is expected
    if not expected:
        x = ops.ones((2, 3))
        assert gradient_barrier.materialized_gradient(x) is x


def test_the_division_returns_its_input():
    values = np.array([[3.5, -0.0, 1e-30], [-2.0, 7e30, 0.25]], "float32")
    np.testing.assert_array_equal(to_numpy(gradient_barrier.divided_by_unfoldable_one(values)), values)


@pytest.mark.skipif(BACKEND != "jax", reason="reads the optimized HLO of JAX's CPU compiler")
def test_each_barrier_is_one_division_in_the_compiled_backward_pass():
    import jax

    x, weights = _stack_inputs(blocks=4)
    grad = jax.jit(jax.grad(lambda t: (_residual_stack(t, weights, True) ** 2).sum()))
    hlo = grad.lower(x).compile().as_text()
    # Every division of the program is a barrier's (the stack itself has none); XLA
    # neither folded them away nor copied them into their consumers' fusions.
    divisions = re.findall(r"= f32\[2,5,8\]\{[0-9,]*\} divide\(", hlo)
    assert len(divisions) == len(weights)


@pytest.mark.skipif(BACKEND != "jax", reason="the barrier is the identity off JAX (tested above)")
def test_a_block_trains_to_the_same_gradients_with_and_without_barriers(monkeypatch):
    keras.utils.set_random_seed(0)
    block = TransformerBlock(num_heads=2, scale_adjustment=0.5)
    x = np.random.default_rng(1).normal(size=(2, 6, 8)).astype("float32")
    block.build(x.shape)

    def block_gradients():
        import jax

        variables = block.trainable_variables

        def loss(values, t):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return (block(t, training=True) ** 2).sum()

        return to_numpy(jax.jit(jax.grad(loss, argnums=(0, 1)))([v.value for v in variables], x))

    with_barriers = block_gradients()
    calls = []
    real = gradient_barrier.materialized_gradient

    def counted(t):
        calls.append(1)
        return real(t)

    monkeypatch.setattr("keras_deepvit.layers.blocks.materialized_gradient", counted)
    monkeypatch.setattr(gradient_barrier, "applies_here", lambda: False)
    plain = block_gradients()
    assert len(calls) >= 2  # the block's input and its MLP residual
    for got, expected in zip(with_barriers[0] + [with_barriers[1]], plain[0] + [plain[1]]):
        np.testing.assert_array_equal(got, expected)


def test_doctests():
    assert doctest.testmod(gradient_barrier).failed == 0
