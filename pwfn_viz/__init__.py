"""pwfn_viz: probabilistic weight fixing (PWFN), recorded round by round and visualised.

One-line entry points::

    import pwfn_viz
    run = pwfn_viz.run()                      # digits CNN, all ten rounds, written to runs/...
    run = pwfn_viz.load_run("runs/...")       # replay without re-training
    run.rounds[3].sigma["conv1.weight"]           # any tensor of any round, by name
    model = run.model_at(3)                   # the network after round 3
    fixer = pwfn_viz.Fixer(my_model, "runs/mine", evaluate=my_eval)   # PWFN inside your own loop
    run = pwfn_viz.fix_in_rounds(my_model, loader, loss_fn, my_eval, "runs/mine")   # or in one call

Layers, each importing only those above it in this list: ``kernels`` (Triton kernels and their
torch twins), ``core`` (conversion, sigma, clustering, metrics), ``models`` and ``data``,
``baselines`` (WFN, k-means), ``record`` (the run directory), ``train`` (config and round loop),
``analysis`` (compare, noise, export, tables), ``viz`` (plots), ``widgets`` (JupyterLab), ``cli``.
"""
from .analysis.compare import compare
from .analysis.export import ExportReport, export_run, load_exported
from .analysis.noise import AnalysisResult, analyse
from .baselines import kmeans
from .core.bayes import bayes_tensors, convert, flat_state, load_flat_state
from .core.loss_terms import sigma_regulariser
from .core.clustering import ClusterConfig, ClusterResult, candidate_centres, cluster_round
from .core.metrics import codebook_stats, evaluate, layer_table
from .data.datasets import create_dataset, list_datasets
from .models.factory import create_model, list_models
from .record.rundir import Round, Run, load_run
from .train.config import PAPER_FRACTIONS, RunConfig
from .train.fixer import Fixer
from .train.loop import fix_in_rounds, run



def _open_view(run, name: str, **options):
    """``Run.dashboard()``'s hook: the widgets register their views (``pwfn_viz.widgets.VIEWS``);
    imported only when a view is asked for (ipywidgets and ipympl are then needed)."""
    from .widgets import VIEWS
    return VIEWS.get(name)(run, **options)


Run.open_view = staticmethod(_open_view)   # the record layer cannot import the widgets above it

__version__ = "0.1.0"
__all__ = ["AnalysisResult", "ExportReport", "Fixer", "analyse", "export_run", "fix_in_rounds", "load_exported",
           "ClusterConfig", "ClusterResult", "PAPER_FRACTIONS", "Round", "Run", "RunConfig", "bayes_tensors",
           "candidate_centres", "cluster_round", "codebook_stats", "compare", "convert", "create_dataset", "create_model",
           "evaluate", "flat_state", "kmeans", "layer_table", "list_datasets", "list_models", "load_flat_state",
           "load_run", "run", "sigma_regulariser"]
