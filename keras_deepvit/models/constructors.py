"""Thin keras.applications-style constructors of the registered variants.

Each is `create_model(<name>, ...)` with the full keras.applications signature;
`DeepViT16/24/32(re_attention=False)` gives the paper's ViT baselines and
`RefinerViTS/M/L(input_shape=(384, 384, 3))` the 384 (or 448) variants.
"""

from keras_deepvit.models.registry import create_model


def _make(variant, **kwargs):
    return create_model(variant, **kwargs)


def DeepViT16(
    include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
    classes=1000, classifier_activation="softmax", include_preprocessing=True,
    drop_path_rate=0.0, re_attention=True, name="deepvit_16", **kwargs,
):
    """The `deepvit_16` variant (see `keras_deepvit.list_models()` and the README table).

    Args follow `keras.applications`; other family arguments pass through `kwargs`.

    Example:
    >>> import keras_deepvit
    >>> keras_deepvit.DeepViT16(input_shape=(64, 64, 3), classes=3).output_shape
    (None, 3)
    """
    return _make(
        "deepvit_16", include_top=include_top, weights=weights, input_tensor=input_tensor,
        input_shape=input_shape, pooling=pooling, classes=classes,
        classifier_activation=classifier_activation,
        include_preprocessing=include_preprocessing, drop_path_rate=drop_path_rate,
        re_attention=re_attention, name=name, **kwargs,
    )


def DeepViT24(
    include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
    classes=1000, classifier_activation="softmax", include_preprocessing=True,
    drop_path_rate=0.0, re_attention=True, name="deepvit_24", **kwargs,
):
    """The `deepvit_24` variant (see `keras_deepvit.list_models()` and the README table).

    Args follow `keras.applications`; other family arguments pass through `kwargs`.

    Example:
    >>> import keras_deepvit
    >>> keras_deepvit.DeepViT24(input_shape=(64, 64, 3), classes=3).output_shape
    (None, 3)
    """
    return _make(
        "deepvit_24", include_top=include_top, weights=weights, input_tensor=input_tensor,
        input_shape=input_shape, pooling=pooling, classes=classes,
        classifier_activation=classifier_activation,
        include_preprocessing=include_preprocessing, drop_path_rate=drop_path_rate,
        re_attention=re_attention, name=name, **kwargs,
    )


def DeepViT32(
    include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
    classes=1000, classifier_activation="softmax", include_preprocessing=True,
    drop_path_rate=0.0, re_attention=True, name="deepvit_32", **kwargs,
):
    """The `deepvit_32` variant (see `keras_deepvit.list_models()` and the README table).

    Args follow `keras.applications`; other family arguments pass through `kwargs`.

    Example:
    >>> import keras_deepvit
    >>> keras_deepvit.DeepViT32(input_shape=(64, 64, 3), classes=3).output_shape
    (None, 3)
    """
    return _make(
        "deepvit_32", include_top=include_top, weights=weights, input_tensor=input_tensor,
        input_shape=input_shape, pooling=pooling, classes=classes,
        classifier_activation=classifier_activation,
        include_preprocessing=include_preprocessing, drop_path_rate=drop_path_rate,
        re_attention=re_attention, name=name, **kwargs,
    )


def DeepViTS(
    include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
    classes=1000, classifier_activation="softmax", include_preprocessing=True,
    drop_path_rate=0.0, name="deepvit_s", **kwargs,
):
    """The `deepvit_s` variant (see `keras_deepvit.list_models()` and the README table).

    Args follow `keras.applications`; other family arguments pass through `kwargs`.

    Example:
    >>> import keras_deepvit
    >>> keras_deepvit.DeepViTS(input_shape=(64, 64, 3), classes=3).output_shape
    (None, 3)
    """
    return _make(
        "deepvit_s", include_top=include_top, weights=weights, input_tensor=input_tensor,
        input_shape=input_shape, pooling=pooling, classes=classes,
        classifier_activation=classifier_activation,
        include_preprocessing=include_preprocessing, drop_path_rate=drop_path_rate,
        name=name, **kwargs,
    )


def DeepViTL(
    include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
    classes=1000, classifier_activation="softmax", include_preprocessing=True,
    drop_path_rate=0.0, name="deepvit_l", **kwargs,
):
    """The `deepvit_l` variant (see `keras_deepvit.list_models()` and the README table).

    Args follow `keras.applications`; other family arguments pass through `kwargs`.

    Example:
    >>> import keras_deepvit
    >>> keras_deepvit.DeepViTL(input_shape=(64, 64, 3), classes=3).output_shape
    (None, 3)
    """
    return _make(
        "deepvit_l", include_top=include_top, weights=weights, input_tensor=input_tensor,
        input_shape=input_shape, pooling=pooling, classes=classes,
        classifier_activation=classifier_activation,
        include_preprocessing=include_preprocessing, drop_path_rate=drop_path_rate,
        name=name, **kwargs,
    )


