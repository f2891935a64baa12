"""`AdamW`: `keras.optimizers.AdamW` whose update is PyTorch's fused AdamW kernel on PyTorch.

Keras' PyTorch AdamW updates with a chain of out-of-place `torch._foreach_*`
ops: five temporaries the size of all the weights per step (`g * g`,
`sqrt(v)`, `+ eps`, `m * alpha`, the quotient). On a CPU that memory traffic made
the optimiser step about twice PyTorch's own (default) AdamW and a sizeable part
of a small-batch training step (docs/performance.md). `torch._fused_adamw_`
(`torch.optim.AdamW(fused=True)`) updates `m`, `v` and the weights in one pass.

The arithmetic is Keras' AdamW's, to float32 rounding: Keras applies the weight
decay (`v -= lr * wd * v`, its own `exclude_from_weight_decay` rules) before the
Adam step, so the kernel gets `weight_decay=0`; and Keras adds `eps` to
`sqrt(v)` before the bias correction where PyTorch adds it after, so the kernel
gets `eps / sqrt(1 - beta_2**t)`, which makes the two the same. On TensorFlow and
JAX, with `amsgrad`, inside `torch.compile` (`jit_compile=True`) or where the
kernel is missing, this is Keras' AdamW.

On PyTorch it also drops each weight's `.grad` once the update is applied. Keras'
PyTorch train step clears them only after its next forward pass (`zero_grad`
follows the model call), so a weights-sized set of stale gradients sat in memory
through every forward pass, where a step's memory peaks; PyTorch's own loop
(`zero_grad(set_to_none=True)` first) never holds them there.
"""

import keras

from keras_deepvit.models.gradient_release import release_gradients


@keras.saving.register_keras_serializable(package="keras_deepvit")
class AdamW(keras.optimizers.AdamW):
    """`keras.optimizers.AdamW`, updated by PyTorch's fused kernel on the PyTorch backend.

    Same arguments, config and results (to float32 rounding) as Keras' AdamW.

    Example:
    >>> import numpy as np
    >>> weights = keras.Variable(np.ones((2,), "float32"))
    >>> optimizer = AdamW(learning_rate=0.1, weight_decay=0.0)
    >>> optimizer.apply([keras.ops.convert_to_tensor(np.array([1.0, -1.0], "float32"))], [weights])
    >>> [round(float(w), 4) for w in keras.ops.convert_to_numpy(weights)]
    [0.9, 1.1]
    """

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if not self._uses_fused_kernel(trainable_variables):
            self._keras_update_step(grads, trainable_variables, learning_rate)
        else:
            self._fused_update_step(grads, trainable_variables, learning_rate)
        if keras.backend.backend() == "torch":
            release_gradients(trainable_variables)

    def _fused_update_step(self, grads, trainable_variables, learning_rate):
        import torch

        with torch.no_grad():
            variables = [v.value for v in trainable_variables]
            index = self._get_variable_index
            momentums = [self._momentums[index(v)].value for v in trainable_variables]
            velocities = [self._velocities[index(v)].value for v in trainable_variables]
            step = float(keras.ops.convert_to_numpy(self.iterations)) + 1.0
            steps = [torch.tensor(step, dtype=torch.float32, device=variables[0].device)] * len(variables)
            grads = [keras.ops.convert_to_tensor(g, dtype=v.dtype) for g, v in zip(grads, variables)]
            torch._fused_adamw_(
                variables, grads, momentums, velocities, [], steps,
                lr=float(keras.ops.convert_to_numpy(learning_rate)),
                beta1=float(self.beta_1), beta2=float(self.beta_2), weight_decay=0.0,
                eps=float(self.epsilon) / (1.0 - float(self.beta_2) ** step) ** 0.5,
                amsgrad=False, maximize=False,
            )

    def _uses_fused_kernel(self, trainable_variables):
        if keras.backend.backend() != "torch" or self.amsgrad or not trainable_variables:
            return False
        import torch

        if not hasattr(torch, "_fused_adamw_"):
            return False
        if torch.compiler.is_compiling():
            # `jit_compile=True` traces the whole train step: the kernel's in-place
            # update of the weights cannot be functionalized there (an internal
            # assertion of PyTorch's), while Keras' `_foreach` update compiles.
            return False
        dtypes = {keras.backend.standardize_dtype(v.dtype) for v in trainable_variables}
        return dtypes <= {"float32", "float16", "bfloat16"}

    def _keras_update_step(self, grads, trainable_variables, learning_rate):
        if keras.backend.backend() == "torch":
            # The class Keras itself picks for AdamW on PyTorch (its `foreach` form).
            import torch
            from keras.src.backend.torch.optimizers.torch_adam import Adam as TorchAdam

            with torch.no_grad():
                return TorchAdam._parallel_update_step(self, grads, trainable_variables, learning_rate)
        return super()._backend_update_step(grads, trainable_variables, learning_rate)
