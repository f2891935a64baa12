"""Weights files into built models: Keras files and PyTorch/safetensors checkpoints.

Every checkpoint goes the same way: read it without torch, find and normalise
its state dict, fit it to the model (position embeddings resampled to the
model's patch grid, classifier heads left out when the model has other classes
or none), then load it all-or-nothing with `load_torch_state_dict`.
"""

import logging
import os
import re
import warnings
import zipfile

import h5py
import keras
import numpy as np

from keras_deepvit.models.base import VisionTransformerFamily
from keras_deepvit.weights.checkpoint import extract_state_dict, normalize_state_dict
from keras_deepvit.weights.identify import describe
from keras_deepvit.weights.resample import (
    resample_map_embedding,
    resample_token_embedding,
)
from keras_deepvit.weights.restricted_unpickler import placeholder_kind
from keras_deepvit.weights.state_dict import keras_to_torch_state_dict, load_torch_state_dict
from keras_deepvit.weights.values import as_array, cast_for, listing

logger = logging.getLogger(__name__)

HEAD_KEYS = ("head", "head_dist", "aux_head")
KERAS_SUFFIXES = (".weights.h5", ".keras")


def _fit_position_embedding(model, state_dict, source_grid):
    """Resamples the checkpoint's `pos_embed` to the model's patch grid when they differ."""
    given = state_dict.get("pos_embed")
    if given is None:
        return state_dict
    target = tuple(model.pos_embed.embedding.shape)
    if model.POSITION_EMBEDDING == "map":
        wanted = (target[0], target[3], target[1], target[2])  # PyTorch (1, C, H, W)
        if given.ndim != 4 or given.shape == wanted or given.shape[1] != wanted[1]:
            return state_dict  # equal, or a real mismatch the strict loader reports
        resized = resample_map_embedding(given, wanted[2:])
    else:
        if given.ndim != 3 or given.shape == target or given.shape[2] != target[2]:
            return state_dict
        resized = resample_token_embedding(
            given, model.patch_grid, num_prefix_tokens=1, source_grid=source_grid
        )
    logger.info("Resampled pos_embed %s -> %s (bicubic).", given.shape, resized.shape)
    return dict(state_dict, pos_embed=resized)


def _heads_to_skip(model, state_dict):
    """The classifier heads to leave out, and why (None when all fit)."""
    in_checkpoint = [k for k in HEAD_KEYS if f"{k}.weight" in state_dict]
    if not in_checkpoint:
        return (), None
    if not model.get_config().get("include_top", True):
        return HEAD_KEYS, "include_top=False"
    classes = model.get_config().get("classes")
    given = state_dict[f"{in_checkpoint[0]}.weight"].shape[0]
    if classes != given:
        return HEAD_KEYS, f"classes={classes} differs from the checkpoint's {given}"
    return (), None


def _numeric_arrays(state_dict, source):
    """Every value as a numeric numpy array, before anything reads shapes; else one ValueError."""
    arrays, bad = {}, []
    for key, value in state_dict.items():
        try:
            arrays[key] = as_array(value, key)
        except ValueError as error:
            bad.append(str(error).rstrip("."))
    if bad:
        raise ValueError(
            f"{source}: unusable values {listing(bad, shown=3)}; nothing was loaded. Weights must "
            "be numeric tensors."
        )
    return arrays


def load_state_dict_into(
    model, state_dict, source="state dict", source_grid=None, describe=describe, allow_nonfinite=False
):
    """Loads an official-layout state dict into `model`, adapting size and head.

    Position embeddings are resampled to the model's input size; when the model
    has no top or another number of classes, everything but the classifier
    head(s) is loaded and one log line says so. Anything else that does not fit
    raises a ValueError naming the keys and the registered model the
    checkpoint looks like; nothing is loaded then.

    Args:
        model: a `DeepViT`, `RefinerViT` or `PiT`.
        state_dict: parameter name -> numpy array, official or timm names.
        source: name used in messages (a file path).
        source_grid: `(rows, cols)` of a non-square DeepViT/Refiner checkpoint's
            patch grid, needed only to resample it.
        describe: state dict -> one line for the error message (the zoo's
            names the registered variant the checkpoint looks like).
        allow_nonfinite: load NaN/Inf values instead of refusing them.

    Returns:
        The list of official keys loaded.
    """
    try:
        state_dict = normalize_state_dict(_numeric_arrays(state_dict, source))
    except ValueError as error:
        message = str(error)
        raise ValueError(message if message.startswith(f"{source}:") else f"{source}: {message}") from None
    state_dict = _fit_position_embedding(model, state_dict, source_grid)
    skip, reason = _heads_to_skip(model, state_dict)
    try:
        loaded = load_torch_state_dict(model, state_dict, skip=skip, allow_nonfinite=allow_nonfinite)
    except ValueError as error:
        raise ValueError(f"{source}: {error} {describe(state_dict)}") from None
    if reason:
        logger.warning(
            "%s: %s, so the classifier head(s) were not loaded; everything else was (%d tensors).",
            source, reason, len(loaded),
        )
    return loaded


