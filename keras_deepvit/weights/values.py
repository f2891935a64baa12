"""Checks on a checkpoint's values before any variable is assigned.

A loader that assigns as it goes and meets a bad value half way leaves a model
that is part checkpoint, part initialisation, with no sign of it. Every value
goes through `as_array` (something numeric, as numpy) and `cast_for` (castable
to the variable's dtype, finite) first; the loaders assign only when all passed.
"""

import numpy as np

#: numpy kinds a weight can hold: floats, signed and unsigned ints.
NUMERIC_KINDS = "fiu"
_KIND_NAMES = {
    "b": "booleans", "c": "complex numbers", "O": "Python objects", "U": "strings",
    "S": "bytes", "V": "raw records", "M": "datetimes", "m": "timedeltas",
}
#: How many keys a message lists before it counts the rest.
SHOWN = 10


def listing(items, shown=SHOWN, count=True):
    """`"n: a, b, c ... and 1,234 more"`: long key lists cut, with counts.

    Example:
    >>> listing([f"k{i}" for i in range(12)], shown=2)
    '12: k0, k1 ... and 10 more'
    """
    items = list(items)
    more = f" ... and {len(items) - shown:,} more" if len(items) > shown else ""
    text = f"{', '.join(map(str, items[:shown]))}{more}"
    return f"{len(items):,}: {text}" if count else text


def as_array(value, key):
    """`value` as a numeric numpy array, or a ValueError naming `key` and what it holds.

    Torch tensors, numpy arrays and nested lists of numbers are accepted; strings,
    None, objects, booleans, complex numbers and ragged lists are not.

    Example:
    >>> as_array([[1, 2]], "w").shape
    (1, 2)
    >>> as_array(["a", "b"], "w")
    Traceback (most recent call last):
    ...
    ValueError: 'w' holds strings (dtype <U1), not numbers.
    """
    if hasattr(value, "detach"):  # a torch tensor, if the caller passes one
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value)
    except Exception as error:  # noqa: BLE001 - ragged lists and odd objects raise assorted types
        raise ValueError(f"{key!r} is not an array ({type(value).__name__}: {error}).") from None
    if array.dtype.kind not in NUMERIC_KINDS:
        what = _KIND_NAMES.get(array.dtype.kind, f"dtype {array.dtype}")
        raise ValueError(f"{key!r} holds {what} (dtype {array.dtype}), not numbers.")
    return array


def cast_for(array, key, dtype, allow_nonfinite=False):
    """`array` cast to a variable's `dtype`, refused when it cannot hold the values.

    Floats and ints cast to float variables ("same_kind" casting: no floats into
    int variables); NaN or Inf (also from float64 values that overflow the
    variable's dtype) are refused unless `allow_nonfinite`.

    Example:
    >>> cast_for(np.array([1e300]), "w", "float32")
    Traceback (most recent call last):
    ...
    ValueError: 'w' has 1 value(s) outside the range of float32 (largest magnitude 1e+300).
    """
    dtype = np.dtype(dtype)
    if array.dtype.kind not in NUMERIC_KINDS:
        what = _KIND_NAMES.get(array.dtype.kind, f"dtype {array.dtype}")
        raise ValueError(f"{key!r} holds {what} (dtype {array.dtype}), not numbers.")
    if not np.can_cast(array.dtype, dtype, casting="same_kind"):
        raise ValueError(f"{key!r} is {array.dtype}, which does not cast to the variable's {dtype}.")
    if not allow_nonfinite and array.dtype.kind == "f":
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise ValueError(
                f"{key!r} has {bad:,} non-finite value(s) (NaN or Inf) of {array.size:,}; a "
                "checkpoint saved after its training diverged? Pass allow_nonfinite=True to load it anyway."
            )
    with np.errstate(over="ignore", invalid="ignore"):
        cast = array.astype(dtype)
    if not allow_nonfinite and dtype.kind not in "iub":  # floats, and ml_dtypes' (kind "V")
        bad = int(cast.size - np.count_nonzero(np.isfinite(cast)))
        if bad:
            largest = float(np.max(np.abs(array.astype(np.float64))))
            raise ValueError(
                f"{key!r} has {bad:,} value(s) outside the range of {dtype} (largest magnitude {largest:.3g})."
            )
    return cast
