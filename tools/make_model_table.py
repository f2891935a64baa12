"""Print the README's model and pretrained-weights tables (markdown) from the registries.

    python tools/make_model_table.py                   # print the table
    python tools/make_model_table.py --update README.md  # rewrite it in place

The README keeps the table between `<!-- model-table:start -->` and
`<!-- model-table:end -->`; `--update` replaces what lies between them.

Variants without a constructor of their own (the ViT baselines, the Refiner-ViT
384/448 resolutions) are listed as the constructor call that builds them,
derived from the registry: the constructor of the same family whose
architecture differs least, plus the differing arguments.
"""

import argparse
import inspect
import os
import sys
from pathlib import Path

# Only the registry is read; any backend will do, and JAX imports fastest.
os.environ.setdefault("KERAS_BACKEND", "jax")

import keras_deepvit  # noqa: E402
from keras_deepvit.models import CONSTRUCTORS  # noqa: E402
from keras_deepvit.models.variants import VARIANTS  # noqa: E402

START, END = "<!-- model-table:start -->", "<!-- model-table:end -->"
WEIGHTS_START, WEIGHTS_END = "<!-- weights-table:start -->", "<!-- weights-table:end -->"


def own_constructors():
    """variant name -> constructor name, from each constructor's default `name`."""
    owners = {}
    for constructor in CONSTRUCTORS:
        default = inspect.signature(getattr(keras_deepvit, constructor)).parameters["name"].default
        owners[default] = constructor
    return owners


def constructor_call(name, owners):
    """How `name` is built: `PiTS` or, e.g., `DeepViT16(re_attention=False)`."""
    if name in owners:
        return owners[name]
    variant = VARIANTS[name]
    candidates = []
    for base, constructor in owners.items():
        other = VARIANTS[base]
        if other["family"] is not variant["family"] or set(other["arch"]) - set(variant["arch"]):
            continue
        diff = {k: v for k, v in variant["arch"].items() if other["arch"].get(k) != v}
        if variant["size"] != other["size"]:
            diff["input_shape"] = (variant["size"], variant["size"], 3)
        candidates.append((len(diff), constructor, diff))
    if not candidates:
        raise ValueError(f"No constructor builds variant {name!r}; add one to constructors.py.")
    _, constructor, diff = min(candidates, key=lambda c: c[0])
    return f"{constructor}({', '.join(f'{k}={v!r}' for k, v in diff.items())})"


def model_table():
    """The markdown table, one row per registered variant, grouped by family."""
    owners = own_constructors()
    lines = [
        "| Name | Constructor | Params | Input | Official source |",
        "|---|---|---:|---|---|",
    ]
    for family in ("deepvit", "refiner", "pit"):
        for name in keras_deepvit.list_models(family):
            info = VARIANTS[name]
            lines.append(
                f"| `{name}` | `{constructor_call(name, owners)}` | {info['params']:,} "
                f"| {info['size']}x{info['size']} | {info['source']} |"
            )
    return "\n".join(lines)


def weights_table():
    """The markdown table of the official checkpoints behind `weights="imagenet"`."""
    from keras_deepvit.weights.pretrained import PRETRAINED

    lines = [
        "| Name | Reported top-1 | Input, crop, interpolation | Mean / std | Origins (tried in order) |",
        "|---|---:|---|---|---|",
    ]
    for name, entry in PRETRAINED.items():
        top1 = f"{entry.top1}" + (f" (timm: {entry.top1_timm})" if entry.top1_timm else "")
        norm = "ImageNet" if entry.mean[0] == 0.485 else "0.5 / 0.5"
        hosts = ", ".join(
            "Hugging Face (timm)" if "huggingface" in s.url else "Google Drive" for s in entry.sources
        )
        lines.append(
            f"| `{name}` | {top1} | {entry.input_size}, {entry.crop_pct}, {entry.interpolation} "
            f"| {norm} | {hosts} |"
        )
    return "\n".join(lines)


def replace_between(text, start, end, table, path):
    if start not in text or end not in text:
        raise SystemExit(f"{path}: markers {start} / {end} not found.")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{table}\n{end}{tail}"


def update(path, table):
    text = Path(path).read_text()
    text = replace_between(text, START, END, table, path)
    text = replace_between(text, WEIGHTS_START, WEIGHTS_END, weights_table(), path)
    Path(path).write_text(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--update", metavar="README", help="rewrite the table in this file")
    args = parser.parse_args(argv)
    table = model_table()
    if args.update:
        update(args.update, table)
    else:
        print(table)
        print()
        print(weights_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
