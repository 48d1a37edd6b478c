"""Visual front-end: 3-D convolution stem + ResNet-18 trunk ("modified ResNet-18").

Mirrors reference `avhubert/resnet.py` (`ResEncoder`, `ResNet`, `BasicBlock`, av_hubert@258fb50).
Attribute names give the released checkpoints' state-dict keys (`frontend3D.0`, `trunk.layer1.0.conv1`, ...).
`width` scales the channel counts (64/128/256/512 at the default 64) for tiny CPU models; the
default reproduces the original exactly.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BasicBlock", "ResNetTrunk", "ResEncoder"]


def _activation(relu_type: str, channels: int) -> nn.Module:
    if relu_type == "prelu":
        return nn.PReLU(num_parameters=channels)
    if relu_type == "relu":
        return nn.ReLU()
    raise ValueError(f"resnet_relu_type must be 'prelu' or 'relu', got {relu_type!r}")


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN; activation `relu1` after the first, `relu2` after the residual add."""

    def __init__(self, in_planes: int, planes: int, stride: int, relu_type: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = _activation(relu_type, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = _activation(relu_type, planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + residual)


class ResNetTrunk(nn.Module):
    """ResNet-18 layers [2, 2, 2, 2] + global average pool: `[N, w, H, W] -> [N, 8w]`."""

    def __init__(self, width: int = 64, relu_type: str = "prelu") -> None:
        super().__init__()
        planes = [width, 2 * width, 4 * width, 8 * width]
        in_planes = width
        for i, (p, stride) in enumerate(zip(planes, [1, 2, 2, 2]), start=1):
            blocks = nn.Sequential(
                BasicBlock(in_planes, p, stride, relu_type), BasicBlock(p, p, 1, relu_type)
            )
            setattr(self, f"layer{i}", blocks)
            in_planes = p
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(x)))
        if x.device.type == "cpu":
            # oneDNN's channels-last kernels are ~1.7x slower than NCHW on layer4's 3x3 maps (and
            # faster on layer1's 22x22): one small copy of [N, 4w, 6, 6] to NCHW pays on CPU
            x = x.contiguous()
        x = self.layer4(x)
        return self.avgpool(x).flatten(1)


class ResEncoder(nn.Module):
    """Video `[B, 1, T, H, W]` -> per-frame features `[B, 8*width, T]` (time preserved)."""

    def __init__(self, relu_type: str = "prelu", width: int = 64, input_pool: int = 1) -> None:
        super().__init__()
        if input_pool < 1:
            raise ValueError(f"input_pool must be >= 1, got {input_pool}")
        self.input_pool = input_pool  # frames are average-pooled by this factor first (1: the reference)
        self.frontend3D = nn.Sequential(
            nn.Conv3d(1, width, kernel_size=(5, 7, 7), stride=(1, 2, 2), padding=(2, 3, 3), bias=False),
            nn.BatchNorm3d(width),
            _activation(relu_type, width),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        )
        self.trunk = ResNetTrunk(width, relu_type)
        self.out_dim = self.trunk.out_dim
        # activation layout of the 2-D trunk; `torch.contiguous_format` restores NCHW
        self.memory_format = torch.channels_last
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                fan_out = math.prod(m.kernel_size[-2:]) * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stem_conv(self, x: torch.Tensor) -> torch.Tensor:
        """The 3-D stem convolution, per frame: `[B, 1, T, H, W] -> [B*T, w, H/2, W/2]`.

        It runs as one 2-D convolution over the 5 neighbouring frames stacked as channels (same
        weights, same result up to float rounding) on every device: torch 2.13's oneDNN Conv3d
        corrupted the heap in CPU training ("corrupted size vs. prev_size"), the native CPU
        Conv3d kernel is 3x slower, and the output comes out frame-major, as the trunk takes it,
        so no `[B, C, T, H, W]` transpose copy is needed. The output is in `memory_format`.
        """
        conv = self.frontend3D[0]
        batch, chans, time, height, width = x.shape
        kt = conv.kernel_size[0]
        frames = F.pad(x, (0, 0, 0, 0, conv.padding[0], conv.padding[0]))  # pad time
        stacked = frames.unfold(2, kt, 1)  # [B, C, T, H, W, kt]
        stacked = stacked.permute(0, 2, 1, 5, 3, 4).reshape(batch * time, chans * kt, height, width)
        weight = conv.weight.reshape(conv.out_channels, chans * kt, *conv.kernel_size[1:])
        stacked = stacked.contiguous(memory_format=self.memory_format)
        return F.conv2d(stacked, weight, conv.bias, stride=conv.stride[1:], padding=conv.padding[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, 1, T, H, W] -> [B, 8w, T]`. Frames run as a batch of 2-D images in `memory_format`
        (channels-last by default: 10-15% less CPU time for the front-end's forward + backward than
        NCHW with oneDNN, and the layout cuDNN's tensor-core kernels want in half precision)."""
        batch, _, time = x.shape[:3]
        if self.input_pool > 1:
            k = self.input_pool
            x = F.avg_pool3d(x, (1, k, k), (1, k, k))  # [B, 1, T, H/k, W/k]
        x = self.stem_conv(x)  # [B*T, w, H/2, W/2]
        bn, act, pool = self.frontend3D[1:]
        # BatchNorm3d over [B*T, w, 1, H', W'] has the statistics of [B, w, T, H', W'] (a free view)
        x = act(bn(x.unsqueeze(2)).squeeze(2))
        x = F.max_pool2d(x, pool.kernel_size[1:], pool.stride[1:], pool.padding[1:])  # MaxPool3d (1, 3, 3)
        x = self.trunk(x)  # [B*T, 8w]
        return x.view(batch, time, -1).transpose(1, 2)  # [B, 8w, T]
