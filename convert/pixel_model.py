"""The float model as the int8 artifact sees it: raw BGR pixels in, logits out.

This is the single place where a weights record's mean/std and channel order are applied on the
float side; the evaluator, the converter and the compression stage all run models through it.
"""
from __future__ import annotations

import torch
from torch import nn

from edge_runtime.preprocess import Preprocessing


class PixelModel(nn.Module):
    """Wraps a classifier: input NCHW float32 pixel values 0..255 in BGR order (as OpenCV and
    :func:`edge_runtime.preprocess.resize_crop` deliver them), normalization done inside."""

    def __init__(self, model: nn.Module, preprocessing: Preprocessing) -> None:
        super().__init__()
        self.model = model
        self.swap = preprocessing.channel_order == "RGB"
        mean = torch.tensor(preprocessing.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(preprocessing.std, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("mean", mean)
        self.register_buffer("inv_std", 1.0 / std)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """BGR 0..255 pixels -> the bare model's input (channel order, mean and std applied)."""
        return ((x.flip(1) if self.swap else x) - self.mean) * self.inv_std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x))

    def folded(self) -> nn.Module:
        """An equivalent plain model with channel order and mean/std folded into the first conv.

        Exact only when that conv has no padding (SqueezeNet's conv1 has none); otherwise the
        wrapper itself is returned so the normalization stays explicit in the graph.
        """
        import copy

        first = next((m for m in self.model.modules() if isinstance(m, nn.Conv2d)), None)
        if first is None or first.padding not in ((0, 0), 0, "valid") or first.in_channels != 3 \
                or first.groups != 1:
            return self
        model = copy.deepcopy(self.model)
        conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        with torch.no_grad():
            w = conv.weight * self.inv_std.view(1, 3, 1, 1)  # y = W((x - m) / s) + b
            bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
            bias = bias - (w * self.mean.view(1, 3, 1, 1)).sum(dim=(1, 2, 3))
            if self.swap:
                w = w.flip(1)
            conv.weight.copy_(w)
            if conv.bias is None:
                conv.bias = nn.Parameter(bias)
            else:
                conv.bias.copy_(bias)
        return model
