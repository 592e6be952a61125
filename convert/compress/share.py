"""Magnitude pruning and k-means weight sharing (Han et al., 2016), per convolution."""
from __future__ import annotations

import math

import numpy as np

from ..errors import ConvertError
from .container import SharedLayer


def prune_mask(weight: np.ndarray, sparsity: float, mask: np.ndarray | None = None) -> np.ndarray:
    """Keep-mask reaching ``sparsity`` (fraction of zeros) by dropping the smallest magnitudes.

    An existing ``mask`` (e.g. the release's pruning) is kept: pruned weights stay pruned.
    """
    mask = np.ones(weight.shape, bool) if mask is None else mask.copy()
    target_zeros = int(round(sparsity * weight.size))
    extra = target_zeros - int((~mask).sum())
    if extra > 0:
        alive = np.flatnonzero(mask.reshape(-1))
        order = np.argsort(np.abs(weight.reshape(-1)[alive]), kind="stable")[:extra]
        flat = mask.reshape(-1)
        flat[alive[order]] = False
    return mask


def kmeans_share(values: np.ndarray, bits: int, iters: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """1-D k-means of the surviving weights with linear initialization over their range.

    Returns (codebook of 2**bits float32 with entry 0 = 0.0 reserved for pruned weights, codes 1..k).
    """
    k = (1 << bits) - 1
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return np.zeros(1 << bits, np.float32), np.zeros(0, np.uint8)
    centroids = np.linspace(v.min(), v.max(), k)
    order = np.argsort(v, kind="stable")
    sv = v[order]
    for _ in range(iters):
        mids = (centroids[1:] + centroids[:-1]) / 2
        assign = np.searchsorted(mids, sv)
        sums = np.bincount(assign, weights=sv, minlength=k)
        counts = np.bincount(assign, minlength=k)
        new = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        new.sort()
        if np.allclose(new, centroids, rtol=0, atol=1e-12):
            break
        centroids = new
    mids = (centroids[1:] + centroids[:-1]) / 2
    codes = (np.searchsorted(mids, v) + 1).astype(np.uint8)
    codebook = np.concatenate([[0.0], centroids]).astype(np.float32)
    return codebook, codes


def share_layer(name: str, weight: np.ndarray, bias: np.ndarray, bits: int, mask: np.ndarray) -> SharedLayer:
    """Prune to ``mask`` and share the surviving weights among 2**bits - 1 centroids."""
    flat = weight.reshape(-1)
    keep = np.flatnonzero(mask.reshape(-1) & (flat != 0))
    codebook, codes = kmeans_share(flat[keep], bits)
    dense = np.zeros(flat.size, np.uint8)
    dense[keep] = codes
    return SharedLayer(name, tuple(weight.shape), codebook, np.asarray(bias, np.float32), dense)


def layer_spec(spec: str | None, default: float) -> dict[str, float] | float:
    """Parse "8" or "8,classifier.1=6,features.12=7" into a default and per-layer-prefix overrides."""
    out: dict[str, float] = {"*": default}
    for part in (spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        key, value = part.split("=", 1) if "=" in part else ("*", part)
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not math.isfinite(number):
            raise ConvertError(f"{spec!r}: {value.strip()!r} is not a number (e.g. '8' or "
                               "'8,classifier.1=6,features.12=7' expected)")
        out[key.strip()] = number
    return out


def covers(prefix: str, name: str) -> bool:
    """``prefix`` names layer ``name`` or a module holding it (features.1 holds features.1.squeeze, not features.12)."""
    return name == prefix or name.startswith(prefix + ".")


def for_layer(spec: dict[str, float], name: str) -> float:
    """The most specific matching prefix's value."""
    best = max((k for k in spec if k != "*" and covers(k, name)), key=len, default="*")
    return spec[best]
