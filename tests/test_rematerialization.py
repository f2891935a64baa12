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


@pytest.mark.long_running
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


@pytest.mark.long_running
@pytest.mark.parametrize("family", sorted(SMALL))
def test_remat_recomputes_with_the_forward_pass_drop_path_masks(family, caplog):
    """With drop path, the recomputed blocks must draw the forward pass's masks (the
    seed states go into the recomputed region): the same seeds give the same step as
    without remat. TensorFlow's tape also must not warn about the integer seeds."""
    models = []
    for remat in (False, True):
        keras.utils.set_random_seed(5)
        models.append(small(family, drop_path_rate=0.5, rematerialize_blocks=remat))
    plain, remat = models
    remat.set_weights(plain.get_weights())
    with caplog.at_level("WARNING"):
        plain_loss, plain_weights = train_one_step(plain)
        remat_loss, remat_weights = train_one_step(remat)
    assert np.isclose(remat_loss, plain_loss, rtol=1e-5)
    for a, b in zip(remat_weights, plain_weights):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert not [r for r in caplog.records if "watched tensor" in r.getMessage()]


def test_remat_round_trips_through_config():
    model = small("pit", rematerialize_blocks=True)
    clone = model.__class__.from_config(model.get_config())
    assert clone.get_config()["rematerialize_blocks"] is True


# Training with stochastic depth and dropout through rematerialised blocks (`fit`):
# tests/test_models.py::test_fit_step_and_probabilities.


#: Deep enough that the blocks' activations dominate what a training step keeps.
# 4x4 patches (65 tokens) instead of the CNN stem, which dominated at 32x32.
DEEP_REFINER = dict(depth=4, refine_attention=[True] + [False] * 3, stem="patch", patch_size=4)


def count_block_runs(model, run):
    """How many times the blocks' computation runs (or is traced) during `run()`."""
    from keras_deepvit.layers import blocks

    calls = []
    original = blocks.RefinerBlock.block_outputs

    def counting(self, *args, **kwargs):
        calls.append(self.name)
        return original(self, *args, **kwargs)

    blocks.RefinerBlock.block_outputs = counting
    try:
        run()
    finally:
        blocks.RefinerBlock.block_outputs = original
    return len(calls)


@pytest.mark.long_running
@pytest.mark.skipif(keras.backend.backend() != "jax", reason="XLA buffer assignment: JAX only")
def test_remat_lowers_jax_compiled_training_memory():
    # XLA:CPU undid jax.checkpoint (its barrier is expanded before scheduling): the
    # temporaries of the gradient were the same with and without. Now each block
    # keeps only its inputs.
    import jax

    from keras_deepvit.benchmark.activation_memory import jax_training_temp_bytes

    # What two more blocks add to the step's temporaries, with and without remat: the
    # difference leaves out the stem, the head and the gradients of the weights, which
    # remat does not touch (a ratio of totals moved with every change outside the blocks).
    def temp_bytes(depth, remat):
        config = dict(DEEP_REFINER, depth=depth, refine_attention=[True] + [False] * (depth - 1))
        return jax_training_temp_bytes(small("refiner", rematerialize_blocks=remat, **config), 8)

    depth = DEEP_REFINER["depth"]
    plain_growth, remat_growth = (
        temp_bytes(depth, remat) - temp_bytes(depth - 2, remat) for remat in (False, True)
    )
    assert plain_growth > 0, plain_growth
    assert remat_growth < 0.3 * plain_growth, (remat_growth, plain_growth)
    remat = small("refiner", rematerialize_blocks=True, **DEEP_REFINER)
    # Structurally: each block is one recomputing custom-gradient call (other
    # custom gradients, such as the refiner's depthwise convolution, are not counted).
    values = [[v.value for v in vs] for vs in (remat.trainable_variables, remat.non_trainable_variables)]
    forward = lambda t, n, x: remat.stateless_call(t, n, x, training=True)[0]  # noqa: E731
    jaxpr = str(jax.make_jaxpr(forward)(*values, IMAGES))
    assert jaxpr.count("name=recomputed") == DEEP_REFINER["depth"], jaxpr.count("name=recomputed")


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="autograd saved tensors: PyTorch only")
def test_remat_lowers_torch_saved_activations():
    # The blocks' `forward` method used to shadow torch.nn.Module.forward, so on this
    # backend `call` (and the checkpoint in it) never ran.
    from keras_deepvit.benchmark.activation_memory import torch_saved_bytes

    plain = small("refiner", **DEEP_REFINER)
    remat = small("refiner", rematerialize_blocks=True, **DEEP_REFINER)
    images = np.repeat(IMAGES, 4, axis=0)
    plain_bytes, remat_bytes = (torch_saved_bytes(m, images) for m in (plain, remat))
    assert remat_bytes < 0.5 * plain_bytes, (remat_bytes, plain_bytes)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="eager GradientTape: TensorFlow")
def test_remat_recomputes_blocks_in_tensorflow_backward_pass():
    import tensorflow as tf

    depth = DEEP_REFINER["depth"]
    for remat, expected in ((False, depth), (True, 2 * depth)):
        model = small("refiner", rematerialize_blocks=remat, **DEEP_REFINER)

        def step():
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(model(IMAGES, training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            assert all(g is not None for g in grads)

        assert count_block_runs(model, step) == expected
