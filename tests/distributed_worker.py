"""Scenarios of tests/test_distribution.py, each run in a fresh process.

The backend, `XLA_FLAGS` (JAX's CPU device count) and TensorFlow's logical
devices must be fixed before Keras starts, so every scenario runs here, in its
own interpreter, and writes its numbers to an `.npz` file for the test to check:

    python tests/distributed_worker.py jax_data_parallel OUT.npz
    python tests/distributed_worker.py jax_multi_process OUT.npz PROCESS_ID NUM_PROCESSES PORT
    python tests/distributed_worker.py tensorflow_mirrored OUT.npz

The parent sets `KERAS_BACKEND` (and `XLA_FLAGS` for the JAX device count).
"""

import os
import sys

import numpy as np

IMAGE = 16
CLASSES = 4
GLOBAL_BATCH = 8
#: The qkv kernels are scaled up so that the attention maps are peaked and
#: depend on the images: at initialisation they are near uniform, their per-head
#: mean is 1/tokens whatever the input, and the re-attention BatchNorm's variance
#: sits far below its eps, so batch statistics over any split of the batch agree
#: to ~1e-5 and the test could not tell global from per-replica statistics.
QKV_SCALE = 8.0


def images_and_labels(steps=1):
    """`steps` global batches; in each, the first half is dark and the second is full range.

    The halves' BatchNorm statistics differ, so normalising each device's half
    on its own gives a visibly different loss from normalising the global batch.
    """
    rng = np.random.default_rng(0)
    batches = [
        np.concatenate(
            [
                rng.uniform(0, 40, (GLOBAL_BATCH // 2, IMAGE, IMAGE, 3)),
                rng.uniform(0, 255, (GLOBAL_BATCH // 2, IMAGE, IMAGE, 3)),
            ]
        )
        for _ in range(steps)
    ]
    images = np.concatenate(batches).astype("float32")
    labels = rng.integers(0, CLASSES, (steps * GLOBAL_BATCH,)).astype("int32")
    return images, labels


def deepvit():
    """A tiny DeepViT with BatchNorm in its CNN stem and in every re-attention (`var_norm`)."""
    import keras

    import keras_deepvit

    keras.utils.set_random_seed(0)
    model = keras_deepvit.DeepViT(
        depth=1, embed_dim=16, num_heads=2, re_attention=True, stem="cnn", patch_size=8,
        input_shape=(IMAGE, IMAGE, 3), classes=CLASSES, classifier_activation=None,
    )
    for variable in model.trainable_weights:
        if variable.path.endswith("qkv/kernel"):
            variable.assign(variable * QKV_SCALE)
    return compiled(model)


def pit():
    """A tiny PiT: LayerNorm only, no BatchNorm."""
    import keras

    import keras_deepvit

    keras.utils.set_random_seed(0)
    model = keras_deepvit.PiT(
        base_dims=(8, 8), depth=(1, 1), heads=(2, 4), input_shape=(IMAGE, IMAGE, 3),
        classes=CLASSES, classifier_activation=None,
    )
    return compiled(model)


def compiled(model):
    import keras

    # Plain SGD: the update is linear in the gradient, so the weights after a
    # step compare as tightly as the gradients do.
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def fit_losses(model, images, labels, batch_size):
    """Loss per step (each step's own loss, not Keras' running mean)."""
    import keras

    class StepLosses(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.losses = []
            self.seen = 0.0

        def on_train_batch_end(self, batch, logs=None):
            # Keras logs the running mean over the epoch's steps; undo it.
            running = float(logs["loss"])
            self.losses.append(running * (batch + 1) - self.seen)
            self.seen += self.losses[-1]

    record = StepLosses()
    model.fit(
        images, labels, batch_size=batch_size, epochs=1, shuffle=False, verbose=0,
        callbacks=[record],
    )
    return np.array(record.losses)


def training_forward(model, images, labels):
    """The loss of a training-mode forward pass (the loss a first `fit` step reports) and
    the BatchNorm moving statistics it produces, leaving `model`'s variables unchanged.

    Cheaper than `fit` for the per-half references: no backward pass to compile.
    """
    import keras

    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    variables = model.non_trainable_variables
    if keras.backend.backend() == "jax":
        import jax

        def forward(trainable, non_trainable, x):
            return model.stateless_call(trainable, non_trainable, x, training=True)

        trainable = [v.value for v in model.trainable_variables]
        outputs, updated = jax.jit(forward)(trainable, [v.value for v in variables], images)
        statistics = {v.path: np.asarray(value) for v, value in zip(variables, updated)}
        return float(loss_fn(labels, outputs)), moving_statistics(statistics)
    initial = [v.numpy() for v in variables]
    loss = float(loss_fn(labels, model(images, training=True)))
    statistics = moving_statistics(model)
    for variable, value in zip(variables, initial):
        variable.assign(value)
    return loss, statistics


def moving_statistics(source):
    """The BatchNorm moving means and variances of a model (or a `{path: value}` dict),
    in path order, as numpy."""
    if not isinstance(source, dict):
        weights = source.non_trainable_weights
        source = dict(zip((v.path for v in weights), local_values(weights)))
    return [np.asarray(source[path]) for path in sorted(source) if "/moving_" in path]


def local_values(variables):
    """Variables as numpy, from this process's copy (every variable is replicated)."""
    import keras

    values = []
    for variable in variables:
        value = variable.value
        if hasattr(value, "addressable_data"):  # a JAX array over several processes
            value = value.addressable_data(0)
        values.append(np.asarray(keras.ops.convert_to_numpy(value)))
    return values


def numbered(prefix, values):
    """`{"prefix__0": values[0], ...}`: one `.npz` entry per array."""
    return {f"{prefix}__{index}": value for index, value in enumerate(values)}


def jax_data_parallel(out):
    """One step of the DeepViT on 1 device, on each half of the batch, and on 2 devices."""
    from keras_deepvit.training.distribute import describe_distribution, distribution_scope

    images, labels = images_and_labels()
    half = GLOBAL_BATCH // 2
    with distribution_scope("none"):
        single = deepvit()
        loss_halves = [
            training_forward(single, images[start:start + half], labels[start:start + half])[0]
            for start in (0, half)
        ]
        loss_single = fit_losses(single, images, labels, GLOBAL_BATCH)
    setup = distribution_scope("auto")
    with setup:
        parallel = deepvit()
        loss_parallel = fit_losses(parallel, images, labels, GLOBAL_BATCH)
        description = describe_distribution(global_batch_size=GLOBAL_BATCH)
    np.savez(
        out, kind=setup.kind, num_replicas=setup.num_replicas, description=description,
        replicated_on=len(parallel.weights[0].value.sharding.device_set),
        loss_single=loss_single, loss_parallel=loss_parallel,
        loss_halves=np.array(loss_halves),
        paths=np.array([v.path for v in single.weights]),
        **numbered("weights_single", local_values(single.weights)),
        **numbered("weights_parallel", local_values(parallel.weights)),
    )


def jax_multi_process(out, process_id, num_processes, port):
    """Two fit steps of the DeepViT in a JAX cluster on 127.0.0.1; process 0 also runs
    them on its own device, without distribution, on the same global batches."""
    import tensorflow as tf

    from keras_deepvit.training.distribute import distribution_scope

    # Joins the cluster before anything runs a JAX computation.
    setup = distribution_scope(
        "auto", coordinator=f"127.0.0.1:{port}", num_processes=num_processes, process_id=process_id
    )
    images, labels = images_and_labels(steps=2)
    results = {}
    if process_id == 0:
        with distribution_scope("none"):
            reference = deepvit()
            results["loss_reference"] = fit_losses(reference, images, labels, GLOBAL_BATCH)
            results.update(numbered("weights_reference", local_values(reference.weights)))
    # The training command's pipeline: every process builds the same one, batched
    # at the global batch; Keras keeps this process's slice of each batch.
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    dataset = dataset.batch(GLOBAL_BATCH, drop_remainder=True)
    with setup:
        model = deepvit()
        results["loss"] = fit_losses(model, dataset, None, None)
        description = setup.describe(GLOBAL_BATCH)
    np.savez(
        out, kind=setup.kind, num_processes=setup.num_processes, process_id=setup.process_id,
        num_replicas=setup.num_replicas, description=description,
        **numbered("weights", local_values(model.weights)), **results,
    )


def tensorflow_mirrored(out):
    """PiT: two steps on 1 device and mirrored on 2; DeepViT: one step on 1 device, on
    each half, mirrored on 2, and mirrored with synchronized BatchNorm."""
    import tensorflow as tf

    # Two logical CPUs; must come before TensorFlow starts its runtime.
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras

    from keras_deepvit.training.distribute import distribution_scope

    setup = distribution_scope("auto")
    results = {
        "kind": setup.kind, "num_replicas": setup.num_replicas,
        "description": setup.describe(GLOBAL_BATCH),
    }

    images, labels = images_and_labels(steps=2)
    single = pit()
    results["pit_loss_single"] = fit_losses(single, images, labels, GLOBAL_BATCH)
    with setup:
        mirrored = pit()
        results["pit_loss_mirrored"] = fit_losses(mirrored, images, labels, GLOBAL_BATCH)
    results.update(numbered("pit_weights_single", local_values(single.weights)))
    results.update(numbered("pit_weights_mirrored", local_values(mirrored.weights)))

    images, labels = images[:GLOBAL_BATCH], labels[:GLOBAL_BATCH]
    half = GLOBAL_BATCH // 2
    single = deepvit()
    for index, start in enumerate((0, half)):
        rows = slice(start, start + half)
        loss, statistics = training_forward(single, images[rows], labels[rows])
        results[f"deepvit_loss_half{index}"] = loss
        results.update(numbered(f"deepvit_stats_half{index}", statistics))
    results["deepvit_loss_single"] = fit_losses(single, images, labels, GLOBAL_BATCH)
    results.update(numbered("deepvit_stats_single", moving_statistics(single)))
    with setup:
        mirrored = deepvit()
        results["deepvit_loss_mirrored"] = fit_losses(mirrored, images, labels, GLOBAL_BATCH)
    # What the model reads (and saves), and each replica's own copy.
    results.update(numbered("deepvit_stats_mirrored", moving_statistics(mirrored)))
    for replica in range(2):
        copies = moving_statistics(
            {v.path: v.value.values[replica].numpy() for v in mirrored.non_trainable_weights}
        )
        results.update(numbered(f"deepvit_stats_replica{replica}", copies))
    # Keras' synchronized BatchNorm (TensorFlow only) all-reduces the batch moments.
    # The package's BatchNorm factory takes no `synchronized`: set it on the built
    # layers (it then shows in their config, which JAX and PyTorch refuse to load).
    with setup:
        synced = deepvit()
        for layer in synced._flatten_layers():
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.synchronized = True
        results["deepvit_loss_synchronized"] = fit_losses(synced, images, labels, GLOBAL_BATCH)
    results.update(numbered("deepvit_stats_synchronized", moving_statistics(synced)))
    np.savez(out, **results)


SCENARIOS = {
    "jax_data_parallel": jax_data_parallel,
    "jax_multi_process": jax_multi_process,
    "tensorflow_mirrored": tensorflow_mirrored,
}

if __name__ == "__main__":
    name, out, *args = sys.argv[1:]
    expected = "tensorflow" if name.startswith("tensorflow") else "jax"
    if os.environ.get("KERAS_BACKEND") != expected:
        found = os.environ.get("KERAS_BACKEND")
        raise SystemExit(f"{name} needs KERAS_BACKEND={expected}, got {found!r}")
    SCENARIOS[name](out, *(int(arg) for arg in args))
