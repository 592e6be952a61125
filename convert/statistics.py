"""One pass over the calibration views for the float-side statistics of the conversion.

Equalization needs each convolution's per-channel output range; GPTQ needs each convolution's input
second moments in the *equalized* model. Equalization only rescales channels (exact in float), so
both come from one pass over the unequalized model: the moments are rescaled afterwards by the
equalization's input-channel scales (H_eq = D H D, D the scale of each input position).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch import nn

from .observe import observe
from .rounding import add_moments


@torch.no_grad()
def shared_statistics(model: nn.Module, batches: Iterable[torch.Tensor], percentile: float = 99.99,
                      max_rows: int = 20_000, want_ranges: bool = True, want_moments: bool = True,
                      ) -> tuple[dict[str, np.ndarray], dict[str, torch.Tensor]]:
    """(per conv name: the max over batches of each output channel's ``percentile`` after ReLU,
    per conv name: E[x x^T] of its unfolded input patches), from a single pass over ``batches``;
    ``want_ranges=False`` / ``want_moments=False`` leave that dict empty (and no pass runs without either).

    Patches are strided to at most ``max_rows`` per image (deterministic), as GPTQ's own statistics.
    """
    convs = {m: n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    ranges: dict[str, np.ndarray] = {}
    if not (want_ranges or want_moments):
        return ranges, {}
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(conv):
        name = convs[conv]

        def fn(_m, inp, out):
            if want_ranges:
                v = torch.relu(out).transpose(0, 1).reshape(out.shape[1], -1)
                q = torch.quantile(v[:, :: max(1, v.shape[1] // 4096)], percentile / 100, dim=1).numpy()
                ranges[name] = np.maximum(ranges.get(name, q), q)
            if want_moments:
                add_moments(conv, inp[0], name, sums, counts, max_rows)
        return fn

    observe(model, list(convs), hook, batches)
    return ranges, {n: sums[n] / counts[n] for n in sums}


def rescale_moments(moments: dict[str, torch.Tensor], model: nn.Module,
                    input_scales: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Second moments of the equalized model's conv inputs: input channel c scaled by s_c."""
    convs = dict(model.named_modules())
    out = {}
    for name, H in moments.items():
        s = input_scales.get(name)
        if s is None:
            out[name] = H
            continue
        conv = convs[name]
        d = s.double().repeat_interleave(conv.kernel_size[0] * conv.kernel_size[1])  # unfold: channel-major
        out[name] = H * d[:, None] * d[None, :]
    return out
