"""Patch embeddings (plain conv and CNN stems), class tokens, learned position embeddings."""

import keras
from keras import ops

from keras_deepvit.layers.initializers import conv_initializers, trunc_normal
from keras_deepvit.layers.map_ops import conv_valid
from keras_deepvit.layers.torch_like import (
    batch_norm_fold,
    batch_norm_uses_batch_statistics,
    torch_batch_norm,
)


def _pair(value, what):
    if isinstance(value, int):
        return (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"{what} must be an int or a pair of ints, got {value!r}.")
    return value


@keras.saving.register_keras_serializable(package="keras_deepvit")
class ConvPatchEmbedding(keras.layers.Layer):
    """Splits an image into patches with one strided convolution ("valid" padding).

    Used by DeepViT-16/24/32 and Refiner-ViT with `stem="patch"` (kernel = stride =
    patch size) and by PiT (kernel = patch size, stride smaller than the kernel, so
    patches overlap). The convolution starts from PyTorch's `nn.Conv2d` default
    (weight and bias `U(+-1/sqrt(fan_in))`), which no official model changes.

    Args:
        embed_dim: int, output channels.
        patch_size: int or (h, w), convolution kernel.
        stride: int or (h, w); defaults to `patch_size`.

    Call arguments:
        inputs: `(batch, height, width, channels)` image tensor.
        training: bool; a training step of a trainable layer computes the
            convolution in the form that is fastest to differentiate
            (`map_ops.conv_valid`), with the same result.

    Returns:
        A `(batch, grid_h, grid_w, embed_dim)` feature map with
        `grid = floor((size - patch) / stride) + 1`.

    Example:
    >>> import numpy as np
    >>> layer = ConvPatchEmbedding(embed_dim=8, patch_size=16)
    >>> layer(np.zeros((1, 64, 48, 3), "float32")).shape
    (1, 4, 3, 8)
    """

    def __init__(self, embed_dim, patch_size=16, stride=None, **kwargs):
        super().__init__(**kwargs)
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.stride = stride

    def build(self, input_shape):
        kernel = _pair(self.patch_size, "patch_size")
        stride = kernel if self.stride is None else _pair(self.stride, "stride")
        fan_in = input_shape[-1] * kernel[0] * kernel[1]
        self.conv = keras.layers.Conv2D(
            self.embed_dim, kernel, strides=stride, padding="valid",
            dtype=self.dtype_policy, name="proj", **conv_initializers(fan_in),
        )
        self.conv.build(input_shape)

    def call(self, inputs, training=None):
        return _conv(self.conv, inputs, training and self.trainable)

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"embed_dim": self.embed_dim, "patch_size": self.patch_size, "stride": self.stride}
        )
        return config


@keras.saving.register_keras_serializable(package="keras_deepvit")
class ConvStemPatchEmbedding(keras.layers.Layer):
    """A small CNN stem followed by a patch projection (DeepViT-S/L, Refiner-ViT).

    The stem is a 7x7 stride-2 convolution with symmetric zero padding 3, then
    3x3 stride-1 convolutions with padding 1; every stem convolution has no bias
    and is followed by BatchNorm (eps 1e-5, as in PyTorch) and ReLU. A
    `patch_size // 2` convolution with stride `patch_size // 2` and bias then
    projects to `embed_dim`, so the total stride equals `patch_size`.
    DeepViT uses `stem_filters=(64, 64)`; Refiner-ViT uses `(32, 64, 128)`
    (the T2T-ViT style stem; Zhou et al. 2021, arXiv 2103.11886 and 2106.03714).

    The padding is explicit because Keras `padding="same"` pads a stride-2
    convolution asymmetrically at even sizes, unlike PyTorch. The convolutions
    start from PyTorch's `nn.Conv2d` default (`U(+-1/sqrt(fan_in))`) and the
    BatchNorms from weight 1, bias 0, as in the official code.

    Args:
        embed_dim: int, output channels.
        patch_size: int or (h, w), overall stride of the stem.
        stem_filters: sequence of ints, output channels of each stem convolution.

    Call arguments:
        inputs: `(batch, height, width, channels)` image tensor.
        training: bool, BatchNorm mode; a training step of a trainable layer
            also computes the convolutions in the form that is fastest to
            differentiate (`map_ops.conv_valid`), with the same result.

    Returns:
        A `(batch, grid_h, grid_w, embed_dim)` feature map.

    Example:
    >>> import numpy as np
    >>> layer = ConvStemPatchEmbedding(embed_dim=8, patch_size=16, stem_filters=(4, 4))
    >>> layer(np.zeros((1, 64, 64, 3), "float32")).shape
    (1, 4, 4, 8)
    """

    def __init__(self, embed_dim, patch_size=16, stem_filters=(64, 64), **kwargs):
        super().__init__(**kwargs)
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.stem_filters = tuple(int(f) for f in stem_filters)
        if not self.stem_filters:
            raise ValueError("stem_filters must name at least one convolution.")

    def build(self, input_shape):
        patch = _pair(self.patch_size, "patch_size")
        proj = (patch[0] // 2, patch[1] // 2)
        self.stem_convs = []
        self.stem_norms = []
        shape = tuple(input_shape)
        for i, filters in enumerate(self.stem_filters):
            first = i == 0
            size = 7 if first else 3
            conv = keras.layers.Conv2D(
                filters, size, strides=2 if first else 1, padding="valid",
                use_bias=False, dtype=self.dtype_policy, name=f"conv{i + 1}",
                **conv_initializers(shape[-1] * size * size, use_bias=False),
            )
            pad = 3 if first else 1
            padded = (shape[0], _grow(shape[1], 2 * pad), _grow(shape[2], 2 * pad), shape[3])
            conv.build(padded)
            shape = conv.compute_output_shape(padded)
            norm = torch_batch_norm(name=f"bn{i + 1}", dtype=self.dtype_policy)
            norm.build(shape)
            self.stem_convs.append(conv)
            self.stem_norms.append(norm)
        self.proj = keras.layers.Conv2D(
            self.embed_dim, proj, strides=proj, padding="valid", dtype=self.dtype_policy,
            name="proj", **conv_initializers(shape[-1] * proj[0] * proj[1]),
        )
        self.proj.build(shape)
        self._output_shape = self.proj.compute_output_shape(shape)

    def call(self, inputs, training=None):
        differentiated = training and self.trainable
        x = inputs
        for i, (conv, norm) in enumerate(zip(self.stem_convs, self.stem_norms)):
            pad = 3 if i == 0 else 1
            if batch_norm_uses_batch_statistics(norm, training):
                x = norm(_conv(conv, x, differentiated, padding=pad), training=training)
            else:
                # With moving statistics the BatchNorm is an affine map per channel:
                # folded into the convolution's kernel and bias, it costs no passes
                # over the `112 x 112` maps of its own (Keras normalises half
                # precision on a float32 copy: three passes and two casts).
                scale, shift = batch_norm_fold(norm, bias=conv.bias if conv.use_bias else None)
                x = _conv(conv, x, differentiated, padding=pad, kernel_scale=scale, bias=shift)
            x = ops.relu(x)
        return _conv(self.proj, x, differentiated)

    def compute_output_shape(self, input_shape):
        if not self.built:
            self.build(input_shape)
        return (input_shape[0],) + tuple(self._output_shape[1:])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "embed_dim": self.embed_dim,
                "patch_size": self.patch_size,
                "stem_filters": list(self.stem_filters),
            }
        )
        return config


