"""Reading the sweep: the Pareto front, the recommendation under a latency budget, and the paper's
trends checked with paired 95% intervals (the same test images for every variant).

Choices are made on the validation split (``int8_val_top1``: each variant's own held-out training
images, through its int8 artifact), never on the test images whose figures are reported.
"""
from __future__ import annotations

import math
from typing import Callable

from edge_runtime.intervals import paired_difference

SELECT = "int8_val_top1"  # what choices are made on
REPORT = "int8_test_top1"  # what is reported


def ok_rows(results: dict) -> list[dict]:
    return [r for r in results["variants"] if r.get("status") == "ok" and r.get(REPORT) is not None]


def latency_of(row: dict, results: dict) -> float | None:
    """The invoke p50 the front is drawn on: the device's when merged, else this machine's."""
    return row.get("device_p50_ms") if results.get("device") else row.get("p50_ms")


def pareto_front(rows: list[dict], cost: Callable[[dict], float], key: str = SELECT) -> list[dict]:
    """Rows no other row beats on both ``cost`` (lower) and ``key`` accuracy (higher), cheapest first."""
    front, best = [], -math.inf
    for r in sorted(rows, key=lambda r: (cost(r), -(r.get(key) or 0.0))):
        acc = r.get(key)
        if acc is not None and acc > best:
            front.append(r)
            best = acc
    return front


def recommend(results: dict, budget_ms: float) -> dict:
    """The variant on the latency front with the best validation accuracy within ``budget_ms``.

    Returns:
        {"budget_ms", "latency_source", "choice" (row or None), "within" (names), "next" (the cheapest
        front variant above the budget, or None), "fastest" (row)}.
    """
    rows = [r for r in ok_rows(results) if latency_of(r, results) is not None and r.get(SELECT) is not None]
    front = pareto_front(rows, lambda r: latency_of(r, results))
    within = [r for r in front if latency_of(r, results) <= budget_ms]
    above = [r for r in front if latency_of(r, results) > budget_ms]
    return {"budget_ms": budget_ms, "latency_source": "device" if results.get("device") else "this machine",
            "choice": within[-1] if within else None, "within": [r["name"] for r in rows
                                                                if latency_of(r, results) <= budget_ms],
            "next": above[0] if above else None,
            "fastest": min(rows, key=lambda r: latency_of(r, results)) if rows else None}


def chance(row: dict) -> float | None:
    """The top-1 of guessing, in percent (100 / classes); None for a row that does not record its classes."""
    classes = row.get("classes")
    return 100.0 / classes if classes else None


def beyond_chance(row: dict) -> bool | None:
    """Whether the variant learned anything: its int8 test top-1's 95% interval lies above :func:`chance`
    (None: not known). A statement about the reported figures, not a choice between variants."""
    c, low = chance(row), row.get("int8_test_top1_ci95_low")
    return None if c is None or low is None else low > c


def paired(a: dict, b: dict) -> tuple[float, float, float] | None:
    """(difference, low, high) in points of int8 test top-1, ``a`` minus ``b``, on the same images."""
    ca, cb = a.get("test_correct"), b.get("test_correct")
    if not ca or not cb or len(ca) != len(cb):
        return None
    d, lo, hi = paired_difference([c == "1" for c in ca], [c == "1" for c in cb])
    return 100 * d, 100 * lo, 100 * hi


def _fmt(p: tuple[float, float, float] | None) -> str:
    return "n/a" if p is None else f"{p[0]:+.1f} points [{p[1]:+.1f}, {p[2]:+.1f}]"


def _series(rows: list[dict], axis: str, fixed: dict) -> list[dict]:
    same = [r for r in rows if all(r["variant"].get(k) == v for k, v in fixed.items())]
    return sorted(same, key=lambda r: r["variant"][axis])


BASE = {"version": "1_0", "bypass": "none", "base_e": 128, "incr_e": 128, "freq": 2}


