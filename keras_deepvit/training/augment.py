"""Training augmentation: DeiT's recipe from TensorFlow image ops and Keras' own layers.

DeiT (Touvron et al. 2021, arXiv 2012.12877), the ImageNet recipe the DeepViT,
Refiner-ViT and PiT training builds on, augments every image with an
inception-style random resized crop, a horizontal flip, RandAugment
(`rand-m9-mstd0.5-inc1`) and random erasing (probability 0.25), then mixes every
batch with MixUp (alpha 0.8) or CutMix (alpha 1.0), one of the two with
probability 0.5 each. `augment_dataset` builds that as `tf.data` stages:

* crop and flip: TensorFlow's stateless image ops, one seed per example, in
  parallel (`tf.image.stateless_sample_distorted_bounding_box`, scale
  (0.08, 1), ratio (3/4, 4/3), then a resize);
* RandAugment: `TimmRandAugment`, `keras.layers.RandAugment` with each
  operation's range set from timm's magnitude scale, applied per image;
* erasing and mixing: `keras.layers.RandomErasing`, `keras.layers.MixUp` and
  `keras.layers.CutMix` on batches. Keras' preprocessing layers run inside
  `tf.data` on every backend.

Differences from timm, all inherent to the Keras layers: MixUp and CutMix draw
a mixing weight per example, not per batch (timm's `mode="elem"`), and CutMix
keeps its box inside the image; CutMix's alpha is at most 1 (`keras.layers.
CutMix` bounds it); erasing draws its box from two side fractions instead of an
area and an aspect ratio, and fills it with clipped Gaussian noise in 0-255.
DeiT's label smoothing (0.1) belongs to the loss:
`keras.losses.CategoricalCrossentropy(label_smoothing=0.1)`.
"""

import dataclasses
import itertools

import keras
import tensorflow as tf

