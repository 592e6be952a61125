"""The sweep's results: one row per variant in ``results.csv`` and ``results.json``, written atomically
after every variant (a killed sweep keeps what it finished), read back by ``--resume``, and merged with
timings measured on a device by ``tools/benchmark.py`` (``--device-results``)."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from edge_runtime.fileio import FileTooLarge, atomic_write, atomic_write_many, read_bounded

from .variants import DesignSpaceError, Variant

FORMAT = "squeezenet-edge/design-space"
VERSION = 1
MAX_RESULTS_BYTES = 64 << 20  # results files are ours, but --device-results comes from elsewhere

COLUMNS = ("name", "paper_default", "arch", "arch_kwargs", "version", "sr", "pct_3x3", "bypass", "base_e", "incr_e",
           "freq", "input_size", "epochs", "params", "macs", "float_val_top1", "int8_val_top1", "float_test_top1",
           "int8_test_top1", "int8_test_top1_ci95_low", "int8_test_top1_ci95_high", "test_images", "val_agreement",
           "int8_file", "int8_bytes",
           "float_tflite_bytes", "threads", "p50_ms", "p90_ms", "peak_rss_mb", "device", "device_threads",
           "device_p50_ms", "device_p90_ms", "device_peak_rss_mb", "train_seconds", "convert_seconds",
           "measure_seconds", "status", "error")
# What makes two sweeps comparable: --resume continues a sweep only with the same values.
IDENTITY = ("train", "test", "epochs", "input_size", "seed", "batch_size", "lr", "min_scale", "weights", "convert_settings")


def _read_json(path: Path, what: str) -> dict:
    try:
        obj = json.loads(read_bounded(path, MAX_RESULTS_BYTES).decode("utf-8"))
    except FileTooLarge as e:
        raise DesignSpaceError(f"{what} {e}") from None
    except FileNotFoundError:
        raise DesignSpaceError(f"{what} {path}: no such file") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DesignSpaceError(f"{what} {path}: not readable JSON ({e})") from None
    if not isinstance(obj, dict):
        raise DesignSpaceError(f"{what} {path}: a JSON object expected")
    return obj


def load(out: Path) -> dict | None:
    """The results a sweep wrote in ``out`` (None when it holds none).

    Raises:
        DesignSpaceError: the file is unreadable or not this project's design-space results.
    """
    path = Path(out) / "results.json"
    if not path.exists():
        return None
    obj = _read_json(path, "results")
    if obj.get("format") != FORMAT or not isinstance(obj.get("variants"), list):
        raise DesignSpaceError(f"{path}: not design-space results (format {FORMAT!r} expected)")
    for row in obj["variants"]:
        if not isinstance(row, dict) or not isinstance(row.get("name"), str) or not isinstance(row.get("variant"), dict):
            raise DesignSpaceError(f"{path}: a variant row without name or variant")
    return obj


def new(settings: dict, machine: dict) -> dict:
    return {"format": FORMAT, "version": VERSION, "settings": settings, "machine": machine, "timing": None,
            "device": None, "variants": []}


def check_same_settings(results: dict, settings: dict, out: Path) -> None:
    """--resume continues a sweep only with the settings it was started with."""
    was = results.get("settings", {})
    for key in IDENTITY:
        if key in settings and was.get(key) != settings[key]:
            raise DesignSpaceError(f"--resume: {out} was swept with {key} {was.get(key)!r}, not {settings[key]!r} "
                                   "(start a new --out to change it)")


def row_of(results: dict, variant: Variant) -> dict | None:
    return next((r for r in results["variants"] if r["name"] == variant.name), None)


def put_row(results: dict, row: dict) -> None:
    """Insert or replace the row of ``row['name']``, keeping the sweep's order."""
    rows = results["variants"]
    for i, r in enumerate(rows):
        if r["name"] == row["name"]:
            rows[i] = row
            return
    rows.append(row)


def csv_text(results: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in results["variants"]:
        w.writerow(["" if r.get(c) is None else json.dumps(r[c], sort_keys=True) if isinstance(r.get(c), dict)
                    else r[c] for c in COLUMNS])
    return buf.getvalue()


def save(out: Path, results: dict) -> None:
    """Write results.json and results.csv together (both or neither)."""
    out = Path(out)
    atomic_write_many({out / "results.json": json.dumps(results, indent=1) + "\n", out / "results.csv": csv_text(results)})


def merge_device(results: dict, device_file: Path, threads: int | None = None) -> dict:
    """Copy the timings ``tools/benchmark.py`` measured on a device into the rows of the same models.

    A device result belongs to a variant when it measured the ``tflite`` runtime on a file of the same
    name and byte size as the variant's int8 artifact. With several thread counts measured, ``threads``
    picks one (required then).

    Returns:
        {"file", "machine", "threads", "matched", "unmatched"}: what was merged (also kept in results["device"]).

    Raises:
        DesignSpaceError: unreadable file, no thread count chosen, or no result matching any variant.
    """
    obj = _read_json(Path(device_file), "--device-results")
    found = [r for r in obj.get("results", []) if isinstance(r, dict) and r.get("runtime") == "tflite"
             and "error" not in r and isinstance(r.get("latency_ms"), dict)]
    counts = sorted({int(r.get("threads", 0)) for r in found})
    if not found:
        raise DesignSpaceError(f"--device-results {device_file}: no tflite results (the JSON of python -m tools.benchmark --report "
                               "expected)")
    if threads is None:
        if len(counts) > 1:
            raise DesignSpaceError(f"--device-results {device_file}: measured at {counts} threads; pass --threads "
                                   "to choose one")
        threads = counts[0]
    if threads not in counts:
        raise DesignSpaceError(f"--device-results {device_file}: no results at {threads} threads (measured: {counts})")
    by_file = {(Path(str(r.get("path", ""))).name, r.get("size_bytes")): r for r in found if int(r["threads"]) == threads}
    matched, used = [], set()
    for row in results["variants"]:
        key = (row.get("int8_file"), row.get("int8_bytes"))
        r = by_file.get(key)
        for col in ("device", "device_threads", "device_p50_ms", "device_p90_ms", "device_peak_rss_mb"):
            row[col] = None
        if r is None:
            continue
        used.add(key)
        lat = r["latency_ms"]
        row.update({"device": (obj.get("machine") or {}).get("cpu") or "device", "device_threads": threads,
                    "device_p50_ms": _num(lat.get("p50")), "device_p90_ms": _num(lat.get("p90")),
                    "device_peak_rss_mb": _num(r.get("peak_rss_mb"))})
        matched.append(row["name"])
    if not matched:
        names = sorted(k[0] for k in by_file)[:5]
        raise DesignSpaceError(f"--device-results {device_file}: none of its models ({', '.join(names)}...) is an int8 "
                               "variant of this sweep (same file name and size expected)")
    device = {"file": str(device_file), "machine": obj.get("machine") or {}, "threads": threads, "matched": matched,
              "unmatched": sorted(k[0] for k in by_file if k not in used)}
    results["device"] = device
    return device


def _num(v) -> float | None:
    return round(float(v), 4) if isinstance(v, (int, float)) and v == v else None


def write_text(path: Path, text: str | bytes) -> None:
    atomic_write(Path(path), text)
