"""The exported contestants: the model's inference artifacts run by their own runtimes.

`keras-deepvit benchmark --exported` adds, per model and batch size, the
inference images/s of the artifacts `keras_deepvit.export` writes, beside the
Keras variants and the PyTorch reference of the same run:

- "exported-tf_saved_model": the SavedModel's `serve` endpoint, run by TensorFlow;
- "exported-onnx": the ONNX file (float32 input), run by onnxruntime on CPU.

Both are exported from the TensorFlow backend (the formats' common exporter),
in one process of their own (`python -m keras_deepvit.benchmark.exported_side
SPEC.json OUT.json`, `KERAS_BACKEND=tensorflow`), timed in interleaved rounds
like the worker's contestants. The model is the benchmark's Keras model (random
weights, seeded); an artifact takes RGB in [0, 255] with the normalisation
inside, so it is fed the worker's normalised images mapped back to [0, 255],
and `rel_l2_vs_keras` checks that it computes the Keras model's logits.
"""

import os
import tempfile

import numpy as np

#: Formats timed by `--exported`, and the runtime of each.
EXPORTED_FORMATS = {"tf_saved_model": "tensorflow", "onnx": "onnxruntime"}


class ExportedContestant:
    """One artifact loaded in its runtime; `step()` runs one synchronous batch.

    Args:
        format: a key of `EXPORTED_FORMATS`.
        path: the artifact written by `keras_deepvit.export.export`.
        images: `(batch, size, size, 3)` float32 numpy, RGB in [0, 255].
    """

    def __init__(self, format, path, images):
        self.label = f"exported-{format}"
        if format == "tf_saved_model":
            import tensorflow as tf

            # Held: the endpoint refers to the loaded object's variables.
            self.loaded = tf.saved_model.load(path)
            inputs = tf.constant(images)
            self.run = lambda: self.loaded.serve(inputs).numpy()
        elif format == "onnx":
            import onnxruntime

            session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
            feed = {session.get_inputs()[0].name: images}
            self.run = lambda: session.run(None, feed)[0]
        else:
            raise ValueError(f"format must be one of {', '.join(EXPORTED_FORMATS)}; got {format!r}.")

    def step(self):
        return self.run()

    def logits(self):
        return np.asarray(self.run())


def to_pixels(model, images):
    """The worker's normalised images mapped back to RGB in [0, 255] for `model`'s family."""
    mean, std = (np.asarray(v, "float32") for v in type(model).MEAN_STD)
    return (images * std + mean) * 255.0


def run_exported_job(spec, directory=None):
    """Exports the spec's model in each format, times the artifacts; returns a worker-like result.

    Must run on the TensorFlow backend. `spec` is a worker spec (`model`,
    `image_size`, `batch`, `repeats`, `warmup`, `seed`, optional `model_kwargs`
    and `formats`); `directory` holds the artifacts (default: a temporary one).

    Example (a one-block-per-stage PiT-Ti at 32x32):
    >>> import keras
    >>> spec = dict(model="pit_ti", image_size=32, batch=2, repeats=1, warmup=1,
    ...             model_kwargs={"depth": (1, 1, 1)}, formats=["onnx"])
    >>> if keras.backend.backend() == "tensorflow":
    ...     result = run_exported_job(spec)
    ...     assert result["rel_l2_vs_keras"]["exported-onnx"] < 1e-5
    """
    import keras

    from keras_deepvit.benchmark import worker
    from keras_deepvit.benchmark.keras_side import build_model
    from keras_deepvit.export import export

    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            "The exported contestants are written and timed on the tensorflow backend; "
            f"run with KERAS_BACKEND=tensorflow (got {keras.backend.backend()!r})."
        )
    formats = list(spec.get("formats") or EXPORTED_FORMATS)
    unknown = [f for f in formats if f not in EXPORTED_FORMATS]
    if unknown:
        raise ValueError(f"formats must be some of {', '.join(EXPORTED_FORMATS)}; got {unknown}.")
    keras.utils.set_random_seed(spec.get("seed", 0))
    images, _ = worker._inputs(spec)
    model = build_model(spec["model"], spec["image_size"], **(spec.get("model_kwargs") or {}))
    expected = np.asarray(model.predict_on_batch(images), "float64")
    pixels = to_pixels(model, images)
    result = {"spec": spec, "backend": "tensorflow", "contestants": {}, "errors": {},
              "rel_l2_vs_keras": {}}
    with tempfile.TemporaryDirectory(prefix="keras_deepvit_exported_", dir=directory) as tmp:
        contestants = []
        for fmt in formats:
            label = f"exported-{fmt}"
            try:
                path = os.path.join(tmp, {"tf_saved_model": "saved_model", "onnx": "model.onnx"}[fmt])
                export(model, path, format=fmt)
                contestant = ExportedContestant(fmt, path, pixels)
                actual = np.asarray(contestant.logits(), "float64")
                result["rel_l2_vs_keras"][label] = float(
                    np.linalg.norm(actual - expected) / np.linalg.norm(expected)
                )
                result["contestants"][label] = {
                    "warmup_s": [worker._timed(contestant.step) for _ in range(max(1, spec.get("warmup", 2)))]
                }
                contestants.append(contestant)
            except Exception as error:  # noqa: BLE001 - report and go on with the others
                result["errors"][label] = f"{type(error).__name__}: {error}"
        times = {c.label: [] for c in contestants}
        for r in range(max(1, spec.get("repeats", 5))):
            for c in contestants[r % len(contestants):] + contestants[: r % len(contestants)]:
                times[c.label].append(worker._timed(c.step))
        for c in contestants:
            median = float(np.median(times[c.label]))
            result["contestants"][c.label].update(
                {"times_s": times[c.label], "median_s": median, "images_per_s": spec["batch"] / median}
            )
    return result


def attach(results, exported):
    """Adds the exported contestants of `exported` to each inference result of `results`."""
    for result in results:
        if result["spec"]["mode"] != "infer":
            continue
        result["contestants"].update(exported["contestants"])
        result["errors"].update(exported["errors"])
        result.setdefault("rel_l2_vs_keras", {}).update(exported["rel_l2_vs_keras"])
    return results


def describe(exported):
    """One log line: images/s and error of each exported contestant."""
    parts = []
    for label, entry in exported["contestants"].items():
        speed = entry.get("images_per_s")
        error = exported["rel_l2_vs_keras"].get(label)
        parts.append(f"{label[len('exported-'):]} {'-' if speed is None else f'{speed:.1f}'} img/s"
                     f" (rel L2 vs Keras {error:.1e})")
    parts += [f"{label}: {error.splitlines()[0][:200]}" for label, error in exported["errors"].items()]
    return "exported (TensorFlow backend): " + ("; ".join(parts) or "-")


def main(argv=None):
    from keras_deepvit.benchmark.worker import run_json_job

    return run_json_job(run_exported_job, argv)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    raise SystemExit(main())
