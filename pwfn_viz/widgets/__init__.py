"""Interactive views of a run record in JupyterLab (ipywidgets), thin layers over
:mod:`pwfn_viz.viz` and the core. Each takes a :class:`~pwfn_viz.record.rundir.Run` or its directory
and is an ``ipywidgets.VBox``: display it, or drive it from Python by setting its controls.

    >>> from pwfn_viz.widgets import RoundExplorer, UncertaintyExplorer, CompareExplorer, WhatIf
    >>> RoundExplorer(run)                 # round slider + layer selector      # doctest: +SKIP
    >>> UncertaintyExplorer(run)           # layer / channel / tap, one weight  # doctest: +SKIP
    >>> CompareExplorer(run)               # PWFN against k-means at any k      # doctest: +SKIP
    >>> WhatIf(run, round_index=-1)        # re-cluster a round live            # doctest: +SKIP
    >>> run.dashboard()                    # all round views, one slider + Play # doctest: +SKIP
    >>> side_by_side(run_a, run_b)         # two runs under one slider          # doctest: +SKIP

The figures are live (ipympl canvases: zoom, pan, hover, click), updated in place; every widget
has ``save(path)`` (PDF, SVG or PNG of what it shows).

Problems (an interrupted run, a layer that does not exist) show as a message inside the widget
(``widget.message_text``), not as a traceback.
"""
from .compare_explorer import CompareExplorer, KMeansAtK
from .dashboard import VIEWS, Dashboard, SideBySide, side_by_side
from .round_explorer import RoundExplorer, round_label
from .trajectory import Trajectory, select_view, select_weights, weight_trajectory
from .uncertainty_explorer import UncertaintyExplorer
from .whatif import WhatIf, snapped_accuracy, whatif_snap
from .teaching import Answer, DeltaExplorer, reveal   # notebook 07's widgets

__all__ = ["Answer", "CompareExplorer", "Dashboard", "DeltaExplorer", "KMeansAtK", "RoundExplorer", "SideBySide",
           "Trajectory", "UncertaintyExplorer", "VIEWS", "WhatIf", "reveal", "round_label", "side_by_side",
           "select_view", "select_weights", "snapped_accuracy", "weight_trajectory", "whatif_snap"]
