"""Command line: ``pwfn-viz run`` (the main job), ``pwfn-viz show RUN_DIR``, ``pwfn-viz list``.

    pwfn-viz run                                  # digits CNN, all ten rounds, record in runs/...
    pwfn-viz run --model resnet18 --dataset digits --image-size 32 --in-chans 3 --epochs 1
    pwfn-viz run --resume runs/digits_cnn-digits-20261126-120000
    pwfn-viz show runs/digits_cnn-digits-20261126-120000
    pwfn-viz analyse runs/digits_cnn-digits-20261126-120000 --out figures/   # noise + calibration
    pwfn-viz export runs/digits_cnn-digits-20261126-120000 --format entropy  # codebook + entropy-coded indices
    pwfn-viz figures runs/digits_cnn-digits-20261126-120000 --out figures/   # every plot, png/pdf/svg
    pwfn-viz verify runs/digits_cnn-digits-20261126-120000                   # is the record whole? (exit 1 if not)
    pwfn-viz list                                 # every name an option picks from

Every option that picks a name (--method, --dataset, --optimizer, --sigma-init, --sigma-join,
--preset, compare's --init and --scope) takes its choices from the registry behind it, so an entry
registered in Python is a valid choice, and an unknown name gets the registry's error (close names,
then everything available). --model is free text: the own models or any timm model name.
"""
from __future__ import annotations

import argparse
import os
import sys

from .baselines.kmeans.init import _INITS
from .baselines.kmeans.quantize import _SCOPES
from .core.bayes import SIGMA_INITS
from .core.clustering import SIGMA_JOINS, ClusterConfig
from .core.sigma_param import SIGMA_PARAMS
from .data.datasets import _DATASETS
from .models.factory import _MODELS, list_models
from .registry import Registry
from .train.config import DATA_TRANSFORMS, DECAY_MODES, METHODS, OPTIMIZERS, PROFILES
from .train.config import PAPER_FRACTIONS, RunConfig
from .train.presets import PRESETS, preset


def _as_registry(kind: str, entries) -> Registry:
    """``entries`` itself when it is a Registry, else a Registry of its names (a dict's keys, a
    tuple's items)."""
    if isinstance(entries, Registry):
        return entries
    registry = Registry(kind)
    for name in entries:
        registry.register(name, name)
    return registry


def registries() -> dict[str, Registry]:
    """Every registry a name is picked from, under the label ``pwfn-viz list`` prints (models:
    the own ones; timm's are listed by pattern)."""
    return {"models": _MODELS, "datasets": _DATASETS, "methods": METHODS, "optimizers": OPTIMIZERS,
            "presets": PRESETS, "profiles": PROFILES, "sigma inits": _as_registry("sigma init", SIGMA_INITS),
            "sigma joins": _as_registry("sigma join", SIGMA_JOINS), "sigma parameterisations": SIGMA_PARAMS,
            "k-means inits": _INITS,
            "k-means scopes": _SCOPES}


