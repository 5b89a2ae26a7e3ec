"""The soft mask as compiled kernels: `ltp_core.core.mask`'s math, fused, for big layers.

Eager PyTorch makes about eleven passes over a layer's weights per step (two for T,
five forward ops, four backward ones). torch.compile (Inductor) fuses each direction into one
kernel: the forward reads w twice (T's variance, then the mask) and writes v; the backward
reads the upstream gradient and w once and recomputes the mask (on a CPU a sigmoid per weight
costs less than writing m and reading it back, and it saves a weight-sized tensor per layer).

`soft_prune(w, tau, t0, exact)` has the signature and the values of
`ltp_core.core.mask.soft_prune_t0` (up to float32 rounding): it is what `LTP` plugs in for a
layer when compiling pays (`worth_compiling`). One compiled graph serves every layer: sizes are
dynamic and not "duck-sized" (equal sizes would be guarded equal, and a model with another
pattern of equal sizes would compile again). Inductor's CPU code specializes a sum on whether
it has more than SMALL_LAYER elements, so smaller layers would compile a second graph for a
few microseconds a step: they stay eager. Where compiled code cannot run (inside a
torch.compile'd model, whose compile fuses the mask with the rest; under torch.jit.trace; under
a TorchDispatchMode such as FlopCounterMode; on a device whose kernels do not build) the same
functions run as eager ops.

This module imports nothing from the rest of ltp_core: the core's eager math stays the one a
reader follows, and this is a faster way to compute it.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import warnings
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

__all__ = ["soft_prune", "worth_compiling", "fused_kernels_work", "probe", "FUSED_MIN_WEIGHTS", "SMALL_LAYER",
           "FUSED_DTYPES"]

FUSED_MIN_WEIGHTS = 1 << 16  # ~ where compiled and eager cost the same, one layer alone (CPU, 2 threads)
SMALL_LAYER = 4096  # Inductor's CPU sums switch strategy above this many elements (a guard)
FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # automatic mode: float64 stays eager
_FLOOR = 1e-12  # = ltp_core.core.mask.TEMPERATURE_FLOOR (a test keeps the two equal)


def _as_compute(t: Tensor) -> Tensor:
    return t if t.dtype == torch.float64 else t.float()


def _forward(w: Tensor, tau: Tensor, t0: float) -> tuple[Tensor, Tensor, Tensor]:
    wf = _as_compute(w)
    # Var(|w|) as ltp_core.core.mask.layer_temperature computes it (torch.var: a Welford
    # reduction, no cancellation between E[w**2] and E[|w|]**2)
    temperature = (t0 * torch.var(wf.abs(), correction=0)).clamp_min(_FLOOR)
    # Scalars folded first: the per-weight work is a multiply-add, an exp and one division.
    inv_t = 1 / temperature
    m = torch.sigmoid(wf * wf * inv_t - tau.to(wf.dtype) * inv_t)
    return (wf * m).to(w.dtype), m.sum(), temperature


def _backward(grad_v: Tensor, grad_l0: Tensor, w: Tensor, tau: Tensor, temperature: Tensor,
              exact: bool) -> tuple[Tensor, Tensor]:
    wf = _as_compute(w)
    gv = grad_v.to(wf.dtype)
    inv_t = 1 / temperature
    m = torch.sigmoid(wf * wf * inv_t - tau.to(wf.dtype) * inv_t)
    ds = m * (1 - m)
    upstream = gv * wf + grad_l0.to(wf.dtype)
    grad_tau = torch.where(temperature > _FLOOR, -(upstream * ds).sum() * inv_t, 0.0)
    grad_w = gv * m
    if exact:
        grad_w = grad_w + (2 * inv_t) * wf * ds * upstream
    return grad_w.to(w.dtype), grad_tau


@functools.cache
def _compiled(name: str):
    return torch.compile(_forward if name == "forward" else _backward, dynamic=True, fullgraph=True)


try:
    from torch.fx.experimental import _config as _shape_config
except ImportError:  # pragma: no cover
    _shape_config = None
if not hasattr(_shape_config, "use_duck_shape"):  # a torch without the switch: equal sizes compile again
    _shape_config = None


@contextlib.contextmanager
def _compiling_setup(device_type: str) -> Iterator[None]:
    # Duck sizing off (read when a graph is compiled, so set around every call; by hand, as
    # config.patch() builds a class per call), and autocast off: the math is float32 whatever
    # the context, and the kernel sees one global state (under bf16 autocast it would compile
    # a second time).
    before = None if _shape_config is None else _shape_config.use_duck_shape
    if _shape_config is not None:
        _shape_config.use_duck_shape = False
    autocast = (torch.autocast(device_type, enabled=False) if torch.is_autocast_enabled(device_type)
                else contextlib.nullcontext())
    try:
        with autocast:
            yield
    finally:
        if _shape_config is not None:
            _shape_config.use_duck_shape = before


def _memory_order(t: Tensor) -> list[int] | None:
    """The permutation of t's dims from outermost to innermost in memory (a channels_last conv
    weight: (0, 2, 3, 1)), or None for row-major, the common case, which needs no permute."""
    order = sorted(range(t.dim()), key=lambda d: t.stride(d), reverse=True)
    return None if order == list(range(t.dim())) else order


def _flat(t: Tensor, order: list[int] | None) -> Tensor:
    # The elements in memory order as one dimension, with no copy for any dense layout (the
    # kernels, elementwise plus whole-tensor sums, are blind to order). The detach makes it a
    # tensor of its own, not a view: torch.compile guards on a view's base, whose shapes would
    # each cost a recompile. (.contiguous() copies only a strided gradient, e.g. sum()'s
    # expanded ones: the kernels are compiled for stride 1.)
    if order is None:
        return t.contiguous().view(-1).detach()
    return t.permute(order).reshape(-1).contiguous().detach()


def _unflat(flat: Tensor, shape: torch.Size, order: list[int] | None) -> Tensor:
    # The inverse of _flat: `shape`, with the strides of the tensor `order` came from.
    if order is None:
        return flat.view(shape)
    return flat.view([shape[d] for d in order]).permute(sorted(range(len(order)), key=order.__getitem__))


def _can_run_compiled(device_type: str) -> bool:
    return not (torch.compiler.is_compiling() or torch.jit.is_tracing()
                or is_in_torch_dispatch_mode(include_infra_modes=False)) and fused_kernels_work(device_type)


class _FusedSoftPrune(torch.autograd.Function):
    """(w, tau, t0, exact) -> (v, L0), each direction one compiled call (eager ops where
    compiled code cannot run). v has w's layout (a channels_last weight gives a channels_last v)."""

    @staticmethod
    def forward(ctx, weight: Tensor, threshold: Tensor, t0: float, exact: bool):
        ctx.order = _memory_order(weight)
        flat = _flat(weight, ctx.order)
        ctx.shape, ctx.exact = weight.shape, exact
        ctx.compiled = _can_run_compiled(weight.device.type)
        tau = threshold.detach()
        if ctx.compiled:
            with _compiling_setup(weight.device.type):
                v, l0, temperature = _compiled("forward")(flat, tau, t0)
        else:
            v, l0, temperature = _forward(flat, tau, t0)
        ctx.save_for_backward(flat, tau, temperature)
        return _unflat(v, ctx.shape, ctx.order), l0

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_v: Tensor, grad_l0: Tensor):
        flat, tau, temperature = ctx.saved_tensors
        args = (_flat(grad_v, ctx.order), grad_l0.detach(), flat, tau, temperature, ctx.exact)
        if ctx.compiled:
            with _compiling_setup(flat.device.type):
                grad_w, grad_tau = _compiled("backward")(*args)
        else:
            grad_w, grad_tau = _backward(*args)
        return _unflat(grad_w, ctx.shape, ctx.order), grad_tau.to(tau.dtype), None, None


