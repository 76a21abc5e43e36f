"""The rounds pipeline end to end: records, replay, reproducibility, resume after a kill, the CLI."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import pwfn_viz
from pwfn_viz.core import bayes
from pwfn_viz import RunConfig, load_run
from pwfn_viz.core.bayes import bayes_tensors
from pwfn_viz.cli import main
from pwfn_viz.data.datasets import create_dataset, make_loader
from pwfn_viz.core.metrics import codebook_stats, evaluate
from pwfn_viz.models.factory import create_model
from pwfn_viz.train import fixer

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(model="digits_mlp", pretrain_epochs=3, first_round_epochs=0.1, epochs_per_round=0.5,
            fractions=(0.3, 0.7, 1.0), threads=1)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "quick"
    return pwfn_viz.run(RunConfig(**FAST), out, progress=False, verbose=False)


def test_run_record_round_trip(quick_run):
    run = quick_run
    assert run.complete and [r.index for r in run.rounds] == [0, 1, 2]
    table = run.table()
    assert list(table["fraction"]) == [0.3, 0.7, 1.0]
    names = list(run.meta["tensors"])
    n_total = run.meta["n_converted"]
    data = create_dataset("digits")
    loader = make_loader(data.test, 512)
    for r in run.rounds:
        mu, sigma, fixed = r.flat()
        assert mu.numel() == n_total and list(r.mu) == names
        # n_fixed and the greedy-step table agree with the tensors
        assert int(fixed.sum()) == r.metrics["n_fixed"] == int(r.steps["n_taken"].sum())
        assert r.metrics["n_fixed"] == pwfn_viz.core.clustering.target_count(r.fraction, n_total)
        # every fixed weight sits on a centre chosen in that round
        centres = torch.tensor(r.steps["centre"].values, dtype=mu.dtype)
        assert torch.isin(mu[fixed], centres).all()
        # recorded metrics are reproduced from the stored tensors and the rebuilt model
        assert codebook_stats(mu) == {k: r.metrics[k] for k in ("unique", "unique_nonzero", "entropy",
                                                                "entropy_nonzero")}
        model = run.model_at(r.index)
        assert evaluate(model, loader)["top1"] == pytest.approx(r.metrics["top1_after"])
        # pre-snap tensors are the previous round's post-snap fixed mask
        pre_fixed = r.flat("pre")[2]
        expected_pre = run.rounds[r.index - 1].flat()[2] if r.index else torch.zeros_like(pre_fixed)
        assert torch.equal(pre_fixed, expected_pre)
    # the final model: every converted weight on a centre, few unique values
    final = run.model_at(-1)
    assert all(bool(t.fixed.all()) for t in bayes_tensors(final))
    assert run.rounds[-1].metrics["unique"] == len(torch.unique(run.rounds[-1].flat()[0]))
    assert run.rounds[-1].metrics["unique"] <= 300
    # the start snapshot is the converted, unfixed model
    start = run.model_at(None)
    assert not any(bool(t.fixed.any()) for t in bayes_tensors(start))
    assert evaluate(start, loader)["top1"] == pytest.approx(run.baseline["top1"])
    assert "Round(2: fixed 100.0%" in repr(run.rounds[2]) and "complete" in repr(run)
    assert "<table" in run._repr_html_()
    meta = json.loads((run.path / "run.json").read_text())
    assert meta["versions"]["torch"] and meta["seed"] == 0 and meta["device"] == "cpu"
    assert (run.path / "log.txt").read_text().count("round ") >= 3


def test_same_seed_same_run(quick_run, tmp_path):
    again = pwfn_viz.run(RunConfig(**FAST), tmp_path / "again", progress=False, verbose=False)
    strip = lambda rows: [{k: v for k, v in m.items() if k != "seconds"} for m in rows]  # noqa: E731
    assert strip(again.meta["rounds"]) == strip(quick_run.meta["rounds"])
    for a, b in zip(again.rounds, quick_run.rounds):
        for x, y in zip(a.flat(), b.flat()):
            assert torch.equal(x, y)


class _Stopped(Exception):
    """Raised by a patched round writer to end a run early, in-process."""


def _assert_same_rounds(a_run, b_run):
    assert len(a_run.rounds) == len(b_run.rounds)
    for a, b in zip(a_run.rounds, b_run.rounds):
        for which in ("pre", "post"):
            for x, y in zip(a.flat(which), b.flat(which)):
                assert torch.equal(x, y)


def test_resume_in_process_equals_uninterrupted(quick_run, tmp_path, monkeypatch):
    out = tmp_path / "interrupted"
    write_round = fixer.write_round

    def write_then_stop(out_dir, r, *args):
        write_round(out_dir, r, *args)
        if r == 0:
            raise _Stopped

    monkeypatch.setattr(fixer, "write_round", write_then_stop)
    with pytest.raises(_Stopped):
        pwfn_viz.run(RunConfig(**FAST), out, progress=False, verbose=False)
    monkeypatch.undo()
    part = load_run(out)
    assert not part.complete and len(part.rounds) == 1
    (out / ".round_01.safetensors.abc.tmp").write_bytes(b"half a file")
    done = pwfn_viz.run(resume=out, progress=False, verbose=False)
    assert done.complete and not list(out.glob(".*.tmp"))
    _assert_same_rounds(done, quick_run)


# The child of test_resume_after_kill: a run of the config in argv[2] into argv[1] that ends with
# os._exit (no cleanup, no atexit, no flushing: as abrupt as SIGKILL) at the kill point argv[3]
# ("train@S": before optimiser step S of the round's training) of round argv[4]. The hooks wrap
# internal functions of pwfn_viz.train.loop (training) and pwfn_viz.train.fixer (the record).
KILL_SCRIPT = """
import json, os, sys
import pwfn_viz
from pwfn_viz.train import fixer, loop, round_record

