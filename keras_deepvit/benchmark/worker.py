"""One benchmark job in one process: a model, batch size and mode on the current backend.

All contestants (the Keras variants and the PyTorch variants) are built, warmed
up, then timed in interleaved rounds: every round runs one step of each, in an
order that rotates from round to round, so that a slow spell of a shared
machine hits all of them alike. The warm-up is each contestant's first step
alone (it compiles), then `warmup - 1` untimed interleaved rounds: with the
allocator keeping freed memory, a contestant's first steps after another
framework's ran slower until the shared heap settled (docs/performance.md).
Each contestant's result is the median step time over the rounds
(img/s = batch / median).

A memory probe (`spec["memory_probe"]` names one contestant) builds only that
contestant, runs its warm-up and one step, and reports the process's peak
resident memory (`resource.getrusage(RUSAGE_SELF).ru_maxrss`: the high-water
mark of everything the process touched) and the resident memory after importing
the frameworks and running one tiny op (`base_rss_mb`; the difference is what
the model, its step and its optimiser added); on a GPU also the framework's
peak device memory.

Run as `python -m keras_deepvit.benchmark.worker SPEC.json OUT.json` with
`KERAS_BACKEND` set; `run_job(spec)` does the same in the current process. A
worker process first sets up the C allocator for every contestant alike
(`keras_deepvit.allocator.retain_freed_memory`, unless `KERAS_DEEPVIT_ALLOCATOR`
is `system`) and records what it did under `"allocator"`.
"""

import json
import os
import resource
import sys
import time

import numpy as np

from keras_deepvit.allocator import retain_freed_memory