#: `tf.image.resize` methods accepted for the crop's resize.
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "area", "lanczos3", "lanczos5", "mitchellcubic")
# timm's magnitudes are levels out of 10 (`_LEVEL_DENOM` in timm/data/auto_augment.py).
_LEVEL_DENOM = 10.0


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """What `augment_dataset` does to training data; the defaults are DeiT's recipe.

    Every stage can be switched off: `crop_scale=None` (plain resize),
    `flip=False`, `rand_augment_ops=0`, `erase_prob=0`, `mix_prob=0` (or both
    alphas 0).

    Args:
        crop_scale: `(min, max)` area fraction of the random resized crop, or
            None for no crop. DeiT: (0.08, 1).
        crop_ratio: `(min, max)` width/height ratio of the crop. DeiT: (3/4, 4/3).
        interpolation: `tf.image.resize` method of the crop's resize. DeiT: bicubic.
        flip: random horizontal flip with probability 0.5.
        rand_augment_ops: operations per image (timm's `n`); 0 turns RandAugment off.
        rand_augment_magnitude: timm's `m`, out of 10 (see `TimmRandAugment`).
        erase_prob: probability of erasing a random box of an image (timm's `reprob`).
        mixup_alpha: MixUp's Beta(alpha, alpha); 0 turns MixUp off. DeiT: 0.8.
        cutmix_alpha: CutMix's Beta(alpha, alpha), in (0, 1]; 0 turns CutMix off. DeiT: 1.0.
        mix_prob: probability that a batch is mixed at all. DeiT: 1.0.
        switch_prob: with both on, probability of CutMix rather than MixUp. DeiT: 0.5.

    Example:
    >>> AugmentConfig().mixes, AugmentConfig.light().mixes
    (True, False)
    """

    crop_scale: tuple = (0.08, 1.0)
    crop_ratio: tuple = (3.0 / 4.0, 4.0 / 3.0)
    interpolation: str = "bicubic"
    flip: bool = True
    rand_augment_ops: int = 2
    rand_augment_magnitude: float = 9.0
    erase_prob: float = 0.25
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    mix_prob: float = 1.0
    switch_prob: float = 0.5

    def __post_init__(self):
        if self.crop_scale is not None:
            low, high = self.crop_scale
            if not 0.0 < low <= high <= 1.0:
                raise ValueError(
                    f"crop_scale must be (min, max) with 0 < min <= max <= 1, or None; "
                    f"got {self.crop_scale!r}."
                )
            low, high = self.crop_ratio
            if not 0.0 < low <= high:
                raise ValueError(
                    f"crop_ratio must be (min, max) with 0 < min <= max; got {self.crop_ratio!r}.")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}; got {self.interpolation!r}.")
        if int(self.rand_augment_ops) != self.rand_augment_ops or self.rand_augment_ops < 0:
            raise ValueError(f"rand_augment_ops must be an int >= 0; got {self.rand_augment_ops!r}.")
        if not 0.0 <= self.rand_augment_magnitude <= _LEVEL_DENOM:
            raise ValueError(
                f"rand_augment_magnitude is timm's m, in [0, 10]; got {self.rand_augment_magnitude!r}."
            )
        for name in ("erase_prob", "mix_prob", "switch_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a probability in [0, 1]; got {getattr(self, name)!r}.")
        if self.mixup_alpha < 0:
            raise ValueError(f"mixup_alpha must be >= 0 (0 turns MixUp off); got {self.mixup_alpha!r}.")
        if not 0.0 <= self.cutmix_alpha <= 1.0:
            raise ValueError(
                f"cutmix_alpha must be in [0, 1] (keras.layers.CutMix accepts at most 1; 0 turns it "
                f"off); got {self.cutmix_alpha!r}."
            )

    @classmethod
    def light(cls, **overrides):
        """For small, low-detail images (e.g. 8x8 digits upscaled to 32 px) and short runs.

        Crops keep at least 60% of the image, and there is no flip (digits and
        text are not mirror-symmetric), RandAugment, erasing or mixing: at these
        sizes DeiT's 8% crops and m9 operations leave too little of the image to
        learn from in a short run. `overrides` replace any field, e.g.
        `AugmentConfig.light(flip=True)` for natural images.
        """
        settings = dict(crop_scale=(0.6, 1.0), flip=False, rand_augment_ops=0, erase_prob=0.0,
                        mixup_alpha=0.0, cutmix_alpha=0.0)
        settings.update(overrides)
        return cls(**settings)

    @property
    def mixes(self):
        """Whether batches are mixed, so labels must be one-hot."""
        return self.mix_prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)


