"""One writer per run directory, unique default names, the output directory checked before any
training, resume options, and kill-then-resume at every point of a round's writes (your own loop)."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import pwfn_viz
from pwfn_viz import RunConfig, load_run
from pwfn_viz.cli import main
from pwfn_viz.record import writer
from pwfn_viz.train import fixer, loop

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
KILLED = 86
TINY = dict(model="digits_mlp", pretrain_epochs=0, first_round_steps=2, steps_per_round=2, fractions=(0.5, 1.0),
            threads=1, device="cpu")

# A user's own loop (fix_in_rounds, resume=True) into argv[1], killed with os._exit (as abrupt as
# SIGKILL) at the point argv[2] of round argv[3]; "none" runs to the end. "*_tmp" points kill after
# a file's temporary copy is written and before its rename (the middle of a rewrite).
FIXER_SCRIPT = """
import os, sys, torch, torch.nn as nn
import pwfn_viz
from pwfn_viz.train import fixer, round_record

torch.set_num_threads(1)
out, point, k = sys.argv[1], sys.argv[2], int(sys.argv[3])

def after(fn, when):
    def wrapper(*args, **kwargs):
        result = fn(*args, **kwargs)
        if when(*args, **kwargs):
            os._exit(86)
        return result
    return wrapper

def kill_at_rename(name, nth):       # the nth rename onto `name`: its temporary is written, not renamed
    replace, seen = os.replace, [0]
    def hooked(src, dst):
        if os.path.basename(str(dst)) == name:
            seen[0] += 1
            if seen[0] == nth:
                os._exit(86)
        return replace(src, dst)
    os.replace = hooked

def rows_of(name):
    return lambda path, frame: path.name == name and (frame["round"] == k).all()

if point == "start_tensors":         # the very first write: start.safetensors, no run.json yet
    fixer.atomic_save_tensors = after(fixer.atomic_save_tensors, lambda path, *a, **kw: path.name == "start.safetensors")
elif point == "start_tmp":
    kill_at_rename("start.safetensors", 1)
elif point == "tensors":             # round k's tensors saved
    round_record.atomic_save_tensors = after(round_record.atomic_save_tensors,
                                      lambda path, *a, **kw: path.name == fixer.round_file(k))
elif point == "steps":               # ... and its rows of steps.csv
    round_record.atomic_append_csv = after(round_record.atomic_append_csv, rows_of("steps.csv"))
elif point == "layers":              # ... and of layers.csv: everything but run.json
    round_record.atomic_append_csv = after(round_record.atomic_append_csv, rows_of("layers.csv"))
elif point == "layers_tmp":          # in the middle of rewriting layers.csv
    kill_at_rename("layers.csv", k + 1)
elif point == "runjson_tmp":         # run.json's temporary written, not renamed
    kill_at_rename("run.json", k + 2)
elif point == "committed":           # round k committed
    fixer.write_round = after(fixer.write_round, lambda out_dir, r, *a: r == k)
elif point == "reopen_tmp":          # a resume killed while it drops uncommitted rows from steps.csv
    kill_at_rename("steps.csv", 1)
elif point != "none":
    raise ValueError(point)

torch.manual_seed(0)
x = torch.randn(256, 8)
y = (x[:, 0] + x[:, 1] > 0).long()
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
evaluate = lambda m: {"top1": 100.0 * (m(x).argmax(1) == y).float().mean().item()}
pwfn_viz.fix_in_rounds(model, loader, nn.functional.cross_entropy, evaluate, out, resume=True,
                       fractions=(0.3, 0.6, 1.0), steps_per_round=4, progress=False, verbose=False)
