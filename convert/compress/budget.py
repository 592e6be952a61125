"""Per-layer bits and pruning chosen to fit a size budget, without labels.

Each convolution has a ladder of steps: one bit fewer for its shared weights, or ``PRUNE_STEP`` more
of its surviving weights pruned. A step's cost is how far it moves the network's output away from the
uncompressed model's on unlabelled calibration views (mean KL divergence of the class probabilities,
the label-free form of the paper's per-layer sensitivity analysis), measured with only that layer
changed; its gain is the bytes it saves in the container. Steps are taken greedily, cheapest
distortion per byte first, until the container fits the budget. No label is read.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..errors import ConvertError
from . import container as sqz
from .share import prune_mask, share_layer

MIN_BITS = 4
PRUNE_STEP = 0.2  # fraction of a layer's surviving weights pruned by one step
MAX_PRUNE = 0.6


@dataclass(frozen=True)
class LayerChoice:
    bits: int
    prune: float  # extra fraction of the source's surviving weights pruned


def layer_bytes(layer: sqz.SharedLayer) -> int:
    """The bytes this layer takes in a container (exact: the container's layers are coded independently)."""
    empty = sqz.Container(record="x", arch="x", num_classes=1, layers=[])
    return len(sqz.encode(sqz.Container("x", "x", 1, [layer]))) - len(sqz.encode(empty))


class _Suffix:
    """Runs the network from the module that holds a given layer, on cached inputs of that module."""

    def __init__(self, model: nn.Module, x: torch.Tensor) -> None:
        self.model = model.eval()
        self.inputs: dict[int, torch.Tensor] = {}
        with torch.no_grad():
            h = x
            for i, m in enumerate(model.features):
                self.inputs[i] = h
                h = m(h)
            self.inputs[len(model.features)] = h  # the classifier's input
            self.reference = torch.log_softmax(model.classifier(h).flatten(1), 1)

    def _start(self, name: str) -> int:
        parts = name.split(".")
        return int(parts[1]) if parts[0] == "features" else len(self.model.features)

    @torch.no_grad()
    def distortion(self, name: str, weight: torch.Tensor) -> float:
        """Mean KL(reference || model with ``name``'s weight replaced) over the cached views."""
        start = self._start(name)
        module = dict(self.model.named_modules())[name]
        saved = module.weight.data.clone()
        module.weight.data.copy_(weight)
        try:
            h = self.inputs[start]
            for m in list(self.model.features)[start:]:
                h = m(h)
            out = torch.log_softmax(self.model.classifier(h).flatten(1), 1)
        finally:
            module.weight.data.copy_(saved)
        return float(torch.sum(self.reference.exp() * (self.reference - out), 1).mean())


def choose_layers(model: nn.Module, views: torch.Tensor, budget: int, header_bytes: int,
                  base_bits: int = 8, progress: Callable[[str], None] | None = None
                  ) -> tuple[list[sqz.SharedLayer], dict]:
    """Shared layers that fit ``budget`` bytes (with ``header_bytes`` of container around them).

    Args:
        model: the uncompressed SqueezeNet (normalized input), e.g. ``PixelModel.model``.
        views: normalized calibration views (N x 3 x H x W), unlabelled.
    Returns:
        (the layers, a summary: per-layer bits / pruning / distortion, the estimated total bytes).
    Raises:
        ConvertError: even the smallest allowed setting of every layer does not fit.
    """
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    names = [k[:-7] for k, v in model.state_dict().items() if k.endswith(".weight") and v.dim() == 4]
    suffix = _Suffix(copy.deepcopy(model), views)

    def make(name: str, choice: LayerChoice) -> sqz.SharedLayer:
        w, b = state[f"{name}.weight"], state[f"{name}.bias"]
        alive = w != 0
        sparsity = 1 - alive.mean() * (1 - choice.prune)
        return share_layer(name, w, b, choice.bits, prune_mask(w, sparsity, mask=alive))

    smallest = header_bytes + sum(layer_bytes(make(n, LayerChoice(MIN_BITS, MAX_PRUNE))) for n in names)
    if smallest > budget:
        raise ConvertError(f"--size-budget {budget:,}: the smallest allowed settings ({MIN_BITS} bits, "
                           f"{MAX_PRUNE:.0%} more pruning) still need {smallest:,} bytes")
    current = {n: LayerChoice(base_bits, 0.0) for n in names}
    if progress:
        progress(f"output distortion of the {len(names)} layers at {base_bits} bits, then of each layer's next "
                 f"step ({MIN_BITS}..{base_bits} bits, up to {MAX_PRUNE:.0%} more pruning): the first step takes longest")
    layers = {n: make(n, current[n]) for n in names}
    sizes = {n: layer_bytes(layers[n]) for n in names}
    costs = {n: suffix.distortion(n, torch.from_numpy(layers[n].weight())) for n in names}
    total = header_bytes + sum(sizes.values())
    candidates: dict[tuple[str, LayerChoice], tuple[sqz.SharedLayer, int, float]] = {}

    def steps(name: str) -> list[LayerChoice]:
        c = current[name]
        out = []
        if c.bits > MIN_BITS:
            out.append(LayerChoice(c.bits - 1, c.prune))
        if c.prune + PRUNE_STEP <= MAX_PRUNE + 1e-9:
            out.append(LayerChoice(c.bits, round(c.prune + PRUNE_STEP, 3)))
        return out

    taken = 0
    history: list[tuple[float, str, tuple, LayerChoice]] = []  # (rate, layer, its state before, choice after)
    while total > budget:
        best = None
        for name in names:
            for choice in steps(name):
                key = (name, choice)
                if key not in candidates:
                    layer = make(name, choice)
                    candidates[key] = (layer, layer_bytes(layer),
                                       suffix.distortion(name, torch.from_numpy(layer.weight())))
                layer, size, cost = candidates[key]
                saved = sizes[name] - size
                if saved <= 0:
                    continue
                rate = max(cost - costs[name], 0.0) / saved
                if best is None or rate < best[0]:
                    best = (rate, name, choice)
        if best is None:
            raise ConvertError(f"--size-budget {budget:,}: the smallest allowed settings ({MIN_BITS} bits, "
                               f"{MAX_PRUNE:.0%} more pruning) still need {total:,} bytes")
        rate, name, choice = best
        layer, size, cost = candidates[(name, choice)]
        history.append((rate, name, (current[name], layers[name], sizes[name], costs[name]), choice))
        total -= sizes[name] - size
        current[name], layers[name], sizes[name], costs[name] = choice, layer, size, cost
        taken += 1
        if progress and (taken == 1 or taken % 5 == 0):
            progress(f"budget: {taken} steps, {total:,} bytes")
    # the last step usually overshoots: undo the costliest steps (per byte) that still fit
    undone = 0
    for rate, name, before, after in sorted(history, key=lambda h: -h[0]):
        if rate <= 0 or current[name] != after:
            continue  # free steps stay; only a layer's latest step can be undone
        if total + before[2] - sizes[name] <= budget:
            total += before[2] - sizes[name]
            current[name], layers[name], sizes[name], costs[name] = before
            undone += 1
    summary = {"budget": budget, "estimated_bytes": total, "steps": taken - undone,
               "distortion": "mean KL(float || compressed) of the class probabilities on unlabelled views, "
                             "one layer at a time",
               "layers": {n: {"bits": current[n].bits, "extra_pruning": current[n].prune,
                              "bytes": sizes[n], "kl": round(costs[n], 6)} for n in names}}
    return [layers[n] for n in names], summary
