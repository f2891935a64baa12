"""The registered variants, as data: architecture, default input size, official source.

`params` is the official model's parameter count (trainable parameters; BatchNorm
running statistics are not parameters), checked against the official checkpoint
key manifests by the test suite. Resolution variants (`*_384`, `*_448`) differ
only in the position embedding's length.
"""

from keras_deepvit.models.deepvit import DeepViT
from keras_deepvit.models.pit import PiT
from keras_deepvit.models.refiner import RefinerViT

_DVIT = "zhoudaquan/dvit_repo"
_REFINER = "zhoudaquan/Refiner_ViT"
_PIT = "naver-ai/pit"


def _deepvit_patch(depth, re_attention=True):
    return dict(depth=depth, embed_dim=384, num_heads=12, mlp_ratio=3.0, re_attention=re_attention)


def _deepvit_cnn(embed_dim, depth, re_attention_last, transform_scale):
    return dict(
        depth=depth, embed_dim=embed_dim, num_heads=12, mlp_ratio=3.0,
        re_attention=[i >= depth - re_attention_last for i in range(depth)],
        transform_scale=transform_scale, scale_adjustment=0.5, stem="cnn",
    )


def _refiner(embed_dim, depth, num_heads, head_expand):
    return dict(
        depth=depth, embed_dim=embed_dim, num_heads=num_heads, mlp_ratio=3.0,
        head_expand=head_expand, stem="cnn", dense_head=True,
    )


_PIT_ARCHS = {
    "ti": dict(patch_size=16, stride=8, base_dims=[32, 32, 32], depth=[2, 6, 4], heads=[2, 4, 8]),
    "xs": dict(patch_size=16, stride=8, base_dims=[48, 48, 48], depth=[2, 6, 4], heads=[2, 4, 8]),
    "s": dict(patch_size=16, stride=8, base_dims=[48, 48, 48], depth=[2, 6, 4], heads=[3, 6, 12]),
    "b": dict(patch_size=14, stride=7, base_dims=[64, 64, 64], depth=[3, 6, 4], heads=[4, 8, 16]),
}

#: name -> family class, architecture arguments, default input size, official source, params.
VARIANTS = {
    "deepvit_16": dict(family=DeepViT, arch=_deepvit_patch(16), size=224,
                       source=f"{_DVIT} deepvit_patch16_224_re_attn_16b", params=24426664),
    "deepvit_24": dict(family=DeepViT, arch=_deepvit_patch(24), size=224,
                       source=f"{_DVIT} deepvit_patch16_224_re_attn_24b", params=36261448),
    "deepvit_32": dict(family=DeepViT, arch=_deepvit_patch(32), size=224,
                       source=f"{_DVIT} deepvit_patch16_224_re_attn_32b", params=48096232),
    "vit_16_baseline": dict(family=DeepViT, arch=_deepvit_patch(16, False), size=224,
                            source=f"{_DVIT} (paper's ViT-16 row: re-attention off)", params=24423784),
    "vit_24_baseline": dict(family=DeepViT, arch=_deepvit_patch(24, False), size=224,
                            source=f"{_DVIT} (paper's ViT-24 row: re-attention off)", params=36257128),
    "vit_32_baseline": dict(family=DeepViT, arch=_deepvit_patch(32, False), size=224,
                            source=f"{_DVIT} (paper's ViT-32 row: re-attention off)", params=48090472),
    "deepvit_s": dict(family=DeepViT, arch=_deepvit_cnn(396, 16, 5, True), size=224,
                      source=f"{_DVIT} deepvit_S", params=27312632),
    "deepvit_l": dict(family=DeepViT, arch=_deepvit_cnn(420, 32, 12, False), size=224,
                      source=f"{_DVIT} deepvit_L", params=58883708),
    "deepvit_l_384": dict(family=DeepViT, arch=_deepvit_cnn(420, 32, 12, False), size=384,
                          source=f"{_DVIT} deepvit_L_384", params=59043308),
    "refiner_s": dict(family=RefinerViT, arch=_refiner(384, 16, 12, 6), size=224,
                      source=f"{_REFINER} Refiner_ViT_S", params=25408656),
    "refiner_m": dict(family=RefinerViT, arch=_refiner(420, 32, 12, 3), size=224,
                      source=f"{_REFINER} Refiner_ViT_M", params=55450932),
    "refiner_l": dict(family=RefinerViT, arch=_refiner(512, 32, 16, 3), size=224,
                      source=f"{_REFINER} Refiner_ViT_L", params=81150192),
    "refiner_s_384": dict(family=RefinerViT, arch=_refiner(384, 16, 12, 6), size=384,
                          source=f"{_REFINER} Refiner_ViT_S(img_size=384)", params=25408656 + 380 * 384),
    "refiner_m_384": dict(family=RefinerViT, arch=_refiner(420, 32, 12, 3), size=384,
                          source=f"{_REFINER} Refiner_ViT_M(img_size=384)", params=55450932 + 380 * 420),
    "refiner_l_384": dict(family=RefinerViT, arch=_refiner(512, 32, 16, 3), size=384,
                          source=f"{_REFINER} Refiner_ViT_L(img_size=384)", params=81150192 + 380 * 512),
    "refiner_l_448": dict(family=RefinerViT, arch=_refiner(512, 32, 16, 3), size=448,
                          source=f"{_REFINER} Refiner_ViT_L(img_size=448)", params=81150192 + 588 * 512),
    "pit_ti": dict(family=PiT, arch=_PIT_ARCHS["ti"], size=224, source=f"{_PIT} pit_ti", params=4847272),
    "pit_xs": dict(family=PiT, arch=_PIT_ARCHS["xs"], size=224, source=f"{_PIT} pit_xs", params=10618888),
    "pit_s": dict(family=PiT, arch=_PIT_ARCHS["s"], size=224, source=f"{_PIT} pit_s", params=23461912),
    "pit_b": dict(family=PiT, arch=_PIT_ARCHS["b"], size=224, source=f"{_PIT} pit_b", params=73764840),
    "pit_ti_distilled": dict(family=PiT, arch=dict(_PIT_ARCHS["ti"], distilled=True), size=224,
                             source=f"{_PIT} pit_ti_distilled", params=5104336),
    "pit_xs_distilled": dict(family=PiT, arch=dict(_PIT_ARCHS["xs"], distilled=True), size=224,
                             source=f"{_PIT} pit_xs_distilled", params=11003984),
    "pit_s_distilled": dict(family=PiT, arch=dict(_PIT_ARCHS["s"], distilled=True), size=224,
                            source=f"{_PIT} pit_s_distilled", params=24039056),
    "pit_b_distilled": dict(family=PiT, arch=dict(_PIT_ARCHS["b"], distilled=True), size=224,
                            source=f"{_PIT} pit_b_distilled", params=74790096),
}
