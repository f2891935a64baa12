"""tools/run_tests.py: the JAX pass shares a compilation cache; the others get none."""

import importlib.util
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "run_tests.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("run_tests_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_only_the_jax_pass_gets_a_compilation_cache(monkeypatch, tmp_path):
    tool = load_tool()
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    env = tool.compile_cache_env("jax", tmp_path)
    assert env["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path)
    assert env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "0"
    assert tool.compile_cache_env("tensorflow", tmp_path) == {}
    assert tool.compile_cache_env("torch", tmp_path) == {}


def test_a_cache_of_your_own_wins(monkeypatch, tmp_path):
    tool = load_tool()
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))
    assert tool.compile_cache_env("jax", tmp_path) == {}
