"""Read PyTorch and safetensors checkpoints into numpy, without torch and without running code.

Formats, told apart by the file's first bytes (never by its extension):

- ``torch-zip`` (``torch.save`` since torch 1.6, whatever the file is called:
  ``.pth``, ``.pth.tar``, ``.bin``...): a zip archive whose single top folder
  (named after the file, or ``archive``) holds ``data.pkl``, the pickled
  object; ``data/<key>``, one record of raw bytes per storage; ``byteorder``
  (``little``/``big``) and version records. A tensor in ``data.pkl`` is a call
  to ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``
  whose storage is a *persistent id* ``("storage", storage class, key,
  location, numel)`` naming ``data/<key>``.
- ``torch-legacy`` (``torch.save(..., _use_new_zipfile_serialization=False)``
  and torch 0.4 to 1.5): five pickles back to back (a magic number, the
  protocol version 1001, a dict of system info, the object itself with
  persistent ids ``("storage", storage class, key, location, numel, view)``,
  then the list of storage keys), followed by each listed storage's element
  count (int64, little-endian) and raw little-endian bytes. The storages come
  after the object, so the object's pickle is read twice: once to learn the
  storage types, once to build the arrays.
- ``safetensors``: an 8-byte little-endian header length, a JSON header
  (dtype, shape, byte offsets per tensor), then the data; read with the
  ``safetensors`` package (``framework="numpy"``).
- The tar format of torch < 0.4 is recognised and refused.

Pickles go through `RestrictedUnpickler`, which imports nothing: tensors,
storages, ``OrderedDict`` and plain containers/numbers are rebuilt by our own
code, any other global (``argparse.Namespace``, ``os.system``...) becomes an
inert `Placeholder`. Callers must check the weights for placeholders
(`find_placeholders`) before using them.

Tensors come back as independent C-contiguous little-endian numpy arrays
(views, offsets and strides resolved; storages shared by several tensors are
read once and copied per tensor). numpy has no bfloat16, so bfloat16 tensors come back as
float32 holding exactly the same values (the bits shifted into the upper half
of a float32). Supported element types: float16/32/64, bfloat16, complex64/128,
int8/16/32/64, uint8/16/32/64, bool. float8 and quantized tensors are refused.

Untrusted files cost memory and time bounded by their size
(`keras_deepvit.weights.read_budget`): every pickle is scanned in one linear
pass before it is unpickled (lengths past the end, oversized memo indices and
nesting deeper than 256 levels are refused); every size a file declares is
checked against the bytes it holds before anything is read (zip records against
``ZipInfo.file_size`` and the tensor's element count; compressed records, which
``torch.save`` never writes, are decompressed only up to the size needed); and
the tensor data built from the storages (views repeating elements, stride 0,
a storage copied by many tensors) may not exceed the read budget, by default
2 x the file's size + 64 MiB. Whatever goes wrong is a ValueError naming the
file.
"""

import dataclasses
import importlib.util
import io
import json
import os
import struct
import zipfile

import numpy as np

from keras_deepvit.weights.read_budget import ReadBudget, human_bytes, scan_pickle
from keras_deepvit.weights.restricted_unpickler import (
    KIND_DTYPES,
    MalformedPickle,
    Placeholder,
    RestrictedUnpickler,
    Storage,
    bfloat16_bits_to_float32,
    find_placeholders,
    short_repr,
    storage_kind,
)

__all__ = ["Checkpoint", "Placeholder", "find_placeholders", "read_checkpoint"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_SAFETENSORS_KINDS = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "C64": "complex64", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
}


@dataclasses.dataclass
class Checkpoint:
    """What `read_checkpoint` found in a file.

    Attributes:
        content: the saved object: dicts (``OrderedDict`` kept as a dict
            subclass), lists, tuples, sets, str, bytes, numbers, None, numpy
            arrays for tensors, and `Placeholder` objects for anything else.
        format: ``"torch-zip"``, ``"torch-legacy"`` or ``"safetensors"``.
        path: the file read.
        placeholders: sorted distinct ``"module.QualName"`` of every global
            the pickle named that was replaced by a `Placeholder`.
    """

    content: object
    format: str
    path: str
    placeholders: list[str]


