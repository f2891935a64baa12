"""Model families, the variant registry and the keras.applications-style constructors."""

from keras_deepvit.models.constructors import (
    DeepViT16,
    DeepViT24,
    DeepViT32,
    DeepViTL,
    DeepViTL384,
    DeepViTS,
    PiTB,
    PiTBDistilled,
    PiTS,
    PiTSDistilled,
    PiTTi,
    PiTTiDistilled,
    PiTXS,
    PiTXSDistilled,
    RefinerViTL,
    RefinerViTM,
    RefinerViTS,
)
from keras_deepvit.models.deepvit import DeepViT
from keras_deepvit.models.pit import PiT
from keras_deepvit.models.refiner import RefinerViT
from keras_deepvit.models.registry import create_model, list_models, variant_info

CONSTRUCTORS = [
    "DeepViT16", "DeepViT24", "DeepViT32", "DeepViTS", "DeepViTL", "DeepViTL384",
    "RefinerViTS", "RefinerViTM", "RefinerViTL",
    "PiTTi", "PiTXS", "PiTS", "PiTB", "PiTTiDistilled", "PiTXSDistilled", "PiTSDistilled",
    "PiTBDistilled",
]
__all__ = ["DeepViT", "PiT", "RefinerViT", "create_model", "list_models", "variant_info"] + CONSTRUCTORS
