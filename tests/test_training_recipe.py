"""The training recipe: schedule values, weight-decay exclusion, EMA, per-output losses and
distillation training with a frozen teacher, on every backend."""

import doctest
import importlib
import math

import keras
import numpy as np
import pytest

import keras_deepvit
from helpers import infer, to_numpy
from keras_deepvit.training.distillation import DistillationModel
from keras_deepvit.training.losses import DistillationLoss, TokenLabelCrossEntropy
from keras_deepvit.training.recipe import (
    PAPER_DROP_PATH_RATES,
    build_optimizer,
    learning_rate_schedule,
    no_weight_decay_variables,
    paper_drop_path_rate,
    recipe,
    scaled_learning_rate,
)

CLASSES = 10


def _tiny_pit(**kwargs):
    return keras_deepvit.PiT(
        base_dims=(8, 8), depth=(1, 1), heads=(2, 4), input_shape=(32, 32, 3), classes=CLASSES,
        classifier_activation=None, **kwargs,
    )


def _tiny_refiner(**kwargs):
    return keras_deepvit.RefinerViT(
        depth=2, embed_dim=16, num_heads=2, stem="cnn", patch_size=8, input_shape=(16, 16, 3),
        classes=CLASSES, classifier_activation=None, **kwargs,
    )


def _data(batch, size, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    labels = np.eye(CLASSES, dtype="float32")[rng.integers(0, CLASSES, batch)]
    return images, labels


def _log_softmax(x):
    x = x.astype("float64")
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_scaled_learning_rate_is_deits_linear_rule():
    assert scaled_learning_rate(512) == pytest.approx(5e-4)
    assert scaled_learning_rate(1024) == pytest.approx(1e-3)
    assert scaled_learning_rate(64, base_lr=1e-3, base_batch=256) == pytest.approx(2.5e-4)
    with pytest.raises(ValueError, match="batch_size"):
        scaled_learning_rate(0)


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_the_floor():
    peak, floor, start = 1e-3, 1e-5, 1e-6
    schedule = learning_rate_schedule(peak, total_steps=110, warmup_steps=10, warmup_lr=start, min_lr=floor)
    expected = {
        0: start,
        5: start + (peak - start) * 0.5,
        10: peak,  # end of warm-up
        30: floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * 20 / 100)),
        60: floor + (peak - floor) * 0.5,  # middle of the decay
        110: floor,  # end
        500: floor,  # stays at the floor (the official cooldown epochs)
    }
    for step, value in expected.items():
        assert float(to_numpy(schedule(step))) == pytest.approx(value, rel=1e-5), step
    # Without warm-up the decay starts at the peak at step 0.
    no_warmup = learning_rate_schedule(peak, total_steps=100, warmup_steps=0, min_lr=floor)
    assert float(to_numpy(no_warmup(0))) == pytest.approx(peak, rel=1e-6)
    assert float(to_numpy(no_warmup(50))) == pytest.approx(floor + (peak - floor) * 0.5, rel=1e-5)
    with pytest.raises(ValueError, match="warm-up must end"):
        learning_rate_schedule(peak, total_steps=10, warmup_steps=10)
    with pytest.raises(ValueError, match="min_lr"):
        learning_rate_schedule(peak, total_steps=10, warmup_steps=1, min_lr=1e-2)


def _apply_zero_gradients(optimizer, variables):
    """One optimizer step with zero gradients; compiled on JAX, whose eager optimizer step
    compiles every op of every variable shape one by one (about 2.5x slower here)."""
    if keras.backend.backend() != "jax":
        optimizer.apply_gradients([(keras.ops.zeros(v.shape, v.dtype), v) for v in variables])
        return
    import jax

    optimizer.build(variables)
    zeros = [jax.numpy.zeros(v.shape, v.dtype) for v in variables]
    step = jax.jit(lambda values, state: optimizer.stateless_apply(state, zeros, values))
    values, state = step([v.value for v in variables], [v.value for v in optimizer.variables])
    for variable, value in zip(list(variables) + optimizer.variables, list(values) + list(state)):
        variable.assign(value)


def _expected_excluded(variable):
    return len(variable.shape) <= 1 or variable.name in ("pos_embed", "cls_token")


