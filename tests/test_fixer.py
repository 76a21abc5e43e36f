"""The open round loop: ``Fixer`` inside a user's own training loop, ``fix_in_rounds``, and the same
record as ``pwfn_viz.run``; custom metrics, replay without the user's code, resume, bad use."""
import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import pwfn_viz
from pwfn_viz import Fixer, RunConfig, load_run
from pwfn_viz.cli import main
from pwfn_viz.core.metrics import evaluate
from pwfn_viz.data.datasets import create_dataset, make_loader
from pwfn_viz.models.factory import create_model
from pwfn_viz.train.loop import train_steps

from autoencoder import IMAGES, TEST_IMAGES, AutoEncoder, reconstruction_error  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _same_records(a: Path, b: Path) -> None:
    """Round tensors bitwise, per-round metrics (but the timing) and the CSV tables byte for byte."""
    ra, rb = load_run(a), load_run(b)
    assert len(ra.rounds) == len(rb.rounds) > 0
    for x, y in zip(ra.rounds, rb.rounds):
        assert x.tensors.keys() == y.tensors.keys()
        assert all(torch.equal(x.tensors[k], y.tensors[k]) for k in x.tensors)
    assert all(torch.equal(ra.start[k], rb.start[k]) for k in ra.start)
    strip = lambda rows: [{k: v for k, v in m.items() if k != "seconds"} for m in rows]  # noqa: E731
    assert strip(ra.meta["rounds"]) == strip(rb.meta["rounds"])
    for table in ("steps.csv", "layers.csv"):
        assert (a / table).read_bytes() == (b / table).read_bytes()


@pytest.mark.slow
def test_open_api_gives_the_same_record_as_run(tmp_path):
    """The digits CNN through Fixer, trained by hand the way the built-in loop trains it, writes the
    record pwfn_viz.run writes, bitwise."""
    config = RunConfig.demo(pretrain_epochs=1, fractions=(0.5, 0.8, 1.0), first_round_steps=6, steps_per_round=6,
                            threads=1)
    reference = pwfn_viz.run(config, tmp_path / "loop", progress=False, verbose=False)

    torch.manual_seed(config.seed)
    data = create_dataset("digits", seed=config.seed)
    spec = {"name": "digits_cnn", "num_classes": 10, "in_chans": 1, "kwargs": {}}
    model = create_model("digits_cnn", num_classes=10, in_chans=1)
    test_loader = make_loader(data.test, batch_size=256)
    train_steps(model, make_loader(data.train, config.batch_size, shuffle=True, seed=config.seed),
                config.pretrain_epochs, lr=config.pretrain_lr, momentum=config.momentum,
                weight_decay=config.weight_decay, grad_clip=config.grad_clip, device="cpu", bayesian=False,
                progress=False)
    fixer = Fixer(model, tmp_path / "open", lambda m: evaluate(m, test_loader), config=config, model_spec=spec,
                  verbose=False)
    for r, fraction in enumerate(fixer.fractions):
        opt = fixer.optimizer()
        loader = make_loader(data.train, config.batch_size, shuffle=True, seed=config.seed * 1_000_003 + r)
        model.train()
        for step, (x, y) in zip(range(config.round_budget(r, len(loader))), loader):
            task = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            (task + fixer.loss_terms()).backward()
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
        fixer.fix(fraction, train_loss=reference.rounds[r].metrics["train_loss"])
    assert fixer.fractions == () and fixer.run.complete
    _same_records(reference.path, tmp_path / "open")


def _autoencoder_loop(out, crash_in_round=None, resume=False):
    """A user's own loop: Adam, batches of 64 images, 8 steps a round, three rounds."""
    torch.manual_seed(0)
    model = AutoEncoder()
    fixer = Fixer(model, out, reconstruction_error, primary="mse", fractions=(0.4, 0.8, 1.0), resume=resume,
                  verbose=False)
    loader = torch.utils.data.DataLoader(IMAGES, batch_size=64, shuffle=True)
    for fraction in fixer.fractions:
        opt = torch.optim.Adam(fixer.param_groups(lr=1e-3), lr=1e-3)
        model.train()
        for step, x in zip(range(8), loader):
            if fixer.round == crash_in_round and step == 4:
                raise KeyboardInterrupt("the machine went down")
            loss = nn.functional.mse_loss(model(x), x) + fixer.loss_terms()
            opt.zero_grad()
            loss.backward()
            opt.step()
        fixer.fix(fraction)
    return fixer.run


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory):
    return _autoencoder_loop(tmp_path_factory.mktemp("fixer") / "autoencoder")


