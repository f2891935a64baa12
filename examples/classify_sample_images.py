"""Classify scikit-image's sample photos with a keras-deepvit model.

Builds PiT-Ti (or the model named on the command line) on the JAX backend unless
`KERAS_BACKEND` says otherwise, classifies the astronaut, coffee, chelsea and
rocket photos shipped with scikit-image, and prints each image's top-3 classes.
The weights are random until pretrained weights are ported, so the classes are
not meaningful yet; the example shows the input pipeline (RGB 0-255, bicubic
resize and central crop) and the output (softmax probabilities).

Needs: `pip install -e ".[jax,demo]"` (any backend extra works with
KERAS_BACKEND set to match). Runs offline on a CPU in well under a minute.

    python examples/classify_sample_images.py [MODEL_NAME]
"""

import os
import sys

# The backend is chosen when Keras is first imported, so set it before.
os.environ.setdefault("KERAS_BACKEND", "jax")

from keras_deepvit import demo  # noqa: E402


def main(model_name="pit_ti"):
    result = demo.classify_sample_images(model_name, top=3, seed=0)
    for line in demo.format_report(result):
        print(line)


if __name__ == "__main__":
    main(*sys.argv[1:2])
