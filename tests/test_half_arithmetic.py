"""`half_arithmetic`: half-precision maps computed in float32 under XLA on a CPU where the
machine measures that faster; same values as the float32 computation of the half inputs,
rounded once, gradients included, and the machine's answer measured once and cached."""

import doctest
import json

import keras
import numpy as np
import pytest
from keras import ops

from helpers import asked_while_tracing_for_xla, xla_compiled_on_tensorflow
from keras_deepvit import cpuinfo
from keras_deepvit.layers import half_arithmetic, machine_facts, map_ops

BACKEND = keras.backend.backend()
#: Backends with a float32 form (TensorFlow's only inside functions XLA compiles).
XLA_BACKENDS = ("jax", "tensorflow")


def _numpy(x):
    return np.asarray(ops.convert_to_numpy(ops.cast(x, "float32")))


@pytest.fixture
def float32_path(monkeypatch):
    """Forces the float32 form for half tensors, whatever this machine prefers."""
    monkeypatch.setattr(
        half_arithmetic, "prefers_float32",
        lambda x: keras.backend.standardize_dtype(x.dtype) in half_arithmetic.HALF,
    )


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_in_float32_computes_in_float32_and_returns_the_input_dtype(float32_path, dtype):
    seen = []

    def record(x, scale):
        seen.append(keras.backend.standardize_dtype(x.dtype))
        return x * scale + 1.0

    x = ops.cast(np.linspace(-3, 3, 24).reshape(1, 2, 3, 4), dtype)
    out = half_arithmetic.in_float32(record, x, 0.1)
    assert seen == ["float32"]
    assert keras.backend.standardize_dtype(out.dtype) == dtype
    expected = ops.cast(ops.cast(x, "float32") * 0.1 + 1.0, dtype)
    np.testing.assert_array_equal(_numpy(out), _numpy(expected))


def test_float32_and_unpreferred_inputs_pass_through(monkeypatch):
    monkeypatch.setattr(half_arithmetic, "_measured_preference", lambda backend, dtype: False)
    for dtype in ("float32", "bfloat16"):
        seen = []
        x = ops.ones((2, 2), dtype)
        half_arithmetic.in_float32(lambda t: seen.append(keras.backend.standardize_dtype(t.dtype)) or t, x)
        assert seen == [dtype]
    assert half_arithmetic.prefers_float32(ops.ones((2,), "float32")) is False


def test_depthwise_map_convolution_in_float32_matches_and_differentiates(float32_path):
    """The refiner's convolution of bfloat16 maps: forward and gradients against float32."""
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(2, 3, 6, 6)).astype("float32")
    kernel = rng.normal(size=(3, 3, 3, 1)).astype("float32")
    half = ops.cast(maps, "bfloat16")
    out = xla_compiled_on_tensorflow(lambda m: map_ops.depthwise_conv_channels_first(m, kernel))(half)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    # The float32 sum of the bfloat16 maps, rounded once; the float32 form takes the
    # float32 kernel (the PyTorch backend's half convolution, a bfloat16 one).
    used_kernel = kernel if BACKEND in XLA_BACKENDS else _numpy(ops.cast(kernel, "bfloat16"))
    expected = map_ops.depthwise_conv_channels_first(_numpy(half), used_kernel)
    np.testing.assert_allclose(_numpy(out), _numpy(ops.cast(expected, "bfloat16")), rtol=1e-2, atol=1e-2)
    if BACKEND not in XLA_BACKENDS:
        return
    grad = _input_gradient(lambda m: map_ops.depthwise_conv_channels_first(m, kernel), half)
    grad32 = _input_gradient(lambda m: map_ops.depthwise_conv_channels_first(m, used_kernel), _numpy(half))
    assert keras.backend.standardize_dtype(grad.dtype) == "bfloat16"
    np.testing.assert_allclose(_numpy(grad), _numpy(grad32), rtol=2e-2, atol=2e-2)


def _input_gradient(function, x):
    """d sum(function(x) * weights) / dx, XLA-compiled."""
    weights = np.linspace(-1, 1, int(np.prod(x.shape))).reshape(x.shape).astype("float32")
    if BACKEND == "jax":
        import jax

        def loss(m):
            return ops.sum(ops.cast(function(m), "float32") * weights)

        return jax.jit(jax.grad(loss))(x)
    import tensorflow as tf

    def gradient(m):
        with tf.GradientTape() as tape:
            tape.watch(m)
            loss = tf.reduce_sum(tf.cast(function(m), tf.float32) * weights)
        return tape.gradient(loss, m)

    return tf.function(gradient, jit_compile=True)(tf.convert_to_tensor(x))


def test_preference_is_measured_once_and_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    half_arithmetic._measured_preference.cache_clear()
    calls = []
    monkeypatch.setattr(
        half_arithmetic, "_time_both_forms", lambda backend, dtype: calls.append(dtype) or (3.0, 1.0)
    )
    x = ops.ones((2,), "bfloat16")
    try:
        if BACKEND == "tensorflow":  # eager and graph TensorFlow keep oneDNN's half kernels
            assert half_arithmetic.prefers_float32(x) is False and not calls
        answer = asked_while_tracing_for_xla(lambda: half_arithmetic.prefers_float32(x))
        if BACKEND not in XLA_BACKENDS:
            assert answer is False and not calls
            return
        if machine_facts.has_gpu(BACKEND):
            pytest.skip("GPUs keep half-precision arithmetic; the probe runs on CPUs only")
        assert answer is True and calls == ["bfloat16"]
        facts = json.loads((tmp_path / "keras_deepvit" / "machine_facts.json").read_text())
        (key, entry), = facts.items()
        assert key.startswith(cpuinfo.cpu_identity() + " | " + BACKEND)
        assert key.endswith(" | bfloat16 map arithmetic")
        assert entry == {"half_s": 3.0, "float32_s": 1.0, "float32": True}
        half_arithmetic._measured_preference.cache_clear()  # a new process reads the file
        assert asked_while_tracing_for_xla(lambda: half_arithmetic.prefers_float32(x)) is True
        assert calls == ["bfloat16"]
    finally:
        half_arithmetic._measured_preference.cache_clear()


def test_the_real_probe_times_both_forms():
    if BACKEND not in XLA_BACKENDS:
        pytest.skip("the PyTorch backend has no probe (its kernels take half tensors)")
    half, single = half_arithmetic._time_both_forms(BACKEND, "bfloat16")
    assert half > 0 and single > 0


def test_refined_bfloat16_maps_match_the_float32_refiner(float32_path):
    """Folded inference refinement of bfloat16 maps against the float32 layer on the same maps."""
    from keras_deepvit.layers.refiner_attention import DistributedLocalAttention

    rng = np.random.default_rng(1)
    maps = rng.random((2, 4, 5, 5)).astype("float32")
    single = DistributedLocalAttention(expansion_ratio=3)
    mixed = DistributedLocalAttention(expansion_ratio=3, dtype="mixed_bfloat16")
    single.build(maps.shape)
    mixed.build(maps.shape)
    mixed.set_weights(single.get_weights())
    half = ops.cast(maps, "bfloat16")
    out = xla_compiled_on_tensorflow(lambda m: mixed.refine_folded(m))(half)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    expected = single.refine_folded(_numpy(half))
    np.testing.assert_allclose(_numpy(out), _numpy(expected), rtol=3e-2, atol=3e-2)


def test_docstring_examples():
    results = doctest.testmod(half_arithmetic)
    assert results.attempted > 0 and results.failed == 0
