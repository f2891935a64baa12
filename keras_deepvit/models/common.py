"""What every family shares: keras.applications-style arguments, inputs and heads."""

import numbers

import keras
from keras import ops

from keras_deepvit.layers.initializers import dense_initializers
from keras_deepvit.layers.preprocessing import ImageNormalization
from keras_deepvit.layers.torch_like import torch_layer_norm

POOLING_MODES = ("token", "avg", None)

#: Input normalisation of the official default configs.
HALF_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def validate_application_args(name, include_top, pooling, classes, classifier_activation):
    """Raises a clear ValueError for inconsistent keras.applications-style arguments."""
    if pooling not in POOLING_MODES:
        raise ValueError(
            f"{name}: pooling must be one of 'token', 'avg' or None, got {pooling!r}."
        )
    if include_top and (not isinstance(classes, int) or classes < 1):
        raise ValueError(
            f"{name}: with include_top=True, classes must be a positive int, got {classes!r}."
        )
    if not include_top and classifier_activation not in (None, "softmax"):
        # keras.applications ignores it too; say so instead of silently dropping it.
        raise ValueError(
            f"{name}: classifier_activation={classifier_activation!r} has no effect "
            "with include_top=False; leave it at its default."
        )


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def positive_int(name, what, value):
    """`value` as an int >= 1, or a ValueError showing the value received."""
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name}: {what} must be an int >= 1, got {value!r}.")
    return int(value)


def positive_ints(name, what, values, allow_empty=False):
    """A list of ints >= 1 (one per stage), or a ValueError showing the list received."""
    try:
        values = list(values)
    except TypeError:
        raise ValueError(f"{name}: {what} must be a list of ints >= 1, got {values!r}.") from None
    if not values and not allow_empty:
        raise ValueError(f"{name}: {what} must have at least one stage, got {values!r}.")
    if any(not _is_int(v) or v < 1 for v in values):
        raise ValueError(f"{name}: {what} must be ints >= 1, got {values!r}.")
    return [int(v) for v in values]


