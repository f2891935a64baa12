"""keras-deepvit: DeepViT, Refiner-ViT and PiT for Keras 3 (TensorFlow, JAX, PyTorch)."""

from keras_deepvit import layers, models, weights, zoo
from keras_deepvit.allocator import retain_freed_memory
from keras_deepvit.export import export
from keras_deepvit.imagenet import decode_predictions, imagenet_classes
from keras_deepvit.models import DeepViT, PiT, RefinerViT
from keras_deepvit.zoo import CONSTRUCTORS, create_model, list_models, preprocess_input, variant_info

globals().update(CONSTRUCTORS)

__version__ = "0.2.0"
__all__ = [
    "DeepViT", "PiT", "RefinerViT", "__version__", "create_model", "decode_predictions", "export",
    "imagenet_classes", "layers", "list_models", "models", "preprocess_input", "retain_freed_memory", "variant_info",
    "weights", "zoo",
] + list(CONSTRUCTORS)
