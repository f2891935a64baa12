"""Attention-collapse analysis: every block's maps and tokens, the papers' metrics, plots and reports.

`block_states(model, images)` reads every block's attention maps (after
re-attention / refinement) and output tokens from any zoo model or functional
model built from our attention layers; `summarize` computes the metrics of
`metrics` (DeepViT's cross-layer similarity and similar-block count,
cross-head similarity, attention entropy, rank residual); `write_report` writes
them as JSON with the plots of `plots` (matplotlib: extra `analysis`).
See docs/analysis.md.
"""

from keras_deepvit.analysis.maps import BlockStates, block_states
from keras_deepvit.analysis.metrics import (
    DEFAULT_THRESHOLD,
    adjacent_similarity,
    attention_entropy,
    cross_head_similarity,
    cross_layer_similarity,
    rank_residual,
    similar_block_count,
)
from keras_deepvit.analysis.report import load_images, summarize, write_report

__all__ = [
    "DEFAULT_THRESHOLD",
    "BlockStates",
    "adjacent_similarity",
    "attention_entropy",
    "block_states",
    "cross_head_similarity",
    "cross_layer_similarity",
    "load_images",
    "rank_residual",
    "similar_block_count",
    "summarize",
    "write_report",
]
