"""Activation memory of a training step, measured without running it at full size.

Peak RSS (the benchmark's memory probes) is what a user sees, but it needs the
memory it measures. These two measure what a training step keeps for its
backward pass directly, cheaply:

- JAX: `jax_training_temp_bytes` compiles the step's gradient and reads XLA's
  buffer assignment (`compiled.memory_analysis().temp_size_in_bytes`: the peak
  of every intermediate buffer, activations included; arguments and outputs
  not counted). Compiling allocates none of it, so a 448x448 Refiner-ViT-S is
  measured in about 1 GB of RSS.
- PyTorch backend: `torch_saved_bytes` runs one training forward pass under
  `torch.autograd.graph.saved_tensors_hooks` and adds up the tensors autograd
  saves for the backward pass (what rematerialisation removes; a tensor saved
  twice counts twice).
"""


def jax_training_temp_bytes(model, batch):
    """XLA temporary bytes of `model`'s loss gradient (training mode) at `batch` images.

    Example:
    >>> import keras
    >>> if keras.backend.backend() == "jax":
    ...     model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    ...     assert jax_training_temp_bytes(model, 2) >= 0
    """
    import jax
    import jax.numpy as jnp

    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]

    def loss(trainable, non_trainable, images):
        outputs, updated = model.stateless_call(trainable, non_trainable, images, training=True)
        outputs = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
        return jnp.sum(outputs.astype("float32")), updated

    step = jax.jit(jax.value_and_grad(loss, has_aux=True))
    images = jax.ShapeDtypeStruct((batch,) + tuple(model.input_shape[1:]), jnp.float32)
    compiled = step.lower(trainable, non_trainable, images).compile()
    return int(compiled.memory_analysis().temp_size_in_bytes)


def torch_saved_bytes(model, images):
    """Bytes autograd saves for the backward pass of `model(images, training=True)` (PyTorch backend).

    Example:
    >>> import keras, numpy as np
    >>> if keras.backend.backend() == "torch":
    ...     model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    ...     assert torch_saved_bytes(model, np.ones((2, 4), "float32")) > 0
    """
    import torch

    saved = []

    def pack(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(torch.as_tensor(images), training=True)
    return int(sum(saved))
