"""The official ImageNet-1k checkpoints, as data: one entry per variant that has one.

Each entry names where the checkpoint lives (its file name in the cache and one
or more origin URLs, tried in order), its sha256 when known, the preprocessing
it was evaluated with and its reported top-1 accuracy. Facts from the three
projects' READMEs and timm's pretrained configs (PiT's top-1 is the official
README's; timm's own measurement is `top1_timm`).

No sha256 is recorded yet: the origins (Google Drive, the Hugging Face hub)
were unreachable from where this table was written, and the files are not
fetched to pin them. Downloads are still checked: an HTML page or a truncated
file is refused, and the converted weights must fit the architecture key by
key and shape by shape.
"""

import dataclasses

#: Google Drive file ids from the official READMEs.
_DRIVE = "https://drive.usercontent.google.com/download?id={}&export=download&confirm=t"
_HF = "https://huggingface.co/{}/resolve/main/{}"

_HALF = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
_IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


@dataclasses.dataclass(frozen=True)
class Source:
    """One downloadable file: cache file name and origin URL."""

    filename: str
    url: str
    sha256: str = None


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """An official checkpoint of one registered variant."""

    variant: str
    sources: tuple
    mean: tuple
    std: tuple
    input_size: int
    crop_pct: float
    interpolation: str
    top1: float
    note: str = ""
    top1_timm: float = None

    @property
    def converted_filename(self):
        """The converted Keras weights' file name in the cache."""
        return f"{self.variant}.imagenet.weights.h5"


def _drive(variant, file_id):
    return Source(f"{variant}.official.pth", _DRIVE.format(file_id))


def _dvit(variant, file_id, top1, note):
    return Pretrained(
        variant, (_drive(variant, file_id),), input_size=224, crop_pct=0.9,
        interpolation="bicubic", top1=top1, note=note, **_HALF,
    )


def _pit(variant, file_id, top1, top1_timm):
    sources = (
        Source(f"{variant}.timm.safetensors", _HF.format(f"timm/{variant}_224.in1k", "model.safetensors")),
        _drive(variant, file_id),
    )
    return Pretrained(
        variant, sources, input_size=224, crop_pct=0.9, interpolation="bicubic",
        top1=top1, top1_timm=top1_timm, **_IMAGENET,
        note="timm's re-hosted copy first (safetensors), then the official Google Drive file",
    )


PRETRAINED = {
    entry.variant: entry
    for entry in (
        _dvit("deepvit_24", "1lPmKdNMPJq-mq-4FivqIY4JNAPoQHYxV", 79.99, "README row DeepViT-24 (FC)"),
        _dvit("deepvit_32", "1kUBrAbAQfMT5FQJprITRxDtOE6ECZM0M", 80.90, "README row DeepViT-32 (FC)"),
        _dvit("deepvit_s", "1evhBjla4Nth7LawW2PAXnGEcpv3YBWEC", 82.3,
              "README row DeepViT-16 (FC + BN, CNN stem); its parameter column does not match the code"),
        _dvit("deepvit_l", "1MTRm0NK_sPGRSyuD_hHJ1Zgw2diEaKLR", 83.1,
              "README row DeepViT-32 (FC + BN, CNN stem); its parameter column does not match the code"),
        Pretrained(
            "refiner_l_448", (_drive("refiner_l_448", "12v1WbxG6_mZQ0FYnXIhKiqbtg5bI4pGL"),),
            input_size=448, crop_pct=1.13, interpolation="bicubic", top1=86.0,
            note="the only Refiner-ViT checkpoint the official README links", **_HALF,
        ),
        _pit("pit_ti", "17BS8UamKhZBq_-0PfSls6U0Pp8Tmree0", 73.0, 72.93),
        _pit("pit_xs", "1F7x2owp7frFJoyojoF80L7yB-DA9jhmi", 78.1, 78.20),
        _pit("pit_s", "1shVYwAmYesWioca7NiDM2ESrZYEjZsaG", 80.9, 81.11),
        _pit("pit_b", "1whd2saHjELyj6ESdkXSD1x8mMMYrRGNV", 82.0, 82.46),
        _pit("pit_ti_distilled", "1dszOX9nvHcNuuY5a9_dUAYVxhQWcDK2c", 74.6, 74.28),
        _pit("pit_xs_distilled", "1C_C_F40-VEhk23xuvl2qwlocDHutOw30", 79.1, 79.17),
        _pit("pit_s_distilled", "15fQvnjii-vpsFk1iaF0TVIw4gyyGXc09", 81.9, 81.83),
        _pit("pit_b_distilled", "1JOk63pIj6OxW0R93TiIizcb5VIc-HNML", 84.0, 83.77),
    )
}

#: Variants whose checkpoints were reported but never published, and what to use instead.
UNPUBLISHED = {
    "deepvit_16": "the official README lists DeepViT-16 as 'coming soon'",
    "vit_16_baseline": "the official README lists the ViT baselines as 'coming soon'",
    "vit_24_baseline": "the official README lists the ViT baselines as 'coming soon'",
    "vit_32_baseline": "the official README lists the ViT baselines as 'coming soon'",
    "deepvit_l_384": "no 384 checkpoint is linked; create_model('deepvit_l', weights='imagenet', "
    "input_shape=(384, 384, 3)) resamples the 224 one for fine-tuning",
    "refiner_s": "Refiner-ViT-S results are reported without a checkpoint link",
    "refiner_s_384": "Refiner-ViT-S results are reported without a checkpoint link",
    "refiner_m": "Refiner-ViT-M results are reported without a checkpoint link",
    "refiner_m_384": "Refiner-ViT-M results are reported without a checkpoint link",
    "refiner_l": "only the 448 checkpoint is linked; create_model('refiner_l_448', "
    "weights='imagenet', input_shape=(224, 224, 3)) resamples it",
    "refiner_l_384": "only the 448 checkpoint is linked; create_model('refiner_l_448', "
    "weights='imagenet', input_shape=(384, 384, 3)) resamples it",
}


def pretrained_info(name):
    """The `Pretrained` entry of a variant, or a ValueError saying why there is none.

    Example:
    >>> pretrained_info("pit_s").top1
    80.9
    """
    if name in PRETRAINED:
        return PRETRAINED[name]
    reason = UNPUBLISHED.get(name, f"{name!r} is not a registered model")
    raise ValueError(
        f"No ImageNet weights for {name!r}: {reason}. Models with official weights: "
        f"{', '.join(sorted(PRETRAINED))}."
    )
