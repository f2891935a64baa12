"""`keras_deepvit.training` loads TensorFlow only for what needs it (the data pipelines,
the augmentation and the job): the recipe, the losses and the optimiser run without it."""

import os
import subprocess
import sys

import keras
import pytest

import keras_deepvit.training as training


def _tensorflow_loaded_after(code):
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend())
    script = f"import sys\n{code}\nprint('tensorflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip().splitlines()[-1] == "True"


def test_the_recipe_losses_and_optimiser_import_without_tensorflow():
    if keras.backend.backend() == "tensorflow":
        pytest.skip("TensorFlow is the backend here")
    code = (
        "import keras_deepvit.training.fused_adamw\n"
        "from keras_deepvit.training import recipe, classification_loss, DistillationModel, distribution_scope"
    )
    assert not _tensorflow_loaded_after(code)
    assert _tensorflow_loaded_after("from keras_deepvit.training import load_dataset")


def test_every_exported_name_resolves_to_its_object():
    for name in training.__all__:
        value = getattr(training, name)
        assert getattr(value, "__name__", name) == name, name
    assert training.recipe.__module__ == "keras_deepvit.training.recipe"  # the function, not its module
    assert set(training.__all__) <= set(dir(training))
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        training.nonexistent  # noqa: B018
