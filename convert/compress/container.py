"""The ``.sqz`` container: pruned, weight-shared convolutions with Huffman-coded codes and gaps.

Layout (little-endian), version 1::

    magic "SQZC" | version u16 | record name (u8 length + UTF-8) | arch (u8 length + UTF-8)
    | num_classes u32 | layer count u16
    per layer: name (u8 length + UTF-8) | ndim u8 | dims u32 x ndim | bits u8
               | codebook float32 x 2**bits (entry 0 is 0.0: pruned) | bias count u32 | bias float32 x count
               | entries u32 | code lengths u8 x 2**bits | code stream length u32 | code stream
               | gap code lengths u8 x 16 | gap stream length u32 | gap stream
    | CRC-32 u32 of every byte before it

Codes index the layer's codebook; gaps are the 4-bit relative positions of Deep Compression
(gap > 15 bridged by code-0 fillers). Both streams are canonical-Huffman coded. Decoding is exact:
the weights are the stored float32 codebook entries.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.fileio import FileTooLarge, read_bounded

from ..deepcompression import relative_index
from ..errors import WeightsError
from ..weights import register_container
from . import huffman

MAGIC = b"SQZC"
VERSION = 1
MAX_LAYERS = 1024
MAX_ELEMENTS = 64 << 20
MAX_FILE_BYTES = 256 << 20


class ContainerError(WeightsError):
    """The container is truncated, corrupt, or of an unknown version."""


@dataclass
class SharedLayer:
    """One convolution after pruning and weight sharing."""

    name: str
    shape: tuple[int, ...]
    codebook: np.ndarray  # (2**bits,) float32, [0] == 0.0
    bias: np.ndarray  # float32
    codes: np.ndarray  # (numel,) uint8 code per weight (0 = pruned)

    @property
    def bits(self) -> int:
        return int(np.log2(len(self.codebook)))

    def weight(self) -> np.ndarray:
        return self.codebook[self.codes].reshape(self.shape).astype(np.float32)


@dataclass
class Container:
    record: str
    arch: str
    num_classes: int
    layers: list[SharedLayer]

    def state_dict(self) -> dict[str, np.ndarray]:
        out = {}
        for layer in self.layers:
            out[f"{layer.name}.weight"] = layer.weight()
            out[f"{layer.name}.bias"] = layer.bias.astype(np.float32)
        return out


def _name_bytes(text: str) -> bytes:
    raw = text.encode()
    if len(raw) > 255:
        raise ContainerError(f"name {text[:40]!r}... longer than 255 bytes")
    return struct.pack("<B", len(raw)) + raw


def encode(c: Container) -> bytes:
    """Serialize a container (see the module docstring for the layout)."""
    parts = [MAGIC, struct.pack("<H", VERSION), _name_bytes(c.record), _name_bytes(c.arch), struct.pack("<IH", c.num_classes, len(c.layers))]
    for layer in c.layers:
        flat = layer.codes.reshape(-1)
        pos = np.flatnonzero(flat)
        gaps, real = relative_index(pos)
        codes = np.zeros(len(gaps), np.int64)
        codes[real] = flat[pos]
        n_sym = len(layer.codebook)
        c_len = huffman.code_lengths(np.bincount(codes, minlength=n_sym))
        g_len = huffman.code_lengths(np.bincount(gaps, minlength=16))
        c_stream, g_stream = huffman.encode(codes, c_len), huffman.encode(gaps, g_len)
        parts += [_name_bytes(layer.name), struct.pack("<B", len(layer.shape)), struct.pack(f"<{len(layer.shape)}I", *layer.shape),
                  struct.pack("<B", layer.bits), np.asarray(layer.codebook, "<f4").tobytes(),
                  struct.pack("<I", len(layer.bias)), np.asarray(layer.bias, "<f4").tobytes(),
                  struct.pack("<I", len(gaps)), c_len.tobytes(), struct.pack("<I", len(c_stream)), c_stream,
                  g_len.tobytes(), struct.pack("<I", len(g_stream)), g_stream]
    body = b"".join(parts)
    return body + struct.pack("<I", zlib.crc32(body))


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ContainerError(f"truncated container: {what} needs {n} bytes at offset {self.pos}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))

    def string(self, what: str) -> str:
        (n,) = self.unpack("<B", what)
        try:
            return self.take(n, what).decode()
        except UnicodeDecodeError:
            raise ContainerError(f"corrupt container: {what} is not UTF-8") from None


def decode(data: bytes) -> Container:
    """Parse and verify a container; every length is bounded by the bytes actually present."""
    if len(data) < 10 or data[:4] != MAGIC:
        raise ContainerError("not a .sqz container (magic 'SQZC' expected)")
    if len(data) > MAX_FILE_BYTES:
        raise ContainerError(f"container of {len(data)} bytes: at most {MAX_FILE_BYTES} expected")
    (crc,) = struct.unpack("<I", data[-4:])
    if zlib.crc32(data[:-4]) != crc:
        raise ContainerError("container checksum mismatch: the file is truncated or corrupt")
    r = _Reader(data[:-4])
    r.take(4, "magic")
    (version,) = r.unpack("<H", "version")
    if version != VERSION:
        raise ContainerError(f"container version {version}: version {VERSION} expected (newer toolkit?)")
    record, arch = r.string("record name"), r.string("architecture")
    num_classes, n_layers = r.unpack("<IH", "layer count")
    if n_layers > MAX_LAYERS:
        raise ContainerError(f"{n_layers} layers: at most {MAX_LAYERS} expected")
    layers = []
    for _ in range(n_layers):
        name = r.string("layer name")
        (ndim,) = r.unpack("<B", f"{name} rank")
        if not 1 <= ndim <= 4:
            raise ContainerError(f"{name}: rank {ndim}, 1..4 expected")
        shape = r.unpack(f"<{ndim}I", f"{name} shape")
        numel = int(np.prod(shape, dtype=np.int64))
        (bits,) = r.unpack("<B", f"{name} bits")
        if numel > MAX_ELEMENTS or not 1 <= bits <= 8:
            raise ContainerError(f"{name}: {numel} weights at {bits} bits is out of bounds")
        k = 1 << bits
        codebook = np.frombuffer(r.take(4 * k, f"{name} codebook"), "<f4").astype(np.float32)
        (n_bias,) = r.unpack("<I", f"{name} bias count")
        if n_bias != shape[0]:
            raise ContainerError(f"{name}: {n_bias} biases for {shape[0]} output channels")
        bias = np.frombuffer(r.take(4 * n_bias, f"{name} bias"), "<f4").astype(np.float32)
        if not (np.isfinite(codebook).all() and np.isfinite(bias).all()):
            raise ContainerError(f"{name}: the codebook or the bias holds NaN or Inf (finite weights expected)")
        (entries,) = r.unpack("<I", f"{name} entries")
        if entries > 2 * numel + 16:
            raise ContainerError(f"{name}: {entries} entries for {numel} weights")
        c_len = np.frombuffer(r.take(k, f"{name} code table"), np.uint8)
        (n_c,) = r.unpack("<I", f"{name} code stream length")
        c_stream = r.take(n_c, f"{name} code stream")
        g_len = np.frombuffer(r.take(16, f"{name} gap table"), np.uint8)
        (n_g,) = r.unpack("<I", f"{name} gap stream length")
        g_stream = r.take(n_g, f"{name} gap stream")
        try:
            codes = huffman.decode(c_stream, c_len, entries) if entries else np.zeros(0, np.int64)
            gaps = huffman.decode(g_stream, g_len, entries) if entries else np.zeros(0, np.int64)
        except huffman.HuffmanError as e:
            raise ContainerError(f"{name}: {e}") from None
        pos = np.cumsum(gaps + 1) - 1
        if entries and pos[-1] >= numel:
            raise ContainerError(f"{name}: entries run to position {int(pos[-1])}, past {numel} weights")
        flat = np.zeros(numel, np.uint8)
        flat[pos] = codes
        layers.append(SharedLayer(name, tuple(int(d) for d in shape), codebook, bias, flat))
    if r.pos != len(r.data):
        raise ContainerError(f"{len(r.data) - r.pos} unexpected bytes after the last layer")
    return Container(record, arch, num_classes, layers)


def load_container(path: Path) -> tuple[dict[str, np.ndarray], str, str]:
    """(state dict, weights record key, arch) of a ``.sqz`` file, for ``convert.weights.load_model``."""
    try:
        data = read_bounded(path, MAX_FILE_BYTES)
    except FileTooLarge as e:
        raise ContainerError(f"container {e}") from None
    c = decode(data)
    return c.state_dict(), c.record, c.arch


register_container(MAGIC, "sqz", load_container)
