"""PWFN against k-means at equal budgets: fine-tuning by hand, the table against brute force, the CLI."""
import json
import math
import shutil
import warnings

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

matplotlib.use("Agg")

import pwfn_viz  # noqa: E402
from pwfn_viz import RunConfig  # noqa: E402
from pwfn_viz.cli import main  # noqa: E402
from pwfn_viz.analysis.compare import COLUMNS, SIGMA_FLOOR, compare, kmeans_finetune, match_entropy  # noqa: E402
from pwfn_viz.data.datasets import create_dataset, make_loader  # noqa: E402
from pwfn_viz.baselines.kmeans import kmeans_quantize  # noqa: E402
from pwfn_viz.core.metrics import evaluate  # noqa: E402

TINY = dict(model="digits_mlp", pretrain_epochs=3, first_round_epochs=0.1, epochs_per_round=0.5,
            fractions=(0.3, 0.7, 1.0), threads=1)
METHODS = ["pwfn", "kmeans@unique", "kmeans@unique+ft", "kmeans@entropy", "kmeans@entropy+ft"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return pwfn_viz.run(RunConfig(**TINY), tmp_path_factory.mktemp("cmp") / "tiny", progress=False, verbose=False)


@pytest.fixture(scope="module")
def digits():
    return create_dataset("digits")


@pytest.fixture(scope="module")
def result(tiny_run, digits):
    return compare(tiny_run, data=digits)


def _start(run):
    return {n: run.start[f"mu/{n}"] for n in run.meta["tensors"]}


def _entropy(values: np.ndarray) -> float:
    _, counts = np.unique(values, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def _quantized(run, k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = kmeans_quantize(_start(run), k, scope="global", init="kmeans++", seed=0).quantized
    return np.concatenate([q[n].numpy().ravel() for n in run.meta["tensors"]])


# ----------------------------------------------------------------------------- the table

def test_table_has_every_row_and_column(result, tiny_run):
    table = result.table
    assert list(table.columns) == COLUMNS and list(table["method"]) == METHODS
    assert list(table["finetuned"]) == [False, False, True, False, True]
    final = tiny_run.rounds[-1].metrics    # the pipeline's own record is the reference for the PWFN row
    pw = table.iloc[0]
    assert pw["unique"] == final["unique"] and pw["unique_nonzero"] == final["unique_nonzero"]
    assert pw["entropy"] == pytest.approx(final["entropy"]) and pw["top1"] == pytest.approx(final["top1_after"])
    assert pw["top5"] == pytest.approx(final["top5_after"])
    assert set(result.layers["method"]) == set(METHODS)
    assert list(result.layers["layer"][:4]) == list(tiny_run.meta["tensors"])


def test_k_unique_is_the_pwfn_unique_count_and_kmeans_uses_at_most_k_values(result, tiny_run):
    table = result.table.set_index("method")
    unique = tiny_run.rounds[-1].metrics["unique"]
    assert table.loc["kmeans@unique", "k"] == unique == table.loc["kmeans@unique+ft", "k"]
    for method in METHODS[1:]:
        k = table.loc[method, "k"]
        assert 1 <= table.loc[method, "unique"] <= k
        assert torch.unique(result.weights[method]).numel() <= k
    # without fine-tuning the weights are exactly kmeans_quantize's (same seed and init)
    assert np.array_equal(result.weights["kmeans@unique"].numpy(), _quantized(tiny_run, unique).astype(np.float64))


def test_entropy_match_is_the_closest_k_by_brute_force(result, tiny_run):
    target = tiny_run.rounds[-1].metrics["entropy"]
    k = int(result.table.set_index("method").loc["kmeans@entropy", "k"])
    brute = {j: _entropy(_quantized(tiny_run, j)) for j in range(1, 131)}
    for j, h in result.entropy_search.items():      # what the search saw is the real entropy
        assert h == pytest.approx(brute[j], abs=1e-9)
    best = min(brute, key=lambda j: (abs(brute[j] - target), j))
    assert k == best
    assert result.table.set_index("method").loc["kmeans@entropy", "entropy"] == pytest.approx(brute[k])


def test_match_entropy_search_rules():
    for target in (0.0, 0.4, 2.0, 3.4, 5.9, 6.64):
        best, seen = match_entropy(math.log2, target, 100)
        brute = min(range(1, 101), key=lambda k: (abs(math.log2(k) - target), k))
        assert best == brute and best in seen and len(seen) <= 16
    assert match_entropy(math.log2, 50.0, 100)[0] == 100          # unreachable: the largest k
    bumpy = {1: 0.0, 2: 1.0, 3: 0.5, 4: 2.0, 5: 2.1}              # not monotone: best of those seen
    best, seen = match_entropy(bumpy.__getitem__, 1.9, 5)
    assert best == min(seen, key=lambda k: abs(seen[k] - 1.9))
    with pytest.raises(ValueError, match="k_max"):
        match_entropy(math.log2, 1.0, 0)


def test_weight_error_by_hand(result, tiny_run):
    names = list(tiny_run.meta["tensors"])
    w0 = np.concatenate([tiny_run.start[f"mu/{n}"].double().numpy().ravel() for n in names])
    k = tiny_run.rounds[-1].metrics["unique"]
    q = _quantized(tiny_run, k).astype(np.float64)
    table = result.table.set_index("method")
    assert table.loc["kmeans@unique", "weight_error"] == pytest.approx(
        np.sqrt(np.sum((q - w0) ** 2)) / np.sqrt(np.sum(w0 ** 2)), rel=1e-12)
    final = np.concatenate([tiny_run.rounds[-1].mu[n].double().numpy().ravel() for n in names])
    assert table.loc["pwfn", "weight_error"] == pytest.approx(
        np.linalg.norm(final - w0) / np.linalg.norm(w0), rel=1e-12)
    layers = result.layers.set_index(["method", "layer"])
    a, b = tiny_run.start["mu/fc2.weight"].double(), tiny_run.rounds[-1].mu["fc2.weight"].double()
    assert layers.loc[("pwfn", "fc2.weight"), "weight_error"] == pytest.approx(
        float(torch.sqrt(((b - a) ** 2).sum() / (a ** 2).sum())), rel=1e-12)


def test_moved_fractions_against_brute_force_sigma(result, tiny_run):
    post = [r.flat("post") for r in tiny_run.rounds]
    pre = [r.flat("pre") for r in tiny_run.rounds]
    n = post[0][0].numel()
    sigma = np.empty(n)
    for i in range(n):          # the pre-snap sigma of the round that fixed weight i first
        r = next(r for r in range(len(post)) if post[r][2][i])
        sigma[i] = max(float(pre[r][1][i]), SIGMA_FLOOR)
    assert np.array_equal(result.sigma.numpy(), sigma)
    start = result.start.numpy()
    table = result.table.set_index("method")
    for method in METHODS:
        moved = np.abs(result.weights[method].numpy() - start) / sigma
        for s in (1, 2, 3):
            assert table.loc[method, f"moved_gt_{s}sigma"] == pytest.approx(np.mean(moved > s), abs=1e-15)
    assert table.loc["pwfn", "moved_gt_1sigma"] > table.loc["pwfn", "moved_gt_3sigma"] > 0


# ----------------------------------------------------------------------------- fine-tuning

def _tiny_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def _structures(net):
    """Codebook layouts of the three scopes for the two weight matrices of _tiny_net."""
    g = torch.tensor([-0.5, 0.1, 0.6], dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    labels = {"0.weight": torch.randint(0, 3, (4, 3), generator=gen),
              "2.weight": torch.randint(0, 3, (2, 4), generator=gen)}
    return {"global": (labels, {"0.weight": g, "2.weight": g}),
            "layer": (labels, {"0.weight": g.clone(), "2.weight": torch.tensor([-0.3, 0.2, 0.4], dtype=torch.float64)}),
            "channel": (labels, {"0.weight": [g + 0.01 * r for r in range(4)],
                                 "2.weight": [g - 0.02 * r for r in range(2)]})}


@pytest.mark.parametrize("scope", ["global", "layer", "channel"])
def test_finetune_step_is_minus_lr_times_summed_gradient(scope):
    net = _tiny_net()
    labels, books = _structures(net)[scope]
    x, y = torch.randn(5, 3, generator=torch.Generator().manual_seed(2)), torch.tensor([0, 1, 1, 0, 1])

    def book_of(name, row):
        return books[name][row] if isinstance(books[name], list) else books[name]

    ref = _tiny_net()                   # the reference: weights = codebook[label], one autograd pass
    params = dict(ref.named_parameters())
    with torch.no_grad():
        for name, lab in labels.items():
            for idx in np.ndindex(*lab.shape):
                params[name][idx] = float(book_of(name, idx[0])[lab[idx]])
    nn.functional.cross_entropy(ref(x), y).backward()
    summed = {}
    for name, lab in labels.items():    # sum the gradients per centroid, element by element
        for idx in np.ndindex(*lab.shape):
            key = (id(book_of(name, idx[0])), int(lab[idx]))
            summed[key] = summed.get(key, 0.0) + float(params[name].grad[idx])
    lr = 0.1
    res = kmeans_finetune(net, labels, books, [(x, y)], 1, lr=lr, momentum=0.0, weight_decay=0.0)
    assert res.steps == 1
    new = dict(net.named_parameters())
    for name, lab in labels.items():
        for idx in np.ndindex(*lab.shape):
            row = idx[0]
            old_book = book_of(name, row)
            new_book = res.codebooks[name][row] if isinstance(books[name], list) else res.codebooks[name]
            j = int(lab[idx])
            assert float(new_book[j]) == pytest.approx(float(old_book[j]) - lr * summed[(id(old_book), j)], abs=1e-6)
            assert float(new[name].detach()[idx]) == float(new_book[j].float())   # the weight is its centroid, exactly
    # the unshared biases take an ordinary SGD step
    assert torch.allclose(new["0.bias"], params["0.bias"] - lr * params["0.bias"].grad, atol=1e-7)
    if scope == "global":
        assert res.codebooks["0.weight"] is res.codebooks["2.weight"]


@pytest.mark.parametrize("scope,k", [("global", 6), ("layer", 4), ("channel", 2)])
def test_finetune_keeps_assignments_and_codebook_values(tiny_run, digits, scope, k):
    model = tiny_run.plain_model_at(None)
    names = list(tiny_run.meta["tensors"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, books, labels = kmeans_quantize(_start(tiny_run), k, scope=scope, seed=0)
    torch.manual_seed(0)
    res = kmeans_finetune(model, labels, books, make_loader(digits.train, 128, shuffle=True), 0.3,
                          lr=1e-3, momentum=0.9, grad_clip=1.0)
    params = dict(model.named_parameters())
    changed = False
    for n in names:
        w, lab = params[n].detach(), labels[n]
        if scope == "channel":
            for r in range(w.shape[0]):
                row = lab.reshape(w.shape[0], -1)[r]
                assert torch.equal(w.reshape(w.shape[0], -1)[r], res.codebooks[n][r][row].float())
                changed |= not torch.equal(res.codebooks[n][r], books[n][r])
        else:
            assert torch.equal(w, res.codebooks[n][lab].float())   # same labels, new centroid values
            assert torch.unique(w).numel() <= k
            changed |= not torch.equal(res.codebooks[n], books[n])
    assert changed


def test_finetune_improves_train_loss_and_keeps_zero(tiny_run, digits):
    names = list(tiny_run.meta["tensors"])
    model = tiny_run.plain_model_at(None)
    q, books, labels = kmeans_quantize(_start(tiny_run), 8, seed=0, keep_zero=True)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n in names:
            params[n].copy_(q[n])
    full = make_loader(digits.train, 2048)
    before = evaluate(model, full)["loss"]
    torch.manual_seed(0)
    res = kmeans_finetune(model, labels, books, make_loader(digits.train, 128, shuffle=True, seed=0), 1.1,
                          lr=1e-3, momentum=0.9, weight_decay=1e-4, grad_clip=1.0, keep_zero=True)
    assert evaluate(model, full)["loss"] <= before
    book = res.codebooks[names[0]]
    zero = int(torch.nonzero(books[names[0]] == 0)[0])
    assert book[zero] == 0.0 and (book != books[names[0]]).sum() == 7
    assert all((params[n][labels[n] == zero] == 0).all() for n in names)


def test_finetune_bad_input():
    net = _tiny_net()
    labels, books = _structures(net)["layer"]
    loader = [(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))]
    with pytest.raises(ValueError, match="not a parameter"):
        kmeans_finetune(net, {"nope": labels["0.weight"]}, {"nope": books["0.weight"]}, loader, 1)
    with pytest.raises(ValueError, match="shape"):
        kmeans_finetune(net, {"0.weight": labels["2.weight"]}, {"0.weight": books["0.weight"]}, loader, 1)
    with pytest.raises(ValueError, match="outside its codebook"):
        kmeans_finetune(net, {"0.weight": labels["0.weight"] + 3}, {"0.weight": books["0.weight"]}, loader, 1)
    with pytest.raises(ValueError, match="per-channel"):
        kmeans_finetune(net, {"0.weight": labels["0.weight"]}, {"0.weight": [books["0.weight"]]}, loader, 1)
    with pytest.raises(ValueError, match="name different"):
        kmeans_finetune(net, labels, {"0.weight": books["0.weight"]}, loader, 1)


# ----------------------------------------------------------------------------- CLI, errors, plots

def test_cli_prints_the_table_and_writes_csv(tiny_run, tmp_path, capsys):
    csv = tmp_path / "cmp.csv"
    assert main(["compare", str(tiny_run.path), "--no-finetune", "--quiet", "--csv", str(csv)]) == 0
    out = capsys.readouterr().out
    for word in ["pwfn", "kmeans@unique", "kmeans@entropy", *COLUMNS]:
        assert word in out
    assert "+ft" not in out
    table = pd.read_csv(csv)
    assert list(table.columns) == COLUMNS and list(table["method"]) == ["pwfn", "kmeans@unique", "kmeans@entropy"]
    assert table["unique"][0] == tiny_run.rounds[-1].metrics["unique"]


def _broken_copy(run, tmp_path, rounds):
    out = tmp_path / f"broken{rounds}"
    shutil.copytree(run.path, out)
    meta = json.loads((out / "run.json").read_text())
    meta["rounds"], meta["status"] = meta["rounds"][:rounds], "running"
    (out / "run.json").write_text(json.dumps(meta))
    return out


@pytest.mark.parametrize("rounds", [0, 1])
def test_incomplete_runs_are_refused(tiny_run, tmp_path, capsys, rounds):
    out = _broken_copy(tiny_run, tmp_path, rounds)
    with pytest.raises(ValueError, match=f"{out}.*incomplete.*--resume"):
        compare(out)
    assert main(["compare", str(out), "--quiet"]) == 2
    assert "resume" in capsys.readouterr().err


def test_bad_options_and_missing_directory(tiny_run, tmp_path):
    with pytest.raises(ValueError, match="unknown scope"):
        compare(tiny_run, scope="row")
    with pytest.raises(ValueError, match="unknown k-means init"):
        compare(tiny_run, init="best")
    with pytest.raises(FileNotFoundError, match="not a pwfn_viz run"):
        compare(tmp_path / "missing")
    assert main(["compare", str(tmp_path / "missing")]) == 2


def test_plots_draw_every_codebook_value(result):
    from pwfn_viz.viz.compare_plots import plot_codebooks, plot_moves_vs_sigma
    fig = plot_codebooks(result, ["pwfn", "kmeans@entropy"])
    lines = [line for line in fig.axes[0].get_lines()]
    assert [len(line.get_xdata()) for line in lines] == [
        torch.unique(result.weights[m]).numel() for m in ("pwfn", "kmeans@entropy")]
    fig = plot_moves_vs_sigma(result, ["pwfn", "kmeans@unique"], max_points=500)
    assert len(fig.axes[0].collections) == 2
    with pytest.raises(ValueError, match="no method"):
        plot_codebooks(result, ["sgd"])


# ----------------------------------------------------------------------------- coremltools rows
def test_coremltools_rows_palettize_the_starting_network(tiny_run, digits):
    from pwfn_viz.analysis.palettize import coremltools_available
    if not coremltools_available():
        with pytest.raises(ImportError, match="pip install coremltools"):
            compare(tiny_run, data=digits, finetune=False, coremltools_bits=(2,))
        return
    out = compare(tiny_run, data=digits, finetune=False, coremltools_bits=(2, 3), dkm_steps=2)
    assert list(out.table["method"])[-4:] == ["ptq@2bit", "dkm@2bit", "ptq@3bit", "dkm@3bit"]
    names = list(tiny_run.meta["tensors"])
    at = 0
    for name in names:   # every weight tensor uses at most 2**bits values; biases are not palettized
        n = math.prod(tiny_run.meta["tensors"][name])
        for method, bits in (("ptq@2bit", 2), ("dkm@2bit", 2), ("ptq@3bit", 3)):
            values = out.weights[method][at:at + n]
            if name.endswith("weight"):
                assert torch.unique(values).numel() <= 2 ** bits, (method, name)
            elif method.startswith("ptq"):    # no training: the starting biases exactly
                assert torch.equal(values, out.start[at:at + n]), (method, name)
            else:                             # DKM trains them as floats
                assert torch.unique(values).numel() == torch.unique(out.start[at:at + n]).numel(), (method, name)
        at += n
    row = out.table.set_index("method").loc["ptq@2bit"]
    assert row["unique"] == len(np.unique(out.weights["ptq@2bit"].numpy()))
    assert row["entropy"] == pytest.approx(_entropy(out.weights["ptq@2bit"].numpy()), abs=1e-9)
