"""Datasets: digits split/normalisation against sklearn, file readers against hand-written files."""

import os
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from pwfn_viz.data.cifar import _NumpyOnlyUnpickler, load_numpy_pickle
from pwfn_viz.data.datasets import (CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD, MNIST_MEAN, MNIST_STD,
                                    create_dataset, list_datasets, make_loader)


@pytest.fixture(scope="module")
def digits_ref():
    x, y = load_digits(return_X_y=True)
    return train_test_split(x / 16.0, y, test_size=0.2, stratify=y, random_state=0)


# ----------------------------------------------------------------------------- digits


def test_digits_split_matches_sklearn_and_ignores_seed(digits_ref):
    x_tr, x_te, y_tr, y_te = digits_ref
    a, b = create_dataset("digits"), create_dataset("digits", seed=123)
    assert (len(a.train), len(a.test)) == (1437, 360)
    assert (a.num_classes, a.in_chans, a.image_size) == (10, 1, 8)
    assert torch.equal(a.train.targets, torch.from_numpy(y_tr))
    assert torch.equal(a.test.targets, torch.from_numpy(y_te))
    for split in ("train", "test"):
        xa, ya = getattr(a, split).tensors()
        xb, yb = getattr(b, split).tensors()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert repr(a) == "DataBundle('digits', train=1437, test=360, classes=10, in_chans=1, image_size=8)"


def test_digits_normalised_with_train_statistics(digits_ref):
    x_tr, x_te, _, _ = digits_ref
    mean, std = x_tr.mean(), x_tr.std()
    data = create_dataset("digits")
    xtr, _ = data.train.tensors()
    xte, _ = data.test.tensors()
    assert abs(xtr.mean().item()) < 1e-5 and abs(xtr.std(unbiased=False).item() - 1) < 1e-5
    np.testing.assert_allclose(xte.numpy().reshape(360, 64), (x_te - mean) / std, rtol=1e-5, atol=1e-5)
    assert data.mean == pytest.approx((mean,)) and data.std == pytest.approx((std,))
    x0, y0 = data.test[5]
    assert x0.shape == (1, 8, 8) and torch.equal(x0, xte[5]) and int(y0) == int(data.test.targets[5])


def test_digits_resize_is_bilinear_and_channels_repeat(digits_ref):
    _, x_te, _, _ = digits_ref
    data = create_dataset("digits", image_size=16, in_chans=3)
    assert (data.image_size, data.in_chans) == (16, 3)
    x, _ = data.test.tensors()
    assert x.shape == (360, 3, 16, 16)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    src = ((x_te - data.mean[0]) / data.std[0]).reshape(-1, 8, 8)
    # 2x bilinear, half-pixel centres: output row 2i+1 samples source row i + 0.25, row 2i+2 row i + 0.75.
    i, j = 3, 5
    for (oi, ri, wi), (oj, rj, wj) in [((2 * i + 1, i, 0.25), (2 * j + 1, j, 0.25)),
                                       ((2 * i + 2, i, 0.75), (2 * j + 2, j, 0.75))]:
        rows = (1 - wi) * src[:, ri] + wi * src[:, ri + 1]
        expect = (1 - wj) * rows[:, rj] + wj * rows[:, rj + 1]
        np.testing.assert_allclose(x[:, 0, oi, oj].numpy(), expect, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- mnist


def _write_idx(path, array, magic):
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape))
        f.write(array.astype(np.uint8).tobytes())


def _fake_mnist(root, rng):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    out = {}
    for split, n in (("train", 6), ("t10k", 4)):
        images = rng.integers(0, 256, size=(n, 28, 28))
        labels = rng.integers(0, 10, size=n)
        _write_idx(raw / f"{split}-images-idx3-ubyte", images, 0x803)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", labels, 0x801)
        out[split] = images, labels
    return out


def test_mnist_reads_idx_files(tmp_path):
    ref = _fake_mnist(tmp_path, np.random.default_rng(0))
    data = create_dataset("mnist", root=tmp_path)
    assert (len(data.train), len(data.test), data.image_size, data.in_chans) == (6, 4, 28, 1)
    for split, ds in (("train", data.train), ("t10k", data.test)):
        images, labels = ref[split]
        x, y = ds.tensors()
        np.testing.assert_array_equal(y.numpy(), labels)
        expect = (images / 255.0 - MNIST_MEAN[0]) / MNIST_STD[0]
        np.testing.assert_allclose(x[:, 0].numpy(), expect, rtol=1e-5, atol=1e-5)


def test_mnist_missing_file_names_expected_path(tmp_path):
    _fake_mnist(tmp_path, np.random.default_rng(0))
    gone = tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    gone.unlink()
    with pytest.raises(FileNotFoundError, match="download=True") as err:
        create_dataset("mnist", root=tmp_path)
    assert str(gone) in str(err.value)
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        create_dataset("mnist", root=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="root="):
        create_dataset("mnist")


# ----------------------------------------------------------------------------- cifar10


def _cifar_arrays(rng, n):
    return rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, size=n)


