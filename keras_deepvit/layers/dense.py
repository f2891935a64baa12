"""`Dense`: `keras.layers.Dense` whose bfloat16 product accumulates in float32 on XLA:CPU.

The same layer, weights and config as Keras' own; only the matmul of a
`mixed_bfloat16` layer goes through `wide_matmul.matmul` (see there for why and
where). LoRA and quantized layers keep Keras' own path.
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
        if not wide_matmul.bfloat16_pair(inputs, kernel):
            return super().call(inputs, training=training)
        x = wide_matmul.matmul(inputs, kernel)
        if self.bias is not None:
            x = ops.add(x, self.bias)
        if self.activation is not None:
            x = self.activation(x)
        return x
