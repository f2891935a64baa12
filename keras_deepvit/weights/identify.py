"""Which architecture a checkpoint holds, read from its keys and shapes alone.

`architecture_of(state_dict)` summarises an official-key state dict (family,
widths, depths, stem, heads where the weights reveal them, classes, patch grid);
`keras_deepvit.zoo.looks_like` compares it with the registered variants, to
say "this checkpoint looks like pit_s" when a checkpoint does not fit the
requested model. Head counts of plain attention are not visible in the
weights (q, k and v are one matrix), so they never rule a variant out.
"""

import re


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
    >>> model = keras_deepvit.PiT(base_dims=(8, 8), depth=(1, 1), heads=(2, 4), input_shape=(64, 64, 3))
    >>> architecture_of(keras_to_torch_state_dict(model))["widths"]
    [16, 32]
    """
    try:
        if any(k.startswith(("transformers.", "pools.")) for k in state_dict):
            return _pit_architecture(state_dict)
        if any(_BLOCK.match(k) for k in state_dict) and "pos_embed" in state_dict:
            return _vit_architecture(state_dict)
    except (TypeError, IndexError, ValueError):  # keys of a family, shapes of nothing we know
        return None
    return None


def describe(state_dict, variants=None):
    """One line for error messages: the architecture found and, when the caller
    (the zoo) compared it with the registered variants, the ones it matches.

    Example:
    >>> describe({"fc.weight": None})
    'The keys are not those of a DeepViT, Refiner-ViT or PiT checkpoint.'
    """
    found = architecture_of(state_dict)
    if found is None:
        return "The keys are not those of a DeepViT, Refiner-ViT or PiT checkpoint."
    details = ", ".join(f"{k}={v}" for k, v in found.items() if k != "family")
    if variants:
        return f"The checkpoint looks like {variants[0]!r} ({found['family']}: {details})."
    if variants is None:
        return f"The checkpoint is a {found['family']} model ({details})."
    return f"The checkpoint is a {found['family']} model matching no registered variant ({details})."
