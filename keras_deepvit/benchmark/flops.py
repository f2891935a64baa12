"""FLOPs per image, counted on our PyTorch reference models.

Method: `torch.utils.flop_counter.FlopCounterMode` runs the reference model
(`keras_deepvit.testing.torch_reference`, explicit attention) once at batch 1 on
the "meta" device (shapes only, no arithmetic) and adds up the FLOPs of every
matrix product and convolution: linear layers, `q k^T` and `attn v`, the stems,
PiT's pooling and Refiner-ViT's refiner convolutions, each counted as
2 x multiply-accumulates. Elementwise operations, softmax and normalisations are
not counted (they are memory-bound and small). PiT-S counts 2.87 GMACs, the
paper's 2.9 GFLOPs. A training step is counted as 3 x the forward pass (the
backward pass computes two products per forward product).
"""

#: Multiplier from forward FLOPs to the FLOPs of one training step.
TRAIN_FLOPS_FACTOR = 3


def reference_config(name, image_size=None):
    """The `torch_reference.build_reference` config of a registered variant name.

    Resolution variants (`*_384`, `*_448`) map to their base architecture and the
    `vit_*_baseline` rows to DeepViT with re-attention off.
    """
    from keras_deepvit.zoo.records import RECORDS
    from keras_deepvit.testing import torch_reference as ref

    if name not in RECORDS:
        raise ValueError(f"Unknown model {name!r}; see `keras-deepvit list`.")
    base = name
    for suffix in ("_384", "_448"):
        if base.endswith(suffix) and base not in ref.OFFICIAL_CONFIGS:
            base = base[: -len(suffix)]
    if base.startswith("vit_") and base.endswith("_baseline"):
        config = dict(ref.OFFICIAL_CONFIGS[base.replace("vit_", "deepvit_").replace("_baseline", "")])
        config["apply_transform"] = [False] * len(config["apply_transform"])
    else:
        config = dict(ref.OFFICIAL_CONFIGS[base])
    config["img_size"] = image_size or RECORDS[name].size
    return config


def forward_flops_per_image(name, image_size=None, num_classes=1000):
    """Forward-pass FLOPs (2 x MACs of products and convolutions) for one image.

    Example:
    >>> round(forward_flops_per_image("pit_s") / 2e9, 2)  # GMACs
    2.87
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from keras_deepvit.testing import torch_reference as ref

    config = reference_config(name, image_size)
    config["num_classes"] = num_classes
    height, width = (config["img_size"],) * 2 if isinstance(config["img_size"], int) else config["img_size"]
    with torch.device("meta"):
        model = ref.build_reference(config).eval()
        images = torch.empty(1, 3, height, width)
    counter = FlopCounterMode(display=False)
    with counter:
        model(images)
    return int(counter.get_total_flops())
