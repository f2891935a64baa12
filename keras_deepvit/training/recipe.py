"""The papers' training recipe (DeiT's, which all three follow) as Keras pieces.

AdamW (weight decay 0.05, none on biases, norms, position embeddings and class tokens),
a linear warm-up then cosine decay of the learning rate, label smoothing 0.1, optional
gradient clipping and weight EMA, and per-output losses for the models with two heads.

Where the numbers come from: facebookresearch/deit `main.py` (lr 5e-4 per 512 images,
warm-up 5 epochs from 1e-6, floor 1e-5, weight decay 0.05, smoothing 0.1, EMA 0.99996,
no clipping, drop path 0.1), and the same values in zhoudaquan/dvit_repo and
zhoudaquan/Refiner_ViT `scripts/*.yaml` (which train with timm's `train.py`); naver-ai/pit
publishes no training code, and its README reports its models trained with DeiT's recipe
("+DeiT") and DeiT's distillation ("+Distill").
"""

import dataclasses

import keras

from keras_deepvit.training.distillation import DistillationModel
from keras_deepvit.training.fused_adamw import AdamW
from keras_deepvit.training.losses import (
    DENSE_WEIGHT,
    DISTILLATION_ALPHA,
    LABEL_SMOOTHING,
    DistillationLoss,
    TokenLabelCrossEntropy,
    classification_loss,
)

BASE_LEARNING_RATE = 5e-4
BASE_BATCH_SIZE = 512
WEIGHT_DECAY = 0.05
WARMUP_EPOCHS = 5
WARMUP_LEARNING_RATE = 1e-6
MIN_LEARNING_RATE = 1e-5
#: timm/DeiT `model_ema_decay` (all official configs); pass it as `ema_decay` for a full
#: run. Not the default: Keras writes the averages into the model at the end of `fit`, and
#: over a short run a 0.99996 average is still mostly the initial weights.
EMA_DECAY = 0.99996
#: PyTorch's AdamW eps (DeiT `--opt-eps 1e-8`); Keras' default is 1e-7.
ADAM_EPSILON = 1e-8
#: Variables named so are not decayed whatever their rank: each official model's
#: `no_weight_decay()` returns {"pos_embed", "cls_token"}, the names our
#: `PositionEmbedding` and `ClassTokens` give their weights (the class token weight also
#: holds PiT's distillation token).
NO_WEIGHT_DECAY_NAMES = ("pos_embed", "cls_token")

#: Stochastic depth (`drop_path_rate`) of each registered variant's official training.
#: DeepViT: zhoudaquan/dvit_repo `scripts/*.yaml` `drop_path`. Refiner-ViT:
#: zhoudaquan/Refiner_ViT `scripts/*.yaml`; our variants have the dense head, so the
#: configs that train it (`return_dense: true`) give the value (the configs without the
#: head use 0.1 for S and 0.2 for M). PiT: DeiT `main.py` `--drop-path` default (no PiT
#: training code is published). Resolution variants without a config of their own take
#: their base model's value.
PAPER_DROP_PATH_RATES = {
    # No config published for DeepViT-16; its 24B / 32B siblings' configs use 0.2.
    "deepvit_16": 0.2,
    "deepvit_24": 0.2,  # DeepViT_24B_pure_transformer.yaml
    "deepvit_32": 0.2,  # DeepViT_32B_pure_transformer.yaml
    # The paper's ViT baselines: assumed trained like the DeepViT row they are compared with.
    "vit_16_baseline": 0.2,
    "vit_24_baseline": 0.2,
    "vit_32_baseline": 0.2,
    "deepvit_s": 0.2,  # DeepViT_S_CNN_patch.yaml
    "deepvit_l": 0.2,  # DeepViT_L_CNN_patch.yaml
    "deepvit_l_384": 0.2,  # no fine-tuning config; deepvit_l's
    "refiner_s": 0.2,  # refiner_s_relabel.yaml
    "refiner_s_384": 0.2,
    "refiner_m": 0.25,  # refiner_m_relabel.yaml
    "refiner_m_384": 0.25,
    "refiner_l": 0.25,  # refiner_l_relabel.yaml (224)
    "refiner_l_384": 0.25,
    "refiner_l_448": 0.2,  # refiner_l.yaml (img_size: 448)
    "pit_ti": 0.1,
    "pit_xs": 0.1,
    "pit_s": 0.1,
    "pit_b": 0.1,
    "pit_ti_distilled": 0.1,
    "pit_xs_distilled": 0.1,
    "pit_s_distilled": 0.1,
    "pit_b_distilled": 0.1,
}


