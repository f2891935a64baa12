"""Shared pytest set-up: the tests directory on sys.path, quiet TensorFlow, a sandboxed
weights cache with no network, seeds."""

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Tests never touch the user's cache or the network: weights="imagenet" outside a test
# that sets up its own loopback server finds an empty mirror and fails at once.
_SANDBOX = tempfile.mkdtemp(prefix="keras_deepvit_tests_")
os.environ["KERAS_DEEPVIT_CACHE_DIR"] = os.path.join(_SANDBOX, "cache")
os.environ["KERAS_DEEPVIT_WEIGHTS_MIRROR"] = os.path.join(_SANDBOX, "empty_mirror")
os.makedirs(os.environ["KERAS_DEEPVIT_WEIGHTS_MIRROR"])
sys.path.insert(0, str(Path(__file__).resolve().parent))

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_and_clear():
    keras.utils.set_random_seed(0)
    yield
    keras.backend.clear_session()
