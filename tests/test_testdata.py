"""The test-data cache of a fresh clone: filled once from the public sources (here a server on
127.0.0.1 standing in for them through $SQUEEZENET_EDGE_MIRROR), verified by sha256, and one clear
line when the data can be neither found nor downloaded."""
import http.server
import shutil
import socket
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import pytest

import testdata
from convert.fetch import MIRROR_ENV
from edge_runtime.fileio import sha256_file

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def mirror(tmp_path, shared_dir, monkeypatch):
    """A local server holding copies of the weights and 6 of the sample images at their public paths;
    returns (groups of those files, list of the paths requested)."""
    groups = []
    for group in testdata.manifest():
        names = sorted(group["files"])[:6]
        groups.append({**group, "files": {n: group["files"][n] for n in names}})
        base = urllib.parse.urlsplit(group["source"])
        for name in names:
            copy = tmp_path / "www" / base.netloc / base.path.strip("/") / name
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shared_dir / group["dir"] / name, copy)
    requested = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(tmp_path / "www"), **k)

        def log_message(self, *a):
            requested.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv(MIRROR_ENV, f"http://127.0.0.1:{server.server_port}/")
    yield groups, requested, tmp_path / "www"
    server.shutdown()


def test_cache_fills_once_from_the_public_sources(mirror, tmp_path):
    groups, requested, _ = mirror
    cache = tmp_path / "cache"
    assert testdata.fill(cache, groups) == 7
    assert len(requested) == 7 and any("compressed_SqueezeNet.net" in p for p in requested)
    assert any("/EliSchwartz/imagenet-sample-images/bc69043e2862758a1906c6a24a792bb28c6bb2ff/" in p for p in requested)
    for group in groups:
        for name, digest in group["files"].items():
            assert sha256_file(cache / group["dir"] / name) == digest
    assert testdata.fill(cache, groups) == 0 and len(requested) == 7  # filled once: no second download


def test_wrong_bytes_are_refused_and_nothing_partial_is_left(mirror, tmp_path):
    groups, _, www = mirror
    served = next(www.rglob("*.JPEG"))
    served.write_bytes(served.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(testdata.TestDataMissing, match="sha256"):
        testdata.fill(tmp_path / "cache", groups)
    assert not list((tmp_path / "cache").rglob(served.name)) and not list((tmp_path / "cache").rglob(".*.tmp"))


def test_offline_without_shared_fails_with_one_line(tmp_path):
    with socket.socket() as s:  # a port nobody listens on: as offline as this machine gets
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_needs_data.py").write_text("def test_it(val500_dir):\n    pass\n")
    shutil.copyfile(ROOT / "tests" / "conftest.py", tmp_path / "tests" / "conftest.py")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{ROOT / 'tests'}:{ROOT}", "HOME": str(tmp_path),
           testdata.SHARED_ENV: str(tmp_path / "no-shared"), testdata.CACHE_ENV: str(tmp_path / "cache"),
           MIRROR_ENV: f"http://127.0.0.1:{port}/"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 1, proc.stdout[-3000:]  # a failure (error in set-up), not a skip
    assert "1 error" in proc.stdout and "skipped" not in proc.stdout
    lines = [l for l in proc.stdout.splitlines() if "test data missing:" in l]
    assert lines and "put the shared data folder at" in lines[0] and "with internet access" in lines[0], proc.stdout
    assert "Traceback" not in proc.stdout


def test_shared_present_never_touches_the_network(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    (shared / "imagenet" / "val500").mkdir(parents=True)
    monkeypatch.setenv(testdata.SHARED_ENV, str(shared))
    monkeypatch.setenv(MIRROR_ENV, "http://127.0.0.1:9/")  # would fail if anything were fetched
    monkeypatch.setattr(testdata, "fill", lambda *a, **k: pytest.fail("must not download when ../shared exists"))
    assert testdata.data_root() == shared
