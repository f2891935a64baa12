"""Checkpoint download and cache, against an HTTP server on 127.0.0.1."""

import collections
import doctest
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

import pytest

from helpers import in_one_pass
from keras_deepvit.weights import download
from keras_deepvit.weights.download import (
    CACHE_ENV,
    MIRROR_ENV,
    WeightsDownloadError,
    atomic_output,
    fetch,
)

PAYLOAD = os.urandom(50_000)
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
HINT = "keras-deepvit convert pit_s.pth --model pit_s -o pit_s.weights.h5"
pytestmark = in_one_pass("tensorflow", "the downloader is plain Python")

# A loaded 2-core machine can take seconds to start Python and import keras.
SUBPROCESS_TIMEOUT = 90


class Server:
    """Routes: path -> callable(handler). Counts requests per path."""

    def __init__(self):
        self.routes = {}
        self.counts = collections.Counter()
        self.stop = threading.Event()
        self._lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                path = self.path.split("?")[0]
                with server._lock:
                    server.counts[path] += 1
                route = server.routes.get(path)
                if route is None:
                    self.send_error(404, "Not Found")
                    return
                try:
                    route(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client was killed: expected in the kill tests

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path):
        return self.base + path

    @property
    def total(self):
        return sum(self.counts.values())

    def serve(self, path, data, content_type="application/octet-stream"):
        def route(handler):
            handler.send_response(200)
            handler.send_header("Content-Type", content_type)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)

        self.routes[path] = route

    def truncated(self, path, data, claimed):
        def route(handler):
            handler.send_response(200)
            handler.send_header("Content-Length", str(claimed))
            handler.end_headers()
            handler.wfile.write(data)
            handler.wfile.flush()
            handler.close_connection = True

        self.routes[path] = route

    def slow(self, path, first, claimed):
        """Sends `first`, then stalls until the test ends (the client is killed)."""

        def route(handler):
            handler.send_response(200)
            handler.send_header("Content-Length", str(claimed))
            handler.end_headers()
            handler.wfile.write(first)
            handler.wfile.flush()
            self.stop.wait(120)

        self.routes[path] = route

    def close(self):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
                 MIRROR_ENV, CACHE_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def cache(tmp_path):
    return str(tmp_path / "cache")


def _listing(directory):
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def _wait_for(predicate, what, proc=None, log=None):
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.05)
    output = open(log).read() if log and os.path.exists(log) else ""
    pytest.fail(f"timed out waiting for {what}; subprocess output:\n{output}")



def _kill_inside_atomic_output(target, flag, tmp_path, log_name):
    """Kills a process while it writes half of `target` through `atomic_output`."""
    script = _module_loader() + textwrap.dedent(f"""
        with mod.atomic_output({str(target)!r}) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half of it")
                f.flush()
            open({str(flag)!r}, "w").close()
            time.sleep(300)
    """)
    proc, log = _start(script, tmp_path, log_name)
    try:
        _wait_for(flag.exists, "the ready flag", proc, log)
    finally:
        _kill(proc)

def _module_loader():
    # Load download.py by file path: the package import (models, layers) is
    # slow and not what these subprocesses test.
    return textwrap.dedent(f"""
        import importlib.util, sys, time
        spec = importlib.util.spec_from_file_location("kd_download", {download.__file__!r})
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    """)


def test_url_builders_and_doctests():
    assert download.google_drive_url("XyZ_1-a") == (
        "https://drive.usercontent.google.com/download?id=XyZ_1-a&export=download&confirm=t")
    assert download.huggingface_url("timm/pit_s_224.in1k", "pytorch_model.bin", revision="v1.0") == (
        "https://huggingface.co/timm/pit_s_224.in1k/resolve/v1.0/pytorch_model.bin")
    assert doctest.testmod(download).failed == 0


def test_cache_dir_resolution(tmp_path, monkeypatch):
    default = download.cache_dir()
    assert default == str(tmp_path / "keras_home" / "models" / "keras_deepvit")
    assert os.path.isdir(default)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env_cache"))
    assert download.cache_dir() == str(tmp_path / "env_cache")
    assert download.cache_dir(tmp_path / "arg") == str(tmp_path / "arg")
    assert os.path.isdir(tmp_path / "arg")


