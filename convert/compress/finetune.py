"""Centroid fine-tuning without labels: distil the uncompressed model into the shared centroids.

Each layer's weights are ``codebook[codes]``; the gradient of a centroid is the sum of the gradients
of the weights in its cluster (the paper's rule, here by autograd through the gather). Code 0 (pruned)
stays 0. The target is the uncompressed model's output on unlabelled photos (knowledge distillation).
"""
from __future__ import annotations

import sys

import numpy as np
import torch
from torch import nn

from .container import SharedLayer


def finetune_centroids(student: nn.Module, teacher: nn.Module, layers: list[SharedLayer], crops: np.ndarray,
                       steps: int = 150, batch: int = 16, lr: float = 1e-4, temperature: float = 2.0,
                       seed: int = 0, progress: bool = True) -> list[SharedLayer]:
    """Return layers with fine-tuned codebooks (codes unchanged). ``student``/``teacher`` take pixel batches.

    Deterministic: the same inputs give the same codebooks, so the same container, bit for bit (the
    centroid gradients sum millions of weight gradients; with PyTorch's default, threaded kernels that
    sum came out in another order on each run, and so did about half the codebook entries).
    """
    was = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return _finetune(student, teacher, layers, crops, steps, batch, lr, temperature, seed, progress)
    finally:
        torch.use_deterministic_algorithms(was[0], warn_only=was[1])


def _finetune(student: nn.Module, teacher: nn.Module, layers: list[SharedLayer], crops: np.ndarray, steps: int,
              batch: int, lr: float, temperature: float, seed: int, progress: bool) -> list[SharedLayer]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    params = dict(student.named_parameters())
    prefix = "model." if any(k.startswith("model.") for k in params) else ""
    books = [torch.nn.Parameter(torch.from_numpy(l.codebook.copy())) for l in layers]
    codes = [torch.from_numpy(l.codes.astype(np.int64)) for l in layers]
    # scale the step to each layer's weight range so every layer moves comparably
    scales = [float(np.abs(l.codebook).max()) or 1.0 for l in layers]
    opt = torch.optim.Adam([{"params": [b], "lr": lr * s} for b, s in zip(books, scales)])
    x_all = torch.from_numpy(crops.transpose(0, 3, 1, 2).astype(np.float32))
    teacher.eval()
    student.eval()  # no dropout: we match the deployed function
    with torch.no_grad():
        targets = torch.cat([teacher(x_all[i:i + 32]) for i in range(0, len(x_all), 32)])
    for step in range(steps):
        idx = torch.from_numpy(rng.choice(len(x_all), size=min(batch, len(x_all)), replace=False))
        override = {f"{prefix}{l.name}.weight": (b * (torch.arange(len(b)) > 0))[c].reshape(l.shape)
                    for l, b, c in zip(layers, books, codes)}
        out = torch.func.functional_call(student, override, (x_all[idx],))
        t = temperature
        loss = nn.functional.kl_div(nn.functional.log_softmax(out / t, 1), nn.functional.softmax(targets[idx] / t, 1),
                                    reduction="batchmean") * t * t
        opt.zero_grad()
        loss.backward()
        opt.step()
        if progress and (step + 1) % 25 == 0:
            print(f"  fine-tune step {step + 1}/{steps}: distillation loss {loss.item():.4f}", file=sys.stderr, flush=True)
    out = []
    for l, b in zip(layers, books):
        book = b.detach().numpy().astype(np.float32)
        book[0] = 0.0
        out.append(SharedLayer(l.name, l.shape, book, l.bias, l.codes))
    return out
