"""Command line: ``pwfn-viz run`` (the main job), ``pwfn-viz show RUN_DIR``, ``pwfn-viz list``.

    pwfn-viz run                                  # digits CNN, all ten rounds, record in runs/...
    pwfn-viz run --model resnet18 --dataset digits --image-size 32 --in-chans 3 --epochs 1
    pwfn-viz run --resume runs/digits_cnn-digits-20261126-120000
    pwfn-viz show runs/digits_cnn-digits-20261126-120000
"""
from __future__ import annotations

import argparse
import sys

from .clustering import SIGMA_JOINS, ClusterConfig
from .pipeline import PAPER_FRACTIONS, RunConfig


def _fractions(text: str) -> tuple:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--fractions wants comma-separated numbers like 0.5,1.0, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pwfn-viz", description="Probabilistic weight fixing, recorded and visualised.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="train, convert and fix a network in rounds; write a run directory")
    d = RunConfig()
    r.add_argument("--method", choices=["pwfn", "wfn"], default="pwfn",
                   help="pwfn (default) or the value-only WFN baseline (its own schedule, Adam 2e-5)")
    r.add_argument("--wfn-delta", type=float, default=d.wfn_delta, help="WFN's final allowance")
    r.add_argument("--model", default=d.model, help="digits_cnn, digits_mlp or any timm model name")
    r.add_argument("--dataset", default=d.dataset, help="digits (embedded), mnist, cifar10, imagefolder, synthetic")
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
    r.add_argument("--optimizer", choices=["sgd", "adam"], default=None, help="sgd (pwfn) / adam (wfn)")
    r.add_argument("--lr", type=float, default=None, help=f"learning rate (pwfn: {d.lr}, wfn: 2e-5)")
    r.add_argument("--momentum", type=float, default=d.momentum)
    r.add_argument("--weight-decay", type=float, default=d.weight_decay)
    r.add_argument("--grad-clip", type=float, default=d.grad_clip)
    r.add_argument("--batch-size", type=int, default=d.batch_size)
    r.add_argument("--sigma-init", choices=["pwfn", "constant"], default=None)
    r.add_argument("--sigma-join", choices=SIGMA_JOINS, default="std_mu")
    r.add_argument("--no-zero-fix", action="store_true", help="turn off zero_fix")
    r.add_argument("--seed", type=int, default=d.seed)
    r.add_argument("--device", default=d.device, help="auto (cuda when present), cpu, cuda, cuda:1 ...")
    r.add_argument("--threads", type=int, default=d.threads, help="CPU threads (0: automatic)")
    r.add_argument("--out", default=None, help="run directory (default runs/<model>-<dataset>-<time>)")
    r.add_argument("--resume", default=None, metavar="DIR", help="continue an interrupted run")
    r.add_argument("--quiet", action="store_true", help="no progress bars")

    s = sub.add_parser("show", help="print the per-round table of a run directory")
    s.add_argument("run_dir")
    s.add_argument("--layers", action="store_true", help="also the per-layer table of the last round")

    lst = sub.add_parser("list", help="list models and datasets")
    lst.add_argument("pattern", nargs="?", default="*", help="model name pattern, e.g. 'resnet*'")
    return p


def _config(a) -> RunConfig:
    fields = dict(model=a.model, dataset=a.dataset, data_root=a.data_root, image_size=a.image_size,
                  in_chans=a.in_chans, pretrained=a.pretrained, checkpoint=a.checkpoint,
                  pretrain_epochs=a.pretrain_epochs, pretrain_lr=a.pretrain_lr, fractions=a.fractions,
                  first_round_epochs=a.first_epochs, epochs_per_round=a.epochs, optimizer=a.optimizer, lr=a.lr,
                  momentum=a.momentum, weight_decay=a.weight_decay, grad_clip=a.grad_clip,
                  batch_size=a.batch_size, sigma_init=a.sigma_init, seed=a.seed, device=a.device,
                  threads=a.threads, wfn_delta=a.wfn_delta,
                  cluster=ClusterConfig(sigma_join=a.sigma_join, zero_fix=not a.no_zero_fix))
    given = {k: v for k, v in fields.items() if v is not None}   # unset options keep the method's defaults
    return RunConfig.wfn(**given) if a.method == "wfn" else RunConfig(**given)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import pandas as pd
    try:
        if args.command == "run":
            from .pipeline import run
            result = run(None if args.resume else _config(args), args.out, resume=args.resume,
                         progress=not args.quiet)
            print(result.table()[["fraction", "top1_before", "top1_after", "unique", "unique_nonzero",
                                  "entropy", "entropy_nonzero"]].to_string(float_format=lambda v: f"{v:.3f}"))
        elif args.command == "show":
            from .record import load_run
            result = load_run(args.run_dir)
            print(repr(result))
            with pd.option_context("display.width", 200, "display.max_columns", 30):
                print(result.table().to_string(float_format=lambda v: f"{v:.3f}"))
                if args.layers and result.rounds:
                    print(result.rounds[-1].layers.to_string(float_format=lambda v: f"{v:.4g}"))
        elif args.command == "list":
            from .data import list_datasets
            from .models import list_models
            print("models:  ", ", ".join(list_models(args.pattern)))
            print("datasets:", ", ".join(list_datasets()))
    except (ValueError, FileNotFoundError, FileExistsError, IndexError) as err:
        print(f"pwfn-viz: error: {err}", file=sys.stderr)
        return 2
    return 0
