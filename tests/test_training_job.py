"""`keras-deepvit train`: argument errors before anything heavy, a whole tiny run with
every output, and a run killed mid-epoch that the same command resumes."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import keras
import pytest

from helpers import in_one_pass
from keras_deepvit.cli import main
from keras_deepvit.training import curves, job

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: A one-block-per-stage PiT-Ti on 32x32 digits: seconds per epoch on 2 cores.
TINY = ["--model", "pit_ti", "--model-kwargs", '{"depth": [1, 1, 1]}', "--image-size", "32",
        "--batch-size", "128", "--verbose", "2"]


@pytest.mark.parametrize(
    "arguments,message",
    [
        (["--model", "pit_tiny"], "invalid choice: 'pit_tiny'"),
        (["--data", "/nonexistent/folder"], "no such folder"),
        (["--image-size", "8"], "smaller than one 16x16 patch"),
        (["--epochs", "0"], "--epochs must be a positive int"),
        (["--model-kwargs", "{depth: 1}"], "--model-kwargs must be a JSON object"),
        (["--model-kwargs", '{"dept": [1, 1, 1]}'], "did you mean 'depth'?"),
        (["--teacher", "t.keras"], "pit_ti has no distillation head"),
        (["--model", "pit_ti_distilled", "--teacher", "missing.keras"], "--teacher must be a .keras model file"),
    ],
)
def test_bad_arguments_are_one_clear_line(arguments, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--output", str(tmp_path / "run")] + arguments)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "model.keras").exists()


def test_a_folder_with_one_class_is_refused(tmp_path, capsys):
    from PIL import Image

    (tmp_path / "data" / "only").mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / "data" / "only" / f"{i}.png")
    with pytest.raises(SystemExit):
        main(["train", "--data", str(tmp_path / "data"), "--output", str(tmp_path / "run")])
    assert "class" in capsys.readouterr().err


def _run(output, epochs, **popen):
    command = [sys.executable, "-m", "keras_deepvit", "train", "--epochs", str(epochs), "--output", str(output)]
    env = dict(os.environ, PYTHONPATH=ROOT, KERAS_BACKEND=keras.backend.backend())
    return subprocess.Popen(command + TINY, env=env, cwd=ROOT, **popen)


def _logged_epochs(output):
    path = output / "history.csv"
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle)]


@pytest.mark.long_running
@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="runs once per suite, in the KERAS_BACKEND=tensorflow pass (two training processes; "
    "BackupAndRestore is the same on every backend)",
)
def test_killed_run_resumes_from_its_last_epoch(tmp_path):
    output = tmp_path / "run"
    process = _run(output, 3, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        while not _logged_epochs(output):
            assert process.poll() is None, "the training process ended before its first epoch was logged"
            assert time.time() < deadline, "no epoch finished in 10 minutes"
            time.sleep(0.1)
        time.sleep(0.5)  # into the second epoch
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    done = _logged_epochs(output)
    assert done and max(done) < 2, f"killed too late to test resuming: {done}"
    assert not (output / "model.keras").exists()

    resumed = _run(output, 3, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    printed, _ = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, printed
    epochs = _logged_epochs(output)
    assert sorted(set(epochs)) == [0, 1, 2], epochs  # every epoch once, at most one redone
    assert len(epochs) <= len(set(epochs)) + 1
    assert printed.count("Epoch ") <= 3 - (max(done) + 1) + 0  # only the unfinished epochs ran again
    assert "trained pit_ti on digits for 3 epochs" in printed
    for name in ("model.keras", "evaluation.json", "curves.png", "checkpoints/last.keras", "run.json"):
        assert (output / name).is_file(), name
    assert os.listdir(output / "tensorboard")
    evaluation = json.loads((output / "evaluation.json").read_text())
    assert 0.0 <= evaluation["accuracy"] <= 1.0
    history = curves.read_history(output / "history.csv")
    assert history["epoch"] == [0, 1, 2] and len(history["val_accuracy"]) == 3

    # Another model in the same directory would mix two runs: refused before training.
    with pytest.raises(ValueError, match="holds a run with other settings"):
        job.run_training(job.TrainingConfig(model="pit_xs", output=str(output), epochs=1))


@in_one_pass("torch", "the job's distillation wiring; each backend's distillation step is in test_training_recipe.py")
def test_a_distilled_pit_learns_from_a_teacher_in_one_run(tmp_path):
    """A whole run in-process on every backend: DeiT distillation, every output written."""
    import keras_deepvit

    teacher = keras_deepvit.PiT(base_dims=(8, 8), depth=(1, 1), heads=(2, 4), input_shape=(32, 32, 3), classes=10)
    teacher.save(tmp_path / "teacher.keras")
    config = job.TrainingConfig(
        model="pit_ti_distilled", teacher=str(tmp_path / "teacher.keras"), epochs=1, batch_size=128,
        output=str(tmp_path / "run"), model_kwargs={"depth": [1, 1, 1]}, verbose=0,
    )
    result = job.run_training(config)
    assert result["epochs"] == 1 and 0.0 <= result["val_accuracy"] <= 1.0
    student = keras.saving.load_model(result["paths"]["model"])
    assert isinstance(student, keras_deepvit.PiT) and student.get_config()["distilled"]
    assert set(student.output) == {"logits", "cls_logits", "dist_logits"}
    history = curves.read_history(result["paths"]["history"])
    assert "distillation_loss" in history or "loss" in history
    assert os.path.getsize(result["paths"]["curves"]) > 1000
    assert any(line.startswith("validation accuracy") for line in job.format_summary(result))
