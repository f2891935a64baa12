"""Operations on stacks of attention maps `(batch, channels, tokens, tokens)`, in that layout.

Re-attention and the refiner treat the heads' attention maps as an image whose
channels are the heads. The maps come out of `q k^T` with the channel axis
first, and they go back into `attention @ v` the same way, so these helpers
work channels-first and never transpose the big `B x C x N x N` tensor:

- `mix_channels`: a 1x1 convolution over the channels as one batched matmul
  (the small kernel broadcast over the batch, so XLA emits a batched dot whose
  output is already in place instead of a dot followed by a transpose; under
  `mixed_bfloat16` on XLA:CPU, accumulated in float32 by `wide_matmul.matmul`);
- `depthwise_conv_channels_first`: a depthwise convolution with symmetric zero
  padding. PyTorch runs its native NCHW convolution. XLA (JAX, TensorFlow with
  `jit_compile`) has no fast depthwise convolution on CPU (about 7x slower than
  the same work written as a sum of shifted slices, which XLA fuses into one
  memory-bound loop), so there the kernel taps are summed explicitly
  (`depthwise_conv_valid`, also used by PiT's strided pooling).

The same reasoning covers the dense convolutions of the CNN stems and patch
embeddings (`conv_valid`): JAX's XLA:CPU differentiates them several times slower
than a matmul over the gathered patches (im2col), so a JAX training step uses
that form, while PyTorch and TensorFlow keep their own convolution.

All are plain functions of tensors; the layers that own the weights call them.
"""

import functools

import keras
from keras import ops

from keras_deepvit.layers import half_arithmetic, wide_matmul
from keras_deepvit.layers.channel_sums import channel_sums, sums_in_one_pass

if keras.backend.backend() == "torch":
    import torch

    # `torch.nn.functional.conv2d`, always run eagerly, also inside `torch.compile`
    # (`jit_compile=True`). A Keras layer's `__call__` breaks `torch.compile`'s graph
    # (Keras 3.15: "mapping proxy affected by dictionary mutation"), so the helpers
    # here are compiled as frames of their own; one helper frame convolves images of
    # several shapes (each stem convolution, each PiT pooling), so Dynamo recompiles
    # it with symbolic shapes, and Inductor (PyTorch 2.13, CPU) fails on the backward
    # of a symbolic-shape convolution ("cannot determine truth value of Relational"
    # in `get_fill_order`). On CPU Inductor calls the same oneDNN kernel for a
    # convolution, so running it eagerly changes neither the result nor the speed.
    _torch_eager_conv2d = torch.compiler.disable(torch.nn.functional.conv2d, recursive=False)


def has_fused_attention():
    """Whether `keras.ops.dot_product_attention` is the fastest attention here.

    PyTorch's fused kernel (flash attention, also on CPU) never writes the
    attention maps: PiT-S's first stage runs in half the time of the explicit
    form. Under XLA on a CPU, the op is an einsum whose layout XLA handles
    badly: explicit heads-first matmuls are 1.3x faster (PiT-S stage 0, batch 8:
    99 against 129 ms forward) both ways. On GPUs, XLA backends get cuDNN's
    kernel through the op.

    Example:
    >>> has_fused_attention() in (True, False)
    True
    """
    return not xla_on_cpu()


def fused_attention(q, k, v, scale):
    """`softmax(q k^T * scale) v` by the backend's fused kernel, heads first in and out.

    `q`: `(batch, heads, queries, head_dim)`, `k` and `v`: `(batch, heads, tokens,
    head_dim)`; returns `(batch, heads, queries, head_dim)`. On PyTorch this is
    `scaled_dot_product_attention` on the tensors as given: Keras' op takes
    heads last and hands PyTorch's kernel contiguous copies of the transposed
    `q`, `k` and `v` (three copies per call that the kernel does not need).
    Elsewhere it is `keras.ops.dot_product_attention`.

    Example:
    >>> q = keras.ops.ones((1, 2, 3, 4))
    >>> tuple(fused_attention(q, q, q, 0.5).shape)
    (1, 2, 3, 4)
    """
    if keras.backend.backend() == "torch":
        import torch

        q, k, v = (ops.convert_to_tensor(t) for t in (q, k, v))
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)
    heads_last = [ops.transpose(t, (0, 2, 1, 3)) for t in (q, k, v)]
    return ops.transpose(ops.dot_product_attention(*heads_last, scale=scale), (0, 2, 1, 3))


