"""The adapters: ΔW = s·(B·A + S) on frozen weights (paper §3.1).

config (DSEEConfig) ← layer (DSEELinear, SparseLowRankDelta; sparse_ops) ← support (choosing Ω;
calibration for data-aware supports) ← inject (add / merge / remove) ← io (adapter files), summary.
"""
