"""Downloads from fixed public URLs: bounded, verified by sha256, written atomically.

``$SQUEEZENET_EDGE_MIRROR`` (a base URL) stands in for the public hosts: ``https://HOST/PATH`` is
then fetched from ``MIRROR/HOST/PATH`` (an internal cache, or a server on 127.0.0.1 in the tests).
"""
from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

from edge_runtime.fileio import atomic_write

MIRROR_ENV = "SQUEEZENET_EDGE_MIRROR"


class DigestMismatch(ValueError):
    """Downloaded or cached bytes are not the expected file."""


def source_url(url: str) -> str:
    """``url``, or its copy under ``$SQUEEZENET_EDGE_MIRROR`` when that is set."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if not mirror:
        return url
    return mirror.rstrip("/") + "/" + url.split("://", 1)[-1]


def fetch_bytes(url: str, max_bytes: int, timeout: float = 30) -> bytes:
    """The body of ``url`` (through the mirror, if any).

    Raises:
        OSError: the host cannot be reached or answers with an error (urllib's errors are OSErrors).
        DigestMismatch: the body is longer than ``max_bytes``.
    """
    with urllib.request.urlopen(source_url(url), timeout=timeout) as r:  # noqa: S310 (fixed URLs)
        data = r.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise DigestMismatch(f"{url}: more than {max_bytes} bytes, refusing")
    return data


def download(url: str, dest: Path, sha256: str, max_bytes: int) -> None:
    """Fetch ``url`` into ``dest`` if its sha256 is ``sha256``; ``dest`` is never left partial.

    Raises:
        OSError: not reachable. DigestMismatch: too long, or not the expected bytes.
    """
    data = fetch_bytes(url, max_bytes)
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise DigestMismatch(f"{url}: sha256 {got[:16]}... is not the expected {sha256[:16]}...")
    atomic_write(dest, data)
