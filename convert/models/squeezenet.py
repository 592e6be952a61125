"""SqueezeNet v1.0 / v1.1 (Iandola et al., 2016) with the paper's bypass variants and metaparameters.

Module names and ``state_dict`` keys match torchvision's ``squeezenet1_0`` / ``squeezenet1_1``, so an
official torchvision checkpoint loads unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


class Fire(nn.Module):
    """squeeze 1x1 -> (expand 1x1 | expand 3x3), with an optional bypass added to the output."""

    def __init__(self, inplanes: int, squeeze_planes: int, expand1x1_planes: int,
                 expand3x3_planes: int, bypass: str = "none") -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(inplanes, squeeze_planes, kernel_size=1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze_planes, expand1x1_planes, kernel_size=1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze_planes, expand3x3_planes, kernel_size=3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)
        out = expand1x1_planes + expand3x3_planes
        # Simple bypass: identity where widths match. Complex bypass: a 1x1 conv where they don't.
        self.shortcut: nn.Module | None = None
        if bypass == "simple" and inplanes == out:
            self.shortcut = nn.Identity()
        elif bypass == "complex":
            self.shortcut = nn.Identity() if inplanes == out else nn.Conv2d(inplanes, out, kernel_size=1)
        elif bypass not in ("none", "simple"):
            raise ValueError(f"Unsupported bypass {bypass!r}: 'none', 'simple' or 'complex' expected")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.squeeze_activation(self.squeeze(x))
        y = torch.cat([self.expand1x1_activation(self.expand1x1(s)),
                       self.expand3x3_activation(self.expand3x3(s))], 1)
        return y if self.shortcut is None else y + self.shortcut(x)


@dataclass(frozen=True)
class MetaParameters:
    """The paper's microarchitecture metaparameters (Section 5).

    Fire module i (0-based) gets ``e_i = base_e + incr_e * floor(i / freq)`` expand filters, of which
    ``pct_3x3`` are 3x3, and ``s_i = SR * e_i`` squeeze filters. The defaults give SqueezeNet v1.0.
    """

    base_e: int = 128
    incr_e: int = 128
    pct_3x3: float = 0.5
    freq: int = 2
    sr: float = 0.125
    num_fire: int = 8

    def fire_widths(self) -> list[tuple[int, int, int]]:
        """(squeeze, expand1x1, expand3x3) per fire module."""
        if not (0.0 <= self.pct_3x3 <= 1.0) or self.sr <= 0 or self.freq < 1 or self.num_fire < 1 \
                or self.base_e < 1 or self.incr_e < 0:
            raise ValueError(f"Invalid metaparameters {self}: 0<=pct_3x3<=1, sr>0, freq>=1, base_e>=1, "
                             "incr_e>=0 expected")
        widths = []
        for i in range(self.num_fire):
            e = self.base_e + self.incr_e * (i // self.freq)
            e3 = int(round(e * self.pct_3x3))
            s = max(1, int(math.floor(self.sr * e + 1e-9)))
            widths.append((s, e - e3, e3))
        return widths


BYPASS_BRANCH_SCALE = 0.1  # initial scale of the expand filters of a fire module with a bypass
SHORTCUT_SCALE = 0.5  # initial scale of a complex bypass's 1x1 shortcut (gain-1 init x this)

# Where the stem differs between versions: (conv1 out, conv1 kernel, fire indices followed by max-pool)
_VERSIONS = {"1_0": (96, 7, (2, 6)), "1_1": (64, 3, (1, 3))}


def min_input_size(version: str) -> int:
    """The smallest square input a SqueezeNet of ``version`` maps to an output: 21 for v1.0, 17 for v1.1.

    Its three 3x3 stride-2 max-pools (ceil mode) take 8 pixels to 4, 2 and 1 (7 would end at 0), fire
    modules and conv10 keep the size, so conv1 (stride 2, no padding) must leave 8: kernel + 2 x 7 pixels.
    """
    if version not in _VERSIONS:
        raise ValueError(f"Unsupported SqueezeNet version {version}: 1_0 or 1_1 expected")
    return _VERSIONS[version][1] + 2 * 7


def input_too_small(version: str, size: int, subject: str = "") -> str | None:
    """None when a SqueezeNet of ``version`` takes a ``size`` x ``size`` input, else the one wording of why
    not: "at least N expected{subject} (SqueezeNet vX's pools leave no pixel of a smaller input)"."""
    low = min_input_size(version)
    return None if size >= low else (f"at least {low} expected{subject} (SqueezeNet v{version.replace('_', '.')}'s "
                                     "pools leave no pixel of a smaller input)")


class SqueezeNet(nn.Module):
    """SqueezeNet with torchvision's layout: ``features`` (stem + fires + pools) and ``classifier``.

    Args:
        version: "1_0" or "1_1" (stem and pool placement).
        num_classes: outputs of the final 1x1 conv.
        dropout: dropout before the final conv (training only).
        bypass: "none", "simple" or "complex" (the paper's macroarchitecture variants).
        meta: fire-module widths generator; defaults reproduce v1.0 / v1.1 widths.
        final_conv_padding: 0 as in torchvision; 1 for the Caffe releases whose conv10 has ``pad: 1``.
    """

    def __init__(self, version: str = "1_0", num_classes: int = 1000, dropout: float = 0.5,
                 bypass: str = "none", meta: MetaParameters | None = None,
                 final_conv_padding: int = 0) -> None:
        super().__init__()
        if version not in _VERSIONS:
            raise ValueError(f"Unsupported SqueezeNet version {version}: 1_0 or 1_1 expected")
        if num_classes < 1:
            raise ValueError(f"num_classes {num_classes}: at least 1 expected")
        if final_conv_padding not in (0, 1):  # a larger one only adds zeros, and each frame's memory grows with it
            raise ValueError(f"final_conv_padding {final_conv_padding!r}: 0 or 1 expected")
        self.version = version
        self.num_classes = num_classes
        stem, kernel, pools_after = _VERSIONS[version]
        widths = (meta or MetaParameters()).fire_widths()
        layers: list[nn.Module] = [nn.Conv2d(3, stem, kernel_size=kernel, stride=2), nn.ReLU(inplace=True),
                                   nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)]
        inplanes = stem
        for i, (s, e1, e3) in enumerate(widths):
            layers.append(Fire(inplanes, s, e1, e3, bypass))
            inplanes = e1 + e3
            if i in pools_after:
                layers.append(nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True))
        self.features = nn.Sequential(*layers)
        final_conv = nn.Conv2d(inplanes, num_classes, kernel_size=1, padding=final_conv_padding)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), final_conv, nn.ReLU(inplace=True),
                                        nn.AdaptiveAvgPool2d((1, 1)))
        if final_conv.weight.is_meta:  # a shape-only build (convert.models.check_model): nothing to initialize
            return
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m is final_conv:
                    nn.init.normal_(m.weight, mean=0.0, std=0.01)
                else:
                    nn.init.kaiming_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
        # A fire module with a bypass adds its input to its output, which doubles the activations'
        # variance at every bypass when both halves start at full scale; with no batch normalization
        # the bypass variants then died or diverged in their first epoch (feature std 4.96 simple, 43.9
        # complex, against 0.82 for v1.0 on the same input). Their expand filters start at a tenth of the
        # scale (as Fixup and SkipInit start residual branches small): 0.88 for the simple bypass. A
        # complex bypass's 1x1 shortcut (no ReLU follows it) starts at gain 1 x 0.5: at gain 1 (std 1.55)
        # it still died at the sweep's rate; x 0.5 (std 0.08) reached 77.7% validation top-1 after two
        # epochs on Fashion-MNIST at 32x32, x 0.25 74.1% (the choice was made on the validation split).
        for fire in self.features:
            if isinstance(fire, Fire) and fire.shortcut is not None:
                with torch.no_grad():
                    fire.expand1x1.weight.mul_(BYPASS_BRANCH_SCALE)
                    fire.expand3x3.weight.mul_(BYPASS_BRANCH_SCALE)
                if isinstance(fire.shortcut, nn.Conv2d):  # complex bypass: a linear map, no ReLU after it
                    nn.init.kaiming_uniform_(fire.shortcut.weight, a=1.0)  # gain 1
                    with torch.no_grad():
                        fire.shortcut.weight.mul_(SHORTCUT_SCALE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)