def soft_prune(weight: Tensor, threshold: Tensor, t0: float, exact_weight_grad: bool = False
               ) -> tuple[Tensor, Tensor]:
    """(v, L0) of one layer with T = t0 * Var(|w|), as compiled kernels (see the module docstring)."""
    return _FusedSoftPrune.apply(weight, threshold, float(t0), bool(exact_weight_grad))


def worth_compiling(weight: Tensor, largest_layer: int) -> bool:
    """Whether `LTP`'s automatic mode compiles this layer's mask: the model is big enough for
    compiling to pay (its largest pruned layer has at least FUSED_MIN_WEIGHTS weights), this
    layer has more than SMALL_LAYER weights, its dtype is float32/16/bf16 and the kernels build
    on its device."""
    return (largest_layer >= FUSED_MIN_WEIGHTS and weight.numel() > SMALL_LAYER and weight.dtype in FUSED_DTYPES
            and fused_kernels_work(weight.device.type))


def _import_cpp_extension_quietly() -> None:
    # Inductor imports it on its first compile; on a machine with a CUDA toolkit but no GPU the
    # import logs "No CUDA runtime is found", which says nothing about the CPU kernels.
    logger = logging.getLogger("torch.utils.cpp_extension")
    before = logger.level
    logger.setLevel(logging.ERROR)
    try:
        importlib.import_module("torch.utils.cpp_extension")
    finally:
        logger.setLevel(before)


def probe(device_type: str) -> None:
    """Compile and run both directions once on `device_type`; raises whatever stops the compiler."""
    if device_type == "cpu":
        _import_cpp_extension_quietly()
    # in the global state the kernels are called in: grad off, autocast off
    with torch.inference_mode(False), torch.no_grad(), _compiling_setup(device_type):
        w = torch.linspace(-1.0, 1.0, FUSED_MIN_WEIGHTS, device=device_type)
        tau = torch.tensor(0.25, device=device_type)
        v, l0, temperature = _compiled("forward")(w, tau, 0.5)
        _compiled("backward")(torch.ones_like(w), torch.ones_like(l0), w, tau, temperature, False)


@functools.cache
def fused_kernels_work(device_type: str) -> bool:
    """Whether the compiled mask kernels build and run on `device_type` ("cpu", "cuda", ...).

    Checked once per process by compiling both directions for a layer of FUSED_MIN_WEIGHTS
    weights (the kernels are compiled for dynamic sizes, so this compile serves every layer of
    more than SMALL_LAYER weights that follows). Any failure (no C++ compiler, no Triton, an
    unsupported platform) answers False, with one warning saying why.
    """
    try:
        probe(device_type)
        return True
    except Exception as e:  # noqa: BLE001 - whatever stops the compiler, eager still works
        text = str(e).strip()
        warnings.warn(f"ltp_core: the compiled mask kernels do not build on {device_type!r} "
                      f"({type(e).__name__}: {text.splitlines()[0] if text else ''}); "
                      "LTP uses the eager mask there (same math, slower)", RuntimeWarning, stacklevel=2)
        return False
