"""The residual stream's gradient computed once per block under JAX on a CPU.

In a pre-norm transformer the gradient reaching a block's input is an elementwise
sum: the gradient of the block's output plus the LayerNorm backward pass of each
branch. XLA's fusion pass copies cheap elementwise producers into every consumer
instead of writing them to memory, so under JAX on a CPU that sum was never
materialised: each block's weight-gradient products recomputed it, together with
the LayerNorm backward passes of the later blocks it depends on.

`materialized_gradient(x)` is the identity whose gradient `g` comes back as
`g / (1 + 0 * g)`. XLA cannot fold that one away (`0 * g` is NaN for an infinite
`g`), and its fusion pass does not copy a division into several consumers, so the
gradient is computed in one pass, written once and read by its consumers. The
divisor is elementwise on purpose: XLA turns a division by a broadcast scalar into
a multiplication by its reciprocal, which is cheap and copied again. Finite values
are unchanged (`g / 1` is exact); an infinite entry becomes NaN, and the step is
not finite either way.

Only JAX on a CPU gets the barrier. TensorFlow's XLA compiles a different gradient
graph, where the barrier measured no gain; XLA's GPU compiler fuses differently and
was not measured; the PyTorch backend has no XLA. There it is the plain identity.
"""

import functools

import keras
from keras import ops

from keras_deepvit.layers import map_ops


def materialized_gradient(x):
    """`x`, with a gradient that XLA computes once instead of inside each of its consumers.

    Example:
    >>> import numpy as np
    >>> keras.ops.convert_to_numpy(materialized_gradient(np.array([1.0, -2.0], "float32"))).tolist()
    [1.0, -2.0]
    """
    if not applies_here():
        return x
    return _jax_barrier()(ops.convert_to_tensor(x))


def applies_here():
    """Whether `materialized_gradient` changes the backward pass here (JAX on a CPU).

    Example:
    >>> applies_here() in (True, False)
    True
    """
    return keras.backend.backend() == "jax" and map_ops.xla_on_cpu()


def divided_by_unfoldable_one(upstream):
    """`upstream / (1 + 0 * upstream)`: the values of `upstream`, as a division XLA keeps.

    Example:
    >>> import numpy as np
    >>> keras.ops.convert_to_numpy(divided_by_unfoldable_one(np.array([3.0, 0.0], "float32"))).tolist()
    [3.0, 0.0]
    """
    upstream = ops.convert_to_tensor(upstream)
    zero = ops.cast(0.0, upstream.dtype)
    return upstream / (ops.cast(1.0, upstream.dtype) + zero * upstream)


@functools.lru_cache(maxsize=None)
def _jax_barrier():
    import jax

    @jax.custom_vjp
    def barrier(x):
        return x

    def forward(x):
        return x, None

    def backward(_, upstream):
        return (divided_by_unfoldable_one(upstream),)

    barrier.defvjp(forward, backward)
    return barrier
