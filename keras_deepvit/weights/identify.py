"""Which architecture a checkpoint holds, read from its keys and shapes alone.

`architecture_of(state_dict)` summarises an official-key state dict (family,
widths, depths, stem, heads where the weights reveal them, classes, patch grid);
`looks_like(state_dict)` names the registered variants with that architecture.
Used to say "this checkpoint looks like pit_s" when a checkpoint does not fit
the requested model. Head counts of plain attention are not visible in the
weights (q, k and v are one matrix), so they never rule a variant out.
"""

import re

from keras_deepvit.models.variants import VARIANTS

_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_PIT_BLOCK = re.compile(r"^transformers\.(\d+)\.blocks\.(\d+)\.")


def _shape(state_dict, key):
    value = state_dict.get(key)
    return tuple(value.shape) if value is not None else None


def _classes(state_dict):
    shape = _shape(state_dict, "head.weight")
    return shape[0] if shape else None


def _vit_architecture(state_dict):
    depth = 1 + max(int(m.group(1)) for m in map(_BLOCK.match, state_dict) if m)
    re_attention = [f"blocks.{i}.attn.reatten_matrix.weight" in state_dict for i in range(depth)]
    refiner = any(".attn.DLA." in k for k in state_dict)
    arch = {
        "family": "refiner" if refiner else "deepvit",
        "embed_dim": _shape(state_dict, "pos_embed")[-1],
        "depth": depth,
        "stem": "cnn" if "patch_embed.conv1.weight" in state_dict else "patch",
        "mlp_hidden": (_shape(state_dict, "blocks.0.mlp.fc1.weight") or (None,))[0],
        "classes": _classes(state_dict),
        "tokens": _shape(state_dict, "pos_embed")[1],
    }
    if refiner:
        arch["dense_head"] = "aux_head.weight" in state_dict
        exp = next((v.shape for k, v in state_dict.items() if k.endswith("DLA.conv_exp.weight")), None)
        if exp is not None:
            arch["heads"] = exp[1]
    else:
        arch["re_attention"] = re_attention
        mix = next((v.shape for k, v in state_dict.items() if k.endswith("reatten_matrix.weight")), None)
        if mix is not None:
            arch["heads"] = mix[0]
    return arch


def _pit_architecture(state_dict):
    blocks = {}
    for match in map(_PIT_BLOCK.match, state_dict):
        if match:
            stage, block = int(match.group(1)), int(match.group(2))
            blocks[stage] = max(blocks.get(stage, 0), block + 1)
    stages = sorted(blocks)
    conv = _shape(state_dict, "patch_embed.conv.weight")
    pos = _shape(state_dict, "pos_embed")
    return {
        "family": "pit",
        "depth": [blocks[s] for s in stages],
        "widths": [_shape(state_dict, f"transformers.{s}.blocks.0.norm1.weight")[0] for s in stages],
        "patch_size": conv[2] if conv else None,
        "distilled": (_shape(state_dict, "cls_token") or (0, 1))[1] == 2,
        "classes": _classes(state_dict),
        "grid": pos[2:] if pos else None,
    }


def architecture_of(state_dict):
    """A summary of the architecture in an official-key state dict.

    Returns:
        A dict with `family` ("deepvit", "refiner" or "pit") and the features the
        weights reveal, or None when the keys are not those of any family.

    Example:
    >>> import keras_deepvit
    >>> from keras_deepvit.weights import keras_to_torch_state_dict
    >>> model = keras_deepvit.create_model("pit_ti", input_shape=(64, 64, 3))
    >>> architecture_of(keras_to_torch_state_dict(model))["widths"]
    [64, 128, 256]
    """
    try:
        if any(k.startswith(("transformers.", "pools.")) for k in state_dict):
            return _pit_architecture(state_dict)
        if any(_BLOCK.match(k) for k in state_dict) and "pos_embed" in state_dict:
            return _vit_architecture(state_dict)
    except (TypeError, IndexError, ValueError):  # keys of a family, shapes of nothing we know
        return None
    return None


def variant_architecture(name):
    """The same summary for a registered variant, from its architecture arguments."""
    info = VARIANTS[name]
    arch = info["arch"]
    family = info["family"].__name__
    if family == "PiT":
        return {
            "family": "pit",
            "depth": list(arch["depth"]),
            "widths": [b * h for b, h in zip(arch["base_dims"], arch["heads"])],
            "patch_size": arch["patch_size"],
            "distilled": bool(arch.get("distilled", False)),
        }
    depth = arch["depth"]
    summary = {
        "family": "refiner" if family == "RefinerViT" else "deepvit",
        "embed_dim": arch["embed_dim"],
        "depth": depth,
        "stem": arch.get("stem", "patch"),
        "mlp_hidden": int(arch["embed_dim"] * arch["mlp_ratio"]),
        "heads": arch["num_heads"],
    }
    if family == "RefinerViT":
        summary["dense_head"] = bool(arch.get("dense_head", False))
    else:
        flags = arch.get("re_attention", True)
        summary["re_attention"] = [bool(flags)] * depth if isinstance(flags, bool) else list(flags)
    return summary


def looks_like(state_dict):
    """Registered variants whose architecture matches the state dict's, best first.

    Variants at the checkpoint's own resolution come first (e.g. `refiner_s`
    before `refiner_s_384` for a 224 checkpoint).

    Example:
    >>> import keras_deepvit
    >>> from keras_deepvit.weights import keras_to_torch_state_dict
    >>> model = keras_deepvit.create_model("pit_ti", input_shape=(64, 64, 3))
    >>> looks_like(keras_to_torch_state_dict(model))
    ['pit_ti']
    """
    found = architecture_of(state_dict)
    if found is None:
        return []
    matches = []
    for name in sorted(VARIANTS):
        expected = variant_architecture(name)
        if all(found.get(k) == v for k, v in expected.items() if k in found):
            matches.append(name)

    def same_resolution(name):
        size = VARIANTS[name]["size"]
        if found["family"] == "pit":
            arch = VARIANTS[name]["arch"]
            side = (size - arch["patch_size"]) // arch["stride"] + 1
            return tuple(found["grid"] or ()) == (side, side)
        return found["tokens"] == 1 + (size // 16) ** 2

    return sorted(matches, key=lambda n: (not same_resolution(n), n))


def describe(state_dict):
    """One line for error messages: the architecture found and the variants it matches."""
    found = architecture_of(state_dict)
    if found is None:
        return "The keys are not those of a DeepViT, Refiner-ViT or PiT checkpoint."
    names = looks_like(state_dict)
    details = ", ".join(f"{k}={v}" for k, v in found.items() if k != "family")
    if names:
        return f"The checkpoint looks like {names[0]!r} ({found['family']}: {details})."
    return f"The checkpoint is a {found['family']} model matching no registered variant ({details})."
