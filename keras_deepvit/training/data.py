"""Datasets as batched `tf.data` pipelines: the embedded digits, TFDS, or a folder of classes.

`load_dataset(spec, ...)` returns `(dataset, info)`: a batched, prefetched
`tf.data.Dataset` of `(images, labels)` ready for `model.fit` on any backend,
and a `DatasetInfo` with the class names and counts. Training splits are
shuffled and augmented (`keras_deepvit.training.augment`); evaluation splits
get timm's evaluation transform (`eval_transform`) with the variant's
`crop_pct` and interpolation from `keras_deepvit.zoo.records`.
"""

import dataclasses
import logging
import math
import os
import re

import numpy as np
import tensorflow as tf

from keras_deepvit.training import digits
from keras_deepvit.training.augment import INTERPOLATIONS, augment_dataset
from keras_deepvit.zoo.records import RECORDS

logger = logging.getLogger(__name__)

#: File name endings listed in a folder dataset (case-insensitive); other files are ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
# Leading bytes of the formats `tf.io.decode_image` reads; a file without one is skipped.
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")
# Decoded examples a TFDS split shuffles through (folders shuffle file names, digits all of it).
_TFDS_SHUFFLE_BUFFER = 1024
# "tfds:NAME[:VERSION][:SPLIT]": a version starts with a digit, a split may hold colons (train[:80%]).
_TFDS_SPEC = re.compile(
    r"tfds:(?P<name>[^:\[\]]+?)(?::(?P<version>\d+(?:\.(?:\d+|\*))*))?(?::(?P<split>.+))?")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What `load_dataset` loaded.

    Attributes:
        spec: the dataset as given (`"digits"`, `"tfds:NAME[:SPLIT]"` or a folder).
        split: the split loaded.
        num_classes: number of classes; labels are 0 to `num_classes - 1`.
        class_names: one name per label.
        num_examples: examples in the split (without the skipped files).
        skipped: files of a folder split that cannot be read as images and were
            left out (0 for the other sources).
        one_hot: whether labels are one-hot float32 rows instead of int32 indices.
        image_size: `(height, width)` of the images.
        steps_per_epoch: batches per pass over the split (the incomplete last
            batch is dropped when training).
    """

    spec: str
    split: str
    num_classes: int
    class_names: tuple
    num_examples: int
    skipped: int
    one_hot: bool
    image_size: tuple
    steps_per_epoch: int


def eval_transform(image, image_size, crop_pct=1.0, interpolation="bicubic"):
    """timm's evaluation transform: resize by `1 / crop_pct`, then centre-crop `image_size`.

    With an int `image_size`, the shorter side is resized to
    `floor(image_size / crop_pct)` keeping the aspect ratio (the longer side
    truncated, like torchvision's `Resize`); with `(height, width)`, the image is
    resized to `floor(height / crop_pct), floor(width / crop_pct)`. The centre
    crop rounds its offset like torchvision's `CenterCrop` and pads with zeros
    where the resized image is smaller than the crop (`crop_pct > 1`). Resizing
    is antialiased, like PIL's.

    Args:
        image: `(height, width, channels)` or `(batch, height, width, channels)`
            tensor or array, values in 0-255.
        image_size: output size, an int or `(height, width)`.
        crop_pct: fraction of the resized image kept by the crop (a variant's
            record holds its own, e.g. `RECORDS["pit_s"].crop_pct`); 1 resizes
            the whole image.
        interpolation: a `tf.image.resize` method, e.g. `"bicubic"` or `"bilinear"`.

    Returns:
        float32 tensor with `image_size` as its spatial size, clipped to 0-255.

    Example:
    >>> import numpy as np
    >>> out = eval_transform(np.zeros((100, 150, 3), "uint8"), 64, crop_pct=0.875)
    >>> tuple(out.shape)
    (64, 64, 3)
    """
    height, width = digits.image_size_pair(image_size)
    if not (isinstance(crop_pct, (int, float)) and crop_pct > 0):
        raise ValueError(f"crop_pct must be a number > 0 (e.g. 0.875, or 1 for no crop); got {crop_pct!r}.")
    _check_interpolation(interpolation)
    image = tf.cast(tf.convert_to_tensor(image), tf.float32)
    if image.shape.rank not in (3, 4):
        raise ValueError(
            f"eval_transform expects (height, width, channels) or (batch, height, width, channels); "
            f"got shape {tuple(image.shape)}."
        )
    shape = tf.shape(image)
    in_height, in_width = shape[-3], shape[-2]
    if isinstance(image_size, (int, np.integer)):
        scale = math.floor(image_size / crop_pct)
        short, long = tf.minimum(in_height, in_width), tf.maximum(in_height, in_width)
        resized_long = tf.math.floordiv(tf.cast(scale * long, tf.float64), tf.cast(short, tf.float64))
        resized_long = tf.cast(resized_long, tf.int32)
        width_is_short = in_width <= in_height
        new_height = tf.where(width_is_short, resized_long, scale)
        new_width = tf.where(width_is_short, scale, resized_long)
    else:
        new_height, new_width = math.floor(height / crop_pct), math.floor(width / crop_pct)
    image = tf.image.resize(image, tf.stack([new_height, new_width]), method=interpolation, antialias=True)
    image = _center_crop(image, height, width)
    return tf.clip_by_value(image, 0.0, 255.0)


def load_dataset(spec="digits", *, image_size, batch_size, split=None, training=None, augment=None,
                 one_hot=None, variant=None, normalize=False, crop_pct=None, interpolation=None, seed=None,
                 shuffle_buffer=None, validation_fraction=digits.VALIDATION_FRACTION, data_dir=None,
                 download=True, verify_images=False, image_key="image", label_key="label"):
    """A dataset as a batched `tf.data.Dataset` of `(images, labels)`, and its `DatasetInfo`.

    Sources (`spec`):

    * `"digits"`: scikit-learn's 1,797 handwritten digits, embedded in the
      package (`keras_deepvit.training.digits`), 10 classes; splits `"train"`
      and `"validation"` (a fixed, stratified 80/20) or `"all"`. (A folder
      named digits is `"./digits"`.)
    * `"tfds:NAME"`, `"tfds:NAME:SPLIT"` or `"tfds:NAME:VERSION:SPLIT"`: a
      TensorFlow Datasets dataset with an image feature and a `ClassLabel`
      feature (`image_key`, `label_key`), read from `data_dir` (TFDS' default
      when None) and downloaded there first when `download` and needed. The
      split (any TFDS split string, e.g. `train[:90%]`) comes from the spec or
      `split`.
    * a folder with one sub-folder of images per class (any depth below it;
      JPEG, PNG, GIF, BMP or WebP; grayscale and RGBA become RGB); splits
      `"train"` and `"validation"` (the same stratified rule as digits,
      `validation_fraction` of each class) or `"all"`. Files that are not
      images of those formats are skipped, counted in `info.skipped` and
      logged; with `verify_images=True` every file is also decoded once up
      front, so damaged data behind a valid header is counted too. Otherwise
      such a file is dropped when it is read (logged by TensorFlow) and an
      epoch is one example shorter: no file ever stops an epoch.

    Training splits (`training`, default: the split's name starts with
    "train") are shuffled and, with `augment` (an `AugmentConfig`; e.g.
    `AugmentConfig()` for DeiT's recipe, `AugmentConfig.light()` for tiny
    images), augmented; their incomplete last batch is dropped. Other splits
    get `eval_transform` with `crop_pct` and `interpolation`, which default to
    the `variant`'s record, or to 1 (whole image) and bicubic without one.

    Images are float32 RGB `(batch, height, width, 3)` in 0-255, what the
    models take with their default `include_preprocessing=True`. With
    `normalize=True` they are `(x / 255 - mean) / std` with the `variant`'s
    mean and std instead, for models built with `include_preprocessing=False`.

    Labels are int32 class indices `(batch,)` (for
    `SparseCategoricalCrossentropy`), or one-hot float32 `(batch, classes)`
    with `one_hot=True` (for `CategoricalCrossentropy`). MixUp and CutMix mix
    labels, so `one_hot=None` (the default) means one-hot exactly when
    `augment` mixes a training split.

    With a `seed` the pipeline yields the same batches on every run (see
    `augment_dataset` for what that costs); without one, each run differs.

    Args:
        spec: `"digits"`, `"tfds:..."` or a folder path (see above).
        image_size: output size, an int or `(height, width)`.
        batch_size: examples per batch.
        split: the split; default `"train"`, or the split in a `tfds:` spec.
        training: shuffle, augment and drop the incomplete last batch; default
            True for splits whose name starts with "train".
        augment: an `AugmentConfig`, or None for no augmentation.
        one_hot: one-hot labels (see above).
        variant: a registered model name (`keras_deepvit.list_models()`) whose
            record supplies crop_pct, interpolation, mean and std.
        normalize: normalise with the variant's mean and std (needs `variant`).
        crop_pct: evaluation crop fraction (see `eval_transform`).
        interpolation: evaluation resize method (see `eval_transform`).
        seed: int for a reproducible pipeline, or None.
        shuffle_buffer: examples in the shuffle buffer; default all of them for
            digits and folders (which shuffle file names), 1024 for TFDS.
        validation_fraction: held-out share of each class, for digits and folders.
        data_dir: TFDS data directory.
        download: let TFDS download and prepare the dataset when it is missing.
        verify_images: decode every folder image once up front (see above).
        image_key: TFDS image feature.
        label_key: TFDS `ClassLabel` feature.

    Returns:
        `(dataset, info)`: the `tf.data.Dataset` and a `DatasetInfo`.

    Example:
    >>> data, info = load_dataset("digits", image_size=32, batch_size=64, split="validation")
    >>> images, labels = next(iter(data))
    >>> tuple(images.shape), images.dtype.name, info.num_examples, info.num_classes
    ((64, 32, 32, 3), 'float32', 355, 10)
    """
    spec = os.fspath(spec) if isinstance(spec, os.PathLike) else spec
    if not isinstance(spec, str):
        raise ValueError(f"spec must be 'digits', 'tfds:NAME[:SPLIT]' or a folder path; got {spec!r}.")
    size = digits.image_size_pair(image_size)
    if not (isinstance(batch_size, (int, np.integer)) and batch_size > 0):
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}.")
    record = _record(variant)
    if normalize and record is None:
        raise ValueError("normalize=True uses a variant's mean and std: pass variant='<model name>'.")
    crop_pct = crop_pct if crop_pct is not None else (record.crop_pct if record else 1.0)
    interpolation = interpolation or (record.interpolation if record else "bicubic")
    _check_interpolation(interpolation)

    tfds_spec = _parse_tfds_spec(spec, split) if spec.startswith("tfds:") else None
    split = tfds_spec[1] if tfds_spec else split or "train"
    if training is None:
        training = split.startswith("train")
    if spec == "digits":
        source = _digits_source(split, size, validation_fraction)
    elif tfds_spec:
        source = _tfds_source(*tfds_spec, training, data_dir, download, seed, image_key, label_key)
    else:
        source = _folder_source(spec, split, validation_fraction, verify_images)
    if one_hot is None:
        one_hot = bool(training and augment is not None and augment.mixes)

    dataset = source.dataset
    if training:
        dataset = dataset.shuffle(shuffle_buffer or source.shuffle_buffer, seed=seed,
                                  reshuffle_each_iteration=True)
    if source.decode is not None:
        dataset = dataset.map(source.decode, num_parallel_calls=tf.data.AUTOTUNE)
        # Damaged data behind a valid header fails here: drop the example, not the epoch.
        dataset = dataset.ignore_errors(log_warning=True)
    if training and augment is not None:
        dataset = augment_dataset(dataset, augment, image_size=size, batch_size=batch_size,
                                  num_classes=source.num_classes, one_hot=one_hot, seed=seed)
    else:
        dataset = _resized_batches(dataset, image_size, crop_pct, interpolation, batch_size, training,
                                   num_classes=source.num_classes if one_hot else None)
    if normalize:
        mean = tf.constant(record.mean, tf.float32)
        std = tf.constant(record.std, tf.float32)
        dataset = dataset.map(lambda images, labels: ((images / 255.0 - mean) / std, labels),
                              num_parallel_calls=tf.data.AUTOTUNE)
    steps = (source.num_examples // batch_size if training
             else math.ceil(source.num_examples / batch_size))
    info = DatasetInfo(spec=spec, split=split, num_classes=source.num_classes,
                       class_names=tuple(source.class_names), num_examples=source.num_examples,
                       skipped=source.skipped, one_hot=bool(one_hot), image_size=size, steps_per_epoch=steps)
    return dataset.prefetch(tf.data.AUTOTUNE), info


def _resized_batches(dataset, image_size, crop_pct, interpolation, batch_size, drop_remainder, num_classes):
    """`eval_transform`ed, batched examples; one-hot labels when `num_classes` is given."""

    def transform(image, label):
        return eval_transform(image, image_size, crop_pct, interpolation), tf.cast(label, tf.int32)

    dataset = dataset.map(transform, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=tf.data.AUTOTUNE)
    if num_classes is None:
        return dataset
    return dataset.map(lambda images, labels: (images, tf.one_hot(labels, num_classes)),
                       num_parallel_calls=tf.data.AUTOTUNE)


@dataclasses.dataclass(frozen=True)
class _Source:
    """Undecoded examples of one split, and how to decode them (None: already images)."""

    dataset: tf.data.Dataset
    split: str
    num_classes: int
    class_names: tuple
    num_examples: int
    shuffle_buffer: int
    skipped: int = 0
    decode: object = None


def _digits_source(split, size, validation_fraction):
    images, labels = digits.load_digits(split, size, validation_fraction)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    return _Source(dataset, split, len(digits.CLASS_NAMES), digits.CLASS_NAMES, len(labels), len(labels))


def _parse_tfds_spec(spec, split):
    """`(name[:version], split)` from `"tfds:NAME[:VERSION][:SPLIT]"` and the `split` argument."""
    match = _TFDS_SPEC.fullmatch(spec)
    if match is None:
        raise ValueError(f"A TFDS spec reads 'tfds:NAME', 'tfds:NAME:SPLIT' or 'tfds:NAME:VERSION:SPLIT'; "
                         f"got {spec!r}.")
    if match["split"] and split and split != match["split"]:
        raise ValueError(f"The spec {spec!r} names split {match['split']!r} but split={split!r} was passed; "
                         f"give it once.")
    name = match["name"] + (f":{match['version']}" if match["version"] else "")
    return name, match["split"] or split or "train"


def _tfds_source(name, split, training, data_dir, download, seed, image_key, label_key):
    # Imported on use: TFDS is only needed for this source and takes seconds to import.
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError as error:
        raise ValueError(
            f"TFDS has no dataset {name!r}; see tfds.list_builders() for the names, or define "
            f"(import) your own builder before loading."
        ) from error
    if download:
        builder.download_and_prepare()
    elif not builder.is_prepared():
        raise ValueError(f"TFDS dataset {name!r} is not prepared in {builder.data_dir!r}; pass "
                         f"download=True, or data_dir= where it is prepared.")
    features = builder.info.features
    for key, kind in ((image_key, "image_key"), (label_key, "label_key")):
        if key not in features:
            raise ValueError(f"TFDS dataset {name!r} has no feature {key!r} ({kind}); "
                             f"its features are {sorted(features.keys())}.")
    labels = features[label_key]
    if not isinstance(labels, tfds.features.ClassLabel):
        raise ValueError(f"TFDS feature {label_key!r} of {name!r} is a {type(labels).__name__}, not a "
                         f"ClassLabel; pass label_key= naming its class label.")
    try:
        num_examples = builder.info.splits[split].num_examples
    except (KeyError, ValueError) as error:
        raise ValueError(f"TFDS dataset {name!r} has no split {split!r}; its splits are "
                         f"{sorted(builder.info.splits.keys())}.") from error
    read_config = tfds.ReadConfig(shuffle_seed=seed)
    dataset = builder.as_dataset(split=split, shuffle_files=training, read_config=read_config)
    dataset = dataset.map(lambda example: (_to_rgb(example[image_key]), example[label_key]),
                          num_parallel_calls=tf.data.AUTOTUNE)
    return _Source(dataset, split, labels.num_classes, tuple(labels.names), num_examples,
                   _TFDS_SHUFFLE_BUFFER)


def _folder_source(root, split, validation_fraction, verify_images):
    class_names, paths, labels = _list_folder(root)
    index = digits.stratified_split(labels, split, validation_fraction)
    paths, labels = [paths[i] for i in index], [labels[i] for i in index]
    bad = [path for path in paths if not _has_image_signature(path)]
    if verify_images:
        bad_set = set(bad)
        bad += _undecodable([path for path in paths if path not in bad_set])
    if bad:
        logger.warning("Skipped %d of %d files in %s (split %r) that cannot be read as images, e.g. %s",
                       len(bad), len(paths), root, split, bad[0])
        bad_set = set(bad)
        kept = [(path, label) for path, label in zip(paths, labels) if path not in bad_set]
        paths, labels = [p for p, _ in kept], [label for _, label in kept]
    if not paths:
        raise ValueError(f"No readable images in split {split!r} of {root!r} ({len(bad)} unreadable files).")
    dataset = tf.data.Dataset.from_tensor_slices((paths, np.asarray(labels, np.int32)))
    return _Source(dataset, split, len(class_names), tuple(class_names), len(paths), len(paths), len(bad),
                   decode=_decode_file)


def _list_folder(root):
    """Class names (sorted sub-folders) and the image files below each, in a fixed order."""
    if not os.path.isdir(root):
        raise ValueError(f"Dataset folder {root!r} does not exist. Pass a folder with one sub-folder of "
                         f"images per class, 'digits', or 'tfds:NAME'.")
    class_names = sorted(entry.name for entry in os.scandir(root)
                         if entry.is_dir() and not entry.name.startswith("."))
    if len(class_names) < 2:
        raise ValueError(f"Dataset folder {root!r} has {len(class_names)} class sub-folder(s) "
                         f"{class_names}; a classification dataset needs one sub-folder per class, "
                         f"at least 2.")
    paths, labels = [], []
    for label, name in enumerate(class_names):
        for folder, subfolders, files in os.walk(os.path.join(root, name), followlinks=True):
            subfolders[:] = sorted(sub for sub in subfolders if not sub.startswith("."))
            for file in sorted(files):
                if file.lower().endswith(IMAGE_EXTENSIONS) and not file.startswith("."):
                    paths.append(os.path.join(folder, file))
                    labels.append(label)
    if not paths:
        raise ValueError(f"No image files ({', '.join(IMAGE_EXTENSIONS)}) in the class sub-folders "
                         f"of {root!r}.")
    return class_names, paths, labels


def _has_image_signature(path):
    try:
        with open(path, "rb") as file:
            head = file.read(16)
    except OSError:
        return False
    return head.startswith(_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def _undecodable(paths):
    """The paths TensorFlow cannot decode, found by decoding each once."""
    index = tf.data.Dataset.range(len(paths))
    path_table = tf.constant(paths or [""])
    decoded = index.map(lambda i: (i, tf.shape(_decode_file(path_table[i], 0)[0])[0]),
                        num_parallel_calls=tf.data.AUTOTUNE, deterministic=False).ignore_errors()
    good = {int(i) for i, _ in decoded.as_numpy_iterator()}
    return [path for i, path in enumerate(paths) if i not in good]


def _decode_file(path, label):
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False, dtype=tf.uint8)
    image.set_shape([None, None, 3])
    return image, label


def _to_rgb(image):
    """Grayscale or RGBA uint8 image to RGB."""
    channels = image.shape[-1]
    if channels == 1:
        return tf.image.grayscale_to_rgb(image)
    if channels == 4:
        return image[..., :3]
    if channels != 3:
        raise ValueError(f"Expected images with 1, 3 or 4 channels; got shape {image.shape}.")
    return image


def _center_crop(image, height, width):
    """Centre crop like torchvision's `CenterCrop`: zero padding where too small, rounded offsets."""
    shape = tf.shape(image)
    pad_height = tf.maximum(height - shape[-3], 0)
    pad_width = tf.maximum(width - shape[-2], 0)
    paddings = [[pad_height // 2, (pad_height + 1) // 2], [pad_width // 2, (pad_width + 1) // 2], [0, 0]]
    image = tf.pad(image, ([[0, 0]] if image.shape.rank == 4 else []) + paddings)
    shape = tf.shape(image)
    # tf.round rounds halves to even, as Python's round in torchvision does.
    top = tf.cast(tf.round(tf.cast(shape[-3] - height, tf.float32) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(shape[-2] - width, tf.float32) / 2.0), tf.int32)
    image = image[..., top:top + height, left:left + width, :]
    return tf.ensure_shape(image, image.shape[:-3].as_list() + [height, width, image.shape[-1]])


def _record(variant):
    if variant is None:
        return None
    if variant not in RECORDS:
        raise ValueError(f"Unknown variant {variant!r}; registered: {sorted(RECORDS)}.")
    return RECORDS[variant]


def _check_interpolation(interpolation):
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}; got {interpolation!r}.")
