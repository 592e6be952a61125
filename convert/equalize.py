"""Cross-layer range equalization for the SqueezeNet family (Nagel et al., 2019, data-aware).

int8 activations share one scale per tensor. In SqueezeNet (no batch norm) the channels of one
tensor differ in range by orders of magnitude, so the quiet channels get few quantization levels.
ReLU is positively homogeneous, so scaling a conv's output channel c by ``s_c`` and the consuming
convs' input channel c by ``1/s_c`` leaves the float function unchanged; choosing ``s_c`` from the
per-channel ranges measured on calibration images spreads the levels evenly.
"""
from __future__ import annotations

import copy
from typing import Iterable

import numpy as np
import torch
from torch import nn

from .models.squeezenet import Fire, SqueezeNet
from .observe import observe


def _pairs(model: SqueezeNet) -> list[tuple[list[tuple[nn.Conv2d, int]], list[nn.Conv2d]]]:
    """(producers as (conv, channel offset), consumers) for every equalizable tensor."""
    pairs = []
    feats = list(model.features)
    fires = [m for m in feats if isinstance(m, Fire)]
    if any(f.shortcut is not None for f in fires):
        return []  # a bypass adds tensors from two places: leave those models as they are
    prev: list[tuple[nn.Conv2d, int]] = [(feats[0], 0)]
    for fire in fires:
        pairs.append((prev, [fire.squeeze]))
        pairs.append(([(fire.squeeze, 0)], [fire.expand1x1, fire.expand3x3]))
        prev = [(fire.expand1x1, 0), (fire.expand3x3, fire.expand1x1.out_channels)]
    pairs.append((prev, [model.classifier[1]]))
    return pairs


@torch.no_grad()
def channel_ranges(model: nn.Module, convs: list[nn.Conv2d], batches: Iterable[torch.Tensor],
                   percentile: float = 99.99) -> dict[nn.Conv2d, np.ndarray]:
    """Per output channel, the max over batches of the ``percentile`` of the ReLU'd conv output."""
    ranges: dict[nn.Conv2d, np.ndarray] = {}

    def hook(conv):
        def fn(_m, _inp, out):
            v = torch.relu(out).transpose(0, 1).reshape(out.shape[1], -1)
            q = torch.quantile(v[:, :: max(1, v.shape[1] // 4096)], percentile / 100, dim=1).numpy()
            ranges[conv] = np.maximum(ranges.get(conv, q), q)
        return fn

    observe(model, convs, hook, batches)
    return ranges


@torch.no_grad()
def equalize(model: nn.Module, batches: list[torch.Tensor], strength: float = 0.5,
             max_scale: float = 32.0) -> nn.Module:
    """A float-equivalent copy of a SqueezeNet with per-channel activation ranges equalized.

    Args:
        model: a plain SqueezeNet (input as the exported graph takes it).
        batches: calibration inputs for the range measurement.
        strength: 0 = unchanged, 1 = every channel scaled up to the tensor's largest range.
        max_scale: bound on one channel's scale factor.
    Returns:
        The model itself when it is not an equalizable SqueezeNet, else a modified copy.
    """
    target = _target(model)
    if target is None:
        return model
    names = {m: n for n, m in model.named_modules()}
    producers = sorted({c for prods, _ in _pairs(target) for c, _ in prods}, key=id)
    ranges = channel_ranges(model, producers, batches)
    return equalize_from_ranges(model, {names[c]: r for c, r in ranges.items()}, strength, max_scale)[0]


def _target(model: nn.Module) -> SqueezeNet | None:
    target = model.model if hasattr(model, "model") and isinstance(model.model, SqueezeNet) else model
    return target if isinstance(target, SqueezeNet) and _pairs(target) else None


@torch.no_grad()
def equalize_from_ranges(model: nn.Module, ranges: dict[str, np.ndarray], strength: float = 0.5,
                         max_scale: float = 32.0) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """:func:`equalize` with the per-channel ranges already measured (by conv name, as
    :func:`convert.statistics.shared_statistics` gives them).

    Returns (the model or its equalized copy, per consumer conv name the scale of its input channels).
    """
    if _target(model) is None:
        return model, {}
    model = copy.deepcopy(model).eval()
    names = {m: n for n, m in model.named_modules()}
    input_scales: dict[str, torch.Tensor] = {}
    for prods, consumers in _pairs(_target(model)):
        r = np.concatenate([ranges[names[c]] for c, _ in prods])
        scale = (r.max() / np.maximum(r, r.max() / max_scale ** (1 / max(strength, 1e-6)))) ** strength
        s = torch.from_numpy(np.clip(scale, 1.0, max_scale).astype(np.float32))
        for conv, off in prods:
            part = s[off:off + conv.out_channels]
            conv.weight.mul_(part.view(-1, 1, 1, 1))
            conv.bias.mul_(part)
        for conv in consumers:
            conv.weight.div_(s.view(1, -1, 1, 1))
            input_scales[names[conv]] = s
    return model, input_scales
