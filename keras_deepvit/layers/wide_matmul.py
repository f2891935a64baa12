"""bfloat16 matmuls that accumulate into float32, where the machine runs them faster.

Under `mixed_bfloat16` every dense layer and attention product multiplies bfloat16
tensors. XLA:CPU runs a bfloat16 x bfloat16 -> bfloat16 dot through a slow generic
path, while the same dot asked for a float32 result goes to the CPU's bfloat16 GEMM
(AVX512-BF16 / AMX). `matmul` asks for that float32 result and rounds it to bfloat16
once, in the forward pass and in both gradient products, so the numbers are the
product of the bfloat16 inputs accumulated in float32, as PyTorch's autocast computes
them. It does so on JAX's CPU and in TensorFlow functions compiled with XLA for a CPU
(`jit_compile=True`; TensorFlow's `BatchMatMulV3` with a float32 result has a kernel
under XLA only, so its graph and eager modes keep `keras.ops.matmul`, whose oneDNN
bfloat16 GEMM is fast there).

Whether the wide form is faster is a fact of the machine, not of its name: the first
bfloat16 matmul of a process times both forms on a small GEMM
(`prefers_wide_accumulator`) and caches the answer under `$KERAS_HOME/keras_deepvit/`
for this CPU and backend version. GPUs and the PyTorch backend (whose bfloat16 GEMM
already accumulates in float32) keep `keras.ops.matmul`.
"""

import functools

import keras
from keras import ops

from keras_deepvit.layers import machine_facts

#: Square size of the probe GEMM: large enough to reach the GEMM kernels' speed,
#: small enough that the probe costs well under a second.
PROBE_SIZE = 512


def matmul(a, b, bias=None):
    """`keras.ops.matmul(a, b)` (`+ bias`); for bfloat16 inputs under XLA on a CPU, accumulated in float32.

    `b` is either a matrix (a dense kernel, broadcast over `a`'s leading axes) or has
    the same batch axes as `a`. `bias`, a vector over the output's last axis, is
    added to the float32 accumulator before the one rounding to bfloat16 on the
    wide path (as PyTorch's bfloat16 `linear` adds it), and after the product
    elsewhere.

    Example:
    >>> import numpy as np
    >>> a = keras.ops.ones((2, 3, 4), "bfloat16"); b = keras.ops.ones((4, 5), "bfloat16")
    >>> tuple(matmul(a, b).shape), keras.backend.standardize_dtype(matmul(a, b).dtype)
    ((2, 3, 5), 'bfloat16')
    >>> float(keras.ops.convert_to_numpy(keras.ops.cast(matmul(a, b, bias=keras.ops.ones((5,), "bfloat16")), "float32"))[0, 0, 0])
    5.0
    """
    if not bfloat16_pair(a, b) or not prefers_wide_accumulator():
        return _plus_bias(ops.matmul(a, b), bias)
    # Variables (a dense kernel, autocast to bfloat16 in a layer's call) as tensors.
    a, b = ops.convert_to_tensor(a), ops.convert_to_tensor(b)
    if keras.backend.backend() == "jax":
        if bias is None:
            return _jax_wide_matmul()(a, b)
        return _jax_wide_affine()(a, b, ops.convert_to_tensor(bias))
    if bias is None:
        return _tensorflow_wide_matmul()(a, b)
    return _tensorflow_wide_affine()(a, b, ops.convert_to_tensor(bias))


def _plus_bias(x, bias):
    return x if bias is None else ops.add(x, bias)


def bfloat16_pair(a, b):
    """True if both operands are bfloat16 (a mixed_bfloat16 layer's product).

    Example:
    >>> bfloat16_pair(keras.ops.ones((2,), "bfloat16"), keras.ops.ones((2,), "float32"))
    False
    """
    return (
        keras.backend.standardize_dtype(a.dtype) == "bfloat16"
        and keras.backend.standardize_dtype(b.dtype) == "bfloat16"
    )


