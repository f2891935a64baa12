"""Every family model: config round trip, `.keras` saving, symbolic + eager calls,
a fit step, the keras.applications options, and clear errors for bad arguments."""

import inspect

import keras
import numpy as np
import pytest

import keras_deepvit
from helpers import check_model_round_trips, compile_for_training, infer, to_numpy
from keras_deepvit.models import DeepViT, PiT, RefinerViT
from keras_deepvit.zoo import registry

SMALL = {
    "deepvit": (DeepViT, dict(depth=3, embed_dim=24, num_heads=4, re_attention=[False, True, True],
                              transform_scale=True, scale_adjustment=0.5, stem="cnn")),
    "refiner": (RefinerViT, dict(depth=3, embed_dim=24, num_heads=4, head_expand=2,
                                 refine_attention=[True, False, False], stem="cnn")),
    "pit": (PiT, dict(patch_size=8, stride=4, base_dims=(4, 4), depth=(1, 1), heads=(2, 4),
                      distilled=True)),
}
IMAGES = np.random.default_rng(0).uniform(0, 255, size=(2, 32, 32, 3)).astype("float32")


def small(family, **kwargs):
    cls, arch = SMALL[family]
    arch = dict(arch, input_shape=(32, 32, 3), classes=5, **kwargs)
    return cls(**arch)


@pytest.mark.parametrize("dtype", [None, "mixed_bfloat16"])
@pytest.mark.parametrize("family", sorted(SMALL))
def test_round_trips(family, dtype, tmp_path):
    model = small(family, drop_path_rate=0.1, **({"dtype": dtype} if dtype else {}))
    check_model_round_trips(model, IMAGES, tmp_path)


@pytest.mark.parametrize("family", sorted(SMALL))
def test_mixed_bfloat16_survives_keras_saving(family, tmp_path):
    policy = keras.dtype_policies.DTypePolicy("mixed_bfloat16")  # a policy object, not only a name
    model = small(family, dtype=policy)
    model.save(tmp_path / "mixed.keras")
    loaded = keras.saving.load_model(tmp_path / "mixed.keras")
    assert loaded.dtype_policy.name == "mixed_bfloat16"
    blocks = [layer for layer in loaded._flatten_layers() if "blocks" in layer.name]
    assert blocks and all(layer.compute_dtype == "bfloat16" for layer in blocks)
    assert all(v.dtype == "float32" for v in loaded.weights)  # float32 master weights
    block = blocks[0]
    tokens = keras.ops.zeros((1,) + tuple(block._inbound_nodes[-1].input_tensors[0].shape[1:]))
    out = block(tokens)
    assert keras.backend.standardize_dtype((out[0] if isinstance(out, (list, tuple)) else out).dtype) == "bfloat16"
    assert keras.backend.standardize_dtype(loaded(IMAGES).dtype) == "float32"  # float32 softmax output


