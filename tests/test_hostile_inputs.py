"""Inputs a careless or hostile user may give: tied, frozen and unsupported layers in ``convert``,
absurd weight magnitudes in a clustering round, non-finite and invalid settings, unwritable output
paths, strict JSON records and their file mode, bad model settings in a record."""
import json
import math
import os
import stat
import warnings

import pytest
import torch
import torch.nn as nn

from pwfn_viz.cli import main
from pwfn_viz.constants import MAX_CENTRE_EXPONENT, MAX_POWERS, MAX_ZERO_BAND_EXPONENT
from pwfn_viz.core import bayes
from pwfn_viz.core.clustering import ClusterConfig, candidate_centres, cluster_round
from pwfn_viz.core.clustering_readable import readable_cluster_round
from pwfn_viz.core.device import resolve_device
from pwfn_viz.record import strict_json
from pwfn_viz.record.storage import atomic_write_text
from pwfn_viz.models.spec import validate_model_spec
from pwfn_viz.train.config import RunConfig


# ------------------------------------------------------------------------------ convert
def test_tied_linear_layers_are_refused_with_their_names():
    a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    b.weight = a.weight
    with pytest.raises(ValueError, match=r"0\.weight and 1\.weight are one tied parameter.*nn\.Parameter"):
        bayes.convert(nn.Sequential(a, b))


def test_head_tied_to_an_embedding_is_refused():
    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.head = nn.Embedding(10, 4), nn.Linear(4, 10, bias=False)
            self.head.weight = self.embed.weight

        def forward(self, x):
            return self.head(self.embed(x))

    model = LM()
    with pytest.raises(ValueError, match=r"embed\.weight and head\.weight"):
        bayes.convert(model)
    assert not any(bayes.is_converted(m) for m in model.modules())   # refused before touching anything


def test_unconverted_modules_are_named_in_one_warning():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.bil = nn.LSTM(4, 8), nn.Bilinear(4, 4, 2)
            self.attn, self.head = nn.MultiheadAttention(8, 2), nn.Linear(8, 2)

    with pytest.warns(UserWarning) as caught:
        bayes.convert(Mixed())
    texts = [str(w.message) for w in caught if "deterministic" in str(w.message)]
    assert len(texts) == 1
    for part in ("rnn (LSTM, 448 parameters)", "bil (Bilinear, 34 parameters)", "attn (MultiheadAttention",
                 "attn.out_proj"):
        assert part in texts[0]


def test_embeddings_are_named_only_when_they_hold_most_weights():
    small = nn.Sequential(nn.Embedding(2, 2), nn.Linear(2, 50))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bayes.convert(small)
    big = nn.Sequential(nn.Embedding(1000, 16), nn.Linear(16, 2))
    with pytest.warns(UserWarning, match=r"0 \(Embedding, 16,000 parameters\)"):
        bayes.convert(big)


def test_frozen_layers_stay_frozen_and_unconverted():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    with pytest.warns(UserWarning, match=r"0 \(frozen \(requires_grad=False\), 20 parameters\)"):
        bayes.convert(model)
    assert not bayes.is_converted(model[0]) and bayes.is_converted(model[2])
    assert not model[0].weight.requires_grad and not model[0].bias.requires_grad
    assert [t.name for t in bayes.bayes_tensors(model)] == ["2.weight", "2.bias"]


def test_a_plain_model_converts_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bayes.convert(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 2)))


def test_negative_constant_sigma_is_refused():
    with pytest.raises(ValueError, match="must be a finite number >= 0"):
        bayes.convert(nn.Linear(2, 2), "constant", value=-1.0)
    with pytest.raises(ValueError, match="sigma_init_value=-1"):
        RunConfig(sigma_init="constant", sigma_init_value=-1)


# -------------------------------------------------------------------- absurd magnitudes
@pytest.mark.parametrize("big", [1e10, 1e30])
@pytest.mark.parametrize("round_fn", [cluster_round, readable_cluster_round])
def test_huge_weights_cluster_with_a_bounded_candidate_set(big, round_fn):
    mu, sigma = torch.tensor([big, 0.3, -0.01]), torch.full((3,), 0.01)
    result = round_fn(mu, sigma, 1.0)
    assert bool(result.fixed_mask.all()) and len(result.steps) <= 3
    assert result.mu.tolist()[1:] == [0.28125, 0.0]       # the ordinary weights as without the outlier
    largest = MAX_POWERS * 2.0 ** MAX_CENTRE_EXPONENT
    assert abs(result.mu[0].item()) <= largest
    assert len(candidate_centres(MAX_POWERS, big)) == len(candidate_centres(MAX_POWERS, largest))


def test_huge_weights_give_the_same_round_in_both_implementations():
    mu = torch.tensor([3e12, -2e7, 0.3, -0.01, 0.5, 1e20]); sigma = torch.full((6,), 0.02)
    fast, readable = cluster_round(mu, sigma, 1.0), readable_cluster_round(mu, sigma, 1.0)
    assert torch.equal(fast.mu, readable.mu) and torch.equal(fast.assignment, readable.assignment)
    assert fast.steps.equals(readable.steps)


