"""The ViT paper's hybrid (Dosovitskiy et al., 2021, section 3.1): the patches are taken from a CNN's feature map.

A ResNet stem, as the paper and timm build it for ViT hybrids (ResNet-v2 without pre-activation: weight-
standardised convolutions, GroupNorm, bottleneck blocks; or the stem alone), turns an image (B, C, H, W) into a
feature map (B, C', H/r, W/r). Its P×P patches (P = 1 in the paper's hybrids) are flattened and mapped by one
Linear layer to D-dimensional tokens — the same patch embedding as the ViT's, applied to features instead of
pixels — and the ViT encoder follows unchanged (harness/reference/vit.py builds it with ViTConfig(stem=...)).

    conv 7×7 stride 2 (SAME) -> GroupNorm -> ReLU -> max-pool 3×3 stride 2 (SAME)           the stem, r = 4
    stage s: bottleneck blocks, the first with stride 2 (from the second stage) and a projection shortcut
        bottleneck: 1×1 -> GN -> ReLU -> 3×3 (stride) -> GN -> ReLU -> 1×1 -> GN, + shortcut, -> ReLU

Weight standardisation (Qiao et al., 2019): each output channel's weights are normalised to zero mean and unit
variance before the convolution. SAME padding (TensorFlow's): pad so that the output is ⌈input / stride⌉,
splitting the padding with the extra pixel at the bottom/right. Only torch is imported. Parameter names follow
timm's ResNetV2 (stem.conv, stem.norm, stages.i.blocks.j.conv1/norm1/..., downsample.conv/norm).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class StemConfig:
    layers: tuple[int, ...] = (3, 4, 9)  # bottleneck blocks per stage; () for the stem alone (R50: 3, 4, 9)
    width: int = 64  # channels of the stem convolution
    channels: tuple[int, ...] = (256, 512, 1024, 2048)  # output channels of each stage (bottleneck width: 1/4)
    groups: int = 32  # GroupNorm groups
    norm_eps: float = 1e-5  # GroupNorm epsilon
    ws_eps: float = 1e-8  # weight-standardisation epsilon (timm's hybrids: 1e-8)
    same_padding: bool = True  # TensorFlow SAME padding (the ViT hybrids); False: symmetric PyTorch padding

    def feature_size(self, image_size: int) -> int:
        """The side of the feature map: halved (rounding up) by the stem's convolution and pooling and by every
        stage after the first."""
        side = image_size
        for _ in range(2 + max(len(self.layers) - 1, 0)):
            side = math.ceil(side / 2)
        return side

    @property
    def out_channels(self) -> int:
        return self.channels[len(self.layers) - 1] if self.layers else self.width


def same_pad(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """Pad (B, C, H, W) so that a kernel × kernel window with this stride gives ⌈H / stride⌉ × ⌈W / stride⌉."""
    H, W = x.shape[-2:]
    pad_h = max((math.ceil(H / stride) - 1) * stride + kernel - H, 0)
    pad_w = max((math.ceil(W / stride) - 1) * stride + kernel - W, 0)
    return F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=value)


class StdConv2d(nn.Conv2d):
    """Conv2d whose weights are standardised per output channel: (w − mean) / sqrt(var + eps) (biased var)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, same: bool = True, eps: float = 1e-8):
        super().__init__(cin, cout, kernel, stride, padding=0 if same else kernel // 2, bias=False)
        self.same, self.eps = same, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.flatten(1)  # (C_out, C_in·k·k)
        mean, var = w.mean(dim=1, keepdim=True), w.var(dim=1, unbiased=False, keepdim=True)
        w = ((w - mean) / torch.sqrt(var + self.eps)).view_as(self.weight)
        if self.same:
            x = same_pad(x, self.kernel_size[0], self.stride[0])
        return F.conv2d(x, w, None, self.stride, self.padding)


class GroupNormReLU(nn.GroupNorm):
    """GroupNorm, then ReLU unless act=False (timm's GroupNormAct)."""

    def __init__(self, channels: int, groups: int, eps: float, act: bool = True):
        super().__init__(groups, channels, eps=eps)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return F.relu(x) if self.act else x


class Downsample(nn.Module):
    """The projection shortcut: a 1×1 standardised convolution (with the block's stride), then GroupNorm."""

    def __init__(self, cin: int, cout: int, stride: int, c: StemConfig):
        super().__init__()
        self.conv = StdConv2d(cin, cout, 1, stride, c.same_padding, c.ws_eps)
        self.norm = GroupNormReLU(cout, c.groups, c.norm_eps, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class Bottleneck(nn.Module):
    """1×1 -> GN -> ReLU -> 3×3 (stride) -> GN -> ReLU -> 1×1 -> GN, plus the shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, c: StemConfig, project: bool):
        super().__init__()
        mid = cout // 4
        self.downsample = Downsample(cin, cout, stride, c) if project else None
        self.conv1 = StdConv2d(cin, mid, 1, 1, c.same_padding, c.ws_eps)
        self.norm1 = GroupNormReLU(mid, c.groups, c.norm_eps)
        self.conv2 = StdConv2d(mid, mid, 3, stride, c.same_padding, c.ws_eps)
        self.norm2 = GroupNormReLU(mid, c.groups, c.norm_eps)
        self.conv3 = StdConv2d(mid, cout, 1, 1, c.same_padding, c.ws_eps)
        self.norm3 = GroupNormReLU(cout, c.groups, c.norm_eps, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.norm1(self.conv1(x))
        x = self.norm2(self.conv2(x))
        x = self.norm3(self.conv3(x))
        return F.relu(x + shortcut)


class Stage(nn.Module):
    """Bottleneck blocks; the first has the stage's stride and the projection shortcut."""

    def __init__(self, cin: int, cout: int, depth: int, stride: int, c: StemConfig):
        super().__init__()
        self.blocks = nn.Sequential(*[Bottleneck(cin if i == 0 else cout, cout, stride if i == 0 else 1, c,
                                                 project=i == 0) for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class Stem(nn.Module):
    """conv 7×7 stride 2 -> GroupNorm -> ReLU -> max-pool 3×3 stride 2: (B, C, H, W) -> (B, width, H/4, W/4)."""

    def __init__(self, in_chans: int, c: StemConfig):
        super().__init__()
        self.same = c.same_padding
        self.conv = StdConv2d(in_chans, c.width, 7, 2, c.same_padding, c.ws_eps)
        self.norm = GroupNormReLU(c.width, c.groups, c.norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x))
        if self.same:
            return F.max_pool2d(same_pad(x, 3, 2, value=float("-inf")), 3, 2)
        return F.max_pool2d(x, 3, 2, padding=1)


class ResNetStem(nn.Module):
    """The CNN whose feature map a hybrid ViT patchifies: the stem, then the stages (stride 1, then 2, 2, ...)."""

    def __init__(self, in_chans: int, c: StemConfig):
        super().__init__()
        self.stem = Stem(in_chans, c)
        stages, cin = [], c.width
        for i, (depth, cout) in enumerate(zip(c.layers, c.channels)):
            stages.append(Stage(cin, cout, depth, 1 if i == 0 else 2, c))
            cin = cout
        self.stages = nn.Sequential(*stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))  # (B, C', H/r, W/r)


class HybridEmbed(nn.Module):
    """The hybrid's patch embedding: the CNN's feature map cut into P×P patches, each flattened and mapped by one
    Linear layer to a token (B, N, D), N = (H / r / P)²."""

    def __init__(self, image_size: int, patch_size: int, in_chans: int, width: int, bias: bool, stem: StemConfig):
        super().__init__()
        self.image_size, self.patch_size = image_size, patch_size
        self.backbone = ResNetStem(in_chans, stem)
        self.proj = nn.Linear(stem.out_channels * patch_size**2, width, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        if (H, W) != (self.image_size, self.image_size):
            raise ValueError(f"expected {self.image_size}×{self.image_size} images, got {H}×{W}")
        f = self.backbone(x)  # (B, C', h, w)
        _, C2, h, w = f.shape
        P = self.patch_size
        f = f.reshape(B, C2, h // P, P, w // P, P).permute(0, 2, 4, 1, 3, 5)  # (B, h/P, w/P, C', P, P)
        return self.proj(f.reshape(B, (h // P) * (w // P), C2 * P * P))  # (B, N, D)
