"""Inference export: folding, float32 twins, artifacts served without keras_deepvit, the
`keras-deepvit export` command and the benchmark's exported contestants.

One tiny Refiner-ViT (2 blocks, dim 32, 32x32, BatchNorms randomised) is exported once
per backend pass, each format once (the SavedModel through the CLI from a `.keras` file),
and one fresh Python process that imports TensorFlow / onnxruntime / ai-edge-litert but
never keras_deepvit runs every artifact at batch 1 and 7. SavedModel: TensorFlow and JAX
passes; ONNX and LiteRT: TensorFlow pass. ONNX from JAX (jax2onnx, about 90 s on 2
cores) runs only with KERAS_DEEPVIT_SLOW_EXPORT_TESTS=1 (docs/export.md).
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from helpers import compile_for_training, rel_l2, to_numpy
from keras_deepvit import cli
from keras_deepvit.export import check_supported, export, fold_batch_norms, inference_model
from keras_deepvit.layers import ReAttention
from keras_deepvit.layers.refiner_attention import DistributedLocalAttention, RefinerAttention
from keras_deepvit.models import DeepViT, PiT, RefinerViT

BACKEND = keras.backend.backend()
SLOW = os.environ.get("KERAS_DEEPVIT_SLOW_EXPORT_TESTS") == "1"
TINY = dict(input_shape=(32, 32, 3), classes=5)


def tiny(family, **kwargs):
    if family == "deepvit":
        # DeepViT-S's options: scaled re-attention and the CNN stem's BatchNorms.
        return DeepViT(depth=2, embed_dim=32, num_heads=4, transform_scale=True, stem="cnn",
                       patch_size=8, **TINY, **kwargs)
    if family == "refiner":
        # Block 0 computes with a refined (expanded) map, block 1 shares and refines.
        return RefinerViT(depth=2, embed_dim=32, num_heads=4, refine_attention=True, head_expand=2,
                          stem="patch", patch_size=8, **TINY, **kwargs)
    return PiT(patch_size=8, stride=4, base_dims=(16, 16), depth=(1, 1),
               heads=(2, 4), distilled=True, **TINY, **kwargs)


def randomise_batch_norms(model, seed=0):
    """Moving statistics and affine terms far from the identity, so a wrong fold shows."""
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.moving_mean.shape
            layer.moving_mean.assign(rng.normal(0, 0.5, channels).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.2, 3.0, channels).astype("float32"))
            layer.gamma.assign(rng.uniform(0.5, 2.0, channels).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.5, channels).astype("float32"))
    return model


def images(batch, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (batch, 32, 32, 3)).astype("uint8")


@pytest.mark.long_running
@pytest.mark.parametrize("family", ["deepvit", "refiner", "pit"])
def test_folded_inference_model_matches_the_model(family):
    model = randomise_batch_norms(tiny(family, drop_path_rate=0.2))
    x = images(3).astype("float32")
    expected = to_numpy(model(x, training=False))
    twin = inference_model(model)
    assert twin.dtype_policy.name == "float32" and twin.get_config()["drop_path_rate"] == 0.0
    folded = [l for l in twin._flatten_layers() if getattr(l, "folded", False)]
    assert len(folded) == {"deepvit": 2, "refiner": 4, "pit": 0}[family]  # refiner: 2 attentions + 2 DLAs
    assert rel_l2(to_numpy(twin(x, training=False)), expected) < 1e-6
    # A folded model saved and reloaded (layers rebuilt unfolded) computes the same function.
    unfolded = type(twin).from_config(twin.get_config())
    unfolded.set_weights(twin.get_weights())
    assert rel_l2(to_numpy(unfolded(x, training=False)), expected) < 1e-6
    assert fold_batch_norms(twin) == 0  # idempotent


@pytest.mark.parametrize(
    "layer_cls, kwargs, shape",
    [
        (ReAttention, dict(num_heads=2, transform_scale=True), (2, 5, 8)),
        (RefinerAttention, dict(num_heads=2, refine_attention=True), (2, 5, 8)),
        (DistributedLocalAttention, dict(expansion_ratio=3), (2, 2, 5, 5)),
    ],
)
def test_folded_layers_serialize_and_match(layer_cls, kwargs, shape):
    layer = layer_cls(**kwargs)
    x = np.random.default_rng(1).random(shape).astype("float32")
    layer(x)
    randomise_batch_norms(layer)
    first = lambda out: to_numpy(out[0] if isinstance(out, (tuple, list)) else out)  # noqa: E731
    expected = first(layer(x, training=False))
    layer.fold_batch_norm()
    assert layer.get_config()["folded"] is True
    assert rel_l2(first(layer(x, training=False)), expected) < 1e-6
    clone = layer_cls.from_config(layer.get_config())
    clone(x)
    clone.set_weights(layer.get_weights())
    assert clone.folded and rel_l2(first(clone(x, training=False)), expected) < 1e-6
    # Rebuilt unfolded (what a saved model's config gives) from the folded weights.
    unfolded = layer_cls.from_config({**layer.get_config(), "folded": False})
    unfolded(x)
    unfolded.set_weights(layer.get_weights())
    assert rel_l2(first(unfolded(x, training=False)), expected) < 1e-6


@pytest.mark.long_running
def test_mixed_bfloat16_model_exports_a_float32_twin():
    model = tiny("refiner", dtype="mixed_bfloat16")
    compile_for_training(model, optimizer=keras.optimizers.SGD(1e-2), loss="categorical_crossentropy")
    x = images(4).astype("float32")
    model.train_on_batch(x, np.eye(5, dtype="float32")[[0, 1, 2, 3]])
    twin = inference_model(model)
    assert twin.dtype_policy.name == "float32"
    assert all(v.dtype == "float32" for v in twin.weights)
    reference = tiny("refiner")  # the float32 twin built by hand, unfolded
    reference.set_weights([to_numpy(v).astype("float32") for v in model.weights])
    assert rel_l2(to_numpy(twin(x)), to_numpy(reference(x))) < 1e-5


def test_unsupported_backend_and_format_pairs_raise_naming_what_works():
    with pytest.raises(ValueError, match="litert.*tensorflow backend, not from 'jax'"):
        check_supported("litert", "jax")
    with pytest.raises(ValueError, match="tensorflow or jax backend, not from 'torch'.*onnx|tf_saved_model"):
        check_supported("tf_saved_model", "torch")
    with pytest.raises(ValueError, match="format must be one of tf_saved_model, onnx, litert"):
        check_supported("coreml", "tensorflow")
    with pytest.raises(TypeError, match="family models"):
        inference_model(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))
    with pytest.raises(ValueError, match="input_dtype must be one of"):
        export(tiny("pit"), "x.onnx", format="onnx", input_dtype="int8")
    if BACKEND != "tensorflow":  # what `export` itself says on this backend
        with pytest.raises(ValueError, match="exports from the tensorflow backend"):
            export(tiny("pit"), "model.tflite", format="litert")



def test_cli_refuses_a_format_this_backend_does_not_export(tmp_path, capsys):
    # Checked before the model is built or loaded: a wrong pair fails at once.
    fmt = {"tensorflow": None, "jax": "litert", "torch": "tf_saved_model"}[BACKEND]
    if fmt is None:  # TensorFlow exports every format: the bad input is the model instead
        argv, message = ["export", "not_a_model", "-o", str(tmp_path / "m")], "MODEL_OR_FILE must be"
    else:
        argv, message = ["export", "pit_ti", "-o", str(tmp_path / "m"), "--format", fmt], "backend, not from"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


# The check that runs in a fresh process: it must not need (or import) keras_deepvit.
SERVE = r"""
import json, sys, numpy as np
x, expected = np.load(sys.argv[1]), np.load(sys.argv[2])
rel = lambda a, b: float(np.linalg.norm(a - b) / np.linalg.norm(b))
errors = {}
for fmt, path in json.loads(sys.argv[3]).items():
    if fmt == "tf_saved_model":
        import tensorflow as tf
        served = tf.saved_model.load(path)
    elif fmt == "onnx":
        import onnxruntime
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    else:
        from ai_edge_litert.interpreter import Interpreter
        interpreter = Interpreter(model_path=path)
        entry = interpreter.get_input_details()[0]
        errors["litert_ops"] = sorted({op["op_name"] for op in interpreter._get_ops_details()})
    for batch in (1, 7):
        inputs = x[:batch]
        if fmt == "tf_saved_model":
            out = served.serve_uint8(tf.constant(inputs)).numpy()
            as_float = served.serve(tf.constant(inputs, tf.float32)).numpy()
            errors[f"{fmt}_float32_{batch}"] = rel(as_float, expected[:batch])
        elif fmt == "onnx":
            out = session.run(None, {session.get_inputs()[0].name: inputs})[0]
        else:
            interpreter.resize_tensor_input(entry["index"], inputs.shape)
            interpreter.allocate_tensors()
            interpreter.set_tensor(entry["index"], inputs)
            interpreter.invoke()
            out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
        errors[f"{fmt}_{batch}"] = rel(out, expected[:batch])