def prefers_wide_accumulator():
    """True if bfloat16 matmuls with a float32 result are faster here (measured, cached).

    JAX on a CPU, and TensorFlow while tracing a function that XLA compiles for
    a CPU: the probe's answer. Always False on the PyTorch backend, on GPUs and
    in TensorFlow's graph and eager modes.

    Example:
    >>> isinstance(prefers_wide_accumulator(), bool)
    True
    """
    backend = keras.backend.backend()
    if backend == "jax":
        return not machine_facts.has_gpu(backend) and _measured_preference(backend)
    if backend == "tensorflow":
        return _tensorflow_compiles_with_xla() and not machine_facts.has_gpu(backend) and _measured_preference(backend)
    return False


def _tensorflow_compiles_with_xla():
    """Whether the function being traced is compiled by XLA (`jit_compile=True`)."""
    import tensorflow as tf

    if tf.executing_eagerly():
        return False
    try:  # TensorFlow's own test of the XLA context; no public API says it.
        from tensorflow.python.ops import control_flow_util
    except ImportError:
        return False  # A TensorFlow without it keeps Keras' matmul: slower, never wrong.
    return bool(control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))


@functools.lru_cache(maxsize=None)
def _measured_preference(backend):
    def measure():
        narrow, wide = _time_both_forms(backend)
        return {"bfloat16_out_s": narrow, "float32_out_s": wide, "wide": wide < narrow}

    return bool(machine_facts.measured_fact(machine_facts.framework_key(backend), measure)["wide"])


def _time_both_forms(backend):
    """Seconds of one probe GEMM as bfloat16 -> bfloat16 and as bfloat16 -> float32."""
    if backend == "tensorflow":
        return _time_both_tensorflow_forms()
    import jax
    import jax.numpy as jnp

    n = PROBE_SIZE
    # Timed eagerly even when the first use is inside a traced function.
    with jax.ensure_compile_time_eval():
        x = jnp.ones((n, n), jnp.bfloat16)
        narrow = jax.jit(lambda p, q: p @ q)
        wide = jax.jit(lambda p, q: jnp.matmul(p, q, preferred_element_type=jnp.float32))
        return (
            machine_facts.best_time(lambda: narrow(x, x).block_until_ready()),
            machine_facts.best_time(lambda: wide(x, x).block_until_ready()),
        )


def _time_both_tensorflow_forms():
    import tensorflow as tf

    # Out of the function being traced: both forms run, compiled by XLA, on real tensors.
    with tf.init_scope():
        x = tf.ones((PROBE_SIZE, PROBE_SIZE), tf.bfloat16)
        narrow = tf.function(lambda p, q: tf.matmul(p, q), jit_compile=True)
        wide = tf.function(lambda p, q: _tensorflow_product(p, q), jit_compile=True)
        return (
            machine_facts.best_time(lambda: narrow(x, x).numpy()),
            machine_facts.best_time(lambda: wide(x, x).numpy()),
        )


def _tensorflow_product(p, q, adj_x=False, adj_y=False):
    import tensorflow as tf

    wide = tf.raw_ops.BatchMatMulV3(x=p, y=q, Tout=tf.float32, adj_x=adj_x, adj_y=adj_y)
    return tf.cast(wide, tf.bfloat16)


def _kernel_gradient(a, upstream, product, transpose_whole=False):
    """Gradient of a broadcast matrix `b`: `a^T @ upstream` over all leading axes.

    With `transpose_whole` (JAX), an `a` of three or more axes is transposed whole,
    then flattened, and XLA:CPU writes that copy out. The transpose of a flattened
    2-D `a` it folds into the product instead, and a bfloat16 product whose left
    operand is contracted over its first axis runs as a float32 product of
    converted copies (jaxlib 0.10), slower than the bfloat16 product on the copy
    (docs/performance.md). TensorFlow's XLA (2.21) has no CPU kernel for some of the products that
    form leaves behind, so TensorFlow keeps the 2-D transpose.
    """
    rows = a.shape[-1]
    flat_upstream = ops.reshape(upstream, (-1, upstream.shape[-1]))
    if transpose_whole and len(a.shape) > 2:
        transposed = ops.transpose(a, (len(a.shape) - 1,) + tuple(range(len(a.shape) - 1)))
        return product(ops.reshape(transposed, (rows, -1)), flat_upstream)
    return product(ops.transpose(ops.reshape(a, (-1, rows))), flat_upstream)


