"""The papers' training losses as `keras.losses.Loss` classes: label-smoothed and soft-target
cross-entropy, DeiT/PiT distillation, Refiner-ViT's dense (token-label) head and the official
attention-similarity regulariser.

Every loss takes logits (`from_logits=True` semantics) and computes in float32 whatever the
input dtype, so a `mixed_float16` / `mixed_bfloat16` model gets float32 losses.

Plain classification needs no class of ours: `keras.losses.CategoricalCrossentropy(
from_logits=True, label_smoothing=0.1)` is exactly the official loss (see
`classification_loss`).
"""

import keras
from keras import ops

#: Label smoothing of every official recipe (DeiT `--smoothing 0.1`; dvit_repo and
#: Refiner_ViT `scripts/*.yaml` `smoothing: 0.1`).
LABEL_SMOOTHING = 0.1
#: Weight of the distillation term (DeiT `--distillation-alpha 0.5`).
DISTILLATION_ALPHA = 0.5
#: Weight of the dense head's token loss (Refiner_ViT `scripts/*.yaml` `dense_weight: 0.5`).
DENSE_WEIGHT = 0.5
#: Weight of the attention-similarity term (`0.1 * cos_loss.mean() / n_comn` in both
#: repositories' `loss/cross_entropy.py`).
COS_REG_WEIGHT = 0.1
#: `torch.nn.CosineSimilarity`'s default eps.
_COSINE_EPS = 1e-8
_DISTILLATION_TYPES = ("hard", "soft")
_TOKEN_POOLING = (None, "mean")


def classification_loss(label_smoothing=LABEL_SMOOTHING, name="classification"):
    """The official classification loss: cross-entropy on logits with label smoothing.

    `keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=s)` replaces
    the targets `y` by `y * (1 - s) + s / classes`, which is exactly timm's
    `LabelSmoothingCrossEntropy(s)` for one-hot `y`. Because the smoothing is linear in
    `y`, it is also exactly timm's `SoftTargetCrossEntropy` on the targets timm's `Mixup`
    builds (mixing smoothed one-hots equals smoothing the mixed one-hots). So: pass
    one-hot or MixUp/CutMix-mixed labels that are *not* smoothed yet, or set
    `label_smoothing=0` for labels that already are. Integer labels must be one-hot
    encoded first.

    Args:
        label_smoothing: float in [0, 1).
        name: the loss' name.

    Returns:
        A `keras.losses.CategoricalCrossentropy` (computes in float32).

    Example:
    >>> import numpy as np
    >>> loss = classification_loss(0.1)
    >>> round(float(loss(np.eye(2, dtype="float32"), np.zeros((2, 2), "float32"))), 4)
    0.6931
    """
    _check_fraction("label_smoothing", label_smoothing)
    return keras.losses.CategoricalCrossentropy(
        from_logits=True, label_smoothing=label_smoothing, name=name
    )


@keras.saving.register_keras_serializable(package="keras_deepvit")
class DistillationLoss(keras.losses.Loss):
    """DeiT's distillation loss (Touvron et al. 2021, arXiv 2012.12877), as PiT trains with it.

    `(1 - alpha) * CE(cls_logits, labels) + alpha * D(dist_logits, teacher_logits)` with
    `D` one of (facebookresearch/deit `losses.py`):

    - "hard": cross-entropy against the teacher's argmax (no smoothing);
    - "soft": `tau**2 * KL(softmax(teacher / tau) || softmax(dist / tau))`, summed over
      classes and divided by the number of classes (DeiT divides the batch sum by
      `batch * classes`, "the legacy PyTorch behavior").

    The class-token term is `classification_loss(label_smoothing)` on the labels.

    Args:
        alpha: float in [0, 1], weight of the distillation term.
        distillation_type: "hard" (DeiT's and PiT's best) or "soft".
        tau: float > 0, softening temperature of "soft".
        label_smoothing: float, smoothing of the class-token term's labels.

    Call arguments:
        y_true: `(batch, classes)` one-hot or mixed labels.
        y_pred: `(batch, 3, classes)`: class-token logits, distillation-token logits and
            teacher logits, stacked on axis 1 (what `DistillationModel` outputs as
            `"distillation"`).

    Returns:
        The loss, per sample before Keras' reduction.

    Example:
    >>> import numpy as np
    >>> logits = np.zeros((1, 3, 4), "float32")
    >>> round(float(DistillationLoss(label_smoothing=0.0)(np.eye(4)[:1], logits)), 4)
    1.3863
    """

    def __init__(
        self,
        alpha=DISTILLATION_ALPHA,
        distillation_type="hard",
        tau=1.0,
        label_smoothing=LABEL_SMOOTHING,
        name="distillation",
        reduction="sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if distillation_type not in _DISTILLATION_TYPES:
            raise ValueError(
                f"distillation_type must be 'hard' or 'soft', got {distillation_type!r}."
            )
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}.")
        if not tau > 0:
            raise ValueError(f"tau must be positive, got {tau!r}.")
        _check_fraction("label_smoothing", label_smoothing)
        self.alpha = alpha
        self.distillation_type = distillation_type
        self.tau = tau
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        y_pred = ops.cast(y_pred, "float32")
        if len(y_pred.shape) != 3 or y_pred.shape[1] != 3:
            raise ValueError(
                "DistillationLoss expects y_pred of shape (batch, 3, classes) (class-token, "
                f"distillation-token and teacher logits stacked on axis 1), got {y_pred.shape}. "
                "Train through `DistillationModel`, which outputs it as 'distillation'."
            )
        cls_logits, dist_logits, teacher_logits = y_pred[:, 0], y_pred[:, 1], y_pred[:, 2]
        teacher_logits = ops.stop_gradient(teacher_logits)
        classes = y_pred.shape[-1]
        labels = _smooth(ops.cast(y_true, "float32"), self.label_smoothing, classes)
        base = _soft_cross_entropy(labels, cls_logits)
        if self.distillation_type == "hard":
            hard = ops.one_hot(ops.argmax(teacher_logits, axis=-1), classes, dtype="float32")
            distill = _soft_cross_entropy(hard, dist_logits)
        else:
            tau = float(self.tau)
            log_student = ops.log_softmax(dist_logits / tau, axis=-1)
            log_teacher = ops.log_softmax(teacher_logits / tau, axis=-1)
            kl = ops.sum(ops.exp(log_teacher) * (log_teacher - log_student), axis=-1)
            distill = kl * (tau * tau) / classes
        return (1.0 - self.alpha) * base + self.alpha * distill

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "alpha": self.alpha,
                "distillation_type": self.distillation_type,
                "tau": self.tau,
                "label_smoothing": self.label_smoothing,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_deepvit")
