"""Weights: PyTorch name mapping and loading (checkpoint reading comes with the weights issue)."""

from keras_deepvit.weights.state_dict import (
    keras_to_torch_state_dict,
    load_torch_state_dict,
    normalize_keys,
)
from keras_deepvit.weights.torch_layout import torch_layout

__all__ = ["keras_to_torch_state_dict", "load_torch_state_dict", "normalize_keys", "torch_layout"]
