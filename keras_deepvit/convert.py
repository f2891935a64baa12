"""`keras-deepvit convert`: a PyTorch/safetensors checkpoint to a Keras `.weights.h5`
or to the normalised `.safetensors` state dict `weights="imagenet"` caches.

Builds the registered model, loads the checkpoint (strictly: every key and
shape checked), runs one batch to verify the result is usable, and writes the
output atomically. A `.safetensors` output holds the official-key state dict,
exactly what `weights="imagenet"` keeps in its cache
(`<variant>.imagenet.safetensors`). The report shows the checkpoint's sha256,
the value to pin for an origin that has none (docs/weights.md); temporary
files a killed earlier conversion left beside the output are removed.
"""

import os

import numpy as np

from keras_deepvit.weights import download
from keras_deepvit.weights.loading import load_state_dict_into, read_state_dict
from keras_deepvit.zoo.identify import describe
from keras_deepvit.zoo.imagenet import write_state_dict
from keras_deepvit.zoo.preprocess import preprocessing_config
from keras_deepvit.zoo.registry import create_model

OUTPUT_SUFFIXES = (".weights.h5", ".safetensors")


def save_weights_atomically(model, path):
    """`model.save_weights(path)` such that a killed process leaves no file at `path`."""
    with download.atomic_output(path) as temporary:
        # Keras insists on the .weights.h5 suffix, so write beside the temporary name.
        staged = temporary + ".weights.h5"
        try:
            model.save_weights(staged)
            os.replace(staged, temporary)
        finally:
            if os.path.exists(staged):
                os.remove(staged)


def convert_checkpoint(checkpoint, model_name, output, prefer_ema=True, input_shape=None):
    """Converts `checkpoint` for `model_name` and saves it to `output`.

    Args:
        checkpoint: path of a `.pth`/`.pth.tar`/`.bin`/`.safetensors` file.
        model_name: a registered name (see `keras_deepvit.list_models()`).
        output: destination, ending in `.weights.h5` (Keras weights of this
            configuration) or `.safetensors` (the official-key state dict, as
            `weights="imagenet"` caches it).
        prefer_ema: use EMA weights when the checkpoint has both.
        input_shape: build at another input size (position embeddings are
            resampled); default: the variant's.

    Returns:
        A dict describing the conversion: model, params, source format, the
        checkpoint's sha256, preprocessing, output path and the verification
        batch's statistics.
    """
    output = os.fspath(output)
    if not output.endswith(OUTPUT_SUFFIXES):
        raise ValueError(
            f"The output must end in '.weights.h5' (Keras weights) or '.safetensors' (the "
            f"state dict weights='imagenet' caches), got {output!r}."
        )
    if not os.path.isfile(checkpoint):
        raise ValueError(f"Checkpoint not found: {checkpoint!r}.")
    model = create_model(model_name, input_shape=input_shape)
    state_dict, source = read_state_dict(checkpoint, prefer_ema)
    load_state_dict_into(model, state_dict, source=checkpoint, describe=describe)

    height, width = model.input_shape[1:3]
    images = np.random.default_rng(0).uniform(0, 255, size=(2, height, width, 3)).astype("float32")
    probabilities = np.asarray(model.predict(images, verbose=0))
    if not np.all(np.isfinite(probabilities)):
        raise ValueError(
            f"{checkpoint}: the converted {model_name} gives non-finite outputs on a test batch; "
            "the checkpoint is probably damaged. Nothing was written."
        )
    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)
    # Only this output's temporaries: the directory may be anyone's.
    download.remove_stale_temporaries(directory, os.path.basename(output))
    if output.endswith(".safetensors"):
        write_state_dict(state_dict, output)
    else:
        save_weights_atomically(model, output)
    return {
        "model": model_name,
        "params": model.count_params(),
        "source": source,
        "sha256": download.sha256_of(checkpoint),
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
        f"sha256:         {report['sha256']}",
        f"preprocessing:  mean={pre['mean']} std={pre['std']} input={pre['input_size']} "
        f"crop_pct={pre['crop_pct']} {pre['interpolation']}",
        f"verified:       one batch {report['verification']['batch']} -> finite outputs, "
        f"top-1 classes {report['verification']['top1']}",
        f"wrote:          {report['output']}",
    ]