def read_checkpoint(path, max_bytes=None):
    """Read a ``.pth``/``.bin``/``.safetensors`` checkpoint; never imports torch or runs its pickle.

    Args:
        path: the checkpoint file (str or path-like).
        max_bytes: the read budget: most bytes of tensor data to build (see
            the module docstring); None for 2 x the file's size + 64 MiB.

    Returns:
        A `Checkpoint`.

    Raises:
        ValueError: the file is empty, truncated, corrupt, in an unsupported
            format (torch < 0.4 tar, TorchScript, plain pickles), holds an
            unsupported dtype, or describes more data than it holds or than
            ``max_bytes``; the message names the file.
        MemoryError: the file's own data does not fit in memory (its sizes
            are consistent); the message names the file.
        OSError: the file cannot be opened.
        ImportError: a safetensors file, without the ``safetensors`` package.

    Example:
    >>> import tempfile, numpy as np
    >>> from safetensors.numpy import save_file
    >>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
    >>> save_file({"w": np.eye(2, dtype="float32")}, path)
    >>> ckpt = read_checkpoint(path)
    >>> ckpt.format, ckpt.content["w"].tolist(), ckpt.placeholders
    ('safetensors', [[1.0, 0.0], [0.0, 1.0]], [])
    """
    path = os.fspath(path)
    with open(path, "rb") as file:
        head = file.read(512)
        size = os.fstat(file.fileno()).st_size
        file.seek(0)
        fmt = _detect_format(path, head, size)
        if fmt == "safetensors" and importlib.util.find_spec("safetensors") is None:
            raise ImportError(f"{path}: reading safetensors files needs `pip install safetensors`")
        budget = ReadBudget(size, max_bytes)
        try:
            if fmt == "torch-zip":
                content, names = _read_zip(file, size, budget)
            elif fmt == "torch-legacy":
                content, names = _read_legacy(file, size, budget)
            else:
                content, names = _read_safetensors(path, file), set()
        except MemoryError as exc:
            raise MemoryError(
                f"{path}: out of memory reading this {fmt} checkpoint of {human_bytes(size)} "
                f"({human_bytes(budget.used)} of tensor data built so far)"
            ) from exc
        except RecursionError as exc:
            raise ValueError(f"{path}: the {fmt} checkpoint nests its contents too deeply") from exc
        except MalformedPickle as exc:
            raise ValueError(f"{path}: {exc}") from exc
        except Exception as exc:
            raise ValueError(
                f"{path}: corrupt or truncated {fmt} checkpoint ({type(exc).__name__}: {exc})"
            ) from exc
    return Checkpoint(content=content, format=fmt, path=path, placeholders=sorted(names))


def _detect_format(path, head, size):
    if size == 0:
        raise ValueError(f"{path}: empty file, not a checkpoint")
    if head.startswith(b"PK"):
        return "torch-zip"
    if head[257:262] == b"ustar":
        raise ValueError(
            f"{path}: a tar archive, the checkpoint format of torch < 0.4, which is not supported; "
            "load it with an old torch and save it again with torch.save"
        )
    if head[:1] == b"\x80":
        return "torch-legacy"
    if len(head) > 9 and head[8:9] == b"{" and 8 + struct.unpack("<Q", head[:8])[0] <= size:
        return "safetensors"
    raise ValueError(
        f"{path}: unrecognised file format (first bytes {head[:16]!r}); expected a PyTorch "
        "checkpoint (zip or legacy pickle) or a safetensors file"
    )


def _read_record(archive, name, size, budget, expected=None, what="record"):
    """A zip record's bytes, its declared sizes checked against ``expected`` and the file first."""
    info = archive.getinfo(name)
    declared = info.file_size
    if expected is not None and declared != expected:
        raise MalformedPickle(f"{what} {name!r} declares {declared} bytes, expected {expected}")
    if info.compress_size > size:
        raise MalformedPickle(
            f"{what} {name!r} declares {info.compress_size} stored bytes, more than the whole file ({size})"
        )
    if info.compress_type == zipfile.ZIP_STORED:
        if info.compress_size != declared:
            raise MalformedPickle(
                f"{what} {name!r} is stored uncompressed but declares {declared} bytes in "
                f"{info.compress_size}"
            )
    else:
        # torch.save never compresses: whatever a compressed record expands to is extra.
        budget.take(declared, f"compressed {what} {name!r}")
    with archive.open(info) as record:
        data = record.read(declared)  # ZipExtFile stops at file_size: a bomb cannot run on
    if len(data) != declared:
        raise MalformedPickle(f"{what} {name!r} holds {len(data)} bytes, its header says {declared}")
    return data


