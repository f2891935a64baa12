"""Keep freed memory in the process for reuse, where the C library allocator is glibc's.

A CPU training or inference step allocates and frees the same large buffers every
step. glibc's `malloc` serves large blocks with `mmap` and hands them back to the
kernel when they are freed (and trims its heaps), so every step's tensors land
on fresh pages: each 4 KiB page costs a page fault and the kernel's zeroing of it,
on whichever framework thread writes first. PyTorch, XLA (JAX, TensorFlow) and
NumPy all allocate through `malloc`, so all three backends and the PyTorch
reference pay it. The largest case: XLA:CPU allocates a compiled step's whole
scratch space (hundreds of MB) as one block from one of its worker threads, and
a thread's own glibc arena can only `mmap` a block that large, so JAX faulted
the whole of it in again every step. PyTorch's own CPU launcher
(`torch.backends.xeon.run_cpu`) answers the same cost by preloading jemalloc or
tcmalloc set never to return memory; glibc can be told the same with `mallopt`,
without a library to install.

`retain_freed_memory()` stops glibc from trimming its heaps (`M_TRIM_THRESHOLD`
-1), so freed memory stays in the process and the next step reuses it, and
chooses where large blocks come from by how the backend allocates:

- PyTorch and TensorFlow (many tensors of many sizes, freed as they die): blocks
  up to 32 MiB (`M_MMAP_THRESHOLD`, glibc's largest) come from the heaps; larger
  ones keep mappings of their own: with every block on one heap, the heap
  fragments and PyTorch's peak memory at 448 rose well above the reference's.
- JAX (one large scratch block per compiled step, and few others): every thread
  allocates from glibc's main heap (`M_ARENA_MAX` 1) and no block is mapped on its
  own (`M_MMAP_MAX` 0), so the scratch block is reused.

The process's memory then stays near its peak instead of falling between steps;
the peak itself is what a step needs either way (measured: docs/performance.md,
"The allocator"). Call it before the frameworks start their threads: a thread that
already has an arena of its own keeps it.

The `keras-deepvit` command and the benchmark's workers call it at start (for
every contestant alike); a library user calls it once, early. Set
`KERAS_DEEPVIT_ALLOCATOR=system` to leave the allocator as it is. It also does
nothing where the process already has allocator settings of its own (glibc's
`MALLOC_*` variables or tunables, or jemalloc/tcmalloc preloaded), and off glibc
(macOS, Windows, musl).

This module imports nothing of Keras or the frameworks.
"""

import ctypes
import os
import platform
import sys

#: glibc's `mallopt` parameter numbers (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
M_ARENA_MAX = -8

#: What `retain_freed_memory` sets, in this order, by the backend's way of allocating
#: (see the module docstring); a trim threshold of -1 turns trimming off (`man mallopt`).
SETTINGS = {
    "tensors": ((M_MMAP_THRESHOLD, 32 * 1024 * 1024), (M_TRIM_THRESHOLD, -1)),
    "scratch": ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1)),
}
_NAMES = {M_TRIM_THRESHOLD: "M_TRIM_THRESHOLD", M_MMAP_THRESHOLD: "M_MMAP_THRESHOLD",
          M_MMAP_MAX: "M_MMAP_MAX", M_ARENA_MAX: "M_ARENA_MAX"}

#: `KERAS_DEEPVIT_ALLOCATOR` values: keep freed memory (settings by backend), keep it on
#: one heap whatever the backend, or leave the allocator alone.
ALLOCATOR_ENV = "KERAS_DEEPVIT_ALLOCATOR"
CHOICES = ("retain", "single-heap", "system")

#: Environment variables that mean the process already chose its allocator's settings.
_OWN_SETTINGS = (
    "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_",
    "MALLOC_ARENA_MAX", "GLIBC_TUNABLES",
)
_OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")

_applied = None


def applied_pattern():
    """The settings `retain_freed_memory` applied in this process: `"tensors"`, `"scratch"` or None.

    None means the allocator is as the process started (glibc's defaults, or
    settings of its own). Measured facts of the machine are keyed by it
    (`layers.machine_facts.framework_key`): a probe that allocates a fresh
    block per call times page faults under glibc's defaults and none under
    these settings, so its answer holds only for processes set alike.

    Example:
    >>> applied_pattern() in (None, "tensors", "scratch")
    True
    """
    return None if _applied is None else _applied["pattern"]


