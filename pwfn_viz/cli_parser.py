"""The command line's parser: every sub-command and option of ``pwfn-viz``, with the choices
of each name-picking option read from the registry behind it (see :mod:`pwfn_viz.cli`)."""
from __future__ import annotations

import argparse

from .baselines.kmeans.init import _INITS
from .baselines.kmeans.quantize import _SCOPES
from .core.bayes import SIGMA_INITS
from .core.clustering import SIGMA_JOINS
from .core.sigma_param import SIGMA_PARAMS
from .data.datasets import _DATASETS
from .models.factory import _MODELS
from .registry import Registry
from .train.config import DATA_TRANSFORMS, DECAY_MODES, METHODS, OPTIMIZERS, PROFILES
from .train.config import PAPER_FRACTIONS, RunConfig
from .train.presets import PRESETS


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
