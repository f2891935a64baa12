"""Attention-collapse metrics of a stack of attention maps and token states (numpy only).

Maps are `(batch, heads, queries, keys)` arrays, one per block, as
`keras_deepvit.analysis.maps.block_states` returns them; token states are
`(batch, tokens, dim)`. Every metric averages over the batch.

- `cross_layer_similarity`: DeepViT's Eq. 2 (Zhou et al. 2021, arXiv 2103.11886,
  Sec. 3): `M[p, q]` = cosine between `A^p[h, :, t]` and `A^q[h, :, t]` (how
  token `t` contributes to every output token, in blocks p and q), averaged over
  heads `h` and tokens `t`. Blocks with other map shapes (PiT's stages) are
  not compared: NaN.
- `similar_block_count`: the blocks whose similarity to an adjacent block
  exceeds a threshold (the paper's "similar blocks"; default 0.9).
- `cross_head_similarity`: the same cosine between two heads of one block,
  averaged over head pairs and tokens (the paper's Fig. 4 / Sec. 4.1 argument
  that heads differ where blocks do not).
- `attention_entropy`: each head's mean row entropy (Zhai et al. 2023,
  "Stabilizing Transformer Training by Preventing Attention Entropy Collapse",
  arXiv 2303.06296); `log(keys)` for uniform attention, 0 for one-hot rows.
- `rank_residual`: Dong et al. 2021 ("Attention is not all you need: pure
  attention loses rank doubly exponentially", arXiv 2103.03404): the residual
  `X - 1 x^T`; we take `x` = the mean token (the Frobenius-optimal `x`) and
  report `||X - 1 x^T||_F / ||X||_F`: 0 when all tokens are equal.
"""

import numpy as np

#: The paper's threshold for "similar" blocks (DeepViT Sec. 3: similarity above 90 %).
DEFAULT_THRESHOLD = 0.9
_EPS = 1e-12


def _check_maps(maps, what="maps"):
    maps = np.asarray(maps, "float64")
    if maps.ndim != 4 or maps.shape[2] != maps.shape[3]:
        raise ValueError(
            f"{what} must be (batch, heads, tokens, tokens) attention maps, got shape {maps.shape}."
        )
    return maps


def _unit_columns(maps):
    """Every column `A[b, h, :, t]` scaled to unit length (zero columns stay zero)."""
    norms = np.linalg.norm(maps, axis=2, keepdims=True)
    return maps / np.maximum(norms, _EPS)


def cross_layer_similarity(maps, centered=False):
    """The block x block matrix of DeepViT's Eq. 2 similarity.

    Args:
        maps: list of `(batch, heads, tokens, tokens)` arrays, one per block.
        centered: subtract each head's mean map value first. Re-attention ends
            in a BatchNorm over the heads, so its maps are about centred and their
            plain cosine is near 0 whatever their pattern, while near-uniform
            softmax maps have a plain cosine near 1; centring compares both by
            their deviations from the mean.

    Returns:
        `(blocks, blocks)` float array, 1 on the diagonal; NaN where two blocks'
        maps differ in shape (PiT's stages have other token and head counts).

    Example:
    >>> a = np.full((1, 2, 3, 3), 1 / 3)
    >>> cross_layer_similarity([a, a]).tolist()
    [[1.0, 1.0], [1.0, 1.0]]
    """
    maps = [_check_maps(m, f"maps[{i}]") for i, m in enumerate(maps)]
    if centered:
        maps = [m - m.mean(axis=(2, 3), keepdims=True) for m in maps]
    units = [_unit_columns(m) for m in maps]
    size = len(units)
    matrix = np.full((size, size), np.nan)
    for p in range(size):
        for q in range(p, size):
            if units[p].shape == units[q].shape:
                cosine = np.sum(units[p] * units[q], axis=2)  # (batch, heads, tokens)
                matrix[p, q] = matrix[q, p] = float(np.mean(cosine))
    return matrix


