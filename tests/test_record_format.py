"""A record's format is checked when read: its version, every key of run.json, the sha256 of every
file, and the tensors themselves; any damaged user file (record, checkpoint, data, export) gives one
line naming it, and ``pwfn-viz verify`` says whether a record is whole."""
from __future__ import annotations

import hashlib
import json
import pickle
import re
import shutil
import struct

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

import pwfn_viz
from pwfn_viz.analysis.export import export_run, load_exported
from pwfn_viz.cli import main
from pwfn_viz.files import FileError
from pwfn_viz.models.factory import create_model, save_checkpoint
from pwfn_viz.record.rundir import load_run
from pwfn_viz.record.schema import FORMAT_VERSION
from pwfn_viz.train.config import RunConfig

TINY = dict(model="digits_mlp", model_kwargs={"hidden": 8}, pretrain_epochs=0.2, first_round_steps=2,
            steps_per_round=2, fractions=(0.5, 0.8, 1.0), threads=1)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    out = tmp_path_factory.mktemp("format") / "good"
    pwfn_viz.run(RunConfig(**TINY), out, progress=False, verbose=False)
    return out


@pytest.fixture
def copy(good, tmp_path):
    def make(name="copy"):
        out = tmp_path / name
        shutil.copytree(good, out)
        return out
    return make


def _meta(out):
    return json.loads((out / "run.json").read_text())


def _write_meta(out, meta):
    (out / "run.json").write_text(json.dumps(meta, indent=1))


def _one_line(err) -> str:
    text = str(err.value if hasattr(err, "value") else err)
    assert "\n" not in text, text
    return text


def _cli_error(capsys, argv, status=2) -> str:
    assert main(argv) == status
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return captured.err + captured.out


# ----------------------------------------------------------------------------- a good record

def test_a_good_record_has_checksums_of_every_file_and_verifies(good, capsys):
    meta = _meta(good)
    assert meta["format_version"] == FORMAT_VERSION == 2
    names = ["start.safetensors", "round_00.safetensors", "round_01.safetensors", "round_02.safetensors",
             "steps.csv", "layers.csv"]
    assert sorted(meta["checksums"]) == sorted(names)
    for name in names:
        assert meta["checksums"][name] == hashlib.sha256((good / name).read_bytes()).hexdigest()
    assert main(["verify", str(good)]) == 0
    out = capsys.readouterr().out
    assert "good" in out and "checksums match" in out and "problem" not in out


def test_an_old_record_without_checksums_is_read_as_is(copy, capsys):
    out = copy()
    meta = _meta(out)
    del meta["checksums"]
    meta["format_version"] = 1
    _write_meta(out, meta)
    run = load_run(out)
    assert len(run.rounds) == 3 and run.rounds[1].mu
    assert main(["verify", str(out)]) == 0
    assert "no checksums recorded" in capsys.readouterr().out


# ----------------------------------------------------------------------------- run.json

def test_a_newer_format_is_refused_everywhere_with_upgrade(copy, tmp_path, capsys):
    out = copy()
    meta = _meta(out)
    meta["format_version"] = 99
    _write_meta(out, meta)
    pattern = re.escape(str(out / "run.json")) + r".*format 99.*newer.*upgrade pwfn_viz"
    with pytest.raises(ValueError, match=pattern) as err:
        load_run(out)
    _one_line(err)
    with pytest.raises(ValueError, match=pattern):
        export_run(out, tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match=pattern):
        pwfn_viz.run(resume=out, progress=False, verbose=False)
    assert not (tmp_path / "x.safetensors").exists()
    assert "upgrade pwfn_viz" in _cli_error(capsys, ["show", str(out)])
    assert "upgrade pwfn_viz" in _cli_error(capsys, ["run", "--resume", str(out), "--quiet"])
    assert "upgrade pwfn_viz" in _cli_error(capsys, ["verify", str(out)], status=1)


def test_a_missing_or_mistyped_key_is_named(copy, capsys):
    out = copy()
    meta = _meta(out)
    del meta["tensors"]
    _write_meta(out, meta)
    with pytest.raises(ValueError, match=re.escape(str(out / "run.json")) + ": key 'tensors' is missing") as err:
        load_run(out)
    _one_line(err)
    meta["tensors"] = _meta(copy("other"))["tensors"]
    meta["rounds"][1]["fraction"] = "most"
    _write_meta(out, meta)
    with pytest.raises(ValueError, match=r"run.json: key 'rounds\[1\].fraction' should be a number"):
        load_run(out)
    text = _cli_error(capsys, ["show", str(out)])
    assert text.startswith("pwfn-viz: error: ") and "rounds[1].fraction" in text


