"""The speed layer: compiled mask kernels and denormal flushing, off the reading path.

Nothing here changes what is computed: `fused.soft_prune` is `ltp_core.core.mask`'s math as
compiled kernels, and `flush_denormals` sets denormal floats to zero on the CPU.
"""
from .denormals import flush_denormals

__all__ = ["flush_denormals"]
