"""Runs of the user's own model (recorded by Fixer / fix_in_rounds): compare, analyse, export, figures,
explorers and attention heads take the user's ``model=`` / ``evaluate=`` / ``train_loader=`` /
``loss_fn=``, and say exactly what to pass when one is missing. Also the head layouts of
separate q, k, v projections (Hugging Face) and a tiny BERT run end to end."""
import math

import pytest
import torch
import torch.nn as nn

import pwfn_viz
from pwfn_viz import Fixer, analyse, compare, export_run, load_exported
from pwfn_viz.analysis.heads import HeadLayout, find_heads, head_table
from pwfn_viz.cli import main

from autoencoder import IMAGES, TEST_IMAGES, AutoEncoder  # noqa: E402
from autoencoder import reconstruction_error as reconstruction  # noqa: E402

PAIRS = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(IMAGES, IMAGES), batch_size=64, shuffle=True)


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory):
    torch.manual_seed(0)
    model = AutoEncoder()
    fixer = Fixer(model, tmp_path_factory.mktemp("user") / "ae", reconstruction, primary="mse",
                  fractions=(0.5, 0.9, 1.0), verbose=False)
    for fraction in fixer.fractions:
        opt = torch.optim.Adam(fixer.param_groups(lr=1e-3), lr=1e-3)
        model.train()
        for _, (x, _y) in zip(range(6), PAIRS):
            loss = nn.functional.mse_loss(model(x), x) + fixer.loss_terms()
            opt.zero_grad()
            loss.backward()
            opt.step()
        fixer.fix(fraction)
    return fixer.run


def test_compare_reports_the_users_primary_metric(ae_run):
    result = compare(ae_run, model=AutoEncoder(), evaluate=reconstruction, train_loader=PAIRS,
                     loss_fn=nn.functional.mse_loss, finetune_epochs=0.2)
    table = result.table
    assert list(table.columns[:5]) == ["method", "k", "finetuned", "mse", "mae"] and "top1" not in table.columns
    assert list(table["method"]) == ["pwfn", "kmeans@unique", "kmeans@unique+ft", "kmeans@entropy", "kmeans@entropy+ft"]
    assert table.at[0, "mse"] == pytest.approx(ae_run.rounds[-1].metrics["mse_after"], rel=1e-5)
    assert result.primary == "mse" and not result.higher_is_better and "lower is better" in repr(result)
    assert table["mse"].notna().all() and (table["mse"] > 0).all()
    plain = compare(ae_run, model=AutoEncoder(), evaluate=reconstruction, finetune=False)   # no training: no loader
    assert list(plain.table["method"]) == ["pwfn", "kmeans@unique", "kmeans@entropy"]


def test_forgetting_the_users_code_says_what_to_pass(ae_run, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"model=AutoEncoder\(\).*evaluate=my_eval.*train_loader=.*loss_fn="):
        compare(ae_run)
    with pytest.raises(ValueError, match="train_loader=.*loss_fn=") as err:
        compare(ae_run, model=AutoEncoder(), evaluate=reconstruction)
    assert "model=" not in str(err.value).split("pass", 1)[1]
    with pytest.raises(ValueError, match="evaluate=my_eval"):
        analyse(ae_run, model=AutoEncoder())
    with pytest.raises(ValueError, match=r"model=AutoEncoder\(\)"):
        analyse(ae_run, evaluate=reconstruction)
    export_run(ae_run, tmp_path / "ae.safetensors")            # tensors only: no model needed to write
    with pytest.raises(ValueError, match=r"load_exported\(path, model=AutoEncoder\(\)\)"):
        load_exported(tmp_path / "ae.safetensors")
    with pytest.raises(ValueError, match="does not fit"):
        export_run(ae_run, tmp_path / "other.safetensors", model=nn.Sequential(nn.Linear(64, 3)))
    from pwfn_viz.viz.position import plot_attention_heads
    with pytest.raises(ValueError, match=r"plot_attention_heads.*model=AutoEncoder\(\)"):
        plot_attention_heads(ae_run)
    from pwfn_viz.widgets import CompareExplorer
    w = CompareExplorer(ae_run)
    assert isinstance(w.error, ValueError) and "model=AutoEncoder()" in str(w.error)
    for command in ("compare", "analyse"):
        assert main([command, str(ae_run.path), "--quiet"]) == 2
        assert "use the Python API" in capsys.readouterr().err


