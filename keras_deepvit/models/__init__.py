"""The three model families (architectures only; the registered variants live in `keras_deepvit.zoo`)."""

from keras_deepvit.models.base import VisionTransformerFamily
from keras_deepvit.models.deepvit import DeepViT
from keras_deepvit.models.pit import PiT
from keras_deepvit.models.refiner import RefinerViT

#: Every family class, for code that handles any keras_deepvit model.
FAMILIES = (DeepViT, RefinerViT, PiT)

__all__ = ["DeepViT", "FAMILIES", "PiT", "RefinerViT", "VisionTransformerFamily"]
