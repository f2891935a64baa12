"""Rematerialisation of a whole layer whose call updates state (BatchNorm statistics, RNG seeds).

`keras.RematScope` wraps a layer's `call` in the backend's checkpointing
(`jax.checkpoint`, `tf.recompute_grad`, `torch.utils.checkpoint`) as it is,
which breaks on the blocks of this package: keyword arguments such as
`training` become traced arrays (JAX) or are refused (TensorFlow graphs), and a
recomputed forward pass updates BatchNorm statistics a second time (PyTorch).
`rematerialized_call` makes the call a pure function first: the layer's
variables go in as explicit inputs (so every backend differentiates through
them), the call runs in a `keras.StatelessScope`, and the updated
non-trainable values (moving statistics, seed states) come out as outputs that
are assigned once, outside the recomputed region. A recomputation therefore
sees the same seeds and the same statistics as the forward pass.
"""

import keras


def rematerialized_call(layer, forward, *tensors):
    """`forward(*tensors)`, recomputed in the backward pass instead of stored.

    Args:
        layer: the layer whose variables `forward` reads and updates.
        forward: a function of tensors only (bind Python options such as
            `training` in a closure); returns a tensor or a tuple of tensors.
        *tensors: its inputs.

    Returns:
        What `forward` returns. The layer's non-trainable variables are updated
        as a plain call would update them.

    Example:
    >>> import numpy as np, keras
    >>> layer = keras.layers.Dense(2); layer.build((None, 3))
    >>> out = rematerialized_call(layer, lambda x: layer(x), np.ones((1, 3), "float32"))
    >>> tuple(out.shape)
    (1, 2)
    """
    trainable = list(layer.trainable_variables)
    others = list(layer.non_trainable_variables)
    variables = trainable + others
    count = len(tensors)

    def pure(*args):
        mapping = list(zip(variables, args[count:]))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            outputs = forward(*args[:count])
            updated = [scope.get_current_value(v) for v in others]
        return outputs, updated

    outputs, updated = keras.remat(pure)(*tensors, *[v.value for v in variables])
    for variable, value in zip(others, updated):
        variable.assign(value)
    return outputs