def paper_drop_path_rate(name):
    """The stochastic-depth rate a registered variant was trained with (see `PAPER_DROP_PATH_RATES`).

    Example:
    >>> paper_drop_path_rate("deepvit_s")
    0.2
    """
    if name not in PAPER_DROP_PATH_RATES:
        raise ValueError(
            f"No paper drop-path rate for {name!r}; known variants: {sorted(PAPER_DROP_PATH_RATES)}."
        )
    return PAPER_DROP_PATH_RATES[name]


def scaled_learning_rate(batch_size, base_lr=BASE_LEARNING_RATE, base_batch=BASE_BATCH_SIZE):
    """DeiT's linear scaling rule: `base_lr * batch_size / base_batch` (global batch size).

    The DeepViT and Refiner-ViT configs give lr 5e-4 unscaled with 32 images per GPU;
    it equals this rule at a global batch of 512.

    Example:
    >>> scaled_learning_rate(1024)
    0.001
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int (the global batch), got {batch_size!r}.")
    return base_lr * batch_size / base_batch


def learning_rate_schedule(
    peak_lr, total_steps, warmup_steps, warmup_lr=WARMUP_LEARNING_RATE, min_lr=MIN_LEARNING_RATE
):
    """Linear warm-up from `warmup_lr` to `peak_lr`, then cosine decay to `min_lr`.

    It is `keras.optimizers.schedules.CosineDecay` exactly: `initial_learning_rate` is
    the warm-up start, `warmup_target` the peak, `decay_steps` the steps after warm-up,
    and `alpha = min_lr / peak_lr`, because Keras' floor is `alpha * warmup_target`:
    `peak * ((1 - alpha) * c + alpha) = min_lr + (peak - min_lr) * c` with
    `c = (1 + cos(pi * t / decay_steps)) / 2`. Past `total_steps` it stays at `min_lr`,
    so fitting longer reproduces the official 10 "cooldown" epochs at the floor.

    The official (timm) scheduler differs in small ways: it updates once per epoch, and
    its cosine runs over all epochs counted from the first (warm-up included), so at the
    end of warm-up it is already `cos(pi * 5 / 300)` below the peak (0.99973 of it).

    Args:
        peak_lr: float, learning rate at the end of warm-up.
        total_steps: int, optimizer steps of the whole run (warm-up included).
        warmup_steps: int in [0, total_steps).
        warmup_lr: float, learning rate at step 0.
        min_lr: float in [0, peak_lr], the floor.

    Returns:
        A `keras.optimizers.schedules.CosineDecay`.

    Example:
    >>> schedule = learning_rate_schedule(1e-3, total_steps=100, warmup_steps=10)
    >>> [round(float(schedule(s)), 6) for s in (0, 10, 100)]
    [1e-06, 0.001, 1e-05]
    """
    if not peak_lr > 0:
        raise ValueError(f"peak_lr must be positive, got {peak_lr!r}.")
    if not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be a positive int, got {total_steps!r}.")
    if not isinstance(warmup_steps, int) or not 0 <= warmup_steps < total_steps:
        raise ValueError(
            f"warmup_steps must be an int in [0, total_steps={total_steps}), got {warmup_steps!r}: "
            "the warm-up must end before the run does."
        )
    if not 0 <= min_lr <= peak_lr:
        raise ValueError(f"min_lr must be in [0, peak_lr={peak_lr}], got {min_lr!r}.")
    if warmup_steps == 0:
        return keras.optimizers.schedules.CosineDecay(
            peak_lr, decay_steps=total_steps, alpha=min_lr / peak_lr
        )
    return keras.optimizers.schedules.CosineDecay(
        warmup_lr,
        decay_steps=total_steps - warmup_steps,
        alpha=min_lr / peak_lr,
        warmup_target=peak_lr,
        warmup_steps=warmup_steps,
    )


def no_weight_decay_variables(model):
    """The trainable variables timm's rule exempts from weight decay.

    timm `add_weight_decay` (used by DeiT and both Zhou et al. repositories) skips every
    parameter with one dimension (biases, LayerNorm and BatchNorm gamma/beta,
    re-attention bias, Refiner's `scale_channel`) and the names the model's
    `no_weight_decay()` lists: `pos_embed` and `cls_token`. Kernels keep their decay,
    including the re-attention matrix and the refiner's 1x1 projections (4-D convolution
    weights in the official code, 2-D here).

    Args:
        model: a Keras model (or layer).

    Returns:
        A list of variables.

    Example:
    >>> import keras_deepvit
    >>> model = keras_deepvit.DeepViT(depth=1, embed_dim=16, num_heads=2, patch_size=8,
    ...     input_shape=(16, 16, 3), classes=3)
    >>> sorted(v.path for v in no_weight_decay_variables(model))[:3]
    ['blocks_0/attn/proj/bias', 'blocks_0/attn/qkv/bias', 'blocks_0/attn/reatten_bias']
    """
    return [
        v
        for v in model.trainable_variables
        if len(v.shape) <= 1 or v.name in NO_WEIGHT_DECAY_NAMES
    ]


def build_optimizer(model, learning_rate, weight_decay=WEIGHT_DECAY, clip_norm=None, ema_decay=None):
    """`keras.optimizers.AdamW` set up as the official recipe, for `model`'s variables.

    The optimiser is `training.fused_adamw.AdamW`: Keras' AdamW, updated by PyTorch's
    fused kernel on the PyTorch backend (the same numbers to float32 rounding).

    Weight decay skips `no_weight_decay_variables(model)` (through Keras'
    `exclude_from_weight_decay(var_list=...)`, so use the optimizer with this model).
    Keras decays as PyTorch's AdamW does, `v -= lr * wd * v` with the scheduled lr,
    before the Adam step; eps is PyTorch's 1e-8 (Keras adds it to `sqrt(v)` before bias
    correction, PyTorch after: a difference only in the first steps).

    `clip_norm` clips the global gradient norm (Keras `global_clipnorm`; timm's
    `--clip-grad`; none of the official configs clips). `ema_decay` keeps an exponential
    moving average of the trainable weights (Keras `use_ema=True, ema_momentum=...`;
    the official configs use 0.99996): add `keras.callbacks.SwapEMAWeights()` to `fit`
    (or `evaluate`) to evaluate with the averaged weights, and
    `SwapEMAWeights(swap_on_epoch=True)` before a `ModelCheckpoint` to save them. Keras
    ends `fit` by writing the averages into the model (`finalize_variable_values`), so
    after `fit` the model holds the EMA weights (the official scripts keep both and
    report the EMA model's accuracy). Unlike timm's `ModelEmaV2`, Keras averages
    trainable weights only: BatchNorm moving statistics stay the raw model's.

    Args:
        model: the Keras model to train.
        learning_rate: float or `keras.optimizers.schedules.LearningRateSchedule`.
        weight_decay: float.
        clip_norm: None or float > 0.
        ema_decay: None or float in (0, 1).

    Returns:
        A `keras.optimizers.AdamW`.

    Example:
    >>> import keras
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> build_optimizer(model, 1e-3, ema_decay=0.999).use_ema
    True
    """
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"clip_norm must be None or positive, got {clip_norm!r}.")
    if ema_decay is not None and not 0 < ema_decay < 1:
        raise ValueError(f"ema_decay must be None or in (0, 1), got {ema_decay!r}.")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}.")
    ema = {} if ema_decay is None else {"use_ema": True, "ema_momentum": ema_decay}
    optimizer = AdamW(
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=ADAM_EPSILON,
        global_clipnorm=clip_norm,
        **ema,
    )
    optimizer.exclude_from_weight_decay(var_list=no_weight_decay_variables(model))
    return optimizer


@dataclasses.dataclass
class Recipe:
    """What `recipe()` returns: compile with `model.compile(optimizer=r.optimizer,
    loss=r.loss, metrics=r.metrics)` and feed `fit` the labels through `r.targets`.

    Attributes:
        optimizer: the `keras.optimizers.AdamW`.
        loss: a loss, or a dict of losses keyed by output for dict-output models
            (their weights are inside the losses, so `fit` reports e.g.
            `aux_logits_loss` already multiplied by the dense weight).
        metrics: a list of metrics, or a dict `{"logits": [...]}`.
        schedule: the learning-rate schedule.
        output_keys: None for single-output models, else the model's output keys.
        learning_rate: the peak learning rate.
        total_steps, warmup_steps: ints.
    """

    optimizer: keras.optimizers.Optimizer
    loss: object
    metrics: object
    schedule: keras.optimizers.schedules.LearningRateSchedule
    output_keys: tuple
    learning_rate: float
    total_steps: int
    warmup_steps: int

    def targets(self, labels, token_labels=None):
        """The `y` for `fit`: the labels as the model's output structure needs them.

        Keras pairs every output of a dict-output model with a target of the same key,
        so the labels are repeated per key (`tf.data`:
        `ds.map(lambda x, y: (x, r.targets(y)))`). For Refiner-ViT's dense head,
        `token_labels` (`(batch, patches, classes)`) become the `"aux_logits"` target;
        without them each token is scored against the image label (official).

        Args:
            labels: `(batch, classes)` one-hot or mixed labels.
            token_labels: None or `(batch, patches, classes)` token targets.

        Returns:
            `labels`, or a dict keyed by the model's outputs.
        """
        if self.output_keys is None:
            if token_labels is not None:
                raise ValueError("token_labels need a model with a dense head (aux_logits).")
            return labels
        if token_labels is not None and "aux_logits" not in self.output_keys:
            raise ValueError(
                f"token_labels need a model with a dense head (aux_logits); outputs: {self.output_keys}."
            )
        return {
            key: token_labels if key == "aux_logits" and token_labels is not None else labels
            for key in self.output_keys
        }


def recipe(
    model,
    batch_size,
    epochs,
    steps_per_epoch,
    *,
    base_lr=BASE_LEARNING_RATE,
    weight_decay=WEIGHT_DECAY,
    warmup_epochs=WARMUP_EPOCHS,
    min_lr=MIN_LEARNING_RATE,
    warmup_lr=WARMUP_LEARNING_RATE,
    label_smoothing=LABEL_SMOOTHING,
    clip_norm=None,
    ema_decay=None,
    distillation_type="hard",
    distillation_alpha=DISTILLATION_ALPHA,
    distillation_tau=1.0,
    dense_weight=DENSE_WEIGHT,
):
    """The official training recipe for `model`: optimizer, schedule, losses and metrics.

    The peak learning rate is `scaled_learning_rate(batch_size, base_lr)`. The losses
    follow the model's outputs (models must output logits: build them with
    `classifier_activation=None`):

    - one output: `classification_loss(label_smoothing)`;
    - Refiner-ViT with `separate_heads=True` (`cls_logits`, `aux_logits`): the class-token
      loss plus `dense_weight` times `TokenLabelCrossEntropy` on the aux logits, against
      the image label or token targets (`Recipe.targets`), as Refiner_ViT's
      `RelabelCrossEntropy`;
    - a `DistillationModel` (distilled PiT + teacher): `DistillationLoss`
      (`(1 - alpha) * CE + alpha * distillation`, DeiT).

    Metrics are top-1 (and top-5 with more than 5 classes) accuracy of the eval output.
    Label smoothing applies to the labels given, so give unsmoothed one-hot or mixed
    labels (or pass `label_smoothing=0`).

    Args:
        model: the model to train.
        batch_size: int, the global batch size.
        epochs: int or float, the length of the schedule.
        steps_per_epoch: int, optimizer steps per epoch.
        base_lr, weight_decay, warmup_epochs, min_lr, warmup_lr, label_smoothing,
            clip_norm, ema_decay: as `scaled_learning_rate`, `learning_rate_schedule`
            and `build_optimizer` (the defaults are the papers').
        distillation_type, distillation_alpha, distillation_tau: `DistillationLoss`'s,
            for a `DistillationModel`.
        dense_weight: float, weight of the dense head's token loss.

    Returns:
        A `Recipe`.

    Example:
    >>> import keras_deepvit
    >>> model = keras_deepvit.DeepViT(depth=1, embed_dim=16, num_heads=2, patch_size=8,
    ...     input_shape=(16, 16, 3), classes=3, classifier_activation=None)
    >>> r = recipe(model, batch_size=256, epochs=300, steps_per_epoch=5000)
    >>> model.compile(optimizer=r.optimizer, loss=r.loss, metrics=r.metrics)
    >>> r.learning_rate, r.warmup_steps
    (0.00025, 25000)
    """
    if not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be a positive int, got {steps_per_epoch!r}.")
    if not epochs > 0:
        raise ValueError(f"epochs must be positive, got {epochs!r}.")
    total_steps = max(1, int(round(epochs * steps_per_epoch)))
    warmup_steps = int(round(warmup_epochs * steps_per_epoch))
    if warmup_steps >= total_steps:
        raise ValueError(
            f"warmup_epochs={warmup_epochs} does not end before the run (epochs={epochs}): "
            "pass a shorter warm-up (e.g. warmup_epochs=0 for a short fine-tune)."
        )
    peak_lr = scaled_learning_rate(batch_size, base_lr)
    if min_lr > peak_lr:
        raise ValueError(
            f"The scaled peak learning rate {peak_lr:g} (base_lr * batch_size / {BASE_BATCH_SIZE}) "
            f"is below min_lr={min_lr:g}: pass a smaller min_lr or a larger base_lr."
        )
    loss, output_keys, classes = _losses(
        model, label_smoothing, distillation_type, distillation_alpha, distillation_tau, dense_weight
    )
    schedule = learning_rate_schedule(
        peak_lr, total_steps, warmup_steps, warmup_lr=warmup_lr, min_lr=min_lr
    )
    optimizer = build_optimizer(
        model, schedule, weight_decay=weight_decay, clip_norm=clip_norm, ema_decay=ema_decay
    )
    metrics = _metrics(classes)
    if output_keys is not None:
        metrics = {"logits": metrics}
    return Recipe(
        optimizer=optimizer,
        loss=loss,
        metrics=metrics,
        schedule=schedule,
        output_keys=output_keys,
        learning_rate=peak_lr,
        total_steps=total_steps,
        warmup_steps=warmup_steps,
    )


def _losses(model, label_smoothing, distillation_type, alpha, tau, dense_weight):
    """(loss or dict of losses, output keys or None, classes) for `model`'s outputs."""
    if isinstance(model, DistillationModel):
        try:
            classes = model.student.output["logits"].shape[-1]
        except (AttributeError, ValueError, KeyError, TypeError):  # a student not built yet
            classes = None
        loss = {
            "distillation": DistillationLoss(
                alpha=alpha, distillation_type=distillation_type, tau=tau,
                label_smoothing=label_smoothing,
            )
        }
        return loss, ("logits", "distillation"), classes
    outputs = _symbolic_output(model)
    if not isinstance(outputs, dict):
        activation = _config_value(model, "classifier_activation")
        if activation is not None:
            raise ValueError(
                f"The recipe's losses take logits, but {model.name!r} ends in "
                f"classifier_activation={activation!r}; build it with classifier_activation=None."
            )
        return classification_loss(label_smoothing), None, outputs.shape[-1]
    keys = tuple(outputs)
    if "aux_logits" in outputs and "cls_logits" in outputs:
        loss = {
            "cls_logits": classification_loss(label_smoothing, name="cls"),
            "aux_logits": TokenLabelCrossEntropy(
                label_smoothing=label_smoothing, weight=dense_weight, name="aux"
            ),
        }
        return loss, keys, outputs["logits"].shape[-1]
    if "dist_logits" in outputs:
        raise ValueError(
            f"{model.name!r} has a distillation head, which trains against a teacher: wrap it as "
            "DistillationModel(student, teacher) and pass that to recipe() (or build it with "
            "separate_heads=False to train on labels only)."
        )
    raise ValueError(f"recipe() does not know the outputs {sorted(keys)} of {model.name!r}.")


def _symbolic_output(model):
    """The model's symbolic output structure (functional and Sequential models)."""
    try:
        return model.output
    except (AttributeError, ValueError):
        pass
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        outputs = None
    if outputs and len(outputs) == 1:
        return outputs[0]
    raise ValueError(
        f"recipe() needs a built functional or Sequential model with one output or a dict of "
        f"outputs (or a DistillationModel); {model.name!r} has no symbolic output to read. "
        "Build it with a keras.Input first."
    )


def _config_value(model, key):
    try:
        return model.get_config().get(key)
    except (NotImplementedError, TypeError):
        return None


def _metrics(classes):
    metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    if classes is not None and classes > 5:
        metrics.append(Float32TopKCategoricalAccuracy(k=5, name="top5"))
    return metrics


@keras.saving.register_keras_serializable(package="keras_deepvit")
class Float32TopKCategoricalAccuracy(keras.metrics.TopKCategoricalAccuracy):
    """`keras.metrics.TopKCategoricalAccuracy` on float32 predictions.

    On TensorFlow, Keras' top-k accuracy fails on the float16 logits of a
    `mixed_float16` model (`tf.math.in_top_k` takes float32 only); the cast is exact.

    Example:
    >>> import numpy as np
    >>> metric = Float32TopKCategoricalAccuracy(k=1)
    >>> metric.update_state(np.eye(2), np.eye(2, dtype="float16"))
    >>> float(metric.result())
    1.0
    """

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(y_true, keras.ops.cast(y_pred, "float32"), sample_weight)