@pytest.mark.parametrize("family", sorted(SMALL))
def test_fit_step_and_probabilities(family):
    # `fit` through rematerialised blocks with stochastic depth and dropout; plain
    # blocks train in the mixed-precision test and in test_rematerialization.py.
    model = small(family, drop_path_rate=0.1, dropout_rate=0.1, rematerialize_blocks=True)
    probs = to_numpy(model.predict(IMAGES, verbose=0))
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    compile_for_training(
        model, optimizer=keras.optimizers.AdamW(1e-3), loss="sparse_categorical_crossentropy"
    )
    before = [to_numpy(w).copy() for w in model.trainable_weights]
    history = model.fit(IMAGES, np.array([1, 3]), epochs=1, batch_size=2, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    changed = [not np.array_equal(b, to_numpy(w)) for b, w in zip(before, model.trainable_weights)]
    assert sum(changed) > 0.9 * len(changed)


@pytest.mark.parametrize("family", sorted(SMALL))
def test_symbolic_call_and_input_tensor(family):
    inputs = keras.Input((32, 32, 3))
    model = small(family, input_tensor=inputs)
    outputs = keras.layers.Dense(2)(model.output)
    wrapper = keras.Model(inputs, outputs)
    assert to_numpy(wrapper(IMAGES)).shape == (2, 2)
    assert "input_tensor" not in model.get_config()


@pytest.mark.parametrize(
    "family,pooling,shape",
    [
        ("deepvit", "token", (2, 24)), ("deepvit", "avg", (2, 24)), ("deepvit", None, (2, 5, 24)),
        ("refiner", "token", (2, 24)), ("refiner", "avg", (2, 24)), ("refiner", None, (2, 5, 24)),
        ("pit", "token", (2, 16)), ("pit", "avg", (2, 16)), ("pit", None, (2, 4, 4, 16)),
    ],
)
def test_feature_extraction(family, pooling, shape):
    model = small(family, include_top=False, pooling=pooling)
    assert to_numpy(model(IMAGES)).shape == shape


@pytest.mark.parametrize("family,extra", [("refiner", "aux_logits"), ("pit", "dist_logits")])
def test_separate_heads(family, extra):
    model = small(family, separate_heads=True, classifier_activation=None)
    out = to_numpy(model(IMAGES))
    assert set(out) == {"logits", "cls_logits", extra}
    if family == "pit":
        np.testing.assert_allclose(out["logits"], (out["cls_logits"] + out["dist_logits"]) / 2, atol=1e-5)
    else:
        assert out["aux_logits"].shape == (2, 4, 5)
        combined = out["cls_logits"] + 0.5 * out["aux_logits"].max(axis=1)
        np.testing.assert_allclose(out["logits"], combined, atol=1e-5)
    compile_for_training(
        model,
        optimizer="adam",
        loss={"cls_logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True)},
    )
    model.fit(IMAGES, {"cls_logits": np.array([0, 1])}, epochs=1, verbose=0)


@pytest.mark.parametrize("family,tokens", [("deepvit", 5), ("refiner", 5), ("pit", None)])
def test_attention_model(family, tokens):
    model = small(family)
    maps = to_numpy(model.attention_model()(IMAGES))
    if family == "pit":  # grid 7x7 -> 4x4, plus 2 tokens (distilled)
        assert [m.shape for m in maps] == [(2, 2, 51, 51), (2, 4, 18, 18)]
    else:
        assert len(maps) == 3 and all(m.shape == (2, 4, tokens, tokens) for m in maps)


@pytest.mark.parametrize(
    "family,last_block,kwargs,tokens",
    [
        ("deepvit", "blocks_2", {}, 1),
        ("deepvit", "blocks_2", dict(include_top=False, pooling="token"), 1),
        ("deepvit", "blocks_2", dict(include_top=False, pooling="avg"), 5),
        ("pit", "transformers_1_blocks_0", {}, 2),
        ("refiner", "blocks_2", {}, 5),  # the dense head reads every token
    ],
)
def test_last_block_computes_only_the_tokens_the_output_reads(family, last_block, kwargs, tokens):
    model = small(family, **kwargs)
    # The class and distillation tokens, or all of them: the graph's own shape. The
    # block's first call is the attention-maps graph, its last the model's output graph.
    output = model.get_layer(last_block)._inbound_nodes[-1].outputs[0]  # refiner: (x, maps)
    assert output.shape[1] == tokens
    # That the logits are still the reference's is the parity suites' job
    # (test_torch_parity.py, test_fixture_parity.py), which run these models.


def test_mixed_precision_forward():
    # Training in mixed precision: tests/test_training_mixed_precision.py.
    keras.mixed_precision.set_global_policy("mixed_bfloat16")  # float16 matmuls are GPU-only in XLA:CPU
    try:
        for family in SMALL:
            probs = small(family).predict_on_batch(IMAGES)
            assert probs.dtype == np.float32
            assert np.all(np.isfinite(probs))
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_non_square_inputs_and_other_sizes():
    model = keras_deepvit.create_model("deepvit_16", input_shape=(48, 80, 3), depth=2, classes=3)
    assert infer(model, np.zeros((1, 48, 80, 3), "float32")).shape == (1, 3)
    model = keras_deepvit.create_model("pit_ti", input_shape=(80, 48, 3), classes=3)
    assert infer(model, np.zeros((1, 80, 48, 3), "float32")).shape == (1, 3)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(pooling="max"), "pooling must be one of"),
        (dict(classes=0), "classes must be a positive int"),
        (dict(input_shape=(32, 32)), r"input_shape must be \(height, width, channels\)"),
        (dict(re_attention=[True, False]), "re_attention must have 3 entries"),
        (dict(stem="vit"), "stem must be 'patch' or 'cnn'"),
        (dict(include_top=False, classifier_activation="sigmoid"), "has no effect"),
    ],
)
def test_bad_arguments(kwargs, match):
    cls, arch = SMALL["deepvit"]
    arch = dict(arch, input_shape=(32, 32, 3))
    arch.update(kwargs)
    with pytest.raises(ValueError, match=match):
        cls(**arch)