@pytest.mark.slow
def test_regression_record_replays_without_the_users_code(regression_run, tmp_path, capsys):
    run = load_run(regression_run.path)
    assert run.complete and run.primary == "mse" and run.higher_is_better is False
    table = run.table()
    assert {"mse_before", "mse_after", "mae_before", "mae_after"} <= set(table.columns)
    assert list(table["fraction"]) == [0.4, 0.8, 1.0] and "top1_before" not in table.columns
    assert "mse" in repr(run.rounds[0]) and run.meta["model_spec"]["name"] is None
    # the model: the user's instance, else a clear error
    with pytest.raises(ValueError, match=r"model=AutoEncoder\(\)"):
        run.model_at(1)
    model = run.model_at(-1, model=AutoEncoder())
    assert reconstruction_error(model)["mse"] == pytest.approx(run.rounds[-1].metrics["mse_after"], rel=1e-5)
    plain = run.plain_model_at(-1, model=AutoEncoder())
    assert torch.allclose(plain(TEST_IMAGES), model(TEST_IMAGES))
    with pytest.raises(ValueError, match="does not fit the run"):
        run.model_at(0, model=nn.Sequential(nn.Linear(64, 3)))
    # widgets, figures and the command line from the directory alone
    from pwfn_viz.widgets import RoundExplorer, UncertaintyExplorer
    from pwfn_viz.widgets.round_explorer import round_label
    explorer = RoundExplorer(run)
    assert "mse" in round_label(run, 1) and "top-1" not in round_label(run, 1)
    UncertaintyExplorer(run)
    assert explorer is not None
    from pwfn_viz.widgets import WhatIf
    alone = WhatIf(run)
    assert alone.error is None and not alone.accuracy.value and "mse" in alone.round_label.value
    what_if = WhatIf(run, model=AutoEncoder(), evaluate=reconstruction_error)
    assert what_if.error is None and what_if.stats["mse"] > 0 and "mse" in what_if.table.value
    from pwfn_viz.viz import write_figures
    from pwfn_viz.viz.plots import plot_timeline
    fig = plot_timeline(run)
    assert fig.axes[0].get_ylabel() == "test mse"
    written = write_figures(run, tmp_path / "figures", formats=("png",), comparison=False)
    assert any(p.stem == "timeline" for p in written)
    assert main(["show", str(run.path)]) == 0
    shown = capsys.readouterr().out
    assert "mse_after" in shown and "primary metric: mse (lower is better)" in shown


@pytest.mark.slow
def test_resume_after_an_exception_equals_the_uninterrupted_run(regression_run, tmp_path):
    out = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        _autoencoder_loop(out, crash_in_round=1)
    assert len(load_run(out).rounds) == 1
    done = _autoencoder_loop(out, resume=True)
    assert done.complete
    _same_records(regression_run.path, out)
    log = (out / "log.txt").read_text()
    assert "resuming" in log and log.count("round  1 |") == 1


def test_fix_in_rounds_runs_the_schedule_on_user_objects(tmp_path):
    torch.manual_seed(0)
    model = AutoEncoder()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(IMAGES, IMAGES), batch_size=64, shuffle=True)
    run = pwfn_viz.fix_in_rounds(model, loader, nn.functional.mse_loss, reconstruction_error, tmp_path / "one",
                                 primary="mse", fractions=(0.5, 1.0), first_round_steps=3, steps_per_round=3,
                                 optimizer="adam", progress=False, verbose=False)
    assert run.complete and run.primary == "mse" and len(run.rounds) == 2
    assert all(m["train_loss"] > 0 for m in run.meta["rounds"])
    assert bool(run.rounds[-1].flat()[2].all())


