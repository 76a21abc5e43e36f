"""Registries: every choice made by name lists what exists, refuses duplicates and unknown names
with one clear error (from the Python API and from the command line), and feeds the CLI's choices
and ``pwfn-viz list``."""
from __future__ import annotations

import argparse
import contextlib
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pwfn_viz import cli
from pwfn_viz.baselines.kmeans import kmeans_1d, kmeans_quantize, list_inits, list_scopes, register_init
from pwfn_viz.baselines.kmeans.init import _INITS
from pwfn_viz.baselines.kmeans.quantize import _ALGORITHMS, _SCOPES
from pwfn_viz.core.bayes import SIGMA_INITS
from pwfn_viz.core.clustering import SIGMA_JOINS
from pwfn_viz.data.datasets import _DATASETS, create_dataset, list_datasets, register_dataset
from pwfn_viz.models.factory import _MODELS, create_model, list_models, register_model
from pwfn_viz.core.sigma_param import SIGMA_PARAMS
from pwfn_viz.registry import Registry, check_choice
from pwfn_viz.train.config import METHODS, OPTIMIZERS, PROFILES, RunConfig
from pwfn_viz.train.loop import optimizer_step
from pwfn_viz.train.presets import PRESETS, preset

ROOT = Path(__file__).resolve().parents[1]

# (subcommand, option) -> the entries its choices come from (a Registry, or today's dict/tuple in core)
CLI_CHOICES = {
    ("run", "--method"): METHODS,
    ("run", "--dataset"): _DATASETS,
    ("run", "--optimizer"): OPTIMIZERS,
    ("run", "--sigma-init"): SIGMA_INITS,
    ("run", "--sigma-join"): SIGMA_JOINS,
    ("run", "--preset"): PRESETS,
    ("run", "--sigma-param"): SIGMA_PARAMS,
    ("run", "--profile"): PROFILES,
    ("compare", "--init"): _INITS,
    ("compare", "--scope"): _SCOPES,
}
FIXED_CHOICES = {("run", "--amp"), ("analyse", "--which"), ("run", "--decay"), ("run", "--data-transforms"),
                 ("export", "--format"), ("figures", "--width")}   # not names of registered things

LIST_LABELS = ["models", "datasets", "methods", "optimizers", "presets", "profiles", "sigma inits", "sigma joins",
               "sigma parameterisations", "k-means inits", "k-means scopes"]


@contextlib.contextmanager
def registered(registry: Registry, name: str, entry: object = None):
    """``entry`` registered as ``name`` for the duration of the block."""
    registry.register(name, entry if entry is not None else name)
    try:
        yield
    finally:
        registry.unregister(name)


def option(parser: argparse.ArgumentParser, command: str, flag: str) -> argparse.Action:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return next(a for a in sub._actions if flag in a.option_strings)


def options_with_choices(parser: argparse.ArgumentParser) -> set[tuple[str, str]]:
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    return {(command, a.option_strings[0]) for command, sub in subs.items() for a in sub._actions
            if a.choices is not None and a.option_strings}


# ----------------------------------------------------------------------------- the Registry class


def test_registry_registers_lists_and_explains_unknown_names():
    reg = Registry("colour", hint="or add one with register_colour")
    assert reg.register("red", 1) == 1

    @reg.register("green")
    def green():
        return 2

    assert reg.names() == ["green", "red"] and list(reg) == ["green", "red"] and len(reg) == 2
    assert reg.names("g*") == ["green"] and "red" in reg and "blue" not in reg
    assert reg.get("green") is green and reg["red"] == 1 and reg.items() == [("green", green), ("red", 1)]
    with pytest.raises(ValueError, match=r"^unknown colour 'gren' \(did you mean 'green'\?\); "
                                         r"available: green, red; or add one with register_colour$"):
        reg.get("gren")
    with pytest.raises(ValueError, match=r"^unknown colour 'xyz'; available: green, red;"):
        reg["xyz"]
    assert check_choice(reg, "red") == "red"
    err = reg.unknown("teal", also=["teal_blue", "teals"], n=2)
    assert "did you mean 'teals', 'teal_blue'?" in str(err) and "available: green, red" in str(err)


def test_registry_refuses_duplicates_and_unregisters():
    reg = Registry("colour")
    reg.register("red", 1)
    with pytest.raises(ValueError, match="colour 'red' is already registered"):
        reg.register("red", 2)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("red")(lambda: None)          # the decorator form too
    assert reg.get("red") == 1
    reg.register("red", 3, replace=True)
    assert reg.get("red") == 3
    reg.unregister("red")
    assert "red" not in reg and len(reg) == 0
    with pytest.raises(ValueError, match="unknown colour 'red'"):
        reg.unregister("red")


# ----------------------------------------------------------------------------- the package's registries


