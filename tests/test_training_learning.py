"""Learning on real data: each family, in a small configuration, reaches >= 90 % validation
accuracy on the embedded digits with `model.fit` and the papers' recipe.

30-80 s per family on 2 CPU cores, so it runs in the PyTorch pass of the suite only (the
fastest here: 83 s for the three, against 148 s on TensorFlow and about 4 minutes on JAX);
run it on another backend with `KERAS_DEEPVIT_LEARNING_TESTS=1`, e.g.
`KERAS_DEEPVIT_LEARNING_TESTS=1 python tools/run_tests.py --backends jax -- tests/test_training_learning.py`.
"""

import os

import keras
import pytest

import keras_deepvit
from keras_deepvit.training import AugmentConfig, load_dataset, recipe

HERE = keras.backend.backend() == "torch" or os.environ.get("KERAS_DEEPVIT_LEARNING_TESTS") == "1"
pytestmark = pytest.mark.skipif(
    not HERE, reason="runs once per suite, in the KERAS_BACKEND=torch pass (KERAS_DEEPVIT_LEARNING_TESTS=1 runs it here)"
)

SIZE, BATCH, EPOCHS = 32, 64, 6
COMMON = dict(input_shape=(SIZE, SIZE, 3), classes=10, classifier_activation=None)
#: Small configurations of each family, with the official stems of DeepViT-S / Refiner-ViT.
FAMILIES = {
    "pit": lambda: keras_deepvit.PiT(patch_size=8, stride=4, base_dims=(16, 16), depth=(2, 2), heads=(2, 4), **COMMON),
    "deepvit": lambda: keras_deepvit.DeepViT(
        depth=4, embed_dim=64, num_heads=4, stem="cnn", patch_size=8, re_attention=True, scale_adjustment=0.5,
        **COMMON,
    ),
    "refiner": lambda: keras_deepvit.RefinerViT(depth=4, embed_dim=64, num_heads=4, stem="cnn", patch_size=8, **COMMON),
}


@pytest.mark.long_running
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_learns_the_digits(family):
    common = dict(image_size=SIZE, batch_size=BATCH, one_hot=True, seed=0)
    train, info = load_dataset("digits", split="train", augment=AugmentConfig.light(), **common)
    validation, _ = load_dataset("digits", split="validation", crop_pct=1.0, **common)
    model = FAMILIES[family]()
    # The recipe's rule scaled to batch 64: lr 2e-3 (base 1.6e-2 at 512), one warm-up epoch.
    training = recipe(model, BATCH, EPOCHS, info.steps_per_epoch, base_lr=1.6e-2, warmup_epochs=1)
    model.compile(optimizer=training.optimizer, loss=training.loss, metrics=training.metrics)
    model.fit(train, epochs=EPOCHS, verbose=0, shuffle=False)
    accuracy = model.evaluate(validation, return_dict=True, verbose=0)["accuracy"]
    print(f"{family} on {keras.backend.backend()}: validation accuracy {accuracy:.3f}")
    assert accuracy >= 0.9
