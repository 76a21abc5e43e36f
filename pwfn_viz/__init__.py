"""pwfn_viz: probabilistic weight fixing (PWFN), recorded round by round and visualised.

One-line entry points::

    import pwfn_viz
    run = pwfn_viz.run()                      # digits CNN, all ten rounds, written to runs/...
    run = pwfn_viz.load_run("runs/...")       # replay without re-training
    run.rounds[3].sigma["conv1.weight"]           # any tensor of any round, by name
    model = run.model_at(3)                   # the network after round 3
"""
from .analyse import AnalysisResult, analyse
from .bayes import bayes_tensors, convert, flat_state, load_flat_state, sigma_regulariser
from .clustering import ClusterConfig, ClusterResult, candidate_centres, cluster_round
from .compare import compare
from .data import create_dataset, list_datasets
from .export import ExportReport, export_run, load_exported
from .metrics import codebook_stats, evaluate, layer_table
from .models import create_model, list_models
from .pipeline import PAPER_FRACTIONS, RunConfig, run
from .record import Round, Run, load_run

__version__ = "0.1.0"
__all__ = ["AnalysisResult", "ExportReport", "analyse", "export_run", "load_exported",
           "ClusterConfig", "ClusterResult", "PAPER_FRACTIONS", "Round", "Run", "RunConfig", "bayes_tensors",
           "candidate_centres", "cluster_round", "codebook_stats", "compare", "convert", "create_dataset", "create_model",
           "evaluate", "flat_state", "layer_table", "list_datasets", "list_models", "load_flat_state",
           "load_run", "run", "sigma_regulariser"]
