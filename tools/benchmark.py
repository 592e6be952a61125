"""``python -m tools.benchmark``: int8 .tflite models on this device, side by side with other runtimes.

Thin CLI: the device-side harness is ``edge_runtime/bench.py`` (each case in its own child process)
and ``edge_runtime/bench_report.py``; the workstation peers (ONNX Runtime, its QDQ int8, OpenCV DNN,
PyTorch) are adapters in ``convert/peers.py``, used when the converter's package is present.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from edge_runtime import bench, bench_report
from edge_runtime.classify import model_file_problem
from edge_runtime.fileio import HeldResult, atomic_write, outputs_problem, read_bounded, same_file, tell
from edge_runtime.flags import (GATE_MISSED, MAX_THREADS, add_json_flag, deprecated, json_path_to_report,
                                nonnegative_float, nonnegative_int, positive_int, seconds_arg)
from edge_runtime.sources import is_stream, masked

try:  # the workstation peers register themselves; a device without convert/ has only the TFLite ones
    import convert.peers  # noqa: F401
except ImportError:
    pass

EXAMPLES = """examples:
  python -m tools.benchmark --model build/squeezenet1_0_int8.tflite --threads 1,2,4
  python -m tools.benchmark --model build/squeezenet1_0_int8.tflite --peers onnxruntime,tflite-fp32,opencv-dnn,pytorch \\
      --val ../shared/imagenet/val500 --source samples/sample_clip.mp4 --report build/bench.json --plot build/bench.png
  python -m tools.benchmark --model build/squeezenet1_0_int8.tflite \\
      --reference benchmarks/reference-x86_64-2core.json --fail-on-regression
