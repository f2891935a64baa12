"""Classify image files with a registered variant: timm's evaluation transform, then top-k.

`keras-deepvit predict IMAGE... --model NAME` reads each file with Pillow,
converts what converts (grayscale, palette, CMYK -> RGB; alpha composited on
white; 16-bit -> 8-bit, scaled), resizes it the way the variant is evaluated
(timm's eval transform: the short side to `floor(size / crop_pct)` with the
record's interpolation, then a central `size` x `size` crop) and names the
top-k ImageNet-1k classes. A file that cannot be used gets one error line; the
other files go on. The model is built once and the images go through it in
batches.
"""

import math
import os

import keras
import numpy as np

from keras_deepvit.imagenet import NUM_CLASSES, imagenet_classes
from keras_deepvit.models.base import VisionTransformerFamily
from keras_deepvit.weights.loading import KERAS_SUFFIXES, load_state_dict_into, read_state_dict
from keras_deepvit.zoo.identify import describe
from keras_deepvit.zoo.imagenet import no_weights_error
from keras_deepvit.zoo.preprocess import preprocess_input
from keras_deepvit.zoo.registry import create_model, variant_info

#: timm's `interpolation` names -> Pillow resampling filters (timm's `str_to_pil_interp`).
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")

#: Background the alpha channel is composited on (timm's loader would drop alpha instead).
ALPHA_BACKGROUND = (255, 255, 255)

_GRAY_MODES = ("1", "L")
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
_COLOR_MODES = ("CMYK", "YCbCr", "LAB", "HSV", "RGBX")
_SIXTEEN_BIT_MAX = 65535


class ImageFileError(ValueError):
    """One image file could not be used; the message says why and what to do."""


def _pillow():
    try:
        from PIL import Image
    except ImportError as error:
        raise ImportError(
            f"predict needs Pillow: pip install 'keras-deepvit[demo]' (or pip install pillow). ({error})"
        ) from error
    return Image


def _resample(interpolation):
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}.")
    return getattr(_pillow().Resampling, interpolation.upper())


