"""keras_deepvit.analysis: each metric against hand-computed values, map collection, and `analyze`."""

import json
import os

import keras
import numpy as np
import pytest

import keras_deepvit
from keras_deepvit.analysis import maps as analysis_maps
from keras_deepvit.analysis import metrics, report
from keras_deepvit.cli import main
from keras_deepvit.layers import ReAttentionBlock, TransformerBlock


def _softmax_maps(seed, shape=(2, 3, 5, 5)):
    logits = np.random.default_rng(seed).normal(size=shape)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# --- cross-layer similarity (DeepViT Eq. 2) ------------------------------------------------

def test_identical_blocks_are_fully_similar():
    a = _softmax_maps(0)
    matrix = metrics.cross_layer_similarity([a, a, a, a])
    np.testing.assert_allclose(matrix, np.ones((4, 4)), atol=1e-12)
    assert metrics.similar_block_count(matrix) == 4
    np.testing.assert_allclose(metrics.adjacent_similarity(matrix), [1, 1, 1])


def test_orthogonal_one_hot_maps_have_zero_similarity():
    # Block 0 attends every query to key 0, block 1 to key 1: every column pair is orthogonal
    # or zero (a zero column has cosine 0 by convention).
    first = np.zeros((1, 1, 3, 3))
    first[..., 0] = 1
    second = np.zeros((1, 1, 3, 3))
    second[..., 1] = 1
    matrix = metrics.cross_layer_similarity([first, second])
    assert matrix[0, 1] == 0.0
    assert metrics.similar_block_count(matrix) == 0


def test_similarity_by_hand():
    # One head, 2 tokens. Columns of p: (1, 0), (0, 1); of q: (1, 1)/sqrt(2)-direction and (0, 1).
    # cos(col0) = 1/sqrt(2), cos(col1) = 1 -> mean (1/sqrt(2) + 1) / 2.
    p = np.array([[1.0, 0.0], [0.0, 1.0]])[None, None]
    q = np.array([[0.5, 0.0], [0.5, 1.0]])[None, None]
    matrix = metrics.cross_layer_similarity([p, q])
    assert matrix[0, 1] == pytest.approx((1 / np.sqrt(2) + 1) / 2)
    assert metrics.similar_block_count(matrix, threshold=0.8) == 2
    assert metrics.similar_block_count(matrix, threshold=0.9) == 0


def test_columns_not_rows_are_compared():
    # Eq. 2 compares columns A[h, :, t] (how token t feeds every query), not rows.
    p = np.array([[0.8, 0.2], [0.8, 0.2]])[None, None]
    q = np.array([[0.8, 0.2], [0.2, 0.8]])[None, None]
    # Columns of p: (0.8, 0.8), (0.2, 0.2); of q: (0.8, 0.2), (0.2, 0.8).
    cos0 = (0.64 + 0.16) / (np.hypot(0.8, 0.8) * np.hypot(0.8, 0.2))
    cos1 = (0.04 + 0.16) / (np.hypot(0.2, 0.2) * np.hypot(0.2, 0.8))
    assert metrics.cross_layer_similarity([p, q])[0, 1] == pytest.approx((cos0 + cos1) / 2)


def test_different_shapes_are_not_compared():
    matrix = metrics.cross_layer_similarity([_softmax_maps(0), _softmax_maps(1, (2, 6, 3, 3))])
    assert np.isnan(matrix[0, 1]) and matrix[1, 1] == pytest.approx(1.0)
    assert metrics.similar_block_count(matrix) == 0


def test_bad_map_shape_is_refused():
    with pytest.raises(ValueError, match=r"maps\[1\] must be \(batch, heads, tokens, tokens\)"):
        metrics.cross_layer_similarity([_softmax_maps(0), np.zeros((2, 3, 4))])


# --- cross-head similarity, entropy, rank residual ------------------------------------------

