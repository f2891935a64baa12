"""ImageNet-1k class names and `decode_predictions`, shipped with the package (no download).

The 1000 classes live in `keras_deepvit/data/imagenet_classes.txt`, one line per
class index (`synset id<TAB>WordNet lemmas`), taken from the timm 1.0.31 wheel
(Apache-2.0); the file's header gives the details.
"""

import functools
import importlib.resources
import numbers

import keras
import numpy as np

#: The number of ImageNet-1k classes.
NUM_CLASSES = 1000

_DATA_PACKAGE = "keras_deepvit"
_DATA_PATH = ("data", "imagenet_classes.txt")


@functools.lru_cache(maxsize=None)
def _read_classes():
    """`(synset id, first lemma)` for the 1000 classes, as a tuple, read once."""
    resource = importlib.resources.files(_DATA_PACKAGE).joinpath(*_DATA_PATH)
    classes = []
    for line in resource.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        synset, lemmas = line.split("\t", 1)
        classes.append((synset, lemmas.split(",")[0].strip()))
    if len(classes) != NUM_CLASSES or len({synset for synset, _ in classes}) != NUM_CLASSES:
        raise RuntimeError(
            f"{'/'.join(_DATA_PATH)} in {_DATA_PACKAGE} should list {NUM_CLASSES} distinct "
            f"synsets; found {len(classes)} lines. The installed package data is damaged."
        )
    return tuple(classes)


def imagenet_classes():
    """The ImageNet-1k classes in class-index order.

    The data ships with the package and is read once (with `importlib.resources`),
    then cached; every call returns a fresh list, so changing it is harmless.

    Returns:
        A list of 1000 `(synset_id, name)` tuples of strings; entry `i` is class
        index `i` of a model's 1000-way output. `name` is the first WordNet lemma
        of the synset, e.g. `"tench"` or `"great white shark"`. Two names occur
        twice ("crane", the bird 134 and the machine 517; "maillot", 638 and 639):
        the synset id is the unique key.

    Example:
    >>> classes = imagenet_classes()
    >>> len(classes)
    1000
    >>> classes[0], classes[2], classes[999]
    (('n01440764', 'tench'), ('n01484850', 'great white shark'), ('n15075141', 'toilet tissue'))
    """
    return list(_read_classes())


def _check_top(top):
    if isinstance(top, bool) or not isinstance(top, numbers.Integral) or not 1 <= top <= NUM_CLASSES:
        raise ValueError(f"top must be an int from 1 to {NUM_CLASSES}; got {top!r}.")
    return int(top)


def _to_numpy(preds):
    if isinstance(preds, np.ndarray):
        return preds
    return np.asarray(keras.ops.convert_to_numpy(preds))


def decode_predictions(preds, top=5):
    """Names the `top` highest-scoring ImageNet-1k classes of each sample.

    Like `keras.applications.imagenet_utils.decode_predictions`, but offline: the
    class names ship with the package. Ties keep class-index order (the lower
    index first).

    Args:
        preds: scores of shape `(batch, 1000)`, e.g. a model's softmax output: a
            NumPy array, a nested list, or a tensor of any Keras backend.
        top: int from 1 to 1000, how many classes to return per sample.

    Returns:
        A list with one entry per sample, each a list of `top` tuples
        `(synset_id, name, score)`, by decreasing score; `score` is a Python float.

    Raises:
        ValueError: if `preds` is not 2-D with 1000 columns, or `top` is not an
            int from 1 to 1000.

    Example:
    >>> import numpy as np
    >>> preds = np.zeros((1, 1000), "float32")
    >>> preds[0, 1] = 1.0
    >>> decode_predictions(preds, top=2)
    [[('n01443537', 'goldfish', 1.0), ('n01440764', 'tench', 0.0)]]
    """
    top = _check_top(top)
    scores = _to_numpy(preds)
    if scores.ndim != 2 or scores.shape[1] != NUM_CLASSES:
        raise ValueError(
            f"decode_predictions expects a batch of ImageNet-1k scores (batch, {NUM_CLASSES}); "
            f"got shape {tuple(scores.shape)} — a model with classes != {NUM_CLASSES} has no "
            "ImageNet names."
        )
    # float64 holds every float16/bfloat16/float32 score exactly, and NumPy sorts it.
    scores = scores.astype("float64")
    classes = _read_classes()
    results = []
    for row in scores:
        best = np.argsort(-row, kind="stable")[:top]
        results.append([(*classes[i], float(row[i])) for i in best])
    return results