def DeepViTL384(
    include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
    classes=1000, classifier_activation="softmax", include_preprocessing=True,
    drop_path_rate=0.0, name="deepvit_l_384", **kwargs,
):
    """The `deepvit_l_384` variant (see `keras_deepvit.list_models()` and the README table).

    Args follow `keras.applications`; other family arguments pass through `kwargs`.

    Example:
    >>> import keras_deepvit
    >>> keras_deepvit.DeepViTL384(input_shape=(64, 64, 3), classes=3).output_shape
    (None, 3)
    """
    return _make(
        "deepvit_l_384", include_top=include_top, weights=weights, input_tensor=input_tensor,
        input_shape=input_shape, pooling=pooling, classes=classes,
        classifier_activation=classifier_activation,
        include_preprocessing=include_preprocessing, drop_path_rate=drop_path_rate,
        name=name, **kwargs,
    )


def RefinerViTS(
    include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
    classes=1000, classifier_activation="softmax", include_preprocessing=True,
    drop_path_rate=0.0, name="refiner_s", **kwargs,
):
    """The `refiner_s` variant (see `keras_deepvit.list_models()` and the README table).

    Args follow `keras.applications`; other family arguments pass through `kwargs`.

    Example:
    >>> import keras_deepvit
    >>> keras_deepvit.RefinerViTS(input_shape=(64, 64, 3), classes=3).output_shape
    (None, 3)
    """
    return _make(
        "refiner_s", include_top=include_top, weights=weights, input_tensor=input_tensor,
        input_shape=input_shape, pooling=pooling, classes=classes,
        classifier_activation=classifier_activation,
        include_preprocessing=include_preprocessing, drop_path_rate=drop_path_rate,
        name=name, **kwargs,
    )


def RefinerViTM(
    include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
    classes=1000, classifier_activation="softmax", include_preprocessing=True,
    drop_path_rate=0.0, name="refiner_m", **kwargs,
):
    """The `refiner_m` variant (see `keras_deepvit.list_models()` and the README table).

    Args follow `keras.applications`; other family arguments pass through `kwargs`.

    Example:
    >>> import keras_deepvit
    >>> keras_deepvit.RefinerViTM(input_shape=(64, 64, 3), classes=3).output_shape
    (None, 3)
    """
    return _make(
        "refiner_m", include_top=include_top, weights=weights, input_tensor=input_tensor,
        input_shape=input_shape, pooling=pooling, classes=classes,
        classifier_activation=classifier_activation,
        include_preprocessing=include_preprocessing, drop_path_rate=drop_path_rate,
        name=name, **kwargs,
    )


def RefinerViTL(
    include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
    classes=1000, classifier_activation="softmax", include_preprocessing=True,
    drop_path_rate=0.0, name="refiner_l", **kwargs,
):
    """The `refiner_l` variant (see `keras_deepvit.list_models()` and the README table).

    Args follow `keras.applications`; other family arguments pass through `kwargs`.

    Example:
    >>> import keras_deepvit
    >>> keras_deepvit.RefinerViTL(input_shape=(64, 64, 3), classes=3).output_shape
    (None, 3)
    """
    return _make(
        "refiner_l", include_top=include_top, weights=weights, input_tensor=input_tensor,
        input_shape=input_shape, pooling=pooling, classes=classes,
        classifier_activation=classifier_activation,
        include_preprocessing=include_preprocessing, drop_path_rate=drop_path_rate,
        name=name, **kwargs,
    )


def PiTTi(
    include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
    classes=1000, classifier_activation="softmax", include_preprocessing=True,
    drop_path_rate=0.0, name="pit_ti", **kwargs,
):
    """The `pit_ti` variant (see `keras_deepvit.list_models()` and the README table).

    Args follow `keras.applications`; other family arguments pass through `kwargs`.

    Example:
    >>> import keras_deepvit
    >>> keras_deepvit.PiTTi(input_shape=(64, 64, 3), classes=3).output_shape
    (None, 3)
    """
    return _make(
        "pit_ti", include_top=include_top, weights=weights, input_tensor=input_tensor,
        input_shape=input_shape, pooling=pooling, classes=classes,
        classifier_activation=classifier_activation,
        include_preprocessing=include_preprocessing, drop_path_rate=drop_path_rate,
        name=name, **kwargs,
    )


def PiTXS(
    include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
    classes=1000, classifier_activation="softmax", include_preprocessing=True,
    drop_path_rate=0.0, name="pit_xs", **kwargs,
):
    """The `pit_xs` variant (see `keras_deepvit.list_models()` and the README table).

    Args follow `keras.applications`; other family arguments pass through `kwargs`.

    Example:
    >>> import keras_deepvit
    >>> keras_deepvit.PiTXS(input_shape=(64, 64, 3), classes=3).output_shape
    (None, 3)
    """
    return _make(
        "pit_xs", include_top=include_top, weights=weights, input_tensor=input_tensor,
        input_shape=input_shape, pooling=pooling, classes=classes,
        classifier_activation=classifier_activation,
        include_preprocessing=include_preprocessing, drop_path_rate=drop_path_rate,
        name=name, **kwargs,
    )


