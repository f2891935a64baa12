"""Data-parallel training on each backend's own engine.

One call sets up data parallelism for the current Keras backend; the returned
object is a context manager to build, compile *and* fit the model in:

- **JAX**: `keras.distribution.DataParallel` over every device of every process.
  One jitted SPMD program runs on the sharded global batch, so gradients *and
  BatchNorm statistics* are over the global batch (like PyTorch's SyncBatchNorm).
  Several processes (hosts) join through `keras.distribution.initialize`
  (`jax.distributed`; on CPU jax 0.10 uses its gloo collectives by default,
  nothing to configure).
- **TensorFlow**: `tf.distribute.MirroredStrategy` over the local GPUs (or the
  logical CPUs). Each replica runs the model on its slice of the batch, so
  Keras' BatchNormalization normalises with *per-replica* statistics, and each
  replica updates its own copy of the moving statistics: the model reads (and
  saves) replica 0's, computed from replica 0's slices only. This is what the
  official DeepViT / Refiner-ViT recipes did (PyTorch DDP with `sync_bn: false`,
  `dist_bn: ''`). Multi-worker TF is refused: Keras 3's `fit` fails under
  `MultiWorkerMirroredStrategy` (keras-team/keras#20585).
- **PyTorch**: Keras 3.15 has no multi-device training on this backend
  (`keras.distribution` has no PyTorch implementation, and Keras' trainer
  cannot run one process per device under `torch.distributed` / DDP); training
  uses one device.

How the data is split (the rule for the training command's `--batch-size`,
which is the *global* batch): build the same `tf.data` pipeline in every
process, batched at the global batch (`drop_remainder=True`, and the same
shuffle seed everywhere so that the processes slice the same global batches).
On JAX, Keras re-batches every global batch to `global / processes` rows and
each process keeps its own slice (`DataParallel(auto_shard_dataset=True)`),
then the slices are assembled into one global array sharded over the devices.
On TensorFlow, `MirroredStrategy` splits each global batch over the replicas.
With several JAX processes Keras 3.15 refuses NumPy inputs (its auto-sharding
needs a `tf.data.Dataset`; with `setup.engine.auto_shard_dataset = False` each
process feeds its own rows instead), warns once that the sharded pipeline "ran
out of data" at the end of the first epoch (its length is unknown; harmless),
and cannot `predict` (the outputs span other processes' devices; `evaluate`
works). `save` and `save_weights` work in every process (the variables are
replicated): let only `setup.is_chief` write to shared storage.
"""

import contextlib
import dataclasses
import logging
import numbers
import os

import keras

logger = logging.getLogger(__name__)

#: `kind` values: "auto" (data-parallel when there is more than one device or
#: process), "none" (one device), "data_parallel" (every local device, and every
#: process when a cluster is given), "multi_host" (a JAX cluster, found by
#: `jax.distributed` when no coordinator is given: SLURM, Open MPI, Cloud TPU).
KINDS = ("auto", "none", "data_parallel", "multi_host")

#: Keras' own environment variables for `keras.distribution.initialize`.
ENV_COORDINATOR = "KERAS_DISTRIBUTION_JOB_ADDRESSES"
ENV_NUM_PROCESSES = "KERAS_DISTRIBUTION_NUM_PROCESSES"
ENV_PROCESS_ID = "KERAS_DISTRIBUTION_PROCESS_ID"

MULTI_WORKER_TF_ISSUE = "https://github.com/keras-team/keras/issues/20585"