def test_cross_head_similarity():
    a = _softmax_maps(2, (2, 1, 4, 4))
    assert metrics.cross_head_similarity(np.concatenate([a, a, a], axis=1)) == pytest.approx(1.0)
    # Head 0 attends to key 0, head 1 to key 1, head 2 uniformly. Pair (0, 1): every column pair
    # is orthogonal or zero: 0. Pair (0, 2): column 0 is (1,1,1) against (1,1,1)/3, cosine 1;
    # columns 1 and 2 of head 0 are zero, cosine 0: 1/3. Pair (1, 2) likewise: 1/3.
    heads = np.zeros((1, 3, 3, 3))
    heads[0, 0, :, 0] = 1
    heads[0, 1, :, 1] = 1
    heads[0, 2] = 1 / 3
    assert metrics.cross_head_similarity(heads) == pytest.approx((0 + 1 / 3 + 1 / 3) / 3)
    assert np.isnan(metrics.cross_head_similarity(a))


def test_entropy_uniform_is_log_n_and_one_hot_is_zero():
    uniform = np.full((2, 3, 7, 7), 1 / 7)
    np.testing.assert_allclose(metrics.attention_entropy(uniform), np.log(7) * np.ones(3))
    one_hot = np.tile(np.eye(4), (1, 2, 1, 1))
    np.testing.assert_allclose(metrics.attention_entropy(one_hot), [0, 0], atol=1e-12)


def test_entropy_by_hand_and_of_signed_maps():
    rows = np.array([[0.5, 0.5, 0.0], [0.25, 0.25, 0.5]])
    maps = np.zeros((1, 1, 3, 3))
    maps[0, 0, :2] = rows
    maps[0, 0, 2] = [1.0, 0.0, 0.0]
    expected = (np.log(2) + (2 * 0.25 * np.log(4) + 0.5 * np.log(2)) + 0) / 3
    assert metrics.attention_entropy(maps)[0] == pytest.approx(expected)
    # A re-attention map's signed row is read as |a| / sum |a|.
    signed = np.array([[[[-0.5, 0.5], [1.0, 0.0]]]])
    assert metrics.attention_entropy(signed)[0] == pytest.approx(np.log(2) / 2)
    assert not metrics.is_row_stochastic(signed) and metrics.is_row_stochastic(np.abs(signed))


def test_rank_residual():
    same = np.tile(np.array([1.0, -2.0, 3.0]), (2, 5, 1))
    assert metrics.rank_residual(same) == 0.0
    # Tokens (1, 0) and (-1, 0): mean 0, so the residual is all of X: 1.
    assert metrics.rank_residual(np.array([[[1.0, 0.0], [-1.0, 0.0]]])) == pytest.approx(1.0)
    # Tokens (2, 0) and (0, 0): mean (1, 0), residual rows (1, 0), (-1, 0): sqrt(2) / 2.
    assert metrics.rank_residual(np.array([[[2.0, 0.0], [0.0, 0.0]]])) == pytest.approx(np.sqrt(2) / 2)
    with pytest.raises(ValueError, match="tokens must be"):
        metrics.rank_residual(np.zeros((3, 4)))


def test_summarize_is_json_ready():
    a = _softmax_maps(3)
    states = analysis_maps.BlockStates([a, a, _softmax_maps(4, (2, 6, 3, 3))],
                                       [np.ones((2, 5, 4)), None, np.ones((2, 3, 8))], ["a", "b", "c"])
    summary = report.summarize(states)
    json.dumps(summary, allow_nan=False)
    assert summary["similar_blocks"] == 2
    assert summary["adjacent_similarity"][1] is None
    assert summary["rank_residual"] == [0.0, None, 0.0]
    assert summary["max_entropy"][0] == pytest.approx(np.log(5))


# --- reading the maps from models ------------------------------------------------------------

def _tiny_deepvit():
    return keras_deepvit.DeepViT(depth=2, embed_dim=16, num_heads=2, mlp_ratio=2.0, patch_size=8,
                                 input_shape=(16, 16, 3), classes=3)


