"""`Dense`: `keras.layers.Dense` with a faster product under XLA and on PyTorch.

The same layer, weights and config as Keras' own; only the arithmetic's route
differs:

- the matmul of a `mixed_bfloat16` layer goes through `wide_matmul.matmul` (see
  there for why and where);
- on JAX, any other product over inputs of three or more axes (`batch x tokens x
  channels`) runs on the inputs flattened to rows, one 2-D matmul. Differentiated
  as a 3-D product, its kernel gradient is a `dot_general` contracting two axes of
  each operand, which XLA:CPU ran slower than the same contraction on 2-D rows
  (docs/performance.md, "Dense layers under JAX"). The bfloat16 wide product keeps
  its 3-D form, which is the faster one there;
- on the PyTorch backend the product and the bias are one
  `torch.nn.functional.linear` (one `addmm`, as in `torch.nn.Linear`), where
  Keras' `matmul` then `add` makes a second pass over the output and, in
  training, a second autograd node.

LoRA and quantized layers keep Keras' own path.
"""

import keras
from keras import ops

from keras_deepvit.layers import wide_matmul


@keras.saving.register_keras_serializable(package="keras_deepvit")
class Dense(keras.layers.Dense):
    """`keras.layers.Dense` with a faster product under XLA and on PyTorch (see the module).

    Example:
    >>> layer = Dense(4, dtype="mixed_bfloat16")
    >>> tuple(layer(keras.ops.ones((2, 3))).shape)
    (2, 4)
    """

    def call(self, inputs, training=None):
        if self.lora_enabled or self.quantization_mode is not None:
            return super().call(inputs, training=training)
        kernel = self.kernel
        if keras.backend.backend() == "torch":
            return self._torch_linear(inputs, kernel)
        if wide_matmul.bfloat16_pair(inputs, kernel):
            x = wide_matmul.matmul(inputs, kernel, bias=self.bias)
        elif keras.backend.backend() == "jax" and len(inputs.shape) > 2:
            x = matmul_over_rows(inputs, kernel, self.bias)
        else:
            return super().call(inputs, training=training)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def _torch_linear(self, inputs, kernel):
        import torch

        # Variables as tensors: inside `__call__` a mixed-precision layer's kernel is
        # read in its compute dtype.
        kernel = ops.convert_to_tensor(kernel)
        bias = None if self.bias is None else ops.convert_to_tensor(self.bias)
        x = torch.nn.functional.linear(ops.convert_to_tensor(inputs), kernel.T, bias)
        if self.activation is not None:
            x = self.activation(x)
        return x


def matmul_over_rows(inputs, kernel, bias=None):
    """`inputs @ kernel (+ bias)` computed as one 2-D product over `inputs`' rows.

    Args:
        inputs: `(..., in_features)`, any number of leading axes.
        kernel: `(in_features, out_features)`.
        bias: optional `(out_features,)`.

    Returns:
        `(..., out_features)`: the same values as `keras.ops.matmul(inputs, kernel)`
        (+ `bias`), up to the order of float32 summation.

    Example:
    >>> import numpy as np
    >>> out = matmul_over_rows(np.ones((2, 3, 4), "float32"), np.ones((4, 5), "float32"), np.ones(5, "float32"))
    >>> tuple(out.shape), float(keras.ops.convert_to_numpy(out)[1, 2, 4])
    ((2, 3, 5), 5.0)
    """
    inputs = ops.convert_to_tensor(inputs)
    leading = tuple(inputs.shape[:-1])
    rows = ops.matmul(ops.reshape(inputs, (-1, inputs.shape[-1])), kernel)
    if bias is not None:
        rows = ops.add(rows, bias)
    return ops.reshape(rows, leading + (rows.shape[-1],))