@pytest.mark.parametrize("build", ["pit_distilled", "refiner", "deepvit"])
def test_weight_decay_skips_biases_norms_embeddings_and_tokens(build):
    if build == "pit_distilled":
        model = _tiny_pit(distilled=True)
    elif build == "refiner":
        model = _tiny_refiner()
    else:
        model = keras_deepvit.DeepViT(
            depth=2, embed_dim=16, num_heads=2, patch_size=8, input_shape=(16, 16, 3),
            classes=CLASSES, stem="cnn",  # DeepViT has no stem_filters argument: its stem is fixed
        )
    excluded = {v.path for v in no_weight_decay_variables(model)}
    paths = {v.path for v in model.trainable_variables}
    assert {"cls_token/cls_token", "pos_embed/pos_embed", "head/bias", "norm/gamma", "norm/beta"} <= excluded
    assert not any(p.endswith("kernel") for p in excluded)
    if build != "pit_distilled":
        assert any("bn1/gamma" in p for p in excluded)  # BatchNorm of the CNN stem
    assert any("qkv/kernel" in p for p in paths - excluded)
    if build == "deepvit":
        assert "blocks_0/attn/reatten_kernel" in paths - excluded  # a 1x1 conv weight officially
        assert {"blocks_0/attn/reatten_bias", "blocks_0/attn/var_norm/gamma"} <= excluded
    if build == "refiner":
        assert {"blocks_0/mlp/scale_channel", "blocks_1/attn/adapt_bn/gamma"} <= excluded
        assert "blocks_1/attn/DLA/conv_exp/kernel" in paths - excluded


def test_a_zero_gradient_step_only_decays_the_decayed_variables():
    # Adam's update of a zero gradient is 0, so only the decay moves the weights, by exactly
    # `lr * wd * value` (PyTorch AdamW's `p *= 1 - lr * wd`). The Refiner-ViT has every kind of
    # variable (BatchNorm stem, LayerNorms, scale_channel, refiner kernels, tokens, embeddings).
    model = _tiny_refiner()
    lr, wd = 0.1, 0.05
    optimizer = build_optimizer(model, lr, weight_decay=wd)
    before = {v.path: to_numpy(v).copy() for v in model.trainable_variables}
    _apply_zero_gradients(optimizer, model.trainable_variables)
    for v in model.trainable_variables:
        after = to_numpy(v)
        if _expected_excluded(v):
            np.testing.assert_array_equal(after, before[v.path], err_msg=v.path)
        else:
            np.testing.assert_allclose(after, before[v.path] * (1 - lr * wd), rtol=1e-6, atol=0, err_msg=v.path)


def test_optimizer_clipping_and_ema_are_keras_own():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    optimizer = build_optimizer(model, 1e-3, clip_norm=1.0, ema_decay=0.99)
    assert optimizer.global_clipnorm == 1.0 and optimizer.use_ema and optimizer.ema_momentum == 0.99
    assert optimizer.epsilon == 1e-8 and optimizer.weight_decay == 0.05
    with pytest.raises(ValueError, match="ema_decay"):
        build_optimizer(model, 1e-3, ema_decay=1.0)


def test_evaluating_with_ema_weights_differs_from_the_raw_weights():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 8)).astype("float32")
    y = np.eye(3, dtype="float32")[rng.integers(0, 3, 32)]
    histories, models = [], []
    for callbacks in ([keras.callbacks.SwapEMAWeights()], []):
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
        r = recipe(model, batch_size=512, epochs=4, steps_per_epoch=1, warmup_epochs=0,
                   base_lr=0.05, min_lr=0.05, ema_decay=0.5)
        model.compile(optimizer=r.optimizer, loss=r.loss, metrics=r.metrics)
        fit = model.fit(x, y, batch_size=32, epochs=4, validation_data=(x, y), callbacks=callbacks, verbose=0)
        histories.append(fit.history)
        models.append(model)
    ema, raw = histories
    # Same training (the callback swaps the raw weights back after each evaluation), but
    # the validation with the averaged weights differs.
    np.testing.assert_allclose(ema["loss"], raw["loss"], rtol=1e-5)
    assert np.max(np.abs(np.array(ema["val_loss"]) - np.array(raw["val_loss"]))) > 1e-3
    # Keras ends `fit` by writing the averages into the weights (`finalize_variable_values`).
    after = models[1].evaluate(x, y, verbose=0, return_dict=True)["loss"]
    assert after == pytest.approx(ema["val_loss"][-1], rel=1e-5)


def test_recipe_for_a_single_output_model():
    model = _tiny_pit()
    r = recipe(model, batch_size=256, epochs=10, steps_per_epoch=3)
    assert r.learning_rate == pytest.approx(2.5e-4)
    assert (r.total_steps, r.warmup_steps, r.output_keys) == (30, 15, None)
    assert isinstance(r.loss, keras.losses.CategoricalCrossentropy) and r.loss.label_smoothing == 0.1
    assert [m.name for m in r.metrics] == ["accuracy", "top5"]
    y = np.eye(CLASSES)[:2]
    assert r.targets(y) is y
    with pytest.raises(ValueError, match="does not end before the run"):
        recipe(model, batch_size=256, epochs=3, steps_per_epoch=3)
    with pytest.raises(ValueError, match="min_lr"):
        recipe(model, batch_size=8, epochs=10, steps_per_epoch=1)  # peak 7.8e-6 under the floor
    with pytest.raises(ValueError, match="classifier_activation=None"):
        recipe(keras_deepvit.PiT(base_dims=(8, 8), depth=(1, 1), heads=(2, 4), input_shape=(32, 32, 3),
                                 classes=CLASSES), batch_size=512, epochs=10, steps_per_epoch=1)
    with pytest.raises(ValueError, match="DistillationModel"):
        recipe(_tiny_pit(distilled=True, separate_heads=True), batch_size=512, epochs=10, steps_per_epoch=1)