def _name_in(registry: Registry):
    """argparse ``type``: the name when ``registry`` has it, else the registry's error as a usage error."""
    def check(text: str) -> str:
        try:
            registry.get(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        return text
    return check


def _add_choice(parser: argparse.ArgumentParser, flag: str, registry: Registry, **kwargs) -> None:
    """An option whose choices are ``registry``'s names, read when the parser is built."""
    parser.add_argument(flag, type=_name_in(registry), choices=registry.names(), **kwargs)


def _fractions(text: str) -> tuple:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--fractions wants comma-separated numbers like 0.5,1.0, got {text!r}")


def _round(text: str):
    """A round index, or 'start' (None: the network before round 0)."""
    if text == "start":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--round wants an integer (e.g. -1, the last round) or 'start', got {text!r}")


def _formats(text: str) -> tuple:
    """Comma-separated figure formats (png, pdf, svg, ...)."""
    formats = tuple(f.strip().lstrip(".") for f in text.split(",") if f.strip())
    if not formats:
        raise argparse.ArgumentTypeError(f"--formats wants e.g. png,pdf,svg, got {text!r}")
    return formats


def _rounds(text: str) -> tuple:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rounds wants comma-separated round indices like 0,-1, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pwfn-viz", description="Probabilistic weight fixing, recorded and visualised.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="train, convert and fix a network in rounds; write a run directory")
    d = RunConfig()
    reg = registries()
    _add_choice(r, "--method", METHODS, default="pwfn",
                help="pwfn (default) or the value-only WFN baseline (its own schedule, Adam 2e-5)")
    r.add_argument("--wfn-delta", type=float, default=d.wfn_delta, help="WFN's final allowance")
    r.add_argument("--model", default=d.model, help=f"{', '.join(_MODELS.names())} or any timm model name")
    _add_choice(r, "--dataset", _DATASETS, default=d.dataset,
                help="digits is embedded; mnist, cifar10, cifar100 and imagefolder read --data-root")
    r.add_argument("--data-root", default=None, help="local dataset root (mnist/cifar10: torchvision root)")
    r.add_argument("--image-size", type=int, default=None, help="resize inputs to this size")
    r.add_argument("--in-chans", type=int, default=None, help="repeat grey images to this many channels")
    r.add_argument("--pretrained", action="store_true", help="timm pretrained weights (needs the hub)")
    r.add_argument("--checkpoint", default=None, help="local .safetensors or state_dict file to start from")
    r.add_argument("--pretrain-epochs", type=float, default=d.pretrain_epochs,
                   help="deterministic training before conversion (0 for a trained checkpoint)")
    r.add_argument("--pretrain-lr", type=float, default=d.pretrain_lr)
    r.add_argument("--fractions", type=_fractions, default=None,
                   help=f"cumulative fixed fractions, comma separated, ending in 1.0 (pwfn: {PAPER_FRACTIONS})")
    r.add_argument("--first-epochs", type=float, default=d.first_round_epochs, help="training before round 0")
    r.add_argument("--epochs", type=float, default=d.epochs_per_round, help="training before each later round")
    r.add_argument("--first-steps", type=int, default=None, help="training before round 0 in optimiser steps "
                   "(replaces --first-epochs)")
    r.add_argument("--steps", type=int, default=None, help="training before each later round in optimiser steps "
                   "(replaces --epochs)")
    r.add_argument("--sigma-lr-mult", type=float, default=None,
                   help=f"sigma's learning rate is lr times this (default {d.sigma_lr_mult}; 0 freezes sigma)")
    _add_choice(r, "--sigma-param", reg["sigma parameterisations"], default=None,
                help="what the optimiser steps for sigma: raw (the paper's) or log")
    _add_choice(r, "--optimizer", OPTIMIZERS, default=None, help="sgd (pwfn) / adam (wfn)")
    r.add_argument("--lr", type=float, default=None, help=f"learning rate (pwfn: {d.lr}, wfn: 2e-5)")
    r.add_argument("--momentum", type=float, default=d.momentum)
    r.add_argument("--weight-decay", type=float, default=d.weight_decay)
    r.add_argument("--grad-clip", type=float, default=d.grad_clip)
    r.add_argument("--batch-size", type=int, default=d.batch_size)
    _add_choice(r, "--sigma-init", reg["sigma inits"], default=None)
    _add_choice(r, "--sigma-join", reg["sigma joins"], default="std_mu")
    r.add_argument("--no-zero-fix", action="store_true", help="turn off zero_fix")
    r.add_argument("--seed", type=int, default=d.seed)
    r.add_argument("--device", default=d.device, help="auto (cuda when present), cpu, cuda, cuda:1 ...")
    r.add_argument("--threads", type=int, default=d.threads, help="CPU threads (0: automatic)")
    _add_choice(r, "--preset", PRESETS, default=None, metavar="PRESET",
                help=f"paper preset: {', '.join(PRESETS.names())}")
    r.add_argument("--amp", choices=["bf16", "fp16"], default=None, help="mixed precision (autocast)")
    r.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    r.add_argument("--compile", action="store_true", help="torch.compile the training forward")
    r.add_argument("--out", default=None,
                   help="run directory, new or empty (default: a new runs/<model>-<dataset>-<time>-<random>)")
    r.add_argument("--resume", default=None, metavar="DIR",
                   help="continue an interrupted run with its recorded settings (only --device, --threads, "
                        "--data-root and --quiet may be given with it)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.add_argument("--pretrained-tag", default=None, help="timm pretrained tag, e.g. tv_in1k (presets pin theirs)")
    r.add_argument("--warmup-epochs", type=float, default=None, help="Bayesian warm-up (mu and sigma) before round 0")
    r.add_argument("--warmup-steps", type=int, default=None, help="the warm-up in optimiser steps")
    r.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default: from the CPU count "
                   "for file datasets, 0 for in-memory ones)")
    sem = r.add_argument_group("training semantics", "the corrected method (default) or the authors' code; see "
                               "docs/faithfulness.md. Each point below overrides the profile's")
    _add_choice(sem, "--profile", PROFILES, default=None, help="corrected (default) or reference")
    sem.add_argument("--fixed-noise", action=argparse.BooleanOptionalAction, default=None,
                     help="sample fixed weights too (reference: on)")
    sem.add_argument("--fixed-sigma-reg", action=argparse.BooleanOptionalAction, default=None,
                     help="the sigma regulariser acts on fixed weights too (reference: on)")
    sem.add_argument("--bias-sigma-reg", action=argparse.BooleanOptionalAction, default=None,
                     help="the sigma regulariser acts on biases (reference: off)")
    sem.add_argument("--decay", choices=DECAY_MODES, default=None,
                     help="masked: loss-term decay of free mu; coupled: the optimiser's decay of every parameter")
    sem.add_argument("--data-transforms", choices=DATA_TRANSFORMS, default=None, help="imagefolder transforms")
    sem.add_argument("--train-split", type=float, default=None, help="fraction of the training set used")
    sem.add_argument("--delta-start", type=float, default=None, help="band width in round 0 (with --delta-end)")
    sem.add_argument("--delta-end", type=float, default=None, help="band width in the last round, linear between")
    sem.add_argument("--delta-growth", type=float, default=None, help="band growth when a pass runs short (> 1)")

    s = sub.add_parser("show", help="print the per-round table of a run directory")
    s.add_argument("run_dir")
    s.add_argument("--layers", action="store_true", help="also the per-layer table of the last round")

    c = sub.add_parser("compare", help="k-means at the same unique values / entropy as a finished run")
    c.add_argument("run_dir")
    c.add_argument("--no-finetune", action="store_true", help="skip fine-tuning the k-means centroids")
    _add_choice(c, "--init", _INITS, default="kmeans++", help="k-means init")
    _add_choice(c, "--scope", _SCOPES, default="global",
                help="one codebook: global; per tensor: layer; per output channel: channel")
    c.add_argument("--keep-zero", action="store_true", help="k-means keeps one centre at exactly 0")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--device", default="cpu", help="cpu, cuda, auto ...")
    c.add_argument("--coremltools", type=_rounds, default=(), metavar="BITS",
                   help="also coremltools post-training palettization at these bit widths, e.g. 2,3,4 "
                        "(needs `pip install coremltools`)")
    c.add_argument("--dkm-steps", type=int, default=0, help="with --coremltools: also DKM palettization "
                   "trained for this many steps")
    c.add_argument("--csv", default=None, metavar="FILE", help="also write the table to FILE")
    c.add_argument("--quiet", action="store_true", help="no progress bars")

    an = sub.add_parser("analyse", help="noise resilience and calibration of a run (docs/method.md, section 6)")
    an.add_argument("run_dir")
    an.add_argument("--samples", type=int, default=8, help="weight samples per noise kind")
    an.add_argument("--round", type=_round, default=-1,
                    help="round index (default -1: the last; 'start': before round 0)")
    an.add_argument("--which", choices=["pre", "post"], default="pre",
                    help="the round's mu/sigma before (default) or after its snap")
    an.add_argument("--seed", type=int, default=0)
    an.add_argument("--device", default="cpu", help="cpu, cuda, auto ...")
    an.add_argument("--out", default=None, metavar="DIR", help="write reliability/noise figures (png, pdf) to DIR")
    an.add_argument("--quiet", action="store_true", help="no progress bars")

    ex = sub.add_parser("export", help="write the fixed network as a codebook plus indices (safetensors or ONNX) "
                                       "and print the size table")
    ex.add_argument("run_dir")
    ex.add_argument("--format", choices=["safetensors", "entropy", "onnx"], default="safetensors",
                    help="safetensors: bit-packed indices (default); entropy: entropy-coded indices, the smallest "
                         "(recommended); onnx: uint8/uint16 indices decoded by Gather nodes, for onnxruntime")
    ex.add_argument("--out", default=None, metavar="FILE",
                    help="output file (default RUN_DIR/export.safetensors, export.ans.safetensors or export.onnx)")
    ex.add_argument("--no-compressors", action="store_true",
                    help="leave zstd and brotli out of the size table (slow past a few million weights)")
    ex.add_argument("--round", type=int, default=-1,
                    help="round to export (default -1: the last; every weight must be fixed)")

    fg = sub.add_parser("figures", help="write every plot of a run (png, pdf, svg) for a paper")
    fg.add_argument("run_dir")
    fg.add_argument("--out", required=True, metavar="DIR", help="folder for the figures")
    fg.add_argument("--formats", type=_formats, default=("png", "pdf", "svg"),
                    help="comma-separated file formats (default png,pdf,svg)")
    fg.add_argument("--no-compare", action="store_true", help="skip the PWFN against k-means figures")
    fg.add_argument("--rounds", type=lambda t: "all" if t.strip() == "all" else _rounds(t), default=None,
                    help="rounds for the per-round figures, e.g. 0,-1, or all (default: the first and the last)")
    fg.add_argument("--layer", default=None, help="tensor of the channel heatmap (default the largest convolution)")
    fg.add_argument("--dpi", type=int, default=200, help="resolution of the PNG files")
    fg.add_argument("--venue", default=None, metavar="NAME",
                    help="size figures and fonts for a venue: neurips, iclr, icml, cvpr, ieee or aaai "
                         "(pwfn_viz.viz.style.VENUES; default: the package's screen size)")
    fg.add_argument("--width", default="text", choices=("text", "column"),
                    help="with --venue: the full text width or one column (default text)")
    fg.add_argument("--quiet", action="store_true", help="print nothing: no progress bar, no summary")

    fr = sub.add_parser("frontier", help="accuracy against entropy over budgets and seeds: learned against frozen "
                                         "sigma, k-means and coremltools palettization (the digits-demo preset)")
    fr.add_argument("--out", required=True, metavar="DIR", help="folder for frontier.csv, the figure and the runs")
    fr.add_argument("--seeds", type=_rounds, default=(0, 1, 2), help="comma-separated seeds (default 0,1,2)")
    fr.add_argument("--bits", type=_rounds, default=(2, 3, 4), help="coremltools bit widths (default 2,3,4)")
    fr.add_argument("--quiet", action="store_true", help="no progress bars")

    vf = sub.add_parser("verify", help="check a run directory: files present, checksums, format version, keys, "
                                       "tensors finite and of the recorded shapes (exit 0 good, 1 damaged)")
    vf.add_argument("run_dir")

    lst = sub.add_parser("list", help="list models, datasets, methods, optimizers, presets, sigma inits and "
                                      "joins, k-means inits and scopes")
    lst.add_argument("pattern", nargs="?", default="*", help="model name pattern, e.g. 'resnet*'")
    return p


