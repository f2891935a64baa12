"""`training.fused_adamw.AdamW`: Keras' AdamW to float32 rounding on every backend (PyTorch's
fused kernel on PyTorch), weight-decay exclusions, schedules and serialization included."""

import doctest

import keras
import numpy as np
import pytest

from helpers import to_numpy
from keras_deepvit.models.gradient_release import release_gradients
from keras_deepvit.training import fused_adamw
from keras_deepvit.training.fused_adamw import AdamW


def _run(optimizer_class, steps=4, **kwargs):
    rng = np.random.default_rng(0)
    values = [rng.normal(size=shape).astype("float32") for shape in [(3, 4), (4,), (2, 2, 3)]]
    variables = [keras.Variable(v) for v in values]
    grads = [[rng.normal(size=v.shape).astype("float32") for v in values] for _ in range(steps)]
    optimizer = optimizer_class(**kwargs)
    optimizer.exclude_from_weight_decay(var_list=[variables[1]])
    for step_grads in grads:
        optimizer.apply([keras.ops.convert_to_tensor(g) for g in step_grads], variables)
    return [to_numpy(v) for v in variables], optimizer


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(learning_rate=1e-2, weight_decay=0.05, epsilon=1e-8),
        dict(learning_rate=keras.optimizers.schedules.CosineDecay(1e-2, 10), weight_decay=0.1, beta_1=0.8),
        dict(learning_rate=1e-3, weight_decay=0.05, amsgrad=True),  # Keras' own path
    ],
    ids=["constant", "schedule", "amsgrad"],
)
def test_updates_equal_keras_adamw(kwargs):
    ours, optimizer = _run(AdamW, **kwargs)
    theirs, _ = _run(keras.optimizers.AdamW, **kwargs)
    for mine, reference in zip(ours, theirs):
        # float32 rounding: the kernel orders its arithmetic differently (2-3 ulp of O(1) values).
        np.testing.assert_allclose(mine, reference, rtol=1e-6, atol=1e-6)
    assert int(to_numpy(optimizer.iterations)) == 4


def test_first_steps_differ_from_pytorch_eps_placement_as_keras_does():
    # eps large enough to matter: Keras' placement (before the bias correction) is kept.
    ours, _ = _run(AdamW, steps=1, learning_rate=0.1, weight_decay=0.0, epsilon=0.5)
    theirs, _ = _run(keras.optimizers.AdamW, steps=1, learning_rate=0.1, weight_decay=0.0, epsilon=0.5)
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-6, atol=1e-6)


def test_round_trips_through_its_config():
    optimizer = AdamW(learning_rate=3e-4, weight_decay=0.05, epsilon=1e-8)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(optimizer))
    assert type(clone) is AdamW and clone.get_config() == optimizer.get_config()


def test_docstring_examples_run():
    results = doctest.testmod(fused_adamw)
    assert results.attempted > 0 and results.failed == 0


def test_a_training_step_leaves_no_gradients_on_pytorch():
    """The next step's forward pass runs without the last step's gradients in memory."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(2)])
    model.compile(optimizer=AdamW(1e-3), loss="mse")
    before = [keras.ops.convert_to_numpy(w).copy() for w in model.trainable_weights]
    model.train_on_batch(np.ones((2, 3), "float32"), np.zeros((2, 2), "float32"))
    after = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    assert all(np.any(a != b) for a, b in zip(after, before))  # the step did update
    if keras.backend.backend() == "torch":
        assert all(w.value.grad is None for w in model.trainable_weights)
    release_gradients(model.trainable_weights)  # a no-op on the other backends
