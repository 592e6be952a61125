"""Parameters and multiply-accumulates of a model at an input size (what the paper's size axis and a
device's latency depend on), counted from the layers a forward pass actually runs."""
from __future__ import annotations

import torch
from torch import nn


def parameters(model: nn.Module) -> int:
    """Number of trainable and frozen parameters (weights and biases)."""
    return sum(p.numel() for p in model.parameters())


def macs(model: nn.Module, input_size: int) -> int:
    """Multiply-accumulates of one forward pass on a ``3 x input_size x input_size`` image.

    Convolutions count ``output elements x (input channels / groups) x kernel area``, linear layers
    ``output elements x input features``; pooling, ReLU, concatenation and additions are not counted
    (the convention of the paper's and most model zoos' MAC figures).
    """
    total = 0

    def conv(m: nn.Conv2d, _inp, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear(m: nn.Linear, _inp, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * m.in_features

    hooks = [m.register_forward_hook(conv if isinstance(m, nn.Conv2d) else linear)
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, input_size, input_size))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return int(total)