def eval_transform(image, size, crop_pct=0.9, interpolation="bicubic"):
    """timm's evaluation transform of one RGB image: resize the short side, center crop.

    The short side goes to `floor(size / crop_pct)` and the long one to
    `int(that * long / short)` (torchvision's `Resize(int)`), then the central
    `size` x `size` square is cut (torchvision's `CenterCrop`: offsets rounded,
    black padding when `crop_pct` > 1 leaves the image smaller than `size`).

    Args:
        image: a Pillow RGB image, or an `(H, W, 3)` uint8 array.
        size: int, the square output size.
        crop_pct: float, the fraction of the resized short side kept.
        interpolation: one of `INTERPOLATIONS` (the variant record's).

    Returns:
        A float32 `(size, size, 3)` array of RGB values in [0, 255], the
        models' default input.

    Example:
    >>> import numpy as np
    >>> eval_transform(np.zeros((300, 451, 3), "uint8"), 224).shape
    (224, 224, 3)
    """
    Image = _pillow()
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if not (isinstance(size, int) and size >= 1) or not crop_pct > 0:
        raise ValueError(f"size must be a positive int and crop_pct > 0; got {size!r}, {crop_pct!r}.")
    scale = math.floor(size / crop_pct)
    width, height = image.size
    if width <= height:
        new_size = (scale, int(scale * height / width))
    else:
        new_size = (int(scale * width / height), scale)
    resized = image.resize(new_size, _resample(interpolation))
    # CenterCrop on a smaller image: paste onto a black canvas, torchvision's padding.
    canvas_w, canvas_h = max(size, new_size[0]), max(size, new_size[1])
    if (canvas_w, canvas_h) != new_size:
        canvas = Image.new("RGB", (canvas_w, canvas_h))
        canvas.paste(resized, ((canvas_w - new_size[0]) // 2, (canvas_h - new_size[1]) // 2))
        resized = canvas
    top, left = int(round((canvas_h - size) / 2.0)), int(round((canvas_w - size) / 2.0))
    return np.asarray(resized.crop((left, top, left + size, top + size)), dtype="float32")


def _composite_on_white(image):
    Image = _pillow()
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _to_rgb(image, path):
    """`(RGB image, note)`: the note says what was converted, None for RGB files."""
    Image = _pillow()
    mode = image.mode
    if mode == "RGB":
        return image, None
    if mode in _GRAY_MODES:
        return image.convert("RGB"), f"grayscale ({mode}) converted to RGB"
    if mode == "P":
        if "transparency" in image.info:
            return _composite_on_white(image), "palette image with transparency composited on white"
        return image.convert("RGB"), "palette image converted to RGB"
    if mode in _ALPHA_MODES:
        return _composite_on_white(image), f"{mode}: alpha channel composited on white"
    if mode in _COLOR_MODES:
        return image.convert("RGB"), f"{mode} converted to RGB"
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image)
        if mode == "I" and (values.min() < 0 or values.max() > _SIXTEEN_BIT_MAX):
            raise ImageFileError(
                f"{path}: 32-bit integer image (values {values.min()} to {values.max()}) is not "
                "supported: save it as 8- or 16-bit."
            )
        gray = np.round(values.astype("float64") * (255.0 / _SIXTEEN_BIT_MAX)).astype("uint8")
        return Image.fromarray(gray).convert("RGB"), "16-bit grayscale scaled to 8-bit RGB"
    raise ImageFileError(
        f"{path}: image mode {mode!r} (e.g. 32-bit float) is not supported: save it as 8-bit RGB."
    )


def load_image(path):
    """Reads one image file as a Pillow RGB image, converting what converts.

    Args:
        path: the image file (any format Pillow reads; the first frame of
            multi-frame files).

    Returns:
        `(image, note)`: the RGB Pillow image, and a string saying what was
        converted (None when the file is 8-bit RGB).

    Raises:
        ImageFileError: the file is missing, unreadable, not an image Pillow
            knows, corrupt or truncated, or of an unsupported mode; the message
            starts with the path.

    Example:
    >>> import os, skimage
    >>> image, note = load_image(os.path.join(os.path.dirname(skimage.__file__), "data", "camera.png"))
    >>> image.mode, note
    ('RGB', 'grayscale (L) converted to RGB')
    """
    Image = _pillow()
    from PIL import UnidentifiedImageError

    path = os.fspath(path)
    if os.path.isdir(path):
        raise ImageFileError(f"{path}: is a directory, not an image file.")
    if not os.path.exists(path):
        raise ImageFileError(f"{path}: no such file.")
    try:
        with Image.open(path) as opened:
            frames = getattr(opened, "n_frames", 1)
            opened.load()
            image, note = _to_rgb(opened, path)
            image.load()
    except PermissionError:
        raise ImageFileError(f"{path}: permission denied.") from None
    except UnidentifiedImageError:
        raise ImageFileError(
            f"{path}: not an image format Pillow can read (unknown or unsupported format)."
        ) from None
    except Image.DecompressionBombError as error:
        raise ImageFileError(f"{path}: refused, too many pixels ({error}).") from None
    except (OSError, SyntaxError, ValueError) as error:
        if isinstance(error, ImageFileError):
            raise
        raise ImageFileError(f"{path}: corrupt or truncated image ({error}).") from None
    if frames > 1:
        note = "; ".join(filter(None, [note, f"first of {frames} frames"]))
    return image, note


def _checkpoint_classifier(model_name, path):
    state_dict, _ = read_state_dict(path)
    head = state_dict.get("head.weight")
    if head is None:
        raise ValueError(
            f"{path}: the checkpoint has no classifier head (head.weight), so it cannot "
            "classify; use a checkpoint saved with its head."
        )
    model = create_model(model_name, classes=int(head.shape[0]))
    load_state_dict_into(model, state_dict, source=path, describe=describe)
    return model


def _keras_classifier(model_name, path):
    if path.endswith(".weights.h5"):
        return create_model(model_name, weights=path)
    model = keras.saving.load_model(path, compile=False)
    if not isinstance(model, VisionTransformerFamily):
        raise ValueError(f"{path}: not a keras_deepvit model ({type(model).__name__}).")
    if not model.get_config().get("include_top", True):
        raise ValueError(f"{path}: the model has no classifier (include_top=False); it cannot classify.")
    return model


def load_classifier(model_name, weights="imagenet"):
    """Builds `model_name` with `weights`, keeping the classifier head the weights have.

    Args:
        model_name: a registered name (`keras_deepvit.list_models()`).
        weights: "imagenet"; a PyTorch/safetensors checkpoint (built with the
            checkpoint's number of classes); a `.keras` model (loaded as it is:
            its own input size and classes); or a `.weights.h5` file of the
            variant's default configuration.

    Returns:
        The Keras model.
    """
    record = variant_info(model_name)
    if weights == "imagenet":
        if not record.has_weights:  # say so before building a model that cannot be used
            raise no_weights_error(record)
        return create_model(model_name, weights="imagenet")
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise ValueError(f"weights file not found: {path!r} (give 'imagenet' or a checkpoint/.keras path).")
    if path.endswith(KERAS_SUFFIXES):
        return _keras_classifier(model_name, path)
    return _checkpoint_classifier(model_name, path)


def _input_size(model):
    height, width = model.input_shape[1:3]
    if height != width or height is None:
        raise ValueError(
            f"predict resizes to a square input; the model takes {height}x{width}. Rebuild it "
            "square, or preprocess the images yourself."
        )
    return int(height)


def _probabilities(model, batch, model_name):
    config = model.get_config()
    if not config.get("include_preprocessing", True):
        batch = preprocess_input(batch, model_name)
    outputs = model.predict(batch, batch_size=len(batch), verbose=0)
    if config.get("classifier_activation", "softmax") != "softmax":
        outputs = keras.ops.convert_to_numpy(keras.ops.softmax(outputs, axis=-1))
    return np.asarray(outputs, dtype="float64")


def _top_k(probabilities, top):
    classes = imagenet_classes() if probabilities.shape[-1] == NUM_CLASSES else None
    best = np.argsort(-probabilities, kind="stable")[:top]
    predictions = []
    for index in best:
        entry = {"label": int(index)}
        if classes:
            entry["synset"], entry["name"] = classes[index]
        entry["probability"] = float(probabilities[index])
        predictions.append(entry)
    return predictions


def predict_files(paths, model, model_name, top=5, batch_size=32):
    """Top-k predictions for image files, one result per path, in order.

    Args:
        paths: image file paths.
        model: a classifier built from `model_name` (see `load_classifier`).
        model_name: the registered variant whose crop_pct and interpolation
            the images are resized with.
        top: int >= 1, classes per image.
        batch_size: images per forward pass.

    Returns:
        A list of dicts: `image` (the path), `predictions` (a list of `label`
        (class index), `synset` and `name` for 1000-class models, and
        `probability`, best first), `note` when the image was converted, and
        `error` (with empty predictions) when the file could not be used.
    """
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be a positive int, got {top!r}.")
    record = variant_info(model_name)
    size = _input_size(model)
    results = []
    for start in range(0, len(paths), batch_size):
        chunk, pending = [], []
        for path in paths[start:start + batch_size]:
            result = {"image": os.fspath(path), "predictions": []}
            results.append(result)
            try:
                image, note = load_image(path)
            except ImageFileError as error:
                result["error"] = str(error)
                continue
            if note:
                result["note"] = note
            chunk.append(eval_transform(image, size, record.crop_pct, record.interpolation))
            pending.append(result)
        if chunk:
            for result, row in zip(pending, _probabilities(model, np.stack(chunk), model_name)):
                result["predictions"] = _top_k(row, min(top, row.shape[-1]))
    return results


def format_results(results):
    """The text `keras-deepvit predict` prints: `(stdout lines, stderr lines)`.

    Example:
    >>> out, err = format_results([
    ...     {"image": "cat.png", "predictions": [{"label": 281, "synset": "n02123045",
    ...      "name": "tabby", "probability": 0.61}]},
    ...     {"image": "bad.png", "predictions": [], "error": "bad.png: no such file."}])
    >>> print("\\n".join(out))
    cat.png
      0.6100  tabby (#281)
    >>> err
    ['error: bad.png: no such file.']
    """
    out, err = [], []
    for result in results:
        if "error" in result:
            err.append(f"error: {result['error']}")
            continue
        out.append(result["image"] + (f"  [{result['note']}]" if result.get("note") else ""))
        for entry in result["predictions"]:
            name = f"{entry['name']} (#{entry['label']})" if "name" in entry else f"class {entry['label']}"
            out.append(f"  {entry['probability']:.4f}  {name}")
    return out, err
