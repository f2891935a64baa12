"""One record per registered variant: everything the package knows about it, as data.

A record holds the family class and its architecture arguments, the default
input size, the official parameter count and source, the paper, the input
normalisation and evaluation crop, and the official checkpoint's origins and
reported top-1 (or why there is none). `create_model`, the named
constructors, `preprocess_input`, `weights="imagenet"` and `looks_like` read
these records and nothing else (the timm `default_cfgs` / KerasHub presets
pattern).

Facts come from the three projects' READMEs and code and from timm's
pretrained configs. `params` counts the official model's trainable
parameters (BatchNorm running statistics are not parameters) and is checked
against the official key manifests by the test suite. No sha256 is pinned
yet: the origins (Google Drive, the Hugging Face hub) were unreachable from
where this table was written (`sha256=None` is the slot).
"""

import dataclasses
import types

from keras_deepvit.models.deepvit import DeepViT
from keras_deepvit.models.pit import PiT
from keras_deepvit.models.refiner import RefinerViT

_DVIT = "zhoudaquan/dvit_repo"
_REFINER = "zhoudaquan/Refiner_ViT"
_PIT = "naver-ai/pit"
_DRIVE = "https://drive.usercontent.google.com/download?id={}&export=download&confirm=t"
_HF = "https://huggingface.co/{}/resolve/main/{}"

PAPERS = {
    DeepViT: "DeepViT: Towards Deeper Vision Transformer (Zhou et al. 2021, arXiv 2103.11886)",
    RefinerViT: "Refiner: Refining Self-attention for Vision Transformers (Zhou et al. 2021, arXiv 2106.03714)",
    PiT: "Rethinking Spatial Dimensions of Vision Transformers (Heo et al. 2021, arXiv 2103.16302)",
}


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """One downloadable origin of an official checkpoint: cache file name, URL, sha256 slot."""

    filename: str
    url: str
    sha256: str = None


@dataclasses.dataclass(frozen=True)
class VariantRecord:
    """Everything about one registered variant (see the module docstring).

    `checkpoints` are the official weights' origins, tried in order; empty when
    none is published, and `weights_note` says why and what to use instead.
    """

    name: str
    family: type
    arch: types.MappingProxyType
    size: int
    params: int
    source: str
    mean: tuple
    std: tuple
    crop_pct: float
    interpolation: str = "bicubic"
    checkpoints: tuple = ()
    top1: float = None
    top1_timm: float = None
    weights_note: str = ""
    constructor: str = None

    @property
    def paper(self):
        return PAPERS[self.family]

    @property
    def family_name(self):
        """"deepvit", "refiner" or "pit"."""
        return {DeepViT: "deepvit", RefinerViT: "refiner", PiT: "pit"}[self.family]

    @property
    def has_weights(self):
        return bool(self.checkpoints)

    @property
    def preprocessing(self):
        """Mean, std, input size, crop_pct and interpolation the variant is evaluated with."""
        return dict(mean=self.mean, std=self.std, input_size=self.size,
                    crop_pct=self.crop_pct, interpolation=self.interpolation)


def _record(name, family, arch, size, params, source, **fields):
    mean, std = family.MEAN_STD  # the official code's normalisation, kept by the family
    fields.setdefault("crop_pct", 0.9 if size < 384 else 1.0)
    return VariantRecord(name=name, family=family, arch=types.MappingProxyType(dict(arch)),
                         size=size, params=params, source=source, mean=mean, std=std, **fields)


def _drive(name, file_id):
    return Checkpoint(f"{name}.official.pth", _DRIVE.format(file_id))


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
_BASELINES_SOON = "the official README lists the ViT baselines as 'coming soon'"
_REFINER_NO_LINK = "results are reported without a checkpoint link"
_REFINER_448_ONLY = ("only the 448 checkpoint is linked; create_model('refiner_l_448', "
                     "weights='imagenet', input_shape=({0}, {0}, 3)) resamples it")


def _deepvit(name, constructor, arch, size, params, source, file_id=None, top1=None, note=""):
    checkpoints = (_drive(name, file_id),) if file_id else ()
    return _record(name, DeepViT, arch, size, params, f"{_DVIT} {source}", checkpoints=checkpoints,
                   top1=top1, weights_note=note, constructor=constructor)


def _refiner_record(name, constructor, arch, size, params, source, note):
    return _record(name, RefinerViT, arch, size, params, f"{_REFINER} {source}",
                   weights_note=note, constructor=constructor)


def _pit(name, constructor, size_key, params, file_id, top1, top1_timm, distilled=False):
    arch = dict(_PIT_ARCHS[size_key], distilled=True) if distilled else _PIT_ARCHS[size_key]
    checkpoints = (
        Checkpoint(f"{name}.timm.safetensors", _HF.format(f"timm/{name}_224.in1k", "model.safetensors")),
        _drive(name, file_id),
    )
    return _record(
        name, PiT, arch, 224, params, f"{_PIT} {name}", checkpoints=checkpoints, top1=top1,
        top1_timm=top1_timm, constructor=constructor,
        weights_note="timm's re-hosted copy first (safetensors), then the official Google Drive file",
    )


