"""`read_checkpoint`: torch zip/legacy and safetensors files read without torch,
exactly as `torch.load` reads them, and without ever running a pickle's code."""

import argparse
import collections
import copy
import doctest
import io
import os
import pickle
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from keras_deepvit.weights import checkpoint_reader, restricted_unpickler
from keras_deepvit.weights.checkpoint_reader import (
    Checkpoint,
    Placeholder,
    find_placeholders,
    read_checkpoint,
)

REFERENCE_DIR = Path(
    os.environ.get(
        "KERAS_DEEPVIT_REFERENCE_DIR", Path(__file__).resolve().parents[2] / "shared" / "reference"
    )
)
TINY_DIR = REFERENCE_DIR / "tiny"
FORMATS = {"torch-zip": True, "torch-legacy": False}  # format -> _use_new_zipfile_serialization
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def save(torch, obj, path, fmt="torch-zip"):
    torch.save(obj, path, _use_new_zipfile_serialization=FORMATS[fmt])
    return path


def bits(array):
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


def assert_matches(ours, ref, location="<root>"):
    """`ours` (read_checkpoint content) equals `ref` (torch.load output), exactly."""
    import torch

    if isinstance(ref, torch.Tensor):
        assert isinstance(ours, np.ndarray), location
        expected = ref.detach()
        expected = expected.float().numpy() if expected.dtype == torch.bfloat16 else expected.numpy()
        assert ours.dtype == expected.dtype and ours.shape == expected.shape, location
        assert np.array_equal(bits(ours), bits(expected)), location  # NaN payloads and -0.0 too
        assert ours.flags.c_contiguous and ours.flags.writeable and ours.flags.owndata, location
        assert ours.dtype.byteorder in "<=|" and sys.byteorder == "little", location
    elif isinstance(ref, dict):
        assert isinstance(ours, dict) and list(ours) == list(ref), location
        for key in ref:
            assert_matches(ours[key], ref[key], f"{location}.{key}")
    elif isinstance(ref, (list, tuple)):
        assert type(ours) is type(ref) and len(ours) == len(ref), location
        for i, (a, b) in enumerate(zip(ours, ref)):
            assert_matches(a, b, f"{location}.{i}")
    else:
        assert type(ours) is type(ref) and ours == ref, location


def check_round_trip(torch, obj, path, fmt):
    save(torch, obj, path, fmt)
    ckpt = read_checkpoint(path)
    assert isinstance(ckpt, Checkpoint)
    assert (ckpt.format, ckpt.path, ckpt.placeholders) == (fmt, str(path), [])
    assert_matches(ckpt.content, torch.load(path, weights_only=True))
    return ckpt.content


@pytest.fixture(autouse=True)
def _seed_and_clear():
    """Overrides conftest's Keras seeding/clear_session: the reader never touches Keras."""
    yield


# --- Hand-written pickles (protocol 0/1 opcodes), for files torch would never write.


def op_global(module, name):
    return f"c{module}\n{name}\n".encode()


def op_str(text):
    return b"V" + text.encode("raw_unicode_escape") + b"\n"


def op_tuple(*items):
    return b"(" + b"".join(items) + b"t"


def op_int(value):
    return b"I%d\n" % value


def op_dict(**items):
    return b"(" + b"".join(op_str(k) + v for k, v in items.items()) + b"d"


def op_tensor(key, numel, offset, size, stride, storage="FloatStorage", legacy=False):
    pid = op_tuple(
        op_str("storage"), op_global("torch", storage), op_str(key), op_str("cpu"), op_int(numel),
        b"N" if legacy else b"",  # legacy ids end with a storage view (None)
    )
    return op_global("torch._utils", "_rebuild_tensor_v2") + op_tuple(
        pid + b"Q", op_int(offset), op_tuple(*map(op_int, size)), op_tuple(*map(op_int, stride)),
        b"I00\n", op_global("collections", "OrderedDict") + b")R",
    ) + b"R"


def op_call_chain(command):
    """getattr(__import__("os"), "system")(command), the classic pickle exploit."""
    module = op_global("builtins", "__import__") + op_tuple(op_str("os")) + b"R"
    system = op_global("builtins", "getattr") + op_tuple(module, op_str("system")) + b"R"
    return system + op_tuple(op_str(command)) + b"R"


def write_zip(path, data_pkl, records=(), top="archive", byteorder="little"):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{top}/data.pkl", data_pkl)
        archive.writestr(f"{top}/byteorder", byteorder)
        for key, data in dict(records).items():
            archive.writestr(f"{top}/data/{key}", data)
        archive.writestr(f"{top}/version", "3\n")
    return path