def test_recipe_trains_the_refiner_dense_head_with_image_or_token_labels():
    model = _tiny_refiner(separate_heads=True)
    r = recipe(model, batch_size=512, epochs=2, steps_per_epoch=1, warmup_epochs=1)
    assert set(r.loss) == {"cls_logits", "aux_logits"}
    assert isinstance(r.loss["aux_logits"], TokenLabelCrossEntropy) and r.loss["aux_logits"].weight == 0.5
    model.compile(optimizer=r.optimizer, loss=r.loss, metrics=r.metrics)
    images, labels = _data(4, 16)
    tokens = np.random.default_rng(1).dirichlet(np.ones(CLASSES), size=(4, 4)).astype("float32")
    targets = r.targets(labels)
    assert set(targets) == {"logits", "cls_logits", "aux_logits"} and targets["aux_logits"] is labels
    targets = r.targets(labels, tokens)
    assert targets["aux_logits"] is tokens and targets["cls_logits"] is labels
    # The compiled loss is the official one: class-token CE + 0.5 * mean token CE.
    out = infer(model, images)  # inference outputs, as `evaluate` computes them
    smooth = lambda t: t * 0.9 + 0.1 / CLASSES  # noqa: E731
    cls = np.mean(np.sum(-smooth(labels) * _log_softmax(out["cls_logits"]), -1))
    aux = np.mean(np.sum(-smooth(tokens) * _log_softmax(out["aux_logits"]), -1))
    result = model.evaluate(images, targets, batch_size=4, verbose=0, return_dict=True)
    assert result["loss"] == pytest.approx(cls + 0.5 * aux, rel=1e-5)
    assert result["cls_logits_loss"] == pytest.approx(cls, rel=1e-5)
    assert "logits_accuracy" in result


def test_distillation_trains_the_student_and_leaves_the_teacher_alone():
    images, labels = _data(8, 32)
    student = _tiny_pit(distilled=True, separate_heads=True)
    teacher = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.Rescaling(1 / 255.0), keras.layers.Conv2D(4, 8, strides=8),
         keras.layers.BatchNormalization(), keras.layers.Flatten(), keras.layers.Dense(CLASSES)]
    )
    teacher_before = [to_numpy(v).copy() for v in teacher.variables]
    model = DistillationModel(student, teacher)
    r = recipe(model, batch_size=512, epochs=6, steps_per_epoch=1, warmup_epochs=0, base_lr=2e-3, min_lr=2e-3)
    assert isinstance(r.loss["distillation"], DistillationLoss) and r.output_keys == ("logits", "distillation")
    model.compile(optimizer=r.optimizer, loss=r.loss, metrics=r.metrics)
    student_before = [to_numpy(v).copy() for v in student.trainable_variables]
    history = model.fit(images, r.targets(labels), batch_size=8, epochs=6, verbose=0).history["loss"]
    assert np.all(np.isfinite(history)) and history[-1] < history[0], history
    for before, v in zip(teacher_before, teacher.variables):
        np.testing.assert_array_equal(to_numpy(v), before, err_msg=v.path)
    assert any(not np.array_equal(to_numpy(v), b) for v, b in zip(student.trainable_variables, student_before))
    # The stacked output carries the teacher's logits beside the student's two heads,
    # whose mean is the student's eval output.
    out = infer(model, images)
    stacked = out["distillation"]
    np.testing.assert_allclose(stacked[:, 2], to_numpy(teacher(images, training=False)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stacked[:, :2].mean(axis=1), out["logits"], rtol=1e-5, atol=1e-5)


def test_distillation_model_validates_and_round_trips():
    student = _tiny_pit(distilled=True, separate_heads=True)
    teacher = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(CLASSES)])
    with pytest.raises(ValueError, match="separate_heads=True"):
        DistillationModel(_tiny_pit(distilled=True), teacher)
    with pytest.raises(ValueError, match="teacher_outputs"):
        DistillationModel(student, teacher, teacher_outputs="softmax")
    model = DistillationModel(student, teacher, teacher_outputs="probabilities")
    restored = DistillationModel.from_config(model.get_config())
    assert restored.teacher_outputs == "probabilities" and not restored.teacher.trainable
    assert restored.student.get_config() == student.get_config()


def test_paper_drop_path_rates_cover_every_registered_variant():
    assert set(PAPER_DROP_PATH_RATES) == set(keras_deepvit.list_models())
    assert paper_drop_path_rate("pit_s") == 0.1 and paper_drop_path_rate("refiner_m") == 0.25
    with pytest.raises(ValueError, match="known variants"):
        paper_drop_path_rate("deit_s")


def test_docstring_examples_run():
    assert doctest.testmod(importlib.import_module("keras_deepvit.training.recipe")).failed == 0