def _fake_cifar_bin(root, rng):
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    batches = []
    for name, n in [(f"data_batch_{i}.bin", 2) for i in range(1, 6)] + [("test_batch.bin", 3)]:
        images, labels = _cifar_arrays(rng, n)
        # Record layout: 1 label byte, then 1024 R, 1024 G, 1024 B bytes, each 32x32 row-major.
        (folder / name).write_bytes(b"".join(bytes([int(l)]) + img.tobytes() for img, l in zip(images, labels)))
        batches.append((images, labels))
    return batches


def _fake_cifar_py(root, rng, protocol=4):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = []
    for name, n in [(f"data_batch_{i}", 2) for i in range(1, 6)] + [("test_batch", 3)]:
        images, labels = _cifar_arrays(rng, n)
        entry = {"batch_label": name, "labels": [int(v) for v in labels],
                 "data": images.reshape(n, 3072), "filenames": [f"img{i}.png" for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=protocol))
        batches.append((images, labels))
    return batches


@pytest.mark.parametrize("layout", ["bin", "py"])
def test_cifar10_layouts(tmp_path, layout):
    make = _fake_cifar_bin if layout == "bin" else _fake_cifar_py
    batches = make(tmp_path, np.random.default_rng(1))
    data = create_dataset("cifar10", root=tmp_path)
    assert (len(data.train), len(data.test), data.in_chans, data.image_size) == (10, 3, 3, 32)
    assert data.classes[0] == "airplane" and data.num_classes == 10
    train_images = np.concatenate([b[0] for b in batches[:5]])
    np.testing.assert_array_equal(data.train.data.numpy(), train_images)
    np.testing.assert_array_equal(data.train.targets.numpy(), np.concatenate([b[1] for b in batches[:5]]))
    x, y = data.test.tensors()
    np.testing.assert_array_equal(y.numpy(), batches[5][1])
    mean = np.array(CIFAR10_MEAN).reshape(1, 3, 1, 1)
    std = np.array(CIFAR10_STD).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(x.numpy(), (batches[5][0] / 255.0 - mean) / std, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="in_chans"):
        create_dataset("cifar10", root=tmp_path, in_chans=1)


class _Evil:
    def __init__(self, call, arg):
        self.call, self.arg = call, arg

    def __reduce__(self):
        return self.call, (self.arg,)


@pytest.mark.parametrize("how", ["os.system", "builtins.exec"])
def test_cifar10_py_refuses_malicious_pickle(tmp_path, how):
    _fake_cifar_py(tmp_path, np.random.default_rng(2))
    marker = tmp_path / "pwned"
    payload = (_Evil(os.system, f"touch {marker}") if how == "os.system"
               else _Evil(exec, f"open({str(marker)!r}, 'w').close()"))
    target = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    target.write_bytes(pickle.dumps({"data": payload, "labels": [0]}, protocol=4))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        create_dataset("cifar10", root=tmp_path)
    with pytest.raises(pickle.UnpicklingError):
        load_numpy_pickle(target)
    assert not marker.exists()


def test_numpy_only_unpickler_resolves_py2_numpy_names(tmp_path):
    # The original CIFAR python files were written by Python 2 with numpy.core.* names.
    path = tmp_path / "x.pkl"
    arr = np.arange(6, dtype=np.uint8).reshape(2, 3)
    path.write_bytes(pickle.dumps({"a": arr}, protocol=3))
    with open(path, "rb") as f:
        fn = _NumpyOnlyUnpickler(f).find_class("numpy.core.multiarray", "_reconstruct")
    assert fn is arr.__reduce__()[0]  # numpy's own array rebuilder
    np.testing.assert_array_equal(load_numpy_pickle(path)["a"], arr)


def test_cifar10_missing_root_names_both_layouts(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        create_dataset("cifar10", root=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "cifar-10-batches-bin") in msg and "cifar-10-batches-py" in msg
    assert "download=True" in msg
    _fake_cifar_bin(tmp_path, np.random.default_rng(3))
    (tmp_path / "cifar-10-batches-bin" / "data_batch_4.bin").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_4.bin"):
        create_dataset("cifar10", root=tmp_path)


# ----------------------------------------------------------------------------- imagefolder


def _fake_imagefolder(root):
    colours = {"cat": (255, 0, 0), "dog": (0, 0, 255)}
    for split, n in (("train", 3), ("val", 2)):
        for cls, rgb in colours.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (40, 30), rgb).save(root / split / cls / f"{i}.png")