def positive_number(name, what, value):
    """`value` as a number > 0 (e.g. `mlp_ratio`), or a ValueError showing it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name}: {what} must be a number > 0, got {value!r}.")
    return value


def validate_rates(name, **rates):
    """Dropout and stochastic-depth rates must lie in [0, 1) (1 would drop everything)."""
    for what, value in rates.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise ValueError(f"{name}: {what} must be in [0, 1), got {value!r}.")


def validate_heads(name, width, num_heads, what="embed_dim"):
    """Attention splits the width into equal heads."""
    if width % num_heads:
        raise ValueError(
            f"{name}: {what}={width} is not divisible by num_heads={num_heads}; each head "
            "takes an equal share of the width."
        )


def validate_vit_args(
    name, depth, embed_dim, num_heads, mlp_ratio, patch_size, **rates
):
    """DeepViT / Refiner-ViT architecture arguments, checked before anything is built."""
    for what, value in (("depth", depth), ("embed_dim", embed_dim), ("num_heads", num_heads),
                        ("patch_size", patch_size)):
        positive_int(name, what, value)
    positive_number(name, "mlp_ratio", mlp_ratio)
    validate_heads(name, embed_dim, num_heads)
    validate_rates(name, **rates)


def validate_image(name, image_shape, include_preprocessing, patch_grid, patch_size):
    """The image gives at least one patch, and preprocessing gets the RGB it normalises."""
    if include_preprocessing and image_shape[-1] not in (3, None):
        raise ValueError(
            f"{name}: include_preprocessing=True normalises RGB images (3 channels, the "
            f"official mean/std), got {image_shape[-1]} channels in input_shape {image_shape}. "
            "Normalise the images yourself and pass include_preprocessing=False."
        )
    if any(cells is not None and cells < 1 for cells in patch_grid):
        raise ValueError(
            f"{name}: input_shape {image_shape} is smaller than one patch "
            f"({patch_size}x{patch_size}); the patch grid would be {tuple(patch_grid)}."
        )


def validate_list(name, what, values, length):
    """Checks that a per-block or per-stage list has the expected length."""
    values = list(values)
    if len(values) != length:
        raise ValueError(
            f"{name}: {what} must have {length} entries (one per block/stage), "
            f"got {len(values)}: {values!r}."
        )
    return values


def per_block_flags(name, what, value, depth):
    """A bool for all blocks, or one bool per block, as a list of `depth` bools."""
    if isinstance(value, bool):
        return [value] * depth
    return [bool(v) for v in validate_list(name, what, value, depth)]


def image_input(name, input_shape, input_tensor, default_size):
    """The model's `keras.Input` (or the user's tensor) and the static image shape."""
    if input_tensor is not None:
        if not keras.backend.is_keras_tensor(input_tensor):
            raise ValueError(
                f"{name}: input_tensor must be a symbolic Keras tensor (from keras.Input "
                f"or another model's output), got {type(input_tensor).__name__}."
            )
        shape = tuple(input_tensor.shape[1:])
        return input_tensor, shape
    shape = tuple(input_shape) if input_shape is not None else (default_size, default_size, 3)
    if len(shape) != 3 or any(not isinstance(d, int) or d < 1 for d in shape):
        raise ValueError(
            f"{name}: input_shape must be (height, width, channels) with positive ints "
            f"(position embeddings are sized to the patch grid), got {input_shape!r}."
        )
    return keras.Input(shape=shape, name="images"), shape


def vit_patch_grid(name, stem, patch_size, image_shape):
    """`(rows, cols)` of a DeepViT / Refiner-ViT stem's output, computed without building it.

    "patch": one `patch_size` convolution with stride `patch_size`; "cnn": a 7x7/s2 conv
    (padding 3) and 3x3 convs (padding 1), then a `patch_size // 2` projection.
    """
    if stem == "cnn":
        projection = patch_size // 2
        if projection < 1:
            raise ValueError(f"{name}: stem='cnn' needs patch_size >= 2, got {patch_size!r}.")
        return tuple(None if side is None else ((side - 1) // 2 + 1) // projection for side in image_shape[:2])
    return tuple(None if side is None else side // patch_size for side in image_shape[:2])


def preprocessing(include_preprocessing, mean_std, dtype=None):
    """The input normalisation layer, or None when the caller normalises."""
    if not include_preprocessing:
        return None
    mean, std = mean_std
    return ImageNormalization(mean, std, name="preprocessing", dtype=dtype)


def final_norm(dtype=None):
    return torch_layer_norm("norm", dtype=dtype)


def classifier(classes, name, dtype=None, initializer="trunc_normal", input_dim=None):
    """The `Dense` classifier head, initialised as the family's official head.

    Args:
        classes: int, output width.
        name: str, layer name (`head`, `head_dist`, `aux_head`).
        dtype: dtype policy.
        initializer: "trunc_normal" (DeepViT, Refiner-ViT) or "torch_default"
            (PiT), see `keras_deepvit.layers.initializers`.
        input_dim: int, the head's input width; needed by "torch_default",
            whose bias bound is `1/sqrt(input_dim)`.

    Example:
    >>> head = classifier(10, "head", initializer="torch_default", input_dim=64)
    >>> head.build((None, 64)); float(keras.ops.max(keras.ops.abs(head.bias))) <= 0.125
    True
    """
    if initializer == "torch_default" and input_dim is None:
        raise ValueError(
            f"classifier '{name}': initializer='torch_default' draws the bias from "
            "U(+-1/sqrt(input_dim)), so it needs input_dim (the head's input width)."
        )
    return keras.layers.Dense(
        classes, name=name, dtype=dtype, **dense_initializers(initializer, input_dim)
    )


def activation(classifier_activation, dtype=None):
    """The classifier activation as a layer (float32 under mixed precision)."""
    if classifier_activation is None:
        return None
    return keras.layers.Activation(classifier_activation, name="predictions", dtype="float32")


def last_block_queries(include_top, pooling, num_prefix_tokens, return_attention_maps=False):
    """How many tokens the last block must output: the class/distillation tokens
    when the model's output reads only those (a classifier or `pooling="token"`),
    else None (all). Skipping the patch tokens' last MLP and attention output is
    exact (see `TransformerBlock`'s `query_tokens`) and saves most of one block:
    DeepViT-S and PiT-S training steps ran 1.03-1.07x faster on CPU. A model that
    returns attention maps computes every row."""
    if return_attention_maps or not (include_top or pooling == "token"):
        return None
    return num_prefix_tokens


def pool_tokens(tokens, pooling, num_prefix_tokens):
    """`token`: mean of the class/distillation tokens; `avg`: mean of the patch tokens."""
    if pooling == "token":
        if num_prefix_tokens == 1:
            return tokens[:, 0]
        return ops.mean(tokens[:, :num_prefix_tokens], axis=1)
    if pooling == "avg":
        return ops.mean(tokens[:, num_prefix_tokens:], axis=1)
    return tokens


def drop_path_rates(drop_path_rate, depth):
    """Linearly increasing stochastic depth, 0 for the first block (official rule)."""
    if depth == 1:
        return [0.0]
    return [drop_path_rate * i / (depth - 1) for i in range(depth)]


def add_vit_embedding(ns, name, stem, stem_filters, embed_dim, patch_size, dropout_rate, dtype):
    """DeepViT / Refiner-ViT: the patch stem, class token, position embedding and dropout.

    `stem` is "cnn" (`ConvStemPatchEmbedding` with `stem_filters`) or "patch" (one conv).
    """
    from keras_deepvit.layers.embeddings import (
        ClassTokens,
        ConvPatchEmbedding,
        ConvStemPatchEmbedding,
        PositionEmbedding,
    )

    if stem == "cnn":
        ns.patch_embed = ConvStemPatchEmbedding(
            embed_dim, patch_size, stem_filters, name="patch_embed", dtype=dtype
        )
    elif stem == "patch":
        ns.patch_embed = ConvPatchEmbedding(embed_dim, patch_size, name="patch_embed", dtype=dtype)
    else:
        raise ValueError(f"{name}: stem must be 'patch' or 'cnn', got {stem!r}.")
    ns.cls_token = ClassTokens(1, name="cls_token", dtype=dtype)
    ns.pos_embed = PositionEmbedding(name="pos_embed", dtype=dtype)
    ns.pos_drop = keras.layers.Dropout(dropout_rate, name="pos_drop", dtype=dtype)


def vit_tokens(layers, images):
    """DeepViT / Refiner-ViT: image -> `(batch, 1 + patches, dim)` tokens entering the blocks."""
    x = layers.preprocessing(images) if layers.preprocessing is not None else images
    x = layers.patch_embed(x)
    x = ops.reshape(x, (-1, x.shape[1] * x.shape[2], x.shape[3]))
    return layers.pos_drop(layers.pos_embed(layers.cls_token(x)))

