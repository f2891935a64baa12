"""`keras-deepvit train`: one command from a dataset to a trained, evaluated, saved model.

`run_training(TrainingConfig(...))` validates every argument before anything
heavy starts, builds the data pipelines and the model (optionally from
pretrained weights, with a fresh head for another number of classes), compiles
it with the papers' recipe and trains it with `model.fit`, writing into the
output directory:

- `backup/`: `keras.callbacks.BackupAndRestore`'s state, saved every epoch: the
  same command after a kill resumes from the last finished epoch;
- `history.csv` (`CSVLogger`, appended across resumed runs) and `tensorboard/`;
- `checkpoints/last.keras` after every epoch (`ModelCheckpoint`);
- `model.keras` (the final model), `evaluation.json` (final validation metrics)
  and `curves.png` (loss and accuracy per epoch).
"""

import dataclasses
import json
import logging
import os
import time

import keras

from keras_deepvit.training import curves
from keras_deepvit.training.augment import AugmentConfig
from keras_deepvit.training.data import load_dataset
from keras_deepvit.training.distillation import DistillationModel
from keras_deepvit.training.distribute import distribution_scope
from keras_deepvit.training.recipe import paper_drop_path_rate, recipe
from keras_deepvit.zoo.registry import create_model, variant_info

logger = logging.getLogger(__name__)

