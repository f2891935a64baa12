"""`keras-deepvit convert`: a PyTorch/safetensors checkpoint to a Keras `.weights.h5`.

Builds the registered model, loads the checkpoint (strictly: every key and
shape checked), runs one batch to verify the result is usable, and writes the
weights atomically. A file written for the model's default configuration is
exactly what `weights="imagenet"` keeps in its cache.
"""

import os

import numpy as np

from keras_deepvit.models.registry import create_model
from keras_deepvit.preprocess import preprocessing_config
from keras_deepvit.weights.imagenet_weights import save_weights_atomically
from keras_deepvit.weights.loading import load_checkpoint


def convert_checkpoint(checkpoint, model_name, output, prefer_ema=True, input_shape=None):
    """Converts `checkpoint` for `model_name` and saves it to `output` (`.weights.h5`).

    Args:
        checkpoint: path of a `.pth`/`.pth.tar`/`.bin`/`.safetensors` file.
        model_name: a registered name (see `keras_deepvit.list_models()`).
        output: destination, ending in `.weights.h5`.
        prefer_ema: use EMA weights when the checkpoint has both.
        input_shape: build at another input size (position embeddings are
            resampled); default: the variant's.

    Returns:
        A dict describing the conversion: model, params, source format,
        preprocessing, output path and the verification batch's statistics.
    """
    output = os.fspath(output)
    if not output.endswith(".weights.h5"):
        raise ValueError(f"The output must end in '.weights.h5' (Keras' weights format), got {output!r}.")
    if not os.path.isfile(checkpoint):
        raise ValueError(f"Checkpoint not found: {checkpoint!r}.")
    model = create_model(model_name, input_shape=input_shape)
    source = load_checkpoint(model, checkpoint, prefer_ema=prefer_ema)

    height, width = model._arch_config["input_shape"][:2]
    images = np.random.default_rng(0).uniform(0, 255, size=(2, height, width, 3)).astype("float32")
    probabilities = np.asarray(model.predict(images, verbose=0))
    if not np.all(np.isfinite(probabilities)):
        raise ValueError(
            f"{checkpoint}: the converted {model_name} gives non-finite outputs on a test batch; "
            "the checkpoint is probably damaged. Nothing was written."
        )
    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)
    save_weights_atomically(model, output)
    return {
        "model": model_name,
        "params": model.count_params(),
        "source": source,
        "preprocessing": preprocessing_config(model_name),
        "output": output,
        "verification": {
            "batch": tuple(images.shape),
            "top1": [int(i) for i in probabilities.argmax(axis=-1)],
            "max_probability": float(probabilities.max()),
        },
    }


def format_report(report):
    """The lines `keras-deepvit convert` prints."""
    pre = report["preprocessing"]
    return [
        f"model:          {report['model']} ({report['params']:,} parameters)",
        f"source:         {report['source']}",
        f"preprocessing:  mean={pre['mean']} std={pre['std']} input={pre['input_size']} "
        f"crop_pct={pre['crop_pct']} {pre['interpolation']}",
        f"verified:       one batch {report['verification']['batch']} -> finite outputs, "
        f"top-1 classes {report['verification']['top1']}",
        f"wrote:          {report['output']}",
    ]
