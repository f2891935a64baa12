"""The inference twin of a trained model: float32, no training-only paths, BatchNorms folded.

Exported artifacts serve predictions, so they drop what only training needs:
mixed precision (ONNX export needs a float32 policy, and serving in bfloat16
would change the numbers), stochastic depth, dropout, rematerialisation and the
separate training heads (`separate_heads=True`), and they fold the BatchNorm of
every re-attention and refiner into the head-mixing and convolution weights
(`fold_batch_norm()` on `ReAttention`, `DistributedLocalAttention`,
`RefinerAttention`). The twin is rebuilt from the model's config and receives a
float32 copy of its weights; the model itself is left untouched.
"""

import keras
import numpy as np

from keras_deepvit.layers.re_attention import ReAttention
from keras_deepvit.layers.refiner_attention import RefinerAttention
from keras_deepvit.models.base import VisionTransformerFamily

#: Config entries of the family models that only matter for training, and their inference values.
INFERENCE_OVERRIDES = {
    "dtype": "float32",
    "drop_path_rate": 0.0,
    "dropout_rate": 0.0,
    "attention_dropout_rate": 0.0,
    "rematerialize_blocks": False,
    "separate_heads": False,
    "include_preprocessing": True,
}


def inference_model(model, fold=True):
    """A float32 inference copy of `model` that takes RGB in [0, 255], BatchNorms folded.

    Args:
        model: a `DeepViT`, `RefinerViT` or `PiT` model (any dtype policy, e.g.
            trained in `mixed_bfloat16`).
        fold: bool, fold the re-attention / refiner BatchNorms (`fold_batch_norms`).

    Returns:
        A new model of the same family with the same weights (cast to float32);
        `include_preprocessing` is on, so a model built with it off gets the
        family's official normalisation inside.

    Example:
    >>> import numpy as np, keras_deepvit
    >>> model = keras_deepvit.DeepViT(depth=1, embed_dim=32, num_heads=4, input_shape=(32, 32, 3), classes=3)
    >>> twin = inference_model(model)
    >>> images = np.random.uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    >>> bool(np.allclose(model.predict(images, verbose=0), twin.predict(images, verbose=0), atol=1e-6))
    True
    """
    if not isinstance(model, VisionTransformerFamily):
        raise TypeError(
            "keras_deepvit.export works on the package's family models (DeepViT, RefinerViT, "
            f"PiT, e.g. from keras_deepvit.create_model or a saved .keras file); got "
            f"{type(model).__name__}. Export other models with keras' own model.export()."
        )
    config = model.get_config()
    config.update({k: v for k, v in INFERENCE_OVERRIDES.items() if k in config or k == "dtype"})
    twin = type(model).from_config(config)
    source, target = model.weights, twin.weights
    if [tuple(v.shape) for v in source] != [tuple(v.shape) for v in target]:
        raise ValueError(
            f"The inference copy of '{model.name}' has a different variable layout "
            f"({len(target)} against {len(source)} variables); export the model as it is with "
            "model.export()."
        )
    twin.set_weights([np.asarray(keras.ops.convert_to_numpy(v), "float32") for v in source])
    if fold:
        fold_batch_norms(twin)
    return twin


def fold_batch_norms(model):
    """Folds every re-attention and refiner BatchNorm of `model` in place; returns how many layers.

    Exact to float32 rounding at inference (see `ReAttention.fold_batch_norm`);
    the folded layers stop normalising, so fold only a model meant for inference.

    Example:
    >>> import keras_deepvit
    >>> model = keras_deepvit.DeepViT(depth=2, embed_dim=32, num_heads=4, input_shape=(32, 32, 3))
    >>> fold_batch_norms(model)
    2
    """
    folded = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, ReAttention) and layer.apply_transform and not layer.folded:
            layer.fold_batch_norm()
            folded += 1
        elif isinstance(layer, RefinerAttention) and layer.refiner is not None and not layer.folded:
            layer.fold_batch_norm()
            folded += 1
    return folded