@functools.lru_cache(maxsize=None)
def xla_on_cpu():
    """Whether the backend compiles with XLA (JAX, TensorFlow) and has no accelerator.

    The forms chosen here for XLA's CPU code generator (explicit attention,
    im2col convolutions) are measured on a CPU only; on a GPU, XLA's own
    operations call cuDNN.

    Example:
    >>> xla_on_cpu() in (True, False)
    True
    """
    if keras.backend.backend() == "torch":
        return False
    return all(device.lower().startswith("cpu") for device in keras.distribution.list_devices())


def softmax(logits):
    """Softmax over the last axis; on JAX its gradient is `p * (g - sum(g * p))`.

    JAX differentiates `jax.nn.softmax` through its `exp / sum` form unless a
    global flag (`jax_softmax_custom_jvp`) is set, which costs several extra
    passes over the `N x N` attention maps in every backward pass. Written as a
    custom gradient here, the backward is one reduction and one product.
    TensorFlow and PyTorch register that form for their own softmax already.

    Example:
    >>> import numpy as np
    >>> p = softmax(np.array([[0.0, 0.0, np.log(2.0)]], "float32"))
    >>> [round(float(v), 6) for v in keras.ops.convert_to_numpy(p)[0]]
    [0.25, 0.25, 0.5]
    """
    if keras.backend.backend() == "jax":
        return _jax_softmax()(ops.convert_to_tensor(logits))
    return ops.softmax(logits, axis=-1)


def attention_softmax(logits):
    """Softmax over the last axis, accumulated in float32, returned in the logits' dtype.

    Half-precision logits (mixed precision) are normalised in float32 and rounded
    once. PyTorch's half-precision softmax kernels do that themselves, forward and
    backward, so on that backend they run on the logits as they are: the explicit
    casts around a float32 softmax made two more passes over the `N x N` maps each
    way (docs/performance.md). The values are the same; the gradient reads the
    rounded probabilities, as under PyTorch's autocast. Elsewhere the casts fuse
    into XLA's kernels, and TensorFlow's graph mode has no such kernel.

    Example:
    >>> import numpy as np
    >>> p = attention_softmax(np.array([[0.0, 0.0, np.log(2.0)]], "float32"))
    >>> [round(float(v), 6) for v in keras.ops.convert_to_numpy(p)[0]]
    [0.25, 0.25, 0.5]
    """
    dtype = keras.backend.standardize_dtype(logits.dtype)
    if dtype == "float32" or keras.backend.backend() == "torch":
        return softmax(logits)
    return ops.cast(softmax(ops.cast(logits, "float32")), dtype)


@functools.lru_cache(maxsize=None)
def _jax_softmax():
    import jax
    import jax.numpy as jnp

    @jax.custom_vjp
    def softmax_last_axis(x):
        return jax.nn.softmax(x, axis=-1)

    def forward(x):
        probabilities = softmax_last_axis(x)
        return probabilities, probabilities

    def backward(probabilities, upstream):
        inner = jnp.sum(upstream * probabilities, axis=-1, keepdims=True)
        return (probabilities * (upstream - inner),)

    softmax_last_axis.defvjp(forward, backward)
    return softmax_last_axis


