"""Operations on stacks of attention maps `(batch, channels, tokens, tokens)`, in that layout.

Re-attention and the refiner treat the heads' attention maps as an image whose
channels are the heads. The maps come out of `q k^T` with the channel axis
first, and they go back into `attention @ v` the same way, so these helpers
work channels-first and never transpose the big `B x C x N x N` tensor:

- `mix_channels`: a 1x1 convolution over the channels as one batched matmul
  (the small kernel broadcast over the batch, so XLA emits a batched dot whose
  output is already in place instead of a dot followed by a transpose);
- `depthwise_conv_channels_first`: a depthwise convolution with symmetric zero
  padding. PyTorch runs its native NCHW convolution. XLA (JAX, TensorFlow with
  `jit_compile`) has no fast depthwise convolution on CPU (about 7x slower than
  the same work written as a sum of shifted slices, which XLA fuses into one
  memory-bound loop), so there the kernel taps are summed explicitly.

Both are plain functions of tensors; the layers that own the weights call them.
"""

import keras
from keras import ops


def mix_channels(maps, kernel):
    """`out[b, d] = sum_c kernel[c, d] * maps[b, c]`: a 1x1 convolution over the channel axis.

    Args:
        maps: `(batch, channels, rows, cols)`.
        kernel: `(channels, out_channels)` (a Keras `Dense` kernel's orientation).

    Returns:
        `(batch, out_channels, rows, cols)`.

    Example:
    >>> import numpy as np
    >>> maps = np.arange(8, dtype="float32").reshape(1, 2, 2, 2)
    >>> out = mix_channels(maps, np.array([[1.0], [10.0]], "float32"))
    >>> np.asarray(out)[0, 0].tolist()
    [[40.0, 51.0], [62.0, 73.0]]
    """
    shape = ops.shape(maps)
    batch, channels, rows, cols = shape[0], shape[1], shape[2], shape[3]
    out_channels = kernel.shape[-1]
    kernel = ops.cast(kernel, maps.dtype)
    flat = ops.reshape(maps, (batch, channels, -1))
    weights = ops.broadcast_to(ops.transpose(kernel)[None], (batch, out_channels, channels))
    return ops.reshape(ops.matmul(weights, flat), (batch, out_channels, rows, cols))


def depthwise_conv_channels_first(maps, kernel):
    """Depthwise convolution of `(batch, channels, rows, cols)` maps, stride 1, "same" size.

    Zero padding is symmetric (the kernel size must be odd), as PyTorch's
    `Conv2d(padding=k // 2)`.

    Args:
        maps: `(batch, channels, rows, cols)`.
        kernel: `(k, k, channels, 1)`, a Keras `DepthwiseConv2D` kernel.

    Returns:
        `(batch, channels, rows, cols)`.

    Example:
    >>> import numpy as np
    >>> kernel = np.ones((3, 3, 1, 1), "float32")
    >>> out = depthwise_conv_channels_first(np.ones((1, 1, 3, 3), "float32"), kernel)
    >>> np.asarray(out)[0, 0].tolist()
    [[4.0, 6.0, 4.0], [6.0, 9.0, 6.0], [4.0, 6.0, 4.0]]
    """
    size = kernel.shape[0]
    if size % 2 != 1 or kernel.shape[1] != size:
        raise ValueError(f"depthwise_conv_channels_first needs a square odd kernel, got {kernel.shape}.")
    kernel = ops.cast(kernel, maps.dtype)
    if keras.backend.backend() == "torch":
        return ops.depthwise_conv(maps, kernel, padding="same", data_format="channels_first")
    return _shifted_sum(maps, kernel)


def _shifted_sum(maps, kernel):
    """The depthwise convolution as `sum over taps of weight * shifted maps` (fused by XLA)."""
    size = kernel.shape[0]
    pad = size // 2
    shape = ops.shape(maps)
    rows, cols = shape[2], shape[3]
    padded = ops.pad(maps, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    taps = ops.transpose(kernel[:, :, :, 0], (2, 0, 1))[None, :, :, :, None, None]
    total = None
    for i in range(size):
        for j in range(size):
            term = padded[:, :, i : i + rows, j : j + cols] * taps[:, :, i, j]
            total = term if total is None else total + term
    return total
