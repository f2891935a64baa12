"""weights="imagenet" end to end against a loopback server: download, convert, cache, reuse,
other input sizes and heads from the cache, server down, a killed conversion; the
`convert` command; `preprocess_input`."""

import dataclasses
import hashlib
import http.server
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import keras_deepvit
from helpers import in_one_pass, infer, to_numpy
from keras_deepvit.weights import keras_to_torch_state_dict
from keras_deepvit.weights.download import WeightsDownloadError
from keras_deepvit.models import PiT
from keras_deepvit.zoo.imagenet import converted_filename, official_state_dict
from keras_deepvit.zoo.records import RECORDS, Checkpoint

safetensors_numpy = pytest.importorskip("safetensors.numpy")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The cache's and the converter's own logic (what is fetched, kept, refused); the
#: end-to-end `weights="imagenet"` test above them runs on every backend.
CACHE_MECHANICS = in_one_pass("tensorflow", "cache and conversion logic, backend-independent")


class _Files(http.server.BaseHTTPRequestHandler):
    files = {}
    requests = []
    without_length = set()  # served with no Content-Length: a short body looks complete

    def do_GET(self):  # noqa: N802 - http.server's naming
        type(self).requests.append(self.path)
        body = type(self).files.get(self.path.lstrip("/"))
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        if self.path.lstrip("/") not in type(self).without_length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    _Files.files, _Files.requests, _Files.without_length = {}, [], set()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", _Files
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def pit_ti_checkpoint(tmp_path_factory):
    """A pit_ti state dict in timm naming, as the Hugging Face copy stores it."""
    donor = keras_deepvit.create_model("pit_ti", include_preprocessing=False, classifier_activation=None)
    state = keras_to_torch_state_dict(donor)
    timm = {}
    for key, value in state.items():
        if key.startswith("pools."):
            index, rest = key[len("pools."):].split(".", 1)
            key = f"transformers.{int(index) + 1}.pool.{rest}"
        timm[key] = np.ascontiguousarray(value)
    path = tmp_path_factory.mktemp("ckpt") / "pit_ti.safetensors"
    safetensors_numpy.save_file(timm, str(path))
    images = np.random.default_rng(0).normal(size=(2, 224, 224, 3)).astype("float32")
    return path.read_bytes(), state, images, to_numpy(donor(images))


@pytest.mark.long_running
def test_imagenet_downloads_converts_caches_and_reuses(server, pit_ti_checkpoint, tmp_path, monkeypatch):
    base, handler = server
    body, state, images, expected = pit_ti_checkpoint
    handler.files["pit_ti.timm.safetensors"] = body
    monkeypatch.setenv("KERAS_DEEPVIT_WEIGHTS_MIRROR", base)
    monkeypatch.setenv("KERAS_DEEPVIT_CACHE_DIR", str(tmp_path))

    model = keras_deepvit.create_model(
        "pit_ti", weights="imagenet", include_preprocessing=False, classifier_activation=None
    )
    assert handler.requests == ["/pit_ti.timm.safetensors"]
    assert (tmp_path / converted_filename(RECORDS["pit_ti"])).is_file()
    assert not (tmp_path / "pit_ti.timm.safetensors").exists()  # the raw download is not kept
    np.testing.assert_allclose(infer(model, images), expected, rtol=1e-5, atol=1e-5)

    again = keras_deepvit.PiTTi(weights="imagenet", include_preprocessing=False, classifier_activation=None)
    assert len(handler.requests) == 1  # served from the cache, no request
    np.testing.assert_allclose(to_numpy(again(images)), expected, rtol=1e-5, atol=1e-5)

    # Other size and classes come from the same cached state dict.
    small = keras_deepvit.create_model("pit_ti", weights="imagenet", input_shape=(64, 48, 3), classes=10)
    loaded = keras_to_torch_state_dict(small)
    np.testing.assert_array_equal(loaded["norm.weight"], state["norm.weight"])
    assert small(np.zeros((1, 64, 48, 3), "float32")).shape == (1, 10)
    assert len(handler.requests) == 1