def test_analyse_measures_with_evaluate_and_skips_calibration(ae_run, tmp_path):
    result = analyse(ae_run, model=AutoEncoder(), evaluate=reconstruction, n_samples=3)
    s = result.summary
    assert list(s.index) == ["mean weights", "learned sigma samples", "isotropic samples"]
    assert list(s.columns) == ["mse", "mse_std", "mae"]
    assert s.at["mean weights", "mse"] == pytest.approx(ae_run.rounds[-1].metrics["mse_before"], rel=1e-5)
    assert s.at["learned sigma samples", "mse_std"] >= 0 and len(result.samples) == 3
    assert not result.reliability and "calibration" in result.notes[0] and "lower is better" in repr(result)
    from pwfn_viz.viz.analyse_plots import plot_noise_accuracy, plot_reliability, save_figures
    assert plot_noise_accuracy(result).axes[0].get_ylabel() == "test mse"
    with pytest.raises(ValueError, match="calibration"):
        plot_reliability(result)
    assert [p.name for p in save_figures(result, tmp_path, formats=("png",))] == ["noise.png"]


def test_export_loads_into_the_users_model_with_the_same_outputs(ae_run, tmp_path):
    report = export_run(ae_run, tmp_path / "ae.safetensors", model=AutoEncoder())
    assert report.n_tensors == 4
    loaded = load_exported(tmp_path / "ae.safetensors", model=AutoEncoder())
    fixed = ae_run.plain_model_at(-1, model=AutoEncoder())
    assert torch.equal(loaded(TEST_IMAGES), fixed(TEST_IMAGES))


@pytest.mark.slow
def test_figures_and_explorers_accept_the_record(ae_run, tmp_path):
    from pwfn_viz.viz import write_figures
    from pwfn_viz.widgets import CompareExplorer, RoundExplorer, UncertaintyExplorer
    comparison = compare(ae_run, model=AutoEncoder(), evaluate=reconstruction, finetune=False)
    written = write_figures(ae_run, tmp_path / "figs", formats=("png",), comparison=comparison)
    assert {"timeline", "codebooks_vs_kmeans", "moves_vs_sigma"} <= {p.stem for p in written}
    RoundExplorer(ae_run)
    UncertaintyExplorer(ae_run)
    w = CompareExplorer(ae_run, model=AutoEncoder(), evaluate=reconstruction)
    assert w.error is None and "mse" in w.table.value and "top1" not in w.table.value
    w.k.value = 5
    assert list(w.comparison.table["method"]) == ["pwfn", "kmeans@5"] and w.comparison.primary == "mse"


# ----------------------------------------------------------------------------- attention heads
class SelfAttention(nn.Module):              # BERT's layout: attention.self.{query,key,value}, attention.output.dense
    def __init__(self, dim, heads):
        super().__init__()
        self.num_attention_heads = heads
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)


