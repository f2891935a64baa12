"""keras.applications-style constructors, one per variant record that names one.

Each is generated from its record (the `keras.applications` `BASE_DOCSTRING`
pattern): a function with the real keyword arguments, so `help()` and
`inspect.signature` show them, and a docstring stating the variant's
parameters, input size, top-1 and paper. `DeepViT16/24/32(re_attention=False)`
give the paper's ViT baselines and `RefinerViTS/M/L(input_shape=(384, 384, 3))`
the 384 (or 448) variants.
"""

import inspect

from keras_deepvit.zoo import registry
from keras_deepvit.zoo.records import RECORDS

_DOCSTRING = """{family_title} `{name}`: {params:,} parameters, {size}x{size} input{top1}.

{paper}; official source: {source}.

`keras_deepvit.create_model("{name}", ...)` with the `keras.applications`
arguments. Any other `{family}` argument (e.g. `rematerialize_blocks`, `dtype`,
`dropout_rate`{extra}) passes through `**kwargs`.

Args:
    include_top: end with the classifier.
    weights: None (random initialisation), "imagenet" ({weights}), or the
        path of a PyTorch/safetensors checkpoint, a `.keras` model or a
        `.weights.h5` file.
    input_tensor: optional Keras tensor to build the model on.
    input_shape: (height, width, 3); default ({size}, {size}, 3). Pretrained
        position embeddings are resampled to it.
    pooling: with `include_top=False`: "token", "avg" or None (all tokens).
    classes: classifier width; other than 1000, pretrained weights load all
        but the head.
    classifier_activation: activation of the output, or None for logits.
    include_preprocessing: True takes RGB in [0, 255] and applies mean
        {mean} and std {std}.
    drop_path_rate: stochastic depth of the last block.
    name: the Keras model's name.

Returns:
    A `{family}` Keras model.

Example:
>>> import keras_deepvit
>>> keras_deepvit.{constructor}(input_shape=(64, 64, 3), classes=3).output_shape
(None, 3)
"""

_FAMILY_TITLES = {"deepvit": "DeepViT", "refiner": "Refiner-ViT", "pit": "PiT"}


def _signature(record):
    keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD
    defaults = dict(
        include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
        classes=1000, classifier_activation="softmax", include_preprocessing=True,
        drop_path_rate=0.0, name=record.name,
    )
    parameters = [inspect.Parameter(k, keyword, default=v) for k, v in defaults.items()]
    parameters.append(inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD))
    return inspect.Signature(parameters)


def _docstring(record):
    top1 = f", ImageNet top-1 {record.top1}%" if record.top1 is not None else ""
    weights = (
        f"the official checkpoint, {record.top1}% top-1" if record.has_weights
        else f"not available: {record.weights_note}"
    )
    extra = ", `re_attention=False`" if record.family_name == "deepvit" else ""
    return _DOCSTRING.format(
        family_title=_FAMILY_TITLES[record.family_name], name=record.name, params=record.params,
        size=record.size, top1=top1, paper=record.paper, source=record.source,
        family=record.family.__name__, extra=extra, weights=weights, mean=record.mean,
        std=record.std, constructor=record.constructor,
    )


def _constructor(record):
    signature = _signature(record)

    def constructor(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        arguments.update(arguments.pop("kwargs"))
        return registry.create_model(record.name, **arguments)

    constructor.__name__ = constructor.__qualname__ = record.constructor
    constructor.__module__ = "keras_deepvit"
    constructor.__signature__ = signature
    constructor.__doc__ = _docstring(record)
    return constructor


#: Constructor name -> function, in record order.
CONSTRUCTORS = {r.constructor: _constructor(r) for r in RECORDS.values() if r.constructor}
