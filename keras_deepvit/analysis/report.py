"""`keras-deepvit analyze`: every attention-collapse number of a model on some images, as JSON and plots.

`summarize(states)` turns `BlockStates` into a JSON-ready dict of every metric;
`write_report(model, images, out)` runs the model, writes `metrics.json` and
the plots of `keras_deepvit.analysis.plots` (matplotlib, extra `analysis`).
"""

import json
import logging
import os

import numpy as np

from keras_deepvit.analysis import metrics
from keras_deepvit.analysis.maps import block_states

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def _floats(values):
    """A list of floats for JSON, NaN as None."""
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(values, "float64").ravel()]


def summarize(states, threshold=metrics.DEFAULT_THRESHOLD):
    """Every metric of `states` (a `BlockStates`) as a JSON-ready dict.

    Args:
        states: `keras_deepvit.analysis.maps.BlockStates`.
        threshold: similarity above which adjacent blocks count as similar.

    Returns:
        dict with `blocks` (names), `map_shapes`, `cross_layer_similarity`
        (a list of rows, None where shapes differ), `adjacent_similarity`,
        `similar_blocks`, `threshold`, `centered_adjacent_similarity` and
        `centered_similar_blocks` (the same with `centered=True`), `cross_head_similarity`,
        `entropy` (per block, per head), `mean_entropy`, `max_entropy`
        (`log(keys)` per block), `rank_residual` and `row_stochastic`.

    Example:
    >>> from keras_deepvit.analysis.maps import BlockStates
    >>> a = np.full((1, 2, 3, 3), 1 / 3)
    >>> summary = summarize(BlockStates([a, a], [np.ones((1, 3, 4))] * 2, ["b0", "b1"]))
    >>> summary["similar_blocks"], summary["adjacent_similarity"], summary["rank_residual"]
    (2, [1.0], [0.0, 0.0])
    """
    matrix = metrics.cross_layer_similarity(states.maps)
    centered = metrics.cross_layer_similarity(states.maps, centered=True)
    entropy = [metrics.attention_entropy(m) for m in states.maps]
    return {
        "blocks": list(states.names),
        "map_shapes": [list(m.shape[1:]) for m in states.maps],
        "images": int(states.maps[0].shape[0]),
        "cross_layer_similarity": [_floats(row) for row in matrix],
        "adjacent_similarity": _floats(metrics.adjacent_similarity(matrix)),
        "threshold": float(threshold),
        "similar_blocks": metrics.similar_block_count(matrix, threshold),
        "centered_adjacent_similarity": _floats(metrics.adjacent_similarity(centered)),
        "centered_similar_blocks": metrics.similar_block_count(centered, threshold),
        "cross_head_similarity": _floats([metrics.cross_head_similarity(m) for m in states.maps]),
        "entropy": [_floats(e) for e in entropy],
        "mean_entropy": _floats([e.mean() for e in entropy]),
        "max_entropy": _floats([np.log(m.shape[-1]) for m in states.maps]),
        "rank_residual": _floats(
            [np.nan if t is None else metrics.rank_residual(t) for t in states.tokens]
        ),
        "row_stochastic": [metrics.is_row_stochastic(m) for m in states.maps],
    }


def load_images(folder, size, limit=None):
    """The images of `folder` (sorted by name) as RGB float32 `(n, size, size, 3)` in 0-255.

    Example:
    >>> import tempfile, PIL.Image
    >>> folder = tempfile.mkdtemp()
    >>> PIL.Image.new("RGB", (40, 20), (255, 0, 0)).save(f"{folder}/red.png")
    >>> images, names = load_images(folder, 32)
    >>> images.shape, names, float(images[0, 0, 0, 0])
    ((1, 32, 32, 3), ['red.png'], 255.0)
    """
    from PIL import Image

    if not os.path.isdir(folder):
        raise ValueError(f"--images {folder!r} is not a folder; give a folder of image files.")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_SUFFIXES))
    if limit is not None:
        names = names[:limit]
    if not names:
        raise ValueError(f"--images {folder!r} holds no image file ({', '.join(IMAGE_SUFFIXES)}).")
    images = []
    for name in names:
        with Image.open(os.path.join(folder, name)) as image:
            image = image.convert("RGB").resize((size, size), Image.BICUBIC)
            images.append(np.asarray(image, "float32"))
    return np.stack(images), names


def model_input_size(model):
    """The square input size of `model` (its input shape's height)."""
    shape = model.input_shape
    if isinstance(shape, list):
        shape = shape[0]
    if len(shape) != 4 or shape[1] is None or shape[1] != shape[2]:
        raise ValueError(
            f"analyze needs a model with a fixed square image input, got input shape {shape}."
        )
    return int(shape[1])


def write_report(model, images, out, threshold=metrics.DEFAULT_THRESHOLD, image_names=None,
                 plots=True, batch_size=16):
    """Runs `model` on `images`; writes `out/metrics.json` and (with `plots`) the PNGs.

    Args:
        model: see `keras_deepvit.analysis.maps.block_states`.
        images: `(n, height, width, 3)` in the model's input range.
        out: output folder (created).
        threshold: see `summarize`.
        image_names: names recorded in the JSON.
        plots: write the PNGs (needs matplotlib: `pip install "keras-deepvit[analysis]"`).

    Returns:
        `(summary dict, list of written paths)`.
    """
    os.makedirs(out, exist_ok=True)
    states = block_states(model, images, batch_size=batch_size)
    summary = {"model": model.name, **summarize(states, threshold)}
    if image_names is not None:
        summary["image_names"] = list(image_names)
    written = []
    if plots:
        from keras_deepvit.analysis import plots as plotting

        written += plotting.write_all(summary, states, images, out)
    path = os.path.join(out, "metrics.json")
    with open(path, "w") as handle:
        json.dump(summary, handle, indent=1)
    written.append(path)
    logger.info("analysis of %s written to %s", model.name, out)
    return summary, written
