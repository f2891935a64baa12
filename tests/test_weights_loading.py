"""`weights=PATH`: the official fixtures through their files (no torch needed), train-script
and legacy checkpoints, EMA choice, resampling to other input sizes, other heads, refusals."""

import json
import logging

import keras
import numpy as np
import pytest

import keras_deepvit
from helpers import TINY_DIR, infer, keras_kwargs_from_official, rel_l2, to_numpy
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
@pytest.mark.parametrize("name,filename", FIXTURE_FILES)
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
