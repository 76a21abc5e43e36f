"""Models by name: two small digits models of our own, and every timm model.

    >>> import torch
    >>> from pwfn_viz.models.factory import create_model, list_models
    >>> list_models()
    ['digits_cnn', 'digits_mlp']
    >>> model = create_model("digits_cnn")
    >>> model(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    >>> "resnet18" in list_models("resnet*")     # own names plus timm's
    True

Other names go to ``timm.create_model(name, num_classes=..., in_chans=..., **kwargs)``.
``checkpoint=`` loads weights from ``.safetensors`` or a tensors-only ``.pt/.pth/.bin``
(``torch.load(weights_only=True)``: a checkpoint holding other objects is refused).
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from ..files import reading
from ..registry import Registry

__all__ = ["create_model", "list_models", "load_checkpoint", "register_model", "save_checkpoint"]

# Own model builders by name; names not here go to timm.
_MODELS = Registry("model", hint='or any timm model: find them with pwfn_viz.list_models("resnet*")')
_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that adds a builder ``fn(num_classes, in_chans, **kwargs) -> nn.Module``;
    a name that is already registered is refused."""
    return _MODELS.register(name)


def list_models(pattern: str = "*", include_timm: bool | None = None) -> list[str]:
    """Own model names matching ``pattern`` (fnmatch), plus timm's when a pattern is given.

    ``list_models()`` lists only pwfn_viz's own models; ``list_models("resnet*")`` adds
    ``timm.list_models("resnet*")``. ``include_timm`` forces either behaviour.
    """
    own = _MODELS.names(pattern)
    if include_timm is None:
        include_timm = pattern != "*"
    if not include_timm:
        return own
    import timm

    return own + [n for n in timm.list_models(pattern) if n not in _MODELS]


def timm_name(name: str, pretrained_tag: str | None) -> str:
    """``name.tag`` when a pretrained tag is given and timm knows it (a clear error listing the
    model's tags when not), else ``name``.

    >>> timm_name("resnet18", "tv_in1k")
    'resnet18.tv_in1k'
    """
    if pretrained_tag is None:
        return name
    import timm

    full = f"{name}.{pretrained_tag}"
    if name in _MODELS or full not in timm.list_pretrained(f"{name}.*"):
        tags = sorted(n.split(".", 1)[1] for n in timm.list_pretrained(f"{name}.*")) if name not in _MODELS else []
        raise ValueError(f"pretrained tag {pretrained_tag!r} is not one of {name}'s in timm "
                         f"{timm.__version__}: {', '.join(tags) or 'it has none'}")
    return full


def create_model(name: str, num_classes: int = 10, in_chans: int = 1, pretrained: bool = False,
                 checkpoint: str | Path | None = None, pretrained_tag: str | None = None, **kwargs) -> nn.Module:
    """Build model ``name`` (own or timm) and optionally load ``checkpoint`` (strict).
    ``pretrained_tag`` picks timm's pretrained weights by tag (``resnet18`` + ``tv_in1k``)."""
    if name in _MODELS:
        if pretrained or pretrained_tag:
            raise ValueError(f"{name!r} has no pretrained weights; train it or pass checkpoint=<file>")
        model = _MODELS.get(name)(num_classes=num_classes, in_chans=in_chans, **kwargs)
    else:
        import timm

        if not timm.is_model(name):   # the registry's error, with close timm names among the guesses
            raise _MODELS.unknown(name, also=timm.list_models(), n=5)
        model = timm.create_model(timm_name(name, pretrained_tag), pretrained=pretrained, num_classes=num_classes,
                                  in_chans=in_chans, **kwargs)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model


# ----------------------------------------------------------------------------- own models


@register_model("digits_mlp")
def digits_mlp(num_classes: int = 10, in_chans: int = 1, image_size: int = 8, hidden: int = 64) -> nn.Module:
    """Flatten -> fc1 (in*size*size -> hidden) -> ReLU -> fc2 (hidden -> classes); ~4.8k params at 8x8."""
    return nn.Sequential(OrderedDict(
        flatten=nn.Flatten(),
        fc1=nn.Linear(in_chans * image_size * image_size, hidden),
        relu=nn.ReLU(),
        fc2=nn.Linear(hidden, num_classes),
    ))


@register_model("digits_cnn")
def digits_cnn(num_classes: int = 10, in_chans: int = 1, width: int = 16) -> nn.Module:
    """Three 3x3 convs (first one batch-normalised), max pool, 2x2 average pool, linear head.

    ~15k parameters; any input size >= 4 works (8x8 digits reach ~97-99% test top-1).
    """
    w, w2 = width, 2 * width
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(in_chans, w, 3, padding=1),
        bn1=nn.BatchNorm2d(w),
        relu1=nn.ReLU(),
        conv2=nn.Conv2d(w, w2, 3, padding=1),
        relu2=nn.ReLU(),
        pool=nn.MaxPool2d(2),
        conv3=nn.Conv2d(w2, w2, 3, padding=1),
        relu3=nn.ReLU(),
        avgpool=nn.AdaptiveAvgPool2d(2),
        flatten=nn.Flatten(),
        fc=nn.Linear(w2 * 4, num_classes),
    ))


# ----------------------------------------------------------------------------- checkpoints


def _read_state_dict(path: Path) -> Mapping[str, object]:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        with reading(path, "checkpoint"):
            return load_file(str(path), device="cpu")
    if suffix in _TORCH_SUFFIXES:
        with reading(path, "checkpoint"):   # a damaged file: one line naming it
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as e:
                lines = [ln.split("WeightsUnpickler error:")[-1].strip() for ln in str(e).splitlines()]
                found = [ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln or "load key" in ln]
                details = (found or [ln for ln in lines if ln] or [""])[-1][:300]
                if "GLOBAL" not in str(e):   # not a pickle of tensors and other objects: a damaged file
                    raise RuntimeError(details) from None
                raise ValueError(
                    f"{path} holds objects other than tensors and plain containers, and is not unpickled "
                    f"(torch.load(weights_only=True)). Save weights only: torch.save(model.state_dict(), path) "
                    f"or pwfn_viz.models.factory.save_checkpoint(model, 'model.safetensors'). Details: {details}"
                ) from e
    raise ValueError(f"{path}: unknown checkpoint type {suffix!r}; use .safetensors or one of {_TORCH_SUFFIXES}")


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state_dict (a mapping name -> tensor)")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{path}: entries that are not tensors: {bad[:5]}")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load weights from ``path`` into ``model`` (strict) and return the model.

    Accepts a bare state_dict or one under ``"state_dict"``/``"model"``; a ``module.`` prefix
    (DataParallel) is removed. Missing/unexpected keys or wrong shapes raise ``ValueError``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = _unwrap(_read_state_dict(path), path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in own.items() if k in state and state[k].shape != v.shape]
    problems = [f"{label} ({len(keys)}): {keys[:5]}" for label, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)) if keys]
    if problems:
        raise ValueError(f"checkpoint {path} does not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
    return model


def save_checkpoint(model: nn.Module, path: str | Path) -> Path:
    """Save ``model.state_dict()`` as ``.safetensors`` (preferred) or with ``torch.save`` (.pt/.pth/.bin)."""
    path = Path(path)
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    elif path.suffix.lower() in _TORCH_SUFFIXES:
        torch.save(state, path)
    else:
        raise ValueError(f"{path}: unknown checkpoint type {path.suffix!r}; use .safetensors or one of {_TORCH_SUFFIXES}")
    return path
