"""Checkpoint normalisation, architecture identification and position-embedding resampling:
pure functions on numpy state dicts."""

import json

import numpy as np
import pytest

import keras_deepvit
from helpers import REFERENCE_DIR
from keras_deepvit.weights import architecture_of
from keras_deepvit.zoo import describe, looks_like
from keras_deepvit.weights.checkpoint import extract_state_dict, is_state_dict, normalize_state_dict
from keras_deepvit.weights.resample import (
    bicubic_matrix,
    resample_map_embedding,
    resample_token_embedding,
    resize_grid,
)

FULL_DIR = REFERENCE_DIR / "full_keys"


def test_extract_prefers_ema_and_unwraps_nested_containers():
    raw, ema = {"w": np.zeros(2)}, {"w": np.ones(2)}
    checkpoint = {"epoch": 1, "state_dict": raw, "state_dict_ema": ema, "args": object()}
    assert extract_state_dict(checkpoint)[0] is not raw
    np.testing.assert_array_equal(extract_state_dict(checkpoint)[0]["w"], ema["w"])
    assert extract_state_dict(checkpoint, prefer_ema=False) == (raw, "state_dict")
    assert extract_state_dict({"model": {"module": raw}})[1] == "model.module"
    assert extract_state_dict(raw) == (raw, "")


def test_extract_explains_what_it_found():
    with pytest.raises(ValueError, match=r"ckpt.pth: no model weights found.*'epoch', 'optimizer'"):
        extract_state_dict({"epoch": 3, "optimizer": {"state": {}}}, source="ckpt.pth")
    with pytest.raises(ValueError, match="list"):
        extract_state_dict([1, 2], source="x")
    assert not is_state_dict({})


def test_prefixes_are_stripped():
    sd = {"module._orig_mod.norm.weight": np.zeros(1), "module._orig_mod.norm.bias": np.zeros(1)}
    assert sorted(normalize_state_dict(sd)) == ["norm.bias", "norm.weight"]


@pytest.mark.parametrize(
    "keys,expected",
    [
        # timm >= 0.9: the pooling opens stage i+1.
        (["transformers.1.pool.fc.weight", "transformers.2.pool.fc.weight"], ["pools.0.fc.weight", "pools.1.fc.weight"]),
        # the other numbering: the pooling closes stage i.
        (["transformers.0.pool.fc.weight", "transformers.1.pool.fc.weight"], ["pools.0.fc.weight", "pools.1.fc.weight"]),
        (["pools.0.fc.weight"], ["pools.0.fc.weight"]),
    ],
)
def test_pit_pool_naming(keys, expected):
    assert sorted(normalize_state_dict({k: np.zeros(1) for k in keys})) == expected


def test_separate_distillation_token_is_joined():
    sd = {"cls_token": np.zeros((1, 1, 4)), "dist_token": np.ones((1, 1, 4)), "head.weight": np.zeros(1)}
    out = normalize_state_dict(sd)
    assert "dist_token" not in out and out["cls_token"].shape == (1, 2, 4)
    np.testing.assert_array_equal(out["cls_token"][0, 1], np.ones(4))


MANIFESTS = {
    "deepvit_patch16_224_re_attn_16b": "deepvit_16",
    "deepvit_patch16_224_re_attn_24b": "deepvit_24",
    "deepvit_patch16_224_re_attn_32b": "deepvit_32",
    "deepvit_S": "deepvit_s",
    "deepvit_L": "deepvit_l",
    "deepvit_L_384": "deepvit_l_384",
    "Refiner_ViT_S": "refiner_s",
    "Refiner_ViT_M": "refiner_m",
    "Refiner_ViT_L": "refiner_l",
    "pit_ti": "pit_ti",
    "pit_xs": "pit_xs",
    "pit_s": "pit_s",
    "pit_b": "pit_b",
    "pit_ti_distilled": "pit_ti_distilled",
    "pit_s_distilled": "pit_s_distilled",
    "timm_pit_s_224": "pit_s",
    "timm_pit_s_distilled_224": "pit_s_distilled",
}


@pytest.mark.skipif(not FULL_DIR.is_dir(), reason=f"no key manifests at {FULL_DIR}")
@pytest.mark.parametrize("manifest,variant", sorted(MANIFESTS.items()))
def test_full_size_checkpoints_are_identified(manifest, variant):
    entries = json.loads((FULL_DIR / f"{manifest}.keys.json").read_text())["state_dict"]
    # Shapes without memory: zero-stride views of one scalar.
    sd = {e["key"]: np.broadcast_to(np.float32(0), e["shape"]) for e in entries}
    sd = normalize_state_dict(sd)
    assert looks_like(sd)[0] == variant
    assert f"looks like {variant!r}" in describe(sd)


def test_unknown_keys_are_described():
    assert architecture_of({"fc.weight": np.zeros((2, 2))}) is None
    assert "not those of" in describe({"fc.weight": np.zeros((2, 2))})
    assert looks_like({"fc.weight": np.zeros((2, 2))}) == []


def test_custom_architecture_matches_no_variant():
    model = keras_deepvit.models.PiT(base_dims=(8, 8), depth=(1, 1), heads=(2, 4), input_shape=(64, 64, 3))
    sd = keras_deepvit.weights.keras_to_torch_state_dict(model)
    assert looks_like(sd) == []
    assert "matching no registered variant" in describe(sd)


def test_bicubic_keeps_constants_and_identity():
    np.testing.assert_allclose(resize_grid(np.full((14, 14, 3), 2.5), (24, 9)), 2.5)
    np.testing.assert_allclose(bicubic_matrix(7, 7), np.eye(7), atol=1e-12)


def test_token_embedding_keeps_the_class_token():
    pos = np.random.default_rng(0).normal(size=(1, 1 + 14 * 14, 6)).astype("float32")
    out = resample_token_embedding(pos, (4, 3))
    assert out.shape == (1, 13, 6) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, 0], pos[:, 0])
    with pytest.raises(ValueError, match="not a square grid"):
        resample_token_embedding(pos[:, :-1], (4, 4))
    assert resample_token_embedding(pos[:, : 1 + 6 * 4], (3, 2), source_grid=(6, 4)).shape == (1, 7, 6)


def test_resampling_matches_torch_antialiased_bicubic():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    rng = np.random.default_rng(1)
    for source, target in [((14, 14), (24, 24)), ((14, 14), (4, 3)), ((27, 27), (47, 23))]:
        pos = rng.normal(size=(1, 5) + source).astype("float32")
        expected = F.interpolate(
            torch.from_numpy(pos).double(), size=target, mode="bicubic", antialias=True, align_corners=False
        ).numpy()
        np.testing.assert_allclose(resample_map_embedding(pos, target), expected, rtol=1e-5, atol=1e-6)
