"""``imagefolder``: ImageNet-style folders (``root/train/<class>/*``, ``root/val/<class>/*``).

Two ways to turn the images into tensors: timm's (its training augmentation, and its evaluation
resize and crop from the model's pretrained config: the default) and the reference one, the
transforms of the paper authors' released ImageNet code (squash-resize, crop, flip).

    >>> tf = reference_transforms(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), training=False)
    >>> [type(t).__name__ for t in tf.transforms]
    ['Resize', 'CenterCrop', 'ToTensor', 'Normalize']
"""
from __future__ import annotations

from pathlib import Path

import torch

from .datasets import IMAGE_SUFFIXES, DataBundle, _missing, _need_root, register_dataset


def reference_transforms(size: int, mean, std, training: bool):
    """The authors' ImageNet transforms, scaled to ``size``: both sides resized to 256/224 of
    ``size`` (aspect ratio not kept), then a random crop of ``size`` and a horizontal flip for
    training, the centre crop for evaluation."""
    from torchvision import transforms as tv
    resized = round(size * 256 / 224)
    crop = [tv.RandomCrop((size, size)), tv.RandomHorizontalFlip()] if training else [tv.CenterCrop(size)]
    return tv.Compose([tv.Resize((resized, resized)), *crop, tv.ToTensor(), tv.Normalize(mean=list(mean), std=list(std))])


def _check_split(folder: Path) -> list[str]:
    """Class folders holding at least one image; a clear error when there are none."""
    classes = sorted(d.name for d in folder.iterdir()
                     if d.is_dir() and any(f.suffix.lower() in IMAGE_SUFFIXES for f in d.iterdir()))
    if not classes:
        raise ValueError(f"{folder} holds no class folder with images: imagefolder wants "
                         f"{folder}/<class>/<image>{'|'.join(IMAGE_SUFFIXES)}")
    return classes


class _Grey(torch.nn.Module):
    """3 -> 1 channel (mean of the normalised channels), for in_chans=1 models."""

    def forward(self, x):
        return x.mean(0, keepdim=True)


@register_dataset("imagefolder")
def _imagefolder(root=None, image_size=None, in_chans=None, seed=0, model_name: str | None = None,
                 transforms: str = "timm") -> DataBundle:
    """``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg`` through timm's data pipeline.

    ``timm.data.create_dataset`` reads the folders; ``resolve_data_config`` takes mean, std,
    interpolation and crop from ``model_name``'s pretrained config (ImageNet defaults otherwise)
    and, with ``transforms="timm"``, ``create_transform`` builds the training (augmented) and
    evaluation transforms. ``transforms="reference"`` uses the authors' instead
    (:func:`reference_transforms`). ``in_chans=1`` averages the normalised channels.
    """
    if transforms not in ("timm", "reference"):
        raise ValueError(f"transforms={transforms!r}: use 'timm' or 'reference'")
    import timm.data
    import timm.models

    root = _need_root("imagefolder", root, "train/<class>/ and val/<class>/")
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise _missing(root / split, "imagefolder wants root/train/<class>/<image> and root/val/<class>/<image>")
    classes = _check_split(root / "train")
    if _check_split(root / "val") != classes:
        raise ValueError(f"train classes {classes} differ from val classes {_check_split(root / 'val')} under {root}")
    chans = 3 if in_chans is None else in_chans
    if chans not in (1, 3):
        raise ValueError(f"imagefolder supports in_chans 1 or 3, got {in_chans}")
    size = image_size or 224
    pretrained = timm.models.get_pretrained_cfg(model_name) if model_name else None
    cfg = timm.data.resolve_data_config({"input_size": (3, size, size)},
                                        pretrained_cfg=pretrained.to_dict() if pretrained else None)
    grey = [_Grey()] if chans == 1 else []
    from torchvision import transforms as tv_transforms

    def tf(training):
        base = (timm.data.create_transform(**cfg, is_training=training) if transforms == "timm"
                else reference_transforms(size, cfg["mean"], cfg["std"], training))
        return tv_transforms.Compose([base, *grey])

    class_map = {c: i for i, c in enumerate(classes)}
    train = timm.data.create_dataset("", root=str(root / "train"), class_map=class_map, is_training=True,
                                     transform=tf(True))
    test = timm.data.create_dataset("", root=str(root / "val"), class_map=class_map, transform=tf(False))
    mean, std = tuple(cfg["mean"]), tuple(cfg["std"])
    if chans == 1:
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    return DataBundle("imagefolder", train, test, len(classes), chans, size, tuple(classes), mean, std)
