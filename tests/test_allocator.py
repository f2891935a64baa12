"""`keras_deepvit.allocator`: freed memory is reused instead of faulted in again."""

import ctypes
import json
import os
import subprocess
import sys
import textwrap

import pytest

from keras_deepvit import allocator

GLIBC = allocator._glibc_mallopt() is not None

# A child process, so that glibc's settings of the test process stay untouched. It
# loads the module from its file (not the package: no Keras), optionally keeps
# freed memory, then grows and frees 48 MiB of 8 MiB blocks six times (as a step's
# tensors do) and reports the page faults of the rounds after the first.
_CHILD = textwrap.dedent(
    """
    import ctypes, importlib.util, json, resource, sys
    spec = importlib.util.spec_from_file_location("allocator", sys.argv[1])
    allocator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(allocator)
    env = json.loads(sys.argv[2])
    result = allocator.retain_freed_memory(env) if env is not None else None
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    libc.memset.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t)
    size = 8 << 20
    faults = []
    for _ in range(6):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        blocks = [libc.malloc(size) for _ in range(6)]
        for block in blocks:
            libc.memset(block, 1, size)
        for block in blocks:
            libc.free(block)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps({"result": result, "faults_after_first_round": sum(faults[1:])}))
    """
)


def _run_child(environ):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LD_PRELOAD"}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, allocator.__file__, json.dumps(environ)],
        capture_output=True, text=True, check=True, env=env, timeout=60,
    )
    return json.loads(out.stdout)


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only (Linux)")
def test_freed_blocks_are_reused_without_new_page_faults():
    untouched = _run_child(None)
    retained = _run_child({})
    assert untouched["result"] is None
    assert retained["result"] == {
        "allocator": "glibc", "mmap_threshold": 32 << 20, "trim_threshold": "never",
    }
    # 5 rounds x 48 MiB of 4 KiB pages is about 61,000 faults when every round's
    # memory is new; kept memory is faulted in once, in the first round.
    assert untouched["faults_after_first_round"] > 20_000, untouched
    assert retained["faults_after_first_round"] < 1_000, retained


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only (Linux)")
def test_system_choice_and_own_settings_leave_the_allocator_alone():
    system = _run_child({"KERAS_DEEPVIT_ALLOCATOR": "system"})
    preloaded = _run_child({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"})
    glibc_variable = _run_child({"MALLOC_ARENA_MAX": "2", "MALLOC_TRIM_THRESHOLD_": "0"})
    assert system["result"] == {"allocator": "unchanged", "reason": "KERAS_DEEPVIT_ALLOCATOR=system"}
    assert preloaded["result"]["reason"] == "LD_PRELOAD names jemalloc"
    assert glibc_variable["result"]["reason"] == "MALLOC_TRIM_THRESHOLD_ is set"
    for child in (system, preloaded, glibc_variable):
        assert child["faults_after_first_round"] > 20_000, child


def test_an_unknown_choice_is_refused_with_the_values_allowed():
    with pytest.raises(ValueError, match=r"KERAS_DEEPVIT_ALLOCATOR='jemalloc' is not one of retain, system"):
        allocator.allocator_choice({"KERAS_DEEPVIT_ALLOCATOR": "jemalloc"})
    assert allocator.allocator_choice({"KERAS_DEEPVIT_ALLOCATOR": " System "}) == "system"


def test_off_glibc_nothing_is_changed(monkeypatch):
    monkeypatch.setattr(allocator, "_glibc_mallopt", lambda: None)
    monkeypatch.setattr(allocator, "_applied", None)
    assert allocator.retain_freed_memory({}) == {"allocator": "unchanged", "reason": "not glibc's malloc"}


def test_a_refused_mallopt_is_reported_not_recorded(monkeypatch):
    calls = []

    def refusing(parameter, value):
        calls.append((parameter, value))
        return 0

    monkeypatch.setattr(allocator, "_glibc_mallopt", lambda: refusing)
    monkeypatch.setattr(allocator, "_applied", None)
    assert allocator.retain_freed_memory({})["reason"] == "mallopt refused the settings"
    assert allocator._applied is None
    assert calls == [(allocator.M_MMAP_THRESHOLD, 32 << 20)]


def test_the_settings_are_applied_once(monkeypatch):
    calls = []

    def accepting(parameter, value):
        calls.append((parameter, value))
        return 1

    monkeypatch.setattr(allocator, "_glibc_mallopt", lambda: accepting)
    monkeypatch.setattr(allocator, "_applied", None)
    first = allocator.retain_freed_memory({})
    second = allocator.retain_freed_memory({})
    assert first == second and first["allocator"] == "glibc"
    assert calls == [(allocator.M_MMAP_THRESHOLD, 32 << 20), (allocator.M_TRIM_THRESHOLD, -1)]


def test_mallopt_is_found_where_the_c_library_is_glibc():
    if sys.platform.startswith("linux") and allocator.platform.libc_ver()[0] == "glibc":
        assert isinstance(allocator._glibc_mallopt(), ctypes._CFuncPtr)