def _tiny(tmp_path, evaluate=reconstruction_error, **kw):
    torch.manual_seed(0)
    model = AutoEncoder()
    return model, Fixer(model, tmp_path / "tiny", evaluate, fractions=(0.5, 1.0), verbose=False, **kw)


def _train_step(model, fixer):
    model.train()
    (nn.functional.mse_loss(model(IMAGES[:8]), IMAGES[:8]) + fixer.loss_terms()).backward()


def test_bad_use_gets_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="increasing"):
        Fixer(AutoEncoder(), tmp_path / "x", reconstruction_error, fractions=(0.5, 0.3, 1.0))
    model, fixer = _tiny(tmp_path)
    with pytest.raises(ValueError, match="before any training step"):
        fixer.fix(0.5)
    with pytest.raises(ValueError, match="forward pass in training mode"):
        fixer.loss_terms()
    _train_step(model, fixer)
    with pytest.raises(ValueError, match="next fraction of this run is 0.5"):
        fixer.fix(1.0)
    fixer.fix(0.5)
    _train_step(model, fixer)
    with pytest.raises(ValueError, match="next fraction of this run is 1.0"):
        fixer.fix(0.5)                                     # repeated
    model.decode = nn.Linear(12, 64)                       # a converted layer replaced
    with pytest.raises(ValueError, match="changed since the run started"):
        fixer.fix(1.0)
    # a directory that belongs to another model
    other = nn.Sequential(nn.Linear(64, 5), nn.ReLU(), nn.Linear(5, 64))
    with pytest.raises(ValueError, match="belongs to another model"):
        Fixer(other, tmp_path / "tiny", reconstruction_error, resume=True, verbose=False)
    with pytest.raises(FileExistsError, match="resume=True"):
        Fixer(AutoEncoder(), tmp_path / "tiny", reconstruction_error, verbose=False)
    with pytest.raises(ValueError, match="other settings"):
        Fixer(AutoEncoder(), tmp_path / "tiny", reconstruction_error, resume=True, fractions=(0.2, 1.0), verbose=False)
    # evaluate must return a dict of numbers
    for i, bad in enumerate([lambda m: 0.5, lambda m: {"mse": "low"}, lambda m: {}, lambda m: [("mse", 1.0)]]):
        with pytest.raises(ValueError, match="evaluate|metric"):
            Fixer(AutoEncoder(), tmp_path / f"bad{i}", bad, verbose=False)
    with pytest.raises(ValueError, match="higher_is_better"):
        Fixer(AutoEncoder(), tmp_path / "dir", lambda m: {"score": 1.0}, verbose=False)
    with pytest.raises(ValueError, match="not among the metrics"):
        Fixer(AutoEncoder(), tmp_path / "prim", reconstruction_error, primary="top1", verbose=False)


def test_metrics_are_plain_numbers_and_tensors_are_accepted(tmp_path):
    model, fixer = _tiny(tmp_path, evaluate=lambda m: {"mse": torch.tensor(0.25), "n": 3})
    assert fixer.meta["baseline"] == {"mse": 0.25, "n": 3} and fixer.primary == "mse"
    assert fixer.higher_is_better is False and fixer.fractions == (0.5, 1.0)
    _train_step(model, fixer)
    metrics = fixer.fix(note=7)
    assert metrics["mse_before"] == 0.25 and metrics["note"] == 7 and fixer.fractions == (1.0,)
    json.loads((tmp_path / "tiny" / "run.json").read_text())


def test_readme_your_own_model_runs_as_written(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Your own model"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "pwfn_viz.Fixer(" in code and "fixer.fix(fraction)" in code
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    run = namespace["run"]
    assert run.complete and len(run.rounds) == len(pwfn_viz.PAPER_FRACTIONS)


def test_round_record_doctests():
    import doctest

    from pwfn_viz.train import round_record
    assert doctest.testmod(round_record).failed == 0