@dataclasses.dataclass(frozen=True)
class DistributionSetup:
    """What `distribution_scope` set up; a context manager for build, compile and fit.

    Attributes:
        backend: the Keras backend name.
        kind: "none" (one device), "data_parallel" (JAX `DataParallel`) or
            "mirrored" (TensorFlow `MirroredStrategy`).
        devices: tuple of device names the batch is split over (all processes).
        num_processes: int, processes (hosts) taking part.
        process_id: int, this process's index.
        batch_norm_statistics: "global" (over the global batch) or "per_replica".
        engine: the `keras.distribution.DataParallel` or `tf.distribute.Strategy`,
            or None.
    """

    backend: str
    kind: str
    devices: tuple
    num_processes: int = 1
    process_id: int = 0
    batch_norm_statistics: str = "global"
    engine: object = None
    _scopes: list = dataclasses.field(
        default_factory=list, init=False, repr=False, compare=False
    )

    @property
    def num_replicas(self):
        """Number of model replicas (devices) one global batch is split over."""
        return len(self.devices) if self.kind != "none" else 1

    @property
    def is_chief(self):
        """Whether this process writes logs and checkpoints (process 0)."""
        return self.process_id == 0

    def scope(self):
        """A context manager making this setup current (the object itself works too)."""
        return self.engine.scope() if self.engine is not None else contextlib.nullcontext()

    def __enter__(self):
        scope = self.scope()
        scope.__enter__()
        self._scopes.append(scope)
        return self

    def __exit__(self, *exc_info):
        return self._scopes.pop().__exit__(*exc_info)

    def per_process_batch_size(self, global_batch_size):
        """Rows of each global batch one process loads: `global / processes`."""
        self._check_batch_size(global_batch_size)
        return global_batch_size // self.num_processes

    def per_replica_batch_size(self, global_batch_size):
        """Rows of each global batch one device computes: `global / devices`."""
        self._check_batch_size(global_batch_size)
        return global_batch_size // self.num_replicas

    def _check_batch_size(self, global_batch_size):
        if (
            not isinstance(global_batch_size, numbers.Integral)
            or isinstance(global_batch_size, bool)
            or global_batch_size < 1
            or global_batch_size % self.num_replicas
        ):
            raise ValueError(
                f"The global batch size {global_batch_size!r} must be a positive multiple "
                f"of the {self.num_replicas} devices it is split over ({self.kind} on "
                f"{self.backend}); pick e.g. {self.num_replicas * 32}."
            )

    def describe(self, global_batch_size=None):
        """One log line: backend, devices, processes, global batch and BatchNorm statistics."""
        devices = ", ".join(self.devices)
        line = f"distribution: {self.backend} {self.kind}"
        line += f", {self.num_replicas} device(s) [{devices}]"
        line += f", {self.num_processes} process(es) (this is process {self.process_id})"
        if global_batch_size is not None:
            per_process = self.per_process_batch_size(global_batch_size)
            per_replica = self.per_replica_batch_size(global_batch_size)
            line += (
                f", global batch {global_batch_size} = {self.num_processes} x {per_process} "
                f"per process = {self.num_replicas} x {per_replica} per device"
            )
        if self.batch_norm_statistics == "global":
            line += "; BatchNorm statistics over the global batch"
        else:
            line += "; BatchNorm statistics per replica (moving statistics of replica 0)"
        return line


