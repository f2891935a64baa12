"""Per-channel sums of channels-first maps (`keras_deepvit.layers.channel_sums`)."""

import doctest

import keras
import numpy as np
import pytest

from helpers import (
    asked_while_tracing_for_xla, compiled, jaxpr_equations, to_numpy, xla_compiled_on_tensorflow,
)
from keras_deepvit.layers import channel_sums as module
from keras_deepvit.layers.channel_sums import channel_moments, channel_sums, sums_in_one_pass
from keras_deepvit.layers.map_ops import depthwise_conv_channels_first_gradients

BACKEND = keras.backend.backend()
# Rows and cols longer than 32 (TensorFlow's XLA rewrites such reductions) and not a
# multiple of it.
SHAPE = (2, 3, 37, 41)


def random_maps(count, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(1.0, 2.0, SHAPE).astype("float32") for _ in range(count)]


def test_docstring_examples():
    assert doctest.testmod(module, raise_on_error=True).attempted > 0


@pytest.mark.parametrize("count", [1, 2, 9])
@pytest.mark.parametrize("compile_with_xla", [False, True])
def test_sums_equal_numpy_for_any_number_of_maps(count, compile_with_xla):
    maps = random_maps(count)
    function = channel_sums
    if compile_with_xla:
        function = compiled(xla_compiled_on_tensorflow(function))
    sums = function(*maps)
    assert len(sums) == count
    for result, summand in zip(sums, maps):
        np.testing.assert_allclose(to_numpy(result), summand.sum(axis=(0, 2, 3), dtype="float64"), rtol=1e-5)


@pytest.mark.parametrize("compile_with_xla", [False, True])
def test_moments_equal_the_biased_numpy_mean_and_variance(compile_with_xla):
    (maps,) = random_maps(1, seed=1)
    function = channel_moments
    if compile_with_xla:
        function = compiled(xla_compiled_on_tensorflow(function))
    mean, variance = function(maps)
    np.testing.assert_allclose(to_numpy(mean), maps.mean(axis=(0, 2, 3), dtype="float64"), rtol=1e-5)
    np.testing.assert_allclose(to_numpy(variance), maps.var(axis=(0, 2, 3), dtype="float64"), rtol=1e-5)


def test_sums_take_one_pass_under_xla_on_a_cpu_only():
    expected = {"jax": True, "tensorflow": True, "torch": False}[BACKEND]
    assert asked_while_tracing_for_xla(sums_in_one_pass) is expected
    if BACKEND == "tensorflow":
        assert sums_in_one_pass() is False  # eager
        import tensorflow as tf

        answers = []
        tf.function(lambda: answers.append(sums_in_one_pass()) or 0, jit_compile=False)()
        assert answers == [False]  # a graph outside XLA: oneDNN's reductions


def test_tensorflow_xla_sums_are_one_variadic_reduction_without_reduce_windows():
    # A plain sum over a long axis becomes a tree of `reduce-window`s in TensorFlow's
    # XLA, slow on a CPU; the variadic reduction is left as it is.
    if BACKEND != "tensorflow":
        pytest.skip("TensorFlow's XLA pipeline")
    import tensorflow as tf

    maps = [tf.constant(m) for m in random_maps(2)]

    def optimized_hlo(function):
        return tf.function(function, jit_compile=True).experimental_get_compiler_ir(*maps)(
            stage="optimized_hlo"
        )

    ours = optimized_hlo(lambda a, b: channel_sums(a, b * a))
    plain = optimized_hlo(lambda a, b: (tf.reduce_sum(a, (0, 2, 3)), tf.reduce_sum(b * a, (0, 2, 3))))
    assert "reduce-window" in plain  # the rewrite this avoids still happens to plain sums
    assert "reduce-window" not in ours, ours


def test_jax_depthwise_kernel_gradient_sums_every_tap_in_one_reduction():
    if BACKEND != "jax":
        pytest.skip("the JAX form")
    import jax

    maps, upstream = random_maps(2, seed=2)
    kernel = np.random.default_rng(3).normal(size=(3, 3, SHAPE[1], 1)).astype("float32")
    jaxpr = jax.make_jaxpr(
        lambda m, g: depthwise_conv_channels_first_gradients(m, kernel, g)[1]
    )(maps, upstream).jaxpr
    reductions = [e for e in jaxpr_equations(jaxpr) if e.primitive.name == "reduce"]
    assert [len(e.outvars) for e in reductions] == [9], reductions
    assert reductions[0].params["dimensions"] == (0, 2, 3)


@pytest.mark.parametrize("one_pass", [False, True])
def test_depthwise_kernel_gradient_is_the_same_in_either_form(monkeypatch, one_pass):
    from keras_deepvit.layers import map_ops

    monkeypatch.setattr(map_ops, "sums_in_one_pass", lambda: one_pass)
    if one_pass and BACKEND == "tensorflow":
        monkeypatch.setattr(module, "_tensorflow_variadic_reduce_here", lambda: False)
    maps, upstream = random_maps(2, seed=4)
    kernel = np.random.default_rng(5).normal(size=(3, 3, SHAPE[1], 1)).astype("float32")
    _, d_kernel = depthwise_conv_channels_first_gradients(maps, kernel, upstream)
    padded = np.pad(maps, ((0, 0), (0, 0), (1, 1), (1, 1)))
    rows, cols = SHAPE[2], SHAPE[3]
    expected = np.stack([
        (padded[:, :, i : i + rows, j : j + cols] * upstream).sum(axis=(0, 2, 3))
        for i in range(3) for j in range(3)
    ]).reshape(3, 3, -1, 1)
    np.testing.assert_allclose(to_numpy(d_kernel), expected, rtol=2e-5, atol=1e-4)
