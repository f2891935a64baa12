"""`ConvStemPatchEmbedding`: with moving statistics, its BatchNorms are folded into the stem
convolutions; the result is the unfolded chain's (convolution, BatchNorm, ReLU), and a
training call still normalises with batch statistics and updates the moving averages."""

import keras
import numpy as np
import pytest
from keras import ops

from helpers import to_numpy
from keras_deepvit.layers import ConvStemPatchEmbedding

RNG = np.random.default_rng(7)


def _stem():
    layer = ConvStemPatchEmbedding(embed_dim=8, patch_size=8, stem_filters=(4, 6))
    layer.build((2, 32, 32, 3))
    for norm in layer.stem_norms:  # statistics far from the initial (0, 1)
        channels = norm.moving_mean.shape[0]
        norm.moving_mean.assign(RNG.normal(size=channels).astype("float32"))
        norm.moving_variance.assign(RNG.uniform(0.2, 3.0, size=channels).astype("float32"))
        norm.gamma.assign(RNG.normal(1.0, 0.3, size=channels).astype("float32"))
        norm.beta.assign(RNG.normal(size=channels).astype("float32"))
    return layer


def _unfolded(layer, images, training):
    x = ops.convert_to_tensor(images)
    for i, (conv, norm) in enumerate(zip(layer.stem_convs, layer.stem_norms)):
        pad = 3 if i == 0 else 1
        x = ops.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        x = ops.relu(norm(ops.conv(x, conv.kernel, strides=conv.strides, padding="valid"), training=training))
    return ops.conv(x, layer.proj.kernel, strides=layer.proj.strides, padding="valid") + layer.proj.bias


@pytest.mark.parametrize("frozen", [False, True])
def test_inference_folds_the_batch_norms_with_the_unfolded_result(frozen, monkeypatch):
    layer = _stem()
    images = RNG.normal(size=(2, 32, 32, 3)).astype("float32")
    if frozen:  # fine-tuning with frozen BatchNorms: moving statistics in a training call
        for norm in layer.stem_norms:
            norm.trainable = False
    expected = to_numpy(_unfolded(layer, images, False))
    for norm in layer.stem_norms:  # folded: the BatchNorm layers themselves never run
        monkeypatch.setattr(norm, "call", lambda *args, **kwargs: pytest.fail("BatchNorm called"))
    actual = to_numpy(layer(images, training=frozen))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_training_normalises_with_batch_statistics_and_updates_the_moving_averages():
    layer = _stem()
    images = RNG.normal(size=(2, 32, 32, 3)).astype("float32")
    before = [to_numpy(norm.moving_mean) for norm in layer.stem_norms]
    expected = to_numpy(_unfolded(_copy_of(layer), images, True))
    np.testing.assert_allclose(to_numpy(layer(images, training=True)), expected, rtol=1e-4, atol=1e-4)
    assert all(not np.allclose(to_numpy(n.moving_mean), b) for n, b in zip(layer.stem_norms, before))


def _copy_of(layer):
    clone = ConvStemPatchEmbedding.from_config(layer.get_config())
    clone.build((2, 32, 32, 3))
    clone.set_weights(layer.get_weights())
    return clone
