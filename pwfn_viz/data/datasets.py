"""Datasets by name: ``create_dataset("digits")`` gives a ready train/test pair.

A registry (``pwfn_viz.registry.Registry``): each dataset is a function decorated with
``@register_dataset(name)``; users discover them with ``list_datasets()``.

    >>> from pwfn_viz.data.datasets import create_dataset, make_loader
    >>> data = create_dataset("digits")
    >>> data
    DataBundle('digits', train=1437, test=360, classes=10, in_chans=1, image_size=8)
    >>> x, y = data.train[0]
    >>> tuple(x.shape), int(y) in range(10)
    ((1, 8, 8), True)
    >>> batch_x, batch_y = next(iter(make_loader(data.train, batch_size=32, shuffle=True, seed=0)))
    >>> tuple(batch_x.shape)
    (32, 1, 8, 8)

Datasets that read files (``mnist``, ``cifar10``, ``imagefolder``) never download: they read
``root`` and, when files are missing, raise ``FileNotFoundError`` naming the exact path expected; a
damaged or truncated file gives a ``ValueError`` (:class:`pwfn_viz.files.FileError`) naming it.
No user file is unpickled with the full pickle machinery (see :mod:`pwfn_viz.data.cifar`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from ..files import reading
from ..registry import Registry

__all__ = [
    "DataBundle",
    "ImageTransform",
    "TensorImageDataset",
    "create_dataset",
    "list_datasets",
    "make_loader",
    "register_dataset",
]

_DATASETS = Registry("dataset", hint="add one with register_dataset")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")


# ----------------------------------------------------------------------------- records


@dataclass
class DataBundle:
    """A train/test pair plus what a model needs to know about it.

    ``mean``/``std`` are the per-channel statistics that were subtracted/divided (before any
    channel repeat), so ``x * std + mean`` shows an image again.
    """

    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    in_chans: int
    image_size: int
    classes: tuple[str, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __repr__(self) -> str:
        return (f"DataBundle({self.name!r}, train={len(self.train)}, test={len(self.test)}, "
                f"classes={self.num_classes}, in_chans={self.in_chans}, image_size={self.image_size})")


@dataclass(frozen=True)
class ImageTransform:
    """Batch transform ``(N, C, H, W)`` -> float32: scale, normalise, resize, repeat channels.

    >>> t = ImageTransform(scale=1 / 255, mean=(0.5,), std=(0.5,), image_size=4, in_chans=3)
    >>> t(torch.full((2, 1, 2, 2), 255, dtype=torch.uint8)).shape
    torch.Size([2, 3, 4, 4])
    """

    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    image_size: int | None = None
    in_chans: int | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32) * self.scale
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        x = (x - mean) / std
        if self.image_size is not None and x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size),
                              mode="bilinear", align_corners=False)
        if self.in_chans is not None and x.shape[1] != self.in_chans:
            x = x.repeat(1, self.in_chans // x.shape[1], 1, 1)
        return x


class TensorImageDataset(Dataset):
    """Images held in memory (raw, e.g. uint8), transformed when read.

    ``ds[i]`` gives ``(image, label)``; ``ds.tensors()`` gives the whole set (or
    ``indices``) transformed in one vectorised call, handy for full-batch evaluation.
    """

    def __init__(self, data: torch.Tensor, targets: torch.Tensor,
                 transform: ImageTransform | None = None):
        if len(data) != len(targets):
            raise ValueError(f"{len(data)} images but {len(targets)} labels")
        self.data = data
        self.targets = targets.to(torch.long)
        self.transform = transform or ImageTransform()

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.data[i].unsqueeze(0))[0], self.targets[i]

    def tensors(self, indices: Sequence[int] | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """All images (or ``indices``) transformed, and their labels."""
        if indices is None:
            return self.transform(self.data), self.targets
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.transform(self.data[idx]), self.targets[idx]

    def __repr__(self) -> str:
        shape = tuple(self[0][0].shape) if len(self) else ()
        return f"TensorImageDataset(n={len(self)}, image={shape}, dtype_stored={self.data.dtype})"


# ----------------------------------------------------------------------------- registry


def register_dataset(name: str):
    """Decorator that adds a dataset builder ``fn(root, image_size, in_chans, seed, **kw)``;
    a name that is already registered is refused."""
    return _DATASETS.register(name)


def list_datasets() -> list[str]:
    """Names accepted by ``create_dataset``, sorted."""
    return _DATASETS.names()


def create_dataset(name: str = "digits", root: str | Path | None = None, image_size: int | None = None,
                   in_chans: int | None = None, seed: int = 0, **kwargs) -> DataBundle:
    """Build the dataset ``name`` (see ``list_datasets()``).

    ``image_size`` resizes (square), ``in_chans`` repeats a grey channel (e.g. 3 for timm
    models); ``None`` keeps the dataset's own. Extra ``kwargs`` go to the builder
    (e.g. ``create_dataset("synthetic", num_classes=4, n_train=64)``).
    """
    build = _DATASETS.get(name)   # an unknown name: the registry's error, listing what exists
    if in_chans is not None and in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    return build(root=root, image_size=image_size, in_chans=in_chans, seed=seed, **kwargs)


def in_memory(dataset: Dataset) -> bool:
    """True for data already held as tensors (digits, mnist, cifar, synthetic; subsets of them):
    loader worker processes cost more there than they save."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return isinstance(dataset, TensorImageDataset)