def test_refiner_first_block_cannot_share():
    with pytest.raises(ValueError, match="share_attention\\[0\\] must be False"):
        small("refiner", share_attention=[True, False, True])


def test_pit_rejects_tiny_images():
    with pytest.raises(ValueError, match="smaller than one patch"):
        PiT(base_dims=(4,), depth=(1,), heads=(2,), input_shape=(8, 8, 3))


CONSTRUCTORS = list(keras_deepvit.zoo.CONSTRUCTORS)
#: Building is the same Python on every backend, but on TensorFlow and JAX each new
#: model costs compilations (JAX compiles every initializer shape): they build one
#: constructor per family; the PyTorch backend builds every one at full size.
BUILT_CONSTRUCTORS = (
    CONSTRUCTORS if keras.backend.backend() == "torch" else ["DeepViTS", "RefinerViTS", "PiTTiDistilled"]
)


def constructor_variant(constructor):
    return inspect.signature(getattr(keras_deepvit, constructor)).parameters["name"].default


@pytest.mark.parametrize("family", sorted(SMALL))
def test_every_layer_is_built_with_the_model(family):
    # An unbuilt layer makes Keras-JAX's first `predict_on_batch`/`fit` run the whole
    # model eagerly, op by op, to build it.
    model = small(family, drop_path_rate=0.1)
    assert [layer.name for layer in model._flatten_layers() if not layer.built] == []


@pytest.mark.parametrize("constructor", CONSTRUCTORS)
def test_constructors_pass_every_argument_to_their_variant(constructor, monkeypatch):
    calls = []
    monkeypatch.setattr(registry, "create_model", lambda variant, **kw: calls.append((variant, kw)))
    arguments = dict(
        include_top=False, weights="w.weights.h5", input_tensor=None, input_shape=(64, 48, 3),
        pooling="avg", classes=7, classifier_activation=None, include_preprocessing=False,
        drop_path_rate=0.1, name="custom", depth=2,
    )
    getattr(keras_deepvit, constructor)(**arguments)
    ((variant, passed),) = calls
    assert variant == constructor_variant(constructor) and variant in keras_deepvit.list_models()
    assert {k: passed[k] for k in arguments} == arguments


@pytest.mark.parametrize("constructor", BUILT_CONSTRUCTORS)
def test_constructors_build_the_official_model(constructor):
    info = keras_deepvit.variant_info(constructor_variant(constructor))
    model = getattr(keras_deepvit, constructor)()
    assert model.input_shape == (None, info.size, info.size, 3)
    assert model.output_shape == (None, 1000)
    # The official count: parameters, not BatchNorm statistics.
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == info.params
    model = getattr(keras_deepvit, constructor)(input_shape=(64, 64, 3), classes=4, name="custom")
    assert model.name == "custom" and model.output_shape == (None, 4)


def test_create_model_errors():
    with pytest.raises(ValueError, match="Unknown model 'pit_xxl'"):
        keras_deepvit.create_model("pit_xxl")
    with pytest.raises(ValueError, match="No ImageNet weights for 'refiner_s'"):
        keras_deepvit.create_model("refiner_s", weights="imagenet", input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match="weights file not found"):
        keras_deepvit.create_model("pit_ti", weights="/nonexistent.weights.h5", input_shape=(64, 64, 3))


def test_weights_file_round_trip(tmp_path):
    model = keras_deepvit.PiTTi(input_shape=(64, 64, 3), classes=3)
    path = tmp_path / "pit.weights.h5"
    model.save_weights(path)
    again = keras_deepvit.PiTTi(input_shape=(64, 64, 3), classes=3, weights=str(path))
    images = np.random.default_rng(1).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(infer(again, images), infer(model, images), atol=1e-6)


def test_list_models():
    names = keras_deepvit.list_models()
    assert len(names) == 24 and names == sorted(names)
    assert set(keras_deepvit.list_models("refiner")) == {
        "refiner_s", "refiner_m", "refiner_l", "refiner_s_384", "refiner_m_384", "refiner_l_384",
        "refiner_l_448",
    }
