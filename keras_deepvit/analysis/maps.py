"""Every block's attention maps and output tokens for a batch of images, read from a built model.

`block_states(model, images)` works on every zoo model (through the family's
`attention_model()` graph) and on any functional Keras model whose blocks are
this package's `TransformerBlock` layers (or bare `MultiHeadSelfAttention`
layers): it taps the existing graph and shares the live variables, so nothing is
rebuilt or copied and a trained model gives its trained maps.
"""

import dataclasses

import keras
import numpy as np

from keras_deepvit.layers import MultiHeadSelfAttention, TransformerBlock
from keras_deepvit.models.base import VisionTransformerFamily


@dataclasses.dataclass
class BlockStates:
    """What every block computed for one batch, in block order.

    Attributes:
        maps: one float32 array per block, `(batch, heads, tokens, tokens)`,
            the maps the block multiplied the values with (after re-attention
            or refinement), class token(s) first.
        tokens: one float32 array per block, `(batch, tokens, dim)`: the block's
            output tokens; None for a bare attention layer's output (no block).
        names: the layer name of every block.
    """

    maps: list
    tokens: list
    names: list


def _family_taps(model):
    """(map tensor, token tensor, name) of every block of a zoo model's attention graph."""
    taps = []
    for attention in model._attention_outputs:
        operation, node_index, _ = attention._keras_history
        # The block returned (x, maps) in this node: its first output is the block's tokens.
        node = operation._inbound_nodes[node_index]
        taps.append((attention, node.output_tensors[0], operation.name))
    return taps


def _attention_layers(model):
    """The top-level attention blocks of a functional model (bare attention layers included)."""
    layers = [layer for layer in model.layers if isinstance(layer, (TransformerBlock, MultiHeadSelfAttention))]
    inside_blocks = {id(layer.attn) for layer in layers if isinstance(layer, TransformerBlock)}
    return [layer for layer in layers if id(layer) not in inside_blocks]


def _generic_states(model, images, batch_size):
    """Runs a functional model eagerly, node by node, asking every attention block for its maps.

    Keras fixes a layer's number of outputs at its first call, so a layer called
    once as `x = block(x)` cannot join a second graph that also returns its maps;
    walking the model's own graph instead uses the same layers and variables.
    """
    targets = {id(layer) for layer in _attention_layers(model)}
    if not targets:
        raise ValueError(
            f"Model {model.name!r} has no keras_deepvit attention layer (TransformerBlock, "
            "ReAttentionBlock, RefinerBlock or MultiHeadSelfAttention) at its top level; "
            "layers of nested sub-models are not searched."
        )
    maps, tokens, names = [], [], []

    def tapped(layer):
        if id(layer) not in targets:
            return layer

        def call(*args, **kwargs):
            # Every query's row is needed: a block that computed only the class rows runs in full.
            kwargs.pop("query_tokens", None)
            outputs, attention = layer(*args, return_attention_scores=True, **kwargs)
            maps.append(keras.ops.convert_to_numpy(attention).astype("float32"))
            is_block = isinstance(layer, TransformerBlock)
            tokens.append(keras.ops.convert_to_numpy(outputs).astype("float32") if is_block else None)
            names.append(layer.name)
            return outputs

        return call

    batches = []
    for start in range(0, len(images), batch_size):
        maps, tokens, names = [], [], []
        model._run_through_graph(images[start:start + batch_size], operation_fn=tapped)
        batches.append((maps, tokens, names))
    joined = lambda arrays: None if arrays[0] is None else np.concatenate(arrays)
    return BlockStates(
        maps=[np.concatenate(b) for b in zip(*[m for m, _, _ in batches])],
        tokens=[joined(t) for t in zip(*[t for _, t, _ in batches])],
        names=batches[0][2],
    )


def state_model(model):
    """A Keras model from a zoo model's images to `[maps..., tokens...]` of every block.

    It shares the model's variables (the graph `attention_model()` reads).

    Args:
        model: a zoo model (`keras_deepvit.create_model`, a family class, or one
            loaded from `.keras`).

    Returns:
        `(tap_model, names)`: the model (the maps of all blocks, then their
        output tokens) and the block names.

    Example:
    >>> import keras_deepvit
    >>> model = keras_deepvit.DeepViT(depth=2, embed_dim=32, num_heads=4, input_shape=(32, 32, 3))
    >>> tap, names = state_model(model)
    >>> names, len(tap.outputs)
    (['blocks_0', 'blocks_1'], 4)
    """
    if not isinstance(model, VisionTransformerFamily):
        raise TypeError(f"state_model needs a keras_deepvit family model, got {type(model).__name__}.")
    taps = _family_taps(model)
    outputs = [t[0] for t in taps] + [t[1] for t in taps]
    tap = keras.Model(model._model_input, outputs, name=f"{model.name}_block_states")
    return tap, [t[2] for t in taps]


def block_states(model, images, batch_size=16):
    """Every block's attention maps and output tokens for `images`.

    Args:
        model: a zoo model (`keras_deepvit.create_model`, a family class, or
            one loaded from `.keras`), or a functional Keras model whose
            top-level layers include this package's attention blocks.
        images: array `(batch, ...)` in the model's input range (zoo models:
            RGB 0-255 with `include_preprocessing=True`).
        batch_size: images per forward pass.

    Returns:
        A `BlockStates` of float32 numpy arrays.

    Example:
    >>> import numpy as np, keras_deepvit
    >>> model = keras_deepvit.DeepViT(depth=2, embed_dim=32, num_heads=4, input_shape=(32, 32, 3))
    >>> states = block_states(model, np.zeros((2, 32, 32, 3), "float32"))
    >>> states.maps[0].shape, states.tokens[1].shape
    ((2, 4, 5, 5), (2, 5, 32))
    """
    images = np.asarray(images, "float32")
    if images.ndim < 2 or len(images) == 0:
        raise ValueError(f"images must be a non-empty batch, got shape {images.shape}.")
    if isinstance(model, VisionTransformerFamily):
        tap, names = state_model(model)
        outputs = [np.asarray(o, "float32") for o in tap.predict(images, batch_size=batch_size, verbose=0)]
        return BlockStates(maps=outputs[: len(names)], tokens=outputs[len(names):], names=names)
    # A built Sequential model runs through the functional graph it keeps.
    graph = getattr(model, "_functional", None) if isinstance(model, keras.Sequential) else model
    if isinstance(graph, keras.Model) and hasattr(graph, "_nodes_by_depth"):
        return _generic_states(graph, images, batch_size)
    raise TypeError(
        f"block_states needs a keras_deepvit model or a functional Keras model, got "
        f"{type(model).__name__}; build it functionally (keras.Model(inputs, outputs))."
    )
