"""`wide_matmul.matmul` and `Dense`: bfloat16 products accumulated in float32 where the
machine runs them faster; the same values and gradients as Keras' own matmul, on every
backend, and the machine's answer measured once and cached."""

import json
import re

import keras
import numpy as np
import pytest
from keras import ops

from helpers import asked_while_tracing_for_xla, gradients, jaxpr_equations, xla_compiled_on_tensorflow
from keras_deepvit.layers import machine_facts, wide_matmul
from keras_deepvit.layers.dense import Dense

BACKEND = keras.backend.backend()


#: Backends with a wide form (TensorFlow's only inside functions XLA compiles).
WIDE_BACKENDS = ("jax", "tensorflow")


@pytest.fixture
def wide_path(monkeypatch):
    """Forces the wide form where the backend has one, whatever this machine prefers."""
    monkeypatch.setattr(
        wide_matmul, "prefers_wide_accumulator",
        lambda: BACKEND == "jax" or (BACKEND == "tensorflow" and wide_matmul._tensorflow_compiles_with_xla()),
    )


def _rounded(x):
    return np.asarray(ops.convert_to_numpy(ops.cast(ops.cast(x, "bfloat16"), "float32")))


def _gradients(function, *inputs):
    """Gradients of sum(function(*inputs) * weights) with respect to every input, as float32 numpy."""
    shape = ops.shape(function(*inputs))
    weights = ops.cast(np.linspace(-1, 1, int(np.prod(shape))).reshape(shape), "bfloat16")

    def loss(*args):
        return ops.sum(ops.cast(function(*args) * weights, "float32"))

    if BACKEND == "jax":
        import jax

        grads = jax.grad(loss, tuple(range(len(inputs))))(*inputs)
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        def tape_gradients(*args):
            with tf.GradientTape() as tape:
                tape.watch(args)
                value = loss(*args)
            return tape.gradient(value, args)

        grads = xla_compiled_on_tensorflow(tape_gradients)(*inputs)
    else:
        inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
        loss(*inputs).backward()
        grads = [t.grad for t in inputs]
    return [ops.convert_to_numpy(ops.cast(g, "float32")) for g in grads]


@pytest.mark.parametrize("b_shape", [(8, 5), (2, 3, 8, 5)], ids=["kernel", "batched"])
def test_values_and_gradients_equal_keras_matmul(wide_path, b_shape):
    rng = np.random.default_rng(0)
    a = ops.cast(rng.normal(size=(2, 3, 6, 8)), "bfloat16")
    b = ops.cast(rng.normal(size=b_shape), "bfloat16")
    actual = xla_compiled_on_tensorflow(wide_matmul.matmul)(a, b)
    assert keras.backend.standardize_dtype(actual.dtype) == "bfloat16"
    # The product of the bfloat16 inputs, accumulated in float32, rounded once.
    exact = _rounded(ops.matmul(ops.cast(a, "float32"), ops.cast(b, "float32")))
    np.testing.assert_allclose(_rounded(actual), exact, rtol=1e-2, atol=1e-2)
    ours = _gradients(wide_matmul.matmul, a, b)
    keras_own = _gradients(lambda p, q: ops.cast(ops.matmul(ops.cast(p, "float32"), ops.cast(q, "float32")), "bfloat16"), a, b)
    for mine, theirs in zip(ours, keras_own):
        assert mine.shape == theirs.shape
        np.testing.assert_allclose(mine, theirs, rtol=3e-2, atol=3e-2 * np.abs(theirs).max())


def test_bias_values_and_gradients_equal_the_float32_affine_map(wide_path):
    rng = np.random.default_rng(2)
    a = ops.cast(rng.normal(size=(2, 3, 6, 8)), "bfloat16")
    b = ops.cast(rng.normal(size=(8, 5)), "bfloat16")
    bias = ops.cast(rng.normal(size=(5,)), "bfloat16")

    def ours(p, q, c):
        return wide_matmul.matmul(p, q, bias=c)

    def keras_own(p, q, c):
        wide = ops.matmul(ops.cast(p, "float32"), ops.cast(q, "float32")) + ops.cast(c, "float32")
        return ops.cast(wide, "bfloat16")

    actual = xla_compiled_on_tensorflow(ours)(a, b, bias)
    assert keras.backend.standardize_dtype(actual.dtype) == "bfloat16"
    np.testing.assert_allclose(_rounded(actual), _rounded(keras_own(a, b, bias)), rtol=1e-2, atol=1e-2)
    for mine, theirs in zip(_gradients(ours, a, b, bias), _gradients(keras_own, a, b, bias)):
        assert mine.shape == theirs.shape
        np.testing.assert_allclose(mine, theirs, rtol=3e-2, atol=3e-2 * np.abs(theirs).max())


