"""Data pipelines and augmentation of `keras_deepvit.training`: digits, folders, TFDS,
the evaluation transform, DeiT's augmentation, and a `fit` step on every backend."""

import doctest
import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_deepvit.training import augment, data, digits
from keras_deepvit.training.augment import AugmentConfig, TimmRandAugment
from keras_deepvit.training.data import eval_transform, load_dataset
from keras_deepvit.zoo.records import RECORDS

# Crops, flips, erasing and mixing: every seeded stage without RandAugment's tracing cost.
CHEAP_DEIT = AugmentConfig(rand_augment_ops=0)


def batches(dataset, count=1):
    iterator = iter(dataset)
    return [tuple(t.numpy() for t in next(iterator)) for _ in range(count)]


def test_digits_splits_are_stratified_disjoint_and_fixed():
    labels = np.repeat(np.arange(10), 23)
    train = digits.stratified_split(labels, "train")
    validation = digits.stratified_split(labels, "validation")
    assert set(train).isdisjoint(validation)
    assert sorted(np.concatenate([train, validation])) == list(range(len(labels)))
    assert np.bincount(labels[validation]).tolist() == [4] * 10  # floor(23 * 0.2) per class
    with pytest.raises(ValueError, match="split must be one of"):
        digits.stratified_split(labels, "test")

    images, targets = digits.load_digits("train", image_size=(12, 16))
    val_images, val_targets = digits.load_digits("validation", image_size=(12, 16))
    assert images.shape == (1442, 12, 16, 3) and images.dtype == np.uint8
    assert val_images.shape == (355, 12, 16, 3)
    assert images.min() == 0 and images.max() == 255
    assert np.array_equal(images[..., 0], images[..., 2])  # grey, as RGB
    assert set(targets) == set(val_targets) == set(range(10))
    assert targets.dtype == np.int32


def test_digits_pipeline_is_reproducible_from_a_seed():
    dataset, info = load_dataset("digits", image_size=16, batch_size=32, augment=CHEAP_DEIT, seed=7)
    assert (info.num_classes, info.num_examples, info.split, info.one_hot) == (10, 1442, "train", True)
    assert info.class_names == digits.CLASS_NAMES and info.steps_per_epoch == 1442 // 32
    first = batches(dataset, 2)  # the second batch comes after the Keras layers' state moved on
    images, labels = first[0]
    assert images.shape == (32, 16, 16, 3) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 255.0
    assert labels.shape == (32, 10)
    again = batches(load_dataset("digits", image_size=16, batch_size=32, augment=CHEAP_DEIT, seed=7)[0], 2)
    other = batches(load_dataset("digits", image_size=16, batch_size=32, augment=CHEAP_DEIT, seed=8)[0])
    for (x, y), (x_again, y_again) in zip(first, again):
        np.testing.assert_array_equal(x, x_again)
        np.testing.assert_array_equal(y, y_again)
    assert not np.array_equal(first[0][0], other[0][0])



def test_evaluation_split_and_normalize_use_the_variant_record():
    plain, info = load_dataset("digits", image_size=16, batch_size=100, split="validation", variant="pit_s")
    labels = np.concatenate([y for _, y in plain.as_numpy_iterator()])  # every example once
    assert info.steps_per_epoch == 4 and len(labels) == 355 and labels.dtype == np.int32
    assert labels.min() == 0 and labels.max() == 9 and not info.one_hot
    normalized, _ = load_dataset("digits", image_size=16, batch_size=100, split="validation",
                                 variant="pit_s", normalize=True)
    record = RECORDS["pit_s"]
    expected = (batches(plain)[0][0] / 255.0 - np.array(record.mean)) / np.array(record.std)
    np.testing.assert_allclose(batches(normalized)[0][0], expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="variant="):
        load_dataset("digits", image_size=16, batch_size=8, normalize=True)
    with pytest.raises(ValueError, match="Unknown variant 'pit_zz'"):
        load_dataset("digits", image_size=16, batch_size=8, variant="pit_zz")


def _write(path, image):
    encode = tf.io.encode_jpeg if path.suffix == ".jpg" else tf.io.encode_png
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(np.asarray(image, np.uint8)).numpy())


