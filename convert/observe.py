"""Run calibration batches through a model while forward hooks watch some of its modules."""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn


@torch.no_grad()
def observe(model: nn.Module, modules: list[nn.Module], hook_for: Callable[[nn.Module], Callable],
            batches: Iterable[torch.Tensor]) -> None:
    """Call ``model`` on every batch with ``hook_for(m)`` registered as a forward hook of each ``m``."""
    handles = [m.register_forward_hook(hook_for(m)) for m in modules]
    try:
        for x in batches:
            model(x)
    finally:
        for h in handles:
            h.remove()
