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

On JAX the recomputation is `recompute_after_cotangent`, not `jax.checkpoint`:
XLA:CPU removes `jax.checkpoint`'s optimization barriers before it schedules
(its `OptimizationBarrierExpander` runs early), and then schedules the
recomputed forward pass next to the original, so every block's activations
were live together and the checkpoint saved nothing (Refiner-ViT-S, batch 2,
224: 1497 MB of XLA temporaries without, 1517 MB with). Making the
recomputation depend on the incoming gradient by data keeps it in the backward
pass on every XLA device.
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

    # Copies of the non-trainable values: they are assigned in place below, and
    # PyTorch's checkpoint refuses to recompute from an input modified since.
    values = [v.value for v in trainable] + [keras.ops.copy(v.value) for v in others]
    outputs, updated = _remat(pure, count)(*tensors, *values)
    for variable, value in zip(others, updated):
        variable.assign(value)
    return outputs


def _remat(function, anchored):
    backend = keras.backend.backend()
    if backend == "jax":
        return recompute_after_cotangent(function, anchored)
    if backend == "tensorflow":
        return _floating_arguments_watched(function)
    return keras.remat(function)


def _floating_arguments_watched(function):
    """`keras.remat(function)` with only its floating-point arguments passed through it.

    `tf.recompute_grad` watches every argument on a gradient tape, and the tape
    logs a warning for each integer one (the dropout and drop-path seed states,
    once per block at every trace). Integers have no gradient, so they reach
    `function` by closure: the recomputation reads the same tensors.
    """

    def call(*args):
        floating = [i for i, arg in enumerate(args) if keras.backend.is_float_dtype(arg.dtype)]

        def on_floating(*values):
            full = list(args)
            for i, value in zip(floating, values):
                full[i] = value
            return function(*full)

        return keras.remat(on_floating)(*[args[i] for i in floating])

    return call


def recompute_after_cotangent(function, anchored):
    """JAX: `function`, whose backward pass reruns it, only once the output gradient exists.

    The first `anchored` arguments of the rerun get `0 * g` added, `g` one entry
    of the output gradient: a data dependency that XLA can neither drop (it does
    not fold `x * 0` for floats: NaN and infinity) nor schedule around, unlike an
    optimization barrier. It costs one fused add per block input. A NaN or
    infinite first gradient entry makes the block's gradients NaN (they would
    not be finite anyway).

    Args:
        function: a pure function of arrays; returns a pytree of arrays.
        anchored: how many leading arguments the rerun depends on through `g`.

    Returns:
        A function with `function`'s values and gradients.

    Example:
    >>> import jax, jax.numpy as jnp
    >>> f = recompute_after_cotangent(lambda x: jnp.sin(x) * 2, 1)
    >>> float(jax.grad(lambda x: f(x).sum())(jnp.zeros(3))[0])
    2.0
    """
    import jax
    import jax.numpy as jnp

    # The name shows in jaxprs (`custom_vjp_call[name=recomputed ...]`).
    @jax.custom_vjp
    def recomputed(*args):
        return function(*args)

    def forward(*args):
        return function(*args), args

    def backward(args, cotangents):
        floats = [
            leaf for leaf in jax.tree_util.tree_leaves(cotangents)
            if jnp.issubdtype(leaf.dtype, jnp.inexact) and leaf.size
        ]
        if floats:
            zero = floats[0].reshape(-1)[0] * 0
            args = tuple(
                arg + zero.astype(arg.dtype) if i < anchored and jnp.issubdtype(arg.dtype, jnp.inexact)
                else arg
                for i, arg in enumerate(args)
            )
        _, vjp = jax.vjp(function, *args)
        return vjp(cotangents)

    recomputed.defvjp(forward, backward)
    return recomputed
