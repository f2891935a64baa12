"""The base class of the three family models: config = constructor arguments,
live access to every block's attention maps, and the family's checkpoint layout."""

import difflib
import inspect

import keras

from keras_deepvit.models.gradient_release import ReleasesGradients


class VisionTransformerFamily(ReleasesGradients, keras.Model):
    """A functional Keras model whose `get_config()` is its constructor arguments.

    Subclasses create their layers in a namespace (a `SimpleNamespace`; the
    PyTorch backend forbids setting layer attributes before `Model.__init__`),
    then call `_finish_init`, which traces the graph with the static
    `trace(layers, inputs, ...)` and afterwards copies the layers onto the model.

    Each family also owns its checkpoint layout (official PyTorch key names):
    `checkpoint_layout()` lists every official key with the Keras variable it
    fills, `CLASSIFIER_KEYS` names its heads, `POSITION_EMBEDDING` says how its
    position embedding is laid out ("tokens": `(1, 1 + patches, dim)` with the
    class token first; "map": `(1, dim, rows, cols)`) and `patch_grid` gives its grid.

    On the PyTorch backend a training step drops the previous step's gradients
    before its forward pass (`gradient_release.ReleasesGradients`).

    Family classes build architectures only. Weights load from the top of the
    package: `keras_deepvit.create_model(name, weights=...)`, the named
    constructors, or `keras_deepvit.weights.load_weights(model, path)`.
    """

    CLASSIFIER_KEYS = ("head",)
    POSITION_EMBEDDING = "tokens"
    #: `keras.Model` arguments a family passes on (the ones its saved config holds).
    MODEL_KWARGS = ("dtype", "trainable")

    def _check_kwargs(self, kwargs):
        """Unknown keywords are typos: a TypeError naming the closest argument, not a silent default."""
        if "weights" in kwargs:
            raise TypeError(
                f"{type(self).__name__} builds an architecture and takes no weights= argument; use "
                "keras_deepvit.create_model(name, weights=...) or a named constructor, or "
                "keras_deepvit.weights.load_weights(model, path) on the built model."
            )
        unknown = sorted(k for k in kwargs if k not in self.MODEL_KWARGS)
        if not unknown:
            return
        valid = [p for p in inspect.signature(type(self).__init__).parameters if p not in ("self", "kwargs")]
        valid += list(self.MODEL_KWARGS)
        close = difflib.get_close_matches(unknown[0], valid, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else "."
        raise TypeError(
            f"{type(self).__name__} got an unexpected keyword argument {unknown[0]!r}{hint} "
            + (f"(Also unknown: {', '.join(map(repr, unknown[1:]))}.) " if len(unknown) > 1 else "")
            + f"Its arguments: {', '.join(valid)}."
        )

    def _finish_init(self, inputs, layers, config, name, **kwargs):
        self._check_kwargs(kwargs)
        # The maps are traced first: Keras fixes the number of outputs of a layer's node
        # from its first call, and the blocks return (x, maps) only in this trace. Both
        # graphs share every layer, so `attention_model()` reads the live variables.
        _, maps = self.trace(layers, inputs, return_attention_maps=True)
        outputs, _ = self.trace(layers, inputs, return_attention_maps=False)
        # A functional model drops `dtype`; the layers were built with it, and the
        # model's own policy and config must say so for saving and mixed precision.
        dtype = kwargs.pop("dtype", None)
        super().__init__(inputs=inputs, outputs=outputs, name=name, **kwargs)
        if dtype is not None:
            self.dtype_policy = dtype
        for key, value in vars(layers).items():
            setattr(self, key, value)
        self._model_input = inputs
        self._attention_outputs = maps
        self._arch_config = dict(config)
        if dtype is not None:
            self._arch_config["dtype"] = keras.dtype_policies.serialize(self.dtype_policy)

    @staticmethod
    def trace(layers, inputs, return_attention_maps=False):
        """Runs `layers` on `inputs`: returns `(outputs, attention_maps or None)`."""
        raise NotImplementedError

    def checkpoint_layout(self):
        """(official key, Keras variable, converter) triples of every parameter."""
        raise NotImplementedError

    @property
    def patch_grid(self):
        """`(rows, cols)` of the patch grid the position embedding covers."""
        shape = tuple(self.pos_embed.embedding.shape)
        if self.POSITION_EMBEDDING == "map":
            return shape[1], shape[2]
        image = self._arch_config["input_shape"]
        return tuple(self.patch_embed.compute_output_shape((1,) + tuple(image))[1:3])

    def attention_model(self):
        """A model that returns every block's attention maps, sharing this model's variables.

        The maps are the ones each block multiplied `v` with, in PyTorch's layout
        `(batch, heads, tokens, tokens)` with the class token(s) first: after
        re-attention (DeepViT) or refinement (Refiner-ViT). The returned model
        maps the same images to a list with one array per block (PiT: per block
        of every stage, in order). It holds no variables of its own: after
        training, the same attention model gives the trained model's maps.

        Example:
        >>> import numpy as np, keras_deepvit
        >>> model = keras_deepvit.create_model("deepvit_16", input_shape=(32, 32, 3), weights=None)
        >>> maps = model.attention_model()(np.zeros((1, 32, 32, 3), "float32"))
        >>> len(maps), tuple(maps[0].shape)
        (16, (1, 12, 5, 5))
        """
        # A plain list: the attribute is a TrackedList, which predict on JAX refuses as an output.
        return keras.Model(self._model_input, list(self._attention_outputs), name=f"{self.name}_attention")

    def get_config(self):
        config = dict(self._arch_config)
        config.update({"name": self.name, "trainable": self.trainable})
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)