def distribution_scope(
    kind="auto", coordinator=None, num_processes=None, process_id=None, devices=None
):
    """Set up data-parallel training for the current backend.

    Call it first (on JAX, before anything runs a computation: the cluster must
    be joined before JAX starts its devices), then build, compile and fit the
    model inside the returned object. See the module docstring for what each
    backend does and how the batch is split.

    Args:
        kind: one of `KINDS`. "auto" distributes when there is more than one
            device or process and falls back to one device on PyTorch (with a
            warning); "data_parallel" and "multi_host" raise where the backend
            cannot do it.
        coordinator: "HOST:PORT" of process 0, for several processes (JAX only);
            default `$KERAS_DISTRIBUTION_JOB_ADDRESSES`.
        num_processes: int, processes in the cluster; default
            `$KERAS_DISTRIBUTION_NUM_PROCESSES`.
        process_id: int in `[0, num_processes)`; default
            `$KERAS_DISTRIBUTION_PROCESS_ID`.
        devices: optional list of device names ("gpu:0", "cpu:1", ...) to use
            instead of all of them.

    Returns:
        A `DistributionSetup`, a context manager.

    Example:
    >>> import keras
    >>> setup = distribution_scope("none")
    >>> with setup:
    ...     model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> setup.kind, setup.num_replicas
    ('none', 1)
    """
    if kind not in KINDS:
        raise ValueError(f"Unknown distribution kind {kind!r}; use one of {KINDS}.")
    coordinator, num_processes, process_id = _cluster_arguments(
        coordinator, num_processes, process_id
    )
    multi_process = kind == "multi_host" or coordinator is not None or (num_processes or 1) > 1
    if kind == "none":
        if multi_process:
            raise ValueError(
                f"kind='none' trains on one device but a cluster was given (coordinator="
                f"{coordinator!r}, num_processes={num_processes!r}); use kind='auto' or "
                f"'multi_host', or drop the cluster arguments and the {ENV_COORDINATOR} / "
                f"{ENV_NUM_PROCESSES} variables."
            )
        return _single_device()
    backend = keras.backend.backend()
    if backend == "jax":
        return _jax_setup(kind, multi_process, coordinator, num_processes, process_id, devices)
    if backend == "tensorflow":
        if multi_process:
            raise ValueError(
                "Multi-host training is not supported on the TensorFlow backend: Keras 3's "
                f"fit fails under MultiWorkerMirroredStrategy ({MULTI_WORKER_TF_ISSUE}). Use "
                "KERAS_BACKEND=jax for several hosts, or drop coordinator/num_processes to "
                "train on this host's devices with MirroredStrategy."
            )
        return _tensorflow_setup(kind, devices)
    return _unsupported_backend_setup(backend, kind, multi_process)


def describe_distribution(setup=None, global_batch_size=None):
    """One log line on how training is distributed: backend, devices, processes, global batch.

    Args:
        setup: a `DistributionSetup`; default: whatever is active now (a JAX
            `keras.distribution` distribution, a TensorFlow strategy, or none).
        global_batch_size: optional int, the batch of the input pipeline.

    Returns:
        str.

    Example:
    >>> describe_distribution(distribution_scope("none")).startswith("distribution: ")
    True
    """
    if setup is None:
        setup = _active_setup()
    return setup.describe(global_batch_size)


def _cluster_arguments(coordinator, num_processes, process_id):
    """The cluster arguments, from Keras' environment variables where not given, validated."""
    if coordinator is None:
        coordinator = os.environ.get(ENV_COORDINATOR) or None
    if num_processes is None and os.environ.get(ENV_NUM_PROCESSES):
        num_processes = _environment_int(ENV_NUM_PROCESSES)
    if process_id is None and os.environ.get(ENV_PROCESS_ID):
        process_id = _environment_int(ENV_PROCESS_ID)
    if coordinator is not None:
        # Keras accepts every job's address, comma separated; process 0's comes first.
        host, _, port = coordinator.split(",")[0].rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(
                f"coordinator must be 'HOST:PORT' of process 0 (e.g. '10.0.0.1:1234'), "
                f"got {coordinator!r}."
            )
    if num_processes is not None and (not isinstance(num_processes, int) or num_processes < 1):
        raise ValueError(f"num_processes must be a positive int, got {num_processes!r}.")
    if process_id is not None:
        if not isinstance(process_id, int) or process_id < 0:
            raise ValueError(f"process_id must be a non-negative int, got {process_id!r}.")
        if num_processes is not None and process_id >= num_processes:
            raise ValueError(
                f"process_id {process_id} is out of range for num_processes={num_processes}: "
                f"use 0 to {num_processes - 1}."
            )
    if coordinator is not None and (num_processes is None or process_id is None):
        raise ValueError(
            f"coordinator={coordinator!r} needs num_processes and process_id too (got "
            f"{num_processes!r} and {process_id!r}); pass them or set {ENV_NUM_PROCESSES} "
            f"and {ENV_PROCESS_ID}."
        )
    return coordinator, num_processes, process_id


def _environment_int(name):
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"${name} must be an int, got {value!r}.") from None


def _single_device():
    return DistributionSetup(keras.backend.backend(), "none", (_default_device(),))


