"""Keep freed memory in the process for reuse, where the C library allocator is glibc's.

A CPU training or inference step allocates and frees the same large tensors every
step. glibc's `malloc` serves large blocks with `mmap` and hands them back to the
kernel when they are freed (and trims the top of its heap), so every step's
tensors land on fresh pages: each 4 KiB page costs a page fault and the kernel's
zeroing of it, on whichever framework thread writes first. PyTorch, XLA (JAX,
TensorFlow) and NumPy all allocate through `malloc`, so all three backends and the
PyTorch reference pay it. PyTorch's own CPU launcher (`torch.backends.xeon.run_cpu`)
answers the same cost by preloading jemalloc or tcmalloc set never to return
memory; glibc can be told the same with `mallopt`, without a library to install.

`retain_freed_memory()` raises the `mmap` threshold to glibc's maximum (32 MiB:
smaller blocks come from the heap and are reused) and stops trimming the heap.
The process's memory then stays at its peak instead of falling between steps:
the peak itself is what a step needs either way. Blocks above 32 MiB are still
mapped and returned, so one huge tensor does not pin its pages for good.

The `keras-deepvit` command and the benchmark's workers call it at start (for
every contestant alike); a library user calls it once, early. Set
`KERAS_DEEPVIT_ALLOCATOR=system` to leave the allocator as it is. It also does
nothing where the process already has allocator settings of its own (glibc's
`MALLOC_*` variables, or jemalloc/tcmalloc preloaded), and off glibc (macOS,
Windows, musl). Measurements: docs/performance.md ("The allocator").

This module imports nothing of Keras or the frameworks.
"""

import ctypes
import os
import platform

#: glibc's `mallopt` parameter numbers (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: glibc's largest `mmap` threshold on 64-bit systems (`DEFAULT_MMAP_THRESHOLD_MAX`).
MAX_MMAP_THRESHOLD = 32 * 1024 * 1024

#: The trim threshold that turns trimming off (`man mallopt`): the heap's free top stays.
NEVER_TRIM = -1

#: `KERAS_DEEPVIT_ALLOCATOR` values: keep freed memory, or leave the allocator alone.
ALLOCATOR_ENV = "KERAS_DEEPVIT_ALLOCATOR"
CHOICES = ("retain", "system")

#: Environment variables that mean the process already chose its allocator's settings.
_OWN_SETTINGS = (
    "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_",
    "GLIBC_TUNABLES",
)
_OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")

_applied = None


def allocator_choice(environ=None):
    """The allocator setting asked for: `"retain"` (the default) or `"system"`.

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
            "C library's allocator as it is."
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


def retain_freed_memory(environ=None):
    """Keeps freed memory (blocks up to 32 MiB, the heap's top) in the process for reuse.

    Calling it again does nothing more. See the module docstring for what it
    changes and why.

    Args:
        environ: the environment to read (default: `os.environ`).

    Returns:
        A dict saying what was done: `{"allocator": "glibc", "mmap_threshold": ...,
        "trim_threshold": ...}` when the settings were applied, else
        `{"allocator": "unchanged", "reason": ...}`.

    Raises:
        ValueError: `KERAS_DEEPVIT_ALLOCATOR` is neither `retain` nor `system`.

    Example:
    >>> retain_freed_memory({"KERAS_DEEPVIT_ALLOCATOR": "system"})
    {'allocator': 'unchanged', 'reason': 'KERAS_DEEPVIT_ALLOCATOR=system'}
    """
    global _applied
    environ = os.environ if environ is None else environ
    if allocator_choice(environ) == "system":
        return {"allocator": "unchanged", "reason": f"{ALLOCATOR_ENV}=system"}
    if _applied is not None:
        return dict(_applied)
    reason = settings_of_its_own(environ)
    if reason is not None:
        return {"allocator": "unchanged", "reason": reason}
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return {"allocator": "unchanged", "reason": "not glibc's malloc"}
    # Either setting turns glibc's adaptive mmap threshold off, so both are set.
    if not (mallopt(M_MMAP_THRESHOLD, MAX_MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, NEVER_TRIM)):
        return {"allocator": "unchanged", "reason": "mallopt refused the settings"}
    _applied = {"allocator": "glibc", "mmap_threshold": MAX_MMAP_THRESHOLD, "trim_threshold": "never"}
    return dict(_applied)
