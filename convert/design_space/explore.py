"""``explore(SweepOptions) -> results``: train, convert and measure every variant of a sweep.

For each variant, in its own folders under ``out``:

1. ``runs/NAME/``: trained by the project's trainer (``convert.train.train``), the same recipe and
   seed for every variant, from scratch (the ImageNet weights fit only v1.0's shapes);
2. ``models/NAME_int8.tflite`` (+ float siblings): converted by the project's converter
   (``convert.pipeline.convert``), calibrated on the variant's own training images and validated on
   its own validation split (int8 validation top-1: what choices are made on);
3. float and int8 test top-1 measured by the project's benchmark harness (``edge_runtime.bench``),
   parameters and MACs counted on the model.

A row is saved after every variant (``results.csv`` / ``results.json``); a failing variant is recorded
with its error and the sweep goes on; ``resume`` skips finished variants and continues a killed
training run. At the end one timing pass measures every variant's invoke latency in interleaved
rounds (so their ratios come from one period of the machine's load), then the plots and ``report.md``.
"""
from __future__ import annotations

import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_runtime import bench
from edge_runtime.evaluation import find_labelled_images
from edge_runtime.fileio import folder_clash_problem, sha256_file
from edge_runtime.intervals import wilson
from edge_runtime.metadata import read_model_info

from ..errors import check_stop
from .. import peers  # noqa: F401 (registers the workstation peers with the harness)
from . import plots, report
from . import results as R
from .counting import macs, parameters
from .variants import DesignSpaceError, Variant, check_input_size

TIMING_ROUNDS = 3


@dataclass
class SweepOptions:
    """What to sweep and how. ``None`` means the default."""

    data: Path  # class folders with train/ and test/ inside, or the training folders themselves (then ``test``)
    out: Path
    variants: list[Variant] = field(default_factory=list)
    sweep: str = "reduced"  # the name recorded (a --sweep name or the --grid text)
    test: Path | None = None
    # The recipe of every variant (README "Design space"): from scratch, 4 epochs at 32x32, batch 32, rate 0.01
    # decayed linearly. The trainer's default rate (0.04 x 32 / 512) learns too slowly from scratch in a few
    # epochs (v1.0: 27% validation top-1 after 3 epochs); at 0.02 four of the nine variants of the reduced
    # sweep died or diverged in their first two epochs (SqueezeNet has no batch norm).
    epochs: int = 4
    input_size: int = 32
    seed: int = 0
    batch_size: int | None = 32
    lr: float | None = 0.01
    min_scale: float | None = None  # random resized crop's smallest area fraction (trainer's default)
    threads: int = 2  # interpreter threads of the latency figures
    resume: bool = False
    budget_ms: float | None = None
    timing_rounds: int = TIMING_ROUNDS
    timing_runs: int = 100
    timing_min_seconds: float = 1.0
    convert_settings: dict = field(default_factory=dict)  # ConvertOptions fields (tests: cheap settings)
    quiet: bool = False


def _say(opts: SweepOptions, msg: str) -> None:
    if not opts.quiet:
        print(msg, file=sys.stderr, flush=True)


def data_folders(data: Path, test: Path | None) -> tuple[Path, Path]:
    """(training folder, test folder): ``data/train`` and ``data/test`` when they exist, else ``data`` and ``test``."""
    data = Path(data)
    if not data.is_dir():
        raise DesignSpaceError(f"--data {data}: not a folder of labelled images")
    train = data / "train" if (data / "train").is_dir() else data
    test = Path(test) if test is not None else (data / "test" if (data / "test").is_dir() else None)
    if test is None or not test.is_dir():
        raise DesignSpaceError(f"--data {data}: no test folder (DIR/train and DIR/test expected, or pass --test DIR)")
    return train.resolve(), test.resolve()


def _settings(opts: SweepOptions, train: Path, test: Path) -> dict:
    return {"train": str(train), "test": str(test), "epochs": opts.epochs, "input_size": opts.input_size,
            "seed": opts.seed, "batch_size": opts.batch_size, "lr": opts.lr, "min_scale": opts.min_scale,
            "weights": "none", "sweep": opts.sweep, "variants": [v.name for v in opts.variants],
            "convert_settings": dict(opts.convert_settings)}


# ---------------------------------------------------------------- one variant

def _count(variant: Variant, classes: int, input_size: int) -> tuple[int, int]:
    from ..models import create_model

    arch, kwargs = variant.arch()
    model = create_model(arch, num_classes=classes, **kwargs)
    return parameters(model), macs(model, input_size)


