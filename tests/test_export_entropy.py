"""Entropy-coded export: the coder against the entropy formula, constriction's model against our
integer frequencies, bitwise round trips on three kinds of runs, checksums, damaged files and the
size table against its formulas."""
import doctest
import hashlib
import importlib
import json
import math
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

import pwfn_viz
from pwfn_viz.analysis.export import (encode_tensors_ans, decode_tensors_ans, export_run, load_exported,
                                      payload_sha256, read_exported)
from pwfn_viz.analysis.export_entropy import (PRECISION, decode_indices, decode_table, encode_indices,
                                              encode_table, entropy_bound_bytes, frequencies)
from pwfn_viz.analysis.export_sizes import format_size_table, size_table
from pwfn_viz.cli import main
from pwfn_viz.files import FileError

sys.path.insert(0, str(Path(__file__).parent))
from autoencoder import IMAGES, AutoEncoder, reconstruction_error  # noqa: E402

ENTROPY = importlib.import_module("pwfn_viz.analysis.export_entropy")
SIZES = importlib.import_module("pwfn_viz.analysis.export_sizes")


def bound_from_formula(indices) -> float:
    """N * H / 8 with H = -sum p log2 p over the observed index frequencies."""
    _, counts = np.unique(np.asarray(indices), return_counts=True)
    p = counts / counts.sum()
    return counts.sum() * float(-(p * np.log2(p)).sum()) / 8


