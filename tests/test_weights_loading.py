"""`weights=PATH`: the official fixtures through their files (no torch needed), train-script
and legacy checkpoints, EMA choice, resampling to other input sizes, other heads, refusals."""

import json
import logging

import keras
import numpy as np
import pytest

import keras_deepvit
from helpers import ALL_PASSES, TINY_DIR, infer, keras_kwargs_from_official, rel_l2, to_numpy
from keras_deepvit.models import DeepViT, PiT, RefinerViT
from keras_deepvit.weights import keras_to_torch_state_dict, load_checkpoint
from keras_deepvit.weights.resample import resample_map_embedding, resample_token_embedding

safetensors_numpy = pytest.importorskip("safetensors.numpy")

FIXTURE_FILES = [
    ("tiny_deepvit_cnn", "tiny_deepvit_cnn.pth"),
    ("tiny_deepvit_cnn_nonsquare", "tiny_deepvit_cnn_nonsquare.pth"),
    ("tiny_deepvit_patch", "tiny_deepvit_patch.pth"),
    ("tiny_deepvit_patch", "tiny_deepvit_patch.timm_ckpt.pth"),
    ("tiny_refiner", "tiny_refiner.pth"),
    ("tiny_refiner_nodense", "tiny_refiner_nodense.pth"),
    ("tiny_refiner_96", "tiny_refiner_96.pth"),
    ("tiny_refiner_96", "tiny_refiner_96.legacy.pth"),
    ("tiny_refiner_transform", "tiny_refiner_transform.pth"),
    ("tiny_pit", "tiny_pit.pth"),
    ("tiny_pit", "tiny_pit.timm_ckpt.pth"),
    ("tiny_pit_distilled", "tiny_pit_distilled.pth"),
    ("tiny_pit_even", "tiny_pit_even.pth"),
    ("tiny_timm_pit", "tiny_timm_pit.pth"),
    ("tiny_timm_pit_distilled", "tiny_timm_pit_distilled.pth"),
]
#: Reading and mapping a file is the same on every backend, and every backend's logits
#: are checked against every fixture in test_fixture_parity.py: the PyTorch pass loads
#: every file layout here, the others one file per family through the same path.
LOADED_FIXTURE_FILES = (
    FIXTURE_FILES if keras.backend.backend() == "torch" or ALL_PASSES
    else [FIXTURE_FILES[0], FIXTURE_FILES[7], FIXTURE_FILES[11]]
)
needs_fixtures = pytest.mark.skipif(not TINY_DIR.is_dir(), reason=f"no reference fixtures at {TINY_DIR}")


def fixture_meta(name):
    meta = json.loads((TINY_DIR / f"{name}.keys.json").read_text())
    return meta, dict(np.load(TINY_DIR / f"{name}.npz"))


def built_with(family, weights, **kwargs):
    """A family model with a weights file loaded (family classes build architectures only)."""
    return keras_deepvit.weights.load_weights(family(**kwargs), weights)


def fixture_model(meta, arrays, weights=None, **overrides):
    family, kwargs = keras_kwargs_from_official(meta["model_class"], meta["class_kwargs"])
    kwargs.update(
        input_shape=arrays["input_nhwc"].shape[1:], classifier_activation=None,
        include_preprocessing=False,
    )
    kwargs.update(overrides)
    return built_with(family, weights, **kwargs)


@needs_fixtures
@pytest.mark.parametrize("name,filename", LOADED_FIXTURE_FILES)
def test_official_fixture_through_weights_path(name, filename):
    meta, arrays = fixture_meta(name)
    path = TINY_DIR / filename
    if filename.endswith("timm_ckpt.pth") and name == "tiny_deepvit_patch":
        # timm's train script pickles its argparse.Namespace: skipped, never imported.
        with pytest.warns(UserWarning, match="argparse.Namespace"):
            model = fixture_model(meta, arrays, weights=path)
    else:
        model = fixture_model(meta, arrays, weights=path)
    logits = infer(model, arrays["input_nhwc"])
    assert rel_l2(logits, arrays["logits"]) <= 1e-5


@needs_fixtures
def test_create_model_takes_a_fixture_path():
    meta, arrays = fixture_meta("tiny_timm_pit_distilled")
    _, kwargs = keras_kwargs_from_official(meta["model_class"], meta["class_kwargs"])
    kwargs.pop("distilled")
    model = keras_deepvit.create_model(
        "pit_ti_distilled", weights=TINY_DIR / "tiny_timm_pit_distilled.pth",
        input_shape=arrays["input_nhwc"].shape[1:], include_preprocessing=False,
        classifier_activation=None, **kwargs,
    )
    assert rel_l2(infer(model, arrays["input_nhwc"]), arrays["logits"]) <= 1e-5


