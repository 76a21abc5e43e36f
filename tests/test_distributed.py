"""Multi-process runs (gloo, 2 CPU processes via torchrun) and the large-scale training options:
mixed precision, channels_last, torch.compile, paper presets."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pwfn_viz
from pwfn_viz import RunConfig
from pwfn_viz.train import distributed
from pwfn_viz.train.presets import PRESETS, PUBLISHED

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--model", "digits_mlp", "--pretrain-epochs", "2", "--epochs", "0.5", "--fractions", "0.4,0.8,1.0",
        "--quiet"]


def _torchrun(out, nproc=2):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(nproc), "-m", "pwfn_viz", "run", "--out", str(out), *ARGS],
                          env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_two_process_gloo_run_matches_single_process_structure(tmp_path):
    proc = _torchrun(tmp_path / "ddp")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("top1_after") == 1          # only rank 0 prints the table
    ddp = pwfn_viz.load_run(tmp_path / "ddp")
    assert ddp.complete and ddp.meta["world_size"] == 2
    # both ranks end every round with bitwise identical parameters, buffers and fixed masks
    assert all(m["ranks_identical"] for m in ddp.meta["rounds"])
    from pwfn_viz.cli import main
    assert main(["run", "--out", str(tmp_path / "single"), *ARGS]) == 0
    single = pwfn_viz.load_run(tmp_path / "single")
    assert sorted(os.listdir(ddp.path)) == sorted(os.listdir(single.path))
    assert set(ddp.meta) == set(single.meta) and ddp.meta["tensors"] == single.meta["tensors"]
    assert [set(m) - {"ranks_identical"} for m in ddp.meta["rounds"]] == [set(m) for m in single.meta["rounds"]]
    for a, b in zip(ddp.rounds, single.rounds):
        assert set(a.tensors) == set(b.tensors)
        assert all(a.tensors[k].shape == b.tensors[k].shape for k in a.tensors)
        assert a.metrics["n_fixed"] == b.metrics["n_fixed"]
    assert bool(ddp.rounds[-1].flat()[2].all())
    # the sharded evaluation counts every test sample once: accuracy is a multiple of 1/360
    assert round(ddp.baseline["top1"] * 360 / 100, 6) == round(ddp.baseline["top1"] * 360 / 100)


def test_distributed_helpers_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = distributed.setup("cpu")
    assert not info.enabled and info.is_main
    data = list(range(10))
    assert distributed.eval_shard(data, info) is data
    shards = [list(distributed.eval_shard(data, distributed.DistInfo(r, 3))) for r in range(3)]
    assert sorted(sum(shards, [])) == data and shards[1] == [1, 4, 7]
    assert distributed.sum_across([1.0, 2.0], info) == [1.0, 2.0]


FAST = dict(model="digits_cnn", pretrain_epochs=1, first_round_epochs=0.1, epochs_per_round=0.2,
            fractions=(0.5, 1.0), threads=1)


@pytest.mark.parametrize("options", [dict(amp="bf16"), pytest.param(dict(amp="fp16"), marks=pytest.mark.slow),
                                     dict(channels_last=True),
                                     pytest.param(dict(compile=True, compile_backend="eager"), marks=pytest.mark.slow)])
def test_training_options_run_end_to_end(tmp_path, options):
    run = pwfn_viz.run(RunConfig(**FAST, **options), tmp_path / "opt", progress=False, verbose=False)
    assert run.complete and bool(run.rounds[-1].flat()[2].all())
    assert all(run.config[k] == v for k, v in options.items())


def test_bad_amp_is_refused():
    with pytest.raises(ValueError, match="amp='int8'"):
        RunConfig(amp="int8")


@pytest.mark.slow
def test_presets_follow_the_paper_and_print_published_numbers(tmp_path, capsys):
    paper = [name for name in PRESETS.names() if name.endswith("-imagenet")]
    assert len(paper) == 5 and set(PRESETS.names()) - set(paper) == {"digits-demo"}
    for name in paper:
        cfg = RunConfig.from_preset(name, data_root="/data/imagenet")
        assert cfg.lr == 1e-3 and cfg.momentum == 0.9 and cfg.weight_decay == 1e-4 and cfg.grad_clip == 1.0
        assert cfg.batch_size == 128 and cfg.epochs_per_round == 3 and cfg.first_round_epochs == 0.05
        assert cfg.fractions == pwfn_viz.PAPER_FRACTIONS and cfg.pretrained and cfg.preset == name
        # the paper's training of sigma: its own parameter, the same learning rate, epochs not steps
        assert cfg.sigma_lr_mult == 1.0 and cfg.sigma_param == "raw"
        assert cfg.steps_per_round is None and cfg.first_round_steps is None
        assert name in PUBLISHED
        assert {k: v for k, v in cfg.to_dict().items() if k in ("sigma_lr_mult", "sigma_param", "steps_per_round")} \
            == {"sigma_lr_mult": 1.0, "sigma_param": "raw", "steps_per_round": None}
    with pytest.raises(ValueError, match="unknown preset 'resnet9'.*resnet18-imagenet"):
        RunConfig.from_preset("resnet9")
    # a preset shrunk to CPU size runs end to end and prints the published numbers at the end
    cfg = RunConfig.from_preset("resnet18-imagenet", dataset="synthetic", pretrained=False, image_size=32,
                                batch_size=64, epochs_per_round=0.2, first_round_epochs=0.1,
                                fractions=(0.5, 1.0), threads=1)
    run = pwfn_viz.run(cfg, tmp_path / "preset", progress=False, verbose=True)
    assert run.complete
    assert "published by WFN, Subia-Waud & Dasmahapatra, ECCV 2022 (value-only predecessor): delta 0.0075: 193 unique" in capsys.readouterr().err + \
        (tmp_path / "preset" / "log.txt").read_text()