def no_trends(results: dict) -> str:
    """Why :func:`trends` found nothing to check: what each trend needs, and the series this sweep holds."""
    rows = ok_rows(results)
    sr = _series(rows, "sr", {**BASE, "pct_3x3": 0.5})
    pct = max((_series(rows, "pct_3x3", {**BASE, "sr": s}) for s in {r["variant"]["sr"] for r in rows}),
              key=len, default=[])
    held = [name + " " + ", ".join(format(r["variant"][axis], "g") for r in series)
            for name, axis, series in (("SR", "sr", sr), ("pct_3x3", "pct_3x3", pct)) if len(series) > 1]
    return ("no trend can be checked: the squeeze ratio's needs at least 3 finished variants that differ only in "
            "SR (pct_3x3 0.5, the rest v1.0's); the 3x3 share's at least 3 that differ only in pct_3x3, 0.5 "
            "between the smallest and the largest; the bypass comparison no bypass and a simple or complex one at "
            f"SR 0.125. This sweep's {_count(len(rows), 'finished variant')} hold "
            + (f"the series {'; '.join(held)} (plotted in curves.png, too short to test)" if held else "no series"))


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def trends(results: dict) -> list[str]:
    """Plain statements of whether the paper's three trends reappear, with paired 95% intervals."""
    rows = ok_rows(results)
    out = []
    sr = _series(rows, "sr", {**BASE, "pct_3x3": 0.5})
    if len(sr) >= 3:
        steps = [(x, y, paired(y, x)) for x, y in zip(sr, sr[1:])]
        rise = paired(sr[-1], sr[0])
        first, last = steps[0][2], steps[-1][2]
        rises = rise is not None and rise[1] > 0
        # saturating: the last step gains nothing significant, or less than half of what the first gained
        saturates = last is not None and first is not None and (last[1] <= 0 or last[0] < first[0] / 2)
        verdict = ("rises with SR and saturates" if rises and saturates else
                   "rises with SR without saturating" if rises else "does not rise significantly with SR")
        out.append(f"Squeeze ratio: int8 test top-1 {verdict} (paper: rises, saturates at SR 0.75). "
                   f"SR {sr[0]['variant']['sr']:g} -> {sr[-1]['variant']['sr']:g}: {_fmt(rise)}; steps: "
                   + "; ".join(f"{x['variant']['sr']:g}->{y['variant']['sr']:g} {_fmt(p)}" for x, y, p in steps) + ".")
    for s in sorted({r["variant"]["sr"] for r in rows}):
        pct = _series(rows, "pct_3x3", {**BASE, "sr": s})
        mid = next((r for r in pct if r["variant"]["pct_3x3"] == 0.5), None)
        if len(pct) < 3 or mid is None or pct[0] is mid or pct[-1] is mid:
            continue
        below, above = paired(mid, pct[0]), paired(pct[-1], mid)
        rises = below is not None and below[1] > 0
        flat = above is not None and above[1] <= 0
        verdict = ("rises up to 50% and saturates" if rises and flat else
                   "saturates (no significant rise below 50%)" if flat else
                   "keeps rising above 50%" if above is not None and above[1] > 0 else "shows no clear trend")
        out.append(f"Share of 3x3 filters (SR {s:g}): int8 test top-1 {verdict} (paper: saturates around 50%). "
                   f"pct_3x3 {pct[0]['variant']['pct_3x3']:g} -> 0.5: {_fmt(below)}; 0.5 -> "
                   f"{pct[-1]['variant']['pct_3x3']:g}: {_fmt(above)}.")
    by = {r["variant"]["bypass"]: r for r in _series(rows, "sr", {**{k: v for k, v in BASE.items() if k != "bypass"},
                                                                 "sr": 0.125, "pct_3x3": 0.5})}
    if "none" in by and ("simple" in by or "complex" in by):
        parts = []
        for kind in ("simple", "complex"):
            if kind in by:
                p = paired(by[kind], by["none"])
                word = ("above" if p and p[1] > 0 else "below" if p and p[2] < 0 else
                        "not significantly different from")
                parts.append(f"{kind} bypass is {word} no bypass ({_fmt(p)})")
        out.append("Bypass: " + "; ".join(parts) + " (paper, ImageNet top-1: none 57.5%, simple 60.4%, complex 58.8%).")
    return out
