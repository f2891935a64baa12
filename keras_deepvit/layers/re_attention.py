"""DeepViT's re-attention: mix the heads' attention maps with a learned H x H matrix."""

import keras
import numpy as np
from keras import ops

from keras_deepvit.layers.attention import MultiHeadSelfAttention
from keras_deepvit.layers.initializers import torch_default
from keras_deepvit.layers.map_ops import mix_channels
from keras_deepvit.layers.torch_like import (
    batch_norm_fold,
    batch_norm_uses_batch_statistics,
    torch_batch_norm,
)


@keras.saving.register_keras_serializable(package="keras_deepvit")
class ReAttention(MultiHeadSelfAttention):
    """Re-attention (Zhou et al. 2021, "DeepViT", arXiv 2103.11886, Eq. 3).

    After the softmax, the heads' maps are mixed by a learnable `heads x heads`
    matrix with bias (the official code's 1x1 convolution over the head axis,
    `reatten_matrix`), normalised by BatchNorm over the head axis (`var_norm`)
    and optionally multiplied by the attention scale `head_dim**-0.5`
    (`transform_scale`, used by DeepViT-S only). Mixing heads regenerates diverse
    maps in deep layers where plain self-attention collapses to near-identical
    maps. With `apply_transform=False` the layer is plain self-attention.

    Args:
        num_heads: int, number of heads.
        apply_transform: bool, whether to re-attend (mix heads + BatchNorm).
        transform_scale: bool, multiply the mixed maps by `head_dim**-0.5`.
        folded: bool, the inference form written by `fold_batch_norm()`: the
            BatchNorm and the scale live in `reatten_kernel` and `reatten_bias`,
            and every call mixes with them alone (`var_norm` keeps identity
            statistics, so the same weights give the same maps unfolded).
        qkv_bias, attention_dropout, proj_dropout, initializer: as
            `MultiHeadSelfAttention` (`initializer` sets `qkv` and `proj`; the
            mixing matrix is a convolution, which the official code leaves at
            PyTorch's default, `U(+-1/sqrt(heads))` for weight and bias).

    Call arguments:
        inputs: `(batch, tokens, dim)`.
        return_attention_scores: bool, also return the (re-)attention maps.
        training: bool; also selects the BatchNorm mode.

    Returns:
        `(batch, tokens, dim)`, or `(outputs, maps)` with maps `(batch, heads, tokens, tokens)`.

    Example:
    >>> import numpy as np
    >>> layer = ReAttention(num_heads=4, apply_transform=True)
    >>> out, maps = layer(np.zeros((2, 5, 8), "float32"), return_attention_scores=True)
    >>> maps.shape
    (2, 4, 5, 5)
    """

    def __init__(
        self, num_heads, apply_transform=True, transform_scale=False, folded=False, **kwargs
    ):
        super().__init__(num_heads, **kwargs)
        self.apply_transform = apply_transform
        self.transform_scale = transform_scale
        self.folded = folded
        self.transforms_attention = apply_transform

    def build_attention_transform(self):
        if not self.apply_transform:
            return
        heads = self.num_heads
        # Stored as (out_head, in_head), the orientation of the official 1x1 conv,
        # `nn.Conv2d(heads, heads, 1)`: PyTorch's default init, fan-in `heads`.
        self.reatten_kernel = self.add_weight(
            shape=(heads, heads), initializer=torch_default(heads), name="reatten_kernel"
        )
        self.reatten_bias = self.add_weight(
            shape=(heads,), initializer=torch_default(heads), name="reatten_bias"
        )
        self.var_norm = torch_batch_norm("var_norm", axis=1, dtype=self.dtype_policy)
        self.var_norm.build((None, heads, None, None))

    def transform_attention(self, attention, training=None):
        if not self.apply_transform:
            return attention
        if self.folded:
            return self.mix_heads(attention, self.reatten_kernel, self.reatten_bias)
        if batch_norm_uses_batch_statistics(self.var_norm, training):
            mixed = self.mix_heads(attention, self.reatten_kernel, self.reatten_bias)
            mixed = self.var_norm(mixed, training=training)
            if self.transform_scale:
                mixed = mixed * ops.cast(self.scale, mixed.dtype)
            return mixed
        # Inference: BatchNorm (moving statistics) and the scale are an affine map
        # per output head, folded into the mixing matrix and bias from the current
        # variables: one batched matmul and one bias add over the maps.
        kernel, bias = self.folded_mix()
        return self.mix_heads(attention, kernel, bias)

    def transform_needs_all_queries(self, training=None):
        # Training BatchNorm normalises with statistics over every row of the maps.
        return (
            self.apply_transform
            and not self.folded
            and batch_norm_uses_batch_statistics(self.var_norm, training)
        )

    def fold_batch_norm(self):
        """Writes the inference re-attention into the mixing weights and sets `folded`.

        Afterwards `reatten_kernel` and `reatten_bias` hold `folded_mix()` (BatchNorm
        on moving statistics and the optional scale), `var_norm` holds identity
        statistics (with `transform_scale`, gamma `1 / scale`, which cancels the scale
        an unfolded rebuild applies), and calls no longer normalise: the exported
        graph mixes the maps with one batched matmul and a bias. Exact to float32
        rounding.
        Inference only: a folded layer trains as a plain affine mix.

        Example:
        >>> import numpy as np
        >>> layer = ReAttention(num_heads=2)
        >>> maps = np.random.rand(1, 2, 3, 3).astype("float32")
        >>> layer.build((None, 3, 4))
        >>> before = keras.ops.convert_to_numpy(layer.transform_attention(maps))
        >>> layer.fold_batch_norm()
        >>> after = keras.ops.convert_to_numpy(layer.transform_attention(maps))
        >>> layer.folded, bool(np.allclose(before, after, atol=1e-6))
        (True, True)
        """
        if not self.apply_transform or self.folded:
            self.folded = self.folded or self.apply_transform
            return
        kernel, bias = (ops.convert_to_numpy(t) for t in self.folded_mix())
        self.reatten_kernel.assign(kernel)
        self.reatten_bias.assign(bias)
        # The folded kernel already holds the scale; rebuilt unfolded (e.g. from a
        # saved model's config) the layer multiplies by it again after `var_norm`,
        # so `var_norm` divides by it: the same weights give the same maps.
        gamma = None
        if self.transform_scale:
            gamma = np.full(self.num_heads, 1.0 / self.scale, "float32")
        batch_norm_as_affine(self.var_norm, gamma=gamma)
        self.folded = True

    def folded_mix(self):
        """`(kernel, bias)`, float32, of the inference re-attention: mix, BatchNorm, scale."""
        scale, shift = batch_norm_fold(self.var_norm, bias=self.reatten_bias)
        if self.transform_scale:
            scale = scale * self.scale
            shift = shift * self.scale
        return ops.cast(self.reatten_kernel, "float32") * scale[:, None], shift

    @staticmethod
    def mix_heads(attention, kernel, bias):
        """`(batch, heads, q, k)` maps mixed over heads: `sum_h kernel[g, h] maps[h] + bias[g]`.

        `kernel` is `(out_head, in_head)`, the official 1x1 convolution's orientation.
        """
        bias = ops.cast(bias, attention.dtype)[None, :, None, None]
        return mix_channels(attention, ops.transpose(kernel), addend=bias)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "apply_transform": self.apply_transform,
                "transform_scale": self.transform_scale,
                "folded": self.folded,
            }
        )
        return config


def batch_norm_as_affine(layer, gamma=None, beta=None):
    """Sets an inference BatchNormalization to `x * gamma + beta` (default: the identity).

    The moving statistics become mean 0 and variance `1 - epsilon`, so the layer
    divides by `sqrt(1) = 1`: a folded layer that skips it and an unfolded one
    that applies it compute the same function from the same weights.
    """
    channels = layer.moving_mean.shape
    layer.moving_mean.assign(np.zeros(channels, "float32"))
    layer.moving_variance.assign(np.full(channels, 1.0 - layer.epsilon, "float32"))
    if layer.scale:
        layer.gamma.assign(np.ones(channels, "float32") if gamma is None else gamma)
    elif gamma is not None:
        raise ValueError(f"BatchNormalization '{layer.name}' has no scale to hold a gamma.")
    if layer.center:
        layer.beta.assign(np.zeros(channels, "float32") if beta is None else beta)
    elif beta is not None:
        raise ValueError(f"BatchNormalization '{layer.name}' has no center to hold a beta.")
