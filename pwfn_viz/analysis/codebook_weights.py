"""Weights that hold the values of one codebook, measured from the codebook and the labels.

After k-means every converted weight is ``centres[label]``. What
:func:`pwfn_viz.analysis.compare.measure_method` reports about such weights -- their distinct
values and how many weights hold each (hence the unique counts and the entropies), the distinct
count per tensor, the weights as one float64 vector -- follows from the codebook and a count of
the labels. Measuring it from the weights themselves means sorting them (``torch.unique``),
which on a million weights costs more than the k-means run. The numbers are the same.

The codebook is taken as the tensors store it (``centres.to(dtype)``): two float64 centres that
round to one float32 value are one value of the network, as ``torch.unique`` would see it.

Example:
    >>> import torch
    >>> book = CodebookWeights(torch.tensor([-0.5, 0.0, 2.0], dtype=torch.float64),
    ...                        torch.tensor([0, 2, 2, 0, 2]), torch.float32, [3, 2])
    >>> book.distinct()
    (tensor([-0.5000,  2.0000], dtype=torch.float64), tensor([2, 3]))
    >>> book.per_tensor_unique(), book.stats()["unique"]
    ([2, 2], 2)
"""
from __future__ import annotations

import numpy as np
import torch

from ..core.metrics import counted_codebook_stats   # codebook_stats' numbers from the same counts

__all__ = ["CodebookWeights"]


class CodebookWeights:
    """Converted weights ``centres[labels]`` stored in ``dtype``, the tensors one after another.

    centres: sorted float64 codebook (k); labels: int64, one per weight in network order;
    dtype: the tensors' dtype; sizes: each tensor's number of weights, in network order.
    """

    def __init__(self, centres: torch.Tensor, labels: torch.Tensor, dtype: torch.dtype, sizes):
        self.codebook = centres.to(dtype)                   # as stored: sorted, possibly with repeats
        self.labels = labels.reshape(-1)
        self.sizes = [int(n) for n in sizes]
        if sum(self.sizes) != self.labels.numel():
            raise ValueError(f"{self.labels.numel()} labels for tensors of {sum(self.sizes)} weights")
        self.stored = self.codebook[self.labels]            # the weights, flat, in ``dtype``
        self._held = None

    @property
    def flat(self) -> torch.Tensor:
        """The weights as one float64 vector (what ``flatten_named`` gives for the tensors)."""
        return self.stored.double()

    def tensors(self, shapes) -> list[torch.Tensor]:
        """The weights of each tensor in ``dtype``, reshaped to ``shapes`` (views, network order)."""
        return [part.view(shape) for part, shape in zip(self.stored.split(self.sizes), shapes)]

    def held(self) -> tuple[np.ndarray, np.ndarray]:
        """(first, counts): ``codebook[first]`` are the distinct stored values (sorted; centres equal
        once stored are one value) and ``counts[t, j]`` how many weights of tensor ``t`` hold value j."""
        if self._held is None:
            book = self.codebook
            starts = torch.ones(book.numel(), dtype=torch.bool)    # compared in torch: numpy has no bfloat16
            starts[1:] = book[1:] != book[:-1]
            first = np.flatnonzero(starts.numpy())
            per_centre = np.stack([np.bincount(part, minlength=book.numel())   # numpy's bincount: many times torch's
                                   for part in np.split(self.labels.numpy(), np.cumsum(self.sizes)[:-1])])
            self._held = first, np.add.reduceat(per_centre, first, axis=1)
        return self._held

    def distinct(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(sorted distinct values as float64, how many weights hold each): what
        ``torch.unique(flat, return_counts=True)`` gives (a zero stored as -0.0 may show as such)."""
        first, counts = self.held()
        total = counts.sum(axis=0)
        used = total > 0
        return self.codebook[torch.from_numpy(first[used])].double(), torch.from_numpy(total[used])

    def stats(self) -> dict:
        """What :func:`pwfn_viz.core.metrics.codebook_stats` gives for the weights."""
        return counted_codebook_stats(*self.distinct())

    def per_tensor_unique(self) -> list[int]:
        """The number of distinct values in each tensor (``torch.unique(t).numel()``)."""
        return [int(n) for n in np.count_nonzero(self.held()[1], axis=1)]
