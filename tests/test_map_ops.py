"""The attention-map operations and the BatchNorm folds equal the plain Keras layers
they stand for, on every backend (each backend takes its own code path)."""

import doctest

import keras
import numpy as np
import pytest
from keras import ops

from helpers import compiled, gradients, rel_l2, to_numpy
from keras_deepvit.layers import map_ops, remat, torch_like
from keras_deepvit.layers.re_attention import ReAttention
from keras_deepvit.layers.refiner_attention import DistributedLocalAttention

RNG = np.random.default_rng(0)


def randomize_batch_norms(layer, seed=1):
    rng = np.random.default_rng(seed)
    for variable in layer.weights:
        if "moving_variance" in variable.path:
            variable.assign(rng.uniform(0.5, 2.0, variable.shape).astype("float32"))
        elif any(name in variable.path for name in ("moving_mean", "beta", "gamma", "bias")):
            variable.assign(rng.normal(0, 0.5, variable.shape).astype("float32"))


@pytest.mark.parametrize("module", [map_ops, remat, torch_like])
def test_docstring_examples(module):
    assert doctest.testmod(module).failed == 0


@pytest.mark.parametrize("stride,multiplier,size", [(2, 2, 9), (2, 1, 8), (1, 3, 7)])
def test_depthwise_conv_valid_equals_the_keras_layer(stride, multiplier, size):
    images = RNG.normal(size=(2, size, size, 4)).astype("float32")
    layer = keras.layers.DepthwiseConv2D(3, strides=stride, depth_multiplier=multiplier, use_bias=False)
    expected = to_numpy(layer(images))
    actual = to_numpy(map_ops.depthwise_conv_valid(images, layer.kernel, strides=stride))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
    channels_first = to_numpy(
        map_ops.depthwise_conv_valid(
            images.transpose(0, 3, 1, 2), layer.kernel, strides=stride, data_format="channels_first"
        )
    )
    np.testing.assert_allclose(channels_first.transpose(0, 2, 3, 1), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [3, 5])
def test_depthwise_conv_channels_first_pads_symmetrically(size):
    maps = RNG.normal(size=(2, 3, 6, 6)).astype("float32")
    layer = keras.layers.DepthwiseConv2D(size, padding="same", use_bias=False)
    expected = to_numpy(layer(maps.transpose(0, 2, 3, 1))).transpose(0, 3, 1, 2)
    actual = to_numpy(map_ops.depthwise_conv_channels_first(maps, layer.kernel))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
    bias = RNG.normal(size=(3,)).astype("float32")
    actual = to_numpy(map_ops.depthwise_conv_channels_first(maps, layer.kernel, bias=bias))
    np.testing.assert_allclose(actual, expected + bias[None, :, None, None], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="square odd kernel"):
        map_ops.depthwise_conv_channels_first(maps, np.zeros((2, 2, 3, 1), "float32"))