class Output(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dense = nn.Linear(dim, dim)


class BertLikeAttention(nn.Module):
    def __init__(self, dim=8, heads=2):
        super().__init__()
        self.self, self.output = SelfAttention(dim, heads), Output(dim)


class GroupedQuery(nn.Module):               # Llama's layout with 4 query heads sharing 2 k/v heads
    def __init__(self):
        super().__init__()
        self.num_heads = 4
        self.q_proj, self.o_proj = nn.Linear(8, 8), nn.Linear(8, 8)
        self.k_proj, self.v_proj = nn.Linear(8, 4), nn.Linear(8, 4)


def test_heads_of_separate_q_k_v_projections():
    net = nn.ModuleDict({"bert": BertLikeAttention(), "llama": GroupedQuery()})
    found = find_heads(net)
    assert found == {"bert.self": HeadLayout(2, "bert.self.query.weight", "bert.self.key.weight",
                                             "bert.self.value.weight", "bert.output.dense.weight"),
                     "llama": HeadLayout(4, "llama.q_proj.weight", "llama.k_proj.weight", "llama.v_proj.weight",
                                         "llama.o_proj.weight")}
    tensors = {n: torch.arange(p.numel(), dtype=torch.float64).reshape(p.shape) for n, p in net.named_parameters()}
    table = head_table(tensors, found)
    assert len(table) == 6 and list(table.columns) == ["q", "k", "v", "proj"]
    q, proj = tensors["bert.self.query.weight"], tensors["bert.output.dense.weight"]
    assert table.loc[("bert.self", 1), "q"] == q[4:].mean().item()            # head 1: rows 4..7
    assert table.loc[("bert.self", 1), "proj"] == proj[:, 4:].mean().item()    # its input columns
    k = tensors["llama.k_proj.weight"]                                         # heads 2, 3 read k/v head 1
    assert table.loc[("llama", 3), "k"] == table.loc[("llama", 2), "k"] == k[2:].mean().item()
    no_proj = nn.ModuleDict({"a": SelfAttention(8, 2)})
    assert math.isnan(head_table({n: p.detach() for n, p in no_proj.named_parameters()},
                                 find_heads(no_proj)).loc[("a", 0), "proj"])


# ----------------------------------------------------------------------------- a Hugging Face transformer
TEXT = torch.tensor(list(pwfn_viz.__doc__.encode() * 2), dtype=torch.long)
MASK, LENGTH = 256, 16


def masked_batches(n, seed):
    """(input ids with 15% masked, labels: the masked bytes, -100 elsewhere)."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(TEXT) - LENGTH, (n,), generator=g)
    x = torch.stack([TEXT[s:s + LENGTH] for s in starts])
    masked = torch.rand(x.shape, generator=g) < 0.15
    return x.masked_fill(masked, MASK), torch.where(masked, x, torch.full_like(x, -100))


def mlm_loss(out, labels):
    return nn.functional.cross_entropy(out.logits.flatten(0, 1), labels.flatten(), ignore_index=-100)


EVAL_X, EVAL_Y = masked_batches(32, seed=1)


def perplexity(model):
    model.eval()
    loss = mlm_loss(model(EVAL_X), EVAL_Y).item()
    return {"perplexity": math.exp(loss), "loss": loss}


def tiny_bert():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=257, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=LENGTH, tie_word_embeddings=False)
    torch.manual_seed(0)
    return transformers.BertForMaskedLM(config)


@pytest.mark.slow
def test_a_hugging_face_transformer_run_end_to_end(tmp_path):
    tiny_bert()   # skips without transformers
    x, y = masked_batches(64, seed=0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=True)
    run = pwfn_viz.fix_in_rounds(tiny_bert(), loader, mlm_loss, perplexity, tmp_path / "bert", primary="perplexity",
                                 fractions=(0.6, 1.0), first_round_steps=3, steps_per_round=3, optimizer="adam",
                                 lr=1e-3, progress=False, verbose=False)
    assert run.complete and run.primary == "perplexity" and not run.higher_is_better
    assert any(n.endswith("attention.self.query.weight") for n in run.meta["tensors"])   # HF Linear layers converted
    result = compare(run, model=tiny_bert(), evaluate=perplexity, train_loader=loader, loss_fn=mlm_loss,
                     finetune_epochs=0.25)
    assert result.table.columns[3] == "perplexity"
    assert result.table.at[0, "perplexity"] == pytest.approx(run.rounds[-1].metrics["perplexity_after"], rel=1e-4)
    noise = analyse(run, model=tiny_bert(), evaluate=perplexity, n_samples=2)
    assert noise.summary.columns[0] == "perplexity" and noise.notes
    export_run(run, tmp_path / "bert.safetensors", model=tiny_bert())
    loaded = load_exported(tmp_path / "bert.safetensors", model=tiny_bert())
    fixed = run.plain_model_at(-1, model=tiny_bert())
    assert torch.equal(loaded(EVAL_X).logits, fixed(EVAL_X).logits)
    from pwfn_viz.viz.position import plot_attention_heads
    fig = plot_attention_heads(run, model=tiny_bert())
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert len(labels) == 2 and labels[1] == "bert.encoder.layer.0.attention.self / h1"
    with pytest.raises(ValueError, match="model="):
        plot_attention_heads(run)
    from pwfn_viz.widgets import RoundExplorer, UncertaintyExplorer
    RoundExplorer(run)
    UncertaintyExplorer(run)
