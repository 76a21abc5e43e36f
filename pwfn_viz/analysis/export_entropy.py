"""Entropy coding of codebook indices: one frequency table for the whole network, one ANS stream.

A fixed network stores each weight as an index into a shared codebook of K values. Fixed-width
indices take ``ceil(log2 K)`` bits each; the indices of a trained network are far from uniform, so
coding them with their own frequencies takes about ``N * H`` bits (H the entropy of the index
histogram, in bits), the bound no lossless code of independent symbols can beat.

The code here (byte layout in docs/export_format.md):

- **table**: the count of every index 0..K-1 over the whole network, as unsigned LEB128 varints
  (7 bits a byte, low groups first, high bit set on every byte but a number's last). One table for
  the whole network: on the main job it costs 104 bytes and the payload is 1.4 % over the bound,
  where per-tensor tables (which also have to say which indices each tensor uses) would put it
  3.7 % over; see BENCHMARKS.md, "Export sizes".
- **frequencies**: the counts scaled to integers summing to ``2**PRECISION`` (:func:`frequencies`,
  integer arithmetic only, so any reader gets the same numbers); indices with count 0 are left
  out of the alphabet.
- **stream**: constriction's ``AnsCoder`` (64-bit state, 32-bit words, 24-bit precision) run over
  the indices of all tensors in network order, with the categorical model of those frequencies;
  stored as its 32-bit words, little-endian.

Example:
    >>> import numpy as np
    >>> indices = np.array([0, 0, 0, 1, 0, 2, 0, 0])
    >>> table, stream = encode_indices(indices, 3)
    >>> decode_indices(table, stream, 3, len(indices)).tolist()
    [0, 0, 0, 1, 0, 2, 0, 0]
    >>> decode_table(table, 3).tolist(), round(entropy_bound_bytes([6, 1, 1]), 3)
    ([6, 1, 1], 1.061)
"""
from __future__ import annotations

import numpy as np

PRECISION = 24              # constriction's default AnsCoder: models quantised to 24-bit integers
MAX_CODEBOOK = 1 << 20      # far above any codebook the method makes (hundreds of values)

__all__ = ["PRECISION", "entropy_bound_bytes", "frequencies", "encode_table", "decode_table",
           "encode_indices", "decode_indices"]


def entropy_bound_bytes(counts) -> float:
    """``N * H / 8``: the bytes an ideal code of independent symbols with these counts needs.

    >>> entropy_bound_bytes([4, 4]), entropy_bound_bytes([7])
    (1.0, 0.0)
    """
    c = np.asarray(counts, dtype=np.float64)
    c = c[c > 0]
    n = c.sum()
    return float((c * np.log2(n / c)).sum() / 8) if n else 0.0


