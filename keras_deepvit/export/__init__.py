"""Inference artifacts of the models: TensorFlow SavedModel, ONNX, LiteRT.

`export(model, path, format)` writes the model's float32 inference twin (training
paths dropped, re-attention / refiner BatchNorms folded: `export.folding`) through
Keras' own `model.export`; `export.serving` holds the signatures and the JAX
route to a SavedModel that TensorFlow can run. See docs/export.md.
"""

import keras

from keras_deepvit.export.folding import fold_batch_norms, inference_model
from keras_deepvit.export.serving import INPUT_DTYPES, erf_from_primitives

#: format -> backends that export it here (measured: docs/export.md).
SUPPORTED_BACKENDS = {
    "tf_saved_model": ("tensorflow", "jax"),
    # PyTorch: torch.onnx's TorchScript exporter fails on Keras' `ops.shape` gather.
    "onnx": ("tensorflow", "jax"),
    "litert": ("tensorflow",),
}
FORMATS = tuple(SUPPORTED_BACKENDS)


def check_supported(format, backend=None):
    """Raises a ValueError naming what works unless `backend` (default: the current one) exports `format`.

    Example:
    >>> check_supported("onnx", "jax")
    >>> check_supported("litert", "jax")
    Traceback (most recent call last):
    ...
    ValueError: format='litert' exports from the tensorflow backend, not from 'jax'. Run with KERAS_BACKEND=tensorflow, or choose a format this backend exports: onnx, tf_saved_model.
    """
    backend = backend or keras.backend.backend()
    if format not in SUPPORTED_BACKENDS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {format!r}.")
    if backend not in SUPPORTED_BACKENDS[format]:
        here = sorted(f for f, backends in SUPPORTED_BACKENDS.items() if backend in backends)
        raise ValueError(
            f"format={format!r} exports from the {' or '.join(SUPPORTED_BACKENDS[format])} "
            f"backend, not from {backend!r}. Run with KERAS_BACKEND="
            f"{SUPPORTED_BACKENDS[format][0]}, or choose a format this backend exports: "
            f"{', '.join(here)}."
        )


def export(model, path, format="tf_saved_model", input_dtype="float32", fold=True, **kwargs):
    """Writes an inference artifact of `model` that takes RGB images in [0, 255].

    The artifact holds the model's float32 inference twin (`inference_model`:
    float32 even for a mixed-precision model, no drop path or training heads,
    BatchNorms folded) with the preprocessing inside and a dynamic batch.

    Args:
        model: a DeepViT, RefinerViT or PiT model.
        path: output path: a directory for "tf_saved_model", a file
            (`.onnx`, `.tflite`) otherwise.
        format: "tf_saved_model" (TensorFlow or JAX backend; endpoints `serve`,
            float32, and `serve_uint8`), "onnx" (TensorFlow or JAX) or "litert"
            (TensorFlow backend).
        input_dtype: "float32" or "uint8", the input of ONNX and LiteRT artifacts.
        fold: bool, fold the BatchNorms (False keeps them, for comparison).
        **kwargs: passed to `model.export` (ONNX and LiteRT), e.g. `opset_version`.

    Returns:
        `path`.

    Example:
    >>> import os, tempfile, numpy as np, keras_deepvit
    >>> model = keras_deepvit.DeepViT(depth=1, embed_dim=32, num_heads=4, input_shape=(32, 32, 3), classes=3)
    >>> path = export(model, os.path.join(tempfile.mkdtemp(), "model.onnx"), format="onnx")
    >>> os.path.getsize(path) > 0
    True
    """
    from keras_deepvit.export import serving

    if input_dtype not in INPUT_DTYPES:
        raise ValueError(f"input_dtype must be one of {INPUT_DTYPES}, got {input_dtype!r}.")
    check_supported(format)
    twin = inference_model(model, fold=fold)
    if format == "tf_saved_model":
        if kwargs:
            raise TypeError(f"tf_saved_model export takes no extra arguments; got {sorted(kwargs)}.")
        serving.write_saved_model(twin, path)
    else:
        serving.write_with_keras(twin, path, format, input_dtype, **kwargs)
    return path


__all__ = [
    "FORMATS", "INPUT_DTYPES", "SUPPORTED_BACKENDS", "check_supported", "erf_from_primitives",
    "export", "fold_batch_norms", "inference_model",
]
