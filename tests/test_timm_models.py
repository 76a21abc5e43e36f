"""Each timm family of FAMILIES (ResNet, DeiT, ConvNeXt, MobileNetV3) through the whole pipeline, as
random-init reduced variants on small synthetic images: converted, trained, fixed, recorded and
rebuilt from the record."""
import pytest
import torch
import torch.nn as nn

import pwfn_viz
from pwfn_viz import RunConfig
from pwfn_viz.core import bayes
from pwfn_viz.core.bayes import bayes_tensors
from pwfn_viz.data.datasets import make_loader

FAMILIES = {
    "resnet18": dict(layers=[1, 1, 1, 1]),
    "resnet34": dict(layers=[1, 1, 1, 1]),
    "resnet50": dict(layers=[1, 1, 1, 1]),
    "deit_tiny_patch16_224": dict(img_size=32, patch_size=8, depth=2),
    "deit_small_patch16_224": dict(img_size=32, patch_size=8, depth=2),
    "convnext_tiny": dict(depths=[1, 1, 1, 1]),
    "mobilenetv3_small_050": dict(),   # depthwise convolutions
}


SLOW = {"resnet18", "resnet34", "resnet50", "deit_small_patch16_224", "convnext_tiny"}   # > 5 s each on CPU


@pytest.mark.parametrize("name", [pytest.param(name, marks=[pytest.mark.slow] if name in SLOW else [])
                                  for name in FAMILIES])
def test_timm_family_through_the_pipeline(tmp_path, name):
    cfg = RunConfig(model=name, model_kwargs=FAMILIES[name], dataset="synthetic", image_size=32, in_chans=3,
                    pretrain_epochs=0.25, pretrain_lr=0.01, first_round_epochs=0.1, epochs_per_round=0.15,
                    batch_size=64, fractions=(0.5, 1.0), threads=1)
    run = pwfn_viz.run(cfg, tmp_path / name, progress=False, verbose=False)
    assert run.complete
    mu, _, fixed = run.rounds[-1].flat()
    assert bool(fixed.all()) and run.rounds[-1].metrics["unique"] == torch.unique(mu).numel()
    model = run.model_at(-1)
    expected = {f"{mn}.{a}" for mn, m in model.named_modules()
                if isinstance(m, bayes.CONVERTIBLE) for a in bayes.converted_names(m)}
    assert {t.name for t in bayes_tensors(model)} == expected == set(run.meta["tensors"])
    if "deit" in name:  # tokens and positional embeddings stay deterministic
        names = {n for n, _ in model.named_parameters()}
        assert {"cls_token", "pos_embed"} <= names
    test = pwfn_viz.create_dataset("synthetic", image_size=32, in_chans=3).test
    assert pwfn_viz.evaluate(model, make_loader(test, 256))["top1"] == pytest.approx(
        run.rounds[-1].metrics["top1_after"])
