"""The `weights=` argument of `create_model` and the named constructors."""

from keras_deepvit.weights.loading import load_weights
from keras_deepvit.zoo.identify import describe
from keras_deepvit.zoo.imagenet import load_imagenet_weights


def load_variant_weights(model, weights, record):
    """Applies `weights` (None, "imagenet" or a path) to a model built from `record`.

    Paths go through `keras_deepvit.weights.load_weights`; its error messages
    name the registered variant a misfit checkpoint looks like.
    """
    if isinstance(weights, str) and weights == "imagenet":
        load_imagenet_weights(model, record)
        return model
    return load_weights(model, weights, describe=describe)
