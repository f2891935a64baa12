"""Stochastic depth: drop a whole residual branch per sample."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_deepvit")
class DropPath(keras.layers.Layer):
    """Drops the residual branch of whole samples during training.

    Each sample's branch is kept with probability `1 - rate` and rescaled by
    `1 / (1 - rate)`, so the expectation is unchanged (Huang et al. 2016,
    "Deep Networks with Stochastic Depth", arXiv 1603.09382).

    Args:
        rate: float in [0, 1), probability of dropping a sample's branch.
        seed: optional int seed for the random mask.

    Call arguments:
        inputs: tensor of any rank whose first axis is the batch.
        training: bool; the layer is the identity unless `training=True`.

    Returns:
        A tensor of the same shape as `inputs`.

    Example:
    >>> import numpy as np
    >>> layer = DropPath(rate=0.5, seed=0)
    >>> x = np.ones((4, 3, 2), "float32")
    >>> bool(np.all(np.asarray(layer(x, training=False)) == 1.0))
    True
    """

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"DropPath rate must be in [0, 1), got {rate!r}.")
        self.rate = rate
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True
        # No weights: built from the start, as Keras' Dropout. A model with an unbuilt
        # layer makes JAX's first predict/fit call the whole model eagerly to build it.
        self.built = True

    def call(self, inputs, training=None):
        if not training or self.rate == 0.0:
            return inputs
        keep_prob = 1.0 - self.rate
        mask_shape = (ops.shape(inputs)[0],) + (1,) * (len(inputs.shape) - 1)
        keep = keras.random.uniform(
            mask_shape, dtype=inputs.dtype, seed=self.seed_generator
        )
        keep = ops.floor(keep + keep_prob)
        return inputs / keep_prob * keep

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"rate": self.rate, "seed": self.seed})
        return config