@keras.saving.register_keras_serializable(package="keras_deepvit")
class TimmRandAugment(keras.layers.RandAugment):
    """`keras.layers.RandAugment` with each operation's range set from timm's magnitude.

    Keras' layer drives all its operations with one `factor` as a fraction of
    each one's full range (rotation up to `factor * 360` degrees, posterising
    and solarising that grow harsher as `factor` shrinks), so no `factor`
    reproduces timm's `rand-m9`. This subclass keeps Keras' operation choice
    (`num_ops` of its 11 operations, uniformly) and sets each operation's range
    from timm's `_RAND_INCREASING_TRANSFORMS` at level `L = magnitude / 10`:

    * rotation within +-30L degrees; shear within +-0.3L; translation within
      +-0.45L of the image size (timm's `TranslateRel`), filling with grey 128
      like timm's `img_mean` for a 0.5 mean;
    * contrast, colour (saturation) and sharpness enhance factors within
      1 +- 0.9L (timm's `*Increasing`); brightness, additive in Keras, within
      +-0.45L of the value range, so a mid-grey pixel moves as far as under
      timm's multiplicative 1 +- 0.9L;
    * posterise keeps 4 - int(4L) to 4 bits (at least 1);
    * solarise inverts pixels above a threshold drawn from the whole value
      range: Keras draws it from [lower, upper * 255] with an unscaled lower
      bound, so timm's magnitude-dependent threshold 256 (1 - L) cannot be set;
    * auto-contrast and equalise as they are.

    Keras draws each operation's strength uniformly up to these bounds where
    timm uses the bound itself (with `mstd0.5` noise), and it always applies
    the chosen operations where timm applies each with probability 0.5, so
    magnitude 9 here is milder per operation but applied twice as often.
    timm's Invert and SolarizeAdd have no counterpart among Keras' operations.

    Apply it to single images (inside a `tf.data` map): on a batch, Keras picks
    the same operations for the whole batch.

    Args:
        num_ops: operations applied to each image (timm's `n`).
        magnitude: timm's `m`, 0-10.
        value_range: range of the input values.
        interpolation: `"bilinear"` or `"nearest"`, for the geometric operations.
        seed: int seed; each operation gets its own, derived from it.

    Example:
    >>> layer = TimmRandAugment(num_ops=2, magnitude=9, seed=0)  # then dataset.map(layer)
    >>> [round(360 * bound) for bound in layer.random_rotation.factor]  # degrees, timm's m9
    [-27, 27]
    """

    def __init__(self, num_ops=2, magnitude=9.0, value_range=(0, 255), interpolation="bilinear",
                 seed=None, **kwargs):
        if not 0.0 <= magnitude <= _LEVEL_DENOM:
            raise ValueError(f"magnitude is timm's m, in [0, 10]; got {magnitude!r}.")
        level = magnitude / _LEVEL_DENOM
        super().__init__(value_range=value_range, num_ops=num_ops, factor=level,
                         interpolation=interpolation, seed=seed, **kwargs)
        self.magnitude = magnitude
        low, high = value_range
        # Separate seeds: Keras gives every operation the same one, which makes the drawn
        # strengths of all operations move together.
        seeds = itertools.repeat(None) if seed is None else itertools.count(seed + 1)

        def op_seed():
            return next(seeds)

        geometric = dict(interpolation=interpolation, fill_mode="constant",
                         fill_value=low + (high - low) * 128.0 / 255.0)
        self.random_shear = keras.layers.RandomShear(
            x_factor=0.3 * level, y_factor=0.3 * level, seed=op_seed(), **geometric)
        self.random_translation = keras.layers.RandomTranslation(
            height_factor=0.45 * level, width_factor=0.45 * level, seed=op_seed(), **geometric)
        self.random_rotation = keras.layers.RandomRotation(
            factor=30.0 * level / 360.0, seed=op_seed(), **geometric)
        enhance = 0.9 * level
        self.random_brightness = keras.layers.RandomBrightness(
            factor=enhance / 2.0, value_range=value_range, seed=op_seed())
        self.random_color_degeneration = keras.layers.RandomColorDegeneration(
            factor=enhance, value_range=value_range, seed=op_seed())
        self.random_contrast = keras.layers.RandomContrast(
            factor=enhance, value_range=value_range, seed=op_seed())
        # Keras' sharpness blends with the smoothed image by 2 * factor (1 = unchanged).
        self.random_sharpness = keras.layers.RandomSharpness(
            factor=((1.0 - enhance) / 2.0, (1.0 + enhance) / 2.0), value_range=value_range, seed=op_seed())
        # Bits are drawn with an exclusive upper bound: [fewest, 5) keeps fewest..4 bits.
        fewest_bits = max(1, 4 - int(4 * level))
        self.random_posterization = keras.layers.RandomPosterization(
            factor=(fewest_bits, 5), value_range=value_range, seed=op_seed())
        self.solarization = keras.layers.Solarization(
            addition_factor=0.0, threshold_factor=(0.0, 1.0), value_range=value_range, seed=op_seed())
        self.equalization = _Equalization(value_range=value_range)

    def get_config(self):
        config = super().get_config()
        del config["factor"]
        config["magnitude"] = self.magnitude
        return config


class _Equalization(keras.layers.Equalization):
    """`keras.layers.Equalization` whose histogram follows the backend it runs on.

    Keras 3.15 chooses its JAX histogram (256 unrolled compare-and-sum steps per
    channel) by the global backend, also inside `tf.data`, where the layer runs
    on TensorFlow: with `KERAS_BACKEND=jax` that made `TimmRandAugment`'s first
    batch take about 50 s to trace and each image about 20 ms. This takes
    TensorFlow's `bincount` there, as Keras does on the other backends.
    """

    def _custom_histogram_fixed_width(self, values, value_range, nbins):
        if self.backend.name == "jax":
            return super()._custom_histogram_fixed_width(values, value_range, nbins)
        low, high = (float(bound) for bound in value_range)
        scaled = (self.backend.cast(values, "float32") - low) * (nbins - 1) / (high - low)
        indices = self.backend.numpy.clip(self.backend.cast(scaled, "int32"), 0, nbins - 1)
        return self.backend.numpy.bincount(self.backend.numpy.reshape(indices, [-1]), minlength=nbins)


