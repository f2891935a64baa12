"""Attention collapse, measured: a 16-block plain ViT against a 16-block DeepViT on the digits.

Trains both models with the same recipe (`keras_deepvit.training.job.run_training`,
the only difference being `re_attention`: `vit_16_baseline` against `deepvit_16`,
both narrowed by `--model-kwargs`), then measures every block's attention maps on
the validation digits (`keras_deepvit.analysis`) and writes, into `--out`:
`<model>/metrics.json` and its plots, `comparison.json`, `curves.png` (adjacent
similarity, entropy, cross-head similarity, rank residual of both models) and
`similarity.png` (both block x block matrices), and prints a Markdown table.

Needs: `pip install -e ".[train,analysis]"`; about 25 minutes on 2 busy CPU cores
with the defaults (dim 64, 4 heads, 16x16 input, patch 4, 12 epochs). Results and
what they say: docs/analysis.md.

    KERAS_BACKEND=tensorflow python tools/collapse_experiment.py --out /tmp/collapse
    python tools/collapse_experiment.py --out /tmp/collapse --skip-training  # re-analyse
"""

import argparse
import json
import os

import keras
import numpy as np

from keras_deepvit.analysis import plots, report
from keras_deepvit.training.digits import load_digits
from keras_deepvit.training.job import TrainingConfig, run_training

MODELS = {"ViT-16 (plain MHSA)": "vit_16_baseline", "DeepViT-16 (re-attention)": "deepvit_16"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="collapse-experiment")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--embed-dim", type=int, default=64)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--patch-size", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=4e-3, help="base rate at batch 512")
    parser.add_argument("--drop-path-rate", type=float, default=0.1)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--images", type=int, default=64, help="validation digits analysed")
    parser.add_argument("--skip-training", action="store_true", help="analyse the models already in --out")
    return parser.parse_args(argv)


def train(args, name):
    config = TrainingConfig(
        model=name, epochs=args.epochs, batch_size=64, image_size=args.image_size,
        learning_rate=args.learning_rate, drop_path_rate=args.drop_path_rate,
        model_kwargs={"embed_dim": args.embed_dim, "num_heads": args.num_heads, "patch_size": args.patch_size},
        output=os.path.join(args.out, name), verbose=2,
    )
    return run_training(config)


def main(argv=None):
    args = parse_args(argv)
    images, _ = load_digits("validation", image_size=args.image_size)
    images = images[: args.images].astype("float32")
    summaries = {}
    for label, name in MODELS.items():
        if not args.skip_training:
            train(args, name)
        model = keras.saving.load_model(os.path.join(args.out, name, "model.keras"), compile=False)
        summary, _ = report.write_report(model, images, os.path.join(args.out, name, "analysis"),
                                         threshold=args.threshold)
        with open(os.path.join(args.out, name, "evaluation.json")) as handle:
            summary["evaluation"] = json.load(handle)
        summaries[label] = summary
    with open(os.path.join(args.out, "comparison.json"), "w") as handle:
        json.dump(summaries, handle, indent=1)
    plots.plot_curves(summaries, os.path.join(args.out, "curves.png"),
                      title=f"16 blocks, dim {args.embed_dim}, {args.num_heads} heads, digits {args.image_size}px")
    plots.plot_similarity_pair(summaries, os.path.join(args.out, "similarity.png"))
    print(table(summaries))


def table(summaries):
    """The Markdown table of docs/analysis.md."""
    mean = lambda values: float(np.nanmean([np.nan if v is None else v for v in values]))
    lines = [
        "| model | val. acc. | adjacent sim. (mean / last 8) | similar blocks | centred adj. sim. "
        "(mean / last 8) | centred similar | entropy (mean; max log N) | cross-head sim. | rank res. (last) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, s in summaries.items():
        accuracy = s["evaluation"].get("accuracy", float("nan"))
        lines.append(
            f"| {label} | {100 * accuracy:.1f} % | {mean(s['adjacent_similarity']):.3f} / "
            f"{mean(s['adjacent_similarity'][-8:]):.3f} | {s['similar_blocks']} / {len(s['blocks'])} "
            f"| {mean(s['centered_adjacent_similarity']):.3f} / {mean(s['centered_adjacent_similarity'][-8:]):.3f} "
            f"| {s['centered_similar_blocks']} / {len(s['blocks'])} "
            f"| {mean(s['mean_entropy']):.3f}; {s['max_entropy'][0]:.3f} | "
            f"{mean(s['cross_head_similarity']):.3f} | {s['rank_residual'][-1]:.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
