"""The official models' weight initialisation, as Keras initializers.

What each family's official code does to a fresh model (Keras' own defaults,
`glorot_uniform` kernels and zero biases, match none of it):

- Linear layers. DeepViT (`DeepVisionTransformer._init_weights`) and
  Refiner-ViT (`Refiner_ViT._init_weights`) draw every `nn.Linear` weight with
  timm's `trunc_normal_(std=.02)` and zero its bias: scheme `"trunc_normal"`.
  PiT's `_init_weights` resets LayerNorms only, so its linears keep PyTorch's
  `nn.Linear` default: weight and bias `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`
  (`kaiming_uniform_(a=sqrt(5))`): scheme `"torch_default"`.
- Convolutions (patch embeddings, CNN stems, PiT's pooling, DeepViT's
  re-attention matrix, Refiner-ViT's refiner): no family touches them, so all
  keep PyTorch's `nn.Conv2d` default, the same uniform law with
  `fan_in = in_channels / groups * kernel_h * kernel_w`.
- Class tokens and position embeddings: `trunc_normal_(std=.02)` in all three.
- LayerNorm and BatchNorm: weight 1, bias 0 (moving mean 0, variance 1), which
  are Keras' defaults too.

Every function returns a new initializer: an unseeded Keras initializer fixes
its seed when it is created, so one instance shared by two weights of the same
shape would give them the same values.
"""

import math

import keras

#: Initialisation schemes of dense (PyTorch `nn.Linear`) layers.
INITIALIZERS = ("trunc_normal", "torch_default")

#: Standard deviation of the official `trunc_normal_` draws (weights, tokens, embeddings).
TRUNC_NORMAL_STDDEV = 0.02


def validate_initializer(initializer, where):
    """Returns `initializer` if it names a scheme, else raises a ValueError naming `where`."""
    if initializer not in INITIALIZERS:
        raise ValueError(
            f"{where}: initializer must be one of {', '.join(map(repr, INITIALIZERS))}, "
            f"got {initializer!r}. Use 'trunc_normal' for DeepViT / Refiner-ViT layers and "
            "'torch_default' for PiT layers (what each official model does)."
        )
    return initializer


def trunc_normal():
    """The official `trunc_normal_(std=.02)`: in effect `N(0, 0.02^2)`.

    timm's `trunc_normal_(tensor, std=.02)` truncates at the absolute bounds
    -2 and 2 (its defaults `a=-2., b=2.`), i.e. at 100 standard deviations, so
    nothing is ever cut and the draws are plain normal. Keras'
    `TruncatedNormal(stddev=0.02)` cuts at 2 standard deviations instead, which
    shrinks the standard deviation to 0.88 * 0.02 and removes the 4.6% of
    draws beyond 0.04; `RandomNormal` is the one with the official statistics.

    Example:
    >>> import numpy as np
    >>> w = keras.ops.convert_to_numpy(trunc_normal()((1000, 100)))
    >>> bool(abs(w.std() - 0.02) < 0.001), bool(np.abs(w).max() > 0.04)
    (True, True)
    """
    return keras.initializers.RandomNormal(stddev=TRUNC_NORMAL_STDDEV)


def torch_default(fan_in):
    """PyTorch's default `nn.Linear` / `nn.Conv2d` law: `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`.

    The weight's `kaiming_uniform_(a=sqrt(5))` and the bias' uniform draw have
    the same bound. For dense and ordinary convolution kernels this equals
    `VarianceScaling(1/3, "fan_in", "uniform")` (bound `sqrt(3 * scale / fan_in)`);
    a depthwise kernel needs the explicit bound, because Keras counts its fan-in
    as `in_channels * kernel area` where PyTorch counts `kernel area` (one input
    channel per group).

    Args:
        fan_in: int, inputs per output unit as PyTorch counts them
            (`in_features`, or `in_channels / groups * kernel_h * kernel_w`).

    Example:
    >>> import numpy as np
    >>> w = keras.ops.convert_to_numpy(torch_default(16)((10000,)))
    >>> bool(np.abs(w).max() <= 0.25), bool(np.abs(w).max() > 0.24)
    (True, True)
    """
    bound = 1.0 / math.sqrt(max(1, int(fan_in)))
    return keras.initializers.RandomUniform(-bound, bound)


def dense_initializers(initializer, fan_in):
    """`kernel_initializer` and `bias_initializer` of a `keras.layers.Dense` under a scheme.

    Args:
        initializer: "trunc_normal" (weights `N(0, 0.02^2)`, zero biases) or
            "torch_default" (weights and biases `U(+-1/sqrt(fan_in))`).
        fan_in: int, the layer's input width.

    Returns:
        A dict to pass to `keras.layers.Dense(..., **dense_initializers(...))`.

    Example:
    >>> layer = keras.layers.Dense(4, **dense_initializers("trunc_normal", 8))
    >>> layer.build((None, 8)); float(keras.ops.max(keras.ops.abs(layer.bias)))
    0.0
    """
    validate_initializer(initializer, "dense_initializers")
    if initializer == "trunc_normal":
        return {"kernel_initializer": trunc_normal(), "bias_initializer": "zeros"}
    return {"kernel_initializer": torch_default(fan_in), "bias_initializer": torch_default(fan_in)}


def conv_initializers(fan_in, use_bias=True):
    """PyTorch's default `nn.Conv2d` initialisation as `Conv2D` / `DepthwiseConv2D` arguments.

    Args:
        fan_in: int, `in_channels / groups * kernel_h * kernel_w`.
        use_bias: bool, whether the convolution has a bias.

    Returns:
        A dict with `kernel_initializer` and, with `use_bias`, `bias_initializer`
        (`depthwise_initializers` gives a depthwise convolution's).

    Example:
    >>> sorted(conv_initializers(27))
    ['bias_initializer', 'kernel_initializer']
    """
    result = {"kernel_initializer": torch_default(fan_in)}
    if use_bias:
        result["bias_initializer"] = torch_default(fan_in)
    return result


def depthwise_initializers(kernel_size, use_bias=True):
    """PyTorch's default init of a depthwise `nn.Conv2d` as `DepthwiseConv2D` arguments.

    A depthwise convolution has one input channel per group, so PyTorch's
    fan-in is the kernel area alone.

    Args:
        kernel_size: int, the square kernel's side.
        use_bias: bool.

    Example:
    >>> sorted(depthwise_initializers(3, use_bias=False))
    ['depthwise_initializer']
    """
    result = conv_initializers(kernel_size * kernel_size, use_bias)
    result["depthwise_initializer"] = result.pop("kernel_initializer")
    return result
