"""Weights: read PyTorch/safetensors checkpoints without torch, map them onto our models,
resample position embeddings, download into the cache. Nothing here knows the
registered variants (that is `keras_deepvit.zoo`)."""

from keras_deepvit.weights.checkpoint import extract_state_dict, normalize_state_dict
from keras_deepvit.weights.identify import architecture_of, describe
from keras_deepvit.weights.loading import (
    load_checkpoint,
    load_state_dict_into,
    load_weights,
    read_state_dict,
)
from keras_deepvit.weights.resample import resample_map_embedding, resample_token_embedding
from keras_deepvit.weights.state_dict import (
    keras_to_torch_state_dict,
    load_torch_state_dict,
    normalize_keys,
)
from keras_deepvit.weights.torch_layout import torch_layout

__all__ = [
    "architecture_of",
    "describe",
    "extract_state_dict",
    "keras_to_torch_state_dict",
    "load_checkpoint",
    "load_state_dict_into",
    "load_torch_state_dict",
    "load_weights",
    "normalize_keys",
    "normalize_state_dict",
    "read_state_dict",
    "resample_map_embedding",
    "resample_token_embedding",
    "torch_layout",
]