def test_download_checksum_cache_and_reuse(server, cache, caplog):
    server.serve("/w.pth", PAYLOAD)
    with caplog.at_level("INFO", logger=download.__name__):
        path = fetch("w.pth", [server.url("/w.pth")], sha256=PAYLOAD_SHA, cache_dir=cache)
    assert path == os.path.join(cache, "w.pth")
    assert open(path, "rb").read() == PAYLOAD
    assert _listing(cache) == ["w.pth"]
    assert f"Downloading w.pth from {server.url('/w.pth')}" in caplog.text
    assert server.counts["/w.pth"] == 1
    # Reused: no request at all, with or without a known checksum.
    assert fetch("w.pth", [server.url("/w.pth")], sha256=PAYLOAD_SHA.upper(), cache_dir=cache) == path
    assert fetch("w.pth", ["http://127.0.0.1:9/unused"], cache_dir=cache) == path
    assert server.total == 1


def test_cached_file_with_wrong_checksum_is_fetched_again(server, cache):
    server.serve("/w.pth", PAYLOAD)
    os.makedirs(cache)
    with open(os.path.join(cache, "w.pth"), "wb") as f:
        f.write(b"stale")
    path = fetch("w.pth", [server.url("/w.pth")], sha256=PAYLOAD_SHA, cache_dir=cache)
    assert open(path, "rb").read() == PAYLOAD
    assert server.counts["/w.pth"] == 1


def test_wrong_checksum(server, cache):
    server.serve("/w.pth", PAYLOAD)
    wrong = "0" * 64
    with pytest.raises(WeightsDownloadError) as info:
        fetch("w.pth", [server.url("/w.pth")], sha256=wrong, cache_dir=cache)
    message = str(info.value)
    assert "checksum mismatch" in message
    assert wrong in message and PAYLOAD_SHA in message
    assert _listing(cache) == []  # neither the final file nor a temporary one


def test_truncated_download_then_good_server(server, cache):
    server.truncated("/w.pth", PAYLOAD[:1000], claimed=len(PAYLOAD))
    with pytest.raises(WeightsDownloadError) as info:
        fetch("w.pth", [server.url("/w.pth")], cache_dir=cache)
    assert "truncated" in str(info.value)
    assert "Traceback" not in str(info.value)
    assert _listing(cache) == []
    server.serve("/w.pth", PAYLOAD)
    path = fetch("w.pth", [server.url("/w.pth")], cache_dir=cache)
    assert open(path, "rb").read() == PAYLOAD


def test_html_page_is_refused(server, cache):
    page = b"<!DOCTYPE html><html><body>Google Drive - Virus scan warning</body></html>"
    server.serve("/drive", page, content_type="text/html")
    with pytest.raises(WeightsDownloadError) as info:
        fetch("w.pth", [server.url("/drive")], cache_dir=cache)
    assert "Google Drive refused the download (quota or confirmation page)" in str(info.value)
    assert _listing(cache) == []


def test_fallback_to_second_url(server, cache):
    server.serve("/good.pth", PAYLOAD)
    path = fetch("w.pth", [server.url("/missing.pth"), server.url("/good.pth")],
                 sha256=PAYLOAD_SHA, cache_dir=cache)
    assert open(path, "rb").read() == PAYLOAD
    assert server.counts == {"/missing.pth": 1, "/good.pth": 1}


def test_validate_callback_rejects_and_next_url_is_tried(server, cache):
    server.serve("/bad.pth", b"not a checkpoint")
    server.serve("/good.pth", PAYLOAD)

    def validate(path):
        if open(path, "rb").read() != PAYLOAD:
            raise ValueError("unreadable checkpoint")

    path = fetch("w.pth", [server.url("/bad.pth"), server.url("/good.pth")],
                 cache_dir=cache, validate=validate)
    assert open(path, "rb").read() == PAYLOAD
    with pytest.raises(WeightsDownloadError, match="unreadable checkpoint"):
        fetch("v.pth", [server.url("/bad.pth")], cache_dir=cache, validate=validate)


def test_every_url_fails_message(server, cache):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/pit_s.pth"
    urls = [dead, server.url("/missing.pth")]
    with pytest.raises(WeightsDownloadError) as info:
        fetch("pit_s.pth", urls, cache_dir=cache, manual_hint=HINT)
    message = str(info.value)
    assert f"{dead}: connection refused" in message
    assert f"{server.url('/missing.pth')}: HTTP 404" in message
    assert f"Download pit_s.pth by hand from\n  {dead}" in message
    assert os.path.join(cache, "pit_s.pth") in message
    assert MIRROR_ENV in message
    assert f"convert it with: {HINT}" in message
    assert "Traceback" not in message and "urllib" not in message
    assert info.value.__cause__ is not None
    assert [url for url, _ in info.value.failures] == urls
    assert _listing(cache) == []


