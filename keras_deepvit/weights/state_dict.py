"""Load official (or timm) PyTorch parameters, as numpy arrays, into our models."""

import keras
import numpy as np

from keras_deepvit.weights.checkpoint import normalize_state_dict
from keras_deepvit.weights.torch_layout import IGNORED_SUFFIXES, torch_layout
from keras_deepvit.weights.values import SHOWN, cast_for, listing

#: Kept for backward compatibility: `normalize_state_dict` under its first name.
normalize_keys = normalize_state_dict


def _as_numpy(value, key):
    if hasattr(value, "detach"):  # a torch tensor, if the caller passes one
        value = value.detach().cpu().numpy()
    if isinstance(value, (str, bytes, dict)) or value is None:
        raise ValueError(f"State dict entry {key!r} is a {type(value).__name__}, not a tensor")
    try:
        array = np.asarray(value)
    except Exception as error:  # noqa: BLE001 - report which key could not be read
        raise ValueError(f"State dict entry {key!r} is not array-like: {error}") from error
    if array.dtype.kind not in "biufc":
        raise ValueError(
            f"State dict entry {key!r} is a {type(value).__name__} holding {array.dtype} values, not a tensor"
        )
    return array


def _torch_shape(convert, shape):
    """The PyTorch-layout shape a Keras variable of `shape` is saved as."""
    return tuple(convert.to_torch(np.zeros(shape, "float32")).shape)


def _assign_all(model, assignments):
    """Assigns every `(key, variable, array)`; on any failure restores them all first."""
    before = [np.array(keras.ops.convert_to_numpy(v), copy=True) for _, v, _ in assignments]
    done = 0
    try:
        for _, variable, array in assignments:
            variable.assign(array)
            done += 1
    except Exception as error:
        for (_, variable, _), value in zip(assignments[:done], before):
            variable.assign(value)
        raise ValueError(
            f"Could not assign {assignments[done][0]!r} to model '{model.name}' "
            f"({type(error).__name__}: {str(error)[:200]}); every variable was restored."
        ) from error


def load_torch_state_dict(model, state_dict, skip=(), allow_nonfinite=False):
    """Sets every variable of `model` from an official PyTorch state dict.

    Keys are the official parameter names (timm's PiT naming is accepted too);
    values are numpy arrays (or anything `np.asarray` takes, torch tensors
    included). Every Keras variable must be matched by exactly one key with the
    right shape after layout conversion (NCHW->NHWC kernels, transposed dense
    kernels, ...) and a value that casts to the variable's dtype: numbers (no
    strings, objects, booleans or complex numbers), finite unless
    `allow_nonfinite`. On any missing, unexpected, mis-shaped or bad value
    nothing is assigned and a ValueError lists them (shapes in PyTorch layout). BatchNorm `num_batches_tracked`
    entries are accepted and ignored.

    Args:
        model: a `DeepViT`, `RefinerViT` or `PiT` model.
        state_dict: mapping of parameter names to arrays.
        skip: official key prefixes to leave untouched on both sides (e.g.
            `("head", "head_dist", "aux_head")` to keep a new classifier).
        allow_nonfinite: load NaN/Inf values instead of refusing them.

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
    assignments, mismatched, bad_values = [], [], []
    for key, (variable, convert) in expected.items():
        if key not in given:
            continue
        try:
            array = _as_numpy(given[key], key)
        except ValueError as error:
            bad_values.append(str(error).rstrip("."))
            continue
        target = tuple(variable.shape)
        converted = convert.to_keras(array, target)
        if tuple(converted.shape) != target:
            if len(mismatched) < SHOWN:  # the PyTorch shape costs an array: only for those shown
                mismatched.append(f"{key} {tuple(array.shape)}, model needs {_torch_shape(convert, target)}")
            else:
                mismatched.append(key)
            continue
        try:
            assignments.append((key, variable, cast_for(converted, key, variable.dtype, allow_nonfinite)))
        except ValueError as error:
            bad_values.append(str(error).rstrip("."))
    if bad_values and not (missing or unexpected or mismatched):
        raise ValueError(
            f"Model '{model.name}': nothing was loaded; unusable values "
            + listing(bad_values, shown=3) + "."
        )
    if missing or unexpected or mismatched or bad_values:
        problems = []
        if bad_values:
            problems.append("unusable values " + listing(bad_values, shown=3))
        if missing:
            problems.append("missing keys " + listing(missing))
        if unexpected:
            problems.append("unexpected keys " + listing(unexpected))
        if mismatched:
            problems.append("shape mismatches (checkpoint vs model, PyTorch layout) " + listing(mismatched))
        raise ValueError(
            f"The state dict does not fit model '{model.name}'; nothing was loaded. "
            + "; ".join(problems)
            + ". Check that the model was built with the checkpoint's architecture "
            "and input size, or pass skip=(...) for parts you want to keep."
        )
    _assign_all(model, assignments)
    return [key for key, _, _ in assignments]


def keras_to_torch_state_dict(model):
    """The inverse of `load_torch_state_dict`: official key names -> numpy arrays.

    Useful to export weights back to the official PyTorch code and for tests.
    """
    out = {}
    for key, variable, convert in torch_layout(model):
        out[key] = convert.to_torch(np.asarray(keras.ops.convert_to_numpy(variable)))
    return out
