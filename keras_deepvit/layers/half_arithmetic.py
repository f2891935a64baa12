"""Half-precision map arithmetic done in float32 under XLA on a CPU, where that is faster.

Under `mixed_bfloat16` (or `mixed_float16`) the maps the refiner convolves, PiT's
pooled feature maps and the CNN stems' images are half-precision tensors. XLA's
CPU code generator has no half-precision arithmetic: each elementwise op of a
fusion converts its operands to float32 and its result back, and a sum of shifted
slices (the depthwise convolutions of `map_ops`) written that way runs several
times slower than the same sum on float32 operands converted once at its ends.
XLA's own convolution likewise has no fast half-precision CPU kernel.

`in_float32(fn, x, ...)` runs `fn` on `x` cast to float32 and casts the result
back, so only the tensors between the ops change type: the values are the same
bfloat16 inputs, summed in float32 (as PyTorch's CPU kernels accumulate them) and
rounded once. Whether that is faster is measured, not assumed: the first half-
precision call of a process times a 3x3 depthwise shifted sum both ways
(`prefers_float32`) and caches the answer with `wide_matmul`'s measurements of
this CPU and backend version. GPUs (native half arithmetic), the PyTorch backend
(its kernels take half tensors) and TensorFlow outside XLA (oneDNN's kernels)
keep the half-precision form.
"""

import functools

import keras
from keras import ops

from keras_deepvit.layers import machine_facts, wide_matmul

HALF = ("bfloat16", "float16")
#: Probe maps `(batch, channels, rows, cols)`: large enough to be memory-bound as the
#: refiner's maps are, small enough that timing both forms costs well under a second.
PROBE_SHAPE = (2, 8, 128, 128)


def in_float32(fn, x, *args, **kwargs):
    """`fn(x, *args, **kwargs)`, computed on `x` in float32 when that is faster here.

    The result is cast back to `x`'s dtype; other arguments (kernels, biases) are
    the function's to cast to its input's dtype.

    Example:
    >>> x = keras.ops.ones((1, 2, 3, 3), "bfloat16")
    >>> y = in_float32(lambda maps: maps * 2.0, x)
    >>> values = keras.ops.convert_to_numpy(keras.ops.cast(y, "float32"))
    >>> keras.backend.standardize_dtype(y.dtype), float(values[0, 0, 0, 0])
    ('bfloat16', 2.0)
    """
    if not prefers_float32(x):
        return fn(x, *args, **kwargs)
    dtype = keras.backend.standardize_dtype(x.dtype)
    return ops.cast(fn(ops.cast(x, "float32"), *args, **kwargs), dtype)


def prefers_float32(x):
    """True if `x` is half precision and float32 arithmetic on it is faster here (measured, cached).

    Example:
    >>> prefers_float32(keras.ops.ones((2,), "float32"))
    False
    """
    dtype = keras.backend.standardize_dtype(x.dtype)
    if dtype not in HALF:
        return False
    backend = keras.backend.backend()
    if backend == "jax":
        return not machine_facts.has_gpu(backend) and _measured_preference(backend, dtype)
    if backend == "tensorflow":
        return (
            wide_matmul._tensorflow_compiles_with_xla()
            and not machine_facts.has_gpu(backend)
            and _measured_preference(backend, dtype)
        )
    return False


@functools.lru_cache(maxsize=None)
def _measured_preference(backend, dtype):
    def measure():
        half, single = _time_both_forms(backend, dtype)
        return {"half_s": half, "float32_s": single, "float32": single < half}

    key = f"{machine_facts.framework_key(backend)} | {dtype} map arithmetic"
    return bool(machine_facts.measured_fact(key, measure)["float32"])


def _shifted_sum(maps, weights):
    """A 3x3 depthwise convolution of `maps` as nine weighted shifted slices (the probed form)."""
    rows, cols = maps.shape[2] - 2, maps.shape[3] - 2
    total = 0
    for i in range(3):
        for j in range(3):
            total = total + maps[:, :, i : i + rows, j : j + cols] * weights[i * 3 + j]
    return total


def _both_forms(dtype, cast):
    """The probe in `dtype`, and on float32 copies rounded back; `cast(tensor, dtype)`."""

    def half(maps, weights):
        return _shifted_sum(maps, cast(weights, dtype))

    def single(maps, weights):
        return cast(_shifted_sum(cast(maps, "float32"), weights), dtype)

    return half, single


def _time_both_forms(backend, dtype):
    """Seconds of the probe in `dtype` and in float32 from and to `dtype`, XLA-compiled."""
    if backend == "tensorflow":
        return _time_both_tensorflow_forms(dtype)
    import jax
    import jax.numpy as jnp

    # Timed eagerly even when the first use is inside a traced function.
    with jax.ensure_compile_time_eval():
        maps = jnp.ones(PROBE_SHAPE, dtype)
        weights = jnp.full((9,), 0.5, jnp.float32)
        half, single = (jax.jit(f) for f in _both_forms(dtype, lambda t, d: t.astype(d)))
        return (
            machine_facts.best_time(lambda: half(maps, weights).block_until_ready()),
            machine_facts.best_time(lambda: single(maps, weights).block_until_ready()),
        )


def _time_both_tensorflow_forms(dtype):
    import tensorflow as tf

    # Out of the function being traced: both forms run, compiled by XLA, on real tensors.
    with tf.init_scope():
        maps = tf.ones(PROBE_SHAPE, dtype)
        weights = tf.fill((9,), 0.5)
        half, single = (
            tf.function(f, jit_compile=True) for f in _both_forms(dtype, tf.cast)
        )
        return (
            machine_facts.best_time(lambda: half(maps, weights).numpy()),
            machine_facts.best_time(lambda: single(maps, weights).numpy()),
        )