def _image_folder(root):
    """3 classes: RGB JPEGs and PNGs of several sizes, a grayscale and an RGBA PNG, damaged files."""
    rng = np.random.default_rng(0)
    for name, shapes in (("cat", [(20, 30, 3), (24, 24, 3)]), ("dog", [(18, 22, 3)]), ("emu", [(30, 20, 3)])):
        for i, shape in enumerate(shapes):
            _write(root / name / f"{i}.jpg", rng.integers(0, 256, shape))
    _write(root / "dog" / "gray.png", rng.integers(0, 256, (16, 16, 1)))
    _write(root / "emu" / "nested" / "rgba.png", rng.integers(0, 256, (16, 20, 4)))
    (root / "cat" / "corrupt.jpg").write_bytes(b"this is not a JPEG at all" * 10)
    (root / "cat" / "notes.txt").write_text("not an image, not counted")
    noise = tf.io.encode_png(rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)).numpy()
    (root / "dog" / "truncated.png").write_bytes(noise[: len(noise) // 2])  # valid header, cut data


def test_folder_dataset_skips_and_counts_unreadable_files(tmp_path, caplog):
    _image_folder(tmp_path)
    with caplog.at_level(logging.WARNING, logger=data.__name__):
        dataset, info = load_dataset(tmp_path, image_size=12, batch_size=4, split="all", verify_images=True)
    assert info.class_names == ("cat", "dog", "emu") and info.num_classes == 3
    assert (info.num_examples, info.skipped) == (6, 2)
    assert any("Skipped 2 of 8 files" in record.getMessage() for record in caplog.records)
    images = np.concatenate([x for x, _ in dataset.as_numpy_iterator()])
    labels = np.concatenate([y for _, y in dataset.as_numpy_iterator()])
    assert images.shape == (6, 12, 12, 3) and images.dtype == np.float32
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]  # classes in order, files sorted

    # Without verification only the bad header is caught up front; the cut PNG is dropped
    # when read, and the epoch goes on.
    dataset, info = load_dataset(tmp_path, image_size=12, batch_size=2, split="all", augment=CHEAP_DEIT,
                                 training=True, seed=0)
    assert (info.num_examples, info.skipped) == (7, 1)
    assert sum(len(y) for _, y in dataset.as_numpy_iterator()) == 6


def test_folder_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_dataset(tmp_path / "missing", image_size=8, batch_size=2)
    (tmp_path / "only" / "one").mkdir(parents=True)
    with pytest.raises(ValueError, match="1 class sub-folder"):
        load_dataset(tmp_path / "only", image_size=8, batch_size=2)
    (tmp_path / "only" / "two").mkdir()
    (tmp_path / "only" / "two" / "readme.txt").write_text("no images")
    with pytest.raises(ValueError, match="No image files"):
        load_dataset(tmp_path / "only", image_size=8, batch_size=2)
    with pytest.raises(ValueError, match="TFDS has no dataset 'no_such_dataset_kdv'"):
        load_dataset("tfds:no_such_dataset_kdv", image_size=8, batch_size=2, download=False)
    with pytest.raises(ValueError, match="give it once"):
        load_dataset("tfds:mnist:test", split="train", image_size=8, batch_size=2)


def test_tfds_dataset_built_locally(tmp_path):
    import tensorflow_datasets as tfds

    class KdvTinyShapes(tfds.core.GeneratorBasedBuilder):
        """Grayscale images of three classes, built in the test (no download)."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 1)),
                "label": tfds.features.ClassLabel(names=["circle", "square", "star"]),
            }))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(10), "test": self._generate_examples(5)}

        def _generate_examples(self, count):
            for i in range(count):
                yield i, {"image": np.full((10 + i, 14, 1), 20 * i, np.uint8), "label": i % 3}

    KdvTinyShapes(data_dir=tmp_path).download_and_prepare()
    dataset, info = load_dataset("tfds:kdv_tiny_shapes:test", image_size=8, batch_size=4, data_dir=tmp_path,
                                 download=False)
    assert (info.split, info.num_examples, info.num_classes) == ("test", 5, 3)
    assert info.class_names == ("circle", "square", "star")
    images, labels = batches(dataset)[0]
    assert images.shape == (4, 8, 8, 3) and labels.dtype == np.int32
    np.testing.assert_allclose(images[..., 0], images[..., 1])  # grey became RGB
    train, info = load_dataset("tfds:kdv_tiny_shapes", image_size=8, batch_size=4, data_dir=tmp_path,
                               download=False, augment=AugmentConfig.light(), seed=0)
    assert (info.split, info.num_examples, info.steps_per_epoch) == ("train", 10, 2)
    assert len(list(train)) == 2
    with pytest.raises(ValueError, match="no split 'validation'"):
        load_dataset("tfds:kdv_tiny_shapes:validation", image_size=8, batch_size=4, data_dir=tmp_path,
                     download=False)


def test_eval_transform_resizes_the_short_side_and_crops_the_centre():
    image = np.full((40, 60, 3), 50, np.uint8)
    image[10:30, 20:40] = 200  # the centre 20x20
    # crop_pct 0.5: the short side goes to 40 (no resize here) and the centre 20x20 is kept.
    out = eval_transform(image, 20, crop_pct=0.5).numpy()
    assert out.shape == (20, 20, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, 200.0, atol=1e-3)
    # Twice the size: resized by 1/2 first, the same centre.
    big = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)
    out = eval_transform(big[None], 20, crop_pct=0.5, interpolation="bilinear").numpy()
    assert out.shape == (1, 20, 20, 3)
    np.testing.assert_allclose(out[0, 2:-2, 2:-2], 200.0, atol=1e-3)
    # Shorter side 40 -> floor(16 / 0.8) = 20, longer 60 -> 30, centre 16x16 of that.
    out = eval_transform(image, 16, crop_pct=0.8).numpy()
    assert out.shape == (16, 16, 3)
    assert out[8, 8, 0] > 190 and out[0, 0, 0] < 60
    # crop_pct > 1 pads with zeros around the resized image, like torchvision's CenterCrop.
    out = eval_transform(np.full((10, 10, 3), 255, np.uint8), (10, 10), crop_pct=2.0).numpy()
    assert out[0, 0, 0] == 0 and out[5, 5, 0] == pytest.approx(255, abs=1e-3)
    with pytest.raises(ValueError, match="crop_pct"):
        eval_transform(image, 16, crop_pct=0)
    with pytest.raises(ValueError, match="interpolation"):
        eval_transform(image, 16, interpolation="cubic")


def test_timm_rand_augment_ranges_and_config():
    # Called on images in test_deit_augmentation_mixes_labels_and_feeds_fit, inside tf.data
    # as in training (eager calls on JAX compile every operation: ~15 s).
    layer = TimmRandAugment(num_ops=2, magnitude=9, seed=3)
    config = layer.get_config()
    assert config["magnitude"] == 9 and "factor" not in config
    clone = TimmRandAugment.from_config(config)
    assert (clone.num_ops, clone.magnitude) == (2, 9)
    # timm's m9 ranges, not Keras' factor-as-fraction ones (rotation would be up to 324 degrees).
    assert layer.random_rotation.factor == pytest.approx((-0.075, 0.075))
    assert layer.random_translation.height_factor == pytest.approx(0.405)
    with pytest.raises(ValueError, match="magnitude"):
        TimmRandAugment(magnitude=11)

    # The equalisation histogram on TensorFlow inside tf.data (see augment._Equalization): the
    # overridden Keras method must still exist, and count like bincount.
    assert hasattr(keras.layers.Equalization, "_custom_histogram_fixed_width")
    layer.equalization.backend.set_backend("tensorflow")
    values = tf.constant([[0.0, 1.0, 1.5, 254.0], [255.0, 128.0, 128.0, 3.0]])
    histogram = layer.equalization._custom_histogram_fixed_width(values, (0, 255), 256).numpy()
    np.testing.assert_array_equal(histogram, np.bincount([0, 1, 1, 254, 255, 128, 128, 3], minlength=256))
    layer.equalization.backend.reset()


def test_augment_config_validation():
    assert AugmentConfig().mixes and not AugmentConfig.light().mixes
    assert AugmentConfig.light(flip=True).flip
    with pytest.raises(ValueError, match="cutmix_alpha"):
        AugmentConfig(cutmix_alpha=1.5)
    with pytest.raises(ValueError, match="crop_scale"):
        AugmentConfig(crop_scale=(0.5, 0.1))
    with pytest.raises(ValueError, match="one_hot=True"):
        load_dataset("digits", image_size=8, batch_size=4, augment=AugmentConfig(), one_hot=False)


def test_deit_augmentation_mixes_labels_and_feeds_fit():
    dataset, info = load_dataset("digits", image_size=16, batch_size=8, augment=AugmentConfig(), seed=1)
    images, labels = batches(dataset)[0]
    assert images.shape == (8, 16, 16, 3) and images.dtype == np.float32
    assert labels.shape == (8, 10) and labels.dtype == np.float32
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-5)
    assert (labels.max(axis=1) < 1.0).any()  # mixed, not one-hot
    for mixup, cutmix in ((0.8, 0.0), (0.0, 1.0)):
        config = AugmentConfig(rand_augment_ops=0, erase_prob=0, mixup_alpha=mixup, cutmix_alpha=cutmix)
        _, labels = batches(augment.augment_dataset(
            tf.data.Dataset.from_tensor_slices((np.zeros((16, 16, 16, 3), "uint8"), np.arange(16) % 4)),
            config, image_size=(16, 16), batch_size=8, num_classes=4, one_hot=True, seed=0))[0]
        np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-5)
        assert (labels.max(axis=1) < 1.0).any()

    # A plain Keras model: feeding fit is the pipeline's job; fitting our models is the recipe's
    # tests' (a DeepViT here costs ~15 s of JAX compilation).
    model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Rescaling(1 / 255.0),
                              keras.layers.Conv2D(4, 3), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(keras.optimizers.AdamW(1e-3), "categorical_crossentropy")
    history = model.fit(dataset, steps_per_epoch=1, epochs=1, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"][0])


@pytest.mark.parametrize("module", [digits, augment, data], ids=lambda module: module.__name__)
def test_docstring_examples(module):
    assert doctest.testmod(module).failed == 0