def _train(opts: SweepOptions, variant: Variant, train_dir: Path, run_dir: Path) -> dict:
    from ..train import TrainOptions, train

    arch, kwargs = variant.arch()
    resume = (run_dir / "last.pt").exists()
    if not resume and run_dir.exists():  # killed before its first epoch ended: nothing worth keeping
        shutil.rmtree(run_dir)
    return train(TrainOptions(data=train_dir, out=run_dir, arch=arch, arch_kwargs=kwargs, weights="none",
                              epochs=opts.epochs, input_size=opts.input_size, seed=opts.seed,
                              batch_size=opts.batch_size, lr=opts.lr, min_scale=opts.min_scale, resume=resume,
                              quiet=opts.quiet, argv=["design_space", variant.name]))


def _check_alive(summary: dict, classes: int) -> None:
    """A network whose every output the final ReLU zeroes ("dead": SqueezeNet has no batch norm) gives the
    uniform prediction, validation loss ln(classes), and cannot be converted meaningfully: say so here."""
    end = ((summary.get("phases") or [{}])[-1].get("end") or {})
    loss = end.get("loss")
    if loss is not None and not math.isfinite(loss):
        raise DesignSpaceError(f"training diverged (validation loss {loss}); a lower --lr trains it")
    if loss is not None and abs(loss - math.log(classes)) < 1e-4:
        raise DesignSpaceError(f"the network died: every output is 0 after the final ReLU (validation loss "
                               f"{loss:.5f} = ln {classes}, top-1 {end.get('top1')}%); a lower --lr trains it")


def _convert(opts: SweepOptions, variant: Variant, run_dir: Path, int8: Path) -> dict:
    import json

    from ..pipeline import ConvertOptions, convert

    best = run_dir / "best.pt"
    report_path = run_dir / "convert.json"
    if int8.exists() and report_path.exists():
        info = read_model_info(int8)
        if info is not None and info.extra.get("weights_sha256") == sha256_file(best):
            return json.loads(report_path.read_text())  # converted from these very weights already
    run = json.loads((run_dir / "run.json").read_text())
    settings = {"min_agreement": None, "max_top1_drop": None, **opts.convert_settings}
    return convert(ConvertOptions(out=int8, weights=str(best), calib=Path(run["calib_dir"]),
                                  val=Path(run["val_dir"]), report=report_path, model_name=variant.name,
                                  quiet=opts.quiet, **settings))


def _accuracy(case: bench.Case, images: Path) -> dict:
    r = bench.run_case(case, runs=1, warmup=0, min_seconds=0.0, images=str(images), source=None)
    if "error" in r:
        raise DesignSpaceError(f"benchmark harness, {case.runtime} on {images.name}: {r['error']}")
    return r


def _measure(int8: Path, test_dir: Path, threads: int) -> dict:
    """Float and int8 test top-1 through the benchmark harness, with each image's int8 correctness."""
    q = _accuracy(bench.Case(f"{int8.stem} int8", "tflite", str(int8), threads, str(int8)), test_dir)
    peer = bench.PEERS["onnxruntime"]
    f = _accuracy(bench.Case(f"{int8.stem} float", peer.name, str(peer.model_for(int8)), threads, str(int8),
                             module=peer.module), test_dir)
    info = read_model_info(int8)
    targets = find_labelled_images(test_dir, info.wnids, info.labels).targets
    predicted = q["accuracy"]["top1_indices"]
    if len(predicted) != len(targets):
        raise DesignSpaceError(f"{test_dir}: {len(predicted)} predictions for {len(targets)} test images")
    correct = "".join("1" if p == t else "0" for p, t in zip(predicted, targets))
    n, k = len(correct), correct.count("1")
    lo, hi = wilson(k, n)
    return {"float_test_top1": round(f["accuracy"]["top1"], 3), "int8_test_top1": round(100 * k / n, 3),
            "int8_test_top1_ci95_low": round(100 * lo, 2), "int8_test_top1_ci95_high": round(100 * hi, 2),
            "test_images": n, "test_correct": correct}


def _base_row(opts: SweepOptions, variant: Variant) -> dict:
    arch, kwargs = variant.arch()
    return {"name": variant.name, "variant": variant.to_dict(), "paper_default": variant.paper_default, "arch": arch,
            "arch_kwargs": kwargs, **variant.to_dict(), "input_size": opts.input_size, "epochs": opts.epochs,
            "status": "running", "error": None}


