"""Fuzzing the converted artifact: a few hundred mutations of the real
int8 model and of its metadata record, each run through the real runtime command line on a real
photo. None may crash the process, none may end in a traceback, and none may exit 0 with another
label than the intact model's (a damaged model must be refused, never confidently wrong).

The runs happen in one worker process (one import of the runtime for all of them); the parent
restarts it after a crash or a hang and records which mutation caused it.
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.metadata import METADATA_NAME, buffer_spans, read_metadata_bytes
from realworld import ROOT

CASES = 300
MIN_CASES = 100  # always run, however slow the machine
SECONDS = 30.0  # after MIN_CASES, the mutations stop here even if fewer than CASES have run
CASE_TIMEOUT = 20.0  # a run taking longer is a hang

WORKER = r"""
import contextlib, io, json, logging, sys, traceback

class _Stderr:  # the runtime's log lines go to whatever stderr is at the time
    def write(self, s):
        sys.stderr.write(s)
    def flush(self):
        pass

logging.basicConfig(level=logging.WARNING, stream=_Stderr(), format="%(levelname)s %(message)s")
from edge_runtime.cli import main

folder, out = sys.argv[1], sys.stdout
for line in sys.stdin:
    path = line.strip()
    so, se = io.StringIO(), io.StringIO()
    tb = None
    with contextlib.redirect_stdout(so), contextlib.redirect_stderr(se):
        try:
            rc = main(["--source", folder, "--model", path, "--json", "--top-k", "1"])
        except SystemExit as e:
            rc = e.code
        except BaseException:
            rc, tb = None, traceback.format_exc()
    results = [json.loads(l) for l in so.getvalue().splitlines() if l.startswith("{")]
    top = [(r["top"][0]["index"], r["top"][0]["label"]) if r["top"] else None for r in results]
    out.write(json.dumps({"rc": rc, "traceback": tb, "stderr": se.getvalue()[-2000:], "top": top}) + "\n")
    out.flush()
"""


@dataclass
class Outcome:
    case: str
    kind: str  # crash, hang, traceback, refused, same, wrong
    detail: str = ""


class Worker:
    def __init__(self, photos: Path) -> None:
        self.photos = photos
        self.proc = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER, str(self.photos)], cwd=ROOT, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)})

    def run(self, model: Path) -> dict | str:
        """The worker's result for one model, or "crash" / "hang"."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        self.proc.stdin.write(f"{model}\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], CASE_TIMEOUT)
        line = self.proc.stdout.readline() if ready else ""
        if line:
            return json.loads(line)
        hung = self.proc.poll() is None
        self.proc.kill()
        self.proc.wait()
        self.proc = None
        return "hang" if hung else "crash"

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


def _mutations(model: bytes, rng: np.random.Generator, top: int):
    """Endless (name, bytes) mutations of the artifact: weights, flatbuffer structure, truncation,
    the metadata record's bytes and its values (``top``: the intact model's class on the photo)."""
    spans = buffer_spans(model)
    raw = read_metadata_bytes(model, METADATA_NAME)
    at = model.find(raw)
    weights = [(s, n) for s, n in spans if s != at]
    sizes = np.array([n for _, n in weights], float)
    in_data = np.zeros(len(model), bool)
    for s, n in spans:
        in_data[s:s + n] = True
    structure = np.flatnonzero(~in_data)
    record = json.loads(raw)
    while True:
        kind = rng.choice(["weights", "weights", "structure", "truncate", "meta_bytes", "meta_value", "extend"])
        data = bytearray(model)
        if kind == "weights":  # 16 flipped bytes inside one weight buffer (finding 5)
            s, n = weights[rng.choice(len(weights), p=sizes / sizes.sum())]
            for pos in rng.integers(s, s + n, 16):
                data[pos] ^= int(rng.integers(1, 256))
        elif kind == "structure":  # tables, vtables, offsets, shapes, quantization parameters
            for pos in rng.choice(structure, int(rng.integers(1, 9))):
                data[pos] = int(rng.integers(0, 256))
        elif kind == "truncate":
            data = data[:int(rng.integers(0, len(model)))]
        elif kind == "meta_bytes":
            for pos in rng.integers(at, at + len(raw), int(rng.integers(1, 5))):
                data[pos] = int(rng.integers(0, 256))
        elif kind == "meta_value":
            rec = json.loads(json.dumps(record))
            rec.pop("wnids", None)  # room for the edit in the same bytes
            what = rng.choice(["label", "swap", "resize", "input_size", "order", "dtype", "interpolation", "drop"])
            labels = rec["labels"]
            if what == "label":  # the class the photo shows renamed, or any other
                labels[top if rng.random() < 0.5 else int(rng.integers(len(labels)))] = "odometer"
            elif what == "swap":
                i, j = rng.choice(len(labels), 2, replace=False)
                labels[i], labels[j] = labels[j], labels[i]
            elif what == "resize":
                rec["preprocessing"]["resize"] = [int(rng.integers(227, 600)), int(rng.integers(0, 600))]
            elif what == "input_size":
                rec["preprocessing"]["input_size"] = [int(rng.integers(8, 300)), 227]
            elif what == "order":
                rec["input"]["channel_order"] = "RGB"
            elif what == "dtype":
                rec["input"]["dtype"] = str(rng.choice(["int8", "float32", "uint16"]))
            elif what == "interpolation":
                rec["preprocessing"]["interpolation"] = "area"
            else:
                rec.pop(str(rng.choice(sorted(rec))))
            body = json.dumps(rec, separators=(",", ":")).encode()
            data[at:at + len(raw)] = body.ljust(len(raw))
            kind = f"meta_value:{what}"
        else:  # bytes inserted into the middle of the file
            pos = int(rng.integers(0, len(model)))
            data[pos:pos] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
        yield str(kind), bytes(data)


