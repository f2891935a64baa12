"""Transfer learning with a keras-deepvit model: freeze the backbone and train a new head,
then unfreeze everything and fine-tune at a lower learning rate.

Uses TensorFlow Datasets' `tf_flowers` when it is already prepared locally (TFDS' data
directory, or `--data-dir`), else the embedded handwritten digits, so it runs offline.
Starts from `--weights` (e.g. `imagenet` once the checkpoint is in the cache, or any
checkpoint path); without weights both stages train from the official initialisation.

Needs: `pip install -e ".[train]"`; any backend (`KERAS_BACKEND`, default TensorFlow).
On 2 CPU cores the digits run takes a few minutes.

    python examples/transfer_learning.py [--model pit_ti] [--weights imagenet] [--epochs 3 3]
"""

import argparse

import keras
import tensorflow_datasets as tfds

import keras_deepvit
from keras_deepvit.training import AugmentConfig, load_dataset, recipe


def pick_dataset(data_dir):
    """`tfds:tf_flowers` when prepared locally (no download), else the embedded digits."""
    try:
        builder = tfds.builder("tf_flowers", data_dir=data_dir)
        if builder.is_prepared():
            return "tfds:tf_flowers", {"train": "train[:85%]", "validation": "train[85%:]"}, 128
    except Exception:  # noqa: BLE001 - any TFDS failure means "not available here"
        pass
    return "digits", {"train": "train", "validation": "validation"}, 32


def compile_stage(model, batch_size, epochs, steps, base_lr):
    training = recipe(model, batch_size, epochs, steps, base_lr=base_lr, warmup_epochs=0)
    model.compile(optimizer=training.optimizer, loss=training.loss, metrics=training.metrics)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="pit_ti")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--epochs", type=int, nargs=2, default=(3, 3), metavar=("HEAD", "FINETUNE"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)

    spec, splits, size = pick_dataset(args.data_dir)
    common = dict(image_size=size, batch_size=args.batch_size, variant=args.model, one_hot=True, seed=0,
                  data_dir=args.data_dir, download=False)
    augment = AugmentConfig.light() if size < 64 else AugmentConfig(mixup_alpha=0.0, cutmix_alpha=0.0)
    train, info = load_dataset(spec, split=splits["train"], training=True, augment=augment, **common)
    validation, _ = load_dataset(spec, split=splits["validation"], training=False, **common)
    print(f"{spec}: {info.num_examples} training images, {info.num_classes} classes, {size}x{size}")

    model = keras_deepvit.create_model(
        args.model, weights=args.weights, input_shape=(size, size, 3), classes=info.num_classes,
        classifier_activation=None,
    )
    heads = {"head", "head_dist", "aux_head"}

    # Stage 1: only the new head(s) train.
    for layer in model.layers:
        layer.trainable = layer.name in heads
    compile_stage(model, args.batch_size, args.epochs[0], info.steps_per_epoch, base_lr=8e-3)
    model.fit(train, validation_data=validation, epochs=args.epochs[0], shuffle=False)

    # Stage 2: everything trains, at a tenth of the learning rate.
    for layer in model.layers:
        layer.trainable = True
    compile_stage(model, args.batch_size, args.epochs[1], info.steps_per_epoch, base_lr=8e-4)
    model.fit(train, validation_data=validation, epochs=args.epochs[1], shuffle=False)
    result = model.evaluate(validation, return_dict=True, verbose=0)
    print(f"validation accuracy after fine-tuning: {100 * result['accuracy']:.1f} %")
    model.save("transfer_learning.keras")
    print("saved transfer_learning.keras")
    return result


if __name__ == "__main__":
    main()