_ALL = (
    _deepvit("deepvit_16", "DeepViT16", _deepvit_patch(16), 224, 24426664,
             "deepvit_patch16_224_re_attn_16b", note="the official README lists DeepViT-16 as 'coming soon'"),
    _deepvit("deepvit_24", "DeepViT24", _deepvit_patch(24), 224, 36261448,
             "deepvit_patch16_224_re_attn_24b", "1lPmKdNMPJq-mq-4FivqIY4JNAPoQHYxV", 79.99,
             "README row DeepViT-24 (FC)"),
    _deepvit("deepvit_32", "DeepViT32", _deepvit_patch(32), 224, 48096232,
             "deepvit_patch16_224_re_attn_32b", "1kUBrAbAQfMT5FQJprITRxDtOE6ECZM0M", 80.9,
             "README row DeepViT-32 (FC)"),
    _deepvit("vit_16_baseline", None, _deepvit_patch(16, False), 224, 24423784,
             "(paper's ViT-16 row: re-attention off)", note=_BASELINES_SOON),
    _deepvit("vit_24_baseline", None, _deepvit_patch(24, False), 224, 36257128,
             "(paper's ViT-24 row: re-attention off)", note=_BASELINES_SOON),
    _deepvit("vit_32_baseline", None, _deepvit_patch(32, False), 224, 48090472,
             "(paper's ViT-32 row: re-attention off)", note=_BASELINES_SOON),
    _deepvit("deepvit_s", "DeepViTS", _deepvit_cnn(396, 16, 5, True), 224, 27312632, "deepvit_S",
             "1evhBjla4Nth7LawW2PAXnGEcpv3YBWEC", 82.3,
             "README row DeepViT-16 (FC + BN, CNN stem); its parameter column does not match the code"),
    _deepvit("deepvit_l", "DeepViTL", _deepvit_cnn(420, 32, 12, False), 224, 58883708, "deepvit_L",
             "1MTRm0NK_sPGRSyuD_hHJ1Zgw2diEaKLR", 83.1,
             "README row DeepViT-32 (FC + BN, CNN stem); its parameter column does not match the code"),
    _deepvit("deepvit_l_384", "DeepViTL384", _deepvit_cnn(420, 32, 12, False), 384, 59043308,
             "deepvit_L_384",
             note="no 384 checkpoint is linked; create_model('deepvit_l', weights='imagenet', "
             "input_shape=(384, 384, 3)) resamples the 224 one for fine-tuning"),
    _refiner_record("refiner_s", "RefinerViTS", _refiner(384, 16, 12, 6), 224, 25408656,
                    "Refiner_ViT_S", f"Refiner-ViT-S {_REFINER_NO_LINK}"),
    _refiner_record("refiner_m", "RefinerViTM", _refiner(420, 32, 12, 3), 224, 55450932,
                    "Refiner_ViT_M", f"Refiner-ViT-M {_REFINER_NO_LINK}"),
    _refiner_record("refiner_l", "RefinerViTL", _refiner(512, 32, 16, 3), 224, 81150192,
                    "Refiner_ViT_L", _REFINER_448_ONLY.format(224)),
    _refiner_record("refiner_s_384", None, _refiner(384, 16, 12, 6), 384, 25408656 + 380 * 384,
                    "Refiner_ViT_S(img_size=384)", f"Refiner-ViT-S {_REFINER_NO_LINK}"),
    _refiner_record("refiner_m_384", None, _refiner(420, 32, 12, 3), 384, 55450932 + 380 * 420,
                    "Refiner_ViT_M(img_size=384)", f"Refiner-ViT-M {_REFINER_NO_LINK}"),
    _refiner_record("refiner_l_384", None, _refiner(512, 32, 16, 3), 384, 81150192 + 380 * 512,
                    "Refiner_ViT_L(img_size=384)", _REFINER_448_ONLY.format(384)),
    _record("refiner_l_448", RefinerViT, _refiner(512, 32, 16, 3), 448, 81150192 + 588 * 512,
            f"{_REFINER} Refiner_ViT_L(img_size=448)", crop_pct=1.13,
            checkpoints=(_drive("refiner_l_448", "12v1WbxG6_mZQ0FYnXIhKiqbtg5bI4pGL"),), top1=86.0,
            weights_note="the only Refiner-ViT checkpoint the official README links"),
    _pit("pit_ti", "PiTTi", "ti", 4847272, "17BS8UamKhZBq_-0PfSls6U0Pp8Tmree0", 73.0, 72.93),
    _pit("pit_xs", "PiTXS", "xs", 10618888, "1F7x2owp7frFJoyojoF80L7yB-DA9jhmi", 78.1, 78.20),
    _pit("pit_s", "PiTS", "s", 23461912, "1shVYwAmYesWioca7NiDM2ESrZYEjZsaG", 80.9, 81.11),
    _pit("pit_b", "PiTB", "b", 73764840, "1whd2saHjELyj6ESdkXSD1x8mMMYrRGNV", 82.0, 82.46),
    _pit("pit_ti_distilled", "PiTTiDistilled", "ti", 5104336, "1dszOX9nvHcNuuY5a9_dUAYVxhQWcDK2c",
         74.6, 74.28, distilled=True),
    _pit("pit_xs_distilled", "PiTXSDistilled", "xs", 11003984, "1C_C_F40-VEhk23xuvl2qwlocDHutOw30",
         79.1, 79.17, distilled=True),
    _pit("pit_s_distilled", "PiTSDistilled", "s", 24039056, "15fQvnjii-vpsFk1iaF0TVIw4gyyGXc09",
         81.9, 81.83, distilled=True),
    _pit("pit_b_distilled", "PiTBDistilled", "b", 74790096, "1JOk63pIj6OxW0R93TiIizcb5VIc-HNML",
         84.0, 83.77, distilled=True),
)

#: name -> VariantRecord, for every registered variant.
RECORDS = types.MappingProxyType({record.name: record for record in _ALL})
