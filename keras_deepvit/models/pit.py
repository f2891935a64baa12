"""PiT (Heo et al. 2021, "Rethinking Spatial Dimensions of Vision Transformers",
arXiv 2103.16302): stages of transformer blocks separated by pooling layers that
halve the token grid and widen the channels, like a CNN.
"""

from types import SimpleNamespace

import keras
from keras import ops

from keras_deepvit.layers.blocks import TransformerBlock
from keras_deepvit.layers.embeddings import ClassTokens, ConvPatchEmbedding, PositionEmbedding
from keras_deepvit.layers.pooling import ConvHeadPooling
from keras_deepvit.models import common, layout
from keras_deepvit.models.base import VisionTransformerFamily


@keras.saving.register_keras_serializable(package="keras_deepvit")
class PiT(VisionTransformerFamily):
    """PiT family model: any stage widths, depths, heads, patch size and stride.

    Stage `s` has width `base_dims[s] * heads[s]`. The patch embedding is one
    convolution (kernel `patch_size`, stride `stride`, no padding) followed by a
    learned 2-D position embedding; class (and distillation) tokens are joined
    to the spatial tokens in every stage and pooled by a dense layer between
    stages; the final LayerNorm applies to the class tokens.

    Args:
        patch_size: int, patch convolution kernel.
        stride: int, patch convolution stride.
        base_dims: list of ints, per-stage head width.
        depth: list of ints, blocks per stage.
        heads: list of ints, heads per stage.
        mlp_ratio: float.
        distilled: bool, add a distillation token and `head_dist`; the eval output
            is the mean of both heads.
        separate_heads: bool; with `distilled`, output a dict
            `{"logits", "cls_logits", "dist_logits"}` for distillation training.
            Activations apply to "logits" only.
        include_top: bool.
        input_shape, input_tensor, classes, classifier_activation,
        include_preprocessing (ImageNet mean/std), dropout_rate,
        attention_dropout_rate, drop_path_rate, rematerialize_blocks, name: as `DeepViT`
            (stochastic depth grows as `rate * i / total_blocks`, official rule).
        pooling: with `include_top=False`: "token" (normed class token; mean of the
            two tokens if distilled), "avg" (mean of the last stage's spatial
            tokens, normed) or None (the last stage's normed feature map,
            `(batch, h, w, channels)`).

    Example:
    >>> import numpy as np
    >>> model = PiT(base_dims=(8, 8), depth=(1, 1), heads=(2, 4), input_shape=(64, 64, 3), classes=5)
    >>> model(np.zeros((1, 64, 64, 3), "float32")).shape
    (1, 5)
    """

    CLASSIFIER_KEYS = ("head", "head_dist")
    POSITION_EMBEDDING = "map"
    MEAN_STD = common.IMAGENET_MEAN_STD

    def __init__(
        self,
        patch_size=16,
        stride=8,
        base_dims=(48, 48, 48),
        depth=(2, 6, 4),
        heads=(3, 6, 12),
        mlp_ratio=4.0,
        distilled=False,
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
        name="pit",
        **kwargs,
    ):
        self._check_kwargs(kwargs)
        common.validate_application_args(name, include_top, pooling, classes, classifier_activation)
        depth = common.positive_ints(name, "depth", depth)
        base_dims = common.positive_ints(
            name, "base_dims", common.validate_list(name, "base_dims", base_dims, len(depth))
        )
        heads = common.positive_ints(name, "heads", common.validate_list(name, "heads", heads, len(depth)))
        common.positive_int(name, "patch_size", patch_size)
        common.positive_int(name, "stride", stride)
        common.positive_number(name, "mlp_ratio", mlp_ratio)
        common.validate_rates(
            name, dropout_rate=dropout_rate, attention_dropout_rate=attention_dropout_rate,
            drop_path_rate=drop_path_rate,
        )
        widths = [b * h for b, h in zip(base_dims, heads)]
        for s in range(1, len(widths)):
            if widths[s] % widths[s - 1]:
                raise ValueError(
                    f"{name}: stage widths {widths} must each be a multiple of the previous "
                    "(the pooling is a depthwise convolution with a channel multiplier)."
                )
        inputs, image_shape = common.image_input(name, input_shape, input_tensor, 224)
        grid = [
            None if side is None else (side - patch_size) // stride + 1 if side >= patch_size else 0
            for side in image_shape[:2]
        ]
        common.validate_image(name, image_shape, include_preprocessing, grid, patch_size)
        dtype = kwargs.get("dtype")
        total = sum(depth)

        ns = SimpleNamespace()
        ns.preprocessing = common.preprocessing(include_preprocessing, self.MEAN_STD, dtype)
        ns.patch_embed = ConvPatchEmbedding(widths[0], patch_size, stride, name="patch_embed", dtype=dtype)
        ns.pos_embed = PositionEmbedding(name="pos_embed", dtype=dtype)
        ns.pos_drop = keras.layers.Dropout(dropout_rate, name="pos_drop", dtype=dtype)
        ns.cls_token = ClassTokens(2 if distilled else 1, name="cls_token", dtype=dtype)
        ns.stages, ns.pools, index = [], [], 0
        for s, stage_depth in enumerate(depth):
            ns.stages.append(
                [
                    TransformerBlock(
                        heads[s], mlp_ratio=mlp_ratio, qkv_bias=True,
                        drop_path_rate=drop_path_rate * (index + j) / total,
                        dropout=dropout_rate, attention_dropout=attention_dropout_rate,
                        name=f"transformers_{s}_blocks_{j}", dtype=dtype,
                        rematerialize=rematerialize_blocks, initializer="torch_default",
                    )
                    for j in range(stage_depth)
                ]
            )
            index += stage_depth
            if s + 1 < len(depth):
                ns.pools.append(ConvHeadPooling(widths[s + 1], name=f"pools_{s}", dtype=dtype))
        ns.norm = common.final_norm(dtype)
        # PiT's `_init_weights` resets LayerNorms only: its linears keep PyTorch's default.
        head_init = dict(initializer="torch_default", input_dim=widths[-1])
        ns.head = common.classifier(classes, "head", dtype, **head_init) if include_top else None
        ns.head_dist = (
            common.classifier(classes, "head_dist", dtype, **head_init)
            if include_top and distilled else None
        )
        ns.predictions = common.activation(classifier_activation) if include_top else None
        ns.include_top = include_top
        ns.pooling = pooling
        ns.separate_heads = separate_heads
        ns.num_tokens = 2 if distilled else 1

        config = dict(
            patch_size=patch_size, stride=stride, base_dims=base_dims, depth=depth, heads=heads,
            mlp_ratio=mlp_ratio, distilled=distilled, separate_heads=separate_heads,
            include_top=include_top, input_shape=image_shape, pooling=pooling, classes=classes,
            classifier_activation=classifier_activation,
            include_preprocessing=include_preprocessing, dropout_rate=dropout_rate,
            attention_dropout_rate=attention_dropout_rate, drop_path_rate=drop_path_rate,
            rematerialize_blocks=rematerialize_blocks,
        )
        self._finish_init(inputs, ns, config, name, **kwargs)

    def checkpoint_layout(self):
        """Official `naver-ai/pit` key names (`pools.{i}` for the poolings)."""
        entries = [
            ("pos_embed", self.pos_embed.embedding, layout.MAP_NCHW),
            ("cls_token", self.cls_token.tokens, layout.IDENTITY),
        ]
        entries += layout.layer_entries("patch_embed.conv", self.patch_embed.conv)
        for s, stage in enumerate(self.stages):
            for j, block in enumerate(stage):
                entries += layout.block_entries(f"transformers.{s}.blocks.{j}", block)
        for i, pool in enumerate(self.pools):
            entries += layout.layer_entries(f"pools.{i}.conv", pool.conv)
            entries += layout.layer_entries(f"pools.{i}.fc", pool.fc)
        entries += layout.layer_entries("norm", self.norm)
        return entries + layout.head_entries(self)

    @staticmethod
    def trace(layers, inputs, return_attention_maps=False):
        x = layers.preprocessing(inputs) if layers.preprocessing is not None else inputs
        fmap = layers.pos_drop(layers.pos_embed(layers.patch_embed(x)))
        tokens, maps = None, []
        last_queries = common.last_block_queries(
            layers.include_top, layers.pooling, layers.num_tokens, return_attention_maps
        )
        for s, stage in enumerate(layers.stages):
            height, width, channels = fmap.shape[1], fmap.shape[2], fmap.shape[3]
            spatial = ops.reshape(fmap, (-1, height * width, channels))
            if tokens is None:
                x = layers.cls_token(spatial)
            else:
                x = ops.concatenate([tokens, spatial], axis=1)
            for j, block in enumerate(stage):
                last = s == len(layers.stages) - 1 and j == len(stage) - 1
                if return_attention_maps:
                    x, attention = block(x, return_attention_scores=True)
                    maps.append(attention)
                elif last and last_queries is not None:
                    x = block(x, query_tokens=last_queries)
                else:
                    x = block(x)
            tokens = x[:, : layers.num_tokens]
            if x.shape[1] > layers.num_tokens:  # else the last block returned only the tokens
                fmap = ops.reshape(x[:, layers.num_tokens :], (-1, height, width, channels))
            if s < len(layers.pools):
                fmap, tokens = layers.pools[s](fmap, tokens)
        maps = maps if return_attention_maps else None
        if not layers.include_top:
            if layers.pooling == "token":
                return ops.mean(layers.norm(tokens), axis=1), maps
            if layers.pooling == "avg":
                return layers.norm(ops.mean(fmap, axis=(1, 2))), maps
            return layers.norm(fmap), maps
        tokens = layers.norm(tokens)
        cls_logits = layers.head(tokens[:, 0])
        if layers.head_dist is None:
            logits, dist_logits = cls_logits, None
        else:
            dist_logits = layers.head_dist(tokens[:, 1])
            logits = (cls_logits + dist_logits) / 2
        if layers.predictions is not None:
            logits = layers.predictions(logits)
        if layers.separate_heads and dist_logits is not None:
            return {"logits": logits, "cls_logits": cls_logits, "dist_logits": dist_logits}, maps
        return logits, maps
