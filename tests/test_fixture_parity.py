"""The official-code fixtures (../shared/reference/tiny) reproduce through
`load_torch_state_dict` on every backend: logits, head outputs, pre-logits
features and per-block attention maps, to relative L2 error <= 1e-5. The
fixtures are read with our torch-free reader: none of this needs torch."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import TINY_DIR, keras_kwargs_from_official, load_fixture, rel_l2, to_numpy
from keras_deepvit.weights import load_torch_state_dict

pytestmark = pytest.mark.skipif(not TINY_DIR.is_dir(), reason=f"no reference fixtures at {TINY_DIR}")

FIXTURES = [
    "tiny_deepvit_cnn", "tiny_deepvit_cnn_nonsquare", "tiny_deepvit_patch",
    "tiny_refiner", "tiny_refiner_nodense", "tiny_refiner_96", "tiny_refiner_transform",
    "tiny_pit", "tiny_pit_distilled", "tiny_pit_even", "tiny_timm_pit", "tiny_timm_pit_distilled",
]
RTOL = 1e-5


def build(meta, arrays, **overrides):
    family, kwargs = keras_kwargs_from_official(meta["model_class"], meta["class_kwargs"])
    kwargs.update(
        input_shape=arrays["input_nhwc"].shape[1:], classifier_activation=None,
        include_preprocessing=False,
    )
    kwargs.update(overrides)
    return family(**kwargs)


@pytest.mark.parametrize("name", FIXTURES)
def test_logits_and_heads(name):
    meta, arrays, state = load_fixture(name)
    # DeepViT has one head; the others return their heads apart on request.
    model = build(meta, arrays, **({} if meta["family"] == "deepvit" else dict(separate_heads=True)))
    loaded = load_torch_state_dict(model, state)
    assert len(loaded) == len([k for k in state if not k.endswith("num_batches_tracked")])
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == meta["num_params"]

    out = to_numpy(model(arrays["input_nhwc"], training=False))
    logits = out["logits"] if isinstance(out, dict) else out
    assert rel_l2(logits, arrays["logits"]) <= RTOL
    if "logits_dist" in arrays:
        assert rel_l2(out["cls_logits"], arrays["logits_cls"]) <= RTOL
        assert rel_l2(out["dist_logits"], arrays["logits_dist"]) <= RTOL
    if "logits_aux" in arrays:
        assert rel_l2(out["cls_logits"], arrays["logits_cls"]) <= RTOL
        assert rel_l2(out["aux_logits"], arrays["logits_aux"]) <= RTOL


@pytest.mark.parametrize("name", ["tiny_deepvit_cnn", "tiny_refiner", "tiny_pit_even"])
def test_builtin_preprocessing_on_uint8_images(name):
    meta, arrays, state = load_fixture(name)
    model = build(meta, arrays, include_preprocessing=True)
    load_torch_state_dict(model, state)
    logits = to_numpy(model(arrays["image_uint8_nhwc"].astype("float32")))
    assert rel_l2(logits, arrays["logits"]) <= RTOL


@pytest.mark.parametrize("name", ["tiny_deepvit_cnn", "tiny_refiner_nodense", "tiny_pit_distilled"])
def test_pre_logits_features(name):
    meta, arrays, state = load_fixture(name)
    family = meta["family"]
    pooling = None if family == "refiner" else "token"
    model = build(meta, arrays, include_top=False, pooling=pooling, classifier_activation="softmax")
    load_torch_state_dict(model, state, skip=("head", "head_dist", "aux_head"))
    features = to_numpy(model(arrays["input_nhwc"]))
    expected = arrays["pre_logits"]
    if family == "pit":
        expected = expected.mean(axis=1)  # "token" pooling averages class + distillation tokens
    assert rel_l2(features, expected) <= RTOL


@pytest.mark.parametrize("name", ["tiny_deepvit_cnn", "tiny_deepvit_patch", "tiny_refiner_transform"])
def test_attention_maps(name):
    meta, arrays, state = load_fixture(name)
    model = build(meta, arrays)
    load_torch_state_dict(model, state)
    maps = to_numpy(model.attention_model()(arrays["input_nhwc"]))
    shared = meta["class_kwargs"]["depth"] if meta["family"] == "refiner" else [False] * len(maps)
    passed_on = None
    for i, used in enumerate(maps):
        expected = arrays[f"inter.blocks.{i}.attn"]
        if shared[i]:
            # The fixture stores the map passed on (a shared block's incoming map);
            # we return the refined map the block multiplied v with.
            np.testing.assert_allclose(expected, passed_on, atol=1e-6)
        else:
            assert rel_l2(used, expected) <= RTOL
            passed_on = expected


def test_pit_maps_have_stage_shapes():
    meta, arrays, state = load_fixture("tiny_timm_pit")
    model = build(meta, arrays)
    load_torch_state_dict(model, state)
    maps = to_numpy(model.attention_model()(arrays["input_nhwc"]))
    # Grids 7x9 -> 4x5 -> 2x3 plus one class token; heads 2, 4, 8; depths 1, 2, 1.
    assert [m.shape for m in maps] == [(4, 2, 64, 64), (4, 4, 21, 21), (4, 4, 21, 21), (4, 8, 7, 7)]


def test_fixture_reading_needs_no_torch():
    """With torch unimportable, the fixtures still load (the parity above cannot vanish)."""
    script = (
        "import sys\n"
        "class NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'torch':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r} (blocked)')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "sys.path.insert(0, 'tests')\n"
        "from helpers import load_fixture\n"
        "_, _, state = load_fixture('tiny_pit')\n"
        "assert 'torch' not in sys.modules\n"
        "print(len(state), state['pos_embed'].dtype)\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, KERAS_BACKEND="numpy")
    done = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[1] == "float32"