errors["keras_deepvit_imported"] = sorted(m for m in sys.modules if m.startswith("keras_deepvit"))
print(json.dumps(errors))
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Exports the tiny Refiner-ViT once per format, serves all artifacts in one fresh process."""
    if BACKEND == "torch":
        pytest.skip("the PyTorch backend exports no format (test_unsupported_* checks it says so)")
    tmp = tmp_path_factory.mktemp("export")
    model = randomise_batch_norms(tiny("refiner", drop_path_rate=0.1))
    model.save(tmp / "model.keras")
    artifacts = {"tf_saved_model": tmp / "saved_model"}
    # The SavedModel through `keras-deepvit export`, from the .keras file.
    assert cli.main(["export", str(tmp / "model.keras"), "-o", str(artifacts["tf_saved_model"])]) == 0
    if BACKEND == "tensorflow" or SLOW:
        artifacts["onnx"] = export(model, tmp / "model.onnx", format="onnx", input_dtype="uint8")
    if BACKEND == "tensorflow":
        artifacts["litert"] = export(model, tmp / "model.tflite", format="litert", input_dtype="uint8")
    x = images(7, seed=3)
    np.save(tmp / "x.npy", x)
    np.save(tmp / "y.npy", to_numpy(model(x.astype("float32"), training=False)))
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-c", SERVE, str(tmp / "x.npy"), str(tmp / "y.npy"),
         json.dumps({k: str(v) for k, v in artifacts.items()})],
        capture_output=True, text=True, timeout=600, cwd=tmp, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    errors = json.loads(result.stdout.strip().splitlines()[-1])
    return dict(errors, artifacts=artifacts, x=x, expected=np.load(tmp / "y.npy"))


@pytest.mark.skipif(BACKEND == "torch", reason="tf_saved_model exports from TensorFlow and JAX")
def test_saved_model_is_served_by_tensorflow_without_keras_deepvit(served):
    assert served["keras_deepvit_imported"] == []
    keys = [f"tf_saved_model{kind}_{batch}" for kind in ("", "_float32") for batch in (1, 7)]
    assert all(served[key] <= 1e-5 for key in keys), {key: served[key] for key in keys}


@pytest.mark.skipif(BACKEND == "torch", reason="onnx exports from TensorFlow and JAX")
def test_onnx_is_served_by_onnxruntime(served):
    if BACKEND == "jax" and not SLOW:
        pytest.skip("ONNX from JAX takes ~90 s (jax2onnx): set KERAS_DEEPVIT_SLOW_EXPORT_TESTS=1")
    assert served["onnx_1"] <= 1e-5 and served["onnx_7"] <= 1e-5, served


@pytest.mark.skipif(BACKEND != "tensorflow", reason="litert exports from the TensorFlow backend")
def test_litert_is_served_without_flex_ops(served):
    assert served["litert_ops"] and not [op for op in served["litert_ops"] if "Flex" in op]
    assert served["litert_1"] <= 1e-4 and served["litert_7"] <= 1e-4, served


def test_benchmark_exported_contestants_yield_rows(served):
    """`--exported`: one export (ONNX, the costlier route) timed end to end, and the
    SavedModel contestant on the served fixture's artifact (exporting it again costs 20 s)."""
    from keras_deepvit.benchmark import exported_side, runner

    assert runner.build_parser().parse_args(["--exported"]).exported
    saved = exported_side.ExportedContestant(
        "tf_saved_model", str(served["artifacts"]["tf_saved_model"]), served["x"].astype("float32")
    )
    assert rel_l2(saved.logits(), served["expected"]) <= 1e-5
    if BACKEND != "tensorflow":  # the runner runs the job with KERAS_BACKEND=tensorflow
        with pytest.raises(ValueError, match="KERAS_BACKEND=tensorflow"):
            exported_side.run_exported_job(dict(model="pit_ti", image_size=32, batch=2))
        return
    spec = dict(model="pit_ti", image_size=32, batch=2, repeats=2, warmup=1, seed=0,
                model_kwargs={"depth": (1, 1, 1)}, formats=["onnx"])
    out = exported_side.run_exported_job(spec)
    assert out["errors"] == {} and list(out["contestants"]) == ["exported-onnx"], out["errors"]
    assert out["contestants"]["exported-onnx"]["images_per_s"] > 0
    assert out["rel_l2_vs_keras"]["exported-onnx"] <= 1e-5, out["rel_l2_vs_keras"]
    results = [{"spec": {"mode": m}, "contestants": {"keras-xla": {}}, "errors": {}} for m in ("infer", "train")]
    exported_side.attach(results, out)
    assert set(results[0]["contestants"]) == {"keras-xla", "exported-onnx"}
    assert list(results[1]["contestants"]) == ["keras-xla"]
    assert "onnx" in exported_side.describe(out) and "img/s" in exported_side.describe(out)
