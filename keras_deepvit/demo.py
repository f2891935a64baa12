"""Classify the sample photos shipped with scikit-image: an offline smoke demo.

The photos (astronaut, coffee, chelsea, rocket) are files inside the
scikit-image wheel, so the demo needs no network. Until pretrained weights are
ported the models are randomly initialised and the predicted classes mean
nothing; the demo shows that a model builds, takes real RGB images and returns
probabilities on the active Keras backend.
"""

import keras
import numpy as np

from keras_deepvit.imagenet import decode_predictions, imagenet_classes
from keras_deepvit.predict import eval_transform
from keras_deepvit.zoo.registry import create_model, variant_info

#: The scikit-image sample photos the demo classifies, in order.
SAMPLE_IMAGES = ("astronaut", "coffee", "chelsea", "rocket")

RANDOM_WEIGHTS_NOTE = (
    "Note: the weights are randomly initialised until pretrained weights land, "
    "so these predictions are not meaningful."
)


def _missing(package, error):
    return ImportError(
        f"The demo needs {package}: pip install 'keras-deepvit[demo]' "
        f"(or pip install scikit-image pillow). ({error})"
    )


def load_sample_images(names=SAMPLE_IMAGES):
    """The named scikit-image sample photos as a dict of `(H, W, 3)` uint8 arrays.

    Example:
    >>> images = load_sample_images(["chelsea"])
    >>> images["chelsea"].shape, images["chelsea"].dtype
    ((300, 451, 3), dtype('uint8'))
    """
    try:
        import skimage.data
    except ImportError as error:
        raise _missing("scikit-image", error) from error
    images = {}
    for name in names:
        loader = getattr(skimage.data, name, None)
        if loader is None:
            raise ValueError(f"skimage.data has no sample image {name!r}; use one of {SAMPLE_IMAGES}.")
        images[name] = np.asarray(loader())
    return images


def classify_sample_images(model_name="pit_ti", image_size=None, top=3, seed=0):
    """Builds `model_name` with random weights and classifies the sample photos.

    Calls `keras.utils.set_random_seed(seed)` (Python, NumPy and backend global
    generators) so the random weights, and so the output, repeat from run to run
    on a given backend.

    Args:
        model_name: a name from `keras_deepvit.list_models()`.
        image_size: int, square input size; None for the variant's default size.
        top: int, how many classes to report per image.
        seed: int, the global random seed for the weight initialisation.

    Returns:
        A dict with `model` (name), `image_size`, `backend`, `params` (official
        parameter count) and `predictions`: a list of `(image name, [(class index,
        class name, probability), ...])`, highest probability first; the names are
        the ImageNet-1k ones of `keras_deepvit.decode_predictions`.

    Example:
    >>> result = classify_sample_images("pit_ti", image_size=64)
    >>> [name for name, _ in result["predictions"]]
    ['astronaut', 'coffee', 'chelsea', 'rocket']
    >>> len(result["predictions"][0][1])
    3
    """
    info = variant_info(model_name)
    size = int(image_size or info.size)
    if size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}.")
    images = load_sample_images()
    # The variant's evaluation resize and crop, as `keras-deepvit predict` does.
    batch = np.stack([eval_transform(image, size, info.crop_pct, info.interpolation)
                      for image in images.values()])

    keras.utils.set_random_seed(seed)
    model = create_model(model_name, input_shape=(size, size, 3))
    # `predict` compiles the whole forward pass once; on JAX that is about three
    # times faster than an eager call, op by op.
    probabilities = model.predict(batch, batch_size=len(batch), verbose=0)

    index_of = {synset: index for index, (synset, _) in enumerate(imagenet_classes())}
    predictions = []
    for name, best in zip(images, decode_predictions(probabilities, top=top)):
        predictions.append((name, [(index_of[synset], label, prob) for synset, label, prob in best]))
    return {
        "model": model_name,
        "image_size": size,
        "backend": keras.backend.backend(),
        "params": info.params,
        "predictions": predictions,
    }


def format_report(result):
    """The lines the CLI prints for a `classify_sample_images` result.

    Example:
    >>> result = {"model": "pit_ti", "image_size": 224, "backend": "jax", "params": 4847272,
    ...           "predictions": [("chelsea", [(281, "tabby", 0.0021), (7, "cock", 0.0019)])]}
    >>> print("\\n".join(format_report(result)))  # doctest: +NORMALIZE_WHITESPACE
    pit_ti (4,847,272 parameters), 224x224 input, Keras backend: jax
    chelsea     #281 tabby 0.0021   #7 cock 0.0019
    Note: the weights are randomly initialised until pretrained weights land, so these predictions are not meaningful.
    """
    lines = [
        f"{result['model']} ({result['params']:,} parameters), "
        f"{result['image_size']}x{result['image_size']} input, Keras backend: {result['backend']}"
    ]
    width = max(len(name) for name, _ in result["predictions"]) + 2
    for name, best in result["predictions"]:
        classes = "   ".join(f"#{index:<3d} {label} {prob:.4f}" for index, label, prob in best)
        lines.append(f"{name:<{width}}  {classes}")
    lines.append(RANDOM_WEIGHTS_NOTE)
    return lines