def unstack(x):
    """The slices of `x` along its first axis, as a list; their gradient is one stack.

    Indexing (`x[0], x[1], ...`) is differentiated slice by slice: each slice's
    gradient is a zero-padded copy of the whole `x`, and the copies are summed.
    For the `q, k, v` of an attention that made XLA:CPU write the `qkv`
    gradient nine times over and then transpose it once per consumer. Here JAX
    gets a custom gradient that stacks the slices' gradients, and TensorFlow and
    PyTorch their own `unstack`/`unbind`, whose gradient is a stack already.

    Example:
    >>> import numpy as np
    >>> [np.asarray(part).tolist() for part in unstack(np.array([[1.0, 2.0], [3.0, 4.0]], "float32"))]
    [[1.0, 2.0], [3.0, 4.0]]
    """
    x = ops.convert_to_tensor(x)
    if keras.backend.backend() == "jax":
        return list(_jax_unstack()(x))
    return list(ops.unstack(x, axis=0))


@functools.lru_cache(maxsize=None)
def _jax_unstack():
    import jax
    import jax.numpy as jnp

    @jax.custom_vjp
    def unstack_first_axis(x):
        return tuple(x[i] for i in range(x.shape[0]))

    def forward(x):
        return unstack_first_axis(x), None

    def backward(_, upstream):
        return (jnp.stack(upstream),)

    unstack_first_axis.defvjp(forward, backward)
    return unstack_first_axis