def test_each_registry_lists_what_exists():
    assert METHODS.names() == ["pwfn", "wfn"]
    assert OPTIMIZERS.names() == ["adam", "sgd"]
    assert OPTIMIZERS.get("sgd") is torch.optim.SGD and OPTIMIZERS.get("adam") is torch.optim.Adam
    assert list_models() == _MODELS.names() == ["digits_cnn", "digits_mlp"]
    assert list_datasets() == _DATASETS.names() == ["cifar10", "cifar100", "digits", "imagefolder", "mnist",
                                                    "synthetic"]
    assert list_inits() == _INITS.names() == ["density", "kmeans++", "linear", "random"]
    assert list_scopes() == _SCOPES.names() == ["channel", "global", "layer"]
    assert _ALGORITHMS.names() == ["lloyd", "optimal"]
    assert PRESETS.names() == ["deit-small-imagenet", "deit-tiny-imagenet", "digits-demo", "resnet18-imagenet",
                               "resnet34-imagenet", "resnet50-imagenet"]
    assert SIGMA_PARAMS.names() == ["log", "raw"]
    fields = preset("resnet18-imagenet")
    fields["model"] = "changed"                   # preset() hands out a copy
    assert PRESETS.get("resnet18-imagenet")["model"] == "resnet18"
    assert sorted(SIGMA_INITS) == ["constant", "pwfn"] and sorted(SIGMA_JOINS) == ["divide", "keep", "std_mu"]


@pytest.mark.parametrize("call, message", [
    (lambda: RunConfig(method="pwfm"), "unknown method 'pwfm' (did you mean 'pwfn'?); available: pwfn, wfn"),
    (lambda: RunConfig(optimizer="adamw"), "unknown optimizer 'adamw' (did you mean 'adam'?); available: adam, sgd"),
    (lambda: RunConfig.from_preset("resnet9"), "unknown preset 'resnet9'; available: deit-small-imagenet, "),
    (lambda: create_model("digits_cnm"), "unknown model 'digits_cnm' (did you mean 'digits_cnn'"),
    (lambda: create_model("no_such_net"), "unknown model 'no_such_net'; available: digits_cnn, digits_mlp; "
                                          'or any timm model: find them with pwfn_viz.list_models("resnet*")'),
    (lambda: create_dataset("digitz"), "unknown dataset 'digitz' (did you mean 'digits'?); available: cifar10, "),
    (lambda: kmeans_1d([0.0, 1.0, 2.0], 2, init="lineer"),
     "unknown k-means init 'lineer' (did you mean 'linear'?); available: density, kmeans++, linear, random; "
     "or add one with register_init"),
    (lambda: kmeans_quantize({"a": torch.ones(3)}, 2, scope="row"),
     "unknown scope 'row'; available: channel, global, layer"),
    (lambda: kmeans_quantize({"a": torch.ones(3)}, 2, algorithm="fast"),
     "unknown algorithm 'fast'; available: lloyd, optimal"),
])
def test_unknown_names_from_the_python_api(call, message):
    with pytest.raises(ValueError) as err:
        call()
    assert message in str(err.value)


@pytest.mark.parametrize("register, name", [
    (register_model, "digits_cnn"), (register_dataset, "digits"), (register_init, "linear"),
    (METHODS.register, "pwfn"), (PRESETS.register, "resnet18-imagenet"),
])
def test_duplicate_registration_is_refused(register, name):
    with pytest.raises(ValueError, match=f"'{re.escape(name)}' is already registered"):
        register(name)(lambda *a, **k: None)
    assert create_model("digits_cnn") is not None and create_dataset("digits").name == "digits"


def test_duplicate_optimizer_is_refused():
    with pytest.raises(ValueError, match="optimizer 'sgd' is already registered"):
        OPTIMIZERS.register("sgd", torch.optim.Adam)
    assert OPTIMIZERS.get("sgd") is torch.optim.SGD


def test_registered_entries_are_used():
    @register_model("test_linear")
    def test_linear(num_classes=10, in_chans=1):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(in_chans * 64, num_classes))

    try:
        assert "test_linear" in list_models() and create_model("test_linear", num_classes=3)[1].out_features == 3
    finally:
        _MODELS.unregister("test_linear")
    assert "test_linear" not in list_models()


# ----------------------------------------------------------------------------- the command line


def test_cli_choices_are_the_registry_names():
    parser = cli.build_parser()
    for (command, flag), entries in CLI_CHOICES.items():
        assert option(parser, command, flag).choices == sorted(entries), (command, flag)
    # every option that picks from a fixed list is either a registry's or deliberately fixed
    assert options_with_choices(parser) == set(CLI_CHOICES) | FIXED_CHOICES
    assert option(parser, "run", "--model").choices is None   # own models or any timm name


