"""Keras layers configured with PyTorch's numerical conventions.

PyTorch and Keras disagree on defaults that change the numbers: LayerNorm eps
(official models: 1e-6; Keras: 1e-3), BatchNorm eps (PyTorch 1e-5; Keras 1e-3)
and momentum (PyTorch updates with 0.1, i.e. Keras momentum 0.9), and GELU (the
official models use the exact erf form; `keras.ops.gelu` defaults to tanh).
Every layer of this package is built through these helpers so the conventions
live in one place.
"""

import keras
from keras import ops

LAYER_NORM_EPSILON = 1e-6
BATCH_NORM_EPSILON = 1e-5
BATCH_NORM_MOMENTUM = 0.9


def torch_layer_norm(name, dtype=None, epsilon=LAYER_NORM_EPSILON):
    """LayerNormalization over the last axis with the official eps (1e-6)."""
    return keras.layers.LayerNormalization(epsilon=epsilon, name=name, dtype=dtype)


def torch_batch_norm(name, axis=-1, dtype=None):
    """BatchNormalization with PyTorch's eps (1e-5) and momentum (0.1 -> 0.9)."""
    return FusedTrainingBatchNormalization(
        axis=axis, epsilon=BATCH_NORM_EPSILON, momentum=BATCH_NORM_MOMENTUM,
        name=name, dtype=dtype,
    )


