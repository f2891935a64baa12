"""Every public layer: config round trip, symbolic + eager calls, a fit step, `.keras` saving."""

import keras
import numpy as np
import pytest

from helpers import check_layer, gradients, to_numpy
from keras_deepvit import layers
from keras_deepvit.layers import attention, map_ops

RNG = np.random.default_rng(0)
TOKENS = RNG.normal(size=(2, 5, 8)).astype("float32")
IMAGES = RNG.uniform(0, 255, size=(2, 32, 32, 3)).astype("float32")
MAPS = RNG.uniform(size=(2, 4, 5, 5)).astype("float32")
FMAP = RNG.normal(size=(2, 7, 7, 8)).astype("float32")
CLS = RNG.normal(size=(2, 1, 8)).astype("float32")

CASES = {
    "MultiHeadSelfAttention": (layers.MultiHeadSelfAttention, dict(num_heads=2), TOKENS, {}),
    "MultiHeadSelfAttention_maps": (
        layers.MultiHeadSelfAttention, dict(num_heads=2), TOKENS, dict(return_attention_scores=True)
    ),
    "ReAttention": (layers.ReAttention, dict(num_heads=4, transform_scale=True), TOKENS, {}),
    "ReAttention_off": (layers.ReAttention, dict(num_heads=4, apply_transform=False), TOKENS, {}),
    "RefinerAttention": (layers.RefinerAttention, dict(num_heads=4, refine_attention=True), TOKENS, {}),
    "DistributedLocalAttention": (layers.DistributedLocalAttention, dict(expansion_ratio=2), MAPS, {}),
    "DistributedLocalAttention_noexp": (layers.DistributedLocalAttention, dict(expansion_ratio=1), MAPS, {}),
    "ConvHeadPooling": (layers.ConvHeadPooling, dict(output_dim=16), [FMAP, CLS], {}),
    "ConvPatchEmbedding": (layers.ConvPatchEmbedding, dict(embed_dim=8, patch_size=8, stride=4), IMAGES, {}),
    "ConvStemPatchEmbedding": (
        layers.ConvStemPatchEmbedding, dict(embed_dim=8, patch_size=8, stem_filters=(4, 6, 6)), IMAGES, {}
    ),
    "ClassTokens": (layers.ClassTokens, dict(num_tokens=2), TOKENS, {}),
    "PositionEmbedding": (layers.PositionEmbedding, {}, FMAP, {}),
    "ImageNormalization": (layers.ImageNormalization, dict(mean=(0.5,) * 3, std=(0.25,) * 3), IMAGES, {}),
    "DropPath": (layers.DropPath, dict(rate=0.2, seed=1), TOKENS, {}),
    "Mlp": (layers.Mlp, dict(hidden_dim=12, channel_scale=True), TOKENS, {}),
    "TransformerBlock": (layers.TransformerBlock, dict(num_heads=2, drop_path_rate=0.1), TOKENS, {}),
    "ReAttentionBlock": (
        layers.ReAttentionBlock, dict(num_heads=4, scale_adjustment=0.5, transform_scale=True), TOKENS, {}
    ),
    "RefinerBlock": (layers.RefinerBlock, dict(num_heads=4), TOKENS, {}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_contract(case, tmp_path):
    layer_cls, kwargs, inputs, call_kwargs = CASES[case]
    check_layer(layer_cls, kwargs, inputs, call_kwargs, tmp_path=tmp_path)


@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_keeps_a_mixed_precision_policy(case, tmp_path):
    layer_cls, kwargs, inputs, call_kwargs = CASES[case]
    layer = check_layer(
        layer_cls, dict(kwargs, dtype="mixed_bfloat16"), inputs, call_kwargs, tmp_path=tmp_path, train=False
    )
    assert layer.dtype_policy.name == "mixed_bfloat16"
    assert all(v.dtype == "float32" for v in layer.weights)


def test_every_public_layer_is_covered():
    covered = {CASES[c][0].__name__ for c in CASES}
    assert covered == set(layers.__all__)


def test_fused_and_explicit_attention_agree():
    layer = layers.MultiHeadSelfAttention(num_heads=2)
    fused = to_numpy(layer(TOKENS))
    explicit, maps = layer(TOKENS, return_attention_scores=True)
    np.testing.assert_allclose(to_numpy(explicit), fused, atol=1e-5)
    np.testing.assert_allclose(to_numpy(maps).sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("chunks", [2, 3])
def test_query_chunks_give_the_whole_attention_and_its_gradients(monkeypatch, chunks):
    tokens = np.random.default_rng(3).normal(size=(2, 7, 8)).astype("float32")
    layer = layers.MultiHeadSelfAttention(num_heads=2)
    layer(tokens)

    def loss():
        return keras.ops.sum(layer(tokens) * keras.ops.cos(keras.ops.convert_to_tensor(tokens)))

    whole_out = to_numpy(layer(tokens))
    whole_loss, whole_grads = gradients(loss, layer.trainable_variables)
    monkeypatch.setattr(type(layer), "query_chunks", lambda self, q, k: chunks)
    np.testing.assert_allclose(to_numpy(layer(tokens)), whole_out, atol=1e-6)
    chunked_loss, chunked_grads = gradients(loss, layer.trainable_variables)
    # The loss is a sum with cancellation (about 1e-3 from terms of about 1): compare
    # it on the scale of its terms.
    np.testing.assert_allclose(chunked_loss, whole_loss, rtol=1e-5, atol=1e-7)
    for chunked, whole in zip(chunked_grads, whole_grads):
        np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)


def test_query_chunks_only_for_large_maps_on_jax_cpu():
    layer = layers.MultiHeadSelfAttention(num_heads=3)
    small = keras.ops.zeros((1, 3, 50, 8))
    large = keras.ops.zeros((8, 3, 730, 8))
    assert layer.query_chunks(small, small) == 1
    chunked = keras.backend.backend() == "jax" and map_ops.xla_on_cpu()
    expected = min(attention.MAX_QUERY_CHUNKS, -(-8 * 3 * 730 * 730 * 4 // attention.CHUNK_BYTES))
    assert layer.query_chunks(large, large) == (expected if chunked else 1)


@pytest.mark.parametrize(
    "block_cls,kwargs",
    [
        (layers.TransformerBlock, dict(num_heads=2)),
        (layers.ReAttentionBlock, dict(num_heads=4, transform_scale=True, scale_adjustment=0.5)),
        (layers.ReAttentionBlock, dict(num_heads=4, apply_transform=False)),
    ],
)
@pytest.mark.parametrize("training", [False, True])
def test_query_tokens_are_rows_of_the_full_block(block_cls, kwargs, training):
    # Training re-attention normalises with statistics over every map row, so its
    # rows must be taken after the BatchNorm: the training case checks that.
    block = block_cls(**kwargs)
    block.build(TOKENS.shape)
    full, full_maps = to_numpy(block(TOKENS, return_attention_scores=True, training=training))
    rows = to_numpy(block(TOKENS, training=training, query_tokens=2))
    assert rows.shape == (2, 2, 8)
    np.testing.assert_allclose(rows, full[:, :2], rtol=1e-5, atol=1e-6)
    _, maps = to_numpy(block(TOKENS, return_attention_scores=True, training=training, query_tokens=2))
    np.testing.assert_allclose(maps, full_maps[:, :, :2], rtol=1e-5, atol=1e-6)


SPEC_CASES = [
    (layers.MultiHeadSelfAttention, dict(num_heads=2), dict(return_attention_scores=True)),
    (layers.MultiHeadSelfAttention, dict(num_heads=2), dict(query_tokens=1)),
    (layers.ReAttention, dict(num_heads=4), dict(return_attention_scores=True, query_tokens=2)),
    (layers.RefinerAttention, dict(num_heads=4, refine_attention=True), dict(return_attention_scores=True)),
    (layers.RefinerAttention, dict(num_heads=4, share_attention=True), dict(previous_attention=MAPS)),
    (layers.TransformerBlock, dict(num_heads=2), {}),
    (layers.ReAttentionBlock, dict(num_heads=4), dict(return_attention_scores=True, query_tokens=1)),
    (layers.RefinerBlock, dict(num_heads=4), {}),
    (layers.RefinerBlock, dict(num_heads=4), dict(previous_attention=MAPS, return_attention_scores=True)),
    (layers.RefinerBlock, dict(num_heads=4, share_attention=True), dict(previous_attention=MAPS)),
]


@pytest.mark.parametrize("layer_cls,kwargs,call_kwargs", SPEC_CASES)
@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_symbolic_outputs_are_the_eager_outputs(layer_cls, kwargs, call_kwargs, policy):
    # Attention layers and blocks give their symbolic outputs by arithmetic
    # (`compute_output_spec`), not by tracing `call`: same structure, shapes, dtypes.
    layer = layer_cls(dtype=policy, **kwargs)
    symbolic_kwargs = {
        k: keras.KerasTensor((None, *v.shape[1:])) if isinstance(v, np.ndarray) else v
        for k, v in call_kwargs.items()
    }
    specs = layer(keras.KerasTensor((None, *TOKENS.shape[1:])), **symbolic_kwargs)
    outputs = layer(TOKENS, **call_kwargs)
    assert isinstance(specs, keras.KerasTensor) == (not isinstance(outputs, (tuple, list)))
    specs, outputs = keras.tree.flatten(specs), keras.tree.flatten(outputs)
    assert len(specs) == len(outputs)
    for spec, output in zip(specs, outputs):
        assert spec.shape == (None, *output.shape[1:])
        assert spec.dtype == keras.backend.standardize_dtype(output.dtype)


def test_reattention_without_transform_is_plain_attention():
    plain = layers.MultiHeadSelfAttention(num_heads=4)
    re_attn = layers.ReAttention(num_heads=4, apply_transform=False)
    plain.build(TOKENS.shape)
    re_attn.build(TOKENS.shape)
    re_attn.set_weights(plain.get_weights())
    np.testing.assert_allclose(to_numpy(re_attn(TOKENS)), to_numpy(plain(TOKENS)), atol=1e-6)


def test_reattention_mixes_heads():
    layer = layers.ReAttention(num_heads=4, apply_transform=True)
    layer.build(TOKENS.shape)
    kernel = np.eye(4)[::-1].astype("float32")  # swap heads 0<->3, 1<->2
    layer.reatten_kernel.assign(kernel)
    layer.reatten_bias.assign(np.zeros(4, "float32"))  # PyTorch's default init draws it
    _, swapped = layer(TOKENS, return_attention_scores=True)
    plain = layers.MultiHeadSelfAttention(num_heads=4)
    plain.build(TOKENS.shape)
    plain.qkv.set_weights(layer.qkv.get_weights())
    plain.proj.set_weights(layer.proj.get_weights())
    _, softmax_maps = plain(TOKENS, return_attention_scores=True)
    # Fresh BatchNorm (mean 0, var 1, eps 1e-5) after the swap: maps / sqrt(1 + eps).
    np.testing.assert_allclose(
        to_numpy(swapped), to_numpy(softmax_maps)[:, ::-1] / np.sqrt(1 + 1e-5), atol=1e-5
    )


def test_shared_refiner_attention_needs_previous_maps():
    layer = layers.RefinerAttention(num_heads=4, share_attention=True)
    with pytest.raises(ValueError, match="previous block's maps"):
        layer(TOKENS)
    out, passed_on = layer(TOKENS, previous_attention=MAPS)
    np.testing.assert_array_equal(to_numpy(passed_on), MAPS)
    assert tuple(out.shape) == TOKENS.shape


def test_pooling_pads_symmetrically_on_even_grids():
    layer = layers.ConvHeadPooling(output_dim=8)
    fmap = np.ones((1, 4, 4, 8), "float32")
    layer.build(fmap.shape, CLS.shape)
    layer.conv.kernel.assign(np.ones(layer.conv.kernel.shape, "float32"))
    layer.conv.bias.assign(np.zeros(layer.conv.bias.shape, "float32"))
    out, _ = layer(fmap, CLS)
    # With symmetric padding 1 the top-left output sees a 2x2 window of ones.
    assert to_numpy(out)[0, 0, 0, 0] == 4.0
    assert to_numpy(out)[0, 1, 1, 0] == 9.0


def test_drop_path_drops_whole_samples():
    layer = layers.DropPath(rate=0.5, seed=3)
    out = to_numpy(layer(np.ones((64, 3, 2), "float32"), training=True))
    per_sample = out.reshape(64, -1)
    assert set(np.unique(per_sample)) <= {0.0, 2.0}
    assert np.all(per_sample.min(1) == per_sample.max(1))


def test_invalid_arguments_are_reported():
    with pytest.raises(ValueError, match="DropPath rate"):
        layers.DropPath(rate=1.0)
    with pytest.raises(ValueError, match="not divisible by num_heads=3"):
        layers.MultiHeadSelfAttention(num_heads=3)(TOKENS)
    with pytest.raises(ValueError, match="multiple of the input width"):
        layers.ConvHeadPooling(output_dim=12)(FMAP, CLS)
    with pytest.raises(ValueError, match="static input shape"):
        layers.PositionEmbedding().build((None, None, 8))
