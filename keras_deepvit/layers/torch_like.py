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
    return keras.layers.BatchNormalization(
        axis=axis, epsilon=BATCH_NORM_EPSILON, momentum=BATCH_NORM_MOMENTUM,
        name=name, dtype=dtype,
    )


def exact_gelu(x):
    """GELU with the exact erf formulation, as `torch.nn.GELU()`."""
    return ops.gelu(x, approximate=False)