def random_resized_crop(image, image_size, seed, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0),
                        interpolation="bicubic"):
    """Inception-style random resized crop of one image, reproducible from `seed`.

    A box covering `scale` of the area with width/height in `ratio` is drawn by
    `tf.image.stateless_sample_distorted_bounding_box` (10 attempts, then the
    whole image), cut out and resized to `image_size` (antialiased, clipped to
    0-255). Differences from torchvision's: the ratio is drawn uniformly, not
    log-uniformly, and the fallback is the whole image, not a centre crop.

    Args:
        image: `(height, width, channels)` tensor, values in 0-255.
        image_size: `(height, width)` of the output.
        seed: int32/int64 tensor of shape `(2,)`.
        scale: `(min, max)` area fraction.
        ratio: `(min, max)` width/height ratio.
        interpolation: a `tf.image.resize` method.

    Returns:
        float32 `(height, width, channels)` tensor.

    Example:
    >>> import tensorflow as tf
    >>> crop = random_resized_crop(tf.zeros((40, 30, 3)), (16, 16), tf.constant([1, 2]))
    >>> tuple(crop.shape), crop.dtype.name
    ((16, 16, 3), 'float32')
    """
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
        min_object_covered=0.0, aspect_ratio_range=ratio, area_range=scale, max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    crop = tf.slice(image, begin, size)
    # The box's size is data: give back the channel count the slice hides from later stages.
    crop.set_shape([None, None, image.shape[-1]])
    resized = tf.image.resize(crop, image_size, method=interpolation, antialias=True)
    return tf.clip_by_value(resized, 0.0, 255.0)


def augment_dataset(dataset, config, *, image_size, batch_size, num_classes, one_hot, seed=None):
    """Augments, batches and mixes a dataset of decoded training examples.

    Stages, in DeiT's order: random resized crop (or a plain resize) and flip
    per example; RandAugment per example; batching (incomplete last batch
    dropped); one-hot labels; random erasing per batch; MixUp or CutMix per
    batch.

    With a `seed`, the output is the same on every run: the crop and flip draw
    from one stateless seed per example (in parallel), and the Keras layers,
    whose random state is a variable, run one call at a time. Without one,
    the Keras layers run in parallel too, in no fixed order.

    Args:
        dataset: unbatched `tf.data.Dataset` of `(image, label)`: an RGB image
            `(height, width, 3)` in 0-255 (any real or integer dtype) and an
            integer label.
        config: an `AugmentConfig`.
        image_size: `(height, width)` of the output images.
        batch_size: examples per batch.
        num_classes: number of classes (for one-hot labels).
        one_hot: one-hot float32 labels instead of int32; required when
            `config.mixes`.
        seed: int, or None for a different stream each time.

    Returns:
        A batched `tf.data.Dataset` of float32 images `(batch, height, width, 3)`
        in 0-255 and labels (int32 `(batch,)` or float32 `(batch, num_classes)`,
        each row summing to 1).

    Example:
    >>> import tensorflow as tf
    >>> data = tf.data.Dataset.from_tensor_slices((tf.zeros((8, 20, 20, 3), "uint8"), tf.range(8) % 2))
    >>> batches = augment_dataset(data, AugmentConfig.light(), image_size=(16, 16), batch_size=4,
    ...                           num_classes=2, one_hot=False, seed=0)
    >>> images, labels = next(iter(batches))
    >>> tuple(images.shape), labels.dtype.name
    ((4, 16, 16, 3), 'int32')
    """
    if config.mixes and not one_hot:
        raise ValueError(
            "MixUp/CutMix mix labels, so they need one_hot=True (and a categorical loss); "
            "or switch mixing off with mix_prob=0."
        )
    autotune = tf.data.AUTOTUNE
    # The Keras layers' random state is a variable: in parallel calls it is read in no fixed
    # order, so a seeded pipeline runs them sequentially.
    keras_calls = None if seed is not None else autotune
    seeds = _seed_stream(seed)

    def crop_and_flip(example, example_seed):
        return _crop_and_flip(example, example_seed, config, image_size)

    dataset = tf.data.Dataset.zip((dataset, next(seeds)))
    dataset = dataset.map(crop_and_flip, num_parallel_calls=autotune)
    if config.rand_augment_ops:
        rand_augment = TimmRandAugment(num_ops=config.rand_augment_ops,
                                       magnitude=config.rand_augment_magnitude, seed=_layer_seed(seed, 1))
        dataset = dataset.map(lambda image, label: (rand_augment(image), label),
                              num_parallel_calls=keras_calls)
    dataset = dataset.batch(batch_size, drop_remainder=True, num_parallel_calls=autotune)
    if one_hot:
        dataset = dataset.map(lambda images, labels: (images, tf.one_hot(labels, num_classes)),
                              num_parallel_calls=autotune)
    if config.erase_prob > 0:
        # A pair (p, p) makes Keras use p itself; a single number is the top of a range.
        erasing = keras.layers.RandomErasing(factor=(config.erase_prob, config.erase_prob),
                                             value_range=(0, 255), seed=_layer_seed(seed, 2))
        dataset = dataset.map(lambda images, labels: (erasing(images), labels),
                              num_parallel_calls=keras_calls)
    if config.mixes:
        mix = _batch_mixer(config, seed)
        dataset = tf.data.Dataset.zip((dataset, next(seeds)))
        dataset = dataset.map(lambda batch, batch_seed: mix(*batch, batch_seed),
                              num_parallel_calls=keras_calls)
    return dataset