class TokenLabelCrossEntropy(keras.losses.Loss):
    """Refiner-ViT's dense-head loss: soft cross-entropy of every patch token's logits.

    The official training of the dense head (Refiner_ViT `loss/cross_entropy.py`
    `RelabelCrossEntropy`, used by every config with `return_dense: true`) computes the
    soft-target cross-entropy of each token's `aux_head` logits, averaged over all
    `batch * patches` tokens, and adds it with `dense_weight: 0.5` to the class-token
    loss. The token targets are:

    - without token-label maps (`relabel_data: null`, e.g. `scripts/refiner_l.yaml`):
      the image's (mixed, smoothed) label, the same for every token: pass
      `(batch, classes)` targets;
    - with token-label maps (the `*_relabel.yaml` configs, MixToken on): one soft target
      per patch token: pass `(batch, patches, classes)` targets. The official MixToken
      pastes a patch-aligned box of the flipped batch into the *token embeddings* and
      un-pastes the aux logits, so every token is scored against its own image's map
      and the class token against `lam * y + (1 - lam) * y.flip(0)`. A dataset can do the
      same loss with pixel-level patch-aligned CutMix and the token targets permuted the
      same way; that is exact for a patch-conv stem and an approximation for the
      convolutional stem (its receptive fields cross the box edge).

    `pooling="mean"` is the official alternative `RelabelPooledCrossEntropy`
    (`--dense-avg-pool`, no shipped config uses it): the mean over tokens of the aux
    logits against image-level targets.

    Args:
        label_smoothing: float, applied to the targets as Keras does,
            `y * (1 - s) + s / classes` (0 for targets smoothed already).
        pooling: None (per token, official) or "mean".
        weight: float, multiplies the loss (the official `dense_weight` is 0.5), so that
            `model.compile(loss={...})` needs no `loss_weights`.

    Call arguments:
        y_true: `(batch, classes)` image targets or `(batch, patches, classes)` token targets.
        y_pred: `(batch, patches, classes)` aux logits.

    Returns:
        The loss, per sample before Keras' reduction.

    Example:
    >>> import numpy as np
    >>> loss = TokenLabelCrossEntropy(label_smoothing=0.0, weight=1.0)
    >>> round(float(loss(np.eye(4)[:2], np.zeros((2, 9, 4), "float32"))), 4)
    1.3863
    """

    def __init__(
        self,
        label_smoothing=0.0,
        pooling=None,
        weight=1.0,
        name="token_label_crossentropy",
        reduction="sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        _check_fraction("label_smoothing", label_smoothing)
        if pooling not in _TOKEN_POOLING:
            raise ValueError(f"pooling must be None or 'mean', got {pooling!r}.")
        self.label_smoothing = label_smoothing
        self.pooling = pooling
        self.weight = weight

    def call(self, y_true, y_pred):
        y_pred = ops.cast(y_pred, "float32")
        if len(y_pred.shape) != 3:
            raise ValueError(
                "TokenLabelCrossEntropy expects aux logits of shape (batch, patches, classes), "
                f"got {y_pred.shape}."
            )
        classes = y_pred.shape[-1]
        y_true = _smooth(ops.cast(y_true, "float32"), self.label_smoothing, classes)
        if self.pooling == "mean":
            targets = ops.reshape(y_true, (-1, classes))
            return self.weight * _soft_cross_entropy(targets, ops.mean(y_pred, axis=1))
        # (batch, classes) and (batch, patches, classes) targets alike become
        # (batch, 1 or patches, classes), broadcast over the tokens; by reshape rather than
        # by rank, which a traced function need not know.
        targets = ops.reshape(y_true, (ops.shape(y_pred)[0], -1, classes))
        return self.weight * ops.mean(_soft_cross_entropy(targets, y_pred), axis=1)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"label_smoothing": self.label_smoothing, "pooling": self.pooling, "weight": self.weight}
        )
        return config


