"""Dense -> sparse -> dense (Han et al., 2017), with the pruning of :mod:`convert.compress.share`.

The sparse phase prunes every convolution to the given fraction of zeros by magnitude (per layer,
``prune_mask``) and keeps those masks while retraining; the final dense phase drops the masks and
retrains all weights at a lower rate.
"""
from __future__ import annotations

import torch
from torch import nn

from ..compress.share import prune_mask


def conv_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The convolution weight tensors by state-dict name."""
    return {name: p for name, p in model.named_parameters() if name.endswith(".weight") and p.dim() == 4}


def magnitude_masks(model: nn.Module, sparsity: float) -> dict[str, torch.Tensor]:
    """Keep-masks (bool) reaching ``sparsity`` in every convolution, smallest magnitudes dropped."""
    return {name: torch.from_numpy(prune_mask(w.detach().cpu().numpy(), sparsity)).to(w.device)
            for name, w in conv_weights(model).items()}


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor] | None) -> None:
    """Zero the pruned weights (after every optimizer step while the masks are kept)."""
    if not masks:
        return
    weights = conv_weights(model)
    for name, mask in masks.items():
        weights[name].mul_(mask)


def sparsity(model: nn.Module) -> float:
    """Fraction of zeros over all convolution weights."""
    ws = list(conv_weights(model).values())
    zeros = sum(int((w == 0).sum()) for w in ws)
    return zeros / max(1, sum(w.numel() for w in ws))
