"""One training epoch and one evaluation, as plain functions (torchvision's reference style).

Figures are sums reduced over all processes, so every process (and ``results.csv``) sees the
global loss and accuracy; evaluation shards the images without padding, so no image counts twice.
"""
from __future__ import annotations

import sys
import time
from typing import Callable

import numpy as np
import torch
from torch import nn

from .distributed import DistContext
from .dsd import apply_masks


class Progress:
    """A tqdm bar on a terminal; otherwise a plain line every ``every`` fraction of the epoch."""

    def __init__(self, total: int, desc: str, enabled: bool, every: float = 0.25) -> None:
        self.total, self.desc, self.enabled, self.done = total, desc, enabled, 0
        self.bar = None
        self.next_line = every
        self.every = every
        self.t0 = time.perf_counter()
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True)

    def update(self, postfix: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(postfix, refresh=False)
        elif self.enabled and self.done >= self.next_line * self.total and self.done < self.total:
            self.next_line += self.every
            print(f"  {self.desc}: {self.done}/{self.total} batches, {postfix}, "
                  f"{time.perf_counter() - self.t0:.0f}s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _topk_correct(logits: torch.Tensor, target: torch.Tensor, k: int) -> int:
    k = min(k, logits.shape[1])
    return int((logits.topk(k, dim=1).indices == target[:, None]).any(dim=1).sum())


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, scheduler,
                    ctx: DistContext, masks: dict | None = None, masked_model: nn.Module | None = None,
                    progress: Progress | None = None) -> dict:
    """Train one epoch; returns global {"loss", "top1", "images", "seconds", "images_per_s"}.

    ``model`` takes BGR pixel batches (a PixelModel, perhaps DDP-wrapped); ``masks`` are re-applied to
    ``masked_model`` after every step (the sparse phase of DSD).
    """
    model.train()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = images = 0
    t0 = time.perf_counter()
    for x, y in loader:
        x = x.to(ctx.device, non_blocking=True).float().contiguous(memory_format=torch.channels_last)
        y = y.to(ctx.device, non_blocking=True)
        logits = model(x)
        loss = criterion(logits, y)
        optimizer.zero_grad(set_to_none=True)
        (loss / len(y)).backward()
        optimizer.step()
        scheduler.step()
        apply_masks(masked_model, masks)
        loss_sum += loss.detach().double().cpu()
        correct += int((logits.detach().argmax(1) == y).sum())
        images += len(y)
        if progress is not None:
            progress.update(f"loss {loss.item() / len(y):.3f}")
    seconds = time.perf_counter() - t0
    totals = ctx.all_reduce_sum(torch.tensor([float(loss_sum), correct, images], dtype=torch.float64))
    seconds_max = ctx.all_reduce_sum(torch.tensor([seconds], dtype=torch.float64)) / ctx.world_size
    n = max(1.0, float(totals[2]))
    return {"loss": float(totals[0]) / n, "top1": 100.0 * float(totals[1]) / n, "images": int(totals[2]),
            "seconds": float(seconds_max), "images_per_s": float(totals[2]) / max(1e-9, float(seconds_max))}


@torch.no_grad()
def evaluate(model: nn.Module, loader, num_classes: int, ctx: DistContext,
             progress: Progress | None = None) -> dict:
    """Loss, top-1, top-5 and the confusion matrix (rows: true class) over this process's shard,
    summed over all processes."""
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    loss_sum = torch.zeros((), dtype=torch.float64)
    c1 = c5 = 0
    confusion = torch.zeros((num_classes, num_classes), dtype=torch.float64)
    for x, y in loader:
        x = x.to(ctx.device).float().contiguous(memory_format=torch.channels_last)
        y = y.to(ctx.device)
        logits = model(x)
        loss_sum += criterion(logits, y).double().cpu()
        c1 += _topk_correct(logits, y, 1)
        c5 += _topk_correct(logits, y, 5)
        pred = logits.argmax(1).cpu()
        confusion.index_put_((y.cpu(), pred), torch.ones(len(y), dtype=torch.float64), accumulate=True)
        if progress is not None:
            progress.update("evaluating")
    totals = ctx.all_reduce_sum(torch.tensor([float(loss_sum), c1, c5], dtype=torch.float64))
    confusion = ctx.all_reduce_sum(confusion)
    n = max(1.0, float(confusion.sum()))
    return {"loss": float(totals[0]) / n, "top1": 100.0 * float(totals[1]) / n,
            "top5": 100.0 * float(totals[2]) / n, "images": int(n),
            "confusion": confusion.numpy().astype(np.int64)}


def linear_decay(total_steps: int) -> Callable[[int], float]:
    """The paper's schedule: the rate falls linearly from its base value to zero over the phase."""
    total = max(1, total_steps)
    return lambda step: max(0.0, 1.0 - step / total)
