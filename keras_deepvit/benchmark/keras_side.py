"""The Keras contestants: one registered model per compilation variant.

Variants (all run Keras' own `predict_on_batch` / `train_on_batch`, i.e. the
`model.predict` and `model.fit` step functions):

- TensorFlow: "xla" (`jit_compile=True`) and "graph" (`jit_compile=False`: a
  `tf.function` graph, oneDNN kernels on CPU);
- JAX: "xla" (JAX always compiles the step with XLA);
- PyTorch: "eager" (`jit_compile=False`) and "compile" (`jit_compile=True`:
  Keras wraps the step in `torch.compile`).

Models are built with `include_preprocessing=False` (the reference takes
normalised images too), `classifier_activation=None` (logits, as the reference)
and `drop_path_rate=0` (the reference has no stochastic depth).
"""

import numpy as np

#: Compilation variants per backend, fastest-compiling first.
KERAS_VARIANTS = {
    "tensorflow": ("xla", "graph"),
    "jax": ("xla",),
    "torch": ("eager", "compile"),
}

#: Optimiser settings shared with the PyTorch side.
LEARNING_RATE = 1e-4
WEIGHT_DECAY = 0.05


def jit_compile(variant):
    return variant in ("xla", "compile")


def build_model(name, image_size, state=None, classes=1000, **model_kwargs):
    """A registered model with logits output; weights from a PyTorch `state` if given."""
    from keras_deepvit.zoo.registry import create_model

    model = create_model(
        name, input_shape=(image_size, image_size, 3), classes=classes,
        classifier_activation=None, include_preprocessing=False, drop_path_rate=0.0,
        **model_kwargs,
    )
    if state is not None:
        from keras_deepvit.weights import load_torch_state_dict

        load_torch_state_dict(model, state)
    return model


class KerasContestant:
    """One Keras model compiled one way; `step()` runs one synchronous batch.

    Args:
        name: registered model name.
        variant: a name from `KERAS_VARIANTS[backend]`.
        mode: "infer" or "train".
        images: `(batch, size, size, 3)` float32 numpy, normalised.
        labels: `(batch,)` int numpy.
        state: optional PyTorch state dict (numpy) to load.
        model_kwargs: extra `create_model` arguments (e.g. rematerialisation).
    """

    def __init__(self, name, variant, mode, images, labels, state=None, model_kwargs=None):
        import keras

        from keras_deepvit.training.fused_adamw import AdamW

        self.label = f"keras-{variant}"
        self.mode = mode
        self.model = build_model(name, images.shape[1], state, **(model_kwargs or {}))
        # The training recipe's optimiser (Keras' AdamW; PyTorch's fused kernel on PyTorch).
        optimizer = AdamW(LEARNING_RATE, weight_decay=WEIGHT_DECAY)
        self.model.compile(
            optimizer=optimizer,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=jit_compile(variant),
        )
        if mode == "train":
            # Built now, not while TensorFlow traces the first step (which then
            # traces it twice): PiT-Ti's first step took 42.6 s instead of 22.7 s.
            self.model.optimizer.build(self.model.trainable_variables)
        # Device tensors up front: the timed step includes no host-to-device copy.
        self.images = keras.ops.convert_to_tensor(images)
        self.labels = keras.ops.convert_to_tensor(labels)

    def step(self):
        if self.mode == "infer":
            return self.model.predict_on_batch(self.images)
        return self.model.train_on_batch(self.images, self.labels)

    def logits(self):
        return np.asarray(self.model.predict_on_batch(self.images))
