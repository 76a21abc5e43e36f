"""The size table of an export: the converted weights in every format side by side.

Rows: fp32 and fp16 weights, the fixed-width indices plus codebook (format version 1), the
indices as whole bytes (uint8, or uint16 past 256 values: what the ONNX export stores), the
entropy-coded indices plus codebook (format version 2), zstd and brotli on the fp32 weights and on
both fixed-width index layouts (plus the codebook), and the entropy bound ``N * H / 8`` plus the
codebook.
Columns: ``bytes``, ``ratio`` (fp32 bytes / bytes: how many times smaller than fp32),
``index_bytes`` (the part that codes the indices, where there is one) and ``vs_bound``
(index_bytes / entropy bound - 1). Only the converted tensors count; the unquantised rest (norm
layers) is the same in every format and left out.

Example:
    >>> import torch
    >>> w = {"w": torch.tensor([0.5, 0.5, 0.5, -1.0] * 256)}
    >>> table = size_table(w, compressors=False)
    >>> int(table.loc["fp32", "bytes"]), int(table.loc["fixed-width indices + codebook", "bytes"])
    (4096, 136)
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from . import export_entropy as ans
from .export import bits_for, codebook_indices, pack_bits

ZSTD_LEVEL = 19        # zstd's strongest ordinary level
BROTLI_QUALITY = 11    # brotli's strongest


def _compressors(zstd_level: int, brotli_quality: int) -> dict:
    """name -> function(bytes) -> compressed bytes, for the compressors installed (the ``export``
    extra: pip install 'pwfn_viz[export]')."""
    found = {}
    try:
        import zstandard
        found["zstd"] = zstandard.ZstdCompressor(level=zstd_level).compress
    except ImportError:
        pass
    try:
        import brotli
        found["brotli"] = lambda data: brotli.compress(data, quality=brotli_quality)
    except ImportError:
        pass
    return found


def size_table(weights: dict[str, torch.Tensor], compressors: bool = True, zstd_level: int = ZSTD_LEVEL,
               brotli_quality: int = BROTLI_QUALITY) -> pd.DataFrame:
    """The size table (see the module docstring) of ``weights`` (name -> tensor, every value on a
    shared codebook). ``compressors=False`` leaves out the zstd and brotli rows (slow on millions
    of weights); rows of a compressor that is not installed are left out too."""
    codebook, indices = codebook_indices(weights)
    k, n = codebook.numel(), indices.numel()
    flat = torch.cat([w.detach().cpu().float().flatten() for w in weights.values()])
    book = 4 * k
    bits = bits_for(k)
    fixed = sum(pack_bits(indices[o:o + w.numel()], bits).numel()
                for o, w in zip(np.cumsum([0] + [w.numel() for w in weights.values()]), weights.values()))
    table, stream = ans.encode_indices(indices.numpy(), k)
    bound = ans.entropy_bound_bytes(np.bincount(indices.numpy(), minlength=k))
    whole = indices.numpy().astype(np.uint8 if k <= 256 else np.uint16 if k <= 1 << 16 else np.uint32)
    rows = [("fp32", 4 * n, None), ("fp16", 2 * n, None),
            ("fixed-width indices + codebook", book + fixed, fixed),
            (f"{whole.dtype} indices + codebook", book + whole.nbytes, whole.nbytes),
            ("entropy-coded indices + codebook", book + len(table) + len(stream), len(table) + len(stream))]
    if compressors:
        # the bit-packed indices as one stream (each tensor packed alone differs by < 1 byte per tensor)
        packed = pack_bits(indices, bits).numpy().tobytes()
        for name, compress in _compressors(zstd_level, brotli_quality).items():
            rows.append((f"{name} on fp32", len(compress(flat.numpy().tobytes())), None))
            for what, data in (("fixed-width", packed), (str(whole.dtype), whole.tobytes())):
                size = len(compress(data))
                rows.append((f"{name} on {what} indices + codebook", book + size, size))
    rows.append(("entropy bound N*H/8 + codebook", book + bound, bound))
    frame = pd.DataFrame(rows, columns=["format", "bytes", "index_bytes"]).set_index("format")
    frame["ratio"] = 4 * n / frame["bytes"]
    frame["vs_bound"] = frame["index_bytes"] / bound - 1 if bound else float("nan")
    frame.attrs.update(n_weights=n, codebook_size=k, entropy_bits=8 * bound / n, fixed_bits=bits)
    return frame[["bytes", "ratio", "index_bytes", "vs_bound"]]


def format_size_table(frame: pd.DataFrame) -> str:
    """The table as text: bytes with thousands separators, ratio as ``7.3x``, vs_bound in %.

    >>> import torch
    >>> print(format_size_table(size_table({"w": torch.tensor([1.0, 2.0] * 64)}, compressors=False)).splitlines()[0])
    128 weights, codebook 2 values, entropy 1.000 bits per weight (fixed width 1 bits)
    """
    a = frame.attrs
    head = (f"{a['n_weights']:,} weights, codebook {a['codebook_size']} values, entropy "
            f"{a['entropy_bits']:.3f} bits per weight (fixed width {a['fixed_bits']} bits)")
    shown = pd.DataFrame({
        "bytes": [f"{v:,.0f}" for v in frame["bytes"]],
        "ratio to fp32": [f"{v:.2f}x" for v in frame["ratio"]],
        "index bytes": ["" if pd.isna(v) else f"{v:,.0f}" for v in frame["index_bytes"]],
        "vs entropy bound": ["" if pd.isna(v) else f"{v:+.2%}" for v in frame["vs_bound"]]}, index=frame.index)
    return head + "\n" + shown.to_string()