@pytest.mark.parametrize(
    "options",
    [dict(rematerialize_blocks=True), dict(input_shape=(384, 384, 3)), dict(classes=10),
     dict(include_top=False, pooling="avg")],
    ids=["remat", "384", "classes10", "no_top"],
)
def test_every_configuration_builds_one_model_with_the_default_values(
    options, server, pit_ti_checkpoint, tmp_path, monkeypatch
):
    base, handler = server
    handler.files["pit_ti.timm.safetensors"] = pit_ti_checkpoint[0]
    state = pit_ti_checkpoint[1]
    monkeypatch.setenv("KERAS_DEEPVIT_WEIGHTS_MIRROR", base)
    monkeypatch.setenv("KERAS_DEEPVIT_CACHE_DIR", str(tmp_path))
    builds = []
    original = PiT.__init__

    def counted(self, *args, **kwargs):
        builds.append(kwargs)
        original(self, *args, **kwargs)

    monkeypatch.setattr(PiT, "__init__", counted)
    for attempt in ("download", "cache"):
        model = keras_deepvit.create_model("pit_ti", weights="imagenet", **options)
        assert len(builds) == 1, attempt  # no donor or twin model
        builds.clear()
        loaded = keras_to_torch_state_dict(model)
        fresh_head = "classes" in options or "include_top" in options
        assert ("head.weight" in loaded) == ("include_top" not in options)
        for key, value in loaded.items():
            if key == "pos_embed" and "input_shape" in options:
                assert value.shape == (1, 64, 47, 47)  # resampled from the 27x27 grid
            elif key.startswith("head") and fresh_head:
                assert value.shape[0] == 10 and state[key].shape[0] == 1000
            else:
                np.testing.assert_array_equal(value, state[key], err_msg=f"{attempt}: {key}")
    assert handler.requests == ["/pit_ti.timm.safetensors"]


@CACHE_MECHANICS
def test_old_cache_layout_is_ignored_and_a_bad_cached_file_is_fetched_again(
    server, pit_ti_checkpoint, tmp_path, monkeypatch, caplog
):
    base, handler = server
    body, state, _, _ = pit_ti_checkpoint
    handler.files["pit_ti.timm.safetensors"] = body
    monkeypatch.setenv("KERAS_DEEPVIT_WEIGHTS_MIRROR", base)
    monkeypatch.setenv("KERAS_DEEPVIT_CACHE_DIR", str(tmp_path))
    (tmp_path / "pit_ti.imagenet.weights.h5").write_bytes(b"an old-layout file, never read")
    with caplog.at_level("INFO", logger="keras_deepvit.zoo.imagenet"):
        model = keras_deepvit.create_model("pit_ti", weights="imagenet", input_shape=(64, 64, 3))
    assert "Ignoring" in caplog.text and "pit_ti.imagenet.weights.h5" in caplog.text
    converted = tmp_path / converted_filename(RECORDS["pit_ti"])
    converted.write_bytes(converted.read_bytes()[:100])  # truncated
    caplog.clear()
    with caplog.at_level("WARNING", logger="keras_deepvit.zoo.imagenet"):
        model = keras_deepvit.create_model("pit_ti", weights="imagenet", input_shape=(64, 64, 3))
    assert "Removed the unreadable cached weights" in caplog.text
    assert len(handler.requests) == 2
    np.testing.assert_array_equal(keras_to_torch_state_dict(model)["norm.weight"], state["norm.weight"])


