"""Fresh models start where the official PyTorch models start.

Every weight of a small model at real widths (DeepViT-S-like, the first two
stages of PiT-Ti, Refiner-S-like) is matched to the law the official code draws
it from, and its statistics are checked with tolerances of six standard errors
for its number of entries. The laws, read from the official code:

- DeepViT / Refiner-ViT linears: `trunc_normal_(std=.02)` (truncated at +-2
  absolute, so plain `N(0, 0.02^2)`), zero biases;
- PiT linears and every convolution: PyTorch's default, weight and bias
  `U(+-1/sqrt(fan_in))` (a depthwise kernel's fan-in is its kernel area);
- class tokens and position embeddings: `trunc_normal_(std=.02)`;
- LayerNorm / BatchNorm: weight 1, bias 0, moving mean 0, moving variance 1;
  Refiner-ViT's `scale_channel`: 1e-5.
"""

import math

import keras
import numpy as np
import pytest

from helpers import check_layer, to_numpy
from keras_deepvit import layers
from keras_deepvit.layers import initializers
from keras_deepvit.models import DeepViT, PiT, RefinerViT, common

STD = 0.02
#: Fraction of `N(0, s^2)` draws beyond 2 s; Keras' `TruncatedNormal` has none.
TAIL_BEYOND_2_STD = math.erfc(2 / math.sqrt(2))
#: Standard errors a statistic may stray (false alarm odds ~1e-9 per check).
SIGMAS = 6.0

TOKENS = np.random.default_rng(0).normal(size=(2, 5, 8)).astype("float32")

#: (family, model class, constructor arguments): real widths, two or three blocks.
MODELS = {
    "deepvit": (
        DeepViT,
        dict(depth=2, embed_dim=384, num_heads=6, mlp_ratio=3.0, stem="cnn", scale_adjustment=0.5,
             input_shape=(64, 64, 3), classes=1000),
    ),
    "pit": (
        PiT,
        dict(base_dims=(32, 32), depth=(1, 1), heads=(2, 4), distilled=True,
             input_shape=(64, 64, 3), classes=1000),
    ),
    "refiner": (
        RefinerViT,
        dict(depth=2, embed_dim=384, num_heads=12, mlp_ratio=3.0, refine_attention=[True, False],
             input_shape=(64, 64, 3), classes=1000),
    ),
}

#: Dense layers that are convolutions in the official code (Refiner-ViT's 1x1 refiner convs).
POINTWISE_CONVS = ("conv_exp", "conv_pro")
#: Layers of the official `nn.Conv2d` patch stems.
STEM_CONVS = ("proj", "conv1", "conv2", "conv3")


def official_law(path, weights, family):
    """`("constant", value)`, `("normal", std)` or `("uniform", bound)` of the weight at `path`."""
    *owner, name = path.split("/")
    layer = owner[-1] if owner else ""

    def fan_in(kernel_path, depthwise=False):
        shape = weights[kernel_path].shape
        # Dense (in, out); Conv2D (kh, kw, in, out); depthwise (kh, kw, in, multiplier),
        # whose PyTorch fan-in is the kernel area (one input channel per group).
        return int(np.prod(shape[:2] if depthwise else shape[:-1]))

    def uniform(fan):
        return ("uniform", 1.0 / math.sqrt(fan))

    sibling_kernel = "/".join(owner + ["kernel"])
    if name in ("gamma", "moving_variance"):
        return ("constant", 1.0)
    if name in ("beta", "moving_mean"):
        return ("constant", 0.0)
    if name == "scale_channel":
        return ("constant", 1e-5)
    if path in ("pos_embed/pos_embed", "cls_token/cls_token"):
        return ("normal", STD)
    if name in ("reatten_kernel", "reatten_bias"):  # nn.Conv2d(heads, heads, 1)
        return uniform(weights[path].shape[0])
    if layer in POINTWISE_CONVS:
        return uniform(fan_in(path))
    if layer == "depth_sep_conv" or (layer == "conv" and owner[0].startswith("pools_")):
        return uniform(fan_in(sibling_kernel, depthwise=True))
    if owner[0] == "patch_embed" and layer in STEM_CONVS:
        return uniform(fan_in(sibling_kernel))
    if layer in ("qkv", "proj", "fc1", "fc2", "fc", "head", "head_dist", "aux_head"):
        if family == "pit":
            return uniform(fan_in(sibling_kernel))
        return ("normal", STD) if name == "kernel" else ("constant", 0.0)
    raise AssertionError(f"{family}: no official initialisation known for weight {path!r}")


