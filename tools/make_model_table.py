"""Print the README's model table (markdown) from the variant registry.

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


def update(path, table):
    text = Path(path).read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{path}: markers {START} / {END} not found.")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    Path(path).write_text(f"{head}{START}\n{table}\n{END}{tail}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--update", metavar="README", help="rewrite the table in this file")
    args = parser.parse_args(argv)
    table = model_table()
    if args.update:
        update(args.update, table)
    else:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
