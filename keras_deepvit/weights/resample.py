"""Position-embedding resampling: use a checkpoint at another input size.

A checkpoint trained at 224x224 stores one position embedding per patch of a
14x14 grid (DeepViT / Refiner-ViT: a token sequence `(1, 1 + 14*14, C)` with
the class token first; PiT: a map `(1, C, 27, 27)`). A model built for another
input size has another grid, so the embedding is resized as an image with
antialiased bicubic interpolation — the filter PIL and
`torch.nn.functional.interpolate(mode="bicubic", antialias=True)` use, which is
what timm applies when it resizes position embeddings — while the class and
distillation tokens are kept as they are. Pure numpy, computed in float64.
"""

import math

import numpy as np

#: Keys' cubic filter coefficient of the antialiased (PIL-style) bicubic filter.
_CUBIC_A = -0.5


def _cubic(x):
    x = np.abs(x)
    a = _CUBIC_A
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = ((x - 5.0) * x + 8.0) * x * a - 4.0 * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def bicubic_matrix(in_size, out_size):
    """The `(out_size, in_size)` matrix of 1-D antialiased bicubic resampling.

    Pixel centres are aligned as with `align_corners=False`. When shrinking,
    the filter is widened by the scale factor (antialiasing); every row sums
    to 1, so a constant signal stays constant.

    Example:
    >>> m = bicubic_matrix(4, 8)
    >>> m.shape, bool(np.allclose(m.sum(axis=1), 1.0))
    ((8, 4), True)
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"Sizes must be positive, got in_size={in_size}, out_size={out_size}.")
    scale = in_size / out_size
    stretch = max(scale, 1.0)
    support = 2.0 * stretch
    matrix = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        taps = np.arange(lo, hi)
        weights = _cubic((taps - center + 0.5) / stretch)
        matrix[i, lo:hi] = weights / weights.sum()
    return matrix


def resize_grid(grid, out_hw):
    """Resizes a `(height, width, channels)` array to `out_hw` (bicubic, antialiased).

    Example:
    >>> resize_grid(np.ones((14, 14, 2)), (24, 20)).shape
    (24, 20, 2)
    """
    grid = np.asarray(grid, np.float64)
    rows = bicubic_matrix(grid.shape[0], out_hw[0])
    cols = bicubic_matrix(grid.shape[1], out_hw[1])
    return np.einsum("ih,hwc,jw->ijc", rows, grid, cols)


def square_grid(num_patches, what="position embedding"):
    """The side of a square patch grid with `num_patches` cells, or a clear error."""
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(
            f"Cannot resample the {what}: its {num_patches} patch positions are not a "
            "square grid, so the checkpoint's grid shape is ambiguous. Build the model at "
            "the checkpoint's input size, or pass source_grid=(rows, cols)."
        )
    return side, side


def resample_token_embedding(embedding, target_grid, num_prefix_tokens=1, source_grid=None):
    """DeepViT / Refiner-ViT `pos_embed` `(1, prefix + h*w, C)` to another patch grid.

    Args:
        embedding: array `(1, num_prefix_tokens + rows * cols, channels)`.
        target_grid: `(rows, cols)` of the new model's patch grid.
        num_prefix_tokens: leading class (distillation) tokens, copied unchanged.
        source_grid: `(rows, cols)` of the checkpoint; default: a square grid.

    Returns:
        `(1, num_prefix_tokens + target rows * cols, channels)`, the input's dtype.

    Example:
    >>> resample_token_embedding(np.zeros((1, 1 + 14 * 14, 8), "float32"), (24, 24)).shape
    (1, 577, 8)
    """
    embedding = np.asarray(embedding)
    prefix, patches = embedding[:, :num_prefix_tokens], embedding[:, num_prefix_tokens:]
    rows, cols = source_grid or square_grid(patches.shape[1])
    if rows * cols != patches.shape[1]:
        raise ValueError(
            f"source_grid {(rows, cols)} has {rows * cols} cells but the position embedding "
            f"has {patches.shape[1]} patch positions."
        )
    grid = patches[0].reshape(rows, cols, -1)
    resized = resize_grid(grid, target_grid).reshape(1, -1, grid.shape[-1])
    return np.concatenate([prefix, resized.astype(embedding.dtype)], axis=1)


def resample_map_embedding(embedding, target_grid):
    """PiT `pos_embed` in PyTorch layout `(1, C, h, w)` to `(1, C, rows, cols)`.

    Example:
    >>> resample_map_embedding(np.zeros((1, 8, 27, 27), "float32"), (47, 23)).shape
    (1, 8, 47, 23)
    """
    embedding = np.asarray(embedding)
    grid = embedding[0].transpose(1, 2, 0)
    resized = resize_grid(grid, target_grid).transpose(2, 0, 1)[None]
    return resized.astype(embedding.dtype)