@pytest.mark.parametrize("size", [3, 5])
def test_depthwise_conv_channels_first_gradients_equal_the_keras_layers(size):
    # XLA backends write this gradient out (see `_same_depthwise_shifted_sum`);
    # PyTorch differentiates its own convolution. Both must match Keras' layer.
    rng = np.random.default_rng(size)
    maps = keras.Variable(rng.normal(size=(2, 3, 7, 6)).astype("float32"))
    kernel = keras.Variable(rng.normal(size=(size, size, 3, 1)).astype("float32"))
    cotangent = ops.convert_to_tensor(rng.normal(size=(2, 3, 7, 6)).astype("float32"))

    def ours():
        out = map_ops.depthwise_conv_channels_first(maps.value, kernel.value)
        return ops.sum(out * cotangent)

    def keras_layer():
        channels_last = ops.transpose(maps.value, (0, 2, 3, 1))
        out = ops.depthwise_conv(channels_last, kernel.value, padding="same")
        return ops.sum(ops.transpose(out, (0, 3, 1, 2)) * cotangent)

    (value, grads), (expected_value, expected_grads) = (
        gradients(ours, [maps, kernel]), gradients(keras_layer, [maps, kernel])
    )
    np.testing.assert_allclose(value, expected_value, rtol=1e-5)
    for grad, expected_grad in zip(grads, expected_grads):
        assert grad.shape == expected_grad.shape
        np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    "size,kernel,strides",
    [
        ((13, 13), (7, 7), (2, 2)),  # the CNN stems' first convolution
        ((9, 8), (3, 3), (1, 1)),  # their 3x3 convolutions
        ((20, 19), (8, 8), (8, 8)),  # a patchify projection; the remainder is dropped
        ((40, 24), (16, 16), (8, 8)),  # PiT's overlapping patches
        ((9, 10), (3, 2), (2, 3)),
    ],
)
@pytest.mark.parametrize("differentiated", [False, True])
def test_conv_valid_equals_keras_conv_with_its_gradients(size, kernel, strides, differentiated):
    images = keras.Variable(RNG.normal(size=(2,) + size + (3,)).astype("float32"))
    weights = keras.Variable(RNG.normal(size=kernel + (3, 5)).astype("float32"))
    expected = to_numpy(ops.conv(images, weights, strides=strides, padding="valid"))
    cotangent = ops.convert_to_tensor(RNG.normal(size=expected.shape).astype("float32"))

    def loss(conv):
        return lambda: ops.sum(ops.multiply(conv(images.value, weights.value), cotangent))

    ours = lambda x, w: map_ops.conv_valid(x, w, strides, differentiated=differentiated)  # noqa: E731
    keras_conv = lambda x, w: ops.conv(x, w, strides=strides, padding="valid")  # noqa: E731
    actual = to_numpy(compiled(ours)(images.value, weights.value))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-4)
    (value, grads), (expected_value, expected_grads) = (
        gradients(loss(ours), [images, weights]), gradients(loss(keras_conv), [images, weights])
    )
    # A sum of signed terms: it can land near zero, where only an absolute bound holds
    # (the module's RNG gives each test other values depending on the order xdist runs them).
    np.testing.assert_allclose(value, expected_value, rtol=1e-5, atol=1e-3)
    for grad, expected_grad in zip(grads, expected_grads):
        np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kernel, strides", [((16, 16), (8, 8)), ((4, 4), (4, 4)), ((3, 3), (1, 1))])
@pytest.mark.parametrize("differentiated", [False, True])
def test_conv_valid_adds_its_bias_with_the_bias_gradient(kernel, strides, differentiated):
    images = keras.Variable(RNG.normal(size=(2, 24, 24, 3)).astype("float32"))
    weights = keras.Variable(RNG.normal(size=kernel + (3, 5)).astype("float32"))
    bias = keras.Variable(RNG.normal(size=(5,)).astype("float32"))
    cotangent = None

    def ours(x, w, b):
        return map_ops.conv_valid(x, w, strides, differentiated=differentiated, padding=1, bias=b)

    def reference(x, w, b):
        return map_ops.conv_valid(x, w, strides, differentiated=differentiated, padding=1) + b

    expected = to_numpy(reference(images.value, weights.value, bias.value))
    np.testing.assert_allclose(
        to_numpy(compiled(ours)(images.value, weights.value, bias.value)), expected, rtol=1e-5, atol=1e-4
    )
    cotangent = ops.convert_to_tensor(RNG.normal(size=expected.shape).astype("float32"))

    def loss(conv):
        return lambda: ops.sum(conv(images.value, weights.value, bias.value) * cotangent)

    _, grads = gradients(loss(ours), [images, weights, bias])
    _, expected_grads = gradients(loss(reference), [images, weights, bias])
    for grad, expected_grad in zip(grads, expected_grads):
        np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kernel, strides, padding", [((7, 7), 2, 3), ((3, 3), 1, 1)])  # the CNN stems'
