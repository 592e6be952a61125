"""The Deep Compression ``.net`` format of the SqueezeNet v1.0 release (Han et al., 2016).

Layout (little-endian; see the release's README): a header of 26 uint32 entry counts ``nz``, one per
convolution in network order (conv1, fire2..9 squeeze/expand1x1/expand3x3, conv10); then per layer a
256-entry float32 codebook (entry 0 is 0.0), the float32 biases, ``nz`` uint8 codes, and ``ceil(nz/2)``
bytes of 4-bit gaps (low nibble first). Entry k sits at flat position ``p_k = p_{k-1} + gap_k + 1``;
gaps over 15 are bridged by filler entries with code 0.

API:
    decode_net(data) -> NetFile           # bounds-checked; raises NetFormatError
    NetFile.state_dict() -> {key: array}   # torchvision squeezenet1_0 keys, float32
    encode_net(netfile) -> bytes           # exact inverse of decode_net
    NetFile.from_state_dict(state, codebooks) -> NetFile   # re-encode dense weights with given codebooks
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import WeightsError

CODEBOOK_SIZE = 256
MAX_GAP = 15


class NetFormatError(WeightsError):
    """The bytes are not a valid ``.net`` file for SqueezeNet v1.0."""


def _v10_layers() -> list[tuple[str, tuple[int, int, int, int]]]:
    """(torchvision key prefix, weight shape) of the 26 convolutions of SqueezeNet v1.0, in file order."""
    layers = [("features.0", (96, 3, 7, 7))]
    fires = [(3, 96, 16, 64), (4, 128, 16, 64), (5, 128, 32, 128), (7, 256, 32, 128),
             (8, 256, 48, 192), (9, 384, 48, 192), (10, 384, 64, 256), (12, 512, 64, 256)]
    for idx, cin, s, e in fires:
        layers += [(f"features.{idx}.squeeze", (s, cin, 1, 1)),
                   (f"features.{idx}.expand1x1", (e, s, 1, 1)),
                   (f"features.{idx}.expand3x3", (e, s, 3, 3))]
    layers.append(("classifier.1", (1000, 512, 1, 1)))
    return layers


LAYERS = _v10_layers()


@dataclass
class NetLayer:
    """One convolution as stored: codebook, biases, per-entry codes and 4-bit gaps."""

    name: str
    shape: tuple[int, int, int, int]
    codebook: np.ndarray  # (256,) float32
    bias: np.ndarray  # (out,) float32
    codes: np.ndarray  # (nz,) uint8
    gaps: np.ndarray  # (nz,) uint8, each 0..15

    def positions(self) -> np.ndarray:
        return np.cumsum(self.gaps.astype(np.int64) + 1) - 1

    def weight(self) -> np.ndarray:
        w = np.zeros(int(np.prod(self.shape)), np.float32)
        w[self.positions()] = self.codebook[self.codes]
        return w.reshape(self.shape)


@dataclass
class NetFile:
    layers: list[NetLayer]

    def state_dict(self) -> dict[str, np.ndarray]:
        """Dense float32 weights and biases under torchvision ``squeezenet1_0`` keys."""
        out: dict[str, np.ndarray] = {}
        for layer in self.layers:
            out[f"{layer.name}.weight"] = layer.weight()
            out[f"{layer.name}.bias"] = layer.bias.copy()
        return out

    @property
    def nonzero(self) -> int:
        return sum(int(np.count_nonzero(l.codebook[l.codes])) for l in self.layers)

    @classmethod
    def from_state_dict(cls, state: dict[str, np.ndarray], codebooks: list[np.ndarray]) -> "NetFile":
        """Encode dense weights whose every non-zero value is an entry of that layer's codebook.

        Raises:
            NetFormatError: a weight is not in its codebook, or shapes do not match v1.0.
        """
        layers = []
        for (name, shape), codebook in zip(LAYERS, codebooks, strict=True):
            w = np.asarray(state[f"{name}.weight"], np.float32)
            if w.shape != shape:
                raise NetFormatError(f"{name}.weight has shape {w.shape}, {shape} expected")
            codebook = np.asarray(codebook, np.float32)
            flat = w.reshape(-1)
            pos = np.flatnonzero(flat)
            lookup = {float(v): i for i, v in reversed(list(enumerate(codebook))) if i and v != 0.0}
            try:
                codes = np.array([lookup[float(v)] for v in flat[pos]], np.uint8)
            except KeyError as e:
                raise NetFormatError(f"{name}: weight {e.args[0]} is not in the layer's codebook") from None
            all_gaps, real = relative_index(pos)
            all_codes = np.zeros(len(all_gaps), np.uint8)
            all_codes[real] = codes
            layers.append(NetLayer(name, shape, codebook, np.asarray(state[f"{name}.bias"], np.float32),
                                   all_codes, all_gaps))
        return cls(layers)


def relative_index(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """4-bit relative indexing of sorted flat positions, as Deep Compression stores them.

    Returns (gaps of every entry incl. fillers, index of the real entries among them); a gap over 15
    is bridged by filler entries (code 0, gap 15) each covering 16 positions.
    """
    gaps = np.diff(np.concatenate([[-1], np.asarray(positions, np.int64)])) - 1
    fill = gaps // (MAX_GAP + 1)
    all_gaps = np.full(len(gaps) + int(fill.sum()), MAX_GAP, np.uint8)
    real = np.cumsum(fill + 1) - 1
    all_gaps[real] = gaps % (MAX_GAP + 1)
    return all_gaps, real


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int, what: str) -> memoryview:
        if self.pos + n > len(self.data):
            raise NetFormatError(f"truncated .net file: {what} needs {n} bytes at offset {self.pos}, "
                                 f"the file has {len(self.data)}")
        view = memoryview(self.data)[self.pos:self.pos + n]
        self.pos += n
        return view


def decode_net(data: bytes) -> NetFile:
    """Parse a ``.net`` file of SqueezeNet v1.0; every length is checked against the file size."""
    r = _Reader(data)
    counts = np.frombuffer(r.take(4 * len(LAYERS), "header"), "<u4")
    layers = []
    for (name, shape), nz in zip(LAYERS, counts):
        numel = int(np.prod(shape))
        nz = int(nz)
        codebook = np.frombuffer(r.take(4 * CODEBOOK_SIZE, f"{name} codebook"), "<f4").astype(np.float32)
        bias = np.frombuffer(r.take(4 * shape[0], f"{name} bias"), "<f4").astype(np.float32)
        if nz > numel:
            raise NetFormatError(f"{name}: header says {nz} entries, the tensor has {numel} weights")
        codes = np.frombuffer(r.take(nz, f"{name} codes"), np.uint8).copy()
        packed = np.frombuffer(r.take((nz + 1) // 2, f"{name} index gaps"), np.uint8)
        gaps = np.empty(2 * len(packed), np.uint8)
        gaps[0::2], gaps[1::2] = packed & 0x0F, packed >> 4
        layer = NetLayer(name, shape, codebook, bias, codes, gaps[:nz])
        if nz and layer.positions()[-1] >= numel:
            raise NetFormatError(f"{name}: entries run to position {int(layer.positions()[-1])}, "
                                 f"past the tensor of {numel} weights")
        layers.append(layer)
    if r.pos != len(data):
        raise NetFormatError(f"{len(data) - r.pos} trailing bytes after the last layer "
                             f"(expected the file to end at {r.pos})")
    return NetFile(layers)


def encode_net(net: NetFile) -> bytes:
    """Serialize a NetFile; ``encode_net(decode_net(b)) == b``."""
    parts = [np.array([len(l.codes) for l in net.layers], "<u4").tobytes()]
    for l in net.layers:
        gaps = l.gaps.astype(np.uint8)
        if len(gaps) % 2:
            gaps = np.append(gaps, np.uint8(0))
        parts += [np.asarray(l.codebook, "<f4").tobytes(), np.asarray(l.bias, "<f4").tobytes(),
                  np.asarray(l.codes, np.uint8).tobytes(), (gaps[0::2] | (gaps[1::2] << 4)).tobytes()]
    return b"".join(parts)
