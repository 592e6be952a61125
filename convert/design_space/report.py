"""``report.md``: the sweep's table, the paper's trends on this data set, and the recommendation for the
measured device under a latency budget."""
from __future__ import annotations

from pathlib import Path

from .analysis import (SELECT, beyond_chance, chance, latency_of, no_trends, ok_rows, pareto_front, recommend,
                       trends)


def _n(v, fmt: str = ".1f") -> str:
    return "-" if v is None else format(v, fmt)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def table(results: dict) -> str:
    """The results as a Markdown table (failed variants listed with their error)."""
    device = results.get("device")
    rows = ok_rows(results)
    front = {r["name"] for r in pareto_front(rows, lambda r: latency_of(r, results) or float("inf"))}
    head = ["variant", "params", "MMACs", "int8 KB", "float test top-1", "int8 test top-1 [95%]", "int8 val top-1",
            "p50 ms", "p90 ms", "peak RSS MB"]
    if device:
        head += ["device p50 ms", "device p90 ms"]
    head.append("front")
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in results["variants"]:
        if r.get("status") != "ok":
            lines.append(f"| {r['name']} | failed: {r.get('error') or r.get('status')} |" + " |" * (len(head) - 2))
            continue
        name = r["name"] + (f" (paper {r['paper_default']})" if r.get("paper_default") else "")
        cells = [name, f"{r['params']:,}", _n(r["macs"] / 1e6), _n(r["int8_bytes"] / 1024, ".0f"),
                 _n(r.get("float_test_top1"), ".2f"),
                 f"{r['int8_test_top1']:.2f} [{r['int8_test_top1_ci95_low']:.1f}, {r['int8_test_top1_ci95_high']:.1f}]",
                 _n(r.get("int8_val_top1"), ".2f"), _n(r.get("p50_ms"), ".3f"), _n(r.get("p90_ms"), ".3f"),
                 _n(r.get("peak_rss_mb"))]
        if device:
            cells += [_n(r.get("device_p50_ms"), ".3f"), _n(r.get("device_p90_ms"), ".3f")]
        cells.append("yes" if r["name"] in front else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def recommendation(results: dict, budget_ms: float) -> str:
    rec = recommend(results, budget_ms)
    where = (f"the device ({results['device']['machine'].get('cpu') or '?'}, {results['device']['threads']} threads)"
             if results.get("device") else
             f"this machine ({results['machine'].get('cpu') or '?'}, int8 ISA: "
             f"{'/'.join(results['machine'].get('isa') or []) or 'none listed'}, {(results.get('timing') or {}).get('threads', '?')} threads)")
    c = rec["choice"]
    if c is None:
        f = rec["fastest"]
        if f is None:
            return f"No variant was measured; nothing to recommend for a {budget_ms:g} ms budget."
        return (f"No variant runs within {budget_ms:g} ms on {where}: the fastest, {f['name']}, takes "
                f"{latency_of(f, results):.3f} ms (p50). Lower --input-size, or choose a faster device.")
    learned = [beyond_chance(r) for r in ok_rows(results)]
    if learned and not any(learned) and None not in learned:  # every variant known to be at chance
        best = max(ok_rows(results), key=lambda r: r["int8_test_top1"])
        return (f"Nothing to recommend: no variant learned beyond chance ({chance(best):.2f}%, 1 in {best['classes']} "
                f"classes): the 95% interval of every int8 test top-1 includes it (the best, {best['name']}: "
                f"{best['int8_test_top1']:.2f}% [{best['int8_test_top1_ci95_low']:.1f}, "
                f"{best['int8_test_top1_ci95_high']:.1f}]). Train longer (--epochs), on more images, or at another "
                "--lr, then compare again.")
    lat = latency_of(c, results)
    text = (f"For a {budget_ms:g} ms budget on {where}, ship **{c['name']}** ({c['arch']}"
            f"{' ' + str(c['arch_kwargs']) if c['arch_kwargs'] else ''}): the best int8 validation top-1 "
            f"({c[SELECT]:.2f}%) of the {_plural(len(rec['within']), 'variant')} within the budget, p50 {lat:.3f} ms, "
            f"{c['int8_bytes'] / 1024:.0f} KB, {c['params']:,} parameters, {c['macs'] / 1e6:.1f} MMACs; its test top-1 is "
            f"{c['int8_test_top1']:.2f}% [{c['int8_test_top1_ci95_low']:.1f}, {c['int8_test_top1_ci95_high']:.1f}] "
            f"(float {c['float_test_top1']:.2f}%).")
    if rec["next"] is not None:
        n = rec["next"]
        text += (f" The next variant on the front, {n['name']}, would need {latency_of(n, results):.3f} ms for "
                 f"{n[SELECT]:.2f}% validation top-1.")
    else:
        text += " No variant on the front is slower: the budget is not what limits accuracy here."
    return text


def markdown(results: dict, budget_ms: float | None) -> str:
    s, m, t = results["settings"], results["machine"], results.get("timing") or {}
    lines = [f"# Design space: {s.get('sweep')}", "",
             f"Training images `{s['train']}`, test images `{s['test']}` ({_plural(s['epochs'], 'epoch')} per variant, "
             f"{s['input_size']}x{s['input_size']} input, seed {s['seed']}, batch {s.get('batch_size')}, rate "
             f"{s.get('lr')}, weights {s['weights']}; the same recipe "
             "for every variant). Each variant was trained with `python -m convert train`'s library, converted to "
             "int8 by the project's converter calibrated on its own training images, and measured by the project's "
             "benchmark harness.", "",
             f"Machine: {m.get('cpu')}, {m.get('cores')} cores, int8 ISA {'/'.join(m.get('isa') or []) or 'none listed'}, "
             f"{m.get('interpreter')} {m.get('interpreter_version')}. Latencies: "
             f"{_plural(t.get('rounds') or 0, 'interleaved round')} "
             f"of every variant at {t.get('threads')} threads (median of the rounds' p50 and p90), load average "
             f"{t.get('loadavg_before')} before and {t.get('loadavg_after')} after: on a shared machine compare ratios.",
             "", table(results), ""]
    if results.get("device"):
        d = results["device"]
        lines += [f"Device timings merged from `{d['file']}`: {d['machine'].get('cpu')}, {d['threads']} threads "
                  f"({len(d['matched'])} variants matched).", ""]
    lines += ["Selection (front, recommendation) uses each variant's int8 top-1 on its validation split (held-out "
              "training images); test figures are only reported. Intervals: Wilson 95%; differences: paired 95% "
              "intervals on the same test images.", "", "## The paper's trends on this data set", ""]
    lines += [f"- {t}" for t in trends(results)] or [f"- ({no_trends(results)})"]
    if budget_ms is not None:
        lines += ["", f"## Recommendation ({budget_ms:g} ms budget)", "", recommendation(results, budget_ms)]
    if any(r.get("status") == "ok" for r in results["variants"]):  # the plots are drawn from finished variants
        lines += ["", "Plots: `pareto.png` (accuracy against latency and size, front marked), `curves.png` "
                  "(accuracy against SR and pct_3x3, bypass).", ""]
    else:
        lines += ["", "No variant finished: no plots.", ""]
    if results.get("wall_seconds"):
        lines.append(f"Sweep wall time: {results['wall_seconds'] / 60:.1f} min.")
    return "\n".join(lines) + "\n"


def write(out: Path, results: dict, budget_ms: float | None) -> Path:
    from .results import write_text

    path = Path(out) / "report.md"
    write_text(path, markdown(results, budget_ms))
    return path
