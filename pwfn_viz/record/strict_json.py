"""Strict JSON for run records: never a bare NaN or Infinity, which strict JSON readers (browsers,
``jq``, most non-Python libraries) reject.

``dumps`` writes every non-finite float as ``null``; ``nan_for_null`` turns the ``null`` of a
metrics mapping back into NaN where a number is expected. Finite data gives exactly the bytes of
``json.dumps``.

    >>> dumps({"top1": float("nan"), "loss": 0.5})
    '{"top1": null, "loss": 0.5}'
    >>> nan_for_null({"top1": None, "loss": 0.5})
    {'top1': nan, 'loss': 0.5}
"""
from __future__ import annotations

import json
import math


def finite_or_none(obj):
    """``obj`` with every non-finite float (NaN, +-inf) inside dicts, lists and tuples replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def dumps(obj, **kwargs) -> str:
    """``json.dumps`` with non-finite floats written as ``null`` (``allow_nan=False``: strict JSON)."""
    return json.dumps(finite_or_none(obj), allow_nan=False, **kwargs)


def nan_for_null(metrics: dict, keys=None) -> dict:
    """A copy of ``metrics`` with ``None`` values (of ``keys``, default all) read back as NaN."""
    return {k: (math.nan if v is None and (keys is None or k in keys) else v) for k, v in metrics.items()}


__all__ = ["dumps", "finite_or_none", "nan_for_null"]