def skewed(k: int, n: int, seed: int = 0) -> np.ndarray:
    """n indices over k values with Zipf-like frequencies (p_i proportional to 1 / (i + 1)**1.2),
    the values shuffled so that the frequent ones are not the small indices."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, k + 1) ** 1.2 if k > 2 else np.array([0.9, 0.1])
    return rng.permutation(k)[rng.choice(k, size=n, p=p / p.sum())]


# ---------------------------------------------------------------------------------------------
# The coder
@pytest.mark.parametrize("k, n", [(2, 20_000), (17, 20_000), (300, 200_000), (4000, 400_000)])
def test_payload_within_two_percent_of_the_entropy_bound(k, n):
    """Synthetic codebooks of 2, 17, 300 and 4000 values: table + stream within 2 % of N * H / 8
    computed from the formula, and the indices come back exactly."""
    indices = skewed(k, n)
    table, stream = encode_indices(indices, k)
    bound = bound_from_formula(indices)
    assert bound > 0
    assert bound <= len(table) + len(stream) <= 1.02 * bound
    assert np.array_equal(decode_indices(table, stream, k, n), indices)
    assert entropy_bound_bytes(np.bincount(indices, minlength=k)) == pytest.approx(bound, rel=1e-12)


def test_a_million_weights_within_two_percent():
    indices = skewed(300, 1_200_000, seed=1)
    table, stream = encode_indices(indices, 300)
    assert len(table) + len(stream) <= 1.02 * bound_from_formula(indices)
    assert np.array_equal(decode_indices(table, stream, 300, indices.size), indices)


def test_frequencies_follow_the_documented_integer_formula():
    rng = np.random.default_rng(2)
    for counts in ([1], [5, 0, 0], [3, 0, 1], [1] * 4000, list(rng.integers(0, 10_000, 300)), [10 ** 12, 1, 7]):
        counts = np.array(counts, dtype=np.int64)
        f = frequencies(counts)
        used = counts > 0
        m, n = int(used.sum()), int(counts.sum())
        expected = [c * ((1 << PRECISION) - m) // n + 1 if c else 0 for c in counts.tolist()]
        top = int(np.argmax(counts))
        expected[top] += (1 << PRECISION) - sum(expected)
        assert f.tolist() == expected and int(f.sum()) == 1 << PRECISION
        assert bool((f[used] >= 1).all()) and not f[~used].any()


@pytest.mark.parametrize("seed", range(5))
def test_constriction_codes_with_exactly_our_frequencies(seed):
    """A symbol pushed on an empty ANS coder leaves the state equal to its cumulative frequency:
    so every symbol reveals the model's quantised CDF, which must be ours (the format doc's promise)."""
    import constriction
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 5000, size=int(rng.integers(2, 400))) ** 2
    f = frequencies(counts)
    cdf = np.concatenate([[0], np.cumsum(f)[:-1]])
    model = ENTROPY._model(f)
    for s in range(len(counts)):
        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse(np.array([s], dtype=np.int32), model)
        words = coder.get_compressed()
        assert (int(words[0]) if words.size else 0) == cdf[s]


def reference_decode(table: bytes, stream: bytes, k: int, n: int) -> list[int]:
    """The decoder of docs/export_format.md written out in plain Python (no constriction)."""
    counts = decode_table(table, k)
    used = [i for i in range(k) if counts[i]]
    m, total, p = len(used), int(counts.sum()), 24
    f = [int(counts[i]) * ((1 << p) - m) // total + 1 for i in used]
    f[max(range(m), key=lambda s: (counts[used[s]], -s))] += (1 << p) - sum(f)
    cdf = [sum(f[:s]) for s in range(m)]
    words = list(struct.unpack(f"<{len(stream) // 4}I", stream))
    x = words.pop() if words else 0
    while x < 1 << 32 and words:
        x = (x << 32) | words.pop()
    out = []
    for _ in range(n):
        q = x % (1 << p)
        s = max(t for t in range(m) if cdf[t] <= q)
        x = (x >> p) * f[s] + q - cdf[s]
        if x < 1 << 32 and words:
            x = (x << 32) | words.pop()
        out.append(used[s])
    assert not words and x == 0
    return out


@pytest.mark.parametrize("k, n", [(2, 3000), (17, 3000), (60, 5000)])
def test_stream_decodes_with_the_documented_algorithm(k, n):
    indices = skewed(k, n, seed=k)
    table, stream = encode_indices(indices, k)
    assert reference_decode(table, stream, k, n) == indices.tolist()


def test_table_is_leb128():
    assert encode_table([0, 1, 127, 128, 300, 2 ** 35]) == bytes(
        [0, 1, 127, 0x80, 0x01, 0xAC, 0x02, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01])
    counts = np.array([0, 7, 2 ** 40, 129])
    assert decode_table(encode_table(counts), 4).tolist() == counts.tolist()
    with pytest.raises(ValueError, match="holds 3 complete counts, the codebook 4"):
        decode_table(encode_table([1, 2, 3]), 4)
    with pytest.raises(ValueError, match="holds 1 complete counts"):
        decode_table(bytes([5, 0x80]), 1)


def test_edge_cases_round_trip():
    for indices, k in ((np.zeros(10, dtype=np.int64), 1), (np.full(7, 3), 5), (np.array([], dtype=np.int64), 3),
                       (np.array([0, 1]), 2), (np.array([4, 4, 4, 0]), 5)):
        table, stream = encode_indices(indices, k)
        assert np.array_equal(decode_indices(table, stream, k, indices.size), indices)
        if len(set(indices.tolist())) <= 1:
            assert stream == b""                      # one value: the table says everything
    with pytest.raises(ValueError, match=r"indices must be in \[0, 3\)"):
        encode_indices(np.array([3]), 3)
    table, stream = encode_indices(skewed(17, 1000), 17)
    with pytest.raises(ValueError, match="counts 1,000 indices, the tensors hold 999"):
        decode_indices(table, stream, 17, 999)
    with pytest.raises(ValueError, match="not whole 32-bit words"):
        decode_indices(table, stream[:-1], 17, 1000)


def test_tensor_encoding_is_bit_exact():
    x = torch.tensor([3.0, -0.0, 0.0, -2.0, float("inf"), 1e-40, -1e-40, 0.5, 3.0, -0.0])
    y = torch.tensor([[0.5, 0.5], [-2.0, 7.25]])
    codebook, table, stream = encode_tensors_ans({"x": x, "y": y})
    out = decode_tensors_ans(codebook, table, stream, {"x": [10], "y": [2, 2]})
    assert torch.equal(out["x"].view(torch.int32), x.view(torch.int32))
    assert torch.equal(out["y"].view(torch.int32), y.view(torch.int32))


# ---------------------------------------------------------------------------------------------
# Exports of runs: a registered CNN, a timm ViT, a user's model from the open loop
def make_runs(root) -> dict:
    """name -> a function making (finished run, model class for a user's model or None, an input
    batch): a digits CNN (conv + batch norm, 1-2 s), a one-block timm ViT on synthetic images (about
    4 s) and the autoencoder of tests/autoencoder.py fixed in the open loop (about 2 s)."""
    def cnn():
        config = pwfn_viz.RunConfig(model="digits_cnn", model_kwargs={"width": 4}, pretrain_epochs=0.5,
                                    first_round_epochs=0.1, epochs_per_round=0.2, fractions=(0.5, 1.0), threads=1)
        return pwfn_viz.run(config, out_dir=root / "cnn", progress=False, verbose=False), None, torch.randn(16, 1, 8, 8)

    def vit():
        config = pwfn_viz.RunConfig(model="deit_tiny_patch16_224",
                                    model_kwargs=dict(img_size=32, patch_size=8, depth=1), dataset="synthetic", image_size=32, in_chans=3, pretrain_epochs=0.05,
                                    pretrain_lr=0.01, first_round_epochs=0.02, epochs_per_round=0.02, batch_size=64,
                                    fractions=(0.5, 1.0), threads=1)
        run = pwfn_viz.run(config, out_dir=root / "vit", progress=False, verbose=False)
        return run, None, torch.randn(4, 3, 32, 32)

    def own():
        torch.manual_seed(0)
        data = torch.utils.data.TensorDataset(IMAGES, IMAGES)
        loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=True)
        run = pwfn_viz.fix_in_rounds(AutoEncoder(), loader, nn.functional.mse_loss, reconstruction_error, root / "own",
                                     primary="mse", fractions=(0.5, 1.0), first_round_steps=3, steps_per_round=3,
                                     optimizer="adam", progress=False, verbose=False)
        return run, AutoEncoder, IMAGES[:16]
    return {"cnn": cnn, "vit": vit, "own": own}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The runs of :func:`make_runs`, each made when a test first asks for it."""
    makers, made = make_runs(tmp_path_factory.mktemp("runs")), {}

    def get(name):
        if name not in made:
            made[name] = makers[name]()
        return made[name]
    return get


