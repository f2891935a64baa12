"""A pickle reader for PyTorch checkpoints that imports and runs nothing.

A pickle is a small program: its GLOBAL/STACK_GLOBAL opcodes name any Python
object (``os.system``, ``builtins.eval``...) and REDUCE calls it, so loading an
untrusted ``.pth`` with `pickle` (or ``torch.load(weights_only=False)``) runs
whatever the file says. `RestrictedUnpickler` never looks a name up in Python:
`RestrictedUnpickler.find_class` answers from a fixed table of our own
re-implementations (`ALLOWED_GLOBALS`) and gives everything else an inert
`Placeholder` class that records what the pickle did with it.

What the table holds, and why:

- ``torch._utils._rebuild_tensor``, ``_rebuild_tensor_v2``, ``_rebuild_tensor_v3``:
  how ``torch.save`` writes a tensor (v1 in files from torch < 1.0, v3 for
  dtypes without a legacy storage class such as ``uint16``). Ours copy the
  described view out of the storage into a numpy array.
- ``torch._utils._rebuild_parameter``, ``_rebuild_parameter_with_state`` and
  ``torch._tensor._rebuild_from_type_v2`` (with the ``torch.Tensor`` and
  ``torch.nn.parameter.Parameter`` type markers it names): an ``nn.Parameter``
  saved directly, or a tensor carrying Python attributes. The array is kept,
  ``requires_grad``, hooks and attributes are dropped.
- the typed storage classes (``torch.FloatStorage``... and the ``torch.cuda``
  variants old files name), ``torch.storage.UntypedStorage`` and the dtypes
  ``torch.uint16/uint32/uint64`` that v3 tensors name: inert markers that
  tell the storage loader how to decode bytes.
- ``collections.OrderedDict`` (every ``state_dict``), ``builtins.set``,
  ``frozenset``, ``complex`` and ``_codecs.encode`` (how protocol 2 writes
  ``bytes``; only the latin-1 form pickle itself produces is accepted).

The allow-listed callables and markers refuse BUILD (their ``__setstate__``
raises) and OrderedDict instances ignore it, so a pickle cannot set attributes
on anything of ours; none of them gives access to attributes or modules.
"""

import _compat_pickle
import collections
import pickle
import reprlib

import numpy as np

#: Storage element kinds: name -> little-endian numpy dtype of the stored bytes.
#: bfloat16 is stored as its 16 raw bits and widened to float32 on decode.
KIND_DTYPES = {
    "float64": "<f8", "float32": "<f4", "float16": "<f2", "bfloat16": "<u2",
    "complex128": "<c16", "complex64": "<c8",
    "int64": "<i8", "int32": "<i4", "int16": "<i2", "int8": "i1",
    "uint64": "<u8", "uint32": "<u4", "uint16": "<u2", "uint8": "u1", "bool": "u1",
}

_STORAGE_CLASSES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
}


#: Bounded repr for messages: never recursive beyond a few levels, never huge.
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 60, 60


class MalformedPickle(ValueError):
    """A checkpoint whose structure is wrong; `read_checkpoint` adds the file name."""


class Placeholder:
    """Inert stand-in for a global that is not on the allow-list.

    `RestrictedUnpickler` makes one subclass per global name (see
    `for_global`), so ``NEWOBJ`` (which needs a class) works. Whatever the
    pickle does with it (call it, ``NEWOBJ``/``REDUCE``, ``BUILD``, set items,
    append) is only recorded, in ``args``, ``kwargs``, ``state``, ``items``,
    ``appended`` and ``callee`` (the placeholder an instance was called on);
    nothing is imported or executed.

    Attributes:
        global_name: ``"module.QualName"`` as the pickle spelled it (Python 2
            names such as ``__builtin__`` mapped to their Python 3 module).
    """

    global_name = ""

    def __new__(cls, *args, **kwargs):
        self = object.__new__(cls)
        self.args = args
        self.kwargs = kwargs
        self.state = None
        self.items = {}
        self.appended = []
        self.callee = None
        return self

    def __init__(self, *args, **kwargs):
        pass

    @classmethod
    def for_global(cls, global_name):
        """A new Placeholder subclass standing for ``global_name``."""
        return type("Placeholder", (cls,), {"global_name": global_name, "__module__": __name__})

    def __call__(self, *args, **kwargs):
        # `getattr(module, "system")("cmd")` calls what an earlier REDUCE made;
        # answering with another placeholder keeps such a file readable.
        result = type(self)(*args, **kwargs)
        result.callee = self
        return result

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):
        self.items[key] = value

    def append(self, value):
        self.appended.append(value)

    def extend(self, values):
        self.appended.extend(values)

    def add(self, value):
        self.appended.append(value)

    def __repr__(self):
        return f"Placeholder({self.global_name!r})"


