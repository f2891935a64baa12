"""Hostile checkpoints: tiny files that describe huge, deep or inconsistent data get a
ValueError naming the file, at a memory and time cost bounded by the file's size.

Every file is built by hand (zipfile + pickle opcodes), so these run without torch."""

import doctest
import pickle
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from keras_deepvit.weights import checkpoint_reader
from keras_deepvit.weights.checkpoint import extract_state_dict
from keras_deepvit.weights.checkpoint_reader import Placeholder, find_placeholders, read_checkpoint

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
MEMORY_LIMIT = 100 * 2**20  # far below what each hostile file asks for (>= 128 MiB)
TIME_LIMIT = 3.0  # CPU seconds: the test machine may be shared


@pytest.fixture(autouse=True)
def _seed_and_clear():
    """Overrides conftest's Keras seeding/clear_session: the reader never touches Keras."""
    yield


def op_global(module, name):
    return f"c{module}\n{name}\n".encode()


def op_str(text):
    return b"X" + struct.pack("<I", len(text)) + text.encode()


def op_int(value):
    return b"J" + struct.pack("<i", value) if value < 2**31 else b"\x8a\x08" + struct.pack("<q", value)


def op_tuple(*items):
    return b"(" + b"".join(items) + b"t"


def op_tensor(key, numel, size, stride, offset=0, legacy=False):
    pid = op_tuple(op_str("storage"), op_global("torch", "FloatStorage"), op_str(key), op_str("cpu"),
                   op_int(numel), b"N" if legacy else b"")
    return op_global("torch._utils", "_rebuild_tensor_v2") + op_tuple(
        pid + b"Q", op_int(offset), op_tuple(*map(op_int, size)), op_tuple(*map(op_int, stride)),
        b"\x89", op_global("collections", "OrderedDict") + b")R",
    ) + b"R"


def op_dict(items):
    return b"}(" + b"".join(op_str(k) + v for k, v in items.items()) + b"u"


def pickled(body):
    return b"\x80\x02" + body + b"."


def write_zip(path, data_pkl, records=(), compress=()):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl,
                         zipfile.ZIP_DEFLATED if "data.pkl" in compress else zipfile.ZIP_STORED)
        archive.writestr("archive/byteorder", "little")
        for key, data in dict(records).items():
            archive.writestr(f"archive/data/{key}", data,
                             zipfile.ZIP_DEFLATED if key in compress else zipfile.ZIP_STORED)
    return path


def write_legacy(path, main_pickle, keys=(), storages=b""):
    with open(path, "wb") as file:
        for header in (LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True}):
            file.write(pickle.dumps(header, protocol=2))
        file.write(main_pickle)
        file.write(pickle.dumps(list(keys), protocol=2))
        file.write(storages)
    return path


def refused(path, match, **kwargs):
    """read_checkpoint(path) raises a ValueError naming the file; returns (peak bytes, seconds, message)."""
    tracemalloc.start()
    start = time.process_time()
    try:
        with pytest.raises(ValueError, match=match) as info:
            read_checkpoint(path, **kwargs)
    finally:
        seconds = time.process_time() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert peak < MEMORY_LIMIT, f"peak {peak / 2**20:.0f} MiB"
    assert seconds < TIME_LIMIT, f"{seconds:.1f} s"
    return peak, seconds, message


# --- Memory amplification


def test_stride_zero_view_is_refused(tmp_path):
    # torch.zeros(1).expand(2**26) as torch.save writes it: 4 bytes of storage, 256 MiB of tensor.
    path = write_zip(tmp_path / "stride0.pth", pickled(op_dict({"w": op_tensor("0", 1, (2**26,), (0,))})),
                     {"0": bytes(4)})
    assert path.stat().st_size < 1000
    refused(path, r"size \(67108864,\), stride \(0,\).*needs 256\.0 MiB, beyond the read budget")


def test_overlapping_strides_are_refused(tmp_path):
    # 64 KiB of storage read as an 8192 x 8192 matrix of sliding windows (strides 1, 1).
    tensor = op_tensor("0", 16384, (8192, 8192), (1, 1))
    path = write_zip(tmp_path / "overlap.pth", pickled(op_dict({"w": tensor})), {"0": bytes(65536)})
    refused(path, r"needs 256\.0 MiB, beyond the read budget")


