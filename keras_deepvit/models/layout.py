"""Official PyTorch checkpoint layouts: array converters and the entries of shared layers.

A family's `checkpoint_layout()` lists, for each official state-dict key, the
Keras variable it fills and how to convert the array (layout changes such as
NCHW->NHWC kernels). This module holds the converters and the entries of the
layers every family shares (standard Keras layers, the transformer blocks,
the heads); the families add their own embeddings and stages. Pure functions.
"""

import keras

from keras_deepvit.layers.embeddings import ConvStemPatchEmbedding

#: Keys that exist in official checkpoints but carry no model state for us.
IGNORED_SUFFIXES = (".num_batches_tracked",)


class Converter:
    """A named pair of array layout changes: official PyTorch <-> Keras."""

    def __init__(self, name, to_keras, to_torch):
        self.name = name
        self.to_keras = to_keras
        self.to_torch = to_torch

    def __repr__(self):
        return f"Converter({self.name})"


IDENTITY = Converter("identity", lambda a, shape: a, lambda a: a)

#: torch Linear (out, in) -> Keras Dense (in, out).
DENSE = Converter("dense", lambda a, shape: a.T if a.ndim == 2 else a, lambda a: a.T)

#: torch 1x1 Conv2d (out, in, 1, 1) computed as a Keras Dense (in, out).
CONV_1X1_AS_DENSE = Converter(
    "conv1x1_as_dense",
    lambda a, shape: a[:, :, 0, 0].T if a.ndim == 4 and a.shape[2:] == (1, 1) else a,
    lambda a: a.T[:, :, None, None],
)

#: torch Conv2d (out, in, kh, kw) -> Keras Conv2D (kh, kw, in, out).
CONV = Converter(
    "conv",
    lambda a, shape: a.transpose(2, 3, 1, 0) if a.ndim == 4 else a,
    lambda a: a.transpose(3, 2, 0, 1),
)


def _depthwise_to_keras(array, shape):
    # PyTorch's grouped-conv output channel `c * mult + j` reads input channel `c`;
    # Keras' DepthwiseConv2D orders its outputs the same way, so only axes move.
    if array.ndim != 4 or len(shape) != 4:
        return array
    channels, mult = shape[2], shape[3]
    if array.shape[0] != channels * mult:
        return array
    return array.reshape(channels, mult, array.shape[2], array.shape[3]).transpose(2, 3, 0, 1)


def _depthwise_to_torch(array):
    kh, kw, channels, mult = array.shape
    return array.transpose(2, 3, 0, 1).reshape(channels * mult, 1, kh, kw)


#: torch grouped Conv2d (in * mult, 1, kh, kw) -> Keras DepthwiseConv2D (kh, kw, in, mult).
DEPTHWISE = Converter("depthwise", _depthwise_to_keras, _depthwise_to_torch)

#: PiT's `pos_embed` (1, C, H, W) -> (1, H, W, C).
MAP_NCHW = Converter(
    "map_nchw",
    lambda a, shape: a.transpose(0, 2, 3, 1) if a.ndim == 4 else a,
    lambda a: a.transpose(0, 3, 1, 2),
)

#: DeepViT `reatten_matrix` 1x1 conv over heads (out, in, 1, 1) -> (out, in).
HEAD_MIX = Converter(
    "head_mix",
    lambda a, shape: a[:, :, 0, 0] if a.ndim == 4 and a.shape[2:] == (1, 1) else a,
    lambda a: a[:, :, None, None],
)