# run's options that are not RunConfig fields of the same name
_NOT_FIELDS = {"command", "out", "resume", "quiet", "preset", "method", "sigma_join", "no_zero_fix"}
_RENAMED = {"first_epochs": "first_round_epochs", "epochs": "epochs_per_round", "first_steps": "first_round_steps",
            "steps": "steps_per_round"}
# What the WFN baseline sets for itself (RunConfig.wfn); a preset's values of these are PWFN's
_WFN_OWN = ("fractions", "optimizer", "lr", "sigma_init", "sigma_init_value", "reg_lambda")


def _given(argv) -> dict:
    """The ``run`` options given on the command line, by name, whatever their value (an option
    given equal to its default counts as given)."""
    parser = build_parser()
    run_parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["run"]
    for action in run_parser._actions:
        action.default = argparse.SUPPRESS
    return {k: v for k, v in vars(parser.parse_args(argv)).items() if k != "command"}


def _config(a, argv) -> RunConfig:
    """The run's config: the method's defaults, then the preset's fields, then every option given on
    the command line (always the last word, even when it equals a default)."""
    given = _given(argv)
    explicit = {_RENAMED.get(k, k): v for k, v in given.items() if k not in _NOT_FIELDS}
    if "sigma_join" in given or "no_zero_fix" in given:
        explicit["cluster"] = ClusterConfig(sigma_join=a.sigma_join, zero_fix=not a.no_zero_fix)
    # an epoch budget given on the command line replaces the (preset's) step budget of those rounds
    for epochs, steps in (("first_round_epochs", "first_round_steps"), ("epochs_per_round", "steps_per_round")):
        if epochs in explicit and steps not in explicit:
            explicit[steps] = None
    base = dict(preset(a.preset), preset=a.preset) if a.preset else {}
    if a.method == "wfn":   # WFN on a preset: the preset's model and data, WFN's own training settings
        return RunConfig.wfn(**{k: v for k, v in base.items() if k not in _WFN_OWN}, **explicit)
    return RunConfig(**{**base, "method": a.method, **explicit})


