"""The refiner's training step under XLA: its forward pass with the backward pass written out.

In a training step the refiner (`DistributedLocalAttention`) normalises with
batch statistics: expansion convolution, BatchNorm, ReLU6, depthwise
convolution, BatchNorm, ReLU6, projection convolution, BatchNorm, residual.
Differentiated op by op, every one of those keeps its own input or output for
the backward pass, each a `B x C x N x N` stack of expanded maps, and XLA keeps
more of them than PyTorch does (see docs/performance.md). This backward pass
keeps only the three convolutions' outputs: the BatchNorms and ReLU6s are
elementwise, so it recomputes them from those (fused into the passes that
need them), and the convolutions are not recomputed.

The function returns the refined maps and each BatchNorm's batch mean and
variance, with which the layer updates its moving statistics exactly as
`keras.layers.BatchNormalization` does.
"""

import functools

from keras import ops

from keras_deepvit.layers import wide_matmul
from keras_deepvit.layers.channel_sums import channel_moments, channel_sums
from keras_deepvit.layers.map_ops import (
    depthwise_conv_channels_first,
    depthwise_conv_channels_first_gradients,
    mix_channels,
)


def refine_with_batch_statistics(maps, weights, epsilon):
    """The refiner's training-mode output and its three BatchNorms' batch statistics.

    JAX and TensorFlow only: Keras' PyTorch `custom_gradient` takes a single output,
    and the PyTorch backend keeps its own fused BatchNorm anyway.

    Args:
        maps: `(batch, heads, tokens, tokens)` maps.
        weights: the nine tensors `(expand_kernel, gamma1, beta1, depthwise_kernel,
            gamma2, beta2, project_kernel, gamma3, beta3)`: kernels in Keras' `Dense`
            and `DepthwiseConv2D` orientation, BatchNorm vectors.
        epsilon: float, the BatchNorms' epsilon.

    Returns:
        `(refined, ((mean1, variance1), (mean2, variance2), (mean3, variance3)))`, the
        statistics float32 `(channels,)` vectors (biased variance, as Keras').

    Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> shapes = [(2, 6), (6,), (6,), (3, 3, 6, 1), (6,), (6,), (6, 2), (2,), (2,)]
    >>> weights = [rng.normal(size=s).astype("float32") for s in shapes]
    >>> maps = rng.random((1, 2, 4, 4)).astype("float32")
    >>> refined, statistics = refine_with_batch_statistics(maps, weights, 1e-5)
    >>> tuple(refined.shape), tuple(statistics[0][0].shape)
    ((1, 2, 4, 4), (6,))
    """
    outputs = _refine(float(epsilon))(maps, *weights)
    refined, statistics = outputs[0], outputs[1:]
    return refined, tuple(zip(statistics[0::2], statistics[1::2]))


def _per_channel(vector):
    return vector[None, :, None, None]


def _affine(x, mean, variance, gamma, beta, epsilon):
    """BatchNorm as `ops.batch_normalization` computes it: `x * a + (beta - mean * a)`."""
    a = ops.rsqrt(variance + epsilon) * gamma
    return ops.cast(x, "float32") * _per_channel(a) + _per_channel(beta - mean * a)


def _normalized(x, gamma, beta, epsilon):
    """`(BatchNorm(x), mean, variance)` with batch statistics, in float32."""
    mean, variance = channel_moments(x)
    return _affine(x, mean, variance, gamma, beta, epsilon), mean, variance


def _relu6_gradient(upstream, pre_activation):
    inside = ops.logical_and(pre_activation > 0, pre_activation < 6)
    return ops.where(inside, ops.cast(upstream, "float32"), 0.0)


def _batch_norm_gradients(upstream, x, mean, variance, gamma, epsilon, dtype):
    """`(d_x, d_gamma, d_beta)` of a batch-statistics BatchNorm of `x` (float32, as is
    `upstream`); `d_x` in `dtype`."""
    inverse = ops.rsqrt(variance + epsilon)
    normalized = (x - _per_channel(mean)) * _per_channel(inverse)
    d_beta, d_gamma = channel_sums(upstream, upstream * normalized)
    shape = ops.shape(x)
    count = ops.cast(shape[0] * shape[2] * shape[3], "float32")
    d_x = _per_channel(gamma * inverse) * (
        upstream - _per_channel(d_beta / count) - normalized * _per_channel(d_gamma / count)
    )
    return ops.cast(d_x, dtype), d_gamma, d_beta


def _through_batch_norm_relu6(x, mean, variance, gamma, beta, epsilon, dtype, convolution_gradients):
    """Gradients through `convolution(relu6(BatchNorm(x)))`, the activation recomputed from `x`.

    `x` is float32; `convolution_gradients(activated)` returns the convolution's
    `(d_activated, d_kernel)`. Returns `(d_x, d_kernel, d_gamma, d_beta)`.
    """
    pre_activation = _affine(x, mean, variance, gamma, beta, epsilon)
    d_activated, d_kernel = convolution_gradients(ops.cast(ops.relu6(pre_activation), dtype))
    d_x, d_gamma, d_beta = _batch_norm_gradients(
        _relu6_gradient(d_activated, pre_activation), x, mean, variance, gamma, epsilon, dtype
    )
    return d_x, d_kernel, d_gamma, d_beta