@pytest.mark.parametrize("which", ["cnn", pytest.param("vit", marks=pytest.mark.slow), "own"])   # vit: a 4-6 s run
def test_entropy_export_round_trip_is_bitwise(runs, which, tmp_path):
    run, cls, x = runs(which)
    path = tmp_path / "model.ans.safetensors"
    report = export_run(run, path, encoding="ans")
    last = run.rounds[-1]
    state, meta = read_exported(path)
    for name, w in last.mu.items():
        assert torch.equal(state[name].view(torch.int32), w.view(torch.int32))
    for key, v in last.tensors.items():
        if key.startswith("state/"):
            assert torch.equal(state[key[len("state/"):]], v)
    loaded = load_exported(path, model=cls() if cls else None)
    reference = run.plain_model_at(-1, model=cls() if cls else None)
    with torch.no_grad():
        assert torch.equal(loaded(x).view(torch.int32), reference(x).view(torch.int32))

    # sizes: the stored table + stream are the index bytes; the bound is the formula's
    flat = np.concatenate([w.numpy().ravel() for w in last.mu.values()]).view(np.int32)
    with safe_open(str(path), framework="pt") as f:
        stored = f.get_tensor("ans/table").numel() + f.get_tensor("ans/stream").numel()
    assert report.index_bytes == stored and report.encoding == "ans" and meta["format_version"] == 2
    assert report.entropy_bound == pytest.approx(bound_from_formula(flat))
    assert report.codebook_size == len(np.unique(flat)) and report.n_weights == flat.size
    assert "entropy-coded" in str(report) and "bits per weight" in str(report)


def test_checksum_is_sha256_of_the_sorted_tensors(runs, tmp_path):
    """Computed from the file with safetensors and hashlib alone, as another tool would."""
    for encoding in ("ans", "fixed"):
        path = tmp_path / f"{encoding}.safetensors"
        export_run(runs("cnn")[0], path, encoding=encoding)
        with safe_open(str(path), framework="np") as f:
            meta = json.loads(f.metadata()["pwfn_viz"])
            digest = hashlib.sha256()
            for key in sorted(f.keys()):
                digest.update(np.ascontiguousarray(f.get_tensor(key)).astype(f.get_tensor(key).dtype.newbyteorder("<"))
                              .tobytes())
        assert meta["sha256"] == digest.hexdigest()
        assert meta["format_version"] == {"ans": 2, "fixed": 1}[encoding]


def _data_start(path: Path) -> int:
    return 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]


@pytest.mark.parametrize("encoding", ["ans", "fixed"])
def test_damaged_files_name_the_file(runs, tmp_path, encoding):
    path = tmp_path / "good.safetensors"
    export_run(runs("cnn")[0], path, encoding=encoding)
    data = path.read_bytes()
    start = _data_start(path)

    flipped = tmp_path / "flipped.safetensors"               # one bit of the payload
    flipped.write_bytes(data[:start + 40] + bytes([data[start + 40] ^ 1]) + data[start + 41:])
    with pytest.raises(FileError, match=r"flipped\.safetensors: the export is damaged: .*sha256"):
        read_exported(flipped)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[:len(data) - 100])
    with pytest.raises(FileError, match=r"truncated\.safetensors: .*damaged"):
        load_exported(truncated)
    header = tmp_path / "header.safetensors"                  # the JSON header cut short
    header.write_bytes(data[:start - 20])
    with pytest.raises(FileError, match=r"header\.safetensors"):
        read_exported(header)
    with pytest.raises(FileNotFoundError, match="missing.safetensors does not exist"):
        read_exported(tmp_path / "missing.safetensors")


