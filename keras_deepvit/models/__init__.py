"""Model families and the registry of named variants."""

from keras_deepvit.models.deepvit import DeepViT

__all__ = ["DeepViT"]