def test_mirror_directory(server, cache, tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "w.pth").write_bytes(PAYLOAD)
    server.serve("/w.pth", PAYLOAD)
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    path = fetch("w.pth", [server.url("/w.pth")], sha256=PAYLOAD_SHA, cache_dir=cache)
    assert path == os.path.join(cache, "w.pth")
    assert open(path, "rb").read() == PAYLOAD
    assert _listing(cache) == ["w.pth"]

    with pytest.raises(WeightsDownloadError) as info:
        fetch("other.pth", [server.url("/w.pth")], cache_dir=cache, manual_hint=HINT)
    assert str(mirror / "other.pth") in str(info.value)
    assert HINT in str(info.value)

    (mirror / "bad.pth").write_bytes(b"corrupt")
    with pytest.raises(WeightsDownloadError, match="checksum mismatch"):
        fetch("bad.pth", [server.url("/w.pth")], sha256=PAYLOAD_SHA, cache_dir=cache)
    assert _listing(cache) == ["w.pth"]
    assert server.total == 0

    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(WeightsDownloadError, match="neither an existing directory nor a URL"):
        fetch("x.pth", [server.url("/w.pth")], cache_dir=cache)


def test_mirror_url(server, cache, tmp_path, monkeypatch):
    server.serve("/mirror/w.pth", PAYLOAD)
    server.serve("/origin/w.pth", b"origin copy")
    monkeypatch.setenv(MIRROR_ENV, server.url("/mirror/"))
    path = fetch("w.pth", [server.url("/origin/w.pth")], sha256=PAYLOAD_SHA, cache_dir=cache)
    assert open(path, "rb").read() == PAYLOAD
    assert server.counts == {"/mirror/w.pth": 1}

    with pytest.raises(WeightsDownloadError) as info:
        fetch("v.pth", [server.url("/origin/w.pth")], cache_dir=cache)
    assert f"{server.url('/mirror/v.pth')}: HTTP 404" in str(info.value)

    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "f.pth").write_bytes(PAYLOAD)
    monkeypatch.setenv(MIRROR_ENV, (tmp_path / "files").as_uri())
    path = fetch("f.pth", [server.url("/origin/w.pth")], cache_dir=cache)
    assert open(path, "rb").read() == PAYLOAD
    assert server.counts["/origin/w.pth"] == 0


def test_bad_arguments(cache):
    with pytest.raises(ValueError, match="plain file name"):
        fetch("sub/w.pth", ["http://127.0.0.1:9/w"], cache_dir=cache)
    with pytest.raises(ValueError, match="64 hex digits"):
        fetch("w.pth", ["http://127.0.0.1:9/w"], sha256="abc", cache_dir=cache)


def test_atomic_output_exception_leaves_nothing(tmp_path):
    target = tmp_path / "out.bin"
    for error in (RuntimeError, KeyboardInterrupt):
        with pytest.raises(error):
            with atomic_output(target) as tmp:
                assert os.path.dirname(tmp) == str(tmp_path)
                assert os.path.basename(tmp).startswith(".out.bin.tmp-")
                with open(tmp, "wb") as f:
                    f.write(b"partial")
                raise error()
        assert _listing(tmp_path) == []
    with atomic_output(target) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"done")
    assert target.read_bytes() == b"done"
    assert _listing(tmp_path) == ["out.bin"]


def _start(script, tmp_path, log_name):
    log = tmp_path / log_name
    env = dict(os.environ)
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=out, stderr=subprocess.STDOUT,
                                env=env)
    return proc, str(log)


def _kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait(SUBPROCESS_TIMEOUT)


def test_atomic_output_survives_sigkill(tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target, flag = out_dir / "model.h5", tmp_path / "ready"
    _kill_inside_atomic_output(target, flag, tmp_path, "atomic.log")
    assert not target.exists()
    leftovers = _listing(out_dir)
    assert len(leftovers) == 1 and leftovers[0].startswith(".model.h5.tmp-")
    with atomic_output(target) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"whole")
    assert target.read_bytes() == b"whole"