"""


def _child(script: Path, *args, expect=0):
    proc = subprocess.run([sys.executable, str(script), *map(str, args)], env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == expect, f"exit {proc.returncode} (expected {expect}):\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def fixer_script(tmp_path_factory):
    script = tmp_path_factory.mktemp("scripts") / "fixer_loop.py"
    script.write_text(FIXER_SCRIPT)
    return script


@pytest.fixture(scope="module")
def uninterrupted(fixer_script, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    _child(fixer_script, out, "none", 0)
    return out


def _assert_same_record(a: Path, b: Path):
    """The same record: every tensor file bitwise, the tables row for row, run.json's rounds."""
    names = sorted(p.name for p in a.iterdir() if p.name.endswith(".safetensors"))
    assert names == sorted(p.name for p in b.iterdir() if p.name.endswith(".safetensors"))
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    for table in ("steps.csv", "layers.csv"):   # no duplicate (nor missing) rows
        pd.testing.assert_frame_equal(pd.read_csv(a / table), pd.read_csv(b / table), check_exact=True)
    strip = lambda rows: [{k: v for k, v in m.items() if k != "seconds"} for m in rows]  # noqa: E731
    ma, mb = (json.loads((d / "run.json").read_text()) for d in (a, b))
    assert strip(ma["rounds"]) == strip(mb["rounds"]) and ma["status"] == mb["status"] == "complete"
    assert not list(a.glob(".*.tmp")) and not writer.read_holder(a)


@pytest.mark.parametrize("point, k", [
    ("start_tensors", 0), ("start_tmp", 0),               # before the first run.json
    ("tensors", 1), ("steps", 1), ("layers", 1), ("layers_tmp", 1), ("runjson_tmp", 1), ("committed", 1),
    ("tensors", 0), ("layers", 2), ("runjson_tmp", 2),
])
def test_kill_at_every_write_then_resume_equals_uninterrupted(fixer_script, uninterrupted, tmp_path, point, k):
    out = tmp_path / "killed"
    _child(fixer_script, out, point, k, expect=KILLED)
    assert not (out / "run.json").exists() if point.startswith("start") else (out / "run.json").exists()
    _child(fixer_script, out, "none", 0)   # resume (or, before any run.json, a clean restart)
    _assert_same_record(out, uninterrupted)


def test_kill_while_resume_drops_uncommitted_rows(fixer_script, uninterrupted, tmp_path):
    out = tmp_path / "killed"
    _child(fixer_script, out, "layers", 1, expect=KILLED)        # round 1's rows written, not committed
    _child(fixer_script, out, "reopen_tmp", 0, expect=KILLED)    # the resume killed mid-rewrite of steps.csv
    assert 1 in set(pd.read_csv(out / "steps.csv")["round"])     # the old file stands, rows still there
    _child(fixer_script, out, "none", 0)
    _assert_same_record(out, uninterrupted)


# ------------------------------------------------------------------------------------------ lock
# A run of TINY into argv[1] that pauses inside round 0's write (after its tensors, with a
# temporary file of its own beside them) until argv[2] exists, announcing the pause in argv[3].
PAUSED_SCRIPT = """
import json, os, sys, time
import pwfn_viz
from pwfn_viz.train import fixer, round_record

out, go, ready, config = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
save = round_record.atomic_save_tensors
def save_then_wait(path, *args, **kwargs):
    result = save(path, *args, **kwargs)
    if path.name == fixer.round_file(0):
        (path.parent / ".steps.csv.live.tmp").write_text("a write in progress")
        open(ready, "w").close()
        while not os.path.exists(go):
            time.sleep(0.05)
        os.unlink(path.parent / ".steps.csv.live.tmp")
    return result
round_record.atomic_save_tensors = save_then_wait
pwfn_viz.run(pwfn_viz.RunConfig.from_dict(config), out, progress=False, verbose=False)
"""


def _cli(*argv):
    return subprocess.run([sys.executable, "-m", "pwfn_viz", *map(str, argv)], env=ENV, capture_output=True,
                          text=True, timeout=300)