def test_a_corrupt_run_json_is_named(copy, capsys):
    out = copy()
    (out / "run.json").write_text(_meta(out).__repr__()[:200])
    with pytest.raises(FileError, match=re.escape(str(out / "run.json")) + ": is not valid JSON") as err:
        load_run(out)
    _one_line(err)
    assert "not valid JSON" in _cli_error(capsys, ["export", str(out)])
    assert "not valid JSON" in _cli_error(capsys, ["verify", str(out)], status=1)


# ----------------------------------------------------------------------------- tensor files and tables

def test_a_truncated_round_file_is_named(copy, capsys):
    out = copy()
    path = out / "round_01.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(FileError, match=re.escape(str(path)) + ": checksum mismatch") as err:
        load_run(out).rounds[1].tensors
    _one_line(err)
    report = _cli_error(capsys, ["verify", str(out)], status=1)
    assert "round_01.safetensors: checksum mismatch" in report and "round_00" not in report
    meta = _meta(out)          # without a checksum the reader still says the file is damaged
    del meta["checksums"]
    _write_meta(out, meta)
    with pytest.raises(FileError, match=re.escape(str(path)) + ": this safetensors file is damaged or truncated"):
        load_run(out).rounds[1].tensors
    assert "damaged or truncated" in _cli_error(capsys, ["verify", str(out)], status=1)


def test_a_flipped_byte_in_a_round_file_is_caught_by_its_checksum(copy, capsys):
    out = copy()
    path = out / "round_01.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01               # a weight's low bit: the file still parses
    path.write_bytes(bytes(data))
    load_file(str(path))
    with pytest.raises(FileError, match=re.escape(str(path)) + ": checksum mismatch"):
        load_run(out).rounds[1].mu
    with pytest.raises(FileError, match="checksum mismatch"):
        pwfn_viz.run(resume=copy_with_round_flipped(copy, 2), progress=False, verbose=False)
    assert "round_01.safetensors: checksum mismatch" in _cli_error(capsys, ["verify", str(out)], status=1)


def copy_with_round_flipped(copy, rounds):
    """An interrupted record (``rounds`` committed) whose last committed round file has a flipped byte."""
    out = copy("interrupted")
    meta = _meta(out)
    meta["rounds"], meta["status"] = meta["rounds"][:rounds], "running"
    _write_meta(out, meta)
    path = out / f"round_{rounds - 1:02d}.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    return out


def test_a_nan_in_a_round_is_named(copy, capsys):
    out = copy()
    path = out / "round_01.safetensors"
    tensors = load_file(str(path))
    name = next(k for k in tensors if k.startswith("mu/"))
    tensors[name][0] = float("nan")
    save_file(tensors, str(path))
    meta = _meta(out)              # a checksum that matches: the NaN itself is the damage
    meta["checksums"]["round_01.safetensors"] = hashlib.sha256(path.read_bytes()).hexdigest()
    _write_meta(out, meta)
    with pytest.raises(FileError, match=re.escape(str(path)) + f": tensor '{name}' holds NaN") as err:
        load_run(out).rounds[1].flat()
    _one_line(err)
    assert f"tensor '{name}' holds NaN" in _cli_error(capsys, ["verify", str(out)], status=1)


def test_a_missing_middle_round_file_is_named(copy, capsys):
    out = copy()
    (out / "round_01.safetensors").unlink()
    with pytest.raises(FileError, match=re.escape(str(out / "round_01.safetensors")) + ": .*missing") as err:
        load_run(out)
    _one_line(err)
    assert "round_01.safetensors: missing" in _cli_error(capsys, ["verify", str(out)], status=1)
    assert "round_01.safetensors" in _cli_error(capsys, ["show", str(out)])


def test_a_truncated_table_is_named(copy, capsys):
    out = copy()
    path = out / "steps.csv"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(FileError, match=re.escape(str(path)) + ": checksum mismatch") as err:
        load_run(out)
    _one_line(err)
    assert "steps.csv: checksum mismatch" in _cli_error(capsys, ["verify", str(out)], status=1)
    meta = _meta(out)
    del meta["checksums"]
    _write_meta(out, meta)
    with pytest.raises(FileError, match=re.escape(str(path)) + ": this table is truncated"):
        load_run(out)