def _refusal(found):
    where, _ = found[0]
    more = f" (and {len(found) - 1} more refused objects)" if len(found) > 1 else ""
    return (
        f"holds {placeholder_kind(found[0].placeholder)} at key {where!r}{more}; nothing was "
        "executed. Only tensors and plain containers are read from checkpoints: re-save the "
        "state dict with plain tensors (torch.save(model.state_dict(), ...))."
    )


def read_state_dict(path, prefer_ema=True):
    """The normalised state dict of a PyTorch or safetensors checkpoint file, without torch.

    Weights stored under a global the reader does not rebuild (anything but
    tensors and plain containers) are refused; such objects elsewhere in the
    file (e.g. timm's `args` Namespace) are skipped with one warning.

    Returns:
        `(state_dict, description)`, the description naming the format and the
        container the weights came from.
    """
    from keras_deepvit.weights.checkpoint_reader import find_placeholders, read_checkpoint

    checkpoint = read_checkpoint(path)
    try:
        state_dict, location = extract_state_dict(checkpoint.content, prefer_ema, source=path)
    except ValueError:
        # No state dict: if refused globals stand where the weights would be, say so.
        refused = find_placeholders(checkpoint.content)
        if not refused:
            raise
        raise ValueError(f"{path}: no model weights could be read: the file " + _refusal(refused)) from None
    inside = find_placeholders(state_dict)
    if inside:
        raise ValueError(f"{path}: the weights " + _refusal(inside))
    if checkpoint.placeholders:
        warnings.warn(
            f"{path}: ignored pickled objects outside the weights ({', '.join(checkpoint.placeholders)}); "
            "they were not imported or run.",
            stacklevel=3,
        )
    description = checkpoint.format + (f", weights from {location!r}" if location else "")
    return normalize_state_dict(state_dict), description


def load_checkpoint(
    model, path, prefer_ema=True, source_grid=None, describe=describe, allow_nonfinite=False
):
    """Loads a PyTorch (`.pth`, `.pth.tar`, `.bin`, zip or legacy) or `.safetensors` file.

    Args:
        model: a `DeepViT`, `RefinerViT` or `PiT`.
        path: the checkpoint file (official, timm or train-script layout).
        prefer_ema: use EMA weights when the checkpoint has both.
        source_grid, describe, allow_nonfinite: see `load_state_dict_into`.

    Returns:
        A description of what was loaded (format and container).

    Example:
    >>> import os, tempfile, keras_deepvit
    >>> from safetensors.numpy import save_file
    >>> from keras_deepvit.weights import keras_to_torch_state_dict
    >>> donor = keras_deepvit.create_model("pit_ti", input_shape=(64, 64, 3))
    >>> path = os.path.join(tempfile.mkdtemp(), "pit_ti.safetensors")
    >>> save_file(keras_to_torch_state_dict(donor), path)
    >>> model = keras_deepvit.create_model("pit_ti", weights=path, input_shape=(96, 64, 3))
    >>> model.output_shape
    (None, 1000)
    """
    state_dict, description = read_state_dict(path, prefer_ema)
    load_state_dict_into(
        model, state_dict, source=path, source_grid=source_grid, describe=describe,
        allow_nonfinite=allow_nonfinite,
    )
    return description


