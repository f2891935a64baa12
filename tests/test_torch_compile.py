"""`jit_compile=True` on the PyTorch backend (Keras wraps each step in `torch.compile`).

One tiny model per family takes one compiled training step and a compiled
`predict`; an identical model does the same eagerly, and the weights after the
step (BatchNorm statistics included) and the predictions must agree. The
DeepViT case uses the CNN stem, whose convolutions once failed to compile
(see `keras_deepvit.layers.map_ops._torch_eager_conv2d`).

`torch.compile` takes tens of seconds even for these models (Keras' layer calls
break the graph into many small frames), so only DeepViT runs by default;
`KERAS_DEEPVIT_TORCH_COMPILE_TESTS=1` adds Refiner-ViT and PiT.
"""

import os

import keras
import numpy as np
import pytest

import keras_deepvit
from keras_deepvit.training.fused_adamw import AdamW

if keras.backend.backend() != "torch":
    pytest.skip(
        "jit_compile=True means torch.compile only on the PyTorch backend "
        "(TensorFlow's XLA and JAX's jit are exercised by the other test files)",
        allow_module_level=True,
    )

ALL = os.environ.get("KERAS_DEEPVIT_TORCH_COMPILE_TESTS") == "1"


@pytest.fixture(autouse=True)
def _one_compile_thread():
    # Inductor compiles in a pool of one worker per core: beside the suite's other
    # pytest-xdist worker that tripled the PyTorch pass's learning tests. (The
    # config's own `patch`: monkeypatch's undo left the option missing for the next test.)
    import torch._inductor.config

    with torch._inductor.config.patch(compile_threads=1):
        yield
SLOW = pytest.mark.skipif(not ALL, reason="set KERAS_DEEPVIT_TORCH_COMPILE_TESTS=1 (torch.compile is slow)")

FAMILIES = {
    "deepvit_cnn_stem": lambda: keras_deepvit.DeepViT(
        depth=1, embed_dim=32, num_heads=4, stem="cnn", patch_size=8,
        input_shape=(32, 32, 3), classes=5,
    ),
    "refiner_vit": lambda: keras_deepvit.RefinerViT(
        depth=1, embed_dim=32, num_heads=4, patch_size=8, input_shape=(32, 32, 3), classes=5,
    ),
    # Three stages: two poolings of different shapes share one helper frame.
    "pit": lambda: keras_deepvit.PiT(
        patch_size=8, stride=4, base_dims=(8, 8, 8), depth=(1, 1, 1), heads=(2, 2, 2),
        input_shape=(32, 32, 3), classes=5,
    ),
}


def _step_and_predict(build, weights, jit_compile, images, labels):
    model = build()
    model.set_weights(weights)
    # The training recipe's optimiser: its eager update is PyTorch's fused kernel,
    # which cannot be traced; compiled, it is Keras' own update (same arithmetic).
    # A first Adam step is about `lr * sign(g)` for gradients far above `epsilon`, so
    # with the default epsilon a stem weight whose gradient is ~1e-7 moves by up to
    # `lr` on float32 rounding; this epsilon keeps the update a smooth function of `g`.
    model.compile(optimizer=AdamW(0.01, weight_decay=0.05, epsilon=1e-3), loss="categorical_crossentropy",
                  jit_compile=jit_compile)
    loss = model.train_on_batch(images, labels)
    return loss, model.get_weights(), model.predict(images, verbose=0)


@pytest.mark.long_running
@pytest.mark.parametrize(
    "family",
    ["deepvit_cnn_stem", pytest.param("refiner_vit", marks=SLOW), pytest.param("pit", marks=SLOW)],
)
def test_jit_compile_training_step_and_predict_match_eager(family):
    build = FAMILIES[family]
    weights = build().get_weights()
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (4, 32, 32, 3)).astype("float32")
    labels = np.eye(5, dtype="float32")[[0, 1, 2, 3]]

    loss, trained, predictions = _step_and_predict(build, weights, True, images, labels)
    eager_loss, eager_trained, eager_predictions = _step_and_predict(
        build, weights, False, images, labels
    )

    np.testing.assert_allclose(loss, eager_loss, rtol=1e-5, atol=1e-5)
    assert len(trained) == len(eager_trained)
    changed = 0
    for after, eager_after, before in zip(trained, eager_trained, weights):
        np.testing.assert_allclose(after, eager_after, rtol=1e-5, atol=1e-5)
        changed += not np.array_equal(after, before)
    assert changed > len(weights) // 2, "the compiled training step left most weights unchanged"
    np.testing.assert_allclose(predictions, eager_predictions, rtol=1e-5, atol=1e-5)
