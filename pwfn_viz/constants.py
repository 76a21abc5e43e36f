"""The method's numbers, each defined once (docs/method.md gives the reasons in full).

The package's lowest layer: kernels, core and everything above import from it; it imports nothing
from pwfn_viz.
"""
from __future__ import annotations

# Sampling and sigma initialisation (docs/method.md, the Bayesian layer).
SAMPLING_SIGMA_FLOOR = 2.0 ** -30    # sigma's floor when it scales noise, mu + max(sigma, floor) * eps: raw sigma may go <= 0
SIGMA_INIT_SCALE = 0.0025            # pwfn init: sigma0 of a weight at its tensor's 75th percentile of the power-of-two gap
CONSTANT_SIGMA_INIT = 1e-4           # the ablation's "constant" init: one sigma0 for every weight

# The sigma regulariser R = (lambda / 2) * sum |eps| * max(0, cap - sigma)^2 (docs/method.md, regulariser).
REGULARISER_LAMBDA = 2.0 ** -11      # R's weight in the loss: small, so sigma grows only where the task loss allows it
SIGMA_CAP = 0.05                     # R pushes sigma up towards it and no further; pwfn init clips sigma0 at it too

# Clustering (docs/method.md, clustering).
CLUSTERING_SIGMA_FLOOR = 2.0 ** -20  # sigma's floor in |mu - c| / max(sigma, floor) <= delta: a certain weight still fits
ZERO_BAND_EXPONENT = 7               # b: |mu| < 2^-b fits the zero centre, and 2^-b is a centre's smallest power of two
MAX_POWERS = 4                       # a centre is a sum of at most this many powers of two (the paper's largest codebook)
# The candidate centres are the sums of up to MAX_POWERS elements of {0, 2^-b, ..., 2^(m-1)}: about
# (b + m)^4 / 24 of them, with m = ceil(log2 of the largest |mu|). Unbounded, one weight of 1e30
# (m = 100) makes millions of candidates and gigabytes of temporaries. Trained weights sit far below
# 2^20 (about 1e6), so these caps change nothing for a real network and bound every round (at most
# about 72,000 candidates at b = 7): a weight larger than the largest centre (MAX_POWERS * 2^20) is
# snapped once delta has grown for its band to reach a centre (passes that fit nothing are skipped).
MAX_CENTRE_EXPONENT = 20             # the largest power of two a centre sums: 2^20
MAX_ZERO_BAND_EXPONENT = 30          # b at most 30: the smallest power 2^-30, the scale of the sampling floor
