"""A finer int8 grid for the first fires' squeeze outputs, exact in float (range splitting).

Most of the int8 model's error comes from one tensor: the first fire's squeeze output (16 channels at
55x55 feeding every later layer), quantized per tensor to 256 levels over a range set by its rare large
values. Measured on the release weights (tuning half of val500 + the check views): widening only that
tensor's range 1.5x raises the int8 error of near-tie margins from 0.249 to 0.336 logits, widening the
fire's output next to it barely moves it (0.257); simulated, the tensor alone accounts for about half
of the activations' error.

The split writes that activation as two halves of one tensor, each covering half the range:

    relu(y) = min(relu(y), T) + relu(y - T)        T = half the measured range of relu(y)

The squeeze convolution is doubled (the second copy's bias lowered by T), the first copy's activation
becomes ReLU6 (its output scaled by 6 / T, which ReLU6 clips at exactly T), and the expand convolutions
take both halves with their input weights duplicated. The function is unchanged in float (the halves
add up to relu(y)), and the int8 tensor's scale halves, so its rounding error does too. The second
copy's channels are stored in reverse order: with identical weights the TFLite converter would merge
the two convolutions into one whose signed output it quantizes. Cost: the squeeze and expand
convolutions of the fire read 2x their input channels (+4% multiply-adds on SqueezeNet v1.0 for one
fire).
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .models.squeezenet import Fire

RELU6 = 6.0


class SplitSqueeze(nn.Module):
    """``cat(min(relu(y), T), relu(y - T))`` of a squeeze convolution's output y, in units of T / 6."""

    def __init__(self, squeeze: nn.Conv2d, threshold: float) -> None:
        super().__init__()
        k = RELU6 / threshold
        self.low, self.high = copy.deepcopy(squeeze), copy.deepcopy(squeeze)
        with torch.no_grad():
            self.low.weight.mul_(k)
            self.low.bias.mul_(k)
            self.high.weight.copy_(squeeze.weight.flip(0) * k)
            self.high.bias.copy_((squeeze.bias.flip(0) - threshold) * k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.relu6(self.low(x)), F.relu(self.high(x))], 1)


def fires(model: nn.Module) -> list[tuple[str, Fire]]:
    """(name, module) of the model's fires in the order they run."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, Fire)]


def thresholds(model: nn.Module, ranges: dict[str, np.ndarray], input_scales: dict[str, torch.Tensor],
               count: int) -> dict[str, float]:
    """Per fire to split (the first ``count``), T = half its squeeze output's range.

    Args:
        ranges: per conv name, each output channel's range measured on the model before equalization.
        input_scales: per consumer conv name, the equalization's scale of its input channels (empty: none).
    """
    out = {}
    for name, fire in fires(model)[:count]:
        r = ranges[f"{name}.squeeze"].astype(np.float64)
        s = input_scales.get(f"{name}.expand1x1")
        if s is not None:
            r = r * s.double().numpy()
        if r.max() > 0:
            out[name] = float(r.max()) / 2
    return out


@torch.no_grad()
def split_squeezes(model: nn.Module, split: dict[str, float]) -> nn.Module:
    """A float-equivalent copy of ``model`` with the squeeze output of each fire in ``split`` (name ->
    threshold T) written as two halves of range T (see the module docstring)."""
    if not split:
        return model
    model = copy.deepcopy(model)
    named = dict(fires(model))
    for name, threshold in split.items():
        fire = named[name]
        n = fire.squeeze.out_channels
        fire.squeeze = SplitSqueeze(fire.squeeze, threshold)
        fire.squeeze_activation = nn.Identity()
        for conv in (fire.expand1x1, fire.expand3x3):
            w = conv.weight * (threshold / RELU6)
            conv.weight = nn.Parameter(torch.cat([w, w.flip(1)], 1))
            conv.in_channels = 2 * n
    return model
