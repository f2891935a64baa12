"""Data-parallel training (`keras_deepvit.training.distribute`) on the backends' own engines.

The multi-device scenarios need their backend and device count fixed before Keras
starts, so each runs in a fresh interpreter (`tests/distributed_worker.py`) with a
timeout, and only in the suite's pass for its backend (the suite runs once per
backend): the JAX scenarios in the jax pass, the TensorFlow one in the tensorflow
pass. The argument checks run in-process on every backend.
"""

import doctest
import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_deepvit.training import distribute
from keras_deepvit.training.distribute import (
    DistributionSetup,
    describe_distribution,
    distribution_scope,
)

WORKER = Path(__file__).resolve().parent / "distributed_worker.py"
REPO = WORKER.parents[1]
BACKEND = keras.backend.backend()
#: Float32 rounding of a one-step loss and of SGD-updated weights: the devices sum
#: partial gradients and batch moments in a different order from one device.
RTOL, ATOL = 1e-5, 1e-6
#: How far normalising each half on its own moves the loss of the test batch
#: (measured 3.9e-3 on JAX, 2.6e-2 on TensorFlow): a global-statistics check at
#: `RTOL` would fail for per-device statistics.
PER_HALF_GAP = 1e-3

only_jax = pytest.mark.skipif(
    BACKEND != "jax",
    reason="JAX scenario: runs once per suite, in the KERAS_BACKEND=jax pass (own subprocess)",
)
only_tensorflow = pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="TensorFlow scenario: runs once per suite, in the KERAS_BACKEND=tensorflow pass "
    "(own subprocess)",
)


def worker_environment(backend, cpu_devices=None):
    env = dict(os.environ, KERAS_BACKEND=backend, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if cpu_devices:
        flag = f"--xla_force_host_platform_device_count={cpu_devices}"
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flag}"
    # A cluster of the caller's must not leak into the workers.
    for name in (distribute.ENV_COORDINATOR, distribute.ENV_NUM_PROCESSES):
        env.pop(name, None)
    env.pop(distribute.ENV_PROCESS_ID, None)
    return env


def run_workers(commands, env, timeout):
    """Run worker command lines concurrently; fail with their output if one fails or hangs."""
    processes = [
        subprocess.Popen(
            [sys.executable, str(WORKER), *map(str, command)], env=env, cwd=REPO,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for command in commands
    ]
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=timeout)[0])
    except subprocess.TimeoutExpired:
        for process in processes:
            process.kill()
        pytest.fail(f"distributed worker timed out after {timeout} s: {commands}")
    for process, output, command in zip(processes, outputs, commands):
        assert process.returncode == 0, f"worker {command} failed:\n{output[-4000:]}"


def numbered(results, prefix):
    count = sum(1 for name in results.files if name.startswith(f"{prefix}__"))
    return [results[f"{prefix}__{index}"] for index in range(count)]


def assert_all_close(actual, expected, names=None):
    assert len(actual) == len(expected) > 0
    for index, (a, b) in enumerate(zip(actual, expected)):
        name = names[index] if names is not None else index
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, err_msg=str(name))


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.long_running
@only_jax
def test_jax_data_parallel_two_devices_matches_one_device(tmp_path):
    out = tmp_path / "data_parallel.npz"
    run_workers([("jax_data_parallel", out)], worker_environment("jax", cpu_devices=2), timeout=240)
    results = np.load(out)
    assert str(results["kind"]) == "data_parallel" and int(results["num_replicas"]) == 2
    assert int(results["replicated_on"]) == 2
    assert "2 x 4 per device" in str(results["description"])
    # One SPMD program over the sharded global batch: the BatchNorms in the CNN
    # stem and in the re-attention see the whole batch, as on one device.
    np.testing.assert_allclose(results["loss_parallel"], results["loss_single"], rtol=RTOL)
    per_half = results["loss_halves"].mean()
    assert abs(per_half - results["loss_single"][0]) > PER_HALF_GAP * results["loss_single"][0]
    assert_all_close(
        numbered(results, "weights_parallel"), numbered(results, "weights_single"), results["paths"]
    )


@pytest.mark.long_running
@only_jax
def test_jax_two_processes_match_one_process(tmp_path):
    port = free_port()
    outs = [tmp_path / f"process{index}.npz" for index in range(2)]
    run_workers(
        [("jax_multi_process", outs[index], index, 2, port) for index in range(2)],
        worker_environment("jax"), timeout=300,
    )
    first, second = (np.load(out) for out in outs)
    for index, results in enumerate((first, second)):
        assert str(results["kind"]) == "data_parallel"
        assert int(results["num_processes"]) == 2 and int(results["process_id"]) == index
        assert "global batch 8 = 2 x 4 per process" in str(results["description"])
    # Both processes report the loss of the global batch, equal to one process's.
    np.testing.assert_array_equal(first["loss"], second["loss"])
    assert first["loss"].shape == (2,)
    np.testing.assert_allclose(first["loss"], first["loss_reference"], rtol=RTOL)
    assert_all_close(numbered(first, "weights"), numbered(first, "weights_reference"))
    assert_all_close(numbered(second, "weights"), numbered(first, "weights"))


