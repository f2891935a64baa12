"""Plain-PyTorch reference models for DeepViT, Refiner-ViT and PiT.

These are small, independent re-implementations written for testing the Keras
port. They are *not* copies of the official repositories; what they share with
them is the numerical behaviour in eval mode and, exactly, the ``state_dict``
key names, key order and tensor shapes of the official checkpoints:

* DeepViT      -- ``zhoudaquan/dvit_repo`` ``DeepVisionTransformer``
* Refiner-ViT  -- ``zhoudaquan/Refiner_ViT`` ``Refiner_ViT``
* PiT          -- ``naver-ai/pit`` ``PoolingTransformer`` /
                  ``DistilledPoolingTransformer`` (``naming="official"``) and
                  timm's ``PoolingVisionTransformer`` (``naming="timm"``).

A test typically builds a reference model, calls :func:`randomize_`, hands
:func:`state_dict_numpy` to the Keras port and compares eval-mode logits.
Only what eval-mode inference needs is implemented: there is no dropout,
drop-path or Refiner token mixing, and ``forward`` behaves the same in train
and eval mode except for BatchNorm.

``fused_attention=True`` (DeepViT and PiT) computes plain attention -- blocks
without re-attention, every PiT block -- with
``torch.nn.functional.scaled_dot_product_attention`` instead of the official
explicit ``softmax(q k^T) v``: the same function up to float32 rounding, and
PyTorch's fused kernel (flash / memory-efficient attention where available).
The default, False, is the official code's numerics; the benchmark compares
against both.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# All three code bases build their LayerNorms as partial(nn.LayerNorm, eps=1e-6).
LN_EPS = 1e-6

ImgSize = Union[int, Sequence[int]]


def _pair(size: ImgSize) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


# ---------------------------------------------------------------------------
# Shared building blocks
# ---------------------------------------------------------------------------


class Mlp(nn.Module):
    """``fc2(gelu(fc1(x)))`` with the exact (erf) GELU."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _split_heads(t: torch.Tensor, parts: int, num_heads: int) -> torch.Tensor:
    """(B, N, parts*C) -> (parts, B, heads, N, head_dim)."""
    batch, tokens, channels = t.shape
    head_dim = channels // (parts * num_heads)
    return t.reshape(batch, tokens, parts, num_heads, head_dim).permute(2, 0, 3, 1, 4)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Fused ``softmax(q k^T * scale) v`` on (B, heads, N, head_dim) tensors."""
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


def _merge_heads(t: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, head_dim) -> (B, N, heads*head_dim)."""
    batch, heads, tokens, head_dim = t.shape
    return t.transpose(1, 2).reshape(batch, tokens, heads * head_dim)


class PlainPatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` convolution (``patch_embed.proj``)."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class CNNPatchEmbed(nn.Module):
    """Conv-BN-ReLU stem followed by a ``patch//2`` projection.

    The first conv has stride 2, so the projection only needs half the patch
    size. ``widths`` is ``(64, 64)`` for DeepViT and ``(32, 64, 128)`` for
    Refiner-ViT; the first conv is 7x7/s2/p3 and the others 3x3/s1/p1, all
    without bias (the BN that follows carries it).
    """

    def __init__(self, patch_size: int, embed_dim: int, widths: Sequence[int],
                 in_chans: int = 3):
        super().__init__()
        self.num_convs = len(widths)
        prev = in_chans
        for i, width in enumerate(widths, start=1):
            kernel, stride, padding = (7, 2, 3) if i == 1 else (3, 1, 1)
            self.add_module(f"conv{i}", nn.Conv2d(prev, width, kernel, stride, padding,
                                                  bias=False))
            self.add_module(f"bn{i}", nn.BatchNorm2d(width))
            prev = width
        self.proj = nn.Conv2d(prev, embed_dim, patch_size // 2, stride=patch_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, self.num_convs + 1):
            x = F.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
        return self.proj(x)


class _TokenViT(nn.Module):
    """Shared plumbing of DeepViT and Refiner-ViT: stem, cls token, pos embed."""

    def _init_embeddings(self, img_size: ImgSize, patch_size: int, embed_dim: int,
                         stem: nn.Module) -> None:
        self.img_size = _pair(img_size)
        self.grid_size = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        num_patches = self.grid_size[0] * self.grid_size[1]
        # Parameters registered on the model itself come first in state_dict,
        # in registration order: cls_token, then pos_embed (official order).
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + num_patches, embed_dim))
        self.patch_embed = stem

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, D), row-major
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1) + self.pos_embed


# ---------------------------------------------------------------------------
# DeepViT
# ---------------------------------------------------------------------------


class ReAttention(nn.Module):
    """Multi-head self-attention with optional DeepViT re-attention.

    Re-attention mixes the heads of the softmaxed map with a 1x1 conv (heads as
    channels), normalises it with BatchNorm and rescales it by
    ``reatten_scale``.
    """

    def __init__(self, dim: int, num_heads: int, apply_transform: bool,
                 transform_scale: bool, fused_attention: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.apply_transform = apply_transform
        self.fused_attention = fused_attention and not apply_transform
        if apply_transform:
            # Registered before qkv to reproduce the official key order.
            self.reatten_matrix = nn.Conv2d(num_heads, num_heads, 1)
            self.var_norm = nn.BatchNorm2d(num_heads)
            self.reatten_scale = self.scale if transform_scale else 1.0
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Output and the maps that multiplied ``v`` (None on the fused path)."""
        q, k, v = _split_heads(self.qkv(x), 3, self.num_heads)
        if self.fused_attention:
            return self.proj(_merge_heads(_sdpa(q, k, v, self.scale))), None
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        if self.apply_transform:
            attn = self.var_norm(self.reatten_matrix(attn)) * self.reatten_scale
        return self.proj(_merge_heads(attn @ v)), attn


class DeepViTBlock(nn.Module):
    """Pre-norm block whose residual branches see ``x * a`` and are divided by ``a``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, apply_transform: bool,
                 transform_scale: bool, adjust_ratio: float, fused_attention: bool = False):
        super().__init__()
        self.adjust_ratio = adjust_ratio
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = ReAttention(dim, num_heads, apply_transform, transform_scale, fused_attention)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.adjust_ratio
        out, attn = self.attn(self.norm1(x * a))
        x = x + out / a
        x = x + self.mlp(self.norm2(x * a)) / a
        return x, attn


class DeepViTReference(_TokenViT):
    """DeepViT (``DeepVisionTransformer``); one block per ``apply_transform`` entry."""

    def __init__(self, img_size: ImgSize = 224, patch_size: int = 16, embed_dim: int = 384,
                 depth: Optional[int] = None, num_heads: int = 12, mlp_ratio: float = 3,
                 apply_transform: Sequence[bool] = (), use_cnn_embed: bool = False,
                 transform_scale: bool = False, scale_adjustment: float = 1.0,
                 num_classes: int = 1000, fused_attention: bool = False):
        super().__init__()
        apply_transform = [bool(t) for t in apply_transform]
        if depth is None:
            depth = len(apply_transform)
        if depth != len(apply_transform):
            raise ValueError(f"depth={depth} but {len(apply_transform)} apply_transform flags")
        stem = (CNNPatchEmbed(patch_size, embed_dim, (64, 64)) if use_cnn_embed
                else PlainPatchEmbed(patch_size, embed_dim))
        self._init_embeddings(img_size, patch_size, embed_dim, stem)
        self.blocks = nn.ModuleList(
            DeepViTBlock(embed_dim, num_heads, mlp_ratio, t, transform_scale, scale_adjustment,
                         fused_attention)
            for t in apply_transform)
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x: torch.Tensor, return_heads: bool = False):
        """Logits, or with ``return_heads`` a dict with ``logits`` and ``pre_logits``."""
        x = self._embed(x)
        for block in self.blocks:
            x, _ = block(x)
        pre_logits = self.norm(x[:, 0])
        logits = self.head(pre_logits)
        if return_heads:
            return {"logits": logits, "pre_logits": pre_logits}
        return logits


# ---------------------------------------------------------------------------
# Refiner-ViT
# ---------------------------------------------------------------------------


class DLA(nn.Module):
    """Refiner's attention-map refinement: inverted residual over the head axis.

    Works on the full (B, H, N, N) map, cls row and column included: 1x1 expand
    to ``E`` channels, 3x3 depthwise, 1x1 project back, each with BN, the first
    two followed by ReLU6, and an identity shortcut.
    """

    def __init__(self, num_heads: int, expand_ratio: float):
        super().__init__()
        hidden = int(round(num_heads * expand_ratio))
        self.conv_exp = nn.Conv2d(num_heads, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.depth_sep_conv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden,
                                        bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.conv_pro = nn.Conv2d(hidden, num_heads, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(num_heads)

    def forward(self, attn: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self.bn1(self.conv_exp(attn)))
        y = F.relu6(self.bn2(self.depth_sep_conv(y)))
        return attn + self.bn3(self.conv_pro(y))


# Shared (refined-attention) blocks always use this DLA expansion, whatever
# head_expand is.
SHARED_DLA_EXPAND = 3


class RefinerAttention(nn.Module):
    """Refiner attention: a computing block or a shared (refined) block.

    Computing block: ``a = softmax((q*sqrt(s)) (k*sqrt(s))^T) [+ s * prev]``,
    optionally ``a = adapt_bn(DLA(a))``; ``a`` is used and passed on.
    Shared block: ``qkv`` produces only ``v``;
    ``a = adapt_bn(DLA(prev)) * s`` is used while ``prev`` is passed on
    unchanged. ``s = head_dim ** -0.5``.
    """

    def __init__(self, dim: int, num_heads: int, shared: bool, apply_transform: bool,
                 head_expand: float):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.shared = shared
        self.apply_transform = apply_transform and not shared
        if shared or self.apply_transform:
            # Registered before qkv to reproduce the official key order.
            self.DLA = DLA(num_heads, SHARED_DLA_EXPAND if shared else head_expand)
            self.adapt_bn = nn.BatchNorm2d(num_heads)
        self.qkv = nn.Linear(dim, dim if shared else 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, prev: Optional[torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.shared:
            if prev is None:
                raise ValueError("a shared Refiner block needs the previous attention map")
            (v,) = _split_heads(self.qkv(x), 1, self.num_heads)
            attn = self.adapt_bn(self.DLA(prev)) * self.scale
            passed_on = prev
        else:
            q, k, v = _split_heads(self.qkv(x), 3, self.num_heads)
            # The official code scales q and k by sqrt(scale) each rather than
            # the product by scale; equal in exact arithmetic, kept for fidelity.
            root = math.sqrt(self.scale)
            attn = ((q * root) @ (k * root).transpose(-2, -1)).softmax(dim=-1)
            if prev is not None:
                attn = attn + self.scale * prev
            if self.apply_transform:
                attn = self.adapt_bn(self.DLA(attn))
            passed_on = attn
        return self.proj(_merge_heads(attn @ v)), passed_on


class ScaledMlp(Mlp):
    """``Mlp`` whose output is multiplied by a learned per-channel ``scale_channel``."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__(dim, hidden_dim)
        # A module's own parameters precede its children in state_dict, so
        # this lands before fc1/fc2 as in the official checkpoints.
        self.scale_channel = nn.Parameter(torch.full((dim,), 1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.scale_channel


# Refiner blocks always use residual scaling 0.5 (not configurable upstream).
REFINER_ADJUST_RATIO = 0.5


class RefinerBlock(nn.Module):
    """DeepViT-style scaled pre-norm block with Refiner attention and scaled MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, shared: bool,
                 apply_transform: bool, head_expand: float):
        super().__init__()
        self.adjust_ratio = REFINER_ADJUST_RATIO
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = RefinerAttention(dim, num_heads, shared, apply_transform, head_expand)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = ScaledMlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, prev: Optional[torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.adjust_ratio
        out, passed_on = self.attn(self.norm1(x * a), prev)
        x = x + out / a
        x = x + self.mlp(self.norm2(x * a)) / a
        return x, passed_on


class RefinerReference(_TokenViT):
    """Refiner-ViT (``Refiner_ViT``).

    ``shared`` is the official ``depth`` argument: one flag per block, True for
    a shared refined-attention block. With ``return_dense`` the eval logits are
    ``head(cls) + 0.5 * max_tokens(aux_head(patch tokens))``.
    """

    def __init__(self, img_size: ImgSize = 224, patch_size: int = 16, embed_dim: int = 384,
                 num_heads: int = 12, mlp_ratio: float = 3, shared: Sequence[bool] = (),
                 apply_transform: Optional[Sequence[bool]] = None, head_expand: float = 3,
                 use_cnn_embed: bool = True, return_dense: bool = True,
                 num_classes: int = 1000):
        super().__init__()
        shared = [bool(s) for s in shared]
        if apply_transform is None:
            apply_transform = [False] * len(shared)
        apply_transform = [bool(t) for t in apply_transform]
        if len(apply_transform) != len(shared):
            raise ValueError("shared and apply_transform must have one flag per block")
        if shared and shared[0]:
            raise ValueError("block 0 cannot be shared: there is no previous attention map")
        self.return_dense = return_dense
        stem = (CNNPatchEmbed(patch_size, embed_dim, (32, 64, 128)) if use_cnn_embed
                else PlainPatchEmbed(patch_size, embed_dim))
        self._init_embeddings(img_size, patch_size, embed_dim, stem)
        self.blocks = nn.ModuleList(
            RefinerBlock(embed_dim, num_heads, mlp_ratio, s, t, head_expand)
            for s, t in zip(shared, apply_transform))
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        self.head = nn.Linear(embed_dim, num_classes)
        if return_dense:
            self.aux_head = nn.Linear(embed_dim, num_classes)

    def forward(self, x: torch.Tensor, return_heads: bool = False):
        """Logits, or with ``return_heads`` a dict with ``logits``, ``pre_logits``
        (all normed tokens) and, if ``return_dense``, ``logits_cls``,
        ``logits_aux`` (B, N, K) and ``logits_aux_max``."""
        x = self._embed(x)
        attn = None
        for block in self.blocks:
            x, attn = block(x, attn)
        x = self.norm(x)
        out = {"pre_logits": x, "logits_cls": self.head(x[:, 0])}
        if self.return_dense:
            out["logits_aux"] = self.aux_head(x[:, 1:])
            out["logits_aux_max"] = out["logits_aux"].max(dim=1).values
            out["logits"] = out["logits_cls"] + 0.5 * out["logits_aux_max"]
        else:
            out["logits"] = out.pop("logits_cls")
        return out if return_heads else out["logits"]


# ---------------------------------------------------------------------------
# PiT
# ---------------------------------------------------------------------------


class PiTAttention(nn.Module):
    """Plain multi-head self-attention (timm ``Attention``, explicit softmax path)."""

    def __init__(self, dim: int, num_heads: int, fused_attention: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.fused_attention = fused_attention
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = _split_heads(self.qkv(x), 3, self.num_heads)
        if self.fused_attention:
            return self.proj(_merge_heads(_sdpa(q, k, v, self.scale)))
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj(_merge_heads(attn @ v))


class PiTBlock(nn.Module):
    """timm pre-norm ViT block."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float,
                 fused_attention: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = PiTAttention(dim, num_heads, fused_attention)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PiTPool(nn.Module):
    """Halves the map with a 3x3/s2/p1 grouped conv; maps class tokens with ``fc``."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.conv = nn.Conv2d(in_dim, out_dim, 3, stride=2, padding=1, groups=in_dim)
        self.fc = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor, cls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.conv(x), self.fc(cls)


class PiTStage(nn.Module):
    """Blocks of one stage over ``cat(class tokens, flattened map)``.

    With timm naming the stage owns the pooling that precedes it (``pool``).
    """

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float,
                 pool: Optional[PiTPool] = None, fused_attention: bool = False):
        super().__init__()
        if pool is not None:
            self.pool = pool
        self.blocks = nn.ModuleList(PiTBlock(dim, num_heads, mlp_ratio, fused_attention)
                                    for _ in range(depth))

    def forward(self, x: torch.Tensor, cls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, channels, height, width = x.shape
        num_cls = cls.shape[1]
        tokens = torch.cat([cls, x.flatten(2).transpose(1, 2)], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        cls = tokens[:, :num_cls]
        x = tokens[:, num_cls:].transpose(1, 2).reshape(batch, channels, height, width)
        return x, cls


class PiTReference(nn.Module):
    """PiT (pooling-based vision transformer), official or timm key naming.

    ``naming="official"``: poolings are ``pools.{s}`` after all
    ``transformers``. ``naming="timm"``: the pooling before stage ``s`` is
    ``transformers.{s}.pool``. Everything else, including the math, is equal.
    """

    def __init__(self, img_size: ImgSize = 224, patch_size: int = 16, stride: int = 8,
                 base_dims: Sequence[int] = (48, 48, 48), depth: Sequence[int] = (2, 6, 4),
                 heads: Sequence[int] = (3, 6, 12), mlp_ratio: float = 4,
                 distilled: bool = False, num_classes: int = 1000, naming: str = "official",
                 fused_attention: bool = False):
        super().__init__()
        if naming not in ("official", "timm"):
            raise ValueError(f"naming must be 'official' or 'timm', not {naming!r}")
        if not len(base_dims) == len(depth) == len(heads):
            raise ValueError("base_dims, depth and heads need one entry per stage")
        self.naming = naming
        self.distilled = distilled
        self.img_size = _pair(img_size)
        dims = [b * h for b, h in zip(base_dims, heads)]
        # Conv stem without padding.
        self.grid_size = tuple((s - patch_size) // stride + 1 for s in self.img_size)
        # pos_embed is registered before cls_token in both code bases.
        self.pos_embed = nn.Parameter(torch.zeros(1, dims[0], *self.grid_size))
        self.cls_token = nn.Parameter(torch.zeros(1, 2 if distilled else 1, dims[0]))
        self.patch_embed = nn.Module()
        self.patch_embed.conv = nn.Conv2d(3, dims[0], patch_size, stride=stride)

        pools = [PiTPool(dims[s], dims[s + 1]) for s in range(len(dims) - 1)]
        timm = naming == "timm"
        self.transformers = nn.ModuleList(
            PiTStage(dims[s], depth[s], heads[s], mlp_ratio,
                     pool=pools[s - 1] if (timm and s > 0) else None,
                     fused_attention=fused_attention)
            for s in range(len(dims)))
        if not timm:
            self.pools = nn.ModuleList(pools)
        self.norm = nn.LayerNorm(dims[-1], eps=LN_EPS)
        self.head = nn.Linear(dims[-1], num_classes)
        if distilled:
            self.head_dist = nn.Linear(dims[-1], num_classes)

    def _pool(self, stage: int) -> PiTPool:
        """The pooling that precedes ``stage`` (>= 1)."""
        if self.naming == "timm":
            return self.transformers[stage].pool
        return self.pools[stage - 1]

    def forward(self, x: torch.Tensor, return_heads: bool = False):
        """Logits, or with ``return_heads`` a dict with ``logits``, ``pre_logits``
        (normed class tokens) and, if distilled, ``logits_cls``/``logits_dist``."""
        x = self.patch_embed.conv(x) + self.pos_embed
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        for stage, transformer in enumerate(self.transformers):
            if stage > 0:
                x, cls = self._pool(stage)(x, cls)
            x, cls = transformer(x, cls)
        cls = self.norm(cls)
        out = {"pre_logits": cls, "logits_cls": self.head(cls[:, 0])}
        if self.distilled:
            out["logits_dist"] = self.head_dist(cls[:, 1])
            out["logits"] = (out["logits_cls"] + out["logits_dist"]) / 2
        else:
            out["logits"] = out.pop("logits_cls")
        return out if return_heads else out["logits"]


# ---------------------------------------------------------------------------
# Registered architectures and official-kwargs adapter
# ---------------------------------------------------------------------------


def _alternating(depth: int) -> list[bool]:
    """Refiner block pattern: computing, shared, computing, shared, ..."""
    return [i % 2 == 1 for i in range(depth)]


def _last(depth: int, count: int) -> list[bool]:
    return [i >= depth - count for i in range(depth)]


_DEEPVIT_PATCH = dict(family="deepvit", img_size=224, patch_size=16, embed_dim=384,
                      num_heads=12, mlp_ratio=3, use_cnn_embed=False, transform_scale=False,
                      scale_adjustment=1.0, num_classes=1000)
_PIT = dict(family="pit", img_size=224, mlp_ratio=4, distilled=False, num_classes=1000,
            naming="official")
_PIT_TI = dict(_PIT, patch_size=16, stride=8, base_dims=[32] * 3, depth=[2, 6, 4],
               heads=[2, 4, 8])
_PIT_XS = dict(_PIT, patch_size=16, stride=8, base_dims=[48] * 3, depth=[2, 6, 4],
               heads=[2, 4, 8])
_PIT_S = dict(_PIT, patch_size=16, stride=8, base_dims=[48] * 3, depth=[2, 6, 4],
              heads=[3, 6, 12])
_PIT_B = dict(_PIT, patch_size=14, stride=7, base_dims=[64] * 3, depth=[3, 6, 4],
              heads=[4, 8, 16])

#: Registered architectures as plain data, every argument spelled out.
#: ``family`` selects the reference class (see :func:`build_reference`); the
#: other entries are its arguments. PiT entries use official key naming; pass
#: ``naming="timm"`` to build_reference for timm's.
OFFICIAL_CONFIGS: dict[str, dict] = {
    **{f"deepvit_{d}": dict(_DEEPVIT_PATCH, apply_transform=[True] * d) for d in (16, 24, 32)},
    **{f"vit_{d}_baseline": dict(_DEEPVIT_PATCH, apply_transform=[False] * d)
       for d in (16, 24, 32)},
    "deepvit_s": dict(family="deepvit", img_size=224, patch_size=16, embed_dim=396,
                      num_heads=12, mlp_ratio=3, apply_transform=_last(16, 5),
                      use_cnn_embed=True, transform_scale=True, scale_adjustment=0.5,
                      num_classes=1000),
    "deepvit_l": dict(family="deepvit", img_size=224, patch_size=16, embed_dim=420,
                      num_heads=12, mlp_ratio=3, apply_transform=_last(32, 12),
                      use_cnn_embed=True, transform_scale=False, scale_adjustment=0.5,
                      num_classes=1000),
    "refiner_s": dict(family="refiner", img_size=224, patch_size=16, embed_dim=384,
                      num_heads=12, mlp_ratio=3, shared=_alternating(16),
                      apply_transform=[False] * 16, head_expand=6, use_cnn_embed=True,
                      return_dense=True, num_classes=1000),
    "refiner_m": dict(family="refiner", img_size=224, patch_size=16, embed_dim=420,
                      num_heads=12, mlp_ratio=3, shared=_alternating(32),
                      apply_transform=[False] * 32, head_expand=3, use_cnn_embed=True,
                      return_dense=True, num_classes=1000),
    "refiner_l": dict(family="refiner", img_size=224, patch_size=16, embed_dim=512,
                      num_heads=16, mlp_ratio=3, shared=_alternating(32),
                      apply_transform=[False] * 32, head_expand=3, use_cnn_embed=True,
                      return_dense=True, num_classes=1000),
    "pit_ti": _PIT_TI, "pit_ti_distilled": dict(_PIT_TI, distilled=True),
    "pit_xs": _PIT_XS, "pit_xs_distilled": dict(_PIT_XS, distilled=True),
    "pit_s": _PIT_S, "pit_s_distilled": dict(_PIT_S, distilled=True),
    "pit_b": _PIT_B, "pit_b_distilled": dict(_PIT_B, distilled=True),
}
OFFICIAL_CONFIGS["deepvit_l_384"] = dict(OFFICIAL_CONFIGS["deepvit_l"], img_size=384)

#: Upstream registered-constructor name of each OFFICIAL_CONFIGS entry. The
#: ``vit_*_baseline`` entries (the DeepViT paper's plain-attention baselines,
#: i.e. ``deepvit_*`` with re-attention switched off) have no upstream
#: constructor and are absent.
OFFICIAL_REGISTERED_NAMES: dict[str, str] = {
    **{f"deepvit_{d}": f"deepvit_patch16_224_re_attn_{d}b" for d in (16, 24, 32)},
    "deepvit_s": "deepvit_S", "deepvit_l": "deepvit_L", "deepvit_l_384": "deepvit_L_384",
    "refiner_s": "Refiner_ViT_S", "refiner_m": "Refiner_ViT_M", "refiner_l": "Refiner_ViT_L",
    **{name: name for name in OFFICIAL_CONFIGS if name.startswith("pit_")},
}

_FAMILIES = {"deepvit": DeepViTReference, "refiner": RefinerReference, "pit": PiTReference}


def build_reference(config: Union[str, dict], **overrides) -> nn.Module:
    """Build a reference model from an OFFICIAL_CONFIGS name or a config dict.

    ``overrides`` replace config entries; ``fused_attention=True`` is accepted
    by the DeepViT and PiT families (see the module docstring).
    """
    config = dict(OFFICIAL_CONFIGS[config] if isinstance(config, str) else config)
    config.update(overrides)
    family = config.pop("family")
    return _FAMILIES[family](**config)


def config_from_official_kwargs(model_class: str, class_kwargs: dict) -> dict:
    """Translate an official model class name and its constructor kwargs.

    ``model_class``/``class_kwargs`` are the fields of the fixture
    ``*.keys.json`` files. Returns a config dict for :func:`build_reference`.
    Upstream defaults are filled in; arguments that change the architecture in
    a way the references do not implement raise ``ValueError``.
    """
    kw = dict(class_kwargs)
    norm_layer = kw.pop("norm_layer", None)
    if norm_layer is not None and "eps=1e-06" not in str(norm_layer):
        raise ValueError(f"unsupported norm_layer {norm_layer!r}")
    if not kw.pop("qkv_bias", True):
        raise ValueError("qkv_bias=False is not implemented")
    if kw.pop("in_chans", 3) != 3:
        raise ValueError("only 3 input channels are implemented")
    common = dict(num_classes=kw.pop("num_classes", 1000), mlp_ratio=kw.pop("mlp_ratio", 4))

    if model_class == "DeepVisionTransformer":
        # Official `depth` is a list with one (unused) flag per block.
        depth = kw.pop("depth")
        apply_transform = list(kw.pop("apply_transform"))
        if len(depth) != len(apply_transform):
            raise ValueError("depth and apply_transform must have one flag per block")
        config = dict(family="deepvit", img_size=kw.pop("img_size", 224),
                      patch_size=kw.pop("patch_size", 16), embed_dim=kw.pop("embed_dim"),
                      num_heads=kw.pop("num_heads"), apply_transform=apply_transform,
                      use_cnn_embed=kw.pop("use_cnn_embed", False),
                      transform_scale=kw.pop("transform_scale", False),
                      scale_adjustment=kw.pop("scale_adjustment", 1.0))
    elif model_class == "Refiner_ViT":
        if not kw.pop("share_atten", True):
            raise ValueError("share_atten=False is not implemented")
        kw.pop("mix_token", None)  # training-time token mixing only
        shared = list(kw.pop("depth"))
        config = dict(family="refiner", img_size=kw.pop("img_size", 224),
                      patch_size=kw.pop("patch_size", 16), embed_dim=kw.pop("embed_dim"),
                      num_heads=kw.pop("num_heads"), shared=shared,
                      apply_transform=list(kw.pop("apply_transform", [False] * len(shared))),
                      head_expand=kw.pop("head_expand"),
                      use_cnn_embed=kw.pop("use_cnn_embed", True),
                      return_dense=kw.pop("return_dense", True))
    elif model_class in ("PoolingTransformer", "DistilledPoolingTransformer",
                         "PoolingVisionTransformer"):
        timm = model_class == "PoolingVisionTransformer"
        img_size = kw.pop("img_size" if timm else "image_size", 224)
        config = dict(family="pit", img_size=img_size, patch_size=kw.pop("patch_size"),
                      stride=kw.pop("stride"), base_dims=list(kw.pop("base_dims")),
                      depth=list(kw.pop("depth")), heads=list(kw.pop("heads")),
                      distilled=(kw.pop("distilled", False) if timm
                                 else model_class == "DistilledPoolingTransformer"),
                      naming="timm" if timm else "official")
    else:
        raise ValueError(f"unknown model class {model_class!r}")
    if kw:
        raise ValueError(f"unsupported arguments for {model_class}: {sorted(kw)}")
    config.update(common)
    if isinstance(config["img_size"], list):
        config["img_size"] = tuple(config["img_size"])
    return config


# ---------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------

_HEAD_NAMES = ("head", "head_dist", "aux_head")


def _calibration_input(model: nn.Module, gen: torch.Generator, batch: int) -> torch.Tensor:
    """A smooth random image batch (about unit variance) at the model's size."""
    height, width = model.img_size
    coarse = torch.randn(batch, 3, max(height // 8, 2), max(width // 8, 2), generator=gen)
    smooth = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    return smooth + 0.3 * torch.randn(batch, 3, height, width, generator=gen)


@torch.no_grad()
def randomize_(model: nn.Module, seed: int, calibration_batch: int = 8) -> nn.Module:
    """Give ``model`` deterministic, non-trivial weights and BN statistics (in place).

    * Linear/Conv2d weights ~ N(0, 1/fan_in) (the classifier heads 3x that
      std, so the logits spread over a few units), biases ~ N(0, 0.05).
    * LayerNorm/BatchNorm gamma ~ U(0.6, 1.4), beta ~ N(0, 0.1).
    * ``pos_embed`` ~ N(0, 0.2), ``cls_token`` ~ N(0, 0.5),
      Refiner ``scale_channel`` ~ 10**U(-5, 0).
    * BatchNorm running stats are first *calibrated* on a random image batch
      (only the BN layers in train mode, cumulative averaging), so every BN
      sees statistics of its real input scale -- for the attention-map BNs
      (DeepViT ``var_norm``, Refiner ``DLA.*``/``adapt_bn``) this means small
      variances, which makes the port sensitive to the BN eps. Then
      ``running_var *= U(0.5, 2)`` and ``running_mean += N(0, 0.25) *
      sqrt(running_var)`` so eval output differs from batch statistics.

    Returns the model, in eval mode.
    """
    gen = torch.Generator().manual_seed(int(seed))

    def normal(t: torch.Tensor, std: float) -> None:
        t.copy_(torch.randn(t.shape, generator=gen) * std)

    def uniform(t: torch.Tensor, low: float, high: float) -> None:
        t.copy_(low + (high - low) * torch.rand(t.shape, generator=gen))

    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            fan_in = module.weight[0].numel()
            std = fan_in ** -0.5 * (3.0 if name.split(".")[-1] in _HEAD_NAMES else 1.0)
            normal(module.weight, std)
            if module.bias is not None:
                normal(module.bias, 0.05)
        elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
            uniform(module.weight, 0.6, 1.4)
            normal(module.bias, 0.1)
    for name, param in model.named_parameters():
        leaf = name.split(".")[-1]
        if leaf == "pos_embed":
            normal(param, 0.2)
        elif leaf == "cls_token":
            normal(param, 0.5)
        elif leaf == "scale_channel":
            param.copy_(10.0 ** (-5.0 + 5.0 * torch.rand(param.shape, generator=gen)))

    batch_norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if batch_norms:
        model.eval()
        saved_momentum = [bn.momentum for bn in batch_norms]
        for bn in batch_norms:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average: one batch gives its exact stats
            bn.train()
        model(_calibration_input(model, gen, calibration_batch))
        for bn, momentum in zip(batch_norms, saved_momentum):
            bn.momentum = momentum
            var = bn.running_var * (0.5 + 1.5 * torch.rand(bn.running_var.shape, generator=gen))
            shift = torch.randn(bn.running_mean.shape, generator=gen) * 0.25 * var.sqrt()
            bn.running_var.copy_(var)
            bn.running_mean.add_(shift)
            bn.num_batches_tracked.fill_(250200)
    return model.eval()


def state_dict_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's state_dict as numpy arrays: floats as float32, integer
    buffers (BN ``num_batches_tracked``) kept as int64."""
    out = {}
    for key, value in model.state_dict().items():
        array = value.detach().cpu().numpy()
        out[key] = array.astype(np.float32) if array.dtype.kind == "f" else array.astype(np.int64)
    return out


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameter elements (buffers excluded), as timm counts."""
    return sum(p.numel() for p in model.parameters())