def _default_device():
    """The device Keras places work on without a distribution."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.local_devices()[0]
        return f"{device.platform}:{device.id}"
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        return _tf_short_name((gpus or tf.config.list_logical_devices("CPU"))[0].name)
    if backend == "torch":
        from keras.src.backend.torch.core import get_device

        device = str(get_device())
        return device if ":" in device or device == "cpu" else f"{device}:0"
    return "cpu"


def _jax_setup(kind, multi_process, coordinator, num_processes, process_id, devices):
    import jax

    if multi_process and not jax.distributed.is_initialized():
        try:
            keras.distribution.initialize(coordinator, num_processes, process_id)
        except RuntimeError as error:
            raise RuntimeError(
                f"Joining the JAX cluster (coordinator={coordinator!r}) failed: {error}. "
                "Call distribution_scope before anything runs a JAX computation (building "
                "a model does), in every process with the same coordinator and "
                "num_processes and its own process_id."
            ) from error
    names = list(devices) if devices else keras.distribution.list_devices()
    if kind == "auto" and len(names) < 2:
        return _single_device()
    distribution = keras.distribution.DataParallel(devices=names)
    return DistributionSetup(
        "jax", "data_parallel", tuple(names),
        num_processes=jax.process_count(), process_id=jax.process_index(),
        batch_norm_statistics="global", engine=distribution,
    )


def _tensorflow_setup(kind, devices):
    import tensorflow as tf

    if devices:
        names = [_tf_device_name(name) for name in devices]
    else:
        logical = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        names = [device.name for device in logical]
    if kind == "auto" and len(names) < 2:
        return _single_device()
    strategy = tf.distribute.MirroredStrategy(devices=names)
    return DistributionSetup(
        "tensorflow", "mirrored", tuple(_tf_short_name(name) for name in names),
        batch_norm_statistics="per_replica", engine=strategy,
    )


def _tf_device_name(name):
    """'gpu:1' (Keras' spelling) -> '/device:GPU:1' (TensorFlow's)."""
    if name.startswith("/"):
        return name
    device_type, _, index = name.partition(":")
    return f"/device:{device_type.upper()}:{index or 0}"


def _tf_short_name(name):
    """'/job:localhost/replica:0/task:0/device:GPU:1' (or '/gpu:1') -> 'gpu:1'."""
    device_type, _, index = name.rsplit("/", 1)[-1].removeprefix("device:").partition(":")
    return f"{device_type.lower()}:{index or 0}"


def _unsupported_backend_setup(backend, kind, multi_process):
    reason = (
        f"Keras {keras.__version__} has no multi-device training on the {backend} backend "
        "(keras.distribution has no implementation for it, and Keras' trainer cannot run "
        "one process per device under torch.distributed)"
    )
    if kind != "auto" or multi_process:
        raise ValueError(
            f"{reason}; got kind={kind!r}. Use KERAS_BACKEND=jax (or tensorflow for one "
            "host) to train on several devices, or kind='none' for one device."
        )
    if _accelerator_count(backend) > 1:
        logger.warning("%s: training on one device (%s).", reason, _default_device())
    return _single_device()


def _accelerator_count(backend):
    if backend == "torch":
        import torch

        return torch.cuda.device_count()
    return 1


def _active_setup():
    """A `DistributionSetup` describing the distribution active now (no scope is entered)."""
    backend = keras.backend.backend()
    if backend == "jax":
        distribution = keras.distribution.distribution()
        if distribution is not None:
            import jax

            names = tuple(str(name) for name in distribution.device_mesh.devices.flatten())
            return DistributionSetup(
                "jax", "data_parallel", names, num_processes=jax.process_count(),
                process_id=jax.process_index(), engine=distribution,
            )
    if backend == "tensorflow":
        import tensorflow as tf

        if tf.distribute.has_strategy():
            strategy = tf.distribute.get_strategy()
            names = tuple(_tf_short_name(name) for name in strategy.extended.worker_devices)
            return DistributionSetup(
                "tensorflow", "mirrored", names, batch_norm_statistics="per_replica",
                engine=strategy,
            )
    return _single_device()
