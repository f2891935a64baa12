"""Training: the papers' recipe as Keras pieces, data pipelines, distribution, the train job.

- `recipe(model, batch_size, epochs, steps_per_epoch)`: AdamW with the papers'
  weight-decay exclusions, warm-up + cosine schedule, losses and metrics;
  `build_optimizer`, `learning_rate_schedule`, `no_weight_decay_variables`.
- Losses: `classification_loss` (label smoothing, soft MixUp/CutMix targets),
  `DistillationLoss` with `DistillationModel` (a frozen teacher in the train
  step), `TokenLabelCrossEntropy` (Refiner-ViT's dense head),
  `AttentionSimilarityLoss` (the official `cos_reg`).
- Data: `load_dataset("digits" | "tfds:NAME" | FOLDER, ...)`, `eval_transform`,
  `AugmentConfig` (DeiT's augmentation from Keras' own layers, inside tf.data).
- `distribution_scope`: JAX `DataParallel` (multi-host too) or TensorFlow
  `MirroredStrategy`.
- `run_training(TrainingConfig(...))`: the `keras-deepvit train` job.

The data pipelines, the augmentation and the job need TensorFlow (`tf.data`) and
are imported on first use: the recipe, the losses and the optimiser do not import
it, so a PyTorch or JAX user of `model.fit` does not load TensorFlow
(docs/performance.md, training memory).
"""

import importlib

from keras_deepvit.training.distillation import DistillationModel
from keras_deepvit.training.distribute import describe_distribution, distribution_scope
from keras_deepvit.training.losses import (
    AttentionSimilarityLoss,
    DistillationLoss,
    TokenLabelCrossEntropy,
    classification_loss,
)
from keras_deepvit.training.recipe import (
    Recipe,
    build_optimizer,
    learning_rate_schedule,
    no_weight_decay_variables,
    paper_drop_path_rate,
    recipe,
    scaled_learning_rate,
)

#: Names whose modules import TensorFlow, each imported on first access.
_NEEDS_TENSORFLOW = {
    "AugmentConfig": "augment", "augment_dataset": "augment",
    "DatasetInfo": "data", "eval_transform": "data", "load_dataset": "data",
    "TrainingConfig": "job", "run_training": "job",
}

__all__ = [
    "AttentionSimilarityLoss", "AugmentConfig", "DatasetInfo", "DistillationLoss", "DistillationModel",
    "Recipe", "TokenLabelCrossEntropy", "TrainingConfig", "augment_dataset", "build_optimizer",
    "classification_loss", "describe_distribution", "distribution_scope", "eval_transform",
    "learning_rate_schedule", "load_dataset", "no_weight_decay_variables", "paper_drop_path_rate",
    "recipe", "run_training", "scaled_learning_rate",
]


def __getattr__(name):
    if name not in _NEEDS_TENSORFLOW:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_NEEDS_TENSORFLOW[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
