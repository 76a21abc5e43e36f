"""Training: ``RunConfig``, the ``Fixer`` (PWFN inside any training loop), the round loop (``run``,
``fix_in_rounds``), distributed helpers and the paper presets."""
from .config import METHODS, OPTIMIZERS, PAPER_FRACTIONS, RunConfig
from .fixer import Fixer
from .loop import fix_in_rounds, fix_rounds, optimizer_step, run, train_steps