def test_jax_dense_gradient_keeps_bfloat16_products_and_sums_its_bias_in_float32(wide_path):
    if BACKEND != "jax":
        pytest.skip("the JAX form of the wide product's gradient")
    import jax

    layer = Dense(12, dtype="mixed_bfloat16")
    layer.build((2, 6, 8))
    values = [variable.value for variable in layer.trainable_variables]
    x = ops.cast(np.random.default_rng(3).normal(size=(2, 6, 8)), "bfloat16")

    def loss(values, x):
        with keras.StatelessScope(state_mapping=list(zip(layer.trainable_variables, values))):
            return ops.sum(ops.cast(layer(x), "float32") ** 2)

    gradient = jax.grad(loss, argnums=(0, 1))
    # The bias gradient sums the bfloat16 upstream in float32: a bfloat16 sum is what
    # XLA:CPU rewrote into a slow windowed reduction.
    sums = [e for e in jaxpr_equations(jax.make_jaxpr(gradient)(values, x).jaxpr) if e.primitive.name == "reduce_sum"]
    assert sums and all(e.invars[0].aval.dtype != np.dtype("bfloat16") for e in sums)
    # Forward, input and kernel gradient: three products, each of bfloat16 operands (the
    # kernel gradient contracted as a 2-D product ran on float32 copies).
    text = jax.jit(gradient).lower(values, x).compile().as_text()
    types = dict(re.findall(r"%([\w.\-]+) = (\w+)\[", text))
    products = re.findall(r"\sdot\(%([\w.\-]+), %([\w.\-]+)\)", text)
    assert len(products) == 3
    assert all(types[lhs] == types[rhs] == "bf16" for lhs, rhs in products), products


def test_float32_dense_over_tokens_matches_keras_dense_values_and_gradients():
    ours = Dense(6, activation="relu")
    theirs = keras.layers.Dense(6, activation="relu")
    x = np.random.default_rng(4).normal(size=(2, 5, 4)).astype("float32")
    ours.build(x.shape)
    theirs.build(x.shape)
    theirs.set_weights(ours.get_weights())
    np.testing.assert_allclose(
        ops.convert_to_numpy(ours(x)), ops.convert_to_numpy(theirs(x)), rtol=1e-6, atol=1e-6
    )
    upstream = np.random.default_rng(5).normal(size=(2, 5, 6)).astype("float32")
    inputs = keras.Variable(x)

    def input_and_weight_gradients(layer):
        def loss():
            return ops.sum(ops.multiply(layer(inputs.value), upstream))

        return gradients(loss, [inputs] + layer.trainable_variables)[1]

    for got, want in zip(input_and_weight_gradients(ours), input_and_weight_gradients(theirs)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_jax_float32_dense_over_tokens_differentiates_two_dimensional_products():
    if BACKEND != "jax":
        pytest.skip("the JAX form of a float32 Dense over tokens")
    import jax

    layer = Dense(12)
    layer.build((2, 6, 8))
    values = [variable.value for variable in layer.trainable_variables]
    x = np.random.default_rng(6).normal(size=(2, 6, 8)).astype("float32")

    def loss(values, x):
        with keras.StatelessScope(state_mapping=list(zip(layer.trainable_variables, values))):
            return ops.sum(layer(x) ** 2)

    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(values, x).jaxpr
    products = [e for e in jaxpr_equations(jaxpr) if e.primitive.name == "dot_general"]
    # Forward, input gradient, kernel gradient: each a product of 2-D operands (the 3-D
    # product's kernel gradient contracts two axes of each operand; XLA:CPU ran that slower).
    assert len(products) == 3
    assert all(len(v.aval.shape) == 2 for e in products for v in e.invars), [
        [v.aval.shape for v in e.invars] for e in products
    ]


def test_float32_inputs_take_keras_matmul_unchanged():
    a = np.ones((2, 3), "float32")
    b = np.ones((3, 4), "float32")
    out = wide_matmul.matmul(a, b)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    np.testing.assert_array_equal(ops.convert_to_numpy(out), np.full((2, 4), 3.0))


def test_dense_matches_keras_dense_and_round_trips(wide_path):
    ours = Dense(6, activation="gelu", dtype="mixed_bfloat16")
    theirs = keras.layers.Dense(6, activation="gelu", dtype="mixed_bfloat16")
    x = np.random.default_rng(1).normal(size=(2, 5, 4)).astype("float32")
    ours.build(x.shape)
    theirs.build(x.shape)
    theirs.set_weights(ours.get_weights())
    np.testing.assert_allclose(
        ops.convert_to_numpy(ops.cast(xla_compiled_on_tensorflow(ours)(x), "float32")),
        ops.convert_to_numpy(ops.cast(theirs(x), "float32")), rtol=2e-2, atol=2e-2,
    )
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(ours))
    assert type(clone) is Dense and clone.get_config() == ours.get_config()