def _crop_and_flip(example, seed, config, image_size):
    image, label = example
    image = tf.cast(image, tf.float32)
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    if config.crop_scale is None:
        image = tf.clip_by_value(
            tf.image.resize(image, image_size, method=config.interpolation, antialias=True), 0.0, 255.0)
    else:
        image = random_resized_crop(image, image_size, crop_seed, config.crop_scale, config.crop_ratio,
                                    config.interpolation)
    if config.flip:
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    return image, tf.cast(label, tf.int32)


def _batch_mixer(config, seed):
    """`(images, labels, seed) -> (images, labels)`: MixUp or CutMix, or neither, per batch."""
    mixers = []
    if config.mixup_alpha > 0:
        mixers.append(keras.layers.MixUp(alpha=config.mixup_alpha, seed=_layer_seed(seed, 3)))
    if config.cutmix_alpha > 0:
        # (alpha, alpha) fixes Beta(alpha, alpha); one number would draw alpha from (0, number).
        mixers.append(keras.layers.CutMix(factor=(config.cutmix_alpha, config.cutmix_alpha),
                                          seed=_layer_seed(seed, 4)))

    def apply(layer, images, labels):
        mixed = layer({"images": images, "labels": labels})
        return mixed["images"], mixed["labels"]

    def mix(images, labels, batch_seed):
        mix_draw, switch_draw = tf.unstack(tf.random.stateless_uniform((2,), batch_seed))

        def mixed():
            if len(mixers) == 1:
                return apply(mixers[0], images, labels)
            return tf.cond(switch_draw < config.switch_prob, lambda: apply(mixers[1], images, labels),
                           lambda: apply(mixers[0], images, labels))

        return tf.cond(mix_draw < config.mix_prob, mixed, lambda: (images, labels))

    return mix


def _seed_stream(seed):
    """Datasets of `(2,)` stateless seeds, a distinct stream each, new every epoch."""
    for stream in itertools.count(1):
        stream_seed = None if seed is None else seed * 1000 + stream
        yield tf.data.Dataset.random(seed=stream_seed, rerandomize_each_iteration=True).batch(2)


def _layer_seed(seed, index):
    return None if seed is None else seed * 1000 + 100 + index
