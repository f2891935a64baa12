"""`create_model`, `list_models` and `variant_info` over the variant records."""

import difflib
import inspect

from keras_deepvit.zoo.records import RECORDS
from keras_deepvit.zoo.weights import load_variant_weights

FAMILY_NAMES = ("deepvit", "refiner", "pit")


def list_models(family=None):
    """Names of the registered variants, sorted; optionally of one family.

    Args:
        family: None, or "deepvit", "refiner" or "pit".

    Example:
    >>> import keras_deepvit
    >>> "pit_s_distilled" in keras_deepvit.list_models("pit")
    True
    """
    if family is not None and family not in FAMILY_NAMES:
        raise ValueError(f"family must be one of {list(FAMILY_NAMES)} or None, got {family!r}.")
    return sorted(n for n, r in RECORDS.items() if family is None or r.family_name == family)


def variant_info(name):
    """The `VariantRecord` of `name`: family, architecture, size, params, source,
    preprocessing, checkpoint origins, top-1 and paper.

    Example:
    >>> import keras_deepvit
    >>> keras_deepvit.variant_info("pit_s").crop_pct
    0.9
    """
    if not isinstance(name, str):
        raise TypeError(
            f"The model name must be a str such as 'pit_ti', got {type(name).__name__} {name!r}. "
            "See keras_deepvit.list_models() for all names."
        )
    if name not in RECORDS:
        close = difflib.get_close_matches(name, RECORDS, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"Unknown model {name!r}.{hint} See keras_deepvit.list_models() for all names."
        )
    return RECORDS[name]


def _check_keywords(record, kwargs):
    """A typo is a TypeError naming the closest argument, before anything is built."""
    family = record.family
    parameters = inspect.signature(family.__init__).parameters.values()
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return  # a generic wrapper hides the arguments; the family's own check still runs
    valid = [p.name for p in parameters if p.name != "self" and p.kind is not p.VAR_KEYWORD]
    valid += list(family.MODEL_KWARGS) + ["weights"]
    unknown = sorted(k for k in kwargs if k not in valid)
    if unknown:
        close = difflib.get_close_matches(unknown[0], valid, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else "."
        raise TypeError(
            f"create_model({record.name!r}) got an unexpected keyword argument {unknown[0]!r}{hint} "
            f"{family.__name__} takes: {', '.join(valid)}."
        )


def create_model(name, /, weights=None, input_shape=None, **kwargs):
    """Builds a registered variant, keras.applications style.

    Args:
        name: a name from `list_models()`, e.g. "deepvit_s" or "pit_b_distilled"
            (positional: a `name=` keyword names the Keras model instead).
        weights: None (random initialisation); "imagenet" (the official
            checkpoint, downloaded once and cached; see `variant_info(name)`);
            or a path: a PyTorch checkpoint (`.pth`, `.pth.tar`, `.bin`;
            official, timm or train-script layout), a `.safetensors` file, a
            Keras `.keras` model, or a `.weights.h5` file saved from the same
            configuration. Checkpoints and `.keras` files adapt to the model:
            position embeddings are resampled to `input_shape`, and with other
            `classes` (or `include_top=False`) everything but the classifier
            head(s) is loaded.
        input_shape: (height, width, 3); defaults to the variant's size.
        **kwargs: any family model argument (`include_top`, `pooling`,
            `classes`, `classifier_activation`, `include_preprocessing`,
            `drop_path_rate`, `input_tensor`, `dtype`, `name`, ...;
            architecture arguments too, e.g. `re_attention=False`).

    Returns:
        A `DeepViT`, `RefinerViT` or `PiT` Keras model.

    Example:
    >>> import keras_deepvit
    >>> model = keras_deepvit.create_model("pit_ti", input_shape=(64, 64, 3), classes=10)
    >>> model.output_shape
    (None, 10)
    """
    record = variant_info(name)
    _check_keywords(record, kwargs)
    arch = dict(record.arch)
    arch.update(kwargs)
    arch.setdefault("name", name)
    model = record.family(input_shape=input_shape or (record.size, record.size, 3), **arch)
    load_variant_weights(model, weights, record)
    return model