@CACHE_MECHANICS
def test_a_wrong_checkpoint_is_refused_before_caching(server, tmp_path, monkeypatch):
    base, handler = server
    donor = keras_deepvit.create_model("pit_xs", input_shape=(64, 64, 3))
    path = tmp_path / "xs.safetensors"
    safetensors_numpy.save_file(keras_to_torch_state_dict(donor), str(path))
    handler.files["pit_ti.timm.safetensors"] = path.read_bytes()
    monkeypatch.setenv("KERAS_DEEPVIT_WEIGHTS_MIRROR", base)
    cache = tmp_path / "cache"
    monkeypatch.setenv("KERAS_DEEPVIT_CACHE_DIR", str(cache))
    with pytest.raises(WeightsDownloadError, match="not the pit_ti checkpoint.*looks like 'pit_xs'"):
        keras_deepvit.create_model("pit_ti", weights="imagenet", input_shape=(64, 64, 3))
    assert os.listdir(cache) == []  # neither converted nor raw: the next run downloads again


def _use(monkeypatch, cache, mirror=None):
    monkeypatch.setenv("KERAS_DEEPVIT_CACHE_DIR", str(cache))
    if mirror is None:
        monkeypatch.delenv("KERAS_DEEPVIT_WEIGHTS_MIRROR")
    else:
        monkeypatch.setenv("KERAS_DEEPVIT_WEIGHTS_MIRROR", str(mirror))


