"""Every registered variant equals our own PyTorch reference
(keras_deepvit/testing/torch_reference.py, written from the published
architectures with the official key names), its state dict saved with
`torch.save` and loaded through `weights=PATH` (read without torch): random
weights and random BatchNorm statistics, eval mode.

Small configs: every variant at its real width and depth on a small image
(resolution variants share their base model's architecture and are covered by
it), on the PyTorch backend; one variant per code path on the XLA backends
(`XLA_VARIANTS`). Full size at 224x224: one model per family, every backend.
"""

import keras
import numpy as np
import pytest

import keras_deepvit
from helpers import infer, rel_l2, train_forward
from keras_deepvit.weights import keras_to_torch_state_dict, load_torch_state_dict

torch = pytest.importorskip("torch")
from keras_deepvit.testing import torch_reference as ref  # noqa: E402

BASE_VARIANTS = [n for n in keras_deepvit.list_models() if not n.endswith(("_384", "_448"))]
#: A registered configuration (depth, widths, which blocks re-attend, refine or share)
#: is the same on every backend, so the PyTorch backend, which runs these eagerly
#: without compiling, checks every variant. The XLA backends (TensorFlow, JAX), where
#: each new model costs compilations, check one variant per code path: CNN stem with
#: scaled re-attention in the last blocks (deepvit_s), patch stem re-attending in every
#: block (deepvit_16), no re-attention (vit_16_baseline), head expansion 6 and 3
#: (refiner_s, refiner_m), PiT (pit_ti); the distilled PiT is checked at full size
#: (pit_s_distilled, below). The full-size and fixture parity tests run on every backend.
XLA_VARIANTS = ["deepvit_s", "deepvit_16", "vit_16_baseline", "refiner_s", "refiner_m", "pit_ti"]
SMALL_CONFIG_VARIANTS = BASE_VARIANTS if keras.backend.backend() == "torch" else XLA_VARIANTS
#: The official tolerance: float32 noise grows with depth (fp32 vs fp64 reaches 6.7e-6
#: on the 32-block DeepViT-L), so 24/32-block models get 1e-4, the others 1e-5.
#: The target is the reference run in float64: our float32 error and the reference's
#: own float32 error are independent, so against a float32 reference they add up
#: (full-size DeepViT-S, attention BatchNorm variances ~5e-8: torch fp32 vs fp64
#: 5.4e-6, ours vs fp64 5.9e-6, ours vs torch fp32 1.04e-5).
DEEP_RTOL, RTOL = 1e-4, 1e-5


def reference_config(name):
    if name.startswith("vit_"):
        config = dict(ref.OFFICIAL_CONFIGS[name.replace("vit_", "deepvit_").replace("_baseline", "")])
        config["apply_transform"] = [False] * len(config["apply_transform"])
        return config
    return dict(ref.OFFICIAL_CONFIGS[name])


def tolerance(model):
    depth = len(getattr(model, "blocks", [])) or sum(len(s) for s in model.stages)
    return DEEP_RTOL if depth >= 24 else RTOL


