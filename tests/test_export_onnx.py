"""ONNX export: converted weights stored as uint8 indices plus one codebook, decoded by Gather
nodes bit for bit, and onnxruntime's outputs against the fixed torch model, on a digits CNN, a
timm ViT and a user's model from the open loop. torch's ONNX exporter takes a few seconds per
model, so these tests are marked slow."""
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pwfn_viz.analysis.onnx_export import CODEBOOK, check_onnx, export_onnx, read_onnx_indices
from pwfn_viz.cli import main
from pwfn_viz.files import FileError

sys.path.insert(0, str(Path(__file__).parent))
from test_export_entropy import make_runs, runs  # noqa: E402,F401  (runs: the shared module fixture)

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
from onnx import numpy_helper  # noqa: E402

pytestmark = pytest.mark.slow


def _export(runs, which, path, **kw):
    run, cls, x = runs(which)
    given = dict(model=cls(), example_input=x[:2]) if cls else {}
    return run, cls, x, export_onnx(run, path, **given, **kw)


@pytest.mark.parametrize("which", ["cnn", "vit", "own"])
def test_onnx_weights_are_indices_decoded_bitwise_and_outputs_match(runs, which, tmp_path):
    path = tmp_path / "model.onnx"
    run, cls, x, report = _export(runs, which, path)
    weights = run.rounds[-1].mu
    proto = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    codebook = inits[CODEBOOK]
    assert codebook.dtype == np.float32 and codebook.size == report.codebook_size <= 256
    for name, w in weights.items():
        assert name not in inits                                  # no float copy left
        index = inits[f"{name}.pwfn_index"]
        assert index.dtype == np.uint8 and index.shape == tuple(w.shape)
        assert np.array_equal(codebook[index].view(np.int32), w.numpy().view(np.int32))
    gathers = [n for n in proto.graph.node if n.op_type == "Gather" and n.input[0] == CODEBOOK]
    assert sorted(n.output[0] for n in gathers) == sorted(weights)
    book, indices = read_onnx_indices(path)
    assert np.array_equal(book, codebook) and sorted(indices) == sorted(weights)
    assert report.float_left == [] and sorted(report.indexed) == sorted(weights)
    assert report.n_indexed_weights == report.n_converted_weights == sum(w.numel() for w in weights.values())
    assert report.file_bytes == path.stat().st_size < report.float_bytes
    assert report.max_abs_diff is not None and report.max_abs_diff < 1e-3

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = torch.cat([x, x[:3]])                                 # another batch size: the batch is dynamic
    got = session.run(None, {"input": batch.numpy()})[0]
    with torch.no_grad():
        for make in (run.model_at, run.plain_model_at):           # the converted and the plain fixed model
            fixed = make(-1, model=cls() if cls else None)
            want = fixed(batch).numpy()
            assert np.allclose(got, want, rtol=1e-5, atol=1e-5)


def test_opset_17_and_a_static_batch(runs, tmp_path):
    path = tmp_path / "own17.onnx"
    run, cls, x, report = _export(runs, "own", path, opset=17, dynamic_batch=False)
    proto = onnx.load(str(path))
    assert report.opset == 17 and {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {17}
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [2, 64]
    with torch.no_grad():
        want = run.plain_model_at(-1, model=cls())(x[:2]).numpy()
    assert np.allclose(session.run(None, {"input": x[:2].numpy()})[0], want, rtol=1e-5, atol=1e-5)


def test_refusals_are_clear(runs, tmp_path):
    run, cls, x = runs("own")
    with pytest.raises(ValueError, match="input shape of this run is not known.*example_input"):
        export_onnx(run, tmp_path / "a.onnx", model=cls())
    with pytest.raises(ValueError, match="your own model"):
        export_onnx(run, tmp_path / "a.onnx", example_input=x)
    path = tmp_path / "own.onnx"
    export_onnx(run, path, model=cls(), example_input=x[:2])
    torch.manual_seed(1)
    with pytest.raises(ValueError, match=r"own\.onnx: onnxruntime's outputs differ"):
        check_onnx(path, cls(), x)                                # another network's weights


def test_cli_onnx(runs, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(runs("cnn")[0].path, run_dir)
    assert main(["export", str(run_dir), "--format", "onnx", "--no-compressors"]) == 0
    out = capsys.readouterr().out
    assert (run_dir / "export.onnx").is_file()
    assert "uint8 indices" in out and "onnxruntime vs torch" in out and "entropy-coded indices + codebook" in out


def test_damaged_onnx_files_name_the_file(runs, tmp_path):
    run, cls, x = runs("own")
    path = tmp_path / "own.onnx"
    export_onnx(run, path, model=cls(), example_input=x[:2], check=False)
    proto = onnx.load(str(path))
    index = next(i for i in proto.graph.initializer if i.name.endswith(".pwfn_index"))
    raw = bytearray(index.raw_data)
    raw[3] ^= 1
    index.raw_data = bytes(raw)
    flipped = tmp_path / "flipped.onnx"
    onnx.save(proto, str(flipped))
    with pytest.raises(FileError, match=r"flipped\.onnx: the ONNX export is damaged: .*sha256"):
        read_onnx_indices(flipped)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(FileError, match=r"truncated\.onnx: this ONNX export is damaged"):
        read_onnx_indices(truncated)
    with pytest.raises(FileError, match=r"truncated\.onnx: this ONNX export is damaged"):
        check_onnx(truncated, run.plain_model_at(-1, model=cls()), x)
    del proto.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(proto, str(foreign))
    with pytest.raises(FileError, match=r"foreign\.onnx: is not a pwfn_viz ONNX export"):
        read_onnx_indices(foreign)