#: The embedded default run: PiT-Ti on scikit-learn's digits at 32x32.
DEFAULT_MODEL = "pit_ti"
DEFAULT_IMAGE_SIZE = {"digits": 32}
MIXED_PRECISION = {"float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}


@dataclasses.dataclass
class TrainingConfig:
    """Everything `keras-deepvit train` takes (see `keras-deepvit train --help`).

    Attributes:
        model: a registered name (`keras-deepvit list`).
        data: "digits" (embedded, offline), "tfds:NAME[:SPLIT]" or a folder of
            class sub-folders.
        weights: None, "imagenet" or a checkpoint / `.keras` path; with another
            number of classes the backbone loads and the head is fresh.
        epochs, batch_size: the run's length and global batch.
        image_size: square input size; default 32 for digits, else the variant's.
        mixed_precision: None, "float16" or "bfloat16".
        distribute: a `keras_deepvit.training.distribute.KINDS` value: "auto"
            (every device when there are several), "none", "data_parallel" or
            "multi_host" (JAX only; the cluster from `coordinator`,
            `num_processes`, `process_id` or Keras' environment variables).
        coordinator, num_processes, process_id: the JAX cluster, for "multi_host".
        output: the run's directory.
        learning_rate: base learning rate at batch 512 (scaled linearly);
            default the papers' 5e-4.
        warmup_epochs: linear warm-up length; default 5, at most a third of the run.
        augment: "auto" (DeiT's recipe, or the light one for images under 64 px),
            "deit", "light" or "none".
        drop_path_rate: default the paper's value for the family.
        teacher: a `.keras` model (same input and classes) that a distilled PiT
            learns from, DeiT-style (hard distillation); the student is saved.
        model_kwargs: any other family argument (e.g. `{"depth": [1, 1, 1]}`).
        seed: seed of the weights and the data order.
        verbose: `fit`'s verbosity (1: progress bars).
    """

    model: str = DEFAULT_MODEL
    data: str = "digits"
    weights: str = None
    epochs: int = 10
    batch_size: int = 64
    image_size: int = None
    mixed_precision: str = None
    distribute: str = "auto"
    coordinator: str = None
    num_processes: int = None
    process_id: int = None
    output: str = "keras-deepvit-run"
    learning_rate: float = None
    warmup_epochs: float = None
    augment: str = "auto"
    drop_path_rate: float = None
    teacher: str = None
    model_kwargs: dict = dataclasses.field(default_factory=dict)
    seed: int = 0
    verbose: int = 1


def validate(config):
    """Checks every argument that needs no data or model; raises one clear ValueError."""
    record = variant_info(config.model)
    if not isinstance(config.epochs, int) or config.epochs < 1:
        raise ValueError(f"--epochs must be a positive int, got {config.epochs!r}.")
    if not isinstance(config.batch_size, int) or config.batch_size < 1:
        raise ValueError(f"--batch-size must be a positive int, got {config.batch_size!r}.")
    if config.mixed_precision not in (None, *MIXED_PRECISION):
        raise ValueError(f"--mixed-precision must be float16 or bfloat16, got {config.mixed_precision!r}.")
    if config.augment not in ("auto", "deit", "light", "none"):
        raise ValueError(f"--augment must be auto, deit, light or none, got {config.augment!r}.")
    if config.teacher is not None:
        if not record.arch.get("distilled"):
            raise ValueError(
                f"--teacher trains a distilled PiT (e.g. pit_ti_distilled); {config.model} has no "
                "distillation head."
            )
        if not (str(config.teacher).endswith(".keras") and os.path.isfile(config.teacher)):
            raise ValueError(f"--teacher must be a .keras model file, got {config.teacher!r}.")
    data = config.data
    if not (data == "digits" or data.startswith("tfds:")):
        if not os.path.isdir(data):
            raise ValueError(
                f"--data {data!r}: no such folder. Use 'digits' (embedded), 'tfds:NAME' or a "
                "folder with one sub-folder of images per class."
            )
    size = image_size(config)
    patch = config.model_kwargs.get("patch_size", record.arch.get("patch_size", 16))
    if size < patch:
        raise ValueError(
            f"--image-size {size} is smaller than one {patch}x{patch} patch of {config.model}; "
            f"use at least {patch}."
        )
    if record.family_name != "pit" and size % patch:
        logger.warning(
            "--image-size %d is not a multiple of %s's patch size %d: the stem drops the last %d "
            "rows and columns.", size, config.model, patch, size % patch,
        )
    return record


def image_size(config):
    """The run's square input size."""
    if config.image_size is not None:
        if not isinstance(config.image_size, int) or config.image_size < 1:
            raise ValueError(f"--image-size must be a positive int, got {config.image_size!r}.")
        return config.image_size
    return DEFAULT_IMAGE_SIZE.get(config.data, variant_info(config.model).size)


def augmentation(config, size):
    """The `AugmentConfig` of `--augment`, or None."""
    choice = config.augment
    if choice == "auto":
        choice = "light" if size < 64 else "deit"
    return {"deit": AugmentConfig(), "light": AugmentConfig.light(), "none": None}[choice]


def _paths(output):
    return {
        "output": output,
        "backup": os.path.join(output, "backup"),
        "history": os.path.join(output, "history.csv"),
        "tensorboard": os.path.join(output, "tensorboard"),
        "checkpoint": os.path.join(output, "checkpoints", "last.keras"),
        "model": os.path.join(output, "model.keras"),
        "evaluation": os.path.join(output, "evaluation.json"),
        "curves": os.path.join(output, "curves.png"),
    }


def _accuracy_key(history):
    return next((k for k in ("accuracy", "logits_accuracy") if k in history), None)


#: Settings that must not change when a run resumes in the same directory.
_RESUME_KEYS = ("model", "data", "weights", "batch_size", "image_size", "mixed_precision", "model_kwargs")


def _claim_output(config, size, paths):
    """Records the run's settings; refuses a directory holding another run's backup."""
    os.makedirs(os.path.dirname(paths["checkpoint"]), exist_ok=True)
    settings = {k: getattr(config, k) for k in _RESUME_KEYS} | {"image_size": size}
    path = os.path.join(paths["output"], "run.json")
    if os.path.exists(path) and os.path.isdir(paths["backup"]):
        with open(path) as handle:
            previous = json.load(handle)
        changed = {k: (previous.get(k), v) for k, v in settings.items() if previous.get(k) != v}
        if changed:
            details = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise ValueError(
                f"--output {paths['output']} holds a run with other settings ({details}); resuming it "
                "would mix them. Use another --output, or delete that directory to start over."
            )
    with open(path, "w") as handle:
        json.dump(settings, handle, indent=2)


def _with_teacher(student, path):
    """The student wrapped with its frozen teacher (`DistillationModel`)."""
    teacher = keras.saving.load_model(path, compile=False)
    config = teacher.get_config() if hasattr(teacher, "get_config") else {}
    outputs = "probabilities" if config.get("classifier_activation") == "softmax" else "logits"
    model = DistillationModel(student, teacher, teacher_outputs=outputs)
    model(keras.ops.zeros((1,) + tuple(student.input_shape[1:])))  # BackupAndRestore needs it built
    return model


def run_training(config):
    """Trains `config.model` on `config.data`; returns a dict of results and output paths."""
    record = validate(config)
    size = image_size(config)
    paths = _paths(os.path.abspath(config.output))
    _claim_output(config, size, paths)
    # First: on JAX the cluster must be joined before anything computes.
    setup = distribution_scope(config.distribute, config.coordinator, config.num_processes, config.process_id)
    if not setup.is_chief:  # every process trains; each writes its own files
        paths = _paths(os.path.join(paths["output"], f"process-{setup.process_id}"))
        _claim_output(config, size, paths)
    keras.utils.set_random_seed(config.seed)

    augment = augmentation(config, size)
    common = dict(image_size=size, batch_size=config.batch_size, variant=config.model, one_hot=True,
                  seed=config.seed)
    train_data, train_info = load_dataset(config.data, split="train", augment=augment, **common)
    # Digits fill their frame: the variant's ImageNet crop would cut their edges.
    crop = {"crop_pct": 1.0} if config.data == "digits" else {}
    val_data, val_info = load_dataset(config.data, split="validation", **common, **crop)
    if train_info.num_classes < 2:
        raise ValueError(f"--data {config.data!r} has {train_info.num_classes} class; training needs at least 2.")
    logger.info("%s", setup.describe(config.batch_size))

    with setup:
        arguments = dict(
            input_shape=(size, size, 3), classes=train_info.num_classes, classifier_activation=None,
            drop_path_rate=(paper_drop_path_rate(config.model) if config.drop_path_rate is None
                            else config.drop_path_rate),
        )
        if record.family_name == "refiner":
            arguments["separate_heads"] = True  # the dense head trains too, as in the official code
        if config.mixed_precision:
            arguments["dtype"] = MIXED_PRECISION[config.mixed_precision]
        arguments.update(config.model_kwargs)
        if config.teacher is not None:
            arguments["separate_heads"] = True
        model = create_model(config.model, weights=config.weights, **arguments)
        student = model
        if config.teacher is not None:
            model = _with_teacher(model, config.teacher)
        warmup = config.warmup_epochs
        if warmup is None:
            warmup = min(5.0, config.epochs / 3)
        training = recipe(
            model, config.batch_size, config.epochs, train_info.steps_per_epoch,
            base_lr=config.learning_rate or 5e-4, warmup_epochs=warmup,
        )
        model.compile(optimizer=training.optimizer, loss=training.loss, metrics=training.metrics)
        if training.output_keys is not None:
            train_data = train_data.map(lambda x, y: (x, training.targets(y)))
            val_data = val_data.map(lambda x, y: (x, training.targets(y)))
        callbacks = [
            keras.callbacks.BackupAndRestore(paths["backup"], save_freq="epoch", delete_checkpoint=False),
            keras.callbacks.CSVLogger(paths["history"], append=True),
            keras.callbacks.TensorBoard(paths["tensorboard"]),
            keras.callbacks.ModelCheckpoint(paths["checkpoint"]),
        ]
        start = time.monotonic()
        model.fit(train_data, validation_data=val_data, epochs=config.epochs, callbacks=callbacks,
                  verbose=config.verbose, shuffle=False)  # the pipeline shuffles
        seconds = time.monotonic() - start
        evaluation = model.evaluate(val_data, return_dict=True, verbose=0)
    student.save(paths["model"])
    with open(paths["evaluation"], "w") as handle:
        json.dump({k: float(v) for k, v in evaluation.items()}, handle, indent=2)
    history = curves.read_history(paths["history"])
    curves.plot_history(history, paths["curves"], title=f"{config.model} on {config.data}")
    accuracy = evaluation.get(_accuracy_key(evaluation) or "", float("nan"))
    return {
        "model": config.model, "data": config.data, "epochs": len(history["epoch"]),
        "train_examples": train_info.num_examples, "validation_examples": val_info.num_examples,
        "skipped_files": train_info.skipped + val_info.skipped, "val_accuracy": float(accuracy),
        "evaluation": {k: float(v) for k, v in evaluation.items()}, "seconds": seconds,
        "paths": paths,
    }


def format_summary(result):
    """The lines `keras-deepvit train` prints at the end."""
    paths = result["paths"]
    lines = [
        f"trained {result['model']} on {result['data']} for {result['epochs']} epochs "
        f"({result['train_examples']} training / {result['validation_examples']} validation images"
        + (f", {result['skipped_files']} unreadable files skipped" if result["skipped_files"] else "")
        + f"; this run {result['seconds']:.0f} s)",
        f"validation accuracy: {100 * result['val_accuracy']:.2f} %",
        f"model:        {paths['model']}",
        f"evaluation:   {paths['evaluation']}",
        f"curves:       {paths['curves']}",
        f"history:      {paths['history']}  (TensorBoard: tensorboard --logdir {paths['tensorboard']})",
        f"checkpoints:  {paths['checkpoint']}  (resume: run the same command again)",
    ]
    return lines
