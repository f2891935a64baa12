"""The base class of the three family models: config = constructor arguments,
plus access to every block's attention maps."""

import threading

import keras

#: Set while `attention_model()` builds its twin (see `_finish_init`).
_ATTENTION_TWIN = threading.local()
_ATTENTION_TWIN.active = False


class VisionTransformerFamily(keras.Model):
    """A functional Keras model whose `get_config()` is its constructor arguments.

    Subclasses create their layers in a namespace (a `SimpleNamespace`; the
    PyTorch backend forbids setting layer attributes before `Model.__init__`),
    then call `_finish_init`, which traces the graph with the static
    `trace(layers, inputs, ...)` and afterwards copies the layers onto the model.
    `attention_model()` traces a twin with `return_attention_maps=True`.

    Every family constructor also takes `weights=`: None, or a checkpoint path
    (PyTorch, safetensors, `.keras`, `.weights.h5`; see `create_model`).
    "imagenet" needs a registered name: `create_model(name, weights="imagenet")`.
    """

    def _finish_init(self, inputs, layers, config, name, **kwargs):
        # `weights` is applied after building and, as in keras.applications, is
        # not part of the config: a saved model carries its weights itself.
        weights = kwargs.pop("weights", None)
        if getattr(_ATTENTION_TWIN, "active", False):
            # Keras checks a functional graph's connectivity with the number of outputs
            # of each layer's *first* call, so layers first called without maps cannot
            # later be wired into an attention model. A twin built for
            # `attention_model()` therefore traces with maps first.
            self.trace(layers, keras.Input(shape=inputs.shape[1:]), return_attention_maps=True)
        outputs, _ = self.trace(layers, inputs, return_attention_maps=False)
        super().__init__(inputs=inputs, outputs=outputs, name=name, **kwargs)
        for key, value in vars(layers).items():
            setattr(self, key, value)
        self._model_input = inputs
        self._arch_config = dict(config)
        if weights is not None:
            from keras_deepvit.weights.loading import load_weights

            load_weights(self, weights)

    @staticmethod
    def trace(layers, inputs, return_attention_maps=False):
        """Runs `layers` on `inputs`: returns `(outputs, attention_maps or None)`."""
        raise NotImplementedError

    def attention_model(self):
        """A model with this model's current weights that returns every block's attention maps.

        The maps are the ones each block multiplied `v` with, in PyTorch's layout
        `(batch, heads, tokens, tokens)` with the class token(s) first: after
        re-attention (DeepViT) or refinement (Refiner-ViT). The returned model
        maps the same images to a list with one array per block (PiT: per block
        of every stage, in order).

        Example:
        >>> import numpy as np, keras_deepvit
        >>> model = keras_deepvit.create_model("deepvit_16", input_shape=(32, 32, 3), weights=None)
        >>> maps = model.attention_model()(np.zeros((1, 32, 32, 3), "float32"))
        >>> len(maps), tuple(maps[0].shape)
        (16, (1, 12, 5, 5))
        """
        _ATTENTION_TWIN.active = True
        try:
            twin = self.__class__.from_config(self.get_config())
        finally:
            _ATTENTION_TWIN.active = False
        twin.set_weights(self.get_weights())
        _, maps = twin.trace(twin, twin._model_input, return_attention_maps=True)
        return keras.Model(twin._model_input, maps, name=f"{self.name}_attention")

    def get_config(self):
        config = dict(self._arch_config)
        config.update({"name": self.name, "trainable": self.trainable})
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**config)
