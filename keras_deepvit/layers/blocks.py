"""Transformer blocks: the pre-norm block with DeepViT's scale adjustment, its
re-attention and Refiner variants, and the MLP."""

import keras
from keras import ops

from keras_deepvit.layers.attention import MultiHeadSelfAttention
from keras_deepvit.layers.dense import Dense
from keras_deepvit.layers.drop_path import DropPath
from keras_deepvit.layers.gradient_barrier import materialized_gradient
from keras_deepvit.layers.initializers import dense_initializers, validate_initializer
from keras_deepvit.layers.re_attention import ReAttention
from keras_deepvit.layers.refiner_attention import RefinerAttention
from keras_deepvit.layers.remat import rematerialized_call
from keras_deepvit.layers.sublayer_call import call_sublayer
from keras_deepvit.layers.torch_like import exact_gelu, torch_layer_norm


@keras.saving.register_keras_serializable(package="keras_deepvit")
class Mlp(keras.layers.Layer):
    """Two dense layers with exact GELU between; optional per-channel output scale.

    Args:
        hidden_dim: int, width of the hidden layer.
        dropout: float, dropout after each dense layer.
        channel_scale: bool; if True the output is multiplied by a learned
            per-channel vector (`scale_channel` of Refiner-ViT, initialised to 1e-5
            as in the official code).
        initializer: "trunc_normal" or "torch_default", the scheme of both dense
            layers (see `MultiHeadSelfAttention`).

    Call arguments:
        inputs: `(..., dim)`.
        training: bool.

    Returns:
        `(..., dim)`.

    Example:
    >>> import numpy as np
    >>> Mlp(hidden_dim=12)(np.zeros((1, 3, 4), "float32")).shape
    (1, 3, 4)
    """

    def __init__(
        self, hidden_dim, dropout=0.0, channel_scale=False, initializer="trunc_normal", **kwargs
    ):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.dropout = dropout
        self.channel_scale = channel_scale
        self.initializer = validate_initializer(initializer, type(self).__name__)

    def build(self, input_shape):
        dim = input_shape[-1]
        self.fc1 = Dense(
            self.hidden_dim, dtype=self.dtype_policy, name="fc1",
            **dense_initializers(self.initializer, dim),
        )
        self.fc1.build(input_shape)
        self.fc2 = Dense(
            dim, dtype=self.dtype_policy, name="fc2",
            **dense_initializers(self.initializer, self.hidden_dim),
        )
        self.fc2.build(tuple(input_shape[:-1]) + (self.hidden_dim,))
        self.drop = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
        if self.channel_scale:
            self.scale_channel = self.add_weight(
                shape=(dim,), initializer=keras.initializers.Constant(1e-5), name="scale_channel"
            )

    def call(self, inputs, training=None):
        x = call_sublayer(self.drop, exact_gelu(call_sublayer(self.fc1, inputs)), training=training)
        x = call_sublayer(self.drop, call_sublayer(self.fc2, x), training=training)
        if self.channel_scale:
            x = x * ops.cast(self.scale_channel, x.dtype)
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "dropout": self.dropout,
                "channel_scale": self.channel_scale,
                "initializer": self.initializer,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_deepvit")
