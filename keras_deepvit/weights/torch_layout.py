"""Where every official PyTorch parameter lives in our Keras models.

`torch_layout(model)` lists, for a model of any family, each official
state-dict key with the Keras variable it fills and how to convert the array.
Each family owns its layout (`model.checkpoint_layout()`, beside the model in
`keras_deepvit.models`); this is the entry point the loaders use.
"""

from keras_deepvit.models.base import VisionTransformerFamily
from keras_deepvit.models.layout import IGNORED_SUFFIXES  # noqa: F401 - re-exported for the loaders


def torch_layout(model):
    """All (official key, Keras variable, converter) triples of a keras_deepvit model."""
    if not isinstance(model, VisionTransformerFamily):
        raise TypeError(
            f"torch_layout: {type(model).__name__} is not a keras_deepvit DeepViT, RefinerViT or PiT model."
        )
    return model.checkpoint_layout()
