"""Refiner-ViT (Zhou et al. 2021, "Refiner: Refining Self-attention for Vision
Transformers", arXiv 2106.03714): blocks alternate between computing attention
maps and re-using the previous maps after refining them (expansion + depthwise
convolution over the maps), with a dense token-labelling head.
"""

from types import SimpleNamespace

import keras
from keras import ops

from keras_deepvit.layers.blocks import RefinerBlock
from keras_deepvit.layers.refiner_attention import SHARED_EXPANSION_RATIO
from keras_deepvit.models import common, layout
from keras_deepvit.models.base import VisionTransformerFamily

#: Channels of Refiner-ViT's CNN patch stem (official `PatchEmbed_cnn`, after T2T-ViT).
REFINER_STEM_FILTERS = (32, 64, 128)
#: Residual scaling `a` of every official Refiner-ViT block.
REFINER_SCALE_ADJUSTMENT = 0.5
#: Weight of the dense head's max-pooled token logits in the eval output (official forward).
DENSE_HEAD_WEIGHT = 0.5


@keras.saving.register_keras_serializable(package="keras_deepvit")
class RefinerViT(VisionTransformerFamily):
    """Refiner-ViT family model: any depth, width, sharing and refinement pattern.

    Args:
        depth: int, number of blocks.
        embed_dim: int, token width.
        num_heads: int.
        mlp_ratio: float.
        share_attention: list of `depth` bools, or None for the official pattern
            (computing and sharing blocks alternate, starting with computing).
            Block 0 must compute.
        refine_attention: bool or list of `depth` bools: refine the fresh maps of
            computing blocks (no registered model does; shared blocks always
            refine the maps they re-use).
        head_expand: float, refiner expansion of refined computing blocks.
        stem: "cnn" (3 convolutions with BatchNorm, then a projection) or "patch".
        patch_size: int, total stride of the stem.
        qkv_bias: bool.
        dense_head: bool, add the token-labelling `aux_head`; the eval output is
            then `head(cls) + 0.5 * max over patch tokens of aux_head(tokens)`.
        separate_heads: bool; with `dense_head`, output a dict
            `{"logits", "cls_logits", "aux_logits"}` (aux logits per patch token,
            `(batch, patches, classes)`) for token-labelling training instead of
            the combined eval output alone. Activations apply to "logits" only.
        include_top, input_shape, input_tensor, pooling, classes,
        classifier_activation, include_preprocessing, dropout_rate,
        attention_dropout_rate, drop_path_rate, rematerialize_blocks, name: as `DeepViT`.

    Example:
    >>> import numpy as np
    >>> model = RefinerViT(depth=2, embed_dim=32, num_heads=4, input_shape=(32, 32, 3), classes=5)
    >>> model(np.zeros((1, 32, 32, 3), "float32")).shape
    (1, 5)
    """

    CLASSIFIER_KEYS = ("head", "aux_head")
    MEAN_STD = common.HALF_MEAN_STD

    def __init__(
        self,
        depth=16,
        embed_dim=384,
        num_heads=12,
        mlp_ratio=3.0,
        share_attention=None,
        refine_attention=False,
        head_expand=3,
        stem="cnn",
        patch_size=16,
        qkv_bias=True,
        dense_head=True,
        separate_heads=False,
        include_top=True,
        input_shape=None,
        input_tensor=None,
        pooling=None,
        classes=1000,
        classifier_activation="softmax",
        include_preprocessing=True,
        dropout_rate=0.0,
        attention_dropout_rate=0.0,
        drop_path_rate=0.0,
        rematerialize_blocks=False,
        name="refiner_vit",
        **kwargs,
    ):
        self._check_kwargs(kwargs)
        common.validate_application_args(name, include_top, pooling, classes, classifier_activation)
        common.validate_vit_args(
            name, depth=depth, embed_dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio,
            patch_size=patch_size, dropout_rate=dropout_rate,
            attention_dropout_rate=attention_dropout_rate, drop_path_rate=drop_path_rate,
        )
        common.positive_number(name, "head_expand", head_expand)
        if share_attention is None:
            shared = [i % 2 == 1 for i in range(depth)]
        else:
            shared = common.per_block_flags(name, "share_attention", share_attention, depth)
        if shared and shared[0]:
            raise ValueError(f"{name}: block 0 has no previous maps to share; share_attention[0] must be False.")
        refined = common.per_block_flags(name, "refine_attention", refine_attention, depth)
        inputs, image_shape = common.image_input(name, input_shape, input_tensor, 224)
        common.validate_image(
            name, image_shape, include_preprocessing,
            common.vit_patch_grid(name, stem, patch_size, image_shape), patch_size,
        )
        dtype = kwargs.get("dtype")

        ns = SimpleNamespace()
        ns.preprocessing = common.preprocessing(include_preprocessing, self.MEAN_STD, dtype)
        common.add_vit_embedding(
            ns, name, stem, REFINER_STEM_FILTERS, embed_dim, patch_size, dropout_rate, dtype
        )
        rates = common.drop_path_rates(drop_path_rate, depth)
        ns.blocks = [
            RefinerBlock(
                num_heads, share_attention=shared[i],
                refine_attention=refined[i] and not shared[i],
                expansion_ratio=SHARED_EXPANSION_RATIO if shared[i] else head_expand,
                scale_adjustment=REFINER_SCALE_ADJUSTMENT, mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias, drop_path_rate=rates[i], dropout=dropout_rate,
                attention_dropout=attention_dropout_rate, name=f"blocks_{i}", dtype=dtype,
                rematerialize=rematerialize_blocks,
            )
            for i in range(depth)
        ]
        ns.norm = common.final_norm(dtype)
        ns.head = common.classifier(classes, "head", dtype) if include_top else None
        ns.aux_head = common.classifier(classes, "aux_head", dtype) if include_top and dense_head else None
        ns.predictions = common.activation(classifier_activation) if include_top else None
        ns.include_top = include_top
        ns.pooling = pooling
        ns.separate_heads = separate_heads

        config = dict(
            depth=depth, embed_dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio,
            share_attention=share_attention, refine_attention=refine_attention,
            head_expand=head_expand, stem=stem, patch_size=patch_size, qkv_bias=qkv_bias,
            dense_head=dense_head, separate_heads=separate_heads, include_top=include_top,
            input_shape=image_shape, pooling=pooling, classes=classes,
            classifier_activation=classifier_activation,
            include_preprocessing=include_preprocessing, dropout_rate=dropout_rate,
            attention_dropout_rate=attention_dropout_rate, drop_path_rate=drop_path_rate,
            rematerialize_blocks=rematerialize_blocks,
        )
        self._finish_init(inputs, ns, config, name, **kwargs)

    def checkpoint_layout(self):
        return layout.vit_entries(self)

    @staticmethod
    def trace(layers, inputs, return_attention_maps=False):
        x = common.vit_tokens(layers, inputs)
        previous, maps = None, []
        for block in layers.blocks:
            if return_attention_maps:
                x, previous, used = block(x, previous, return_attention_scores=True)
                maps.append(used)
            else:
                x, previous = block(x, previous)
        x = layers.norm(x)
        maps = maps if return_attention_maps else None
        if not layers.include_top:
            return common.pool_tokens(x, layers.pooling, 1), maps
        cls_logits = layers.head(x[:, 0])
        if layers.aux_head is None:
            logits, aux_logits = cls_logits, None
        else:
            aux_logits = layers.aux_head(x[:, 1:])
            logits = cls_logits + DENSE_HEAD_WEIGHT * ops.max(aux_logits, axis=1)
        if layers.predictions is not None:
            logits = layers.predictions(logits)
        if layers.separate_heads and aux_logits is not None:
            return {"logits": logits, "cls_logits": cls_logits, "aux_logits": aux_logits}, maps
        return logits, maps