class TransformerBlock(keras.layers.Layer):
    """Pre-norm transformer block with DeepViT's scale adjustment.

    `x = x + attn(LN(a * x)) / a`, then `x = x + mlp(LN(a * x)) / a`, where `a` is
    `scale_adjustment` (1 gives the standard ViT block; DeepViT-S/L and
    Refiner-ViT use 0.5). Stochastic depth drops each residual branch.

    Args:
        num_heads: int.
        mlp_ratio: float, MLP hidden width over the block width.
        qkv_bias: bool.
        scale_adjustment: float `a` above.
        drop_path_rate: float, stochastic depth rate of this block.
        dropout: float, dropout after the projections.
        attention_dropout: float, dropout on the attention maps.
        rematerialize: bool; in training, recompute the block's activations
            (the attention maps above all) in the backward pass instead of
            storing them (see `keras_deepvit.layers.remat`).
        initializer: "trunc_normal" (DeepViT, Refiner-ViT) or "torch_default"
            (PiT), the scheme of every dense layer in the block (see
            `MultiHeadSelfAttention`); the LayerNorms start at weight 1, bias 0.

    Call arguments:
        inputs: `(batch, tokens, dim)`.
        return_attention_scores: bool, also return the attention maps.
        training: bool.
        query_tokens: None, or an int `r`: compute the block's output for the
            first `r` tokens only (they still attend to every token), exactly
            as those rows of the full output. The last block of a model whose
            output reads only its class token(s) runs this way: its MLP and
            attention output skip the patch tokens nothing reads.

    Returns:
        `(batch, tokens, dim)` (`(batch, r, dim)` with `query_tokens=r`), or
        `(outputs, maps)`.

    Example:
    >>> import numpy as np
    >>> TransformerBlock(num_heads=2)(np.zeros((1, 5, 8), "float32")).shape
    (1, 5, 8)
    """

    def __init__(
        self, num_heads, mlp_ratio=4.0, qkv_bias=True, scale_adjustment=1.0,
        drop_path_rate=0.0, dropout=0.0, attention_dropout=0.0, rematerialize=False,
        initializer="trunc_normal", **kwargs,
    ):
        super().__init__(**kwargs)
        self.initializer = validate_initializer(initializer, type(self).__name__)
        self.rematerialize = rematerialize
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.qkv_bias = qkv_bias
        self.scale_adjustment = scale_adjustment
        self.drop_path_rate = drop_path_rate
        self.dropout = dropout
        self.attention_dropout = attention_dropout

    def make_attention(self):
        """Override point: the attention sublayer (named `attn`)."""
        return MultiHeadSelfAttention(self.num_heads, **self.attention_kwargs())

    def attention_kwargs(self):
        return dict(
            qkv_bias=self.qkv_bias, attention_dropout=self.attention_dropout,
            proj_dropout=self.dropout, initializer=self.initializer, dtype=self.dtype_policy,
            name="attn",
        )

    def mlp_channel_scale(self):
        return False

    def build(self, input_shape, *args, **kwargs):
        dim = input_shape[-1]
        self.norm1 = torch_layer_norm("norm1", dtype=self.dtype_policy)
        self.norm1.build(input_shape)
        self.attn = self.make_attention()
        self.attn.build(input_shape)
        self.norm2 = torch_layer_norm("norm2", dtype=self.dtype_policy)
        self.norm2.build(input_shape)
        self.mlp = Mlp(
            int(dim * self.mlp_ratio), dropout=self.dropout,
            channel_scale=self.mlp_channel_scale(), initializer=self.initializer,
            dtype=self.dtype_policy, name="mlp",
        )
        self.mlp.build(input_shape)
        self.drop_path = DropPath(self.drop_path_rate, dtype=self.dtype_policy)

    def scaled(self, x):
        if self.scale_adjustment == 1.0:
            return x
        return x * ops.cast(self.scale_adjustment, x.dtype)

    def unscaled(self, x):
        if self.scale_adjustment == 1.0:
            return x
        return x / ops.cast(self.scale_adjustment, x.dtype)

    def residual_mlp(self, x, training=None):
        if training:
            x = materialized_gradient(x)
        branch = call_sublayer(self.mlp, call_sublayer(self.norm2, self.scaled(x)), training=training)
        return x + call_sublayer(self.drop_path, self.unscaled(branch), training=training)

    def rematerializes(self, training, return_attention_scores):
        """Whether this call recomputes its activations in the backward pass."""
        return self.rematerialize and bool(training) and not return_attention_scores

    def call(self, inputs, return_attention_scores=False, training=None, query_tokens=None):
        if self.rematerializes(training, return_attention_scores):
            return rematerialized_call(
                self, lambda x: self.block_outputs(x, training=training, query_tokens=query_tokens), inputs
            )
        return self.block_outputs(
            inputs, return_attention_scores, training=training, query_tokens=query_tokens
        )

    def block_outputs(self, inputs, return_attention_scores=False, training=None, query_tokens=None):
        # Not named `forward`: on the PyTorch backend a Keras layer is a `torch.nn.Module`,
        # whose `__call__` runs `forward` directly, so a `forward` here bypassed `call`
        # (and with it the rematerialisation) there.
        if training:
            inputs = materialized_gradient(inputs)
        result = call_sublayer(
            self.attn, call_sublayer(self.norm1, self.scaled(inputs)),
            return_attention_scores=return_attention_scores, training=training,
            query_tokens=query_tokens,
        )
        branch, maps = result if return_attention_scores else (result, None)
        shortcut = inputs if query_tokens is None else inputs[:, :query_tokens]
        x = shortcut + call_sublayer(self.drop_path, self.unscaled(branch), training=training)
        x = self.residual_mlp(x, training=training)
        return (x, maps) if return_attention_scores else x

    def compute_output_spec(
        self, inputs, return_attention_scores=False, training=None, query_tokens=None
    ):
        # The attention's output is the block's (same tokens, same width): shapes by
        # arithmetic instead of a trace of the whole block per symbolic call.
        return self.attn.compute_output_spec(
            inputs, return_attention_scores=return_attention_scores, query_tokens=query_tokens
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "mlp_ratio": self.mlp_ratio,
                "qkv_bias": self.qkv_bias,
                "scale_adjustment": self.scale_adjustment,
                "drop_path_rate": self.drop_path_rate,
                "dropout": self.dropout,
                "attention_dropout": self.attention_dropout,
                "rematerialize": self.rematerialize,
                "initializer": self.initializer,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_deepvit")
class ReAttentionBlock(TransformerBlock):
    """DeepViT block: `TransformerBlock` whose attention is `ReAttention`.

    Args:
        apply_transform: bool, re-attend in this block.
        transform_scale: bool, scale the re-attention maps by `head_dim**-0.5`.
        (other arguments as `TransformerBlock`)

    Example:
    >>> import numpy as np
    >>> block = ReAttentionBlock(num_heads=2, apply_transform=True, scale_adjustment=0.5)
    >>> block(np.zeros((1, 5, 8), "float32")).shape
    (1, 5, 8)
    """

    def __init__(self, num_heads, apply_transform=True, transform_scale=False, **kwargs):
        super().__init__(num_heads, **kwargs)
        self.apply_transform = apply_transform
        self.transform_scale = transform_scale

    def make_attention(self):
        return ReAttention(
            self.num_heads, apply_transform=self.apply_transform,
            transform_scale=self.transform_scale, **self.attention_kwargs(),
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {"apply_transform": self.apply_transform, "transform_scale": self.transform_scale}
        )
        return config


@keras.saving.register_keras_serializable(package="keras_deepvit")
class RefinerBlock(TransformerBlock):
    """Refiner-ViT block: `RefinerAttention` and an MLP with per-channel output scale.

    Takes and returns the attention maps passed between blocks.

    Args:
        share_attention: bool, reuse the previous block's maps.
        refine_attention: bool, refine this (computing) block's fresh maps.
        expansion_ratio: float, refiner expansion.
        scale_adjustment: float, 0.5 in every official Refiner-ViT.
        (other arguments as `TransformerBlock`)

    Call arguments:
        inputs: `(batch, tokens, dim)`.
        previous_attention: maps of the previous block or None.
        return_attention_scores: bool, also return the maps this block used.
        training: bool.

    Returns:
        `(outputs, next_attention)` (and the used maps if requested).

    Example:
    >>> import numpy as np
    >>> block = RefinerBlock(num_heads=2)
    >>> x, maps = block(np.zeros((1, 5, 8), "float32"))
    >>> maps.shape
    (1, 2, 5, 5)
    """

    def __init__(
        self, num_heads, share_attention=False, refine_attention=False, expansion_ratio=3,
        scale_adjustment=0.5, **kwargs,
    ):
        super().__init__(num_heads, scale_adjustment=scale_adjustment, **kwargs)
        self.share_attention = share_attention
        self.refine_attention = refine_attention
        self.expansion_ratio = expansion_ratio

    def make_attention(self):
        return RefinerAttention(
            self.num_heads, share_attention=self.share_attention,
            refine_attention=self.refine_attention, expansion_ratio=self.expansion_ratio,
            **self.attention_kwargs(),
        )

    def mlp_channel_scale(self):
        return True

    def call(self, inputs, previous_attention=None, return_attention_scores=False, training=None):
        if self.rematerializes(training, return_attention_scores):
            # The first block has no previous maps: only tensors go through the recomputation.
            tensors = (inputs,) if previous_attention is None else (inputs, previous_attention)
            return rematerialized_call(
                self, lambda x, *p: self.block_outputs(x, *(p or (None,)), training=training), *tensors
            )
        return self.block_outputs(inputs, previous_attention, return_attention_scores, training=training)

    def block_outputs(self, inputs, previous_attention=None, return_attention_scores=False, training=None):
        if training:
            inputs = materialized_gradient(inputs)
        result = call_sublayer(
            self.attn, call_sublayer(self.norm1, self.scaled(inputs)), previous_attention=previous_attention,
            return_attention_scores=return_attention_scores, training=training,
        )
        branch, next_attention = result[0], result[1]
        x = inputs + self.drop_path(self.unscaled(branch), training=training)
        x = self.residual_mlp(x, training=training)
        if return_attention_scores:
            return x, next_attention, result[2]
        return x, next_attention

    def compute_output_spec(
        self, inputs, previous_attention=None, return_attention_scores=False, training=None
    ):
        return self.attn.compute_output_spec(
            inputs, previous_attention, return_attention_scores=return_attention_scores
        )

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
