"""`rematerialize_blocks=True`: the same forward pass, the same training step, and a
config that round-trips, on every backend."""

import keras
import numpy as np
import pytest

from helpers import compile_for_training, to_numpy
from test_models import IMAGES, SMALL, small

LABELS = np.array([1, 3])


def train_one_step(model):
    compile_for_training(
        model, optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy"
    )
    loss = model.train_on_batch(IMAGES, LABELS)
    return float(np.asarray(loss).reshape(-1)[0]), [to_numpy(v) for v in model.weights]


@pytest.mark.parametrize("family", sorted(SMALL))
def test_remat_changes_nothing_but_memory(family):
    keras.utils.set_random_seed(3)
    plain = small(family)
    remat = small(family, rematerialize_blocks=True)
    remat.set_weights(plain.get_weights())
    assert remat.get_config()["rematerialize_blocks"] is True
    assert plain.get_config()["rematerialize_blocks"] is False

    np.testing.assert_allclose(
        to_numpy(remat(IMAGES, training=False)), to_numpy(plain(IMAGES, training=False)),
        rtol=1e-6, atol=1e-7,
    )
    plain_loss, plain_weights = train_one_step(plain)
    remat_loss, remat_weights = train_one_step(remat)
    assert np.isclose(remat_loss, plain_loss, rtol=1e-5)
    # Trainable weights and the BatchNorm statistics of re-attention / the refiner alike.
    for a, b in zip(remat_weights, plain_weights):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_remat_round_trips_through_config():
    model = small("pit", rematerialize_blocks=True)
    clone = model.__class__.from_config(model.get_config())
    assert clone.get_config()["rematerialize_blocks"] is True


# Training with stochastic depth and dropout through rematerialised blocks (`fit`):
# tests/test_models.py::test_fit_step_and_probabilities.
