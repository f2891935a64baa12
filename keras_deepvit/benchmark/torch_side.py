"""The PyTorch contestants: our reference modules (`keras_deepvit.testing.torch_reference`).

Variants:

- "eager": the official code's computation (explicit `softmax(q k^T) v`);
- "sdpa": eager, plain attention through `F.scaled_dot_product_attention`
  (PiT, DeepViT blocks without re-attention; absent for Refiner-ViT, whose
  blocks all need their maps);
- "compile": `torch.compile` (default mode) of the "sdpa" model (of "eager" for
  Refiner-ViT).

Inference runs under `torch.inference_mode()` in eval mode; a training step is
`zero_grad`, forward in train mode, cross-entropy, `backward`, `AdamW.step`
(the same optimiser settings as the Keras side). Mixed precision uses
`torch.autocast` (and a `GradScaler` for float16).
"""

import numpy as np

from keras_deepvit.benchmark.keras_side import LEARNING_RATE, WEIGHT_DECAY

TORCH_VARIANTS = ("eager", "sdpa", "compile")


def has_plain_attention(config):
    """Whether the reference has plain-attention blocks that SDPA can fuse."""
    if config["family"] == "pit":
        return True
    if config["family"] == "deepvit":
        return not all(config["apply_transform"])
    return False


def reference_model(name, image_size, seed=0, classes=1000):
    """Our PyTorch reference of `name` with random weights and BatchNorm statistics."""
    from keras_deepvit.benchmark.flops import reference_config
    from keras_deepvit.testing import torch_reference as ref

    config = reference_config(name, image_size)
    config["num_classes"] = classes
    return config, ref.randomize_(ref.build_reference(config), seed=seed)


def torch_device():
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class TorchContestant:
    """One reference module run one way; `step()` runs one synchronous batch.

    Args:
        config: the reference config (see `reference_model`).
        state: the reference's `state_dict()` (torch tensors) to load.
        variant: "eager", "sdpa" or "compile".
        mode: "infer" or "train".
        images: `(batch, size, size, 3)` float32 numpy (transposed to NCHW here).
        labels: `(batch,)` int numpy.
        dtype: "float32", "mixed_float16" or "mixed_bfloat16".
    """

    def __init__(self, config, state, variant, mode, images, labels, dtype="float32"):
        import torch

        from keras_deepvit.testing import torch_reference as ref

        self.label = f"torch-{variant}"
        self.mode = mode
        self.device = torch_device()
        fused = variant in ("sdpa", "compile") and has_plain_attention(config)
        overrides = {"fused_attention": True} if fused else {}
        module = ref.build_reference(config, **overrides)
        module.load_state_dict(state)
        module.to(self.device)
        module.train(mode == "train")
        self.module = module
        self.forward = torch.compile(module) if variant == "compile" else module
        self.images = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(self.device)
        self.labels = torch.from_numpy(labels.astype(np.int64)).to(self.device)
        self.autocast_dtype = {"mixed_float16": torch.float16, "mixed_bfloat16": torch.bfloat16}.get(dtype)
        self.scaler = None
        if mode == "train":
            self.optimizer = torch.optim.AdamW(
                module.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY
            )
            if self.autocast_dtype == torch.float16:
                self.scaler = torch.amp.GradScaler(self.device)

    def _autocast(self):
        import contextlib

        import torch

        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device, dtype=self.autocast_dtype)

    def _sync(self):
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()

    def step(self):
        import torch
        import torch.nn.functional as F

        if self.mode == "infer":
            with torch.inference_mode(), self._autocast():
                out = self.forward(self.images)
            self._sync()
            return out
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            loss = F.cross_entropy(self.forward(self.images).float(), self.labels)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self._sync()
        return loss

    def logits(self):
        import torch

        with torch.inference_mode(), self._autocast():
            return self.forward(self.images).float().cpu().numpy()
