"""Shared pytest set-up: the tests directory on sys.path, quiet TensorFlow, a sandboxed
weights cache with no network, seeds."""

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# XLA (JAX, and TensorFlow's jit_compile) compiles every program with LLVM at -O2 by
# default; the suite's programs are small and run once, so compiling dominates: at -O0
# the JAX run of tests/test_models.py + test_rematerialization.py took 298 s against
# 432 s. The graph XLA optimises (fusion, layout, algebraic passes) is the same at every
# level, and without fast-math LLVM may not reorder float arithmetic at any level, so
# the tests check the same computation. Benchmarks and users keep the default.
_O0 = "--xla_backend_optimization_level=0"
if _O0 not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_O0}".strip()
# Tests never touch the user's cache or the network: weights="imagenet" outside a test
# that sets up its own loopback server finds an empty mirror and fails at once.
_SANDBOX = tempfile.mkdtemp(prefix="keras_deepvit_tests_")
os.environ["KERAS_DEEPVIT_CACHE_DIR"] = os.path.join(_SANDBOX, "cache")
os.environ["KERAS_DEEPVIT_WEIGHTS_MIRROR"] = os.path.join(_SANDBOX, "empty_mirror")
os.makedirs(os.environ["KERAS_DEEPVIT_WEIGHTS_MIRROR"])
sys.path.insert(0, str(Path(__file__).resolve().parent))
# The tests that run the `keras-deepvit` command call it in this process, and the
# command keeps freed memory in its process (keras_deepvit.allocator): the whole
# suite's process would then never give memory back. The suite keeps glibc's
# defaults; tests/test_allocator.py checks the setting in processes of its own.
os.environ.setdefault("KERAS_DEEPVIT_ALLOCATOR", "system")

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_and_clear():
    keras.utils.set_random_seed(0)
    yield
    keras.backend.clear_session()


def pytest_terminal_summary(terminalreporter):
    """Names the test modules (or tests) skipped for a missing package, so they cannot vanish."""
    missing = {}
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if "could not import" in reason or "No module named" in reason:
            module = (report.nodeid or str(report.fspath)).split("::")[0]
            whole = "::" not in report.nodeid
            count, _, _ = missing.get(module, (0, whole, reason))
            missing[module] = (count + 1, whole, reason)
    if missing:
        terminalreporter.section("skipped for a missing package")
        for module, (count, whole, reason) in sorted(missing.items()):
            what = "whole module" if whole else f"{count} test(s)"
            terminalreporter.line(f"{module} ({what}): {reason}")


def pytest_collection_modifyitems(items):
    """Starts the tests marked `long_running` first (stable order otherwise).

    pytest-xdist hands tests out in collection order, so a 60-120 s test collected
    last (the training modules sort late) kept its worker busy while the others sat
    idle at the end of a pass. Started first, it overlaps the many short tests.
    """
    items.sort(key=lambda item: item.get_closest_marker("long_running") is None)
