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

from .core.clustering import ClusterConfig
from .cli_parser import build_parser, registries  # noqa: F401  (registries: `pwfn-viz list`, tests)
from .models.factory import list_models
from .train.config import RunConfig
from .train.presets import preset


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
