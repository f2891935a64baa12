"""Writing the artifacts: serving signatures, and the JAX route to a SavedModel TensorFlow runs.

Every artifact takes RGB images in [0, 255], `(batch, height, width, 3)` with a
dynamic batch: the model's preprocessing is inside. A SavedModel has two
endpoints, `serve` (float32, also `serving_default`) and `serve_uint8`; ONNX and
LiteRT artifacts have one input whose dtype `input_dtype` chooses.

JAX writes a SavedModel through `jax2tf` as one StableHLO module. JAX 0.10
lowers `erf` (the exact GELU) to a `chlo.erf` that it serialises as a
`vhlo.composite_v2` op: TensorFlow 2.21 (StableHLO 1.13) fails to read it at the
first call ("unregistered operation 'vhlo.composite_v2'"), and the composite
from an older target version keeps dynamic shapes TensorFlow cannot refine.
While exporting, `jax_erf_from_primitives` therefore replaces Keras' JAX `erf`
with the rational approximation XLA uses for float32 (Eigen's
`generic_fast_erf_float`), written in multiplies, adds and a division: it
differs from `jax.lax.erf` by at most 4.8e-7 (GELU: 8.8e-8 relative L2 on
[-6, 6]), and every op in the module is then one TensorFlow reads.
"""

import contextlib

import keras

#: Eigen / XLA float32 erf: odd numerator and even denominator polynomial in x, x in [-4, 4].
ERF_NUMERATOR = (
    -2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
    -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02,
)
ERF_DENOMINATOR = (
    -1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
    -1.42647390514189e-02,
)
#: |x| beyond which float32 erf is +-1 (Eigen clamps there).
ERF_CLAMP = 4.0

INPUT_DTYPES = ("float32", "uint8")


def erf_from_primitives(x):
    """`erf(x)` in float32 from multiplies, adds and one division (XLA's own approximation).

    Example:
    >>> import math, numpy as np
    >>> value = keras.ops.convert_to_numpy(erf_from_primitives(np.array([0.5], "float32")))[0]
    >>> abs(float(value) - math.erf(0.5)) < 1e-6
    True
    """
    ops = keras.ops
    x = ops.clip(ops.convert_to_tensor(x), -ERF_CLAMP, ERF_CLAMP)
    x2 = x * x
    numerator = ops.zeros_like(x) + ERF_NUMERATOR[0]
    for coefficient in ERF_NUMERATOR[1:]:
        numerator = numerator * x2 + coefficient
    denominator = ops.zeros_like(x) + ERF_DENOMINATOR[0]
    for coefficient in ERF_DENOMINATOR[1:]:
        denominator = denominator * x2 + coefficient
    return numerator * x / denominator


@contextlib.contextmanager
def jax_erf_from_primitives():
    """On the JAX backend, `keras.ops.erf` is `erf_from_primitives` inside the block."""
    if keras.backend.backend() != "jax":
        yield
        return
    from keras.src.backend.jax import math as jax_math

    original = jax_math.erf
    jax_math.erf = erf_from_primitives
    try:
        yield
    finally:
        jax_math.erf = original


def image_spec(model, dtype="float32"):
    """The `keras.InputSpec` of a batch of RGB images for `model`, batch dynamic."""
    if dtype not in INPUT_DTYPES:
        raise ValueError(f"input_dtype must be one of {INPUT_DTYPES}, got {dtype!r}.")
    return keras.InputSpec(shape=(None,) + tuple(model.input_shape[1:]), dtype=dtype)


def write_saved_model(model, path):
    """A SavedModel with endpoints `serve` (float32 images) and `serve_uint8`."""
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    shape = (None,) + tuple(model.input_shape[1:])
    kwargs = {"is_static": True} if keras.backend.backend() == "jax" else {}
    # jax2tf traces when TensorFlow traces the endpoint, up to `write_out`.
    with jax_erf_from_primitives():
        serve = archive.track_and_add_endpoint(
            "serve", model, input_signature=[tf.TensorSpec(shape, tf.float32)], **kwargs
        )

        @tf.function(input_signature=[tf.TensorSpec(shape, tf.uint8)])
        def serve_uint8(images):
            return serve(tf.cast(images, tf.float32))

        archive.add_endpoint("serve_uint8", serve_uint8)
        archive.write_out(str(path), verbose=False)


def write_with_keras(model, path, format, input_dtype, **kwargs):
    """ONNX or LiteRT through `model.export`, one image input of `input_dtype`."""
    with jax_erf_from_primitives():
        model.export(
            str(path), format=format, verbose=False,
            input_signature=[image_spec(model, input_dtype)], **kwargs,
        )