@pytest.mark.parametrize("registry, command, flag, extra", [
    (_DATASETS, "run", "--dataset", []), (METHODS, "run", "--method", []), (OPTIMIZERS, "run", "--optimizer", []),
    (PRESETS, "run", "--preset", []), (_INITS, "compare", "--init", ["RUN_DIR"]),
    (_SCOPES, "compare", "--scope", ["RUN_DIR"]),
])
def test_a_new_entry_is_a_cli_choice_and_listed(capsys, registry, command, flag, extra):
    assert "test_entry" not in option(cli.build_parser(), command, flag).choices
    with registered(registry, "test_entry", {} if registry is PRESETS else None):
        parser = cli.build_parser()
        assert "test_entry" in option(parser, command, flag).choices
        args = parser.parse_args([command, flag, "test_entry", *extra])
        assert getattr(args, flag[2:].replace("-", "_")) == "test_entry"
        assert cli.main(["list"]) == 0
        assert "test_entry" in capsys.readouterr().out
    assert "test_entry" not in option(cli.build_parser(), command, flag).choices


def test_cli_passes_a_registered_method_to_the_config():
    with registered(METHODS, "test_method", METHODS.get("pwfn")):
        assert cli.run_config(["run", "--method", "test_method"]).method == "test_method"
    config = cli.run_config(["run", "--method", "wfn"])
    assert config.method == "wfn" and config.optimizer == "adam"
    assert cli.run_config(["run"]) == RunConfig()


@pytest.mark.parametrize("argv, message", [
    (["run", "--method", "pwfm"], "argument --method: unknown method 'pwfm' (did you mean 'pwfn'?); "
                                  "available: pwfn, wfn"),
    (["run", "--dataset", "digitz"], "argument --dataset: unknown dataset 'digitz' (did you mean 'digits'?); "
                                     "available: cifar10, cifar100, digits, imagefolder, mnist, synthetic"),
    (["run", "--optimizer", "adamw"], "unknown optimizer 'adamw' (did you mean 'adam'?); available: adam, sgd"),
    (["run", "--sigma-init", "pwfm"], "'pwfm' (did you mean 'pwfn'?); available: constant, pwfn"),
    (["run", "--sigma-join", "std"], "'std' (did you mean 'std_mu'?); available: divide, keep, std_mu"),
    (["run", "--preset", "resnet9"], "unknown preset 'resnet9'; available: deit-small-imagenet"),
    (["compare", "RUN", "--init", "kmeans+"], "unknown k-means init 'kmeans+' (did you mean 'kmeans++'?)"),
    (["compare", "RUN", "--scope", "row"], "unknown scope 'row'; available: channel, global, layer"),
    (["run", "--model", "digits_cnm", "--out", "{tmp}/m"], "unknown model 'digits_cnm' (did you mean 'digits_cnn'"),
])
def test_unknown_names_from_the_cli(tmp_path, capsys, argv, message):
    assert cli.main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_unknown_name_in_a_subprocess():
    proc = subprocess.run([sys.executable, "-m", "pwfn_viz", "run", "--dataset", "nope"], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2
    assert "unknown dataset 'nope'; available: cifar10, cifar100, digits" in proc.stderr


def test_help_returns_zero(capsys):
    assert cli.main(["run", "--help"]) == 0
    assert "--sigma-join {" + ",".join(sorted(SIGMA_JOINS)) + "}" in capsys.readouterr().out


def test_list_prints_every_registry(capsys):
    assert list(cli.registries()) == LIST_LABELS
    assert cli.main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == LIST_LABELS
    printed = {line.split(":")[0]: line.split(":", 1)[1].strip() for line in lines}
    expected = {"models": list_models(), "datasets": list_datasets(), "methods": METHODS.names(),
                "optimizers": OPTIMIZERS.names(), "presets": PRESETS.names(),
                "profiles": PROFILES.names(), "sigma inits": sorted(SIGMA_INITS),
                "sigma joins": sorted(SIGMA_JOINS), "sigma parameterisations": SIGMA_PARAMS.names(),
                "k-means inits": list_inits(), "k-means scopes": list_scopes()}
    assert printed == {label: ", ".join(names) for label, names in expected.items()}


def test_list_pattern_adds_timm_models(capsys):
    assert cli.main(["list", "resnet1*"]) == 0
    models = capsys.readouterr().out.splitlines()[0]
    assert models.startswith("models:") and "resnet18" in models and "digits_cnn" not in models


# ----------------------------------------------------------------------------- entry points


def test_optimizer_step_has_no_benchmark_parameters():
    assert list(inspect.signature(optimizer_step).parameters) == ["model", "opt", "loss", "scaler", "grad_clip"]


def test_no_sys_path_edits():
    """The package and the benchmarks import by package name (``python -m benchmarks`` from the
    repository root), never by editing sys.path; bench_clustering reaches tests/ for its reference."""
    sources = sorted((ROOT / "pwfn_viz").rglob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py"))
    edits = [str(p.relative_to(ROOT)) for p in sources
             if re.search(r"sys\.path\.(insert|append|extend)|sys\.path\s*=", p.read_text())
             and p.name != "bench_clustering.py"]
    assert edits == []


def test_benchmarks_run_as_a_module_from_the_repository_root():
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--help"], capture_output=True, text=True,
                          cwd=ROOT, check=True)
    assert "--only" in proc.stdout
