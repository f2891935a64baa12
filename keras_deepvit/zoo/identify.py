"""Which registered variant a checkpoint holds, from its keys and shapes alone.

`keras_deepvit.weights.architecture_of` summarises a state dict's
architecture; this compares the summary with every variant record. Head
counts of plain attention are not visible in the weights (q, k and v are one
matrix), so they never rule a variant out.
"""

from keras_deepvit.weights.identify import architecture_of
from keras_deepvit.weights.identify import describe as describe_architecture
from keras_deepvit.zoo.records import RECORDS


def variant_architecture(name):
    """The `architecture_of` summary a registered variant's checkpoint would have."""
    record = RECORDS[name]
    arch = record.arch
    if record.family_name == "pit":
        return {
            "family": "pit",
            "depth": list(arch["depth"]),
            "widths": [b * h for b, h in zip(arch["base_dims"], arch["heads"])],
            "patch_size": arch["patch_size"],
            "distilled": bool(arch.get("distilled", False)),
        }
    depth = arch["depth"]
    summary = {
        "family": record.family_name,
        "embed_dim": arch["embed_dim"],
        "depth": depth,
        "stem": arch.get("stem", "patch"),
        "mlp_hidden": int(arch["embed_dim"] * arch["mlp_ratio"]),
        "heads": arch["num_heads"],
    }
    if record.family_name == "refiner":
        summary["dense_head"] = bool(arch.get("dense_head", False))
    else:
        flags = arch.get("re_attention", True)
        summary["re_attention"] = [bool(flags)] * depth if isinstance(flags, bool) else list(flags)
    return summary


def _same_resolution(name, found):
    record = RECORDS[name]
    if found["family"] == "pit":
        arch = record.arch
        side = (record.size - arch["patch_size"]) // arch["stride"] + 1
        return tuple(found["grid"] or ()) == (side, side)
    return found["tokens"] == 1 + (record.size // 16) ** 2


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
    matches = [
        name for name in sorted(RECORDS)
        if all(found.get(k) == v for k, v in variant_architecture(name).items() if k in found)
    ]
    return sorted(matches, key=lambda n: (not _same_resolution(n, found), n))


def describe(state_dict):
    """One line for error messages: the architecture found and the variant it looks like."""
    return describe_architecture(state_dict, looks_like(state_dict))