@pytest.mark.parametrize("differentiated", [False, True])
def test_conv_valid_padding_equals_the_convolution_of_padded_images(kernel, strides, padding, differentiated):
    images = keras.Variable(RNG.normal(size=(2, 12, 11, 3)).astype("float32"))
    weights = keras.Variable(RNG.normal(size=kernel + (3, 4)).astype("float32"))

    def padded_first(x, w):
        x = ops.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
        return ops.conv(x, w, strides=strides, padding="valid")

    def ours(x, w):
        return map_ops.conv_valid(x, w, strides, differentiated=differentiated, padding=padding)

    expected = to_numpy(padded_first(images.value, weights.value))
    cotangent = ops.convert_to_tensor(RNG.normal(size=expected.shape).astype("float32"))
    np.testing.assert_allclose(to_numpy(compiled(ours)(images.value, weights.value)), expected, rtol=1e-5, atol=1e-4)

    def loss(conv):
        return lambda: ops.sum(conv(images.value, weights.value) * cotangent)

    (_, grads), (_, expected_grads) = gradients(loss(ours), [images, weights]), gradients(loss(padded_first), [images, weights])
    for grad, expected_grad in zip(grads, expected_grads):
        np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-4)


def test_conv_valid_is_the_backend_convolution_off_xla_cpu(monkeypatch):
    # With an accelerator, XLA's own convolution (cuDNN) is used even in a training
    # step: the im2col form is for XLA:CPU only. Same op, so the same bits.
    monkeypatch.setattr(map_ops, "xla_on_cpu", lambda: False)
    images = RNG.normal(size=(2, 9, 10, 3)).astype("float32")
    weights = RNG.normal(size=(3, 3, 3, 5)).astype("float32")
    expected = to_numpy(ops.conv(images, weights, strides=(2, 2), padding="valid"))
    actual = to_numpy(map_ops.conv_valid(images, weights, 2, differentiated=True))
    if keras.backend.backend() == "torch":  # a contiguous NCHW copy: close, not bitwise
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
    else:
        np.testing.assert_array_equal(actual, expected)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX's own code path")
def test_conv_valid_trained_on_jax_cpu_keeps_xla_convolution_and_the_images_only():
    # The forward pass is XLA's convolution (no im2col patches built), and what the
    # backward pass keeps is the images and the kernel, not the nine-times-larger
    # patches: the residuals of `jax.vjp` are exactly those two arrays.
    import jax

    if not map_ops.xla_on_cpu():
        pytest.skip("the written-out gradients are XLA:CPU's form")
    images = RNG.normal(size=(2, 12, 12, 4)).astype("float32")
    weights = RNG.normal(size=(3, 3, 4, 6)).astype("float32")

    def convolve(x, w):
        return map_ops.conv_valid(x, w, 1, differentiated=True, padding=1)

    primitives = {str(eqn.primitive) for eqn in jax.make_jaxpr(convolve)(images, weights).eqns}
    assert "concatenate" not in primitives
    forward = jax.make_jaxpr(lambda x, w: jax.vjp(convolve, x, w)[0])(images, weights)
    assert "conv_general_dilated" in str(forward)
    _, backward = jax.vjp(convolve, images, weights)
    kept = [leaf for leaf in jax.tree_util.tree_leaves(backward) if hasattr(leaf, "shape")]
    patch_floats = 2 * 12 * 12 * 9 * 4
    assert kept and all(int(np.prod(leaf.shape)) < patch_floats for leaf in kept)
    assert any(tuple(leaf.shape) == (2, 14, 14, 4) for leaf in kept)  # the padded images


def test_mix_channels_is_a_1x1_convolution():
    maps = RNG.normal(size=(2, 3, 5, 5)).astype("float32")
    kernel = RNG.normal(size=(3, 7)).astype("float32")
    expected = np.einsum("bcqk,cd->bdqk", maps, kernel)
    np.testing.assert_allclose(to_numpy(map_ops.mix_channels(maps, kernel)), expected, rtol=1e-5, atol=1e-5)
    bias = RNG.normal(size=(1, 7, 1, 1)).astype("float32")
    residual = RNG.normal(size=(2, 7, 5, 5)).astype("float32")
    for addend in (bias, residual):
        actual = to_numpy(map_ops.mix_channels(maps, kernel, addend=addend))
        np.testing.assert_allclose(actual, expected + addend, rtol=1e-5, atol=1e-5)


