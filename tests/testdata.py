"""Where the tests find their data: ``../shared`` when it is there (the network is never touched),
else a cache filled once from the public sources, every file verified by its sha256.

    weights   the Deep Compression release, from its record's public URL (convert/weights.py)
    val500    500 ImageNet sample images from EliSchwartz/imagenet-sample-images at a pinned commit
              (file names and hashes in tests/data/sha256.json; the images are never committed)

Both layouts are the same (``models/squeezenet_v1.0_deep_compression/``, ``imagenet/val500/``).
``$SQUEEZENET_EDGE_SHARED`` names another shared folder, ``$SQUEEZENET_EDGE_TEST_DATA`` another cache,
and ``$SQUEEZENET_EDGE_MIRROR`` a server that stands in for the public hosts (see convert/fetch.py).
"""
from __future__ import annotations

import json
import os
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = Path(__file__).resolve().parent / "data" / "sha256.json"
SHARED_ENV, CACHE_ENV = "SQUEEZENET_EDGE_SHARED", "SQUEEZENET_EDGE_TEST_DATA"
WEIGHTS_DIR = "models/squeezenet_v1.0_deep_compression"
MAX_FILE_BYTES = 64 << 20


class TestDataMissing(Exception):
    """The data is neither in ../shared nor in the cache, and cannot be downloaded (one line: how to provide it)."""


def shared_dir() -> Path:
    return Path(os.environ.get(SHARED_ENV) or ROOT.parent / "shared")


def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    from convert.weights import cache_base  # the weights' own rule: no home, a private folder in the temp folder

    return cache_base() / "test-data"


def manifest() -> list[dict]:
    """Groups of files: {"dir", "source" (base URL), "files": {name: sha256}}; the weights from their record."""
    from convert.weights import WEIGHTS

    record = WEIGHTS["deep-compression"]
    weights = {"dir": WEIGHTS_DIR, "source": record.url.rsplit("/", 1)[0] + "/",
               "files": {record.file_name: record.sha256}}
    return [weights, *json.loads(MANIFEST.read_text())["groups"]]


def data_root() -> Path:
    """``../shared`` if present, else the filled cache.

    Raises:
        TestDataMissing: neither is there and the download failed.
    """
    shared = shared_dir()
    if shared.is_dir():
        return shared
    root = cache_root()
    fill(root, manifest())
    return root


def fill(root: Path, groups: list[dict], threads: int = 8) -> int:
    """Download every file of ``groups`` missing from ``root`` (or not matching its hash); returns how many.

    Raises:
        TestDataMissing: a download failed or gave other bytes; nothing partial is left.
    """
    from convert.fetch import DigestMismatch, download
    from edge_runtime.fileio import sha256_file

    todo = []
    for group in groups:
        for name, digest in group["files"].items():
            dest = root / group["dir"] / name
            if not (dest.is_file() and sha256_file(dest) == digest):
                todo.append((group["source"] + urllib.parse.quote(name), dest, digest))
    if not todo:
        return 0
    print(f"test data: downloading {len(todo)} files into {root} (once)", flush=True)

    def one(item):
        url, dest, digest = item
        download(url, dest, digest, MAX_FILE_BYTES)

    try:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, todo))
    except (OSError, DigestMismatch) as e:
        raise TestDataMissing(
            f"test data missing: no {shared_dir()} and the download failed ({e}); put the shared data folder "
            f"at {shared_dir()} (or name it in ${SHARED_ENV}), or run the tests once with internet access "
            f"to fill {root}") from None
    return len(todo)


if __name__ == "__main__":  # .ci/run: print the data folder (filling the cache first if needed)
    import sys

    try:
        print(data_root())
    except TestDataMissing as e:
        sys.exit(f"error: {e}")