def write_legacy(path, main_pickle, keys=(), storages=b""):
    headers = (LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True, "type_sizes": {}})
    with open(path, "wb") as file:
        for header in headers:
            file.write(pickle.dumps(header, protocol=2))
        file.write(main_pickle)
        file.write(pickle.dumps(list(keys), protocol=2))
        file.write(storages)
    return path


# --- Round trips against torch.load


@pytest.mark.parametrize("fmt", FORMATS)
def test_dtypes(tmp_path, fmt):
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(3, 5, generator=gen) * 100
    special = torch.tensor([0.0, -0.0, 1e-40, 3e38, float("inf"), -float("inf"), float("nan"), 1 / 3])
    obj = {
        "f32": values, "f16": values.half(), "bf16": values.bfloat16(), "f64": values.double(),
        "bf16_special": special.bfloat16(), "f16_special": special.half(),
        "i64": torch.arange(-5, 10), "i32": torch.arange(7, dtype=torch.int32),
        "i16": torch.arange(-3, 3, dtype=torch.int16), "i8": torch.arange(-3, 3, dtype=torch.int8),
        "u8": torch.arange(250, 256, dtype=torch.uint8), "bool": torch.tensor([True, False, True]),
        "c64": torch.randn(4, dtype=torch.complex64, generator=gen),
    }
    content = check_round_trip(torch, obj, tmp_path / "dtypes.pth", fmt)
    assert content["bf16"].dtype == np.float32 and content["bool"].dtype == np.bool_


@pytest.mark.parametrize("fmt", FORMATS)
def test_views_offsets_shared_storages(tmp_path, fmt):
    torch = pytest.importorskip("torch")
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    obj = {
        "base": base,
        "transposed": base.t(),  # saved without .contiguous(): strides (1, 10)
        "strided": base[1::2, 2::3],
        "offset": base[3:],  # shares base's storage, offset 30
        "column": base[:, 7],
        "expanded": torch.arange(3.0).expand(4, 3),  # stride 0
        "permuted": torch.arange(24, dtype=torch.int64).reshape(2, 3, 4).permute(2, 0, 1),
        "scalar": torch.tensor(7, dtype=torch.int64),  # like num_batches_tracked
        "scalar_view": base[2, 3],
        "empty": torch.zeros(0, 3),
        "empty_view": base[6:],
        "param": torch.nn.Parameter(torch.randn(2, 3)),
        "nested": {"list": [base[0], (base[1], 1, "x", None)], "tuple": (2.5, True, [])},
        "ordered": collections.OrderedDict(b=torch.ones(2), a=torch.zeros(1)),
    }
    content = check_round_trip(torch, obj, tmp_path / "views.pth", fmt)
    assert content["param"].shape == (2, 3) and content["scalar"].shape == ()
    assert content["empty"].shape == (0, 3) and content["empty_view"].shape == (0, 10)
    assert isinstance(content["ordered"], collections.OrderedDict)
    # One storage, independent arrays.
    assert not np.shares_memory(content["base"], content["offset"])
    content["offset"][0, 0] = -1
    assert content["base"][3, 0] == 30


def test_unsigned_attributes_and_parameter_state(tmp_path):
    torch = pytest.importorskip("torch")
    tagged = torch.arange(4.0)
    tagged.note = "tensor with a Python attribute"  # pickled via _rebuild_from_type_v2
    param = torch.nn.Parameter(torch.ones(2))
    param.note = 1  # pickled via _rebuild_parameter_with_state
    obj = {
        "u16": torch.tensor([0, 1, 65535]).to(torch.uint16),
        "u32": torch.tensor([0, 7, 2**32 - 1]).to(torch.uint32),
        "u64": torch.tensor([0, 9, 2**62]).to(torch.uint64)[1:],
        "tagged": tagged, "param": param,
    }
    reference = torch.load(save(torch, obj, tmp_path / "more.pth"), weights_only=True)
    assert_matches(read_checkpoint(tmp_path / "more.pth").content, reference)
    # torch.load itself fails on legacy files with uint16/32/64 tensors; we do not.
    legacy = read_checkpoint(save(torch, obj, tmp_path / "more_legacy.pth", "torch-legacy"))
    assert_matches(legacy.content, reference)


