"""Per-channel sums of channels-first maps, several in one pass where the compiler allows.

BatchNorm statistics and gradients over the refiner's `(batch, channels, tokens,
tokens)` maps, and its depthwise kernel's gradient (one sum per tap), are sums
over every axis but the channels. Under XLA on a CPU they run as one variadic
reduction: one pass over the maps for all the sums handed over together, each
summand computed inside it from the maps it depends on (nothing materialised).

- JAX: `lax.reduce` over the tuple of maps. XLA:CPU runs separate sums as
  separate passes, each recomputing its maps' producers.
- TensorFlow compiled by XLA (`jit_compile=True`) for a CPU: the XLA `Reduce`
  op of `tensorflow.compiler.tf2xla`. TensorFlow's XLA rewrites a plain
  reduction over a long dimension into a tree of `reduce-window`s (for
  precision), which its CPU code generator runs far below memory speed; it
  leaves variadic reductions alone. A single sum is reduced beside a copy of
  itself to stay variadic.
- Elsewhere (PyTorch, TensorFlow graphs, GPUs): one `ops.sum` per map.

Measurements: docs/performance.md, "Per-channel sums under XLA".
"""

import functools

import keras
from keras import ops

from keras_deepvit.layers import machine_facts, wide_matmul

#: The axes summed over: batch, rows and cols of `(batch, channels, rows, cols)` maps.
AXES = (0, 2, 3)


def channel_sums(*maps):
    """Per-channel float32 sums of each `(batch, channels, rows, cols)` map, as a tuple.

    Example:
    >>> import numpy as np
    >>> first, second = channel_sums(np.ones((2, 3, 4, 5), "float32"), np.zeros((2, 3, 4, 5), "float32"))
    >>> [float(v) for v in ops.convert_to_numpy(first)], [float(v) for v in ops.convert_to_numpy(second)]
    ([40.0, 40.0, 40.0], [0.0, 0.0, 0.0])
    """
    maps = tuple(ops.cast(m, "float32") for m in maps)
    backend = keras.backend.backend()
    if backend == "jax" and len(maps) > 1:
        from jax import lax

        zeros = tuple(ops.zeros((), "float32") for _ in maps)
        return tuple(lax.reduce(maps, zeros, _add_pairwise, AXES))
    if backend == "tensorflow" and _tensorflow_variadic_reduce_here():
        return _tensorflow_variadic_sums(maps)
    return tuple(ops.sum(m, axis=AXES) for m in maps)


def sums_in_one_pass():
    """Whether `channel_sums` reduces several maps in one pass in the function being traced.

    Callers with many summands (a depthwise kernel's taps) hand them over together
    then, and otherwise bound the memory of their materialised summands themselves.

    Example:
    >>> sums_in_one_pass() in (True, False)
    True
    """
    backend = keras.backend.backend()
    if backend == "jax":
        return not machine_facts.has_gpu(backend)
    return backend == "tensorflow" and _tensorflow_variadic_reduce_here()


def channel_moments(maps):
    """Per-channel float32 `(mean, variance)` of `(batch, channels, rows, cols)` maps.

    The variance is the biased one, `mean((x - mean)^2)`. Keras' `ops.moments`
    computes them, except under TensorFlow's XLA on a CPU, where the two passes
    of `tf.nn.moments` are made with `channel_sums`.

    Example:
    >>> import numpy as np
    >>> maps = np.arange(8, dtype="float32").reshape(2, 1, 2, 2)
    >>> mean, variance = channel_moments(maps)
    >>> float(ops.convert_to_numpy(mean)[0]), float(ops.convert_to_numpy(variance)[0])
    (3.5, 5.25)
    """
    maps = ops.cast(maps, "float32")
    if not (keras.backend.backend() == "tensorflow" and _tensorflow_variadic_reduce_here()):
        return ops.moments(maps, axes=AXES)
    shape = ops.shape(maps)
    count = ops.cast(shape[0] * shape[2] * shape[3], "float32")
    (total,) = channel_sums(maps)
    mean = total / count
    (squares,) = channel_sums(ops.square(maps - mean[None, :, None, None]))
    return mean, squares / count


def _add_pairwise(first, second):
    """The reducer of a variadic sum: two tuples of partial sums, added entry by entry."""
    return tuple(a + b for a, b in zip(first, second))


def _tensorflow_variadic_reduce_here():
    return (
        wide_matmul._tensorflow_compiles_with_xla()
        and not machine_facts.has_gpu("tensorflow")
        and _tensorflow_xla_ops() is not None
    )


@functools.lru_cache(maxsize=None)
def _tensorflow_xla_ops():
    try:  # TensorFlow's wrappers of XLA's own ops; no public module exports `Reduce`.
        from tensorflow.compiler.tf2xla.python import xla
    except ImportError:
        return None  # A TensorFlow without them keeps plain sums: slower, never wrong.
    return xla if hasattr(xla, "variadic_reduce") else None


@functools.lru_cache(maxsize=None)
def _tensorflow_reducer(count):
    """A concrete function adding two tuples of `count` float32 scalars, for `variadic_reduce`."""
    import tensorflow as tf

    def add(*values):
        return tuple(a + b for a, b in zip(values[:count], values[count:]))

    scalar = tf.TensorSpec([], tf.float32)
    with tf.init_scope():  # built once, outside whichever function is being traced
        return tf.function(add).get_concrete_function(*[scalar] * (2 * count))


def _tensorflow_variadic_sums(maps):
    import tensorflow as tf

    # A one-operand reduction is a plain one, which XLA rewrites into a tree.
    operands = maps if len(maps) > 1 else maps * 2
    zeros = [tf.constant(0.0)] * len(operands)
    sums = _tensorflow_xla_ops().variadic_reduce(
        list(operands), zeros, dimensions_to_reduce=list(AXES),
        reducer=_tensorflow_reducer(len(operands)),
    )
    return tuple(sums[: len(maps)])
