"""Share a model's weights by k-means: one codebook for all tensors, per tensor or per channel.

:func:`kmeans_quantize` clusters the values of every tensor in the chosen scope (a registry:
:func:`list_scopes`) with :func:`pwfn_viz.baselines.kmeans.kmeans_1d` or
:func:`pwfn_viz.baselines.kmeans.optimal_kmeans_1d` and returns a :class:`QuantizeResult`.

Example:
    >>> list_scopes()
    ['channel', 'global', 'layer']
    >>> w = {"conv": torch.tensor([[0.0, 0.25], [1.0, 1.25]]), "fc": torch.tensor([0.5, 0.75, 2.0])}
    >>> q, books, labels = kmeans_quantize(w, 2, scope="layer", init="linear")
    >>> books["conv"].tolist(), books["fc"].tolist(), q["fc"].tolist()
    ([0.125, 1.125], [0.625, 2.0], [0.625, 0.625, 2.0])
"""

from __future__ import annotations

import warnings
from typing import Mapping, NamedTuple

import numpy as np
import torch

from ...registry import Registry
from .common import _as_flat_float64, _check_k
from .lloyd import _kmeans
from .optimal import _optimal


class QuantizeResult(NamedTuple):
    """What :func:`kmeans_quantize` returns (unpacks as a 3-tuple).

    quantized: same names, shapes, dtypes and devices, every value replaced by its centre.
    codebooks: name -> sorted float64 centres; for scope "channel", name -> list with one
        codebook per output channel (dim 0); for scope "global" every name maps to the same
        shared tensor.
    labels: name -> int64 indices into that tensor's (or that row's) codebook.
    """

    quantized: dict[str, torch.Tensor]
    codebooks: dict[str, torch.Tensor | list[torch.Tensor]]
    labels: dict[str, torch.Tensor]


# scope name -> fn(arrays, cluster) -> (codebooks, labels); algorithm name -> fn(values, k, name=, **kw)
_SCOPES = Registry("scope")
_ALGORITHMS = Registry("algorithm")
_ALGORITHMS.register("lloyd", _kmeans)
_ALGORITHMS.register("optimal", _optimal)


@_SCOPES.register("global")
def _scope_global(arrays, cluster):
    res = cluster(np.concatenate([a.reshape(-1) for a in arrays.values()]), "all tensors")
    edges = np.cumsum([0] + [a.size for a in arrays.values()])
    flat = res.labels.reshape(-1)
    labels = {name: flat[edges[i]:edges[i + 1]].reshape(a.shape).clone()
              for i, (name, a) in enumerate(arrays.items())}
    return {name: res.centres for name in arrays}, labels


@_SCOPES.register("layer")
def _scope_layer(arrays, cluster):
    results = {name: cluster(a, name) for name, a in arrays.items()}
    return ({name: r.centres for name, r in results.items()},
            {name: r.labels for name, r in results.items()})


@_SCOPES.register("channel")
def _scope_channel(arrays, cluster):
    codebooks, labels = {}, {}
    for name, a in arrays.items():
        rows = a.reshape(a.shape[0] if a.ndim else 1, -1)
        results = [cluster(row, f"{name}[{r}]") for r, row in enumerate(rows)]
        codebooks[name] = [res.centres for res in results]
        labels[name] = torch.stack([res.labels for res in results]).reshape(a.shape)
    return codebooks, labels


def list_scopes() -> list[str]:
    """Names accepted by ``scope=`` in :func:`kmeans_quantize`.

    >>> list_scopes()
    ['channel', 'global', 'layer']
    """
    return _SCOPES.names()


def kmeans_quantize(tensors: Mapping[str, torch.Tensor], k: int, *, scope: str = "global",
                    algorithm: str = "lloyd", **kmeans_kwargs) -> QuantizeResult:
    """Share weights by k-means: one codebook for all tensors, per tensor, or per output channel.

    Args:
        tensors: name -> floating-point tensor (e.g. the conv/linear weights of a model).
        k: codebook size (per group).  Groups with at most k distinct values keep their
            distinct values; one ``UserWarning`` reports how many groups that happened to.
        scope: "global" (one codebook), "layer" (one per tensor) or "channel" (one per slice
            along dim 0 of each tensor).
        algorithm: "lloyd" (:func:`kmeans_1d`) or "optimal" (:func:`optimal_kmeans_1d`).
        **kmeans_kwargs: passed to :func:`kmeans_1d` (init, seed, keep_zero, max_iter, ...).

    Example:
        >>> w = {"a": torch.tensor([[0.0, 0.25], [1.0, 1.25]]), "b": torch.tensor([0.75, 0.5])}
        >>> q, books, labels = kmeans_quantize(w, 2, scope="global", init="linear")
        >>> books["a"].tolist(), q["b"].tolist(), labels["a"].tolist()
        ([0.25, 1.0], [1.0, 0.25], [[0, 0], [1, 1]])
        >>> [len(b) for b in kmeans_quantize(w, 1, scope="channel").codebooks["a"]]
        [1, 1]
    """
    by_scope = _SCOPES.get(scope)             # unknown names: the registries' errors
    algorithm_fn = _ALGORITHMS.get(algorithm)
    if algorithm == "optimal" and kmeans_kwargs:
        raise ValueError(f"algorithm='optimal' takes no k-means options, got {sorted(kmeans_kwargs)}")
    _check_k(k)
    if not isinstance(tensors, Mapping) or not tensors:
        raise ValueError("kmeans_quantize needs a non-empty dict of name -> tensor")
    arrays = {}
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            kind = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"tensor {name!r} must be a floating-point torch.Tensor, got {kind}")
        flat, shape = _as_flat_float64(t, f"tensor {name!r}")
        arrays[name] = flat.reshape(shape)

    clamped = []

    def cluster(values, label):
        res, was_clamped = algorithm_fn(values, k, name=label, **kmeans_kwargs)
        clamped.append(was_clamped)
        return res

    codebooks, labels = by_scope(arrays, cluster)
    if any(clamped):
        warnings.warn(f"k={k} exceeds the number of distinct values in {sum(clamped)} of "
                      f"{len(clamped)} group(s) (scope={scope!r}); those codebooks hold just "
                      "their distinct values", UserWarning, stacklevel=2)
    quantized = {}
    for name, t in tensors.items():
        books = codebooks[name]
        if isinstance(books, list):
            rows = labels[name].reshape(len(books), -1)
            values = torch.stack([book[row] for book, row in zip(books, rows)])
        else:
            values = books[labels[name]]
        quantized[name] = values.reshape(t.shape).to(dtype=t.dtype, device=t.device)
    return QuantizeResult(quantized, codebooks, labels)
