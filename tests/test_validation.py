"""Bad arguments fail at construction with the value received: typos, depths, rates,
inputs smaller than a patch, preprocessing of non-RGB input, model names."""

import pytest

import keras_deepvit
from keras_deepvit.models import DeepViT, PiT, RefinerViT

TINY = {
    DeepViT: dict(depth=1, embed_dim=32, num_heads=2, input_shape=(32, 32, 3), classes=4),
    RefinerViT: dict(depth=1, embed_dim=32, num_heads=2, stem="patch", input_shape=(32, 32, 3), classes=4),
    PiT: dict(base_dims=(16,), depth=(1,), heads=(2,), input_shape=(32, 32, 3), classes=4),
}


def tiny(family, **overrides):
    return family(**{**TINY[family], **overrides})


# Cases loop inside one test each: constructions that fail cost microseconds, while every
# test pays the suite's per-test set-up and teardown (seeding, `clear_session`).


def test_unknown_keyword_is_a_type_error_naming_the_closest():
    for family in TINY:
        with pytest.raises(TypeError, match=r"unexpected keyword argument 'clases'.*did you mean 'classes'"):
            tiny(family, clases=10)


def test_create_model_and_constructors_refuse_typos():
    with pytest.raises(TypeError, match=r"'clases'.*did you mean 'classes'"):
        keras_deepvit.create_model("pit_ti", input_shape=(32, 32, 3), clases=10)
    with pytest.raises(TypeError, match=r"'drop_path'.*did you mean 'drop_path_rate'"):
        keras_deepvit.PiTTi(input_shape=(32, 32, 3), drop_path=0.1)
    with pytest.raises(TypeError, match=r"'weight'.*did you mean 'weights'"):
        keras_deepvit.create_model("pit_ti", weight="imagenet")


def test_create_model_needs_a_name_string():
    for name in (None, 3, ("pit_ti",)):
        with pytest.raises(TypeError, match=r"model name must be a str.*list_models"):
            keras_deepvit.create_model(name)
        with pytest.raises(TypeError, match=r"model name must be a str"):
            keras_deepvit.variant_info(name)


BAD_ARGUMENTS = [
    (DeepViT, dict(depth=0), r"depth must be an int >= 1, got 0"),
    (RefinerViT, dict(depth=-2), r"depth must be an int >= 1, got -2"),
    (PiT, dict(depth=(1, -1), base_dims=(16, 16), heads=(2, 4)), r"depth must be ints >= 1.*\[1, -1\]"),
    (PiT, dict(depth=(), base_dims=(), heads=()), r"depth must .*at least one stage"),
    (PiT, dict(base_dims=(0,)), r"base_dims must be ints >= 1.*\[0\]"),
    (PiT, dict(heads=(0,)), r"heads must be ints >= 1.*\[0\]"),
    (PiT, dict(stride=0), r"stride must be an int >= 1, got 0"),
    (DeepViT, dict(embed_dim=0), r"embed_dim must be an int >= 1, got 0"),
    (DeepViT, dict(num_heads=0), r"num_heads must be an int >= 1, got 0"),
    (RefinerViT, dict(num_heads=3), r"embed_dim=32 is not divisible by num_heads=3"),
    (DeepViT, dict(patch_size=0), r"patch_size must be an int >= 1, got 0"),
    (PiT, dict(mlp_ratio=0), r"mlp_ratio must be a number > 0, got 0"),
    (DeepViT, dict(drop_path_rate=1.5), r"drop_path_rate must be in \[0, 1\), got 1.5"),
    (PiT, dict(drop_path_rate=1.5), r"drop_path_rate must be in \[0, 1\), got 1.5"),
    (RefinerViT, dict(dropout_rate=-0.1), r"dropout_rate must be in \[0, 1\), got -0.1"),
    (PiT, dict(attention_dropout_rate=1.0), r"attention_dropout_rate must be in \[0, 1\), got 1.0"),
    (DeepViT, dict(input_shape=(8, 8, 3)), r"input_shape \(8, 8, 3\) is smaller than one patch"),
    (RefinerViT, dict(input_shape=(32, 8, 3)), r"input_shape \(32, 8, 3\) is smaller than one patch"),
    (DeepViT, dict(stem="cnn", input_shape=(8, 8, 3)), r"input_shape \(8, 8, 3\) is smaller than one patch"),
    (PiT, dict(input_shape=(8, 8, 3)), r"input_shape \(8, 8, 3\) is smaller than one patch"),
    (DeepViT, dict(input_shape=(32, 32, 1)), r"include_preprocessing=True .*3 channels.*got 1"),
    (PiT, dict(input_shape=(32, 32, 4)), r"include_preprocessing=True .*3 channels.*got 4"),
]


def test_bad_architecture_arguments_fail_at_construction():
    for family, overrides, message in BAD_ARGUMENTS:
        case = f"{family.__name__}({overrides})"
        with pytest.raises(ValueError, match=message) as error:
            tiny(family, **overrides)
            pytest.fail(f"{case} built")
        assert type(error.value) is ValueError, case  # from our check, not a backend's deep inside


def test_one_channel_input_builds_without_preprocessing():
    model = tiny(DeepViT, input_shape=(32, 32, 1), include_preprocessing=False)
    assert model.input_shape == (None, 32, 32, 1)