def auto_workers(dataset: Dataset, processes_per_node: int = 1, cap: int = 8) -> int:
    """Loader workers for ``dataset``: 0 for in-memory data, else this process's share of the CPUs
    it may use (``processes_per_node`` training processes share them), at most ``cap``."""
    if in_memory(dataset):
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cap, cpus // max(1, processes_per_node) - 1))


def make_loader(dataset: Dataset, batch_size: int = 128, shuffle: bool = False, seed: int = 0, *,
                num_workers: int = 0, pin_memory: bool = False, sampler=None) -> DataLoader:
    """A ``DataLoader`` whose order depends only on ``seed`` (or on ``sampler``), with
    ``num_workers`` worker processes kept alive across its epochs and, for a GPU, pinned memory.
    Augmentation in workers is seeded from the same generator, so a run is repeatable."""
    gen = torch.Generator().manual_seed(seed)
    workers = dict(num_workers=num_workers, persistent_workers=True, prefetch_factor=4) if num_workers else {}
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else False, sampler=sampler,
                      generator=gen, pin_memory=pin_memory, **workers)


def train_subset(dataset: Dataset, fraction: float, seed: int = 0) -> Dataset:
    """A fixed random ``fraction`` of ``dataset`` (the same one for a given seed); all of it at 1.

    >>> len(train_subset(TensorImageDataset(torch.zeros(10, 1, 2, 2), torch.zeros(10, dtype=torch.long)), 0.9))
    9
    """
    if fraction >= 1:
        return dataset
    n = len(dataset)
    keep = int(n * fraction)
    if keep < 1:
        raise ValueError(f"train_split={fraction} of {n} training samples keeps none; raise it")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return Subset(dataset, sorted(order[:keep].tolist()))


def _check_chans(name: str, native: int, in_chans: int | None) -> int:
    """Channels after the transform; a grey image may be repeated, nothing else changes."""
    if in_chans is None or in_chans == native:
        return native
    if native == 1:
        return in_chans
    raise ValueError(f"dataset {name!r} has {native} channels; in_chans={in_chans} is not supported "
                     f"(only a 1-channel dataset can be repeated to more channels)")


def _need_root(name: str, root, expected: str) -> Path:
    if root is None:
        raise ValueError(f"dataset {name!r} reads local files: pass root=<folder holding {expected}>")
    return Path(root)


def _missing(path: Path, how: str) -> FileNotFoundError:
    return FileNotFoundError(f"expected {path}; {how}")


# ----------------------------------------------------------------------------- digits


