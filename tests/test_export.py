"""Compressed export: bit packing against numpy's packbits, sizes, bitwise-equal outputs after
loading, refusals with clear messages, and a file that loads with safetensors alone."""
import doctest
import importlib
import json
import math
import pickle
import shutil
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

import pwfn_viz
from pwfn_viz.core import bayes
from pwfn_viz.cli import main
from pwfn_viz.analysis.export import (bits_for, decode_tensors, encode_tensors, export_run, load_exported, pack_bits,
                             packed_size, read_exported, unpack_bits)
from pwfn_viz.models.factory import create_model

E = importlib.import_module("pwfn_viz.analysis.export")


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    """A finished digits_cnn run (conv + batch norm: the export has an unquantised rest)."""
    out = tmp_path_factory.mktemp("runs") / "export"
    config = pwfn_viz.RunConfig(model="digits_cnn", model_kwargs={"width": 4}, pretrain_epochs=0.5,
                                first_round_epochs=0.1, epochs_per_round=0.2, fractions=(0.5, 1.0), threads=1)
    return pwfn_viz.run(config, out_dir=out, progress=False, verbose=False)


def reference_pack(values, bits):
    """numpy's packbits on the little-endian bit stream: bit j of value i at stream position i*bits+j."""
    stream = ((np.asarray(values, dtype=np.int64)[:, None] >> np.arange(bits)) & 1).astype(np.uint8).ravel()
    return np.packbits(stream, bitorder="little")


# ---------------------------------------------------------------------------------------------
# Bit packing
@settings(max_examples=150, deadline=None)
@given(st.integers(1, 16).flatmap(lambda b: st.tuples(st.just(b), st.lists(st.integers(0, 2 ** b - 1), max_size=67))),
       st.sampled_from([8, 16, E._CHUNK]))
@example((1, [1]), 8)                                  # one value, one bit
@example((16, [2 ** 16 - 1] * 9), 8)                   # the widest values, one past a chunk seam
@example((5, [31, 0, 17, 31, 1, 30, 31]), 8)           # 35 bits: the last byte half used
@example((13, [2 ** 13 - 1] + list(range(60))), 8)     # many chunks, an unaligned end
@example((3, []), 8)                                   # nothing to pack
def test_pack_round_trip_matches_numpy_packbits(case, chunk):
    """Every width 1..16, lengths up to 67 and packing chunks of 8 or 16 values (many chunk seams)
    or the default size: equal to numpy's packbits and unpacked back to the values."""
    bits, values = case
    with mock.patch.object(E, "_CHUNK", chunk):
        packed = pack_bits(torch.tensor(values, dtype=torch.int64), bits)
        assert packed.dtype == torch.uint8
        assert packed.numel() == math.ceil(len(values) * bits / 8) == packed_size(len(values), bits)
        assert packed.tolist() == reference_pack(values, bits).tolist()
        assert unpack_bits(packed, bits, len(values)).tolist() == values


def test_pack_refuses_bad_input():
    with pytest.raises(ValueError, match=r"values must be in \[0, 2\*\*3\)"):
        pack_bits(torch.tensor([8]), 3)
    with pytest.raises(ValueError, match="bits must be in 1..32"):
        pack_bits(torch.tensor([0]), 0)
    with pytest.raises(ValueError, match="3 values of 5 bits take 2"):
        unpack_bits(torch.zeros(3, dtype=torch.uint8), 5, 3)


def test_bits_for_is_ceil_log2_at_least_one():
    for k in range(1, 2000):
        assert bits_for(k) == max(1, math.ceil(math.log2(k)))


def test_codebook_encoding_is_bit_exact():
    x = torch.tensor([3.0, -0.0, 0.0, -2.0, -1.0, float("inf"), 1e-40, -1e-40, 0.5, 3.0, -0.0])
    y = torch.tensor([[0.5, 0.5], [-2.0, 7.25]])
    codebook, packed, bits = encode_tensors({"x": x, "y": y})
    patterns = {v for v in np.concatenate([x.numpy(), y.numpy().ravel()]).view(np.int32).tolist()}
    assert codebook.numel() == len(patterns) == 10 and bits == 4
    assert codebook.tolist() == sorted(codebook.tolist())
    out = decode_tensors(codebook, packed, {"x": list(x.shape), "y": list(y.shape)}, bits)
    assert torch.equal(out["x"].view(torch.int32), x.view(torch.int32))
    assert torch.equal(out["y"].view(torch.int32), y.view(torch.int32))


