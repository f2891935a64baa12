"""Mixed precision training on every backend: a few `fit` steps under `mixed_float16`
(with Keras' loss scaling) and `mixed_bfloat16` train with float32 master weights and
half-precision activations; softmax, BatchNorms, LayerNorms and the losses stay float32."""

import keras
import numpy as np
import pytest

import keras_deepvit
from keras_deepvit.training import recipe

COMMON = dict(input_shape=(32, 32, 3), classes=4, classifier_activation=None)
FAMILIES = {
    "pit": lambda **kw: keras_deepvit.PiT(patch_size=8, stride=4, base_dims=(8, 8), depth=(1, 1), heads=(2, 4), **kw),
    "deepvit": lambda stem="cnn", **kw: keras_deepvit.DeepViT(
        depth=2, embed_dim=32, num_heads=4, stem=stem, patch_size=8, re_attention=True, **kw
    ),
    "refiner": lambda **kw: keras_deepvit.RefinerViT(
        depth=2, embed_dim=32, num_heads=4, stem="cnn", patch_size=8, separate_heads=True, **kw
    ),
}
HALF = {"mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}


def _dtype(x):
    return keras.backend.standardize_dtype(x.dtype)


#: Both policies on DeepViT (BatchNorm inside attention), one each on the others.
CASES = [("deepvit", "mixed_float16"), ("deepvit", "mixed_bfloat16"), ("pit", "mixed_float16"),
         ("refiner", "mixed_bfloat16")]
#: float16 convolutions have no fast CPU kernel on any backend: DeepViT's CNN stem made
#: its float16 case 117 s on TensorFlow (9-11 s a step) against 0.3 s a step with the one-conv
#: stem (Xeon model 167, 2026-12-03). The CNN stems train in bfloat16 here (DeepViT,
#: Refiner-ViT); PiT's float16 case keeps a convolution (its patch embedding).
STEMS = {("deepvit", "mixed_float16"): {"stem": "patch"}}


@pytest.mark.long_running
@pytest.mark.parametrize("family,policy", CASES)
def test_fit_in_mixed_precision(family, policy):
    model = FAMILIES[family](dtype=policy, **COMMON, **STEMS.get((family, policy), {}))
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    labels = np.eye(4, dtype="float32")[np.arange(16) % 4]
    training = recipe(model, 16, 10, 1, base_lr=0.05, warmup_epochs=0, weight_decay=0.0)
    model.compile(optimizer=training.optimizer, loss=training.loss, metrics=training.metrics)
    if policy == "mixed_float16":  # Keras wraps the optimizer: dynamic loss scaling
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    history = model.fit(images, training.targets(labels), batch_size=16, epochs=10, verbose=0, shuffle=False)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0], losses
    assert {v.dtype for v in model.weights} == {"float32"}  # master weights
    blocks = [layer for layer in model._flatten_layers() if "blocks" in layer.name]
    assert blocks and all(layer.compute_dtype == HALF[policy] for layer in blocks)
    features = keras.Model(model.input, blocks[-1]._inbound_nodes[-1].outputs[0])
    assert _dtype(features(images[:2])) == HALF[policy]
    outputs = model(images[:2])
    logits = outputs["logits"] if isinstance(outputs, dict) else outputs
    assert _dtype(logits) in ("float32", HALF[policy])
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(keras.ops.cast(logits, "float32"))))


def test_tensorflow_trains_in_bfloat16_under_xla():
    """Keras compiles TensorFlow's step without XLA on a CPU unless asked; the wide
    bfloat16 products and their gradients run under XLA only (`wide_matmul`)."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("TensorFlow's XLA-compiled step; JAX always compiles with XLA (above)")
    model = FAMILIES["pit"](dtype="mixed_bfloat16", **COMMON)
    model.compile(
        optimizer="adam", loss=keras.losses.CategoricalCrossentropy(from_logits=True), jit_compile=True
    )
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    labels = np.eye(4, dtype="float32")[np.arange(4)]
    losses = [float(model.train_on_batch(images, labels)) for _ in range(3)]
    assert np.all(np.isfinite(losses)), losses
