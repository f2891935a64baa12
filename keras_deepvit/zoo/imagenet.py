"""`weights="imagenet"`: the official checkpoint, downloaded once, normalised once.

The first use of a variant downloads its checkpoint (the record's origins,
tried in order; `$KERAS_DEEPVIT_WEIGHTS_MIRROR` for air-gapped machines). Before
the download gets its name in the cache it is verified: its pinned sha256 when
there is one, else it is read whole without torch (every tensor present and
complete) and must hold the variant's architecture; a bad origin is skipped for
the next. The weights are loaded into the model and the normalised official-key
state dict is cached as `<variant>.imagenet.safetensors` (written atomically;
the raw download is then removed). Every later use, at any input size, head or
option, reads that file and goes through the same all-or-nothing
`load_state_dict_into`: position embeddings resampled, classifier heads left out
when they do not fit. A cached file that no longer reads, or holds another
architecture, is removed with one warning and fetched again; temporary files of
killed runs are removed on the next use (`download.remove_stale_temporaries`).
"""

import logging
import os

import numpy as np
import safetensors.numpy

from keras_deepvit.weights import download
from keras_deepvit.weights.loading import load_state_dict_into, read_state_dict
from keras_deepvit.zoo.identify import describe, looks_like
from keras_deepvit.zoo.records import RECORDS

logger = logging.getLogger(__name__)

#: The cache layout of keras-deepvit 0.1 (a default-configuration `.weights.h5`): never read.
_OLD_CACHE_SUFFIX = ".imagenet.weights.h5"


def converted_filename(record):
    """The cached state dict's file name: `<variant>.imagenet.safetensors`."""
    return f"{record.name}.imagenet.safetensors"


def manual_command(record, filename, converted_path):
    """The one command that converts a hand-downloaded checkpoint into the cache."""
    return f"keras-deepvit convert {filename} --model {record.name} -o {converted_path}"


def looks_like_checkpoint(path):
    """Cheap check of a download's first bytes: a zip or pickle `.pth`, or safetensors.

    A full read follows; this only rejects what is certainly no checkpoint (an
    error page, a quota notice) before it enters the cache.
    """
    with open(path, "rb") as handle:
        head = handle.read(16)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return
    if len(head) >= 9 and head[8:9] == b"{":  # safetensors: 8-byte header size, JSON header
        return
    raise ValueError(f"not a PyTorch or safetensors checkpoint (starts with {head[:12]!r})")


def no_weights_error(record):
    """The ValueError for a variant without published weights: why, and what exists."""
    available = sorted(name for name, r in RECORDS.items() if r.has_weights)
    return ValueError(
        f"No ImageNet weights for {record.name!r}: {record.weights_note}. Models with official "
        f"weights: {', '.join(available)}."
    )


def _full_check(record, read):
    """A `validate` for `download.fetch`: the whole file read, the architecture checked.

    The state dict read is kept in `read`, so a verified download is not read twice.
    """

    def validate(path):
        looks_like_checkpoint(path)
        state_dict, _ = read_state_dict(path)
        if record.name not in looks_like(state_dict):
            raise ValueError(f"this is not the {record.name} checkpoint. {describe(state_dict)}")
        read["state_dict"] = state_dict

    return validate


def _fetch(record, cache_dir, read):
    converted = os.path.join(download.cache_dir(cache_dir), converted_filename(record))
    errors, failures = [], []
    for origin in record.checkpoints:
        read.clear()
        try:
            return download.fetch(
                origin.filename, [origin.url], sha256=origin.sha256, cache_dir=cache_dir,
                manual_hint=manual_command(record, origin.filename, converted),
                validate=_full_check(record, read),
            )
        except download.WeightsDownloadError as error:
            errors.append(str(error))
            failures += error.failures
    if len(errors) == 1:
        raise download.WeightsDownloadError(errors[0], failures=failures)
    raise download.WeightsDownloadError(
        f"No source of the {record.name} checkpoint could be used:\n\n" + "\n\n".join(errors),
        failures=failures,
    )


