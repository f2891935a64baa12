"""Refiner-ViT's attention: refined (expanded + locally convolved) maps and shared maps."""

import keras
from keras import ops

from keras_deepvit.layers import half_arithmetic
from keras_deepvit.layers.attention import MultiHeadSelfAttention
from keras_deepvit.layers.initializers import depthwise_initializers, torch_default
from keras_deepvit.layers.map_ops import depthwise_conv_channels_first, mix_channels
from keras_deepvit.layers.re_attention import batch_norm_as_affine
from keras_deepvit.layers.refiner_training import refine_with_batch_statistics
from keras_deepvit.layers.torch_like import (
    batch_norm_fold,
    batch_norm_uses_batch_statistics,
    torch_batch_norm,
    update_moving_statistics,
)

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
    code.

    The maps stay in their `(batch, heads, tokens, tokens)` layout throughout
    (see `keras_deepvit.layers.map_ops`): 1x1 convolutions are batched matmuls
    over the channel axis and the depthwise convolution runs channels-first. At
    inference (BatchNorm on moving statistics) the three BatchNorms are folded
    into the convolutions, from the current variables on every call, and
    `refine_folded` can fold a following per-head affine map too.

    The convolutions start from PyTorch's `nn.Conv2d` default, weights
    `U(+-1/sqrt(fan_in))`, as in the official code (its `_init_weights` touches
    only linears and LayerNorms); the BatchNorms from weight 1, bias 0.

    Args:
        expansion_ratio: float; 1 skips the expansion convolution.
        kernel_size: int, odd, the depthwise kernel.
        folded: bool, the inference form written by `fold_batch_norm()`: each
            BatchNorm's scale lives in its convolution's kernel and its shift in
            the BatchNorm's `beta`, used as a bias (the moving statistics are the
            identity, so the same weights give the same maps unfolded).

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

    def __init__(self, expansion_ratio=3, kernel_size=3, folded=False, **kwargs):
        super().__init__(**kwargs)
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}.")
        self.expansion_ratio = expansion_ratio
        self.kernel_size = kernel_size
        self.folded = folded

    def build(self, input_shape):
        heads = input_shape[1]
        hidden = int(round(heads * self.expansion_ratio))
        self.hidden = hidden
        # The convolution layers own the weights (and their variable paths); the
        # computation calls `map_ops` on their kernels.
        channels_last = (None, None, None, heads)
        hidden_last = (None, None, None, hidden)
        dtype = self.dtype_policy
        self.conv_exp = None
        if self.expansion_ratio != 1:
            self.conv_exp = keras.layers.Dense(
                hidden, use_bias=False, kernel_initializer=torch_default(heads), dtype=dtype,
                name="conv_exp",
            )
            self.conv_exp.build(channels_last)
            self.bn1 = torch_batch_norm("bn1", axis=1, dtype=dtype)
            self.bn1.build((None, hidden, None, None))
        self.depth_sep_conv = keras.layers.DepthwiseConv2D(
            self.kernel_size, padding="same", use_bias=False, dtype=dtype, name="depth_sep_conv",
            **depthwise_initializers(self.kernel_size, use_bias=False),
        )
        self.depth_sep_conv.build(hidden_last)
        self.bn2 = torch_batch_norm("bn2", axis=1, dtype=dtype)
        self.bn2.build((None, hidden, None, None))
        self.conv_pro = keras.layers.Dense(
            heads, use_bias=False, kernel_initializer=torch_default(hidden), dtype=dtype,
            name="conv_pro",
        )
        self.conv_pro.build(hidden_last)
        self.bn3 = torch_batch_norm("bn3", axis=1, dtype=dtype)
        self.bn3.build((None, heads, None, None))

    def uses_batch_statistics(self, training):
        """Whether this call normalises with batch statistics (training a trainable layer)."""
        return not self.folded and batch_norm_uses_batch_statistics(self.bn2, training)

    def batch_norm_affine(self, layer):
        """`(scale or None, shift)`, float32, of one inference BatchNorm (folded: its beta)."""
        if self.folded:
            return None, ops.cast(layer.beta, "float32")
        return batch_norm_fold(layer)

    def fold_batch_norm(self):
        """Writes each inference BatchNorm into its convolution and sets `folded`.

        The scale of `bn1`, `bn2`, `bn3` multiplies the kernel of the convolution
        before it, the shift stays in the BatchNorm's `beta` (the bias the folded
        call adds), the moving statistics become the identity. Exact to float32
        rounding; inference only (a folded refiner trains without BatchNorm).

        Example:
        >>> import numpy as np
        >>> layer = DistributedLocalAttention()
        >>> maps = np.random.rand(1, 2, 4, 4).astype("float32")
        >>> before = keras.ops.convert_to_numpy(layer(maps))
        >>> layer.fold_batch_norm()
        >>> bool(np.allclose(before, keras.ops.convert_to_numpy(layer(maps)), atol=1e-6))
        True
        """
        if self.folded:
            return
        convs = [(self.depth_sep_conv, self.bn2, (None, None, slice(None), None)),
                 (self.conv_pro, self.bn3, (None, slice(None)))]
        if self.conv_exp is not None:
            convs.insert(0, (self.conv_exp, self.bn1, (None, slice(None))))
        for conv, norm, channel_index in convs:
            scale, shift = (ops.convert_to_numpy(t) for t in batch_norm_fold(norm))
            kernel = ops.convert_to_numpy(ops.cast(conv.kernel, "float32"))
            conv.kernel.assign(kernel * scale[channel_index])
            batch_norm_as_affine(norm, beta=shift)
        self.folded = True

    def call(self, inputs, training=None):
        if not self.uses_batch_statistics(training):
            return self.refine_folded(inputs)
        if self.has_written_out_backward(training):
            return self.refine_training_step(inputs)
        x = inputs
        if self.conv_exp is not None:
            x = ops.relu6(self.bn1(mix_channels(x, self.conv_exp.kernel), training=training))
        x = depthwise_conv_channels_first(x, self.depth_sep_conv.kernel)
        x = ops.relu6(self.bn2(x, training=training))
        return self.bn3(mix_channels(x, self.conv_pro.kernel), training=training) + inputs

    def has_written_out_backward(self, training):
        """Whether this training call runs `refine_with_batch_statistics` (XLA backends).

        Its backward pass keeps only the convolutions' outputs, so a training step
        keeps fewer expanded maps (see `keras_deepvit.layers.refiner_training`). The
        PyTorch backend keeps its own fused BatchNorm (`FusedTrainingBatchNormalization`),
        which saves what the official code saves.
        """
        norms = (self.bn1, self.bn2, self.bn3) if self.conv_exp is not None else ()
        return (
            keras.backend.backend() != "torch"
            and len(norms) == 3
            and all(batch_norm_uses_batch_statistics(norm, training) for norm in norms)
            and all(norm.scale and norm.center and not norm.renorm for norm in norms)
            and len({norm.epsilon for norm in norms}) == 1
        )

    def refine_training_step(self, inputs):
        """The training-mode refinement with batch statistics, moving statistics updated."""
        norms = (self.bn1, self.bn2, self.bn3)
        weights = [self.conv_exp.kernel, self.bn1.gamma, self.bn1.beta,
                   self.depth_sep_conv.kernel, self.bn2.gamma, self.bn2.beta,
                   self.conv_pro.kernel, self.bn3.gamma, self.bn3.beta]
        weights = [ops.cast(weight, "float32") for weight in weights]
        refined, statistics = refine_with_batch_statistics(
            ops.convert_to_tensor(inputs), weights, self.bn2.epsilon
        )
        for norm, (mean, variance) in zip(norms, statistics):
            update_moving_statistics(norm, mean, variance)
        return ops.cast(refined, self.compute_dtype)

    def refine_folded(self, inputs, output_scale=None, output_shift=None):
        """Inference refinement (moving statistics), optionally then `y * output_scale + output_shift`.

        Every BatchNorm, and the optional per-head affine map that follows the
        refiner (Refiner-ViT's `adapt_bn` and attention scale), is folded into
        the convolution kernels and biases: two batched matmuls, one depthwise
        convolution and fused bias/ReLU6 adds over the maps.

        Args:
            inputs: `(batch, heads, tokens, tokens)` maps.
            output_scale, output_shift: optional float32 `(heads,)` vectors.

        Half-precision maps are refined in float32 under XLA on a CPU, where that is
        faster (`keras_deepvit.layers.half_arithmetic`).
        """
        return half_arithmetic.in_float32(
            self._refine_folded, ops.convert_to_tensor(inputs), output_scale, output_shift
        )

    def _refine_folded(self, inputs, output_scale=None, output_shift=None):
        dtype = inputs.dtype

        def channel_bias(vector):
            return ops.cast(vector, dtype)[None, :, None, None]

        def scaled(kernel, scale, index):
            kernel = ops.cast(kernel, "float32")
            return kernel if scale is None else kernel * scale[index]

        x = inputs
        if self.conv_exp is not None:
            scale, shift = self.batch_norm_affine(self.bn1)
            kernel = scaled(self.conv_exp.kernel, scale, (None, slice(None)))
            x = ops.relu6(mix_channels(x, kernel, addend=channel_bias(shift)))
        scale, shift = self.batch_norm_affine(self.bn2)
        kernel = scaled(self.depth_sep_conv.kernel, scale, (None, None, slice(None), None))
        x = ops.relu6(depthwise_conv_channels_first(x, kernel, bias=shift))
        scale, shift = self.batch_norm_affine(self.bn3)
        identity = inputs
        if output_scale is not None:
            output_scale = ops.cast(output_scale, "float32")
            scale = output_scale if scale is None else scale * output_scale
            shift = shift * output_scale
            identity = inputs * channel_bias(output_scale)
        if output_shift is not None:
            shift = shift + ops.cast(output_shift, "float32")
        kernel = scaled(self.conv_pro.kernel, scale, (None, slice(None)))
        return mix_channels(x, kernel, addend=identity + channel_bias(shift))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "expansion_ratio": self.expansion_ratio,
                "kernel_size": self.kernel_size,
                "folded": self.folded,
            }
        )
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
        folded: bool, the inference form written by `fold_batch_norm()`: the
            refiner is folded and `adapt_bn` is a per-head affine map (`gamma`,
            `beta` on identity statistics).
        qkv_bias, attention_dropout, proj_dropout, initializer: as
            `MultiHeadSelfAttention` (`initializer` sets `qkv` and `proj`).

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
        folded=False, **kwargs,
    ):
        super().__init__(num_heads, **kwargs)
        self.share_attention = share_attention
        self.refine_attention = refine_attention
        self.expansion_ratio = expansion_ratio
        self.folded = folded

    def qkv_width(self, dim):
        return dim if self.share_attention else 3 * dim

    def build_attention_transform(self):
        self.refiner = None
        if not (self.share_attention or self.refine_attention):
            return
        self.refiner = DistributedLocalAttention(
            self.expansion_ratio, folded=self.folded, dtype=self.dtype_policy, name="DLA"
        )
        self.refiner.build((None, self.num_heads, None, None))
        self.adapt_bn = torch_batch_norm("adapt_bn", axis=1, dtype=self.dtype_policy)
        self.adapt_bn.build((None, self.num_heads, None, None))

    def transform_attention(self, attention, training=None, multiplier=None):
        """`adapt_bn(DLA(attention))`, times `multiplier` (a Python float) if given.

        At inference the BatchNorm and the multiplier are folded into the refiner.
        """
        if self.refiner is None:
            return attention
        uses_batch = not self.folded and (
            self.refiner.uses_batch_statistics(training)
            or batch_norm_uses_batch_statistics(self.adapt_bn, training)
        )
        if not uses_batch:
            if self.folded:
                scale = ops.cast(self.adapt_bn.gamma, "float32")
                shift = ops.cast(self.adapt_bn.beta, "float32")
            else:
                scale, shift = batch_norm_fold(self.adapt_bn)
            if multiplier is not None:
                scale, shift = scale * multiplier, shift * multiplier
            return self.refiner.refine_folded(attention, output_scale=scale, output_shift=shift)
        refined = self.adapt_bn(self.refiner(attention, training=training), training=training)
        if multiplier is not None:
            refined = refined * ops.cast(multiplier, refined.dtype)
        return refined

    def fold_batch_norm(self):
        """Folds the refiner's BatchNorms into its convolutions and `adapt_bn` into a
        per-head affine map, then sets `folded` (inference only; exact to float32).

        Example:
        >>> import numpy as np
        >>> layer = RefinerAttention(num_heads=2, refine_attention=True)
        >>> x = np.random.rand(1, 5, 8).astype("float32")
        >>> before = keras.ops.convert_to_numpy(layer(x)[0])
        >>> layer.fold_batch_norm()
        >>> bool(np.allclose(before, keras.ops.convert_to_numpy(layer(x)[0]), atol=1e-6))
        True
        """
        if self.folded or self.refiner is None:
            self.folded = self.folded or self.refiner is not None
            return
        self.refiner.fold_batch_norm()
        scale, shift = (ops.convert_to_numpy(t) for t in batch_norm_fold(self.adapt_bn))
        batch_norm_as_affine(self.adapt_bn, gamma=scale, beta=shift)
        self.folded = True

    def check_previous_attention(self, previous_attention):
        if self.share_attention and previous_attention is None:
            raise ValueError(
                f"Layer '{self.name}' shares attention maps, so it needs the previous "
                "block's maps; the first block of a Refiner-ViT must compute attention."
            )

    def call(self, inputs, previous_attention=None, return_attention_scores=False, training=None):
        self.check_previous_attention(previous_attention)
        scale = self.scale
        if self.share_attention:
            (v,) = self.split_heads(self.qkv(inputs), 1)
            attention = self.transform_attention(previous_attention, training=training, multiplier=scale)
            next_attention = previous_attention
        else:
            q, k, v = self.split_heads(self.qkv(inputs), 3)
            # The official code scales q and k by sqrt(scale) each, not the logits.
            attention = self.attention_maps(q, k, query_scale=scale**0.5)
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

    def compute_output_spec(
        self, inputs, previous_attention=None, return_attention_scores=False, training=None
    ):
        self.check_previous_attention(previous_attention)
        out, maps = super().compute_output_spec(inputs, return_attention_scores=True)
        if self.share_attention:
            maps = previous_attention
        # Every output a tensor of its own: returning an input is a cycle in the graph.
        like_maps = lambda: keras.KerasTensor(maps.shape, dtype=maps.dtype)  # noqa: E731
        if return_attention_scores:
            return out, like_maps(), like_maps()
        return out, like_maps()

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "share_attention": self.share_attention,
                "refine_attention": self.refine_attention,
                "expansion_ratio": self.expansion_ratio,
                "folded": self.folded,
            }
        )
        return config