def test_an_interrupted_round_still_reads_and_verifies(copy, capsys):
    """A run stopped while writing round 2 (its tensors and rows written, run.json not): the
    tables no longer match their recorded checksums, and that is no damage."""
    out = copy()
    meta = _meta(out)
    meta["rounds"], meta["status"] = meta["rounds"][:2], "running"
    del meta["checksums"]["round_02.safetensors"]
    for name in ("steps.csv", "layers.csv"):     # as committed after round 1: round 2's rows came later
        meta["checksums"][name] = "0" * 64
    _write_meta(out, meta)
    assert len(load_run(out).rounds) == 2
    assert main(["verify", str(out)]) == 0
    assert "not committed" in capsys.readouterr().out


# ----------------------------------------------------------------------------- checkpoints, data, exports

@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_a_corrupt_checkpoint_is_named(tmp_path, capsys, suffix):
    path = save_checkpoint(create_model("digits_mlp", hidden=8), tmp_path / f"model{suffix}")
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": this checkpoint is damaged or truncated") as err:
        create_model("digits_mlp", hidden=8, checkpoint=path)
    _one_line(err)
    path.write_bytes(b"not a checkpoint at all" * 4)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": this checkpoint is damaged"):
        create_model("digits_mlp", hidden=8, checkpoint=path)
    text = _cli_error(capsys, ["run", "--model", "digits_mlp", "--checkpoint", str(path), "--pretrain-epochs", "0",
                               "--out", str(tmp_path / "run"), "--quiet"])
    assert text.startswith("pwfn-viz: error: ") and str(path) in text


def test_a_truncated_export_is_named(good, tmp_path):
    path = tmp_path / "export.safetensors"
    export_run(good, path)
    assert load_exported(path) is not None
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])
    with pytest.raises(FileError, match=re.escape(str(path)) + ": this pwfn_viz export .*damaged or truncated") as err:
        load_exported(path)
    _one_line(err)
    path.write_bytes(data[:20])
    with pytest.raises(FileError, match=re.escape(str(path))):
        load_exported(path)


def test_a_nan_codebook_is_named(good, tmp_path):
    from safetensors import safe_open
    path = tmp_path / "export.safetensors"
    export_run(good, path)
    with safe_open(str(path), framework="pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors["codebook"][0] = float("nan")
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(FileError, match=re.escape(str(path)) + ": the export is damaged"):
        load_exported(path)   # the checksum catches it first
    # written that way with a matching checksum (a faulty writer): the codebook check names it
    from pwfn_viz.analysis.export import payload_sha256
    meta = json.loads(metadata["pwfn_viz"])
    meta["sha256"] = payload_sha256(tensors)
    save_file(tensors, str(path), metadata={**metadata, "pwfn_viz": json.dumps(meta)})
    with pytest.raises(FileError, match=re.escape(str(path)) + ": the codebook holds NaN"):
        load_exported(path)


def _cifar_py(root, n=20):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), "labels": [int(v) for v in rng.integers(0, 10, n)]}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=4))
    return folder


def test_a_truncated_cifar_file_is_named(tmp_path, capsys):
    folder = _cifar_py(tmp_path)
    assert len(pwfn_viz.create_dataset("cifar10", root=tmp_path).train) == 100
    path = folder / "data_batch_3"
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": this CIFAR batch .*damaged or truncated") as err:
        pwfn_viz.create_dataset("cifar10", root=tmp_path)
    _one_line(err)
    path.write_bytes(b"\x80\x02garbage")
    with pytest.raises(ValueError, match=re.escape(str(path))):
        pwfn_viz.create_dataset("cifar10", root=tmp_path)


def _idx(path, array: np.ndarray):
    code = {1: 0x0801, 3: 0x0803}[array.ndim]
    path.write_bytes(struct.pack(">I", code) + b"".join(struct.pack(">I", d) for d in array.shape)
                     + array.astype(np.uint8).tobytes())


def test_a_truncated_mnist_file_is_named(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("t10k", 6)):
        _idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28)))
        _idx(raw / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, (n,)))
    assert len(pwfn_viz.create_dataset("mnist", root=tmp_path).train) == 12
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ValueError, match=re.escape(str(raw))) as err:
        pwfn_viz.create_dataset("mnist", root=tmp_path)
    _one_line(err)


def test_fileerror_is_a_valueerror_naming_the_file(tmp_path):
    err = FileError(tmp_path / "x.csv", "this table is truncated")
    assert isinstance(err, ValueError) and str(err) == f"{tmp_path / 'x.csv'}: this table is truncated"