def frequencies(counts) -> np.ndarray:
    """Integer frequencies (int64) summing to ``2**PRECISION``: ``counts * (2**PRECISION - m) // N
    + 1`` for each of the m indices with a non-zero count (every used index can be coded), 0 for the
    others; what the floors leave over goes to the most frequent index (the first if tied).

    >>> f = frequencies([3, 0, 1]); f.tolist(), int(f.sum()) == 2 ** PRECISION
    ([12582912, 0, 4194304], True)
    """
    c = np.asarray(counts, dtype=np.int64)
    used = c > 0
    m, n = int(used.sum()), int(c.sum())
    if m == 0:
        raise ValueError("the frequency table is empty: no index has a non-zero count")
    if m > 1 << PRECISION:
        raise ValueError(f"{m} distinct indices do not fit a {PRECISION}-bit model")
    free = (1 << PRECISION) - m
    # Python integers: counts * free overflows int64 once N passes about 5e11
    f = np.array([int(x) * free // n + 1 if x else 0 for x in c.tolist()], dtype=np.int64)
    f[int(np.argmax(c))] += (1 << PRECISION) - int(f.sum())
    return f


def encode_table(counts) -> bytes:
    """Counts as unsigned LEB128 varints, one per index.

    >>> encode_table([0, 5, 300]).hex()
    '0005ac02'
    """
    out = bytearray()
    for x in np.asarray(counts, dtype=np.int64).tolist():
        if x < 0:
            raise ValueError(f"counts must be non-negative, got {x}")
        while x >= 0x80:
            out.append((x & 0x7F) | 0x80)
            x >>= 7
        out.append(x)
    return bytes(out)


def decode_table(data: bytes, k: int) -> np.ndarray:
    """Inverse of :func:`encode_table`: ``k`` counts (int64); a ValueError unless ``data`` holds
    exactly ``k`` varints."""
    counts, value, shift = [], 0, 0
    for byte in bytes(data):
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            counts.append(value)
            value, shift = 0, 0
        elif shift > 63:
            raise ValueError("the frequency table holds a count past 2**63")
    if shift or len(counts) != k:
        raise ValueError(f"the frequency table holds {len(counts)} complete counts, the codebook {k} values")
    return np.array(counts, dtype=np.int64)


def _model(freqs: np.ndarray):
    """constriction's categorical model over the used indices with exactly ``freqs``: it gives
    each of m symbols ``floor(p_i * scale) + 1`` after scaling the probabilities to
    ``2**PRECISION - m``; handing it ``freqs - 1`` (already summing to that, exact in float64)
    makes the scale 1, so its quantised model is ours (tests/test_export_entropy.py checks it)."""
    import constriction
    return constriction.stream.model.Categorical((freqs - 1).astype(np.float64), perfect=False)


def encode_indices(indices, k: int) -> tuple[bytes, bytes]:
    """(table, stream) of the indices (integers in 0..k-1, coded in the order given)."""
    import constriction
    idx = np.asarray(indices).reshape(-1)
    if not 1 <= k <= MAX_CODEBOOK:
        raise ValueError(f"the codebook must have 1..{MAX_CODEBOOK} values, got {k}")
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= k):
        raise ValueError(f"indices must be in [0, {k}), got [{int(idx.min())}, {int(idx.max())}]")
    counts = np.bincount(idx, minlength=k)
    used = np.flatnonzero(counts)
    if used.size <= 1:                       # one symbol (or none): nothing to code, the table says all
        return encode_table(counts), b""
    local = np.full(k, -1, dtype=np.int32)
    local[used] = np.arange(used.size, dtype=np.int32)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(local[idx], _model(frequencies(counts)[used]))
    return encode_table(counts), coder.get_compressed().astype("<u4").tobytes()


def decode_indices(table: bytes, stream: bytes, k: int, n: int) -> np.ndarray:
    """Inverse of :func:`encode_indices`: the ``n`` indices (int32). A ValueError when the table
    or stream is damaged (wrong counts, stream too short or too long)."""
    import constriction
    counts = decode_table(table, k)
    if int(counts.sum()) != n:
        raise ValueError(f"the frequency table counts {int(counts.sum()):,} indices, the tensors hold {n:,}")
    used = np.flatnonzero(counts).astype(np.int32)
    if used.size <= 1:
        if stream:
            raise ValueError(f"the index stream should be empty (one codebook value used), "
                             f"it holds {len(stream)} bytes")
        return np.full(n, used[0] if used.size else 0, dtype=np.int32)
    if len(stream) % 4:
        raise ValueError(f"the index stream is {len(stream)} bytes, not whole 32-bit words")
    coder = constriction.stream.stack.AnsCoder(np.frombuffer(stream, dtype="<u4").astype(np.uint32))
    try:
        local = coder.decode(_model(frequencies(counts)[used]), n)
    except Exception as err:                 # constriction raises its own error types on a bad stream
        raise ValueError(f"the index stream does not decode ({type(err).__name__}: {err})") from None
    if not coder.is_empty():
        raise ValueError(f"the index stream holds data past its {n:,} indices")
    return used[local]

