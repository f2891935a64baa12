"""`Dense`: `keras.layers.Dense` with a faster product on XLA:CPU (bfloat16) and PyTorch.

The same layer, weights and config as Keras' own; only the arithmetic's route
differs:

- the matmul of a `mixed_bfloat16` layer goes through `wide_matmul.matmul` (see
  there for why and where);
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
    """`keras.layers.Dense` with a faster bfloat16 product on XLA:CPU.

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
        if not wide_matmul.bfloat16_pair(inputs, kernel):
            return super().call(inputs, training=training)
        x = wide_matmul.matmul(inputs, kernel, bias=self.bias)
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
