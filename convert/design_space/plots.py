"""The sweep's plots: ``pareto.png`` (accuracy against int8 latency and against int8 size, Pareto front
marked, the paper's v1.0/v1.1 labelled) and ``curves.png`` (the paper's Figure 3 for this data set:
accuracy against the squeeze ratio and against the share of 3x3 filters, plus the bypass variants)."""
from __future__ import annotations

import io
from pathlib import Path

from edge_runtime.fileio import atomic_write

from .analysis import latency_of, pareto_front, ok_rows

V10 = dict(version="1_0", bypass="none", base_e=128, incr_e=128, freq=2)


def _pyplot():
    from edge_runtime.plotting import matplotlib_agg

    matplotlib_agg()
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write(path, buf.getvalue())


def _errorbar(ax, x, rows, **kw) -> None:
    y = [r["int8_test_top1"] for r in rows]
    lo = [r["int8_test_top1"] - r["int8_test_top1_ci95_low"] for r in rows]
    hi = [r["int8_test_top1_ci95_high"] - r["int8_test_top1"] for r in rows]
    ax.errorbar(x, y, yerr=[lo, hi], capsize=3, **kw)


def plot_pareto(results: dict, path: Path, budget_ms: float | None = None) -> None:
    """Accuracy (int8 test top-1 with 95% intervals) against invoke latency p50 and against int8 size."""
    plt = _pyplot()
    rows = ok_rows(results)
    device = results.get("device")
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.8))
    where = (f"{device['machine'].get('cpu') or 'device'}, {device['threads']} threads (--device-results)" if device
             else f"{results['machine'].get('cpu') or 'this CPU'}, {(results.get('timing') or {}).get('threads')} threads")
    axes_spec = [(axes[0], lambda r: latency_of(r, results), f"int8 invoke latency p50 (ms): {where}"),
                 (axes[1], lambda r: r["int8_bytes"] / 1024, "int8 .tflite size (KB)")]
    for ax, cost, xlabel in axes_spec:
        pts = [r for r in rows if cost(r) is not None]
        front = pareto_front(pts, cost)
        others = [r for r in pts if r not in front]
        if others:
            _errorbar(ax, [cost(r) for r in others], others, fmt="o", color="tab:blue", alpha=0.75, label="variant")
        if front:
            _errorbar(ax, [cost(r) for r in front], front, fmt="o", color="tab:red", label="Pareto front")
            xs = sorted(front, key=cost)
            ax.step([cost(r) for r in xs], [r["int8_test_top1"] for r in xs], where="post", color="tab:red", alpha=0.5)
        for r in pts:
            default = r.get("paper_default")
            ax.annotate(f"{r['name']}" + (" (paper)" if default else ""), (cost(r), r["int8_test_top1"]),
                        fontsize=8 if default else 7, fontweight="bold" if default else "normal",
                        xytext=(4, 4), textcoords="offset points")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("int8 test top-1 (%), 95% interval")
        ax.grid(alpha=0.3)
    if budget_ms is not None:
        axes[0].axvline(budget_ms, color="tab:green", linestyle="--", label=f"budget {budget_ms:g} ms")
    axes[0].set_title("Accuracy against latency")
    axes[1].set_title("Accuracy against file size")
    axes[0].legend(fontsize=8, loc="lower right")
    s = results["settings"]
    fig.suptitle(f"Design space on {Path(s['train']).parent.name or s['train']}: {s['input_size']}x{s['input_size']} "
                 f"input, {s['epochs']} epoch(s) each; front chosen on the validation split")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _series(rows: list[dict], axis: str, group: str, fixed: dict) -> dict:
    """{group value: rows sorted by axis} for rows equal to ``fixed`` elsewhere, with >= 2 points."""
    same = [r for r in rows if all(r["variant"].get(k) == v for k, v in fixed.items())]
    out: dict = {}
    for r in same:
        out.setdefault(r["variant"][group], []).append(r)
    return {g: sorted(rs, key=lambda r: r["variant"][axis]) for g, rs in sorted(out.items())
            if len({r["variant"][axis] for r in rs}) >= 2}


def plot_curves(results: dict, path: Path) -> None:
    """Top-1 (float and int8, test) against SR and against pct_3x3, sizes annotated; bypass variants."""
    plt = _pyplot()
    rows = ok_rows(results)
    fig, axes = plt.subplots(1, 3, figsize=(16, 5), gridspec_kw={"width_ratios": [3, 3, 2]})
    for ax, axis, group, title in ((axes[0], "sr", "pct_3x3", "Squeeze ratio (paper Fig. 3a)"),
                                   (axes[1], "pct_3x3", "sr", "Share of 3x3 expand filters (paper Fig. 3b)")):
        series = _series(rows, axis, group, V10)
        for g, rs in series.items():
            x = [r["variant"][axis] for r in rs]
            _errorbar(ax, x, rs, fmt="-o", label=f"int8, {group} {g:g}")
            ax.plot(x, [r["float_test_top1"] for r in rs], "--", marker=".", alpha=0.6, label=f"float, {group} {g:g}")
            for r in rs:
                ax.annotate(f"{r['int8_bytes'] / 1024:.0f} KB", (r["variant"][axis], r["int8_test_top1"]), fontsize=7,
                            xytext=(3, -11), textcoords="offset points")
        if not series:
            ax.text(0.5, 0.5, f"no {axis} series in this sweep", ha="center", transform=ax.transAxes)
        else:
            ax.legend(fontsize=8)
        ax.set_xlabel({"sr": "squeeze ratio SR", "pct_3x3": "pct_3x3"}[axis])
        ax.set_ylabel("test top-1 (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    base = {k: v for k, v in V10.items() if k != "bypass"}
    by = [r for r in rows if all(r["variant"].get(k) == v for k, v in base.items())
          and r["variant"]["sr"] == 0.125 and r["variant"]["pct_3x3"] == 0.5]
    by.sort(key=lambda r: ("none", "simple", "complex").index(r["variant"]["bypass"]))
    ax = axes[2]
    if by:
        _errorbar(ax, list(range(len(by))), by, fmt="o", color="tab:purple", label="int8")
        ax.plot(range(len(by)), [r["float_test_top1"] for r in by], "x", color="grey", label="float")
        ax.set_xticks(range(len(by)), [r["variant"]["bypass"] for r in by])
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no bypass variants in this sweep", ha="center", transform=ax.transAxes)
    ax.set_title("Bypass on v1.0 (paper Table 3)")
    ax.set_ylabel("test top-1 (%)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