@register_dataset("digits")
def _digits(root=None, image_size=None, in_chans=None, seed=0) -> DataBundle:
    """sklearn's 8x8 digits (embedded, no files): fixed stratified 80/20 split, train-set normalisation.

    The split uses ``random_state=0`` whatever ``seed`` is, so results stay comparable.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    scaled = x_tr / 16.0
    mean, std = (float(scaled.mean()),), (float(scaled.std()),)
    chans = _check_chans("digits", 1, in_chans)
    tf = ImageTransform(1 / 16, mean, std, image_size, chans)

    def make(a, b):
        return TensorImageDataset(torch.from_numpy(a.astype(np.uint8)).view(-1, 1, 8, 8),
                                  torch.from_numpy(b), tf)

    return DataBundle("digits", make(x_tr, y_tr), make(x_te, y_te), 10, chans, image_size or 8,
                      tuple(str(d) for d in range(10)), mean, std)


# ----------------------------------------------------------------------------- mnist


@register_dataset("mnist")
def _mnist(root=None, image_size=None, in_chans=None, seed=0) -> DataBundle:
    """MNIST from ``root/MNIST/raw/*-ubyte`` (idx files, read by torchvision; never downloads)."""
    from torchvision.datasets import MNIST

    root = _need_root("mnist", root, "MNIST/raw/train-images-idx3-ubyte")
    raw = root / "MNIST" / "raw"
    legacy = all((root / "MNIST" / "processed" / f).is_file() for f in ("training.pt", "test.pt"))
    for split in ("train", "t10k"):
        for kind in ("images-idx3", "labels-idx1"):
            path = raw / f"{split}-{kind}-ubyte"
            if not legacy and not path.is_file():
                raise _missing(path, "download it with torchvision.datasets.MNIST(root, download=True) "
                                     "on a machine with internet (it writes MNIST/raw/ under root)")
    chans = _check_chans("mnist", 1, in_chans)
    tf = ImageTransform(1 / 255, MNIST_MEAN, MNIST_STD, image_size, chans)
    parts = []
    for train in (True, False):
        with reading(raw if not legacy else root / "MNIST" / "processed", "MNIST folder (its idx files)"):
            ds = MNIST(str(root), train=train, download=False)
            _check_mnist(ds, raw)
        parts.append(TensorImageDataset(ds.data.unsqueeze(1), ds.targets, tf))
    return DataBundle("mnist", parts[0], parts[1], 10, chans, image_size or 28,
                      tuple(str(d) for d in range(10)), MNIST_MEAN, MNIST_STD)


def _check_mnist(ds, raw: Path) -> None:
    """Images and labels of one split agree (a truncated idx file can still parse)."""
    split = "train" if ds.train else "t10k"
    if ds.data.ndim != 3 or len(ds.data) != len(ds.targets) or not len(ds.data):
        raise ValueError(f"{raw}/{split}-*-ubyte: {tuple(ds.data.shape)} images but {len(ds.targets)} labels; "
                         "a file is damaged or truncated: extract or download MNIST again")


# ----------------------------------------------------------------------------- imagefolder

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


# ----------------------------------------------------------------------------- synthetic


@register_dataset("synthetic")
def _synthetic(root=None, image_size=None, in_chans=None, seed=0, num_classes: int = 10,
               n_train: int = 512, n_test: int = 128, noise: float = 1.0) -> DataBundle:
    """Random images with learnable classes: a smooth per-class pattern plus Gaussian noise.

    Each class has a 4x4 random pattern upsampled to ``image_size``; an image is its class
    pattern plus ``noise`` * N(0, 1) per pixel. Same ``seed`` -> same data.
    """
    size = image_size or 32
    chans = in_chans or 3
    gen = torch.Generator().manual_seed(seed)
    patterns = F.interpolate(torch.randn(num_classes, chans, 4, 4, generator=gen),
                             size=(size, size), mode="bilinear", align_corners=False)

    def make(n):
        y = torch.randperm(n, generator=gen) % num_classes
        x = patterns[y] + noise * torch.randn(n, chans, size, size, generator=gen)
        return TensorImageDataset(x, y)

    train, test = make(n_train), make(n_test)
    return DataBundle("synthetic", train, test, num_classes, chans, size,
                      tuple(str(c) for c in range(num_classes)), (0.0,) * chans, (1.0,) * chans)