def test_killed_download_is_not_trusted(server, cache, tmp_path):
    server.slow("/slow.pth", PAYLOAD[:20_000], claimed=len(PAYLOAD) * 100)
    server.serve("/good.pth", PAYLOAD)
    script = _module_loader() + textwrap.dedent(f"""
        mod.fetch("model.pth", [{server.url('/slow.pth')!r}], cache_dir={cache!r})
    """)
    proc, log = _start(script, tmp_path, "fetch.log")

    def partial_written():
        return any(name.startswith(".model.pth.tmp-") and os.path.getsize(os.path.join(cache, name)) > 0
                   for name in _listing(cache))

    try:
        _wait_for(partial_written, "a partial download", proc, log)
    finally:
        _kill(proc)
    assert "model.pth" not in _listing(cache)
    path = fetch("model.pth", [server.url("/good.pth")], sha256=PAYLOAD_SHA, cache_dir=cache)
    assert open(path, "rb").read() == PAYLOAD
    assert server.counts["/good.pth"] == 1


def test_stale_temporary_files_are_removed(server, cache):
    server.serve("/w.pth", PAYLOAD)
    os.makedirs(cache)
    old, fresh = (os.path.join(cache, f".w.pth.tmp-{pid}-abcd") for pid in (11, 12))
    for name in (old, fresh):
        open(name, "wb").close()
    age = download.STALE_TEMP_SECONDS + 60
    os.utime(old, (time.time() - age, time.time() - age))
    fetch("w.pth", [server.url("/w.pth")], cache_dir=cache)
    assert _listing(cache) == [os.path.basename(fresh), "w.pth"]


# --- hardening: timeouts, lengths, verification before the final name, stale temporaries ----


def _no_length(server, path, data):
    """Serves `data` without Content-Length, then closes: the client cannot tell it is short."""

    def route(handler):
        handler.send_response(200)
        handler.end_headers()
        handler.wfile.write(data)
        handler.wfile.flush()
        handler.close_connection = True

    server.routes[path] = route


def _stall(server, path, first=None):
    """Accepts, then sends nothing (or the headers and `first` bytes) until the test ends."""

    def route(handler):
        if first is not None:
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(PAYLOAD)))
            handler.end_headers()
            handler.wfile.write(first)
            handler.wfile.flush()
        server.stop.wait(60)

    server.routes[path] = route


def _bounded(call, seconds):
    """Runs `call` in a thread; fails the test (instead of hanging it) if it takes longer."""
    outcome = {}

    def target():
        try:
            outcome["value"] = call()
        except BaseException as error:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    start = time.monotonic()
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"still running after {seconds} s: no timeout on the download")
    return outcome, time.monotonic() - start


def _whole_payload(path):
    if open(path, "rb").read() != PAYLOAD:
        raise ValueError("incomplete checkpoint")


def test_short_body_against_content_length_names_the_byte_counts(server, cache):
    server.truncated("/w.pth", PAYLOAD[:1000], claimed=len(PAYLOAD))
    with pytest.raises(WeightsDownloadError) as info:
        fetch("w.pth", [server.url("/w.pth")], cache_dir=cache)
    assert f"truncated download: got 1,000 of {len(PAYLOAD):,} bytes" in str(info.value)
    assert _listing(cache) == []


def test_truncated_body_without_length_is_refused_by_the_check(server, cache):
    _no_length(server, "/w.pth", PAYLOAD[:20_000])
    with pytest.raises(WeightsDownloadError, match="checksum mismatch"):
        fetch("w.pth", [server.url("/w.pth")], sha256=PAYLOAD_SHA, cache_dir=cache)
    with pytest.raises(WeightsDownloadError, match="incomplete checkpoint"):
        fetch("w.pth", [server.url("/w.pth")], cache_dir=cache, validate=_whole_payload)
    assert _listing(cache) == []
    _no_length(server, "/w.pth", PAYLOAD)  # a whole body without a length is fine
    assert open(fetch("w.pth", [server.url("/w.pth")], cache_dir=cache, validate=_whole_payload),
                "rb").read() == PAYLOAD


@pytest.mark.parametrize("first", [None, PAYLOAD[:1000]], ids=["before_headers", "mid_body"])
def test_stalled_server_times_out(server, cache, monkeypatch, first):
    _stall(server, "/w.pth", first)
    server.serve("/good.pth", PAYLOAD)
    monkeypatch.setenv(download.TIMEOUT_ENV, "0.5")
    outcome, seconds = _bounded(
        lambda: fetch("w.pth", [server.url("/w.pth"), server.url("/good.pth")], cache_dir=cache), 15)
    assert "error" not in outcome, outcome.get("error")
    assert open(outcome["value"], "rb").read() == PAYLOAD  # the next URL was tried
    assert seconds < 10
    outcome, _ = _bounded(lambda: fetch("v.pth", [server.url("/w.pth")], cache_dir=cache, timeout=0.5), 15)
    message = str(outcome["error"])
    assert "no data for 0.5 s" in message and download.TIMEOUT_ENV in message
    assert not any(name.startswith(".v.pth") for name in _listing(cache))