def test_storage_copied_by_many_tensors_is_refused(tmp_path):
    numel = 2**18  # 1 MiB, copied out by 300 tensors: 300 MiB
    tensors = {f"t{i}": op_tensor("0", numel, (numel,), (1,)) for i in range(300)}
    path = write_zip(tmp_path / "shared.pth", pickled(op_dict(tensors)), {"0": bytes(4 * numel)})
    _, _, message = refused(path, r"read budget of 66\.\d MiB")
    assert "already used" in message


def test_small_repeats_and_max_bytes(tmp_path):
    # A legitimate small expansion (1 MiB from 4 bytes) reads; max_bytes moves the limit both ways.
    path = write_zip(tmp_path / "small.pth", pickled(op_dict({"w": op_tensor("0", 1, (2**18,), (0,))})),
                     {"0": np.float32(1.5).tobytes()})
    array = read_checkpoint(path).content["w"]
    assert array.shape == (2**18,) and array.flags.writeable and np.all(array == 1.5)
    refused(path, r"needs 1\.0 MiB, beyond the read budget of 1000 bytes", max_bytes=1000)
    big = write_zip(tmp_path / "big.pth", pickled(op_dict({"w": op_tensor("0", 1, (2**25,), (0,))})),
                    {"0": bytes(4)})
    refused(big, "beyond the read budget")
    assert read_checkpoint(big, max_bytes=2**28).content["w"].shape == (2**25,)