def fetch_checkpoint(record, cache_dir=None):
    """The local path of the variant's official checkpoint, downloaded and verified if needed.

    Each origin is tried in turn; a file (downloaded, from the mirror, or
    already cached) gets or keeps its name only when its pinned sha256
    matches or, with none pinned, it reads whole and holds the variant's
    architecture.

    Raises:
        WeightsDownloadError: no origin gave such a file; the message lists
            every origin, why it failed, and the steps to do it by hand.
    """
    return _fetch(record, cache_dir, {})


def write_state_dict(state_dict, path):
    """Saves an official-key state dict as safetensors, complete under `path` or not at all."""
    arrays = {key: np.ascontiguousarray(value) for key, value in state_dict.items()}
    with download.atomic_output(path) as temporary:
        safetensors.numpy.save_file(arrays, temporary)


def _read_cached(path, record):
    """`(state_dict, None)`, or `(None, why)` after removing an unusable file (one warning)."""
    try:
        state_dict = safetensors.numpy.load_file(path)
    except Exception as error:  # noqa: BLE001 - safetensors raises its own and OS errors
        reason = f"unreadable: {error}"
    else:
        if record.name in looks_like(state_dict):
            return state_dict, None
        reason = f"not the {record.name} weights: {describe(state_dict)}"
    logger.warning("Removed the unreadable cached weights %s (%s); fetching them again.", path, reason)
    os.remove(path)
    return None, f"Removed the cached weights {path} ({reason})."


def _note_old_cache(directory, record):
    old = os.path.join(directory, record.name + _OLD_CACHE_SUFFIX)
    if os.path.exists(old):
        logger.info(
            "Ignoring %s, written by an older keras-deepvit for one configuration only; "
            "the weights now come from %s (delete the old file to free the space).",
            old, converted_filename(record),
        )


def official_state_dict(record, cache_dir=None):
    """The variant's official weights as an official-key state dict, from the cache or the origins.

    Returns:
        `(state_dict, source)`, the source naming the file it came from.

    Raises:
        WeightsDownloadError: no origin gave a verified checkpoint (the
            message also names any cached file that was removed).
    """
    directory = download.cache_dir(cache_dir)
    download.remove_stale_temporaries(directory)  # e.g. a conversion killed while writing
    converted = os.path.join(directory, converted_filename(record))
    removed = None
    if os.path.isfile(converted):
        state_dict, removed = _read_cached(converted, record)
        if state_dict is not None:
            return state_dict, converted
    _note_old_cache(directory, record)
    read = {}
    try:
        raw = _fetch(record, cache_dir, read)
    except download.WeightsDownloadError as error:
        if removed is None:
            raise
        raise download.WeightsDownloadError(f"{removed}\n{error}", failures=error.failures) from error
    state_dict = read.get("state_dict")
    if state_dict is None:  # vouched for by its sha256, so not read yet
        state_dict, _ = read_state_dict(raw)
        if record.name not in looks_like(state_dict):
            raise ValueError(
                f"{raw}: this is not the {record.name} checkpoint, although its sha256 matches the "
                f"pin. {describe(state_dict)} Fix the pin (docs/weights.md) and delete the file."
            )
    return state_dict, raw


def load_imagenet_weights(model, record, cache_dir=None):
    """Loads the official ImageNet weights of `record`'s variant into `model`.

    Args:
        model: a model built from the record (any input size, classes,
            include_top or option).
        record: the variant's `VariantRecord`.
        cache_dir: where checkpoints and converted weights live; default
            `$KERAS_DEEPVIT_CACHE_DIR` or the Keras cache.

    Returns:
        The path of the cached `.safetensors` state dict.
    """
    if not record.has_weights:
        raise no_weights_error(record)
    converted = os.path.join(download.cache_dir(cache_dir), converted_filename(record))
    state_dict, source = official_state_dict(record, cache_dir)
    load_state_dict_into(model, state_dict, source=source, describe=describe)
    if source != converted:
        write_state_dict(state_dict, converted)
        os.remove(source)
    return converted
