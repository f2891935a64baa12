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
"""

from keras_deepvit.training.augment import AugmentConfig, augment_dataset
from keras_deepvit.training.data import DatasetInfo, eval_transform, load_dataset
from keras_deepvit.training.distillation import DistillationModel
from keras_deepvit.training.distribute import describe_distribution, distribution_scope
from keras_deepvit.training.job import TrainingConfig, run_training
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

__all__ = [
    "AttentionSimilarityLoss", "AugmentConfig", "DatasetInfo", "DistillationLoss", "DistillationModel",
    "Recipe", "TokenLabelCrossEntropy", "TrainingConfig", "augment_dataset", "build_optimizer",
    "classification_loss", "describe_distribution", "distribution_scope", "eval_transform",
    "learning_rate_schedule", "load_dataset", "no_weight_decay_variables", "paper_drop_path_rate",
    "recipe", "run_training", "scaled_learning_rate",
]
