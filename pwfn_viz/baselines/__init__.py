"""Value-only baselines: WFN (the method's predecessor) and k-means weight sharing."""
from . import kmeans
from .wfn import WFN_FRACTIONS, wfn_allowance, wfn_round