def write_bomb(path, data_pkl, record, head=b"", zeros=2**27):
    """A zip whose ``record`` is ``head`` + ``zeros`` zero bytes, deflated (~1000:1), written in chunks."""
    with zipfile.ZipFile(path, "w") as archive:
        if record != "archive/data.pkl":
            archive.writestr("archive/data.pkl", data_pkl)
        info = zipfile.ZipInfo(record)
        info.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(info, "w") as out:
            out.write(head)
            chunk = bytes(2**20)
            for _ in range(zeros // len(chunk)):
                out.write(chunk)
    return path


def test_deflate_bomb_storage_is_not_decompressed(tmp_path):
    # 128 MiB of zeros deflate to ~130 KB; the tensor needs 16 bytes.
    data_pkl = pickled(op_dict({"w": op_tensor("0", 4, (4,), (1,))}))
    path = write_bomb(tmp_path / "bomb.pth", data_pkl, "archive/data/0")
    assert path.stat().st_size < 2**20
    refused(path, r"storage record 'archive/data/0' has 134217728 bytes, expected 4 float32 elements")


def test_deflate_bomb_pickle_is_bounded(tmp_path):
    head = pickled(op_dict({"epoch": op_int(1)}))  # then 80 MiB of junk after STOP
    path = write_bomb(tmp_path / "bomb_pkl.pth", None, "archive/data.pkl", head, zeros=80 * 2**20)
    refused(path, r"compressed record 'archive/data.pkl' needs 80\.0 MiB, beyond the read budget")


def test_compressed_records_within_budget_still_read(tmp_path):
    values = np.arange(1000, dtype="<f4")
    path = write_zip(tmp_path / "deflated.pth", pickled(op_dict({"w": op_tensor("0", 1000, (1000,), (1,))})),
                     {"0": values.tobytes()}, compress={"0", "data.pkl"})
    np.testing.assert_array_equal(read_checkpoint(path).content["w"], values)


def test_legacy_storage_larger_than_the_file(tmp_path):
    main = pickled(op_dict({"w": op_tensor("0", 10**12, (10**12,), (1,), legacy=True)}))
    path = write_legacy(tmp_path / "huge.pth", main, ["0"], struct.pack("<q", 10**12) + bytes(16))
    refused(path, r"storage record '0': it declares 1000000000000 float32 elements \(3\.6 TiB\), "
                  r"more than the 16 bytes left in the file")


def test_pickle_lengths_and_memo_indices_beyond_the_file(tmp_path):
    # The C unpickler allocates a declared length (and a memo array as long as the index) first.
    huge_bytes = write_legacy(tmp_path / "bytes.pth", b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b"x.")
    refused(huge_bytes, r"object pickle: BINBYTES8 declares 1099511627776 bytes but only")
    huge_memo = write_zip(tmp_path / "memo.pth", pickled(b"N" + b"r" + struct.pack("<I", 2**32 - 2)))
    refused(huge_memo, r"memo index 4294967294 is larger than the pickle")


# --- Nesting depth


def nested_lists(depth):
    return b"]" * depth + b"a" * (depth - 1)  # [[[...]]], two bytes a level


def test_deep_nesting_in_the_weights_is_refused_fast(tmp_path):
    deep = nested_lists(150_000)  # 300 KB
    path = write_zip(tmp_path / "deep.pth", pickled(op_dict({"state_dict": op_dict({"w": deep})})))
    refused(path, r"archive/data.pkl: containers nested more than 256 levels deep")


def test_deep_nesting_elsewhere_is_a_value_error(tmp_path):
    # A persistent id nested 100,000 deep: printing it recursed without limit before.
    path = write_zip(tmp_path / "deep_pid.pth", pickled(nested_lists(100_000) + b"Q"))
    refused(path, "nested more than 256 levels deep")
    legacy = write_legacy(tmp_path / "deep_legacy.pth", pickled(nested_lists(100_000)))
    refused(legacy, r"object pickle: containers nested more than 256 levels deep")


def test_deep_tuple_as_dict_key_does_not_crash(tmp_path):
    # Hashing a tuple nested 200,000 deep overflows the C stack: a segfault, so in a subprocess.
    key = b")" + b"\x85" * 200_000
    path = write_zip(tmp_path / "tuple_key.pth", pickled(b"}" + key + b"K\x01s"))
    package = Path(checkpoint_reader.__file__).parents[1]
    script = f"""
import sys, types
for name, folder in (("keras_deepvit", {str(package)!r}), ("keras_deepvit.weights", {str(package / "weights")!r})):
    module = types.ModuleType(name)  # skip the package __init__s (they import keras)
    module.__path__ = [folder]
    sys.modules[name] = module
from keras_deepvit.weights.checkpoint_reader import read_checkpoint
try:
    read_checkpoint({str(path)!r})
except ValueError as error:
    print(error)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"{path}: ") and "nested more than 256 levels" in result.stdout


def test_find_placeholders_is_linear_in_depth():
    thing = Placeholder.for_global("m.Thing")
    deep = bottom = []
    for _ in range(100_000):
        inner = []
        bottom.append(inner)
        bottom = inner
    bottom.append(thing())
    start = time.process_time()
    found = find_placeholders({"args": deep})
    assert time.process_time() - start < TIME_LIMIT
    [(location, name)] = found
    assert name == "m.Thing"
    assert location == "args." + ".".join(["0"] * 31) + ".<99938 more levels>." + ".".join(["0"] * 32)


def test_find_placeholders_bounds_odd_keys():
    nested_key = ()
    for _ in range(20_000):
        nested_key = (nested_key,)
    thing = Placeholder.for_global("m.Thing")
    found = find_placeholders({"x" * 10_000: thing(), 7: {1.5: thing}, "k": {nested_key: thing}})
    assert [len(loc) < 200 for loc, _ in found] == [True, True, True]
    assert found[1][0] == "7.1.5"


# --- Non-tensors where tensors are expected


def test_non_array_in_state_dict_names_file_and_key(tmp_path):
    content = {"state_dict": {"w": np.ones(2), "b": np.zeros(2), "head.weight": "oops"}}
    with pytest.raises(ValueError, match=r"ckpt\.pth: .*'state_dict\.head\.weight' is a str"):
        extract_state_dict(content, source=str(tmp_path / "ckpt.pth"))
    ignored = {"w": np.ones(2), "v": np.ones(2), "u": np.ones(2), "x._extra_state": 3, "evil": Placeholder.for_global("os.system")()}
    assert extract_state_dict(ignored)[0] is not None  # extra state and placeholders are left to callers


def test_non_array_passed_to_load_torch_state_dict():
    from keras_deepvit.weights.state_dict import _as_numpy

    with pytest.raises(ValueError, match=r"State dict entry 'head.bias' is a str, not a tensor"):
        _as_numpy("oops", "head.bias")
    with pytest.raises(ValueError, match=r"'blocks.0' is a dict, not a tensor"):
        _as_numpy({"a": 1}, "blocks.0")
    assert _as_numpy([1.0, 2.0], "w").tolist() == [1.0, 2.0]


def test_read_budget_docstring_examples():
    from keras_deepvit.weights import read_budget

    result = doctest.testmod(read_budget)
    assert result.failed == 0 and result.attempted > 0
