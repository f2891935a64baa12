"""Load official (or timm) PyTorch parameters, as numpy arrays, into our models."""

import keras
import numpy as np

from keras_deepvit.weights.checkpoint import normalize_state_dict
from keras_deepvit.weights.torch_layout import IGNORED_SUFFIXES, torch_layout

_SHOWN = 8

#: Kept for backward compatibility: `normalize_state_dict` under its first name.
normalize_keys = normalize_state_dict


def _as_numpy(value, key):
    if hasattr(value, "detach"):  # a torch tensor, if the caller passes one
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except Exception as error:  # noqa: BLE001 - report which key could not be read
        raise ValueError(f"State dict entry {key!r} is not array-like: {error}") from error


def _listing(items):
    items = list(items)
    shown = ", ".join(items[:_SHOWN])
    more = f" (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
    return f"{len(items)}: {shown}{more}"


def load_torch_state_dict(model, state_dict, skip=()):
    """Sets every variable of `model` from an official PyTorch state dict.

    Keys are the official parameter names (timm's PiT naming is accepted too);
    values are numpy arrays (or anything `np.asarray` takes, torch tensors
    included). Every Keras variable must be matched by exactly one key with the
    right shape after layout conversion (NCHW->NHWC kernels, transposed dense
    kernels, ...). On any missing, unexpected or mis-shaped key nothing is
    assigned and a ValueError lists them. BatchNorm `num_batches_tracked`
    entries are accepted and ignored.

    Args:
        model: a `DeepViT`, `RefinerViT` or `PiT` model.
        state_dict: mapping of parameter names to arrays.
        skip: official key prefixes to leave untouched on both sides (e.g.
            `("head", "head_dist", "aux_head")` to keep a new classifier).

    Returns:
        The list of official keys that were loaded.

    Example:
    >>> import keras_deepvit
    >>> from keras_deepvit.weights import load_torch_state_dict
    >>> model = keras_deepvit.create_model("pit_ti", input_shape=(64, 64, 3))
    >>> donor = keras_deepvit.create_model("pit_ti", input_shape=(64, 64, 3))
    >>> sd = keras_deepvit.weights.keras_to_torch_state_dict(donor)
    >>> len(load_torch_state_dict(model, sd)) == len(sd)
    True
    """
    state = normalize_state_dict(dict(state_dict))
    skip = tuple(skip)

    def skipped(key):
        return any(key == p or key.startswith(p + ".") for p in skip)

    expected = {key: (var, fn) for key, var, fn in torch_layout(model) if not skipped(key)}
    given = {
        k: v for k, v in state.items() if not k.endswith(IGNORED_SUFFIXES) and not skipped(k)
    }
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    assignments, mismatched = [], []
    for key, (variable, convert) in expected.items():
        if key not in given:
            continue
        array = _as_numpy(given[key], key)
        target = tuple(variable.shape)
        converted = convert.to_keras(array, target)
        if tuple(converted.shape) != target:
            mismatched.append(f"{key} {tuple(array.shape)} -> needs {target}")
            continue
        assignments.append((key, variable, converted))
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append("missing keys " + _listing(missing))
        if unexpected:
            problems.append("unexpected keys " + _listing(unexpected))
        if mismatched:
            problems.append("shape mismatches " + _listing(mismatched))
        raise ValueError(
            f"The state dict does not fit model '{model.name}'; nothing was loaded. "
            + "; ".join(problems)
            + ". Check that the model was built with the checkpoint's architecture "
            "and input size, or pass skip=(...) for parts you want to keep."
        )
    for key, variable, array in assignments:
        variable.assign(array.astype(variable.dtype))
    return [key for key, _, _ in assignments]


def keras_to_torch_state_dict(model):
    """The inverse of `load_torch_state_dict`: official key names -> numpy arrays.

    Useful to export weights back to the official PyTorch code and for tests.
    """
    out = {}
    for key, variable, convert in torch_layout(model):
        out[key] = convert.to_torch(np.asarray(keras.ops.convert_to_numpy(variable)))
    return out
