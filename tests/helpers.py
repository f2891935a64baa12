"""Test helpers: numpy conversion, error metrics, the reference fixtures, and the
round-trip checks every layer and model goes through."""

import json
import os
from pathlib import Path

import keras
import numpy as np
import pytest

REFERENCE_DIR = Path(
    os.environ.get(
        "KERAS_DEEPVIT_REFERENCE_DIR", Path(__file__).resolve().parents[2] / "shared" / "reference"
    )
)
TINY_DIR = REFERENCE_DIR / "tiny"
ALL_PASSES = os.environ.get("KERAS_DEEPVIT_ALL_PASSES") == "1"


def in_one_pass(backend, why):
    """A skip mark: the test runs in the `KERAS_BACKEND=backend` pass of the suite only.

    For tests whose subject does not depend on the Keras backend (downloads,
    caches, the PyTorch references, a command's own logic): running them in
    every pass would only triple their time. `KERAS_DEEPVIT_ALL_PASSES=1` runs
    them in every pass.
    """
    return pytest.mark.skipif(
        keras.backend.backend() != backend and not ALL_PASSES,
        reason=f"runs once per suite, in the KERAS_BACKEND={backend} pass ({why}); "
        "KERAS_DEEPVIT_ALL_PASSES=1 runs it in every pass",
    )