def test_unsupported_dtype_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    path = save(torch, {"w": torch.zeros(2, dtype=torch.float8_e4m3fn)}, tmp_path / "f8.pth")
    with pytest.raises(ValueError, match=r"f8\.pth.*unsupported tensor dtype torch\.float8_e4m3fn"):
        read_checkpoint(path)


@pytest.mark.parametrize("name", ["model.pth.tar", "pytorch_model.bin", "misnamed.safetensors", "noext"])
def test_format_comes_from_bytes_not_name(tmp_path, name):
    torch = pytest.importorskip("torch")
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buffer)  # archive folder "archive", not the file name
    (tmp_path / name).write_bytes(buffer.getvalue())
    ckpt = read_checkpoint(tmp_path / name)
    assert ckpt.format == "torch-zip" and ckpt.content["w"].tolist() == [1.0, 1.0]
    legacy = save(torch, {"w": torch.ones(2)}, tmp_path / f"legacy_{name}", "torch-legacy")
    assert read_checkpoint(legacy).format == "torch-legacy"


def test_big_endian_zip(tmp_path):
    values = np.array([1.5, -2.0, 3.25], dtype=">f4")
    data = b"\x80\x02" + op_dict(w=op_tensor("0", 3, 0, (3,), (1,))) + b"."
    path = write_zip(tmp_path / "be.pth", data, {"0": values.tobytes()}, byteorder="big")
    array = read_checkpoint(path).content["w"]
    assert array.dtype == np.dtype("<f4") and array.tolist() == [1.5, -2.0, 3.25]


def test_safetensors(tmp_path):
    torch = pytest.importorskip("torch")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    gen = torch.Generator().manual_seed(1)
    tensors = {
        "f32": torch.randn(3, 4, generator=gen), "f16": torch.randn(5, generator=gen).half(),
        "bf16": torch.tensor([1.0, -0.0, 1e-40, float("inf"), 3.14159]).bfloat16(),
        "bf16_2d": torch.randn(2, 3, generator=gen).bfloat16(), "i64": torch.arange(4),
        "u8": torch.arange(3, dtype=torch.uint8), "bool": torch.tensor([True, False]),
        "scalar": torch.tensor(3.0), "empty": torch.zeros(0, 2),
    }
    path = tmp_path / "model.safetensors"
    safetensors_torch.save_file(tensors, str(path))
    ckpt = read_checkpoint(path)
    assert (ckpt.format, ckpt.placeholders) == ("safetensors", [])
    assert_matches(ckpt.content, dict(sorted(safetensors_torch.load_file(str(path)).items())))
    (tmp_path / "cut.safetensors").write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ValueError, match="cut.safetensors"):
        read_checkpoint(tmp_path / "cut.safetensors")


# --- What training scripts save


