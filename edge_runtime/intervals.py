"""Confidence intervals for the figures a few hundred images give (agreement, top-1, top-1 drop).

500 images measure a proportion near 95% to about +-2 points (95% interval): a figure without its
interval invites reading noise as a difference. Pure math, no SciPy: the device side may use it.
"""
from __future__ import annotations

import math
from typing import Sequence

Z95 = 1.959963984540054  # two-sided 95%


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion, as fractions (Newcombe 1998, method 3).

    Unlike the normal approximation it stays inside [0, 1] and keeps its coverage near 0% and 100%.
    Raises ValueError for n < 1 or successes outside 0..n.
    """
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"wilson: {successes} successes of {n} trials; 0 <= successes <= n, n >= 1 expected")
    return wilson_fraction(successes / n, n, z)


def paired_difference(first: Sequence[bool], second: Sequence[bool], z: float = Z95) -> tuple[float, float, float]:
    """(difference, low, high) of P(first) - P(second) for paired outcomes on the same items, as fractions.

    Newcombe's hybrid score interval for paired proportions (Newcombe 1998, "Improved confidence
    intervals for the difference between binomial proportions based on paired data", method 10):
    the Wilson intervals of both margins, combined with the (continuity-corrected) correlation of the pairs. Used for the
    top-1 drop (float correct vs int8 correct on the same images), where the pairs are strongly
    correlated and an unpaired interval would be several times too wide.
    """
    if len(first) != len(second) or not first:
        raise ValueError(f"paired_difference: {len(first)} and {len(second)} outcomes; equal, non-zero expected")
    a = sum(1 for x, y in zip(first, second) if x and y)
    b = sum(1 for x, y in zip(first, second) if x and not y)
    c = sum(1 for x, y in zip(first, second) if y and not x)
    d = len(first) - a - b - c
    n = len(first)
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson(a + b, n, z)
    l2, u2 = wilson(a + c, n, z)
    denom = (a + b) * (c + d) * (a + c) * (b + d)
    # Newcombe's phi with his continuity correction for positive association (keeps the interval
    # from collapsing to zero width when every pair agrees)
    cross = a * d - b * c
    phi = (max(cross - n / 2, 0.0) if cross > 0 else cross) / math.sqrt(denom) if denom else 0.0
    delta = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    eps = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    diff = p1 - p2
    return diff, max(-1.0, diff - delta), min(1.0, diff + eps)


def percent_interval(successes: int, n: int) -> list[float]:
    """The Wilson 95% interval in percent, rounded to 0.1, as a JSON-friendly [low, high]."""
    lo, hi = wilson(successes, n)
    return [round(100 * lo, 1), round(100 * hi, 1)]


def clustered_interval(successes: Sequence[int], trials: Sequence[int], z: float = Z95) -> dict:
    """Agreement over views that come in correlated groups (views of one photo, frames of one clip).

    The proportion is pooled over all views; its variance is the cluster-robust (ratio-estimator)
    variance over groups, and the Wilson interval is taken at the effective sample size
    n / design effect (Kish), so 8 views of one photo count for less than 8 photos.
    Returns {"agreement", "agreement_ci95" (percent), "views", "groups", "design_effect"}.
    """
    if len(successes) != len(trials) or not trials or min(trials) < 1:
        raise ValueError("clustered_interval: one (successes, trials >= 1) pair per group expected")
    m, n = len(trials), sum(trials)
    p = sum(successes) / n
    var_binomial = p * (1 - p) / n
    if m > 1 and var_binomial > 0:
        var = m / (m - 1) * sum((s - p * t) ** 2 for s, t in zip(successes, trials)) / n ** 2
        deff = max(1.0, var / var_binomial)
    else:
        deff = n / m  # all views agree (or one group): count each group once
    n_eff = n / deff
    lo, hi = wilson_fraction(p, n_eff, z)
    return {"agreement": round(100 * p, 3), "agreement_ci95": [round(100 * lo, 1), round(100 * hi, 1)],
            "views": n, "groups": m, "design_effect": round(deff, 2)}


def wilson_fraction(p: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson interval of an observed proportion ``p`` at a (possibly effective, non-integer) size ``n``."""
    if n <= 0 or not 0 <= p <= 1:
        raise ValueError(f"wilson_fraction: p={p}, n={n}; 0 <= p <= 1, n > 0 expected")
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def standardized_interval(same: Sequence[bool], strata: Sequence[int], groups: Sequence[str],
                          reference: Sequence[float], z: float = Z95) -> dict:
    """Agreement re-weighted to a reference mix of strata (direct standardization), with a cluster-robust
    95% interval.

    Each view falls in a stratum ``0 .. len(reference) - 1``; ``reference[s]`` is the share (or count) of
    stratum s among the images the figure should describe. The figure is ``sum_s w_s * agreement_s``; its
    variance is the linearized (sandwich) variance summed per group, cluster-robust like
    :func:`clustered_interval` (and never below the variance of independent views), and the Wilson
    interval is taken at the effective size p(1-p)/variance (Korn & Graubard 1998), at most the number
    of views; with no variance (every stratum all agrees or all disagrees), the number of groups.
    Returns {"agreement", "agreement_ci95" (percent), "views", "groups", "strata": [{"weight", "views",
    "agreement"}]}. Raises ValueError when a stratum the reference weighs holds no view.
    """
    if not (len(same) == len(strata) == len(groups)) or not same or sum(reference) <= 0:
        raise ValueError("standardized_interval: one (outcome, stratum, group) per view and a positive reference")
    w = [r / sum(reference) for r in reference]
    if any(not 0 <= s < len(w) for s in strata):
        raise ValueError(f"standardized_interval: strata 0 to {len(w) - 1} expected (one reference share each)")
    n_s, a_s = [0] * len(w), [0] * len(w)
    for y, s in zip(same, strata):
        n_s[s] += 1
        a_s[s] += bool(y)
    empty = [s for s, (n, ws) in enumerate(zip(n_s, w)) if ws > 0 and n == 0]
    if empty:
        raise ValueError(f"standardized_interval: no view in stratum {empty[0]}, which the reference weighs")
    p_s = [a / n if n else 0.0 for a, n in zip(a_s, n_s)]
    p = sum(ws * ps for ws, ps in zip(w, p_s))
    influence: dict[str, float] = {}
    for y, s, g in zip(same, strata, groups):
        influence[g] = influence.get(g, 0.0) + w[s] * (float(bool(y)) - p_s[s]) / n_s[s]
    m = len(influence)
    var = m / (m - 1) * sum(v * v for v in influence.values()) if m > 1 else 0.0
    # never narrower than independent views would give (stratified binomial variance)
    var = max(var, sum(ws * ws * ps * (1 - ps) / n for ws, ps, n in zip(w, p_s, n_s) if n))
    n_eff = min(len(same), p * (1 - p) / var) if var > 0 and 0 < p < 1 else m
    lo, hi = wilson_fraction(min(1.0, max(0.0, p)), n_eff, z)
    return {"agreement": round(100 * p, 3), "agreement_ci95": [round(100 * lo, 1), round(100 * hi, 1)],
            "views": len(same), "groups": m,
            "strata": [{"weight": round(ws, 4), "views": n, "agreement": round(100 * ps, 1) if n else None}
                       for ws, n, ps in zip(w, n_s, p_s)]}