def test_batch_norm_fold_equals_inference_batch_norm():
    layer = torch_like.torch_batch_norm("bn", axis=1)
    layer.build((None, 4, None, None))
    randomize_batch_norms(layer)
    x = RNG.normal(size=(2, 4, 3, 3)).astype("float32")
    bias = RNG.normal(size=(4,)).astype("float32")
    scale, shift = torch_like.batch_norm_fold(layer, bias=bias)
    folded = x * to_numpy(scale)[:, None, None] + to_numpy(shift)[:, None, None]
    expected = to_numpy(layer(x + bias[:, None, None], training=False))
    np.testing.assert_allclose(folded, expected, rtol=1e-5, atol=1e-5)


def test_refiner_fold_equals_the_unfolded_layers():
    """Inference DLA (BatchNorms folded, maps channels-first) against the same
    sublayers run one by one in Keras' channels-last layout."""
    layer = DistributedLocalAttention(expansion_ratio=2)
    maps = RNG.uniform(size=(2, 3, 7, 7)).astype("float32")
    layer.build(maps.shape)
    randomize_batch_norms(layer)
    x = maps.transpose(0, 2, 3, 1)
    bn = lambda norm, value: to_numpy(norm(value.transpose(0, 3, 1, 2), training=False)).transpose(0, 2, 3, 1)  # noqa: E731
    h = np.clip(bn(layer.bn1, to_numpy(layer.conv_exp(x))), 0, 6)
    h = np.clip(bn(layer.bn2, to_numpy(layer.depth_sep_conv(h))), 0, 6)
    expected = (bn(layer.bn3, to_numpy(layer.conv_pro(h))) + x).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(to_numpy(layer(maps, training=False)), expected, rtol=1e-5, atol=1e-5)
    # A following per-head affine map folds in too.
    scale, shift = np.array([0.5, 2.0, -1.0], "float32"), np.array([0.1, 0.0, 0.3], "float32")
    folded = to_numpy(layer.refine_folded(maps, output_scale=scale, output_shift=shift))
    np.testing.assert_allclose(
        folded, expected * scale[:, None, None] + shift[:, None, None], rtol=1e-5, atol=1e-5
    )


def test_re_attention_fold_equals_mix_then_batch_norm():
    layer = ReAttention(num_heads=4, transform_scale=True)
    layer.build((None, 5, 16))
    randomize_batch_norms(layer)
    maps = RNG.uniform(size=(2, 4, 5, 5)).astype("float32")
    kernel, bias = to_numpy(layer.reatten_kernel), to_numpy(layer.reatten_bias)
    mixed = np.einsum("bhqk,gh->bgqk", maps, kernel) + bias[:, None, None]
    expected = to_numpy(layer.var_norm(mixed, training=False)) * layer.scale
    actual = to_numpy(layer.transform_attention(ops.convert_to_tensor(maps), training=False))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("axis,shape", [(1, (3, 5, 6, 6)), (-1, (3, 6, 6, 5))])
def test_fused_training_batch_norm_equals_keras_batch_norm(axis, shape):
    """Outputs, gradients (inputs, gamma, beta) and moving statistics of a training call;
    PyTorch runs its fused kernel, the other backends Keras' own layer."""
    rng = np.random.default_rng(4)
    # A small variance, so an eps (1e-5) out of place in the moving variance would show.
    images = rng.normal(0.0, 0.02, shape).astype("float32")
    target = rng.normal(size=shape).astype("float32")
    channels = shape[axis]
    gamma, beta = rng.normal(1.0, 0.2, channels), rng.normal(0.0, 0.2, channels)
    results = []
    for layer in (
        torch_like.FusedTrainingBatchNormalization(axis=axis, epsilon=1e-5, momentum=0.9),
        keras.layers.BatchNormalization(axis=axis, epsilon=1e-5, momentum=0.9),
    ):
        layer.build(shape)
        layer.gamma.assign(gamma.astype("float32"))
        layer.beta.assign(beta.astype("float32"))
        layer.moving_variance.assign(np.zeros(channels, "float32"))  # moving = 0.1 x batch's
        inputs = keras.Variable(images)
        outputs = to_numpy(layer(inputs, training=True))
        moving = [to_numpy(layer.moving_mean), to_numpy(layer.moving_variance)]
        _, grads = gradients(
            lambda layer=layer, inputs=inputs: ops.sum(ops.multiply(layer(inputs, training=True), target)),
            [inputs, layer.gamma, layer.beta],
        )
        results.append((outputs, moving, grads))
    (fused, fused_moving, fused_grads), (plain, plain_moving, plain_grads) = results
    np.testing.assert_allclose(fused, plain, atol=2e-5)
    for a, b in zip(fused_moving, plain_moving):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-9)
    for a, b in zip(fused_grads, plain_grads):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="PyTorch's kernel; Keras' layer elsewhere")
