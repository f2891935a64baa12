"""Run the test suite once per Keras backend, each in its own process.

The backend is fixed when Keras is first imported, so every backend needs a
fresh interpreter. Each run is `python -m pytest tests -q -p no:cacheprovider`
with `KERAS_BACKEND` set, from the repository root; its output goes straight to
the terminal. A run that collects no tests (pytest exit code 5) counts as a
failure: an empty run must not look like a green one.

Usage:
    python tools/run_tests.py                         # tensorflow, jax, torch
    python tools/run_tests.py --backends jax,torch -n 2
    python tools/run_tests.py --backends jax -- -x tests/test_layers.py

Arguments after `--` (and any this script does not know) go to pytest; test
paths in them replace the default `tests` and are relative to the repository
root. Exits 1 if any backend failed.
"""

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("tensorflow", "jax", "torch")
PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
NO_TESTS_COLLECTED = 5


def parse_args(argv):
    if "--" in argv:
        split = argv.index("--")
        own, passthrough = argv[:split], argv[split + 1 :]
    else:
        own, passthrough = argv, []
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--backends", default=",".join(BACKENDS),
        help=f"comma-separated subset of {','.join(BACKENDS)} (default: all, in that order)",
    )
    parser.add_argument(
        "-n", "--numprocesses", metavar="N", default=None,
        help="pytest-xdist workers per backend run (an int, 'auto', or 0 for none); "
        "default when pytest-xdist is installed: 3 for TensorFlow and JAX, 2 for PyTorch "
        "(measured on 2 cores: docs/development.md)",
    )
    args, unknown = parser.parse_known_args(own)
    args.pytest_args = unknown + passthrough
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    wrong = [b for b in backends if b not in BACKENDS]
    if wrong or not backends:
        parser.error(f"--backends must name some of {', '.join(BACKENDS)}; got {args.backends!r}.")
    args.backends = backends
    if args.numprocesses not in (None, "0") and importlib.util.find_spec("xdist") is None:
        parser.error("-n needs pytest-xdist: pip install pytest-xdist (or the [test] extra).")
    return args


def names_test_paths(pytest_args):
    """True if the pytest arguments name tests to run (files, directories, node ids)."""
    return any(
        not arg.startswith("-") and (ROOT / arg.split("::")[0]).exists() for arg in pytest_args
    )


#: Default xdist workers per backend (see --numprocesses).
DEFAULT_WORKERS = {"tensorflow": "3", "jax": "3", "torch": "2"}


def pytest_command(args, backend):
    command = list(PYTEST)
    workers = args.numprocesses
    if workers is None and importlib.util.find_spec("xdist") is not None:
        workers = DEFAULT_WORKERS[backend]
    if workers not in (None, "0"):
        command += ["-n", str(workers)]
    if not names_test_paths(args.pytest_args):
        command.append("tests")
    return command + args.pytest_args


def compile_cache_env(backend, directory):
    """Environment that lets one backend pass share JAX's persistent compilation cache.

    Many tests build the same small models and compile the same programs; with a
    cache shared by the pass's pytest-xdist workers (and the subprocesses some tests
    start), each is compiled once. A cache hit returns the same executable, so no
    result changes. Only JAX is cached; a `JAX_COMPILATION_CACHE_DIR` of your own wins.

    Example:
    >>> sorted(compile_cache_env("jax", "/tmp/c"))[0]
    'JAX_COMPILATION_CACHE_DIR'
    >>> compile_cache_env("torch", "/tmp/c")
    {}
    """
    if backend != "jax" or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return {}
    return {
        "JAX_COMPILATION_CACHE_DIR": str(directory),
        # The suite's programs compile in well under JAX's default 1 s threshold.
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }


def describe(code):
    if code == 0:
        return "passed"
    if code == NO_TESTS_COLLECTED:
        return "FAILED: no tests were collected (pytest exit code 5); check the paths and -k/-m filters"
    return f"FAILED (pytest exit code {code})"


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    results = []
    for backend in args.backends:
        command = pytest_command(args, backend)
        print(f"\n=== KERAS_BACKEND={backend}: {' '.join(command[1:])}", flush=True)
        start = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"keras-deepvit-{backend}-cache-") as cache:
            env = dict(os.environ, KERAS_BACKEND=backend, **compile_cache_env(backend, cache))
            code = subprocess.run(command, cwd=ROOT, env=env).returncode
        results.append((backend, code, time.monotonic() - start))
        if code == NO_TESTS_COLLECTED:
            print(f"=== {backend}: no tests were collected; that counts as a failure.", flush=True)
    print("\n=== Summary")
    for backend, code, seconds in results:
        print(f"{backend:<10}  {describe(code)}  ({seconds:.0f} s)")
    return 0 if all(code == 0 for _, code, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
