"""ltp_core: Learned Threshold Pruning (Azarian et al., arXiv 2003.00075) in a few small files.

    soft_mask(w, tau, T)      sigmoid((w**2 - tau) / T)                      mask.py
    LTP(model, ...)           thresholds, soft-L0, sparsity, finalize       pruner.py
    Trail                     the run's sparser-and-sparser networks        trail.py
    flush_denormals()         denormal floats to zero, in every CPU thread  denormals.py
"""
from .denormals import flush_denormals
from .flops import count_flops, layer_flops
from .mask import hard_mask, layer_temperature, soft_mask, soft_prune
from .pruner import LTP, PRUNABLE_TYPES, ThresholdMask, prunable_layers
from .trail import Trail

__version__ = "0.1.0"
__all__ = ["soft_mask", "hard_mask", "layer_temperature", "soft_prune", "LTP", "ThresholdMask",
           "PRUNABLE_TYPES", "prunable_layers", "Trail", "count_flops", "layer_flops", "flush_denormals"]