def test_fused_training_batch_norm_takes_bfloat16_maps_without_a_float32_copy(monkeypatch):
    """Under mixed_bfloat16 the kernel gets the bfloat16 maps (its mixed-type form, float32
    statistics); outputs, gradients and moving statistics stay Keras' float32-copy ones to
    bfloat16 rounding."""
    import torch

    seen = []
    native = torch.native_batch_norm

    def spy(x, *args):
        seen.append(x.dtype)
        return native(x, *args)

    rng = np.random.default_rng(5)
    shape = (2, 6, 9, 9)
    images = rng.normal(0.5, 2.0, shape).astype("float32")
    target = rng.normal(size=shape).astype("float32")
    gamma, beta = rng.normal(1.0, 0.2, 6), rng.normal(0.0, 0.2, 6)
    results = []
    for make in (torch_like.FusedTrainingBatchNormalization, keras.layers.BatchNormalization):
        layer = make(axis=1, epsilon=1e-5, momentum=0.9, dtype="mixed_bfloat16")
        layer.build(shape)
        layer.gamma.assign(gamma.astype("float32"))
        layer.beta.assign(beta.astype("float32"))
        inputs = keras.Variable(images, dtype="bfloat16")
        monkeypatch.setattr(torch, "native_batch_norm", spy)
        outputs = layer(inputs, training=True)
        monkeypatch.setattr(torch, "native_batch_norm", native)
        assert keras.backend.standardize_dtype(outputs.dtype) == "bfloat16"
        moving = [to_numpy(layer.moving_mean), to_numpy(layer.moving_variance)]
        _, grads = gradients(
            lambda layer=layer, inputs=inputs: ops.sum(
                ops.cast(layer(inputs, training=True), "float32") * ops.convert_to_tensor(target)
            ),
            [inputs, layer.gamma, layer.beta],
        )
        results.append((to_numpy(ops.cast(outputs, "float32")), moving, grads))
    assert seen == [torch.bfloat16]  # the fused layer's call; Keras' layer never calls it
    (fused, fused_moving, fused_grads), (plain, plain_moving, plain_grads) = results
    np.testing.assert_allclose(fused, plain, rtol=1e-2, atol=1e-2)  # one bfloat16 rounding
    for a, b in zip(fused_moving, plain_moving):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(fused_grads, plain_grads):
        assert rel_l2(a.astype("float32"), b.astype("float32")) < 1e-2