def test_timeout_setting_is_validated(monkeypatch, cache):
    monkeypatch.setenv(download.TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match=f"{download.TIMEOUT_ENV}=soon"):
        fetch("w.pth", ["http://127.0.0.1:9/w"], cache_dir=cache)
    with pytest.raises(ValueError, match="positive number of seconds"):
        fetch("w.pth", ["http://127.0.0.1:9/w"], cache_dir=cache, timeout=0)


def test_corrupt_cached_file_is_removed_and_fetched_again(server, cache, caplog):
    server.serve("/w.pth", PAYLOAD)
    os.makedirs(cache)
    cached = os.path.join(cache, "w.pth")
    with open(cached, "wb") as f:
        f.write(PAYLOAD[:100])
    with caplog.at_level("WARNING", logger=download.__name__):
        path = fetch("w.pth", [server.url("/w.pth")], cache_dir=cache, validate=_whole_payload)
    assert open(path, "rb").read() == PAYLOAD
    assert server.counts["/w.pth"] == 1
    assert f"Removed the cached {cached} (not a valid checkpoint: incomplete checkpoint)" in caplog.text
    # When nothing better can be fetched, the error says what was removed and what was tried.
    with open(cached, "wb") as f:
        f.write(PAYLOAD[:100])
    with pytest.raises(WeightsDownloadError) as info:
        fetch("w.pth", [server.url("/missing.pth")], cache_dir=cache, validate=_whole_payload)
    message = str(info.value)
    assert f"Removed the cached {cached}: not a valid checkpoint: incomplete checkpoint" in message
    assert f"{server.url('/missing.pth')}: HTTP 404" in message
    assert _listing(cache) == []


def test_bad_mirror_file_is_not_cached(server, cache, tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "w.pth").write_bytes(PAYLOAD[:3000])
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    with pytest.raises(WeightsDownloadError) as info:
        fetch("w.pth", [], cache_dir=cache, validate=_whole_payload)
    assert f"The mirror file {mirror / 'w.pth'} is not the expected w.pth" in str(info.value)
    assert _listing(cache) == []
    (mirror / "w.pth").write_bytes(PAYLOAD)
    assert open(fetch("w.pth", [], cache_dir=cache, validate=_whole_payload), "rb").read() == PAYLOAD


def test_pinned_sha256_file(server, cache, tmp_path, monkeypatch):
    server.serve("/w.pth", PAYLOAD)
    pins = tmp_path / "SHA256SUMS"
    pins.write_text(f"{'0' * 64}  w.pth\n{PAYLOAD_SHA} *v.pth\n")  # the format `sha256sum` prints
    monkeypatch.setenv(download.SHA256_ENV, str(pins))
    assert download.pinned_sha256("v.pth") == PAYLOAD_SHA and download.pinned_sha256("x.pth") is None
    with pytest.raises(WeightsDownloadError) as info:
        fetch("w.pth", [server.url("/w.pth")], cache_dir=cache)
    assert f"checksum mismatch: expected sha256 {'0' * 64}, got {PAYLOAD_SHA}" in str(info.value)
    assert str(pins) in str(info.value)
    assert _listing(cache) == []
    path = fetch("v.pth", [server.url("/w.pth")], cache_dir=cache)
    assert open(path, "rb").read() == PAYLOAD
    pins.write_text("not a checksum line\n")
    with pytest.raises(ValueError, match="line 1"):
        fetch("v.pth", [server.url("/w.pth")], cache_dir=cache)


def test_temporaries_of_dead_processes_are_removed(server, cache, tmp_path):
    """A killed process's temporary file goes on the next call, whatever file it was for."""
    os.makedirs(cache)
    target, flag = os.path.join(cache, "pit_ti.imagenet.safetensors"), tmp_path / "ready"
    _kill_inside_atomic_output(target, flag, tmp_path, "killed.log")
    (leftover,) = _listing(cache)
    server.serve("/w.pth", PAYLOAD)
    with atomic_output(os.path.join(cache, "busy.bin")) as mine:  # a live process's: kept
        open(mine, "wb").close()
        fetch("w.pth", [server.url("/w.pth")], cache_dir=cache)
        assert _listing(cache) == sorted([os.path.basename(mine), "w.pth"]), leftover
    assert _listing(cache) == ["busy.bin", "w.pth"]
