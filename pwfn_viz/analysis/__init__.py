"""What is computed from a recorded run: comparison with k-means, noise analysis, export, and the
tables that the plots and widgets draw."""
from .compare import compare
from .export import ExportReport, export_run, load_exported
from .noise import AnalysisResult, analyse
