"""`keras-deepvit predict`: timm's eval resize, image conversions, bad files, top-k end to end.

No pretrained weights offline: the end-to-end tests write a PiT-Ti with seeded random
weights as an official-layout safetensors checkpoint, run the command on it and compare
with the Keras model's own top-k on hand-preprocessed images.
"""

import contextlib
import doctest
import io
import json
import os

import keras
import numpy as np
import pytest

PIL = pytest.importorskip("PIL")
skimage = pytest.importorskip("skimage")
from PIL import Image  # noqa: E402

from keras_deepvit import cli, predict  # noqa: E402
from keras_deepvit.imagenet import imagenet_classes  # noqa: E402
from keras_deepvit.weights import keras_to_torch_state_dict  # noqa: E402
from keras_deepvit.weights.loading import load_state_dict_into  # noqa: E402
from keras_deepvit.zoo import create_model  # noqa: E402
from keras_deepvit.zoo.imagenet import write_state_dict  # noqa: E402

SKIMAGE_DATA = os.path.join(os.path.dirname(skimage.__file__), "data")
PHOTOS = [os.path.join(SKIMAGE_DATA, f"{name}.png") for name in ("astronaut", "coffee", "chelsea")]


def run_cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = cli.main(argv)
        except SystemExit as stop:  # argparse usage errors and main's parser.exit
            status = stop.code
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def fixture_checkpoint(tmp_path_factory):
    """`(keras model, path)`: seeded PiT-Ti and the same weights as an official-key file."""
    keras.utils.set_random_seed(1234)
    model = create_model("pit_ti")
    state_dict = keras_to_torch_state_dict(model)
    # A sharper head than the initialisation's, so the top-k is far from ties and
    # moves when the preprocessing does.
    state_dict["head.weight"] = state_dict["head.weight"] * 20.0
    load_state_dict_into(model, state_dict)
    path = str(tmp_path_factory.mktemp("predict") / "pit_ti_fixture.safetensors")
    write_state_dict(state_dict, path)
    return model, path


def hand_preprocess(path):
    """pit_ti's eval transform, worked out by hand: crop_pct 0.9, bicubic, 224."""
    image = Image.open(path).convert("RGB")
    width, height = image.size
    short = 248  # floor(224 / 0.9)
    if width <= height:
        new = (short, int(short * height / width))
    else:
        new = (int(short * width / height), short)
    left, top = round((new[0] - 224) / 2), round((new[1] - 224) / 2)
    resized = image.resize(new, Image.Resampling.BICUBIC)
    return np.asarray(resized.crop((left, top, left + 224, top + 224)), "float32")


def keras_top_k(model, paths, k):
    # One image per call: one compiled batch shape for the module's model.
    rows = [np.asarray(model.predict(hand_preprocess(p)[None], verbose=0))[0] for p in paths]
    return [(np.argsort(-row)[:k], row) for row in rows]


# --- the resize ---------------------------------------------------------------------------


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
def test_eval_transform_matches_hand_computation(interpolation):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (7, 13, 3), dtype="uint8")  # H=7, W=13
    got = predict.eval_transform(Image.fromarray(pixels), 5, crop_pct=0.6, interpolation=interpolation)
    # short side 7 -> floor(5 / 0.6) = 8; long 13 -> int(8 * 13 / 7) = 14;
    # crop offsets round((14 - 5) / 2) = 4 (round half to even), round((8 - 5) / 2) = 2.
    resample = getattr(Image.Resampling, interpolation.upper())
    resized = Image.fromarray(pixels).resize((14, 8), resample)
    expected = np.asarray(resized.crop((4, 2, 9, 7)), "float32")
    assert got.shape == (5, 5, 3) and got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)


def test_eval_transform_interpolation_and_crop_pct_matter():
    pixels = np.random.default_rng(1).integers(0, 256, (40, 30, 3), dtype="uint8")
    base = predict.eval_transform(pixels, 16, 0.9, "bicubic")
    assert not np.array_equal(base, predict.eval_transform(pixels, 16, 0.9, "nearest"))
    assert not np.array_equal(base, predict.eval_transform(pixels, 16, 1.0, "bicubic"))