def test_second_writer_and_live_resume_are_refused(tmp_path):
    out, go, ready = tmp_path / "run", tmp_path / "go", tmp_path / "ready"
    script = tmp_path / "paused.py"
    script.write_text(PAUSED_SCRIPT)
    first = subprocess.Popen([sys.executable, str(script), str(out), str(go), str(ready),
                              json.dumps(RunConfig(**TINY).to_dict())], env=ENV, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(1200):
            if ready.exists() or first.poll() is not None:
                break
            time.sleep(0.05)
        assert ready.exists(), first.stderr.read() if first.poll() is not None else "the first run never paused"
        holder = writer.read_holder(out)
        assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()
        before = sorted(p.name for p in out.iterdir())
        second = _cli("run", "--out", out, "--model", "digits_mlp", "--pretrain-epochs", "0", "--quiet")
        resumed = _cli("run", "--resume", out, "--quiet")
        for proc in (second, resumed):
            assert proc.returncode == 2, proc.stderr
            assert "being written by another process" in proc.stderr
            assert f"pid {first.pid} on host {socket.gethostname()}, since {holder['since']}" in proc.stderr
        assert sorted(p.name for p in out.iterdir()) == before   # the live writer's temporary is untouched
        go.touch()
        assert first.wait(timeout=300) == 0, first.stderr.read()
    finally:
        go.touch()
        first.wait(timeout=300)
    run = load_run(out)
    assert run.complete and len(run.rounds) == 2 and not writer.read_holder(out)
    assert not list(out.glob(".*.tmp"))


def test_stale_lock_of_a_killed_writer(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    subprocess.run([sys.executable, "-c", "import os, sys; from pwfn_viz.record.writer import RunLock; "
                    "RunLock(sys.argv[1]).acquire(); os._exit(9)", str(out)], env=ENV, check=False, timeout=120)
    dead = writer.read_holder(out)
    assert dead and dead["host"] == socket.gethostname()
    run = pwfn_viz.run(RunConfig(**TINY), out, progress=False, verbose=False)   # same host, process gone: taken over
    assert run.complete
    assert f"took over the stale lock of a killed writer (pid {dead['pid']} on host {dead['host']}" \
        in (out / "log.txt").read_text()
    # a killed writer of another host cannot be checked: refused, with the command that clears it
    (out / writer.LOCK_NAME).write_text(json.dumps({"pid": 12345, "host": "elsewhere", "since": "then"}))
    with pytest.raises(writer.RunDirectoryLocked, match=f"rm {out / writer.LOCK_NAME}"):
        pwfn_viz.run(resume=out, progress=False, verbose=False)
    assert "elsewhere" in writer.read_holder(out)["host"]   # left as it was


@pytest.mark.parametrize("stop", [KeyboardInterrupt, RuntimeError])
def test_lock_released_on_every_exit(tmp_path, monkeypatch, stop):
    out = tmp_path / "run"
    write_round = fixer.write_round

    def write_then_stop(*args):
        write_round(*args)
        raise stop("stopped")

    monkeypatch.setattr(fixer, "write_round", write_then_stop)
    with pytest.raises(stop):
        pwfn_viz.run(RunConfig(**TINY), out, progress=False, verbose=False)
    assert not writer._HELD and not writer.read_holder(out)
    probe = subprocess.run([sys.executable, "-c", "import sys; from pwfn_viz.record.writer import RunLock; "
                            "RunLock(sys.argv[1]).acquire()", str(out)], env=ENV, capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr   # another process can take it
    monkeypatch.undo()
    assert pwfn_viz.run(resume=out, progress=False, verbose=False).complete
    assert not writer._HELD and not writer.read_holder(out)


# ------------------------------------------------------------------------------------------ names, dirs
def test_default_run_names_never_collide(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    info = pwfn_viz.train.distributed.current()
    suffixes = iter(["aaaaaa", "aaaaaa", "bbbbbb"])   # a clash of the random part is retried
    with monkeypatch.context() as patched:
        patched.setattr(loop.secrets, "token_hex", lambda n: next(suffixes))
        a = loop._out_dir(RunConfig(**TINY), None, info)
        b = loop._out_dir(RunConfig(**TINY), None, info)
    assert a != b and a.is_dir() and b.is_dir() and b.name.endswith("-bbbbbb")
    names = {loop._out_dir(RunConfig(**TINY), None, info) for _ in range(20)}   # the same second, 20 names
    assert len(names) == 20
    assert {p.parent.resolve() for p in names} == {(tmp_path / "runs").resolve()}   # under the test's folder


def test_out_checked_before_training(tmp_path, monkeypatch):
    called = []
    monkeypatch.setattr(loop, "create_dataset", lambda *a, **kw: called.append(1))
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        pwfn_viz.run(RunConfig(**TINY), tmp_path / "file", progress=False, verbose=False)
    with pytest.raises(FileExistsError, match="a parent of it is a file"):
        pwfn_viz.run(RunConfig(**TINY), tmp_path / "file" / "run", progress=False, verbose=False)
    if os.geteuid() != 0:   # root writes anywhere
        locked = tmp_path / "ro"
        locked.mkdir(mode=0o500)
        with pytest.raises(PermissionError, match="cannot write the run directory"):
            pwfn_viz.run(RunConfig(**TINY), locked / "run", progress=False, verbose=False)
    assert not called
    assert main(["run", "--out", str(tmp_path / "file"), "--quiet"]) == 2


def test_killed_before_first_record_restarts_cleanly(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "start.safetensors").write_bytes(b"a start killed before its run.json")
    (out / ".start.safetensors.x1.tmp").write_bytes(b"half")
    assert main(["run", "--resume", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "stopped before its first record was written" in err and f"--out {out}" in err
    run = pwfn_viz.run(RunConfig(**TINY), out, progress=False, verbose=False)
    assert run.complete and not list(out.glob(".*.tmp"))


# ------------------------------------------------------------------------------------------ resume options
def test_resume_honours_runtime_options_and_refuses_the_others(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    full = pwfn_viz.run(RunConfig(**TINY), tmp_path / "full", progress=False, verbose=False)
    write_round = fixer.write_round

    def write_then_stop(out_dir, r, *args):
        write_round(out_dir, r, *args)
        raise KeyboardInterrupt

    monkeypatch.setattr(fixer, "write_round", write_then_stop)
    with pytest.raises(KeyboardInterrupt):
        pwfn_viz.run(RunConfig(**TINY), out, progress=False, verbose=False)
    monkeypatch.undo()
    meta = json.loads((out / "run.json").read_text())
    meta["config"]["device"] = "cuda:7"   # recorded on a machine with GPUs
    (out / "run.json").write_text(json.dumps(meta, indent=1))
    for argv, option in ((["--lr", "0.5"], "--lr"), (["--model", "digits_cnn"], "--model"),
                         (["--seed", "3"], "--seed"), (["--fractions", "0.5,1.0"], "--fractions")):
        assert main(["run", "--resume", str(out), *argv, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"{option} cannot be used with --resume" in err and "would change the result" in err
    with pytest.raises(ValueError, match=r"lr=0.5 \(recorded: 0.001\) would change the result"):
        pwfn_viz.run(RunConfig(**{**TINY, "lr": 0.5}), resume=out, progress=False, verbose=False)
    if not torch.cuda.is_available():   # the recorded device is not here: --device cpu is honoured
        assert main(["run", "--resume", str(out), "--quiet"]) == 2
        assert "--device cpu" in capsys.readouterr().err
    assert main(["run", "--resume", str(out), "--device", "cpu", "--threads", "1", "--quiet"]) == 0
    done = load_run(out)
    assert done.complete and done.meta["config"]["device"] == "cuda:7"   # the record keeps what it recorded
    for a, b in zip(done.rounds, full.rounds):
        for x, y in zip(a.flat(), b.flat()):
            assert torch.equal(x, y)


def test_resume_keeps_python_api(tmp_path):
    out = tmp_path / "run"
    pwfn_viz.run(RunConfig(**TINY), out, progress=False, verbose=False)
    assert pwfn_viz.run(resume=out, progress=False, verbose=False).complete
    assert pwfn_viz.run(RunConfig(**{**TINY, "threads": 2}), resume=out, device="cpu",
                        progress=False, verbose=False).complete
