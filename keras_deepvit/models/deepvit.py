"""DeepViT (Zhou et al. 2021, "DeepViT: Towards Deeper Vision Transformer",
arXiv 2103.11886): a ViT whose blocks can re-attend (mix the heads' maps) to
avoid attention collapse in deep models.

Read top to bottom: the family model (every architecture argument), then the
registered variants as data in `keras_deepvit.models.variants`.
"""

from types import SimpleNamespace

import keras

from keras_deepvit.layers.blocks import ReAttentionBlock
from keras_deepvit.models import common, layout
from keras_deepvit.models.base import VisionTransformerFamily

#: Channels of DeepViT's CNN patch stem (official `PatchEmbed_CNN`).
DEEPVIT_STEM_FILTERS = (64, 64)


@keras.saving.register_keras_serializable(package="keras_deepvit")
class DeepViT(VisionTransformerFamily):
    """DeepViT family model: any depth, width, re-attention pattern and stem.

    Every block is a `ReAttentionBlock`; `re_attention` says which blocks mix
    their heads' maps (the others are plain self-attention). With
    `re_attention=False` everywhere this is the paper's ViT baseline.

    Args:
        depth: int, number of blocks.
        embed_dim: int, token width.
        num_heads: int.
        mlp_ratio: float, MLP hidden width over `embed_dim`.
        re_attention: bool, or a list of `depth` bools: which blocks re-attend.
        transform_scale: bool, multiply re-attention maps by `head_dim**-0.5`.
        scale_adjustment: float, the block's residual scaling `a`
            (`x + f(LN(a x)) / a`); 1.0 (DeepViT-16/24/32) or 0.5 (S, L).
        stem: "patch" (one 16x16 conv) or "cnn" (7x7/s2 + 3x3 convs with
            BatchNorm, then an 8x8 projection).
        patch_size: int, total stride of the stem.
        qkv_bias: bool.
        include_top: bool, end with the classifier.
        input_shape: (height, width, 3); any size whose patch grid is non-empty.
        input_tensor: optional Keras tensor to build the model on (not part of
            the saved config).
        pooling: with `include_top=False`: "token" (normed class token), "avg"
            (mean of normed patch tokens) or None (all normed tokens,
            `(batch, 1 + patches, embed_dim)`).
        classes: int, classifier width.
        classifier_activation: activation of the classifier output, or None
            for logits.
        include_preprocessing: bool; True takes RGB in [0, 255] and applies the
            official normalisation (mean = std = 0.5), False takes normalised input.
        dropout_rate, attention_dropout_rate, drop_path_rate: regularisation
            (stochastic depth grows linearly from 0 to `drop_path_rate`).
        rematerialize_blocks: bool, recompute each block's activations in the
            backward pass instead of storing them (`keras_deepvit.layers.remat`):
            training memory no longer holds every block's attention maps, for
            about one more forward pass per step. Inference is unchanged.
        name: model name.

    Example:
    >>> import numpy as np
    >>> model = DeepViT(depth=2, embed_dim=32, num_heads=4, input_shape=(32, 32, 3), classes=5)
    >>> model(np.zeros((1, 32, 32, 3), "float32")).shape
    (1, 5)
    """

    #: Input normalisation of the official code (mean, std), applied by `include_preprocessing`.
    MEAN_STD = common.HALF_MEAN_STD

    def __init__(
        self,
        depth=16,
        embed_dim=384,
        num_heads=12,
        mlp_ratio=3.0,
        re_attention=True,
        transform_scale=False,
        scale_adjustment=1.0,
        stem="patch",
        patch_size=16,
        qkv_bias=True,
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
        name="deepvit",
        **kwargs,
    ):
        self._check_kwargs(kwargs)
        common.validate_application_args(name, include_top, pooling, classes, classifier_activation)
        common.validate_vit_args(
            name, depth=depth, embed_dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio,
            patch_size=patch_size, dropout_rate=dropout_rate,
            attention_dropout_rate=attention_dropout_rate, drop_path_rate=drop_path_rate,
        )
        flags = common.per_block_flags(name, "re_attention", re_attention, depth)
        inputs, image_shape = common.image_input(name, input_shape, input_tensor, 224)
        common.validate_image(
            name, image_shape, include_preprocessing,
            common.vit_patch_grid(name, stem, patch_size, image_shape), patch_size,
        )
        dtype = kwargs.get("dtype")

        ns = SimpleNamespace()
        ns.preprocessing = common.preprocessing(include_preprocessing, self.MEAN_STD, dtype)
        common.add_vit_embedding(
            ns, name, stem, DEEPVIT_STEM_FILTERS, embed_dim, patch_size, dropout_rate, dtype
        )
        rates = common.drop_path_rates(drop_path_rate, depth)
        ns.blocks = [
            ReAttentionBlock(
                num_heads, apply_transform=flags[i], transform_scale=transform_scale,
                mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, scale_adjustment=scale_adjustment,
                drop_path_rate=rates[i], dropout=dropout_rate,
                attention_dropout=attention_dropout_rate, name=f"blocks_{i}", dtype=dtype,
                rematerialize=rematerialize_blocks,
            )
            for i in range(depth)
        ]
        ns.norm = common.final_norm(dtype)
        ns.head = common.classifier(classes, "head", dtype) if include_top else None
        ns.predictions = common.activation(classifier_activation) if include_top else None
        ns.include_top = include_top
        ns.pooling = pooling

        config = dict(
            depth=depth, embed_dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio,
            re_attention=re_attention, transform_scale=transform_scale,
            scale_adjustment=scale_adjustment, stem=stem, patch_size=patch_size,
            qkv_bias=qkv_bias, include_top=include_top, input_shape=image_shape,
            pooling=pooling, classes=classes, classifier_activation=classifier_activation,
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
        maps = []
        last_queries = common.last_block_queries(
            layers.include_top, layers.pooling, 1, return_attention_maps
        )
        for i, block in enumerate(layers.blocks):
            if return_attention_maps:
                x, attention = block(x, return_attention_scores=True)
                maps.append(attention)
            elif i == len(layers.blocks) - 1 and last_queries is not None:
                x = block(x, query_tokens=last_queries)
            else:
                x = block(x)
        x = layers.norm(x)
        if layers.include_top:
            x = layers.head(x[:, 0])
            if layers.predictions is not None:
                x = layers.predictions(x)
        else:
            x = common.pool_tokens(x, layers.pooling, 1)
        return x, (maps if return_attention_maps else None)