out, config, k = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[4])
point, _, step = sys.argv[3].partition("@")
KILLED = 86

def after(fn, when):
    def wrapper(*args, **kwargs):
        result = fn(*args, **kwargs)
        if when(*args, **kwargs):
            os._exit(KILLED)
        return result
    return wrapper

if point == "train":        # in round k's training, before its optimiser step number `step`
    train_steps, optimizer_step = loop.train_steps, loop.optimizer_step
    def train_round(*args, desc="", **kwargs):
        if desc != f"round {k} train":
            return train_steps(*args, desc=desc, **kwargs)
        counter = iter(range(1, 1_000_000))
        def step_or_die(*a, **kw):
            if next(counter) == int(step):
                os._exit(KILLED)
            return optimizer_step(*a, **kw)
        loop.optimizer_step = step_or_die
        try:
            return train_steps(*args, desc=desc, **kwargs)
        finally:
            loop.optimizer_step = optimizer_step
    loop.train_steps = train_round
elif point == "tensors":    # round k's tensors saved, its table rows and run.json not yet
    round_record.atomic_save_tensors = after(round_record.atomic_save_tensors,
                                      lambda path, *a, **kw: path.name == fixer.round_file(k))
elif point == "steps":      # round k's rows appended to steps.csv, layers.csv and run.json not yet
    round_record.atomic_append_csv = after(round_record.atomic_append_csv,
                                    lambda path, frame: path.name == "steps.csv" and (frame["round"] == k).all())
elif point == "tables":     # round k's rows appended to steps.csv and layers.csv, run.json not yet
    round_record.atomic_append_csv = after(round_record.atomic_append_csv,
                                    lambda path, frame: path.name == "layers.csv" and (frame["round"] == k).all())
elif point == "committed":  # round k committed (run.json written), round k + 1 not begun
    fixer.write_round = after(fixer.write_round, lambda out_dir, r, *a: r == k)
else:
    raise ValueError(point)
