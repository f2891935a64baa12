"""The benchmark suite runs end to end on a tiny job, and its command line checks its options.

Speed itself is never asserted here (machines are noisy): these tests check that
every contestant runs, that what is timed computes the reference's logits, and
that the table is complete.
"""

import pytest

from keras_deepvit import cli
from keras_deepvit.benchmark import runner
from keras_deepvit.benchmark.table import COLUMNS, format_table

pytest.importorskip("torch")

#: One Keras variant per backend keeps the jobs short.
FIRST_VARIANT = {"tensorflow": ["xla"], "jax": ["xla"], "torch": ["eager"]}


def tiny_job(**kwargs):
    import keras

    options = dict(
        models=["pit_ti"], image_size=32, batch_sizes=(2,), repeats=1, warmup=1, memory=False,
        in_process=True, keras_variants=FIRST_VARIANT[keras.backend.backend()], gemm_size=256,
        log=lambda *_: None,
    )
    options.update(kwargs)
    return runner.run_benchmark(**options)


@pytest.mark.long_running
def test_tiny_job_in_process_times_every_contestant():
    # Training with rematerialised blocks (the --remat option) on the PyTorch backend;
    # under XLA it only doubles the compile time of this test, and remat's training step
    # is checked on every backend by tests/test_rematerialization.py.
    import keras

    remat = keras.backend.backend() == "torch"
    report = tiny_job(
        modes=("infer", "train"), torch_variants=("eager", "sdpa"), repeats=2,
        model_kwargs={"rematerialize_blocks": True} if remat else {},
    )
    assert report["gemm_peak"]["peak"] > 0
    infer, train = report["rows"]
    for row in (infer, train):
        assert row["Keras img/s"] > 0
        assert row["torch eager"] > 0 and row["torch SDPA"] > 0
        assert row["Keras / best torch"] > 0
        assert row["Keras % GEMM peak"] > 0
    # What is timed is the same model: every Keras variant reproduces the eager reference.
    errors = report["results"][0]["rel_l2_vs_torch_eager"]
    assert errors and all(error < 1e-5 for error in errors.values()), errors
    table = format_table(report["rows"])
    assert table.splitlines()[0] == "| " + " | ".join(COLUMNS) + " |"
    assert len(table.splitlines()) == 4


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--models", "no_such_model"], "Unknown model"),
        (["--modes", "fly"], "--modes"),
        (["--batch-sizes", "8,x"], "--batch-sizes"),
        (["--backends", "mxnet"], "--backends"),
    ],
)
def test_bad_options_are_named(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["benchmark", "--no-memory", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_machine_header_names_the_cpu_and_its_flags():
    flags = {"avx512f": False, "avx512_bf16": False, "amx_bf16": False, "avx2": True, "fma": True}
    header = runner.machine_header({"cpu": "AMD EPYC (family 25, model 1)", "cores": 2, "cpu_flags": flags})
    assert header.startswith("CPU: AMD EPYC (family 25, model 1), 2 cores; flags ")
    assert "+avx2" in header and "-avx512f" in header


def test_a_worker_records_what_it_did_to_the_allocator(tmp_path, monkeypatch):
    import json

    from keras_deepvit.benchmark import worker

    spec_path, out_path = tmp_path / "spec.json", tmp_path / "out.json"
    spec_path.write_text(json.dumps({"model": "pit_ti"}))
    monkeypatch.setenv("KERAS_DEEPVIT_ALLOCATOR", "system")
    assert worker.run_json_job(lambda spec: {"model": spec["model"]}, [str(spec_path), str(out_path)]) == 0
    result = json.loads(out_path.read_text())
    assert result == {
        "model": "pit_ti", "allocator": {"allocator": "unchanged", "reason": "KERAS_DEEPVIT_ALLOCATOR=system"},
    }


def test_the_allocator_option_reaches_the_workers_and_a_wrong_value_is_named(monkeypatch, capsys):
    monkeypatch.setenv("KERAS_DEEPVIT_ALLOCATOR", "retain")
    with pytest.raises(SystemExit):
        cli.main(["benchmark", "--no-memory", "--allocator", "system", "--models", "no_such_model"])
    # The workers inherit the process environment (`runner._run_subprocess`).
    import os

    assert os.environ["KERAS_DEEPVIT_ALLOCATOR"] == "system"
    monkeypatch.setenv("KERAS_DEEPVIT_ALLOCATOR", "tcmalloc")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["list"])
    assert exit_info.value.code == 2
    assert "KERAS_DEEPVIT_ALLOCATOR='tcmalloc' is not one of retain, single-heap, system" in capsys.readouterr().err


def test_warm_up_is_one_step_alone_then_interleaved_rounds(monkeypatch):
    from keras_deepvit.benchmark import worker

    calls = []

    class Recorder:
        def __init__(self, label):
            self.label = label

        def step(self):
            calls.append(self.label)

    contestants = [Recorder("keras-a"), Recorder("torch-b")]
    monkeypatch.setattr(worker, "build_contestants", lambda *args, **kwargs: (contestants, {}, {}))
    monkeypatch.setattr(worker, "SETTLE_S", 0.0)
    spec = {"model": "pit_ti", "image_size": 32, "batch": 2, "mode": "train", "warmup": 3, "repeats": 2}
    result = worker.run_job(spec)
    alone, warm_rounds, timed_rounds = calls[:2], calls[2:6], calls[6:]
    assert alone == ["keras-a", "torch-b"]
    # Warm-up rounds rotate as the timed ones do.
    assert warm_rounds == ["keras-a", "torch-b", "torch-b", "keras-a"]
    assert timed_rounds == ["keras-a", "torch-b", "torch-b", "keras-a"]
    for label in ("keras-a", "torch-b"):
        assert len(result["contestants"][label]["warmup_s"]) == 3
        assert len(result["contestants"][label]["times_s"]) == 2