def _jax_product(p, q):
    import jax.numpy as jnp

    return jnp.matmul(p, q, preferred_element_type=jnp.float32)


def _jax_wide_gradients(a, b, upstream):
    """Gradients of `a @ b` (rounded once from float32) for a bfloat16 `upstream`."""
    import jax.numpy as jnp

    upstream = upstream.astype(jnp.bfloat16)
    grad_a = _jax_product(upstream, jnp.swapaxes(b, -1, -2)).astype(jnp.bfloat16)
    if b.ndim == 2:
        grad_b = _kernel_gradient(
            a, upstream, lambda p, q: _jax_product(p, q).astype(jnp.bfloat16), transpose_whole=True
        )
    else:
        grad_b = _jax_product(jnp.swapaxes(a, -1, -2), upstream).astype(jnp.bfloat16)
    return grad_a, grad_b, upstream


@functools.lru_cache(maxsize=None)
def _jax_wide_matmul():
    import jax
    import jax.numpy as jnp

    @jax.custom_vjp
    def wide(a, b):
        return _jax_product(a, b).astype(jnp.bfloat16)

    def forward(a, b):
        return wide(a, b), (a, b)

    def backward(saved, upstream):
        grad_a, grad_b, _ = _jax_wide_gradients(*saved, upstream)
        return grad_a, grad_b

    wide.defvjp(forward, backward)
    return wide


@functools.lru_cache(maxsize=None)
def _jax_wide_affine():
    """`a @ b + bias` with the bias added in float32 before the rounding.

    Its gradient sums the bfloat16 upstream into a float32 accumulator. As the
    transpose of a bfloat16 broadcast, the same sum is a bfloat16 reduction that
    XLA:CPU rewrites into a slow windowed reduction (one per dense layer).
    """
    import jax
    import jax.numpy as jnp

    @jax.custom_vjp
    def affine(a, b, bias):
        return (_jax_product(a, b) + bias.astype(jnp.float32)).astype(jnp.bfloat16)

    def forward(a, b, bias):
        return affine(a, b, bias), (a, b, bias)

    def backward(saved, upstream):
        a, b, bias = saved
        grad_a, grad_b, upstream = _jax_wide_gradients(a, b, upstream)
        rows = tuple(range(upstream.ndim - 1))
        grad_bias = jnp.sum(upstream, axis=rows, dtype=jnp.float32).astype(bias.dtype)
        return grad_a, grad_b, grad_bias

    affine.defvjp(forward, backward)
    return affine


def _tensorflow_wide_gradients(a, b, upstream):
    """Gradients of `a @ b` (rounded once from float32) for a bfloat16 `upstream`."""
    import tensorflow as tf

    upstream = tf.cast(upstream, tf.bfloat16)
    grad_a = _tensorflow_product(upstream, b, adj_y=True)
    if len(b.shape) == 2:
        grad_b = _kernel_gradient(a, upstream, _tensorflow_product)
    else:
        grad_b = _tensorflow_product(a, upstream, adj_x=True)
    return grad_a, grad_b, upstream


@functools.lru_cache(maxsize=None)
def _tensorflow_wide_matmul():
    import tensorflow as tf

    @tf.custom_gradient
    def wide(a, b):
        def gradient(upstream):
            return _tensorflow_wide_gradients(a, b, upstream)[:2]

        return _tensorflow_product(a, b), gradient

    return wide


@functools.lru_cache(maxsize=None)
def _tensorflow_wide_affine():
    """`a @ b + bias` with the bias added in float32 before the rounding; see `_jax_wide_affine`."""
    import tensorflow as tf

    @tf.custom_gradient
    def affine(a, b, bias):
        def gradient(upstream):
            grad_a, grad_b, upstream = _tensorflow_wide_gradients(a, b, upstream)
            rows = list(range(len(upstream.shape) - 1))
            grad_bias = tf.reduce_sum(tf.cast(upstream, tf.float32), axis=rows)
            return grad_a, grad_b, tf.cast(grad_bias, bias.dtype)

        wide = tf.raw_ops.BatchMatMulV3(x=a, y=b, Tout=tf.float32)
        return tf.cast(wide + tf.cast(bias, tf.float32), tf.bfloat16), gradient

    return affine
