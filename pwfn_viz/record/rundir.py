"""Run records: everything a run produced, on disk, replayable without re-training.

Layout of a run directory::

    run.json                 config, package versions, device, seed, baseline and per-round metrics
                             (written last after each round: it is the commit point for --resume)
    start.safetensors        the converted network before round 0 (nothing fixed)
    round_00.safetensors ... one per completed round: pre-snap mu/sigma/fixed ("pre/..."), post-snap
                             mu/sigma/fixed, and the rest of the state_dict ("state/...")
    steps.csv                one row per greedy clustering step, all rounds
    layers.csv               the per-layer table after each round's snap
    log.txt                  what the run printed

Every file is written to a temporary name and renamed (:mod:`pwfn_viz.record.storage`), so a
killed run never leaves a half file. Nothing is unpickled: tensors are safetensors, tables CSV, metadata JSON. run.json records its
format version and the sha256 of every other file (as last committed); reading checks both, and
every tensor file's names, shapes and finite values (see :mod:`pwfn_viz.record.schema`); a damaged
file gives a :class:`pwfn_viz.files.FileError` (a ValueError) naming it.

Example:
    >>> run = load_run("runs/digits")                      # doctest: +SKIP
    >>> run.rounds[3].sigma["conv1.weight"].shape          # doctest: +SKIP
    >>> model = run.model_at(3)                            # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pandas as pd
import torch

from ..core.sigma_learning import COLUMNS as SIGMA_LEARNING_COLUMNS
from ..core.sigma_learning import layers_learned, sigma_learning_table
from ..core.sigma_learning import verdict as sigma_verdict
from ..core.sigma_learning import verdict_line as sigma_verdict_line
from ..files import FileError
from .schema import read_meta
from .storage import check_tensors, load_tensors, read_csv, state_dict_from_snapshot
def metric_label(name: str) -> str:
    """How a metric is written in tables, plots and logs: ``top1`` -> ``top-1``, others as named."""
    return {"top1": "top-1", "top5": "top-5"}.get(name, name)


# ---------------------------------------------------------------------------------------------
# Reading a run back
@dataclass
class Round:
    """One fixing round: its metrics and (loaded on first use) its tensors, by tensor name.

    ``mu``/``sigma``/``fixed`` are after the snap, ``pre_mu``/``pre_sigma``/``pre_fixed`` before it.
    """
    index: int
    metrics: dict
    path: Path
    steps: pd.DataFrame = field(repr=False)
    layers: pd.DataFrame = field(repr=False)
    names: list = field(repr=False, default_factory=list)   # converted tensors in network order
    primary: str = field(repr=False, default="top1")         # the run's primary metric
    sha: str | None = field(repr=False, default=None)        # the file's recorded sha256
    shapes: dict | None = field(repr=False, default=None)    # recorded shape of each converted tensor

    @cached_property
    def tensors(self) -> dict[str, torch.Tensor]:
        return load_tensors(self.path, self.sha, self.shapes, pre=True)

    def _group(self, prefix: str) -> dict[str, torch.Tensor]:
        """Tensors under ``prefix``, by name, in network order (safetensors sorts its keys)."""
        return {n: self.tensors[prefix + n] for n in self.names if prefix + n in self.tensors}

    mu = property(lambda self: self._group("mu/"))
    sigma = property(lambda self: self._group("sigma/"))
    fixed = property(lambda self: {k: v.bool() for k, v in self._group("fixed/").items()})
    pre_mu = property(lambda self: self._group("pre/mu/"))
    pre_sigma = property(lambda self: self._group("pre/sigma/"))
    pre_fixed = property(lambda self: {k: v.bool() for k, v in self._group("pre/fixed/").items()})

    @property
    def fraction(self) -> float:
        return self.metrics["fraction"]

    def flat(self, which: str = "post") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mu, sigma, fixed) over the whole network, flattened in network order."""
        p = "" if which == "post" else "pre_"
        mu, sigma, fixed = getattr(self, p + "mu"), getattr(self, p + "sigma"), getattr(self, p + "fixed")
        names = list(mu)
        return (torch.cat([mu[n].flatten() for n in names]), torch.cat([sigma[n].flatten() for n in names]),
                torch.cat([fixed[n].flatten() for n in names]))

    def __repr__(self):
        m, p = self.metrics, self.primary
        fmt = ".2f" if p in ("top1", "top5") else ".4g"
        return (f"Round({self.index}: fixed {m['fraction']:.1%}, {metric_label(p)} {m[f'{p}_before']:{fmt}} -> "
                f"{m[f'{p}_after']:{fmt}}, unique {m['unique']}, entropy {m['entropy']:.2f} bits)")


