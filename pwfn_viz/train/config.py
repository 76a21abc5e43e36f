"""``RunConfig``: everything that defines a run, every default visible, and the registry of methods
(how a round decides which weights to fix)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from ..baselines.wfn import WFN_FRACTIONS, wfn_allowance, wfn_round
from ..core import bayes
from ..core.clustering import ClusterConfig, cluster_round
from ..core.sigma_param import SIGMA_PARAMS
from ..models.spec import validate_model_spec
from ..registry import Registry

# Every float field of RunConfig: refused when NaN or infinite (``--epochs nan`` would otherwise mean 0).
_FLOAT_FIELDS = ("pretrain_epochs", "pretrain_lr", "first_round_epochs", "epochs_per_round", "lr", "momentum",
                 "weight_decay", "grad_clip", "sigma_init_value", "reg_lambda", "reg_cap", "sigma_lr_mult", "wfn_delta",
                 "warmup_epochs")

PAPER_FRACTIONS = (0.2, 0.4, 0.6, 0.7, 0.8, 0.9, 0.95, 0.975, 0.99, 1.0)

# How a round decides which weights to fix: fn(mu, sigma, fixed, fraction, round_index, config) ->
# the clustering result of that round. Filled below ("pwfn", "wfn"); ``RunConfig.method`` names one.
METHODS = Registry("method")

# Optimiser classes by name, called as cls(param_groups, lr=..., weight_decay=..., **extra).
OPTIMIZERS = Registry("optimizer")
OPTIMIZERS.register("sgd", torch.optim.SGD)
OPTIMIZERS.register("adam", torch.optim.Adam)

# Training semantics by profile (docs/faithfulness.md). "corrected", the default, is the method as
# the paper describes it, with the authors' code's slips corrected; "reference" reproduces the
# authors' released training code point by point. Each entry is also a RunConfig field of its own
# (None there: the profile's value), so one point can be switched without the others.
PROFILES = Registry("profile")
PROFILES.register("corrected", dict(
    fixed_noise=False,        # fixed weights use their value exactly (no noise, no gradient)
    fixed_sigma_reg=False,    # the sigma regulariser acts on free weights only
    bias_sigma_reg=True,      # ... of weights and biases
    decay="masked",           # weight decay: a loss term on free mu (clipped with the loss); none on sigma
    data_transforms="timm",   # imagefolder: timm's training augmentation and its pretrained eval crop
    train_split=1.0,          # the fraction of the training set trained on
    delta_start=None,         # the band's starting width per round: cluster.delta in every round
    delta_end=None,
    delta_growth=2.0,         # the band's growth when a pass runs short
))
PROFILES.register("reference", dict(
    fixed_noise=True,         # fixed weights are still sampled: w = value + sigma * eps (no task gradient)
    fixed_sigma_reg=True,     # the regulariser also pushes fixed weights' sigma up
    bias_sigma_reg=False,     # ... and never acts on biases' sigma (their code regularises weight_sigma only)
    decay="coupled",          # SGD's own weight decay on every parameter, after clipping (fixed ones too)
    data_transforms="reference",   # squash to 256, random 224 crop + flip; eval squash 256 + centre 224
    train_split=0.9,          # 90 % of the training set
    delta_start=1.0,          # their command line's defaults: delta from 1 in round 0 to 0.5 in the last
    delta_end=0.5,
    delta_growth=2.0,         # their default growth factor 1 can loop for ever; 2 is the corrected method's
))
SEMANTIC_FIELDS = tuple(PROFILES.get("corrected"))
DECAY_MODES = ("masked", "coupled")
DATA_TRANSFORMS = ("timm", "reference")


def _valid_device(device: str) -> bool:
    if device == "auto":
        return True
    try:
        torch.device(device)
    except (RuntimeError, ValueError):
        return False
    return True


@dataclass
class RunConfig:
    """Everything that defines a run. Training settings default to the paper's (docs/method.md,
    section 4); ``RunConfig.wfn()`` gives the value-only WFN baseline's (section 8)."""
    method: str = "pwfn"                     # how a round fixes weights: see METHODS
    model: str = "digits_cnn"
    dataset: str = "digits"
    data_root: str | None = None
    image_size: int | None = None            # resize inputs (e.g. digits for timm models)
    in_chans: int | None = None              # None: the dataset's own
    model_kwargs: dict = field(default_factory=dict)
    pretrained: bool = False                 # passed through to timm.create_model
    checkpoint: str | None = None            # local safetensors / state_dict file
    pretrain_epochs: float = 40              # deterministic training before conversion (0: none)
    pretrain_lr: float = 0.05
    fractions: tuple = PAPER_FRACTIONS
    first_round_epochs: float = 0.05         # training before round 0, in epochs
    epochs_per_round: float = 3              # training before every later round
    first_round_steps: int | None = None     # the same budgets in optimiser steps; when set they
    steps_per_round: int | None = None       # replace the epoch budgets above
    optimizer: str = "sgd"                   # sgd | adam: see OPTIMIZERS
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    batch_size: int = 128
    sigma_init: str = "pwfn"                 # or "constant" (sigma_init_value)
    sigma_init_value: float = bayes.CONSTANT_SIGMA_INIT
    reg_lambda: float = bayes.REG_LAMBDA
    reg_cap: float = bayes.REG_CAP
    sigma_lr_mult: float = 1.0               # sigma's learning rate is lr * sigma_lr_mult (0: sigma frozen)
    sigma_param: str = "raw"                 # what the optimiser steps for sigma: raw (paper) | log
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    wfn_delta: float = 0.01                  # WFN: final relative-distance allowance
    seed: int = 0
    device: str = "auto"                     # auto: cuda when present, else cpu
    threads: int = 0                         # CPU threads; 0: 1 for models under 1M weights, else torch's
    amp: str | None = None                   # mixed precision: bf16 | fp16 (autocast; fp16 with a GradScaler)
    channels_last: bool = False
    compile: bool = False                    # torch.compile the training forward
    compile_backend: str = "inductor"
    preset: str | None = None                # the paper preset this config came from (see presets.py)
    pretrained_tag: str | None = None        # timm pretrained tag, e.g. "tv_in1k" (None: timm's default)
    warmup_epochs: float = 0                 # Bayesian training of mu and sigma before round 0, recorded
    warmup_steps: int | None = None          # the same in optimiser steps (replaces warmup_epochs)
    num_workers: int | None = None           # DataLoader workers; None: from the CPU count for file data
    # Training semantics: "corrected" (default) or "reference" (the authors' code); see PROFILES.
    # The fields after it override single points of the profile (None: as the profile says).
    profile: str = "corrected"
    fixed_noise: bool | None = None
    fixed_sigma_reg: bool | None = None
    bias_sigma_reg: bool | None = None
    decay: str | None = None
    data_transforms: str | None = None
    train_split: float | None = None
    delta_start: float | None = None
    delta_end: float | None = None
    delta_growth: float | None = None

    def __post_init__(self):
        if isinstance(self.cluster, dict):
            self.cluster = ClusterConfig(**self.cluster)
        for name in _FLOAT_FIELDS:   # NaN/inf compare false with everything: refuse them before any other check
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name}={value!r} must be a finite number")
        self.fractions = tuple(float(f) for f in self.fractions)
        f = self.fractions
        if not f or any(not 0 < a <= 1 for a in f) or any(b <= a for a, b in zip(f, f[1:])):
            raise ValueError(f"fractions {f} must be increasing values in (0, 1]")
        if f[-1] != 1.0:
            raise ValueError(f"the last fraction is {f[-1]}; it must be 1.0 so that every weight ends on a centre")
        for name in ("pretrain_epochs", "first_round_epochs", "epochs_per_round", "sigma_lr_mult", "sigma_init_value",
                     "weight_decay", "grad_clip", "reg_lambda", "reg_cap", "momentum", "wfn_delta"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be >= 0")
        if self.pretrain_lr <= 0:
            raise ValueError(f"pretrain_lr={self.pretrain_lr!r} must be > 0")
        validate_model_spec({"name": self.model, "kwargs": self.model_kwargs}, "RunConfig")
        if not isinstance(self.device, str) or not _valid_device(self.device):
            raise ValueError(f"device={self.device!r} is not a device: use auto, cpu, cuda, cuda:1, mps ...")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 0:
            raise ValueError(f"threads={self.threads!r} must be a whole number >= 0 (0: automatic)")
        for name in ("first_round_steps", "steps_per_round"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ValueError(f"{name}={value!r} must be a whole number of optimiser steps >= 0 (or None: "
                                 f"use the epoch budget)")
        SIGMA_PARAMS.get(self.sigma_param)
        if self.batch_size < 1 or self.lr <= 0:
            raise ValueError("batch_size must be >= 1 and lr > 0")
        METHODS.get(self.method)         # an unknown name: the registry's error, listing what exists
        if self.amp not in (None, "bf16", "fp16"):
            raise ValueError(f"amp={self.amp!r}: use None, 'bf16' or 'fp16'")
        OPTIMIZERS.get(self.optimizer)
        PROFILES.get(self.profile)
        self._check_semantics()
        if self.warmup_steps is not None and (not isinstance(self.warmup_steps, int) or isinstance(self.warmup_steps, bool)
                                              or self.warmup_steps < 0):
            raise ValueError(f"warmup_steps={self.warmup_steps!r} must be a whole number >= 0 (or None)")
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs={self.warmup_epochs!r} must be >= 0")
        if self.num_workers is not None and (not isinstance(self.num_workers, int) or isinstance(self.num_workers, bool)
                                             or self.num_workers < 0):
            raise ValueError(f"num_workers={self.num_workers!r} must be a whole number >= 0 (or None: automatic)")
        if self.pretrained_tag is not None and (not isinstance(self.pretrained_tag, str) or not self.pretrained_tag
                                                or "." in self.pretrained_tag):
            raise ValueError(f"pretrained_tag={self.pretrained_tag!r}: give timm's tag alone, e.g. 'tv_in1k' "
                             "(the model name goes in model)")

    def _check_semantics(self) -> None:
        s = self.semantics()
        for name in ("fixed_noise", "fixed_sigma_reg", "bias_sigma_reg"):
            if not isinstance(s[name], bool):
                raise ValueError(f"{name}={s[name]!r} must be True or False (or None: the profile's)")
        if s["decay"] not in DECAY_MODES:
            raise ValueError(f"decay={s['decay']!r}: use one of {DECAY_MODES} (or None: the profile's)")
        if s["data_transforms"] not in DATA_TRANSFORMS:
            raise ValueError(f"data_transforms={s['data_transforms']!r}: use one of {DATA_TRANSFORMS}")
        split = s["train_split"]
        if isinstance(split, bool) or not isinstance(split, (int, float)) or not 0 < split <= 1:
            raise ValueError(f"train_split={split!r} must be a fraction in (0, 1]")
        for name in ("delta_start", "delta_end"):
            v = s[name]
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0):
                raise ValueError(f"{name}={v!r} must be a positive number (or None)")
        if (s["delta_start"] is None) != (s["delta_end"] is None):
            raise ValueError("delta_start and delta_end go together (the band's width in round 0 and in the last "
                             "round, linear in between); give both or neither")
        g = s["delta_growth"]
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or g <= 1:
            raise ValueError(f"delta_growth={g!r} must be a number > 1: a round still short after a pass widens "
                             "its band by this factor (1 would never widen it and could loop for ever)")
        if s["decay"] == "coupled" and self.sigma_param != "raw":
            raise ValueError(f"decay='coupled' with sigma_param={self.sigma_param!r}: the optimiser's decay would "
                             "shrink log sigma, not sigma; use sigma_param='raw' with coupled decay")

    def semantics(self) -> dict:
        """The training semantics this config runs with: the profile's values (:data:`PROFILES`)
        with this config's own settings of single points over them.

        >>> RunConfig(profile="reference", decay="masked").semantics()["decay"]
        'masked'
        """
        chosen = dict(PROFILES.get(self.profile))
        chosen.update({k: getattr(self, k) for k in SEMANTIC_FIELDS if getattr(self, k) is not None})
        return chosen

    def delta_for_round(self, round_index: int) -> float:
        """The band's starting width in round ``round_index``: linear from ``delta_start`` to
        ``delta_end`` over the schedule when set, else ``cluster.delta``."""
        s = self.semantics()
        if s["delta_start"] is None:
            return self.cluster.delta
        n = len(self.fractions)
        t = round_index / (n - 1) if n > 1 else 0.0
        return float(s["delta_start"] + t * (s["delta_end"] - s["delta_start"]))

    def warmup_budget(self, steps_per_epoch: int) -> int:
        """Optimiser steps of the Bayesian warm-up before round 0 (0: none)."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        return max(1, round(self.warmup_epochs * steps_per_epoch)) if self.warmup_epochs > 0 else 0

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "RunConfig":
        """A paper preset (``presets.PRESETS``), e.g. ``RunConfig.from_preset("resnet18-imagenet",
        data_root="/data/imagenet")``."""
        from .presets import preset
        return cls(**{**preset(name), "preset": name, **overrides})

    @classmethod
    def wfn(cls, **overrides) -> "RunConfig":
        """The WFN baseline's settings: its schedule, Adam at 2e-5, no uncertainty (sigma 0, no
        regulariser). Same model, data and pre-training fields as any run."""
        return cls(**{"method": "wfn", "fractions": WFN_FRACTIONS, "optimizer": "adam", "lr": 2e-5,
                      "sigma_init": "constant", "sigma_init_value": 0.0, "reg_lambda": 0.0, **overrides})

    @classmethod
    def demo(cls, **overrides) -> "RunConfig":
        """The ``digits-demo`` preset: the paper's settings except that sigma gets enough
        optimisation to learn in a short run (see ``presets.DEMO``)."""
        return cls.from_preset("digits-demo", **overrides)

    def round_budget(self, round_index: int, steps_per_epoch: int) -> int:
        """Optimiser steps of training before round ``round_index`` (at least one when the budget is
        above zero), from the step budget when set, else from the epoch budget."""
        steps = self.first_round_steps if round_index == 0 else self.steps_per_round
        if steps is not None:
            return steps
        epochs = self.first_round_epochs if round_index == 0 else self.epochs_per_round
        return max(1, round(epochs * steps_per_epoch)) if epochs > 0 else 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


@METHODS.register("pwfn")
def _pwfn_round(mu, sigma, fixed, fraction, r, config):
    cluster = config.cluster
    delta, growth = config.delta_for_round(r), config.semantics()["delta_growth"]
    if (delta, growth) != (cluster.delta, cluster.delta_growth):
        cluster = dataclasses.replace(cluster, delta=delta, delta_growth=growth)
    return cluster_round(mu, sigma, fraction, config=cluster, round_index=r)


@METHODS.register("wfn")
def _wfn_round(mu, sigma, fixed, fraction, r, config):
    allowance = wfn_allowance(r, len(config.fractions), config.wfn_delta)
    return wfn_round(mu, fixed, fraction, allowance, sigma=sigma, b=config.cluster.b,
                     max_order=config.cluster.max_powers, round_index=r)
