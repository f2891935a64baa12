"""Measured facts of this machine: which of two equivalent forms of a computation runs faster.

Where the fastest form differs by CPU kind (bfloat16 GEMM kernels, AVX-512 or not,
the frameworks' fused kernels), the layers time both forms once on a small probe and
keep the answer in `$KERAS_HOME/keras_deepvit/machine_facts.json`, keyed by the CPU
(`keras_deepvit.cpuinfo.cpu_identity`), the framework's version, how the process's
allocator is set (`keras_deepvit.allocator.applied_pattern`) and what was measured.
A later process reads the answer instead of measuring again.
"""

import functools
import json
import os
import threading
import time

from keras_deepvit.allocator import applied_pattern
from keras_deepvit.cpuinfo import cpu_identity

_LOCK = threading.Lock()


def measured_fact(key, measure):
    """The cached entry `key` of this machine's measurements, made by `measure()` if missing.

    Args:
        key: a string naming the machine, the framework and what is measured
            (start it with `framework_key(backend)`).
        measure: a function of no arguments returning a JSON-able dict.

    Returns:
        The dict: read from the cache file, or measured now and written there.

    Example:
    >>> fact = measured_fact("example | doubling", lambda: {"faster": "doubling"})
    >>> fact["faster"]
    'doubling'
    """
    with _LOCK:
        cache = cache_path()
        facts = _read_facts(cache)
        if key not in facts:
            facts[key] = measure()
            _write_facts(cache, facts)
        return facts[key]


def framework_key(backend):
    """`"<CPU identity> | <backend> <framework version> | allocator <setting>"`: every key's start.

    The allocator's setting is part of it because a probe's timing includes the
    page faults of its fresh blocks under glibc's defaults and not under
    `retain_freed_memory`, which can change which form is faster
    (docs/performance.md), so each setting gets its own measurement.

    Example:
    >>> framework_key("jax").split(" | ")[1].startswith("jax ")
    True
    """
    if backend == "jax":
        import jax as framework
    elif backend == "torch":
        import torch as framework
    else:
        import tensorflow as framework
    allocator = applied_pattern() or "as started"
    return f"{cpu_identity()} | {backend} {framework.__version__} | allocator {allocator}"


@functools.lru_cache(maxsize=None)
def has_gpu(backend):
    """Whether the backend's framework sees a GPU (probes compare CPU forms only).

    Example:
    >>> has_gpu("jax") in (True, False)
    True
    """
    if backend == "jax":
        import jax

        return jax.default_backend() != "cpu"
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU"))


def best_time(run, repeats=5):
    """The shortest of `repeats` timed calls of `run()`, in seconds, after one untimed call.

    Example:
    >>> best_time(lambda: sum(range(10))) >= 0
    True
    """
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def cache_path():
    """Where the facts live: `$KERAS_HOME/keras_deepvit/machine_facts.json`.

    Example:
    >>> cache_path().endswith("machine_facts.json")
    True
    """
    home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return os.path.join(home, "keras_deepvit", "machine_facts.json")


def _read_facts(path):
    try:
        with open(path) as file:
            facts = json.load(file)
        return facts if isinstance(facts, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_facts(path, facts):
    # Written whole to a temporary file and renamed: a reader never sees half a file.
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        temporary = f"{path}.{os.getpid()}.tmp"
        with open(temporary, "w") as file:
            json.dump(facts, file, indent=1, sort_keys=True)
        os.replace(temporary, path)
    except OSError:
        pass  # A read-only home only costs the probe again in the next process.