def run_variant(opts: SweepOptions, variant: Variant, train_dir: Path, test_dir: Path, classes: int) -> dict:
    """Train, convert and measure one variant; returns its row (status "ok" or "failed", never raises
    for the variant's own errors, so the sweep goes on)."""
    out = Path(opts.out)
    row = _base_row(opts, variant)
    run_dir, int8 = out / "runs" / variant.name, out / "models" / f"{variant.name}_int8.tflite"
    stage = "counting"
    try:
        row["params"], row["macs"] = _count(variant, classes, opts.input_size)
        row["classes"] = classes  # the report's chance level
        stage = "training"
        summary = _train(opts, variant, train_dir, run_dir)
        _check_alive(summary, classes)
        row["train_seconds"] = summary.get("train_seconds")  # the epochs' own time, also after a resume
        row["float_val_top1"] = summary.get("val_top1")
        stage = "conversion"
        conv = _convert(opts, variant, run_dir, int8)
        row["convert_seconds"] = conv.get("total_seconds")
        val = conv["validation"].get("val") or {}
        row["int8_val_top1"] = val.get("int8_top1")
        row["val_agreement"] = val.get("agreement")
        row["int8_file"], row["int8_bytes"] = int8.name, int8.stat().st_size
        row["float_tflite_bytes"] = conv["sizes"]["float_tflite"]
        stage = "measurement"
        t = time.perf_counter()
        row.update(_measure(int8, test_dir, opts.threads))
        row["measure_seconds"] = round(time.perf_counter() - t, 1)
        row["status"] = "ok"
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # noqa: BLE001 (one variant's failure is recorded; the sweep goes on)
        check_stop()  # a SIGTERM whose exception a native module turned into its own error: a stop, not a failure
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        row.update(status="failed", error=f"{stage}: {text}"[:500])
    return row


# ---------------------------------------------------------------- the timing pass