def to_numpy(x):
    if isinstance(x, dict):
        return {k: to_numpy(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_numpy(v) for v in x)
    if isinstance(x, keras.Variable):
        x = x.value
    if hasattr(x, "detach"):  # a torch tensor that requires grad
        x = x.detach()
    return np.asarray(keras.ops.convert_to_numpy(x))


def infer(model, inputs):
    """A model's inference outputs as numpy, compiled on JAX and eager elsewhere.

    Eager JAX compiles every op for every new shape (about 0.1 s each on a
    2-core CPU), so an eager first call of a 12-block model costs ~10 s against
    ~2 s for one compiled `predict_on_batch`; TensorFlow and PyTorch run eager
    calls without compiling. Both paths compute the same graph (`training=False`).
    """
    if keras.backend.backend() == "jax":
        return to_numpy(model.predict_on_batch(inputs))
    return to_numpy(model(inputs, training=False))


def train_forward(model, inputs):
    """A model's training-mode outputs (`training=True`) as numpy, compiled on JAX.

    On JAX this is `model.stateless_call` under `jax.jit` (see `infer`), so the
    BatchNorm statistics the call updates stay out of the model; elsewhere it is
    an eager call.
    """
    if keras.backend.backend() == "jax":
        import jax

        def call(trainable, non_trainable, x):
            outputs, _ = model.stateless_call(trainable, non_trainable, x, training=True)
            return outputs

        values = [[v.value for v in vs] for vs in (model.trainable_variables, model.non_trainable_variables)]
        return to_numpy(jax.jit(call)(*values, inputs))
    return to_numpy(model(inputs, training=True))


def compiled(fn):
    """`fn` compiled with `jax.jit` on JAX (see `infer`), as it is elsewhere."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(fn)
    return fn


def xla_compiled_on_tensorflow(function):
    """`function` in a TensorFlow function compiled by XLA (where the XLA-only forms of
    `wide_matmul` and `half_arithmetic` live); as it is on the other backends."""
    if keras.backend.backend() != "tensorflow":
        return function
    import tensorflow as tf

    return tf.function(function, jit_compile=True)


def asked_while_tracing_for_xla(question):
    """`question()` asked while a TensorFlow function is traced for XLA; directly elsewhere."""
    if keras.backend.backend() != "tensorflow":
        return question()
    answers = []
    xla_compiled_on_tensorflow(lambda: answers.append(question()) or 0)()
    return answers[0]


def gradients(loss_fn, variables):
    """`(loss, [d loss / d variable])` as numpy, through the backend's own autodiff.

    `loss_fn()` reads the variables (Keras `Variable`s) and returns a scalar.
    On JAX it is compiled (see `infer`).
    """
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        def pure(values):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return loss_fn()

        loss, grads = jax.jit(jax.value_and_grad(pure))([v.value for v in variables])
    elif backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_fn()
        grads = tape.gradient(loss, [v.value for v in variables])
    else:
        import torch

        loss = loss_fn()
        grads = torch.autograd.grad(loss, [v.value for v in variables])
    return to_numpy(loss), [to_numpy(g) for g in grads]


def rel_l2(actual, expected):
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def load_fixture(name):
    """(keys.json dict, npz arrays, state dict of numpy arrays) of a tiny fixture.

    The `.pth` goes through our torch-free reader, so fixture parity runs without torch.
    """
    from keras_deepvit.weights.checkpoint_reader import read_checkpoint

    meta = json.loads((TINY_DIR / f"{name}.keys.json").read_text())
    arrays = dict(np.load(TINY_DIR / f"{name}.npz"))
    state = read_checkpoint(str(TINY_DIR / f"{name}.pth")).content
    return meta, arrays, {k: np.asarray(v) for k, v in state.items()}


def keras_kwargs_from_official(model_class, class_kwargs):
    """Our family class and arguments for an official model class + constructor kwargs."""
    from keras_deepvit.models import DeepViT, PiT, RefinerViT

    kw = dict(class_kwargs)
    classes = kw.get("num_classes", 1000)
    if model_class == "DeepVisionTransformer":
        return DeepViT, dict(
            depth=len(kw["apply_transform"]), embed_dim=kw["embed_dim"], num_heads=kw["num_heads"],
            mlp_ratio=kw.get("mlp_ratio", 4), re_attention=list(kw["apply_transform"]),
            transform_scale=kw.get("transform_scale", False),
            scale_adjustment=kw.get("scale_adjustment", 1.0),
            stem="cnn" if kw.get("use_cnn_embed", False) else "patch",
            patch_size=kw.get("patch_size", 16), classes=classes,
        )
    if model_class == "Refiner_ViT":
        return RefinerViT, dict(
            depth=len(kw["depth"]), embed_dim=kw["embed_dim"], num_heads=kw["num_heads"],
            mlp_ratio=kw.get("mlp_ratio", 4), share_attention=list(kw["depth"]),
            refine_attention=list(kw.get("apply_transform", [False] * len(kw["depth"]))),
            head_expand=kw.get("head_expand", 3),
            stem="cnn" if kw.get("use_cnn_embed", True) else "patch",
            dense_head=kw.get("return_dense", True), patch_size=kw.get("patch_size", 16),
            classes=classes,
        )
    distilled = model_class == "DistilledPoolingTransformer" or kw.get("distilled", False)
    return PiT, dict(
        patch_size=kw["patch_size"], stride=kw["stride"], base_dims=kw["base_dims"],
        depth=kw["depth"], heads=kw["heads"], mlp_ratio=kw.get("mlp_ratio", 4),
        distilled=distilled, classes=classes,
    )


def assert_same_outputs(a, b, atol=1e-6):
    a, b = to_numpy(a), to_numpy(b)
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_allclose(a[key], b[key], atol=atol, rtol=1e-5)
    else:
        np.testing.assert_allclose(a, b, atol=atol, rtol=1e-5)


def dtype_policies(layer):
    """The dtype policy of a layer or model and of every layer inside it, by path."""
    return {"": layer.dtype_policy.name} | {
        sub.path: sub.dtype_policy.name for sub in layer._flatten_layers(include_self=False)
    }


def assert_same_dtypes(restored, original):
    """Every layer of `restored` computes and stores as in `original` (mixed precision kept)."""
    assert dtype_policies(restored) == dtype_policies(original)
    assert [v.dtype for v in restored.weights] == [v.dtype for v in original.weights]


def check_model_round_trips(model, inputs, tmp_path):
    """from_config, `.keras` saving and `.weights.h5` reload reproduce the outputs and dtypes."""
    expected = model(inputs, training=False)
    clone = model.__class__.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    assert_same_dtypes(clone, model)
    clone.set_weights(model.get_weights())
    assert_same_outputs(clone(inputs, training=False), expected)

    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model)
    assert_same_dtypes(loaded, model)
    assert_same_outputs(loaded(inputs, training=False), expected)

    weights_path = tmp_path / "model.weights.h5"
    model.save_weights(weights_path)
    fresh = model.__class__.from_config(model.get_config())
    fresh.load_weights(weights_path)
    assert_same_outputs(fresh(inputs, training=False), expected)


def compile_for_training(model, **compile_kwargs):
    """`model.compile(**compile_kwargs)`, then the optimizer's variables built eagerly.

    Without a distribution strategy, Keras' TensorFlow trainer creates the
    optimizer's variables while tracing the first train step, and TensorFlow
    then traces the step a second time: PiT-Ti's first `train_on_batch` took
    42.6 s against 22.7 s with the optimizer built first. Other backends build
    it before the step anyway; this only moves the work earlier.
    """
    model.compile(**compile_kwargs)
    model.optimizer.build(model.trainable_variables)
    return model


def check_layer(layer_cls, init_kwargs, inputs, call_kwargs=None, tmp_path=None, train=True):
    """Config round trip, symbolic and eager calls, a fit step and `.keras` saving of a layer.

    The layer's first output is wrapped in a one-layer functional model.
    """
    call_kwargs = call_kwargs or {}
    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    clone = layer_cls.from_config(config)
    assert clone.get_config() == config
    assert clone.dtype_policy.name == layer.dtype_policy.name

    inputs = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    symbolic = [keras.Input(shape=np.shape(x)[1:]) for x in inputs]
    out = layer(*symbolic, **call_kwargs)
    first = out[0] if isinstance(out, (list, tuple)) else out
    model = keras.Model(symbolic if len(symbolic) > 1 else symbolic[0], first)
    eager = model(inputs if len(inputs) > 1 else inputs[0])
    assert tuple(first.shape[1:]) == tuple(to_numpy(eager).shape[1:])

    if train and model.trainable_weights:
        compile_for_training(model, optimizer=keras.optimizers.SGD(1e-3), loss="mse")
        target = np.zeros(to_numpy(eager).shape, "float32")
        history = model.fit(
            inputs if len(inputs) > 1 else inputs[0], target, epochs=1, batch_size=len(target), verbose=0
        )
        assert np.isfinite(history.history["loss"][0])

    if tmp_path is not None:
        path = tmp_path / "layer.keras"
        model.save(path)
        loaded = keras.saving.load_model(path)
        assert_same_dtypes(loaded, model)
        data = inputs if len(inputs) > 1 else inputs[0]
        assert_same_outputs(loaded(data), model(data))
    return layer


def jaxpr_equations(jaxpr):
    """Every equation of a jaxpr and of the jaxprs nested in its equations' parameters."""
    for equation in jaxpr.eqns:
        yield equation
        for value in equation.params.values():
            for inner in value if isinstance(value, (list, tuple)) else [value]:
                inner = getattr(inner, "jaxpr", inner)
                if hasattr(inner, "eqns"):
                    yield from jaxpr_equations(inner)