class _Marker:
    """A storage class, dtype or tensor type named by a pickle: data, not code."""

    __slots__ = ("name", "kind")

    def __init__(self, name, kind=None):
        self.name = name
        self.kind = kind

    def __setstate__(self, state):
        raise MalformedPickle(f"the pickle tries to set state on {self.name}")

    def __repr__(self):
        return f"<{self.name}>"


class _Allowed:
    """An allow-listed callable; immutable from inside a pickle."""

    __slots__ = ("name", "_function")

    def __init__(self, name, function):
        self.name = name
        self._function = function

    def __call__(self, *args, **kwargs):
        return self._function(*args, **kwargs)

    def __setstate__(self, state):
        raise MalformedPickle(f"the pickle tries to set state on {self.name}")

    def __repr__(self):
        return f"<allowed {self.name}>"


class _OrderedDict(collections.OrderedDict):
    """``collections.OrderedDict`` as met in state dicts."""

    def __setstate__(self, state):
        # torch attaches `_metadata` (per-module version numbers): no use to us,
        # and ignoring it keeps a pickle from setting attributes.
        pass


class Storage:
    """One storage's raw bytes; `array` decodes them (cached per kind).

    ``data`` is None while a legacy file's storages are still unread (the
    first of its two passes): tensors rebuilt then are None. ``budget`` (a
    `keras_deepvit.weights.read_budget.ReadBudget`, or None for no limit) is
    charged for every tensor copied out of this storage.
    """

    __slots__ = ("name", "kind", "data", "big_endian", "budget", "_arrays")

    def __init__(self, name, kind, data, big_endian=False, budget=None):
        self.name = name
        self.kind = kind
        self.data = data
        self.big_endian = big_endian
        self.budget = budget
        self._arrays = {}

    def array(self, kind=None):
        """The storage as a 1-D little-endian array of ``kind`` (default: its own)."""
        kind = kind or self.kind
        if kind != self.kind and self.kind != "uint8":
            raise MalformedPickle(f"storage {self.name} holds {self.kind}, a tensor reads it as {kind}")
        if kind not in self._arrays:
            self._arrays[kind] = decode(self.data, kind, self.big_endian, self.name)
        return self._arrays[kind]

    def __setstate__(self, state):
        raise MalformedPickle(f"the pickle tries to set state on storage {self.name}")


def bfloat16_bits_to_float32(bits):
    """Widen raw bfloat16 bits (uint16) to float32, exactly.

    bfloat16 is the upper half of a float32, so shifting the bits 16 places
    left gives the same number (NaN payloads and infinities included).
    """
    return (np.asarray(bits, dtype="<u2").astype("<u4") << 16).view("<f4")


def decode(raw, kind, big_endian=False, name="?"):
    """Bytes -> 1-D numpy array of ``kind`` (little-endian; bfloat16 -> float32)."""
    stored = np.dtype(KIND_DTYPES[kind])
    if len(raw) % stored.itemsize:
        raise MalformedPickle(
            f"storage {name} has {len(raw)} bytes, not a whole number of {kind} elements"
        )
    if big_endian and stored.itemsize > 1:
        flat = np.frombuffer(raw, dtype=stored.newbyteorder(">")).astype(stored)
    else:
        flat = np.frombuffer(raw, dtype=stored)
    if kind == "bfloat16":
        return bfloat16_bits_to_float32(flat)
    if kind == "bool":
        # Any non-zero byte is True in torch; numpy must not see other byte values.
        return flat != 0
    return flat


