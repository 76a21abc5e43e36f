"""Presets: ``pwfn-viz run --preset resnet18-imagenet --data-root DIR``.

``digits-demo`` is the main job (``make run``): the digits CNN with a training budget in which sigma
learns (``DEMO`` below). Each paper preset (docs/method.md, sections 4 and 7) is a set of RunConfig fields: a timm model with pretrained ImageNet weights, the
ImageNet folder layout (``DIR/train``, ``DIR/val``), the paper's schedule and SGD settings, no
pre-training, and the pretrained weights pinned by timm tag (``PRETRAINED_TAGS``). ``PUBLISHED``
holds the numbers the paper and its predecessor report, labelled with their source and printed
beside the run's own at the end.

    >>> sorted(PRESETS)[:2]
    ['deit-small-imagenet', 'deit-tiny-imagenet']
"""
from __future__ import annotations

from ..registry import Registry

IMAGENET = dict(dataset="imagefolder", image_size=224, in_chans=3, pretrained=True, pretrain_epochs=0,
                batch_size=128, lr=1e-3, momentum=0.9, weight_decay=1e-4, grad_clip=1.0,
                first_round_epochs=0.05, epochs_per_round=3)

# The pretrained weights each preset starts from, pinned by timm tag: the weights the authors'
# pinned timm (0.6.12) resolved the bare model name to, checked in that release's default configs.
# (Today's timm resolves the bare names to newer weights, e.g. resnet18.a1_in1k.) resnet18: the
# torchvision ImageNet weights; resnet34: timm's own first ImageNet weights; resnet50: "ResNet
# strikes back" A1; DeiT: the DeiT authors' weights.
PRETRAINED_TAGS = {"resnet18": "tv_in1k", "resnet34": "bt_in1k", "resnet50": "a1_in1k",
                   "deit_tiny_patch16_224": "fb_in1k", "deit_small_patch16_224": "fb_in1k"}

# name -> RunConfig fields; add one with PRESETS.register(name, fields)
PRESETS = Registry("preset")
for _name, _model in (("resnet18-imagenet", "resnet18"), ("resnet34-imagenet", "resnet34"),
                      ("resnet50-imagenet", "resnet50"), ("deit-tiny-imagenet", "deit_tiny_patch16_224"),
                      ("deit-small-imagenet", "deit_small_patch16_224")):
    PRESETS.register(_name, dict(IMAGENET, model=_model, pretrained_tag=PRETRAINED_TAGS[_model]))

# The main job's configuration: the paper's settings on the embedded digits data, except that sigma
# gets about 100x the optimisation (steps x learning rate) of the paper's 3 epochs at lr 1e-3, which on
# 1,437 training images is only 36 steps a round: there sigma never leaves its initialisation. 120 steps
# a round (about 10 epochs, also before round 0) with sigma's learning rate 100x the mu learning rate.
DEMO = dict(first_round_steps=120, steps_per_round=120, sigma_lr_mult=100.0)
PRESETS.register("digits-demo", dict(DEMO))

# Published ImageNet numbers to compare a preset's run with, each labelled with its method and source
# (docs/method.md, section 7). The ResNet numbers are WFN's (the value-only predecessor): the PWFN
# paper gives no ResNet table of its own. Entropy excludes zero.
WFN_SOURCE = "WFN, Subia-Waud & Dasmahapatra, ECCV 2022 (value-only predecessor)"
PWFN_SOURCE = "PWFN, Subia-Waud & Dasmahapatra, NeurIPS 2023"
PUBLISHED: dict[str, list[tuple[str, str]]] = {
    "resnet18-imagenet": [(WFN_SOURCE, "delta 0.0075: 193 unique / 4.15 bits / 70.3 top-1"),
                          (WFN_SOURCE, "delta 0.01: 164 unique / 3.02 bits / 69.7 top-1"),
                          (WFN_SOURCE, "delta 0.015: 90 unique / 2.72 bits / 67.3 top-1")],
    "resnet34-imagenet": [(WFN_SOURCE, "delta 0.0075: 233 unique / 3.87 bits / 73.0 top-1"),
                          (WFN_SOURCE, "delta 0.01: 164 unique / 3.48 bits / 72.6 top-1"),
                          (WFN_SOURCE, "delta 0.015: 117 unique / 2.83 bits / 72.2 top-1")],
    "resnet50-imagenet": [(WFN_SOURCE, "delta 0.0075: 261 unique / 4.11 bits / 76.0 top-1"),
                          (WFN_SOURCE, "delta 0.01: 199 unique / 4.00 bits / 75.4 top-1"),
                          (WFN_SOURCE, "delta 0.015: 125 unique / 3.55 bits / 75.1 top-1")],
    "deit-tiny-imagenet": [(PWFN_SOURCE, "296 unique values, +1.6 points top-1 over the best prior "
                                         "quantisation method")],
    "deit-small-imagenet": [],
}


def published_lines(name: str) -> list[str]:
    """What was published for preset ``name``, one line each, labelled with method and source.

    >>> published_lines("resnet18-imagenet")[0]
    'published by WFN, Subia-Waud & Dasmahapatra, ECCV 2022 (value-only predecessor): delta 0.0075: 193 unique / 4.15 bits / 70.3 top-1'
    """
    rows = PUBLISHED.get(name, [])
    if not rows:
        return [f"published: no number for {name} in either paper"] if name in PUBLISHED else []
    return [f"published by {source}: {text}" for source, text in rows]


def preset(name: str) -> dict:
    """The RunConfig fields of preset ``name`` (a copy); an unknown name is the registry's error."""
    return dict(PRESETS.get(name))
