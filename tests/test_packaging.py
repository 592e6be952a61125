"""The built wheel, installed in a fresh venv outside the source tree: the converter finds its own
calibration photos (``squeezenet-convert tflite`` needs no --calib) and its commands start. The real
gated conversion with the installed command runs in .ci/run."""
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IGNORED = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache", "ci-venvs")


def test_wheel_carries_the_calibration_photos_and_installs(tmp_path):
    source = tmp_path / "src"  # a copy, so the build leaves no build/ or egg-info in the project
    shutil.copytree(ROOT, source, symlinks=True, ignore=IGNORED)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(source),
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("squeezenet_edge-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    photos = [n for n in names if n.startswith("convert/calib_data/") and n.endswith(".jpg")]
    assert len(photos) == 60 and "convert/calib_data/MANIFEST.csv" in names
    assert any(n.startswith("convert/calib_data/LICENSES/") for n in names)
    assert "edge_runtime/data/imagenet_classes.tsv" in names
    assert not [n for n in names if n.startswith(("tests/", "tools/"))]

    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    # the heavy dependencies (torch, TensorFlow, ...) from this environment, added after the install
    site = Path(subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    (site / "deps-from-test-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run = tmp_path / "elsewhere"
    run.mkdir()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    code = ("import convert, convert.calibration_data as c\n"
            "print(convert.__file__)\n"
            "print(len(c.list_calibration_images(c.default_calib_dir())[0]))\n")
    lines = subprocess.check_output([str(py), "-c", code], text=True, cwd=run, env=env).split()
    assert lines[0].startswith(str(site)) and lines[1] == "60"
    for command in (["squeezenet-convert", "tflite", "--help"], ["edge-runtime", "--help"]):
        proc = subprocess.run(command, capture_output=True, text=True, cwd=run, env=env)
        assert proc.returncode == 0 and "examples:" in proc.stdout, proc.stderr[-2000:]


def test_shell_scripts_parse_and_arm_check_refuses_bad_arguments(tmp_path):
    """Every script under tools/ parses; the ARM check (too slow for the suite: it builds an arm64 root and
    runs emulated) refuses missing arguments and files with one line before it installs anything, and says
    in one line, with its own exit status, when this machine cannot emulate arm64."""
    for script in sorted((ROOT / "tools").glob("*.sh")):
        r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert r.returncode == 0, (script.name, r.stderr)
    arm = [str(ROOT / "tools" / "arm_check.sh")]
    for args, expect in (([], "usage: tools/arm_check.sh MODEL.tflite VAL_DIR"),
                         ([str(tmp_path / "none.tflite"), str(tmp_path)], "no model at"),
                         ([str(ROOT / "README.md"), str(tmp_path / "none")], "no image folder at")):
        r = subprocess.run(["bash", *arm, *args], capture_output=True, text=True, timeout=60)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and expect in lines[0], r.stderr
    # not root (as root: run as nobody, on copies it can read): exit 77, which .ci/run reports and passes over
    nobody = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"] if os.geteuid() == 0 else []
    with tempfile.TemporaryDirectory() as folder:
        os.chmod(folder, 0o755)
        shutil.copy(arm[0], folder)
        (Path(folder) / "model.tflite").write_bytes(b"")
        r = subprocess.run([*nobody, "bash", f"{folder}/arm_check.sh", f"{folder}/model.tflite", folder],
                           capture_output=True, text=True, timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 77 and len(lines) == 1 and "cannot emulate arm64 here: needs root or password-less sudo" in lines[0], r.stderr