def test_candidate_count_is_bounded_for_any_finite_magnitude():
    n = len(candidate_centres(MAX_POWERS, 2.0 ** (MAX_CENTRE_EXPONENT + 2)))
    assert len(candidate_centres(MAX_POWERS, 1.7e308)) == n < 100_000
    assert len(candidate_centres(1, 1.0)) == 15                     # ordinary magnitudes unchanged


def test_negative_and_absurd_b_are_refused():
    for b in (-1, MAX_ZERO_BAND_EXPONENT + 1, 1e9, 7.5):
        with pytest.raises(ValueError, match="b=.*whole number from 0"):
            ClusterConfig(b=b)
    for bad in (dict(delta=math.nan), dict(delta=math.inf), dict(sigma_floor=-1.0)):
        with pytest.raises(ValueError, match="positive finite"):
            ClusterConfig(**bad)


def test_negative_sigma_is_floored_not_refused():
    """A raw sigma may go negative in training (docs/method.md, section 1): clustering floors it."""
    mu = torch.tensor([0.5, 0.26]); sigma = torch.tensor([-1.0, 0.02])
    assert cluster_round(mu, sigma, 1.0).mu.tolist() == readable_cluster_round(mu, sigma, 1.0).mu.tolist()


# ------------------------------------------------------------------- run settings
FLOAT_FIELDS = ["lr", "pretrain_epochs", "pretrain_lr", "first_round_epochs", "epochs_per_round", "momentum",
                "weight_decay", "grad_clip", "sigma_init_value", "reg_lambda", "reg_cap", "sigma_lr_mult", "wfn_delta"]


@pytest.mark.parametrize("name", FLOAT_FIELDS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_settings_are_refused(name, value):
    with pytest.raises(ValueError, match=f"{name}=.* must be a finite number"):
        RunConfig(**{name: value})


def test_negative_settings_are_refused():
    for name in ("weight_decay", "grad_clip", "reg_lambda", "reg_cap", "momentum"):
        with pytest.raises(ValueError, match=f"{name}=-1"):
            RunConfig(**{name: -1.0})


@pytest.mark.parametrize("argv, message", [
    (["run", "--epochs", "nan"], "epochs_per_round=nan must be a finite number"),
    (["run", "--lr", "inf"], "lr=inf must be a finite number"),
    (["run", "--device", "bogus"], "device='bogus' is not a device"),
    (["run", "--threads", "-1"], "threads=-1 must be a whole number >= 0"),
])
def test_cli_refuses_bad_run_options_clearly(argv, message, capsys, tmp_path):
    assert main(argv + ["--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert message in capsys.readouterr().err


def test_resolve_device_refuses_a_bogus_name():
    with pytest.raises(ValueError, match="not a device"):
        resolve_device("bogus")


def test_cli_refuses_unwritable_output_files(capsys, tmp_path):
    assert main(["export", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert main(["compare", str(tmp_path), "--csv", str(tmp_path / "missing" / "dir" / "x.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err


# ------------------------------------------------------------------------ records
def test_strict_json_writes_null_for_non_finite_numbers():
    meta = {"rounds": [{"top1": math.nan, "nll": math.inf, "loss": -math.inf, "n": 3, "x": 0.25}], "t": (1.0,)}
    text = strict_json.dumps(meta, indent=1)
    assert "NaN" not in text and "Infinity" not in text
    back = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert back["rounds"][0] == {"top1": None, "nll": None, "loss": None, "n": 3, "x": 0.25}
    assert math.isnan(strict_json.nan_for_null(back["rounds"][0])["top1"])
    finite = {"a": [1.5, 2, "s", None, True], "b": {"c": 1e-300}}
    assert strict_json.dumps(finite, indent=1) == json.dumps(finite, indent=1)


def test_record_files_follow_the_umask(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    atomic_write_text(tmp_path / "run.json", "{}")
    assert stat.S_IMODE((tmp_path / "run.json").stat().st_mode) == 0o666 & ~umask   # as open() would give


@pytest.mark.parametrize("spec, message", [
    ({"name": "", "num_classes": 10, "in_chans": 1}, "non-empty string"),
    ({"name": 3, "num_classes": 10, "in_chans": 1}, "non-empty string"),
    ({"name": "digits_cnn", "num_classes": -1, "in_chans": 1}, "num_classes=-1"),
    ({"name": "digits_cnn", "num_classes": 10, "in_chans": 1, "kwargs": ["x"]}, "mapping of keyword"),
    ({"name": "digits_cnn", "num_classes": 10, "in_chans": 1, "kwargs": {"num_classes": 3}}, "set by the run"),
])
def test_bad_model_specs_are_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        validate_model_spec(spec, "run.json model_spec")


def test_run_config_refuses_bad_model_settings():
    with pytest.raises(ValueError, match="non-empty string"):
        RunConfig(model="")
    with pytest.raises(ValueError, match="set by the run"):
        RunConfig(model_kwargs={"in_chans": 3})
