"""The results table: one row per backend and mode of a model and batch size."""

from keras_deepvit.benchmark.flops import TRAIN_FLOPS_FACTOR

COLUMNS = (
    "model", "batch", "image", "backend", "mode", "Keras img/s", "Keras variants", "torch eager",
    "torch SDPA", "torch.compile", "Keras / best torch", "Keras % GEMM peak",
    "best torch % GEMM peak", "Keras peak MB", "torch peak MB",
)


def _fmt(value, digits=1):
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:.{digits}f}"


def _speed(result, label):
    entry = result["contestants"].get(label)
    return None if entry is None or "images_per_s" not in entry else entry["images_per_s"]


def _memory(result, labels):
    values = [result.get("memory", {}).get(label) for label in labels]
    values = [v for v in values if v is not None]
    return max(values) if values else None


def summarize(result, gemm_peak_gflops):
    """A dict with one value per `COLUMNS` entry (numbers, None when not measured)."""
    spec = result["spec"]
    keras_speeds = {
        label[len("keras-"):]: _speed(result, label)
        for label in result["contestants"] if label.startswith("keras-")
    }
    keras_speeds = {k: v for k, v in keras_speeds.items() if v is not None}
    best_keras = max(keras_speeds, key=keras_speeds.get) if keras_speeds else None
    torch_speeds = {
        v: _speed(result, f"torch-{v}") for v in ("eager", "sdpa", "compile")
    }
    measured_torch = [s for s in torch_speeds.values() if s is not None]
    best_torch = max(measured_torch) if measured_torch else None
    keras_speed = keras_speeds.get(best_keras)
    flops = result.get("forward_flops_per_image")
    if flops is not None and spec["mode"] == "train":
        flops *= TRAIN_FLOPS_FACTOR

    def fraction(speed):
        if flops is None or speed is None or not gemm_peak_gflops:
            return None
        return 100.0 * flops * speed / (gemm_peak_gflops * 1e9)

    best_torch_label = None
    if best_torch is not None:
        best_torch_label = next(f"torch-{v}" for v, s in torch_speeds.items() if s == best_torch)
    return {
        "model": spec["model"], "batch": spec["batch"], "image": spec.get("image_size"),
        "backend": result["backend"],
        "mode": spec["mode"], "Keras img/s": keras_speed,
        "Keras variants": " / ".join(f"{k} {v:.1f}" for k, v in keras_speeds.items()) or "-",
        "torch eager": torch_speeds["eager"], "torch SDPA": torch_speeds["sdpa"],
        "torch.compile": torch_speeds["compile"],
        "Keras / best torch": (keras_speed / best_torch) if keras_speed and best_torch else None,
        "Keras % GEMM peak": fraction(keras_speed),
        "best torch % GEMM peak": fraction(best_torch),
        "Keras peak MB": _memory(result, [f"keras-{best_keras}"]) if best_keras else None,
        "torch peak MB": _memory(result, [best_torch_label]) if best_torch_label else None,
        "best_keras_variant": best_keras, "best_torch_variant": best_torch_label,
    }


def format_table(rows):
    """Markdown table of `summarize` rows.

    Example:
    >>> row = dict.fromkeys(COLUMNS)
    >>> row.update(model="pit_s", batch=8, image=224, backend="jax", mode="infer", **{"Keras img/s": 20.0})
    >>> print(format_table([row]).splitlines()[2][:46])
    | pit_s | 8 | 224 | jax | infer | 20.0 | - | -
    """
    digits = {"Keras / best torch": 2}
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" if c in ("model", "backend", "mode", "Keras variants") else "---:"
                       for c in COLUMNS) + "|",
    ]
    for row in rows:
        cells = []
        for column in COLUMNS:
            value = row.get(column)
            if column == "Keras / best torch" and value is not None:
                cells.append(f"{value:.2f}x")
            elif column in ("batch", "image"):
                cells.append(str(value))
            else:
                cells.append(_fmt(value, digits.get(column, 1)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