@pytest.fixture(scope="module")
def fuzz(int8_model, tmp_path_factory):
    """Runs the mutations once for the tests below: (intact top label, outcomes)."""
    work = tmp_path_factory.mktemp("fuzz")
    photos = work / "photos"
    photos.mkdir()
    (photos / "coffee.jpg").write_bytes((ROOT / "calib_data" / "skimage_coffee.jpg").read_bytes())
    worker = Worker(photos)
    intact = worker.run(int8_model)
    assert isinstance(intact, dict) and intact["rc"] == 0, intact
    expected = tuple(intact["top"][0])
    assert expected[1] == "espresso"
    model = int8_model.read_bytes()
    rng = np.random.default_rng(13)
    outcomes: list[Outcome] = []
    deadline = time.monotonic() + SECONDS
    for n, (kind, data) in enumerate(_mutations(model, rng, expected[0])):
        if n >= CASES or (n >= MIN_CASES and time.monotonic() > deadline):
            break
        path = work / f"m{n:03d}.tflite"
        path.write_bytes(data)
        result = worker.run(path)
        case = f"#{n} {kind}"
        if isinstance(result, str):
            outcomes.append(Outcome(case, result))
        elif result["traceback"] or "Traceback" in result["stderr"]:
            outcomes.append(Outcome(case, "traceback", (result["traceback"] or result["stderr"])[-600:]))
        elif result["rc"] != 0:
            errors = [l for l in result["stderr"].splitlines() if l.startswith("error:")]
            ok = len(errors) == 1 and result["rc"] == 2
            outcomes.append(Outcome(case, "refused" if ok else "unclear", result["stderr"][-300:]))
        elif result["top"] and all(tuple(t) == expected for t in result["top"] if t):
            outcomes.append(Outcome(case, "same"))
        else:
            outcomes.append(Outcome(case, "wrong", str(result["top"])))
        path.unlink()
    worker.close()
    return expected, outcomes


def _summary(outcomes: list[Outcome]) -> str:
    by: dict[str, dict[str, int]] = {}
    for o in outcomes:
        k = o.case.split(" ", 1)[1].split(":")[0]
        by.setdefault(k, {}).setdefault(o.kind, 0)
        by[k][o.kind] += 1
    return "; ".join(f"{k}: {v}" for k, v in sorted(by.items()))


def test_fuzzed_models_never_crash_or_raise(fuzz):
    _, outcomes = fuzz
    assert len(outcomes) >= MIN_CASES, f"only {len(outcomes)} mutations ran"
    bad = [o for o in outcomes if o.kind in ("crash", "hang", "traceback", "unclear")]
    assert not bad, f"{len(bad)} of {len(outcomes)}: " + " | ".join(f"{o.case} {o.kind} {o.detail}" for o in bad[:5])
    kinds = {o.case.split(" ", 1)[1].split(":")[0] for o in outcomes}
    assert {"weights", "structure", "truncate", "meta_bytes", "meta_value", "extend"} <= kinds, _summary(outcomes)


def test_fuzzed_models_are_refused_or_give_the_intact_label(fuzz, int8_model):
    from edge_runtime.integrity import DIGEST_KEY
    from edge_runtime.metadata import read_model_info

    _, outcomes = fuzz
    wrong = [o for o in outcomes if o.kind == "wrong"]
    assert DIGEST_KEY in read_model_info(int8_model).extra  # the converter seals every artifact
    assert not wrong, (f"{len(wrong)} of {len(outcomes)} mutated models exit 0 with another label "
                       f"({_summary(outcomes)}): " + " | ".join(f"{o.case} {o.detail}" for o in wrong[:5]))
