"""The machine's float32 GEMM peak, measured in the run.

A square `size x size` float32 matrix product, timed `repeats` times after a
warm-up, with PyTorch and with NumPy (each with its default threads); the peak
is the best single product of either: `2 * size**3 / seconds`. On a GPU the
PyTorch product runs there instead (float32; TF32 as PyTorch's default allows;
bfloat16/float16 for a mixed-precision run).
"""

import time


def _best_gflops(matmul, a, b, flops, repeats, sync=lambda: None):
    matmul(a, b)
    matmul(a, b)
    sync()
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b)
        sync()
        best = max(best, flops / (time.perf_counter() - start) / 1e9)
    return best


def gemm_peak(size=2048, repeats=10, device="cpu", dtype="float32"):
    """`{"torch": GFLOP/s, "numpy": GFLOP/s or None, "peak": the larger, ...}`.

    Example:
    >>> gemm_peak(size=64, repeats=2)["peak"] > 0
    True
    """
    flops = 2.0 * size**3
    result = {"size": size, "repeats": repeats, "device": device, "dtype": dtype}
    try:
        import torch

        torch_dtype = getattr(torch, dtype)
        a = torch.randn(size, size, device=device).to(torch_dtype)
        b = torch.randn(size, size, device=device).to(torch_dtype)
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        result["torch"] = _best_gflops(torch.matmul, a, b, flops, repeats, sync)
    except ImportError:
        result["torch"] = None
    result["numpy"] = None
    if device == "cpu" and dtype == "float32":
        import numpy as np

        rng = np.random.default_rng(0)
        a = rng.standard_normal((size, size), dtype=np.float32)
        b = rng.standard_normal((size, size), dtype=np.float32)
        result["numpy"] = _best_gflops(np.matmul, a, b, flops, repeats)
    result["peak"] = max(v for v in (result["torch"], result["numpy"]) if v is not None)
    return result