def test_imagefolder_resize_crop_normalise(tmp_path):
    _fake_imagefolder(tmp_path)
    data = create_dataset("imagefolder", root=tmp_path, image_size=16)
    assert (len(data.train), len(data.test), data.num_classes, data.classes) == (6, 4, 2, ("cat", "dog"))
    x, y = data.train[0]   # timm's training transform: augmented (random crop, flip, jitter)
    assert x.shape == (3, 16, 16) and int(y) == 0  # first sample is a red cat
    x, y = data.test[0]    # timm's evaluation transform: resize, centre crop, normalise
    assert x.shape == (3, 16, 16) and int(y) == 0
    expect = [(1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], -IMAGENET_MEAN[1] / IMAGENET_STD[1],
              -IMAGENET_MEAN[2] / IMAGENET_STD[2]]
    np.testing.assert_allclose(x.mean(dim=(1, 2)).numpy(), expect, rtol=1e-5)
    assert x.std(dim=(1, 2)).max() < 1e-5
    assert int(data.test[3][1]) == 1
    # the data config comes from the model's pretrained config when a model is named
    import timm.models
    vit = create_dataset("imagefolder", root=tmp_path, image_size=16, model_name="vit_tiny_patch16_224")
    assert vit.mean == tuple(timm.models.get_pretrained_cfg("vit_tiny_patch16_224").mean) == (0.5, 0.5, 0.5)
    grey = create_dataset("imagefolder", root=tmp_path, image_size=8, in_chans=1)
    assert grey.train[0][0].shape == (1, 8, 8)


def test_imagefolder_malformed_split(tmp_path):
    (tmp_path / "train" / "empty_class").mkdir(parents=True)
    (tmp_path / "val").mkdir()
    with pytest.raises(ValueError, match="holds no class folder with images") as err:
        create_dataset("imagefolder", root=tmp_path)
    assert str(tmp_path / "train") in str(err.value)


def _fake_cifar100(root, rng, layout):
    folder = root / ("cifar-100-binary" if layout == "bin" else "cifar-100-python")
    folder.mkdir(parents=True)
    out = {}
    for name, n in (("train", 4), ("test", 3)):
        images, fine = _cifar_arrays(rng, n)
        fine = rng.integers(0, 100, n)
        coarse = fine // 5
        if layout == "bin":   # record: coarse label byte, fine label byte, 3072 pixel bytes
            (folder / f"{name}.bin").write_bytes(b"".join(bytes([int(c), int(f)]) + img.tobytes()
                                                          for img, c, f in zip(images, coarse, fine)))
        else:
            entry = {"data": images.reshape(n, 3072), "fine_labels": [int(v) for v in fine],
                     "coarse_labels": [int(v) for v in coarse]}
            (folder / name).write_bytes(pickle.dumps(entry, protocol=4))
        out[name] = (images, fine)
    return out


@pytest.mark.parametrize("layout", ["bin", "py"])
def test_cifar100_layouts_use_fine_labels(tmp_path, layout):
    arrays = _fake_cifar100(tmp_path, np.random.default_rng(7), layout)
    data = create_dataset("cifar100", root=tmp_path)
    assert data.num_classes == 100 and len(data.train) == 4 and len(data.test) == 3
    for i in range(3):
        x, y = data.test[i]
        assert int(y) == int(arrays["test"][1][i])
        raw = (x * torch.tensor(data.std)[:, None, None] + torch.tensor(data.mean)[:, None, None]) * 255
        np.testing.assert_allclose(raw.numpy(), arrays["test"][0][i], atol=1e-3)
    with pytest.raises(FileNotFoundError, match="cifar-100-binary"):
        create_dataset("cifar100", root=tmp_path / "sub")


def test_imagefolder_missing_val(tmp_path):
    _fake_imagefolder(tmp_path)
    for p in sorted((tmp_path / "val").rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    (tmp_path / "val").rmdir()
    with pytest.raises(FileNotFoundError, match="val") as err:
        create_dataset("imagefolder", root=tmp_path)
    assert str(tmp_path / "val") in str(err.value)


# ----------------------------------------------------------------------------- synthetic, registry, loaders


def test_synthetic_is_seeded_and_learnable():
    a = create_dataset("synthetic", num_classes=4, image_size=8, in_chans=3, n_train=200, n_test=80, seed=5)
    b = create_dataset("synthetic", num_classes=4, image_size=8, in_chans=3, n_train=200, n_test=80, seed=5)
    c = create_dataset("synthetic", num_classes=4, image_size=8, in_chans=3, n_train=200, n_test=80, seed=6)
    xa, ya = a.train.tensors()
    assert xa.shape == (200, 3, 8, 8) and torch.equal(xa, b.train.tensors()[0])
    assert not torch.equal(xa, c.train.tensors()[0])
    assert torch.bincount(ya).tolist() == [50, 50, 50, 50]
    # Nearest class mean (fitted on train) classifies the held-out images well above chance (25%).
    centroids = torch.stack([xa[ya == k].mean(0) for k in range(4)]).flatten(1)
    xt, yt = a.test.tensors()
    pred = torch.cdist(xt.flatten(1), centroids).argmin(1)
    assert (pred == yt).float().mean() > 0.9


def test_unknown_dataset_lists_available():
    assert {"digits", "mnist", "cifar10", "imagefolder", "synthetic"} <= set(list_datasets())
    with pytest.raises(ValueError, match="available: .*digits.*mnist"):
        create_dataset("digitz")


def test_make_loader_is_seeded_and_covers_everything():
    data = create_dataset("digits")

    def order(seed):
        return torch.cat([y for _, y in make_loader(data.train, 256, shuffle=True, seed=seed)])

    a, b, c = order(0), order(0), order(1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a.sort().values, data.train.targets.sort().values)
    plain = torch.cat([y for _, y in make_loader(data.train, 100)])
    assert torch.equal(plain, data.train.targets)