def test_block_states_match_attention_model():
    model = _tiny_deepvit()
    images = np.random.default_rng(0).uniform(0, 255, (3, 16, 16, 3)).astype("float32")
    # One batch: each new batch shape is another compile (the functional test covers batching).
    states = analysis_maps.block_states(model, images, batch_size=4)
    # predict (compiled; op by op is slow on JAX) also checks attention_model() predicts on JAX.
    expected = model.attention_model().predict(images, verbose=0)
    assert states.names == ["blocks_0", "blocks_1"]
    for got, want in zip(states.maps, expected):
        np.testing.assert_allclose(got, keras.ops.convert_to_numpy(want), rtol=1e-5, atol=1e-6)
    assert [t.shape for t in states.tokens] == [(3, 5, 16), (3, 5, 16)]
    # The last block's tokens are the ones the classifier reads: norm, class token, head, softmax.
    logits = model.head(model.norm(states.tokens[1])[:, 0])
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(logits))
    np.testing.assert_allclose(probabilities, model.predict(images, verbose=0), rtol=1e-4, atol=1e-5)


def test_block_states_of_a_functional_model_of_our_blocks():
    inputs = keras.Input((6, 8))
    x = TransformerBlock(2, name="plain")(inputs)
    x = ReAttentionBlock(2, name="re_attention")(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(x[:, 0]))
    tokens = np.random.default_rng(1).normal(size=(4, 6, 8)).astype("float32")
    states = analysis_maps.block_states(model, tokens, batch_size=2)
    assert states.names == ["plain", "re_attention"]
    assert [m.shape for m in states.maps] == [(4, 2, 6, 6)] * 2
    np.testing.assert_allclose(states.maps[0].sum(-1), 1.0, rtol=1e-5)  # plain softmax rows
    _, want = model.get_layer("plain")(tokens, return_attention_scores=True)
    np.testing.assert_allclose(states.maps[0], keras.ops.convert_to_numpy(want), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no keras_deepvit attention layer"):
        analysis_maps.block_states(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]),
                                   np.zeros((1, 4)))
    with pytest.raises(TypeError, match="needs a keras_deepvit model or a functional Keras model"):
        analysis_maps.block_states(keras.layers.Dense(2), np.zeros((1, 4)))


def test_analyze_cli_writes_plots_and_json(tmp_path):
    pytest.importorskip("matplotlib", reason="plots need the analysis extra")
    from PIL import Image

    model = _tiny_deepvit()
    path = str(tmp_path / "tiny.keras")
    model.save(path)
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(images / f"{i}.png")
    out = tmp_path / "report"
    assert main(["analyze", "--weights", path, "--images", str(images), "--out", str(out)]) == 0
    for name in ("similarity.png", "curves.png", "cls_attention.png"):
        assert (out / name).stat().st_size > 1000
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["blocks"] == ["blocks_0", "blocks_1"] and summary["images"] == 2
    assert summary["image_names"] == ["0.png", "1.png"]
    assert len(summary["cross_layer_similarity"]) == 2 and summary["cross_layer_similarity"][0][0] == 1.0
    assert len(summary["entropy"][0]) == 2 and len(summary["rank_residual"]) == 2


def test_analyze_cli_refuses_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["analyze", "--images", str(tmp_path), "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    assert "needs --model NAME" in capsys.readouterr().err
    with pytest.raises(ValueError, match="holds no image file"):
        report.load_images(str(tmp_path), 16)


def test_missing_matplotlib_names_the_extra(monkeypatch):
    import builtins

    from keras_deepvit.analysis import plots

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(ImportError, match=r"keras-deepvit\[analysis\]"):
        plots.pyplot()


def test_write_report_without_plots(tmp_path):
    model = _tiny_deepvit()
    summary, written = report.write_report(model, np.zeros((1, 16, 16, 3), "float32"), str(tmp_path), plots=False)
    assert written == [os.path.join(str(tmp_path), "metrics.json")]
    assert summary["model"] == model.name


def test_docstring_examples():
    import doctest

    for module in (metrics, report):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_centered_similarity_by_hand():
    # A constant shift leaves the centred maps alike; uniform maps centre to zero (cosine 0).
    p = np.array([[0.9, 0.1], [0.1, 0.9]])[None, None]
    shifted = p - 0.5  # signed, like a BatchNorm'ed re-attention map
    assert metrics.cross_layer_similarity([p, shifted])[0, 1] < 0.7
    assert metrics.cross_layer_similarity([p, shifted], centered=True)[0, 1] == pytest.approx(1.0)
    uniform = np.full((1, 1, 2, 2), 0.5)
    assert metrics.cross_layer_similarity([uniform, uniform], centered=True)[0, 1] == 0.0