"""

MAX_REFERENCE_BYTES = 16 << 20  # a --report file: room for about two million latency samples (8 bytes each)


def _threads(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        values = []
    if not values or not all(1 <= v <= MAX_THREADS for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated thread counts from 1 to {MAX_THREADS} expected, "
                                         "e.g. 1,2,4")
    return values


def _unknown_peer(name: str) -> str:
    return f"unknown peer {name!r}: one of {', '.join(bench.PEERS)}"


def _peers(text: str) -> list[str]:
    """``--peers``: known peer names, comma-separated (a typo would measure nothing and exit 0)."""
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [n for n in names if n not in bench.PEERS]
    if unknown:
        raise argparse.ArgumentTypeError(_unknown_peer(unknown[0]))
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.benchmark", epilog=EXAMPLES,
                                description="Latency percentiles, load time, size, memory and accuracy of "
                                            "TFLite models and their float peers, each case in its own process.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, type=Path, help=".tflite model (repeat for several)")
    p.add_argument("--threads", type=_threads, default=[2], help="comma-separated thread counts (default 2)")
    p.add_argument("--runs", type=positive_int, default=100, help="minimum timed runs (default 100)")
    p.add_argument("--warmup", type=nonnegative_int, default=10, help="untimed warm-up runs (default 10)")
    p.add_argument("--min-seconds", type=seconds_arg, default=2.0, help="minimum timed duration per case (default 2)")
    p.add_argument("--val", help="labelled images: adds top-1/top-5 and agreement with the first case")
    deprecated(p, "--images", "--val", "val")
    p.add_argument("--source", help="video clip: adds end-to-end FPS through the runtime's frame loop")
    p.add_argument("--peers", type=_peers, default=[], help="comma-separated peers of the first model: "
                                                           f"{','.join(bench.PEERS)}")
    add_json_flag(p, "print the results as JSON on stdout, the table on stderr")
    p.add_argument("--report", type=Path, help="write the results as JSON here (atomically)")
    p.add_argument("--csv", type=Path, help="write the results as CSV here (atomically)")
    p.add_argument("--plot", type=Path, help="write a PNG plot (needs matplotlib)")
    p.add_argument("--no-verify", action="store_true",
                   help="benchmark models whose integrity checksum does not match (experiments only)")
    p.add_argument("--reference", type=Path, help="stored results (a --report file) to compare with")
    p.add_argument("--tolerance", type=nonnegative_float, default=0.3,
                   help="allowed relative regression, 0 or more (default 0.3: 30%% slower, 30%% lower top-1)")
    p.add_argument("--fail-on-regression", action="store_true",
                   help=f"exit {GATE_MISSED} when a figure regresses past tolerance (or no case compares)")
    return p


def build_cases(models: list[Path], threads: list[int], peers: list[str],
                verify: bool = True) -> tuple[list[bench.Case], list[str]]:
    """The int8 cases of every model and thread count, and the peers of the first model (notes say
    which peers were skipped and why)."""
    cases, notes = [], []
    stems = [m.stem for m in models]
    short = [m.stem if stems.count(m.stem) == 1 else f"{m.parent.name or '.'}/{m.stem}" for m in models]
    for m, name in zip(models, short):  # a label names its file; two files of one name by their folders
        if short.count(name) > 1:  # folders of one name too (a/x/m, b/x/m): the whole path
            name = str(m.with_suffix(""))
        for t in threads:
            cases.append(bench.Case(f"{name} tflite x{t}", "tflite", str(m), t, str(m), verify))
    first = models[0]
    for name in peers:
        peer = bench.PEERS.get(name)
        if peer is None:
            notes.append(_unknown_peer(name))
            continue
        try:
            path = peer.model_for(first)
        except bench.PeerUnavailable as e:
            notes.append(f"peer {name} skipped: {e}")
            continue
        for t in threads:
            cases.append(bench.Case(f"{name} x{t}", name, str(path), t, str(first), verify, module=peer.module))
    return cases, notes


def main(argv: list[str] | None = None) -> int:
    """The command line; Ctrl-C and SIGTERM end it with one line (the case being measured is stopped)."""
    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _run(args)
    except KeyboardInterrupt:
        tell("error: interrupted: nothing written (--report, --csv and --plot are written when every case "
             "has run)")
        return 130
    except OSError as e:  # an output that could not be written after all (a full disk): a file there is kept
        flag = next((flag for flag, path in _outputs(args) if path and str(path) == e.filename), None)
        where = f"{flag} {e.filename}: " if flag else f"{e.filename}: " if e.filename else ""
        tell(f"error: {where}{e.strerror or e}" + (" (not written)" if flag else ""))
        return 2


def _outputs(args: argparse.Namespace) -> tuple[tuple[str, Path | None], ...]:
    return ("--report", args.report), ("--csv", args.csv), ("--plot", args.plot)


def _interrupt(*_args) -> None:
    raise KeyboardInterrupt


def _run(args: argparse.Namespace) -> int:
    json_path_to_report(args)
    problem = outputs_problem(_outputs(args), [*(("--model", m) for m in args.model), ("--reference", args.reference),
                                               ("--val", args.val), ("--source", args.source)])
    if problem:  # before minutes of measuring
        tell(f"error: {problem}")
        return 2
    for i, m in enumerate(args.model):  # one file twice would give two cases of one label
        if twice := next((earlier for earlier in args.model[:i] if same_file(m, earlier)), None):
            same = "" if str(twice) == str(m) else f" (the same file as --model {twice})"
            tell(f"error: --model {m}: given twice{same}; each model once")
            return 2
    for flag, path in (("--val", args.val), ("--source", args.source)):
        if path and not is_stream(path) and not Path(path).exists():  # before minutes of measuring
            tell(f"error: {flag} {path}: no such file or folder")
            return 2
    reference = None
    if args.reference:
        from edge_runtime.metadata import MAX_JSON_DEPTH, json_depth

        problem = None
        try:
            data = read_bounded(args.reference, MAX_REFERENCE_BYTES)
            text = data.decode("utf-8")  # a report is UTF-8 (json.loads of bytes would also take UTF-16)
            if json_depth(data) > MAX_JSON_DEPTH:  # before the parser, whose bound a library may have lifted
                problem = "nested too deeply (a --report file expected)"
            else:
                reference = bench_report.check_reference(json.loads(text))
        except UnicodeDecodeError:
            problem = "not UTF-8 text (a --report file expected)"
        except json.JSONDecodeError as e:  # json's own words alone ("Expecting value: ...") do not say what is wrong
            problem = f"not a benchmark report: not JSON ({e}; a --report file of python -m tools.benchmark expected)"
        except (OSError, ValueError) as e:
            problem = str(e)
        if problem:
            tell(f"error: --reference {args.reference}: {problem}")
            return 2
    if not args.no_verify:
        from edge_runtime.integrity import verify_file
        from edge_runtime.metadata import MetadataError

        for m in args.model:
            try:
                if Path(m).is_file():
                    verify_file(m)
            except MetadataError as e:
                tell(f"error: {e}")
                return 2
    threads = args.threads
    cases, notes = build_cases(args.model, threads, args.peers, verify=not args.no_verify)
    results = []
    for i, case in enumerate(cases):
        tell(f"[{i + 1}/{len(cases)}] {case.label} ...")
        problem = model_file_problem(case.path)
        if problem:
            results.append({**case.__dict__, "error": f"{case.path}: {problem}"})
            continue
        results.append(bench.run_case(case, args.runs, args.warmup, args.min_seconds, args.val,
                                      args.source if case.runtime == "tflite" else None))
    no_agreement = bench_report.add_agreement(results)
    out = {"machine": bench.machine(),  # a stream's password stays out of the report
           "settings": {k: masked(v) if k == "source" else str(v) for k, v in vars(args).items()},
           "notes": notes + ([no_agreement] if no_agreement else []) + ["each case ran in its own child process (ONNX Runtime with its default spinning pool)"],
           "results": results}
    shown = [bench_report.table(results)]
    shown += [f"note: {n}" for n in out["notes"] + ([out["machine"]["warning"]] if "warning" in out["machine"] else [])]
    shown += [f"{r['label']}: end-to-end {p['fps']:.1f} FPS over {p['frames']} frames = {p['ratio']:.2f} of the "
              f"invoke-only rate {p['invoke_only_fps']:.1f}/s" for r in results if (p := r.get("pipeline"))]
    # shown first (a --report that meets a full disk still leaves the figures on the screen); a reader that left
    # (`| head -1`) is no error, and a result that cannot be shown (`> /dev/full`) is said after the files. With
    # --json the result is the JSON on stdout and the table is the run's account on stderr, lost if it cannot
    # be written (a full log)
    result = HeldResult()
    show = tell if args.json else result.show
    show("\n".join(shown))
    for r in results:
        if "error" in r:
            tell(f"error: {r['label']}: {r['error']}")
    if args.json:
        result.show(json.dumps(out))
    if args.report:
        atomic_write(args.report, json.dumps(out, indent=1) + "\n")
    if args.csv:
        atomic_write(args.csv, bench_report.to_csv(results))
    msg = bench_report.plot(results, args.plot) if args.plot else None
    if msg:
        show(f"note: {msg}")
    rc = 0 if all("error" not in r for r in results) else 2
    if reference is not None:
        note = bench_report.machine_difference(reference.get("machine", {}), out["machine"])
        worse, compared = bench_report.compare(results, reference, args.tolerance)
        if note or worse:
            show("\n".join([f"note: {note}"] * bool(note) + [f"regression: {w}" for w in worse]))
        if not compared:  # a gate that compared nothing must not pass silently
            tell(f"{'error' if args.fail_on_regression else 'note'}: no case matches a case of --reference "
                 f"{args.reference} (cases are matched by label: model file stem, runtime, threads)")
        if (worse or not compared) and args.fail_on_regression and rc == 0:  # a failed case (2) says more
            rc = GATE_MISSED
    return result.exit_code(rc)


if __name__ == "__main__":
    sys.exit(main())
