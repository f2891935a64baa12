"""Print the model and pretrained-weights tables (markdown) from the variant records.

    python tools/make_model_table.py                                    # print them
    python tools/make_model_table.py --update README.md docs/weights.md  # rewrite in place

The README keeps the model table between `<!-- model-table:start -->` and
`<!-- model-table:end -->`, docs/weights.md the weights table between
`<!-- weights-table:start -->` and `<!-- weights-table:end -->`; `--update`
replaces what lies between each pair of markers a file holds (a file must hold
at least one pair).

Variants without a constructor of their own (the ViT baselines, the Refiner-ViT
384/448 resolutions) are listed as the constructor call that builds them,
derived from the records: the constructor of the same family whose
architecture differs least, plus the differing arguments.
"""

import argparse
import os
import sys
from pathlib import Path

# Only the records are read; any backend will do, and JAX imports fastest.
os.environ.setdefault("KERAS_BACKEND", "jax")

from keras_deepvit.zoo.records import RECORDS  # noqa: E402
from keras_deepvit.zoo.registry import list_models  # noqa: E402

START, END = "<!-- model-table:start -->", "<!-- model-table:end -->"
WEIGHTS_START, WEIGHTS_END = "<!-- weights-table:start -->", "<!-- weights-table:end -->"


def constructor_call(name):
    """How `name` is built: `PiTS` or, e.g., `DeepViT16(re_attention=False)`."""
    record = RECORDS[name]
    if record.constructor:
        return record.constructor
    candidates = []
    for other in RECORDS.values():
        if not other.constructor or other.family is not record.family or set(other.arch) - set(record.arch):
            continue
        diff = {k: v for k, v in record.arch.items() if other.arch.get(k) != v}
        if record.size != other.size:
            diff["input_shape"] = (record.size, record.size, 3)
        candidates.append((len(diff), other.constructor, diff))
    if not candidates:
        raise ValueError(f"No constructor builds variant {name!r}; give its record a constructor.")
    _, constructor, diff = min(candidates, key=lambda c: c[0])
    return f"{constructor}({', '.join(f'{k}={v!r}' for k, v in diff.items())})"


def model_table():
    """The markdown table, one row per registered variant, grouped by family."""
    lines = [
        "| Name | Constructor | Params | Input | Official source |",
        "|---|---|---:|---|---|",
    ]
    for family in ("deepvit", "refiner", "pit"):
        for name in list_models(family):
            record = RECORDS[name]
            lines.append(
                f"| `{name}` | `{constructor_call(name)}` | {record.params:,} "
                f"| {record.size}x{record.size} | {record.source} |"
            )
    return "\n".join(lines)


def weights_table():
    """The markdown table of the official checkpoints behind `weights="imagenet"`."""
    lines = [
        "| Name | Reported top-1 | Input, crop, interpolation | Mean / std | Origins (tried in order) |",
        "|---|---:|---|---|---|",
    ]
    for record in RECORDS.values():
        if not record.has_weights:
            continue
        top1 = f"{record.top1}" + (f" (timm: {record.top1_timm})" if record.top1_timm else "")
        norm = "ImageNet" if record.mean[0] == 0.485 else "0.5 / 0.5"
        hosts = ", ".join(
            "Hugging Face (timm)" if "huggingface" in c.url else "Google Drive" for c in record.checkpoints
        )
        lines.append(
            f"| `{record.name}` | {top1} | {record.size}, {record.crop_pct}, {record.interpolation} "
            f"| {norm} | {hosts} |"
        )
    return "\n".join(lines)


def replace_between(text, start, end, table):
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{table}\n{end}{tail}"


def update(path, table):
    text = Path(path).read_text()
    tables = [(START, END, lambda: table), (WEIGHTS_START, WEIGHTS_END, weights_table)]
    present = [(start, end, make) for start, end, make in tables if start in text and end in text]
    if not present:
        raise SystemExit(f"{path}: no table markers ({START} or {WEIGHTS_START}) found.")
    for start, end, make in present:
        text = replace_between(text, start, end, make())
    Path(path).write_text(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--update", metavar="FILE", nargs="+", help="rewrite the tables in these files")
    args = parser.parse_args(argv)
    table = model_table()
    if args.update:
        for path in args.update:
            update(path, table)
    else:
        print(table)
        print()
        print(weights_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
