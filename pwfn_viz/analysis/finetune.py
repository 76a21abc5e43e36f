"""Deep Compression style fine-tuning after k-means: :func:`kmeans_finetune`.

Every shared weight is ``codebook[label]``; the labels (assignments) never change and the centroids
are trained. The gradient of a centroid is the sum of the gradients of the weights that share it
(``scatter_add``); the centroids take plain SGD steps (momentum allowed, no weight decay), every
other parameter (norm layers, ...) trains as usual.
"""
from __future__ import annotations

import math
from typing import Mapping, NamedTuple

import torch
import torch.nn as nn
from tqdm.auto import tqdm

class FinetuneResult(NamedTuple):
    """What :func:`kmeans_finetune` returns; the model itself is updated in place.

    codebooks: the trained centroids (float64), in the structure passed in (a codebook shared
        by several names stays one shared tensor).
    loss: mean training loss (cross-entropy unless another ``loss_fn`` is given) over the steps (NaN when no step ran).
    steps: optimiser steps taken.
    """
    codebooks: dict
    loss: float
    steps: int


def _shared_layout(labels, codebooks, params):
    """One flat centroid vector for all codebooks and, per name, each weight's index into it.

    Codebooks that are the same tensor object (kmeans_quantize's global scope) share centroids.
    Returns (flat float64 centroids, name -> int64 index of the parameter's shape, rebuild)
    where ``rebuild(flat)`` gives the codebooks back in the structure passed in.
    """
    blocks, offsets = [], {}

    def offset_of(book):
        if not isinstance(book, torch.Tensor) or book.dim() != 1 or book.numel() == 0:
            raise ValueError("every codebook must be a non-empty 1-D tensor (or, per channel, a list of them)")
        if id(book) not in offsets:
            offsets[id(book)] = sum(b.numel() for b in blocks)
            blocks.append(book.detach().to("cpu", torch.float64))
        return offsets[id(book)]

    if set(labels) != set(codebooks):
        raise ValueError(f"labels and codebooks name different tensors: {sorted(set(labels) ^ set(codebooks))}")
    index = {}
    for name, lab in labels.items():
        if name not in params:
            raise ValueError(f"{name!r} is not a parameter of the model; it has {sorted(params)}")
        if tuple(lab.shape) != tuple(params[name].shape) or lab.dtype != torch.int64:
            raise ValueError(f"labels[{name!r}] must be an int64 tensor of shape {tuple(params[name].shape)}, "
                             f"got {lab.dtype} {tuple(lab.shape)}")
        books = codebooks[name]
        if isinstance(books, (list, tuple)):
            if lab.dim() == 0 or len(books) != lab.shape[0] or not books:
                raise ValueError(f"codebooks[{name!r}] has {len(books)} per-channel codebooks for a tensor "
                                 f"of shape {tuple(lab.shape)}; pass one per slice along dim 0")
            rows = lab.reshape(len(books), -1)
            sizes = torch.tensor([b.numel() for b in books])[:, None]
            starts = torch.tensor([offset_of(b) for b in books])[:, None]
        else:
            rows, sizes, starts = lab.reshape(1, -1), torch.tensor([[books.numel()]]), offset_of(books)
        if rows.numel() and (rows.min() < 0 or (rows >= sizes).any()):
            raise ValueError(f"labels[{name!r}] holds an index outside its codebook")
        index[name] = (rows + starts).reshape(lab.shape).cpu()
    flat = torch.cat(blocks)

    def rebuild(values: torch.Tensor) -> dict:
        values, out = values.detach().to("cpu", torch.float64), {}
        made = {}

        def part(book):
            if id(book) not in made:
                made[id(book)] = values[offsets[id(book)]:offsets[id(book)] + book.numel()].clone()
            return made[id(book)]
        for name, books in codebooks.items():
            out[name] = [part(b) for b in books] if isinstance(books, (list, tuple)) else part(books)
        return out
    return flat, index, rebuild


