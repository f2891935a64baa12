"""DeiT-style distillation training: a student with a distillation token and a frozen teacher."""

import keras
from keras import ops

from keras_deepvit.models.gradient_release import ReleasesGradients

_TEACHER_OUTPUTS = ("logits", "probabilities")
_STUDENT_KEYS = ("logits", "cls_logits", "dist_logits")
#: Floor of teacher probabilities before the log (float32 eps); only `teacher_outputs="probabilities"`.
_PROBABILITY_FLOOR = 1.1920929e-07


@keras.saving.register_keras_serializable(package="keras_deepvit")
class DistillationModel(ReleasesGradients, keras.Model):
    """Wraps a distilled student and a frozen teacher so `fit` trains DeiT's way on any backend.

    DeiT (facebookresearch/deit `losses.py`) and PiT run the teacher on the same
    (augmented, mixed) images inside every training step, without gradients and in
    inference mode. This model does exactly that in `call`: the student's class and
    distillation heads and `stop_gradient(teacher(images, training=False))` are stacked
    into one `(batch, 3, classes)` output, `"distillation"`, which
    `losses.DistillationLoss` turns into `(1 - alpha) * CE + alpha * distillation`. The
    teacher is set `trainable = False`, so its variables are not trained (the optimizer
    never sees them) and its BatchNorm statistics do not move. Any Keras model that maps
    the same images to `(batch, classes)` logits can teach; one that ends in a softmax
    needs `teacher_outputs="probabilities"` (its log-probabilities are then used, which
    give the same softmax at every temperature).

    Evaluate and deploy the student itself (`model.student`, the eval output is the mean
    of both heads); the wrapper exists for training.

    Args:
        student: a model returning a dict with "logits", "cls_logits" and "dist_logits",
            e.g. `PiT(..., distilled=True, separate_heads=True, classifier_activation=None)`.
        teacher: a Keras model, `(batch, classes)` output.
        teacher_outputs: "logits" or "probabilities".

    Call arguments:
        images: the student's input.
        training: bool, the student's mode (the teacher always runs in inference mode).

    Returns:
        `{"logits": student eval logits, "distillation": (batch, 3, classes) stack of the
        class-token, distillation-token and teacher logits}` (float32).

    Example:
    >>> import numpy as np, keras, keras_deepvit
    >>> student = keras_deepvit.PiT(base_dims=(8, 8), depth=(1, 1), heads=(2, 4), input_shape=(32, 32, 3),
    ...     classes=10, distilled=True, separate_heads=True, classifier_activation=None)
    >>> teacher = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(10)])
    >>> out = DistillationModel(student, teacher)(np.zeros((2, 32, 32, 3), "float32"))
    >>> tuple(out["distillation"].shape)
    (2, 3, 10)
    """

    def __init__(self, student, teacher, teacher_outputs="logits", **kwargs):
        super().__init__(**kwargs)
        if teacher_outputs not in _TEACHER_OUTPUTS:
            raise ValueError(
                f"teacher_outputs must be 'logits' or 'probabilities', got {teacher_outputs!r}."
            )
        _check_student(student)
        self.student = student
        self.teacher = teacher
        self.teacher.trainable = False
        self.teacher_outputs = teacher_outputs

    def call(self, images, training=None):
        outputs = self.student(images, training=training)
        if not isinstance(outputs, dict) or any(k not in outputs for k in _STUDENT_KEYS):
            raise ValueError(
                "DistillationModel's student must return a dict with 'logits', 'cls_logits' "
                f"and 'dist_logits' (a distilled PiT with separate_heads=True); got {_describe(outputs)}."
            )
        teacher = self.teacher(images, training=False)
        if isinstance(teacher, (dict, list, tuple)):
            raise ValueError(
                "DistillationModel's teacher must return one (batch, classes) tensor, got "
                f"{_describe(teacher)}."
            )
        teacher = ops.stop_gradient(ops.cast(teacher, "float32"))
        if self.teacher_outputs == "probabilities":
            teacher = ops.log(ops.maximum(teacher, _PROBABILITY_FLOOR))
        heads = [ops.cast(outputs[k], "float32") for k in ("cls_logits", "dist_logits")]
        if teacher.shape[-1] is not None and heads[0].shape[-1] != teacher.shape[-1]:
            raise ValueError(
                f"The teacher predicts {teacher.shape[-1]} classes and the student "
                f"{heads[0].shape[-1]}; they must agree."
            )
        return {
            "logits": ops.cast(outputs["logits"], "float32"),
            "distillation": ops.stack(heads + [teacher], axis=1),
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "student": keras.saving.serialize_keras_object(self.student),
                "teacher": keras.saving.serialize_keras_object(self.teacher),
                "teacher_outputs": self.teacher_outputs,
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        for key in ("student", "teacher"):
            config[key] = keras.saving.deserialize_keras_object(config[key], custom_objects=custom_objects)
        return cls(**config)


def _check_student(student):
    """Fails early for a functional student whose outputs are not the distilled dict."""
    try:
        outputs = student.output
    except (AttributeError, ValueError):  # a subclassed model not called yet: checked in call
        return
    if not isinstance(outputs, dict) or any(k not in outputs for k in _STUDENT_KEYS):
        raise ValueError(
            "DistillationModel's student must return a dict with 'logits', 'cls_logits' and "
            f"'dist_logits'; got {_describe(outputs)}. Build it with distilled=True and "
            "separate_heads=True (e.g. create_model('pit_s_distilled', separate_heads=True, "
            "classifier_activation=None))."
        )


def _describe(value):
    if isinstance(value, dict):
        return f"a dict with keys {sorted(value)}"
    return f"{type(value).__name__} {getattr(value, 'shape', '')}".strip()