SMALL = {
    "deepvit": (DeepViT, dict(depth=2, embed_dim=24, num_heads=4, stem="cnn", re_attention=[False, True])),
    "refiner": (RefinerViT, dict(depth=2, embed_dim=24, num_heads=4, head_expand=2)),
    "pit": (PiT, dict(base_dims=(8, 8), depth=(1, 1), heads=(2, 4))),
}


def small_checkpoint(family_name, tmp_path, size=(224, 224)):
    family, arch = SMALL[family_name]
    donor = family(input_shape=size + (3,), classifier_activation=None, **arch)
    state = keras_to_torch_state_dict(donor)
    path = str(tmp_path / f"{family_name}.safetensors")
    safetensors_numpy.save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, path)
    return family, arch, state, path


@pytest.mark.parametrize("family_name", sorted(SMALL))
@pytest.mark.parametrize("size", [(384, 384), (64, 48)])
def test_224_checkpoint_at_other_input_sizes(family_name, size, tmp_path):
    family, arch, state, path = small_checkpoint(family_name, tmp_path)
    model = built_with(family, path, input_shape=size + (3,), classifier_activation=None, **arch)
    out = infer(model, np.random.default_rng(0).normal(size=(2,) + size + (3,)).astype("float32"))
    assert out.shape == (2, 1000) and np.isfinite(out).all()

    loaded = keras_to_torch_state_dict(model)
    if family_name == "pit":
        grid = tuple(model.pos_embed.embedding.shape[1:3])
        expected = resample_map_embedding(state["pos_embed"], grid)
    else:
        grid = (size[0] // 16, size[1] // 16)
        expected = resample_token_embedding(state["pos_embed"], grid)
        np.testing.assert_array_equal(loaded["pos_embed"][:, 0], state["pos_embed"][:, 0])
    np.testing.assert_allclose(loaded["pos_embed"], expected, rtol=1e-6, atol=1e-7)
    for key in state:
        if key != "pos_embed" and not key.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(loaded[key], state[key], err_msg=key)


def test_registered_pit_ti_224_checkpoint_at_384_and_64x48(tmp_path):
    donor = keras_deepvit.create_model("pit_ti")
    path = str(tmp_path / "pit_ti.safetensors")
    safetensors_numpy.save_file(keras_to_torch_state_dict(donor), path)
    for size in [(384, 384), (64, 48)]:
        model = keras_deepvit.create_model("pit_ti", weights=path, input_shape=size + (3,))
        probs = infer(model, np.full((1,) + size + (3,), 128.0, "float32"))
        assert probs.shape == (1, 1000) and abs(probs.sum() - 1) < 1e-4


@pytest.mark.parametrize("family_name", sorted(SMALL))
def test_other_classes_and_no_top_load_all_but_the_heads(family_name, tmp_path, caplog):
    family, arch, state, path = small_checkpoint(family_name, tmp_path, size=(64, 64))
    with caplog.at_level(logging.WARNING, logger="keras_deepvit"):
        model = built_with(family, path, input_shape=(64, 64, 3), classes=10, **arch)
    lines = [r.getMessage() for r in caplog.records if "classifier head" in r.getMessage()]
    assert len(lines) == 1 and "classes=10 differs from the checkpoint's 1000" in lines[0]
    assert model.output_shape == (None, 10)
    loaded = keras_to_torch_state_dict(model)
    assert loaded["head.weight"].shape == (10, loaded["norm.weight"].shape[0])
    np.testing.assert_array_equal(loaded["norm.weight"], state["norm.weight"])

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="keras_deepvit"):
        features = built_with(family, path, input_shape=(64, 64, 3), include_top=False, pooling="token", **arch)
    assert any("include_top=False" in r.getMessage() for r in caplog.records)
    assert len(features.output_shape) == 2


def test_keras_file_adapts_to_the_new_model(tmp_path):
    family, arch = SMALL["pit"]
    saved = family(input_shape=(64, 64, 3), classes=7, **arch)
    saved.save(tmp_path / "pit.keras")
    model = built_with(family, tmp_path / "pit.keras", input_shape=(96, 64, 3), classes=3, **arch)
    np.testing.assert_array_equal(
        to_numpy(model.norm.gamma), to_numpy(saved.norm.gamma)
    )


