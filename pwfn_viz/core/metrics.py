"""What a run measures (docs/method.md, section 6): accuracy, unique values, entropy, per-layer tables.

Pure functions over tensors and models; plotting lives elsewhere.

Example:
    >>> import torch
    >>> codebook_stats(torch.tensor([0.0, 0.0, 0.5, 0.5, 0.25, -0.25]))["unique"]
    4
"""
from __future__ import annotations

import pandas as pd
import torch
import torch.nn as nn

from .bayes import bayes_tensors, quantile


@torch.no_grad()
def evaluate(model: nn.Module, loader, device="cpu", *, reduce=None, autocast=None) -> dict:
    """Top-1 / top-5 accuracy (percent) and mean cross-entropy of ``model`` in eval mode (mean
    weights). The model's train/eval mode is restored afterwards.

    ``reduce`` sums the counts across processes (distributed evaluation over shards);
    ``autocast`` is a context-manager factory for mixed precision."""
    was_training = model.training
    model.eval()
    correct1 = correct5 = total = 0
    loss_sum = 0.0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        if autocast is not None:
            with autocast():
                out = model(x).float()
        else:
            out = model(x)
        loss_sum += nn.functional.cross_entropy(out, y, reduction="sum").item()
        top = out.topk(min(5, out.shape[1]), dim=1).indices
        correct1 += (top[:, 0] == y).sum().item()
        correct5 += (top == y[:, None]).any(dim=1).sum().item()
        total += y.numel()
    model.train(was_training)
    if reduce is not None:
        correct1, correct5, loss_sum, total = reduce([correct1, correct5, loss_sum, total])
    if total == 0:
        raise ValueError("the evaluation loader yielded no samples")
    return {"top1": 100.0 * correct1 / total, "top5": 100.0 * correct5 / total, "loss": loss_sum / total}


def _entropy(counts: torch.Tensor) -> float:
    if counts.numel() == 0:
        return 0.0
    p = counts.double() / counts.sum()
    return abs(float((p * p.log2()).sum()))   # abs: no -0.0 for a single value


def entropy_bits(values: torch.Tensor) -> float:
    """Shannon entropy (bits) of the empirical distribution of ``values``; 0 for an empty tensor."""
    return _entropy(torch.unique(values, return_counts=True)[1])


def codebook_stats(values: torch.Tensor) -> dict:
    """Unique values and entropy in bits, with and without zero (WFN reported without).
    One ``torch.unique`` serves all four numbers."""
    return counted_codebook_stats(*torch.unique(values.detach().flatten(), return_counts=True))


def counted_codebook_stats(uniq: torch.Tensor, counts: torch.Tensor) -> dict:
    """:func:`codebook_stats` from the distinct values in ascending order and how many entries
    hold each (int64), as ``torch.unique(values, return_counts=True)`` gives them: for a caller
    that knows them without a sort of the values (the same numbers, bit for bit)."""
    nonzero = counts[uniq != 0]
    return {"unique": int(uniq.numel()), "unique_nonzero": int(nonzero.numel()),
            "entropy": _entropy(counts), "entropy_nonzero": _entropy(nonzero)}


def layer_table(model: nn.Module) -> pd.DataFrame:
    """One row per converted tensor: unique values, entropy, fraction fixed, sigma statistics."""
    rows = []
    for t in bayes_tensors(model):
        sigma = t.sigma.detach().flatten().double()
        qs = [quantile(sigma, q) for q in (0.05, 0.25, 0.5, 0.75, 0.95)]
        stats = codebook_stats(t.value)
        rows.append({"name": t.name, "shape": "x".join(map(str, t.mu.shape)), "numel": t.mu.numel(),
                     "unique": stats["unique"], "entropy": stats["entropy"],
                     "fraction_fixed": t.fixed.float().mean().item(),
                     "sigma_mean": sigma.mean().item(), "sigma_median": qs[2].item(),
                     "sigma_q05": qs[0].item(), "sigma_q25": qs[1].item(),
                     "sigma_q75": qs[3].item(), "sigma_q95": qs[4].item()})
    return pd.DataFrame(rows)