def mix_channels(maps, kernel, addend=None):
    """`out[b, d] = sum_c kernel[c, d] * maps[b, c] (+ addend)`: a 1x1 convolution over the channel axis.

    Args:
        maps: `(batch, channels, rows, cols)`.
        kernel: `(channels, out_channels)` (a Keras `Dense` kernel's orientation).
        addend: optional, broadcastable to the output as `(1 or batch, out_channels,
            1 or rows, 1 or cols)`: a per-channel bias or a residual. PyTorch adds it
            inside the matmul (`baddbmm`), which saves a pass over the output;
            XLA fuses the add anyway.

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
    if addend is not None:
        addend = ops.cast(addend, maps.dtype)
    if addend is not None and keras.backend.backend() == "torch":
        import torch

        addend = addend.expand(addend.shape[0], out_channels, rows, cols)
        addend = addend.reshape(addend.shape[0], out_channels, rows * cols)
        return torch.baddbmm(addend, weights, flat).reshape(batch, out_channels, rows, cols)
    out = ops.reshape(wide_matmul.matmul(weights, flat), (batch, out_channels, rows, cols))
    return out if addend is None else out + addend


def depthwise_conv_channels_first(maps, kernel, bias=None):
    """Depthwise convolution of `(batch, channels, rows, cols)` maps, stride 1, "same" size,
    plus an optional per-channel `bias` (added inside PyTorch's convolution).

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
    if keras.backend.backend() == "torch":
        # The symmetric padding goes to PyTorch's convolution as its `padding`: no
        # padded copy of the maps and no slicing of their gradient (Refiner-ViT-S,
        # batch 8: 340 against 400 ms forward and backward per 72-channel map
        # convolution), and the bias is added by the kernel.
        maps = ops.convert_to_tensor(maps)
        weights = ops.cast(kernel, maps.dtype).permute(2, 3, 0, 1)
        if bias is not None:
            bias = ops.cast(bias, maps.dtype)
        return _torch_eager_conv2d(
            maps, weights, bias, padding=size // 2, groups=maps.shape[1]
        )
    return half_arithmetic.in_float32(_same_depthwise_xla, ops.convert_to_tensor(maps), kernel, bias)


def _same_depthwise_xla(maps, kernel, bias):
    out = _same_depthwise_shifted_sum(maps, ops.cast(kernel, maps.dtype))
    return out if bias is None else out + ops.cast(bias, out.dtype)[None, :, None, None]


@ops.custom_gradient
def _same_depthwise_shifted_sum(maps, kernel):
    """`depthwise_conv_channels_first` under XLA, with its gradient written out.

    XLA's own gradient of the shifted sum pads and accumulates each tap's slice
    of the output gradient separately; `depthwise_conv_channels_first_gradients`
    is one fused pass for the maps and one reduction per tap for the kernel.
    See docs/performance.md.
    """
    size = kernel.shape[0]
    pad = size // 2
    padding = ((0, 0), (0, 0), (pad, pad), (pad, pad))
    out = depthwise_conv_valid(ops.pad(maps, padding), kernel, data_format="channels_first")

    def gradient(*args, upstream=None):
        upstream = args[0] if upstream is None else upstream
        return depthwise_conv_channels_first_gradients(maps, kernel, upstream)

    return out, gradient


def depthwise_conv_channels_first_gradients(maps, kernel, upstream):
    """`(d_maps, d_kernel)` of `depthwise_conv_channels_first(maps, kernel)` given `upstream`.

    The maps' gradient is the same shifted sum of the padded `upstream` with the
    kernel flipped (one fused pass under XLA), the kernel's one reduction per
    tap, accumulated in float32 (a tap sums over every map entry of the batch,
    too many for a half-precision accumulator).

    Example:
    >>> import numpy as np
    >>> maps, kernel = np.ones((1, 1, 3, 3), "float32"), np.ones((3, 3, 1, 1), "float32")
    >>> d_maps, d_kernel = depthwise_conv_channels_first_gradients(maps, kernel, maps)
    >>> float(np.asarray(d_maps)[0, 0, 1, 1]), float(np.asarray(d_kernel)[1, 1, 0, 0])
    (9.0, 9.0)
    """
    size = kernel.shape[0]
    pad = size // 2
    padding = ((0, 0), (0, 0), (pad, pad), (pad, pad))
    kernel_dtype = kernel.dtype
    kernel = ops.cast(kernel, maps.dtype)
    flipped = ops.flip(ops.flip(kernel, axis=0), axis=1)
    d_maps = depthwise_conv_valid(ops.pad(upstream, padding), flipped, data_format="channels_first")
    # The maps are padded here rather than kept padded from the forward pass: a
    # kept copy would be one more saved map.
    wide_maps = ops.cast(maps, "float32")
    wide_upstream = ops.cast(upstream, "float32")
    rows, cols = ops.shape(maps)[2], ops.shape(maps)[3]
    taps = [(i, j) for i in range(size) for j in range(size)]
    if sums_in_one_pass():
        # One variadic reduction reads the padded maps and the upstream gradient
        # once for every tap; no tap's product is materialised.
        padded = ops.pad(wide_maps, padding)
        d_taps = channel_sums(
            *(padded[:, :, i : i + rows, j : j + cols] * wide_upstream for i, j in taps)
        )
    else:
        # One reduction per tap, each from a materialised copy of its slice. Each
        # copy is made to depend on the reduction before (`0 * previous` added to
        # the maps it pads, which a compiler cannot fold away for floats), so that
        # one copy is live at a time rather than all of them.
        d_taps = []
        for i, j in taps:
            source = wide_maps if not d_taps else wide_maps + d_taps[-1][0] * 0.0
            window = ops.pad(source, padding)[:, :, i : i + rows, j : j + cols]
            d_taps.append(channel_sums(window * wide_upstream)[0])
    d_kernel = ops.reshape(ops.stack(d_taps), (size, size, -1))[..., None]
    return d_maps, ops.cast(d_kernel, kernel_dtype)


def depthwise_conv_valid(inputs, kernel, strides=1, data_format="channels_last"):
    """Depthwise convolution without padding (callers pad explicitly), any channel multiplier.

    PyTorch runs its native convolution. Under XLA (JAX, TensorFlow) the
    convolution is written as a sum over the kernel taps of strided slices times
    per-channel weights, which XLA fuses into one loop: its own depthwise
    convolution is about 7x slower on CPU, and the filter gradient of a strided
    depthwise convolution with a channel multiplier (PiT's pooling) is slower
    than the whole rest of a PiT-S training step.

    Args:
        inputs: `(batch, rows, cols, channels)` (or channels-first).
        kernel: `(kh, kw, channels, multiplier)`, a Keras `DepthwiseConv2D` kernel.
        strides: int.
        data_format: "channels_last" or "channels_first".

    Returns:
        `(batch, out_rows, out_cols, channels * multiplier)` (or channels-first), output
        channel `c * multiplier + m` from input channel `c` (Keras' and PyTorch's order).

    Example:
    >>> import numpy as np
    >>> out = depthwise_conv_valid(np.ones((1, 5, 5, 2), "float32"), np.ones((3, 3, 2, 2), "float32"), 2)
    >>> tuple(out.shape), float(np.asarray(out)[0, 0, 0, 0])
    ((1, 2, 2, 4), 9.0)
    """
    kernel = ops.cast(kernel, inputs.dtype)
    if keras.backend.backend() == "torch":
        # Keras' own `depthwise_conv` on PyTorch, as one `conv2d` with `groups`, run
        # outside `torch.compile`'s graphs (see `_torch_eager_conv2d` above).
        inputs = ops.convert_to_tensor(inputs)
        channels = kernel.shape[2]
        weights = ops.reshape(kernel, tuple(kernel.shape[:2]) + (1, -1)).permute(3, 2, 0, 1)
        if data_format == "channels_last":
            inputs = inputs.permute(0, 3, 1, 2)
        strides = (strides, strides) if isinstance(strides, int) else tuple(strides)
        outputs = _torch_eager_conv2d(inputs, weights, stride=strides, groups=channels)
        return outputs.permute(0, 2, 3, 1) if data_format == "channels_last" else outputs
    return half_arithmetic.in_float32(
        lambda x: _shifted_sum(x, ops.cast(kernel, x.dtype), strides, data_format == "channels_first"),
        ops.convert_to_tensor(inputs),
    )


def _shifted_sum(inputs, kernel, stride, channels_first):
    """The depthwise convolution as `sum over taps of weight * strided slice` (fused by XLA)."""
    kh, kw, channels, multiplier = kernel.shape
    axes = (2, 3) if channels_first else (1, 2)
    shape = ops.shape(inputs)
    rows = (shape[axes[0]] - kh) // stride + 1
    cols = (shape[axes[1]] - kw) // stride + 1
    if multiplier == 1:
        # Channels-last broadcasts over the last axis as it is; channels-first
        # needs the per-channel weights as (channels, 1, 1).
        taps = kernel[:, :, :, 0]
        taps = taps[:, :, :, None, None] if channels_first else taps
    else:
        # One more axis for the multiplier, merged into the channels at the end.
        taps = kernel[:, :, :, :, None, None] if channels_first else kernel
    total = None
    for i in range(kh):
        for j in range(kw):
            window = (
                slice(i, i + stride * (rows - 1) + 1, stride),
                slice(j, j + stride * (cols - 1) + 1, stride),
            )
            if channels_first:
                window = inputs[(slice(None), slice(None)) + window]
            else:
                window = inputs[(slice(None),) + window]
            if multiplier != 1:
                window = window[:, :, None] if channels_first else window[..., None]
            term = window * taps[i, j]
            total = term if total is None else total + term
    if multiplier == 1:
        return total
    if channels_first:
        return ops.reshape(total, (-1, channels * multiplier, rows, cols))
    return ops.reshape(total, (-1, rows, cols, channels * multiplier))


def conv_valid(inputs, kernel, strides=1, differentiated=False, padding=0, bias=None):
    """Dense 2-D convolution of channels-last images, "valid" after `padding` zeros each side.

    PyTorch and TensorFlow (graph or XLA) run their own convolution (PyTorch on
    a contiguous NCHW copy: see `_torch_conv_valid`): TensorFlow's XLA build
    differentiates it fast (a DeepViT-S training step is 5 % slower with the
    forms below). JAX's XLA:CPU does not, so on JAX without an accelerator
    (on a GPU, XLA's convolution is cuDNN's):

    - a kernel equal to its stride (a patchify projection) is a reshape and one
      matmul, faster both ways;
    - any other kernel is XLA's convolution. When `differentiated`, its
      gradients are written out: the images' is XLA's convolution of the
      upstream gradient, the kernel's one matmul over the strided taps (im2col)
      gathered in the backward pass, where XLA's own transpose of the
      convolution is slow. In half precision the forward pass is that im2col
      matmul too, on the CPU's bfloat16 GEMM.

    Measurements: docs/performance.md ("CNN stems under JAX").

    Args:
        inputs: `(batch, rows, cols, in_channels)`.
        kernel: `(kh, kw, in_channels, out_channels)`, a Keras `Conv2D` kernel.
        strides: int or `(sh, sw)`.
        differentiated: bool, whether a gradient of the result will be taken
            (a training step of a trainable layer).
        padding: int `p`, zero rows and columns added on every side first
            (PyTorch's symmetric `padding=p`; Keras' "same" pads a stride-2
            convolution asymmetrically at even sizes). On PyTorch the
            convolution pads inside its kernel: a padded channels-last copy
            cost the next NCHW copy a full transpose of the maps.
        bias: optional `(out_channels,)`, added inside the convolution where the
            backend can (PyTorch's kernel; the float32 accumulator of JAX's
            matmul forms, as `wide_matmul.matmul` adds a dense bias) instead of
            in another pass over the output.

    Returns:
        `(batch, (rows + 2p - kh) // sh + 1, (cols + 2p - kw) // sw + 1, out_channels)`.

    Example:
    >>> import numpy as np
    >>> images, kernel = np.ones((1, 5, 5, 2), "float32"), np.ones((3, 3, 2, 4), "float32")
    >>> out = conv_valid(images, kernel, strides=2, differentiated=True)
    >>> tuple(out.shape), float(np.asarray(out)[0, 0, 0, 0])
    ((1, 2, 2, 4), 18.0)
    """
    kernel = ops.cast(kernel, inputs.dtype)
    strides = (strides, strides) if isinstance(strides, int) else tuple(strides)
    if keras.backend.backend() == "torch":
        return _torch_conv_valid(inputs, kernel, strides, padding, bias)
    if padding:
        inputs = ops.pad(inputs, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    kh, kw, in_channels, out_channels = kernel.shape
    patchify = (kh, kw) == strides
    if (
        keras.backend.backend() != "jax"
        or not xla_on_cpu()
        or None in tuple(inputs.shape[1:3])
        or not (patchify or differentiated)
    ):
        # XLA:CPU has no fast half-precision convolution (see `half_arithmetic`).
        def convolve(x):
            out = ops.conv(x, ops.cast(kernel, x.dtype), strides=strides, padding="valid")
            return out if bias is None else out + ops.cast(bias, x.dtype)

        return half_arithmetic.in_float32(convolve, ops.convert_to_tensor(inputs))
    rows = (inputs.shape[1] - kh) // strides[0] + 1
    cols = (inputs.shape[2] - kw) // strides[1] + 1
    if patchify:
        patches = _patchify(inputs[:, : rows * kh, : cols * kw, :], rows, cols, kh, kw)
    elif keras.backend.standardize_dtype(inputs.dtype) == "float32":
        out = _jax_conv_with_im2col_kernel_gradient()(ops.convert_to_tensor(inputs), kernel, strides)
        return out if bias is None else out + bias
    else:
        # Half precision: one matmul over the patches runs on the CPU's bfloat16
        # GEMM (`wide_matmul`), where XLA's convolution has no half kernel.
        patches = _im2col(inputs, kh, kw, strides, rows, cols)
    # Patch features are ordered (tap row, tap column, channel): the kernel's own order.
    kernel = ops.reshape(kernel, (kh * kw * in_channels, out_channels))
    return wide_matmul.matmul(patches, kernel, bias=bias)


def _im2col(inputs, kh, kw, strides, rows, cols):
    """`(batch, rows, cols, kh*kw*channels)`: each output position's input window, taps first."""
    return ops.concatenate(
        [
            inputs[
                :,
                i : i + strides[0] * (rows - 1) + 1 : strides[0],
                j : j + strides[1] * (cols - 1) + 1 : strides[1],
                :,
            ]
            for i in range(kh)
            for j in range(kw)
        ],
        axis=-1,
    )


@functools.lru_cache(maxsize=None)
def _jax_conv_with_im2col_kernel_gradient():
    """A "valid" NHWC convolution for JAX on a CPU, with its gradients written out.

    XLA:CPU runs a convolution's forward pass fast, and the images' gradient is
    the same kind of convolution (of the upstream gradient, stride-dilated, by
    the flipped kernel with its channel axes swapped). The kernel's gradient is
    what XLA's own transpose of the convolution does slowly; here it is one
    matmul of the im2col patches (rebuilt in the backward pass, so only the
    images are kept for it, not the patches) by the upstream gradient.
    See docs/performance.md.
    """
    import jax
    from jax import lax

    layout = ("NHWC", "HWIO", "NHWC")

    def convolve(images, kernel, strides):
        return lax.conv_general_dilated(images, kernel, strides, "VALID", dimension_numbers=layout)

    @functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
    def conv(images, kernel, strides):
        return convolve(images, kernel, strides)

    def forward(images, kernel, strides):
        return convolve(images, kernel, strides), (images, kernel)

    def backward(strides, saved, upstream):
        images, kernel = saved
        kh, kw, in_channels, out_channels = kernel.shape
        rows, cols = upstream.shape[1], upstream.shape[2]
        patches = _im2col(images, kh, kw, strides, rows, cols)
        d_kernel = lax.dot_general(
            patches.reshape(-1, kh * kw * in_channels), upstream.reshape(-1, out_channels),
            (((0,), (0,)), ((), ())),
        ).reshape(kernel.shape)
        # Rows and columns past the last window (`(size - k) % stride` of them) get zeros.
        extra = [
            images.shape[axis] - ((upstream.shape[axis] - 1) * stride + size)
            for axis, stride, size in ((1, strides[0], kh), (2, strides[1], kw))
        ]
        d_images = lax.conv_general_dilated(
            upstream,
            kernel[::-1, ::-1].transpose(0, 1, 3, 2),
            (1, 1),
            ((kh - 1, kh - 1 + extra[0]), (kw - 1, kw - 1 + extra[1])),
            lhs_dilation=strides,
            dimension_numbers=layout,
        )
        return d_images, d_kernel

    conv.defvjp(forward, backward)
    return conv


def _torch_conv_valid(inputs, kernel, strides, padding=0, bias=None):
    """`conv_valid` on PyTorch: the convolution on a contiguous NCHW copy of the images.

    Keras' PyTorch convolution permutes channels-last images to NCHW without
    copying, which hands oneDNN a channels-last tensor; on CPU its convolution
    and gradient run 1.75x slower in that format (a 3x3 64->128 convolution at
    112x112, batch 4: 1477 against 822 ms with its gradient). The copy costs
    one pass over the images, and nothing when they are this function's own
    output (elementwise layers in between keep its layout). The result is an
    NHWC view of the NCHW output.
    """
    images = ops.convert_to_tensor(inputs).permute(0, 3, 1, 2).contiguous()
    if bias is not None:
        bias = ops.cast(bias, kernel.dtype)
    outputs = _torch_eager_conv2d(
        images, kernel.permute(3, 2, 0, 1), bias=bias, stride=strides, padding=padding
    )
    return outputs.permute(0, 2, 3, 1)


def _patchify(inputs, rows, cols, kh, kw):
    """`(batch, rows*kh, cols*kw, c)` -> `(batch, rows, cols, kh*kw*c)`, non-overlapping patches."""
    channels = inputs.shape[-1]
    blocks = ops.reshape(inputs, (-1, rows, kh, cols, kw, channels))
    blocks = ops.transpose(blocks, (0, 1, 3, 2, 4, 5))
    return ops.reshape(blocks, (-1, rows, cols, kh * kw * channels))
