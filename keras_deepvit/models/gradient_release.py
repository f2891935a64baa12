"""On the PyTorch backend, the last training step's gradients leave memory before the next
forward pass.

Keras' PyTorch `train_step` calls `zero_grad()` after the model's forward pass, so
each weight's `.grad` from the previous step lives through the forward pass, where
a training step's memory peaks: a weights-sized set of tensors (about 100 MB for
Refiner-ViT-S; docs/performance.md). `ReleasesGradients` drops them first, for any
optimiser; the package's `AdamW` also drops them as soon as it has applied them.
"""

import keras


def release_gradients(variables):
    """Sets the PyTorch `.grad` of each Keras variable to None (PyTorch backend).

    The tensors are freed once the caller's own references to them (Keras' train
    step holds the list it passed to `apply` until it returns) are gone. Elsewhere
    a variable has no `.grad`, and nothing happens.

    Example:
    >>> import numpy as np
    >>> weights = keras.Variable(np.ones((2,), "float32"))
    >>> release_gradients([weights])
    """
    for variable in variables:
        value = getattr(variable, "value", None)
        if getattr(value, "grad", None) is not None:
            value.grad = None


class ReleasesGradients:
    """Mixin for `keras.Model` subclasses: `train_step` first releases the last step's gradients.

    Put it before `keras.Model` in the bases. On TensorFlow and JAX it changes
    nothing.

    Example:
    >>> class Classifier(ReleasesGradients, keras.Model):
    ...     pass
    >>> inputs = keras.Input((3,))
    >>> model = Classifier(inputs, keras.layers.Dense(2)(inputs))
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> import numpy as np
    >>> logs = model.train_on_batch(np.ones((4, 3), "float32"), np.zeros((4, 2), "float32"))
    """

    def train_step(self, *args, **kwargs):
        # JAX's trainer passes `(state, data)`, the others `(data)`.
        if keras.backend.backend() == "torch":
            release_gradients(self.trainable_variables)
        return super().train_step(*args, **kwargs)