def test_preference_is_measured_once_and_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    wide_matmul._measured_preference.cache_clear()
    calls = []
    monkeypatch.setattr(wide_matmul, "_time_both_forms", lambda backend: calls.append(backend) or (2.0, 1.0))
    try:
        if BACKEND == "tensorflow":
            # Eager and graph-mode TensorFlow keep Keras' matmul without a probe.
            assert wide_matmul.prefers_wide_accumulator() is False and not calls
        answer = asked_while_tracing_for_xla(wide_matmul.prefers_wide_accumulator)
        if BACKEND not in WIDE_BACKENDS:
            assert answer is False and not calls  # PyTorch's bfloat16 GEMM is wide already
            return
        if machine_facts.has_gpu(BACKEND):
            pytest.skip("GPUs keep keras.ops.matmul; the probe runs on CPUs only")
        assert answer is True and calls == [BACKEND]
        facts = json.loads((tmp_path / "keras_deepvit" / "machine_facts.json").read_text())
        (key, entry), = facts.items()
        assert key == machine_facts.framework_key(BACKEND)
        assert entry == {"bfloat16_out_s": 2.0, "float32_out_s": 1.0, "wide": True}
        wide_matmul._measured_preference.cache_clear()  # a new process reads the file
        assert asked_while_tracing_for_xla(wide_matmul.prefers_wide_accumulator) is True
        assert calls == [BACKEND]
    finally:
        wide_matmul._measured_preference.cache_clear()



def test_a_broken_cache_file_is_measured_again(monkeypatch, tmp_path):
    if BACKEND not in WIDE_BACKENDS:
        pytest.skip("the PyTorch backend has no probe (tested above)")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    (tmp_path / "keras_deepvit").mkdir()
    (tmp_path / "keras_deepvit" / "machine_facts.json").write_text("{half a fi")
    wide_matmul._measured_preference.cache_clear()
    monkeypatch.setattr(wide_matmul, "_time_both_forms", lambda backend: (1.0, 2.0))
    try:
        assert wide_matmul._measured_preference(BACKEND) is False
        assert json.loads((tmp_path / "keras_deepvit" / "machine_facts.json").read_text())
    finally:
        wide_matmul._measured_preference.cache_clear()


def test_the_real_probe_times_both_forms():
    if BACKEND not in WIDE_BACKENDS:
        pytest.skip("the PyTorch backend has no probe")
    narrow, wide = wide_matmul._time_both_forms(BACKEND)
    assert narrow > 0 and wide > 0


def test_tensorflow_takes_the_wide_product_only_under_xla(wide_path):
    if BACKEND != "tensorflow":
        pytest.skip("TensorFlow's choice between its compiled and graph functions")
    import tensorflow as tf

    a, b = tf.ones((2, 4, 8), tf.bfloat16), tf.ones((8, 3), tf.bfloat16)

    def wide_products(jit_compile):
        graph = tf.function(wide_matmul.matmul, jit_compile=jit_compile).get_concrete_function(a, b).graph
        return [op for op in graph.get_operations() if op.type == "BatchMatMulV3" and op.get_attr("Tout") == tf.float32]

    assert wide_products(jit_compile=True)
    assert not wide_products(jit_compile=False)
