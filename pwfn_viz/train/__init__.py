"""Training: ``RunConfig``, the round loop (``run``), distributed helpers and the paper presets."""
from .config import METHODS, OPTIMIZERS, PAPER_FRACTIONS, RunConfig
from .loop import optimizer_step, run, train_steps
