"""ImageNet-1k class names shipped as package data, and `decode_predictions`."""

import importlib.resources
import re

import keras
import numpy as np
import pytest

import keras_deepvit
from keras_deepvit import decode_predictions, imagenet_classes
from keras_deepvit import demo, imagenet


def one_hot(indices, batch=None):
    preds = np.zeros((len(indices) if batch is None else batch, 1000), "float32")
    for row, index in enumerate(indices):
        preds[row, index] = 1.0
    return preds


# --- the class list -------------------------------------------------------------------


def test_1000_distinct_synsets_in_sorted_order():
    classes = imagenet_classes()
    assert len(classes) == 1000
    synsets = [synset for synset, _ in classes]
    assert len(set(synsets)) == 1000
    # The standard class-index order is the sorted order of the WordNet ids.
    assert synsets == sorted(synsets)
    assert all(re.fullmatch(r"n\d{8}", synset) for synset in synsets)
    assert all(isinstance(name, str) and name and name == name.strip() for _, name in classes)


@pytest.mark.parametrize(
    "index, synset, name",
    [
        (0, "n01440764", "tench"),
        (1, "n01443537", "goldfish"),
        (2, "n01484850", "great white shark"),
        (281, "n02123045", "tabby"),
        (504, "n03063599", "coffee mug"),
        (999, "n15075141", "toilet tissue"),
    ],
)
def test_anchor_indices(index, synset, name):
    assert imagenet_classes()[index] == (synset, name)


def test_cached_and_returns_a_fresh_list():
    first = imagenet_classes()
    first[0] = ("changed", "changed")
    assert imagenet_classes()[0] == ("n01440764", "tench")
    assert imagenet._read_classes.cache_info().currsize == 1


def test_exported_at_top_level():
    assert keras_deepvit.decode_predictions is decode_predictions
    assert keras_deepvit.imagenet_classes is imagenet_classes
    assert {"decode_predictions", "imagenet_classes"} <= set(keras_deepvit.__all__)


def test_data_file_is_package_data():
    resource = importlib.resources.files("keras_deepvit").joinpath("data", "imagenet_classes.txt")
    assert resource.is_file()
    text = resource.read_text(encoding="utf-8")
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert any("timm 1.0.31" in line for line in header)
    assert any("Apache" in line for line in header)
    rows = [line.split("\t") for line in text.splitlines() if line and not line.startswith("#")]
    assert len(rows) == 1000 and all(len(row) == 2 for row in rows)
    assert rows[1] == ["n01443537", "goldfish, Carassius auratus"]
    assert [row[0] for row in rows] == [synset for synset, _ in imagenet_classes()]


# --- decode_predictions ---------------------------------------------------------------


def test_decode_numpy_one_hot():
    decoded = decode_predictions(one_hot([1, 999]), top=1)
    assert decoded == [[("n01443537", "goldfish", 1.0)], [("n15075141", "toilet tissue", 1.0)]]


def test_decode_backend_tensor():
    preds = np.random.default_rng(0).random((3, 1000)).astype("float32")
    tensor = keras.ops.softmax(keras.ops.convert_to_tensor(preds), axis=-1)
    decoded = decode_predictions(tensor, top=4)
    expected = decode_predictions(keras.ops.convert_to_numpy(tensor), top=4)
    assert decoded == expected
    assert len(decoded) == 3 and all(len(row) == 4 for row in decoded)
    for row, scores in zip(decoded, preds):
        assert [synset for synset, _, _ in row] == [
            imagenet_classes()[i][0] for i in np.argsort(-scores, kind="stable")[:4]
        ]
        assert all(type(score) is float for _, _, score in row)


def test_decode_nested_list_and_default_top():
    decoded = decode_predictions(one_hot([2]).tolist())
    assert len(decoded) == 1 and len(decoded[0]) == 5
    assert decoded[0][0] == ("n01484850", "great white shark", 1.0)


def test_top_ordering_and_ties():
    preds = np.zeros((1, 1000), "float32")
    preds[0, [5, 10, 500, 900]] = [0.2, 0.5, 0.2, 0.1]
    decoded = decode_predictions(preds, top=6)[0]
    indices = [[synset for synset, _ in imagenet_classes()].index(s) for s, _, _ in decoded]
    # Decreasing score; equal scores in class-index order (5 before 500, then 0 before 1).
    assert indices == [10, 5, 500, 900, 0, 1]
    scores = [score for _, _, score in decoded]
    assert scores == sorted(scores, reverse=True)
    assert scores[:4] == pytest.approx([0.5, 0.2, 0.2, 0.1])


def test_top_1000_lists_every_class_once():
    decoded = decode_predictions(np.random.default_rng(1).random((2, 1000)), top=1000)
    for row in decoded:
        assert sorted(synset for synset, _, _ in row) == [s for s, _ in imagenet_classes()]


def test_empty_batch():
    assert decode_predictions(np.zeros((0, 1000)), top=3) == []


@pytest.mark.parametrize("shape", [(1000,), (2, 10), (2, 1001), (1, 1, 1000), ()])
def test_wrong_shape(shape):
    message = (
        "decode_predictions expects a batch of ImageNet-1k scores (batch, 1000); "
        f"got shape {shape}"
    )
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        decode_predictions(np.zeros(shape, "float32"))
    assert "classes != 1000 has no ImageNet names" in str(info.value)


@pytest.mark.parametrize("top", [0, -1, 1001, 2.0, "5", None, True])
def test_bad_top(top):
    with pytest.raises(ValueError, match=r"top must be an int from 1 to 1000; got"):
        decode_predictions(one_hot([0]), top=top)


def test_numpy_int_top():
    assert len(decode_predictions(one_hot([0]), top=np.int64(2))[0]) == 2


# --- the demo's report uses the names -------------------------------------------------


def test_demo_report_names_classes():
    result = {
        "model": "pit_ti", "image_size": 224, "backend": "jax", "params": 4847272,
        "predictions": [("chelsea", [(281, "tabby", 0.5), (1, "goldfish", 0.25)])],
    }
    lines = demo.format_report(result)
    assert "#281 tabby 0.5000" in lines[1] and "goldfish 0.2500" in lines[1]
    assert lines[-1] == demo.RANDOM_WEIGHTS_NOTE
