"""Canonical Huffman coding of small-alphabet symbol streams, with a vectorized decoder.

Codes are limited to ``MAX_BITS`` bits so the decoder can use one lookup table; decoding walks the
bit stream with pointer doubling in numpy (no per-symbol Python loop), which keeps a whole
SqueezeNet's streams well under a second.
"""
from __future__ import annotations

import heapq

import numpy as np

MAX_BITS = 16


class HuffmanError(ValueError):
    """A code table or bit stream is malformed."""


def code_lengths(counts: np.ndarray, max_bits: int = MAX_BITS) -> np.ndarray:
    """Huffman code length per symbol (0 for unused symbols), limited to ``max_bits``."""
    counts = np.asarray(counts, np.int64)
    used = np.flatnonzero(counts)
    lengths = np.zeros(len(counts), np.uint8)
    if len(used) == 0:
        return lengths
    if len(used) == 1:
        lengths[used[0]] = 1
        return lengths
    heap = [(int(counts[s]), i, [int(s)]) for i, s in enumerate(used)]
    heapq.heapify(heap)
    depth = np.zeros(len(counts), np.int64)
    tie = len(heap)
    while len(heap) > 1:
        c1, _, s1 = heapq.heappop(heap)
        c2, _, s2 = heapq.heappop(heap)
        for s in s1 + s2:
            depth[s] += 1
        heapq.heappush(heap, (c1 + c2, tie, s1 + s2))
        tie += 1
    if depth.max() > max_bits:  # flatten: scale counts down until the tree fits (rare for our streams)
        return code_lengths(np.where(counts > 0, np.maximum(1, counts // 2), 0), max_bits)
    lengths[used] = depth[used]
    return lengths


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code values for the given lengths (symbols ordered by (length, symbol))."""
    codes = np.zeros(len(lengths), np.int64)
    code, prev = 0, 0
    for s in sorted((int(l), int(s)) for s, l in enumerate(lengths) if l):
        length, sym = s
        code <<= length - prev
        codes[sym] = code
        code += 1
        prev = length
    return codes


def encode(symbols: np.ndarray, lengths: np.ndarray) -> bytes:
    """Pack the symbols' codes MSB-first into bytes (zero padding at the end)."""
    symbols = np.asarray(symbols, np.int64)
    if symbols.size == 0:
        return b""
    codes = canonical_codes(lengths)
    lens = lengths.astype(np.int64)[symbols]
    vals = codes[symbols]
    total = int(lens.sum())
    bits = np.zeros(total, np.uint8)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    for b in range(int(lens.max())):  # bit b of each code, counted from its most significant bit
        has = lens > b
        bits[starts[has] + b] = (vals[has] >> (lens[has] - 1 - b)) & 1
    return np.packbits(bits).tobytes()


def decode(data: bytes, lengths: np.ndarray, count: int) -> np.ndarray:
    """Decode ``count`` symbols; raises HuffmanError when the stream is too short or invalid."""
    if count == 0:
        return np.zeros(0, np.int64)
    lengths = np.asarray(lengths, np.int64)
    if lengths.max(initial=0) == 0 or lengths.max() > MAX_BITS:
        raise HuffmanError("code table has no symbols or codes longer than 16 bits")
    if np.sum(2.0 ** -lengths[lengths > 0]) > 1.0 + 1e-9:
        raise HuffmanError("code lengths do not form a prefix code")
    L = int(lengths.max())
    codes = canonical_codes(lengths)
    table_sym = np.full(1 << L, -1, np.int64)
    table_len = np.zeros(1 << L, np.int64)
    for s in np.flatnonzero(lengths):
        l = int(lengths[s])
        lo = int(codes[s]) << (L - l)
        table_sym[lo:lo + (1 << (L - l))] = s
        table_len[lo:lo + (1 << (L - l))] = l
    bits = np.unpackbits(np.frombuffer(data, np.uint8)).astype(np.int64)
    nbits = len(bits)
    padded = np.concatenate([bits, np.zeros(L, np.int64)])
    # L-bit window value at every bit position
    window = np.zeros(nbits + 1, np.int64)
    for b in range(L):
        window[:nbits] = (window[:nbits] << 1) | padded[b:b + nbits]
    step = table_len[window]
    step[nbits] = 0
    # windows that are no code only matter if the walk lands on them (checked after the walk)
    nxt = np.minimum(np.arange(nbits + 1) + step, nbits)  # nbits is an absorbing "end" position
    # positions of symbols 0..count-1 by pointer doubling: P[j + 2^k] = J_k[P[j]]
    positions = np.zeros(1, np.int64)
    jump = nxt
    while len(positions) < count:
        positions = np.concatenate([positions, jump[positions]])
        if len(positions) < count:
            jump = jump[jump]
    positions = positions[:count]
    if positions[-1] >= nbits or (positions[-1] + table_len[window[positions[-1]]] > nbits):
        raise HuffmanError(f"bit stream of {nbits} bits ends before symbol {count}")
    out = table_sym[window[positions]]
    if (out < 0).any():
        raise HuffmanError("bit stream holds a code that is not in the table")
    return out
