"""PiT's pooling layer: halve the token grid, widen the channels."""

import keras
from keras import ops

from keras_deepvit.layers.initializers import dense_initializers, depthwise_initializers
from keras_deepvit.layers.map_ops import depthwise_conv_valid


@keras.saving.register_keras_serializable(package="keras_deepvit")
class ConvHeadPooling(keras.layers.Layer):
    """Pooling of PiT (Heo et al. 2021, "Rethinking Spatial Dimensions of Vision
    Transformers", arXiv 2103.16302, Sec. 3.2).

    The spatial tokens, as a feature map, go through a depthwise 3x3 convolution
    with stride 2, explicit zero padding 1 and channel multiplier
    `output_dim // input_dim` (with bias); the class (and distillation) tokens go
    through a dense layer to the same width. Padding is explicit because Keras
    `padding="same"` pads even sizes asymmetrically (0, 1), unlike PyTorch's
    symmetric (1, 1): every PiT's second pooling sees an even grid. Both start
    from PyTorch's defaults, as in the official PiT (weights and biases
    `U(+-1/sqrt(fan_in))`; the depthwise convolution's fan-in is its 3x3 kernel).

    Args:
        output_dim: int, a multiple of the input width.

    Call arguments:
        feature_map: `(batch, height, width, dim)` spatial tokens.
        tokens: `(batch, num_tokens, dim)` class/distillation tokens.

    Returns:
        `(feature_map, tokens)` of widths `output_dim`, the map of spatial size
        `floor((size - 1) / 2) + 1`.

    Example:
    >>> import numpy as np
    >>> layer = ConvHeadPooling(output_dim=16)
    >>> fmap, tok = layer(np.zeros((1, 7, 7, 8), "float32"), np.zeros((1, 1, 8), "float32"))
    >>> fmap.shape, tok.shape
    ((1, 4, 4, 16), (1, 1, 16))
    """

    def __init__(self, output_dim, **kwargs):
        super().__init__(**kwargs)
        self.output_dim = output_dim

    def build(self, feature_map_shape, tokens_shape=None):
        dim = feature_map_shape[-1]
        if self.output_dim % dim:
            raise ValueError(
                f"Layer '{self.name}': output_dim={self.output_dim} must be a multiple of "
                f"the input width {dim} (depthwise convolution with a channel multiplier)."
            )
        self.conv = keras.layers.DepthwiseConv2D(
            3, strides=2, padding="valid", depth_multiplier=self.output_dim // dim,
            dtype=self.dtype_policy, name="conv", **depthwise_initializers(3),
        )
        padded = tuple(feature_map_shape[:1]) + tuple(
            None if s is None else s + 2 for s in feature_map_shape[1:3]
        ) + (dim,)
        self.conv.build(padded)
        self.fc = keras.layers.Dense(
            self.output_dim, dtype=self.dtype_policy, name="fc",
            **dense_initializers("torch_default", dim),
        )
        self.fc.build((None, None, dim))

    def call(self, feature_map, tokens):
        x = ops.pad(feature_map, ((0, 0), (1, 1), (1, 1), (0, 0)))
        # The convolution layer owns the weights; `depthwise_conv_valid` computes
        # it in the form each backend runs fastest (XLA's own strided depthwise
        # convolution with a channel multiplier is very slow to differentiate).
        x = depthwise_conv_valid(x, self.conv.kernel, strides=2) + ops.cast(self.conv.bias, x.dtype)
        return x, self.fc(tokens)

    def get_config(self):
        config = super().get_config()
        config.update({"output_dim": self.output_dim})
        return config