def run_config(argv) -> RunConfig:
    """The RunConfig that ``pwfn-viz <argv>`` would run (``argv`` starts with "run").

    >>> run_config(["run", "--preset", "digits-demo", "--epochs", "3"]).epochs_per_round
    3.0
    """
    return _config(build_parser().parse_args(argv), argv)


# What `run --resume` may change: where and how fast the run computes, not what it computes.
_RESUME_RUNTIME = ("device", "threads", "data_root")


def _resume_options(argv, args) -> dict:
    """The options given with ``run --resume`` (argparse's defaults aside): device, threads and
    data_root for ``run``; a ValueError naming any option that would change the result."""
    given = {k: v for k, v in _given(argv).items() if k not in ("resume", "quiet")}
    if "out" in given and os.path.abspath(given.pop("out")) != os.path.abspath(args.resume):
        raise ValueError(f"--out with --resume {args.resume}: a resumed run continues in its own directory; drop --out")
    refused = ["--" + k.replace("_", "-") for k in given if k not in _RESUME_RUNTIME]
    if refused:
        raise ValueError(f"{', '.join(refused)} cannot be used with --resume: it would change the result, and a resumed "
                         f"run keeps the settings recorded in {args.resume}/run.json. Only --device, --threads, "
                         "--data-root and --quiet may be given; start a new run with --out to change the others")
    return {k: v for k, v in given.items() if k in _RESUME_RUNTIME}


