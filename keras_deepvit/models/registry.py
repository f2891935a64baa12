"""`create_model` and `list_models` over the variant table, plus weight loading."""

import os

from keras_deepvit.models.variants import VARIANTS


def list_models(family=None):
    """Names of the registered variants, sorted; optionally of one family.

    Args:
        family: None, or "deepvit", "refiner" or "pit".

    Example:
    >>> import keras_deepvit
    >>> "pit_s_distilled" in keras_deepvit.list_models("pit")
    True
    """
    prefixes = {"deepvit": ("deepvit_", "vit_"), "refiner": ("refiner_",), "pit": ("pit_",)}
    if family is not None and family not in prefixes:
        raise ValueError(f"family must be one of {sorted(prefixes)} or None, got {family!r}.")
    names = sorted(VARIANTS)
    if family is not None:
        names = [n for n in names if n.startswith(prefixes[family])]
    return names


def variant_info(name):
    """The registry entry of `name`: family, architecture, default size, source, params."""
    if name not in VARIANTS:
        close = [n for n in VARIANTS if name.split("_")[0] in n]
        hint = f" Similar: {', '.join(close)}." if close else ""
        raise ValueError(
            f"Unknown model {name!r}.{hint} See keras_deepvit.list_models() for all names."
        )
    return VARIANTS[name]


def create_model(name, /, weights=None, input_shape=None, **kwargs):
    """Builds a registered variant, keras.applications style.

    Args:
        name: a name from `list_models()`, e.g. "deepvit_s" or "pit_b_distilled"
            (positional: a `name=` keyword names the Keras model instead).
        weights: None (random initialisation) or the path of a Keras
            `.weights.h5` file saved from the same configuration. (Pretrained
            "imagenet" weights and PyTorch checkpoints arrive with the weights
            issue; asking for them now raises a ValueError saying so.)
        input_shape: (height, width, 3); defaults to the variant's size.
        **kwargs: any family model argument (`include_top`, `pooling`,
            `classes`, `classifier_activation`, `include_preprocessing`,
            `drop_path_rate`, `input_tensor`, `name`, ...; architecture arguments
            too, e.g. `re_attention=False`).

    Returns:
        A `DeepViT`, `RefinerViT` or `PiT` Keras model.

    Example:
    >>> import keras_deepvit
    >>> model = keras_deepvit.create_model("pit_ti", input_shape=(64, 64, 3), classes=10)
    >>> model.output_shape
    (None, 10)
    """
    info = variant_info(name)
    size = info["size"]
    arch = dict(info["arch"])
    arch.update(kwargs)
    arch.setdefault("name", name)
    model = info["family"](input_shape=input_shape or (size, size, 3), **arch)
    load_weights(model, weights)
    return model


def load_weights(model, weights):
    """Applies the `weights` argument of the constructors to a built model."""
    if weights is None:
        return model
    if weights == "imagenet":
        raise ValueError(
            "weights='imagenet' is not available yet: porting the official checkpoints is "
            "the pretrained-weights work item. Use weights=None, or a .weights.h5 file "
            "saved from a model of the same configuration."
        )
    path = os.fspath(weights)
    if not os.path.exists(path):
        raise ValueError(f"weights file not found: {path!r}.")
    if not path.endswith(".weights.h5"):
        raise ValueError(
            f"Unsupported weights file {path!r}: expected a Keras '.weights.h5' file "
            "(PyTorch checkpoints go through keras_deepvit.weights.load_torch_state_dict)."
        )
    model.load_weights(path)
    return model