def test_weights_h5_of_another_config_is_refused_and_nothing_changes(tmp_path):
    family, arch = SMALL["pit"]
    family(input_shape=(64, 64, 3), classes=7, **arch).save_weights(tmp_path / "other.weights.h5")
    model = family(input_shape=(64, 64, 3), classes=5, **arch)
    before = model.get_weights()
    with pytest.raises(ValueError, match="same configuration"):
        keras_deepvit.weights.load_weights(model, tmp_path / "other.weights.h5")
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_mismatched_checkpoint_names_the_model_it_looks_like(tmp_path):
    donor = keras_deepvit.create_model("pit_ti", input_shape=(64, 64, 3))
    path = str(tmp_path / "pit_ti.safetensors")
    safetensors_numpy.save_file(keras_to_torch_state_dict(donor), path)
    model = keras_deepvit.create_model("pit_xs", input_shape=(64, 64, 3))
    before = model.get_weights()
    with pytest.raises(ValueError) as error:
        load_checkpoint(model, path)  # the weights layer knows families, not variants
    message = str(error.value)
    assert path in message and "shape mismatches" in message
    assert "is a pit model (depth=[2, 6, 4]" in message
    with pytest.raises(ValueError, match="looks like 'pit_ti'"):  # through the zoo
        keras_deepvit.create_model("pit_xs", input_shape=(64, 64, 3), weights=path)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_missing_file_and_bad_argument():
    with pytest.raises(ValueError, match="not found"):
        keras_deepvit.create_model("pit_ti", weights="/nonexistent/pit_ti.pth", input_shape=(64, 64, 3))
    with pytest.raises(TypeError, match="takes no weights= argument"):
        PiT(base_dims=(8,), depth=(1,), heads=(2,), input_shape=(64, 64, 3), weights="imagenet")
    with pytest.raises(ValueError, match="registered model"):
        keras_deepvit.weights.load_weights(PiT(base_dims=(8,), depth=(1,), heads=(2,), input_shape=(64, 64, 3)), "imagenet")
    with pytest.raises(ValueError, match="weights must be"):
        keras_deepvit.weights.load_weights(keras_deepvit.create_model("pit_ti", input_shape=(64, 64, 3)), 3)


class TestWithTorchFiles:
    """Checkpoint layouts written by torch itself (skipped without torch)."""

    @pytest.fixture(autouse=True)
    def _torch(self):
        self.torch = pytest.importorskip("torch")

    def small_state(self, seed):
        family, arch = SMALL["pit"]
        keras.utils.set_random_seed(seed)
        model = family(input_shape=(64, 64, 3), **arch)
        return {k: self.torch.from_numpy(v) for k, v in keras_to_torch_state_dict(model).items()}

    def test_ema_is_preferred_and_can_be_declined(self, tmp_path):
        raw, ema = self.small_state(1), self.small_state(2)
        path = tmp_path / "train.pth.tar"
        self.torch.save({"epoch": 3, "state_dict": raw, "state_dict_ema": ema, "metric": 1.0}, path)
        family, arch = SMALL["pit"]
        model = family(input_shape=(64, 64, 3), **arch)
        assert "state_dict_ema" in load_checkpoint(model, str(path))
        np.testing.assert_array_equal(to_numpy(model.norm.gamma), ema["norm.weight"].numpy())
        assert "'state_dict'" in load_checkpoint(model, str(path), prefer_ema=False)
        np.testing.assert_array_equal(to_numpy(model.norm.gamma), raw["norm.weight"].numpy())

    def test_module_prefix_and_model_key(self, tmp_path):
        state = self.small_state(3)
        path = tmp_path / "ddp.pth"
        self.torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, path)
        family, arch = SMALL["pit"]
        model = built_with(family, path, input_shape=(64, 64, 3), **arch)
        np.testing.assert_array_equal(to_numpy(model.norm.gamma), state["norm.weight"].numpy())

    def test_pickled_code_in_the_weights_is_refused_and_never_runs(self, tmp_path):
        marker = tmp_path / "payload_ran"

        class Payload:
            def __reduce__(self):
                import os

                return (os.system, (f"touch {marker}",))

        state = dict(self.small_state(4))
        state["norm.weight"] = Payload()
        path = tmp_path / "evil.pth"
        self.torch.save({"state_dict": state}, path)
        family, arch = SMALL["pit"]
        model = family(input_shape=(64, 64, 3), **arch)
        before = model.get_weights()
        with pytest.raises(ValueError, match=r"holds a pickled call to posix\.system at key 'norm\.weight'; "
                           "nothing was executed"):
            keras_deepvit.weights.load_weights(model, path)
        assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
        # A payload standing for all the weights: no state dict, and the message still says why.
        self.torch.save({"pos_embed": Payload()}, path)
        with pytest.raises(ValueError, match=r"no model weights could be read: the file holds a pickled "
                           r"call to posix\.system at key 'pos_embed'"):
            keras_deepvit.weights.read_state_dict(path)
        assert not marker.exists()


