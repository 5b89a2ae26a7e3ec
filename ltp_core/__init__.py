"""ltp_core: Learned Threshold Pruning (Azarian et al., arXiv 2003.00075), small enough to read.

    soft_mask(w, tau, T)      sigmoid((w**2 - tau) / T)                      core/mask.py
    LTP(model, ...)           thresholds, soft-L0, sparsity, finalize       core/ltp.py
    Trail                     the run's sparser-and-sparser networks        core/trail.py
    count_flops(model, x)     effective FLOPs of a pruned network           core/flops.py
    methods.build(name, ...)  LTP and the methods it is compared with       methods/
    flush_denormals()         denormal floats to zero, in every CPU thread  kernels/denormals.py

The rest sits around the core in folders of its own: `engine` (ltp-train), `deploy` (sparse
files, ONNX, ltp-pick), `teaching` (the notebooks' claims, plots and runs, ltp-reports) and
`kernels` (the compiled masks).
"""
from . import methods
from .core.flops import count_flops, layer_flops
from .core.layers import PRUNABLE_TYPES, prunable_layers
from .core.ltp import LTP, ThresholdMask
from .core.mask import hard_mask, layer_temperature, soft_mask, soft_prune
from .core.measure import measure
from .core.trail import Trail
from .kernels.denormals import flush_denormals

__version__ = "0.1.0"
__all__ = ["soft_mask", "hard_mask", "layer_temperature", "soft_prune", "LTP", "ThresholdMask",
           "PRUNABLE_TYPES", "prunable_layers", "Trail", "measure", "count_flops", "layer_flops", "flush_denormals",
           "methods"]