@keras.saving.register_keras_serializable(package="keras_deepvit")
class FusedTrainingBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` whose training step uses PyTorch's fused kernel
    on the PyTorch backend; the same layer everywhere else and in every other mode.

    Keras normalises with batch statistics as a chain of generic ops (mean,
    square, mean, subtract, multiply, add) and differentiates that chain op by
    op: about nine passes over the input forward and more backward. On the
    refiner's `B x 6H x N x N` maps those passes are most of a Refiner-ViT
    training step on the PyTorch backend. `torch.native_batch_norm` does the
    same computation in two passes each way, and returns the batch mean and
    (biased, as in Keras) variance, which update the moving averages exactly as
    Keras does. The outputs agree with Keras' to float32 rounding (Keras'
    variance, `E[x^2] - E[x]^2`, is the less accurate of the two).

    Example:
    >>> import numpy as np
    >>> layer = FusedTrainingBatchNormalization(axis=1)
    >>> out = keras.ops.convert_to_numpy(layer(np.arange(8.0).reshape(2, 2, 2), training=True))
    >>> bool(np.allclose(out.mean(axis=(0, 2)), 0, atol=1e-6) and np.allclose(out.std(axis=(0, 2)), 1, atol=1e-3))
    True
    """

    def call(self, inputs, training=None, mask=None):
        if not (
            keras.backend.backend() == "torch"
            and training
            and self.trainable
            and mask is None
            and not self.renorm
            and not self.synchronized
        ):
            return super().call(inputs, training=training, mask=mask)
        import torch

        inputs = ops.convert_to_tensor(inputs)
        statistics_dtype = keras.backend.result_type(inputs.dtype, "float32")
        # Half-precision maps go to the kernel as they are: it accumulates in float32 and
        # rounds its output once, as Keras' layer does with a float32 copy, without
        # writing and differentiating that copy of the refiner's expanded maps.
        x = inputs if _takes_half_inputs(inputs) else ops.cast(inputs, statistics_dtype)
        axis = self.axis % x.ndim
        channels_second = x.movedim(axis, 1) if axis != 1 else x
        gamma = ops.cast(self.gamma, statistics_dtype) if self.scale else None
        beta = ops.cast(self.beta, statistics_dtype) if self.center else None
        outputs, mean, inverse_std = torch.native_batch_norm(
            channels_second, gamma, beta, None, None, True, 0.0, self.epsilon
        )
        if axis != 1:
            outputs = outputs.movedim(1, axis)
        with torch.no_grad():
            # The kernel's biased batch variance, back from 1 / sqrt(variance + eps) in
            # float64: exact to float32 rounding relative to variance + eps, the
            # quantity inference divides by.
            variance = (inverse_std.double() ** -2 - self.epsilon).clamp_(min=0).to(mean.dtype)
            update_moving_statistics(self, mean, variance)
        return ops.cast(outputs, self.compute_dtype)


def _takes_half_inputs(inputs):
    """Whether PyTorch's batch-norm kernel takes these half-precision inputs with float32
    weights (its mixed-type form: bfloat16 on CPUs; CUDA takes float16 too)."""
    dtype = keras.backend.standardize_dtype(inputs.dtype)
    if dtype == "bfloat16":
        return True
    return dtype == "float16" and inputs.device.type == "cuda"


def update_moving_statistics(layer, mean, variance):
    """Moves a BatchNormalization `layer`'s averages toward batch statistics, as Keras does.

    `moving = moving * momentum + batch * (1 - momentum)`, in the statistics' dtype
    (float32 under mixed precision, as in `keras.layers.BatchNormalization`).

    Example:
    >>> import numpy as np
    >>> bn = torch_batch_norm("bn"); bn.build((None, 2))
    >>> update_moving_statistics(bn, np.ones(2, "float32"), np.full(2, 3.0, "float32"))
    >>> [round(float(v), 3) for v in keras.ops.convert_to_numpy(bn.moving_variance)]
    [1.2, 1.2]
    """
    for moving, batch in ((layer.moving_mean, mean), (layer.moving_variance, variance)):
        batch = ops.convert_to_tensor(batch)
        current = ops.cast(moving, batch.dtype)
        moving.assign(current * layer.momentum + batch * (1.0 - layer.momentum))


def exact_gelu(x):
    """GELU with the exact erf formulation, as `torch.nn.GELU()`: `x/2 (1 + erf(x/sqrt(2)))`.

    PyTorch runs its fused kernel. Elsewhere the formula is written out as
    PyTorch's CPU kernel computes it: `keras.ops.gelu(approximate=False)` is an
    `erfc` on JAX whose gradient made XLA's MLP backward 1.5x slower (DeepViT-S
    block at batch 8: 208 against 140 ms).

    Example:
    >>> import numpy as np
    >>> values = ops.convert_to_numpy(exact_gelu(np.array([-1.0, 0.0, 2.0], "float32")))
    >>> [round(float(v), 4) for v in values]
    [-0.1587, 0.0, 1.9545]
    """
    if keras.backend.backend() == "torch":
        return ops.gelu(x, approximate=False)
    x = ops.convert_to_tensor(x)
    half = ops.cast(0.5, x.dtype)
    return half * x * (ops.cast(1.0, x.dtype) + ops.erf(x * ops.cast(0.5**0.5, x.dtype)))


def batch_norm_uses_batch_statistics(layer, training):
    """Whether a BatchNormalization `layer` normalises with batch statistics in
    this call (Keras' rule: `training` is truthy and the layer is trainable)."""
    return bool(training) and layer.trainable


def batch_norm_fold(layer, bias=None):
    """Inference-mode BatchNormalization of `x + bias` as `x * scale + shift` (float32 vectors).

    `shift = (bias - moving_mean) * scale + beta`: the bias and the mean are
    subtracted before scaling, so a tiny variance (a large `scale`) does not turn
    two large products into a cancellation. Computed from the layer's current
    variables on every call, so a fold built on it never goes stale after
    training or weight loading.

    Example:
    >>> import numpy as np
    >>> bn = torch_batch_norm("bn"); bn.build((None, 2))
    >>> scale, shift = batch_norm_fold(bn, bias=np.array([1.0, 2.0], "float32"))
    >>> np.round(keras.ops.convert_to_numpy(shift), 3).tolist()
    [1.0, 2.0]
    """
    variance = ops.cast(layer.moving_variance, "float32")
    scale = ops.rsqrt(variance + layer.epsilon)
    if layer.scale:
        scale = scale * ops.cast(layer.gamma, "float32")
    centred = -ops.cast(layer.moving_mean, "float32")
    if bias is not None:
        centred = centred + ops.cast(bias, "float32")
    shift = centred * scale
    if layer.center:
        shift = shift + ops.cast(layer.beta, "float32")
    return scale, shift