def test_eval_transform_pads_black_when_crop_pct_exceeds_one():
    pixels = np.full((4, 4, 3), 200, "uint8")
    got = predict.eval_transform(pixels, 6, crop_pct=1.5, interpolation="bilinear")  # 4 px on a 6 px canvas
    np.testing.assert_array_equal(got[1:5, 1:5], 200.0)
    assert got[0].max() == 0 and got[:, 0].max() == 0 and got[5].max() == 0


def test_eval_transform_rejects_unknown_interpolation():
    with pytest.raises(ValueError, match="interpolation must be one of"):
        predict.eval_transform(np.zeros((8, 8, 3), "uint8"), 4, 0.9, "cubic")


# --- reading files: conversions and failures ----------------------------------------------


def save(tmp_path, name, image, **kwargs):
    path = str(tmp_path / name)
    image.save(path, **kwargs)
    return path


def test_conversions_say_what_they_did(tmp_path):
    gray = save(tmp_path, "gray.png", Image.fromarray(np.full((3, 3), 77, "uint8")))
    image, note = predict.load_image(gray)
    assert image.mode == "RGB" and note == "grayscale (L) converted to RGB"
    assert np.asarray(image)[0, 0].tolist() == [77, 77, 77]

    rgba = np.zeros((2, 2, 4), "uint8")
    rgba[..., 0], rgba[..., 3] = 255, 0  # fully transparent red
    rgba[0, 0] = (0, 0, 255, 255)  # one opaque blue pixel
    image, note = predict.load_image(save(tmp_path, "rgba.png", Image.fromarray(rgba, "RGBA")))
    assert note == "RGBA: alpha channel composited on white"
    assert np.asarray(image)[0, 0].tolist() == [0, 0, 255]
    assert np.asarray(image)[1, 1].tolist() == [255, 255, 255]

    sixteen = np.array([[0, 257 * 100], [65535, 257 * 7]], "uint16")
    image, note = predict.load_image(save(tmp_path, "deep.png", Image.fromarray(sixteen)))
    assert note == "16-bit grayscale scaled to 8-bit RGB"
    assert np.asarray(image)[..., 0].tolist() == [[0, 100], [255, 7]]

    frames = [Image.fromarray(np.full((4, 4, 3), v, "uint8")) for v in (10, 200)]
    path = save(tmp_path, "two.tif", frames[0], save_all=True, append_images=frames[1:])
    image, note = predict.load_image(path)
    assert note == "first of 2 frames" and np.asarray(image)[0, 0].tolist() == [10, 10, 10]


@pytest.fixture
def bad_files(tmp_path):
    with open(tmp_path / "notes.txt", "w") as handle:
        handle.write("not an image\n")
    with open(os.path.join(SKIMAGE_DATA, "chelsea.png"), "rb") as handle:
        head = handle.read(3000)
    with open(tmp_path / "truncated.png", "wb") as handle:
        handle.write(head)
    os.mkdir(tmp_path / "folder")
    float_path = save(tmp_path, "float.tif", Image.fromarray(np.zeros((3, 3), "float32")))
    wide_path = save(tmp_path, "wide.tif", Image.fromarray(np.full((3, 3), 100000, "int32")))
    return {
        str(tmp_path / "missing.png"): "no such file.",
        str(tmp_path / "folder"): "is a directory, not an image file.",
        str(tmp_path / "notes.txt"): "not an image format Pillow can read (unknown or unsupported format).",
        str(tmp_path / "truncated.png"): "corrupt or truncated image (",
        float_path: "image mode 'F' (e.g. 32-bit float) is not supported: save it as 8-bit RGB.",
        wide_path: "32-bit integer image (values 100000 to 100000) is not supported",
    }


def test_each_bad_file_gets_its_message(bad_files):
    for path, message in bad_files.items():
        with pytest.raises(predict.ImageFileError) as raised:
            predict.load_image(path)
        assert str(raised.value).startswith(f"{path}: {message}"), str(raised.value)


# --- end to end: the command on the fixture checkpoint ------------------------------------


