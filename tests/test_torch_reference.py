"""Checks that ``keras_deepvit/testing/torch_reference.py`` reproduces the official PyTorch models.

The fixtures in ``shared/reference`` were made with the official DeepViT,
Refiner-ViT and PiT code (see its README). Here the plain-torch reference
models must

* load every tiny checkpoint with ``strict=True`` and reproduce its logits,
  head outputs and per-block activations (relative L2 <= 1e-5), and
* reproduce, for every full-size registered model, the state_dict keys (in
  order), shapes, dtypes and parameter count -- built on the ``meta`` device,
  so no weights are allocated.

The fixture directory defaults to ``<repo>/../shared/reference`` and can be
moved with ``KERAS_DEEPVIT_REFERENCE_DIR``; without it the fixture tests skip.
"""

from __future__ import annotations

import json
import os

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from keras_deepvit.testing import torch_reference as ref  # noqa: E402
from helpers import in_one_pass  # noqa: E402

pytestmark = in_one_pass("torch", "the PyTorch references use no Keras backend")

REFERENCE_DIR = Path(os.environ.get(
    "KERAS_DEEPVIT_REFERENCE_DIR",
    Path(__file__).resolve().parents[2] / "shared" / "reference"))
TINY_DIR = REFERENCE_DIR / "tiny"
FULL_DIR = REFERENCE_DIR / "full_keys"

needs_fixtures = pytest.mark.skipif(
    not REFERENCE_DIR.is_dir(), reason=f"reference fixtures not found at {REFERENCE_DIR}")

TINY_FIXTURES = [
    "tiny_deepvit_cnn", "tiny_deepvit_cnn_nonsquare", "tiny_deepvit_patch",
    "tiny_refiner", "tiny_refiner_nodense", "tiny_refiner_96", "tiny_refiner_transform",
    "tiny_pit", "tiny_pit_distilled", "tiny_pit_even", "tiny_timm_pit",
    "tiny_timm_pit_distilled",
]

# Full-size manifest -> (OFFICIAL_CONFIGS entry, overrides).
FULL_SIZE = {
    **{f"deepvit_patch16_224_re_attn_{d}b": (f"deepvit_{d}", {}) for d in (16, 24, 32)},
    "deepvit_S": ("deepvit_s", {}),
    "deepvit_L": ("deepvit_l", {}),
    "deepvit_L_384": ("deepvit_l_384", {}),
    "Refiner_ViT_S": ("refiner_s", {}),
    "Refiner_ViT_M": ("refiner_m", {}),
    "Refiner_ViT_L": ("refiner_l", {}),
    **{name: (name, {}) for name in
       ("pit_ti", "pit_ti_distilled", "pit_xs", "pit_s", "pit_s_distilled", "pit_b")},
    "timm_pit_s_224": ("pit_s", {"naming": "timm"}),
    "timm_pit_s_distilled_224": ("pit_s_distilled", {"naming": "timm"}),
}

# Parity bound from the fixture README: ~6x above the worst fp32-vs-fp64 noise.
RTOL = 1e-5


