"""The method itself, with no training loop, data or files: Bayesian conversion (``bayes``), sigma
initialisation (``sigma_init``), the loss terms and optimiser groups (``loss_terms``), the greedy clustering round (``clustering``), the measures of a
codebook and of a model (``metrics``) and the device choice (``device``). ``clustering_readable``
states the clustering round section by section; ``clustering`` computes the same round fast."""
from .bayes import BayesTensor, bayes_tensors, convert, flat_state, is_converted, load_flat_state
from .loss_terms import masked_weight_decay, param_groups, sigma_regulariser
from .clustering import ClusterConfig, ClusterResult, candidate_centres, cluster_round, mu_order, target_count
from .clustering_readable import SIGMA_JOINS, readable_cluster_round
from .device import resolve_device
from .metrics import codebook_stats, entropy_bits, evaluate, layer_table