def _conv(layer, inputs, differentiated, padding=0, kernel_scale=None, bias=None):
    """`layer(inputs)` for a "valid" `Conv2D` after `padding` zeros each side, computed
    by `map_ops.conv_valid`; with `kernel_scale` (per output channel) and `bias`, the
    convolution by the scaled kernel plus `bias`, in place of the layer's own bias.

    The `Conv2D` layer owns the weights (and their names in checkpoints); the
    function picks the fastest form of the convolution for the backend.
    """
    kernel = layer.kernel
    if kernel_scale is not None:
        kernel = ops.cast(kernel, "float32") * kernel_scale
    if bias is None and layer.use_bias:
        bias = layer.bias
    return conv_valid(
        inputs, kernel, layer.strides, differentiated=bool(differentiated), padding=padding,
        bias=bias,
    )


def _grow(size, amount):
    return None if size is None else size + amount


@keras.saving.register_keras_serializable(package="keras_deepvit")
class ClassTokens(keras.layers.Layer):
    """Prepends `num_tokens` learned tokens (class, and distillation) to a sequence.

    The tokens start from the official `trunc_normal_(std=.02)` (see
    `keras_deepvit.layers.initializers.trunc_normal`).

    Args:
        num_tokens: int, 1 for a class token, 2 for class + distillation tokens.

    Call arguments:
        inputs: `(batch, length, dim)` token sequence.

    Returns:
        `(batch, num_tokens + length, dim)`, learned tokens first.

    Example:
    >>> import numpy as np
    >>> ClassTokens()(np.zeros((2, 16, 8), "float32")).shape
    (2, 17, 8)
    """

    def __init__(self, num_tokens=1, **kwargs):
        super().__init__(**kwargs)
        self.num_tokens = num_tokens

    def build(self, input_shape):
        self.tokens = self.add_weight(
            shape=(1, self.num_tokens, input_shape[-1]),
            initializer=trunc_normal(),
            name="cls_token",
        )

    def call(self, inputs):
        tokens = ops.cast(self.tokens, inputs.dtype)
        tokens = ops.broadcast_to(tokens, (ops.shape(inputs)[0],) + tuple(tokens.shape[1:]))
        return ops.concatenate([tokens, inputs], axis=1)

    def compute_output_shape(self, input_shape):
        length = None if input_shape[1] is None else input_shape[1] + self.num_tokens
        return (input_shape[0], length, input_shape[2])

    def get_config(self):
        config = super().get_config()
        config.update({"num_tokens": self.num_tokens})
        return config


@keras.saving.register_keras_serializable(package="keras_deepvit")
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned position embedding shaped like one input example.

    For token sequences the weight is `(length, dim)` (DeepViT and Refiner-ViT:
    class token included); for feature maps it is `(height, width, dim)` (PiT,
    added to the patch map before the class tokens join). The input shape fixes
    the weight shape, so build the model at the resolution you use. The
    embedding starts from the official `trunc_normal_(std=.02)`.

    Call arguments:
        inputs: `(batch, ...)` tensor with static non-batch dimensions.

    Returns:
        `inputs + embedding`, same shape.

    Example:
    >>> import numpy as np
    >>> PositionEmbedding()(np.zeros((2, 7, 7, 8), "float32")).shape
    (2, 7, 7, 8)
    """

    def build(self, input_shape):
        shape = tuple(input_shape[1:])
        if any(d is None for d in shape):
            raise ValueError(
                "PositionEmbedding needs a static input shape (the learned embedding "
                f"has one entry per position); got {tuple(input_shape)}. Pass a fixed "
                "`input_shape` such as (224, 224, 3) to the model."
            )
        self.embedding = self.add_weight(
            shape=(1,) + shape,
            initializer=trunc_normal(),
            name="pos_embed",
        )

    def call(self, inputs):
        return inputs + ops.cast(self.embedding, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape
