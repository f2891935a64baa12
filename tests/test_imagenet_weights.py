"""weights="imagenet" end to end against a loopback server: download, convert, cache, reuse,
other input sizes and heads from the cache, server down, a killed conversion; the
`convert` command; `preprocess_input`."""

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
from helpers import infer, to_numpy
from keras_deepvit.weights import keras_to_torch_state_dict
from keras_deepvit.weights.download import WeightsDownloadError
from keras_deepvit.weights.imagenet_weights import fits_default_config
from keras_deepvit.weights.pretrained import PRETRAINED

safetensors_numpy = pytest.importorskip("safetensors.numpy")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Files(http.server.BaseHTTPRequestHandler):
    files = {}
    requests = []

    def do_GET(self):  # noqa: N802 - http.server's naming
        type(self).requests.append(self.path)
        body = type(self).files.get(self.path.lstrip("/"))
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    _Files.files, _Files.requests = {}, []
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
    assert (tmp_path / PRETRAINED["pit_ti"].converted_filename).is_file()
    np.testing.assert_allclose(infer(model, images), expected, rtol=1e-5, atol=1e-5)

    again = keras_deepvit.PiTTi(weights="imagenet", include_preprocessing=False, classifier_activation=None)
    assert len(handler.requests) == 1  # served from the cache, no request
    np.testing.assert_allclose(to_numpy(again(images)), expected, rtol=1e-5, atol=1e-5)

    # Other size and classes come from the cached file through a default twin.
    small = keras_deepvit.create_model("pit_ti", weights="imagenet", input_shape=(64, 48, 3), classes=10)
    assert not fits_default_config(small, "pit_ti")
    loaded = keras_to_torch_state_dict(small)
    np.testing.assert_array_equal(loaded["norm.weight"], state["norm.weight"])
    assert small(np.zeros((1, 64, 48, 3), "float32")).shape == (1, 10)
    assert len(handler.requests) == 1


def test_imagenet_for_a_model_without_published_weights():
    with pytest.raises(ValueError, match="coming soon"):
        keras_deepvit.create_model("deepvit_16", weights="imagenet", input_shape=(32, 32, 3))


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
    assert not any(name.endswith(".weights.h5") for name in os.listdir(tmp_path))


_KILLED_CONVERSION = textwrap.dedent(
    """
    import os, sys, time
    import keras
    import keras_deepvit

    flag = sys.argv[1]
    original = keras.Model.save_weights

    def save_then_hang(self, path, *args, **kwargs):
        original(self, path, *args, **kwargs)  # a complete file under the temporary name
        open(flag, "w").close()
        time.sleep(600)  # killed here, before the file is moved into place

    keras.Model.save_weights = save_then_hang
    keras_deepvit.create_model("pit_ti", weights="imagenet")
    """
)


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
    converted = tmp_path / PRETRAINED["pit_ti"].converted_filename
    assert not converted.exists()

    monkeypatch.setenv("KERAS_DEEPVIT_WEIGHTS_MIRROR", base)
    monkeypatch.setenv("KERAS_DEEPVIT_CACHE_DIR", str(tmp_path))
    model = keras_deepvit.create_model(
        "pit_ti", weights="imagenet", include_preprocessing=False, classifier_activation=None
    )
    assert converted.is_file()
    np.testing.assert_allclose(infer(model, images), expected, rtol=1e-5, atol=1e-5)


def test_convert_command(pit_ti_checkpoint, tmp_path, capsys):
    from keras_deepvit.cli import main

    body = pit_ti_checkpoint[0]
    source = tmp_path / "pit_ti.safetensors"
    source.write_bytes(body)
    out = tmp_path / "pit_ti.weights.h5"
    assert main(["convert", str(source), "--model", "pit_ti", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "4,847,272 parameters" in printed and "safetensors" in printed and "0.485" in printed
    model = keras_deepvit.create_model("pit_ti", weights=str(out), classifier_activation=None,
                                       include_preprocessing=False)
    images, expected = pit_ti_checkpoint[2], pit_ti_checkpoint[3]
    np.testing.assert_allclose(infer(model, images), expected, rtol=1e-5, atol=1e-5)


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
