"""Interactive views of a run record in JupyterLab (ipywidgets), thin layers over
:mod:`pwfn_viz.viz` and the core. Each takes a :class:`~pwfn_viz.record.rundir.Run` or its directory
and is an ``ipywidgets.VBox``: display it, or drive it from Python by setting its controls.

    >>> from pwfn_viz.widgets import RoundExplorer, UncertaintyExplorer, CompareExplorer, WhatIf
    >>> RoundExplorer(run)                 # round slider + layer selector      # doctest: +SKIP
    >>> UncertaintyExplorer(run)           # layer / channel / tap, one weight  # doctest: +SKIP
    >>> CompareExplorer(run)               # PWFN against k-means at any k      # doctest: +SKIP
    >>> WhatIf(run, round_index=-1)        # re-cluster a round live            # doctest: +SKIP

Problems (an interrupted run, a layer that does not exist) show as a message inside the widget
(``widget.message_text``), not as a traceback.
"""
from .compare_explorer import CompareExplorer, KMeansAtK
from .round_explorer import RoundExplorer, round_label
from .trajectory import Trajectory, select_view, select_weights, weight_trajectory
from .uncertainty_explorer import UncertaintyExplorer
from .whatif import WhatIf, snapped_accuracy, whatif_snap

__all__ = ["CompareExplorer", "KMeansAtK", "RoundExplorer", "Trajectory", "UncertaintyExplorer", "WhatIf",
           "round_label", "select_view", "select_weights", "snapped_accuracy", "weight_trajectory", "whatif_snap"]