def test_predict_json_equals_the_keras_models_top_k(fixture_checkpoint):
    model, checkpoint = fixture_checkpoint
    status, out, err = run_cli(
        ["predict", *PHOTOS, "--model", "pit_ti", "--weights", checkpoint, "--top", "3", "--json"]
    )
    assert status == 0, err
    results = json.loads(out)
    classes = imagenet_classes()
    assert [r["image"] for r in results] == PHOTOS
    for result, (best, row) in zip(results, keras_top_k(model, PHOTOS, 3)):
        assert "error" not in result and "note" not in result
        assert [p["label"] for p in result["predictions"]] == best.tolist()
        assert [p["name"] for p in result["predictions"]] == [classes[i][1] for i in best]
        assert [p["synset"] for p in result["predictions"]] == [classes[i][0] for i in best]
        np.testing.assert_allclose([p["probability"] for p in result["predictions"]], row[best], atol=1e-5)
    # The fixture's head is sharp enough that the photos do not all agree.
    assert len({r["predictions"][0]["label"] for r in results}) > 1


def test_predict_text_reports_bad_files_and_goes_on(fixture_checkpoint, bad_files, monkeypatch):
    model, checkpoint = fixture_checkpoint
    # Loading the file is the previous test's; this one reuses the module's model (no rebuild).
    monkeypatch.setattr(predict, "load_classifier", lambda name, weights: model)
    chelsea, camera = PHOTOS[2], os.path.join(SKIMAGE_DATA, "camera.png")
    status, out, err = run_cli(
        ["predict", chelsea, *bad_files, camera, "--model", "pit_ti", "--weights", checkpoint,
         "--top", "2", "--batch-size", "4"]
    )
    assert status == 1
    lines = out.splitlines()
    assert lines[0] == chelsea and lines[3] == f"{camera}  [grayscale (L) converted to RGB]"
    (best, row), = keras_top_k(model, [chelsea], 2)
    classes = imagenet_classes()
    assert lines[1:3] == [f"  {row[i]:.4f}  {classes[i][1]} (#{i})" for i in best]
    assert len(lines) == 6
    errors = err.splitlines()
    assert len(errors) == len(bad_files)
    for line, (path, message) in zip(errors, bad_files.items()):
        assert line.startswith(f"error: {path}: {message}")


def test_usage_errors_exit_2(tmp_path, fixture_checkpoint):
    _, checkpoint = fixture_checkpoint
    photo = PHOTOS[0]
    assert run_cli(["predict", photo, "--model", "pit_ti", "--top", "0"])[0] == 2
    assert run_cli(["predict", photo, "--model", "no_such_model"])[0] == 2
    assert run_cli(["predict", photo])[0] == 2  # --model is required
    status, _, err = run_cli(["predict", photo, "--model", "pit_ti", "--weights", str(tmp_path / "nope.pth")])
    assert status == 2 and "weights file not found" in err
    # No network in the tests: weights="imagenet" finds an empty mirror and says so.
    status, _, err = run_cli(["predict", photo, "--model", "refiner_s"])
    assert status == 2 and "No ImageNet weights for 'refiner_s'" in err


def test_docstring_examples():
    result = doctest.testmod(predict)
    assert result.attempted >= 3 and result.failed == 0


def test_a_fine_tuned_keras_model_keeps_its_classes_and_gets_a_softmax(tmp_path):
    # A small 4-class model saved with logits: no ImageNet names, probabilities that sum to 1.
    model = create_model("pit_ti", input_shape=(64, 64, 3), classes=4, classifier_activation=None,
                         depth=[1, 1, 1])
    path = str(tmp_path / "tuned.keras")
    model.save(path)
    loaded = predict.load_classifier("pit_ti", path)
    (result,) = predict.predict_files([PHOTOS[2]], loaded, "pit_ti", top=10)
    assert sorted(p["label"] for p in result["predictions"]) == [0, 1, 2, 3]
    assert all(set(p) == {"label", "probability"} for p in result["predictions"])
    logits = np.asarray(model.predict(predict.eval_transform(
        Image.open(PHOTOS[2]), 64, 0.9, "bicubic")[None], verbose=0))[0]
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    got = {p["label"]: p["probability"] for p in result["predictions"]}
    np.testing.assert_allclose([got[i] for i in range(4)], expected, atol=1e-5)
