"""Built-in input normalisation: RGB in [0, 255] to the model's input range."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_deepvit")
class ImageNormalization(keras.layers.Layer):
    """Maps RGB values in [0, 255] to `(x / 255 - mean) / std` per channel.

    This is exactly the preprocessing of the official PyTorch pipelines
    (`ToTensor` then `Normalize(mean, std)`), applied to channels-last input.

    Args:
        mean: sequence of 3 floats, per-channel mean in [0, 1] units.
        std: sequence of 3 floats, per-channel standard deviation.

    Call arguments:
        inputs: `(batch, height, width, 3)` tensor of RGB values in [0, 255].

    Returns:
        The normalised tensor, same shape, in the layer's compute dtype.

    Example:
    >>> import numpy as np
    >>> layer = ImageNormalization(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    >>> float(np.asarray(layer(np.full((1, 2, 2, 3), 255.0)))[0, 0, 0, 0])
    1.0
    """

    def __init__(self, mean, std, **kwargs):
        super().__init__(**kwargs)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if len(self.mean) != len(self.std):
            raise ValueError(
                f"mean and std must have the same length, got {self.mean} and {self.std}."
            )

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        mean = ops.cast(ops.convert_to_tensor(self.mean), self.compute_dtype)
        std = ops.cast(ops.convert_to_tensor(self.std), self.compute_dtype)
        return (x / 255.0 - mean) / std

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"mean": list(self.mean), "std": list(self.std)})
        return config