@keras.saving.register_keras_serializable(package="keras_deepvit")
class AttentionSimilarityLoss(keras.losses.Loss):
    """The official `cos_reg` regulariser: similarity of consecutive blocks' attention maps.

    Both repositories' `loss/cross_entropy.py` (`SoftTargetCrossEntropyCosReg`,
    `RelabelCrossEntropy`) add `0.1 * cos_loss.mean() / n_comn` with
    `cos_loss = sum_{i < n_comn} CosineSimilarity(dim=1)(atten[i], atten[i + 1])`:
    the maps `atten[i]` are `(batch, heads, tokens, tokens)`, the ones block `i` passes
    on (after re-attention / refinement), and the cosine is taken **over the head axis**
    for every (query, key) pair, then averaged over batch, queries and keys. Minimising
    it pushes consecutive blocks towards different head mixtures. The configs that
    enable it set `cos_reg_component: 12` (DeepViT-32B, Refiner-ViT); Refiner's
    `main.py` builds the no-token-label loss as `SoftTargetCrossEntropyCosReg()`, i.e.
    with the default `n_comn=2`, whatever the config says.

    The maps must come from the model being trained, best from the same forward pass as
    its logits: a `keras.Model` whose `call` runs
    `type(model).trace(model, images, return_attention_maps=True)` and stacks the first
    maps. (`model.attention_model()` shares the model's variables, so its maps train too,
    but it is a second forward pass.)

    Args:
        num_pairs: int, `n_comn`: the pairs `(0, 1) ... (num_pairs - 1, num_pairs)`.
        weight: float, the official 0.1.

    Call arguments:
        y_true: ignored (pass the labels; Keras needs a target per loss).
        y_pred: `(batch, num_pairs + 1, heads, tokens, tokens)`: the first
            `num_pairs + 1` blocks' maps stacked on axis 1 (more blocks are ignored).

    Returns:
        `weight / num_pairs * sum_i mean_{q, k} cos_i`, per sample.

    Example:
    >>> import numpy as np
    >>> maps = np.ones((2, 3, 4, 5, 5), "float32")
    >>> round(float(AttentionSimilarityLoss(num_pairs=2)(np.zeros((2, 1)), maps)), 4)
    0.1
    """

    def __init__(
        self,
        num_pairs=2,
        weight=COS_REG_WEIGHT,
        name="attention_similarity",
        reduction="sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if not isinstance(num_pairs, int) or num_pairs < 1:
            raise ValueError(f"num_pairs must be a positive int, got {num_pairs!r}.")
        self.num_pairs = num_pairs
        self.weight = weight

    def call(self, y_true, y_pred):
        maps = ops.cast(y_pred, "float32")
        if len(maps.shape) != 5 or (maps.shape[1] is not None and maps.shape[1] < self.num_pairs + 1):
            raise ValueError(
                f"AttentionSimilarityLoss(num_pairs={self.num_pairs}) expects maps of shape "
                f"(batch, >= {self.num_pairs + 1} blocks, heads, tokens, tokens), got {maps.shape}."
            )
        total = 0.0
        for i in range(self.num_pairs):
            a, b = maps[:, i], maps[:, i + 1]
            dot = ops.sum(a * b, axis=1)
            norms = ops.sqrt(ops.sum(a * a, axis=1) * ops.sum(b * b, axis=1))
            cosine = dot / ops.maximum(norms, _COSINE_EPS)
            total = total + ops.mean(cosine, axis=(1, 2))
        return self.weight * total / self.num_pairs

    def get_config(self):
        config = super().get_config()
        config.update({"num_pairs": self.num_pairs, "weight": self.weight})
        return config


def _soft_cross_entropy(targets, logits):
    """`-sum(targets * log_softmax(logits))` over the last axis (timm's SoftTargetCrossEntropy)."""
    return -ops.sum(targets * ops.log_softmax(logits, axis=-1), axis=-1)


def _smooth(targets, label_smoothing, classes):
    """Keras' label smoothing, `y * (1 - s) + s / classes`."""
    if not label_smoothing:
        return targets
    return targets * (1.0 - label_smoothing) + label_smoothing / classes


def _check_fraction(what, value):
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{what} must be in [0, 1), got {value!r}.")
