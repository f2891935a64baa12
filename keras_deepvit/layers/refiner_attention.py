"""Refiner-ViT's attention: refined (expanded + locally convolved) maps and shared maps."""

import keras
from keras import ops

from keras_deepvit.layers.attention import MultiHeadSelfAttention
from keras_deepvit.layers.torch_like import torch_batch_norm

#: Expansion of the shared blocks' refiner; fixed in the official code (DLA default).
SHARED_EXPANSION_RATIO = 3


@keras.saving.register_keras_serializable(package="keras_deepvit")
class DistributedLocalAttention(keras.layers.Layer):
    """The refiner ("DLA") of Refiner-ViT (Zhou et al. 2021, arXiv 2106.03714, Sec. 3).

    Treats the heads' `(tokens x tokens)` attention maps as an image with `heads`
    channels: a 1x1 convolution expands to `round(heads * expansion_ratio)`
    channels (BatchNorm, ReLU6), a depthwise 3x3 convolution with symmetric zero
    padding mixes neighbouring entries (BatchNorm, ReLU6), a 1x1 convolution
    projects back to `heads` (BatchNorm), and the input is added. The whole map
    is convolved, the class token's row and column included, as in the official
    code. 1x1 convolutions are computed as dense layers on the channel axis.

    Args:
        expansion_ratio: float; 1 skips the expansion convolution.
        kernel_size: int, odd, the depthwise kernel.

    Call arguments:
        inputs: `(batch, heads, tokens, tokens)` maps (PyTorch layout).
        training: bool, BatchNorm mode.

    Returns:
        Refined maps, same shape.

    Example:
    >>> import numpy as np
    >>> DistributedLocalAttention()(np.zeros((1, 4, 5, 5), "float32")).shape
    (1, 4, 5, 5)
    """

    def __init__(self, expansion_ratio=3, kernel_size=3, **kwargs):
        super().__init__(**kwargs)
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}.")
        self.expansion_ratio = expansion_ratio
        self.kernel_size = kernel_size

    def build(self, input_shape):
        heads = input_shape[1]
        hidden = int(round(heads * self.expansion_ratio))
        self.hidden = hidden
        channels_last = (None, None, None, heads)
        hidden_shape = (None, None, None, hidden)
        dtype = self.dtype_policy
        self.conv_exp = None
        if self.expansion_ratio != 1:
            self.conv_exp = keras.layers.Dense(hidden, use_bias=False, dtype=dtype, name="conv_exp")
            self.conv_exp.build(channels_last)
            self.bn1 = torch_batch_norm("bn1", dtype=dtype)
            self.bn1.build(hidden_shape)
        self.depth_sep_conv = keras.layers.DepthwiseConv2D(
            self.kernel_size, padding="same", use_bias=False, dtype=dtype, name="depth_sep_conv"
        )
        self.depth_sep_conv.build(hidden_shape)
        self.bn2 = torch_batch_norm("bn2", dtype=dtype)
        self.bn2.build(hidden_shape)
        self.conv_pro = keras.layers.Dense(heads, use_bias=False, dtype=dtype, name="conv_pro")
        self.conv_pro.build(hidden_shape)
        self.bn3 = torch_batch_norm("bn3", dtype=dtype)
        self.bn3.build(channels_last)

    def call(self, inputs, training=None):
        x = ops.transpose(inputs, (0, 2, 3, 1))
        identity = x
        if self.conv_exp is not None:
            x = ops.relu6(self.bn1(self.conv_exp(x), training=training))
        x = ops.relu6(self.bn2(self.depth_sep_conv(x), training=training))
        x = self.bn3(self.conv_pro(x), training=training) + identity
        return ops.transpose(x, (0, 3, 1, 2))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"expansion_ratio": self.expansion_ratio, "kernel_size": self.kernel_size})
        return config