def compare(name, size, batch, seed, directory):
    config = reference_config(name)
    config.update(img_size=size, num_classes=10)
    torch_model = ref.randomize_(ref.build_reference(config), seed=seed).eval()
    state = ref.state_dict_numpy(torch_model)
    images = np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype("float32")
    with torch.no_grad():
        float32 = torch_model(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
        expected = torch_model.double()(torch.from_numpy(images.transpose(0, 3, 1, 2)).double()).numpy()

    # Through a real checkpoint file, read without torch: `weights=PATH`.
    path = directory / f"{name}.pth"
    torch.save(torch_model.state_dict(), path)
    model = keras_deepvit.create_model(
        name, weights=path, input_shape=(size, size, 3), classes=10, classifier_activation=None,
        include_preprocessing=False,
    )
    actual = infer(model, images)
    error = rel_l2(actual, expected)
    assert error <= tolerance(model), (
        f"{name} at {size}: relative L2 error {error:.2e} vs float64 reference "
        f"({rel_l2(actual, float32):.2e} vs the float32 reference)"
    )
    return model, state


@pytest.mark.parametrize("name", SMALL_CONFIG_VARIANTS)
def test_small_config_parity(name, tmp_path):
    model, state = compare(name, size=32 if not name.startswith("pit") else 48, batch=2, seed=7,
                           directory=tmp_path)
    # The inverse mapping gives the official state dict back, key for key.
    exported = keras_to_torch_state_dict(model)
    expected_keys = [k for k in state if not k.endswith("num_batches_tracked")]
    assert sorted(exported) == sorted(expected_keys)
    for key in expected_keys:
        np.testing.assert_array_equal(exported[key], state[key].astype("float32"), err_msg=key)


@pytest.mark.parametrize("name", ["deepvit_s", "refiner_s", "pit_s_distilled"])
def test_full_size_parity(name, tmp_path):
    compare(name, size=224, batch=2, seed=11, directory=tmp_path)


def test_params_match_official_manifests():
    for name in keras_deepvit.list_models():
        info = keras_deepvit.variant_info(name)
        config = reference_config(name.replace("_384", "").replace("_448", "")) if not name.startswith(
            "deepvit_l_384") else reference_config(name)
        config["img_size"] = info.size
        with torch.device("meta"):
            reference = ref.build_reference(config)
        assert ref.count_parameters(reference) == info.params, name


def test_timm_pit_naming_loads():
    config = dict(ref.OFFICIAL_CONFIGS["pit_ti_distilled"], img_size=48, num_classes=10, naming="timm")
    torch_model = ref.randomize_(ref.build_reference(config), seed=3).eval()
    state = ref.state_dict_numpy(torch_model)
    assert any(".pool." in k for k in state)
    model = keras_deepvit.create_model(
        "pit_ti_distilled", input_shape=(48, 48, 3), classes=10, classifier_activation=None,
        include_preprocessing=False,
    )
    load_torch_state_dict(model, state)
    images = np.random.default_rng(3).normal(size=(2, 48, 48, 3)).astype("float32")
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    assert rel_l2(infer(model, images), expected) <= RTOL


def test_mismatched_state_dict_is_refused_and_nothing_loads():
    config = dict(ref.OFFICIAL_CONFIGS["pit_ti"], img_size=48, num_classes=10)
    state = ref.state_dict_numpy(ref.randomize_(ref.build_reference(config), seed=1))
    model = keras_deepvit.create_model("pit_xs", input_shape=(48, 48, 3), classes=10)
    before = [w.copy() for w in model.get_weights()]
    del state["norm.bias"]
    state["extra.weight"] = np.zeros(3, "float32")
    with pytest.raises(ValueError) as error:
        load_torch_state_dict(model, state)
    message = str(error.value)
    assert "missing keys 1: norm.bias" in message
    assert "unexpected keys 1: extra.weight" in message
    assert "shape mismatches" in message and "patch_embed.conv.weight (64, 3, 16, 16)" in message
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


@pytest.mark.parametrize("name", ["deepvit_s", "refiner_s", "pit_ti_distilled"])
def test_training_mode_forward(name, tmp_path):
    """Training mode (BatchNorm on batch statistics: re-attention's and the refiner's
    unfolded path) gives the reference's train-mode logits."""
    config = reference_config(name)
    config.update(img_size=48, num_classes=10)
    torch_model = ref.randomize_(ref.build_reference(config), seed=7).train()
    images = np.random.default_rng(7).normal(size=(4, 48, 48, 3)).astype("float32")
    path = tmp_path / f"{name}.pth"
    torch.save(torch_model.state_dict(), path)
    with torch.no_grad():
        expected = torch_model.double()(torch.from_numpy(images.transpose(0, 3, 1, 2)).double()).numpy()
    model = keras_deepvit.create_model(
        name, weights=path, input_shape=(48, 48, 3), classes=10, classifier_activation=None,
        include_preprocessing=False,
    )
    actual = train_forward(model, images)
    assert rel_l2(actual, expected) <= RTOL