def _print_sigma_learning(run) -> None:
    """Has sigma learned? The numbers per round, and the plain warning when it has not."""
    table = run.sigma_learning()
    if table.empty:
        return
    print("sigma against its initialisation, free weights before each snap (median change, rank correlation, "
          "fraction moved >10 %, layers learned):")
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    warning = run.sigma_warning()
    print(f"WARNING: {warning}" if warning else run.sigma_verdict_line())


def _registered_model(run_dir, command: str, arguments: str) -> None:
    """A ValueError for a run of the user's own model, which the command line cannot rebuild."""
    from .record.rundir import load_run
    run = load_run(run_dir)
    if run.own_model:
        cls = run.meta["model_spec"].get("class", "your model")
        raise ValueError(f"{run_dir} recorded your own model ({cls}), which `pwfn-viz {command}` cannot rebuild or "
                         f"measure: use the Python API with your code, pwfn_viz.{command}(run, {arguments})")


def _writable_file(path, option: str) -> None:
    """A ValueError when ``path`` cannot be written as a file: it is a directory, or its folder does not exist."""
    from pathlib import Path
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {path} is a directory; give a file name, e.g. {path / 'out'}")
    if not path.parent.is_dir():
        raise ValueError(f"{option} {path}: the folder {path.parent} does not exist; create it first")


