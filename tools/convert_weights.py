"""Convert a PyTorch/safetensors checkpoint to a Keras `.weights.h5` (no torch needed).

The same as the console command `keras-deepvit convert`:

    python tools/convert_weights.py pit_s.pth --model pit_s -o pit_s.weights.h5
    KERAS_BACKEND=jax python tools/convert_weights.py ckpt.pth.tar --model deepvit_s -o out.weights.h5

Reads official, timm and train-script checkpoints (EMA weights preferred;
`--no-ema` for the raw ones), verifies the converted model on one batch and
prints its parameter count, the source format and the preprocessing.
"""

import sys

from keras_deepvit.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["convert"] + sys.argv[1:]))
