"""`weights="imagenet"`: download the official checkpoint once, convert it once.

The first use of a variant downloads its checkpoint (see `pretrained.py` for
the origins; `$KERAS_DEEPVIT_WEIGHTS_MIRROR` for air-gapped machines),
converts it into the variant's default configuration and writes the Keras
`.weights.h5` atomically into the cache. Later uses load that file. A model
built with another input size, class count or without top gets the cached
weights through a default-configuration twin, with position embeddings
resampled and the heads left out as needed.
"""

import inspect
import os

from keras_deepvit.weights import download
from keras_deepvit.weights.loading import load_checkpoint, load_state_dict_into
from keras_deepvit.weights.pretrained import pretrained_info
from keras_deepvit.weights.state_dict import keras_to_torch_state_dict

#: Config entries that create no variables: any value fits the cached weights file.
_WEIGHTLESS_CONFIG = {
    "name", "trainable", "dtype", "classifier_activation", "pooling", "separate_heads",
    "dropout_rate", "attention_dropout_rate", "drop_path_rate", "include_preprocessing",
    "input_tensor",
}


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def default_config(variant):
    """The architecture config of `create_model(variant)` with every default filled in."""
    from keras_deepvit.models.registry import variant_info

    info = variant_info(variant)
    family = info["family"]
    config = {
        name: p.default
        for name, p in inspect.signature(family.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    config.update(info["arch"])
    config["input_shape"] = (info["size"], info["size"], 3)
    return config


def fits_default_config(model, variant):
    """True when `model` has exactly the variables of the variant's default configuration."""
    expected = default_config(variant)
    actual = model._arch_config
    return all(
        _plain(actual.get(key)) == _plain(value)
        for key, value in expected.items()
        if key not in _WEIGHTLESS_CONFIG
    ) and set(actual) - _WEIGHTLESS_CONFIG <= set(expected)


def manual_command(variant, filename, converted_path):
    """The one command that converts a hand-downloaded checkpoint into the cache."""
    return f"keras-deepvit convert {filename} --model {variant} -o {converted_path}"


def looks_like_checkpoint(path):
    """Cheap check of a download's first bytes: a zip or pickle `.pth`, or safetensors.

    A full parse follows at conversion; this only rejects what is certainly no
    checkpoint (an error page, a quota notice) before it enters the cache.
    """
    with open(path, "rb") as handle:
        head = handle.read(16)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return
    if len(head) >= 9 and head[8:9] == b"{":  # safetensors: 8-byte header size, JSON header
        return
    raise ValueError(f"not a PyTorch or safetensors checkpoint (starts with {head[:12]!r})")


def fetch_checkpoint(variant, cache_dir=None):
    """The local path of the variant's official checkpoint, downloaded if needed."""
    entry = pretrained_info(variant)
    converted = os.path.join(download.cache_dir(cache_dir), entry.converted_filename)
    errors = []
    for source in entry.sources:
        try:
            return download.fetch(
                source.filename, [source.url], sha256=source.sha256, cache_dir=cache_dir,
                manual_hint=manual_command(variant, source.filename, converted),
                validate=looks_like_checkpoint,
            )
        except download.WeightsDownloadError as error:
            errors.append(str(error))
    if len(errors) == 1:
        raise download.WeightsDownloadError(errors[0])
    raise download.WeightsDownloadError(
        f"No source of the {variant} checkpoint could be used:\n\n" + "\n\n".join(errors)
    )


def save_weights_atomically(model, path):
    """`model.save_weights(path)` such that a killed process leaves no file at `path`."""
    with download.atomic_output(path) as temporary:
        # Keras insists on the .weights.h5 suffix, so write beside the temporary name.
        staged = temporary + ".weights.h5"
        try:
            model.save_weights(staged)
            os.replace(staged, temporary)
        finally:
            if os.path.exists(staged):
                os.remove(staged)


def load_imagenet_weights(model, variant, cache_dir=None):
    """Loads the official ImageNet weights of `variant` into `model`.

    Args:
        model: a model built by `create_model(variant, ...)` (any input size,
            classes or include_top).
        variant: a registered name with an entry in `PRETRAINED`.
        cache_dir: where checkpoints and converted weights live; default
            `$KERAS_DEEPVIT_CACHE_DIR` or the Keras cache.

    Returns:
        The path of the converted `.weights.h5` in the cache.
    """
    from keras_deepvit.models.registry import create_model

    entry = pretrained_info(variant)
    converted = os.path.join(download.cache_dir(cache_dir), entry.converted_filename)
    direct = fits_default_config(model, variant)
    if not os.path.exists(converted):
        raw = fetch_checkpoint(variant, cache_dir)
        target = model if direct else create_model(variant)
        load_checkpoint(target, raw)
        save_weights_atomically(target, converted)
        if direct:
            return converted
        donor = target
    elif direct:
        model.load_weights(converted)
        return converted
    else:
        donor = create_model(variant)
        donor.load_weights(converted)
    load_state_dict_into(model, keras_to_torch_state_dict(donor), source=f"{variant} ImageNet weights")
    return converted
