"""edge_runtime is the device package: every module imports where only numpy, OpenCV and a TFLite
interpreter are installed, and none reaches into convert/, torch, TensorFlow, onnx or onnxruntime."""
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEVICE_DISTRIBUTIONS = ("numpy", "opencv-python-headless", "ai-edge-litert")
FORBIDDEN = ("torch", "tensorflow", "onnx", "onnxruntime", "convert")


def _requirements(dist: importlib.metadata.Distribution) -> list[str]:
    from packaging.requirements import Requirement

    names = []
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            names.append(req.name)
    return names


def _closure(names) -> list[importlib.metadata.Distribution]:
    seen, todo, dists = set(), list(names), []
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in seen:
            continue
        seen.add(name)
        dist = importlib.metadata.distribution(name)
        dists.append(dist)
        todo.extend(_requirements(dist))
    return dists


@pytest.fixture(scope="session")
def device_python(tmp_path_factory) -> Path:
    """A venv holding only the device distributions (and what they require), linked from this one's
    installed files: built in about a second, offline."""
    venv = tmp_path_factory.mktemp("device-venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    for dist in _closure(DEVICE_DISTRIBUTIONS):
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            source = Path(dist.locate_file(top))
            if source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
    dists = {d.metadata["Name"].lower() for d in _closure(DEVICE_DISTRIBUTIONS)}
    assert not dists & {"torch", "tensorflow", "tensorflow-cpu", "onnx", "onnxruntime"}, dists
    return venv / "bin" / "python"


def test_every_edge_runtime_module_imports_on_a_device(device_python, tmp_path):
    device = tmp_path / "device"  # as on a device: numpy, OpenCV, a TFLite interpreter, and edge_runtime/
    device.mkdir()
    (device / "edge_runtime").symlink_to(ROOT / "edge_runtime")
    code = (
        "import importlib, pkgutil, sys\n"
        f"for heavy in {FORBIDDEN!r}:\n"
        "    try:\n        importlib.import_module(heavy)\n    except ImportError:\n        continue\n"
        "    sys.exit(f'{heavy} is importable in the device environment')\n"
        "import edge_runtime\n"
        "names = [m.name for m in pkgutil.walk_packages(edge_runtime.__path__, 'edge_runtime.')\n"
        "         if not m.name.endswith('__main__')]  # __main__ runs the CLI\n"
        "for name in names:\n    importlib.import_module(name)\n"
        f"loaded = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "assert not loaded, loaded\n"
        "from edge_runtime.interpreter import find_backend\n"
        "print(len(names), 'modules', find_backend()[1])\n")
    proc = subprocess.run([str(device_python), "-c", code], capture_output=True, text=True, cwd=device,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(device)}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    count, _, backend = proc.stdout.split()
    expected = sorted(p.stem for p in (ROOT / "edge_runtime").glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert int(count) >= len(expected), (count, expected)
    assert backend == "ai-edge-litert"


@pytest.mark.parametrize("package", ["convert", "edge_runtime", "tools.benchmark", "tools.design_space"])
def test_a_missing_package_is_one_line_that_says_where_to_get_it(package):
    """`python -m convert` / `python -m edge_runtime` / `python -m tools.NAME` outside the project's
    environment (here: cv2 made unimportable) stop with one line naming the package and the environment,
    not a traceback."""
    code = f"import runpy, sys; sys.modules['cv2'] = None; runpy.run_module({package!r}, run_name='__main__')"
    r = subprocess.run([sys.executable, "-c", code, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "cv2 is not installed" in lines[0], r.stderr
    assert ".venv/bin/activate" in lines[0]
