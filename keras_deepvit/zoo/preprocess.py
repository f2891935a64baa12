"""`preprocess_input`: the official input normalisation of each registered model.

The models normalise their input themselves by default
(`include_preprocessing=True`: feed RGB in [0, 255]). Build them with
`include_preprocessing=False` to normalise outside the model, e.g. in a
`tf.data` pipeline, with `preprocess_input(images, model_name)`.
"""

from keras import ops

from keras_deepvit.zoo.registry import variant_info


def preprocessing_config(model_name):
    """Mean, std, input size, crop_pct and interpolation of the variant's record.

    Example:
    >>> preprocessing_config("pit_s")["mean"]
    (0.485, 0.456, 0.406)
    """
    return variant_info(model_name).preprocessing


def preprocess_input(x, model_name):
    """Normalises RGB images in [0, 255] the way `model_name` was trained.

    Args:
        x: channels-last RGB images `(..., height, width, 3)` with values in
            [0, 255]: a numpy array or a tensor of the current backend.
        model_name: a registered name (see `keras_deepvit.list_models()`).

    Returns:
        `(x / 255 - mean) / std` per channel, float32 (a backend tensor).

    Example:
    >>> import numpy as np
    >>> out = preprocess_input(np.full((1, 2, 2, 3), 255.0), "deepvit_s")
    >>> float(np.asarray(out)[0, 0, 0, 0])
    1.0
    """
    config = preprocessing_config(model_name)
    x = ops.convert_to_tensor(x)
    if x.shape[-1] != 3:
        raise ValueError(
            f"preprocess_input expects channels-last RGB images (..., height, width, 3); "
            f"got shape {tuple(x.shape)}."
        )
    x = ops.cast(x, "float32")
    mean = ops.convert_to_tensor(config["mean"], "float32")
    std = ops.convert_to_tensor(config["std"], "float32")
    return (x / 255.0 - mean) / std