# --- All or nothing: every value checked before the first variable is assigned -----------

TINY_PIT = dict(base_dims=(16,), depth=(1,), heads=(2,), input_shape=(32, 32, 3), classes=4)


def snapshot(model):
    """Copies of every variable (a PyTorch CPU variable's numpy view shares its memory)."""
    return [np.array(to_numpy(v), copy=True) for v in model.variables]


def assert_unchanged(model, before):
    after = snapshot(model)
    assert len(after) == len(before)
    changed = [v.path for v, a, b in zip(model.variables, before, after) if not np.array_equal(a, b, equal_nan=True)]
    assert not changed, f"{len(changed)} of {len(before)} variables changed: {changed[:5]}"


def tiny_pit_state(seed=1):
    keras.utils.set_random_seed(seed)
    return keras_to_torch_state_dict(PiT(**TINY_PIT))


def last_key(model):
    return [key for key, _, _ in model.checkpoint_layout()][-1]


BAD_VALUES = {
    "strings": (lambda a: [["x"] * a.shape[-1]] * a.shape[0] if a.ndim == 2 else ["x"] * a.size, r"holds strings|<U1 values"),
    "none": (lambda a: [None] * a.shape[0], r"holds Python objects|is a list holding object"),
    "nan": (lambda a: np.full(a.shape, np.nan, "float32"), "non-finite"),
    "inf": (lambda a: np.full(a.shape, np.inf, "float32"), "non-finite"),
    "overflow": (lambda a: np.full(a.shape, 1e300), "outside the range of float32"),
    "complex": (lambda a: a.astype("complex64"), "holds complex numbers"),
    "bool": (lambda a: np.ones(a.shape, bool), "holds booleans"),
    "ragged": (lambda a: [[1.0, 2.0], [3.0]], r"not an array|not array-like"),
}


def test_a_bad_value_loads_nothing():
    model = PiT(**TINY_PIT)
    key = last_key(model)  # every other key would be assigned first by a loader that goes along
    before, good = snapshot(model), tiny_pit_state()
    for kind, (make, message) in BAD_VALUES.items():
        state = dict(good, **{key: make(good[key])})
        for load in (keras_deepvit.weights.load_torch_state_dict, keras_deepvit.weights.load_state_dict_into):
            with pytest.raises(ValueError, match=message) as error:
                load(model, state)
                pytest.fail(f"{kind} loaded")
            assert repr(key) in str(error.value), kind
            assert_unchanged(model, before)


def test_nonfinite_values_load_when_asked():
    model = PiT(**TINY_PIT)
    state = tiny_pit_state()
    state["norm.weight"] = np.full_like(state["norm.weight"], np.nan)
    keras_deepvit.weights.load_state_dict_into(model, state, allow_nonfinite=True)
    assert np.isnan(to_numpy(model.norm.gamma)).all()


def save_safetensors(state, path):
    safetensors_numpy.save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(path))
    return path


def test_nan_checkpoint_files_load_nothing(tmp_path):
    model = PiT(**TINY_PIT)
    state = tiny_pit_state()
    state[last_key(model)] = np.full_like(state[last_key(model)], np.nan)
    path = save_safetensors(state, tmp_path / "nan.safetensors")
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"nan\.safetensors.*non-finite.*allow_nonfinite=True"):
        keras_deepvit.weights.load_weights(model, path)
    assert_unchanged(model, before)
    keras_deepvit.weights.load_weights(model, path, allow_nonfinite=True)

    donor = PiT(**TINY_PIT)
    donor.head.kernel.assign(np.full(donor.head.kernel.shape, np.inf, "float32"))
    for suffix in (".weights.h5", ".keras"):
        saved = tmp_path / f"inf{suffix}"
        donor.save_weights(saved) if suffix == ".weights.h5" else donor.save(saved)
        model = PiT(**TINY_PIT)
        before = snapshot(model)
        with pytest.raises(ValueError, match=r"non-finite") as error:
            keras_deepvit.weights.load_weights(model, saved)
        assert str(saved) in str(error.value)
        assert_unchanged(model, before)


