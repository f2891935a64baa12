"""`call_sublayer`: a built sublayer's `call` without `Layer.__call__`'s bookkeeping, on PyTorch.

On the PyTorch backend Keras runs eagerly, op by op, and every `Layer.__call__`
(input conversion, call spec and signature binding, name scopes, training and
mask resolution, autocast scopes) runs in Python for every batch. A transformer
block calls about fifteen sublayers (dense layers, LayerNorms, dropouts), and that
bookkeeping cost more than the arithmetic of a small batch: measurements in
docs/performance.md (the PyTorch-backend items of its first list).

Inside a layer's own `call` none of that bookkeeping changes the result when the
sublayer is built, its input already has the sublayer's compute dtype, its
autocast state is the one in force (the caller's `__call__` set it up: the same
dtype policy) and `training` is passed explicitly (the caller's `__call__`
resolved it). There `call_sublayer` runs `sublayer.call` directly; everywhere
else (TensorFlow and JAX, which trace each step once, symbolic inputs, unbuilt
layers, mismatched dtypes) it is the ordinary `sublayer(...)`.

One thing the bare call does skip on purpose: `torch.nn.Module` forward hooks
registered on those inner sublayers (a Keras layer is a module on PyTorch) do not
fire. Hooks on the blocks, which the model calls through `__call__`, still do;
`attention_model()` and `return_attention_scores` give the attention maps.
"""

import keras

try:  # Keras' autocast state has no public accessor.
    from keras.src.backend import get_autocast_scope
except ImportError:  # pragma: no cover - a Keras without it keeps the ordinary call
    get_autocast_scope = None


def _runs_eagerly_on_torch():
    return keras.backend.backend() == "torch" and get_autocast_scope is not None


def _direct_call_is_exact(sublayer, inputs):
    # A backend tensor (not numpy, not symbolic) already in the compute dtype: nothing to convert.
    if not sublayer.built or not keras.ops.is_tensor(inputs):
        return False
    if keras.backend.standardize_dtype(inputs.dtype) != sublayer.compute_dtype:
        return False
    scope = get_autocast_scope()
    if scope is None or scope.dtype is None:
        # `__call__` would open a scope only for a mixed policy.
        return sublayer.compute_dtype == sublayer.variable_dtype
    # A layer that does not autocast (LayerNormalization) would get the scope cleared.
    return sublayer.autocast and scope.dtype == sublayer.compute_dtype


def call_sublayer(sublayer, inputs, *args, **kwargs):
    """`sublayer(inputs, *args, **kwargs)`, as its bare `call` where that is exact.

    For use inside a layer's `call`, passing `training` explicitly to sublayers
    that take it. On TensorFlow and JAX this is `sublayer(inputs, ...)`.

    Example:
    >>> import numpy as np
    >>> dense = keras.layers.Dense(2)
    >>> dense.build((None, 3))
    >>> tuple(call_sublayer(dense, keras.ops.ones((4, 3))).shape)
    (4, 2)
    """
    if _runs_eagerly_on_torch() and _direct_call_is_exact(sublayer, inputs):
        return sublayer.call(inputs, *args, **kwargs)
    return sublayer(inputs, *args, **kwargs)