def _short(error, limit=400):
    """Keras' loading error without the variable values it prints, on one line, cut to `limit`."""
    text = re.sub(r", value=[\s\S]*?\]>", ">", str(error))
    text = re.sub(r", value=[^<>\[]*>", ">", text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _snapshot(model):
    # Copies: on the PyTorch backend a CPU variable's numpy view shares its memory.
    return [np.array(keras.ops.convert_to_numpy(v), copy=True) for v in model.variables]


def _restore(model, values):
    for variable, value in zip(model.variables, values):
        variable.assign(value)


def _check_h5_arrays(path, allow_nonfinite):
    """Reads every array of a `.weights.h5` file and checks it before Keras assigns any."""
    bad, unreadable, names = [], [], []

    def visit(name, item):
        if isinstance(item, h5py.Dataset):
            names.append(name)
            try:
                array = as_array(item[()], name)
                cast_for(array, name, array.dtype, allow_nonfinite)
            except ValueError as error:
                bad.append(str(error).rstrip("."))
            except OSError as error:
                unreadable.append(f"{name} ({error})")

    try:
        with h5py.File(path, "r") as handle:
            handle.visititems(visit)
    except OSError as error:
        unreadable.append(str(error))
    if unreadable:
        raise ValueError(
            f"{path}: not a readable .weights.h5 file, truncated or corrupt? ({_short(unreadable[0])}). "
            "Nothing was loaded; save the weights again."
        )
    if bad:
        raise ValueError(f"{path}: unusable values {listing(bad, shown=3)}; nothing was loaded.")
    return names


def _load_h5(model, path, allow_nonfinite):
    arrays = _check_h5_arrays(path, allow_nonfinite)
    before = _snapshot(model)
    try:
        # Keras loads what it finds and ignores the rest: a file of a deeper model would load.
        if len(arrays) != len(model.weights):
            raise ValueError(f"the file holds {len(arrays)} arrays, the model has {len(model.weights)} weights")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.load_weights(path)
        # Keras skips sublayer containers it does not find with a warning, keeping their
        # fresh initialisation: a half-loaded model, refused like any other misfit.
        skipped = [w for w in caught if "Skipping" in str(w.message) or "fresh" in str(w.message)]
        if skipped:
            raise ValueError(str(skipped[0].message))
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    except Exception as error:  # noqa: BLE001 - Keras raises assorted types for a misfit file
        _restore(model, before)  # Keras may have assigned some layers before failing
        raise ValueError(
            f"{path}: could not load these Keras weights into {model.name!r}; nothing was loaded "
            f"({_short(error)}). A .weights.h5 file only fits a model of the same configuration "
            "(input size, classes, include_top); to adapt, save the full model as .keras or use "
            "a PyTorch/safetensors checkpoint."
        ) from None


def _load_keras_file(model, path, describe, allow_nonfinite=False):
    if not path.endswith(".keras"):
        _load_h5(model, path, allow_nonfinite)
        return
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path}: not a readable .keras file (a .keras file is a zip archive; this one is "
            "truncated or corrupt). Nothing was loaded; save the model again."
        )
    try:
        saved = keras.saving.load_model(path, compile=False)
    except Exception as error:  # noqa: BLE001 - Keras raises assorted types (and "File not found")
        raise ValueError(
            f"{path}: could not read this .keras file ({_short(error)}); nothing was loaded."
        ) from None
    if not isinstance(saved, VisionTransformerFamily):
        raise ValueError(f"{path}: not a keras_deepvit model ({type(saved).__name__}).")
    load_state_dict_into(
        model, keras_to_torch_state_dict(saved), source=path, describe=describe,
        allow_nonfinite=allow_nonfinite,
    )


def load_weights(model, weights, prefer_ema=True, describe=describe, allow_nonfinite=False):
    """Loads a weights file into a built model (any family).

    Args:
        model: a `DeepViT`, `RefinerViT` or `PiT`.
        weights: None (nothing to do) or a path: Keras `.weights.h5` (same
            configuration) or `.keras` (any input size/classes), or a PyTorch
            (`.pth`, `.pth.tar`, `.pt`, `.bin`) / `.safetensors` checkpoint.
            `"imagenet"` belongs to the registered variants:
            `keras_deepvit.create_model(name, weights="imagenet")`.
        prefer_ema: for checkpoints with both raw and EMA weights.
        describe: see `load_state_dict_into`.
        allow_nonfinite: load NaN/Inf values instead of refusing them.

    Every value is checked (numeric, castable, finite) before the first
    variable is assigned; on any failure, a ValueError naming the file, and
    every variable is as before.

    Returns:
        The model.
    """
    if weights is None:
        return model
    if isinstance(weights, str) and weights == "imagenet":
        raise ValueError(
            "weights='imagenet' needs a registered model: use "
            "keras_deepvit.create_model(name, weights='imagenet') or a named constructor."
        )
    try:
        path = os.fspath(weights)
    except TypeError:
        raise ValueError(
            f"weights must be None, 'imagenet' or a file path, got {type(weights).__name__}."
        ) from None
    if not os.path.isfile(path):
        raise ValueError(f"weights file not found: {path!r}.")
    if path.endswith(KERAS_SUFFIXES):
        _load_keras_file(model, path, describe, allow_nonfinite)
    else:
        load_checkpoint(model, path, prefer_ema=prefer_ema, describe=describe, allow_nonfinite=allow_nonfinite)
    return model
