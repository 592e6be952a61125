"""What the runtime shows: top-k labels with scores, inference time and frame rate."""
from __future__ import annotations

import time
from collections import deque

import cv2
import numpy as np

from .classify import Prediction


class FpsMeter:
    """Moving-average frames per second over the last ``window`` frames."""

    def __init__(self, window: int = 30) -> None:
        self.times: deque[float] = deque(maxlen=window)

    def tick(self, now: float | None = None) -> float:
        self.times.append(time.perf_counter() if now is None else now)
        if len(self.times) < 2:
            return 0.0
        span = self.times[-1] - self.times[0]
        return (len(self.times) - 1) / span if span > 0 else 0.0


def summary_line(preds: list[Prediction], infer_ms: float, fps: float) -> str:
    """One line for logs and headless mode, e.g. ``tabby 0.81 | tiger_cat 0.12 | 3.2 ms | 45.1 FPS``."""
    labels = " | ".join(f"{p.label} {p.score:.2f}" for p in preds) or "(below threshold)"
    return f"{labels} | {infer_ms:.1f} ms | {fps:.1f} FPS"


def draw(frame: np.ndarray, preds: list[Prediction], infer_ms: float, fps: float) -> np.ndarray:
    """Draw the labels and timing onto the frame in place (and return it)."""
    h = frame.shape[0]
    scale = max(0.4, min(1.0, h / 600))
    line = int(24 * scale) + 4
    rows = [f"{p.label} {100 * p.score:.0f}%" for p in preds] + [f"{infer_ms:.1f} ms  {fps:.1f} FPS"]
    box_w = int(max(cv2.getTextSize(r, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] for r in rows)) + 12
    cv2.rectangle(frame, (0, 0), (box_w, line * len(rows) + 8), (0, 0, 0), -1)
    for i, text in enumerate(rows):
        color = (255, 255, 255) if i < len(preds) else (0, 255, 255)
        cv2.putText(frame, text, (6, line * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)
    return frame
