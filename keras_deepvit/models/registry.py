"""`create_model` and `list_models` over the variant table, plus weight loading."""

from keras_deepvit.models.variants import VARIANTS
from keras_deepvit.weights.loading import load_weights


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
        weights: None (random initialisation); "imagenet" (the official
            checkpoint, downloaded once and converted; see
            `keras_deepvit.weights.PRETRAINED`); or a path: a PyTorch checkpoint
            (`.pth`, `.pth.tar`, `.bin`; official, timm or train-script layout),
            a `.safetensors` file, a Keras `.keras` model, or a `.weights.h5`
            file saved from the same configuration. Checkpoints and `.keras`
            files adapt to the model: position embeddings are resampled to
            `input_shape`, and with other `classes` (or `include_top=False`)
            everything but the classifier head(s) is loaded.
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
    load_weights(model, weights, variant=name)
    return model
