"""The methods LTP is compared with, one module each, all with LTP's shape (see `base`).

    unstructured (masks / reparametrizations via torch.nn.utils.parametrize):
      Magnitude   one-shot magnitude pruning (Han et al. 2015)               magnitude.py
      GMP         gradual magnitude pruning, cubic schedule (Zhu & Gupta)    magnitude.py
      STR         soft threshold reparameterization (Kusupati et al. 2020)   str_reparam.py
      LATS        scheduled soft thresholding: LATS, S-LATS, PGH, constant  lats.py
    structured (channels removed for real; chain networks, see channels.SUPPORTED):
      GReg        growing regularization, GReg-1 / GReg-2 (Wang et al.)     greg.py
      GDP         polarized channel gates, folded away (Guo et al.)          gdp.py
      L1Filter    L1-norm filter pruning (Li et al. 2017)                    l1_filter.py
      DSA         keep ratios learned under a FLOPs budget (Ning et al.)     dsa.py

Pick one by name with `ltp_core.methods.build(name, model, **options)`.
"""
from .base import BaseMethod, ReparamMethod, StructuredMethod
from .channels import SUPPORTED, Link, channel_links, remove_channels
from .dsa import DSA
from .gdp import GDP
from .greg import GReg
from .l1_filter import L1Filter
from .lats import LATS, lats_schedule
from .magnitude import GMP, KeepMask, Magnitude, gmp_sparsity, magnitude_masks
from .str_reparam import STR

__all__ = ["BaseMethod", "ReparamMethod", "StructuredMethod", "SUPPORTED", "Link", "channel_links",
           "remove_channels", "magnitude_masks", "gmp_sparsity", "lats_schedule", "KeepMask",
           "Magnitude", "GMP", "STR", "LATS", "GReg", "GDP", "L1Filter", "DSA"]
