"""The run's reports: results.csv, curves.png, confusion.png, metrics.json, run.json (all atomic)."""
from __future__ import annotations

import csv
import io
import json
import platform
import warnings
from pathlib import Path

import numpy as np

from edge_runtime.fileio import atomic_write
from edge_runtime.plotting import matplotlib_agg

COLUMNS = ("epoch", "phase", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5",
           "seconds", "images_per_s")
TIMING = ("seconds", "images_per_s")  # the only columns that differ between identical runs


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def write_results(path: Path, rows: list[dict]) -> None:
    """results.csv: one row per epoch, columns :data:`COLUMNS`."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow([_fmt(r.get(c)) for c in COLUMNS])
    atomic_write(path, buf.getvalue())


def write_json(path: Path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=1, sort_keys=False) + "\n")


def _save_figure(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write(path, buf.getvalue())


def plot_curves(path: Path, rows: list[dict]) -> None:
    """Loss and top-1 against epoch, train and validation, phases shaded."""
    matplotlib_agg()
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((ax_loss, "loss", "loss"), (ax_acc, "top1", "top-1 (%)")):
        ax.plot(epochs, [r[f"train_{key}"] for r in rows], "o-", label="train")
        val = [(r["epoch"], r[f"val_{key}"]) for r in rows if r.get(f"val_{key}") is not None]
        if val:
            ax.plot(*zip(*val), "s-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        start = 0
        for i, r in enumerate(rows + [{"phase": None}]):  # phase boundaries
            if i and r["phase"] != rows[i - 1]["phase"]:
                ax.axvspan(rows[start]["epoch"] - 0.5, rows[i - 1]["epoch"] + 0.5,
                           color=f"C{2 + len({x['phase'] for x in rows[:start]}) % 6}", alpha=0.08)
                ax.text(rows[start]["epoch"] - 0.4, 0.98, rows[start]["phase"], transform=ax.get_xaxis_transform(),
                        va="top", fontsize=8)
                start = i
        ax.legend(loc="best")
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


def undrawable(texts: list[str]) -> tuple[str, list[str]]:
    """(the plots' font, the ``texts`` holding a character it has no glyph for: drawn as empty boxes). Debian's
    fonts-dejavu covers Latin, Greek and Cyrillic, not CJK; no font is ever downloaded."""
    matplotlib_agg()
    from matplotlib import font_manager

    font = font_manager.get_font(font_manager.findfont(font_manager.FontProperties()))
    return font.family_name, [t for t in texts if any(not c.isspace() and not font.get_char_index(ord(c)) for c in t)]


def plot_confusion(path: Path, confusion: np.ndarray, classes: list[str], title: str) -> None:
    """Row-normalized confusion matrix (rows: true class), counts in the cells when it stays legible.
    Matplotlib's warning per character its font cannot draw is kept off the console (see :func:`undrawable`)."""
    matplotlib_agg()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font", category=UserWarning)
        _plot_confusion(path, confusion, classes, title)


def _plot_confusion(path: Path, confusion: np.ndarray, classes: list[str], title: str) -> None:
    import matplotlib.pyplot as plt

    n = len(classes)
    norm = confusion / np.maximum(1, confusion.sum(1, keepdims=True))
    size = min(16.0, 3.0 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if n <= 40:
        ax.set_xticks(range(n), classes, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), classes, fontsize=8)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if confusion[i, j]:
                    ax.text(j, i, str(int(confusion[i, j])), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


def per_class(confusion: np.ndarray, classes: list[str]) -> list[dict]:
    """Per-class accuracy (recall), images and the class it is most often mistaken for."""
    out = []
    for i, name in enumerate(classes):
        row = confusion[i]
        n = int(row.sum())
        wrong = row.copy()
        wrong[i] = 0
        out.append({"class": name, "images": n, "top1": round(100.0 * row[i] / n, 3) if n else None,
                    "most_confused_with": classes[int(wrong.argmax())] if wrong.sum() else None})
    return out


def versions() -> dict:
    import cv2
    import torch

    from ..torchvision_compat import import_torchvision

    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": import_torchvision().__version__, "numpy": np.__version__, "opencv": cv2.__version__,
            "platform": platform.platform(), "cpu": _cpu_name()}


def _cpu_name() -> str:
    from edge_runtime.bench import cpu_record  # the benchmark's and the converter's reading: a Pi's board too

    return cpu_record()[0]
