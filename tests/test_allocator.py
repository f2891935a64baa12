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
# freed memory, then grows and frees blocks six times (as a step's tensors do) and
# reports the page faults of the rounds after the first. "heap": six 8 MiB blocks
# from the main thread; "thread": one 96 MiB block from a thread started
# afterwards, as XLA:CPU allocates a step's scratch space from a worker thread.
_CHILD = textwrap.dedent(
    """
    import ctypes, importlib.util, json, resource, sys, threading
    spec = importlib.util.spec_from_file_location("allocator", sys.argv[1])
    allocator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(allocator)
    env = json.loads(sys.argv[2])
    result = allocator.retain_freed_memory(sys.argv[4], env) if env is not None else None
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    libc.memset.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t)
    sizes = {"heap": [8 << 20] * 6, "thread": [96 << 20]}[sys.argv[3]]
    faults = []

    def rounds():
        for _ in range(6):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            blocks = [libc.malloc(size) for size in sizes]
            for block, size in zip(blocks, sizes):
                libc.memset(block, 1, size)
            for block in blocks:
                libc.free(block)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

    if sys.argv[3] == "thread":
        worker = threading.Thread(target=rounds)
        worker.start()
        worker.join()
    else:
        rounds()
    print(json.dumps({"result": result, "faults_after_first_round": sum(faults[1:])}))
    """
)


def _run_child(environ, pattern="heap", backend="torch"):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LD_PRELOAD"}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, allocator.__file__, json.dumps(environ), pattern, backend],
        capture_output=True, text=True, check=True, env=env, timeout=60,
    )
    return json.loads(out.stdout)


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only (Linux)")
@pytest.mark.parametrize(
    "pattern, backend, reused",
    [
        ("heap", "torch", True),
        ("heap", "jax", True),
        ("thread", "jax", True),
        # The PyTorch/TensorFlow settings keep blocks above 32 MiB mapped on their
        # own (a heap holding them fragments: docs/performance.md).
        ("thread", "torch", False),
    ],
)
def test_freed_blocks_are_reused_without_new_page_faults(pattern, backend, reused):
    untouched = _run_child(None, pattern, backend)
    retained = _run_child({}, pattern, backend)
    assert untouched["result"] is None
    expected = {
        "torch": {"M_MMAP_THRESHOLD": 32 << 20, "M_TRIM_THRESHOLD": -1},
        "jax": {"M_ARENA_MAX": 1, "M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": -1},
    }[backend]
    assert retained["result"] == {
        "allocator": "glibc", "pattern": allocator.allocation_pattern(backend), "settings": expected,
    }
    # 5 rounds x 48 (heap) or 96 MiB (thread) of 4 KiB pages: 61,000 or 123,000
    # faults when every round's memory is new; kept memory is faulted in once, in
    # the first round.
    assert untouched["faults_after_first_round"] > 50_000, untouched
    if reused:
        assert retained["faults_after_first_round"] < 1_000, retained
    else:
        assert retained["faults_after_first_round"] > 50_000, retained


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only (Linux)")
def test_system_choice_and_own_settings_leave_the_allocator_alone():
    system = _run_child({"KERAS_DEEPVIT_ALLOCATOR": "system"})
    preloaded = _run_child({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"})
    glibc_variable = _run_child({"MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_ARENA_MAX": "2"})
    assert system["result"] == {"allocator": "unchanged", "reason": "KERAS_DEEPVIT_ALLOCATOR=system"}
    assert preloaded["result"]["reason"] == "LD_PRELOAD names jemalloc"
    assert glibc_variable["result"]["reason"] == "MALLOC_TRIM_THRESHOLD_ is set"
    for child in (system, preloaded, glibc_variable):
        assert child["faults_after_first_round"] > 50_000, child


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only (Linux)")
def test_single_heap_keeps_large_blocks_whatever_the_backend():
    # The PyTorch settings map a 96 MiB block anew each round (the test above);
    # `single-heap` keeps it on the one heap, as for JAX.
    retained = _run_child({"KERAS_DEEPVIT_ALLOCATOR": "single-heap"}, "thread", "torch")
    assert retained["result"] == {
        "allocator": "glibc", "pattern": "scratch",
        "settings": {"M_ARENA_MAX": 1, "M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": -1},
    }
    assert retained["faults_after_first_round"] < 1_000, retained


def test_an_unknown_choice_is_refused_with_the_values_allowed():
    with pytest.raises(
        ValueError, match=r"KERAS_DEEPVIT_ALLOCATOR='jemalloc' is not one of retain, single-heap, system"
    ):
        allocator.allocator_choice({"KERAS_DEEPVIT_ALLOCATOR": "jemalloc"})
    assert allocator.allocator_choice({"KERAS_DEEPVIT_ALLOCATOR": " System "}) == "system"
    assert allocator.allocator_choice({"KERAS_DEEPVIT_ALLOCATOR": "single-heap"}) == "single-heap"


def test_off_glibc_nothing_is_changed(monkeypatch):
    monkeypatch.setattr(allocator, "_glibc_mallopt", lambda: None)
    monkeypatch.setattr(allocator, "_applied", None)
    assert allocator.retain_freed_memory("jax", {}) == {
        "allocator": "unchanged", "reason": "not glibc's malloc",
    }


def test_a_refused_mallopt_is_reported_not_recorded(monkeypatch):
    calls = []

    def refusing_the_second(parameter, value):
        calls.append((parameter, value))
        return len(calls) < 2

    monkeypatch.setattr(allocator, "_glibc_mallopt", lambda: refusing_the_second)
    monkeypatch.setattr(allocator, "_applied", None)
    assert allocator.retain_freed_memory("jax", {}) == {
        "allocator": "partly changed", "reason": "mallopt refused M_MMAP_MAX = 0",
    }
    assert allocator._applied is None
    assert calls == [(allocator.M_ARENA_MAX, 1), (allocator.M_MMAP_MAX, 0)]


def test_the_settings_are_applied_once_for_the_backend_in_use(monkeypatch):
    calls = []

    def accepting(parameter, value):
        calls.append((parameter, value))
        return 1

    monkeypatch.setattr(allocator, "_glibc_mallopt", lambda: accepting)
    monkeypatch.setattr(allocator, "_applied", None)
    # Without a backend argument: Keras' backend (loaded by this test process).
    import keras

    first = allocator.retain_freed_memory(environ={})
    second = allocator.retain_freed_memory("jax", {})
    assert first == second
    assert first["pattern"] == allocator.allocation_pattern(keras.backend.backend())
    assert calls == list(allocator.SETTINGS[first["pattern"]])


def test_mallopt_is_found_where_the_c_library_is_glibc():
    if sys.platform.startswith("linux") and allocator.platform.libc_ver()[0] == "glibc":
        assert isinstance(allocator._glibc_mallopt(), ctypes._CFuncPtr)