def _is_index(value):
    return type(value) is int and value >= 0


def make_array(storage, offset, size, stride, kind=None):
    """Copy the view (offset, size, stride in elements) out of ``storage``.

    The copy's bytes are taken from ``storage.budget`` first: a view may
    repeat its storage's elements (stride 0, overlapping strides), so its size
    is bounded by the budget, not by the file.
    """
    if not isinstance(storage, Storage):
        raise MalformedPickle(f"a tensor's storage is {type(storage).__name__}, not a storage")
    if storage.data is None:
        return None
    if not (isinstance(size, (tuple, list)) and isinstance(stride, (tuple, list))):
        raise MalformedPickle(
            f"bad tensor geometry: size {_describe(size)}, stride {_describe(stride)} (tuples expected)"
        )
    size, stride = tuple(size), tuple(stride)
    if not (
        _is_index(offset) and len(size) == len(stride) <= _MAX_DIMS
        and all(map(_is_index, size)) and all(map(_is_index, stride))
    ):
        raise MalformedPickle(
            f"bad tensor geometry: offset {short_repr(offset)}, size {short_repr(size)}, stride {short_repr(stride)}"
        )
    flat = storage.array(kind)
    count = 1
    for n in size:
        count *= n
    if count == 0:
        return np.zeros(size, dtype=flat.dtype)
    last = offset + sum((n - 1) * step for n, step in zip(size, stride))
    if last >= flat.size:
        raise MalformedPickle(
            f"tensor (offset {offset}, size {short_repr(size)}, stride {short_repr(stride)}) reaches past the end "
            f"of storage {storage.name} ({flat.size} elements)"
        )
    if storage.budget is not None:
        storage.budget.take(
            count * flat.itemsize,
            f"a tensor of size {short_repr(size)}, stride {short_repr(stride)} from storage {storage.name} "
            f"({flat.size} elements)",
        )
    view = np.lib.stride_tricks.as_strided(
        flat[offset:], shape=size, strides=[step * flat.itemsize for step in stride], writeable=False
    )
    # A copy: callers get independent, C-contiguous, writable arrays.
    return np.array(view, order="C", copy=True)


#: numpy's limit on dimensions.
_MAX_DIMS = 64


