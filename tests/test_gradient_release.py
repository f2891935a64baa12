"""`gradient_release`: on PyTorch, a training step of the package's models runs its forward
pass without the previous step's gradients in memory, whatever the optimiser."""

import doctest

import keras
import numpy as np
import pytest

import keras_deepvit
from keras_deepvit.models import gradient_release
from keras_deepvit.models.gradient_release import ReleasesGradients
from keras_deepvit.training.distillation import DistillationModel


def test_docstring_examples():
    results = doctest.testmod(gradient_release, extraglobs={"keras": keras})
    assert results.attempted > 0 and results.failed == 0


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_forward_pass_of_a_training_step_holds_no_gradients(optimizer):
    if keras.backend.backend() != "torch":
        pytest.skip("only PyTorch keeps gradients on the weights between steps")
    model = keras_deepvit.PiT(
        base_dims=(8, 8), depth=(1, 1), heads=(2, 4), input_shape=(32, 32, 3), classes=3,
        classifier_activation=None,
    )
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    seen = []
    forward = model.call

    def recording_call(*args, **kwargs):
        seen.append(sum(w.value.grad is not None for w in model.trainable_weights))
        return forward(*args, **kwargs)

    model.call = recording_call
    images = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype("float32")
    for _ in range(2):
        model.train_on_batch(images, np.array([0, 2]))
    assert len(seen) >= 2 and not any(seen), seen
    assert any(w.value.grad is not None for w in model.trainable_weights)  # only the last step's


def test_the_distillation_wrapper_releases_them_too():
    assert DistillationModel.__mro__.index(ReleasesGradients) < DistillationModel.__mro__.index(keras.Model)
    assert issubclass(keras_deepvit.PiT, ReleasesGradients)