pwfn_viz.run(pwfn_viz.RunConfig.from_dict(config), out, progress=False, verbose=False)
sys.exit(0)   # the kill point was never reached
"""


@pytest.mark.slow
@pytest.mark.parametrize("point, k, committed", [
    ("train@1", 0, 0),     # nothing committed yet: resume starts from start.safetensors
    ("train@3", 1, 1),     # round 1 takes 6 steps: killed half-way through its training
    ("tensors", 1, 1),
    ("steps", 1, 1),
    ("tables", 1, 1),      # steps.csv and layers.csv already hold round 1's rows
    ("committed", 1, 2),
])
def test_resume_after_kill(quick_run, tmp_path, point, k, committed):
    """A process killed hard at a chosen point of a round, then resumed to the end, leaves the same
    record as the uninterrupted run: tensors bitwise, metrics and tables row for row."""
    out = tmp_path / "killed"
    script = tmp_path / "kill_run.py"
    script.write_text(KILL_SCRIPT)
    config = json.dumps(RunConfig(**FAST).to_dict())
    proc = subprocess.run([sys.executable, str(script), str(out), config, point, str(k)],
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 86, f"the kill point was not reached (exit {proc.returncode}):\n{proc.stderr}"
    assert len(json.loads((out / "run.json").read_text())["rounds"]) == committed
    if point in ("steps", "tables"):
        assert k in set(pd.read_csv(out / "steps.csv")["round"])
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    resumed = load_run(out)
    assert resumed.complete
    _assert_same_rounds(resumed, quick_run)
    strip = lambda rows: [{k: v for k, v in m.items() if k != "seconds"} for m in rows]  # noqa: E731
    assert strip(resumed.meta["rounds"]) == strip(quick_run.meta["rounds"])
    for table in ("steps.csv", "layers.csv"):   # no duplicate rows from the killed round
        pd.testing.assert_frame_equal(pd.read_csv(out / table), pd.read_csv(quick_run.path / table), check_exact=True)


def test_checkpoint_is_loaded_safely(tmp_path):
    torch.manual_seed(3)
    model = create_model("digits_mlp")
    ckpt = tmp_path / "mlp.pt"
    torch.save(model.state_dict(), ckpt)
    run = pwfn_viz.run(RunConfig(**{**FAST, "pretrain_epochs": 0, "checkpoint": str(ckpt)}), tmp_path / "ck",
                       progress=False, verbose=False)
    loader = make_loader(create_dataset("digits").test, 512)
    assert run.baseline["top1"] == pytest.approx(evaluate(model, loader)["top1"])


def test_cli_run_prints_table(tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path / "cli"), "--model", "digits_mlp", "--pretrain-epochs", "1",
                 "--epochs", "0.2", "--fractions", "0.5,1.0", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "round  1 | fixed 100.0%" in out and "top1_after" in out and "entropy_nonzero" in out
    assert main(["show", str(tmp_path / "cli"), "--layers"]) == 0
    assert "sigma_median" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["run", "--model", "no_such_net", "--out", "{tmp}/a"], "digits_cnn"),
    (["run", "--dataset", "imagenet22k", "--out", "{tmp}/b"], "available: "),
    (["run", "--dataset", "mnist", "--data-root", "{tmp}/nowhere", "--out", "{tmp}/c"], "nowhere"),
    (["run", "--fractions", "0.5,0.9", "--out", "{tmp}/d"], "must be 1.0"),
    (["run", "--fractions", "0.5,0.4,1.0", "--out", "{tmp}/e"], "increasing"),
    (["run", "--resume", "{tmp}/missing"], "nothing to resume"),
    (["run", "--out", "{tmp}/full"], "not empty"),
    (["show", "{tmp}"], "not a pwfn_viz run directory"),
])
def test_cli_clear_errors(tmp_path, capsys, argv, message):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    code = main([a.format(tmp=tmp_path) for a in argv])
    assert code == 2
    assert message in capsys.readouterr().err


def test_module_entry_point_lists_models():
    out = subprocess.run([sys.executable, "-m", "pwfn_viz", "list"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True).stdout
    assert "digits_cnn" in out and "digits" in out


def test_plain_model_equals_converted_model(quick_run):
    x = torch.randn(16, 1, 8, 8)
    for i in (None, 0, -1):
        plain = quick_run.plain_model_at(i)
        assert not any(bayes.is_converted(m) for m in plain.modules())
        with torch.no_grad():
            assert torch.equal(plain(x), quick_run.model_at(i)(x))
    with pytest.raises(IndexError, match="rounds 0..2"):
        quick_run.model_at(7)

