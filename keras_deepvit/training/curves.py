"""The training curves of a run as a PNG, from its `history.csv` (matplotlib)."""

import csv
import os


def read_history(path):
    """The rows of a `keras.callbacks.CSVLogger` file as `{column: [values by epoch]}`.

    A run resumed after being killed may have logged an epoch twice (written,
    then killed before its backup); the last row of each epoch wins.

    Example:
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "history.csv")
    >>> _ = open(path, "w").write("epoch,loss\\n0,2.0\\n1,1.5\\n1,1.4\\n")
    >>> read_history(path)
    {'epoch': [0, 1], 'loss': [2.0, 1.4]}
    """
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    by_epoch = {int(row["epoch"]): row for row in rows}
    epochs = sorted(by_epoch)
    columns = [c for c in (rows[0].keys() if rows else []) if c != "epoch"]
    history = {"epoch": epochs}
    for column in columns:
        history[column] = [float(by_epoch[e][column]) if by_epoch[e][column] else float("nan") for e in epochs]
    return history


def plot_history(history, path, title=""):
    """Writes loss and accuracy curves (training and validation) to `path` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed; set before pyplot is imported
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [e + 1 for e in history["epoch"]]
    accuracy = next((k for k in ("accuracy", "logits_accuracy") if k in history), "accuracy")
    panels = [("loss", "loss"), (accuracy, "accuracy")]
    figure, axes = plt.subplots(1, len(panels), figsize=(10, 4))
    for axis, (metric, label) in zip(axes, panels):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = history.get(prefix + metric)
            if values:
                axis.plot(epochs, values, style, marker="o", label=("validation " if prefix else "training ") + label)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