def PiTS(
    include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
    classes=1000, classifier_activation="softmax", include_preprocessing=True,
    drop_path_rate=0.0, name="pit_s", **kwargs,
):
    """The `pit_s` variant (see `keras_deepvit.list_models()` and the README table).

    Args follow `keras.applications`; other family arguments pass through `kwargs`.

    Example:
    >>> import keras_deepvit
    >>> keras_deepvit.PiTS(input_shape=(64, 64, 3), classes=3).output_shape
    (None, 3)
    """
    return _make(
        "pit_s", include_top=include_top, weights=weights, input_tensor=input_tensor,
        input_shape=input_shape, pooling=pooling, classes=classes,
        classifier_activation=classifier_activation,
        include_preprocessing=include_preprocessing, drop_path_rate=drop_path_rate,
        name=name, **kwargs,
    )


def PiTB(
    include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
    classes=1000, classifier_activation="softmax", include_preprocessing=True,
    drop_path_rate=0.0, name="pit_b", **kwargs,
):
    """The `pit_b` variant (see `keras_deepvit.list_models()` and the README table).

    Args follow `keras.applications`; other family arguments pass through `kwargs`.

    Example:
    >>> import keras_deepvit
    >>> keras_deepvit.PiTB(input_shape=(64, 64, 3), classes=3).output_shape
    (None, 3)
    """
    return _make(
        "pit_b", include_top=include_top, weights=weights, input_tensor=input_tensor,
        input_shape=input_shape, pooling=pooling, classes=classes,
        classifier_activation=classifier_activation,
        include_preprocessing=include_preprocessing, drop_path_rate=drop_path_rate,
        name=name, **kwargs,
    )


def PiTTiDistilled(
    include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
    classes=1000, classifier_activation="softmax", include_preprocessing=True,
    drop_path_rate=0.0, name="pit_ti_distilled", **kwargs,
):
    """The `pit_ti_distilled` variant (see `keras_deepvit.list_models()` and the README table).

    Args follow `keras.applications`; other family arguments pass through `kwargs`.

    Example:
    >>> import keras_deepvit
    >>> keras_deepvit.PiTTiDistilled(input_shape=(64, 64, 3), classes=3).output_shape
    (None, 3)
    """
    return _make(
        "pit_ti_distilled", include_top=include_top, weights=weights, input_tensor=input_tensor,
        input_shape=input_shape, pooling=pooling, classes=classes,
        classifier_activation=classifier_activation,
        include_preprocessing=include_preprocessing, drop_path_rate=drop_path_rate,
        name=name, **kwargs,
    )


def PiTXSDistilled(
    include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
    classes=1000, classifier_activation="softmax", include_preprocessing=True,
    drop_path_rate=0.0, name="pit_xs_distilled", **kwargs,
):
    """The `pit_xs_distilled` variant (see `keras_deepvit.list_models()` and the README table).

    Args follow `keras.applications`; other family arguments pass through `kwargs`.

    Example:
    >>> import keras_deepvit
    >>> keras_deepvit.PiTXSDistilled(input_shape=(64, 64, 3), classes=3).output_shape
    (None, 3)
    """
    return _make(
        "pit_xs_distilled", include_top=include_top, weights=weights, input_tensor=input_tensor,
        input_shape=input_shape, pooling=pooling, classes=classes,
        classifier_activation=classifier_activation,
        include_preprocessing=include_preprocessing, drop_path_rate=drop_path_rate,
        name=name, **kwargs,
    )


def PiTSDistilled(
    include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
    classes=1000, classifier_activation="softmax", include_preprocessing=True,
    drop_path_rate=0.0, name="pit_s_distilled", **kwargs,
):
    """The `pit_s_distilled` variant (see `keras_deepvit.list_models()` and the README table).

    Args follow `keras.applications`; other family arguments pass through `kwargs`.

    Example:
    >>> import keras_deepvit
    >>> keras_deepvit.PiTSDistilled(input_shape=(64, 64, 3), classes=3).output_shape
    (None, 3)
    """
    return _make(
        "pit_s_distilled", include_top=include_top, weights=weights, input_tensor=input_tensor,
        input_shape=input_shape, pooling=pooling, classes=classes,
        classifier_activation=classifier_activation,
        include_preprocessing=include_preprocessing, drop_path_rate=drop_path_rate,
        name=name, **kwargs,
    )


def PiTBDistilled(
    include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
    classes=1000, classifier_activation="softmax", include_preprocessing=True,
    drop_path_rate=0.0, name="pit_b_distilled", **kwargs,
):
    """The `pit_b_distilled` variant (see `keras_deepvit.list_models()` and the README table).

    Args follow `keras.applications`; other family arguments pass through `kwargs`.

    Example:
    >>> import keras_deepvit
    >>> keras_deepvit.PiTBDistilled(input_shape=(64, 64, 3), classes=3).output_shape
    (None, 3)
    """
    return _make(
        "pit_b_distilled", include_top=include_top, weights=weights, input_tensor=input_tensor,
        input_shape=input_shape, pooling=pooling, classes=classes,
        classifier_activation=classifier_activation,
        include_preprocessing=include_preprocessing, drop_path_rate=drop_path_rate,
        name=name, **kwargs,
    )
