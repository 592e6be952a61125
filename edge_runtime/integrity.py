"""The artifact's integrity checksum: sha256 of the whole file with the digest itself zeroed.

The converter's last step writes it (after the standard metadata and the appended label files):
the project's JSON record carries ``"content_sha256":"000…0"`` (64 ASCII zeros) while the file is
assembled; :func:`seal` hashes the final bytes as they are and writes the hex digest in place, so
the file keeps its length and layout. :func:`verify` puts the zeros back in a copy and hashes again
(about 3 ms for a 1.4 MB model). Every other byte is covered: weights, graph, both metadata
records, the label zip. Artifacts written before the checksum existed carry no such field and
load as before.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from .metadata import MetadataError, metadata_span, read_model_bytes

DIGEST_KEY = "content_sha256"
PLACEHOLDER = "0" * 64
_FIELD = re.compile(rb'"' + DIGEST_KEY.encode() + rb'":"([0-9a-f]{64})"')


class IntegrityError(MetadataError):
    """The file's content does not match the checksum recorded in it."""


def _digest_span(data: bytes) -> tuple[int, str] | None:
    """(file offset, recorded hex) of the digest inside the JSON record, or None without one.

    JSON strings never hold an unescaped quote, so the key pattern can only match the record's
    own field; more than one match is a forged or corrupt record.
    """
    span = metadata_span(data)
    if span is None:
        return None
    start, n = span
    hits = list(_FIELD.finditer(data, start, start + n))
    if not hits:
        return None
    if len(hits) > 1:
        raise IntegrityError(f"the metadata record holds {len(hits)} '{DIGEST_KEY}' fields: one expected")
    return hits[0].start(1), hits[0].group(1).decode()


def content_digest(data: bytes, offset: int) -> str:
    """sha256 of ``data`` with the 64 digest characters at ``offset`` replaced by zeros."""
    h = hashlib.sha256()
    h.update(memoryview(data)[:offset])
    h.update(PLACEHOLDER.encode())
    h.update(memoryview(data)[offset + 64:])
    return h.hexdigest()


def seal(data: bytes) -> bytes:
    """The finished artifact with its checksum written in place (the record must hold the zeros).

    Raises:
        IntegrityError: the record has no zeroed digest field to fill.
    """
    found = _digest_span(data)
    if found is None or found[1] != PLACEHOLDER:
        raise IntegrityError(f"the metadata record has no zeroed '{DIGEST_KEY}' field to seal")
    offset = found[0]
    digest = content_digest(data, offset)
    return bytes(data[:offset]) + digest.encode() + bytes(data[offset + 64:])


def verify(data: bytes) -> str | None:
    """Check the recorded checksum; returns the digest, or None for an artifact without one.

    Raises:
        IntegrityError: the content differs from what the converter wrote.
        MetadataError: the file is not a readable TFLite model.
    """
    found = _digest_span(data)
    if found is None:
        return None
    offset, recorded = found
    actual = content_digest(data, offset)
    if actual != recorded:
        raise IntegrityError(f"integrity check failed: content sha256 {actual[:16]}... differs from the "
                             f"recorded {recorded[:16]}... (the file is damaged or was modified after "
                             "conversion; --no-verify loads it anyway)")
    return recorded


def verify_file(path: str | Path) -> str | None:
    """:func:`verify` on a file, with the path in every error message."""
    data = read_model_bytes(path)
    try:
        return verify(data)
    except MetadataError as e:
        raise type(e)(f"{path}: {e}") from None
