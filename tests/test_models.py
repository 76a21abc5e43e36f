"""Models: registry, shapes, a short digits training run, timm passthrough, safe checkpoints."""

import os

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch.nn import functional as F

from pwfn_viz.data.datasets import create_dataset, make_loader
from pwfn_viz.models.factory import create_model, list_models, load_checkpoint, save_checkpoint


def test_list_models_own_and_timm():
    assert list_models() == ["digits_cnn", "digits_mlp"]
    assert list_models("digits_c*") == ["digits_cnn"] + timm.list_models("digits_c*")
    found = list_models("resnet1*")
    assert "resnet18" in found and set(timm.list_models("resnet1*")) == set(found)
    assert list_models("digits*", include_timm=False) == ["digits_cnn", "digits_mlp"]


@pytest.mark.parametrize("name,kwargs,shape", [
    ("digits_mlp", {}, (4, 1, 8, 8)),
    ("digits_mlp", {"in_chans": 3, "image_size": 16, "num_classes": 7}, (4, 3, 16, 16)),
    ("digits_cnn", {}, (4, 1, 8, 8)),
    ("digits_cnn", {"in_chans": 3, "num_classes": 7}, (4, 3, 32, 32)),
])
def test_own_model_shapes(name, kwargs, shape, torch_seed):
    model = create_model(name, **kwargs)
    assert model(torch.randn(shape)).shape == (shape[0], kwargs.get("num_classes", 10))
    assert sum(p.numel() for p in model.parameters()) < 50_000


def test_digits_mlp_layer_sizes():
    model = create_model("digits_mlp")
    assert model.fc1.weight.shape == (64, 64) and model.fc2.weight.shape == (10, 64)
    assert sum(p.numel() for p in model.parameters()) == 64 * 64 + 64 + 64 * 10 + 10


def test_digits_cnn_batchnorm_eval_is_per_sample(torch_seed):
    model = create_model("digits_cnn")
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    model.train()
    model(torch.randn(32, 1, 8, 8) * 2 + 1)  # moves the running statistics
    model.eval()
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        batch = model(x)
        alone = torch.cat([model(x[i:i + 1]) for i in range(5)])
    torch.testing.assert_close(batch, alone)


def test_digits_cnn_trains_on_digits(torch_seed):
    data = create_dataset("digits")
    model = create_model("digits_cnn")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for epoch in range(3):
        for x, y in make_loader(data.train, 64, shuffle=True, seed=epoch):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    model.eval()
    x, y = data.test.tensors()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc > 0.9


def test_timm_model_passthrough(torch_seed):
    model = create_model("resnet18", num_classes=10, in_chans=1)
    assert model.conv1.in_channels == 1 and model.fc.out_features == 10
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 32, 32)).shape == (1, 10)


def test_unknown_model_suggests_names():
    with pytest.raises(ValueError) as err:
        create_model("resnet_18")
    msg = str(err.value)
    assert "resnet18" in msg and "digits_cnn" in msg and 'list_models("resnet*")' in msg
    with pytest.raises(ValueError, match="pretrained"):
        create_model("digits_cnn", pretrained=True)


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("fmt", ["safetensors", "save_checkpoint_pt", "torch_wrapped", "torch_module_prefix"])
def test_checkpoint_round_trip(tmp_path, fmt):
    torch.manual_seed(1)
    src = create_model("digits_cnn")
    src.bn1.running_mean.normal_()  # buffers travel too
    sd = src.state_dict()
    if fmt == "safetensors":
        path = tmp_path / "m.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    elif fmt == "save_checkpoint_pt":
        path = save_checkpoint(src, tmp_path / "m.pt")
    elif fmt == "torch_wrapped":
        path = tmp_path / "m.pth"
        torch.save({"state_dict": sd, "epoch": 3, "note": "ok"}, path)
    else:
        path = tmp_path / "m.bin"
        torch.save({"model": {f"module.{k}": v for k, v in sd.items()}}, path)
    torch.manual_seed(2)
    dst = create_model("digits_cnn")
    assert not _same_weights(src, dst)
    assert load_checkpoint(dst, path) is dst and _same_weights(src, dst)
    assert _same_weights(src, create_model("digits_cnn", checkpoint=path))
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(src.eval()(x), dst.eval()(x))


def test_save_checkpoint_safetensors(tmp_path):
    src = create_model("digits_mlp")
    path = save_checkpoint(src, tmp_path / "m.safetensors")
    assert _same_weights(src, create_model("digits_mlp", checkpoint=path))


class _Payload:
    """An arbitrary object whose unpickling would run a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_checkpoint_with_arbitrary_object_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": create_model("digits_mlp").state_dict(), "extra": _Payload(marker)}, path)
    with pytest.raises(ValueError, match="weights_only=True") as err:
        load_checkpoint(create_model("digits_mlp"), path)
    assert str(path) in str(err.value)
    assert not marker.exists()


def test_checkpoint_mismatches_name_keys(tmp_path):
    path = save_checkpoint(create_model("digits_mlp", hidden=32), tmp_path / "small.safetensors")
    with pytest.raises(ValueError, match=r"shape mismatches \(3\).*fc1.weight: file \(32, 64\) vs model \(64, 64\)"):
        load_checkpoint(create_model("digits_mlp"), path)
    with pytest.raises(ValueError, match=r"missing keys .*conv1.weight.*unexpected keys .*fc1.weight"):
        load_checkpoint(create_model("digits_cnn"), path)
    bare = tmp_path / "bare.pt"
    torch.save({**create_model("digits_mlp").state_dict(), "epoch": 3}, bare)
    with pytest.raises(ValueError, match=r"not tensors: \['epoch'\]"):
        load_checkpoint(create_model("digits_mlp"), bare)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(create_model("digits_mlp"), tmp_path / "nope.pt")
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(ValueError, match=".safetensors"):
        load_checkpoint(create_model("digits_mlp"), tmp_path / "w.npz")
