"""Speed benchmark of the Keras models against our PyTorch reference modules.

`keras-deepvit benchmark` (or `python tools/benchmark.py`) measures inference
and training images/s of each Keras backend and of the PyTorch reference
(eager, fused SDPA, `torch.compile`) in the same process and run, the fraction
of the measured GEMM peak, and peak memory. Modules: `flops` (FLOP counting),
`peak` (GEMM peak), `keras_side` and `torch_side` (the contestants), `worker`
(one job, interleaved timing), `table` (formatting) and `runner` (options and
orchestration).
"""

from keras_deepvit.benchmark.runner import add_arguments, main, run, run_benchmark

__all__ = ["add_arguments", "main", "run", "run_benchmark"]
