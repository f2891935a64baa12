"""`call_sublayer` (a sublayer's bare `call` on PyTorch where that is exact) and `Dense`'s
one-`linear` product on PyTorch: the same values, gradients and dtypes as Keras' own calls."""

import doctest

import keras
import numpy as np
import pytest
from keras import ops

from helpers import gradients, to_numpy
from keras_deepvit.layers import dense, sublayer_call
from keras_deepvit.layers.blocks import TransformerBlock
from keras_deepvit.layers.dense import Dense
from keras_deepvit.layers.sublayer_call import call_sublayer

BACKEND = keras.backend.backend()


class _CountingDense(keras.layers.Dense):
    """A Dense layer that counts how often `__call__` and `call` run."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.counts = {"__call__": 0, "call": 0}

    def __call__(self, *args, **kwargs):
        self.counts["__call__"] += 1
        return super().__call__(*args, **kwargs)

    def call(self, inputs, training=None):
        self.counts["call"] += 1
        return super().call(inputs, training=training)


def _built_dense(units=3, width=4, **kwargs):
    layer = _CountingDense(units, **kwargs)
    layer.build((None, width))
    return layer


def test_float32_sublayer_runs_bare_call_on_torch_only():
    layer = _built_dense()
    x = ops.convert_to_tensor(np.random.default_rng(0).normal(size=(2, 4)).astype("float32"))
    out = call_sublayer(layer, x)
    np.testing.assert_allclose(to_numpy(out), to_numpy(layer(x)), rtol=1e-6, atol=1e-6)
    direct = BACKEND == "torch"
    # The second count of `__call__` is the reference call above.
    assert layer.counts == {"__call__": 1 if direct else 2, "call": 2}


class _CountingLayerNorm(keras.layers.LayerNormalization):
    """A LayerNormalization (a layer that does not autocast) counting its `__call__`s."""

    calls = 0

    def __call__(self, *args, **kwargs):
        type(self).calls += 1
        return super().__call__(*args, **kwargs)


@pytest.mark.parametrize("scope", [None, "bfloat16"])
def test_layer_that_does_not_autocast_takes_bare_call_only_outside_a_scope(scope):
    from keras.src.backend import AutocastScope

    norm = _CountingLayerNorm(epsilon=1e-6)
    norm.build((None, 4))
    _CountingLayerNorm.calls = 0
    x = ops.convert_to_tensor(np.random.default_rng(4).normal(size=(2, 4)).astype("float32"))
    with AutocastScope(scope):
        out = call_sublayer(norm, x)
    expected = (x - ops.mean(x, -1, keepdims=True)) / ops.sqrt(ops.var(x, -1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(to_numpy(out), to_numpy(expected), rtol=1e-5, atol=1e-5)
    assert _CountingLayerNorm.calls == (0 if BACKEND == "torch" and scope is None else 1)


@pytest.mark.parametrize(
    "case", ["unbuilt", "float64 input", "numpy input", "mixed policy outside its scope"]
)
def test_sublayer_call_falls_back_where_the_bare_call_would_differ(case):
    x = np.random.default_rng(1).normal(size=(2, 4)).astype("float32")
    if case == "unbuilt":
        layer = _CountingDense(3)
        x = ops.convert_to_tensor(x)
    elif case == "float64 input":
        layer = _built_dense()
        x = ops.convert_to_tensor(x.astype("float64"))
    elif case == "numpy input":
        layer = _built_dense()
    else:
        layer = _built_dense(dtype="mixed_bfloat16")
        x = ops.convert_to_tensor(x, "bfloat16")
    out = call_sublayer(layer, x)
    assert layer.counts["__call__"] == 1
    assert keras.backend.standardize_dtype(out.dtype) == layer.compute_dtype


def test_sublayer_call_in_mixed_block_keeps_compute_dtype():
    """Inside a mixed-precision block the bare calls read kernels in bfloat16 (the block's
    `__call__` set the autocast scope) and give the ordinary calls' values."""
    block = TransformerBlock(num_heads=2, dtype="mixed_bfloat16")
    x = np.random.default_rng(2).normal(size=(2, 5, 8)).astype("float32")
    out = block(x)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    original = sublayer_call.get_autocast_scope
    try:
        sublayer_call.get_autocast_scope = None  # every sublayer through `__call__`
        ordinary = block(x)
    finally:
        sublayer_call.get_autocast_scope = original
    np.testing.assert_array_equal(to_numpy(ops.cast(out, "float32")), to_numpy(ops.cast(ordinary, "float32")))


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("shape", [(3, 4), (2, 5, 4)])
def test_dense_matches_keras_dense_with_gradients(use_bias, shape):
    ours = Dense(6, use_bias=use_bias, activation="relu", bias_initializer="glorot_uniform")
    theirs = keras.layers.Dense(6, use_bias=use_bias, activation="relu")
    ours.build(shape)
    theirs.build(shape)
    theirs.set_weights(ours.get_weights())
    x = ops.convert_to_tensor(np.random.default_rng(3).normal(size=shape).astype("float32"))
    weights = ops.convert_to_tensor(np.linspace(-1, 1, int(np.prod(shape[:-1])) * 6).reshape(shape[:-1] + (6,)), "float32")

    def loss(layer):
        return lambda: ops.sum(layer(x) * weights)

    ours_loss, ours_grads = gradients(loss(ours), ours.trainable_variables)
    theirs_loss, theirs_grads = gradients(loss(theirs), theirs.trainable_variables)
    np.testing.assert_allclose(to_numpy(ours(x)), to_numpy(theirs(x)), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ours_loss, theirs_loss, rtol=1e-5, atol=1e-5)
    for mine, reference in zip(ours_grads, theirs_grads):
        np.testing.assert_allclose(mine, reference, rtol=1e-5, atol=1e-5)


def test_docstring_examples_run():
    for module in (sublayer_call, dense):
        results = doctest.testmod(module)
        assert results.attempted > 0 and results.failed == 0