def rel_l2(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def load_meta(path: Path) -> dict:
    return json.loads(path.read_text())


def build_from_meta(meta: dict, **overrides) -> torch.nn.Module:
    config = ref.config_from_official_kwargs(meta["model_class"], meta["class_kwargs"])
    return ref.build_reference(config, **overrides)


def manifest(model: torch.nn.Module) -> list[tuple[str, list[int], str]]:
    return [(key, list(t.shape), str(t.dtype).replace("torch.", ""))
            for key, t in model.state_dict().items()]


def record_activations(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """Forward hooks that store activations under the fixture ``inter.*`` names."""
    acts: dict[str, np.ndarray] = {}

    def hook(name, kind):
        def fn(module, inputs, output):
            if kind == "tokens":  # stem output (B, C, h, w) -> (B, N, C)
                acts[name] = output.flatten(2).transpose(1, 2).numpy()
            elif kind == "map":
                acts[name] = output.numpy()
            elif kind == "block":  # (tokens, attention map)
                acts[name], acts[f"{name}.attn"] = output[0].numpy(), output[1].numpy()
            else:  # PiT (map, class tokens)
                acts[name], acts[f"{name}.cls"] = output[0].numpy(), output[1].numpy()
        return fn

    if isinstance(model, ref.PiTReference):
        model.patch_embed.conv.register_forward_hook(hook("inter.patch_embed", "map"))
        for group in ("transformers", "pools"):
            for i, stage in enumerate(getattr(model, group, [])):
                stage.register_forward_hook(hook(f"inter.{group}.{i}", "pit"))
    else:
        stem_kind = "tokens" if isinstance(model, ref.DeepViTReference) else "map"
        model.patch_embed.register_forward_hook(hook("inter.patch_embed", stem_kind))
        for i, block in enumerate(model.blocks):
            block.register_forward_hook(hook(f"inter.blocks.{i}", "block"))
    return acts


@needs_fixtures
def test_fixture_list_is_complete():
    found = sorted(p.name[: -len(".keys.json")] for p in TINY_DIR.glob("*.keys.json"))
    assert found == sorted(TINY_FIXTURES)
    found = sorted(p.name[: -len(".keys.json")] for p in FULL_DIR.glob("*.keys.json"))
    assert found == sorted(FULL_SIZE)


@needs_fixtures
@pytest.mark.parametrize("name", TINY_FIXTURES)
def test_tiny_fixture_parity(name):
    meta = load_meta(TINY_DIR / f"{name}.keys.json")
    model = build_from_meta(meta)
    assert manifest(model) == [(e["key"], e["shape"], e["dtype"]) for e in meta["state_dict"]]
    assert ref.count_parameters(model) == meta["num_params"]

    state = torch.load(TINY_DIR / f"{name}.pth", map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval()
    arrays = np.load(TINY_DIR / f"{name}.npz")
    acts = record_activations(model)
    with torch.no_grad():
        out = model(torch.from_numpy(arrays["input_nchw"]), return_heads=True)

    assert rel_l2(out["logits"].numpy(), arrays["logits"]) <= RTOL
    heads = [k for k in ("logits_cls", "logits_aux", "logits_aux_max", "logits_dist",
                         "pre_logits") if k in arrays.files]
    assert sorted(k for k in heads if k != "pre_logits") == sorted(
        k for k in out if k not in ("logits", "pre_logits"))
    for key in heads:
        assert rel_l2(out[key].numpy(), arrays[key]) <= RTOL, key
    inter = [k for k in arrays.files if k.startswith("inter.")]
    assert sorted(acts) == sorted(inter)
    for key in inter:
        assert rel_l2(acts[key], arrays[key]) <= RTOL, key


@needs_fixtures
@pytest.mark.parametrize("name", sorted(FULL_SIZE))
def test_full_size_manifest(name):
    meta = load_meta(FULL_DIR / f"{name}.keys.json")
    config_name, overrides = FULL_SIZE[name]
    with torch.device("meta"):
        model = ref.build_reference(config_name, **overrides)
    assert manifest(model) == [(e["key"], e["shape"], e["dtype"]) for e in meta["state_dict"]]
    assert len(meta["state_dict"]) == meta["num_state_dict_entries"]
    assert ref.count_parameters(model) == meta["num_params"]

    # Settings invisible in the keys (transform_scale, scale_adjustment, ...)
    # must match the upstream constructor arguments too.
    from_upstream = ref.config_from_official_kwargs(meta["model_class"], meta["class_kwargs"])
    expected = dict(ref.OFFICIAL_CONFIGS[config_name], **overrides)
    for config in (from_upstream, expected):
        config["img_size"] = ref._pair(config["img_size"])
    assert from_upstream == expected
    if not name.startswith("timm_"):
        assert ref.OFFICIAL_REGISTERED_NAMES[config_name] == meta["constructor"]


def test_official_configs_build():
    """Every registered config builds; the ViT baselines only lose re-attention."""
    for name in ref.OFFICIAL_CONFIGS:
        with torch.device("meta"):
            model = ref.build_reference(name)
        assert ref.count_parameters(model) > 0
    with torch.device("meta"):
        deepvit = ref.build_reference("deepvit_16")
        baseline = ref.build_reference("vit_16_baseline")
    extra = {k for k in deepvit.state_dict()} - set(baseline.state_dict())
    assert extra and all(".reatten_matrix." in k or ".var_norm." in k for k in extra)


TINY_CONFIGS = {
    "deepvit": dict(family="deepvit", img_size=(32, 48), embed_dim=24, num_heads=4,
                    apply_transform=[False, True], use_cnn_embed=True, transform_scale=True,
                    scale_adjustment=0.5, num_classes=7),
    "refiner": dict(family="refiner", img_size=32, embed_dim=24, num_heads=4,
                    shared=[False, True, False], apply_transform=[False, False, True],
                    head_expand=2, num_classes=7),
    "pit": dict(family="pit", img_size=40, patch_size=8, stride=4, base_dims=[4, 4],
                depth=[1, 1], heads=[2, 4], distilled=True, num_classes=7),
}


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_randomize_is_deterministic_and_nontrivial(family):
    def make(seed):
        return ref.randomize_(ref.build_reference(TINY_CONFIGS[family]), seed=seed)

    first, again, other = (ref.state_dict_numpy(make(s)) for s in (3, 3, 4))
    model = make(3)
    assert list(first) == list(model.state_dict())
    for key, value in first.items():
        np.testing.assert_array_equal(value, again[key])
        assert value.dtype == (np.int64 if key.endswith("num_batches_tracked") else np.float32)
        if value.dtype == np.float32:
            assert np.isfinite(value).all(), key
            assert not np.array_equal(value, other[key]), key
    for key, value in first.items():
        if key.endswith("running_var"):
            assert (value > 0).all() and not np.allclose(value, 1.0), key
        elif key.endswith("running_mean"):
            assert not np.allclose(value, 0.0), key
        elif key.endswith("scale_channel"):
            assert (value >= 1e-5).all() and (value <= 1.0).all()
    if family != "pit":
        # BNs on attention maps see small calibrated variances (eps matters).
        attn_vars = [v for k, v in first.items() if ".attn." in k and k.endswith("running_var")]
        assert attn_vars and min(v.min() for v in attn_vars) < 1e-2

    height, width = model.img_size
    x = torch.randn(3, 3, height, width, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(x, return_heads=True)
    logits = out["logits"].numpy()
    assert np.isfinite(logits).all() and logits.std() > 0.1
    assert np.linalg.norm(logits - logits.mean(0)) / np.linalg.norm(logits) > 0.05
    if family == "pit":
        torch.testing.assert_close(out["logits"], (out["logits_cls"] + out["logits_dist"]) / 2)
    elif family == "refiner":
        torch.testing.assert_close(
            out["logits"], out["logits_cls"] + 0.5 * out["logits_aux"].max(dim=1).values)


def test_official_kwargs_rejects_unsupported():
    kwargs = dict(embed_dim=24, num_heads=4, depth=[False, True], head_expand=3)
    with pytest.raises(ValueError):
        ref.config_from_official_kwargs("Refiner_ViT", dict(kwargs, share_atten=False))
    with pytest.raises(ValueError):
        ref.config_from_official_kwargs("Refiner_ViT", dict(kwargs, qk_scale=0.1))
    with pytest.raises(ValueError):
        ref.config_from_official_kwargs("Refiner_ViT", dict(
            kwargs, norm_layer="partial(torch.nn.modules.normalization.LayerNorm, eps=1e-05)"))