def layer_entries(prefix, layer, dense_as=DENSE):
    """(torch key, variable, converter) triples of one standard Keras layer."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        pairs = [("weight", layer.kernel, DEPTHWISE)]
    elif isinstance(layer, keras.layers.Conv2D):
        pairs = [("weight", layer.kernel, CONV)]
    elif isinstance(layer, keras.layers.Dense):
        pairs = [("weight", layer.kernel, dense_as)]
    elif isinstance(layer, keras.layers.BatchNormalization):
        pairs = [
            ("weight", layer.gamma, IDENTITY),
            ("bias", layer.beta, IDENTITY),
            ("running_mean", layer.moving_mean, IDENTITY),
            ("running_var", layer.moving_variance, IDENTITY),
        ]
    elif isinstance(layer, keras.layers.LayerNormalization):
        pairs = [("weight", layer.gamma, IDENTITY), ("bias", layer.beta, IDENTITY)]
    else:
        raise TypeError(f"No PyTorch layout known for layer {layer.name!r} ({type(layer).__name__}).")
    if not isinstance(layer, (keras.layers.BatchNormalization, keras.layers.LayerNormalization)):
        if getattr(layer, "use_bias", False):
            pairs.append(("bias", layer.bias, IDENTITY))
    return [(f"{prefix}.{name}", var, fn) for name, var, fn in pairs]


def patch_embed_entries(embed):
    """DeepViT / Refiner-ViT stems: one projection, or the CNN stem's convs and norms."""
    if isinstance(embed, ConvStemPatchEmbedding):
        entries = []
        for i, (conv, norm) in enumerate(zip(embed.stem_convs, embed.stem_norms)):
            entries += layer_entries(f"patch_embed.conv{i + 1}", conv)
            entries += layer_entries(f"patch_embed.bn{i + 1}", norm)
        return entries + layer_entries("patch_embed.proj", embed.proj)
    return layer_entries("patch_embed.proj", embed.conv)


def block_entries(prefix, block):
    """Any transformer block: norms, attention (re-attention, refiner), MLP."""
    entries = layer_entries(f"{prefix}.norm1", block.norm1)
    attn = block.attn
    entries += layer_entries(f"{prefix}.attn.qkv", attn.qkv)
    entries += layer_entries(f"{prefix}.attn.proj", attn.proj)
    if getattr(attn, "apply_transform", False):
        entries.append((f"{prefix}.attn.reatten_matrix.weight", attn.reatten_kernel, HEAD_MIX))
        entries.append((f"{prefix}.attn.reatten_matrix.bias", attn.reatten_bias, IDENTITY))
        entries += layer_entries(f"{prefix}.attn.var_norm", attn.var_norm)
    if getattr(attn, "refiner", None) is not None:
        dla = attn.refiner
        if dla.conv_exp is not None:
            entries += layer_entries(f"{prefix}.attn.DLA.conv_exp", dla.conv_exp, CONV_1X1_AS_DENSE)
            entries += layer_entries(f"{prefix}.attn.DLA.bn1", dla.bn1)
        entries += layer_entries(f"{prefix}.attn.DLA.depth_sep_conv", dla.depth_sep_conv)
        entries += layer_entries(f"{prefix}.attn.DLA.bn2", dla.bn2)
        entries += layer_entries(f"{prefix}.attn.DLA.conv_pro", dla.conv_pro, CONV_1X1_AS_DENSE)
        entries += layer_entries(f"{prefix}.attn.DLA.bn3", dla.bn3)
        entries += layer_entries(f"{prefix}.attn.adapt_bn", attn.adapt_bn)
    entries += layer_entries(f"{prefix}.norm2", block.norm2)
    if block.mlp.channel_scale:
        entries.append((f"{prefix}.mlp.scale_channel", block.mlp.scale_channel, IDENTITY))
    entries += layer_entries(f"{prefix}.mlp.fc1", block.mlp.fc1)
    entries += layer_entries(f"{prefix}.mlp.fc2", block.mlp.fc2)
    return entries


def head_entries(model):
    """The classifier heads the model has, under the family's `CLASSIFIER_KEYS`."""
    entries = []
    for key in model.CLASSIFIER_KEYS:
        layer = getattr(model, key, None)
        if layer is not None:
            entries += layer_entries(key, layer)
    return entries


def vit_entries(model):
    """DeepViT and Refiner-ViT: official `dvit_repo` / `Refiner_ViT` key names."""
    entries = [
        ("cls_token", model.cls_token.tokens, IDENTITY),
        ("pos_embed", model.pos_embed.embedding, IDENTITY),
    ]
    entries += patch_embed_entries(model.patch_embed)
    for i, block in enumerate(model.blocks):
        entries += block_entries(f"blocks.{i}", block)
    entries += layer_entries("norm", model.norm)
    return entries + head_entries(model)