@CACHE_MECHANICS
def test_a_truncated_download_without_length_is_refused_then_fetched_again(
    server, pit_ti_checkpoint, tmp_path, monkeypatch
):
    base, handler = server
    body, state = pit_ti_checkpoint[:2]
    name = "pit_ti.timm.safetensors"
    handler.files[name] = body[: len(body) // 2]
    handler.without_length.add(name)
    _use(monkeypatch, tmp_path, base)
    with pytest.raises(WeightsDownloadError) as info:
        official_state_dict(RECORDS["pit_ti"])
    assert f"{base}/{name}: not a valid checkpoint: the download: " in str(info.value)
    assert "truncated" in str(info.value)
    assert os.listdir(tmp_path) == []  # not cached under its name, no temporary file either
    handler.files[name] = body
    state_dict, source = official_state_dict(RECORDS["pit_ti"])
    assert source == str(tmp_path / name) and handler.requests.count(f"/{name}") == 2
    np.testing.assert_array_equal(state_dict["norm.weight"], state["norm.weight"])


@CACHE_MECHANICS
def test_a_bad_mirror_file_is_never_cached(pit_ti_checkpoint, tmp_path, monkeypatch):
    body = pit_ti_checkpoint[0]
    mirror, cache = tmp_path / "mirror", tmp_path / "cache"
    mirror.mkdir()
    _use(monkeypatch, cache, mirror)
    source = mirror / "pit_ti.timm.safetensors"
    source.write_bytes(body[:-1000])
    with pytest.raises(WeightsDownloadError, match=f"The mirror file {source} is not the expected.*truncated"):
        official_state_dict(RECORDS["pit_ti"])
    safetensors_numpy.save_file({"w": np.eye(2, dtype="float32")}, str(source))  # a wrong file
    with pytest.raises(WeightsDownloadError, match="this is not the pit_ti checkpoint"):
        official_state_dict(RECORDS["pit_ti"])
    assert os.listdir(cache) == []
    source.write_bytes(body)
    assert official_state_dict(RECORDS["pit_ti"])[1] == str(cache / "pit_ti.timm.safetensors")


@CACHE_MECHANICS
def test_a_corrupt_cached_checkpoint_is_removed_and_fetched_again(
    server, pit_ti_checkpoint, tmp_path, monkeypatch, caplog
):
    base, handler = server
    body = pit_ti_checkpoint[0]
    handler.files["pit_ti.timm.safetensors"] = body
    _use(monkeypatch, tmp_path, base)
    cached = tmp_path / "pit_ti.timm.safetensors"
    cached.write_bytes(body[: len(body) // 3])  # e.g. a hand download that stopped half way
    with caplog.at_level("WARNING", logger="keras_deepvit.weights.download"):
        state_dict, source = official_state_dict(RECORDS["pit_ti"])
    assert source == str(cached) and cached.read_bytes() == body
    assert f"Removed the cached {cached} (not a valid checkpoint" in caplog.text
    assert len(handler.requests) == 1


@CACHE_MECHANICS
def test_the_next_origin_is_tried_after_a_bad_one(server, pit_ti_checkpoint, tmp_path, monkeypatch):
    base, handler = server
    body, state = pit_ti_checkpoint[:2]
    record = dataclasses.replace(RECORDS["pit_ti"], checkpoints=(
        Checkpoint("a.safetensors", f"{base}/a"), Checkpoint("b.safetensors", f"{base}/b")))
    handler.files.update(a=body[:5000], b=body)
    handler.without_length.add("a")
    _use(monkeypatch, tmp_path)
    state_dict, source = official_state_dict(record)
    assert source == str(tmp_path / "b.safetensors") and handler.requests == ["/a", "/b"]
    assert os.listdir(tmp_path) == ["b.safetensors"]
    np.testing.assert_array_equal(state_dict["norm.weight"], state["norm.weight"])
    os.remove(tmp_path / "b.safetensors")
    del handler.files["b"]
    with pytest.raises(WeightsDownloadError) as info:
        official_state_dict(record)
    message = str(info.value)
    assert "No source of the pit_ti checkpoint could be used" in message
    assert f"{base}/a: not a valid checkpoint" in message and f"{base}/b: HTTP 404" in message


def test_imagenet_for_a_model_without_published_weights():
    with pytest.raises(ValueError, match="coming soon"):
        keras_deepvit.create_model("deepvit_16", weights="imagenet", input_shape=(32, 32, 3))


@CACHE_MECHANICS
def test_server_down_gives_the_manual_download_steps(tmp_path, monkeypatch):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("KERAS_DEEPVIT_WEIGHTS_MIRROR", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("KERAS_DEEPVIT_CACHE_DIR", str(tmp_path))
    with pytest.raises(WeightsDownloadError) as error:
        keras_deepvit.create_model("pit_ti", weights="imagenet")
    message = str(error.value)
    assert "pit_ti.timm.safetensors" in message
    assert "keras-deepvit convert" in message and "--model pit_ti" in message
    assert os.listdir(tmp_path) == []


_KILLED_CONVERSION = textwrap.dedent(
    """
    import os, sys, time
    import keras
    import keras_deepvit

    flag = sys.argv[1]
    import safetensors.numpy
    original = safetensors.numpy.save_file

    def save_then_hang(arrays, path, *args, **kwargs):
        original(arrays, path, *args, **kwargs)  # a complete file under the temporary name
        open(flag, "w").close()
        time.sleep(600)  # killed here, before the file is moved into place

    safetensors.numpy.save_file = save_then_hang
    keras_deepvit.create_model("pit_ti", weights="imagenet")
    """
)


@CACHE_MECHANICS
def test_cache_survives_a_killed_conversion(server, pit_ti_checkpoint, tmp_path, monkeypatch):
    base, handler = server
    body, _, images, expected = pit_ti_checkpoint
    handler.files["pit_ti.timm.safetensors"] = body
    env = dict(os.environ, KERAS_DEEPVIT_WEIGHTS_MIRROR=base, KERAS_DEEPVIT_CACHE_DIR=str(tmp_path),
               PYTHONPATH=ROOT)
    flag = tmp_path / "saving"
    process = subprocess.Popen([sys.executable, "-c", _KILLED_CONVERSION, str(flag)], env=env)
    try:
        deadline = time.time() + 300
        while not flag.exists():
            assert process.poll() is None, "the conversion subprocess ended early"
            assert time.time() < deadline, "the conversion subprocess never reached saving"
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    converted = tmp_path / converted_filename(RECORDS["pit_ti"])
    assert not converted.exists()

    monkeypatch.setenv("KERAS_DEEPVIT_WEIGHTS_MIRROR", base)
    monkeypatch.setenv("KERAS_DEEPVIT_CACHE_DIR", str(tmp_path))
    model = keras_deepvit.create_model(
        "pit_ti", weights="imagenet", include_preprocessing=False, classifier_activation=None
    )
    assert converted.is_file()
    np.testing.assert_allclose(infer(model, images), expected, rtol=1e-5, atol=1e-5)
    assert os.listdir(tmp_path) == ["saving", converted.name]  # the killed run's temporary file is gone


@CACHE_MECHANICS
def test_convert_command(pit_ti_checkpoint, tmp_path, capsys):
    from keras_deepvit.cli import main

    body = pit_ti_checkpoint[0]
    source = tmp_path / "pit_ti.safetensors"
    source.write_bytes(body)
    out = tmp_path / "pit_ti.weights.h5"
    assert main(["convert", str(source), "--model", "pit_ti", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "4,847,272 parameters" in printed and "safetensors" in printed and "0.485" in printed
    assert f"sha256:         {hashlib.sha256(body).hexdigest()}" in printed  # to pin the origin
    model = keras_deepvit.create_model("pit_ti", weights=str(out), classifier_activation=None,
                                       include_preprocessing=False)
    images, expected = pit_ti_checkpoint[2], pit_ti_checkpoint[3]
    np.testing.assert_allclose(infer(model, images), expected, rtol=1e-5, atol=1e-5)


@CACHE_MECHANICS
def test_convert_command_fills_the_imagenet_cache(pit_ti_checkpoint, tmp_path, monkeypatch, capsys):
    from keras_deepvit.cli import main

    source = tmp_path / "pit_ti.safetensors"
    source.write_bytes(pit_ti_checkpoint[0])
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("KERAS_DEEPVIT_CACHE_DIR", str(cache))
    out = cache / converted_filename(RECORDS["pit_ti"])  # the path a failed download names
    assert main(["convert", str(source), "--model", "pit_ti", "-o", str(out)]) == 0
    model = keras_deepvit.create_model(  # the mirror is empty: served from the cache only
        "pit_ti", weights="imagenet", classifier_activation=None, include_preprocessing=False
    )
    images, expected = pit_ti_checkpoint[2], pit_ti_checkpoint[3]
    np.testing.assert_allclose(infer(model, images), expected, rtol=1e-5, atol=1e-5)


@CACHE_MECHANICS
def test_convert_command_refuses_a_wrong_model(pit_ti_checkpoint, tmp_path, capsys):
    from keras_deepvit.cli import main

    source = tmp_path / "pit_ti.safetensors"
    source.write_bytes(pit_ti_checkpoint[0])
    out = tmp_path / "x.weights.h5"
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", str(source), "--model", "pit_xs", "-o", str(out)])
    assert exit_info.value.code == 2
    assert "looks like 'pit_ti'" in capsys.readouterr().err
    assert not out.exists()


def test_preprocess_input_matches_the_builtin_layer():
    images = np.random.default_rng(0).uniform(0, 255, size=(2, 64, 64, 3)).astype("float32")
    inside = keras_deepvit.create_model("pit_ti", input_shape=(64, 64, 3))
    outside = keras_deepvit.create_model("pit_ti", input_shape=(64, 64, 3), include_preprocessing=False)
    outside.set_weights(inside.get_weights())
    np.testing.assert_allclose(
        to_numpy(outside(keras_deepvit.preprocess_input(images, "pit_ti"))), to_numpy(inside(images)),
        rtol=1e-5, atol=1e-6,
    )
    np.testing.assert_allclose(
        to_numpy(keras_deepvit.preprocess_input(images, "deepvit_s")), images / 127.5 - 1, atol=1e-5
    )
    with pytest.raises(ValueError, match="channels-last"):
        keras_deepvit.preprocess_input(np.zeros((1, 3, 8, 8)), "pit_ti")