def allocator_choice(environ=None):
    """The allocator setting asked for: `"retain"` (the default), `"single-heap"` or `"system"`.

    `"single-heap"` applies the `"scratch"` settings (one heap, no block mapped on
    its own) whatever the backend. PyTorch's large blocks, such as the refiner's
    `B x 3H x N x N` maps, are then reused instead of mapped and faulted in anew
    each step; the price is a fragmented heap and a higher peak memory for the
    PyTorch backend at 384 and 448 (docs/performance.md, "The allocator"). The
    benchmark uses it to time the PyTorch reference at its fastest.

    Args:
        environ: the environment to read (default: `os.environ`).

    Raises:
        ValueError: `KERAS_DEEPVIT_ALLOCATOR` holds anything else.

    Example:
    >>> allocator_choice({"KERAS_DEEPVIT_ALLOCATOR": "system"})
    'system'
    >>> allocator_choice({})
    'retain'
    """
    environ = os.environ if environ is None else environ
    value = environ.get(ALLOCATOR_ENV, "retain").strip().lower() or "retain"
    if value not in CHOICES:
        raise ValueError(
            f"{ALLOCATOR_ENV}={environ[ALLOCATOR_ENV]!r} is not one of {', '.join(CHOICES)}: "
            "'retain' keeps freed memory for reuse (the default), 'system' leaves the "
            "C library's allocator as it is, 'single-heap' keeps freed memory on one heap "
            "whatever the backend."
        )
    return value


def settings_of_its_own(environ=None):
    """Why the process's allocator is already set up by someone else, or None.

    Example:
    >>> settings_of_its_own({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"})
    'LD_PRELOAD names jemalloc'
    >>> settings_of_its_own({}) is None
    True
    """
    environ = os.environ if environ is None else environ
    for name in _OWN_SETTINGS:
        if name in environ:
            return f"{name} is set"
    preload = environ.get("LD_PRELOAD", "")
    for allocator in _OTHER_ALLOCATORS:
        if allocator in preload:
            return f"LD_PRELOAD names {allocator}"
    return None


def _glibc_mallopt():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt


def allocation_pattern(backend):
    """Which `SETTINGS` suit a Keras backend: `"scratch"` for JAX, `"tensors"` otherwise.

    Example:
    >>> allocation_pattern("jax"), allocation_pattern("torch")
    ('scratch', 'tensors')
    """
    return "scratch" if backend == "jax" else "tensors"


def _keras_backend(environ):
    # Keras' choice where Keras is loaded; else what it would read first. Not
    # importing Keras here keeps this callable before the frameworks load.
    keras = sys.modules.get("keras")
    if keras is not None and hasattr(keras, "backend"):
        return keras.backend.backend()
    return environ.get("KERAS_BACKEND", "tensorflow")


def retain_freed_memory(backend=None, environ=None):
    """Keeps freed memory in the process for reuse (glibc's `mallopt`; see the module docstring).

    Calling it again does nothing more.

    Args:
        backend: the Keras backend the process computes with (default: Keras'
            current one, or `KERAS_BACKEND`); it picks the settings, unless
            `KERAS_DEEPVIT_ALLOCATOR` is `single-heap`.
        environ: the environment to read (default: `os.environ`).

    Returns:
        A dict saying what was done: `{"allocator": "glibc", "pattern": ...,
        "settings": {name: value}}` when the settings were applied, else
        `{"allocator": "unchanged", "reason": ...}` (`"partly changed"` if glibc
        refused a later setting after taking an earlier one).

    Raises:
        ValueError: `KERAS_DEEPVIT_ALLOCATOR` is not one of `CHOICES`.

    Example:
    >>> retain_freed_memory("jax", {"KERAS_DEEPVIT_ALLOCATOR": "system"})
    {'allocator': 'unchanged', 'reason': 'KERAS_DEEPVIT_ALLOCATOR=system'}
    """
    global _applied
    environ = os.environ if environ is None else environ
    choice = allocator_choice(environ)
    if choice == "system":
        return {"allocator": "unchanged", "reason": f"{ALLOCATOR_ENV}=system"}
    if _applied is not None:
        return dict(_applied)
    reason = settings_of_its_own(environ)
    if reason is not None:
        return {"allocator": "unchanged", "reason": reason}
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return {"allocator": "unchanged", "reason": "not glibc's malloc"}
    if choice == "single-heap":
        pattern = "scratch"
    else:
        pattern = allocation_pattern(backend or _keras_backend(environ))
    settings = SETTINGS[pattern]
    for parameter, value in settings:
        if not mallopt(parameter, value):
            return {"allocator": "unchanged" if parameter == settings[0][0] else "partly changed",
                    "reason": f"mallopt refused {_NAMES[parameter]} = {value}"}
    _applied = {"allocator": "glibc", "pattern": pattern,
                "settings": {_NAMES[parameter]: value for parameter, value in settings}}
    return dict(_applied)