def _read_zip(file, size, budget):
    try:
        archive = zipfile.ZipFile(file)
    except zipfile.BadZipFile as exc:
        raise MalformedPickle(f"not a readable zip archive ({exc}); the file may be truncated") from exc
    names = set(archive.namelist())
    pickles = sorted(n for n in names if n.endswith("/data.pkl") and n.count("/") == 1)
    if len(pickles) != 1:
        raise MalformedPickle(
            f"a zip archive but not a torch.save checkpoint: expected one '<name>/data.pkl', "
            f"found {pickles or 'none'}"
        )
    prefix = pickles[0][: -len("data.pkl")]
    if prefix + "constants.pkl" in names or any(n.startswith(prefix + "code/") for n in names):
        raise MalformedPickle("a TorchScript archive (torch.jit.save), not a torch.save checkpoint")
    byteorder = "little"
    if prefix + "byteorder" in names:
        if archive.getinfo(prefix + "byteorder").file_size > 16:
            raise MalformedPickle("the byteorder record is longer than 'little' or 'big'")
        record = _read_record(archive, prefix + "byteorder", size, budget)
        byteorder = record.decode("ascii", "replace").strip()
        if byteorder not in ("little", "big"):
            raise MalformedPickle(f"unknown byteorder record {byteorder!r}")
    storages = {}

    def load_storage(pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise MalformedPickle(f"unexpected persistent id {short_repr(pid)}")
        _, storage_type, key, _location, numel = pid
        kind = storage_kind(storage_type)
        if not isinstance(key, str):
            raise MalformedPickle(f"a storage key is {short_repr(key)}, not a string")
        if key not in storages:
            record = f"{prefix}data/{key}"
            if record not in names:
                raise MalformedPickle(f"missing storage record {record!r}")
            if type(numel) is not int or numel < 0:
                raise MalformedPickle(f"storage record {record!r} has element count {short_repr(numel)}")
            itemsize = np.dtype(KIND_DTYPES[kind]).itemsize
            declared = archive.getinfo(record).file_size
            if declared != numel * itemsize:
                raise MalformedPickle(
                    f"storage record {record!r} has {declared} bytes, expected {numel} {kind} elements"
                )
            data = _read_record(archive, record, size, budget, numel * itemsize, "storage record")
            storages[key] = Storage(record, kind, data, byteorder == "big", budget)
        return storages[key]

    data_pkl = io.BytesIO(_read_record(archive, pickles[0], size, budget))
    scan_pickle(data_pkl, pickles[0])
    unpickler = RestrictedUnpickler(data_pkl, load_storage)
    content = unpickler.load()
    return content, unpickler.placeholder_names


def _read_legacy(file, size, budget):
    names = set()

    def header():
        scan_pickle(file, "legacy header pickle")
        unpickler = RestrictedUnpickler(file)
        value = unpickler.load()
        names.update(unpickler.placeholder_names)
        return value

    if header() != _LEGACY_MAGIC:
        raise MalformedPickle(
            "a pickle without PyTorch's magic number: not a torch.save checkpoint "
            "(bad magic number)"
        )
    protocol = header()
    if protocol != _LEGACY_PROTOCOL:
        raise MalformedPickle(f"unsupported legacy protocol version {protocol!r}")
    sys_info = header()
    if not isinstance(sys_info, dict) or not sys_info.get("little_endian", True):
        # torch writes legacy storage bytes little-endian on any host, but no
        # big-endian file was ever available to check that against.
        raise MalformedPickle("legacy checkpoint written on a big-endian machine: not supported")
    object_start = file.tell()

    # Pass 1: storage kinds and sizes by key; tensors come out as None.
    declared = {}

    def declare_storage(pid):
        if _is_module_pid(pid):
            return pid[1]
        key, kind, numel = _legacy_pid(pid)
        if declared.setdefault(key, (kind, numel)) != (kind, numel):
            raise MalformedPickle(f"storage {key!r} is declared twice with different types or sizes")
        return Storage(key, kind, None)

    scan_pickle(file, "object pickle")
    RestrictedUnpickler(file, declare_storage).load()
    keys = header()
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise MalformedPickle("the list of storage keys is missing or malformed")

    storages = {}
    for key in keys:
        if key not in declared:
            raise MalformedPickle(f"storage record {key!r} is not used by any tensor")
        kind, numel = declared[key]
        count = file.read(8)
        if len(count) != 8:
            raise MalformedPickle(f"file ends before storage record {key!r}")
        (stored_numel,) = struct.unpack("<q", count)
        nbytes = stored_numel * np.dtype(KIND_DTYPES[kind]).itemsize
        if stored_numel != numel:
            raise MalformedPickle(f"storage record {key!r} holds {stored_numel} elements, expected {numel}")
        left = size - file.tell()
        if nbytes > left:
            raise MalformedPickle(
                f"file ends inside storage record {key!r}: it declares {numel} {kind} elements "
                f"({human_bytes(nbytes)}), more than the {left} bytes left in the file"
            )
        data = file.read(nbytes)
        if len(data) != nbytes:
            raise MalformedPickle(f"file ends inside storage record {key!r}")
        storages[key] = Storage(key, kind, memoryview(data), budget=budget)
    missing = sorted(set(declared) - set(storages))
    if missing:
        raise MalformedPickle(f"missing storage record(s) {missing[:5]}")

    # Pass 2: the object again, now with data behind every storage.
    def load_storage(pid):
        if _is_module_pid(pid):
            return pid[1]
        key, _, _ = _legacy_pid(pid)
        view = pid[5]
        if view is None:
            return storages[key]
        # torch < 1.0 could save a view of part of a storage: (view key, offset, numel).
        root = storages[key]
        itemsize = np.dtype(KIND_DTYPES[root.kind]).itemsize
        part = root.data[view[1] * itemsize:(view[1] + view[2]) * itemsize]  # a memoryview: no copy
        return Storage(view[0], root.kind, part, budget=budget)

    file.seek(object_start)  # already scanned
    unpickler = RestrictedUnpickler(file, load_storage)
    content = unpickler.load()
    return content, names | unpickler.placeholder_names


def _is_module_pid(pid):
    # torch.save(model) in the legacy format saves each nn.Module class as
    # ("module", class, source file, source); the class is already a Placeholder.
    return isinstance(pid, tuple) and len(pid) == 4 and pid[0] == "module"


def _legacy_pid(pid):
    if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
        raise MalformedPickle(f"unexpected persistent id {short_repr(pid)}")
    _, storage_type, key, _location, numel, view = pid
    if not isinstance(key, str) or type(numel) is not int or numel < 0:
        raise MalformedPickle(f"malformed storage reference {short_repr(pid)}")
    if view is not None and not (
        isinstance(view, tuple) and len(view) == 3 and isinstance(view[0], str)
        and all(isinstance(v, int) and v >= 0 for v in view[1:]) and view[1] + view[2] <= numel
    ):
        raise MalformedPickle(f"malformed storage view {short_repr(view)}")
    return key, storage_kind(storage_type), numel


def _read_safetensors(path, file):
    from safetensors import safe_open

    content = {}
    # safe_open first: it validates the header (size, nesting, offsets) before Python parses it.
    with safe_open(path, framework="numpy") as tensors:
        (header_size,) = struct.unpack("<Q", file.read(8))
        header = json.loads(file.read(header_size))
        data_start = 8 + header_size
        for name in tensors.keys():
            entry = header[name]
            kind = _SAFETENSORS_KINDS.get(entry["dtype"])
            if kind is None:
                raise MalformedPickle(f"tensor {name!r} has dtype {entry['dtype']}, which is not supported")
            if kind == "bfloat16":
                # numpy has no bfloat16, so the package cannot hand these out.
                begin, end = entry["data_offsets"]
                file.seek(data_start + begin)
                bits = np.frombuffer(file.read(end - begin), dtype="<u2")
                array = bfloat16_bits_to_float32(bits).reshape(entry["shape"])
            else:
                array = tensors.get_tensor(name)
            content[name] = np.array(array, dtype=array.dtype.newbyteorder("<"), order="C", copy=True)
    return content