@keras.saving.register_keras_serializable(package="keras_deepvit")
class RefinerAttention(MultiHeadSelfAttention):
    """Refiner-ViT self-attention, computing or sharing attention maps.

    A computing block (`share_attention=False`) forms
    `softmax(q k^T * scale) + scale * previous_maps` (the residual between blocks;
    the first block has no previous maps), optionally refines it
    (`refine_attention=True`: DLA then BatchNorm `adapt_bn`) and passes it on.
    A shared block (`share_attention=True`) computes no q/k: its `qkv`
    projection yields only `v`, it attends with `adapt_bn(DLA(previous)) * scale`
    and passes `previous` on unchanged.

    Args:
        num_heads: int.
        share_attention: bool, reuse the previous block's maps.
        refine_attention: bool, refine the fresh maps of a computing block.
        expansion_ratio: float, DLA expansion (the official `head_expand` for
            computing blocks; shared blocks use 3).
        qkv_bias, attention_dropout, proj_dropout: as `MultiHeadSelfAttention`.

    Call arguments:
        inputs: `(batch, tokens, dim)`.
        previous_attention: `(batch, heads, tokens, tokens)` or None (first block).
        training: bool.

    Returns:
        `(outputs, next_attention)`: outputs `(batch, tokens, dim)` and the maps to
        pass to the next block. With `return_attention_scores=True`, a third
        element: the maps this block multiplied `v` with.

    Example:
    >>> import numpy as np
    >>> layer = RefinerAttention(num_heads=2)
    >>> out, maps = layer(np.zeros((1, 5, 8), "float32"))
    >>> maps.shape
    (1, 2, 5, 5)
    """

    def __init__(
        self, num_heads, share_attention=False, refine_attention=False, expansion_ratio=3,
        **kwargs,
    ):
        super().__init__(num_heads, **kwargs)
        self.share_attention = share_attention
        self.refine_attention = refine_attention
        self.expansion_ratio = expansion_ratio

    def qkv_width(self, dim):
        return dim if self.share_attention else 3 * dim

    def build_attention_transform(self):
        self.refiner = None
        if not (self.share_attention or self.refine_attention):
            return
        self.refiner = DistributedLocalAttention(
            self.expansion_ratio, dtype=self.dtype_policy, name="DLA"
        )
        self.refiner.build((None, self.num_heads, None, None))
        self.adapt_bn = torch_batch_norm("adapt_bn", axis=1, dtype=self.dtype_policy)
        self.adapt_bn.build((None, self.num_heads, None, None))

    def transform_attention(self, attention, training=None):
        if self.refiner is None:
            return attention
        return self.adapt_bn(self.refiner(attention, training=training), training=training)

    def call(self, inputs, previous_attention=None, return_attention_scores=False, training=None):
        scale = self.scale
        if self.share_attention:
            if previous_attention is None:
                raise ValueError(
                    f"Layer '{self.name}' shares attention maps, so it needs the previous "
                    "block's maps; the first block of a Refiner-ViT must compute attention."
                )
            (v,) = self.split_heads(self.qkv(inputs), 1)
            attention = self.transform_attention(previous_attention, training=training)
            attention = attention * ops.cast(scale, attention.dtype)
            next_attention = previous_attention
        else:
            q, k, v = self.split_heads(self.qkv(inputs), 3)
            # The official code scales q and k by sqrt(scale) each, not the logits.
            root = ops.cast(scale**0.5, q.dtype)
            logits = ops.einsum("bqhd,bkhd->bhqk", q * root, k * root)
            attention = ops.cast(ops.softmax(ops.cast(logits, "float32"), axis=-1), q.dtype)
            if previous_attention is not None:
                attention = attention + ops.cast(previous_attention, attention.dtype) * ops.cast(
                    scale, attention.dtype
                )
            attention = self.attn_drop(attention, training=training)
            attention = self.transform_attention(attention, training=training)
            next_attention = attention
        out = self.output_projection(self.attend(attention, v), training=training)
        if return_attention_scores:
            return out, next_attention, attention
        return out, next_attention

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "share_attention": self.share_attention,
                "refine_attention": self.refine_attention,
                "expansion_ratio": self.expansion_ratio,
            }
        )
        return config
