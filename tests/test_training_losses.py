"""The training losses against the official formulas written out in numpy."""

import doctest
import importlib

import keras
import numpy as np
import pytest

from helpers import to_numpy
from keras_deepvit.training.losses import (
    AttentionSimilarityLoss,
    DistillationLoss,
    TokenLabelCrossEntropy,
    classification_loss,
)

RNG = np.random.default_rng(0)


def _log_softmax(x, axis=-1):
    x = x.astype("float64")
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def _one_hot(index, classes):
    return np.eye(classes, dtype="float32")[index]


def _timm_mixup_target(index, classes, lam, smoothing):
    """timm `mixup_target`: smoothed one-hots of the batch and of its flip, mixed with `lam`."""
    off = smoothing / classes
    on = 1.0 - smoothing + off
    y1 = np.full((len(index), classes), off)
    y1[np.arange(len(index)), index] = on
    return y1 * lam + y1[::-1] * (1.0 - lam)


def _value(loss, y_true, y_pred):
    return float(to_numpy(loss(y_true, y_pred)))


def test_classification_loss_is_timm_label_smoothing_and_soft_target_ce():
    classes, index = 7, np.array([0, 3, 6, 2])
    logits = RNG.normal(size=(4, classes)).astype("float32") * 3
    logp = _log_softmax(logits)
    loss = classification_loss(0.1)
    # timm LabelSmoothingCrossEntropy(0.1): (1 - s) * nll + s * mean(-logp).
    timm = np.mean(0.9 * -logp[np.arange(4), index] + 0.1 * -logp.mean(axis=-1))
    assert _value(loss, _one_hot(index, classes), logits) == pytest.approx(timm, rel=1e-6)
    # timm SoftTargetCrossEntropy on Mixup's (smoothed, then mixed) targets equals Keras'
    # smoothing of the unsmoothed mixed labels.
    lam = 0.3
    mixed = lam * _one_hot(index, classes) + (1 - lam) * _one_hot(index[::-1], classes)
    soft = np.mean(np.sum(-_timm_mixup_target(index, classes, lam, 0.1) * logp, axis=-1))
    assert _value(loss, mixed, logits) == pytest.approx(soft, rel=1e-6)
    with pytest.raises(ValueError, match="label_smoothing"):
        classification_loss(1.0)


def _deit(cls_logits, dist_logits, teacher, labels, alpha, kind, tau, smoothing):
    """facebookresearch/deit `DistillationLoss` with `SoftTargetCrossEntropy` as base criterion."""
    classes = labels.shape[-1]
    targets = labels * (1 - smoothing) + smoothing / classes
    base = np.mean(np.sum(-targets * _log_softmax(cls_logits), axis=-1))
    if kind == "hard":
        distill = np.mean(-_log_softmax(dist_logits)[np.arange(len(teacher)), teacher.argmax(-1)])
    else:
        log_s, log_t = _log_softmax(dist_logits / tau), _log_softmax(teacher / tau)
        distill = np.sum(np.exp(log_t) * (log_t - log_s)) * tau * tau / dist_logits.size
    return (1 - alpha) * base + alpha * distill


@pytest.mark.parametrize("kind, alpha, tau", [("hard", 0.5, 1.0), ("soft", 0.5, 1.0), ("soft", 0.3, 3.0)])
def test_distillation_loss_matches_deit(kind, alpha, tau):
    batch, classes = 5, 6
    heads = RNG.normal(size=(batch, 3, classes)).astype("float32") * 2
    labels = _one_hot(RNG.integers(0, classes, batch), classes)
    loss = DistillationLoss(alpha=alpha, distillation_type=kind, tau=tau, label_smoothing=0.1)
    expected = _deit(heads[:, 0], heads[:, 1], heads[:, 2], labels, alpha, kind, tau, 0.1)
    assert _value(loss, labels, heads) == pytest.approx(expected, rel=1e-5)
    # Serializes, and the restored loss computes the same.
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, DistillationLoss) and restored.get_config() == loss.get_config()
    assert _value(restored, labels, heads) == pytest.approx(expected, rel=1e-5)


def test_distillation_loss_rejects_bad_arguments():
    with pytest.raises(ValueError, match="distillation_type"):
        DistillationLoss(distillation_type="none")
    with pytest.raises(ValueError, match="alpha"):
        DistillationLoss(alpha=1.5)
    with pytest.raises(ValueError, match=r"\(batch, 3, classes\)"):
        DistillationLoss()(np.zeros((2, 4)), np.zeros((2, 4), "float32"))


