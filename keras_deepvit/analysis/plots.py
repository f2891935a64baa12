"""PNG plots of an attention-collapse summary (matplotlib, the `analysis` extra, imported lazily).

`write_all(summary, states, images, out)` writes `similarity.png` (the block x
block heat map), `curves.png` (adjacent similarity, entropy, cross-head
similarity and rank residual per block) and `cls_attention.png` (the class
token's attention over the patch grid of some blocks, over the images);
`plot_comparison(summaries, path)` overlays several models' curves.
"""

import os

import numpy as np

CURVES = (
    ("adjacent_similarity", "similarity to next block (Eq. 2)"),
    ("centered_adjacent_similarity", "same, maps centred"),
    ("mean_entropy", "attention entropy (nats, mean over heads)"),
    ("cross_head_similarity", "cross-head similarity"),
    ("rank_residual", "rank residual ||X - 1x̄ᵀ||/||X||"),
)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, or a clear ImportError."""
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError(
            "keras_deepvit.analysis plots need matplotlib: pip install \"keras-deepvit[analysis]\" "
            "(or pass plots=False / --no-plots for the JSON only)."
        ) from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _values(summary, key):
    return np.array([np.nan if v is None else v for v in summary[key]], "float64")


def plot_similarity(summary, path):
    """The cross-layer similarity matrix as a heat map (grey where shapes differ)."""
    plt = pyplot()
    matrix = np.array([[np.nan if v is None else v for v in row] for row in summary["cross_layer_similarity"]])
    figure, axis = plt.subplots(figsize=(5, 4.2))
    image = axis.imshow(np.ma.masked_invalid(matrix), vmin=0, vmax=1, cmap="viridis")
    axis.set_facecolor("0.85")
    axis.set_xlabel("block")
    axis.set_ylabel("block")
    axis.set_title(f"{summary['model']}: cross-layer similarity\n"
                   f"{summary['similar_blocks']} similar blocks (> {summary['threshold']:g})", fontsize=9)
    figure.colorbar(image, ax=axis)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def plot_curves(summaries, path, title=None):
    """Per-block curves of one or more summaries (a dict label -> summary), one panel per metric."""
    plt = pyplot()
    figure, axes = plt.subplots(1, len(CURVES), figsize=(3.0 * len(CURVES), 2.9))
    for label, summary in summaries.items():
        for axis, (key, name) in zip(axes, CURVES):
            values = _values(summary, key)
            axis.plot(np.arange(len(values)), values, marker="o", markersize=3, label=label)
            axis.set_title(name, fontsize=9)
            axis.set_xlabel("block")
    for axis in axes[:2]:
        axis.axhline(next(iter(summaries.values()))["threshold"], color="0.6", linestyle="--", linewidth=1)
    axes[0].legend(fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def cls_grid(maps):
    """The class token's attention to the patch tokens, mean over heads, on the square patch grid.

    Args:
        maps: `(batch, heads, tokens, tokens)` of one block.

    Returns:
        `(batch, rows, rows)` array, or None when the patches do not form a square
        (the extra tokens are taken as the ones before the patches).
    """
    tokens = maps.shape[-1]
    for extra in (1, 2):
        rows = int(round(np.sqrt(tokens - extra)))
        if rows * rows == tokens - extra:
            return maps[:, :, 0, extra:].mean(axis=1).reshape(-1, rows, rows)
    return None


def plot_cls_attention(states, images, path, max_images=4):
    """The class token's attention of the first, a middle and the last block over each image."""
    plt = pyplot()
    count = len(states.maps)
    blocks = sorted({0, count // 2, count - 1})
    shown = min(max_images, len(images))
    figure, axes = plt.subplots(shown, len(blocks) + 1, figsize=(2 * (len(blocks) + 1), 2 * shown), squeeze=False)
    height, width = images.shape[1:3]
    for row in range(shown):
        image = np.clip(images[row] / 255.0, 0, 1)
        axes[row, 0].imshow(image)
        axes[row, 0].set_title("image", fontsize=8)
        for column, block in enumerate(blocks, start=1):
            axis = axes[row, column]
            grid = cls_grid(states.maps[block][row : row + 1])
            axis.imshow(image)
            if grid is not None:
                axis.imshow(grid[0], cmap="jet", alpha=0.5, extent=(-0.5, width - 0.5, height - 0.5, -0.5),
                          interpolation="bilinear")  # colours scaled per panel
            axis.set_title(f"block {block}", fontsize=8)
    for axis in axes.ravel():
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def write_all(summary, states, images, out):
    """Writes the three PNGs into `out`; returns their paths."""
    return [
        plot_similarity(summary, os.path.join(out, "similarity.png")),
        plot_curves({summary["model"]: summary}, os.path.join(out, "curves.png")),
        plot_cls_attention(states, images, os.path.join(out, "cls_attention.png")),
    ]


def plot_similarity_pair(summaries, path):
    """Side-by-side similarity heat maps of several summaries (label -> summary)."""
    plt = pyplot()
    figure, axes = plt.subplots(1, len(summaries), figsize=(3.6 * len(summaries), 3.4), squeeze=False)
    for axis, (label, summary) in zip(axes[0], summaries.items()):
        matrix = np.array([[np.nan if v is None else v for v in row] for row in summary["cross_layer_similarity"]])
        image = axis.imshow(np.ma.masked_invalid(matrix), vmin=0, vmax=1, cmap="viridis")
        axis.set_title(f"{label}\n{summary['similar_blocks']} similar blocks (> {summary['threshold']:g})", fontsize=9)
        axis.set_xlabel("block")
    axes[0][0].set_ylabel("block")
    figure.colorbar(image, ax=list(axes[0]))
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path