class Run:
    """A run directory, read back. ``run.rounds[i]`` is a :class:`Round`; ``run.table()`` the
    per-round metrics; ``run.model_at(i)`` rebuilds the network after round ``i``. ``run.primary``
    names the metric that tables and plots show (``top1`` for classification runs) and
    ``run.higher_is_better`` its direction."""

    def __init__(self, path):
        self.path = Path(path)
        self.meta = read_meta(self.path)
        self.checksums = self.meta.get("checksums", {})
        for name in ["start.safetensors", *(round_file(m["round"]) for m in self.meta["rounds"])]:
            if not (self.path / name).is_file():
                raise FileError(self.path / name, f"this file of the record is missing (run.json lists it); "
                                                  f"`pwfn-viz verify {self.path}` checks the whole record")
        # A round being written when the run stopped may have left rows of its own in the tables;
        # its tensor file is written first, so their checksums count only without one.
        interrupted = (self.path / round_file(len(self.meta["rounds"]))).exists()
        tables = {}
        for table in ("steps.csv", "layers.csv"):
            sha = None if interrupted else self.checksums.get(table)
            tables[table] = read_csv(self.path / table, sha) if (self.path / table).exists() else pd.DataFrame()
            if sha is not None and not (self.path / table).exists():
                raise FileError(self.path / table, "this file of the record is missing (run.json lists its checksum)")
        steps, layers = tables["steps.csv"], tables["layers.csv"]
        self.rounds = [Round(m["round"], m, self.path / round_file(m["round"]),
                             steps[steps["round"] == m["round"]].reset_index(drop=True) if len(steps) else steps,
                             layers[layers["round"] == m["round"]].reset_index(drop=True) if len(layers) else layers,
                             list(self.meta["tensors"]), self.primary, self.checksums.get(round_file(m["round"])),
                             self.meta["tensors"])
                       for m in self.meta["rounds"]]

    config = property(lambda self: self.meta["config"])
    baseline = property(lambda self: self.meta["baseline"])
    complete = property(lambda self: self.meta.get("status") == "complete")
    primary = property(lambda self: self.meta.get("primary_metric", "top1"))
    higher_is_better = property(lambda self: bool(self.meta.get("higher_is_better", True)))

    @property
    def primary_label(self) -> str:
        """The primary metric as tables and plots write it (``top-1``, ``mse``, ...)."""
        return metric_label(self.primary)

    @cached_property
    def start(self) -> dict[str, torch.Tensor]:
        """Tensors of the converted network before round 0."""
        return load_tensors(self.path / "start.safetensors", self.checksums.get("start.safetensors"),
                            self.meta["tensors"])

    @property
    def steps(self) -> pd.DataFrame:
        return pd.concat([r.steps for r in self.rounds], ignore_index=True) if self.rounds else pd.DataFrame()

    def table(self) -> pd.DataFrame:
        """One row per round: fraction fixed, every metric before/after the snap (``top1_before``,
        ``mse_after``, ...; ``run.primary`` names the main one), unique values, entropy."""
        return pd.DataFrame(self.meta["rounds"]).set_index("round")

    # ------------------------------------------------------------------ has sigma learned?
    @property
    def initial_sigma(self) -> dict[str, torch.Tensor]:
        """Sigma of every converted tensor at conversion, before any training."""
        return {n: self.start[f"sigma/{n}"] for n in self.meta["tensors"]}

    def sigma_learning_layers(self, round_index: int = -1) -> pd.DataFrame:
        """Per tensor (and ``"all"``): how far the sigma that round ``round_index`` clustered with
        (trained, before the snap) is from the initial sigma, over the weights still free
        (:mod:`pwfn_viz.core.sigma_learning`). Read from layers.csv when the run recorded it."""
        r = self.rounds[round_index]
        if "sigma_rank_corr" in r.layers.columns and "sigma_rank_corr" in r.metrics:   # recorded
            table = r.layers[["name", *SIGMA_LEARNING_COLUMNS]].rename(columns={"name": "layer"})
            table = pd.concat([table, pd.DataFrame([{"layer": "all", **{k: r.metrics[k] for k in SIGMA_LEARNING_COLUMNS}}])],
                              ignore_index=True).astype({"sigma_learned": object})
            table["sigma_learned"] = [None if v is None or pd.isna(v) else bool(v) for v in table["sigma_learned"]]
            return table
        return sigma_learning_table(self.initial_sigma, r.pre_sigma, r.pre_fixed)

    def sigma_learning(self) -> pd.DataFrame:
        """One row per round: the diagnostic over all free weights, and how many layers learned."""
        rows = []
        for i, r in enumerate(self.rounds):
            if all(k in r.metrics for k in SIGMA_LEARNING_COLUMNS):
                row = {k: r.metrics[k] for k in SIGMA_LEARNING_COLUMNS}
                row["layers_learned"] = r.metrics.get("sigma_layers_learned", "")
            else:
                layers = self.sigma_learning_layers(i)
                row = layers.iloc[-1][SIGMA_LEARNING_COLUMNS].to_dict()
                row["layers_learned"] = layers_learned(layers)
            rows.append({"round": r.index, **row})
        return pd.DataFrame(rows).set_index("round") if rows else pd.DataFrame()

    def sigma_verdict(self) -> dict | None:
        """The run's verdict over its rounds (:func:`pwfn_viz.core.sigma_learning.verdict`)."""
        table = self.sigma_learning()
        rows = [{"round": i, **row, "sigma_layers_learned": row["layers_learned"]}
                for i, row in table.to_dict("index").items()] if len(table) else []
        return sigma_verdict(rows)

    def sigma_warning(self) -> str | None:
        """A plain warning, with what to change, when sigma is essentially its initialisation in most
        rounds (see :mod:`pwfn_viz.core.sigma_learning` for the thresholds), else None."""
        v = self.sigma_verdict()
        return None if v is None or v["learned"] else sigma_verdict_line(v)

    def sigma_verdict_line(self) -> str:
        """The verdict in one line: in how many rounds sigma learned, and the latest round's numbers."""
        return sigma_verdict_line(self.sigma_verdict())

    @property
    def own_model(self) -> bool:
        """True for a run of your own model (recorded by ``Fixer`` without a registered model spec):
        rebuilding its network needs your instance, measuring it your ``evaluate``."""
        return not (self.meta.get("model_spec") or {}).get("name")

    def require(self, call: str, **given) -> None:
        """For a run of your own model, raise a ValueError naming every argument of ``call`` given
        as None (``model``, ``evaluate``, ``train_loader``, ``loss_fn``) and what to pass; a
        registered model's run needs none of them."""
        missing = [k for k, v in given.items() if v is None]
        if not self.own_model or not missing:
            return
        cls = (self.meta.get("model_spec") or {}).get("class", "YourModel").rsplit(".", 1)[-1]
        what = {"model": f"model={cls}() (an unconverted instance of the recorded architecture)",
                "evaluate": "evaluate=my_eval (evaluate(model) -> dict of numbers, as given to Fixer)",
                "train_loader": "train_loader=... (the (x, y) batches to fine-tune on)",
                "loss_fn": "loss_fn=... (loss_fn(model(x), y), your training loss)"}
        raise ValueError(f"{self.path} recorded your own model ({cls}), which {call} cannot rebuild or measure "
                         f"without your code: pass {'; '.join(what.get(k, f'{k}=...') for k in missing)}")

    def _fresh_model(self) -> torch.nn.Module:
        from ..models.factory import create_model
        spec = self.meta.get("model_spec") or {}
        if not spec.get("name"):
            cls = spec.get("class", "your model class")
            raise ValueError(f"{self.path} recorded your own model ({cls}), which the record cannot rebuild: pass "
                             f"an unconverted instance, e.g. run.model_at(3, model={cls.rsplit('.', 1)[-1]}()) or "
                             "run.plain_model_at(None, model=...)")
        from ..models.spec import validate_model_spec
        validate_model_spec({"num_classes": None, "in_chans": None, **spec}, f"{self.path / 'run.json'} model_spec")
        return create_model(spec["name"], num_classes=spec["num_classes"], in_chans=spec["in_chans"],
                            **spec.get("kwargs", {}))

    def _tensors_at(self, round_index: int | None) -> dict[str, torch.Tensor]:
        if round_index is None:
            return self.start
        if not -len(self.rounds) <= round_index < len(self.rounds):
            raise IndexError(f"round {round_index} not recorded; this run has rounds 0..{len(self.rounds) - 1}")
        return self.rounds[round_index].tensors

    def plain_model_at(self, round_index: int | None = None, model: torch.nn.Module | None = None) -> torch.nn.Module:
        """A plain PyTorch network (no pwfn_viz layers) whose weights are the mean weights after
        round ``round_index`` (None: the starting network before round 0), in eval mode."""
        model = model if model is not None else self._fresh_model()
        tensors = self._tensors_at(round_index)
        expected = {k[len("mu/"):] for k in tensors if k.startswith("mu/")}
        names = {n for n, _ in model.named_parameters()}
        if not expected <= names:
            raise ValueError(f"this model has no parameter {sorted(expected - names)[:3]} that {self.path} recorded: "
                             "pass an unconverted instance of the recorded architecture")
        sd = {k[len("state/"):]: v for k, v in tensors.items() if k.startswith("state/")}
        sd.update({k[len("mu/"):]: v for k, v in tensors.items() if k.startswith("mu/")})
        model.load_state_dict(sd)
        return model.eval()

    def model_at(self, round_index: int | None = None, model: torch.nn.Module | None = None) -> torch.nn.Module:
        """The converted network after round ``round_index`` (None: before round 0), in eval mode.

        ``model`` is an unconverted instance of the architecture; by default it is created from the
        run's config with :func:`pwfn_viz.models.factory.create_model` (runs of a registered model;
        a run of your own model needs yours: ``run.model_at(3, model=MyNet())``).
        """
        from ..core.bayes import convert
        tensors = self._tensors_at(round_index)
        model = convert(model if model is not None else self._fresh_model(), "constant", value=0.0)
        check_tensors(model, self.meta["tensors"], "this model does not fit the run")
        model.load_state_dict(state_dict_from_snapshot(tensors))
        return model.eval()

    def dashboard(self, **options):
        """Every round view of this run in one widget, one round slider with a Play button
        (``pwfn_viz.widgets.Dashboard``; needs ipywidgets and ipympl). The widgets sit above this
        layer: ``pwfn_viz/__init__.py`` provides ``open_view`` (docs/architecture.md, section 1).

            >>> run.dashboard()          # doctest: +SKIP
        """
        return type(self).open_view(self, "dashboard", **options)

    def __repr__(self):
        status = "complete" if self.complete else f"incomplete ({len(self.rounds)} rounds)"
        c = self.config
        data = f", dataset={c['dataset']}" if c.get("dataset") else ""
        return f"Run({str(self.path)!r}, model={c['model']}{data}, {status})"

    def _repr_html_(self):
        return f"<p><code>{self!r}</code></p>" + self.table().to_html(float_format=lambda v: f"{v:.4g}")


def round_file(index: int) -> str:
    return f"round_{index:02d}.safetensors"


def load_run(path) -> Run:
    """Read a run directory written by :func:`pwfn_viz.run`."""
    return Run(path)
