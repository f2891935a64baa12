"""The embedded default dataset: scikit-learn's handwritten digits, as RGB images.

`sklearn.datasets.load_digits` ships inside the scikit-learn wheel (no
download): 1,797 grayscale 8x8 images of the digits 0-9 with values 0-16, the
test part of the UCI optical-recognition set. Here they become RGB uint8 images
in 0-255 at the size a model wants, with a fixed, stratified 80/20
train/validation split, so a training run needs nothing but the package.
"""

import numpy as np
import tensorflow as tf

#: Class names of the digits dataset, index = label.
CLASS_NAMES = tuple(str(digit) for digit in range(10))
#: Fraction of each class held out as the validation split.
VALIDATION_FRACTION = 0.2
SPLITS = ("train", "validation", "all")
# Pixel values of `load_digits` are counts of set pixels in 4x4 blocks: 0-16.
_DIGITS_MAX = 16.0


def stratified_split(labels, split, validation_fraction=VALIDATION_FRACTION):
    """Indices of one split of a labelled set, the same on every run and machine.

    Within each class (examples in their stored order) every example whose
    running fraction crosses a multiple of `validation_fraction` goes to
    validation: with 0.2 that is every fifth, so each class keeps its share in
    both splits. No random generator is involved, so no library version can
    move an example from one split to the other.

    Args:
        labels: 1-D integer class labels.
        split: `"train"`, `"validation"` or `"all"`.
        validation_fraction: share of each class in the validation split, in [0, 1).

    Returns:
        Sorted int64 indices into `labels`.

    Example:
    >>> stratified_split([0, 0, 0, 0, 0, 1, 1, 1, 1, 1], "validation").tolist()
    [4, 9]
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}.")
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(
            f"validation_fraction must be in [0, 1); got {validation_fraction!r}."
        )
    labels = np.asarray(labels)
    if split == "all":
        return np.arange(len(labels), dtype=np.int64)
    is_validation = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rank = np.arange(1, len(members) + 1)
        # The k-th member is held out when k * fraction reaches a new integer.
        crosses = np.floor(rank * validation_fraction) > np.floor((rank - 1) * validation_fraction)
        is_validation[members[crosses]] = True
    chosen = is_validation if split == "validation" else ~is_validation
    return np.flatnonzero(chosen).astype(np.int64)


def load_digits(split="train", image_size=32, validation_fraction=VALIDATION_FRACTION):
    """scikit-learn's digits as RGB uint8 images of `image_size`, one split.

    The 8x8 images are scaled from 0-16 to 0-255, resized with bilinear
    interpolation (antialiased when shrinking) and repeated over three
    channels.

    Args:
        split: `"train"` (1,442 images with the default fraction),
            `"validation"` (355) or `"all"` (1,797).
        image_size: output size, an int or `(height, width)`.
        validation_fraction: share of each class held out (see
            `stratified_split`).

    Returns:
        `(images, labels)`: uint8 `(n, height, width, 3)` and int32 `(n,)` with
        labels 0-9 (`CLASS_NAMES`).

    Example:
    >>> images, labels = load_digits("validation", image_size=16)
    >>> images.shape, images.dtype.name, int(labels.max())
    ((355, 16, 16, 3), 'uint8', 9)
    """
    # Imported on use: scikit-learn is needed by this dataset only and takes seconds to import.
    import sklearn.datasets

    height, width = image_size_pair(image_size)
    digits = sklearn.datasets.load_digits()
    index = stratified_split(digits.target, split, validation_fraction)
    gray = digits.images[index].astype(np.float32) * (255.0 / _DIGITS_MAX)
    resized = tf.image.resize(gray[..., None], (height, width), method="bilinear", antialias=True)
    images = np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8)
    return np.repeat(images, 3, axis=-1), digits.target[index].astype(np.int32)


def image_size_pair(image_size):
    """`(height, width)` from an int or a pair, validated."""
    size = (image_size, image_size) if isinstance(image_size, (int, np.integer)) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in size):
        raise ValueError(
            f"image_size must be a positive int or a (height, width) pair of them; got {image_size!r}."
        )
    return int(size[0]), int(size[1])