def check_law(path, values, law):
    kind, parameter = law
    if kind == "constant":
        np.testing.assert_array_equal(values, np.asarray(parameter, values.dtype), err_msg=path)
        return
    values = np.asarray(values, np.float64).ravel()
    n = values.size
    std = values.std()
    if kind == "normal":
        # Standard error of a normal sample's std: std / sqrt(2n).
        assert abs(std / parameter - 1) <= SIGMAS * math.sqrt(0.5 / n), (path, std)
        assert abs(values.mean()) <= SIGMAS * parameter / math.sqrt(n), path
        if n >= 1000:
            tail = np.mean(np.abs(values) > 2 * parameter)
            p = TAIL_BEYOND_2_STD
            assert abs(tail - p) <= SIGMAS * math.sqrt(p * (1 - p) / n), (path, tail)
        return
    bound = parameter
    assert np.abs(values).max() <= bound * (1 + 1e-6), (path, np.abs(values).max(), bound)
    # Uniform: std bound / sqrt(3), relative standard error of the sample std sqrt(0.2 / n).
    assert abs(std / (bound / math.sqrt(3)) - 1) <= SIGMAS * math.sqrt(0.2 / n), (path, std, bound)
    if n >= 100:
        # P(max |w| < bound (1 - t)) = (1 - t)^n: fails for a narrower law, not by chance.
        assert np.abs(values).max() >= bound * (1 - 20.0 / n), (path, np.abs(values).max(), bound)


@pytest.mark.parametrize("family", sorted(MODELS))
def test_fresh_model_weights_follow_the_official_init(family):
    model_cls, kwargs = MODELS[family]
    model = model_cls(**kwargs)
    weights = {v.path: to_numpy(v) for v in model.weights}
    assert len(weights) == len(model.weights)
    laws = {path: official_law(path, weights, family) for path in weights}
    for path, values in weights.items():
        check_law(path, values, laws[path])

    # Pooled over the model, the trunc_normal draws pin the law (DeepViT, Refiner:
    # millions of draws): the official one, not Keras' 2-sigma TruncatedNormal
    # (std 0.88 * 0.02, no tail).
    normal = [weights[p] for p, law in laws.items() if law[0] == "normal"]
    pooled = np.concatenate([w.ravel() for w in normal])
    check_law("all trunc_normal weights", pooled, ("normal", STD))
    kinds = {law[0] for law in laws.values()}
    assert kinds == {"constant", "normal", "uniform"}
    if family == "pit":
        normal_paths = {p for p, law in laws.items() if law[0] == "normal"}
        assert normal_paths == {"pos_embed/pos_embed", "cls_token/cls_token"}

    # Every random weight has draws of its own (one unseeded initializer shared by two
    # same-shaped weights would repeat its values).
    random = [values.tobytes() for p, values in weights.items() if laws[p][0] != "constant"]
    assert len(set(random)) == len(random)


@pytest.mark.parametrize(
    "layer_cls,kwargs",
    [
        (layers.MultiHeadSelfAttention, dict(num_heads=2)),
        (layers.Mlp, dict(hidden_dim=12)),
        (layers.ReAttentionBlock, dict(num_heads=4)),
    ],
)
def test_initializer_round_trips_and_sets_the_dense_layers(layer_cls, kwargs, tmp_path):
    # Config round trip, symbolic and eager calls and `.keras` saving; the fit step
    # of the layer contract test (tests/test_layers.py) does not depend on the init.
    layer = check_layer(
        layer_cls, dict(kwargs, initializer="torch_default"), TOKENS, tmp_path=tmp_path, train=False
    )
    assert layer.get_config()["initializer"] == "torch_default"
    clone = layer_cls.from_config(layer.get_config())
    clone.build(TOKENS.shape)
    weights = {v.path: to_numpy(v) for v in clone.weights}
    dense = [p for p in weights if p.endswith(("/kernel", "/bias")) and "reatten" not in p]
    assert dense
    for path in dense:
        fan = weights[path.rsplit("/", 1)[0] + "/kernel"].shape[0]
        values = weights[path]
        assert np.abs(values).max() <= 1 / math.sqrt(fan) + 1e-7, path
        assert np.any(values != 0), path  # biases too: PyTorch draws them
    assert layer_cls(**kwargs).get_config()["initializer"] == "trunc_normal"


def test_unknown_initializer_and_missing_head_width_are_reported():
    for layer_cls, first in [
        (layers.MultiHeadSelfAttention, dict(num_heads=2)),
        (layers.TransformerBlock, dict(num_heads=2)),
        (layers.Mlp, dict(hidden_dim=4)),
    ]:
        message = f"{layer_cls.__name__}.*'glorot_uniform'.*torch_default"
        with pytest.raises(ValueError, match=message):
            layer_cls(**first, initializer="glorot_uniform")
    with pytest.raises(ValueError, match="needs input_dim"):
        common.classifier(10, "head", initializer="torch_default")


def test_torch_default_bounds():
    head = common.classifier(10, "head", initializer="torch_default", input_dim=16)
    head.build((None, 16))
    bias = to_numpy(head.bias)
    assert np.any(bias != 0) and np.abs(bias).max() <= 0.25
    # The explicit bound equals Keras' fan-in VarianceScaling with scale 1/3 for
    # dense and ordinary conv kernels (not for depthwise ones, see the module).
    shape = (3, 3, 16, 8)
    bound = 1 / math.sqrt(3 * 3 * 16)
    ours = to_numpy(initializers.torch_default(3 * 3 * 16)(shape))
    keras_own = to_numpy(keras.initializers.VarianceScaling(1 / 3, "fan_in", "uniform")(shape))
    for values in (ours, keras_own):
        # 1152 draws: P(max |w| < 0.97 bound) = 0.97^1152 ~ 1e-15.
        assert bound * 0.97 <= np.abs(values).max() <= bound