def current_rss_mb():
    """Resident memory now (Linux /proc), MB; None elsewhere."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def peak_rss_mb():
    """Peak resident memory of this process so far, MB (ru_maxrss: KB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def device_peak_mb(label, backend):
    """Peak accelerator memory of the contestant's framework, MB, or None on CPU."""
    try:
        if label.startswith("torch") or backend == "torch":
            import torch

            if torch.cuda.is_available():
                return torch.cuda.max_memory_allocated() / 2**20
            return None
        if backend == "jax":
            import jax

            device = jax.devices()[0]
            if device.platform == "cpu":
                return None
            return device.memory_stats()["peak_bytes_in_use"] / 2**20
        if backend == "tensorflow":
            import tensorflow as tf

            if not tf.config.list_physical_devices("GPU"):
                return None
            return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    except Exception:  # noqa: BLE001 - memory statistics are best effort
        return None
    return None


def _load_frameworks():
    """Imports everything a job uses and runs one tiny op, so that the memory
    probes' baseline includes the frameworks' own footprint."""
    import keras

    keras.ops.convert_to_numpy(keras.ops.add(keras.ops.ones((2,)), 1.0))
    import keras_deepvit.weights  # noqa: F401

    try:
        import torch

        import keras_deepvit.testing.torch_reference  # noqa: F401

        torch.ones(2).add(1.0)
    except ImportError:
        pass


def _inputs(spec):
    rng = np.random.default_rng(spec.get("seed", 0))
    size, batch = spec["image_size"], spec["batch"]
    images = rng.standard_normal((batch, size, size, 3)).astype("float32")
    labels = rng.integers(0, 1000, size=(batch,)).astype("int32")
    return images, labels


#: Pause before each timed step: lets the previous contestant's worker threads stop
#: spinning (TensorFlow's and XLA's thread pools and PyTorch's OpenMP threads
#: busy-wait a while after their work), which would otherwise steal the cores of
#: a small machine from the next contestant.
SETTLE_S = 0.05


def _timed(fn):
    time.sleep(SETTLE_S)
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _rotated(contestants, round_index):
    """The round's order: the list rotated by the round's index (a copy)."""
    if not contestants:
        return []
    shift = round_index % len(contestants)
    return contestants[shift:] + contestants[:shift]


def build_contestants(spec, images, labels, only=None):
    """`(contestants, errors, info)`; `only` limits to one contestant label."""
    import keras

    from keras_deepvit.benchmark.keras_side import KERAS_VARIANTS, KerasContestant

    backend = keras.backend.backend()
    keras_variants = spec.get("keras_variants") or KERAS_VARIANTS[backend]
    torch_variants = list(spec.get("torch_variants", ()))
    dtype = spec.get("dtype", "float32")
    if dtype != "float32":
        keras.config.set_dtype_policy(dtype)

    wanted = lambda label: only is None or label == only  # noqa: E731
    contestants, errors, info = [], {}, {}
    state = config = None
    need_torch = any(wanted(f"torch-{v}") for v in torch_variants) or (
        spec.get("load_reference_weights", True) and only is None
    )
    if need_torch:
        try:
            import torch

            from keras_deepvit.benchmark.torch_side import has_plain_attention, reference_model
            from keras_deepvit.testing.torch_reference import state_dict_numpy

            config, reference = reference_model(spec["model"], spec["image_size"], spec.get("seed", 0))
            state = reference.state_dict()
            info["torch_version"] = torch.__version__
            if not has_plain_attention(config):
                torch_variants = [v for v in torch_variants if v != "sdpa"]
        except ImportError as error:
            errors["torch"] = f"PyTorch reference unavailable: {error}"
            torch_variants = []

    for variant in keras_variants:
        label = f"keras-{variant}"
        if not wanted(label):
            continue
        try:
            weights = state_dict_numpy_cached(state) if state is not None else None
            contestants.append(
                KerasContestant(
                    spec["model"], variant, spec["mode"], images, labels, weights,
                    model_kwargs=spec.get("model_kwargs"),
                )
            )
        except Exception as error:  # noqa: BLE001 - report and go on with the others
            errors[label] = f"{type(error).__name__}: {error}"
    if state is not None:
        from keras_deepvit.benchmark.torch_side import TorchContestant

        for variant in torch_variants:
            label = f"torch-{variant}"
            if not wanted(label):
                continue
            try:
                contestants.append(
                    TorchContestant(config, state, variant, spec["mode"], images, labels, dtype)
                )
            except Exception as error:  # noqa: BLE001
                errors[label] = f"{type(error).__name__}: {error}"
    return contestants, errors, info


_NUMPY_STATE = {}


def state_dict_numpy_cached(state):
    """The reference state dict as numpy (computed once per process)."""
    key = id(state)
    if key not in _NUMPY_STATE:
        _NUMPY_STATE[key] = {
            k: (v.detach().cpu().numpy().astype("float32") if v.is_floating_point() else v.cpu().numpy())
            for k, v in state.items()
        }
    return _NUMPY_STATE[key]


def run_job(spec):
    """Runs one job; returns a JSON-able dict (see the module docstring)."""
    import keras

    backend = keras.backend.backend()
    _load_frameworks()
    base_rss = current_rss_mb()
    images, labels = _inputs(spec)
    result = {
        "spec": spec, "backend": backend, "keras_version": keras.__version__,
        "contestants": {}, "errors": {},
    }
    probe = spec.get("memory_probe")
    contestants, errors, info = build_contestants(spec, images, labels, only=probe)
    result["errors"].update(errors)
    result.update(info)
    if probe is None:
        try:
            from keras_deepvit.benchmark.flops import forward_flops_per_image

            result["forward_flops_per_image"] = forward_flops_per_image(spec["model"], spec["image_size"])
        except ImportError:
            result["forward_flops_per_image"] = None

    if probe is None and spec["mode"] == "infer" and spec.get("dtype", "float32") == "float32":
        # Correctness of what is timed: each Keras variant against the eager reference.
        reference = next((c for c in contestants if c.label == "torch-eager"), None)
        if reference is not None:
            expected = reference.logits().astype("float64")
            for c in contestants:
                if c.label.startswith("keras"):
                    actual = np.asarray(c.logits(), "float64")
                    result.setdefault("rel_l2_vs_torch_eager", {})[c.label] = float(
                        np.linalg.norm(actual - expected) / np.linalg.norm(expected)
                    )

    warmup = max(1, spec.get("warmup", 3))
    alive = []
    for c in contestants:
        try:
            result["contestants"][c.label] = {"warmup_s": [_timed(c.step)]}
            alive.append(c)
        except Exception as error:  # noqa: BLE001
            result["errors"][c.label] = f"{type(error).__name__}: {error}"
    # The other warm-up steps interleave as the timed rounds do: the first rounds
    # after another framework's steps are slower until the shared heap settles.
    for r in range(warmup - 1):
        for c in _rotated(alive, r):
            try:
                result["contestants"][c.label]["warmup_s"].append(_timed(c.step))
            except Exception as error:  # noqa: BLE001
                result["errors"][c.label] = f"{type(error).__name__}: {error}"
                alive.remove(c)

    if probe is not None:
        for c in alive:
            c.step()
            entry = result["contestants"][c.label]
            entry["peak_rss_mb"] = peak_rss_mb()
            entry["base_rss_mb"] = base_rss
            entry["device_peak_mb"] = device_peak_mb(c.label, backend)
        return result

    repeats = max(1, spec.get("repeats", 5))
    times = {c.label: [] for c in alive}
    for r in range(repeats):
        for c in _rotated(alive, r):
            times[c.label].append(_timed(c.step))
    for c in alive:
        median = float(np.median(times[c.label]))
        result["contestants"][c.label].update(
            {"times_s": times[c.label], "median_s": median, "images_per_s": spec["batch"] / median}
        )
    return result


def run_json_job(job, argv=None):
    """`job(spec)` for a worker process: `argv` is `SPEC.json OUT.json`; writes the result."""
    argv = sys.argv[1:] if argv is None else argv
    spec_path, out_path = argv
    allocator = retain_freed_memory()
    with open(spec_path) as f:
        spec = json.load(f)
    result = job(spec)
    result["allocator"] = allocator
    with open(out_path, "w") as f:
        json.dump(result, f)
    return 0


def main(argv=None):
    return run_json_job(run_job, argv)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    raise SystemExit(main())