@pytest.mark.long_running
@only_tensorflow
def test_tensorflow_mirrored_two_devices(tmp_path):
    out = tmp_path / "mirrored.npz"
    run_workers([("tensorflow_mirrored", out)], worker_environment("tensorflow"), timeout=240)
    results = np.load(out)
    assert str(results["kind"]) == "mirrored" and int(results["num_replicas"]) == 2
    assert "per replica" in str(results["description"])
    # No BatchNorm (PiT: LayerNorm only): two mirrored steps equal one device's.
    np.testing.assert_allclose(results["pit_loss_mirrored"], results["pit_loss_single"], rtol=RTOL)
    assert_all_close(
        numbered(results, "pit_weights_mirrored"), numbered(results, "pit_weights_single")
    )

    # DeepViT's BatchNorms (CNN stem, re-attention) normalise each replica's half
    # with its own statistics: the loss is the mean of the halves' losses, not the
    # global batch's, and each replica keeps its own moving statistics; the model
    # reads (and saves) replica 0's.
    halves = (float(results["deepvit_loss_half0"]) + float(results["deepvit_loss_half1"])) / 2
    global_loss = float(results["deepvit_loss_single"][0])
    assert abs(halves - global_loss) > PER_HALF_GAP * global_loss
    np.testing.assert_allclose(results["deepvit_loss_mirrored"][0], halves, rtol=RTOL)
    for copy, half in (("replica0", "half0"), ("replica1", "half1"), ("mirrored", "half0")):
        assert_all_close(
            numbered(results, f"deepvit_stats_{copy}"), numbered(results, f"deepvit_stats_{half}")
        )
    # Keras' synchronized BatchNorm all-reduces the moments: global statistics, as on JAX.
    np.testing.assert_allclose(results["deepvit_loss_synchronized"][0], global_loss, rtol=RTOL)
    assert_all_close(
        numbered(results, "deepvit_stats_synchronized"), numbered(results, "deepvit_stats_single")
    )


def test_none_is_one_device_on_every_backend():
    setup = distribution_scope("none")
    assert (setup.backend, setup.kind) == (BACKEND, "none")
    assert (setup.num_replicas, setup.num_processes, setup.is_chief) == (1, 1, True)
    with setup:
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        model.compile(optimizer="sgd", loss="mse")
        model.fit(np.ones((4, 3)), np.ones((4, 2)), batch_size=2, verbose=0)
    line = describe_distribution(setup, global_batch_size=6)
    assert line.startswith(f"distribution: {BACKEND} none, 1 device(s)")
    assert "global batch 6 = 1 x 6 per process = 1 x 6 per device" in line
    assert describe_distribution().startswith(f"distribution: {BACKEND} none")


def test_batch_size_must_split_over_the_devices():
    setup = DistributionSetup("jax", "data_parallel", ("cpu:0", "cpu:1", "cpu:2"), num_processes=3)
    assert setup.per_process_batch_size(12) == 4 and setup.per_replica_batch_size(12) == 4
    with pytest.raises(ValueError, match="batch size 8 must be a positive multiple of the 3"):
        setup.describe(8)
    with pytest.raises(ValueError, match="global batch size 0 must"):
        setup.per_replica_batch_size(0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kind": "ddp"}, "Unknown distribution kind 'ddp'"),
        ({"coordinator": "10.0.0.1"}, "coordinator must be 'HOST:PORT'"),
        ({"coordinator": "10.0.0.1:1234"}, "needs num_processes and process_id"),
        ({"coordinator": "h:1", "num_processes": 2, "process_id": 2}, "process_id 2 is out of"),
        ({"num_processes": 0}, "num_processes must be a positive int"),
        ({"kind": "none", "num_processes": 2, "process_id": 0}, "kind='none' trains on one device"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        distribution_scope(**kwargs)


def test_cluster_arguments_come_from_keras_environment_variables(monkeypatch):
    monkeypatch.setenv(distribute.ENV_COORDINATOR, "10.0.0.1:1234")
    monkeypatch.setenv(distribute.ENV_NUM_PROCESSES, "2")
    monkeypatch.setenv(distribute.ENV_PROCESS_ID, "5")
    with pytest.raises(ValueError, match="process_id 5 is out of range for num_processes=2"):
        distribution_scope()
    monkeypatch.setenv(distribute.ENV_PROCESS_ID, "one")
    with pytest.raises(ValueError, match="KERAS_DISTRIBUTION_PROCESS_ID must be an int, got 'one'"):
        distribution_scope()


@pytest.mark.skipif(BACKEND == "jax", reason="JAX joins the cluster: see the two-process test")
def test_multi_host_is_refused_off_jax():
    expected = "no multi-device training"
    if BACKEND == "tensorflow":
        expected = "keras-team/keras/issues/20585"
    with pytest.raises(ValueError, match=expected):
        distribution_scope(coordinator="127.0.0.1:1234", num_processes=2, process_id=0)
    with pytest.raises(ValueError, match=expected):
        distribution_scope("multi_host")


@pytest.mark.skipif(BACKEND != "torch", reason="PyTorch backend only")
def test_torch_has_no_data_parallel_and_auto_falls_back_to_one_device():
    with pytest.raises(ValueError, match="no multi-device training on the torch backend"):
        distribution_scope("data_parallel")
    assert distribution_scope("auto").kind == "none"


def test_docstring_examples():
    result = doctest.testmod(distribute)
    assert result.failed == 0 and result.attempted >= 3
