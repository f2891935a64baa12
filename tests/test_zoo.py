"""The variant records and what is built from them; the package's import direction;
attention maps that follow training."""

import ast
import doctest
import inspect
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_deepvit
from helpers import compile_for_training, to_numpy
from keras_deepvit.zoo import constructors, identify, records, registry

PACKAGE = Path(keras_deepvit.__file__).parent
#: Each package may import only the ones before it (layers <- models <- weights <- zoo <- the rest).
ORDER = ["layers", "models", "weights", "zoo"]


def imported_packages(path):
    """keras_deepvit sub-packages a module imports, at any depth (lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "keras_deepvit" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("package", ORDER)
def test_imports_run_one_way(package):
    allowed = set(ORDER[: ORDER.index(package) + 1])
    upward = {}
    for path in sorted((PACKAGE / package).rglob("*.py")):
        wrong = (imported_packages(path) & set(ORDER)) - allowed
        if wrong:
            upward[str(path.relative_to(PACKAGE))] = sorted(wrong)
    assert upward == {}


def test_every_record_is_complete_and_consistent():
    assert len(records.RECORDS) == 24
    for name, record in records.RECORDS.items():
        assert record.name == name and record.params > 0 and record.size in (224, 384, 448)
        assert record.mean == record.family.MEAN_STD[0] and record.std == record.family.MEAN_STD[1]
        assert 0 < record.crop_pct <= 1.2 and record.interpolation == "bicubic"
        assert "arXiv" in record.paper
        if record.has_weights:
            assert record.top1 is not None and all(c.url.startswith("https://") for c in record.checkpoints)
            assert all(c.sha256 is None for c in record.checkpoints)  # the slot, until pinned
        else:
            assert record.weights_note and record.top1 is None
        assert identify.variant_architecture(name)["family"] == record.family_name
    assert keras_deepvit.variant_info("pit_s") is records.RECORDS["pit_s"]
    with pytest.raises(ValueError, match="Did you mean 'pit_s'"):
        keras_deepvit.variant_info("pit_ss")


def test_constructors_come_from_the_records_with_real_signatures():
    named = {r.constructor for r in records.RECORDS.values() if r.constructor}
    assert set(constructors.CONSTRUCTORS) == named and len(named) == 17
    for constructor_name in named:
        constructor = getattr(keras_deepvit, constructor_name)
        record = next(r for r in records.RECORDS.values() if r.constructor == constructor_name)
        parameters = inspect.signature(constructor).parameters
        assert list(parameters)[:3] == ["include_top", "weights", "input_tensor"]
        assert parameters["name"].default == record.name
        doc = constructor.__doc__
        assert f"{record.params:,} parameters" in doc and f"{record.size}x{record.size}" in doc
        assert record.paper in doc and f"keras_deepvit.{constructor_name}(" in doc
        if record.top1 is not None:
            assert f"top-1 {record.top1}%" in doc
    assert "82.3%" in keras_deepvit.DeepViTS.__doc__ and "not available" in keras_deepvit.RefinerViTS.__doc__


def test_a_constructor_takes_positional_arguments_like_keras_applications(monkeypatch):
    calls = []
    monkeypatch.setattr(registry, "create_model", lambda variant, /, **kw: calls.append((variant, kw)))
    keras_deepvit.PiTS(False, None, None, (64, 64, 3), "avg")
    ((name, kwargs),) = calls
    assert name == "pit_s" and kwargs["include_top"] is False and kwargs["pooling"] == "avg"
    assert kwargs["input_shape"] == (64, 64, 3) and kwargs["name"] == "pit_s"
    with pytest.raises(TypeError):
        keras_deepvit.PiTS(True, None, None, None, None, 1000, "softmax", True, 0.0, "n", "extra")


@pytest.mark.parametrize("module", [registry, identify, keras_deepvit.zoo.preprocess])
def test_doctests(module):
    assert doctest.testmod(module).failed == 0


def test_attention_maps_follow_training_without_rebuilding():
    model = keras_deepvit.DeepViT(
        depth=2, embed_dim=16, num_heads=2, patch_size=8, input_shape=(16, 16, 3), classes=3
    )
    attention = model.attention_model()
    assert {id(v) for v in attention.weights} <= {id(v) for v in model.weights}
    assert len(attention.weights) <= len(model.weights)
    images = np.random.default_rng(0).uniform(0, 255, (8, 16, 16, 3)).astype("float32")
    labels = np.arange(8) % 3
    before = to_numpy(attention(images))
    compile_for_training(model, optimizer=keras.optimizers.Adam(1e-2),
                         loss="sparse_categorical_crossentropy")
    model.fit(images, labels, epochs=3, batch_size=8, verbose=0)
    after = to_numpy(attention(images))  # the same attention model, not rebuilt
    assert len(after) == 2 and after[0].shape == (8, 2, 5, 5)
    assert max(float(np.abs(a - b).max()) for a, b in zip(after, before)) > 1e-4
    np.testing.assert_allclose(to_numpy(model.attention_model()(images))[1], after[1], rtol=1e-6)