def test_timm_train_script_checkpoint(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    model(torch.randn(5, 4)).square().sum().backward()
    optimizer.step()
    args = argparse.Namespace(model="pit_ti_224", lr=1e-3, epochs=300, smoothing=0.1)
    checkpoint = {
        "epoch": 12, "arch": "pit_ti_224", "state_dict": model.state_dict(),
        "state_dict_ema": copy.deepcopy(model).state_dict(), "optimizer": optimizer.state_dict(),
        "version": 2, "metric": 71.5, "args": args,
    }
    path = save(torch, checkpoint, tmp_path / "checkpoint-12.pth.tar")
    ckpt = read_checkpoint(path)
    assert ckpt.placeholders == ["argparse.Namespace"]
    assert find_placeholders(ckpt.content) == [("args", "argparse.Namespace")]
    assert find_placeholders(ckpt.content["state_dict"]) == []
    assert isinstance(ckpt.content["args"], Placeholder) and ckpt.content["args"].state == vars(args)
    reference = torch.load(path, weights_only=False)
    del reference["args"]
    assert_matches({k: v for k, v in ckpt.content.items() if k != "args"}, reference)
    assert ckpt.content["state_dict"]["1.num_batches_tracked"].shape == ()
    assert ckpt.content["optimizer"]["state"][0]["step"].shape == ()


def test_shared_fixtures_parametrized():
    if not TINY_DIR.is_dir():
        pytest.skip(f"no reference fixtures at {TINY_DIR}")
    names = {p.name for p in TINY_DIR.glob("*.pth")}
    assert "tiny_refiner_96.legacy.pth" in names and any(n.endswith(".timm_ckpt.pth") for n in names)


@pytest.mark.parametrize(
    "path", sorted(TINY_DIR.glob("*.pth")) if TINY_DIR.is_dir() else [], ids=lambda p: p.name
)
def test_shared_fixture(path):
    torch = pytest.importorskip("torch")
    ckpt = read_checkpoint(path)
    assert ckpt.format == ("torch-legacy" if path.name.endswith(".legacy.pth") else "torch-zip")
    reference = torch.load(path, weights_only=False, map_location="cpu")
    content = ckpt.content
    if isinstance(reference.get("args"), argparse.Namespace):
        assert find_placeholders(content) == [("args", "argparse.Namespace")]
        assert content["args"].state == vars(reference.pop("args"))
        content = {k: v for k, v in content.items() if k != "args"}
    else:
        assert ckpt.placeholders == [] and find_placeholders(content) == []
    assert_matches(content, reference)


# --- Malicious pickles never run


def _touch(path):
    Path(path).touch()


class Payload:
    """Pickles as `function(*args)`: what torch.load(weights_only=False) would call."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def payloads(marker):
    return {
        f"{os.system.__module__}.system": Payload(os.system, f"touch {marker}"),
        "builtins.eval": Payload(eval, f"open({str(marker)!r}, 'w').close()"),
        "builtins.exec": Payload(exec, f"open({str(marker)!r}, 'w').close()"),
        "subprocess.Popen": Payload(subprocess.Popen, ["touch", str(marker)]),
        f"{__name__}._touch": Payload(_touch, str(marker)),
    }


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("global_name", ["posix.system", "builtins.eval", "builtins.exec", "subprocess.Popen", "_touch"])
def test_malicious_torch_save_never_runs(tmp_path, fmt, global_name):
    torch = pytest.importorskip("torch")
    marker = tmp_path / "MARKER"
    name, payload = next((k, v) for k, v in payloads(marker).items() if k.endswith(global_name.split(".")[-1]))
    obj = {"state_dict": {"w": torch.ones(2), "evil": payload}, "epoch": 1}
    path = save(torch, obj, tmp_path / "evil.pth", fmt)
    ckpt = read_checkpoint(path)
    assert not marker.exists()
    assert ckpt.placeholders == [name]
    assert find_placeholders(ckpt.content) == [("state_dict.evil", name)]
    assert ckpt.content["state_dict"]["evil"].args == payload.args
    assert ckpt.content["state_dict"]["w"].tolist() == [1.0, 1.0]


@pytest.mark.parametrize("protocol", [4, 5])
@pytest.mark.parametrize("fmt", FORMATS)
def test_other_pickle_protocols_and_builtins(tmp_path, fmt, protocol):
    torch = pytest.importorskip("torch")
    marker = tmp_path / "MARKER"
    obj = {
        "w": torch.arange(6.0).reshape(2, 3).t(), "bytes": b"\x00\xffraw", "set": {1, 2},
        "frozen": frozenset("ab"), "complex": 1 + 2j, "evil": Payload(os.system, f"touch {marker}"),
    }
    torch.save(obj, tmp_path / "p.pth", pickle_protocol=protocol, _use_new_zipfile_serialization=FORMATS[fmt])
    ckpt = read_checkpoint(tmp_path / "p.pth")
    assert not marker.exists() and ckpt.placeholders == [f"{os.system.__module__}.system"]
    del obj["evil"], ckpt.content["evil"]
    assert_matches(ckpt.content, obj)


def test_whole_pickled_module(tmp_path):
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Linear(2, 3))
    for fmt in FORMATS:  # torch.save(model): classes become placeholders, weights stay readable
        ckpt = read_checkpoint(save(torch, model, tmp_path / f"{fmt}.pth", fmt))
        assert ckpt.placeholders == ["torch.nn.modules.container.Sequential", "torch.nn.modules.linear.Linear"]
        linear = ckpt.content.state["_modules"]["0"]
        assert find_placeholders(ckpt.content)[:2] == [
            ("<root>", "torch.nn.modules.container.Sequential"),
            ("<state>._modules.0", "torch.nn.modules.linear.Linear"),
        ]
        assert np.array_equal(linear.state["_parameters"]["weight"], model[0].weight.detach().numpy())


def test_hand_written_exploits_never_run(tmp_path, monkeypatch):
    marker = tmp_path / "MARKER"
    # A module whose import alone would leave the marker.
    (tmp_path / "evil_module_xyz.py").write_text(f"open({str(marker)!r}, 'w').close()\nrun = print\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    def main(legacy):
        return b"\x80\x02" + op_dict(
            chain=op_call_chain(f"touch {marker}"),
            imported=op_global("evil_module_xyz", "run") + op_tuple(op_str("x")) + b"R",
            w=op_tensor("0", 2, 0, (2,), (1,), legacy=legacy) if legacy is not None else b"N",
        ) + b"."

    assert pickle.loads(main(None)) is not None  # the exploit is live
    assert marker.exists() and "evil_module_xyz" in sys.modules
    marker.unlink()
    del sys.modules["evil_module_xyz"]
    data = np.ones(2, "<f4").tobytes()
    files = [
        write_zip(tmp_path / "evil_zip.pth", main(False), {"0": data}),
        write_legacy(tmp_path / "evil_legacy.pth", main(True), ["0"], np.int64(2).tobytes() + data),
    ]
    for path in files:
        ckpt = read_checkpoint(path)
        assert not marker.exists() and "evil_module_xyz" not in sys.modules
        assert ckpt.placeholders == ["builtins.__import__", "builtins.getattr", "evil_module_xyz.run"]
        assert find_placeholders(ckpt.content) == [
            ("chain", "builtins.getattr"), ("chain.<callee>", "builtins.getattr"),
            ("chain.<callee>.<args>.0", "builtins.__import__"),
            ("imported", "evil_module_xyz.run"),
        ]
        assert ckpt.content["w"].tolist() == [1.0, 1.0]


def test_placeholders_record_everything_and_stay_inert(tmp_path):
    cls = op_global("some.module", "Thing")
    main = b"\x80\x02" + op_dict(
        newobj=cls + op_tuple(op_int(1)) + b"\x81" + op_dict(a=op_int(2)) + b"b",  # NEWOBJ + BUILD
        filled=cls + b")R" + b"(" + op_str("k") + op_int(3) + b"u" + b"(" + op_int(4) + op_int(5) + b"e",
        bare_class=cls,
        in_list=b"(" + cls + b")R" + b"l",
    ) + b"."
    ckpt = read_checkpoint(write_zip(tmp_path / "p.pth", main))
    content = ckpt.content
    assert ckpt.placeholders == ["some.module.Thing"]
    assert content["newobj"].args == (1,) and content["newobj"].state == {"a": 2}
    assert content["filled"].items == {"k": 3} and content["filled"].appended == [4, 5]
    assert isinstance(content["bare_class"], type) and issubclass(content["bare_class"], Placeholder)
    assert [loc for loc, _ in find_placeholders(content)] == ["newobj", "filled", "bare_class", "in_list.0"]
    assert repr(content["newobj"]) == "Placeholder('some.module.Thing')"


def test_find_placeholders_paths_and_cycles():
    thing = Placeholder.for_global("m.Thing")
    inner = thing(thing(), key=[thing])
    cyclic = [1]
    cyclic.append(cyclic)
    cyclic.append({"x": inner, thing(): 0})
    assert find_placeholders(inner) == [
        ("<root>", "m.Thing"), ("<args>.0", "m.Thing"), ("<kwargs>.key.0", "m.Thing"),
    ]
    assert find_placeholders({"a": (cyclic,)}) == [
        ("a.0.2.x", "m.Thing"), ("a.0.2.x.<args>.0", "m.Thing"), ("a.0.2.x.<kwargs>.key.0", "m.Thing"),
        ("a.0.2.<key>", "m.Thing"),
    ]
    assert find_placeholders({"w": np.ones(2), "n": [1, "s", None, 2.0]}) == []


# --- Malformed files


def _real_zip(torch, tmp_path):
    return save(torch, {"w": torch.arange(6.0), "v": torch.ones(3)}, tmp_path / "good.pth")


def test_malformed_files(tmp_path):
    cases = {"empty.pth": b"", "random.pth": np.random.default_rng(0).bytes(2000)}
    cases["plain_pickle.pth"] = pickle.dumps({"w": 1}, protocol=2)
    cases["truncated_legacy_header.pth"] = pickle.dumps(LEGACY_MAGIC, protocol=2)[:-3]
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as archive:
        archive.addfile(tarfile.TarInfo("storages"), io.BytesIO(b""))
    cases["old.tar.pth"] = tar.getvalue()
    npz = io.BytesIO()
    np.savez(npz, w=np.ones(2))
    cases["arrays.npz"] = npz.getvalue()
    expected = {
        "empty.pth": "empty file", "random.pth": "unrecognised file format",
        "plain_pickle.pth": "magic number", "truncated_legacy_header.pth": "truncated",
        "old.tar.pth": "torch < 0.4", "arrays.npz": "data.pkl",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=expected[name]) as info:
            read_checkpoint(tmp_path / name)
        assert str(tmp_path / name) in str(info.value), name


def test_truncated_zip_and_missing_storage(tmp_path):
    torch = pytest.importorskip("torch")
    good = _real_zip(torch, tmp_path).read_bytes()
    for cut in (len(good) // 2, len(good) - 10, 30):
        (tmp_path / "cut.pth").write_bytes(good[:cut])
        with pytest.raises(ValueError, match="cut.pth") as info:
            read_checkpoint(tmp_path / "cut.pth")
        assert info.value.__cause__ is not None  # chained, not swallowed
    with zipfile.ZipFile(tmp_path / "good.pth") as src, zipfile.ZipFile(tmp_path / "missing.pth", "w") as dst:
        for item in src.infolist():
            if not item.filename.endswith("/data/0"):
                dst.writestr(item, src.read(item))
    with pytest.raises(ValueError, match=r"missing.pth.*missing storage record 'good/data/0'"):
        read_checkpoint(tmp_path / "missing.pth")


def test_truncated_legacy(tmp_path):
    torch = pytest.importorskip("torch")
    good = save(torch, {"w": torch.arange(64.0)}, tmp_path / "good.pth", "torch-legacy").read_bytes()
    for cut, message in ((len(good) - 8, "file ends inside storage record"), (len(good) // 2, "")):
        (tmp_path / "cut.pth").write_bytes(good[:cut])
        with pytest.raises(ValueError, match=f"cut.pth.*{message}"):
            read_checkpoint(tmp_path / "cut.pth")
    main = b"\x80\x02" + op_dict(w=op_tensor("7", 2, 0, (2,), (1,), legacy=True)) + b"."
    with pytest.raises(ValueError, match=r"unlisted.pth.*missing storage record.*'7'"):
        read_checkpoint(write_legacy(tmp_path / "unlisted.pth", main))
    with pytest.raises(ValueError, match=r"short.pth.*holds 1 elements, expected 2"):
        read_checkpoint(write_legacy(tmp_path / "short.pth", main, ["7"], np.int64(1).tobytes() + bytes(4)))


def test_tensor_outside_its_storage(tmp_path):
    bad = {
        "too_long": op_tensor("0", 4, 0, (10,), (1,)),
        "offset": op_tensor("0", 4, 4, (), ()),
        "stride": op_tensor("0", 4, 0, (2, 2), (3, 1)),
    }
    for name, tensor in bad.items():
        path = write_zip(tmp_path / f"{name}.pth", b"\x80\x02" + op_dict(w=tensor) + b".", {"0": bytes(16)})
        with pytest.raises(ValueError, match=f"{name}.pth.*reaches past the end of storage"):
            read_checkpoint(path)
    path = write_zip(tmp_path / "size.pth", b"\x80\x02" + op_dict(w=op_tensor("0", 5, 0, (5,), (1,))) + b".",
                     {"0": bytes(16)})
    with pytest.raises(ValueError, match="has 16 bytes, expected 5 float32"):
        read_checkpoint(path)


# --- The module itself


def test_reader_never_imports_torch(tmp_path):
    torch = pytest.importorskip("torch")
    zip_path = save(torch, {"w": torch.ones(2)}, tmp_path / "a.pth")
    legacy_path = save(torch, {"w": torch.ones(2)}, tmp_path / "b.pth", "torch-legacy")
    package = Path(checkpoint_reader.__file__).parents[1]
    script = f"""
import sys, types
sys.modules["torch"] = None  # any `import torch` now fails
for name, folder in (("keras_deepvit", {str(package)!r}), ("keras_deepvit.weights", {str(package / "weights")!r})):
    module = types.ModuleType(name)  # skip the package __init__s (they import keras)
    module.__path__ = [folder]
    sys.modules[name] = module
from keras_deepvit.weights.checkpoint_reader import read_checkpoint
for path in ({str(zip_path)!r}, {str(legacy_path)!r}):
    assert read_checkpoint(path).content["w"].tolist() == [1.0, 1.0]
assert not any(m == "keras" or m.startswith(("torch.", "keras.")) for m in sys.modules)
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    for module in (checkpoint_reader, restricted_unpickler):
        assert "import torch" not in Path(module.__file__).read_text()


def test_docstring_examples():
    pytest.importorskip("safetensors")
    for module in (checkpoint_reader, restricted_unpickler):
        result = doctest.testmod(module)
        assert result.failed == 0 and (result.attempted > 0 or module is restricted_unpickler)