def short_repr(value, limit=120):
    """A repr for error messages: bounded in length and depth, whatever ``value`` is."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    return make_array(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, *_ignored):
    if not isinstance(dtype, _Marker) or dtype.kind is None:
        raise MalformedPickle(f"unsupported tensor dtype {_describe(dtype)}")
    return make_array(storage, storage_offset, size, stride, dtype.kind)


def _rebuild_parameter(data, *_ignored):
    return data


def _rebuild_from_type_v2(function, new_type, args, state):
    return function(*args)


def _latin1_bytes(text, encoding="utf-8"):
    if type(text) is not str or encoding not in ("latin1", "latin-1"):
        raise MalformedPickle("_codecs.encode is only accepted as pickle writes bytes (latin-1 text)")
    return text.encode("latin-1")


def _describe(obj):
    return getattr(obj, "global_name", None) or getattr(obj, "name", None) or type(obj).__name__


def _allowed_globals():
    table = {
        "torch._utils._rebuild_tensor": _Allowed("torch._utils._rebuild_tensor", _rebuild_tensor),
        "torch._utils._rebuild_tensor_v2": _Allowed("torch._utils._rebuild_tensor_v2", _rebuild_tensor),
        "torch._utils._rebuild_tensor_v3": _Allowed("torch._utils._rebuild_tensor_v3", _rebuild_tensor_v3),
        "torch._utils._rebuild_parameter": _Allowed("torch._utils._rebuild_parameter", _rebuild_parameter),
        "torch._utils._rebuild_parameter_with_state": _Allowed(
            "torch._utils._rebuild_parameter_with_state", _rebuild_parameter
        ),
        "torch._tensor._rebuild_from_type_v2": _Allowed(
            "torch._tensor._rebuild_from_type_v2", _rebuild_from_type_v2
        ),
        "torch.Tensor": _Marker("torch.Tensor"),
        "torch.nn.parameter.Parameter": _Marker("torch.nn.parameter.Parameter"),
        "torch.storage.UntypedStorage": _Marker("torch.storage.UntypedStorage", "uint8"),
        "collections.OrderedDict": _Allowed("collections.OrderedDict", _OrderedDict),
        "builtins.set": _Allowed("builtins.set", set),
        "builtins.frozenset": _Allowed("builtins.frozenset", frozenset),
        "builtins.complex": _Allowed("builtins.complex", complex),
        "_codecs.encode": _Allowed("_codecs.encode", _latin1_bytes),
    }
    for dtype in ("uint16", "uint32", "uint64"):
        table[f"torch.{dtype}"] = _Marker(f"torch.{dtype}", dtype)
    for module in ("torch", "torch.cuda"):
        for cls, kind in _STORAGE_CLASSES.items():
            table[f"{module}.{cls}"] = _Marker(f"{module}.{cls}", kind)
    return table


#: "module.name" -> our stand-in. Nothing outside this table is ever resolved.
ALLOWED_GLOBALS = _allowed_globals()


def storage_kind(storage_type):
    """The element kind of a storage class marker met in a persistent id."""
    if isinstance(storage_type, _Marker) and storage_type.kind is not None and "Storage" in storage_type.name:
        return storage_type.kind
    raise MalformedPickle(f"unsupported storage type {_describe(storage_type)}")


def normalise_global(module, name):
    """Python 2 spellings (``__builtin__``, ``copy_reg``...) to Python 3 ones.

    Protocol 2 pickles (torch's default) keep the Python 2 names; the stdlib's
    own renaming table is used as data only, nothing is imported.
    """
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}"


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves globals only from `ALLOWED_GLOBALS`.

    Args:
        file: binary file object positioned at the pickle.
        load_storage: called with each persistent id (a tuple); returns the
            object it stands for. None: persistent ids are an error.

    After `load`, ``placeholder_names`` holds every global that was replaced.
    """

    def __init__(self, file, load_storage=None):
        super().__init__(file, encoding="utf-8")
        self._load_storage = load_storage
        self._placeholder_classes = {}
        self.placeholder_names = set()

    def find_class(self, module, name):
        full_name = normalise_global(module, name)
        allowed = ALLOWED_GLOBALS.get(full_name)
        if allowed is not None:
            return allowed
        self.placeholder_names.add(full_name)
        if full_name not in self._placeholder_classes:
            self._placeholder_classes[full_name] = Placeholder.for_global(full_name)
        return self._placeholder_classes[full_name]

    def persistent_load(self, pid):
        if self._load_storage is None:
            raise MalformedPickle(f"unexpected persistent id {pid!r:.80}")
        return self._load_storage(pid)


def _is_placeholder(obj):
    return isinstance(obj, Placeholder) or (isinstance(obj, type) and issubclass(obj, Placeholder))


#: Parts of a location shown at each end; deeper ones are elided, so a report
#: costs the same at any depth.
_LOCATION_ENDS = 32


def _part(key):
    if isinstance(key, str):
        return key if len(key) <= 100 else key[:100] + "..."
    if isinstance(key, int):
        return str(key) if key.bit_length() < 300 else short_repr(key)
    return short_repr(key)


class _Location:
    """A location as a link to its parent: children cost O(1), not O(depth)."""

    __slots__ = ("parent", "part", "depth", "head")

    def __init__(self, parent, part):
        self.parent, self.part = parent, part
        self.depth = 1 if parent is None else parent.depth + 1
        # `head`: the ancestor _LOCATION_ENDS deep, where the shown prefix ends.
        if self.depth == _LOCATION_ENDS:
            self.head = self
        else:
            self.head = None if parent is None else parent.head

    @staticmethod
    def _up(node, count):
        parts = []
        while node is not None and len(parts) < count:
            parts.append(str(node.part))
            node = node.parent
        return parts[::-1]

    def render(self):
        if self.depth <= 2 * _LOCATION_ENDS:
            return ".".join(self._up(self, self.depth))
        hidden = self.depth - 2 * _LOCATION_ENDS
        return ".".join(
            self._up(self.head, _LOCATION_ENDS) + [f"<{hidden} more levels>"]
            + self._up(self, _LOCATION_ENDS)
        )


def _render(location):
    return "<root>" if location is None else location.render()


_LEAVES = (str, bytes, bytearray, int, float, complex, type(None), np.ndarray, np.generic)


class _Found(tuple):
    """`(location, global_name)`, with the placeholder itself as `.placeholder`."""

    def __new__(cls, location, global_name, placeholder):
        self = super().__new__(cls, (location, global_name))
        self.placeholder = placeholder
        return self


def find_placeholders(obj):
    """Every `Placeholder` inside a nested structure, with its location.

    Looks through dicts (values and keys), lists, tuples, sets and into the
    arguments/state a placeholder recorded. Cycles are followed once.

    Args:
        obj: what `read_checkpoint` returned in ``Checkpoint.content``, or any
            part of it.

    Returns:
        ``[(location, global_name), ...]`` in depth-first order. Locations join
        dict keys and list indices with dots (``"state_dict.blocks.0.attn.x"``);
        ``"<root>"`` is ``obj`` itself; inside a placeholder, ``<args>.i``,
        ``<kwargs>.k``, ``<state>``, ``<items>.k``, ``<appended>.i``,
        ``<callee>``; a
        placeholder used as a dict key is reported at ``<key>``. Each pair
        also carries the placeholder as ``.placeholder`` (see `placeholder_kind`).
        The walk is iterative and linear in the size of ``obj``; locations
        deeper than 64 levels show their first and last 32 parts.

    Example:
    >>> ns = Placeholder.for_global("argparse.Namespace")()
    >>> find_placeholders({"epoch": 3, "args": ns, "state_dict": {"w": [1.0]}})
    [('args', 'argparse.Namespace')]
    """
    found = []
    seen = set()
    stack = [(None, obj)]
    while stack:
        location, item = stack.pop()
        if isinstance(item, _LEAVES):
            continue
        if isinstance(item, type):
            if issubclass(item, Placeholder):
                found.append(_Found(_render(location), item.global_name, item))
            continue
        if id(item) in seen:
            continue
        seen.add(id(item))
        children = []
        if isinstance(item, Placeholder):
            found.append(_Found(_render(location), item.global_name, item))
            children += [(_Location(location, f"<args>.{i}"), a) for i, a in enumerate(item.args)]
            children += [(_Location(location, f"<kwargs>.{_part(k)}"), v) for k, v in item.kwargs.items()]
            children.append((_Location(location, "<state>"), item.state))
            children += [(_Location(location, f"<items>.{_part(k)}"), v) for k, v in item.items.items()]
            children += [(_Location(location, f"<appended>.{i}"), v) for i, v in enumerate(item.appended)]
            children.append((_Location(location, "<callee>"), item.callee))
        elif isinstance(item, dict):
            for key, value in item.items():
                if not isinstance(key, _LEAVES):
                    children.append((_Location(location, "<key>"), key))
                children.append((_Location(location, _part(key)), value))
        elif isinstance(item, (list, tuple)):
            children = [
                (_Location(location, i), value) for i, value in enumerate(item) if not isinstance(value, _LEAVES)
            ]
        elif isinstance(item, (set, frozenset)):
            children = [(_Location(location, "<set>"), value) for value in item]
        stack.extend(reversed(children))
    return found


def placeholder_kind(obj):
    """What a pickle did with a refused global, in words: a call, an object or a reference.

    Example:
    >>> system = Placeholder.for_global("posix.system")
    >>> placeholder_kind(system("touch x")), placeholder_kind(system)
    ('a pickled call to posix.system', 'a pickled reference to posix.system')
    """
    if isinstance(obj, type):
        return f"a pickled reference to {obj.global_name}"
    if obj.args or obj.kwargs or obj.callee is not None:
        return f"a pickled call to {obj.global_name}"
    return f"a pickled {obj.global_name} object"