def main(argv=None) -> int:
    """The command line; returns the exit status (2 for a usage error, which argparse has printed)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:   # --help (0) or a usage error (2): a status like every other outcome
        return stop.code if isinstance(stop.code, int) else 2
    import pandas as pd
    try:
        if args.command == "run":
            from .train.loop import run
            runtime = _resume_options(argv, args) if args.resume else {}
            result = run(None if args.resume else _config(args, argv), args.out, resume=args.resume, **runtime,
                         progress=not args.quiet)
            if int(os.environ.get("RANK", "0")) == 0:   # under torchrun only rank 0 prints
                columns = ["fraction", f"{result.primary}_before", f"{result.primary}_after", "unique",
                           "unique_nonzero", "entropy", "entropy_nonzero"]
                print(result.table()[columns].to_string(float_format=lambda v: f"{v:.3f}"))
                _print_sigma_learning(result)
        elif args.command == "show":
            from .record.rundir import load_run
            result = load_run(args.run_dir)
            print(repr(result))
            print(f"primary metric: {result.primary} ({'higher' if result.higher_is_better else 'lower'} is better)")
            with pd.option_context("display.width", 200, "display.max_columns", 30):
                print(result.table().to_string(float_format=lambda v: f"{v:.3f}"))
                if args.layers and result.rounds:
                    print(result.rounds[-1].layers.to_string(float_format=lambda v: f"{v:.4g}"))
            _print_sigma_learning(result)
        elif args.command == "compare":
            from .analysis.compare import compare
            if args.csv:   # before the (long) comparison, not after it
                _writable_file(args.csv, "--csv")
            _registered_model(args.run_dir, "compare", "model=MyNet(), evaluate=my_eval, train_loader=..., loss_fn=...")
            result = compare(args.run_dir, init=args.init, scope=args.scope, finetune=not args.no_finetune,
                             seed=args.seed, keep_zero=args.keep_zero, device=args.device, progress=not args.quiet,
                             coremltools_bits=args.coremltools, dkm_steps=args.dkm_steps)
            print(repr(result))
            print(result.table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
            if args.csv:
                result.table.to_csv(args.csv, index=False)
                print(f"wrote {args.csv}")
        elif args.command == "analyse":
            from .analysis.noise import analyse
            _registered_model(args.run_dir, "analyse", "model=MyNet(), evaluate=my_eval")
            result = analyse(args.run_dir, round_index=args.round, which=args.which, n_samples=args.samples,
                             seed=args.seed, device=args.device, progress=not args.quiet)
            print(repr(result))
            print("top1, top1_std, ece in %; nll in nats")
            print(result.summary.to_string(float_format=lambda v: f"{v:.3f}"))
            if args.out:
                from .viz.analyse_plots import save_figures
                for path in save_figures(result, args.out):
                    print(f"wrote {path}")
        elif args.command == "export":
            from pathlib import Path
            from .analysis.export import export_run, fixed_weights
            from .analysis.export_sizes import format_size_table, size_table
            if args.out:
                _writable_file(args.out, "--out")
            name = {"safetensors": "export.safetensors", "entropy": "export.ans.safetensors", "onnx": "export.onnx"}
            out = args.out or Path(args.run_dir) / name[args.format]
            if args.format == "onnx":
                from .analysis.onnx_export import export_onnx
                print(export_onnx(args.run_dir, out, args.round))
            else:
                encoding = "ans" if args.format == "entropy" else "fixed"
                print(export_run(args.run_dir, out, args.round, encoding=encoding))
            weights = fixed_weights(args.run_dir, args.round)[2]
            print(format_size_table(size_table(weights, compressors=not args.no_compressors)))
        elif args.command == "figures":
            from .viz.figures import write_figures
            paths = write_figures(args.run_dir, args.out, args.formats, rounds=args.rounds, layer=args.layer,
                                  comparison=not args.no_compare, dpi=args.dpi, progress=not args.quiet,
                                  venue=args.venue, width=args.width)
            if not args.quiet:
                print(f"wrote {len(paths)} files to {args.out}")
        elif args.command == "frontier":
            from .analysis.frontier import FrontierConfig, run_frontier, summarise
            from .viz.frontier_plots import plot_accuracy_entropy
            from .viz.style import save
            table = run_frontier(args.out, FrontierConfig(seeds=args.seeds, bits=args.bits), progress=not args.quiet)
            with pd.option_context("display.width", 200):
                print(summarise(table).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
            save(plot_accuracy_entropy(table), os.path.join(args.out, "frontier.png"), dpi=150)
            print(f"wrote {os.path.join(args.out, 'frontier.csv')} and frontier.png")
        elif args.command == "verify":
            from .record.verify import verify_run
            verdict = verify_run(args.run_dir)
            print(verdict)
            if not verdict.ok:
                return 1
        elif args.command == "list":
            for label, registry in registries().items():
                names = list_models(args.pattern) if label == "models" else registry.names()
                print(f"{label + ':':<15} {', '.join(names)}")
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError, IndexError, ImportError) as err:
        print(f"pwfn-viz: error: {err}", file=sys.stderr)
        return 2
    return 0