def _mix_channels_gradients(maps, kernel, upstream):
    """`(d_maps, d_kernel)` of `mix_channels(maps, kernel)`."""
    d_maps = mix_channels(upstream, ops.transpose(kernel))
    shape = ops.shape(maps)
    flat_maps = ops.reshape(maps, (shape[0], shape[1], -1))
    flat_upstream = ops.reshape(upstream, (shape[0], kernel.shape[-1], -1))
    return d_maps, ops.cast(_summed_channel_products(flat_maps, flat_upstream), kernel.dtype)


def _summed_channel_products(left, right):
    """`sum_b left[b] @ right[b]^T` in float32: `(batch, m, k), (batch, n, k) -> (m, n)`.

    The operand with more channels goes on the left (the result is transposed
    back otherwise): with `k = N^2` this long, XLA:CPU ran `12 x k` by `36 x k`
    products several times slower than `36 x k` by `12 x k` (docs/performance.md,
    "The refiner's kernel gradients").
    """
    if left.shape[1] < right.shape[1]:
        return ops.transpose(_summed_channel_products(right, left))
    per_image = wide_matmul.matmul(left, ops.transpose(right, (0, 2, 1)))
    return ops.sum(ops.cast(per_image, "float32"), axis=0)


@functools.lru_cache(maxsize=None)
def _refine(epsilon):
    """The refiner for one BatchNorm epsilon, as a function with its gradient written out."""

    @ops.custom_gradient
    def refine(maps, expand_kernel, gamma1, beta1, depthwise_kernel, gamma2, beta2,
               project_kernel, gamma3, beta3):
        dtype = maps.dtype
        expanded = mix_channels(maps, expand_kernel)
        normalized1, mean1, variance1 = _normalized(expanded, gamma1, beta1, epsilon)
        convolved = depthwise_conv_channels_first(
            ops.cast(ops.relu6(normalized1), dtype), depthwise_kernel
        )
        normalized2, mean2, variance2 = _normalized(convolved, gamma2, beta2, epsilon)
        projected = mix_channels(ops.cast(ops.relu6(normalized2), dtype), project_kernel)
        normalized3, mean3, variance3 = _normalized(projected, gamma3, beta3, epsilon)
        refined = ops.cast(normalized3, dtype) + maps
        outputs = (refined, mean1, variance1, mean2, variance2, mean3, variance3)

        def gradient(*args, upstream=None):
            # JAX passes the outputs' cotangents as one tuple, TensorFlow one by one;
            # the statistics only update moving averages, so theirs are zero.
            upstream = (args[0] if len(args) == 1 else args) if upstream is None else upstream
            d_refined = upstream[0]
            # `0 * g` (one entry of the gradient) added to the recomputations' inputs:
            # otherwise XLA merges them with the identical forward expressions and keeps
            # those results alive until now, which is what this backward avoids (as in
            # `keras_deepvit.layers.remat`; XLA does not fold `x * 0` for floats).
            anchor = ops.cast(ops.reshape(d_refined, (-1,))[0], "float32") * 0.0
            wide = {
                name: ops.cast(tensor, "float32") + anchor
                for name, tensor in (("expanded", expanded), ("convolved", convolved),
                                     ("projected", projected))
            }
            d_projected, d_gamma3, d_beta3 = _batch_norm_gradients(
                ops.cast(d_refined, "float32"), wide["projected"], mean3, variance3, gamma3,
                epsilon, dtype,
            )
            d_convolved, d_project_kernel, d_gamma2, d_beta2 = _through_batch_norm_relu6(
                wide["convolved"], mean2, variance2, gamma2, beta2, epsilon, dtype,
                lambda activated: _mix_channels_gradients(activated, project_kernel, d_projected),
            )
            d_expanded, d_depthwise_kernel, d_gamma1, d_beta1 = _through_batch_norm_relu6(
                wide["expanded"], mean1, variance1, gamma1, beta1, epsilon, dtype,
                lambda activated: depthwise_conv_channels_first_gradients(
                    activated, depthwise_kernel, d_convolved
                ),
            )
            d_maps, d_expand_kernel = _mix_channels_gradients(maps, expand_kernel, d_expanded)
            return (
                d_maps + ops.cast(d_refined, dtype), d_expand_kernel, d_gamma1, d_beta1,
                d_depthwise_kernel, d_gamma2, d_beta2, d_project_kernel, d_gamma3, d_beta3,
            )

        return outputs, gradient

    return refine