def test_softmax_and_its_gradient_equal_keras_softmax():
    values = RNG.normal(size=(2, 3, 5, 7)).astype("float32") * 3
    logits = keras.Variable(values)
    upstream = RNG.normal(size=(2, 3, 5, 7)).astype("float32")

    def loss(softmax):
        return lambda: ops.sum(softmax(logits) * ops.convert_to_tensor(upstream))

    expected_loss, (expected,) = gradients(loss(lambda x: ops.softmax(x, axis=-1)), [logits])
    actual_loss, (actual,) = gradients(loss(map_ops.softmax), [logits])
    np.testing.assert_allclose(actual_loss, expected_loss, rtol=1e-6)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        to_numpy(map_ops.softmax(values)), to_numpy(ops.softmax(values, axis=-1)), atol=1e-7
    )


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_attention_softmax_is_the_float32_softmax_rounded_once(dtype):
    values = RNG.normal(size=(2, 3, 5, 7)).astype("float32") * 3
    logits = ops.cast(values, dtype)
    expected = ops.cast(ops.softmax(ops.cast(logits, "float32"), axis=-1), dtype)
    actual = map_ops.attention_softmax(logits)
    assert keras.backend.standardize_dtype(actual.dtype) == dtype
    np.testing.assert_array_equal(to_numpy(ops.cast(actual, "float32")), to_numpy(ops.cast(expected, "float32")))
    upstream = ops.cast(RNG.normal(size=values.shape).astype("float32"), dtype)
    variable = keras.Variable(logits, dtype=dtype)

    def loss(softmax):
        return lambda: ops.sum(ops.cast(softmax(variable) * upstream, "float32"))

    _, (expected_grad,) = gradients(
        loss(lambda x: ops.cast(map_ops.softmax(ops.cast(x, "float32")), dtype)), [variable]
    )
    _, (actual_grad,) = gradients(loss(map_ops.attention_softmax), [variable])
    # PyTorch's half kernel differentiates through the rounded probabilities: within an ulp.
    tolerance = {"float32": 1e-6, "float16": 2e-3, "bfloat16": 1.6e-2}[dtype]
    np.testing.assert_allclose(
        np.asarray(actual_grad, "float32"), np.asarray(expected_grad, "float32"), atol=tolerance
    )


def test_fused_attention_equals_explicit_attention_with_its_gradient():
    # Heads first as `split_heads` makes them: strided views of one `qkv` tensor.
    qkv_values = RNG.normal(size=(2, 7, 3, 2, 4)).astype("float32")
    qkv = keras.Variable(qkv_values)
    upstream = ops.convert_to_tensor(RNG.normal(size=(2, 2, 7, 4)).astype("float32"))
    scale = 4**-0.5

    def explicit(q, k, v):
        return ops.matmul(ops.softmax(ops.matmul(q, ops.swapaxes(k, -1, -2)) * scale, axis=-1), v)

    def loss(attention):
        return lambda: ops.sum(attention(*map_ops.unstack(ops.transpose(qkv, (2, 0, 3, 1, 4)))) * upstream)

    expected_loss, (expected,) = gradients(loss(explicit), [qkv])
    actual_loss, (actual,) = gradients(loss(lambda q, k, v: map_ops.fused_attention(q, k, v, scale)), [qkv])
    np.testing.assert_allclose(actual_loss, expected_loss, rtol=1e-5)
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)


def test_unstack_gives_the_slices_and_their_gradient():
    values = RNG.normal(size=(3, 2, 4, 5)).astype("float32")
    stacked = keras.Variable(values)
    weights = [RNG.normal(size=(2, 4, 5)).astype("float32") for _ in range(2)]

    def loss(split):
        # Two of the three slices: the unused one must get a zero gradient.
        return lambda: sum(
            ops.sum(part * ops.convert_to_tensor(w)) for part, w in zip(split(stacked)[1:], weights)
        )

    expected_loss, (expected,) = gradients(loss(lambda x: [x[i] for i in range(3)]), [stacked])
    actual_loss, (actual,) = gradients(loss(map_ops.unstack), [stacked])
    np.testing.assert_allclose(actual_loss, expected_loss, rtol=1e-6)
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(to_numpy(actual)[0], 0.0)
    for part, value in zip(map_ops.unstack(values), values):
        np.testing.assert_array_equal(to_numpy(part), value)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX's custom gradient of unstack")
def test_unstack_gradient_on_jax_is_one_stack_not_padded_copies():
    import jax

    def loss(x):
        q, k, v = map_ops.unstack(x)
        return (q * k * v).sum()

    program = str(jax.make_jaxpr(jax.grad(loss))(np.ones((3, 2, 4), "float32")))
    assert "concatenate" in program or "stack" in program
    assert " pad" not in program and "pad[" not in program
