"""keras-deepvit: DeepViT, Refiner-ViT and PiT for Keras 3 (TensorFlow, JAX, PyTorch)."""

from keras_deepvit import layers, models, weights
from keras_deepvit.models import DeepViT

__version__ = "0.1.0"