def test_damage_behind_a_valid_checksum_is_still_caught(runs, tmp_path):
    """A table that does not fit the tensors (rewritten with a matching sha256): a clear error."""
    path = tmp_path / "good.safetensors"
    export_run(runs("cnn")[0], path, encoding="ans")
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(f.metadata()["pwfn_viz"])
    table = decode_table(tensors["ans/table"].numpy().tobytes(), meta["codebook_size"])
    table[0] += 1
    tensors["ans/table"] = torch.frombuffer(bytearray(encode_table(table)), dtype=torch.uint8)
    meta["sha256"] = payload_sha256(tensors)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={"pwfn_viz": json.dumps(meta)})
    with pytest.raises(FileError, match=r"bad\.safetensors: the export is damaged: the frequency table counts"):
        read_exported(bad)
    meta["format_version"] = 3
    save_file(tensors, str(bad), metadata={"pwfn_viz": json.dumps(meta)})
    with pytest.raises(ValueError, match="version 3, newer than this pwfn_viz reads"):
        read_exported(bad)
    meta["format_version"] = 2
    del meta["order"]
    save_file(tensors, str(bad), metadata={"pwfn_viz": json.dumps(meta)})
    with pytest.raises(FileError, match="key 'order' is missing"):
        read_exported(bad)


# ---------------------------------------------------------------------------------------------
# The size table and the command line
def test_size_table_against_its_formulas(runs, tmp_path):
    run = runs("cnn")[0]
    weights = run.rounds[-1].mu
    table = size_table(weights)
    flat = np.concatenate([w.numpy().ravel() for w in weights.values()]).view(np.int32)
    n, k = flat.size, len(np.unique(flat))
    bits = max(1, math.ceil(math.log2(k)))
    bound = bound_from_formula(flat)
    report = export_run(run, tmp_path / "a.safetensors", encoding="ans")
    expected = {"fp32": 4 * n, "fp16": 2 * n,
                "fixed-width indices + codebook": 4 * k + sum(math.ceil(w.numel() * bits / 8)
                                                              for w in weights.values()),
                "uint8 indices + codebook": 4 * k + n, "entropy-coded indices + codebook": report.compressed_bytes,
                "entropy bound N*H/8 + codebook": 4 * k + bound}
    for row, size in expected.items():
        assert table.loc[row, "bytes"] == pytest.approx(size)
    import brotli
    import zstandard
    assert table.loc["zstd on fp32", "bytes"] == len(zstandard.ZstdCompressor(level=19).compress(
        np.concatenate([w.numpy().ravel() for w in weights.values()]).tobytes()))
    assert table.loc["brotli on uint8 indices + codebook", "index_bytes"] == len(brotli.compress(
        np.unique(flat, return_inverse=True)[1].astype(np.uint8).tobytes(), quality=11))
    assert np.allclose(table["ratio"], 4 * n / table["bytes"])
    assert np.allclose(table["vs_bound"].dropna(), table["index_bytes"].dropna() / bound - 1)
    text = format_size_table(table)
    assert f"{n:,} weights, codebook {k} values" in text and "entropy-coded indices + codebook" in text
    assert set(size_table(weights, compressors=False).index) == set(expected)


def test_cli_export_formats(runs, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(runs("cnn")[0].path, run_dir)
    assert main(["export", str(run_dir), "--format", "entropy"]) == 0
    out = capsys.readouterr().out
    assert (run_dir / "export.ans.safetensors").is_file()
    assert "entropy-coded" in out and "vs entropy bound" in out and "zstd on fp32" in out and "brotli on fp32" in out
    assert main(["export", str(run_dir), "--no-compressors"]) == 0
    out = capsys.readouterr().out
    assert (run_dir / "export.safetensors").is_file() and "bits per weight" in out
    assert "zstd" not in out and "fixed-width indices + codebook" in out


def test_module_doctests():
    for module in (ENTROPY, SIZES):
        results = doctest.testmod(module)
        assert results.failed == 0 and results.attempted >= 3
