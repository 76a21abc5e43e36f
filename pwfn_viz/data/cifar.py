"""CIFAR-10 and CIFAR-100 from their local files (never downloaded): the binary version or the
python version, whose pickles are read with an unpickler that builds numpy arrays and nothing else.

    >>> create_dataset("cifar10", root="data/")          # doctest: +SKIP
    >>> load_numpy_pickle("data/cifar-10-batches-py/data_batch_1")["labels"][:3]   # doctest: +SKIP
"""
from __future__ import annotations

import importlib
import pickle
from pathlib import Path

import numpy as np
import torch

from ..files import reading
from .datasets import (CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, DataBundle, ImageTransform, TensorImageDataset,
                       _check_chans, _missing, _need_root, register_dataset)


_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and plain containers, and nothing else.

    Any other global (``os.system``, ``builtins.eval``, ...) raises ``pickle.UnpicklingError``
    before it is looked up, so a crafted file cannot run code.
    """

    def find_class(self, module: str, name: str):
        if (module, name) not in _NUMPY_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing to unpickle global {module}.{name}: only numpy arrays are allowed in CIFAR files")
        if module.endswith("multiarray"):
            for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):
                try:
                    return getattr(importlib.import_module(mod), name)
                except ImportError:
                    continue
        return getattr(np, name)


class RefusedPickle(pickle.UnpicklingError, ValueError):
    """A CIFAR file holding objects other than numpy arrays: refused, not loaded (names the file)."""


def load_numpy_pickle(path: str | Path) -> object:
    """Unpickle ``path`` allowing only numpy arrays, dicts, lists, str, bytes and numbers."""
    with reading(path, "CIFAR batch (numpy pickle)"), open(path, "rb") as f:
        try:
            return _NumpyOnlyUnpickler(f, encoding="latin1").load()
        except pickle.UnpicklingError as err:
            if "refusing to unpickle" in str(err):   # a file holding other objects: not loaded
                raise RefusedPickle(f"{path}: {err}") from None
            raise


def _cifar_bin(path: Path, label_bytes: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Binary CIFAR records: ``label_bytes`` label bytes (CIFAR-100: coarse, fine) + 3072 pixels;
    the last label byte is the label."""
    rec_len = label_bytes + 3072
    with reading(path, "CIFAR binary batch"):
        raw = np.fromfile(path, dtype=np.uint8)
    if raw.size % rec_len:
        raise ValueError(f"{path}: size {raw.size} is not a multiple of {rec_len} "
                         f"({label_bytes} label byte(s) + 3072 pixel bytes)")
    rec = raw.reshape(-1, rec_len)
    return rec[:, label_bytes:].reshape(-1, 3, 32, 32), rec[:, label_bytes - 1].astype(np.int64)


def _cifar_py(path: Path, label_key: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    entry = load_numpy_pickle(path)
    if not isinstance(entry, dict) or "data" not in entry or label_key not in entry:
        raise ValueError(f"{path}: expected a dict with 'data' and {label_key!r}")
    data = np.asarray(entry["data"], dtype=np.uint8)
    labels = np.asarray(entry[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise ValueError(f"{path}: data {data.shape} / labels {labels.shape} do not match CIFAR (N, 3072)/(N,)")
    return data.reshape(-1, 3, 32, 32), labels


_CIFAR_LAYOUTS = {  # dataset -> folder -> (reader, train files, test file)
    "cifar10": {
        "cifar-10-batches-bin": (_cifar_bin, [f"data_batch_{i}.bin" for i in range(1, 6)], "test_batch.bin"),
        "cifar-10-batches-py": (_cifar_py, [f"data_batch_{i}" for i in range(1, 6)], "test_batch"),
    },
    "cifar100": {
        "cifar-100-binary": (lambda p: _cifar_bin(p, label_bytes=2), ["train.bin"], "test.bin"),
        "cifar-100-python": (lambda p: _cifar_py(p, label_key="fine_labels"), ["train"], "test"),
    },
}


def _cifar(name: str, num_classes: int, root, image_size, in_chans) -> DataBundle:
    layouts = _CIFAR_LAYOUTS[name]
    root = _need_root(name, root, " or ".join(f"{d}/" for d in layouts))
    folder = next((d for d in layouts if (root / d).is_dir()), None)
    if folder is None:
        first, *others = layouts
        raise _missing(root / first, f"(or {', '.join(str(root / o) for o in others)}); get it with "
                       f"torchvision.datasets.{name.upper()}(root, download=True) on a machine with internet, "
                       "or extract the binary release into root")
    reader, train_files, test_file = layouts[folder]
    for f in [*train_files, test_file]:
        if not (root / folder / f).is_file():
            raise _missing(root / folder / f, f"the {name} folder is incomplete: extract the full release again")
    chans = _check_chans(name, 3, in_chans)
    tf = ImageTransform(1 / 255, CIFAR10_MEAN, CIFAR10_STD, image_size, chans)
    train = [reader(root / folder / f) for f in train_files]
    test = reader(root / folder / test_file)

    def make(x, y):
        return TensorImageDataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), tf)

    classes = CIFAR10_CLASSES if name == "cifar10" else tuple(str(c) for c in range(num_classes))
    return DataBundle(name, make(np.concatenate([a for a, _ in train]), np.concatenate([b for _, b in train])),
                      make(*test), num_classes, chans, image_size or 32, classes, CIFAR10_MEAN, CIFAR10_STD)


@register_dataset("cifar10")
def _cifar10(root=None, image_size=None, in_chans=None, seed=0) -> DataBundle:
    """CIFAR-10 from ``root/cifar-10-batches-bin`` (binary) or ``root/cifar-10-batches-py``.

    The binary layout is read directly; the python layout with a numpy-only unpickler.
    """
    return _cifar("cifar10", 10, root, image_size, in_chans)


@register_dataset("cifar100")
def _cifar100(root=None, image_size=None, in_chans=None, seed=0) -> DataBundle:
    """CIFAR-100 (fine labels) from ``root/cifar-100-binary`` or ``root/cifar-100-python``."""
    return _cifar("cifar100", 100, root, image_size, in_chans)
