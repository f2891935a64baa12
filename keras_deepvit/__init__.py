"""keras-deepvit: DeepViT, Refiner-ViT and PiT for Keras 3 (TensorFlow, JAX, PyTorch)."""

from keras_deepvit import layers, models, weights
from keras_deepvit.imagenet import decode_predictions, imagenet_classes
from keras_deepvit.models import *  # noqa: F401,F403 - the constructors are the public API
from keras_deepvit.models import __all__ as _model_names
from keras_deepvit.preprocess import preprocess_input

__version__ = "0.1.0"
__all__ = ["layers", "models", "weights", "decode_predictions", "imagenet_classes", "preprocess_input",
           "__version__"] + list(_model_names)