def test_stale_imagenet_cache_loads_nothing(tmp_path):
    from keras_deepvit.zoo.imagenet import converted_filename, load_imagenet_weights

    record = keras_deepvit.variant_info("pit_ti")
    model = keras_deepvit.create_model("pit_ti", input_shape=(32, 32, 3))
    state = keras_to_torch_state_dict(model)
    state["head.bias"] = np.full_like(state["head.bias"], np.nan)
    save_safetensors(state, tmp_path / converted_filename(record))
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"imagenet\.safetensors.*'head\.bias' has 1,000 non-finite"):
        load_imagenet_weights(model, record, cache_dir=str(tmp_path))
    assert_unchanged(model, before)


def test_shape_mismatches_compare_pytorch_layouts():
    model = PiT(**TINY_PIT)
    state = tiny_pit_state()
    state["head.weight"] = np.zeros((4, 17), "float32")  # model: Linear(32 -> 4), (out, in) = (4, 32)
    with pytest.raises(ValueError, match=r"head\.weight \(4, 17\), model needs \(4, 32\)") as error:
        keras_deepvit.weights.load_torch_state_dict(model, state)
    assert "(32, 4)" not in str(error.value)  # the Keras kernel layout is never shown


def test_long_key_lists_are_cut_with_counts():
    model = PiT(**TINY_PIT)
    state = dict(tiny_pit_state(), **{f"extra.{i}": np.zeros(1, "float32") for i in range(20_000)})
    with pytest.raises(ValueError, match=r"unexpected keys 20,000: extra\.0, .* \.\.\. and 19,990 more") as error:
        keras_deepvit.weights.load_torch_state_dict(model, state)
    assert len(str(error.value)) < 1500


def test_non_array_values_and_token_mismatch_are_named():
    model = PiT(**TINY_PIT)
    state = tiny_pit_state()
    state["pos_embed"] = "not an array"
    with pytest.raises(ValueError, match=r"'pos_embed' holds strings"):
        keras_deepvit.weights.load_state_dict_into(model, state)
    state = tiny_pit_state()
    state["dist_token"] = np.zeros((1, 1, 7), "float32")
    with pytest.raises(ValueError, match=r"cls_token \(1, 1, 32\) and dist_token \(1, 1, 7\) do not join"):
        keras_deepvit.weights.load_state_dict_into(model, state)


def test_keras_files_misfit_or_truncated_load_nothing(tmp_path):
    PiT(**dict(TINY_PIT, classes=7)).save_weights(tmp_path / "other.weights.h5")
    PiT(**dict(TINY_PIT, depth=(2,))).save_weights(tmp_path / "deeper.weights.h5")
    model = PiT(**dict(TINY_PIT, depth=(2,)))
    model.save(tmp_path / "good.keras")
    model = PiT(**TINY_PIT)
    before = snapshot(model)
    for name in ("other.weights.h5", "deeper.weights.h5"):
        with pytest.raises(ValueError, match="same configuration") as error:
            keras_deepvit.weights.load_weights(model, tmp_path / name)
        message = str(error.value)
        assert len(message) < 1000 and "value=" not in message, message
        assert_unchanged(model, before)
    model.save_weights(tmp_path / "same.weights.h5")
    for name in ("same.weights.h5", "good.keras"):
        data = (tmp_path / name).read_bytes()
        truncated = tmp_path / f"truncated_{name}"
        truncated.write_bytes(data[: len(data) // 2])
        with pytest.raises(ValueError, match="truncated or corrupt") as error:
            keras_deepvit.weights.load_weights(model, truncated)
        assert str(truncated) in str(error.value) and "not found" not in str(error.value)
        assert_unchanged(model, before)


def test_no_weights_message_cuts_the_keys():
    content = {f"k{i}": i for i in range(200_000)}
    with pytest.raises(ValueError, match=r"a dict of 200,000 keys: 'k0', .* \.\.\. and 199,990 more\.$") as error:
        keras_deepvit.weights.extract_state_dict(content, source="big.pth")
    assert len(str(error.value)) < 1000


def test_values_doctests():
    import doctest

    from keras_deepvit.weights import values

    assert doctest.testmod(values).failed == 0