def time_variants(results: dict, out: Path, threads: int, rounds: int = TIMING_ROUNDS, runs: int = 100,
                  min_seconds: float = 1.0, progress=lambda m: None) -> None:
    """Invoke latency of every finished variant, ``rounds`` interleaved passes in one period of time:
    p50 / p90 are the medians of the rounds' figures, peak RSS the largest (each case in a child process)."""
    rows = [r for r in results["variants"] if r.get("status") == "ok"]
    if not rows:
        return
    t0, before = time.perf_counter(), [round(v, 2) for v in os.getloadavg()]
    samples: dict[str, list[dict]] = {r["name"]: [] for r in rows}
    for k in range(rounds):
        for r in rows:
            path = Path(out) / "models" / r["int8_file"]
            res = bench.run_case(bench.Case(r["name"], "tflite", str(path), threads, str(path)), runs, 10,
                                 min_seconds, None, None)
            if "error" in res:
                progress(f"timing {r['name']}: {res['error']}")
                continue
            samples[r["name"]].append(res)
        progress(f"timing round {k + 1}/{rounds} done")
    for r in rows:
        got = samples[r["name"]]
        r["threads"] = threads
        if not got:
            r["p50_ms"] = r["p90_ms"] = r["peak_rss_mb"] = None
            continue
        r["p50_ms"] = round(float(np.median([g["latency_ms"]["p50"] for g in got])), 4)
        r["p90_ms"] = round(float(np.median([g["latency_ms"]["p90"] for g in got])), 4)
        r["peak_rss_mb"] = max(g["peak_rss_mb"] for g in got)
    results["timing"] = {"threads": threads, "rounds": rounds, "runs_per_round": runs, "min_seconds": min_seconds,
                         "seconds": round(time.perf_counter() - t0, 1), "loadavg_before": before,
                         "loadavg_after": [round(v, 2) for v in os.getloadavg()],
                         "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


# ---------------------------------------------------------------- the sweep

def _check_out(opts: SweepOptions, train: Path, test: Path) -> dict | None:
    """The sweep already in ``opts.out`` (None: a new one), after refusing an --out among the data, or holding a
    sweep (finished or only started: its runs/) without ``resume``."""
    out = Path(opts.out)
    problem = folder_clash_problem("--out", out, (("--data", opts.data), ("--data", train), ("--test", test)),
                                   ("runs",))
    if problem:
        raise DesignSpaceError(problem)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DesignSpaceError(f"--out {out}: cannot create the folder ({e.strerror})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise DesignSpaceError(f"--out {out}: not writable")
    existing = R.load(out)
    started = existing is not None or any((out / "runs").glob("*/run.json"))  # (one started before results.json)
    if started and not opts.resume:
        raise DesignSpaceError(f"--out {out} already holds a sweep: pass --resume to continue it, or choose "
                               "another --out (nothing is overwritten)")
    return existing


def finish(out: Path, results: dict, budget_ms: float | None) -> None:
    """Plots and report.md from the results (also after --device-results)."""
    out = Path(out)
    if any(r.get("status") == "ok" for r in results["variants"]):
        plots.plot_pareto(results, out / "pareto.png", budget_ms)
        plots.plot_curves(results, out / "curves.png")
    report.write(out, results, budget_ms)
    R.save(out, results)


def explore(opts: SweepOptions) -> dict:
    """Run the sweep; returns the results (also in ``opts.out``).

    Raises:
        DesignSpaceError: bad data folder, output folder, or a --resume with other settings. A variant that
        fails does not raise: its row says why.
    """
    if not opts.variants:
        raise DesignSpaceError("no variants to sweep")
    if min(opts.epochs, opts.threads, opts.timing_rounds, opts.timing_runs) < 1 or not opts.timing_min_seconds >= 0:
        raise DesignSpaceError(f"--epochs {opts.epochs} / --threads {opts.threads} / --rounds {opts.timing_rounds} / "
                               f"--runs {opts.timing_runs} / --min-seconds {opts.timing_min_seconds}: seconds >= 0 "
                               "and the others >= 1 expected")
    check_input_size(opts.variants, opts.input_size)
    train_dir, test_dir = data_folders(opts.data, opts.test)
    existing = _check_out(opts, train_dir, test_dir)
    settings = _settings(opts, train_dir, test_dir)
    if existing is not None:
        R.check_same_settings(existing, settings, Path(opts.out))
        results = existing
        results["settings"]["variants"] = list(dict.fromkeys([*results["settings"].get("variants", []),
                                                               *settings["variants"]]))
    else:
        results = R.new(settings, bench.machine())
        R.save(Path(opts.out), results)  # before the first variant: a sweep killed in it is one to --resume
    classes = len([p for p in train_dir.iterdir() if p.is_dir() and not p.name.startswith(".")])
    t0, base_seconds = time.perf_counter(), results.get("wall_seconds") or 0
    todo = [v for v in opts.variants if (R.row_of(results, v) or {}).get("status") != "ok"]
    if existing is not None and todo and results.get("device"):  # models change: the device measured others
        _say(opts, "device timings cleared (variants are trained again): merge them again with --device-results")
        results["device"] = None
        for row in results["variants"]:
            for col in ("device", "device_threads", "device_p50_ms", "device_p90_ms", "device_peak_rss_mb"):
                row[col] = None
    _say(opts, f"design space: {len(opts.variants)} variants ({len(opts.variants) - len(todo)} done already), "
               f"{opts.epochs} epochs at {opts.input_size}x{opts.input_size}, out {opts.out}")
    for i, variant in enumerate(todo):
        left = ""
        if i:
            per = (time.perf_counter() - t0) / i
            left = f"; about {per * (len(todo) - i) / 60:.0f} min left"
        _say(opts, f"[{i + 1}/{len(todo)}] {variant.name}: {variant.arch()[0]} {variant.arch()[1] or ''}{left}")
        row = run_variant(opts, variant, train_dir, test_dir, classes)
        R.put_row(results, row)
        results["wall_seconds"] = round(base_seconds + time.perf_counter() - t0, 1)  # a killed run's time counts
        R.save(Path(opts.out), results)
        if row["status"] == "ok":
            _say(opts, f"[{i + 1}/{len(todo)}] {variant.name}: int8 test top-1 {row['int8_test_top1']:.2f}% "
                       f"(float {row['float_test_top1']:.2f}%), {row['int8_bytes'] / 1024:.0f} KB")
        else:
            _say(opts, f"[{i + 1}/{len(todo)}] {variant.name} FAILED: {row['error']}")
    wanted = {v.name for v in opts.variants}
    _say(opts, f"timing every finished variant at {opts.threads} threads, {opts.timing_rounds} interleaved rounds")
    time_variants(results, Path(opts.out), opts.threads, opts.timing_rounds, opts.timing_runs,
                  opts.timing_min_seconds, progress=lambda m: _say(opts, m))
    results["wall_seconds"] = round(base_seconds + time.perf_counter() - t0, 1)
    results["failed"] = [r["name"] for r in results["variants"] if r.get("status") != "ok" and r["name"] in wanted]
    # --budget-ms: this run's, else the one the sweep was started with (a resume keeps its recommendation)
    results["budget_ms"] = opts.budget_ms if opts.budget_ms is not None else results.get("budget_ms")
    finish(Path(opts.out), results, results["budget_ms"])
    return results