def kmeans_finetune(model: nn.Module, labels: Mapping[str, torch.Tensor], codebooks: Mapping, loader,
                    epochs: float, *, lr: float = 1e-3, momentum: float = 0.9, weight_decay: float = 1e-4,
                    grad_clip: float = 0.0, keep_zero: bool = False, device="cpu",
                    progress: bool = False, loss_fn=None) -> FinetuneResult:
    """Train the centroids of a k-means-shared model, keeping every weight's assignment.

    Args:
        model: a plain network; its parameters named in ``labels`` are shared (their current
            values are overwritten with ``codebook[label]`` before the first step).
        labels: parameter name -> int64 indices of the parameter's shape (kmeans_quantize's).
        codebooks: name -> 1-D centroids (one tensor object for names sharing a codebook, as
            kmeans_quantize's global scope gives), or name -> list of 1-D centroids, one per
            slice along dim 0 (scope "channel").
        loader: training batches ``(x, y)``; the loss is ``loss_fn(model(x), y)``.
        loss_fn: default cross-entropy (classification); your own loss for your own task.
        epochs: passes over ``loader`` (fractions allowed; at least one step when > 0).
        lr, momentum: SGD on the centroids and on the other parameters.
        weight_decay: for the other parameters only (decay would pull the codebook towards 0;
            PWFN spares fixed weights from decay too).
        grad_clip: clip the gradient norm of centroids and other parameters together (0: off).
        keep_zero: centroids that are exactly 0 stay 0.
        device: where to train.

    The gradient of centroid ``c`` is ``sum_{i: label_i = c} dL/dw_i``; with momentum 0 a step
    is ``c -= lr * that sum``.

    Example:
        >>> net = nn.Linear(3, 1, bias=False)
        >>> books = {"weight": torch.tensor([-1.0, 1.0])}
        >>> labs = {"weight": torch.tensor([[0, 1, 1]])}
        >>> data = [(torch.ones(4, 3), torch.zeros(4, dtype=torch.long))]
        >>> res = kmeans_finetune(net, labs, books, data, 1, lr=0.1, momentum=0.0)
        >>> res.steps, net.weight.tolist() == [[res.codebooks["weight"][0].item()] + [res.codebooks["weight"][1].item()] * 2]
        (1, True)
    """
    device = torch.device(device) if not isinstance(device, torch.device) else device
    params = dict(model.named_parameters())
    flat, index, rebuild = _shared_layout(labels, codebooks, params)
    model.to(device)
    dtype = next(iter(params[n] for n in labels)).dtype
    centroids = nn.Parameter(flat.to(device, dtype))
    index = {n: i.to(device) for n, i in index.items()}
    shared = {n: params[n] for n in labels}
    others = [p for n, p in params.items() if n not in shared and p.requires_grad]
    zero = centroids.detach() == 0 if keep_zero else None
    loss_fn = nn.functional.cross_entropy if loss_fn is None else loss_fn

    def write_weights():
        with torch.no_grad():
            for n, p in shared.items():
                p.copy_(centroids[index[n]])

    write_weights()
    for p in shared.values():
        p.requires_grad_(True)
    opt_c = torch.optim.SGD([centroids], lr=lr, momentum=momentum)
    opt_o = torch.optim.SGD(others, lr=lr, momentum=momentum, weight_decay=weight_decay) if others else None
    n_steps = max(1, round(epochs * len(loader))) if epochs > 0 else 0
    model.train()
    total, done = 0.0, 0
    bar = tqdm(total=n_steps, desc="k-means fine-tune", leave=False, disable=not progress)
    while done < n_steps:
        for x, y in loader:
            loss = loss_fn(model(x.to(device)), y.to(device))
            model.zero_grad(set_to_none=True)
            loss.backward()
            grad = torch.zeros_like(centroids)
            for n, p in shared.items():   # a centroid's gradient: the sum over the weights sharing it
                grad.scatter_add_(0, index[n].reshape(-1), p.grad.reshape(-1))
            if zero is not None:
                grad[zero] = 0.0
            centroids.grad = grad
            if grad_clip:
                nn.utils.clip_grad_norm_([centroids, *others], grad_clip)
            opt_c.step()
            if opt_o is not None:
                opt_o.step()
            write_weights()
            total += loss.item()
            done += 1
            bar.update()
            if done == n_steps:
                break
    bar.close()
    model.zero_grad(set_to_none=True)
    model.eval()
    return FinetuneResult(rebuild(centroids), total / done if done else math.nan, done)


# ----------------------------------------------------------------------------- measurements