def adjacent_similarity(matrix):
    """`M[i, i + 1]` for every block `i` but the last (NaN across a PiT stage change).

    Example:
    >>> adjacent_similarity(np.array([[1.0, 0.5], [0.5, 1.0]])).tolist()
    [0.5]
    """
    matrix = np.asarray(matrix, "float64")
    return np.array([matrix[i, i + 1] for i in range(len(matrix) - 1)])


def similar_block_count(matrix, threshold=DEFAULT_THRESHOLD):
    """How many blocks have a similarity above `threshold` with the block before or after them.

    Identical blocks all count (a full count); a block that shares no map
    shape with its neighbours never does.

    Example:
    >>> similar_block_count(np.ones((3, 3)))
    3
    >>> similar_block_count(np.eye(3))
    0
    """
    adjacent = np.nan_to_num(adjacent_similarity(matrix), nan=-np.inf)
    similar = np.zeros(len(matrix), bool)
    similar[:-1] |= adjacent > threshold
    similar[1:] |= adjacent > threshold
    return int(similar.sum())


def cross_head_similarity(maps):
    """Cosine between two heads' maps of one block, averaged over head pairs, tokens and images.

    Args:
        maps: `(batch, heads, tokens, tokens)` of one block.

    Returns:
        float; NaN for a single head.

    Example:
    >>> one_hot = np.stack([np.eye(2), np.eye(2)[::-1]])[None]  # 2 heads, orthogonal columns
    >>> cross_head_similarity(one_hot)
    0.0
    """
    units = _unit_columns(_check_maps(maps))
    heads = units.shape[1]
    if heads < 2:
        return float("nan")
    pairs = [np.sum(units[:, i] * units[:, j], axis=1) for i in range(heads) for j in range(i + 1, heads)]
    return float(np.mean(pairs))


def attention_entropy(maps):
    """Each head's mean row entropy (natural log), `(heads,)`.

    Rows are normalised as `|a| / sum |a|` first: re-attention and refinement
    mix and convolve softmax maps, so their rows can hold negative values and
    need not sum to 1; for softmax maps this changes nothing.

    Example:
    >>> uniform = np.full((1, 1, 4, 4), 0.25)
    >>> round(float(attention_entropy(uniform)[0]), 6) == round(float(np.log(4)), 6)
    True
    """
    maps = np.abs(_check_maps(maps))
    rows = maps / np.maximum(maps.sum(axis=-1, keepdims=True), _EPS)
    logs = np.log(np.where(rows > 0, rows, 1.0))
    entropy = -np.sum(rows * logs, axis=-1)  # (batch, heads, queries)
    return entropy.mean(axis=(0, 2))


def is_row_stochastic(maps, tolerance=1e-3):
    """Whether every row is non-negative and sums to 1 (plain softmax attention).

    Example:
    >>> is_row_stochastic(np.full((1, 1, 2, 2), 0.5))
    True
    """
    maps = _check_maps(maps)
    return bool(np.all(maps >= -tolerance) and np.allclose(maps.sum(axis=-1), 1.0, atol=tolerance))


def rank_residual(tokens):
    """Dong et al.'s relative rank-collapse residual `||X - 1 x^T||_F / ||X||_F`, `x` the mean token.

    Args:
        tokens: `(batch, tokens, dim)` block outputs.

    Returns:
        float, the mean over the batch: 0 when every token is the same vector.

    Example:
    >>> rank_residual(np.ones((1, 4, 3)))
    0.0
    """
    tokens = np.asarray(tokens, "float64")
    if tokens.ndim != 3:
        raise ValueError(f"tokens must be (batch, tokens, dim), got shape {tokens.shape}.")
    residual = tokens - tokens.mean(axis=1, keepdims=True)
    numerator = np.linalg.norm(residual.reshape(len(tokens), -1), axis=1)
    denominator = np.linalg.norm(tokens.reshape(len(tokens), -1), axis=1)
    return float(np.mean(numerator / np.maximum(denominator, _EPS)))
