"""Attention heads of any transformer: fused ``qkv`` (timm) or separate q, k, v Linear layers
(Hugging Face BERT ``query``/``key``/``value``, Llama-style ``q_proj``/``k_proj``/``v_proj``, ...).

:func:`find_heads` maps each attention module of a model to its layout: an ``int`` (the number of
heads of a fused ``qkv`` + ``proj`` module, as :func:`~pwfn_viz.analysis.tables.find_attention`
gives) or a :class:`HeadLayout` (the heads and the q, k, v and output projection weights by name).
:func:`head_table` reduces per-tensor values (sigma) to one row per (layer, head), columns q, k, v,
proj, for both kinds. Head ``h`` owns rows ``h*d:(h+1)*d`` of the q weight (``d`` = rows / heads);
with fewer k/v heads (grouped-query attention) query head ``h`` reads k/v head ``h // (heads /
kv_heads)``; the output projection's input columns split the same way as the q rows.

    >>> import torch.nn as nn
    >>> class Attn(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.num_heads = 2
    ...         self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(4, 4) for _ in range(4))
    >>> find_heads(nn.Sequential(Attn()))["0"]
    HeadLayout(heads=2, q='0.q_proj.weight', k='0.k_proj.weight', v='0.v_proj.weight', proj='0.o_proj.weight')
"""
from __future__ import annotations

import math
from typing import Mapping, NamedTuple

import pandas as pd
import torch

from . import tables

QKV_NAMES = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"), ("q_lin", "k_lin", "v_lin"), ("q", "k", "v"))
PROJ_NAMES = ("o_proj", "out_proj", "out_lin", "proj", "o", "dense")
HEAD_ATTRS = ("num_heads", "num_attention_heads", "n_heads", "n_head")


class HeadLayout(NamedTuple):
    """Separate q, k, v projections: the number of (query) heads and the weights' tensor names;
    ``proj`` is the output projection's weight (None when the module has none)."""
    heads: int
    q: str
    k: str
    v: str
    proj: str | None


def _num_heads(module) -> int | None:
    for attr in HEAD_ATTRS:
        value = getattr(module, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(getattr(module, "config", None), "num_attention_heads", None)
    return value if isinstance(value, int) and value > 0 else None


def _linear(module, attr) -> bool:
    return isinstance(getattr(module, attr, None), torch.nn.Linear)


def find_heads(model: torch.nn.Module) -> dict:
    """``{attention module name: int (fused qkv) or HeadLayout (separate q, k, v)}``, network order.
    The output projection of separate q, k, v is a Linear of the module named in
    :data:`PROJ_NAMES`, or the sibling ``output.dense`` (BERT's ``attention.self`` /
    ``attention.output.dense``)."""
    found = dict(tables.find_attention(model))
    modules = dict(model.named_modules())
    for name, module in modules.items():
        names = next((n for n in QKV_NAMES if all(_linear(module, a) for a in n)), None)
        heads = _num_heads(module) if names else None
        if heads is None or name in found:
            continue
        prefix = f"{name}." if name else ""
        proj = next((f"{prefix}{a}.weight" for a in PROJ_NAMES if _linear(module, a)), None)
        parent = name.rsplit(".", 1)[0] if "." in name else ""
        if proj is None and name and _linear(getattr(modules.get(parent), "output", None), "dense"):
            proj = f"{parent + '.' if parent else ''}output.dense.weight"
        found[name] = HeadLayout(heads, *(f"{prefix}{a}.weight" for a in names), proj)
    return found


def with_heads(attention: Mapping, num_heads: int | None) -> dict:
    """``attention`` with every module's number of heads set to ``num_heads`` (None: unchanged)."""
    if not num_heads:
        return dict(attention)
    return {k: num_heads if isinstance(v, int) else v._replace(heads=num_heads) for k, v in attention.items()}


def _split_rows(weight: torch.Tensor, heads: int, what: str) -> torch.Tensor:
    if weight.shape[0] % heads:
        raise ValueError(f"{what} has {weight.shape[0]} rows, which do not split into {heads} heads")
    return weight.reshape(heads, weight.shape[0] // heads, *weight.shape[1:])


def head_table(tensors: Mapping[str, torch.Tensor], attention: Mapping, stat: str = "mean") -> pd.DataFrame:
    """One row per (attention layer, head), columns q, k, v, proj: ``stat`` ("mean" or "median") of
    ``tensors`` over that head's weights; ``attention`` as :func:`find_heads` gives it."""
    fused = {k: v for k, v in attention.items() if isinstance(v, int)}
    parts = [tables.attention_head_table(tensors, fused, stat)] if fused else []
    if stat not in ("mean", "median"):
        raise ValueError(f"stat={stat!r}: use 'mean' or 'median'")
    reduce = (lambda t: t.double().mean().item()) if stat == "mean" else (lambda t: t.double().median().item())
    rows = []
    for layer, lay in attention.items():
        if isinstance(lay, int):
            continue
        for n in (lay.q, lay.k, lay.v) + ((lay.proj,) if lay.proj else ()):
            tables.check_layer(tensors, n)
        q = _split_rows(tensors[lay.q], lay.heads, lay.q)
        dim = q.shape[1]
        kv_heads = tensors[lay.k].shape[0] // dim
        if kv_heads < 1 or tensors[lay.k].shape[0] % dim or lay.heads % kv_heads:
            raise ValueError(f"{lay.k} has {tensors[lay.k].shape[0]} rows: not a whole number of k/v heads of "
                             f"{dim} rows that divides {lay.heads} query heads")
        k, v = _split_rows(tensors[lay.k], kv_heads, lay.k), _split_rows(tensors[lay.v], kv_heads, lay.v)
        proj = tables.split_proj(tensors[lay.proj], lay.heads) if lay.proj else None
        group = lay.heads // kv_heads
        for h in range(lay.heads):
            rows.append(dict(layer=layer, head=h, q=reduce(q[h]), k=reduce(k[h // group]), v=reduce(v[h // group]),
                             proj=reduce(proj[h]) if proj is not None else math.nan))
    if rows:
        parts.append(pd.DataFrame(rows).set_index(["layer", "head"]))
    if not parts:
        raise ValueError("no attention layers given (find_heads found none: is this a transformer?)")
    return pd.concat(parts) if len(parts) > 1 else parts[0]
