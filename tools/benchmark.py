"""Benchmark the Keras models against the PyTorch reference: `keras-deepvit benchmark` as a script.

Example:
    python tools/benchmark.py --models pit_s --backends jax,tensorflow --batch-sizes 8
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from keras_deepvit.benchmark import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