# ---------------------------------------------------------------------------------------------
# Export of a run
def test_export_sizes_and_bitwise_equal_outputs(cnn_run, tmp_path):
    path = tmp_path / "model.safetensors"
    report = export_run(cnn_run, path)
    last = cnn_run.rounds[-1]
    weights = last.mu
    values = np.concatenate([w.numpy().ravel() for w in weights.values()])
    k = len(set(values.view(np.int32).tolist()))
    bits = max(1, math.ceil(math.log2(k)))
    n = values.size
    rest = {key: v for key, v in last.tensors.items() if key.startswith("state/")}
    assert any("bn1" in key for key in rest)
    assert (report.codebook_size, report.bits, report.n_weights, report.n_tensors) == (k, bits, n, len(weights))
    assert report.codebook_bytes == 4 * k
    assert report.index_bytes == sum(math.ceil(w.numel() * bits / 8) for w in weights.values())
    assert report.fp32_bytes == 4 * n
    assert report.rest_bytes == sum(v.numel() * v.element_size() for v in rest.values())
    assert report.ratio == pytest.approx(4 * n / (4 * k + report.index_bytes))
    compressed = 4 * k + report.index_bytes
    assert report.model_ratio == pytest.approx((4 * n + report.rest_bytes) / (compressed + report.rest_bytes))
    assert report.file_bytes == path.stat().st_size
    assert f"ratio {report.ratio:.2f}x" in str(report)

    loaded = load_exported(path)
    assert not any(bayes.is_converted(m) for m in loaded.modules())
    assert not loaded.training
    state, _ = read_exported(path)
    for name, w in weights.items():
        assert torch.equal(state[name].view(torch.int32), w.view(torch.int32))
    x = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 3
    with torch.no_grad():
        out = loaded(x)
        for reference in (cnn_run.model_at(-1), cnn_run.plain_model_at(-1)):
            assert torch.equal(out.view(torch.int32), reference(x).view(torch.int32))
    into = load_exported(path, model=create_model("digits_cnn", width=4))      # a given instance
    with torch.no_grad():
        assert torch.equal(into(x), out)


def test_export_file_is_plain_safetensors_and_loads_without_pickle(cnn_run, tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    export_run(cnn_run.path, path)
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        meta = json.loads(f.metadata()["pwfn_viz"])
        names = list(cnn_run.meta["tensors"])
        assert keys == {"codebook", *(f"indices/{n}" for n in names),
                        *(k for k in cnn_run.rounds[-1].tensors if k.startswith("state/"))}
        assert all(f.get_tensor(f"indices/{n}").dtype == torch.uint8 for n in names)
        assert f.get_tensor("codebook").dtype == torch.float32
    assert meta["model_spec"] == cnn_run.meta["model_spec"] and meta["format_version"] == 1
    assert list(meta["tensors"]) == names and meta["tensors"] == cnn_run.meta["tensors"]

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used")
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    assert load_exported(path, model=create_model("digits_cnn", width=4)) is not None


def test_export_refuses_incomplete_runs_and_unfixed_rounds(cnn_run, tmp_path):
    with pytest.raises(ValueError, match=r"round 0 .* leaves [\d,]+ weights unfixed .*fraction 0.5"):
        export_run(cnn_run, tmp_path / "x.safetensors", round_index=0)
    with pytest.raises(IndexError, match="rounds 0..1"):
        export_run(cnn_run, tmp_path / "x.safetensors", round_index=3)
    broken = tmp_path / "interrupted"
    shutil.copytree(cnn_run.path, broken)             # as if killed after round 0
    meta = json.loads((broken / "run.json").read_text())
    meta["status"], meta["rounds"] = "running", meta["rounds"][:1]
    (broken / "run.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"incomplete run \(1 rounds recorded\).*--resume"):
        export_run(broken, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(ValueError, match="not a pwfn_viz export"):
        load_exported(other)


def test_cli_export(cnn_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(cnn_run.path, run_dir)
    assert main(["export", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert (run_dir / "export.safetensors").is_file()
    assert "codebook" in out and "ratio" in out and "bits per weight" in out
    assert main(["export", str(run_dir), "--out", str(tmp_path / "b.safetensors"), "--round", "0"]) == 2
    assert "unfixed" in capsys.readouterr().err


def test_module_doctests():
    results = doctest.testmod(E)
    assert results.failed == 0 and results.attempted >= 5
