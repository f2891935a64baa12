"""Checkpoint normalisation: from whatever a training script saved to official key names.

Pure functions, state dict in, state dict out (values are numpy arrays):

- `extract_state_dict` finds the weights inside a checkpoint: a plain state
  dict, or a dict holding one under `state_dict`, `state_dict_ema`, `model`,
  `model_ema`, `module` or `net` (timm's train script, DeiT/PiT's `main.py`,
  ...), EMA weights preferred when both are present (`prefer_ema=False` takes
  the raw ones).
- `normalize_state_dict` strips wrapper prefixes (`module.` from
  DataParallel/DDP, `_orig_mod.` from `torch.compile`, `model.`), renames timm's
  PiT pooling keys (`transformers.N.pool`, in both numberings timm has used) to
  the official `pools.N`, and joins a separate `dist_token` onto `cls_token`
  (the DeiT-style distilled layout).
"""

import re

import numpy as np

from keras_deepvit.weights.restricted_unpickler import Placeholder, short_repr
from keras_deepvit.weights.values import listing

#: Containers that hold a state dict, most preferred first (EMA first when preferred).
_EMA_KEYS = ("state_dict_ema", "model_ema", "ema", "module_ema")
_RAW_KEYS = ("state_dict", "model", "module", "net", "params", "weights")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")
_TIMM_POOL = re.compile(r"^transformers\.(\d+)\.pool\.(.*)$")


def _is_array(value):
    return isinstance(value, np.ndarray)


def is_state_dict(obj):
    """True for a non-empty mapping of string keys whose values are mostly arrays."""
    if not isinstance(obj, dict) or not obj:
        return False
    if not all(isinstance(k, str) for k in obj):
        return False
    arrays = sum(_is_array(v) for v in obj.values())
    return arrays > 0 and arrays >= len(obj) / 2


def extract_state_dict(content, prefer_ema=True, source="checkpoint"):
    """The weights inside a checkpoint, and where they were found.

    Args:
        content: the checkpoint's unpickled object (see `read_checkpoint`).
        prefer_ema: take `state_dict_ema`/`model_ema` over `state_dict`/`model`
            when a checkpoint has both (timm saves both; EMA weights are the ones
            its evaluation reports).
        source: a name for error messages (the file path).

    Returns:
        `(state_dict, location)`: a dict of arrays and the container key path
        (e.g. `"state_dict_ema"`, or `""` for a plain state dict).

    Example:
    >>> sd = {"w": np.zeros(2)}
    >>> extract_state_dict({"state_dict": sd, "state_dict_ema": sd, "epoch": 3})[1]
    'state_dict_ema'
    """
    path = []
    current = content
    for _ in range(4):  # wrappers nest at most a few levels deep
        if is_state_dict(current):
            _check_values(current, ".".join(path), source)
            return dict(current), ".".join(path)
        if not isinstance(current, dict):
            break
        order = _EMA_KEYS + _RAW_KEYS if prefer_ema else _RAW_KEYS + _EMA_KEYS
        found = next((k for k in order if isinstance(current.get(k), dict) and current.get(k)), None)
        if found is None:
            break
        path.append(found)
        current = current[found]
    if isinstance(content, dict):
        top = f"a dict of {len(content):,} keys: {listing(sorted(map(short_repr, content)), count=False)}"
    else:
        top = f"a {type(content).__name__}"
    raise ValueError(
        f"{source}: no model weights found. Expected a state dict (parameter name -> tensor) "
        f"or a dict holding one under one of {list(_RAW_KEYS + _EMA_KEYS)}; the file holds "
        f"{top}."
    )


def _check_values(state_dict, location, source):
    """Every value a tensor; placeholders and ``*._extra_state`` entries are left to the caller."""
    for key, value in state_dict.items():
        if _is_array(value) or isinstance(value, Placeholder) or key.endswith("_extra_state"):
            continue
        if isinstance(value, type) and issubclass(value, Placeholder):
            continue
        where = f"{location}.{key}" if location else key
        raise ValueError(
            f"{source}: the state dict entry {short_repr(where)} is a {type(value).__name__} "
            f"({short_repr(value, 60)}), not a tensor; a state dict maps parameter names to "
            "tensors. Re-save it with torch.save(model.state_dict(), ...)."
        )


def _strip_prefixes(state_dict):
    for prefix in _WRAPPER_PREFIXES:
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def _rename_timm_pools(state_dict):
    stages = {int(m.group(1)) for m in map(_TIMM_POOL.match, state_dict) if m}
    if not stages:
        return state_dict
    # timm >= 0.9 puts the pooling at the start of stage i+1 (no pool in stage 0);
    # older layouts put it at the end of stage i (stage 0 has one).
    offset = 0 if 0 in stages else 1
    renamed = {}
    for key, value in state_dict.items():
        match = _TIMM_POOL.match(key)
        if match:
            key = f"pools.{int(match.group(1)) - offset}.{match.group(2)}"
        renamed[key] = value
    return renamed


def _join_dist_token(state_dict):
    if "dist_token" not in state_dict or "cls_token" not in state_dict:
        return state_dict
    cls, dist = (np.asarray(state_dict[k]) for k in ("cls_token", "dist_token"))
    if cls.ndim != 3 or dist.shape != (cls.shape[0], 1, cls.shape[2]):
        raise ValueError(
            f"cls_token {cls.shape} and dist_token {dist.shape} do not join into one (1, 2, dim) "
            "token array: expected both (1, 1, dim) with the same dim (a distilled PiT/DeiT layout)."
        )
    joined = {}
    for key, value in state_dict.items():
        if key == "cls_token":
            value = np.concatenate([cls, dist], axis=1)
        if key != "dist_token":
            joined[key] = value
    return joined


def normalize_state_dict(state_dict):
    """Official key names from any of the supported layouts (see the module docstring).

    Example:
    >>> sorted(normalize_state_dict({"module.transformers.1.pool.fc.bias": np.zeros(2)}))
    ['pools.0.fc.bias']
    """
    state_dict = _strip_prefixes(dict(state_dict))
    state_dict = _rename_timm_pools(state_dict)
    return _join_dist_token(state_dict)