def test_token_label_loss_matches_refiner_relabel_cross_entropy():
    batch, patches, classes = 3, 4, 5
    aux = RNG.normal(size=(batch, patches, classes)).astype("float32") * 2
    logp = _log_softmax(aux)
    labels = _one_hot(np.array([1, 4, 0]), classes)
    smoothed = labels * 0.9 + 0.1 / classes
    # RelabelCrossEntropy with (B, C) targets: `target.repeat(1, N).reshape(B * N, C)` and a
    # mean over the B * N tokens.
    official = np.mean(np.sum(-np.repeat(smoothed[:, None], patches, axis=1) * logp, axis=-1))
    loss = TokenLabelCrossEntropy(label_smoothing=0.1, weight=0.5)
    assert _value(loss, labels, aux) == pytest.approx(0.5 * official, rel=1e-6)
    # Token targets, one distribution per patch.
    tokens = RNG.dirichlet(np.ones(classes), size=(batch, patches)).astype("float32")
    expected = np.mean(np.sum(-tokens * logp, axis=-1))
    assert _value(TokenLabelCrossEntropy(), tokens, aux) == pytest.approx(expected, rel=1e-6)
    # RelabelPooledCrossEntropy: mean-pooled aux logits against the image label.
    pooled = np.mean(np.sum(-labels * _log_softmax(aux.mean(axis=1)), axis=-1))
    assert _value(TokenLabelCrossEntropy(pooling="mean"), labels, aux) == pytest.approx(pooled, rel=1e-6)
    restored = TokenLabelCrossEntropy.from_config(loss.get_config())
    assert _value(restored, labels, aux) == pytest.approx(0.5 * official, rel=1e-6)
    with pytest.raises(ValueError, match="pooling"):
        TokenLabelCrossEntropy(pooling="max")
    with pytest.raises(ValueError, match=r"\(batch, patches, classes\)"):
        TokenLabelCrossEntropy()(labels, aux[:, 0])


def test_attention_similarity_is_the_official_cos_reg():
    batch, blocks, heads, tokens = 2, 4, 3, 5
    maps = RNG.uniform(size=(batch, blocks, heads, tokens, tokens)).astype("float32")
    # SoftTargetCrossEntropyCosReg: sum_i CosineSimilarity(dim=1)(atten[i], atten[i+1]),
    # then 0.1 * mean / n_comn; atten[i] is (batch, heads, tokens, tokens).
    pairs = 2
    cos = 0
    for i in range(pairs):
        a, b = maps[:, i].astype("float64"), maps[:, i + 1].astype("float64")
        cos = cos + (a * b).sum(1) / np.maximum(np.sqrt((a * a).sum(1) * (b * b).sum(1)), 1e-8)
    expected = 0.1 * cos.mean() / pairs
    loss = AttentionSimilarityLoss(num_pairs=pairs)
    assert _value(loss, np.zeros((batch, 1)), maps) == pytest.approx(expected, rel=1e-6)
    assert AttentionSimilarityLoss.from_config(loss.get_config()).get_config() == loss.get_config()
    with pytest.raises(ValueError, match="num_pairs=4"):
        AttentionSimilarityLoss(num_pairs=4)(np.zeros((batch, 1)), maps)


def test_attention_similarity_trains_through_the_models_own_maps():
    """The regulariser's maps come from the model's `trace` (see its docstring), and fit."""
    import keras_deepvit

    class WithMaps(keras.Model):
        def __init__(self, model, **kwargs):
            super().__init__(**kwargs)
            self.model = model

        def call(self, images, training=None):
            logits, maps = type(self.model).trace(self.model, images, return_attention_maps=True)
            return {"logits": logits, "maps": keras.ops.stack(maps[:2], axis=1)}

    model = keras_deepvit.DeepViT(depth=2, embed_dim=16, num_heads=2, patch_size=8, input_shape=(16, 16, 3),
                                  classes=4, classifier_activation=None)
    wrapper = WithMaps(model)
    wrapper.compile(optimizer="adam", loss={"logits": classification_loss(), "maps": AttentionSimilarityLoss(1)})
    images = RNG.uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    labels = _one_hot(np.arange(4), 4)
    before = [to_numpy(v).copy() for v in model.trainable_variables]
    history = wrapper.fit(images, {"logits": labels, "maps": labels}, epochs=1, verbose=0).history
    assert np.isfinite(history["maps_loss"][0]) and history["maps_loss"][0] != 0
    # The re-attention bias feeds a BatchNorm that uses batch statistics, which removes
    # any per-channel constant: its gradient is zero up to rounding, and exactly zero
    # for some inputs (then Adam leaves it where it was).
    unchanged = [
        v.path for v, b in zip(model.trainable_variables, before)
        if np.array_equal(to_numpy(v), b) and not v.path.endswith("reatten_bias")
    ]
    assert not unchanged


def test_losses_compute_in_float32_from_half_precision_logits():
    classes = 4
    labels = _one_hot(np.array([0, 1]), classes)
    half = keras.ops.convert_to_tensor(RNG.normal(size=(2, 3, classes)), dtype="float16")
    full = to_numpy(half).astype("float32")
    cases = [
        (DistillationLoss(), labels),
        (TokenLabelCrossEntropy(label_smoothing=0.1), labels),
        (classification_loss(), np.repeat(labels[:, None], 3, axis=1)),
    ]
    for loss, y in cases:
        value = loss(y, half)
        assert keras.backend.standardize_dtype(value.dtype) == "float32", loss.name
        assert float(to_numpy(value)) == pytest.approx(_value(loss, y, full), rel=1e-6), loss.name


def test_docstring_examples_run():
    assert doctest.testmod(importlib.import_module("keras_deepvit.training.losses")).failed == 0
