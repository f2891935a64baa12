"""`machine_facts`: measurements cached per machine in `$KERAS_HOME`, measured once, never
half-written, and measured again when the file is unreadable or the home read-only."""

import doctest
import json
import os

import pytest

from keras_deepvit import cpuinfo
from keras_deepvit.layers import machine_facts


@pytest.fixture
def home(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    return tmp_path


def test_docstring_examples(home):
    results = doctest.testmod(machine_facts)
    assert results.attempted > 0 and results.failed == 0


def test_a_fact_is_measured_once_and_read_back(home):
    calls = []
    measure = lambda: calls.append(1) or {"fast": True}  # noqa: E731
    assert machine_facts.measured_fact("k", measure) == {"fast": True}
    assert machine_facts.measured_fact("k", measure) == {"fast": True}
    assert calls == [1]
    assert json.loads((home / "keras_deepvit" / "machine_facts.json").read_text()) == {"k": {"fast": True}}
    assert not [p for p in os.listdir(home / "keras_deepvit") if p.endswith(".tmp")]


@pytest.mark.parametrize("content", ["{half a fi", "[1, 2]", ""])
def test_an_unreadable_file_is_measured_again_and_replaced(home, content):
    (home / "keras_deepvit").mkdir()
    (home / "keras_deepvit" / "machine_facts.json").write_text(content)
    assert machine_facts.measured_fact("k", lambda: {"x": 1}) == {"x": 1}
    assert json.loads((home / "keras_deepvit" / "machine_facts.json").read_text()) == {"k": {"x": 1}}


def test_a_home_that_cannot_be_written_still_gives_the_measurement(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("KERAS_HOME", str(blocker))  # a file: its subfolder cannot be made
    assert machine_facts.measured_fact("k", lambda: {"x": 2}) == {"x": 2}


def test_keys_name_the_cpu_and_the_framework_version():
    import keras

    backend = keras.backend.backend()
    key = machine_facts.framework_key(backend)
    assert key.startswith(cpuinfo.cpu_identity() + " | " + backend + " ")


def test_keys_name_the_allocator_setting_so_each_setting_measures_its_own(home, monkeypatch):
    import keras

    from keras_deepvit import allocator

    backend = keras.backend.backend()
    monkeypatch.setattr(allocator, "_applied", None)
    as_started = machine_facts.framework_key(backend)
    assert as_started.endswith(" | allocator as started")
    monkeypatch.setattr(allocator, "_applied", {"allocator": "glibc", "pattern": "scratch", "settings": {}})
    kept = machine_facts.framework_key(backend)
    assert kept.endswith(" | allocator scratch")

    calls = []
    for key in (as_started, kept, kept):
        machine_facts.measured_fact(key + " | probe", lambda: calls.append(key) or {"fast": True})
    assert calls == [as_started, kept]
